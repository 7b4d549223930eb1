"""Advantages, KL estimators and entropy for policy-gradient training.

Pure functions on tensors, so each is tested against hand-computed values.

- `rloo_advantages`: REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et
  al. 2024): each of the K samples of a prompt is baselined by the mean
  reward of the other K - 1.
- `self_critical_advantages`: the reward of the greedy decode of the same
  prompt is the baseline (Rennie et al. 2017, SCST).
- `kl_estimate`: per-token estimators of KL(pi || pi_ref) from samples of pi
  (Schulman 2020, "Approximating KL divergence"): k1 = log pi - log pi_ref
  (unbiased, can be negative), k3 = r - 1 - log r with r = pi_ref / pi
  (unbiased, always >= 0, lower variance).
"""

import tensorflow as tf

BASELINES = ("rloo", "self_critical", "moving_average", "none")
KL_ESTIMATORS = ("k1", "k3")


def group_rewards(rewards, num_samples):
    """Reshapes `[B * K]` rewards (prompt-major) to `[B, K]`."""
    return tf.reshape(rewards, [-1, num_samples])


def rloo_advantages(rewards, num_samples):
    """`r_i - mean_{j != i} r_j` within each group of `num_samples`; `[B * K]`.

    Example:

    >>> # Two prompts, K = 3 samples each (prompt-major).
    >>> rloo_advantages(tf.constant([1.0, 0.0, 0.5, 2.0, 2.0, 2.0]), 3).numpy().tolist()
    [0.75, -0.75, 0.0, 0.0, 0.0, 0.0]
    """
    if num_samples < 2:
        raise ValueError(f"The rloo baseline needs num_samples >= 2; got {num_samples}.")
    grouped = group_rewards(rewards, num_samples)
    others = (tf.reduce_sum(grouped, axis=1, keepdims=True) - grouped) / (num_samples - 1)
    return tf.reshape(grouped - others, [-1])


def self_critical_advantages(rewards, greedy_rewards, num_samples):
    """`r_i - r_greedy` of the sample's own prompt; `[B * K]`."""
    baseline = tf.repeat(greedy_rewards, num_samples, axis=0)
    return rewards - baseline


def zero_variance_fraction(rewards, num_samples):
    """Fraction of prompts whose K rewards are all equal (no learning signal)."""
    grouped = group_rewards(rewards, num_samples)
    spread = tf.reduce_max(grouped, axis=1) - tf.reduce_min(grouped, axis=1)
    return tf.reduce_mean(tf.cast(spread <= 1e-12, tf.float32))


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
