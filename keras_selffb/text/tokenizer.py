"""Tokenizers trained from a corpus: character level and WordPiece.

Both map a batch of `tf.string` to ragged int32 ids and back inside the graph,
share the same reserved ids and save to / load from a run directory as one
`tokenizer.json`. A pretrained keras-hub tokenizer joins them through
`keras_selffb.text.PresetTokenizer` (same reserved ids, `kind: "preset"`).

- `CharTokenizer`: one id per Unicode code point seen in the corpus (the
  keras-hub `UnicodeCodepointTokenizer` idea with `lowercase=False`, but with
  a compact id table learned from the corpus, so the softmax covers the few
  thousand characters in use rather than 1.1M code points). Lossless on any
  text whose characters are in the vocabulary, Chinese and emoji included,
  and built from core TensorFlow ops only, so an exported SavedModel needs
  nothing but TensorFlow.
- `WordPieceTokenizer`: keras-hub's WordPiece (`compute_word_piece_vocabulary`,
  `split_on_cjk=True`, case and accents kept). Needs `tensorflow_text` at run
  time; detokenized text has spaces around punctuation (WordPiece does not
  keep the original spacing), and spaces between CJK characters are removed.
"""

import collections
import json
import os

import tensorflow as tf

PAD, BOS, EOS, UNK, SEP = "[PAD]", "[BOS]", "[EOS]", "[UNK]", "[SEP]"
RESERVED_TOKENS = (PAD, BOS, EOS, UNK, SEP)
PAD_ID, BOS_ID, EOS_ID, UNK_ID, SEP_ID = range(len(RESERVED_TOKENS))
NUM_RESERVED = len(RESERVED_TOKENS)

TOKENIZER_FILE = "tokenizer.json"
# Rendered for an unknown id when detokenizing character-level text.
REPLACEMENT_CHAR = 0xFFFD


def _check_vocabulary_size(vocabulary_size):
    if vocabulary_size is not None and vocabulary_size <= NUM_RESERVED:
        raise ValueError(
            f"vocabulary_size={vocabulary_size} leaves no room for text: the "
            f"{NUM_RESERVED} reserved tokens {list(RESERVED_TOKENS)} take ids "
            f"0..{NUM_RESERVED - 1}. Use a vocabulary_size above {NUM_RESERVED}."
        )


def _check_texts(texts):
    texts = list(texts)
    if not texts:
        raise ValueError("Cannot train a tokenizer on an empty corpus.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"Tokenizer training texts must be str; item {i} is "
                f"{type(text).__name__}."
            )
    return texts


def _to_string_tensor(strings):
    strings = tf.convert_to_tensor(strings)
    if strings.dtype != tf.string:
        raise TypeError(f"Expected a tf.string tensor of texts, got {strings.dtype}.")
    return strings


def _drop_special(ids, keep_unk):
    """Removes pad/bos/eos/sep (and unk unless `keep_unk`) from ragged ids."""
    keep = ids >= NUM_RESERVED
    if keep_unk:
        keep = keep | tf.equal(ids, UNK_ID)
    return tf.ragged.boolean_mask(ids, keep)


class CharTokenizer(tf.Module):
    """Character-level tokenizer with a vocabulary learned from a corpus.

    Args:
        vocabulary: list of str. The reserved tokens followed by single
            characters; id `i` is `vocabulary[i]`.

    Example:

    >>> tokenizer = CharTokenizer.train(["hello", "你好"])
    >>> tokenizer.vocabulary[5:]  # after the 5 reserved tokens: most frequent first
    ['l', 'e', 'h', 'o', '你', '好']
    >>> ids = tokenizer.tokenize(["hello", "héllo"])
    >>> ids.to_list()  # "é" was never seen: [UNK] (id 3)
    [[7, 6, 5, 5, 8], [7, 3, 5, 5, 8]]
    >>> tokenizer.detokenize(ids).numpy().tolist()  # [UNK] becomes U+FFFD
    [b'hello', b'h\\xef\\xbf\\xbdllo']
    """

    kind = "char"

    def __init__(self, vocabulary, name=None):
        super().__init__(name=name)
        vocabulary = list(vocabulary)
        if tuple(vocabulary[:NUM_RESERVED]) != RESERVED_TOKENS:
            raise ValueError(
                f"A vocabulary must start with the reserved tokens "
                f"{list(RESERVED_TOKENS)}; got {vocabulary[:NUM_RESERVED]}."
            )
        chars = vocabulary[NUM_RESERVED:]
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer entries must be single characters: {bad[:5]}")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer vocabulary has duplicate characters.")
        self.vocabulary = vocabulary
        code_points = [ord(c) for c in chars]
        self._lookup = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(code_points or [-1], tf.int64),
                tf.constant(list(range(NUM_RESERVED, len(vocabulary))) or [UNK_ID], tf.int64),
            ),
            default_value=UNK_ID,
        )
        # id -> code point; reserved ids map to 0 and are removed before encoding.
        self._code_points = tf.constant(
            [0] * NUM_RESERVED + code_points, dtype=tf.int32
        )

    @classmethod
    def train(cls, texts, vocabulary_size=None, min_frequency=1):
        """Learns a vocabulary: the most frequent characters of `texts`.

        Args:
            texts: iterable of str. The training corpus.
            vocabulary_size: int or None. Cap on the vocabulary, reserved tokens
                included. Defaults to `None` (every character seen).
            min_frequency: int. Characters seen fewer times become `[UNK]`.
                Defaults to `1`.
        """
        _check_vocabulary_size(vocabulary_size)
        texts = _check_texts(texts)
        counts = collections.Counter()
        for text in texts:
            counts.update(text)
        chars = [c for c, n in counts.items() if n >= min_frequency]
        # Most frequent first, ties by code point: deterministic.
        chars.sort(key=lambda c: (-counts[c], ord(c)))
        if vocabulary_size is not None:
            chars = chars[: vocabulary_size - NUM_RESERVED]
        return cls(list(RESERVED_TOKENS) + chars)

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def tokenize(self, strings):
        """Maps `tf.string [B]` to ragged int32 ids `[B, None]`."""
        strings = _to_string_tensor(strings)
        code_points = tf.strings.unicode_decode(
            strings, "UTF-8", errors="replace", replacement_char=REPLACEMENT_CHAR
        )
        ids = tf.ragged.map_flat_values(
            lambda cp: self._lookup.lookup(tf.cast(cp, tf.int64)), code_points
        )
        return tf.cast(ids, tf.int32)

    def detokenize(self, ids):
        """Maps int ids `[B, T]` (dense or ragged) to `tf.string [B]`.

        Reserved ids are dropped, `[UNK]` becomes U+FFFD.
        """
        ids = _as_ragged_ids(ids)
        ids = _drop_special(ids, keep_unk=True)
        code_points = tf.ragged.map_flat_values(
            lambda x: tf.where(
                tf.equal(x, UNK_ID),
                tf.constant(REPLACEMENT_CHAR, tf.int32),
                tf.gather(self._code_points, x),
            ),
            ids,
        )
        return tf.strings.unicode_encode(code_points, "UTF-8")

    def get_config(self):
        return {"kind": self.kind, "vocabulary": self.vocabulary}


class WordPieceTokenizer(tf.Module):
    """WordPiece tokenizer (keras-hub) with the shared reserved tokens.

    Args:
        vocabulary: list of str. The reserved tokens followed by word pieces.
        lowercase: bool. Lowercase before splitting. Defaults to `False`.
    """

    kind = "wordpiece"

    def __init__(self, vocabulary, lowercase=False, name=None):
        super().__init__(name=name)
        import keras_hub

        vocabulary = list(vocabulary)
        if tuple(vocabulary[:NUM_RESERVED]) != RESERVED_TOKENS:
            raise ValueError(
                f"A vocabulary must start with the reserved tokens "
                f"{list(RESERVED_TOKENS)}; got {vocabulary[:NUM_RESERVED]}."
            )
        self.vocabulary = vocabulary
        self.lowercase = lowercase
        self._layer = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=vocabulary,
            lowercase=lowercase,
            strip_accents=False,
            split_on_cjk=True,
            oov_token=UNK,
            dtype="int32",
        )
        # keras-hub returns Python lists in eager mode; inside a graph it
        # returns tensors, so the layer always runs under tf.function.
        self._tokenize_graph = tf.function(self._layer.tokenize)
        self._detokenize_graph = tf.function(self._layer.detokenize)

    @classmethod
    def train(cls, texts, vocabulary_size=8000, lowercase=False):
        """Learns a WordPiece vocabulary with keras-hub.

        Args:
            texts: iterable of str. The training corpus.
            vocabulary_size: int. Target size, reserved tokens included.
                Defaults to `8000`.
            lowercase: bool. Defaults to `False`.
        """
        import keras_hub

        _check_vocabulary_size(vocabulary_size)
        texts = _check_texts(texts)
        data = tf.data.Dataset.from_tensor_slices(texts).batch(1024)
        vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            data,
            vocabulary_size=vocabulary_size,
            lowercase=lowercase,
            strip_accents=False,
            split_on_cjk=True,
            reserved_tokens=list(RESERVED_TOKENS),
        )
        return cls(vocabulary, lowercase=lowercase)

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)


    def tokenize(self, strings):
        strings = _to_string_tensor(strings)
        ids = self._tokenize_graph(strings)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        return tf.cast(ids, tf.int32)

    def detokenize(self, ids):
        ids = _drop_special(_as_ragged_ids(ids), keep_unk=True)
        text = self._detokenize_graph(ids)
        # WordPiece joins pieces with spaces; CJK text has none between chars.
        cjk = r"[\p{Han}\p{Hiragana}\p{Katakana}\x{3000}-\x{303F}\x{FF00}-\x{FFEF}]"
        for _ in range(2):  # two passes: RE2 has no lookahead, matches overlap
            text = tf.strings.regex_replace(text, f"({cjk}) ({cjk})", r"\1\2")
        return text

    def get_config(self):
        return {"kind": self.kind, "vocabulary": self.vocabulary, "lowercase": self.lowercase}


def _as_ragged_ids(ids):
    if isinstance(ids, tf.RaggedTensor):
        return tf.cast(ids, tf.int32)
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"Token ids must be integers, got {ids.dtype}.")
    if ids.shape.rank == 1:
        ids = ids[None, :]
    return tf.RaggedTensor.from_tensor(tf.cast(ids, tf.int32))


_KINDS = {"char": CharTokenizer, "wordpiece": WordPieceTokenizer}


def detokenize_texts(tokenizer, ids):
    """`tokenizer.detokenize(ids)` as a list of Python str, one per row."""
    return [text.decode("utf-8") for text in tokenizer.detokenize(ids).numpy()]


def train_tokenizer(texts, kind="char", vocabulary_size=None, **kwargs):
    """Trains a tokenizer of `kind` ("char" or "wordpiece") on `texts`."""
    if kind not in _KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; choose one of {sorted(_KINDS)}.")
    if kind == "wordpiece" and vocabulary_size is None:
        vocabulary_size = 8000
    return _KINDS[kind].train(texts, vocabulary_size=vocabulary_size, **kwargs)


def save_tokenizer(tokenizer, directory):
    """Writes `tokenizer.json` into `directory` (atomically: temporary file, then rename).

    A `PresetTokenizer` first writes its keras-hub tokenizer to
    `directory/tokenizer_preset` (its own `save_to_preset` files) and
    `tokenizer.json` names that folder.

    Returns:
        str. The path of `tokenizer.json`.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if getattr(tokenizer, "kind", None) == "preset":
        config = tokenizer.save(directory)
    else:
        config = tokenizer.get_config()
    path = os.path.join(directory, TOKENIZER_FILE)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=0)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a failed write leaves no half file behind
            os.remove(tmp)
    return path


def load_tokenizer(directory):
    """Reads the tokenizer saved by `save_tokenizer` in `directory`.

    Args:
        directory: str. The directory `save_tokenizer` wrote, or the path
            of its `tokenizer.json`.

    Returns:
        A `CharTokenizer`, `WordPieceTokenizer` or `PresetTokenizer`.
    """
    directory = os.fspath(directory)
    path = directory
    if os.path.isdir(directory):
        path = os.path.join(directory, TOKENIZER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"No tokenizer found: {path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a valid tokenizer file: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a valid tokenizer file: expected a JSON object.")
    kind = config.pop("kind", None)
    if kind == "preset":
        from keras_selffb.text.preset_tokenizer import PresetTokenizer

        return PresetTokenizer.load(os.path.dirname(path), config)
    if kind not in _KINDS:
        raise ValueError(f"{path}: unknown tokenizer kind {kind!r}.")
    return _KINDS[kind](**config)
