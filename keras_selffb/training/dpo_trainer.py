"""`DPOTrainer`: direct preference optimisation as a Keras `train_step`.

DPO (Rafailov et al. 2023) trains the policy on `(prompt, chosen,
rejected)` triples without a reward model or sampling. With `pi` the policy,
`ref` a frozen reference and `log pi(y|x)` the SUM of the reply's token
log-probabilities (teacher-forced, EOS included, padding excluded), the
implicit reward of a reply is `beta * (log pi(y|x) - log ref(y|x))` and

    h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))

    "sigmoid":  L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    "ipo":      L = (h - 1 / (2 * beta))^2,   h from LENGTH-AVERAGED log-probs

`eps` is `label_smoothing` (conservative DPO; 0 is the paper's loss). Both
match TRL's `DPOTrainer` (`loss_type="sigmoid"` / `"ipo"`): for IPO, TRL
divides every sequence log-prob (policy and reference, chosen and rejected)
by its number of reply tokens before forming `h` (Azar et al. 2023's eq. 17
on per-token log-likelihoods), and its logged rewards then use the averaged
log-probs too; so do we.

A batch is ONE int32 tensor `[B, P + 2R]`: the packed prompt (P columns,
left-padded `[BOS] ... [SEP]`), the chosen reply and the rejected reply (R
columns each, `... EOS PAD ..`); see `keras_selffb.data.pack_preferences`.
The loss is the mean over the GLOBAL batch (the row count is all-reduced),
so one step on N replicas equals one step on one device.
"""

import keras
import tensorflow as tf

from keras_selffb.generator import unpack_generator
from keras_selffb.models.policy_network import frozen_copy
from keras_selffb.training.losses import global_sum, response_token_nll
from keras_selffb.training.trackers import RatioTracker, step_logs

LOSS_TYPES = ("sigmoid", "ipo")
# Logged per pair (TRL's names), each the exact mean over the epoch.
LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
          "logps/chosen", "logps/rejected")


def check_dpo_settings(beta=0.1, loss_type="sigmoid", label_smoothing=0.0):
    """Refuses DPO settings the loss is undefined for, naming the setting."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown DPO loss_type {loss_type!r}; choose one of {LOSS_TYPES}.")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"DPO beta must be a number > 0; got {beta!r}.")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"DPO label_smoothing must be in [0, 0.5); got {label_smoothing!r}.")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError(
            f"DPO label_smoothing={label_smoothing} is for loss_type 'sigmoid' (conservative DPO); "
            "the IPO loss has none."
        )


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1,
             loss_type="sigmoid", label_smoothing=0.0):
    """Per-pair DPO losses and implicit rewards from sequence log-probs.

    Args:
        policy_chosen, policy_rejected: float `[B]`. The policy's sequence
            log-probs of the chosen and rejected replies (summed, or averaged
            per token for `"ipo"`).
        reference_chosen, reference_rejected: float `[B]`. The same under the
            reference (no gradient flows into them).
        beta: float. Inverse temperature of the implicit reward. Defaults
            to `0.1`.
        loss_type: str. `"sigmoid"` or `"ipo"`. Defaults to `"sigmoid"`.
        label_smoothing: float. Probability that a label is flipped
            (`"sigmoid"` only). Defaults to `0.0`.

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, each float `[B]`; the
        rewards are `beta * (log pi - log ref)` (stopped gradients).

    Example:

    >>> losses, chosen, rejected = dpo_loss([-1.0], [-3.0], [-2.0], [-2.0], beta=0.5)
    >>> # h = (-1 + 2) - (-3 + 2) = 2: -log sigmoid(1) = log(1 + e^-1)
    >>> round(float(losses[0]), 6), float(chosen[0]), float(rejected[0])
    (0.313262, 0.5, -0.5)
    >>> round(float(dpo_loss([-1.0], [-3.0], [-2.0], [-2.0], beta=0.5, loss_type="ipo")[0][0]), 6)
    1.0
    """
    check_dpo_settings(beta, loss_type, label_smoothing)
    policy_chosen, policy_rejected, reference_chosen, reference_rejected = (
        tf.convert_to_tensor(x, tf.float32)
        for x in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    )
    chosen_ratio = policy_chosen - tf.stop_gradient(reference_chosen)
    rejected_ratio = policy_rejected - tf.stop_gradient(reference_rejected)
    h = chosen_ratio - rejected_ratio
    if loss_type == "ipo":
        losses = tf.square(h - 1.0 / (2.0 * beta))
    else:
        losses = -(1.0 - label_smoothing) * tf.math.log_sigmoid(beta * h)
        if label_smoothing:
            losses -= label_smoothing * tf.math.log_sigmoid(-beta * h)
    return losses, tf.stop_gradient(beta * chosen_ratio), tf.stop_gradient(beta * rejected_ratio)


def sequence_log_probs(policy, prompt_ids, reply_ids, average=False):
    """Teacher-forced log-prob of each reply (EOS in, PAD out): `(logps [B], tokens [B])`.

    With `average=True` the log-prob is divided by the reply's token count
    (at least 1), as TRL does for IPO. Dropout is off: TRL's DPO disables
    dropout by default (`disable_dropout=True`), which also keeps the
    policy and a reference equal to it in exact agreement.
    """
    nll, mask, _ = response_token_nll(policy, prompt_ids, reply_ids, training=False)
    tokens = tf.reduce_sum(mask, axis=1)
    logps = -tf.reduce_sum(nll, axis=1)
    if average:
        logps = logps / tf.maximum(tokens, 1.0)
    return logps, tokens


class DPOTrainer(keras.Model):
    """Trains a policy on preference triples by direct preference optimisation.

    Logged (TRL's names, exact epoch means over the global batch): `loss`,
    `rewards/chosen` and `rewards/rejected` (`beta * (log pi - log ref)`),
    `rewards/margins` (chosen minus rejected), `rewards/accuracies` (share
    of pairs whose chosen reward is strictly higher) and `logps/chosen`,
    `logps/rejected` (the policy's sequence log-probs).

    Args:
        policy: a `PolicyNetwork` or `CausalLMPolicy`, or a
            `ResponseGenerator` (which brings its policy and both lengths).
        prompt_length: int. Prompt columns `P` of each packed row.
        max_new_tokens: int. Columns `R` of each reply (EOS included).
        beta: float. Inverse temperature of the implicit reward (TRL's
            `beta`): larger keeps the policy closer to the reference.
            Defaults to `0.1`.
        loss_type: str. `"sigmoid"` (DPO) or `"ipo"` (IPO, on
            length-averaged log-probs). Defaults to `"sigmoid"`.
        reference_policy: the frozen reference. Defaults to
            `policy.reference()` (the same model with LoRA switched off, no
            copy: TRL's `ref_model=None` with a PEFT model) when the policy
            has LoRA enabled, else `frozen_copy(policy)` taken now.
        label_smoothing: float in [0, 0.5). Conservative DPO's probability
            of a flipped label (`"sigmoid"` only). Defaults to `0.0`.

    Example:

    >>> import numpy as np
    >>> from keras_selffb.models import PolicyNetwork
    >>> trainer = DPOTrainer(PolicyNetwork(12, 8, 8), prompt_length=3, max_new_tokens=3)
    >>> trainer.compile(optimizer=keras.optimizers.Adam(0.05))
    >>> # prompt [BOS 5 SEP] | chosen "6 6 EOS" | rejected "7 EOS PAD"
    >>> batch = np.array([[1, 5, 4, 6, 6, 2, 7, 2, 0]] * 4, "int32")
    >>> logs = trainer.evaluate(batch, verbose=0, return_dict=True)
    >>> # At the start the policy is its reference: the loss is log 2.
    >>> round(logs["loss"], 4), logs["rewards/margins"]
    (0.6931, 0.0)
    >>> _ = trainer.fit(np.repeat(batch, 10, axis=0), batch_size=4, verbose=0)  # 10 steps
    >>> logs = trainer.evaluate(batch, verbose=0, return_dict=True)
    >>> bool(logs["rewards/margins"] > 0.1), logs["rewards/accuracies"]
    (True, 1.0)

    References:
        Rafailov et al. 2023, "Direct Preference Optimization: Your Language
        Model is Secretly a Reward Model"; Azar et al. 2023, "A General
        Theoretical Paradigm to Understand Learning from Human Preferences"
        (IPO); Mitchell 2023, "A note on DPO with noisy preferences" (cDPO).
    """

    def __init__(self, policy, prompt_length=None, max_new_tokens=None, beta=0.1, loss_type="sigmoid",
                 reference_policy=None, label_smoothing=0.0, **kwargs):
        super().__init__(**kwargs)
        policy, prompt_length, max_new_tokens = unpack_generator(
            policy, prompt_length, max_new_tokens, owner="DPOTrainer"
        )
        check_dpo_settings(beta, loss_type, label_smoothing)
        if prompt_length < 3 or max_new_tokens < 1:
            raise ValueError(
                f"DPOTrainer needs prompt_length >= 3 and max_new_tokens >= 1; got {prompt_length}, "
                f"{max_new_tokens}."
            )
        self.policy = policy
        self.prompt_length = int(prompt_length)
        self.max_new_tokens = int(max_new_tokens)
        self.beta = float(beta)
        self.loss_type = loss_type
        self.label_smoothing = float(label_smoothing)
        if reference_policy is policy:
            raise ValueError(
                "DPOTrainer's reference_policy is the policy itself: it must be frozen; pass None "
                "(a frozen copy, or the LoRA-off model) or a copy."
            )
        if reference_policy is None:
            # With LoRA the base model is the reference at no memory cost.
            reference_policy = policy.reference() if getattr(policy, "lora_rank", None) else frozen_copy(policy)
        reference_policy.trainable = False
        self.reference_policy = reference_policy
        self._trackers = {name: RatioTracker(name=name) for name in LOGGED}

    @property
    def metrics(self):
        return list(self._trackers.values())

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=None):
        return self.policy(inputs, training=training)

    def split(self, batch):
        """`(prompts [B, P], chosen [B, R], rejected [B, R])` of packed preference rows."""
        batch = tf.cast(batch, tf.int32)
        p, r = self.prompt_length, self.max_new_tokens
        width = batch.shape[-1]
        if width is not None and width != p + 2 * r:
            raise ValueError(
                f"DPOTrainer batches are [B, prompt_length + 2 * max_new_tokens] = [B, {p + 2 * r}] "
                f"(prompt | chosen | rejected; see pack_preferences); got {width} columns."
            )
        return batch[:, :p], batch[:, p : p + r], batch[:, p + r :]

    def compute_losses(self, batch):
        """The loss of one packed batch and the per-pair values logged with it."""
        prompts, chosen, rejected = self.split(batch)
        # Chosen and rejected in one pass of each model: rows [chosen; rejected].
        both_prompts = tf.concat([prompts, prompts], axis=0)
        replies = tf.concat([chosen, rejected], axis=0)
        average = self.loss_type == "ipo"
        logps, _ = sequence_log_probs(self.policy, both_prompts, replies, average)
        ref_logps, _ = sequence_log_probs(self.reference_policy, both_prompts, replies, average)
        ref_logps = tf.stop_gradient(ref_logps)
        policy_chosen, policy_rejected = tf.split(logps, 2)
        reference_chosen, reference_rejected = tf.split(ref_logps, 2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen, policy_rejected, reference_chosen, reference_rejected,
            self.beta, self.loss_type, self.label_smoothing,
        )
        rows = tf.cast(tf.shape(prompts)[0], tf.float32)
        loss = tf.reduce_sum(losses) / tf.maximum(global_sum(rows), 1.0)
        values = {
            "loss": losses,
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
            "rewards/accuracies": tf.cast(chosen_rewards > rejected_rewards, tf.float32),
            "logps/chosen": policy_chosen,
            "logps/rejected": policy_rejected,
        }
        return loss, {"rows": rows, "values": {k: tf.stop_gradient(v) for k, v in values.items()}}

    def train_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            loss, logs = self.compute_losses(batch)
        variables = self.policy.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return self._update_trackers(logs)

    def test_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        _, logs = self.compute_losses(batch)
        return self._update_trackers(logs)

    def _update_trackers(self, logs):
        for name, value in logs["values"].items():
            self._trackers[name].update_state(tf.reduce_sum(value), logs["rows"])
        return step_logs(self.metrics, self.distribute_strategy)
