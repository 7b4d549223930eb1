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


@keras.saving.register_keras_serializable(package="keras_selffb")
class MinMaxTracker(keras.metrics.Metric):
    """Tracks the smallest or largest integer in `[0, max_value]` seen in an epoch.

    Keras metric state is combined across replicas by summing, which has no
    min or max. So the state here is a histogram of counts, one bin per
    integer: replicas and batches add their counts exactly, and the result
    reads the first (or last) non-empty bin. Made for lengths and counts.

    Args:
        max_value: int. Largest value that can occur; larger ones are
            counted as `max_value`.
        extreme: str. `"min"` or `"max"`. Defaults to `"max"`.

    Example:

    >>> tracker = MinMaxTracker(max_value=8, extreme="min")
    >>> tracker.update_state([5, 3, 7])
    >>> tracker.update_state([4])
    >>> int(tracker.result())
    3
    """

    def __init__(self, max_value, extreme="max", name="max", **kwargs):
        super().__init__(name=name, **kwargs)
        if extreme not in ("min", "max"):
            raise ValueError(f"MinMaxTracker extreme must be 'min' or 'max'; got {extreme!r}.")
        self.max_value = int(max_value)
        self.extreme = extreme
        self.counts = self.add_variable(shape=(self.max_value + 1,), initializer="zeros", name="counts")

    def update_state(self, values):
        values = ops.clip(ops.cast(ops.reshape(values, (-1,)), "int32"), 0, self.max_value)
        self.counts.assign_add(ops.sum(ops.one_hot(values, self.max_value + 1, dtype=self.dtype), axis=0))

    def result(self):
        bins = ops.cast(ops.arange(self.max_value + 1), self.dtype)
        seen = self.counts > 0
        if self.extreme == "min":
            value = ops.min(ops.where(seen, bins, float(self.max_value)))
        else:
            value = ops.max(ops.where(seen, bins, 0.0))
        # An empty tracker reads 0, like the sum-based trackers.
        return ops.where(ops.any(seen), value, 0.0)

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value, "extreme": self.extreme}
