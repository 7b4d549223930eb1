"""Advantages, KL estimators, entropy and GRPO-family losses for policy gradients.

Pure functions on tensors, so each is tested against hand-computed values.

- `rloo_advantages`: REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et
  al. 2024): each of the K samples of a prompt is baselined by the mean
  reward of the other K - 1.
- `group_mean_advantages`: each sample is baselined by the mean reward of
  its whole group, itself included (GRPO, Shao et al. 2024; TRL's
  `GRPOTrainer`): `(K - 1) / K` times the RLOO advantage.
- `self_critical_advantages`: the reward of the greedy decode of the same
  prompt is the baseline (Rennie et al. 2017, SCST).
- `kl_estimate`: per-token estimators of KL(pi || pi_ref) from samples of pi
  (Schulman 2020, "Approximating KL divergence"): k1 = log pi - log pi_ref
  (unbiased, can be negative), k3 = r - 1 - log r with r = pi_ref / pi
  (unbiased, always >= 0, lower variance).
- `group_std`, `zero_spread_groups`: per-prompt reward spread, for
  `scale_rewards="group"` and `filter_zero_std_groups` (TRL's GRPO and
  DAPO's dynamic-sampling filter).
- `clipped_surrogate`: PPO's clipped per-token objective (Schulman et al.
  2017) with DAPO's asymmetric "clip-higher" bound (Yu et al. 2025).
- `aggregate_token_loss`: the four token-loss normalisations of TRL's
  `GRPOConfig.loss_type` (GRPO, DAPO/BNPO, Dr. GRPO) and this library's
  per-sequence sum.
"""

import tensorflow as tf

BASELINES = ("rloo", "group_mean", "self_critical", "moving_average", "none")
KL_ESTIMATORS = ("k1", "k3")
LOSS_TYPES = ("sequence_sum", "grpo", "dapo", "dr_grpo")
REWARD_SCALINGS = ("none", "group", "batch")
# Added to the reward std before dividing, as TRL's GRPOTrainer does.
STD_EPSILON = 1e-4


def group_rewards(rewards, num_samples):
    """Reshapes `[B * K, ...]` rewards (prompt-major) to `[B, K, ...]`."""
    rewards = tf.convert_to_tensor(rewards)
    return tf.reshape(rewards, tf.concat([[-1, num_samples], tf.shape(rewards)[1:]], axis=0))


def _ungroup(grouped):
    """`[B, K, ...]` back to `[B * K, ...]`."""
    return tf.reshape(grouped, tf.concat([[-1], tf.shape(grouped)[2:]], axis=0))


def rloo_advantages(rewards, num_samples):
    """`r_i - mean_{j != i} r_j` within each group of `num_samples`; the shape of `rewards`.

    `rewards` is `[B * K]`, or `[B * K, N]` for per-token values, each
    position then baselined by the same position of the prompt's other
    samples.

    Example:

    >>> # Two prompts, K = 3 samples each (prompt-major).
    >>> rloo_advantages(tf.constant([1.0, 0.0, 0.5, 2.0, 2.0, 2.0]), 3).numpy().tolist()
    [0.75, -0.75, 0.0, 0.0, 0.0, 0.0]
    >>> rloo_advantages(tf.constant([[1.0, 4.0], [3.0, 0.0]]), 2).numpy().tolist()
    [[-2.0, 4.0], [2.0, -4.0]]
    """
    if num_samples < 2:
        raise ValueError(f"The rloo baseline needs num_samples >= 2; got {num_samples}.")
    grouped = group_rewards(rewards, num_samples)
    others = (tf.reduce_sum(grouped, axis=1, keepdims=True) - grouped) / (num_samples - 1)
    return _ungroup(grouped - others)


def group_mean_advantages(rewards, num_samples):
    """`r_i - mean_j r_j` over each group of `num_samples` (GRPO's centring); the shape of `rewards`.

    Example:

    >>> # Two prompts, K = 3 samples each (prompt-major).
    >>> group_mean_advantages(tf.constant([1.0, 0.0, 0.5, 2.0, 2.0, 2.0]), 3).numpy().tolist()
    [0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    """
    if num_samples < 2:
        raise ValueError(f"The group_mean baseline needs num_samples >= 2; got {num_samples}.")
    grouped = group_rewards(rewards, num_samples)
    return _ungroup(grouped - tf.reduce_mean(grouped, axis=1, keepdims=True))


def self_critical_advantages(rewards, greedy_rewards, num_samples):
    """`r_i - r_greedy` of the sample's own prompt; `[B * K]`."""
    baseline = tf.repeat(greedy_rewards, num_samples, axis=0)
    return rewards - baseline


def zero_spread_groups(rewards, num_samples):
    """1.0 for each prompt whose K rewards are all equal, else 0.0; `[B]`.

    Example:

    >>> zero_spread_groups(tf.constant([1.0, 1.0, 0.0, 2.0]), 2).numpy().tolist()
    [1.0, 0.0]
    """
    grouped = group_rewards(rewards, num_samples)
    spread = tf.reduce_max(grouped, axis=1) - tf.reduce_min(grouped, axis=1)
    return tf.cast(spread <= 1e-12, tf.float32)


def zero_variance_fraction(rewards, num_samples):
    """Fraction of prompts whose K rewards are all equal (no learning signal)."""
    return tf.reduce_mean(zero_spread_groups(rewards, num_samples))


def group_std(rewards, num_samples):
    """Sample std (Bessel-corrected, like `torch.std`) of each prompt's K rewards; `[B * K]`.

    Each row gets its own prompt's std. Needs `num_samples >= 2`.

    Example:

    >>> # Prompt 1: rewards 1 and 3 (std sqrt(2)); prompt 2: 2, 2 (std 0).
    >>> [round(x, 4) for x in group_std(tf.constant([1.0, 3.0, 2.0, 2.0]), 2).numpy().tolist()]
    [1.4142, 1.4142, 0.0, 0.0]
    """
    if num_samples < 2:
        raise ValueError(f"A group std needs num_samples >= 2; got {num_samples}.")
    grouped = group_rewards(rewards, num_samples)
    mean = tf.reduce_mean(grouped, axis=1, keepdims=True)
    variance = tf.reduce_sum(tf.square(grouped - mean), axis=1) / (num_samples - 1)
    return tf.repeat(tf.sqrt(variance), num_samples, axis=0)


def clipped_surrogate(logp, old_logp, advantages, epsilon=0.2, epsilon_high=None):
    """PPO's clipped per-token objective (to maximise) and where the clip bites.

    With `r_t = exp(logp_t - old_logp_t)` and `A` the row's advantage, the
    objective is `min(r_t * A, clip(r_t, 1 - epsilon, 1 + epsilon_high) * A)`.
    A token is "clipped" when the clipped term is the smaller one, so its
    gradient is zero: `r_t > 1 + epsilon_high` with `A > 0`, or
    `r_t < 1 - epsilon` with `A < 0` (TRL's `clip_ratio/region_mean`).

    Args:
        logp: `(B, N)` log-probabilities of the sampled tokens, current policy.
        old_logp: `(B, N)` the same under the policy that sampled them.
        advantages: `(B,)` one advantage per row, or `(B, N)` one per token.
        epsilon: float. Lower clip range. Defaults to `0.2`.
        epsilon_high: float or None. Upper clip range (DAPO's clip-higher).
            Defaults to `None`: `epsilon`.

    Returns:
        `(objective (B, N), clipped (B, N))`, `clipped` as 0.0 / 1.0.

    Example:

    >>> # Ratios 1.5, 1.5, 0.5, 1.1 (logp - old_logp = log r), advantages +1, -1, -1, +1.
    >>> logp = tf.math.log(tf.constant([[1.5], [1.5], [0.5], [1.1]]))
    >>> objective, clipped = clipped_surrogate(logp, tf.zeros([4, 1]), tf.constant([1.0, -1.0, -1.0, 1.0]),
    ...                                        epsilon=0.2, epsilon_high=0.28)
    >>> [round(x, 4) for x in objective.numpy()[:, 0].tolist()], clipped.numpy()[:, 0].tolist()
    ([1.28, -1.5, -0.8, 1.1], [1.0, 0.0, 1.0, 0.0])
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    ratio = tf.exp(logp - old_logp)
    advantages = tf.cast(advantages, ratio.dtype)
    if advantages.shape.rank == 1:
        advantages = advantages[:, None]
    unclipped = ratio * advantages
    bounded = tf.clip_by_value(ratio, 1.0 - epsilon, 1.0 + epsilon_high) * advantages
    clipped = ((ratio > 1.0 + epsilon_high) & (advantages > 0)) | ((ratio < 1.0 - epsilon) & (advantages < 0))
    return tf.minimum(unclipped, bounded), tf.cast(clipped, ratio.dtype)


def aggregate_token_loss(per_token, weights, loss_type, rows, tokens, max_new_tokens):
    """Reduces a per-token loss `(B, N)` to a scalar by `loss_type`.

    `weights` `(B, N)` is 1.0 on the tokens that count (the response mask,
    times 0.0 for rows left out). `rows` and `tokens` are the counts of rows
    and weighted tokens that count in the GLOBAL batch (all-reduced under a
    distribution strategy), so each replica's share sums to the global loss.

    - `"sequence_sum"`: `sum_i sum_t l / rows` (REINFORCE: sum over a
      sequence's tokens, mean over sequences);
    - `"grpo"`: `sum_i mean_t l / rows` (mean over each sequence's tokens,
      then over sequences);
    - `"dapo"`: `sum_i sum_t l / tokens` (mean over all tokens of the batch;
      TRL's `"dapo"` and, globally normalised, `"bnpo"`);
    - `"dr_grpo"`: `sum_i sum_t l / (rows * max_new_tokens)` (a constant
      per row count, Dr. GRPO).

    Example:

    >>> per_token = tf.constant([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> weights = tf.constant([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    >>> [round(float(aggregate_token_loss(per_token, weights, t, 2.0, 4.0, 3)), 4)
    ...  for t in ("sequence_sum", "grpo", "dapo", "dr_grpo")]
    [5.0, 3.0, 2.5, 1.6667]
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}.")
    per_sequence = tf.reduce_sum(per_token * weights, axis=1)
    if loss_type == "grpo":
        per_sequence = per_sequence / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
    denominator = {
        "sequence_sum": rows,
        "grpo": rows,
        "dapo": tokens,
        "dr_grpo": rows * float(max_new_tokens),
    }[loss_type]
    return tf.reduce_sum(per_sequence) / tf.maximum(tf.cast(denominator, per_sequence.dtype), 1.0)


def kl_estimate(logp, ref_logp, estimator="k3"):
    """Per-token KL(pi || pi_ref) estimate from the sampled tokens' log-probs."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}.")
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    return tf.exp(-log_ratio) - 1.0 + log_ratio


def token_entropy(logits):
    """Entropy of softmax(logits) over the last axis, in nats."""
    logp = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_sum(tf.exp(logp) * logp, axis=-1)


def adaptive_kl_coefficient(coefficient, observed_kl, target_kl, horizon_fraction=0.1):
    """Proportional controller of Ziegler et al. (2019) for the KL coefficient.

    `beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * horizon_fraction)`.
    """
    error = tf.clip_by_value(observed_kl / target_kl - 1.0, -0.2, 0.2)
    return coefficient * (1.0 + error * horizon_fraction)
