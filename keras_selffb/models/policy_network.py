"""`PolicyNetwork`: the article's Embedding -> LSTM -> Dense, as a real LM.

The article's policy returned one logit vector per sequence and took an
argmax, which cannot learn a sequence. This one is an autoregressive language
model: the full call gives per-token next-token logits `(B, T, V)` for teacher
forcing, and `call_with_cache` advances one or more tokens from an explicit
LSTM `(h, c)` cache, which is what keras-hub samplers need.

Padding id 0 is masked: the LSTM carries its state through padded steps, so a
left-padded prompt gives exactly the state of the unpadded prompt.
"""

import keras
from keras import ops

from keras_selffb.models.checks import check_lstm_sizes
from keras_selffb.text.tokenizer import PAD_ID


@keras.saving.register_keras_serializable(package="keras_selffb")
class PolicyNetwork(keras.Model):
    """Autoregressive LSTM language model used as the policy.

    Args:
        vocab_size: int. Number of token ids, reserved tokens included.
        embedding_dim: int. Token embedding width. Defaults to `128`.
        hidden_dim: int. LSTM units per layer. Defaults to `256`.
        num_layers: int. Stacked LSTM layers. Defaults to `1`.
        dropout: float. Dropout on the embedding and on each LSTM layer's
            output, training only. Defaults to `0.0`.

    Example:

    >>> import numpy as np
    >>> policy = PolicyNetwork(vocab_size=20, embedding_dim=8, hidden_dim=8)
    >>> ids = keras.ops.convert_to_tensor([[1, 7, 4, 9, 2, 0]])
    >>> logits = policy(ids)
    >>> tuple(logits.shape)
    (1, 6, 20)
    >>> # Generation: the prompt in one call, then one token a call from the cache.
    >>> cache = policy.initial_cache(1)
    >>> _, cache = policy.call_with_cache(ids[:, :3], cache)
    >>> step, cache = policy.call_with_cache(ids[:, 3:4], cache)
    >>> tuple(cache.shape), bool(np.allclose(step[:, 0], logits[:, 3], atol=1e-6))
    ((1, 1, 2, 8), True)
    """

    def __init__(
        self,
        vocab_size,
        embedding_dim=128,
        hidden_dim=256,
        num_layers=1,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_lstm_sizes("PolicyNetwork", vocab_size, embedding_dim, hidden_dim, num_layers, dropout)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.dropout = dropout

        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.lstm_layers = [
            keras.layers.LSTM(
                hidden_dim, return_sequences=True, return_state=True, name=f"lstm_{i}"
            )
            for i in range(num_layers)
        ]
        self.dropout_layer = keras.layers.Dropout(dropout)
        self.head = keras.layers.Dense(vocab_size, name="logits")
        # Weights exist from construction on: the one-step cached call, the
        # samplers and distribution strategies all need them before any call.
        self.build((None, None))

    def build(self, input_shape):
        self.embedding.build(input_shape)
        feature_shape = tuple(input_shape) + (self.embedding_dim,)
        for lstm in self.lstm_layers:
            lstm.build(feature_shape)
            feature_shape = tuple(input_shape) + (self.hidden_dim,)
        self.head.build(feature_shape)
        self.built = True

    def initial_cache(self, batch_size):
        """Zero LSTM state, shaped `(batch, num_layers, 2, hidden_dim)`."""
        return ops.zeros((batch_size, self.num_layers, 2, self.hidden_dim))

    def _run(self, token_ids, cache, training):
        mask = ops.not_equal(token_ids, PAD_ID)
        x = self.dropout_layer(self.embedding(token_ids), training=training)
        states = []
        for i, lstm in enumerate(self.lstm_layers):
            initial_state = [cache[:, i, 0, :], cache[:, i, 1, :]]
            x, h, c = lstm(x, initial_state=initial_state, mask=mask, training=training)
            x = self.dropout_layer(x, training=training)
            states.append(ops.stack([h, c], axis=1))
        return self.head(x), ops.stack(states, axis=1)

    def call(self, token_ids, training=None):
        """Next-token logits `(B, T, V)` for every position of `token_ids`."""
        batch_size = ops.shape(token_ids)[0]
        logits, _ = self._run(token_ids, self.initial_cache(batch_size), training)
        return logits

    def call_with_cache(self, token_ids, cache, training=None):
        """Advances the LSTM over `token_ids (B, T)` from `cache`.

        Returns `(logits (B, T, V), new_cache)`. Padding ids leave the state
        unchanged.
        """
        return self._run(token_ids, cache, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
            }
        )
        return config


def frozen_copy(policy):
    """A non-trainable copy of `policy` with its current weights (a reference LM)."""
    clone = policy.__class__.from_config(policy.get_config())
    clone.set_weights(policy.get_weights())
    clone.trainable = False
    return clone
