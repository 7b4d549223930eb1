"""Metric trackers whose state is sums, so they are exact across batches and replicas."""

import keras
import tensorflow as tf
from keras import ops


def step_logs(metrics, strategy):
    """`{name: result}` of `metrics`, shaped for `fit()` under `strategy`.

    Under a `MultiWorkerMirroredStrategy`, Keras 3 reduces each step output
    with `strategy.reduce(MEAN, value, axis=0)`, which fails on a scalar
    (keras-team/keras#20585), so there every value gets shape `(1,)`.
    Epoch logs are unaffected: `fit()` reads them from the metrics.
    """
    logs = {m.name: m.result() for m in metrics}
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
    return logs


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


@keras.saving.register_keras_serializable(package="keras_selffb")
class StdTracker(keras.metrics.Metric):
    """Tracks the standard deviation of all values seen in an epoch.

    State is `sum`, `sum of squares` and `count`, so replicas and batches
    combine exactly: std = sqrt(E[x^2] - E[x]^2).
    """

    def __init__(self, name="std", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.total_sq = self.add_variable(shape=(), initializer="zeros", name="total_sq")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values):
        values = ops.cast(values, self.dtype)
        self.total.assign_add(ops.sum(values))
        self.total_sq.assign_add(ops.sum(ops.square(values)))
        self.count.assign_add(ops.cast(ops.size(values), self.dtype))

    def result(self):
        mean = ops.divide_no_nan(self.total, self.count)
        mean_sq = ops.divide_no_nan(self.total_sq, self.count)
        return ops.sqrt(ops.maximum(mean_sq - ops.square(mean), 0.0))
