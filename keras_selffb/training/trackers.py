"""Metric trackers whose state is sums, so they are exact across batches and replicas."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_selffb")
class RatioTracker(keras.metrics.Metric):
    """Tracks `sum(numerators) / sum(denominators)` over an epoch.

    With `exponentiate=True` the result is `exp` of the ratio (a perplexity
    from summed negative log-likelihoods and token counts). Under a
    distribution strategy each replica adds its own sums and the read sums
    them, so the result is the ratio over the global batch.

    Args:
        exponentiate: bool. Return `exp(ratio)`. Defaults to `False`.
    """

    def __init__(self, exponentiate=False, name="ratio", **kwargs):
        super().__init__(name=name, **kwargs)
        self.exponentiate = exponentiate
        self.numerator = self.add_variable(shape=(), initializer="zeros", name="numerator")
        self.denominator = self.add_variable(shape=(), initializer="zeros", name="denominator")

    def update_state(self, numerator, denominator):
        self.numerator.assign_add(ops.cast(ops.sum(numerator), self.dtype))
        self.denominator.assign_add(ops.cast(ops.sum(denominator), self.dtype))

    def result(self):
        ratio = ops.divide_no_nan(self.numerator, self.denominator)
        return ops.exp(ratio) if self.exponentiate else ratio

    def get_config(self):
        return {**super().get_config(), "exponentiate": self.exponentiate}
