"""ReinforceTrainer: exact gradients, baselines, KL estimators, NaN rewards, learning, replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.metrics import rouge_l_ids
from keras_selffb.generator import ResponseGenerator
from keras_selffb.models import PolicyNetwork
from keras_selffb.models.generation import generate_ids, get_sampler
from keras_selffb.rewards.base import Reward
from keras_selffb.text import EOS_ID, PAD_ID, RESERVED_TOKENS, CharTokenizer, make_dataset, pack_pairs
from keras_selffb.training import MLETrainer, ReinforceTrainer
from keras_selffb.training.baselines import (
    adaptive_kl_coefficient,
    kl_estimate,
    rloo_advantages,
    self_critical_advantages,
    zero_variance_fraction,
)

FORBIDDEN = [0, 1, 3, 4]  # PAD, BOS, UNK, SEP are never sampled


class FixedReward(Reward):
    """Returns fixed values per row, whatever the candidates."""

    default_name = "fixed"

    def __init__(self, values, name=None):
        super().__init__(name)
        self.values = tf.constant(values, tf.float32)

    def call(self, prompts, candidates, references):
        return self.values


class TokenCountReward(Reward):
    """Counts occurrences of `token` in the candidate: depends on the sample."""

    default_name = "count"

    def __init__(self, token, name=None):
        super().__init__(name)
        self.token = token

    def call(self, prompts, candidates, references):
        return tf.reduce_sum(tf.cast(tf.equal(candidates, self.token), tf.float32), axis=1)


class RougeIdsReward(Reward):
    default_name = "rouge_l"

    def call(self, prompts, candidates, references):
        return rouge_l_ids(references, candidates, ref_mask=references > 4, hyp_mask=candidates > 4).fmeasure


def log_softmax(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


# -- baselines and estimators, by hand -------------------------------------


def test_rloo_advantages_by_hand():
    rewards = tf.constant([1.0, 2.0, 3.0, 6.0, 0.0, 0.0])  # two prompts, K = 3
    # Prompt 1: 1 - (2+3)/2 = -1.5; 2 - (1+3)/2 = 0; 3 - (1+2)/2 = 1.5.
    # Prompt 2: 6 - 0 = 6; 0 - (6+0)/2 = -3 twice.
    np.testing.assert_allclose(rloo_advantages(rewards, 3).numpy(), [-1.5, 0, 1.5, 6, -3, -3])
    with pytest.raises(ValueError, match="num_samples >= 2"):
        rloo_advantages(rewards, 1)


def test_self_critical_advantages_by_hand():
    rewards = tf.constant([0.5, 0.25, 1.0, 0.0])  # two prompts, K = 2
    greedy = tf.constant([0.25, 0.5])
    np.testing.assert_allclose(
        self_critical_advantages(rewards, greedy, 2).numpy(), [0.25, 0.0, 0.5, -0.5]
    )


def test_zero_variance_fraction():
    rewards = tf.constant([1.0, 1.0, 0.0, 2.0, 3.0, 3.0])  # K = 2: groups (1,1) (0,2) (3,3)
    assert zero_variance_fraction(rewards, 2).numpy() == pytest.approx(2 / 3)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased_on_known_distributions(estimator):
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.2, 0.6])
    exact = float(np.sum(p * np.log(p / q)))
    per_token = kl_estimate(tf.constant(np.log(p)), tf.constant(np.log(q)), estimator).numpy()
    # The expectation under the sampling policy p is exactly KL(p || q).
    assert float(np.sum(p * per_token)) == pytest.approx(exact, abs=1e-12)
    if estimator == "k3":
        assert (per_token >= 0).all()
    with pytest.raises(ValueError, match="Unknown KL estimator"):
        kl_estimate(tf.constant(0.0), tf.constant(0.0), "k2")


def test_adaptive_kl_controller():
    # KL twice the target: error clipped to +0.2, times horizon 0.1.
    assert float(adaptive_kl_coefficient(0.5, 2.0, 1.0)) == pytest.approx(0.5 * 1.02)
    assert float(adaptive_kl_coefficient(0.5, 0.9, 1.0)) == pytest.approx(0.5 * (1 - 0.01))


# -- the trainer ---------------------------------------------------------------

VOCAB = len(RESERVED_TOKENS) + 2  # a 2-token toy policy: "a" and "b" (+ EOS)
A, B_ = 5, 6


def toy_batch():
    # prompt [BOS a SEP] (P = 3), reference [a EOS] (R = 2)
    return np.array([[1, A, 4, A, EOS_ID], [1, B_, 4, B_, EOS_ID]], dtype="int32")


def test_reinforce_gradient_equals_analytic_gradient():
    policy = PolicyNetwork(VOCAB, 4, 4)
    rewards = [1.0, -2.0, 0.5, 3.0]  # two prompts x K = 2
    trainer = ReinforceTrainer(
        policy, FixedReward(rewards), prompt_length=3, max_new_tokens=3, num_samples=2, baseline="none"
    )
    candidates = np.array(
        [[A, B_, EOS_ID], [B_, EOS_ID, PAD_ID], [A, A, A], [EOS_ID, PAD_ID, PAD_ID]], dtype="int32"
    )
    batch = toy_batch()
    with tf.GradientTape() as tape:
        loss, _ = trainer.compute_losses(batch, candidates=candidates)
    grad_bias = tape.gradient(loss, policy.head.bias).numpy()

    # Analytic: d/d bias of -1/N sum_i A_i sum_t log pi(a_t) = -1/N sum_i A_i sum_t (onehot - pi_t).
    prompts = np.repeat(batch[:, :3], 2, axis=0)
    logits = policy(np.concatenate([prompts, candidates[:, :-1]], axis=1)).numpy()[:, 2:]
    logits[..., FORBIDDEN] = -1e9 + logits[..., FORBIDDEN]
    probs = np.exp(log_softmax(logits))
    expected = np.zeros(VOCAB)
    logp_total = 0.0
    for i, advantage in enumerate(rewards):
        for t, token in enumerate(candidates[i]):
            if token == PAD_ID:
                continue
            expected -= advantage * (np.eye(VOCAB)[token] - probs[i, t]) / 4
            logp_total -= advantage * np.log(probs[i, t, token]) / 4
    np.testing.assert_allclose(grad_bias, expected, atol=1e-6)
    assert float(loss) == pytest.approx(logp_total, rel=1e-5)


def test_temperature_is_used_in_scoring():
    policy = PolicyNetwork(VOCAB, 4, 4)
    trainer = ReinforceTrainer(
        policy, FixedReward([1.0, 0.0, 0.0, 0.0]), 3, 2, num_samples=2, baseline="none", temperature=0.5
    )
    candidates = np.array([[A, EOS_ID]] + [[B_, EOS_ID]] * 3, dtype="int32")
    loss, _ = trainer.compute_losses(toy_batch(), candidates=candidates)
    logits = policy(np.array([[1, A, 4, A]], dtype="int32")).numpy()[0, 2:]
    logits[:, FORBIDDEN] -= 1e9
    logp = log_softmax(logits / 0.5)
    expected = -(logp[0, A] + logp[1, EOS_ID]) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_nan_reward_stops_with_the_reward_name_and_keeps_weights():
    class Broken(Reward):
        default_name = "broken_metric"

        def call(self, prompts, candidates, references):
            return tf.fill([tf.shape(candidates)[0]], float("nan"))

    policy = PolicyNetwork(VOCAB, 4, 4)
    before = [w.numpy() for w in policy.weights]
    trainer = ReinforceTrainer(policy, Broken(), 3, 3, num_samples=2, seed=0)
    trainer.compile(optimizer="adam")
    with pytest.raises(tf.errors.InvalidArgumentError, match="Reward component 'broken_metric' returned NaN or inf"):
        trainer.fit(toy_batch(), batch_size=2, epochs=1, verbose=0)
    for a, b in zip(before, policy.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_moving_average_baseline_by_hand():
    policy = PolicyNetwork(VOCAB, 4, 4)
    trainer = ReinforceTrainer(
        policy, FixedReward([1.0, 3.0, 5.0, 7.0]), 3, 2, num_samples=2,
        baseline="moving_average", baseline_decay=0.5,
    )
    candidates = np.array([[A, EOS_ID]] * 4, dtype="int32")
    _, logs = trainer.compute_losses(toy_batch(), candidates=candidates)
    # First step: the baseline is the batch mean 4.
    np.testing.assert_allclose(logs["advantages"].numpy(), [-3, -1, 1, 3])
    _, logs = trainer.compute_losses(toy_batch(), candidates=candidates)
    # Then 0.5 * 4 + 0.5 * 4 = 4 again; the stored value after two steps is 4.
    np.testing.assert_allclose(logs["advantages"].numpy(), [-3, -1, 1, 3])
    assert float(trainer.moving_baseline) == pytest.approx(4.0)


def test_logged_values_and_components():
    policy = PolicyNetwork(VOCAB, 4, 4)
    trainer = ReinforceTrainer(policy, TokenCountReward(A, name="a_count"), 3, 3, num_samples=2, seed=0,
                               kl_coef=0.1, gamma=0.5, entropy_coef=0.01)
    trainer.compile(optimizer="adam")
    logs = trainer.fit(toy_batch(), batch_size=2, epochs=1, verbose=0).history
    for key in ("loss", "reward", "reward_std", "advantage_std", "kl", "kl_coef", "entropy",
                "candidate_length", "zero_variance_groups", "mle_loss", "reward/a_count"):
        assert key in logs, key
    assert logs["reward"][0] == pytest.approx(logs["reward/a_count"][0])
    assert 1.0 <= logs["candidate_length"][0] <= 3.0
    assert logs["kl"][0] >= 0.0  # k3 is never negative


def test_bad_arguments():
    policy = PolicyNetwork(VOCAB, 4, 4)
    with pytest.raises(ValueError, match="num_samples=1"):
        ReinforceTrainer(policy, FixedReward([0.0]), 3, 3, num_samples=1, baseline="rloo")
    with pytest.raises(ValueError, match="Unknown baseline"):
        ReinforceTrainer(policy, FixedReward([0.0]), 3, 3, baseline="critic")
    with pytest.raises(ValueError, match="temperature"):
        ReinforceTrainer(policy, FixedReward([0.0]), 3, 3, temperature=0.0)
    with pytest.raises(ValueError, match="include_greedy=True needs num_samples >= 2"):
        ReinforceTrainer(policy, FixedReward([0.0]), 3, 3, num_samples=1, baseline="none",
                         include_greedy=True)
    with pytest.raises(ValueError, match="'self_critical'"):
        ReinforceTrainer(policy, FixedReward([0.0]), 3, 3, baseline="self_critical", include_greedy=True)


def test_include_greedy_puts_the_greedy_decode_last_in_every_group():
    keras.utils.set_random_seed(3)
    policy = PolicyNetwork(VOCAB, 4, 8)
    trainer = ReinforceTrainer(policy, FixedReward([0.0] * 6), 3, 4, num_samples=3, seed=0,
                               include_greedy=True)
    prompt_ids = tf.constant(toy_batch()[:, :3])
    prompts, candidates = trainer.sample(prompt_ids)
    expected_greedy = generate_ids(policy, prompt_ids, 4, get_sampler("greedy")).numpy()
    candidates = candidates.numpy()
    assert candidates.shape == (6, 4)
    np.testing.assert_array_equal(prompts.numpy(), np.repeat(toy_batch()[:, :3], 3, axis=0))
    np.testing.assert_array_equal(candidates[2::3], expected_greedy)
    # The other rows are samples: the same sampler seed gives the same rows
    # as a plain K - 1 draw.
    plain = ReinforceTrainer(policy, FixedReward([0.0] * 4), 3, 4, num_samples=2, seed=0)
    _, sampled = plain.sample(prompt_ids)
    np.testing.assert_array_equal(np.delete(candidates, [2, 5], axis=0), sampled.numpy())


def test_include_greedy_advantage_is_greedy_reward_minus_mean_of_samples():
    # Rewards of (sample, sample, greedy) for two prompts; RLOO over the group.
    rewards = [0.2, 0.4, 0.0, 0.9, 0.1, 0.8]
    policy = PolicyNetwork(VOCAB, 4, 4)
    trainer = ReinforceTrainer(policy, FixedReward(rewards), 3, 2, num_samples=3, seed=0,
                               include_greedy=True)
    _, logs = trainer.compute_losses(toy_batch())
    advantages = logs["advantages"].numpy()
    # Greedy rows: 0.0 - (0.2 + 0.4) / 2 = -0.3 (pushed down); 0.8 - 0.5 = 0.3 (pushed up).
    np.testing.assert_allclose(advantages[[2, 5]], [-0.3, 0.3], atol=1e-6)
    np.testing.assert_allclose(advantages[[0, 1]], [0.2 - 0.2, 0.4 - 0.1], atol=1e-6)


@pytest.mark.slow
def test_rl_raises_heldout_reward_on_digit_sorting():
    """Sort 4 letters: RL from a weak MLE start must clearly beat the start."""
    keras.utils.set_random_seed(0)
    letters = "abcdefghij"
    tokenizer = CharTokenizer(list(RESERVED_TOKENS) + list(letters))
    rng = np.random.default_rng(0)

    def pairs(n):
        out = []
        for _ in range(n):
            prompt = "".join(rng.choice(list(letters), 4))
            out.append((prompt, "".join(sorted(prompt))))
        return out

    train, test = pairs(256), pairs(64)
    train_packed, test_packed = pack_pairs(tokenizer, train, 7, 6), pack_pairs(tokenizer, test, 7, 6)
    policy = PolicyNetwork(tokenizer.vocabulary_size, 16, 64)
    mle = MLETrainer(policy, 7)
    mle.compile(optimizer=keras.optimizers.Adam(0.01))
    mle.fit(make_dataset(train_packed, 32, shuffle=True, seed=0), epochs=2, verbose=0)

    generator = ResponseGenerator(policy, tokenizer, 7, 6)
    reward = RougeIdsReward()

    def heldout():
        _, candidates, _ = generator.generate_ids([p for p, _ in test])
        return float(tf.reduce_mean(reward(None, candidates, tf.constant(test_packed[:, 7:]))))

    start = heldout()
    trainer = ReinforceTrainer(policy, reward, 7, 6, num_samples=4, seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(0.003))
    trainer.fit(make_dataset(train_packed, 32, shuffle=True, seed=1), epochs=8, verbose=0)
    end = heldout()
    print(f"held-out ROUGE-L F: {start:.3f} -> {end:.3f}")
    assert end > start + 0.15 and end > 2 * start
