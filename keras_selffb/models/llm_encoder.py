"""`LLMEncoder`: Embedding -> LSTM -> one feature vector per sequence.

The article's encoder for contrastive learning. Padding (id 0) is masked, so
a sequence's features do not depend on how much padding surrounds it.
"""

import keras
from keras import ops

from keras_selffb.models.checks import check_lstm_sizes
from keras_selffb.text.tokenizer import PAD_ID

POOLINGS = ("last", "mean")


@keras.saving.register_keras_serializable(package="keras_selffb")
class LLMEncoder(keras.Model):
    """Encodes token ids `(B, T)` into features `(B, hidden_dim)`.

    Args:
        vocab_size: int. Number of token ids, reserved tokens included.
        embedding_dim: int. Token embedding width. Defaults to `128`.
        hidden_dim: int. LSTM units, the feature width. Defaults to `256`.
        num_layers: int. Stacked LSTM layers. Defaults to `1`.
        pooling: str. `"last"`: the LSTM output at the last real token;
            `"mean"`: the mean of outputs over real tokens. Defaults to
            `"last"`.
        dropout: float. Dropout between layers, training only. Defaults to
            `0.0`.

    Example:

    >>> import numpy as np
    >>> encoder = LLMEncoder(vocab_size=20, embedding_dim=8, hidden_dim=8)
    >>> padded = encoder(keras.ops.convert_to_tensor([[1, 7, 4, 0, 0], [0, 0, 1, 7, 4]]))
    >>> tuple(padded.shape)
    (2, 8)
    >>> # Padding on either side changes nothing ("last": the last real token).
    >>> unpadded = encoder(keras.ops.convert_to_tensor([[1, 7, 4]]))
    >>> bool(np.allclose(padded, unpadded, atol=1e-6))
    True
    """

    def __init__(
        self,
        vocab_size,
        embedding_dim=128,
        hidden_dim=256,
        num_layers=1,
        pooling="last",
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
        check_lstm_sizes("LLMEncoder", vocab_size, embedding_dim, hidden_dim, num_layers, dropout)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.pooling = pooling
        self.dropout = dropout

        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.lstm_layers = [
            keras.layers.LSTM(hidden_dim, return_sequences=True, name=f"lstm_{i}")
            for i in range(num_layers)
        ]
        self.dropout_layer = keras.layers.Dropout(dropout)
        # Weights exist from construction on: the one-step cached call, the
        # samplers and distribution strategies all need them before any call.
        self.build((None, None))

    def build(self, input_shape):
        self.embedding.build(input_shape)
        feature_shape = tuple(input_shape) + (self.embedding_dim,)
        for lstm in self.lstm_layers:
            lstm.build(feature_shape)
            feature_shape = tuple(input_shape) + (self.hidden_dim,)
        self.built = True

    def call(self, token_ids, training=None):
        mask = ops.not_equal(token_ids, PAD_ID)
        x = self.dropout_layer(self.embedding(token_ids), training=training)
        for lstm in self.lstm_layers:
            x = self.dropout_layer(lstm(x, mask=mask, training=training), training=training)
        weights = ops.cast(mask, x.dtype)
        if self.pooling == "mean":
            total = ops.sum(x * weights[..., None], axis=1)
            return total / ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1.0)
        # "last": output at the position of the last real token (any padding side).
        positions = ops.arange(ops.shape(token_ids)[1])[None, :]
        last = ops.max(ops.where(mask, positions, -1), axis=1)
        gathered = ops.take_along_axis(x, ops.maximum(last, 0)[:, None, None], axis=1)[:, 0]
        return ops.where((last >= 0)[:, None], gathered, ops.zeros_like(gathered))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "pooling": self.pooling,
                "dropout": self.dropout,
            }
        )
        return config
