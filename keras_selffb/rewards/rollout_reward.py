"""`RolloutReward`: per-token rewards by Monte-Carlo roll-outs of a sequence reward.

A sequence-level reward (a discriminator's P(real), BLEU, ...) says how
good a whole reply is, not which of its tokens made it so. SeqGAN (Yu et
al. 2017, eq. 4) turns it into a value for every prefix: the reward of the
reply's first `t` tokens is the mean reward of `R` completions of that
prefix, sampled from a roll-out policy,

    Q(y_1..t) = 1/R sum_r reward(y_1..t + rollout_r)   for t < N,
    Q(y_1..N) = reward(y)                               (the reply itself).

`ReinforceTrainer` sees `per_token = True` and weighs each token's
log-probability by its own `Q` (minus a per-position baseline) instead of
one reward for the whole reply.

Positions at and after the reply's EOS carry the reply's own reward (the
prefix is already complete); the trainer masks the PAD positions. A call
samples `(N - 1) * R` completions per candidate, of lengths `N - 1` down to
1: the cost of per-token credit.
"""

import tensorflow as tf

from keras_selffb.models.generation import generate_ids, get_sampler
from keras_selffb.rewards.base import Reward
from keras_selffb.text.tokenizer import EOS_ID


class RolloutReward(Reward):
    """Per-token values of `reward` by `num_rollouts` completions of every prefix.

    As a plain `Reward` (`reward(prompts, candidates, references)`) it is
    the wrapped reward of each whole candidate, `[B]`, so logging, ranking
    and evaluation see the usual sequence reward. `token_values(...)`
    returns the per-token values `[B, N]` that `ReinforceTrainer` trains on.

    Args:
        reward: a `Reward` scoring whole candidates `[B, N]`.
        policy: the roll-out policy (a `PolicyNetwork` or `CausalLMPolicy`),
            usually the policy being trained (SeqGAN rolled out with a
            slowly updated copy of it). Its prompt is the candidate's prompt
            followed by the prefix, so it must accept prompts that end in
            reply tokens (the LSTM `PolicyNetwork` does).
        num_rollouts: int >= 1. Completions per prefix `R`. Defaults to
            `16` (SeqGAN's).
        temperature: float > 0. Sampling temperature of the completions.
            Defaults to `1.0`.
        seed: int or None. Seeds the completions' sampler. Defaults to `None`.
        name: str. The logged name. Defaults to the wrapped reward's.

    Example:

    >>> import numpy as np
    >>> from keras_selffb.models import PolicyNetwork
    >>> class CountSeven(Reward):  # how many 7s a candidate holds
    ...     def call(self, prompts, candidates, references):
    ...         return tf.reduce_sum(tf.cast(candidates == 7, "float32"), axis=1)
    >>> rollout = RolloutReward(CountSeven(), PolicyNetwork(10, 4, 4), num_rollouts=8, seed=0)
    >>> candidates = tf.constant([[7, 7, 2, 0]])  # "7 7 EOS PAD"
    >>> values = rollout.token_values(tf.constant([[1, 5, 4]]), candidates, None).numpy()
    >>> values.shape  # one value per candidate token
    (1, 4)
    >>> values[0, 2:].tolist()  # prefixes holding the EOS: the candidate's own reward
    [2.0, 2.0]
    >>> bool(values[0, 0] >= 1.0 and values[0, 1] >= 2.0)  # "7" and "7 7", completed at random
    True
    """

    default_name = "rollout"
    per_token = True

    def __init__(self, reward, policy, num_rollouts=16, temperature=1.0, seed=None, name=None):
        if not isinstance(reward, Reward):
            raise TypeError(f"RolloutReward wraps a keras_selffb Reward; got {type(reward).__name__}.")
        if getattr(reward, "per_token", False):
            raise ValueError("RolloutReward needs a sequence-level reward; the one given is already per token.")
        if isinstance(num_rollouts, bool) or not isinstance(num_rollouts, int) or num_rollouts < 1:
            raise ValueError(f"num_rollouts must be an integer >= 1; got {num_rollouts!r}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}.")
        super().__init__(name=name or reward.name)
        self.reward = reward
        self.policy = policy
        self.num_rollouts = num_rollouts
        self.temperature = float(temperature)
        kwargs = {"temperature": self.temperature}
        if seed is not None:
            kwargs["seed"] = seed
        self.sampler = get_sampler("random", **kwargs)

    def call(self, prompts, candidates, references):
        return self.reward(prompts, candidates, references)

    def token_values(self, prompts, candidates, references):
        """`Q` of every prefix of every candidate, float32 `[B, N]`.

        Column `t` (0-based) is the mean wrapped reward of `num_rollouts`
        completions of the candidate's first `t + 1` tokens; the last column,
        and every column whose prefix holds the candidate's EOS, is the
        reward of the candidate itself.
        """
        candidates = tf.cast(tf.convert_to_tensor(candidates), tf.int32)
        if candidates.shape.rank != 2 or candidates.shape[1] is None:
            raise ValueError(
                f"RolloutReward needs candidates [B, N] with a known N; got shape {tuple(candidates.shape)}."
            )
        prompts = tf.cast(tf.convert_to_tensor(prompts), tf.int32)
        length = candidates.shape[1]
        batch = tf.shape(candidates)[0]
        r = self.num_rollouts
        own = self.reward(prompts, candidates, references)
        # Prefix t + 1 holds the EOS: the reply is finished, its reward is known.
        finished = tf.cumsum(tf.cast(tf.equal(candidates, EOS_ID), tf.int32), axis=1) > 0
        repeated_prompts = tf.repeat(prompts, r, axis=0)
        repeated_refs = None if references is None else tf.repeat(references, r, axis=0)
        repeated_candidates = tf.repeat(candidates, r, axis=0)
        columns = []
        for t in range(1, length):
            prefix = repeated_candidates[:, :t]
            completions = generate_ids(self.policy, tf.concat([repeated_prompts, prefix], axis=1),
                                       length - t, self.sampler)
            rolled = tf.stop_gradient(tf.concat([prefix, completions], axis=1))
            scores = tf.reshape(self.reward(repeated_prompts, rolled, repeated_refs), [batch, r])
            columns.append(tf.where(finished[:, t - 1], own, tf.reduce_mean(scores, axis=1)))
        columns.append(own)
        return tf.stop_gradient(tf.stack(columns, axis=1))

    def __repr__(self):
        return f"{type(self).__name__}({self.reward!r}, num_rollouts={self.num_rollouts}, name={self.name!r})"
