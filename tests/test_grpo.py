"""GRPO-family controls of ReinforceTrainer against numpy and hand values.

Loss types, reward scaling, truncation masking, the zero-spread filter, the
clipped ratio of `num_iterations > 1`, the completion-length logs, and one
step on two replicas equal to one device. Everything runs eagerly on fixed
candidates except the replica test (kept small: the file runs in seconds).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.models import PolicyNetwork
from keras_selffb.text import EOS_ID, PAD_ID
from keras_selffb.training import ReinforceTrainer
from keras_selffb.training.baselines import aggregate_token_loss, clipped_surrogate
from keras_selffb.training.trackers import MinMaxTracker

from test_distributed import CountReward  # the shared test rewards
from test_reinforce import FixedReward
from conftest import cpu_devices, mirrored_strategy

VOCAB = 10
FORBIDDEN = [0, 1, 3, 4]  # PAD, BOS, UNK, SEP are never sampled
P, N, K = 3, 4, 3  # prompt columns, candidate length, candidates per prompt
A, B_, C = 5, 6, 7


def packed(first_tokens):
    """Packed rows `[BOS t SEP | t EOS]`, one per prompt token `t` (R = 2)."""
    return np.array([[1, t, 4, t, EOS_ID] for t in first_tokens], dtype="int32")


BATCH = packed([A, B_])
# Two prompts x K = 3, prompt-major; lengths 2, 4, 4 | 1, 3, 4. Rows 2 and 5
# never emit EOS (truncated).
CANDIDATES = np.array(
    [
        [A, EOS_ID, PAD_ID, PAD_ID],
        [B_, A, B_, EOS_ID],
        [A, A, A, A],
        [EOS_ID, PAD_ID, PAD_ID, PAD_ID],
        [B_, B_, EOS_ID, PAD_ID],
        [A, B_, A, B_],
    ],
    dtype="int32",
)
TRUNCATED = np.array([0, 0, 1, 0, 0, 1], dtype=bool)


# Candidates keyed by the prompt's token (5..8): a deterministic "sampler" that
# gives each replica the rows one device gives, with uneven lengths and
# truncated rows.
TABLE = np.array(
    [
        [[7, EOS_ID, 0, 0], [5, 9, 7, EOS_ID], [9, 9, 9, 9]],
        [[EOS_ID, 0, 0, 0], [6, 7, EOS_ID, 0], [7, 5, 6, 8]],
        [[9, 6, EOS_ID, 0], [8, EOS_ID, 0, 0], [5, 5, 7, 9]],
        [[6, 6, 6, 6], [7, 7, 7, EOS_ID], [EOS_ID, 0, 0, 0]],
    ],
    dtype="int32",
)


class TableTrainer(ReinforceTrainer):
    """Takes its candidates from `TABLE` by the prompt's token, not a sampler."""

    def sample(self, prompt_ids):
        rows = tf.gather(tf.constant(TABLE), prompt_ids[:, 1] - A)
        return tf.repeat(prompt_ids, self.num_samples, axis=0), tf.reshape(rows, [-1, N])


def log_softmax(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def numpy_log_probs(policy, batch, candidates):
    """Per-token log pi of the candidates `(B*K, N)`, mask and probabilities."""
    prompts = np.repeat(batch[:, :P], len(candidates) // len(batch), axis=0)
    logits = policy(np.concatenate([prompts, candidates[:, :-1]], axis=1)).numpy()[:, P - 1 :]
    logits[..., FORBIDDEN] -= 1e9
    all_logp = log_softmax(logits.astype("float64"))
    mask = (candidates != PAD_ID).astype("float64")
    logp = np.take_along_axis(all_logp, candidates[..., None], axis=-1)[..., 0] * mask
    return logp, mask, np.exp(all_logp)


def numpy_rloo(rewards):
    grouped = np.reshape(rewards, (-1, K))
    return (grouped - (grouped.sum(1, keepdims=True) - grouped) / (K - 1)).reshape(-1)


def token_coefficients(loss_type, weights):
    """`c` with loss = sum c * l for the per-token loss l (one device)."""
    rows = max((weights.sum(1) > 0).sum(), 1) if weights.any() else 1
    if loss_type == "sequence_sum":
        return weights / rows
    if loss_type == "grpo":
        return weights / np.maximum(weights.sum(1, keepdims=True), 1) / rows
    if loss_type == "dapo":
        return weights / max(weights.sum(), 1)
    return weights / (rows * N)  # dr_grpo


def bias_gradient(coefficients, candidates, probs):
    """d/d head.bias of sum c * log pi(a_t): c * (onehot(a_t) - pi_t)."""
    onehot = np.eye(VOCAB)[candidates]
    return np.einsum("it,itv->v", coefficients, onehot - probs)


def loss_and_bias_gradient(trainer, candidates=CANDIDATES, old_logp=None):
    with tf.GradientTape() as tape:
        loss, logs = trainer.compute_losses(BATCH, candidates=candidates, old_logp=old_logp)
    return float(loss), tape.gradient(loss, trainer.policy.head.bias).numpy(), logs


def make(policy, rewards, **kwargs):
    kwargs.setdefault("baseline", "none")
    return ReinforceTrainer(policy, FixedReward(rewards), P, N, num_samples=K, **kwargs)


REWARDS = [1.0, 1.0, 1.0, 0.0, 2.0, 0.5]  # prompt 1's three rewards are equal


# -- pure functions, by hand ----------------------------------------------------


@pytest.mark.parametrize(
    "ratio, advantage, objective, clipped",
    [
        (1.1, 1.0, 1.1, 0.0),  # inside [0.8, 1.28]: r * A
        (1.5, 1.0, 1.28, 1.0),  # above 1 + epsilon_high with A > 0: clipped
        (1.5, -1.0, -1.5, 0.0),  # above with A < 0: min keeps r * A (gradient flows)
        (0.5, -1.0, -0.8, 1.0),  # below 1 - epsilon with A < 0: clipped
        (0.5, 1.0, 0.5, 0.0),  # below with A > 0: r * A
        (1.25, 2.0, 2.5, 0.0),  # between 1 + epsilon and 1 + epsilon_high: clip-higher lets it through
        (2.0, 0.0, 0.0, 0.0),  # A = 0: never counted as clipped
    ],
)
def test_clipped_surrogate_by_hand(ratio, advantage, objective, clipped):
    logp = tf.math.log(tf.constant([[ratio]], tf.float32))
    value, active = clipped_surrogate(logp, tf.zeros([1, 1]), tf.constant([advantage]), 0.2, 0.28)
    assert float(value[0, 0]) == pytest.approx(objective, rel=1e-6)
    assert float(active[0, 0]) == clipped


def test_clipped_surrogate_epsilon_high_defaults_to_epsilon():
    logp = tf.math.log(tf.constant([[1.25]]))
    value, active = clipped_surrogate(logp, tf.zeros([1, 1]), tf.constant([2.0]), 0.2)
    assert float(value[0, 0]) == pytest.approx(2.4) and float(active[0, 0]) == 1.0


def test_aggregate_token_loss_by_hand():
    per_token = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0], [6.0, 0.0, 0.0]])
    weights = tf.constant([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # row 3 left out
    # Global counts: 2 rows, 5 tokens, N = 3.
    expected = {"sequence_sum": 15 / 2, "grpo": (2 + 4.5) / 2, "dapo": 15 / 5, "dr_grpo": 15 / 6}
    for loss_type, value in expected.items():
        assert float(aggregate_token_loss(per_token, weights, loss_type, 2.0, 5.0, 3)) == pytest.approx(value)
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_token_loss(per_token, weights, "bnpo", 2.0, 5.0, 3)


def test_min_max_tracker_accumulates_and_round_trips():
    low, high = MinMaxTracker(6, extreme="min", name="low"), MinMaxTracker(6, extreme="max", name="high")
    assert float(low.result()) == float(high.result()) == 0.0  # empty
    for values in ([4, 2, 5], [3, 9]):  # 9 counts as the largest value, 6
        low.update_state(values)
        high.update_state(values)
    assert (float(low.result()), float(high.result())) == (2.0, 6.0)
    copy = MinMaxTracker.from_config(low.get_config())
    assert (copy.name, copy.max_value, copy.extreme) == ("low", 6, "min")
    with pytest.raises(ValueError, match="extreme"):
        MinMaxTracker(6, extreme="median")


# -- the trainer on fixed candidates ----------------------------------------------


def test_default_options_give_the_reinforce_loss():
    """Defaults: -mean_i A_i sum_t log pi + beta mean_i sum_t KL - c_H mean_t H (today's formula)."""
    policy, reference = PolicyNetwork(VOCAB, 4, 4), PolicyNetwork(VOCAB, 4, 4)
    trainer = ReinforceTrainer(policy, FixedReward(REWARDS), P, N, num_samples=K, kl_coef=0.1,
                               reference_policy=reference, entropy_coef=0.05)
    loss, grad, logs = loss_and_bias_gradient(trainer)
    logp, mask, probs = numpy_log_probs(policy, BATCH, CANDIDATES)
    ref_logp, _, _ = numpy_log_probs(reference, BATCH, CANDIDATES)
    advantages = numpy_rloo(np.array(REWARDS))
    log_ratio = logp - ref_logp
    kl = (np.exp(-log_ratio) - 1 + log_ratio) * mask
    entropy = -(probs * np.log(np.maximum(probs, 1e-30))).sum(-1) * mask
    rows, tokens = len(CANDIDATES), mask.sum()
    expected = (-(advantages * logp.sum(1)).sum() / rows + 0.1 * kl.sum() / rows
                - 0.05 * entropy.sum() / tokens)
    assert loss == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(logs["advantages"].numpy(), advantages, rtol=1e-6)
    # The same trainer with num_iterations=2 (clipped ratio, 1 on the first
    # update) has the same gradient; its loss value is -mean(A) instead.
    clipped = ReinforceTrainer(policy, FixedReward(REWARDS), P, N, num_samples=K, kl_coef=0.1,
                               reference_policy=reference, entropy_coef=0.05, num_iterations=2)
    _, clipped_grad, clipped_logs = loss_and_bias_gradient(clipped)
    np.testing.assert_allclose(clipped_grad, grad, atol=1e-7)
    assert float(clipped_logs["clipped_tokens"]) == 0.0


@pytest.mark.parametrize(
    "loss_type, mask_truncated, filter_groups",
    [
        ("sequence_sum", False, False),
        ("grpo", False, False),
        ("dapo", False, False),
        ("dr_grpo", False, False),
        ("dapo", True, False),  # rows 2 and 5 out
        ("grpo", False, True),  # prompt 1 (rows 0-2) out
        ("dr_grpo", True, True),  # rows 0-2 and 5 out
        ("sequence_sum", True, True),
    ],
)
def test_loss_types_and_row_filters_against_numpy(loss_type, mask_truncated, filter_groups):
    policy = PolicyNetwork(VOCAB, 4, 4)
    trainer = make(policy, REWARDS, loss_type=loss_type, mask_truncated_completions=mask_truncated,
                   filter_zero_std_groups=filter_groups)
    loss, grad, logs = loss_and_bias_gradient(trainer)
    logp, mask, probs = numpy_log_probs(policy, BATCH, CANDIDATES)
    keep = np.ones(len(CANDIDATES))
    if mask_truncated:
        keep[TRUNCATED] = 0
    if filter_groups:
        keep[:3] = 0
    weights = mask * keep[:, None]
    # Exactly the expected rows are zeroed; the others keep their mask.
    np.testing.assert_array_equal(logs["weights"].numpy(), weights)
    coefficients = token_coefficients(loss_type, weights) * np.array(REWARDS)[:, None]
    assert loss == pytest.approx(-(coefficients * logp).sum(), rel=1e-5)
    np.testing.assert_allclose(grad, -bias_gradient(coefficients, CANDIDATES, probs), atol=1e-6)


def test_a_fully_filtered_batch_gives_zero_loss():
    policy = PolicyNetwork(VOCAB, 4, 4)
    trainer = make(policy, [1.0] * 6, baseline="rloo", loss_type="dapo", filter_zero_std_groups=True)
    loss, grad, _ = loss_and_bias_gradient(trainer)
    assert loss == 0.0 and not grad.any()


def numpy_group_mean(rewards):
    grouped = np.reshape(rewards, (-1, K))
    return (grouped - grouped.mean(1, keepdims=True)).reshape(-1)


@pytest.mark.parametrize("baseline", ["rloo", "group_mean", "none"])
def test_scale_rewards_against_numpy(baseline):
    rewards = np.array([1.0, 3.0, 2.0, 0.0, 0.5, 4.0])
    policy = PolicyNetwork(VOCAB, 4, 4)
    centred = {"rloo": numpy_rloo, "group_mean": numpy_group_mean, "none": np.asarray}[baseline](rewards)
    group_std = np.repeat(rewards.reshape(-1, K).std(axis=1, ddof=1), K)
    for scale, std in (("none", 0.0), ("group", group_std), ("batch", rewards.std(ddof=1))):
        trainer = make(policy, rewards.tolist(), baseline=baseline, scale_rewards=scale)
        _, logs = trainer.compute_losses(BATCH, candidates=CANDIDATES)
        expected = centred if scale == "none" else centred / (std + 1e-4)
        np.testing.assert_allclose(logs["advantages"].numpy(), expected, rtol=1e-6, err_msg=scale)


def test_group_mean_baseline_is_grpo_and_scales_the_rloo_gradient():
    """TRL's GRPO advantage (r - mean) / (std + 1e-4) by hand; the group-mean
    gradient is (K - 1) / K times RLOO's for the same candidates."""
    rewards = [1.0, 3.0, 2.0, 0.0, 0.5, 4.0]
    # Group 1: mean 2, std 1; group 2: mean 1.5, std sqrt(13/4) (ddof 1).
    std2 = np.sqrt(((0 - 1.5) ** 2 + (0.5 - 1.5) ** 2 + (4 - 1.5) ** 2) / 2)
    by_hand = [-1 / 1.0001, 1 / 1.0001, 0.0, -1.5 / (std2 + 1e-4), -1 / (std2 + 1e-4), 2.5 / (std2 + 1e-4)]
    policy = PolicyNetwork(VOCAB, 4, 4)
    grpo = make(policy, rewards, baseline="group_mean", scale_rewards="group", loss_type="grpo")
    _, grad_grpo, logs = loss_and_bias_gradient(grpo)
    np.testing.assert_allclose(logs["advantages"].numpy(), by_hand, rtol=1e-5)
    _, grad_mean, _ = loss_and_bias_gradient(make(policy, rewards, baseline="group_mean"))
    _, grad_rloo, _ = loss_and_bias_gradient(make(policy, rewards, baseline="rloo"))
    assert np.abs(grad_rloo).max() > 1e-3
    np.testing.assert_allclose(grad_mean, grad_rloo * (K - 1) / K, rtol=1e-5, atol=1e-7)


def test_group_scaling_of_a_zero_spread_group_divides_by_the_epsilon():
    # TRL's GRPO: (r - mean) / (std + 1e-4); a zero-spread group with the
    # "none" baseline gets r / 1e-4, which is why GRPO centres first.
    trainer = make(PolicyNetwork(VOCAB, 4, 4), REWARDS, scale_rewards="group")
    _, logs = trainer.compute_losses(BATCH, candidates=CANDIDATES)
    np.testing.assert_allclose(logs["advantages"].numpy()[:3], [1e4] * 3, rtol=1e-5)


def test_clipped_objective_and_clip_ratio_against_numpy():
    policy = PolicyNetwork(VOCAB, 4, 4)
    advantages = np.array([1.0, -2.0, 0.5, -1.0, 2.0, 1.5])
    trainer = make(policy, advantages.tolist(), num_iterations=2, epsilon=0.2, epsilon_high=0.3,
                   loss_type="dapo", mask_truncated_completions=True)
    logp, mask, probs = numpy_log_probs(policy, BATCH, CANDIDATES)
    # An "old" policy whose ratios spread over [0.5, 1.6]: some tokens clip low, some high.
    offsets = np.linspace(-0.47, 0.69, CANDIDATES.size).reshape(CANDIDATES.shape) * mask
    old_logp = (logp - offsets).astype("float32")
    loss, grad, logs = loss_and_bias_gradient(trainer, old_logp=tf.constant(old_logp))

    ratio = np.exp(logp - old_logp)
    a = advantages[:, None]
    objective = np.minimum(ratio * a, np.clip(ratio, 0.8, 1.3) * a)
    active = ((ratio > 1.3) & (a > 0)) | ((ratio < 0.8) & (a < 0))
    weights = mask * (~TRUNCATED)[:, None]
    coefficients = token_coefficients("dapo", weights)
    assert loss == pytest.approx(-(coefficients * objective).sum(), rel=1e-5)
    # Gradient: A * r * dlog pi where the clip is not active, 0 where it is.
    np.testing.assert_allclose(
        grad, -bias_gradient(coefficients * a * ratio * ~active, CANDIDATES, probs), atol=1e-6
    )
    clipped = (active * weights).sum()
    assert 0 < clipped < weights.sum()
    assert float(logs["clipped_tokens"]) == clipped
    assert float(logs["kept_tokens_local"]) == weights.sum()


def sgd_update(policy, trainer, lr, old_logp=None):
    """One manual SGD update from `compute_losses`; returns its logs."""
    with tf.GradientTape() as tape:
        loss, logs = trainer.compute_losses(BATCH, candidates=CANDIDATES, old_logp=old_logp)
    variables = policy.trainable_variables
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
        variable.assign_sub(lr * tf.convert_to_tensor(gradient))
    return logs


def test_num_iterations_does_updates_against_the_sampling_policy():
    """train_step with mu = 2 equals: update; update with the ratio to the sampling policy."""
    weights = PolicyNetwork(VOCAB, 4, 4).get_weights()
    options = dict(baseline="rloo", num_iterations=2, loss_type="grpo", scale_rewards="group",
                   epsilon=0.1, epsilon_high=0.15)
    rewards = [1.0, 3.0, 2.0, 0.0, 0.5, 4.0]

    stepped = PolicyNetwork(VOCAB, 4, 4)
    stepped.set_weights(weights)
    trainer = make(stepped, rewards, **options)
    trainer.sample = lambda prompt_ids: (tf.repeat(prompt_ids, K, axis=0), tf.constant(CANDIDATES))
    trainer.compile(optimizer=keras.optimizers.SGD(2.0))
    logs = trainer.train_step(tf.constant(BATCH))

    manual = PolicyNetwork(VOCAB, 4, 4)
    manual.set_weights(weights)
    reference = make(manual, rewards, **options)
    first = sgd_update(manual, reference, 2.0)
    second = sgd_update(manual, reference, 2.0, old_logp=first["logp"])
    for a, b in zip(stepped.get_weights(), manual.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The second update's ratios moved off 1 and some clipped; clip_ratio
    # averages the two updates' tokens (none clip on the first).
    assert float(first["clipped_tokens"]) == 0.0 and float(second["clipped_tokens"]) > 0
    tokens = float(first["kept_tokens_local"])
    assert float(logs["clip_ratio"]) == pytest.approx(float(second["clipped_tokens"]) / (2 * tokens))


def test_completion_lengths_and_truncated_ratio_over_an_epoch():
    trainer = TableTrainer(PolicyNetwork(VOCAB, 4, 4), CountReward(), P, N, num_samples=K)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    for prompts in ([A, B_], [C, 8]):  # two steps of one epoch: lengths accumulate
        logs = trainer.train_step(tf.constant(packed(prompts)))
    lengths = (TABLE != PAD_ID).sum(-1).reshape(-1)
    truncated = ~(TABLE == EOS_ID).any(-1).reshape(-1)
    assert float(logs["completion_length_mean"]) == pytest.approx(lengths.mean())
    assert float(logs["completion_length_min"]) == lengths.min() == 1
    assert float(logs["completion_length_max"]) == lengths.max() == 4
    assert float(logs["truncated_ratio"]) == pytest.approx(truncated.mean())
    assert float(logs["candidate_length"]) == pytest.approx(lengths.mean())
    assert float(logs["clip_ratio"]) == 0.0  # num_iterations = 1: no ratio


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(loss_type="bnpo"), "Unknown loss_type 'bnpo'"),
        (dict(scale_rewards=True), "Unknown scale_rewards True"),
        (dict(epsilon=0.0), "epsilon must be in"),
        (dict(epsilon=1.0), "epsilon must be in"),
        (dict(epsilon_high=-0.1), "epsilon_high must be > 0"),
        (dict(num_iterations=0), "num_iterations must be an int >= 1"),
        (dict(num_iterations=1.5), "num_iterations must be an int >= 1"),
        (dict(scale_rewards="group", whiten=True), "both rescale the advantages"),
        (dict(scale_rewards="group", num_samples=1, baseline="none"), "need num_samples >= 2"),
        (dict(filter_zero_std_groups=True, num_samples=1, baseline="none"), "need num_samples >= 2"),
        (dict(baseline="group_mean", num_samples=1), ">= 2 for the group_mean baseline"),
        (dict(jit_compile_sampling="yes"), "jit_compile_sampling must be True or False"),
    ],
)
def test_bad_options(options, message):
    options = {"num_samples": K, **options}
    with pytest.raises(ValueError, match=message):
        ReinforceTrainer(PolicyNetwork(VOCAB, 4, 4), FixedReward(REWARDS), P, N, **options)


# -- distribution ------------------------------------------------------------------


@pytest.mark.skipif(len(cpu_devices()) < 2, reason="needs 2 logical CPU devices")
def test_grpo_step_two_replicas_equals_one():
    """dapo + group scaling + mu = 2 + truncation masking: 2 replicas = 1 device (1e-5)."""
    batch = packed([A, B_, C, 8])
    weights = PolicyNetwork(VOCAB, 6, 6).get_weights()

    def one_step(strategy, run_eagerly):
        with strategy.scope():
            policy = PolicyNetwork(VOCAB, 6, 6)
            policy.set_weights(weights)
            trainer = TableTrainer(
                policy, CountReward(), P, N, num_samples=K, loss_type="dapo", scale_rewards="group",
                num_iterations=2, mask_truncated_completions=True, kl_coef=0.1, entropy_coef=0.05,
            )
            # SGD: a loss scaled by the number of replicas cannot hide (Adam's
            # first step is about lr * sign(gradient)).
            trainer.compile(optimizer=keras.optimizers.SGD(1.0), run_eagerly=run_eagerly)
        history = trainer.fit(batch, batch_size=4, epochs=1, verbose=0, shuffle=False).history
        return [w.numpy() for w in policy.weights], history

    # The replicas run the traced step that fit() runs; the one device runs
    # it eagerly, which saves a trace and checks graph against eager too.
    single, logs1 = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), run_eagerly=True)
    mirrored, logs2 = one_step(mirrored_strategy(), run_eagerly=False)
    assert max(np.abs(a - b).max() for a, b in zip(single, weights)) > 1e-3
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert logs1["clip_ratio"][0] > 0  # the second update clipped some tokens
    assert set(logs1) == set(logs2)
    for key in logs1:
        np.testing.assert_allclose(logs1[key], logs2[key], rtol=1e-4, atol=1e-6, err_msg=key)


# -- XLA-compiled sampling ---------------------------------------------------------


def xla_candidates(policy, sampler, seed, include_greedy=False, jit=True):
    trainer = ReinforceTrainer(policy, CountReward(), P, N, num_samples=K, sampler=sampler, seed=seed,
                               include_greedy=include_greedy, jit_compile_sampling=jit)
    return trainer, trainer.sample(tf.constant(packed([A, B_, C])[:, :P]))[1].numpy()


def test_jit_compiled_sampling_greedy_equals_the_graph_and_samples_are_seeded():
    policy = PolicyNetwork(VOCAB, 6, 6)
    # Greedy decoding is deterministic: XLA and the graph pick the same ids.
    _, greedy_xla = xla_candidates(policy, "greedy", None)
    _, greedy_graph = xla_candidates(policy, "greedy", None, jit=False)
    np.testing.assert_array_equal(greedy_xla, greedy_graph)
    # include_greedy's last row of each group is that greedy decode, under XLA too.
    _, mixed = xla_candidates(policy, "random", 0, include_greedy=True)
    np.testing.assert_array_equal(mixed[K - 1 :: K], greedy_graph[::K])
    # Random draws: the same seed gives the same candidates, another seed others;
    # never a forbidden id, and nothing but PAD after the first EOS.
    _, first = xla_candidates(policy, "random", 0)
    _, again = xla_candidates(policy, "random", 0)
    _, other = xla_candidates(policy, "random", 1)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    assert not np.isin(first, [1, 3, 4]).any()
    after_eos = np.cumsum(first == EOS_ID, axis=1) - (first == EOS_ID) > 0
    assert (first[after_eos] == PAD_ID).all()


def test_jit_compiled_sampling_trains_under_fit():
    policy = PolicyNetwork(VOCAB, 6, 6)
    before = [w.numpy().copy() for w in policy.weights]
    trainer = ReinforceTrainer(policy, CountReward(), P, N, num_samples=K, seed=0, baseline="group_mean",
                               scale_rewards="group", loss_type="dapo", jit_compile_sampling=True)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    logs = trainer.fit(packed([A, B_, C, 8]), batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0]) and 1.0 <= logs["completion_length_mean"][0] <= N
    assert max(np.abs(a.numpy() - b).max() for a, b in zip(policy.weights, before)) > 1e-4
