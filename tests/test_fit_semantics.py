"""Resumable training keeps `fit()`'s semantics: stop_training, callback state, state across rounds.

- `fit_resumable` honours `model.stop_training` from any callback
  (EarlyStopping, TerminateOnNaN) and keeps callbacks' state across epochs
  AND across a restart, so an interrupted run stops at the same epoch as an
  uninterrupted one.
- The self-feedback loop keeps one trainer per method, so the optimizer,
  the adaptive KL coefficient and the moving-average baseline carry from
  round to round (and across a resume); `carry_state=False` resets them.
- The per-epoch CSV history is rewritten atomically: a crash and a resume
  never repeat a row.
"""

import csv
import errno

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.loop import SelfFeedbackLoop
from keras_selffb.models import LLMEncoder, PolicyNetwork
from keras_selffb.training import ContrastiveTrainer, MLETrainer
from keras_selffb.training import checkpoint as checkpoint_module
from keras_selffb.training.checkpoint import epoch_order, fit_resumable

from test_loop import P, R, TOKENIZER, TRAIN, VALIDATION, ShareOfA

VOCAB, PROMPT, LENGTH = 12, 3, 8
ROWS = np.random.default_rng(0).integers(5, VOCAB, size=(32, LENGTH)).astype("int32")


def mle_trainer():
    keras.utils.set_random_seed(1)
    policy = PolicyNetwork(VOCAB, 4, 8)
    trainer = MLETrainer(policy, prompt_length=PROMPT)
    trainer.build((None, LENGTH))
    trainer.compile(optimizer=keras.optimizers.Adam(0.01))
    return trainer


def epoch_data(epoch):
    return tf.data.Dataset.from_tensor_slices(ROWS[epoch_order(len(ROWS), 0, epoch)]).batch(8)


def never_improves(patience):
    """EarlyStopping that stops `patience` epochs after the first, whatever the values.

    With `min_delta=1e9` no epoch after the first improves: `wait` grows by one
    per epoch. A fresh EarlyStopping after a restart would start counting again.
    """
    return keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=patience, min_delta=1e9)


class CrashAtEpoch(keras.callbacks.Callback):
    """Raises as epoch `epoch` begins: the process 'dies' after the previous epoch's checkpoint."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def weights(trainer):
    return [w.numpy() for w in trainer.policy.weights]


def csv_epochs(path):
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_early_stopping_stops_fit_resumable_at_the_same_epoch_after_a_restart(tmp_path):
    trainer = mle_trainer()
    full = fit_resumable(trainer, epoch_data, 10, str(tmp_path / "full"), callbacks=[never_improves(2)],
                         verbose=0, csv_path=str(tmp_path / "full.csv"))
    # Epoch 0 sets `best`; epochs 1 and 2 do not improve: stop after epoch 2 of 10.
    assert full["stopped"] and full["epochs_done"] == 3
    assert csv_epochs(tmp_path / "full.csv") == [0, 1, 2]

    first = mle_trainer()
    with pytest.raises(KeyboardInterrupt):
        fit_resumable(first, epoch_data, 10, str(tmp_path / "cut"), callbacks=[never_improves(2), CrashAtEpoch(2)],
                      verbose=0, csv_path=str(tmp_path / "cut.csv"))
    # A new process: new trainer, new EarlyStopping whose wait starts at 0.
    resumed_trainer = mle_trainer()
    resumed = fit_resumable(resumed_trainer, epoch_data, 10, str(tmp_path / "cut"), callbacks=[never_improves(2)],
                            verbose=0, csv_path=str(tmp_path / "cut.csv"))
    assert resumed["resumed_from"] == 2
    assert resumed["stopped"] and resumed["epochs_done"] == 3  # not 5: the wait counter was restored
    assert resumed["history"] == full["history"]
    for a, b in zip(weights(resumed_trainer), weights(trainer)):
        np.testing.assert_array_equal(a, b)
    assert csv_epochs(tmp_path / "cut.csv") == [0, 1, 2]
    # Run again once finished: nothing more is trained.
    again = mle_trainer()
    result = fit_resumable(again, epoch_data, 10, str(tmp_path / "cut"), callbacks=[never_improves(2)], verbose=0)
    assert result["epochs_done"] == 3
    for a, b in zip(weights(again), weights(trainer)):
        np.testing.assert_array_equal(a, b)


def test_min_epochs_keeps_patience_from_stopping_on_an_early_plateau(tmp_path):
    # "max" of a falling loss: epoch 0 stays the best, so patience 1 alone stops after epoch 1.
    short = fit_resumable(mle_trainer(), epoch_data, 10, str(tmp_path / "short"), monitor="loss", mode="max",
                          patience=1, verbose=0)
    assert short["stopped"] and short["epochs_done"] == 2 and short["best_epoch"] == 0
    trainer = mle_trainer()
    best_epoch_weights = [w.numpy() for w in trainer.policy.weights]

    class Remember(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                best_epoch_weights[:] = [w.numpy() for w in trainer.policy.weights]

    held = fit_resumable(trainer, epoch_data, 10, str(tmp_path / "held"), monitor="loss", mode="max",
                         patience=1, min_epochs=5, callbacks=[Remember()], verbose=0)
    # Epochs 1-4 do not count; epoch 5 is the first without improvement that does.
    assert held["stopped"] and held["epochs_done"] == 6 and held["best_epoch"] == 0
    for a, b in zip(weights(trainer), best_epoch_weights):  # the best epoch's weights are restored
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="min_epochs"):
        fit_resumable(mle_trainer(), epoch_data, 2, str(tmp_path / "bad"), monitor="loss", min_epochs=-1)


def test_early_stopping_restore_best_weights_survives_a_restart(tmp_path):
    def stopper():
        return keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)

    reference = mle_trainer()
    best_epoch_weights = {}

    class Remember(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            best_epoch_weights.setdefault(epoch, [w.numpy() for w in reference.policy.weights])

    fit_resumable(reference, epoch_data, 10, str(tmp_path / "full"), callbacks=[Remember(), stopper()], verbose=0)
    # "max" of a falling loss: epoch 0 is the best; its weights come back.
    for a, b in zip(weights(reference), best_epoch_weights[0]):
        np.testing.assert_array_equal(a, b)

    with pytest.raises(KeyboardInterrupt):
        fit_resumable(mle_trainer(), epoch_data, 10, str(tmp_path / "cut"), callbacks=[stopper(), CrashAtEpoch(2)],
                      verbose=0)
    resumed = mle_trainer()
    fit_resumable(resumed, epoch_data, 10, str(tmp_path / "cut"), callbacks=[stopper()], verbose=0)
    for a, b in zip(weights(resumed), best_epoch_weights[0]):
        np.testing.assert_array_equal(a, b)


class PoisonAtBatch(keras.callbacks.Callback):
    """Sets the policy's output bias to NaN after batch `batch` of epoch `epoch`."""

    def __init__(self, epoch=0, batch=1):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            bias = self.model.policy.weights[-1]
            bias.assign(np.full(bias.shape, np.nan, "float32"))


def test_terminate_on_nan_stops_fit_resumable_and_a_rerun_stays_stopped(tmp_path):
    trainer = mle_trainer()
    result = fit_resumable(trainer, epoch_data, 5, str(tmp_path),
                           callbacks=[PoisonAtBatch(0, 1), keras.callbacks.TerminateOnNaN()], verbose=0)
    assert result["stopped"] and result["epochs_done"] == 1
    assert np.isnan(result["history"]["loss"][0])
    rerun = fit_resumable(mle_trainer(), epoch_data, 5, str(tmp_path), callbacks=[keras.callbacks.TerminateOnNaN()],
                          verbose=0)
    assert rerun["epochs_done"] == 1 and rerun["resumed_from"] == 1


def test_a_full_disk_mid_run_then_a_resume_neither_repeats_nor_loses_csv_rows(tmp_path, monkeypatch):
    reference = mle_trainer()
    fit_resumable(reference, epoch_data, 4, str(tmp_path / "full"), verbose=0, csv_path=str(tmp_path / "full.csv"))

    real_save = checkpoint_module.save_trainer
    calls = []

    def full_disk(path, trainer):
        calls.append(path)
        if len(calls) == 3:  # the checkpoint of epoch 2
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_save(path, trainer)

    monkeypatch.setattr(checkpoint_module, "save_trainer", full_disk)
    with pytest.raises(OSError, match="No space left"):
        fit_resumable(mle_trainer(), epoch_data, 4, str(tmp_path / "cut"), verbose=0, csv_path=str(tmp_path / "cut.csv"))
    monkeypatch.setattr(checkpoint_module, "save_trainer", real_save)
    assert csv_epochs(tmp_path / "cut.csv") == [0, 1]
    resumed = mle_trainer()
    result = fit_resumable(resumed, epoch_data, 4, str(tmp_path / "cut"), verbose=0, csv_path=str(tmp_path / "cut.csv"))
    assert result["resumed_from"] == 2
    assert csv_epochs(tmp_path / "cut.csv") == [0, 1, 2, 3]
    assert (tmp_path / "cut.csv").read_text() == (tmp_path / "full.csv").read_text()
    for a, b in zip(weights(resumed), weights(reference)):
        np.testing.assert_array_equal(a, b)


def test_epochs_of_different_lengths_are_refused(tmp_path):
    def uneven(epoch):
        return tf.data.Dataset.from_tensor_slices(ROWS[: 8 * (epoch + 1)]).batch(8)

    with pytest.raises(ValueError, match="different lengths"):
        fit_resumable(mle_trainer(), uneven, 2, str(tmp_path), verbose=0)


# -- the self-feedback loop -------------------------------------------------


def rl_loop(directory=None, rounds=3, callbacks=(), **kwargs):
    keras.utils.set_random_seed(7)
    policy = PolicyNetwork(TOKENIZER.vocabulary_size, 8, 16)
    options = dict(
        methods="rl", rounds=rounds, num_samples=2, rl_steps=2, rl_batch_size=4, rl_learning_rate=0.01,
        rl_options={"baseline": "moving_average", "kl_coef": 0.1, "target_kl": 0.01},
        text_metrics=False, directory=directory, seed=3, verbose=0, score_batch_size=16,
        callbacks=list(callbacks),
    )
    options.update(kwargs)
    return SelfFeedbackLoop(policy, TOKENIZER, ShareOfA(), TRAIN, VALIDATION, P, R, **options)


def test_loop_carries_optimizer_kl_and_baseline_across_rounds(tmp_path):
    carried = rl_loop(str(tmp_path / "carry"), rounds=2)
    carried.run()
    trainer = carried._trainers["rl"]
    # rl_steps=2 is one epoch of 2 steps per round: 2 rounds, 4 steps on one optimizer.
    assert int(trainer.optimizer.iterations.numpy()) == 4
    assert float(trainer.baseline_steps.numpy()) == 4.0
    fresh = rl_loop(str(tmp_path / "fresh"), rounds=2, carry_state=False)
    fresh.run()
    assert fresh._trainers == {}  # nothing kept: a trainer per round


def test_loop_resumed_after_a_round_equals_the_uninterrupted_loop(tmp_path):
    full = rl_loop(str(tmp_path / "full"), rounds=3)
    full_history = full.run()
    rl_loop(str(tmp_path / "cut"), rounds=1).run()  # "killed" after round 1
    resumed = rl_loop(str(tmp_path / "cut"), rounds=3)
    history = resumed.run()
    assert [h["metrics"] for h in history] == [h["metrics"] for h in full_history]
    a, b = resumed._trainers["rl"], full._trainers["rl"]
    # The resumed trainer took round 1's optimizer, KL coefficient and baseline from disk.
    # 2 steps of round 1 carried from disk + rounds 2 and 3 in this process.
    assert int(a.optimizer.iterations.numpy()) == int(b.optimizer.iterations.numpy()) == 6
    assert float(a.kl_coef.numpy()) == float(b.kl_coef.numpy())
    assert float(a.moving_baseline.numpy()) == float(b.moving_baseline.numpy())
    for x, y in zip(resumed.policy.weights, full.policy.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_early_stopping_inside_the_loop_counts_epochs_of_all_rounds_and_survives_a_resume(tmp_path):
    # One epoch per round. EarlyStopping with patience 2 stops at the third
    # epoch of the whole loop (round 3 of 5); it would never stop if each
    # round's fit started it afresh (one epoch each).
    stopper = keras.callbacks.EarlyStopping(monitor="reward", mode="max", patience=2, min_delta=1e9)
    full = rl_loop(str(tmp_path / "full"), rounds=5, callbacks=[stopper]).run()
    assert len(full) - 1 == 3 and full[-1]["stopped"]
    assert all("stopped" not in h for h in full[:-1])

    early = keras.callbacks.EarlyStopping(monitor="reward", mode="max", patience=2, min_delta=1e9)
    rl_loop(str(tmp_path / "cut"), rounds=1, callbacks=[early]).run()  # "killed" after round 1
    late = keras.callbacks.EarlyStopping(monitor="reward", mode="max", patience=2, min_delta=1e9)
    resumed = rl_loop(str(tmp_path / "cut"), rounds=5, callbacks=[late]).run()
    assert len(resumed) - 1 == 3 and resumed[-1]["stopped"]
    assert [h["metrics"] for h in resumed] == [h["metrics"] for h in full]
    # And a stopped loop stays stopped when run again.
    again = rl_loop(str(tmp_path / "cut"), rounds=5, callbacks=[keras.callbacks.TerminateOnNaN()]).run()
    assert len(again) - 1 == 3


def test_terminate_on_nan_inside_a_round_ends_the_loop(tmp_path):
    loop = rl_loop(str(tmp_path), rounds=3, methods=("rl", "filtered"),
                   callbacks=[PoisonAtBatch(0, 0), keras.callbacks.TerminateOnNaN()])
    history = loop.run()
    assert len(history) - 1 == 1 and history[-1]["stopped"]
    assert "filtered" not in history[-1]  # the round's remaining method was skipped
    assert history[-1]["diverged"]  # NaN weights: back to the start of the round
    for weight, start in zip(loop.policy.weights, np.load(tmp_path / "round_0.npz").values()):
        np.testing.assert_array_equal(weight.numpy(), start)


def test_contrastive_trainer_defaults_are_the_measured_settings():
    policy = PolicyNetwork(VOCAB, 4, 8)
    trainer = ContrastiveTrainer(policy, PROMPT, 4)  # no encoder: trains the policy
    assert (trainer.mode, trainer.rank_weight, trainer.mle_weight) == ("sequence_likelihood", 1.0, 1.0)
    encoder = LLMEncoder(VOCAB, 4, 8)
    assert ContrastiveTrainer(policy, PROMPT, 4, encoder=encoder).mode == "encoder"


# -- the `keras-selffb train` pipeline --------------------------------------

PIPELINE = {
    "embedding_dim": 8, "hidden_dim": 16, "batch_size": 8, "learning_rate": 0.01,
    "prompt_length": 24, "response_length": 16, "num_samples": 1, "epochs": 6, "patience": 6,
    "feedback_rounds": 4, "feedback_methods": "rl", "rl_steps": 4, "rl_batch_size": 4,
    "rl_samples": 2, "seed": 2,
    # What is tested here is the callbacks' semantics: no relevance judge
    # (tests/test_cli.py runs the default job's judge), no collapse guard.
    "judge_epochs": 0, "reward_judge": 0.0, "feedback_min_distinct": 0.0,
}


def pipeline_config(tmp_path, name):
    import json

    from conftest import CLI_PAIRS

    from keras_selffb.config import TrainConfig

    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        data.write_text("\n".join(json.dumps({"prompt": f"{p} {i}", "response": r}, ensure_ascii=False)
                                  for i in range(6) for p, r in CLI_PAIRS), encoding="utf-8")
    return TrainConfig.from_dict({**PIPELINE, "data": str(data), "output": str(tmp_path / name)})


def final_weights(config):
    import os

    policy = keras.saving.load_model(os.path.join(config.run_dir, "policy.keras"))
    return [w.numpy() for w in policy.weights]


@pytest.mark.slow
def test_early_stopping_in_the_pipeline_stops_mle_and_the_rounds_and_a_resumed_run_stops_alike(tmp_path):
    from keras_selffb.pipeline import run_train

    def stopper():  # stops 2 epochs after the first, in MLE and again over the rounds
        return never_improves(2)

    config = pipeline_config(tmp_path, "full")
    full = run_train(config, verbose=0, callbacks=[stopper()])
    assert full["mle"]["epochs"] == 3  # of 6
    # One RL epoch per round: the stopper's third epoch is round 3 (of 4).
    assert full["feedback"]["rounds"] == 3 and full["rounds"][-1]["stopped"]

    cut = pipeline_config(tmp_path, "cut")
    with pytest.raises(KeyboardInterrupt):  # killed as MLE's epoch 2 begins
        run_train(cut, verbose=0, callbacks=[stopper(), CrashAtEpoch(2)])
    with pytest.raises(KeyboardInterrupt):  # killed again as round 3 begins (loop epoch 2)
        run_train(cut, verbose=0, callbacks=[stopper(), CrashAtEpoch(2)])
    resumed = run_train(cut, verbose=0, callbacks=[stopper()])
    assert resumed["mle"] == full["mle"] | {"seconds": resumed["mle"]["seconds"]}
    assert resumed["feedback"]["rounds"] == 3
    assert [r["metrics"] for r in resumed["rounds"]] == [r["metrics"] for r in full["rounds"]]
    for a, b in zip(final_weights(cut), final_weights(config)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_terminate_on_nan_in_the_pipeline_keeps_the_last_good_weights(tmp_path):
    from keras_selffb.pipeline import run_train

    config = pipeline_config(tmp_path, "nan")
    # NaN weights after MLE epoch 1's first batch, and again in the loop's epoch 1 (round 2).
    report = run_train(config, verbose=0, callbacks=[PoisonAtBatch(epoch=1, batch=0)])
    assert report["mle"]["epochs"] == 2  # TerminateOnNaN (on by default) stopped MLE in epoch 1 of 6
    assert np.isfinite(report["mle"]["validation_perplexity"])  # the best epoch (0) was kept
    rounds = report["rounds"]
    assert len(rounds) - 1 == 2 and rounds[-1]["diverged"] and rounds[-1]["stopped"]
    assert rounds[-1]["metrics"] == rounds[1]["metrics"]  # round 2 undone: round 1's policy
    assert all(np.isfinite(w).all() for w in final_weights(config))


def test_a_kill_between_an_epochs_weights_and_its_state_file_resumes_exactly(tmp_path, monkeypatch):
    reference = mle_trainer()
    fit_resumable(reference, epoch_data, 4, str(tmp_path / "full"), verbose=0)

    real_write = checkpoint_module.write_json
    calls = []

    def dies(path, value):
        calls.append(path)
        if len(calls) == 2:  # epoch 1's weights are on disk, its state.json is not
            raise KeyboardInterrupt
        real_write(path, value)

    monkeypatch.setattr(checkpoint_module, "write_json", dies)
    with pytest.raises(KeyboardInterrupt):
        fit_resumable(mle_trainer(), epoch_data, 4, str(tmp_path / "cut"), verbose=0)
    monkeypatch.setattr(checkpoint_module, "write_json", real_write)
    resumed = mle_trainer()
    result = fit_resumable(resumed, epoch_data, 4, str(tmp_path / "cut"), verbose=0)
    assert result["resumed_from"] == 1  # epoch 1 is redone from epoch 0's checkpoint, not from its own weights
    for a, b in zip(weights(resumed), weights(reference)):
        np.testing.assert_array_equal(a, b)


def test_mle_that_diverges_from_the_first_batch_is_one_clear_error(tmp_path):
    from keras_selffb.pipeline import run_train

    config = pipeline_config(tmp_path, "diverged")
    with pytest.raises(ValueError, match=r"MLE diverged: .*NaN or inf after epoch 1 .*lower learning_rate"):
        run_train(config, verbose=0, callbacks=[PoisonAtBatch(epoch=0, batch=0)])


def test_reduce_lr_on_plateau_keeps_its_counters_across_a_restart(tmp_path):
    def plateau():  # no epoch after the first improves: the rate halves every 2nd epoch
        return keras.callbacks.ReduceLROnPlateau(monitor="loss", mode="max", patience=2, min_delta=1e9,
                                                 factor=0.5, verbose=0)

    full = mle_trainer()
    fit_resumable(full, epoch_data, 5, str(tmp_path / "full"), callbacks=[plateau()], verbose=0)
    # Epoch 0 sets the best; epochs 1-2 wait, the rate halves at 2; 3-4 wait, it halves at 4.
    assert float(full.optimizer.learning_rate.numpy()) == pytest.approx(0.01 / 4)

    with pytest.raises(KeyboardInterrupt):
        fit_resumable(mle_trainer(), epoch_data, 5, str(tmp_path / "cut"), callbacks=[plateau(), CrashAtEpoch(2)],
                      verbose=0)
    resumed = mle_trainer()
    fit_resumable(resumed, epoch_data, 5, str(tmp_path / "cut"), callbacks=[plateau()], verbose=0)
    # A fresh counter after the restart would have halved the rate only once (at epoch 4).
    assert float(resumed.optimizer.learning_rate.numpy()) == pytest.approx(0.01 / 4)
    for a, b in zip(weights(resumed), weights(full)):
        np.testing.assert_array_equal(a, b)
