"""Epoch checkpoints that make an interrupted `fit` resume exactly.

`fit_resumable` runs `trainer.fit` one epoch at a time and, after each
epoch, writes everything the next epoch depends on to a directory:

    state.json       epochs done, per-epoch logs, early-stopping state
    last.npz         the trainer's weights and the optimizer's variables
    best.npz         the weights of the best epoch (early stopping only)

Each file is written to a temporary name and moved into place, and
`state.json` goes last, so a process killed at any instant (SIGKILL
included) leaves either the previous epoch's checkpoint or the new one,
never a torn mix.

Why not Keras' `BackupAndRestore`? It restores the weights, but a
`Dataset.shuffle(reshuffle_each_iteration=True)` then replays the FIRST
epoch's order in the resumed epoch, and `EarlyStopping`'s best weights and
patience counter are lost. Here the data of each epoch comes from
`epoch_data(epoch)` (the caller derives its order and its sampling seed
from the epoch number), and the early-stopping state is in the checkpoint,
so a resumed run computes the same numbers as an uninterrupted one.
"""

import json
import os

import keras
import numpy as np

STATE_FILE = "state.json"
LAST_FILE = "last.npz"
BEST_FILE = "best.npz"


def _atomic_write(path, write):
    tmp = f"{path}.tmp"
    write(tmp)
    os.replace(tmp, path)


def write_json(path, value):
    """Writes `value` as JSON atomically (temporary file, then rename)."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=2)

    _atomic_write(path, write)


def read_json(path, default=None):
    """Reads a JSON file; `default` when it does not exist."""
    if not os.path.exists(path):
        return default
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Checkpoint file {path} is unreadable ({e}); delete it to start over.") from None


def save_arrays(path, variables):
    """Saves the values of `variables` (a list) to an `.npz`, atomically."""
    arrays = {f"v{i}": np.asarray(v.numpy() if hasattr(v, "numpy") else v) for i, v in enumerate(variables)}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic_write(path, write)


def load_arrays(path, variables, what):
    """Assigns the arrays saved by `save_arrays` back to `variables`."""
    try:
        with np.load(path) as data:
            arrays = [data[f"v{i}"] for i in range(len(data.files))]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"Checkpoint {path} is unreadable ({e}); delete it to start over.") from None
    if len(arrays) != len(variables) or any(
        tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, variables)
    ):
        raise ValueError(
            f"Checkpoint {path} does not match the {what} being restored "
            f"({len(arrays)} arrays saved, {len(variables)} expected): it comes from "
            "other settings. Delete the directory or use other run settings."
        )
    for variable, array in zip(variables, arrays):
        variable.assign(array)


def optimizer_variables(trainer):
    """The optimizer's variables, building it for the policy first if needed."""
    optimizer = trainer.optimizer
    if not optimizer.built:
        optimizer.build(trainer.policy.trainable_variables)
    return list(optimizer.variables)


def save_trainer(path, trainer):
    """Saves the trainer's state and its optimizer's to one `.npz`.

    `trainer.variables`, not `weights`: it includes the dropout layers'
    seed-generator states, so a resumed epoch draws the same masks.
    """
    save_arrays(path, list(trainer.variables) + optimizer_variables(trainer))


def restore_trainer(path, trainer):
    """Restores what `save_trainer` wrote into a compiled trainer."""
    load_arrays(path, list(trainer.variables) + optimizer_variables(trainer), "trainer and optimizer")


def reset_seed_generators(model, seed):
    """Sets every seed-generator state in `model` (dropout, ...) from `seed`.

    A model loaded from disk and the same model kept in memory then draw the
    same random numbers from here on.
    """
    count = 0
    for variable in model.variables:
        if variable.path.endswith("seed_generator_state"):
            variable.assign(np.array([seed, count], dtype=variable.dtype))
            count += 1
    return count


class _StopAfterOneEpoch(keras.callbacks.Callback):
    """Lets `fit(epochs=N, initial_epoch=e)` run epoch `e` only.

    The progress bar then says "Epoch e+1/N", and TensorBoard and CSVLogger
    see the true epoch index.
    """

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _improved(value, best, mode):
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def fit_resumable(
    trainer,
    epoch_data,
    epochs,
    directory,
    validation_data=None,
    steps_per_epoch=None,
    callbacks=(),
    monitor=None,
    mode="min",
    patience=None,
    on_epoch_begin=None,
    epoch_offset=0,
    verbose="auto",
):
    """`trainer.fit` epoch by epoch, checkpointed, resumable, exact.

    Args:
        trainer: a compiled trainer (`MLETrainer`, `ReinforceTrainer`, ...)
            with a `policy` attribute.
        epoch_data: callable `epoch -> dataset`. Must give the same data for
            the same epoch in every process (derive order and seeds from
            `epoch`).
        epochs: int. Total epochs.
        directory: str. Where the checkpoint lives; created if missing. An
            existing checkpoint there is resumed.
        validation_data: optional dataset passed to `fit`.
        steps_per_epoch: int or None. Passed to `fit`.
        callbacks: Keras callbacks for every epoch (use `CSVLogger(...,
            append=True)`: `fit` is called once per epoch).
        monitor: str or None. A log key for early stopping (e.g.
            `"val_perplexity"`); the best epoch's weights are restored at
            the end. Defaults to `None` (no early stopping).
        mode: str. `"min"` or `"max"` for `monitor`.
        patience: int or None. Epochs without improvement before stopping.
        on_epoch_begin: callable `epoch -> None` run before each epoch, e.g.
            to reseed a sampler.
        epoch_offset: int. Added to the epoch index the callbacks see (so
            several calls, e.g. the rounds of a loop, log one after another
            in TensorBoard); `epoch_data` still gets `0 .. epochs - 1`.
        verbose: passed to `fit`.

    Returns:
        dict: `history` (key -> list per epoch), `resumed_from` (epochs
        found done at start), `best_epoch` (or None).
    """
    os.makedirs(directory, exist_ok=True)
    state_path = os.path.join(directory, STATE_FILE)
    state = read_json(state_path) or {
        "epochs_done": 0, "history": {}, "best": None, "best_epoch": None, "wait": 0, "stopped": False,
    }
    resumed_from = state["epochs_done"]
    if resumed_from:
        restore_trainer(os.path.join(directory, LAST_FILE), trainer)
    for epoch in range(state["epochs_done"], epochs):
        if state["stopped"]:
            break
        if on_epoch_begin is not None:
            on_epoch_begin(epoch)
        history = trainer.fit(
            epoch_data(epoch),
            validation_data=validation_data,
            epochs=epoch_offset + epochs,
            initial_epoch=epoch_offset + epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=list(callbacks) + [_StopAfterOneEpoch()],
            verbose=verbose,
            shuffle=False,
        ).history
        logs = {key: float(np.asarray(values[-1]).reshape(-1)[0]) for key, values in history.items()}
        for key, value in logs.items():
            state["history"].setdefault(key, []).append(value)
        if monitor is not None:
            if monitor not in logs:
                raise ValueError(
                    f"Early stopping monitors {monitor!r}, which is not among the logs {sorted(logs)}."
                )
            if _improved(logs[monitor], state["best"], mode):
                state.update(best=logs[monitor], best_epoch=epoch, wait=0)
                save_arrays(os.path.join(directory, BEST_FILE), trainer.policy.weights)
            else:
                state["wait"] += 1
                state["stopped"] = patience is not None and state["wait"] >= patience
        state["epochs_done"] = epoch + 1
        save_trainer(os.path.join(directory, LAST_FILE), trainer)
        write_json(state_path, state)
    if monitor is not None and state["best_epoch"] is not None:
        load_arrays(os.path.join(directory, BEST_FILE), trainer.policy.weights, "policy")
    return {"history": state["history"], "resumed_from": resumed_from, "best_epoch": state["best_epoch"]}


def epoch_order(num_rows, seed, epoch):
    """A permutation of `num_rows` that depends only on `(seed, epoch)`."""
    return np.random.default_rng([seed, epoch]).permutation(num_rows)
