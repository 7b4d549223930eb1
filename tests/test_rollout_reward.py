"""`RolloutReward` (Monte-Carlo per-token values) and the trainer's per-token path."""

import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.models import PolicyNetwork
from keras_selffb.rewards import RolloutReward
from keras_selffb.rewards.base import Reward
from keras_selffb.text import EOS_ID, PAD_ID, RESERVED_TOKENS
from keras_selffb.training import ReinforceTrainer

from test_reinforce import FORBIDDEN, TokenCountReward as CountReward

VOCAB = len(RESERVED_TOKENS) + 3  # content ids 5, 6, 7
SEVEN = 7


class FixedTokenReward(Reward):
    """A per-token reward with fixed values `[B * K, N]` (and their row sums as the sequence reward)."""

    default_name = "fixed_tokens"
    per_token = True

    def __init__(self, values):
        super().__init__()
        self.values = tf.constant(values, tf.float32)

    def call(self, prompts, candidates, references):
        return tf.reduce_sum(self.values, axis=1)

    def token_values(self, prompts, candidates, references):
        return self.values


def uniform_policy():
    """A policy whose logits are all 0: uniform over the ids the sampler allows (EOS, 5, 6, 7)."""
    policy = PolicyNetwork(VOCAB, 4, 4)
    policy(np.zeros((1, 3), "int32"))
    policy.set_weights([np.zeros_like(w) for w in policy.get_weights()])
    return policy


def expected_count(steps, allowed=4):
    """E[# of one content id] in a uniform completion of `steps` tokens that stops at EOS."""
    keep = (allowed - 1) / allowed
    return sum(keep**j / allowed for j in range(steps))


def test_token_values_match_the_analytic_expectation():
    rollout = RolloutReward(CountReward(SEVEN), uniform_policy(), num_rollouts=4000, seed=3)
    prompts = tf.constant([[1, 5, 4], [1, 6, 4]], tf.int32)
    candidates = tf.constant([[SEVEN, 5, SEVEN, 6, 5], [SEVEN, EOS_ID, PAD_ID, PAD_ID, PAD_ID]], tf.int32)
    values = rollout.token_values(prompts, candidates, None).numpy()
    assert values.shape == (2, 5)
    prefix_sevens = [1, 1, 2, 2]
    expected = [c + expected_count(5 - t) for t, c in zip(range(1, 5), prefix_sevens)] + [2.0]
    # 4,000 roll-outs: the standard error of each mean is below 0.015.
    np.testing.assert_allclose(values[0], expected, atol=0.06)
    assert values[0, -1] == 2.0  # the last column is the candidate's own reward, exactly
    # The second candidate ends at its EOS: every prefix that holds it is worth the reply itself.
    assert values[1, 0] == pytest.approx(1.0 + expected_count(4), abs=0.06)
    np.testing.assert_array_equal(values[1, 1:], [1.0, 1.0, 1.0, 1.0])
    # As a plain reward it is the wrapped reward of the whole candidate.
    np.testing.assert_array_equal(rollout(prompts, candidates, None).numpy(), [2.0, 1.0])


def test_token_values_are_seeded():
    def values(seed):
        rollout = RolloutReward(CountReward(SEVEN), uniform_policy(), num_rollouts=8, seed=seed)
        return rollout.token_values(tf.constant([[1, 5, 4]]), tf.constant([[5, 6, 5, 6]]), None).numpy()

    np.testing.assert_array_equal(values(1), values(1))
    assert not np.array_equal(values(1), values(2))


def test_per_token_policy_gradient_by_hand():
    policy = PolicyNetwork(VOCAB, 4, 4)
    # Two prompts x K = 2 candidates of N = 3 tokens; one value per token.
    candidates = np.array([[5, 6, EOS_ID], [6, EOS_ID, PAD_ID], [7, 7, 7], [EOS_ID, PAD_ID, PAD_ID]], "int32")
    values = np.array([[1.0, 0.5, 2.0], [3.0, -1.0, 9.0], [0.0, 2.0, 4.0], [1.0, 5.0, 5.0]])
    trainer = ReinforceTrainer(policy, FixedTokenReward(values), prompt_length=3, max_new_tokens=3,
                               num_samples=2, baseline="rloo")
    batch = np.array([[1, 5, 4, 5, EOS_ID], [1, 6, 4, 6, EOS_ID]], "int32")
    with tf.GradientTape() as tape:
        loss, logs = trainer.compute_losses(batch, candidates=candidates)
    grad_bias = tape.gradient(loss, policy.head.bias).numpy()

    # RLOO per position: each token's value minus the same position's value of the prompt's other sample.
    advantages = values - values[[1, 0, 3, 2]]
    np.testing.assert_allclose(logs["advantages"].numpy(), advantages)
    prompts = np.repeat(batch[:, :3], 2, axis=0)
    logits = policy(np.concatenate([prompts, candidates[:, :-1]], axis=1)).numpy()[:, 2:]
    logits[..., FORBIDDEN] += -1e9
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    probs = np.exp(logp)
    expected_grad, expected_loss = np.zeros(VOCAB), 0.0
    for i in range(4):
        for t, token in enumerate(candidates[i]):
            if token == PAD_ID:
                continue
            expected_grad -= advantages[i, t] * (np.eye(VOCAB)[token] - probs[i, t]) / 4
            expected_loss -= advantages[i, t] * logp[i, t, token] / 4
    np.testing.assert_allclose(grad_bias, expected_grad, atol=1e-6)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    # Logged per row: the mean advantage over the row's tokens.
    mask = candidates != PAD_ID
    np.testing.assert_allclose(logs["row_advantages"].numpy(), (advantages * mask).sum(1) / mask.sum(1), rtol=1e-6)


def test_a_rollout_trainer_takes_steps_and_logs_the_sequence_reward():
    policy = PolicyNetwork(VOCAB, 4, 4)
    reward = RolloutReward(CountReward(SEVEN), policy, num_rollouts=2, seed=0)
    trainer = ReinforceTrainer(policy, reward, prompt_length=3, max_new_tokens=4, num_samples=2,
                               baseline="none", seed=0)
    trainer.compile(optimizer="adam")
    before = [w.copy() for w in policy.get_weights()]
    history = trainer.fit(np.array([[1, 5, 4, 5, EOS_ID]] * 4, "int32"), batch_size=2, epochs=1, verbose=0)
    reward_logged = history.history["reward"][-1]
    assert 0.0 <= reward_logged <= 4.0  # a count of 7s in 4 tokens, not a per-token sum
    assert any(not np.array_equal(a, b) for a, b in zip(before, policy.get_weights()))


def test_bad_arguments_are_named():
    policy = PolicyNetwork(VOCAB, 4, 4)
    with pytest.raises(TypeError, match="wraps a keras_selffb Reward"):
        RolloutReward(lambda p, c, r: c, policy)
    with pytest.raises(ValueError, match="num_rollouts"):
        RolloutReward(CountReward(SEVEN), policy, num_rollouts=0)
    with pytest.raises(ValueError, match="already per token"):
        RolloutReward(FixedTokenReward([[1.0]]), policy)
    reward = RolloutReward(CountReward(SEVEN), policy, num_rollouts=2)
    common = {"prompt_length": 3, "max_new_tokens": 4, "num_samples": 2}
    with pytest.raises(ValueError, match="baselines"):
        ReinforceTrainer(policy, reward, baseline="self_critical", **common)
    with pytest.raises(ValueError, match="unscaled"):
        ReinforceTrainer(policy, reward, scale_rewards="batch", **common)
    with pytest.raises(ValueError, match="include_greedy"):
        ReinforceTrainer(policy, reward, include_greedy=True, **common)
