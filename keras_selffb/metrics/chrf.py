"""chrF and chrF++ from sufficient statistics, in-graph, equal to sacrebleu.

Matches sacrebleu 2.x `CHRF(char_order, word_order, beta, lowercase,
whitespace, eps_smoothing)` with one reference per hypothesis:
`CHRF().corpus_score(hyps, [refs])` and `CHRF().sentence_score(hyp, [ref])`
(chrF2 by default; `word_order=2` is chrF++).

Statistics, per pair and per order (character orders 1..`char_order`, then
word orders 1..`word_order`): the hypothesis n-gram count, the reference
n-gram count and the clipped matches `sum_g min(c_hyp(g), c_ref(g))`.

- Characters are Unicode code points. Unless `whitespace=True`, every
  Python whitespace character (`str.isspace()`, what `str.split()` drops)
  is removed first, so n-grams run across word boundaries.
- Words (chrF++): the text split on whitespace, then a word of two or more
  characters that ends with an ASCII punctuation mark (`string.punctuation`)
  loses it to a token of its own; otherwise one that starts with one does
  (sacrebleu's `_remove_punctuation`, so "(hi)" gives "(hi" and ")").
- An order for which the reference has no n-gram counts 0 hypothesis
  n-grams too (sacrebleu's "don't count hits if no reference exists").

Score from statistics (`chrf_from_statistics`, float64): per order
`P = matches / hyp` and `R = matches / ref` (1e-16 when the count is 0).
Default (sacrebleu's effective order): P and R are averaged over the orders
where both counts are non-zero, and the score is
`100 * (1 + beta^2) P R / (beta^2 P + R)`, 0 when `P + R` is 0 or no order
is effective. `eps_smoothing=True`: the mean over all orders of the per-order
F-beta (1e-16 where its denominator is 0), times 100.

A corpus score sums the statistics over all pairs first (`chrf`), it is not
the mean of the sentence scores (`sentence_chrf`). Scale 0-100.
`chrf_statistics_ids` / `sentence_chrf_ids` treat every token id as one
"character" (no whitespace removal, character orders only) and compile under
XLA; they equal sacrebleu on text when each id stands for one non-space
character.

Lowercasing (`lowercase=True`) uses `tf.strings.lower(encoding="utf-8")`,
which agrees with Python's `str.lower()` except for the few characters whose
Python lowercase is longer (U+0130).
"""

import collections

import tensorflow as tf

from keras_selffb.metrics import _inputs
from keras_selffb.metrics._ngrams import ngram_counts
from keras_selffb.text import segmentation

# Plain TF ops with no Python control flow on tensors: AutoGraph need not
# convert them (it is slow), inside the caller's tf.function too.
_no_autograph = tf.autograph.experimental.do_not_convert

CHAR_ORDER, WORD_ORDER, BETA = 6, 0, 2  # sacrebleu CHRF's defaults: chrF2
EPS = 1e-16  # sacrebleu's smoothing value for empty counts
# Code points of Python's str.isspace(): what `str.split()` removes.
_WHITESPACE = (0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680,
               *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
# string.punctuation as an RE2 class: 0x21-0x2f, 0x3a-0x40, 0x5b-0x60, 0x7b-0x7e.
_PUNCT = r"[\x{21}-\x{2f}\x{3a}-\x{40}\x{5b}-\x{60}\x{7b}-\x{7e}]"


class CHRFStatistics(collections.namedtuple("CHRFStatistics", ["hyp", "ref", "matches"])):
    """chrF sufficient statistics, int32 `[B, char_order + word_order]` each.

    `hyp`: hypothesis n-gram counts (0 for an order the reference lacks),
    `ref`: reference n-gram counts, `matches`: clipped matches; columns are
    character orders 1..char_order, then word orders 1..word_order.
    """

    __slots__ = ()

    def total(self):
        """Sum over the batch axis: the statistics of the whole corpus."""
        return CHRFStatistics(*(tf.reduce_sum(x, axis=0) for x in self))


def _check_orders(char_order, word_order):
    for name, value in (("char_order", char_order), ("word_order", word_order)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
    if char_order + word_order < 1:
        raise ValueError("`char_order + word_order` must be at least 1, got 0.")


def _check_beta(beta):
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"`beta` must be a number >= 0, got {beta!r}.")


def _batch_ids(ref_tokens, hyp_tokens):
    """Ragged tokens (ints or strings) of both sides -> small dense ids, lengths.

    Equal tokens get equal ids `1 + index in the batch's vocabulary`, so the
    n-gram kernel can use them as they are.
    """
    num_ref = tf.size(ref_tokens.flat_values)
    _, index = tf.unique(tf.concat([ref_tokens.flat_values, hyp_tokens.flat_values], axis=0),
                         out_idx=tf.int64)
    ref = ref_tokens.with_flat_values(index[:num_ref] + 1)
    hyp = hyp_tokens.with_flat_values(index[num_ref:] + 1)
    return (ref.to_tensor(0), tf.cast(ref.row_lengths(), tf.int32),
            hyp.to_tensor(0), tf.cast(hyp.row_lengths(), tf.int32))


def _code_points(texts, whitespace):
    """Ragged int32 code points `[B, None]`, Python whitespace dropped unless kept."""
    points = tf.strings.unicode_decode(texts, "UTF-8")
    if whitespace:
        return points
    spaces = tf.constant(_WHITESPACE, tf.int32)
    is_space = tf.reduce_any(tf.equal(points.flat_values[:, None], spaces[None, :]), axis=1)
    return tf.ragged.boolean_mask(points, points.with_flat_values(tf.logical_not(is_space)))


def _words(texts):
    """sacrebleu `CHRF._remove_punctuation`: whitespace split, then one mark split off."""
    words = segmentation.segment_none(texts)
    flat = words.flat_values
    ends = tf.strings.regex_full_match(flat, f"(?s).+{_PUNCT}")
    starts = tf.strings.regex_full_match(flat, f"(?s){_PUNCT}.+")
    flat = tf.where(ends, tf.strings.regex_replace(flat, f"({_PUNCT})$", r" \1"),
                    tf.where(starts, tf.strings.regex_replace(flat, f"^({_PUNCT})", r"\1 "), flat))
    pieces = tf.strings.split(flat, sep=" ")
    return words.with_flat_values(pieces).merge_dims(1, 2)


def _counts(ref, ref_len, hyp, hyp_len, order):
    """`[hyp, ref, matches]` int32 `[B, order]`; hyp zeroed where ref has none."""
    matches, hyp_totals, ref_totals = ngram_counts(ref, ref_len, hyp, hyp_len, order)
    hyp_totals = tf.where(ref_totals > 0, hyp_totals, 0)
    return hyp_totals, ref_totals, matches


def _join(parts):
    return CHRFStatistics(*(tf.concat([p[i] for p in parts], axis=1) for i in range(3)))


@_no_autograph
def chrf_statistics(references, hypotheses, char_order=CHAR_ORDER, word_order=WORD_ORDER,
                    lowercase=False, whitespace=False):
    """Per-pair chrF sufficient statistics of strings.

    Args:
        references: list of str or `tf.string` tensor `[B]`.
        hypotheses: list of str or `tf.string` tensor `[B]`.
        char_order: int. Highest character n-gram order. Defaults to `6`.
        word_order: int. Highest word n-gram order (2: chrF++). Defaults to `0`.
        lowercase: bool. Lowercase both sides first. Defaults to `False`.
        whitespace: bool. Keep whitespace in the character n-grams.
            Defaults to `False` (as sacrebleu).

    Returns:
        `CHRFStatistics(hyp, ref, matches)`, int32 `[B, char_order + word_order]`.
    """
    _check_orders(char_order, word_order)
    compiled = _inputs.run_compiled(chrf_statistics, references, hypotheses, char_order=char_order,
                             word_order=word_order, lowercase=lowercase, whitespace=whitespace)
    if compiled is not None:
        return compiled
    refs = segmentation.as_string_batch(references, "references")
    hyps = segmentation.as_string_batch(hypotheses, "hypotheses")
    with tf.control_dependencies(_inputs.check_batch(refs, hyps, ("references", "hypotheses"))):
        refs, hyps = tf.identity(refs), tf.identity(hyps)
    if lowercase:
        refs = tf.strings.lower(refs, encoding="utf-8")
        hyps = tf.strings.lower(hyps, encoding="utf-8")
    parts = []
    if char_order:
        ids = _batch_ids(_code_points(refs, whitespace), _code_points(hyps, whitespace))
        parts.append(_counts(*ids, char_order))
    if word_order:
        ids = _batch_ids(segmentation.hash_tokens(_words(refs)), segmentation.hash_tokens(_words(hyps)))
        parts.append(_counts(*ids, word_order))
    return _join(parts)


@_no_autograph
def chrf_statistics_ids(ref_ids, hyp_ids, ref_mask=None, hyp_mask=None, pad_id=0,
                        char_order=CHAR_ORDER):
    """Per-pair chrF statistics of token ids, each id one "character" (XLA-compatible).

    Args:
        ref_ids: int tensor `[B, Tr]`. Ids must lie in `[0, 2**62)`.
        hyp_ids: int tensor `[B, Th]`.
        ref_mask: optional bool tensor `[B, Tr]`. Defaults to `ref_ids != pad_id`.
        hyp_mask: optional bool tensor `[B, Th]`. Defaults to `hyp_ids != pad_id`.
        pad_id: int. Padding id used where a mask is None. Defaults to `0`.
        char_order: int. Highest n-gram order. Defaults to `6`.

    Returns:
        `CHRFStatistics`, int32 `[B, char_order]`.
    """
    _check_orders(char_order, 0)
    ids = _inputs.id_pair(ref_ids, hyp_ids, ref_mask, hyp_mask, pad_id)
    return CHRFStatistics(*_counts(*ids, char_order))


@_no_autograph
def chrf_from_statistics(hyp, ref, matches, beta=BETA, eps_smoothing=False):
    """chrF (0-100) from statistics, as sacrebleu `CHRF._compute_f_score`, vectorised.

    Args:
        hyp: int/float tensor `[..., N]`. Hypothesis n-gram counts.
        ref: int/float tensor `[..., N]`. Reference n-gram counts.
        matches: int/float tensor `[..., N]`. Clipped matches.
        beta: float. Recall is `beta` times as important as precision.
            Defaults to `2`.
        eps_smoothing: bool. Mean of the per-order F-scores (chrF++.py,
            NLTK, Moses) instead of sacrebleu's effective-order average of
            P and R. Defaults to `False` (as sacrebleu).

    Returns:
        float64 tensor `[...]`, the score on the 0-100 scale.
    """
    _check_beta(beta)
    f64 = tf.float64
    hyp, ref, matches = (tf.cast(x, f64) for x in (hyp, ref, matches))
    factor = tf.constant(float(beta) ** 2, f64)
    precision = tf.where(hyp > 0, matches / tf.where(hyp > 0, hyp, 1.0), EPS)
    recall = tf.where(ref > 0, matches / tf.where(ref > 0, ref, 1.0), EPS)
    if eps_smoothing:
        denominator = factor * precision + recall
        safe = tf.where(denominator > 0, denominator, 1.0)
        per_order = tf.where(denominator > 0, (1 + factor) * precision * recall / safe, EPS)
        return 100 * tf.reduce_sum(per_order, axis=-1) / tf.cast(tf.shape(hyp)[-1], f64)
    effective = tf.logical_and(hyp > 0, ref > 0)
    count = tf.reduce_sum(tf.cast(effective, f64), axis=-1)
    safe_count = tf.maximum(count, 1.0)
    avg_precision = tf.reduce_sum(tf.where(effective, precision, 0.0), axis=-1) / safe_count
    avg_recall = tf.reduce_sum(tf.where(effective, recall, 0.0), axis=-1) / safe_count
    positive = avg_precision + avg_recall > 0
    score = (1 + factor) * avg_precision * avg_recall
    score = score / tf.where(positive, factor * avg_precision + avg_recall, 1.0)
    return tf.where(positive, 100 * score, 0.0)


@_no_autograph
def chrf(references, hypotheses, char_order=CHAR_ORDER, word_order=WORD_ORDER, beta=BETA,
         lowercase=False, whitespace=False, eps_smoothing=False):
    """Corpus chrF of string pairs, as `sacrebleu.CHRF(...).corpus_score(hyps, [refs])`.

    The statistics of all pairs are summed, then scored once.

    Args:
        references: list of str or `tf.string` tensor `[B]`.
        hypotheses: list of str or `tf.string` tensor `[B]`.
        char_order: int. Defaults to `6`.
        word_order: int. 2 gives chrF++. Defaults to `0`.
        beta: float. Defaults to `2`.
        lowercase: bool. Defaults to `False`.
        whitespace: bool. Defaults to `False`.
        eps_smoothing: bool. Defaults to `False`.

    Returns:
        float64 scalar tensor on the 0-100 scale.

    Example:

    >>> # sacrebleu.CHRF().corpus_score(["The cat sat on a mat."], [["The cat sat on the mat."]])
    >>> round(float(chrf(["The cat sat on the mat."], ["The cat sat on a mat."])), 4)
    65.8003
    """
    _check_beta(beta)
    stats = chrf_statistics(references, hypotheses, char_order, word_order, lowercase, whitespace)
    return chrf_from_statistics(*stats.total(), beta=beta, eps_smoothing=eps_smoothing)


@_no_autograph
def sentence_chrf(references, hypotheses, char_order=CHAR_ORDER, word_order=WORD_ORDER, beta=BETA,
                  lowercase=False, whitespace=False, eps_smoothing=False):
    """chrF of each string pair, as `sacrebleu.CHRF(...).sentence_score(hyp, [ref])`.

    Args: as `chrf`.

    Returns:
        float64 tensor `[B]` on the 0-100 scale.

    Example:

    >>> scores = sentence_chrf(["三千零四十二", "two"], ["三千零四十", "three"])
    >>> [round(float(s), 4) for s in scores]
    [75.3715, 9.8039]
    """
    _check_beta(beta)
    stats = chrf_statistics(references, hypotheses, char_order, word_order, lowercase, whitespace)
    return chrf_from_statistics(*stats, beta=beta, eps_smoothing=eps_smoothing)


@_no_autograph
def sentence_chrf_ids(ref_ids, hyp_ids, ref_mask=None, hyp_mask=None, pad_id=0,
                      char_order=CHAR_ORDER, beta=BETA, eps_smoothing=False):
    """chrF (0-100) of each token-id row pair, each id one "character" (XLA-compatible).

    Args:
        ref_ids: int tensor `[B, Tr]`.
        hyp_ids: int tensor `[B, Th]`.
        ref_mask: optional bool tensor `[B, Tr]`.
        hyp_mask: optional bool tensor `[B, Th]`.
        pad_id: int. Padding id used where a mask is None. Defaults to `0`.
        char_order: int. Highest n-gram order. Defaults to `6`.
        beta: float. Defaults to `2`.
        eps_smoothing: bool. Defaults to `False`.

    Returns:
        float64 tensor `[B]`.
    """
    _check_beta(beta)
    stats = chrf_statistics_ids(ref_ids, hyp_ids, ref_mask, hyp_mask, pad_id, char_order)
    return chrf_from_statistics(*stats, beta=beta, eps_smoothing=eps_smoothing)
