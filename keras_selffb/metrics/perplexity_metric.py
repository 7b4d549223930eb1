"""`Perplexity`: exp(total NLL / total tokens) over every batch seen.

The state is the sum of masked token negative log-likelihoods and the sum
of token weights, so the result is the corpus perplexity since the last
reset (not a mean of batch perplexities) in `fit`, `evaluate` and under
`tf.distribute`.
"""

import keras
import tensorflow as tf

from keras_selffb.metrics.perplexity import perplexity_statistics


@keras.saving.register_keras_serializable(package="keras_selffb")
class Perplexity(keras.metrics.Metric):
    """Token-weighted perplexity of target ids (`y_true`) under `y_pred`.

    Args:
        from_logits: bool. Whether `y_pred` holds logits (else
            probabilities). Defaults to `True`.
        pad_id: optional int. Targets equal to it are not counted.
            Defaults to `None`.
        name: str. Defaults to `"perplexity"`.
        dtype: result dtype. Defaults to `None` (float32).

    Example:

    >>> metric = Perplexity()
    >>> metric.update_state([[1, 2]], [[[0.0] * 4, [0.0] * 4]])
    >>> round(float(metric.result()), 4)
    4.0
    """

    def __init__(self, from_logits=True, pad_id=None, name="perplexity",
                 dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.from_logits = from_logits
        self.pad_id = pad_id
        self.nll_sum = self.add_variable(
            shape=(), initializer="zeros", dtype="float64", name="nll_sum")
        self.token_count = self.add_variable(
            shape=(), initializer="zeros", dtype="float64", name="token_count")

    @tf.autograph.experimental.do_not_convert
    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch: targets `[B, T]`, logits `[B, T, V]`, mask `[B, T]`."""
        nll, count = perplexity_statistics(
            y_pred, y_true, mask=sample_weight, pad_id=self.pad_id,
            from_logits=self.from_logits)
        self.nll_sum.assign_add(tf.cast(nll, tf.float64))
        self.token_count.assign_add(tf.cast(count, tf.float64))

    def result(self):
        """exp(total NLL / total tokens); 1.0 before any token."""
        mean = tf.math.divide_no_nan(self.nll_sum, self.token_count)
        return tf.cast(tf.exp(mean), self.dtype)

    def get_config(self):
        """Constructor arguments, for serialization."""
        config = super().get_config()
        config.update({"from_logits": self.from_logits, "pad_id": self.pad_id})
        return config
