"""`TargetReached`: stop training once a logged value reaches a target.

Where EarlyStopping stops when a value stops improving, this stops as soon
as it is good enough, e.g. `TargetReached("val_rouge_l", 0.35)` after a
`GenerationMetrics` callback (which must come before it in the list), and
records the epoch: "epochs to reach ROUGE-L 0.35" compares runs.
"""

import math
import warnings

import keras

MODES = ("max", "min")


class TargetReached(keras.callbacks.Callback):
    """Sets `model.stop_training` at the first epoch whose value meets `target`.

    Met means `logs[monitor] >= target` in mode `"max"`, `<= target` in mode
    `"min"`; NaN never meets it. `reached_epoch` is that epoch (0-based, like
    Keras' `epoch`), or None; it is reset when training begins. A missing
    `monitor` key warns once per training run, naming the keys there are.

    Args:
        monitor: str. The key of `logs` to watch, e.g. `"val_rouge_l"`.
        target: float. The value to reach.
        mode: str. `"max"` (higher is better) or `"min"`. Defaults to `"max"`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> stop = TargetReached("val_bleu", target=20.0)
    >>> stop.set_model(model)
    >>> stop.on_train_begin()
    >>> for epoch, bleu in enumerate([5.0, 12.5, 21.0, 30.0]):
    ...     stop.on_epoch_end(epoch, {"val_bleu": bleu})
    ...     if stop.model.stop_training:
    ...         break
    >>> stop.reached_epoch
    2
    """

    def __init__(self, monitor, target, mode="max"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
        self.monitor = monitor
        self.target = float(target)
        self.mode = mode
        self.reached_epoch = None
        self._warned = False

    def on_train_begin(self, logs=None):
        self.reached_epoch = None
        self._warned = False

    def get_state(self):
        """What a resumed `fit_resumable` run needs (see training/checkpoint.py)."""
        return {"reached_epoch": self.reached_epoch}

    def set_state(self, state):
        self.reached_epoch = state["reached_epoch"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"TargetReached: {self.monitor!r} is not in the epoch logs; available keys: "
                    f"{sorted(logs)}. Check the name, and put the callback that logs it "
                    "(e.g. GenerationMetrics) BEFORE TargetReached in the callbacks list.",
                    stacklevel=2,
                )
            return
        value = float(logs[self.monitor])
        if math.isnan(value):
            return
        met = value >= self.target if self.mode == "max" else value <= self.target
        if met and self.reached_epoch is None:
            self.reached_epoch = epoch
            self.model.stop_training = True
