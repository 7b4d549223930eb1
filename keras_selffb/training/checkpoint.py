"""Epoch checkpoints that make an interrupted `fit` resume exactly.

`fit_resumable` calls `trainer.fit` ONCE for all the epochs still to run, so
Keras owns the epoch loop as usual: `model.stop_training` set by any callback
(EarlyStopping, TerminateOnNaN, TargetReached) ends training, and callbacks
keep their state from one epoch to the next. A `_Checkpoint` callback, last
in the list, writes at the end of every epoch everything the next epoch
depends on to a directory:

    state.json           epochs done, per-epoch logs, early-stopping and
                         stop state, the names of the files below
    last_<e>.npz         the trainer's variables and the optimizer's
    best_<e>.npz         the policy weights of the best epoch (`monitor`)
    callbacks_<e>.npz    arrays held by stateful callbacks (EarlyStopping's
                         best weights); their scalars are in state.json

Every file is written under a temporary name and moved into place; the
array files carry the epoch in their name and `state.json` (which names
them) is replaced last, so a process killed at any instant (SIGKILL
included) leaves a consistent checkpoint of the previous epoch or of the new
one, never a torn mix. Files the new state no longer names are then deleted.

The state of stateful callbacks survives a restart: EarlyStopping's
`wait`/`best`/`best_weights`, ReduceLROnPlateau's counters, TargetReached's
epoch (see `CALLBACK_STATE`), or any callback with `get_state()` /
`set_state(state)` methods. A resumed run therefore stops at the same epoch
as an uninterrupted one.

Why not Keras' `BackupAndRestore`? It restores the weights, but a
`Dataset.shuffle(reshuffle_each_iteration=True)` then replays the FIRST
epoch's order in the resumed epoch, and callbacks' state is lost. Here the
data of each epoch comes from `epoch_data(epoch)` (the caller derives its
order and its sampling seed from the epoch number); the epochs' datasets are
chained into one, consumed `steps_per_epoch` batches at a time.

The per-epoch history can also be written to a CSV file (`csv_path`): it is
rewritten atomically from the checkpoint's history, so a restarted run never
repeats or loses a row (Keras' CSVLogger appends, and repeats the epochs
redone after a crash).
"""

import csv
import json
import os

import keras
import numpy as np

STATE_FILE = "state.json"


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
    save_arrays_dict(path, arrays)


def load_arrays(path, variables, what, keep=None):
    """Assigns the arrays saved by `save_arrays` back to `variables`.

    `keep`: optional list of bools, one per variable; only those marked True
    are assigned (all are still checked against the file).
    """
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
    for i, (variable, array) in enumerate(zip(variables, arrays)):
        if keep is None or keep[i]:
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


class _EpochBegin(keras.callbacks.Callback):
    """Runs `hook(epoch)` (epoch counted from 0 in this call) before the
    other callbacks see the epoch begin, e.g. to reseed a sampler."""

    def __init__(self, hook, epoch_offset):
        super().__init__()
        self.hook = hook
        self.epoch_offset = epoch_offset

    def on_epoch_begin(self, epoch, logs=None):
        self.hook(epoch - self.epoch_offset)


# Attributes that make up the state of stateful Keras callbacks.
CALLBACK_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_weights", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
}


def _plain(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def get_callback_state(callbacks):
    """The state of each callback in `callbacks`: a list of dicts (or None).

    Stateful Keras callbacks (`CALLBACK_STATE`) give their counters and best
    values, a callback with a `get_state()` method what that returns.
    """
    states = []
    for callback in callbacks:
        if callable(getattr(callback, "get_state", None)):
            state = dict(callback.get_state())
        else:
            names = next((a for cls, a in CALLBACK_STATE.items() if isinstance(callback, cls)), None)
            state = None if names is None else {n: _plain(getattr(callback, n, None)) for n in names}
        states.append(None if state is None else {"class": type(callback).__name__, "state": state})
    return states


def set_callback_state(callbacks, states):
    """Puts back what `get_callback_state` returned, callback by callback.

    A callback whose class differs from the saved one at its position (the
    list changed between runs) keeps its own fresh state.
    """
    for callback, saved in zip(callbacks, states or ()):
        if saved is None or saved["class"] != type(callback).__name__:
            continue
        if callable(getattr(callback, "set_state", None)):
            callback.set_state(saved["state"])
        else:
            for name, value in saved["state"].items():
                setattr(callback, name, value)


def _split_arrays(states):
    """Moves lists of arrays (EarlyStopping's best weights) out of the JSON."""
    json_states, arrays = [], {}
    for i, saved in enumerate(states):
        if saved is None:
            json_states.append(None)
            continue
        plain = {}
        for name, value in saved["state"].items():
            if isinstance(value, (list, tuple)) and value and all(isinstance(a, np.ndarray) for a in value):
                for j, array in enumerate(value):
                    arrays[f"c{i}_{name}_{j}"] = array
                plain[name] = {"__arrays__": len(value)}
            else:
                plain[name] = value
        json_states.append({"class": saved["class"], "state": plain})
    return json_states, arrays


def _join_arrays(json_states, path):
    if not any(s and any(isinstance(v, dict) and "__arrays__" in v for v in s["state"].values())
               for s in json_states):
        return json_states
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"Checkpoint {path} is unreadable ({e}); delete it to start over.") from None
    states = []
    for i, saved in enumerate(json_states):
        if saved is None:
            states.append(None)
            continue
        state = {}
        for name, value in saved["state"].items():
            if isinstance(value, dict) and "__arrays__" in value:
                value = [arrays[f"c{i}_{name}_{j}"] for j in range(value["__arrays__"])]
            state[name] = value
        states.append({"class": saved["class"], "state": state})
    return states


def read_callback_state(directory):
    """The callback state saved in a `fit_resumable` directory (or None)."""
    state = read_json(os.path.join(directory, STATE_FILE))
    if not state or state.get("callbacks") is None:
        return None
    return _join_arrays(state["callbacks"], os.path.join(directory, state.get("callbacks_file") or ""))


def _write_csv(path, history, first_epoch):
    """Rewrites the rows of epochs `first_epoch ...` of a CSV log from `history`.

    Rows of other epochs (e.g. earlier rounds of a loop) are kept; the file
    is replaced atomically, so a crash never leaves a repeated or torn row.
    """
    count = len(next(iter(history.values()), []))
    rows = []
    if os.path.exists(path):
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f)
                    if r.get("epoch", "").isdigit()
                    and not first_epoch <= int(r["epoch"]) < first_epoch + count]
    for i in range(count):
        rows.append({"epoch": str(first_epoch + i), **{k: repr(float(v[i])) for k, v in history.items()}})
    rows.sort(key=lambda r: int(r["epoch"]))
    keys = sorted({k for r in rows for k in r if k != "epoch"})

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["epoch", *keys], restval="")
            writer.writeheader()
            writer.writerows(rows)

    _atomic_write(path, write)


class _Checkpoint(keras.callbacks.Callback):
    """Last in `fit`'s callback list: checkpoints every epoch (module docstring)."""

    def __init__(self, trainer, directory, callbacks, monitor, mode, patience, epoch_offset, csv_path,
                 callback_state, min_epochs=0):
        super().__init__()
        self.min_epochs = min_epochs
        self.trainer = trainer
        self.directory = directory
        self.callbacks = callbacks
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.epoch_offset = epoch_offset
        self.csv_path = csv_path
        self.initial_callback_state = callback_state
        self.state_path = os.path.join(directory, STATE_FILE)
        self.state = read_json(self.state_path) or {
            "epochs_done": 0, "history": {}, "best": None, "best_epoch": None, "wait": 0,
            "stopped": False, "finished": False, "trainer_file": None, "best_file": None,
            "callbacks": None, "callbacks_file": None,
        }
        if "trainer_file" not in self.state:  # written before per-epoch file names
            self.state.update(
                trainer_file="last.npz" if self.state["epochs_done"] else None, finished=False,
                best_file="best.npz" if self.state.get("best_epoch") is not None else None,
                callbacks=None, callbacks_file=None,
            )
            self.state["stopped"] = self.state.get("stopped", False)

    def path(self, name):
        return os.path.join(self.directory, name)

    def on_train_begin(self, logs=None):
        # The other callbacks' on_train_begin ran first and reset them.
        saved = read_callback_state(self.directory) if self.state["epochs_done"] else None
        set_callback_state(self.callbacks, saved or self.initial_callback_state)

    def on_epoch_end(self, epoch, logs=None):
        e = epoch - self.epoch_offset
        logs = {key: float(np.asarray(value).reshape(-1)[0]) for key, value in (logs or {}).items()}
        state = self.state
        for key, value in logs.items():
            state["history"].setdefault(key, []).append(value)
        if self.monitor is not None:
            if self.monitor not in logs:
                raise ValueError(
                    f"Early stopping monitors {self.monitor!r}, which is not among the logs {sorted(logs)}."
                )
            if _improved(logs[self.monitor], state["best"], self.mode):
                state.update(best=logs[self.monitor], best_epoch=e, wait=0, best_file=f"best_{e}.npz")
                save_arrays(self.path(state["best_file"]), self.trainer.policy.weights)
            elif e >= self.min_epochs:  # epochs before min_epochs do not count toward patience
                state["wait"] += 1
                if self.patience is not None and state["wait"] >= self.patience:
                    self.model.stop_training = True
        state["stopped"] = bool(self.model.stop_training)
        state["epochs_done"] = e + 1
        self._save(f"last_{e}.npz", f"callbacks_{e}.npz")

    def on_train_end(self, logs=None):
        # After EarlyStopping(restore_best_weights=True) put its weights back.
        if self.monitor is not None and self.state["best_file"]:
            load_arrays(self.path(self.state["best_file"]), self.trainer.policy.weights, "policy")
        self.state["finished"] = True
        self._save("final.npz", "callbacks_final.npz")

    def _save(self, trainer_file, callbacks_file):
        state = self.state
        save_trainer(self.path(trainer_file), self.trainer)
        json_states, arrays = _split_arrays(get_callback_state(self.callbacks))
        state.update(trainer_file=trainer_file, callbacks=json_states,
                     callbacks_file=callbacks_file if arrays else None)
        if arrays:
            save_arrays_dict(self.path(callbacks_file), arrays)
        write_json(self.state_path, state)  # last: it names the files above
        keep = {STATE_FILE, state["trainer_file"], state["best_file"], state["callbacks_file"]}
        for name in os.listdir(self.directory):
            if name.endswith(".npz") and name not in keep:
                os.remove(self.path(name))
        if self.csv_path:
            _write_csv(self.csv_path, state["history"], self.epoch_offset)


def save_arrays_dict(path, arrays):
    """Saves a dict of named arrays to an `.npz`, atomically."""

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic_write(path, write)


def _chain(epoch_data, first, end, steps_per_epoch):
    """The datasets of epochs `first .. end - 1` as one, and the steps per epoch."""
    datasets = [epoch_data(e) for e in range(first, end)]
    if not datasets:  # nothing left to run: fit only calls on_train_begin/end
        return epoch_data(max(first - 1, 0)), steps_per_epoch or 1
    if steps_per_epoch is None:
        sizes = [int(d.cardinality()) for d in datasets]
        if any(s < 0 for s in sizes):
            raise ValueError(
                "epoch_data gave a dataset of unknown or infinite length; pass steps_per_epoch."
            )
        if len(set(sizes)) > 1:
            raise ValueError(f"epoch_data gave epochs of different lengths ({sorted(set(sizes))} batches); "
                             "every epoch must have as many batches (or pass steps_per_epoch).")
        steps_per_epoch = sizes[0]
        if steps_per_epoch == 0:
            raise ValueError("epoch_data gave an empty dataset: there is nothing to train on.")
    else:
        datasets = [d.take(steps_per_epoch) for d in datasets]
    chained = datasets[0]
    for dataset in datasets[1:]:
        chained = chained.concatenate(dataset)
    return chained.with_options(datasets[0].options()), steps_per_epoch


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
    min_epochs=0,
    on_epoch_begin=None,
    epoch_offset=0,
    verbose="auto",
    csv_path=None,
    callback_state=None,
):
    """`trainer.fit` over all epochs, checkpointed every epoch, resumable, exact.

    Args:
        trainer: a compiled trainer (`MLETrainer`, `ReinforceTrainer`, ...)
            with a `policy` attribute.
        epoch_data: callable `epoch -> dataset`. Must give the same data for
            the same epoch in every process (derive order and seeds from
            `epoch`). Every epoch has the same number of batches, or
            `steps_per_epoch` is given (then each dataset is cut to it).
        epochs: int. Total epochs.
        directory: str. Where the checkpoint lives; created if missing. An
            existing checkpoint there is resumed.
        validation_data: optional dataset passed to `fit`.
        steps_per_epoch: int or None. Batches per epoch; None counts them.
        callbacks: Keras callbacks. `model.stop_training` set by any of them
            ends training (and a resumed run stays stopped); their state is
            kept across epochs and restarts (`CALLBACK_STATE`).
        monitor: str or None. A log key for early stopping (e.g.
            `"val_perplexity"`); the best epoch's policy weights are restored
            at the end. Defaults to `None` (no early stopping).
        mode: str. `"min"` or `"max"` for `monitor`.
        patience: int or None. Epochs without improvement before stopping.
        min_epochs: int. The first `min_epochs` epochs do not count toward
            `patience` (the best epoch is still tracked from the first), so
            early stopping ends training after `min_epochs + patience`
            epochs at the soonest. For models that sit on a plateau before
            they learn, where a short patience would stop them there.
            Defaults to `0`.
        on_epoch_begin: callable `epoch -> None` run before each epoch (before
            the callbacks' `on_epoch_begin`), e.g. to reseed a sampler.
        epoch_offset: int. Added to the epoch index the callbacks see (so
            several calls, e.g. the rounds of a loop, log one after another
            in TensorBoard); `epoch_data` still gets `0 .. epochs - 1`.
        verbose: passed to `fit`.
        csv_path: str or None. A CSV log of the epochs, rewritten atomically
            (rows of other epochs in the file are kept).
        callback_state: what an earlier call returned as `callback_state`:
            the callbacks start from it instead of fresh (the rounds of a loop
            share one EarlyStopping this way). A checkpoint's own saved state
            wins on resume.

    Returns:
        dict: `history` (key -> list per epoch), `resumed_from` (epochs
        found done at start), `best_epoch` (or None), `stopped` (True when a
        callback or `patience` ended training early), `epochs_done`,
        `callback_state` (see above).
    """
    if isinstance(min_epochs, bool) or not isinstance(min_epochs, (int, np.integer)) or min_epochs < 0:
        raise ValueError(f"min_epochs must be an integer >= 0; got {min_epochs!r}.")
    os.makedirs(directory, exist_ok=True)
    callbacks = list(callbacks)
    checkpoint = _Checkpoint(trainer, directory, callbacks, monitor, mode, patience, epoch_offset, csv_path,
                             callback_state, min_epochs=int(min_epochs))
    state = checkpoint.state
    resumed_from = state["epochs_done"]
    if state["finished"]:
        restore_trainer(checkpoint.path(state["trainer_file"]), trainer)
        if csv_path:
            _write_csv(csv_path, state["history"], epoch_offset)
        callback_state = read_callback_state(directory)
    else:
        if resumed_from:
            restore_trainer(checkpoint.path(state["trainer_file"]), trainer)
        end = resumed_from if state["stopped"] else epochs
        data, steps = _chain(epoch_data, resumed_from, end, steps_per_epoch)
        first = [_EpochBegin(on_epoch_begin, epoch_offset)] if on_epoch_begin is not None else []
        trainer.fit(
            data,
            validation_data=validation_data,
            epochs=epoch_offset + end,
            initial_epoch=epoch_offset + resumed_from,
            steps_per_epoch=steps,
            callbacks=first + callbacks + [checkpoint],
            verbose=verbose,
            shuffle=False,
        )
        callback_state = get_callback_state(callbacks)
    return {
        "history": state["history"], "resumed_from": resumed_from, "best_epoch": state["best_epoch"],
        "stopped": state["stopped"], "epochs_done": state["epochs_done"], "callback_state": callback_state,
    }


def carry_trainer_state(directory, trainer):
    """Restores a trainer's own state from another `fit_resumable` directory.

    The optimizer's variables (Adam's moments, its step count, the learning
    rate) and the trainer's non-policy variables (the adaptive KL
    coefficient, the moving-average baseline, its own seed generators) come
    from the checkpoint in `directory`; the policy's weights (and its dropout
    seeds) and a frozen reference policy's do not: they belong to what ran
    since. Returns False when `directory` holds none.
    """
    state = read_json(os.path.join(directory, STATE_FILE))
    if not state or not state.get("trainer_file"):
        return False
    variables = list(trainer.variables) + optimizer_variables(trainer)
    skip = {id(v) for v in trainer.policy.variables}
    reference = getattr(trainer, "reference_policy", None)  # frozen: nothing to carry
    if reference is not None:
        skip.update(id(v) for v in reference.variables)
    keep = [id(v) not in skip for v in variables]
    load_arrays(os.path.join(directory, state["trainer_file"]), variables, "trainer and optimizer", keep)
    return True

def epoch_order(num_rows, seed, epoch):
    """A permutation of `num_rows` that depends only on `(seed, epoch)`."""
    return np.random.default_rng([seed, epoch]).permutation(num_rows)
