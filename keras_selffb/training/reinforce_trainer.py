"""`ReinforceTrainer`: policy-gradient self-feedback as a Keras `train_step`.

The article's section 3.1/4.1 made to learn. Per batch of packed
(prompt, reference) rows:

1. sample K candidates per prompt with a keras-hub sampler (no gradient);
   with `include_greedy=True` the K-th candidate is the greedy decode;
2. score them with the reward (any `keras_selffb.rewards.Reward`);
3. subtract a baseline (RLOO, the group mean, self-critical, moving
   average or none),
   optionally scale by the reward std (`scale_rewards`) or whiten;
4. re-score the candidates with one teacher-forced pass (same temperature
   and the same forbidden ids as the sampler) for log-probabilities with
   gradients, and minimise (default options)

       L = gamma * [ -mean_i(A_i * sum_t log pi(a_t|s_t))
                     + beta * mean_i(sum_t KL_t) - c_H * mean_t H_t ]
           + (1 - gamma) * L_mle(references)

The GRPO-family options change step 4: `loss_type` picks how token terms
are normalised (`aggregate_token_loss`), `mask_truncated_completions` and
`filter_zero_std_groups` leave rows out, and `num_iterations > 1` makes
one step do that many optimizer updates on the same rollouts with PPO's
clipped ratio (`clipped_surrogate`) in place of `log pi`.

All means are over the GLOBAL batch (counts all-reduced across replicas), so
one step on N replicas equals one step on one device.
"""

import numbers

import keras
import tensorflow as tf

from keras_selffb.generator import unpack_generator
from keras_selffb.models.generation import (
    generate_ids,
    get_sampler,
    sample_candidates,
    special_token_bias,
)
from keras_selffb.models.policy_network import frozen_copy
from keras_selffb.text.tokenizer import EOS_ID, PAD_ID
from keras_selffb.training.baselines import (
    BASELINES,
    KL_ESTIMATORS,
    LOSS_TYPES,
    REWARD_SCALINGS,
    STD_EPSILON,
    adaptive_kl_coefficient,
    aggregate_token_loss,
    clipped_surrogate,
    group_mean_advantages,
    group_std,
    kl_estimate,
    rloo_advantages,
    self_critical_advantages,
    token_entropy,
    zero_spread_groups,
    zero_variance_fraction,
)
from keras_selffb.training.losses import global_sum, response_token_nll, split_packed
from keras_selffb.training.trackers import MinMaxTracker, RatioTracker, StdTracker, step_logs


class ReinforceTrainer(keras.Model):
    """Trains a `PolicyNetwork` on its own samples scored by a reward.

    Args:
        policy: a `PolicyNetwork` or `CausalLMPolicy`, or a
            `ResponseGenerator` (which brings its policy and both lengths:
            `ReinforceTrainer(generator, reward)`).
        reward: a `keras_selffb.rewards.Reward`. One whose `per_token` is
            true (`RolloutReward`) gives every token its own value: each
            token is weighed by its value minus the baseline at its
            position (baselines `"rloo"`, `"group_mean"` or `"none"`,
            unscaled, no `include_greedy`).
        prompt_length: int. Prompt columns `P` of each packed row.
        max_new_tokens: int. Longest candidate, EOS included.
        num_samples: int. Candidates per prompt `K`. Defaults to `4`.
        sampler: str, dict or keras-hub sampler for the candidates. Defaults
            to `"random"` (plain sampling: REINFORCE needs on-policy samples).
        temperature: float. Sampling temperature, also used when scoring.
            Defaults to `1.0`.
        baseline: str. `"rloo"` (the mean of the prompt's other K - 1
            rewards), `"group_mean"` (the mean of all K, GRPO's and TRL's),
            `"self_critical"`, `"moving_average"` or `"none"`. Defaults to
            `"rloo"`.
        whiten: bool. Normalise advantages to zero mean, unit std over the
            global batch. Defaults to `False`.
        baseline_decay: float. Decay of the moving-average baseline.
            Defaults to `0.9`.
        kl_coef: float. Initial KL penalty coefficient beta. Defaults to `0.0`.
        kl_estimator: str. `"k1"` or `"k3"`. Defaults to `"k3"`.
        target_kl: float or None. If set, beta adapts toward this KL per
            sequence (Ziegler et al. 2019). Defaults to `None` (fixed beta).
        reference_policy: a frozen `PolicyNetwork` for the KL term. Defaults
            to a copy of `policy` taken at construction when `kl_coef > 0`.
        gamma: float. Weight of the RL loss; `1 - gamma` weighs MLE on the
            references (Paulus et al. 2017). Defaults to `1.0`.
        entropy_coef: float. Entropy bonus weight. Defaults to `0.0`.
        include_greedy: bool. Make the last of the K candidates of every
            prompt its greedy decode instead of a sample. The greedy reply
            then takes part in the baseline and gets an advantage of its own:
            it is pushed down when the samples beat it and up when it beats
            them, which trains the reply that greedy decoding (`generate`,
            the evaluation, the SavedModel) returns. The gradient is no
            longer an unbiased policy-gradient estimate (the greedy row is
            not a sample). Needs `num_samples >= 2` and not the
            `"self_critical"` baseline (whose greedy row would always get
            advantage 0). Defaults to `False`; see docs/reinforce.md for
            what it changed on the embedded corpus.
        num_iterations: int. Optimizer updates per sampled batch (GRPO's
            mu, TRL's `num_iterations`). Above 1 the policy term becomes
            PPO's clipped objective `min(r_t A, clip(r_t, 1 - epsilon,
            1 + epsilon_high) A)` with `r_t` the ratio to the policy that
            sampled. Defaults to `1` (plain REINFORCE, no ratio).
        epsilon: float. Lower clip range of the ratio. Defaults to `0.2`.
        epsilon_high: float or None. Upper clip range (DAPO's clip-higher).
            Defaults to `None`: `epsilon`.
        loss_type: str. How token terms are normalised:
            `"sequence_sum"` (sum over a sequence, mean over sequences),
            `"grpo"` (mean over a sequence's tokens, then over sequences),
            `"dapo"` (mean over all tokens of the global batch) or
            `"dr_grpo"` (sum / (sequences * max_new_tokens)). Defaults to
            `"sequence_sum"`.
        scale_rewards: str. Divide advantages by the reward std (Bessel-
            corrected) + 1e-4: `"group"` (of the prompt's K rewards),
            `"batch"` (of the global batch) or `"none"`. Defaults to
            `"none"`.
        mask_truncated_completions: bool. Leave candidates without an EOS
            out of the RL loss and its normalisation. Defaults to `False`.
        filter_zero_std_groups: bool. Leave prompts whose K rewards are all
            equal out of the RL loss and its normalisation (DAPO's dynamic
            sampling filter, without the re-sampling). Defaults to `False`.
        jit_compile_sampling: bool. Compile the sampling of the candidates
            (the decoding loop, which is most of an RL step) with XLA, also
            when the rest of the step is not (Keras leaves XLA off on CPU).
            On CPU it made a tiny GPT-2's sampling 2.5x faster and the LSTM's
            about as fast (docs/benchmarks.md). The draws are as random and as
            reproducible for a seed, but XLA's random numbers are not the
            graph's: the same seed samples other candidates than with
            `False`. Only for policies whose generation XLA can compile (the
            LSTM and keras-hub `CausalLM`s can). Defaults to `False`.
        seed: int or None. Seeds the sampler. Defaults to `None`.

    Example:

    >>> import numpy as np
    >>> from keras_selffb.models import PolicyNetwork
    >>> from keras_selffb.rewards.base import Reward
    >>> class Short(Reward):
    ...     def call(self, prompts, candidates, references):
    ...         return -tf.reduce_sum(tf.cast(candidates > 0, "float32"), axis=1)
    >>> trainer = ReinforceTrainer(PolicyNetwork(8, 4, 4), Short(), prompt_length=3,
    ...                            max_new_tokens=4, num_samples=2, num_iterations=2,
    ...                            loss_type="dapo", scale_rewards="group", seed=0)
    >>> trainer.compile(optimizer="sgd")
    >>> logs = trainer.fit(np.array([[1, 5, 4, 6, 2, 0, 0]]), epochs=1, verbose=0).history
    >>> sorted(k for k in logs if k.startswith(("completion", "clip", "trunc")))
    ['clip_ratio', 'completion_length_max', 'completion_length_mean',
     'completion_length_min', 'truncated_ratio']
    """

    def __init__(
        self,
        policy,
        reward,
        prompt_length=None,
        max_new_tokens=None,
        num_samples=4,
        sampler="random",
        temperature=1.0,
        baseline="rloo",
        whiten=False,
        baseline_decay=0.9,
        kl_coef=0.0,
        kl_estimator="k3",
        target_kl=None,
        reference_policy=None,
        gamma=1.0,
        entropy_coef=0.0,
        include_greedy=False,
        num_iterations=1,
        epsilon=0.2,
        epsilon_high=None,
        loss_type="sequence_sum",
        scale_rewards="none",
        mask_truncated_completions=False,
        filter_zero_std_groups=False,
        jit_compile_sampling=False,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        policy, prompt_length, max_new_tokens = unpack_generator(
            policy, prompt_length, max_new_tokens, owner="ReinforceTrainer"
        )
        if baseline not in BASELINES:
            raise ValueError(f"Unknown baseline {baseline!r}; choose one of {BASELINES}.")
        if kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"Unknown KL estimator {kl_estimator!r}; choose one of {KL_ESTIMATORS}.")
        if num_samples < 1 or (baseline in ("rloo", "group_mean") and num_samples < 2):
            raise ValueError(
                f"num_samples={num_samples}: need >= 1, and >= 2 for the {baseline} baseline."
            )
        if include_greedy and (num_samples < 2 or baseline == "self_critical"):
            raise ValueError(
                f"include_greedy=True needs num_samples >= 2 (a sample besides the greedy decode; "
                f"got {num_samples}) and a baseline other than 'self_critical' (against which the "
                f"greedy row's advantage is always 0; got {baseline!r})."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}.")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1]; got {gamma}.")
        if kl_coef < 0 or entropy_coef < 0:
            raise ValueError("kl_coef and entropy_coef must be >= 0.")
        if target_kl is not None and target_kl <= 0:
            raise ValueError(f"target_kl must be > 0; got {target_kl}.")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}.")
        check_grpo_options(num_iterations, epsilon, epsilon_high, loss_type, scale_rewards,
                           whiten, filter_zero_std_groups, num_samples)
        self.per_token = bool(getattr(reward, "per_token", False))
        if self.per_token:
            check_per_token_options(baseline, scale_rewards, whiten, include_greedy)
        self.policy = policy
        self.reward = reward
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.num_samples = num_samples
        self.temperature = float(temperature)
        self.baseline = baseline
        self.whiten = whiten
        self.baseline_decay = baseline_decay
        self.kl_estimator = kl_estimator
        self.target_kl = target_kl
        self.gamma = gamma
        self.entropy_coef = entropy_coef
        self.include_greedy = bool(include_greedy)
        self.num_iterations = int(num_iterations)
        self.epsilon = float(epsilon)
        self.epsilon_high = float(epsilon if epsilon_high is None else epsilon_high)
        self.loss_type = loss_type
        self.scale_rewards = scale_rewards
        self.mask_truncated_completions = bool(mask_truncated_completions)
        self.filter_zero_std_groups = bool(filter_zero_std_groups)
        if not isinstance(jit_compile_sampling, bool):
            raise ValueError(f"jit_compile_sampling must be True or False; got {jit_compile_sampling!r}.")
        self.jit_compile_sampling = jit_compile_sampling
        self._compiled_sample = tf.function(self._sample, jit_compile=True) if jit_compile_sampling else None
        sampler_kwargs = {"temperature": self.temperature}
        if seed is not None:
            sampler_kwargs["seed"] = seed
        self.sampler = get_sampler(sampler, **sampler_kwargs)
        self.greedy_sampler = get_sampler("greedy")
        use_kl = kl_coef > 0 or target_kl is not None
        if use_kl and reference_policy is None:
            reference_policy = frozen_copy(policy)
        self.reference_policy = reference_policy
        if reference_policy is not None:
            reference_policy.trainable = False
        # Same value on every replica: keep the first replica's update.
        self.kl_coef = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(kl_coef), trainable=False,
            name="kl_coef", aggregation="only_first_replica",
        )
        self.moving_baseline = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="moving_baseline",
            aggregation="only_first_replica",
        )
        self.baseline_steps = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="baseline_steps",
            aggregation="only_first_replica",
        )
        # The last training batch's rewards and advantages [B * K] (prompt-
        # major), read by `keras_selffb.callbacks.RewardHistograms`. Plain
        # tf.Variables of unknown shape follow a varying batch size (Keras
        # variables have a fixed shape); under a distribution strategy they
        # hold the FIRST replica's rows.
        self.last_rewards, self.last_advantages = (
            tf.Variable(tf.zeros([0]), shape=tf.TensorShape(None), trainable=False, name=name,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            for name in ("last_rewards", "last_advantages")
        )
        self._bias = special_token_bias(policy.vocab_size)
        # Every logged value is a metric whose state is sums, so Keras reads
        # the exact global value at epoch end under a distribution strategy.
        # `zero_variance_groups` is TRL's `frac_reward_zero_std`,
        # `completion_length_*` its `completions/{mean,min,max}_length`,
        # `truncated_ratio` its `completions/clipped_ratio` and `clip_ratio`
        # its `clip_ratio/region_mean`.
        names = ["loss", "reward", "kl", "kl_coef", "entropy", "candidate_length",
                 "zero_variance_groups", "clip_ratio", "completion_length_mean",
                 "truncated_ratio"] + (["mle_loss"] if gamma < 1.0 else [])
        self._trackers = {name: RatioTracker(name=name) for name in names}
        self._trackers["reward_std"] = StdTracker(name="reward_std")
        self._trackers["advantage_std"] = StdTracker(name="advantage_std")
        for extreme in ("min", "max"):
            name = f"completion_length_{extreme}"
            self._trackers[name] = MinMaxTracker(max_new_tokens, extreme=extreme, name=name)
        self._component_trackers = {
            name: RatioTracker(name=f"reward/{name}") for name in reward.component_names()
        }

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._component_trackers.values())

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=None):
        return self.policy(inputs, training=training)

    # -- pieces of the step -------------------------------------------------

    def sample(self, prompt_ids):
        """K candidates per prompt, prompt-major: `[B * K, N]` (no gradient).

        With `include_greedy`, rows `b * K` to `b * K + K - 2` are samples
        and row `b * K + K - 1` is prompt `b`'s greedy decode. With
        `jit_compile_sampling`, all of it runs as one XLA computation.
        """
        if self._compiled_sample is not None:
            return self._compiled_sample(prompt_ids)
        return self._sample(prompt_ids)

    def _sample(self, prompt_ids):
        if not self.include_greedy:
            return sample_candidates(
                self.policy, prompt_ids, self.num_samples, self.max_new_tokens, self.sampler
            )
        k, n = self.num_samples, self.max_new_tokens
        _, sampled = sample_candidates(self.policy, prompt_ids, k - 1, n, self.sampler)
        greedy = generate_ids(self.policy, prompt_ids, n, self.greedy_sampler)
        batch = tf.shape(prompt_ids)[0]
        groups = tf.concat([tf.reshape(sampled, [batch, k - 1, n]), greedy[:, None, :]], axis=1)
        candidates = tf.reshape(groups, [batch * k, n])
        return tf.repeat(prompt_ids, k, axis=0), tf.stop_gradient(candidates)

    def score(self, prompts, candidates, references):
        """Reward components (each checked finite) and their total `[B * K]`."""
        components = self.reward.components(prompts, candidates, references)
        checked = {
            name: tf.debugging.check_numerics(
                value, f"Reward component '{name}' returned NaN or inf"
            )
            for name, value in components.items()
        }
        return checked, self.reward.total(checked)

    def advantages(self, prompt_ids, references, rewards):
        """Baselined (and optionally whitened) advantages `[B * K]`."""
        if self.baseline == "rloo":
            advantages = rloo_advantages(rewards, self.num_samples)
        elif self.baseline == "group_mean":
            advantages = group_mean_advantages(rewards, self.num_samples)
        elif self.baseline == "self_critical":
            greedy = generate_ids(self.policy, prompt_ids, self.max_new_tokens, self.greedy_sampler)
            _, greedy_rewards = self.score(prompt_ids, tf.stop_gradient(greedy), references)
            advantages = self_critical_advantages(rewards, greedy_rewards, self.num_samples)
        elif self.baseline == "moving_average":
            count = global_sum(tf.cast(tf.size(rewards), tf.float32))
            batch_mean = global_sum(tf.reduce_sum(rewards)) / count
            # The first step has no history: its own mean is the baseline.
            baseline = tf.where(self.baseline_steps > 0, self.moving_baseline, batch_mean)
            advantages = rewards - baseline
            decay = self.baseline_decay
            self.moving_baseline.assign(decay * baseline + (1.0 - decay) * batch_mean)
            self.baseline_steps.assign_add(1.0)
        else:
            advantages = rewards
        if self.scale_rewards == "group":
            advantages = advantages / (group_std(rewards, self.num_samples) + STD_EPSILON)
        elif self.scale_rewards == "batch":
            count = global_sum(tf.cast(tf.size(rewards), tf.float32))
            mean = global_sum(tf.reduce_sum(rewards)) / count
            variance = global_sum(tf.reduce_sum(tf.square(rewards - mean))) / tf.maximum(count - 1.0, 1.0)
            advantages = advantages / (tf.sqrt(variance) + STD_EPSILON)
        if self.whiten:
            count = global_sum(tf.cast(tf.size(advantages), tf.float32))
            mean = global_sum(tf.reduce_sum(advantages)) / count
            var = global_sum(tf.reduce_sum(tf.square(advantages - mean))) / count
            advantages = (advantages - mean) * tf.math.rsqrt(var + 1e-8)
        return tf.stop_gradient(advantages)

    def _log_probs(self, policy, prompts, candidates, training):
        """Per-token log pi_T(a_t) (B, N), mask, tempered logits."""
        nll, mask, logits = response_token_nll(
            policy, prompts, candidates, training=training, logit_bias=self._bias
        )
        if self.temperature != 1.0:
            logits = logits / self.temperature
            nll = keras.losses.sparse_categorical_crossentropy(candidates, logits, from_logits=True) * mask
        return -nll, mask, logits

    def rollout(self, batch, candidates=None):
        """Samples, scores and fixes everything the updates of one step share.

        No gradient flows through any of it. `candidates` `[B * K, N]`
        (prompt-major) skips sampling: for precomputed candidates and for
        exact tests. Returns a dict of tensors read by `policy_loss`.
        """
        prompt_ids, references = split_packed(batch, self.prompt_length)
        if candidates is None:
            prompts, candidates = self.sample(prompt_ids)
        else:
            prompts = tf.repeat(prompt_ids, self.num_samples, axis=0)
            candidates = tf.cast(candidates, tf.int32)
        repeated_refs = tf.repeat(references, self.num_samples, axis=0)
        components, rewards = self.score(prompts, candidates, repeated_refs)
        if self.per_token:
            # One value per token (`RolloutReward`): each token is weighed by
            # its own value, baselined per position across the K samples.
            token_rewards = tf.debugging.check_numerics(
                tf.cast(self.reward.token_values(prompts, candidates, repeated_refs), tf.float32),
                "Per-token reward returned NaN or inf")
            advantages = self.advantages(prompt_ids, references, token_rewards)
        else:
            advantages = self.advantages(prompt_ids, references, rewards)

        mask = tf.cast(tf.not_equal(candidates, PAD_ID), tf.float32)
        truncated = 1.0 - tf.reduce_max(tf.cast(tf.equal(candidates, EOS_ID), tf.float32), axis=1)
        # Rows left out of the RL loss and of every count that normalises it.
        keep = tf.ones_like(rewards)
        if self.mask_truncated_completions:
            keep *= 1.0 - truncated
        if self.filter_zero_std_groups:
            keep *= tf.repeat(1.0 - zero_spread_groups(rewards, self.num_samples), self.num_samples)
        weights = mask * keep[:, None]
        rows = tf.cast(tf.shape(candidates)[0], tf.float32)
        if self.per_token:
            # Logged and kept per row: the mean advantage of its tokens.
            row_advantages = tf.reduce_sum(advantages * mask, axis=1) / tf.maximum(
                tf.reduce_sum(mask, axis=1), 1.0)
        else:
            row_advantages = advantages
        out = {
            "prompt_ids": prompt_ids,
            "references": references,
            "prompts": prompts,
            "candidates": candidates,
            "components": components,
            "rewards": rewards,
            "advantages": advantages,
            "row_advantages": row_advantages,
            "truncated": truncated,
            "weights": weights,
            "rows": rows,
            "global_rows": global_sum(rows),
            "kept_rows": global_sum(tf.reduce_sum(keep)),
            "kept_tokens": global_sum(tf.reduce_sum(weights)),
        }
        if self.reference_policy is not None:
            ref_logp, _, _ = self._log_probs(self.reference_policy, prompts, candidates, training=False)
            out["ref_logp"] = tf.stop_gradient(ref_logp)
        return out

    def policy_loss(self, rollout, old_logp=None):
        """The loss of one update on `rollout` and the values logged with it.

        `old_logp` `(B * K, N)`: the sampled tokens' log-probabilities under
        the policy that sampled them, for the clipped ratio of the updates
        after the first (`num_iterations > 1`); `None` means the current
        policy (ratio 1 in value, the policy gradient in gradient).
        """
        r = rollout
        global_rows = r["global_rows"]
        weights = r["weights"]
        # Dropout off when re-scoring: the gradient is for the policy that sampled.
        logp, mask, logits = self._log_probs(self.policy, r["prompts"], r["candidates"], training=False)

        def aggregate(per_token):
            return aggregate_token_loss(per_token, weights, self.loss_type, r["kept_rows"],
                                        r["kept_tokens"], self.max_new_tokens)

        advantages = r["advantages"]
        clipped_tokens = tf.constant(0.0)
        if self.num_iterations > 1:
            reference = tf.stop_gradient(logp) if old_logp is None else old_logp
            objective, clipped = clipped_surrogate(
                logp, reference, advantages, self.epsilon, self.epsilon_high
            )
            clipped_tokens = tf.reduce_sum(clipped * weights)
        else:
            # REINFORCE: A * log pi, whose gradient is that of the ratio at 1.
            objective = (advantages if self.per_token else advantages[:, None]) * logp
        rl_loss = -aggregate(objective)

        kl_sum = tf.constant(0.0)
        if self.reference_policy is not None:
            per_token = kl_estimate(logp, r["ref_logp"], self.kl_estimator) * mask
            kl_sum = tf.reduce_sum(per_token)
            rl_loss += self.kl_coef * aggregate(per_token)
        entropy = token_entropy(logits) * mask
        entropy_sum = tf.reduce_sum(entropy)
        if self.entropy_coef > 0:
            kept_entropy = tf.reduce_sum(entropy * weights)
            rl_loss -= self.entropy_coef * kept_entropy / tf.maximum(r["kept_tokens"], 1.0)

        mle_sum, mle_tokens = tf.constant(0.0), tf.constant(0.0)
        loss = rl_loss
        if self.gamma < 1.0:
            nll, mle_mask, _ = response_token_nll(
                self.policy, r["prompt_ids"], r["references"], training=True
            )
            mle_sum, mle_tokens = tf.reduce_sum(nll), tf.reduce_sum(mle_mask)
            mle_loss = mle_sum / tf.maximum(global_sum(mle_tokens), 1.0)
            loss = self.gamma * rl_loss + (1.0 - self.gamma) * mle_loss
        logs = {
            "loss_local": loss * global_rows,
            "logp": tf.stop_gradient(logp),
            "kl_sum": kl_sum,
            "entropy_sum": entropy_sum,
            "tokens": tf.reduce_sum(mask),
            "clipped_tokens": clipped_tokens,
            "kept_tokens_local": tf.reduce_sum(weights),
            "mle": (mle_sum, mle_tokens),
        }
        if self.target_kl is not None:
            logs["global_kl"] = global_sum(tf.stop_gradient(kl_sum)) / global_rows
        return loss, logs

    def compute_losses(self, batch, candidates=None, old_logp=None):
        """The loss of the first update for one packed batch, and its logs.

        `rollout` then `policy_loss`; the logs hold both's values.
        `candidates` `[B * K, N]` (prompt-major) skips sampling: for
        precomputed candidates and for exact tests; `old_logp` as in
        `policy_loss`.
        """
        rollout = self.rollout(batch, candidates)
        loss, logs = self.policy_loss(rollout, old_logp)
        return loss, {**rollout, **logs}

    # -- Keras hooks ----------------------------------------------------------

    def train_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        rollout = self.rollout(batch)
        variables = self.policy.trainable_variables
        old_logp, first_logs = None, None
        # A Python loop: `num_iterations` is small and fixed, so the traced
        # step holds that many updates in order (each reads the weights the
        # previous one wrote).
        for _ in range(self.num_iterations):
            with tf.GradientTape() as tape:
                loss, logs = self.policy_loss(rollout, old_logp)
            # Every replica must issue its all-reduces in the same order: the
            # KL all-reduce goes before the gradients' one, not racing it.
            with tf.control_dependencies([logs.get("global_kl", loss)]):
                gradients = tape.gradient(loss, variables)
            self.optimizer.apply(gradients, variables)
            if first_logs is None:
                # The ratio's denominator stays the sampling policy's.
                old_logp, first_logs = logs["logp"], logs
            self._update_loss_trackers(rollout, logs)
        self.last_rewards.assign(rollout["rewards"])
        self.last_advantages.assign(rollout["row_advantages"])
        if self.target_kl is not None:
            # The controller reads the KL of the policy that sampled.
            self.kl_coef.assign(
                adaptive_kl_coefficient(self.kl_coef, first_logs["global_kl"], self.target_kl)
            )
        return self._update_rollout_trackers(rollout, first_logs)

    def test_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        rollout = self.rollout(batch)
        _, logs = self.policy_loss(rollout)
        self._update_loss_trackers(rollout, logs)
        return self._update_rollout_trackers(rollout, logs)

    def _update_loss_trackers(self, rollout, logs):
        """Values of one update (averaged over the step's `num_iterations`)."""
        t, rows = self._trackers, rollout["rows"]
        t["loss"].update_state(logs["loss_local"], rows)
        t["kl"].update_state(logs["kl_sum"], rows)
        t["entropy"].update_state(logs["entropy_sum"], logs["tokens"])
        t["clip_ratio"].update_state(logs["clipped_tokens"], logs["kept_tokens_local"])
        if "mle_loss" in t:
            t["mle_loss"].update_state(*logs["mle"])

    def _update_rollout_trackers(self, rollout, logs):
        """Values of the sampled batch (once a step), then the step's logs."""
        t, rows = self._trackers, rollout["rows"]
        rewards = rollout["rewards"]
        t["reward"].update_state(tf.reduce_sum(rewards), rows)
        t["reward_std"].update_state(rewards)
        t["advantage_std"].update_state(rollout["row_advantages"])
        t["kl_coef"].update_state(self.kl_coef * rows, rows)
        t["candidate_length"].update_state(logs["tokens"], rows)
        t["completion_length_mean"].update_state(logs["tokens"], rows)
        lengths = tf.reduce_sum(tf.cast(tf.not_equal(rollout["candidates"], PAD_ID), tf.int32), axis=1)
        t["completion_length_min"].update_state(lengths)
        t["completion_length_max"].update_state(lengths)
        t["truncated_ratio"].update_state(tf.reduce_sum(rollout["truncated"]), rows)
        groups = rows / self.num_samples
        t["zero_variance_groups"].update_state(
            tf.math.multiply_no_nan(zero_variance_fraction(rewards, self.num_samples), groups), groups
        )
        for name, value in rollout["components"].items():
            self._component_trackers[name].update_state(tf.reduce_sum(value), rows)
        return step_logs(self.metrics, self.distribute_strategy)


PER_TOKEN_BASELINES = ("rloo", "group_mean", "none")


def check_per_token_options(baseline, scale_rewards, whiten, include_greedy):
    """Raises a one-line ValueError for options a per-token reward does not support."""
    if baseline not in PER_TOKEN_BASELINES:
        raise ValueError(
            f"A per-token reward (RolloutReward) takes the baselines {PER_TOKEN_BASELINES}, "
            f"computed per position across the K samples; got {baseline!r}."
        )
    if scale_rewards != "none" or whiten:
        raise ValueError(
            "A per-token reward (RolloutReward) is used unscaled: set scale_rewards='none' and whiten=False."
        )
    if include_greedy:
        raise ValueError("A per-token reward (RolloutReward) needs sampled candidates: set include_greedy=False.")


def check_grpo_options(num_iterations, epsilon, epsilon_high, loss_type, scale_rewards,
                       whiten, filter_zero_std_groups, num_samples):
    """Raises a one-line ValueError naming the first bad GRPO-family option."""
    integral = isinstance(num_iterations, numbers.Integral) and not isinstance(num_iterations, bool)
    if not integral or num_iterations < 1:
        raise ValueError(f"num_iterations must be an int >= 1; got {num_iterations!r}.")
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1); got {epsilon}.")
    if epsilon_high is not None and epsilon_high <= 0.0:
        raise ValueError(f"epsilon_high must be > 0 (or None for epsilon); got {epsilon_high}.")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}.")
    if scale_rewards not in REWARD_SCALINGS:
        raise ValueError(f"Unknown scale_rewards {scale_rewards!r}; choose one of {REWARD_SCALINGS}.")
    if scale_rewards != "none" and whiten:
        raise ValueError(
            f"scale_rewards={scale_rewards!r} and whiten=True both rescale the advantages; use one."
        )
    if (scale_rewards == "group" or filter_zero_std_groups) and num_samples < 2:
        raise ValueError(
            f"scale_rewards='group' and filter_zero_std_groups need num_samples >= 2; got {num_samples}."
        )
