"""`MLETrainer`: teacher-forced maximum likelihood on packed (prompt, response) rows."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_selffb.generator import unpack_generator
from keras_selffb.text.tokenizer import PAD_ID
from keras_selffb.training.losses import global_sum, response_token_nll, split_packed
from keras_selffb.training.trackers import RatioTracker, step_logs


@keras.saving.register_keras_serializable(package="keras_selffb")
class MLETrainer(keras.Model):
    """Trains a `PolicyNetwork` by maximum likelihood of the responses.

    The loss is the mean negative log-likelihood per response token (EOS
    included, padding and prompt excluded), averaged over the GLOBAL batch
    so one step on several replicas equals one step on one device.
    Reported: `loss` (nats per token) and `perplexity` (its exp), both exact
    token-weighted values over the epoch.

    A batch is one int32 tensor of packed rows, or, for reward-weighted
    self-training, rows with a weight each: a dict
    `{"rows": rows, "weights": float [B]}` or the single float32 tensor
    `weighted_rows(rows, weights)` (ids and a last weight column; the form
    that also works under `MultiWorkerMirroredStrategy`, whose Keras `fit`
    takes no dict batches). Then the loss is
    `sum_i w_i * nll_i / sum_i w_i * n_i` (`n_i` the row's tokens), the
    weighted token mean.

    Args:
        policy: a `PolicyNetwork` or `CausalLMPolicy`, or a
            `ResponseGenerator` (which brings its `prompt_length`).
        prompt_length: int. Columns of the prompt in each packed row.

    Example:

    >>> from keras_selffb.models import PolicyNetwork
    >>> trainer = MLETrainer(PolicyNetwork(20, 8, 8), prompt_length=4)
    >>> trainer.compile(optimizer="adam")
    >>> batch = np.array([[0, 1, 7, 4, 9, 2]] * 2, dtype="int32")
    >>> history = trainer.fit(batch, epochs=2, batch_size=2, verbose=0).history
    >>> loss, perplexity = history["loss"], history["perplexity"]
    >>> # Untrained: about log(20) nats per response token (9 and EOS).
    >>> bool(abs(loss[0] - np.log(20)) < 0.1), bool(np.isclose(perplexity[0], np.exp(loss[0])))
    (True, True)
    >>> bool(loss[1] < loss[0])
    True
    """

    def __init__(self, policy, prompt_length=None, **kwargs):
        super().__init__(**kwargs)
        policy, prompt_length, _ = unpack_generator(policy, prompt_length, owner="MLETrainer", need_new_tokens=False)
        self.policy = policy
        self.prompt_length = prompt_length
        self.loss_tracker = RatioTracker(name="loss")
        self.perplexity_tracker = RatioTracker(exponentiate=True, name="perplexity")

    @property
    def metrics(self):
        return [self.loss_tracker, self.perplexity_tracker]

    def build(self, input_shape=None):
        """Builds the policy for packed rows; `input_shape` is `(B, P + R)`."""
        if not self.policy.built:
            length = None if input_shape is None else input_shape[-1]
            self.policy.build((None, None if length is None else length - 1))
        self.built = True

    def call(self, inputs, training=None):
        return self.policy(inputs, training=training)

    def _nll(self, data, training):
        batch, weights = _unpack(data)
        prompt_ids, response_ids = split_packed(batch, self.prompt_length)
        nll, mask, _ = response_token_nll(self.policy, prompt_ids, response_ids, training=training)
        if weights is None:
            return ops.sum(nll), ops.sum(mask)
        weights = ops.cast(weights, nll.dtype)[:, None]
        return ops.sum(nll * weights), ops.sum(mask * weights)

    def _update(self, nll_sum, tokens):
        self.loss_tracker.update_state(nll_sum, tokens)
        self.perplexity_tracker.update_state(nll_sum, tokens)
        return step_logs(self.metrics, self.distribute_strategy)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            nll_sum, tokens = self._nll(data, training=True)
            loss = nll_sum / ops.maximum(global_sum(tokens), 1.0)
        variables = self.policy.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return self._update(nll_sum, tokens)

    def test_step(self, data):
        nll_sum, tokens = self._nll(data, training=False)
        return self._update(nll_sum, tokens)

    def get_config(self):
        return {
            **super().get_config(),
            "policy": keras.saving.serialize_keras_object(self.policy),
            "prompt_length": self.prompt_length,
        }

    @classmethod
    def from_config(cls, config):
        config["policy"] = keras.saving.deserialize_keras_object(config["policy"])
        return cls(**config)


# float32 holds every integer below 2**24 exactly.
_MAX_FLOAT_ID = 2**24


def weighted_rows(rows, weights):
    """Packs rows and their weights into one float32 array `[B, L + 1]`.

    The ids stay exact (float32 holds every integer below 2**24) and the
    last column holds the weights. `MLETrainer` reads it back as
    `{"rows", "weights"}`. One tensor per batch is what Keras 3 `fit`
    accepts under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).

    Example:

    >>> batch = weighted_rows(np.array([[1, 7, 4, 9, 2]]), np.array([0.5]))
    >>> batch.dtype, batch.tolist()
    (dtype('float32'), [[1.0, 7.0, 4.0, 9.0, 2.0, 0.5]])
    """
    rows = np.asarray(rows)
    weights = np.asarray(weights, np.float32)
    if rows.ndim != 2 or weights.shape != (len(rows),):
        raise ValueError(f"weighted_rows needs rows [B, L] and weights [B]; got {rows.shape} and {weights.shape}.")
    if rows.size and (rows.min() < 0 or rows.max() >= _MAX_FLOAT_ID):
        raise ValueError(f"Token ids must be in [0, {_MAX_FLOAT_ID}) to be packed as float32.")
    return np.concatenate([rows.astype(np.float32), weights[:, None]], axis=1)


def _unpack(data):
    """`(rows, weights or None)` from a batch as `fit` hands it over."""
    if isinstance(data, tuple):
        data = data[0]
    if isinstance(data, dict):
        if "rows" not in data or "weights" not in data:
            raise ValueError(f"A dict batch needs 'rows' and 'weights'; got keys {sorted(data)}.")
        return data["rows"], data["weights"]
    if data.dtype.is_floating:  # weighted_rows
        return ops.cast(data[:, :-1], "int32"), data[:, -1]
    return data, None


def unigram_perplexity(train_packed, eval_packed, prompt_length, vocab_size):
    """Perplexity of response tokens under a add-one unigram model of the train set.

    The baseline any language model must beat: it knows token frequencies
    and nothing about context.
    """
    train = np.asarray(train_packed)[:, prompt_length:]
    evaluation = np.asarray(eval_packed)[:, prompt_length:]
    counts = np.bincount(train[train != PAD_ID], minlength=vocab_size).astype(np.float64) + 1.0
    counts[PAD_ID] = 0.0  # never a response token, never predicted
    log_probs = np.log(np.maximum(counts, 1e-300) / counts.sum())
    tokens = evaluation[evaluation != PAD_ID]
    if tokens.size == 0:
        raise ValueError("The evaluation set has no response tokens.")
    return float(np.exp(-log_probs[tokens].mean()))
