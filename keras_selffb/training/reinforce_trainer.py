"""`ReinforceTrainer`: policy-gradient self-feedback as a Keras `train_step`.

The article's section 3.1/4.1 made to learn. Per batch of packed
(prompt, reference) rows:

1. sample K candidates per prompt with a keras-hub sampler (no gradient);
   with `include_greedy=True` the K-th candidate is the greedy decode;
2. score them with the reward (any `keras_selffb.rewards.Reward`);
3. subtract a baseline (RLOO, self-critical, moving average or none),
   optionally whiten;
4. re-score the candidates with one teacher-forced pass (same temperature
   and the same forbidden ids as the sampler) for log-probabilities with
   gradients, and minimise

       L = gamma * [ -mean_i(A_i * sum_t log pi(a_t|s_t))
                     + beta * mean_i(sum_t KL_t) - c_H * mean_t H_t ]
           + (1 - gamma) * L_mle(references)

All means are over the GLOBAL batch (counts all-reduced across replicas), so
one step on N replicas equals one step on one device.
"""

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
from keras_selffb.training.baselines import (
    BASELINES,
    KL_ESTIMATORS,
    adaptive_kl_coefficient,
    kl_estimate,
    rloo_advantages,
    self_critical_advantages,
    token_entropy,
    zero_variance_fraction,
)
from keras_selffb.training.losses import global_sum, response_token_nll, split_packed
from keras_selffb.training.trackers import RatioTracker, StdTracker, step_logs


class ReinforceTrainer(keras.Model):
    """Trains a `PolicyNetwork` on its own samples scored by a reward.

    Args:
        policy: a `PolicyNetwork` or `CausalLMPolicy`, or a
            `ResponseGenerator` (which brings its policy and both lengths:
            `ReinforceTrainer(generator, reward)`).
        reward: a `keras_selffb.rewards.Reward`.
        prompt_length: int. Prompt columns `P` of each packed row.
        max_new_tokens: int. Longest candidate, EOS included.
        num_samples: int. Candidates per prompt `K`. Defaults to `4`.
        sampler: str, dict or keras-hub sampler for the candidates. Defaults
            to `"random"` (plain sampling: REINFORCE needs on-policy samples).
        temperature: float. Sampling temperature, also used when scoring.
            Defaults to `1.0`.
        baseline: str. `"rloo"`, `"self_critical"`, `"moving_average"` or
            `"none"`. Defaults to `"rloo"`.
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
        seed: int or None. Seeds the sampler. Defaults to `None`.
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
        if num_samples < 1 or (baseline == "rloo" and num_samples < 2):
            raise ValueError(
                f"num_samples={num_samples}: need >= 1, and >= 2 for the rloo baseline."
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
        names = ["loss", "reward", "kl", "kl_coef", "entropy", "candidate_length",
                 "zero_variance_groups"] + (["mle_loss"] if gamma < 1.0 else [])
        self._trackers = {name: RatioTracker(name=name) for name in names}
        self._trackers["reward_std"] = StdTracker(name="reward_std")
        self._trackers["advantage_std"] = StdTracker(name="advantage_std")
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
        and row `b * K + K - 1` is prompt `b`'s greedy decode.
        """
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

    def compute_losses(self, batch, candidates=None):
        """The loss for one packed batch and the values logged with it.

        `candidates` `[B * K, N]` (prompt-major) skips sampling: for
        precomputed candidates and for exact tests.
        """
        prompt_ids, references = split_packed(batch, self.prompt_length)
        if candidates is None:
            prompts, candidates = self.sample(prompt_ids)
        else:
            prompts = tf.repeat(prompt_ids, self.num_samples, axis=0)
            candidates = tf.cast(candidates, tf.int32)
        repeated_refs = tf.repeat(references, self.num_samples, axis=0)
        components, rewards = self.score(prompts, candidates, repeated_refs)
        advantages = self.advantages(prompt_ids, references, rewards)

        rows = tf.cast(tf.shape(candidates)[0], tf.float32)
        global_rows = global_sum(rows)
        # Dropout off when re-scoring: the gradient is for the policy that sampled.
        logp, mask, logits = self._log_probs(self.policy, prompts, candidates, training=False)
        tokens = tf.reduce_sum(mask)
        global_tokens = tf.maximum(global_sum(tokens), 1.0)
        sequence_logp = tf.reduce_sum(logp, axis=1)
        pg_loss = -tf.reduce_sum(advantages * sequence_logp) / global_rows

        kl_sum = tf.constant(0.0)
        rl_loss = pg_loss
        if self.reference_policy is not None:
            ref_logp, _, _ = self._log_probs(self.reference_policy, prompts, candidates, training=False)
            per_token = kl_estimate(logp, tf.stop_gradient(ref_logp), self.kl_estimator) * mask
            kl_sum = tf.reduce_sum(per_token)
            rl_loss += self.kl_coef * kl_sum / global_rows
        entropy_sum = tf.reduce_sum(token_entropy(logits) * mask)
        if self.entropy_coef > 0:
            rl_loss -= self.entropy_coef * entropy_sum / global_tokens

        mle_sum, mle_tokens = tf.constant(0.0), tf.constant(0.0)
        loss = rl_loss
        if self.gamma < 1.0:
            nll, mle_mask, _ = response_token_nll(self.policy, prompt_ids, references, training=True)
            mle_sum, mle_tokens = tf.reduce_sum(nll), tf.reduce_sum(mle_mask)
            mle_loss = mle_sum / tf.maximum(global_sum(mle_tokens), 1.0)
            loss = self.gamma * rl_loss + (1.0 - self.gamma) * mle_loss
        logs = {
            "rows": rows,
            "loss_local": loss * global_rows,
            "rewards": rewards,
            "advantages": advantages,
            "components": components,
            "kl_sum": kl_sum,
            "entropy_sum": entropy_sum,
            "tokens": tokens,
            "mle": (mle_sum, mle_tokens),
        }
        if self.target_kl is not None:
            logs["global_kl"] = global_sum(tf.stop_gradient(kl_sum)) / global_rows
        return loss, logs

    # -- Keras hooks ----------------------------------------------------------

    def train_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            loss, logs = self.compute_losses(batch)
        variables = self.policy.trainable_variables
        # Every replica must issue its all-reduces in the same order: the
        # KL all-reduce goes before the gradients' one, not racing it.
        with tf.control_dependencies([logs.get("global_kl", loss)]):
            gradients = tape.gradient(loss, variables)
        self.optimizer.apply(gradients, variables)
        self.last_rewards.assign(logs["rewards"])
        self.last_advantages.assign(logs["advantages"])
        if self.target_kl is not None:
            self.kl_coef.assign(adaptive_kl_coefficient(self.kl_coef, logs["global_kl"], self.target_kl))
        return self._update_trackers(logs)

    def test_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        _, logs = self.compute_losses(batch)
        return self._update_trackers(logs)

    def _update_trackers(self, logs):
        t, rows = self._trackers, logs["rows"]
        rewards = logs["rewards"]
        t["loss"].update_state(logs["loss_local"], rows)
        t["reward"].update_state(tf.reduce_sum(rewards), rows)
        t["reward_std"].update_state(rewards)
        t["advantage_std"].update_state(logs["advantages"])
        t["kl"].update_state(logs["kl_sum"], rows)
        t["kl_coef"].update_state(self.kl_coef * rows, rows)
        t["entropy"].update_state(logs["entropy_sum"], logs["tokens"])
        t["candidate_length"].update_state(logs["tokens"], rows)
        groups = rows / self.num_samples
        t["zero_variance_groups"].update_state(
            tf.math.multiply_no_nan(zero_variance_fraction(rewards, self.num_samples), groups), groups
        )
        if "mle_loss" in t:
            t["mle_loss"].update_state(*logs["mle"])
        for name, value in logs["components"].items():
            self._component_trackers[name].update_state(tf.reduce_sum(value), rows)
        return step_logs(self.metrics, self.distribute_strategy)
