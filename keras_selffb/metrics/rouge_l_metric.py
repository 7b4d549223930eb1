"""`RougeL`: mean ROUGE-L F1 over every pair seen, as a Keras metric.

The state is two sums (weighted F1 and weight), so `update_state` works in
compiled `fit`/`evaluate` and under `tf.distribute` (replica sums add up),
and `result()` is the mean rouge-score ROUGE-L F1 over all pairs since the
last reset. Strings go through `rouge_l`, int ids through `rouge_l_ids`.
"""

import keras
import tensorflow as tf

from keras_selffb.metrics import _inputs
from keras_selffb.metrics.rouge import rouge_l, rouge_l_ids
from keras_selffb.text.segmentation import get_segmenter


@keras.saving.register_keras_serializable(package="keras_selffb")
class RougeL(keras.metrics.Metric):
    """Mean ROUGE-L F1 between references (`y_true`) and hypotheses (`y_pred`).

    Args:
        tokenize: str. Segmentation of strings: `"rouge"` (rouge-score's
            default) or `"cjk"`, `"13a"`, `"zh"`, `"char"`, `"none"`.
            Defaults to `"rouge"`.
        pad_id: int. Padding id when `y_true`/`y_pred` are token ids.
            Defaults to `0`.
        name: str. Defaults to `"rouge_l"`.
        dtype: result dtype. Defaults to `None` (float32).

    Example:

    >>> metric = RougeL()
    >>> metric.update_state(["the cat sat"], ["the cat"])
    >>> round(float(metric.result()), 4)
    0.8
    """

    def __init__(self, tokenize="rouge", pad_id=0, name="rouge_l", dtype=None,
                 **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        if not isinstance(tokenize, str):
            raise TypeError("`tokenize` must be a method name (str) so the "
                            f"metric can be serialized, got {tokenize!r}.")
        get_segmenter(tokenize)
        self.tokenize = tokenize
        self.pad_id = pad_id
        self.fmeasure_sum = self.add_variable(
            shape=(), initializer="zeros", dtype="float64", name="fmeasure_sum")
        self.weight_sum = self.add_variable(
            shape=(), initializer="zeros", dtype="float64", name="weight_sum")

    @tf.autograph.experimental.do_not_convert
    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch of pairs; `sample_weight` `[B]` weights each pair."""
        if _inputs.is_text(y_true) or _inputs.is_text(y_pred):
            scores = rouge_l(y_true, y_pred, tokenize=self.tokenize)
        else:
            scores = rouge_l_ids(y_true, y_pred, pad_id=self.pad_id)
        fmeasure = tf.cast(scores.fmeasure, tf.float64)
        if sample_weight is None:
            weight = tf.ones_like(fmeasure)
        else:
            weight = tf.broadcast_to(
                tf.reshape(tf.cast(sample_weight, tf.float64), [-1]),
                tf.shape(fmeasure))
        self.fmeasure_sum.assign_add(tf.reduce_sum(fmeasure * weight))
        self.weight_sum.assign_add(tf.reduce_sum(weight))

    def result(self):
        """Mean F1 over all pairs seen (0 before any update)."""
        mean = tf.math.divide_no_nan(self.fmeasure_sum, self.weight_sum)
        return tf.cast(mean, self.dtype)

    def get_config(self):
        """Constructor arguments, for serialization."""
        config = super().get_config()
        config.update({"tokenize": self.tokenize, "pad_id": self.pad_id})
        return config
