"""ROUGE-L and ROUGE-N per pair, in-graph, equal to rouge-score.

Matches `rouge_score.rouge_scorer.RougeScorer(["rougeL", "rouge1",
"rouge2"], use_stemmer=False)` (rouge-score 0.1.2, itself "equivalent to
ROUGE-1.5.5.pl -e data -n 2"), single reference:

- ROUGE-L: P = LCS / len(hyp), R = LCS / len(ref), all 0 if either side has
  no token (`_score_lcs`).
- ROUGE-N: clipped n-gram overlap, P = overlap / max(#hyp n-grams, 1),
  R = overlap / max(#ref n-grams, 1) (`_score_ngrams`).
- F = 2PR / (P + R), 0 when P + R = 0 (`scoring.fmeasure`, beta = 1).

String forms take `tokenize=` (default `"rouge"`, rouge-score's tokenizer;
`"cjk"` for Chinese/Japanese/Korean). Id forms take int ids `[B, T]` with
masks, run under `tf.function(jit_compile=True)` and are what rewards use.
"""

import collections

import tensorflow as tf

from keras_selffb.metrics import _inputs
from keras_selffb.metrics._lcs import lcs_length
from keras_selffb.metrics._ngrams import ngram_counts

# Plain TF ops with no Python control flow on tensors: AutoGraph need not
# convert them (it is slow), inside the caller's tf.function too.
_no_autograph = tf.autograph.experimental.do_not_convert


class RougeScore(collections.namedtuple("RougeScore",
                                        ["precision", "recall", "fmeasure"])):
    """Per-pair ROUGE scores: float32 tensors `[B]` (immutable)."""

    __slots__ = ()


def _score(overlap, hyp_count, ref_count):
    """Precision, recall and F1 from overlap and the two counts (float32)."""
    overlap = tf.cast(overlap, tf.float32)
    hyp_count = tf.cast(hyp_count, tf.float32)
    ref_count = tf.cast(ref_count, tf.float32)
    precision = tf.math.divide_no_nan(overlap, hyp_count)
    recall = tf.math.divide_no_nan(overlap, ref_count)
    fmeasure = tf.math.divide_no_nan(2.0 * precision * recall,
                                     precision + recall)
    return RougeScore(precision, recall, fmeasure)


def _lcs_score(ref, ref_len, hyp, hyp_len):
    """ROUGE-L from compacted ids."""
    lcs = lcs_length(ref, ref_len, hyp, hyp_len)
    return _score(lcs, hyp_len, ref_len)


def _check_order(n):
    """Validate the n-gram order (a positive Python int)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")


def _ngram_score(ref, ref_len, hyp, hyp_len, n):
    """ROUGE-N from compacted ids."""
    matches, hyp_totals, ref_totals = ngram_counts(ref, ref_len, hyp, hyp_len, n)
    # rouge-score divides by max(count, 1): equal to divide_no_nan here.
    return _score(matches[:, n - 1], hyp_totals[:, n - 1], ref_totals[:, n - 1])


@_no_autograph
def rouge_l(references, hypotheses, tokenize="rouge"):
    """ROUGE-L (LCS) precision, recall and F1 for each string pair.

    Args:
        references: list of str or `tf.string` tensor `[B]`.
        hypotheses: list of str or `tf.string` tensor `[B]`.
        tokenize: str or callable. Segmentation method, see
            `keras_selffb.text.segmentation`. Defaults to `"rouge"`.

    Returns:
        `RougeScore(precision, recall, fmeasure)` of float32 tensors `[B]`.

    Example:

    >>> r = rouge_l(["the cat sat on the mat"], ["the cat on a mat"])
    >>> [round(float(x[0]), 4) for x in r]
    [0.8, 0.6667, 0.7273]
    """
    compiled = _inputs.run_compiled(rouge_l, references, hypotheses,
                                    tokenize=tokenize)
    if compiled is not None:
        return compiled
    return _lcs_score(*_inputs.text_pair_ids(references, hypotheses, tokenize))


@_no_autograph
def rouge_n(references, hypotheses, n=1, tokenize="rouge"):
    """ROUGE-N (clipped n-gram overlap) for each string pair.

    Args:
        references: list of str or `tf.string` tensor `[B]`.
        hypotheses: list of str or `tf.string` tensor `[B]`.
        n: int. N-gram order. Defaults to `1`.
        tokenize: str or callable. Segmentation method. Defaults to `"rouge"`.

    Returns:
        `RougeScore(precision, recall, fmeasure)` of float32 tensors `[B]`.
    """
    _check_order(n)
    compiled = _inputs.run_compiled(rouge_n, references, hypotheses, n=n,
                                    tokenize=tokenize)
    if compiled is not None:
        return compiled
    ids = _inputs.text_pair_ids(references, hypotheses, tokenize)
    return _ngram_score(*ids, n)


@_no_autograph
def rouge_l_ids(ref_ids, hyp_ids, ref_mask=None, hyp_mask=None, pad_id=0):
    """ROUGE-L for each pair of token-id rows (XLA-compatible).

    Args:
        ref_ids: int tensor `[B, Tr]`.
        hyp_ids: int tensor `[B, Th]`.
        ref_mask: optional bool tensor `[B, Tr]`, True on real tokens.
            Defaults to `ref_ids != pad_id`.
        hyp_mask: optional bool tensor `[B, Th]`. Defaults to
            `hyp_ids != pad_id`.
        pad_id: int. Padding id used where a mask is None. Defaults to `0`.

    Returns:
        `RougeScore(precision, recall, fmeasure)` of float32 tensors `[B]`.
    """
    ids = _inputs.id_pair(ref_ids, hyp_ids, ref_mask, hyp_mask, pad_id)
    return _lcs_score(*ids)


@_no_autograph
def rouge_n_ids(ref_ids, hyp_ids, n=1, ref_mask=None, hyp_mask=None, pad_id=0):
    """ROUGE-N for each pair of token-id rows (XLA-compatible).

    Args:
        ref_ids: int tensor `[B, Tr]`. Ids must lie in `[0, 2**62)`.
        hyp_ids: int tensor `[B, Th]`.
        n: int. N-gram order. Defaults to `1`.
        ref_mask: optional bool tensor `[B, Tr]`. Defaults to
            `ref_ids != pad_id`.
        hyp_mask: optional bool tensor `[B, Th]`. Defaults to
            `hyp_ids != pad_id`.
        pad_id: int. Padding id used where a mask is None. Defaults to `0`.

    Returns:
        `RougeScore(precision, recall, fmeasure)` of float32 tensors `[B]`.
    """
    _check_order(n)
    ids = _inputs.id_pair(ref_ids, hyp_ids, ref_mask, hyp_mask, pad_id)
    return _ngram_score(*ids, n)
