"""Callbacks: logged keys, parity with rouge-score / sacrebleu, TensorBoard events, stopping."""

import csv
import glob
import math
import os
import types
import warnings

import keras
import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from rouge_score import rouge_scorer

from keras_selffb.callbacks import GenerationMetrics, RewardHistograms, TargetReached, TextSamples
from keras_selffb.models import PolicyNetwork
from keras_selffb.rewards import BleuReward, RougeLReward, WeightedReward
from keras_selffb.text import CharTokenizer, pack_pairs
from keras_selffb.training import MLETrainer, ReinforceTrainer
from keras_selffb.training.baselines import rloo_advantages

from conftest import cpu_devices, mirrored_strategy

# One-letter words: a barely trained char policy already shares words (and
# n-grams) with the references, so ROUGE-L and BLEU are far from 0.
LETTERS = "abcdef"
PAIRS = [
    (f"{LETTERS[i]} {LETTERS[(i + 1) % 6]}", " ".join(LETTERS[(i + k) % 6] for k in range(5)))
    for i in range(6)
]
PROMPTS = [prompt for prompt, _ in PAIRS]
REFERENCES = [reference for _, reference in PAIRS]
P, N = 6, 12  # prompt columns (BOS, SEP included), reply tokens (EOS included)


def read_events(log_dir):
    """`{tag: [(step, ndarray), ...]}` from every event file under `log_dir`."""
    found = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return found


def rouge_score_mean(references, replies):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(references, replies)]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One MLE fit with the epoch-level callbacks, and what they left behind."""
    keras.utils.set_random_seed(0)
    tokenizer = CharTokenizer.train(PROMPTS + REFERENCES)  # 12 ids
    policy = PolicyNetwork(tokenizer.vocabulary_size, 8, 8)
    trainer = MLETrainer(policy, prompt_length=P)
    trainer.compile(optimizer=keras.optimizers.Adam(0.05))
    packed = pack_pairs(tokenizer, PAIRS, P, N)
    # Learn the letters: 30 steps on the 6 pairs, in one epoch (cheaper than 30).
    trainer.fit(np.tile(packed, (30, 1)), batch_size=6, epochs=1, verbose=0, shuffle=False)
    log_dir = str(tmp_path_factory.mktemp("logs"))
    reward = WeightedReward({RougeLReward(tokenizer): 0.5, BleuReward(tokenizer): 0.5})
    metrics = GenerationMetrics(PAIRS, tokenizer, P, N, batch_size=4)  # 2 batches, last one padded
    samples = TextSamples(PROMPTS[:3], tokenizer, os.path.join(log_dir, "samples"), P, N,
                          reward=reward, references=REFERENCES[:3])
    early = keras.callbacks.EarlyStopping("val_rouge_l", mode="max", patience=10)
    csv_path = os.path.join(log_dir, "log.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = trainer.fit(
            packed, batch_size=6, epochs=3, verbose=0, shuffle=False,
            callbacks=[metrics, samples, early, keras.callbacks.CSVLogger(csv_path),
                       keras.callbacks.TensorBoard(os.path.join(log_dir, "tb"))],
        )
    return types.SimpleNamespace(
        tokenizer=tokenizer, policy=policy, trainer=trainer, history=history.history,
        metrics=metrics, samples=samples, early=early, csv_path=csv_path, log_dir=log_dir,
        warnings=[str(w.message) for w in caught],
    )


# -- GenerationMetrics --------------------------------------------------------


def test_generation_metrics_logs_every_epoch(run):
    for key in ("val_bleu", "val_rouge_l", "val_perplexity"):
        assert len(run.history[key]) == 3, key
    assert run.metrics.results == {
        name: run.history[f"val_{name}"][-1] for name in ("perplexity", "bleu", "rouge_l")
    }
    # Logged by GenerationMetrics and by nobody else: no overwrite warning.
    assert not [w for w in run.warnings if "overwrites" in w]


def test_rouge_and_bleu_equal_rouge_score_and_sacrebleu(run):
    replies = run.metrics.replies
    assert len(replies) == len(PAIRS)
    rouge, bleu = run.history["val_rouge_l"][-1], run.history["val_bleu"][-1]
    assert rouge > 0.1 and bleu > 1.0  # the comparison is not 0 == 0
    assert rouge == pytest.approx(rouge_score_mean(REFERENCES, replies), abs=1e-6)
    assert bleu == pytest.approx(sacrebleu.corpus_bleu(replies, [REFERENCES]).score, abs=1e-4)


def test_perplexity_equals_teacher_forced_nll(run):
    packed = pack_pairs(run.tokenizer, PAIRS, P, N)
    logits = run.policy(packed[:, :-1]).numpy()[:, P - 1 :]
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    targets = packed[:, P:]
    nll = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    mask = targets != 0
    expected = math.exp(nll[mask].sum() / mask.sum())
    assert run.history["val_perplexity"][-1] == pytest.approx(expected, rel=1e-5)


def test_csv_logger_and_early_stopping_see_the_keys(run):
    with open(run.csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["val_rouge_l"]) for row in rows] == pytest.approx(run.history["val_rouge_l"])
    assert [float(row["val_bleu"]) for row in rows] == pytest.approx(run.history["val_bleu"])
    # EarlyStopping read the key every epoch: its best is the logged maximum.
    assert run.early.best == pytest.approx(max(run.history["val_rouge_l"]))
    assert not [w for w in run.warnings if "conditioned on metric" in w]


def test_tensorboard_event_files_hold_the_scalars(run):
    events = read_events(os.path.join(run.log_dir, "tb", "validation"))
    for name in ("bleu", "rouge_l", "perplexity"):
        steps = [step for step, _ in events[f"epoch_{name}"]]
        values = [float(value) for _, value in events[f"epoch_{name}"]]
        assert steps == [0, 1, 2], name
        assert values == pytest.approx(run.history[f"val_{name}"], rel=1e-6), name


def test_packed_rows_and_every_n_epochs(run):
    packed = pack_pairs(run.tokenizer, PAIRS, P, N)
    callback = GenerationMetrics(packed, run.tokenizer, P, N, metrics=("rouge_l",), every_n_epochs=2)
    callback.set_model(run.trainer)
    logs = {}
    callback.on_epoch_end(0, logs)  # epoch 1 of 2: not scored
    assert logs == {}
    callback.on_epoch_end(1, logs)
    assert logs == {"val_rouge_l": pytest.approx(run.metrics.results["rouge_l"])}
    assert callback.replies == run.metrics.replies


def test_callback_order_decides_who_sees_the_keys(run):
    def epoch_end(callbacks):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            keras.callbacks.CallbackList(callbacks, model=run.trainer).on_epoch_end(0, {"loss": 1.0})
        return [str(w.message) for w in caught]

    after = TargetReached("val_rouge_l", 2.0)
    assert not epoch_end([run.metrics, after])
    (message,) = epoch_end([TargetReached("val_rouge_l", 2.0), run.metrics])
    assert "'val_rouge_l' is not in the epoch logs" in message and "['loss']" in message


def test_chinese_rouge_l_and_bleu_with_a_seeded_random_sampler():
    pairs = [("你好", "你好吗我很好"), ("天气", "今天天气很好"), ("谢谢", "不客气")]
    tokenizer = CharTokenizer.train([t for pair in pairs for t in pair])
    policy = PolicyNetwork(tokenizer.vocabulary_size, 8, 8)  # untrained: varied characters
    callback = GenerationMetrics(pairs, tokenizer, 4, 8, metrics=("rouge_l", "bleu"),
                                 sampler="random", seed=3)
    callback.set_model(policy)  # a bare PolicyNetwork works too
    first = callback.evaluate()
    replies = callback.replies
    assert callback.evaluate() == first and callback.replies == replies  # seeded

    def lcs(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    def f1(reference, reply):  # per character, the `cjk` segmentation of Chinese
        common = lcs(reference, reply)
        return 0.0 if common == 0 else 2 * common / (len(reference) + len(reply))

    references = [r for _, r in pairs]
    assert first["rouge_l"] > 0
    assert first["rouge_l"] == pytest.approx(np.mean([f1(r, h) for r, h in zip(references, replies)]), abs=1e-6)
    expected_bleu = sacrebleu.corpus_bleu(replies, [references], tokenize="zh").score
    assert first["bleu"] == pytest.approx(expected_bleu, abs=1e-4)


@pytest.mark.skipif(len(cpu_devices()) < 2, reason="needs 2 logical CPU devices")
def test_generation_metrics_under_mirrored_strategy_equal_one_device(run):
    strategy = mirrored_strategy()
    with strategy.scope():
        policy = PolicyNetwork(run.tokenizer.vocabulary_size, 8, 8)
        policy.set_weights(run.policy.get_weights())
    # 6 prompts in batches of 4: 2 per replica, then 2 padded to 4.
    callback = GenerationMetrics(PAIRS, run.tokenizer, P, N, batch_size=4)
    callback.set_model(policy)
    assert callback.evaluate() == pytest.approx(run.metrics.results, rel=1e-6)
    assert callback.replies == run.metrics.replies
    assert callback._generator.replicas == 2  # it really ran through strategy.run


# -- TextSamples ---------------------------------------------------------------


def test_text_samples_table_in_the_event_file(run):
    events = read_events(os.path.join(run.log_dir, "samples"))
    assert [step for step, _ in events["samples"]] == [0, 1, 2]
    written = events["samples"][-1][1].item().decode("utf-8")
    assert written == run.samples.table
    lines = written.splitlines()
    assert lines[0] == "| prompt | reply | reference | rouge_l | bleu | total |"
    assert len(lines) == 2 + 3
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for line, prompt, reference, reply in zip(lines[2:], PROMPTS, REFERENCES, run.metrics.replies):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        # Same greedy replies as GenerationMetrics at the same epoch end.
        assert cells[:3] == [prompt, reply.strip(), reference]
        rouge = scorer.score(reference, reply)["rougeL"].fmeasure
        bleu = sacrebleu.sentence_bleu(reply, [reference]).score / 100
        assert float(cells[3]) == pytest.approx(rouge, abs=1e-4)
        assert float(cells[4]) == pytest.approx(bleu, abs=1e-4)
        assert float(cells[5]) == pytest.approx(0.5 * float(cells[3]) + 0.5 * float(cells[4]), abs=2e-4)


def test_text_samples_arguments():
    tokenizer = CharTokenizer.train(["ab"])
    with pytest.raises(ValueError, match="references"):
        TextSamples(["a"], tokenizer, "unused", 4, 4, reward=RougeLReward())
    with pytest.raises(ValueError, match="2 references for 1 prompts"):
        TextSamples(["a"], tokenizer, "unused", 4, 4, references=["a", "b"])


# -- RewardHistograms and the trainer's last batch ------------------------------


def test_reward_histograms_of_the_last_rl_batch(run, tmp_path):
    keras.utils.set_random_seed(0)
    policy = PolicyNetwork(run.tokenizer.vocabulary_size, 8, 8)
    policy.set_weights(run.policy.get_weights())  # the fixture's policy stays as it was
    trainer = ReinforceTrainer(policy, RougeLReward(), prompt_length=P, max_new_tokens=N,
                               num_samples=2, seed=1)
    trainer.compile(optimizer=keras.optimizers.SGD(0.01))
    callback = RewardHistograms(str(tmp_path), every_n_steps=1)
    packed = pack_pairs(run.tokenizer, PAIRS[:3], P, N)
    # 3 rows in batches of 2: steps of 2 and 1 prompts (x K=2 candidates).
    trainer.fit(packed, batch_size=2, epochs=2, verbose=0, shuffle=False, callbacks=[callback])
    rewards, advantages = trainer.last_rewards.numpy(), trainer.last_advantages.numpy()
    assert rewards.shape == advantages.shape == (2,)
    np.testing.assert_allclose(advantages, rloo_advantages(tf.constant(rewards), 2).numpy(), atol=1e-6)
    events = read_events(str(tmp_path))
    for tag, last in (("reward", rewards), ("advantage", advantages)):
        assert [step for step, _ in events[tag]] == [1, 2, 3, 4], tag
        counts = [buckets[:, 2].sum() for _, buckets in events[tag]]
        assert counts == [4, 2, 4, 2], tag  # 2 prompts x K, then 1 prompt x K, each epoch
        buckets = events[tag][-1][1]  # rows (left edge, right edge, count)
        assert buckets[0, 0] == pytest.approx(last.min(), abs=1e-6), tag
        assert buckets[-1, 1] == pytest.approx(last.max(), abs=1e-6), tag


def test_reward_histograms_needs_a_reinforce_trainer(run):
    callback = RewardHistograms("unused")
    callback.set_model(run.trainer)
    with pytest.raises(TypeError, match="ReinforceTrainer"):
        callback.on_train_begin()


# -- TargetReached --------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, target, values, expected",
    [
        ("max", 0.5, [0.1, 0.3, 0.5, 0.7], 2),  # >= counts: met at exactly 0.5
        ("max", 0.5, [0.6, 0.7], 0),  # met at once
        ("max", 0.9, [0.1, 0.3], None),  # never met: trains to the end
        ("max", 0.5, [float("nan"), 0.2, 0.8], 2),  # NaN never meets it
        ("min", 2.0, [3.0, 2.5, 2.0, 1.0], 2),  # <= counts
        ("min", 2.0, [1.0, 3.0], 0),
    ],
)
def test_target_reached_stops_at_the_first_epoch_that_meets_it(mode, target, values, expected):
    model = types.SimpleNamespace(stop_training=False)
    callback = TargetReached("score", target, mode=mode)
    callback.set_model(model)
    callback.on_train_begin()
    epochs_run = 0
    for epoch, value in enumerate(values):  # Keras' loop: stop after the epoch that set the flag
        callback.on_epoch_end(epoch, {"score": value})
        epochs_run += 1
        if model.stop_training:
            break
    assert callback.reached_epoch == expected
    assert model.stop_training == (expected is not None)
    assert epochs_run == (len(values) if expected is None else expected + 1)


def test_target_reached_warns_once_naming_the_keys():
    callback = TargetReached("val_rouge_l", 0.3)
    callback.set_model(types.SimpleNamespace(stop_training=False))
    callback.on_train_begin()
    with pytest.warns(UserWarning, match=r"'val_rouge_l' is not in the epoch logs; available keys: \['loss', 'val_loss'\]"):
        callback.on_epoch_end(0, {"loss": 1.0, "val_loss": 2.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.on_epoch_end(1, {"loss": 1.0})  # once per run
    with pytest.raises(ValueError, match="mode"):
        TargetReached("loss", 1.0, mode="up")


def test_target_reached_in_a_real_fit():
    # Full-batch SGD on a line from zero weights: the losses are known in advance.
    x = np.linspace(-1, 1, 16, dtype="float32")[:, None]
    y = 3 * x + 1
    w, b, losses = 0.0, 0.0, []
    for _ in range(8):
        error = w * x + b - y
        losses.append(float(np.mean(error**2)))  # Keras logs the loss before the update
        w, b = w - 0.1 * 2 * float(np.mean(error * x)), b - 0.1 * 2 * float(np.mean(error))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    callback = TargetReached("loss", (losses[3] + losses[4]) / 2, mode="min")
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0, callbacks=[callback]).history
    assert callback.reached_epoch == 4
    assert history["loss"] == pytest.approx(losses[:5], rel=1e-4)  # stopped after epoch 4
