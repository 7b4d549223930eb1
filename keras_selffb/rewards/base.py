"""`Reward`: the one contract every reward follows.

A reward maps a batch of candidates to one float per candidate:

    reward(prompts, candidates, references) -> float32 [B]

with token-id tensors in the packed layout of `keras_selffb.text.packing`:

- `prompts`: int32 `[B, P]`, left-padded `[PAD .. BOS text SEP]`;
- `candidates`: int32 `[B, N]`, the generated reply, `EOS` then `PAD`;
- `references`: int32 `[B, R]`, the reference reply, `EOS` then `PAD`.

Rewards run inside the trainer's `tf.function`. A reward that needs text is
given the tokenizer when it is built and detokenizes in the graph. The
trainer never knows which reward it holds: it asks for `components(...)`
(named per-candidate values, logged as `reward/<name>`) and for
`total(components)`, the value it optimises.

Helpers shared by the rewards: `content_mask` (the text tokens of a row,
reserved ids excluded), `check_tokenizer` and `word_ids` (a candidate's
token ids, or the hashed ids of its detokenized words).
"""

import tensorflow as tf

from keras_selffb.text import segmentation
from keras_selffb.text.tokenizer import NUM_RESERVED


def content_mask(ids):
    """True on text tokens: ids `>= NUM_RESERVED` (no PAD/BOS/EOS/UNK/SEP).

    `[UNK]` is left out on purpose: two unknown tokens are not evidence of
    the same word, and a detokenized `[UNK]` (U+FFFD for `CharTokenizer`)
    is a separator, not a word, for the `"cjk"` segmentation, so the id and
    string forms of a reward agree.

    Args:
        ids: int tensor `[B, T]`.
    """
    ids = tf.convert_to_tensor(ids)
    return ids >= tf.cast(NUM_RESERVED, ids.dtype)


def check_tokenizer(tokenizer, owner):
    """Raises TypeError unless `tokenizer` has an in-graph `detokenize`.

    Args:
        tokenizer: a tokenizer from `keras_selffb.text`, or None.
        owner: str. The reward class named in the message.
    """
    if tokenizer is not None and not callable(getattr(tokenizer, "detokenize", None)):
        raise TypeError(
            f"{owner} needs a tokenizer with a `detokenize(ids)` method (a "
            f"keras_selffb.text tokenizer); got {type(tokenizer).__name__}."
        )
    return tokenizer


def word_ids(candidates, tokenizer=None, tokenize="cjk"):
    """The units a diversity reward counts: dense ids `[B, T]`, their mask and lengths `[B]` (int32).

    Without a tokenizer: the candidates' own ids, masked to their content
    tokens. With one: the candidates are detokenized, segmented into words
    (`tokenize`, see `keras_selffb.text.segmentation`) and each word hashed
    to an id >= 1, so 0 stays padding.
    """
    if tokenizer is None:
        mask = content_mask(candidates)
        return candidates, mask, tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    words = segmentation.get_segmenter(tokenize)(tokenizer.detokenize(candidates))
    ids = segmentation.hash_tokens(words)
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    dense = ids.to_tensor(0)
    return dense, tf.sequence_mask(lengths, tf.shape(dense)[1]), lengths


class Reward:
    """Base class: subclasses implement `call` and set `name`.

    Args:
        name: str. The name logged as `reward/<name>`. Defaults to the
            class's `default_name`.
    """

    default_name = "reward"

    def __init__(self, name=None):
        self.name = name or self.default_name

    def call(self, prompts, candidates, references):
        """Returns the per-candidate reward `[B]`; subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} must implement call().")

    def __call__(self, prompts, candidates, references):
        return tf.cast(self.call(prompts, candidates, references), tf.float32)

    def components(self, prompts, candidates, references):
        """Named per-candidate values; a single reward is its own component."""
        return {self.name: self(prompts, candidates, references)}

    def component_names(self):
        """Names `components()` returns; known before any call (trackers)."""
        return [self.name]

    def total(self, components):
        """Combines `components(...)` into the optimised reward `[B]`."""
        return components[self.name]

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"
