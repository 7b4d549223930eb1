"""`RelevanceJudge`: a dual encoder that scores how well a reply fits a prompt.

A learned relevance judge for the relevance reward (`JudgeReward`): the
article's `LLMEncoder`, shared by both sides, then one linear projection per
side (prompt head, reply head) and L2 normalisation. The similarity of a
prompt and a reply is their cosine divided by a learned temperature, the
logits of a contrastive (InfoNCE) classifier that picks, for each reply, its
prompt among the prompts of a batch (`keras_selffb.training.JudgeTrainer`).

Only content tokens count: every reserved id (PAD, BOS, EOS, UNK, SEP) is
turned into padding, which the encoder masks, so a packed prompt
`[PAD .. BOS text SEP]` and a reply `[text EOS PAD ..]` are read as their
text alone. A row with no content token embeds as the zero vector (its
similarity to anything is 0).
"""

import math

import keras
from keras import ops

from keras_selffb.models.llm_encoder import POOLINGS, LLMEncoder
from keras_selffb.text.tokenizer import NUM_RESERVED, PAD_ID

# The temperature is learned as log(t), clipped to this range: below 0.01
# (logits up to 100, CLIP's cap) training turns unstable; above 1 the
# logits lie in [-1, 1] and the softmax can barely tell prompts apart.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 1.0


def check_judge(judge, owner):
    """Returns `judge`; TypeError naming `owner` unless it has a `similarity` method."""
    if not callable(getattr(judge, "similarity", None)):
        raise TypeError(
            f"{owner} needs a RelevanceJudge (a model with a "
            f"`similarity(prompt_ids, reply_ids)` method); got {type(judge).__name__}."
        )
    return judge


def content_ids(ids):
    """`ids` as int32 with every reserved id (< NUM_RESERVED) turned into PAD.

    Args:
        ids: int tensor `[B, T]`.

    Returns:
        int32 tensor `[B, T]`.
    """
    ids = ops.cast(ids, "int32")
    return ops.where(ids >= NUM_RESERVED, ids, PAD_ID)


@keras.saving.register_keras_serializable(package="keras_selffb")
class RelevanceJudge(keras.Model):
    """Dual encoder: `similarity(prompts, replies)` = cosine / temperature.

    One `LLMEncoder` reads both prompts and replies; a Dense projection per
    side maps its features to `projection_dim`, and the result is L2
    normalised. The temperature starts at `temperature` and is learned as a
    log-scale scalar weight, clipped to `[0.01, 1.0]`.

    Args:
        vocab_size: int. Number of token ids, reserved tokens included.
        embedding_dim: int. Token embedding width. Defaults to `64`.
        hidden_dim: int. LSTM units of the encoder. Defaults to `128`.
        num_layers: int. Stacked LSTM layers. Defaults to `1`.
        projection_dim: int. Width of the normalised embeddings. Defaults
            to `64`.
        temperature: float in `[0.01, 1.0]`. Initial temperature. Defaults
            to `0.05`.
        pooling: str. The encoder's pooling, `"last"` or `"mean"`.
            Defaults to `"last"`.
        dropout: float. The encoder's dropout, training only. Defaults to
            `0.0`.

    Example:

    >>> import numpy as np
    >>> judge = RelevanceJudge(vocab_size=20, embedding_dim=8, hidden_dim=8, projection_dim=4)
    >>> prompts = np.array([[0, 1, 7, 8, 4], [1, 9, 9, 9, 4]], "int32")  # [PAD.. BOS text SEP]
    >>> replies = np.array([[7, 8, 2, 0], [2, 0, 0, 0]], "int32")  # [text EOS PAD..]
    >>> logits = judge.similarity(prompts, replies)  # (prompts, replies)
    >>> tuple(logits.shape)
    (2, 2)
    >>> # Cosines over the temperature; the empty reply (EOS alone) scores 0.
    >>> bool(np.all(np.abs(logits) <= 1 / 0.05 + 1e-4)), np.asarray(logits)[:, 1].tolist()
    (True, [0.0, 0.0])
    >>> # Only content counts: the same text, packed differently, embeds the same.
    >>> a = judge.embed_prompts(np.array([[0, 0, 1, 7, 8, 4]]))
    >>> b = judge.embed_prompts(np.array([[7, 8, 0, 0, 0, 0]]))
    >>> bool(np.allclose(a, b, atol=1e-6))
    True
    """

    def __init__(
        self,
        vocab_size,
        embedding_dim=64,
        hidden_dim=128,
        num_layers=1,
        projection_dim=64,
        temperature=0.05,
        pooling="last",
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"RelevanceJudge pooling must be one of {POOLINGS}; got {pooling!r}.")
        if not isinstance(projection_dim, int) or projection_dim < 1:
            raise ValueError(f"RelevanceJudge needs a positive int projection_dim; got {projection_dim!r}.")
        if not MIN_TEMPERATURE <= float(temperature) <= MAX_TEMPERATURE:
            raise ValueError(
                f"RelevanceJudge temperature must be in [{MIN_TEMPERATURE}, "
                f"{MAX_TEMPERATURE}] (it is learned within that range); got {temperature}."
            )
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.projection_dim = projection_dim
        self.initial_temperature = float(temperature)
        self.pooling = pooling
        self.dropout = dropout

        # The encoder checks the LSTM sizes (ValueError naming LLMEncoder).
        self.encoder = LLMEncoder(
            vocab_size,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            pooling=pooling,
            dropout=dropout,
            name="encoder",
        )
        self.prompt_head = keras.layers.Dense(projection_dim, name="prompt_head")
        self.reply_head = keras.layers.Dense(projection_dim, name="reply_head")
        self.log_temperature = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(math.log(self.initial_temperature)),
            name="log_temperature",
        )
        self.build((None, None))

    def build(self, input_shape=None):
        self.prompt_head.build((None, self.hidden_dim))
        self.reply_head.build((None, self.hidden_dim))
        self.built = True

    @property
    def temperature(self):
        """The current temperature, `exp(log_temperature)` clipped to `[0.01, 1]`."""
        log_t = ops.clip(
            ops.cast(self.log_temperature, "float32"),
            math.log(MIN_TEMPERATURE),
            math.log(MAX_TEMPERATURE),
        )
        return ops.exp(log_t)

    def _embed(self, ids, head, training):
        ids = content_ids(ids)
        features = self.encoder(ids, training=training)
        z = ops.cast(head(features), "float32")
        norm = ops.sqrt(ops.sum(ops.square(z), axis=-1, keepdims=True))
        z = z / ops.maximum(norm, 1e-12)
        has_content = ops.any(ops.not_equal(ids, PAD_ID), axis=1, keepdims=True)
        return ops.where(has_content, z, ops.zeros_like(z))

    def embed_prompts(self, ids, training=None):
        """Unit-norm prompt embeddings `(B, projection_dim)`, float32.

        Args:
            ids: int `[B, T]`, any padding side; reserved ids are ignored.
            training: bool or None. Enables the encoder's dropout.

        Returns:
            float32 `[B, projection_dim]`; zero for a row without content.
        """
        return self._embed(ids, self.prompt_head, training)

    def embed_replies(self, ids, training=None):
        """Unit-norm reply embeddings `(B, projection_dim)`, float32.

        Args:
            ids: int `[B, T]`, any padding side; reserved ids are ignored.
            training: bool or None. Enables the encoder's dropout.

        Returns:
            float32 `[B, projection_dim]`; zero for a row without content.
        """
        return self._embed(ids, self.reply_head, training)

    def similarity(self, prompt_ids, reply_ids, training=None):
        """Logits `(P, R)`: `cos(prompt_p, reply_r) / temperature`.

        Args:
            prompt_ids: int `[P, T1]`.
            reply_ids: int `[R, T2]`.
            training: bool or None. Enables the encoder's dropout.

        Returns:
            float32 `[P, R]`; row `p` is prompt `p`, column `r` reply `r`.
        """
        prompts = self.embed_prompts(prompt_ids, training=training)
        replies = self.embed_replies(reply_ids, training=training)
        return ops.matmul(prompts, ops.transpose(replies)) / self.temperature

    def initialize_from(self, policy):
        """Copies the embedding and LSTM weights of an LSTM `PolicyNetwork` into the encoder.

        The MLE policy has already learned, from the same data, to read
        characters into words and phrases. A judge that starts from its
        encoder reached in 10 epochs the retrieval accuracy a random start
        needed 25-30 epochs for (docs/dialogue-quality.md). The projection
        heads and the temperature keep their initial values.

        Args:
            policy: a `keras_selffb.models.PolicyNetwork` with this judge's
                `vocab_size`, `embedding_dim`, `hidden_dim` and `num_layers`.

        Returns:
            self.
        """
        sizes = ("vocab_size", "embedding_dim", "hidden_dim", "num_layers")
        theirs = {name: getattr(policy, name, None) for name in sizes}
        ours = {name: getattr(self, name) for name in sizes}
        if theirs != ours or not hasattr(policy, "lstm_layers"):
            raise ValueError(
                f"RelevanceJudge.initialize_from needs an LSTM PolicyNetwork of the judge's sizes {ours}; "
                f"got {type(policy).__name__} with {theirs}."
            )
        self.encoder.embedding.set_weights(policy.embedding.get_weights())
        for mine, source in zip(self.encoder.lstm_layers, policy.lstm_layers):
            mine.set_weights(source.get_weights())
        return self

    def call(self, inputs, training=None):
        """`inputs = (prompt_ids, reply_ids)`; returns `similarity(...)`, `(B, B)` for a batch of pairs."""
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise ValueError(
                "RelevanceJudge is called on a pair (prompt_ids, reply_ids); "
                f"got {type(inputs).__name__}."
            )
        prompt_ids, reply_ids = inputs
        return self.similarity(prompt_ids, reply_ids, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "projection_dim": self.projection_dim,
                "temperature": self.initial_temperature,
                "pooling": self.pooling,
                "dropout": self.dropout,
            }
        )
        return config
