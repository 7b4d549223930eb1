"""In-graph word segmentation of `tf.string` batches for the text metrics.

Each method maps a string tensor `[B]` to a `tf.RaggedTensor` of tokens
`[B, None]` with TensorFlow string ops only (RE2 regexes, `tf.strings.*`),
so it runs inside `tf.function` and `tf.distribute` with no Python loop per
example (string ops do not compile under XLA; the id-level metrics do).

Methods and the reference each one reproduces token for token:

- `"rouge"`: rouge-score 0.1.2 `tokenize.tokenize(text, stemmer=None)`:
  Python `str.lower()`, runs of `[^a-z0-9]` become spaces, whitespace split,
  invalid tokens dropped. No stemmer (rouge-score's default).
- `"13a"`: sacrebleu 2.x `Tokenizer13a` (mteval-v13a): `<skipped>` and
  `-\\n` removed, newlines to spaces, `&quot; &amp; &lt; &gt;` unescaped in
  that order, then `TokenizerRegexp` and `str.split()`.
- `"zh"`: sacrebleu `TokenizerZh`: `str.strip()`, a space either side of
  every character its `_is_chinese_char` accepts, then `TokenizerRegexp`.
  Its table has typos (`u'\\u20000'` is `'\\u2000' + '0'`), so the ranges
  it really accepts are the ones listed in `_ZH_CLASS`, e.g. U+2001-U+2A6D
  (general punctuation, arrows, maths) and no astral-plane ideograph.
- `"char"`: sacrebleu `TokenizerChar` followed by `str.split()`: every
  non-whitespace code point is a token.
- `"none"`: sacrebleu `NoneTokenizer` followed by `str.split()`.
- `"cjk"` (ours, the default of the rewards): Unicode lowercase, every CJK
  character (Han, kana, Hangul, bopomofo, CJK and full-width punctuation) is
  a token of its own, other scripts are runs of letters, marks and digits
  (accents kept: "café" stays "café"); everything else separates tokens.

"Whitespace" is always Python's `str.isspace()` set, as in `str.split()`.

`host_segment` is the same `13a` and `none` segmentation done with numpy on
Python strings (the eager BLEU calls use it): it finds token byte spans in
one pass over the UTF-8 bytes instead of regex rewrites and a split.
"""

import numpy as np
import tensorflow as tf

# Plain TF ops with no Python control flow on tensors: AutoGraph need not
# convert them (it is slow), inside the caller's tf.function too.
_no_autograph = tf.autograph.experimental.do_not_convert

# Python's str.isspace() code points (what str.split() and strip() use).
_WS_NOT_SPACE = (
    r"\t\n\x0b\x0c\r\x{1c}-\x{1f}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
    r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
)
_WS = " " + _WS_NOT_SPACE
# sacrebleu TokenizerZh._is_chinese_char, as its comparisons really behave.
_ZH_CLASS = (
    r"\x{2001}-\x{2a6d}\x{2e80}-\x{2fdf}\x{2ff0}-\x{303f}\x{3100}-\x{312f}"
    r"\x{31a0}-\x{31ef}\x{3200}-\x{4db5}\x{4e00}-\x{9fbb}\x{f900}-\x{fa2d}"
    r"\x{fa30}-\x{fa6a}\x{fa70}-\x{fad9}\x{fe10}-\x{fe1f}\x{fe30}-\x{fe4f}"
    r"\x{ff00}-\x{ffef}"
)
# CJK characters that are one token each in the "cjk" method.
_CJK_CLASS = (
    r"\x{1100}-\x{11ff}"  # Hangul Jamo
    r"\x{2e80}-\x{2fdf}\x{2ff0}-\x{2fff}"  # radicals, Kangxi, description
    r"\x{3001}-\x{303f}"  # CJK symbols and punctuation (not U+3000 space)
    r"\x{3040}-\x{30ff}"  # Hiragana, Katakana
    r"\x{3100}-\x{312f}\x{3130}-\x{318f}\x{31a0}-\x{31ff}"  # bopomofo, jamo
    r"\x{3200}-\x{33ff}"  # enclosed CJK, CJK compatibility
    r"\x{3400}-\x{4dbf}\x{4e00}-\x{9fff}"  # Han (ext. A, unified)
    r"\x{a960}-\x{a97f}\x{ac00}-\x{d7ff}"  # Hangul syllables and jamo
    r"\x{f900}-\x{faff}"  # CJK compatibility ideographs
    r"\x{fe10}-\x{fe1f}\x{fe30}-\x{fe4f}"  # vertical and compatibility forms
    r"\x{ff01}-\x{ffef}"  # full-width and half-width forms
    r"\x{20000}-\x{3134f}"  # Han extensions B-G, compatibility supplement
)
# sacrebleu TokenizerRegexp, in order (same RE2/Python semantics here).
_MTEVAL_RULES = (
    # sacrebleu's class also holds " " (x20); padding a space with spaces
    # changes no token and the later rules see one non-digit either way,
    # so it is left out: each match costs a rewrite.
    (r"([\x{7b}-\x{7e}\x{5b}-\x{60}\x{21}-\x{26}\x{28}-\x{2b}\x{3a}-\x{40}/])",
     r" \1 "),
    (r"([^0-9])([\.,])", r"\1 \2 "),
    (r"([\.,])([^0-9])", r" \1 \2"),
    (r"([0-9])(-)", r"\1 \2 "),
)


@_no_autograph
def as_string_batch(texts, name="texts"):
    """Convert strings (a Python list or a tensor) to a rank-1 `tf.string`.

    Args:
        texts: str, list of str/bytes, or a `tf.string` tensor `[B]` or
            `[B, 1]`.
        name: str. The argument name used in error messages.
    """
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    if isinstance(texts, (list, tuple)):
        bad = [t for t in texts if not isinstance(t, (str, bytes))]
        if bad:
            raise TypeError(
                f"`{name}` must contain strings, got {type(bad[0]).__name__} "
                f"({bad[0]!r}). Use the `*_ids` functions for token ids."
            )
        texts = tf.constant(list(texts), dtype=tf.string, shape=[len(texts)])
    texts = tf.convert_to_tensor(texts)
    if texts.dtype != tf.string:
        raise TypeError(
            f"`{name}` must be a tf.string tensor, got dtype {texts.dtype.name}."
            " Use the `*_ids` functions for token ids."
        )
    if texts.shape.rank == 2 and texts.shape[1] == 1:
        texts = tf.squeeze(texts, axis=1)
    if texts.shape.rank == 0:
        texts = tf.reshape(texts, [1])
    if texts.shape.rank != 1:
        raise ValueError(
            f"`{name}` must have shape [batch], got shape {texts.shape}."
        )
    return texts


def _whitespace_split(texts):
    """Split on Python whitespace (`str.split()` semantics)."""
    # Only non-ASCII-space whitespace is rewritten (few matches, fast).
    texts = tf.strings.regex_replace(texts, f"[{_WS_NOT_SPACE}]+", " ")
    return tf.strings.split(texts)


@_no_autograph
def python_strip(texts, left=True, right=True):
    """Remove leading and/or trailing Python whitespace (`str.strip()`).

    Args:
        texts: `tf.string` tensor.
        left: bool. Strip the start. Defaults to `True`.
        right: bool. Strip the end. Defaults to `True`.
    """
    if left:
        texts = tf.strings.regex_replace(texts, f"^[{_WS}]+", "")
    if right:
        texts = tf.strings.regex_replace(texts, f"[{_WS}]+$", "")
    return texts


def _mteval_regexp(texts):
    """sacrebleu `TokenizerRegexp`: punctuation and digit rules, then split."""
    for pattern, rewrite in _MTEVAL_RULES:
        texts = tf.strings.regex_replace(texts, pattern, rewrite)
    return _whitespace_split(texts)


@_no_autograph
def segment_rouge(texts):
    """rouge-score's default tokenizer (no stemmer), in-graph.

    Args:
        texts: `tf.string` tensor `[B]`.
    """
    # Python's lower() maps exactly two non-ASCII code points onto [a-z]:
    # U+0130 -> "i" + U+0307 (a non-alphanumeric) and U+212A (Kelvin) -> "k".
    texts = tf.strings.regex_replace(texts, "\u0130", "i ")
    texts = tf.strings.regex_replace(texts, "\u212a", "k")
    texts = tf.strings.lower(texts)
    # Spaces already separate tokens; leaving them out of the pattern saves
    # one rewrite per word boundary.
    texts = tf.strings.regex_replace(texts, "[^a-z0-9 ]+", " ")
    return tf.strings.split(texts)


@_no_autograph
def segment_13a(texts):
    """sacrebleu's `13a` (mteval-v13a) tokenizer, in-graph.

    Args:
        texts: `tf.string` tensor `[B]`.
    """
    for old, new in (("<skipped>", ""), ("-\n", ""), ("\n", " "),
                     ("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"),
                     ("&gt;", ">")):
        texts = tf.strings.regex_replace(texts, old, new)
    texts = tf.strings.join([" ", texts, " "])
    return _mteval_regexp(texts)


@_no_autograph
def segment_zh(texts):
    """sacrebleu's `zh` tokenizer, in-graph.

    Args:
        texts: `tf.string` tensor `[B]`.
    """
    texts = python_strip(texts)
    texts = tf.strings.regex_replace(texts, f"([{_ZH_CLASS}])", r" \1 ")
    return _mteval_regexp(texts)


@_no_autograph
def segment_char(texts):
    """sacrebleu's `char` tokenizer: every non-whitespace code point.

    Args:
        texts: `tf.string` tensor `[B]`.
    """
    texts = tf.strings.regex_replace(texts, f"[{_WS}]+", "")
    return tf.strings.unicode_split(texts, "UTF-8")


@_no_autograph
def segment_none(texts):
    """sacrebleu's `none` tokenizer: split on whitespace only.

    Args:
        texts: `tf.string` tensor `[B]`.
    """
    return _whitespace_split(texts)


@_no_autograph
def segment_cjk(texts):
    """CJK-aware segmentation: CJK per character, other scripts per word.

    Args:
        texts: `tf.string` tensor `[B]`.
    """
    texts = tf.strings.lower(texts, encoding="utf-8")
    texts = tf.strings.regex_replace(texts, f"([{_CJK_CLASS}])", r" \1 ")
    texts = tf.strings.regex_replace(
        texts, rf"[^ \p{{L}}\p{{M}}\p{{N}}{_CJK_CLASS}]+", " "
    )
    return tf.strings.split(texts)


SEGMENTERS = {
    "rouge": segment_rouge,
    "13a": segment_13a,
    "zh": segment_zh,
    "char": segment_char,
    "none": segment_none,
    "cjk": segment_cjk,
}


def get_segmenter(identifier):
    """Return the segmentation function for a name (or a callable as is).

    Args:
        identifier: str, one of `SEGMENTERS`, or a callable mapping a
            `tf.string` tensor `[B]` to a ragged token tensor `[B, None]`.
    """
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier in SEGMENTERS:
        return SEGMENTERS[identifier]
    raise ValueError(
        f"Unknown tokenization {identifier!r}. Valid names: "
        f"{', '.join(repr(k) for k in SEGMENTERS)}, or a callable."
    )


@_no_autograph
def segment(texts, method="cjk"):
    """Split a batch of strings into tokens with the named method.

    Args:
        texts: str, list of str or `tf.string` tensor `[B]`.
        method: str or callable. See `SEGMENTERS`. Defaults to `"cjk"`.

    Example:

    >>> segment(["Hello, 世界!"], "cjk").to_list()
    [[b'hello', b'\\xe4\\xb8\\x96', b'\\xe7\\x95\\x8c']]
    """
    return get_segmenter(method)(as_string_batch(texts))


# Host segmentation (numpy, Python strings): byte classes.
_OTHER, _SPACE, _PUNCT, _DIGIT, _DOT, _DASH = range(6)


def _byte_classes():
    """Class of each byte for `host_segment` (non-ASCII bytes: `_OTHER`)."""
    table = np.full(256, _OTHER, np.uint8)
    table[[0, 9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = _SPACE  # 0: separator
    # The first TokenizerRegexp rule's class (its space is whitespace here).
    for low, high in ((0x21, 0x26), (0x28, 0x2B), (0x2F, 0x2F), (0x3A, 0x40),
                      (0x5B, 0x60), (0x7B, 0x7E)):
        table[low:high + 1] = _PUNCT
    table[ord("0"):ord("9") + 1] = _DIGIT
    table[[ord("."), ord(",")]] = _DOT
    table[ord("-")] = _DASH
    return table


_BYTE_CLASS = _byte_classes()
# `str.isspace()` code points outside ASCII, as UTF-8 (lead byte first).
_UNICODE_SPACES = [chr(c).encode() for c in
                   (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028,
                    0x2029, 0x202F, 0x205F, 0x3000)]


def _mark_unicode_spaces(data, space):
    """Set `space` on every byte of a non-ASCII whitespace character."""
    lead = np.flatnonzero((data == 0xC2) | ((data >= 0xE1) & (data <= 0xE3)))
    if not lead.size:
        return
    # `data` ends with two separator bytes: lead + 2 is always inside.
    window = (data[lead].astype(np.int32) << 16
              | data[lead + 1].astype(np.int32) << 8 | data[lead + 2])
    for char in _UNICODE_SPACES:
        code = int.from_bytes(char.ljust(3, b"\0"), "big")
        mask = 0xFFFF00 if len(char) == 2 else 0xFFFFFF
        at = lead[(window & mask) == code]
        for k in range(len(char)):
            space[at + k] = True


def _in_range(data, low, high):
    """`low <= data <= high` for uint8 `data` (one subtraction, wrapping)."""
    return (data - np.uint8(low)) <= np.uint8(high - low)


def _ascii_spaces(data):
    """Bytes that are ASCII whitespace or the NUL separator."""
    return ((data == 32) | (data == 0) | _in_range(data, 9, 13)
            | _in_range(data, 28, 31))


def _mteval_cuts(data, cut):
    """Add sacrebleu `TokenizerRegexp`'s token boundaries to `cut`.

    `cut[i]` is a boundary between bytes `i - 1` and `i`. The four rules,
    applied in order as sacrebleu does, come down to:

    * a byte of the first rule's class is a token of its own;
    * a `-` after a digit is a token of its own (`([0-9])(-)`);
    * inside a run of `.`/`,` every character is a token of its own. The
      run's left edge is a boundary unless the run is one character between
      two digits (`3.14`). Its right edge is a boundary when the next
      character is not a digit, and before a digit when the run started
      after a non-digit and is odd in length, or after a digit and even
      (rule 2 pairs the run's characters from its left, and only the
      paired ones get a space after them).
    """
    special = np.flatnonzero(_in_range(data, 0x21, 0x40)
                             | _in_range(data, 0x5B, 0x60)
                             | _in_range(data, 0x7B, 0x7E))

    def kind(at):
        return _BYTE_CLASS.take(data.take(at))

    kinds = kind(special)
    punct = special[kinds == _PUNCT]
    cut[punct] = True
    cut[punct + 1] = True
    dash = special[kinds == _DASH]
    dash = dash[kind(dash - 1) == _DIGIT]
    cut[dash] = True
    cut[dash + 1] = True
    dots = special[kinds == _DOT]
    if dots.size:
        after_dot = kind(dots - 1) == _DOT
        cut[dots[after_dot]] = True
        first = dots[~after_dot]
        last = dots[kind(dots + 1) != _DOT]
        single = first == last
        left_digit = kind(first - 1) == _DIGIT
        right_digit = kind(last + 1) == _DIGIT
        cut[first[~(single & left_digit & right_digit)]] = True
        odd = (last - first) % 2 == 0
        cut[last[~right_digit | (left_digit != odd)] + 1] = True


def _prepare_13a(text):
    """Tokenizer13a's rewrites before TokenizerRegexp (exact, any text)."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for old, new in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"),
                     ("&gt;", ">")):
        text = text.replace(old, new)
    return text


HOST_METHODS = ("13a", "none")


def host_segment(texts, method):
    """Token byte spans of Python strings, segmented with numpy.

    The tokens are exactly those of the in-graph `segment_13a` /
    `segment_none` (sacrebleu's `Tokenizer13a` / `NoneTokenizer` followed
    by `str.split()`).

    Args:
        texts: list of str.
        method: `"13a"` or `"none"`.

    Returns:
        `(data, starts, lengths, row_splits)`: the UTF-8 bytes of the texts
        (uint8, NUL separated, with NUL padding), each token's first byte
        and byte length (int64, in text order) and the token row splits
        `[len(texts) + 1]`; or None when a text holds a NUL or a lone
        surrogate (the in-graph segmenters handle those).
    """
    if method not in HOST_METHODS:
        raise ValueError(f"No host segmentation for {method!r}.")
    joined = "\0".join(texts)
    try:
        encoded = joined.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if encoded.count(b"\0") != max(len(texts) - 1, 0):
        return None
    if method == "13a" and (b"<skipped>" in encoded or b"\n" in encoded
                            or b"&" in encoded):
        # No pattern holds a NUL: rewriting the joined texts is rewriting
        # each one.
        encoded = _prepare_13a(joined).encode("utf-8")
    # NUL before and after: every byte has neighbours, all whitespace.
    data = np.zeros(len(encoded) + 4, np.uint8)
    data[1:-3] = np.frombuffer(encoded, np.uint8)
    space = _ascii_spaces(data)
    if not joined.isascii():
        _mark_unicode_spaces(data, space)
    cut = np.empty(data.size, bool)
    cut[0] = True
    np.logical_or(space[1:], space[:-1], out=cut[1:])
    if method == "13a":
        _mteval_cuts(data, cut)
    starts = np.flatnonzero(cut & ~space)
    ends = np.empty_like(cut)
    ends[0] = False
    np.logical_and(cut[1:], ~space[:-1], out=ends[1:])
    ends = np.flatnonzero(ends)
    separators = np.flatnonzero(data == 0)
    # Text i lies between NULs i and i + 1 (NUL 0 is the leading pad).
    row_splits = np.searchsorted(starts, separators[:len(texts) + 1])
    return data, starts, ends - starts, row_splits


@_no_autograph
def hash_tokens(tokens, num_buckets=2**62 - 1):
    """Map string tokens to int64 ids in `[1, num_buckets]` (0 stays padding).

    Uses `tf.strings.to_hash_bucket_fast` (FarmHash Fingerprint64), so equal
    tokens always get equal ids; two different tokens share an id with
    probability about `1 / num_buckets`. The metric kernels need ids below
    `2**62`, which the default guarantees.

    Args:
        tokens: `tf.string` tensor or `tf.RaggedTensor` of tokens.
        num_buckets: int. Number of hash buckets. Defaults to `2**62 - 1`.
    """
    if isinstance(tokens, tf.RaggedTensor):
        return tokens.with_flat_values(hash_tokens(tokens.flat_values,
                                                   num_buckets))
    return tf.strings.to_hash_bucket_fast(tokens, num_buckets) + 1
