"""`SelfFeedbackLoop`: thresholds, filtering, rounds, target, resume, errors."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.loop import RewardError, SelfFeedbackLoop, filter_candidates, rising_thresholds
from keras_selffb.models import PolicyNetwork
from keras_selffb.rewards import PythonReward
from keras_selffb.rewards.base import Reward, content_mask
from keras_selffb.text import CharTokenizer

P, R = 4, 6


@pytest.mark.parametrize(
    "rewards,quantiles,floor,expected",
    [
        ([[0, 1, 2, 3]], [0.5], None, [1.5]),  # numpy's linear quantile: midway 1..2
        # Round 2's own quantile (0.7) is lower: the threshold stays at 1.5.
        ([[0, 1, 2, 3], [0, 0, 0, 1]], [0.5, 0.9], None, [1.5, 1.5]),
        ([[0, 1], [2, 4]], [0.0, 1.0], None, [0.0, 4.0]),  # min, then max
        ([[0, 0]], [0.5], 1.0, [1.0]),  # the floor wins
        ([[1, 2, 3]] * 3, [0.0, 0.5], None, [1.0, 2.0, 2.0]),  # the last quantile repeats
    ],
)
def test_rising_thresholds_table(rewards, quantiles, floor, expected):
    assert rising_thresholds(rewards, quantiles, floor) == pytest.approx(expected)


@pytest.mark.parametrize(
    "rewards,threshold,weighting,indices,weights",
    [
        ([0.2, 0.9, 0.5], 0.5, "reward", [1, 2], [0.9 / 0.7, 0.5 / 0.7]),
        ([0.2, 0.9, 0.5], 0.5, "uniform", [1, 2], [1.0, 1.0]),
        ([0.0, 0.0, 1.0], 0.0, "reward", [2], [1.0]),  # reward 0 would weigh 0: dropped
        ([0.0, 0.0], 0.0, "uniform", [0, 1], [1.0, 1.0]),
        ([0.1, 0.2], 0.5, "reward", [], []),  # nothing reaches the threshold
        ([-1.0, 2.0, 2.0], -5.0, "reward", [1, 2], [1.0, 1.0]),
    ],
)
def test_filter_candidates_table(rewards, threshold, weighting, indices, weights):
    kept, w = filter_candidates(np.array(rewards), threshold, weighting)
    assert kept.tolist() == indices
    np.testing.assert_allclose(w, weights, rtol=1e-6)


def test_filter_candidates_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        filter_candidates(np.array([0.5, np.nan]), 0.0)


TOKENIZER = CharTokenizer.train(["abcdef"])
A_ID = int(TOKENIZER.tokenize(["a"])[0][0])


class ShareOfA(Reward):
    """Share of the letter "a" among the candidate's text tokens (in-graph)."""

    default_name = "share_of_a"

    def call(self, prompts, candidates, references):
        mask = tf.cast(content_mask(candidates), tf.float32)
        hits = tf.cast(tf.equal(candidates, A_ID), tf.float32) * mask
        return tf.reduce_sum(hits, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def share_of_a_numpy(candidates):
    out = []
    for row in candidates:
        text = [t for t in row if t >= 5]
        out.append(sum(t == A_ID for t in text) / max(len(text), 1))
    return np.array(out)


TRAIN = [(c, "") for c in "abcdefabcdef"]
VALIDATION = [(c, "") for c in "fedcba"]


def make_loop(directory=None, reward=None, **kwargs):
    keras.utils.set_random_seed(7)
    policy = PolicyNetwork(TOKENIZER.vocabulary_size, 8, 16)
    options = dict(
        methods="filtered", rounds=2, num_samples=4, threshold_quantiles=(0.5, 0.75), epochs_per_round=2,
        batch_size=8, learning_rate=0.05, text_metrics=False, directory=directory, seed=3, verbose=0,
        score_batch_size=16,
    )
    options.update(kwargs)
    return SelfFeedbackLoop(policy, TOKENIZER, reward or ShareOfA(), TRAIN, VALIDATION, P, R, **options)


def test_filtered_rounds_keep_what_the_threshold_says(tmp_path):
    loop = make_loop(str(tmp_path))
    history = loop.run()
    assert [h["round"] for h in history] == [0, 1, 2]
    thresholds = [h["threshold"] for h in history[1:]]
    assert thresholds[1] >= thresholds[0]  # rising, never falling
    for record in history[1:]:
        with np.load(tmp_path / f"round_{record['round']}" / "candidates.npz") as data:
            candidates, rewards = data["candidates"], data["rewards"]
            rows = data["rows"]
        # The rewards on disk are the reward of the candidates (numpy check).
        np.testing.assert_allclose(rewards, share_of_a_numpy(candidates), atol=1e-6)
        assert record["candidates"] == len(TRAIN) * 4
        assert record["candidate_reward_mean"] == pytest.approx(rewards.mean(), abs=1e-6)
        # Kept: reward >= threshold and > 0, distinct (prompt, candidate) rows.
        keep = (rewards >= record["threshold"]) & (rewards > 0)
        distinct = {tuple(r[:P]) + tuple(c) for r, c, k in zip(rows, candidates, keep) if k}
        assert record["filtered"]["kept"] == len(distinct)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved == json.loads(json.dumps(history))


def test_filtered_rounds_raise_the_reward(tmp_path):
    # The reward is the share of "a": keeping the a-rich candidates makes
    # the greedy replies a-richer on validation prompts.
    history = make_loop(str(tmp_path), rounds=3, epochs_per_round=3).run()
    start, end = history[0]["metrics"]["val_reward"], history[-1]["metrics"]["val_reward"]
    assert end > start + 0.3, (start, end)


def test_target_stops_at_the_first_round_that_meets_it(tmp_path):
    full = make_loop(str(tmp_path / "full"), rounds=3).run()
    values = [h["metrics"]["val_reward"] for h in full]
    target = values[2]
    expected = next(r for r, v in enumerate(values) if v >= target)
    stopped = make_loop(str(tmp_path / "target"), rounds=3, target=target).run()
    assert len(stopped) - 1 == expected
    assert stopped[-1]["metrics"] == full[expected]["metrics"]


def test_restore_best_rolls_back(tmp_path):
    loop = make_loop(str(tmp_path), rounds=2, monitor="val_reward", mode="min", restore_best=True)
    history = loop.run()
    best = int(np.argmin([h["metrics"]["val_reward"] for h in history]))
    assert loop.best_round() == best
    with np.load(tmp_path / f"round_{best}.npz") as data:
        for i, weight in enumerate(loop.policy.weights):
            np.testing.assert_array_equal(weight.numpy(), data[f"v{i}"])


def weights_of(loop):
    return [w.numpy() for w in loop.policy.weights]


def test_reward_error_names_round_batch_and_reward_then_resumes(tmp_path):
    reference = make_loop(str(tmp_path / "ref"), rounds=2).run()

    def flaky(prompts, candidates, references):
        raise ValueError("the judge is down")

    # Rounds 0 and 1 with a good reward, then round 2 with a broken one.
    make_loop(str(tmp_path / "run"), rounds=1).run()
    broken = make_loop(str(tmp_path / "run"), rounds=2, reward=PythonReward(flaky, TOKENIZER, name="judge"))
    with pytest.raises(RewardError, match=r"round 2, batch 0 .*reward 'judge' raised .*the judge is down"):
        broken.run()
    # Fixed: the same command resumes round 2 and ends where an
    # uninterrupted run ends.
    fixed = make_loop(str(tmp_path / "run"), rounds=2)
    history = fixed.run()
    assert [h["metrics"] for h in history] == [h["metrics"] for h in reference]
    uninterrupted = make_loop(str(tmp_path / "ref"), rounds=2)
    uninterrupted.run()  # everything done: loads round 2's weights
    for a, b in zip(weights_of(fixed), weights_of(uninterrupted)):
        np.testing.assert_array_equal(a, b)


class NaNAfterStart(Reward):
    default_name = "nan_reward"

    def call(self, prompts, candidates, references):
        return tf.fill([tf.shape(candidates)[0]], np.nan)


def test_nan_reward_in_rl_names_round_and_reward(tmp_path):
    loop = make_loop(str(tmp_path), methods="rl", rounds=1, rl_steps=2, rl_batch_size=4,
                     rl_options={"baseline": "rloo"}, reward=ShareOfA())
    loop.run()
    with pytest.raises(RewardError, match=r"evaluation.*'nan_reward' returned NaN"):
        make_loop(str(tmp_path / "b"), methods="rl", rounds=1, reward=NaNAfterStart()).run()


def test_rl_and_contrastive_rounds_train_the_policy(tmp_path):
    loop = make_loop(str(tmp_path), methods=("rl", "contrastive"), rounds=1, rl_steps=4,
                     contrastive_steps=2, rl_batch_size=4, rl_learning_rate=0.05)
    before = weights_of(loop)
    history = loop.run()
    record = history[1]
    assert record["rl"]["steps"] == 4 and record["contrastive"]["steps"] == 2
    assert 0.0 <= record["rl"]["reward"] <= 1.0
    assert max(np.abs(a - b).max() for a, b in zip(before, weights_of(loop))) > 1e-3
    assert os.path.exists(tmp_path / "round_1" / "rl" / "state.json")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown loop method"):
        make_loop(methods="ppo")
    with pytest.raises(ValueError, match="needs training pairs"):
        SelfFeedbackLoop(PolicyNetwork(TOKENIZER.vocabulary_size, 8, 8), TOKENIZER, ShareOfA(), [], VALIDATION, P, R)
    with pytest.raises(ValueError, match="Vocabulary mismatch"):
        SelfFeedbackLoop(PolicyNetwork(99, 8, 8), TOKENIZER, ShareOfA(), TRAIN, VALIDATION, P, R)


def test_three_rounds_raise_held_out_pass_rate_on_arithmetic(tmp_path):
    """The learning test: execution feedback fixes a systematic bug in the data.

    Write an expression equal to N (N in 0..999; 300 targets held out). The
    warm-up answers are `N+1` 60% of the time (wrong) and one of four
    correct forms otherwise, so the MLE policy answers `N+1` greedily. The
    reward runs each candidate through a safe evaluator (host Python), and
    three rounds of filtered self-training on the 700 training targets must
    carry the held-out greedy pass rate far above the start.
    """
    from keras_selffb.data.arithmetic import arithmetic_pairs, pass_reward, split_targets
    from keras_selffb.text import make_dataset, pack_pairs
    from keras_selffb.training import MLETrainer

    keras.utils.set_random_seed(0)
    train_targets, held_out = split_targets(999, 0.3, seed=0)
    tokenizer = CharTokenizer.train(["0123456789+-*()"])
    policy = PolicyNetwork(tokenizer.vocabulary_size, 32, 128)
    mle = MLETrainer(policy, prompt_length=6)
    mle.compile(optimizer=keras.optimizers.Adam(3e-3))
    warm_up = pack_pairs(tokenizer, arithmetic_pairs(train_targets, 1, 0.6, seed=0), 6, 8)
    mle.fit(make_dataset(warm_up, 32, shuffle=True, seed=0), epochs=15, verbose=0)

    loop = SelfFeedbackLoop(
        policy, tokenizer, PythonReward(pass_reward, tokenizer, name="passes"),
        [(str(n), "") for n in train_targets], [(str(n), "") for n in held_out], 6, 8,
        methods="filtered", rounds=3, num_samples=4, min_reward=1.0, threshold_quantiles=(0.0,),
        epochs_per_round=2, batch_size=32, learning_rate=3e-3, text_metrics=False,
        directory=str(tmp_path), seed=0, verbose=0, score_batch_size=256,
    )
    history = loop.run()
    rates = [h["metrics"]["val_reward"] for h in history]
    assert len(rates) == 4
    assert rates[0] < 0.2, rates  # the warm-up's bug: greedy answers are mostly N+1
    assert rates[-1] > 0.8 and rates[-1] - rates[0] > 0.6, rates
    # Filtering kept only passing candidates (min_reward 1.0).
    for record in history[1:]:
        assert record["threshold"] == 1.0


def test_collapse_guard_stops_and_keeps_the_best_round_that_did_not_collapse(tmp_path, monkeypatch):
    # Scripted evaluations: ROUGE-L rises every round, but round 2's replies
    # collapse (3 distinct of round 0's 10, below 0.5 x 10): the loop must
    # stop there (not run rounds 3-4), and go back to round 1, the best round
    # that kept enough distinct replies, although round 2 has the best ROUGE-L.
    script = iter([
        {"val_reward": 0.1, "val_rouge_l": 0.10, "val_distinct_replies": 10.0},
        {"val_reward": 0.2, "val_rouge_l": 0.20, "val_distinct_replies": 6.0},
        {"val_reward": 0.5, "val_rouge_l": 0.50, "val_distinct_replies": 3.0},
        {"val_reward": 0.9, "val_rouge_l": 0.90, "val_distinct_replies": 2.0},
    ])
    loop = make_loop(str(tmp_path), rounds=4, monitor="val_rouge_l", text_metrics=True, min_distinct_fraction=0.5)
    monkeypatch.setattr(loop, "evaluate", lambda: next(script))
    history = loop.run()
    assert [h["round"] for h in history] == [0, 1, 2]
    assert history[2]["collapsed"] and history[2]["stopped"] and not history[1].get("collapsed")
    assert loop.best_round() == 1
    with np.load(tmp_path / "round_1.npz") as data:
        for i, weight in enumerate(loop.policy.weights):
            np.testing.assert_array_equal(weight.numpy(), data[f"v{i}"])
    with np.load(tmp_path / "round_2.npz") as data:  # round 2 really trained: the roll-back mattered
        assert any(not np.array_equal(w.numpy(), data[f"v{i}"]) for i, w in enumerate(loop.policy.weights))


def test_collapse_guard_at_the_floor_does_not_stop(tmp_path, monkeypatch):
    script = iter([
        {"val_reward": 0.1, "val_rouge_l": 0.1, "val_distinct_replies": 10.0},
        {"val_reward": 0.2, "val_rouge_l": 0.2, "val_distinct_replies": 5.0},  # exactly 0.5 x 10: kept
    ])
    loop = make_loop(str(tmp_path), rounds=1, monitor="val_rouge_l", text_metrics=True, min_distinct_fraction=0.5)
    monkeypatch.setattr(loop, "evaluate", lambda: next(script))
    history = loop.run()
    assert not history[1].get("collapsed") and loop.best_round() == 1


def test_loop_evaluation_reports_diversity_and_the_judges_retrieval(tmp_path):
    from keras_selffb.models import RelevanceJudge
    from keras_selffb.training import retrieval_accuracy

    judge = RelevanceJudge(TOKENIZER.vocabulary_size, embedding_dim=8, hidden_dim=8, projection_dim=8)
    loop = make_loop(rounds=1, text_metrics=True, judge=judge,
                     eval_metrics=("rouge_l", "distinct_replies", "self_bleu", "mean_reply_length"))
    metrics = loop.evaluate()
    assert set(metrics) == {"val_reward", "val_rouge_l", "val_distinct_replies", "val_self_bleu",
                            "val_mean_reply_length", "val_judge_retrieval_accuracy"}
    replies = loop.generator.evaluate(loop.validation_pairs, metrics=("distinct_replies",))
    assert metrics["val_distinct_replies"] == len(set(replies["replies"]))
    assert metrics["val_judge_retrieval_accuracy"] == pytest.approx(
        retrieval_accuracy(judge, loop.validation_packed[:, :P], replies["reply_ids"]))
    with pytest.raises(ValueError, match="min_distinct_fraction"):
        make_loop(min_distinct_fraction=1.5)
    with pytest.raises(ValueError, match="eval_metrics"):
        make_loop(eval_metrics=("rouge_l", "meteor"))
    with pytest.raises(TypeError, match="judge"):
        make_loop(judge="not a judge")
