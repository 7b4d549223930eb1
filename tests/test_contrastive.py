"""Contrastive self-feedback: exact losses, pair selection, errors, learning, replicas.

Hand-computed values for the article's margin loss and BRIO's ranking loss,
the trainer's loss in both modes against a NumPy recomputation, clear
errors, learning tests that could fail (held-out ranking before/after) and
one step on 2 replicas equal to one step on one device.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.models import LLMEncoder, PolicyNetwork, generate_ids, get_sampler
from keras_selffb.rewards import RougeLReward
from keras_selffb.rewards.base import Reward
from keras_selffb.text import EOS_ID, PAD_ID, RESERVED_TOKENS, CharTokenizer, pack_pairs
from keras_selffb.training import (
    ContrastiveTrainer,
    feature_distance,
    margin_loss,
    ranking_agreement,
    ranking_loss,
    rouge_distance,
    rouge_distance_ids,
    run_contrastive_stage,
    select_pairs,
    spearman,
)
from keras_selffb.training.contrastive import ranking_loss_terms, skipped_groups
from keras_selffb.training.contrastive_stage import CandidateEvaluator

from conftest import cpu_devices, mirrored_strategy

FORBIDDEN = [0, 1, 3, 4]  # PAD, BOS, UNK, SEP are never generated


class FixedReward(Reward):
    """Returns fixed values per candidate row, whatever the candidates."""

    default_name = "fixed"

    def __init__(self, values):
        super().__init__()
        self.values = tf.constant(np.ravel(values), tf.float32)

    def call(self, prompts, candidates, references):
        return self.values


def log_softmax(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def cosine_distance(a, b):
    return 1.0 - float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- distances ---------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, cosine, euclidean",
    [
        ([3.0, 4.0], [6.0, 8.0], 0.0, 5.0),  # same direction
        ([1.0, 0.0], [0.0, 2.0], 1.0, np.sqrt(5.0)),  # orthogonal
        ([1.0, 0.0], [-1.0, 0.0], 2.0, 2.0),  # opposite
        ([0.0, 0.0], [1.0, 1.0], 1.0, np.sqrt(2.0)),  # a zero vector is orthogonal to all
    ],
)
def test_feature_distance_by_hand(a, b, cosine, euclidean):
    assert float(feature_distance([a], [b], "cosine")[0]) == pytest.approx(cosine, abs=1e-6)
    assert float(feature_distance([a], [b], "euclidean")[0]) == pytest.approx(euclidean, abs=1e-6)


def test_rouge_distance_text_and_ids():
    d = rouge_distance(
        ["the cat sat on the mat", "今天天气很好", "same text", "abc", ""],
        ["the cat on a mat", "今天天气不错", "same text", "xyz", "anything"],
    ).numpy()
    # 1 - F: LCS 4 of 6 and 5 words; 4 of 6 characters both ways; identical;
    # nothing in common; an empty side.
    np.testing.assert_allclose(d, [1 - 8 / 11, 1 - 2 / 3, 0.0, 1.0, 1.0], atol=1e-6)
    # Symmetric, as ROUGE-L F is.
    swapped = rouge_distance(["the cat on a mat"], ["the cat sat on the mat"])
    np.testing.assert_allclose(swapped, d[:1], atol=1e-6)
    # Ids: content tokens only, EOS/PAD ignored; LCS 3 of 4 and 3 -> F = 6/7.
    ids = rouge_distance_ids(
        [[5, 6, 7, 8, EOS_ID], [9, 9, EOS_ID, 0, 0]], [[5, 7, 8, EOS_ID, 0], [EOS_ID, 0, 0, 0, 0]]
    )
    np.testing.assert_allclose(ids.numpy(), [1 - 6 / 7, 1.0], atol=1e-6)


# -- the article's margin loss -------------------------------------------------


@pytest.mark.parametrize(
    "d_pos, d_neg, margin, expected",
    [
        # m = 0: the hinge never fires, the loss is d(x, x+).
        ([0.2, 0.5], [0.1, 0.7], 0.0, [0.2, 0.5]),
        # every negative at least m away: only d(x, x+) is left.
        ([0.1, 0.0], [0.5, 1.2], 0.5, [0.1, 0.0]),
        # every negative inside the margin: d+ + m - d-.
        ([0.1, 0.3], [0.25, 0.0], 1.0, [0.85, 1.3]),
        # mixed.
        ([0.1, 0.0], [0.2, 0.9], 0.5, [0.4, 0.0]),
    ],
)
def test_margin_loss_by_hand(d_pos, d_neg, margin, expected):
    np.testing.assert_allclose(margin_loss(d_pos, d_neg, margin).numpy(), expected, atol=1e-6)


def test_margin_loss_on_hand_made_features():
    anchor = [[1.0, 0.0], [1.0, 0.0]]
    positive = [[2.0, 0.0], [1.0, 0.0]]  # d+ = 0 both
    negative = [[0.0, 1.0], [1.0, 1.0]]  # d- = 1 and 1 - 1/sqrt(2)
    loss = margin_loss(feature_distance(anchor, positive), feature_distance(anchor, negative), 0.5)
    np.testing.assert_allclose(loss.numpy(), [0.0, 0.5 - (1 - 1 / np.sqrt(2))], atol=1e-6)


# -- BRIO's ranking loss ---------------------------------------------------------


@pytest.mark.parametrize(
    "scores, quality, margin, gap, expected, counts",
    [
        # Model agrees with the quality order, m = 0: nothing to pay.
        ([[-1, -2, -3]], [[0.9, 0.5, 0.1]], 0.0, 0.0, 0.0, [2, 1]),
        # Agrees by more than (j - i) * m everywhere: all pairs satisfied.
        ([[-1, -2, -3]], [[0.9, 0.5, 0.1]], 0.1, 0.0, 0.0, [2, 1]),
        # Reversed, m = 0: distance-1 pairs cost 1 each (mean 1), the
        # distance-2 pair costs 2: total 3.
        ([[-3, -2, -1]], [[0.9, 0.5, 0.1]], 0.0, 0.0, 3.0, [2, 1]),
        # Reversed, m = 0.1: all violated, 1.1 per distance-1 pair, 2.2 for
        # the distance-2 pair.
        ([[-3, -2, -1]], [[0.9, 0.5, 0.1]], 0.1, 0.0, 3.3, [2, 1]),
        # The same candidates unsorted: the loss sorts them by quality first.
        ([[-1, -3, -2]], [[0.1, 0.9, 0.5]], 0.1, 0.0, 3.3, [2, 1]),
        # A tie at the top makes no pair: (1, 2) at distance 1, (0, 2) at 2.
        ([[-3, -2, -1]], [[0.5, 0.5, 0.1]], 0.1, 0.0, 3.3, [1, 1]),
        # Within the minimum gap (0.05 <= 0.1): no pair.
        ([[-3, -2, -1]], [[0.9, 0.85, 0.1]], 0.1, 0.1, 3.3, [1, 1]),
        # Two prompts: each distance's pairs are averaged over both.
        ([[-1, -2, -3], [-3, -2, -1]], [[0.9, 0.5, 0.1]] * 2, 0.1, 0.0,
         (0 + 0 + 1.1 + 1.1) / 4 + (0 + 2.2) / 2, [4, 2]),
        # All tied: no pair at all, loss 0.
        ([[-3, -2, -1]], [[0.3, 0.3, 0.3]], 0.1, 0.0, 0.0, [0, 0]),
    ],
)
def test_ranking_loss_by_hand(scores, quality, margin, gap, expected, counts):
    assert float(ranking_loss(scores, quality, margin, gap)) == pytest.approx(expected, abs=1e-6)
    terms = ranking_loss_terms(scores, quality, margin, gap)
    np.testing.assert_array_equal(terms.pair_counts.numpy(), counts)


def test_ranking_counts_violations_and_correct_pairs():
    # Quality order 0 > 1 > 2 > 3; model scores: 0 and 1 swapped, rest right.
    terms = ranking_loss_terms([[-2.0, -1.0, -3.0, -4.0]], [[0.9, 0.6, 0.3, 0.0]], margin=0.6)
    # 6 pairs, one ordered wrong: (0, 1). A pair (i, j) is satisfied when
    # s_i - s_j > (j - i) * 0.6: (0, 1) -1 no; (1, 2) 2 ok; (2, 3) 1 ok;
    # (0, 2) 1 > 1.2 no; (1, 3) 3 > 1.2 ok; (0, 3) 2 > 1.8 ok.
    assert float(terms.correct) == 5.0
    assert float(terms.violations) == 2.0


# -- pair selection ---------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, num_pairs, gap, positive, negative, valid",
    [
        # Best against worst; the tied worst (0.2 twice) is the later one.
        ([0.5, 0.2, 0.9, 0.2], 1, 0.0, [2], [3], [True]),
        # Top-2 against bottom-2: (best, worst), (second, second worst).
        ([0.5, 0.2, 0.9, 0.2], 2, 0.0, [2, 0], [3, 1], [True, True]),
        # Tied best: the earlier ranks first; both are positives.
        ([0.7, 0.7, 0.1, 0.4], 2, 0.0, [0, 1], [2, 3], [True, True]),
        # A tie between the second best and the second worst: no pair.
        ([0.9, 0.4, 0.4, 0.1], 2, 0.0, [0, 1], [3, 2], [True, False]),
        # All tied: nothing pairs.
        ([0.3, 0.3, 0.3, 0.3], 2, 0.0, [0, 1], [3, 2], [False, False]),
        # Minimum gap 0.5: (0.9, 0.3) pairs, (0.6, 0.5) is too close.
        ([0.9, 0.6, 0.3, 0.5], 2, 0.5, [0, 1], [2, 3], [True, False]),
    ],
)
def test_select_pairs_table(scores, num_pairs, gap, positive, negative, valid):
    pos, neg, ok = select_pairs([scores], num_pairs, gap)
    assert pos.numpy().tolist() == [positive]
    assert neg.numpy().tolist() == [negative]
    assert ok.numpy().tolist() == [valid]


def test_skipped_groups():
    flags = skipped_groups([[0.1, 0.1, 0.1], [0.1, 0.2, 0.1], [0.5, 0.54, 0.5]], min_score_gap=0.05)
    assert flags.numpy().tolist() == [True, False, True]


# -- clear errors -------------------------------------------------------------------


def test_clear_errors():
    policy = PolicyNetwork(12, 4, 4)
    encoder = LLMEncoder(12, 4, 4)
    with pytest.raises(ValueError, match="K >= 2"):
        ContrastiveTrainer(policy, 3, 3, encoder=encoder, num_samples=1)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        ContrastiveTrainer(policy, 3, 3, encoder=encoder, margin=-0.1)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        ContrastiveTrainer(policy, 3, 3, mode="sequence_likelihood", margin=-0.001)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        margin_loss([0.1], [0.2], -1.0)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        ranking_loss([[0.0, 1.0]], [[1.0, 0.0]], margin=-1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        select_pairs([[0.5]])
    with pytest.raises(ValueError, match="K >= 2"):
        ranking_loss([[0.0]], [[1.0]])
    with pytest.raises(ValueError, match="pass encoder="):
        ContrastiveTrainer(policy, 3, 3, mode="encoder")
    with pytest.raises(ValueError, match="num_pairs=3"):
        ContrastiveTrainer(policy, 3, 3, encoder=encoder, num_samples=4, num_pairs=3)
    with pytest.raises(ValueError, match="Unknown mode"):
        ContrastiveTrainer(policy, 3, 3, mode="triplet")
    with pytest.raises(ValueError, match="Unknown distance"):
        ContrastiveTrainer(policy, 3, 3, encoder=encoder, distance="manhattan")
    with pytest.raises(ValueError, match="Unknown anchor"):
        ContrastiveTrainer(policy, 3, 3, encoder=encoder, anchor="prompt")
    with pytest.raises(ValueError, match="min_score_gap"):
        ContrastiveTrainer(policy, 3, 3, encoder=encoder, min_score_gap=-0.1)

    trainer = ContrastiveTrainer(policy, 3, 3, encoder=encoder, num_samples=2)
    batch = np.array([[1, 5, 4, 6, 7, EOS_ID]] * 2, "int32")
    with pytest.raises(ValueError, match="candidate set is empty"):
        trainer.compute_losses(batch, candidates=np.zeros((2, 2, 0), "int32"))
    with pytest.raises(ValueError, match="candidate set is empty"):
        trainer.compute_losses(batch, candidates=np.zeros((0, 3), "int32"))
    with pytest.raises(ValueError, match="Expected 4 candidates"):
        trainer.compute_losses(batch, candidates=np.ones((5, 3), "int32"))
    with pytest.raises(ValueError, match="3 per prompt"):
        trainer.compute_losses(batch, candidates=np.ones((2, 3, 3), "int32"))


# -- the trainer's loss, recomputed in NumPy ------------------------------------------

P, N = 3, 3
BATCH = np.array([[1, 5, 4, 6, 7, EOS_ID], [1, 8, 4, 9, EOS_ID, PAD_ID]], "int32")
CANDIDATES = np.array(
    [
        [[6, 7, EOS_ID], [9, EOS_ID, PAD_ID], [6, 6, 6], [EOS_ID, PAD_ID, PAD_ID]],
        [[9, EOS_ID, PAD_ID], [5, 5, EOS_ID], [7, EOS_ID, PAD_ID], [8, 9, 10]],
    ],
    "int32",
)


def test_encoder_loss_equals_the_article_formula():
    encoder = LLMEncoder(12, 4, 6)
    policy = PolicyNetwork(12, 4, 4)
    # Prompt 0: best is candidate 2, worst the later of the tied 0.2s (3).
    # Prompt 1: all tied, skipped.
    quality = [[0.5, 0.2, 0.9, 0.2], [0.3, 0.3, 0.3, 0.3]]
    trainer = ContrastiveTrainer(policy, P, N, encoder=encoder, ranking_fn=FixedReward(quality), margin=1.5)
    with tf.GradientTape() as tape:
        loss, logs = trainer.compute_losses(BATCH, candidates=CANDIDATES)
    features = lambda ids: encoder(np.array(ids, "int32")).numpy()  # noqa: E731
    anchor = features(BATCH[:1, P:])[0]
    d_pos = cosine_distance(anchor, features(CANDIDATES[0, 2:3])[0])
    d_neg = cosine_distance(anchor, features(CANDIDATES[0, 3:4])[0])
    expected = d_pos + max(0.0, 1.5 - d_neg)  # one valid pair
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(logs["pairs"]) == 1.0 and float(logs["skipped"]) == 1.0
    # Only the encoder gets gradients; the policy only sampled.
    assert all(g is not None for g in tape.gradient(loss, encoder.trainable_variables))


def test_encoder_anchor_can_be_the_source():
    encoder = LLMEncoder(12, 4, 6)
    quality = [[0.5, 0.2, 0.9, 0.2], [0.1, 0.3, 0.0, 0.2]]
    trainer = ContrastiveTrainer(PolicyNetwork(12, 4, 4), P, N, encoder=encoder, anchor="source",
                                 distance="euclidean", margin=0.0, ranking_fn=FixedReward(quality))
    loss, _ = trainer.compute_losses(BATCH, candidates=CANDIDATES.reshape(8, N))  # prompt-major form
    features = lambda ids: encoder(np.array(ids, "int32")).numpy()  # noqa: E731
    sources = features(BATCH[:, :P])
    # m = 0: the loss is the mean d(source, best).
    best = [features(CANDIDATES[0, 2:3])[0], features(CANDIDATES[1, 1:2])[0]]
    expected = np.mean([np.linalg.norm(sources[i] - best[i]) for i in range(2)])
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def sequence_scores_numpy(policy, prompts, candidates, alpha):
    """Per candidate: sum log p(token) / length ** alpha (forbidden ids masked)."""
    logits = policy(np.concatenate([prompts, candidates[:, :-1]], axis=1)).numpy()[:, P - 1:]
    logits[..., FORBIDDEN] -= 1e9
    logp = log_softmax(logits)
    out = []
    for row, ids in enumerate(candidates):
        tokens = [(t, tok) for t, tok in enumerate(ids) if tok != PAD_ID]
        out.append(sum(logp[row, t, tok] for t, tok in tokens) / len(tokens) ** alpha)
    return np.array(out)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_sequence_loss_equals_brio_formula(alpha):
    policy = PolicyNetwork(12, 4, 4)
    quality = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.2, 0.8, 0.0]])  # a tie in prompt 1
    margin, rank_w, mle_w = 0.05, 10.0, 0.1
    trainer = ContrastiveTrainer(
        policy, P, N, mode="sequence_likelihood", ranking_fn=FixedReward(quality),
        margin=margin, length_penalty=alpha, rank_weight=rank_w, mle_weight=mle_w,
    )
    loss, _ = trainer.compute_losses(BATCH, candidates=CANDIDATES)

    prompts = np.repeat(BATCH[:, :P], 4, axis=0)
    s = sequence_scores_numpy(policy, prompts, CANDIDATES.reshape(8, N), alpha).reshape(2, 4)
    sums, counts = np.zeros(3), np.zeros(3)
    for g in range(2):
        order = sorted(range(4), key=lambda k: (-quality[g, k], k))
        for i in range(4):
            for j in range(i + 1, 4):
                if quality[g, order[i]] - quality[g, order[j]] > 0:
                    sums[j - i - 1] += max(0.0, s[g, order[j]] - s[g, order[i]] + (j - i) * margin)
                    counts[j - i - 1] += 1
    rank = sum(sums[d] / counts[d] for d in range(3))
    mle_logp = sequence_scores_numpy(policy, BATCH[:, :P], BATCH[:, P:], 0.0)  # sums of log p
    mle = -mle_logp.sum() / np.sum(BATCH[:, P:] != PAD_ID)
    assert float(loss) == pytest.approx(rank_w * rank + mle_w * mle, rel=1e-5)


def test_fit_samples_its_own_candidates_and_logs_sums():
    # Encoder mode here; sequence mode samples in fit in the stage test below.
    keras.utils.set_random_seed(0)
    batch = np.tile(BATCH, (4, 1))
    policy, encoder = PolicyNetwork(12, 8, 8), LLMEncoder(12, 8, 8)
    policy_before = [w.numpy().copy() for w in policy.weights]
    encoder_before = [w.numpy().copy() for w in encoder.weights]
    trainer = ContrastiveTrainer(policy, P, N, encoder=encoder, num_samples=4, seed=1)
    trainer.compile(optimizer=keras.optimizers.Adam(0.01))
    logs = trainer.fit(batch, batch_size=4, epochs=1, verbose=0).history
    assert set(logs) == {"loss", "margin_violations", "pair_accuracy", "positive_score", "negative_score",
                         "score", "skipped_groups", "positive_distance", "negative_distance"}
    for name in ("margin_violations", "pair_accuracy", "skipped_groups", "score"):
        assert 0.0 <= logs[name][0] <= 1.0, name
    assert logs["skipped_groups"][0] < 1.0 and logs["positive_score"][0] > logs["negative_score"][0]
    assert logs["loss"][0] > 0.0
    # The encoder learned; the policy only sampled.
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(encoder_before, encoder.weights))
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(policy_before, policy.weights))


def test_ranking_agreement_and_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    model = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]
    quality = [[0.9, 0.5, 0.1], [0.9, 0.5, 0.5]]
    r = ranking_agreement(model, quality)
    # Prompt 0: 3 pairs right; prompt 1: pairs (0,1), (0,2) wrong, (1,2) tied.
    assert r["pairs"] == 5 and r["pair_accuracy"] == pytest.approx(3 / 5)
    assert r["best_vs_worst_accuracy"] == pytest.approx(0.5)
    assert r["top1_quality"] == pytest.approx((0.9 + 0.5) / 2)
    assert r["oracle_quality"] == pytest.approx(0.9)



# -- one step on two replicas equals one step on one device ----------------------------

VOCAB = 12
# P = 4, R = 4; the four prompts go two per replica, with uneven counts of
# valid pairs and reference tokens (a per-replica mean would be wrong).
DIST_BATCH = np.array(
    [
        [0, 1, 5, 4, 6, 7, 8, 2],
        [1, 5, 6, 4, 9, 2, 0, 0],
        [0, 0, 1, 4, 10, 11, 5, 2],
        [0, 1, 7, 4, 7, 2, 0, 0],
    ],
    dtype="int32",
)
DIST_CANDIDATES = np.array(
    [
        [[6, 7, 8, 2], [6, 2, 0, 0], [9, 9, 2, 0]],  # ROUGE-L 1, 0.5, 0
        [[9, 2, 0, 0], [10, 2, 0, 0], [9, 5, 2, 0]],  # 1, 0, 0.67
        [[10, 2, 0, 0], [10, 2, 0, 0], [6, 2, 0, 0]],  # a tie: 0.5, 0.5, 0
        [[6, 2, 0, 0], [8, 2, 0, 0], [9, 2, 0, 0]],  # all 0: skipped
    ],
    dtype="int32",
)


def run_one_step(mode, weights, strategy):
    with strategy.scope():
        policy = PolicyNetwork(VOCAB, 6, 6)
        policy.set_weights(weights["policy"])
        encoder = None
        if mode == "encoder":
            encoder = LLMEncoder(VOCAB, 6, 6)
            encoder.set_weights(weights["encoder"])
        trainer = ContrastiveTrainer(
            policy, prompt_length=4, max_new_tokens=4, mode=mode, encoder=encoder,
            num_samples=3, margin=1.0 if mode == "encoder" else 0.05, mle_weight=0.5,
        )
        trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    history = trainer.fit(DIST_BATCH, DIST_CANDIDATES, batch_size=4, epochs=1, verbose=0, shuffle=False)
    return [w.numpy() for w in trainer.trained_model.weights], history.history


@pytest.mark.skipif(len(cpu_devices()) < 2, reason="needs 2 logical CPU devices")
@pytest.mark.parametrize("mode", ["encoder", "sequence_likelihood"])
def test_step_two_replicas_equals_one(mode):
    weights = {
        "policy": PolicyNetwork(VOCAB, 6, 6).get_weights(),
        "encoder": LLMEncoder(VOCAB, 6, 6).get_weights(),
    }
    start = weights["encoder" if mode == "encoder" else "policy"]
    single, logs1 = run_one_step(mode, weights, tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored, logs2 = run_one_step(mode, weights, mirrored_strategy())
    assert max(np.abs(a - b).max() for a, b in zip(single, start)) > 1e-3  # it moved
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert logs1["skipped_groups"][0] == pytest.approx(0.25)
    for key in logs1:
        np.testing.assert_allclose(logs1[key], logs2[key], rtol=1e-4, atol=1e-6, err_msg=key)


# -- learning tests: could fail, seeded ------------------------------------------------

LETTERS = "abcdefghijkl"
KEYS = set("abcdef")
LP, LR = 8, 7  # prompt: BOS + 6 letters + SEP; summary: up to 6 key letters + EOS


def keyword_task(n, rng):
    """'Summarise' 6 letters by keeping the key letters a-f, in order."""
    out = []
    while len(out) < n:
        source = "".join(rng.choice(list(LETTERS), 6))
        summary = "".join(c for c in source if c in KEYS)
        if summary:
            out.append((source, summary))
    return out


def fixed_candidates(policy, packed, k, seed):
    sampler = get_sampler("random", seed=seed)
    ids = generate_ids(policy, np.repeat(packed[:, :LP], k, axis=0), LR, sampler).numpy()
    quality = RougeLReward()(None, ids, np.repeat(packed[:, LP:], k, axis=0)).numpy()
    return ids.reshape(len(packed), k, LR), quality.reshape(len(packed), k)


def held_out_agreement(evaluator, packed, candidates, quality):
    return ranking_agreement(evaluator.preferences(packed, candidates), quality)


@pytest.fixture(scope="module")
def keyword_data():
    rng = np.random.default_rng(0)
    tokenizer = CharTokenizer(list(RESERVED_TOKENS) + list(LETTERS))
    train = pack_pairs(tokenizer, keyword_task(192, rng), LP, LR)
    test = pack_pairs(tokenizer, keyword_task(64, rng), LP, LR)
    return tokenizer, train, test


@pytest.mark.slow
def test_encoder_learns_to_rank_held_out_candidates(keyword_data):
    tokenizer, train, test = keyword_data
    keras.utils.set_random_seed(0)
    policy = PolicyNetwork(tokenizer.vocabulary_size, 16, 32)  # untrained: varied candidates
    encoder = LLMEncoder(tokenizer.vocabulary_size, 16, 32)
    train_c, _ = fixed_candidates(policy, train, 6, seed=1)
    test_c, test_q = fixed_candidates(policy, test, 6, seed=2)
    trainer = ContrastiveTrainer(policy, LP, LR, encoder=encoder, num_samples=6, num_pairs=3)
    evaluator = CandidateEvaluator(trainer)
    before = held_out_agreement(evaluator, test, test_c, test_q)
    trainer.compile(optimizer=keras.optimizers.Adam(0.01))
    trainer.fit(train, train_c, batch_size=32, epochs=8, verbose=0, shuffle=False)
    after = held_out_agreement(evaluator, test, test_c, test_q)
    print(f"encoder, held-out best-vs-worst accuracy {before['best_vs_worst_accuracy']:.3f} -> "
          f"{after['best_vs_worst_accuracy']:.3f}; all pairs {before['pair_accuracy']:.3f} -> "
          f"{after['pair_accuracy']:.3f}")
    assert after["best_vs_worst_accuracy"] >= before["best_vs_worst_accuracy"] + 0.1
    assert after["pair_accuracy"] >= before["pair_accuracy"] + 0.08


@pytest.mark.slow
def test_sequence_likelihood_stage_calibrates_the_policy(keyword_data):
    """Through `run_contrastive_stage`: on-policy candidates in `fit`, and
    held-out candidates sampled once from the starting policy."""
    tokenizer, train, test = keyword_data
    keras.utils.set_random_seed(0)
    policy = PolicyNetwork(tokenizer.vocabulary_size, 16, 32)
    report = run_contrastive_stage(
        policy, tokenizer, train[:128], test, LP, LR, epochs=4, seed=0,
        ranking_fn=RougeLReward(), num_samples=4, eval_samples=8, batch_size=32,
        learning_rate=0.003, temperature=1.0, rank_weight=10.0, mle_weight=0.1,
    )
    before, after = report["before"], report["after"]
    print(f"sequence likelihood, held-out Spearman {before['spearman']:.3f} -> {after['spearman']:.3f}; "
          f"pair accuracy {before['pair_accuracy']:.3f} -> {after['pair_accuracy']:.3f}")
    assert report["mode"] == "sequence_likelihood" and len(report["history"]["loss"]) == 4
    assert {"best_vs_worst_accuracy", "top1_quality", "oracle_quality", "greedy_quality"} <= set(after)
    assert before["mean_quality"] == after["mean_quality"]  # the same fixed candidates
    assert before["greedy_quality"] != after["greedy_quality"]  # the policy itself changed
    assert after["spearman"] >= before["spearman"] + 0.2
    assert after["pair_accuracy"] >= before["pair_accuracy"] + 0.1
