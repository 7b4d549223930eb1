"""`Bleu`: corpus BLEU over every pair seen, as a Keras metric.

The state is BLEU's sufficient statistics summed over updates (clipped
matches and totals per order, hypothesis and reference lengths), so the
result is `sacrebleu.corpus_bleu` over all pairs since the last reset, in
compiled `fit`/`evaluate` and under `tf.distribute` alike.
"""

import keras
import tensorflow as tf

from keras_selffb.metrics import _inputs
from keras_selffb.metrics.bleu import (bleu_from_statistics, bleu_statistics,
                                       bleu_statistics_ids, _check_order,
                                       _check_smoothing)
from keras_selffb.text.segmentation import get_segmenter


@keras.saving.register_keras_serializable(package="keras_selffb")
class Bleu(keras.metrics.Metric):
    """Corpus BLEU (0-100) between references (`y_true`) and hypotheses.

    Args:
        tokenize: str. `"13a"`, `"zh"`, `"char"`, `"none"` or `"cjk"`.
            Defaults to `"13a"`.
        max_order: int. Highest n-gram order. Defaults to `4`.
        smooth_method: str. `"exp"`, `"floor"`, `"add-k"` or `"none"`.
            Defaults to `"exp"`.
        smooth_value: float. For `"floor"`/`"add-k"`. Defaults to `None`.
        lowercase: bool. Lowercase strings first. Defaults to `False`.
        pad_id: int. Padding id when inputs are token ids. Defaults to `0`.
        name: str. Defaults to `"bleu"`.
        dtype: result dtype. Defaults to `None` (float32).

    Example:

    >>> metric = Bleu()
    >>> metric.update_state(["The cat sat on the mat."], ["The cat sat on a mat."])
    >>> metric.update_state(["It is raining today."], ["It is raining."])
    >>> round(float(metric.result()), 4)  # sacrebleu.corpus_bleu over both pairs
    43.5924
    """

    def __init__(self, tokenize="13a", max_order=4, smooth_method="exp",
                 smooth_value=None, lowercase=False, pad_id=0, name="bleu",
                 dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        if not isinstance(tokenize, str):
            raise TypeError("`tokenize` must be a method name (str) so the "
                            f"metric can be serialized, got {tokenize!r}.")
        get_segmenter(tokenize)
        _check_order(max_order)
        _check_smoothing(smooth_method, smooth_value)
        self.tokenize = tokenize
        self.max_order = max_order
        self.smooth_method = smooth_method
        self.smooth_value = smooth_value
        self.lowercase = lowercase
        self.pad_id = pad_id
        self.matches = self._sum_variable((max_order,), "matches")
        self.totals = self._sum_variable((max_order,), "totals")
        self.hyp_len = self._sum_variable((), "hyp_len")
        self.ref_len = self._sum_variable((), "ref_len")

    def _sum_variable(self, shape, name):
        """A float64 zero-initialised sum (exact for counts below 2**53)."""
        return self.add_variable(shape=shape, initializer="zeros",
                                 dtype="float64", name=name)

    @tf.autograph.experimental.do_not_convert
    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch; `sample_weight` `[B]` scales each pair's statistics."""
        if _inputs.is_text(y_true) or _inputs.is_text(y_pred):
            stats = bleu_statistics(y_true, y_pred, self.tokenize,
                                    self.lowercase, self.max_order)
        else:
            stats = bleu_statistics_ids(y_true, y_pred, pad_id=self.pad_id,
                                        max_order=self.max_order)
        stats = [tf.cast(x, tf.float64) for x in stats]
        if sample_weight is not None:
            weight = tf.broadcast_to(
                tf.reshape(tf.cast(sample_weight, tf.float64), [-1]),
                tf.shape(stats[2]))
            stats = [stats[0] * weight[:, None], stats[1] * weight[:, None],
                     stats[2] * weight, stats[3] * weight]
        for variable, value in zip(
                (self.matches, self.totals, self.hyp_len, self.ref_len), stats):
            variable.assign_add(tf.reduce_sum(value, axis=0))

    def result(self):
        """Corpus BLEU of everything seen since the last reset."""
        score = bleu_from_statistics(
            self.matches, self.totals, self.hyp_len, self.ref_len,
            smooth_method=self.smooth_method, smooth_value=self.smooth_value)
        return tf.cast(score.score, self.dtype)

    def get_config(self):
        """Constructor arguments, for serialization."""
        config = super().get_config()
        config.update({
            "tokenize": self.tokenize,
            "max_order": self.max_order,
            "smooth_method": self.smooth_method,
            "smooth_value": self.smooth_value,
            "lowercase": self.lowercase,
            "pad_id": self.pad_id,
        })
        return config
