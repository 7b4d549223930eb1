"""BLEU from sufficient statistics, in-graph, equal to sacrebleu.

Matches sacrebleu 2.x with one reference per hypothesis:
`sacrebleu.corpus_bleu(hyps, [refs], smooth_method=..., tokenize=...)` and
`sacrebleu.sentence_bleu(hyp, [ref], ...)` (whose default is
`use_effective_order=True`). The pipeline is theirs: optional `str.lower()`,
`str.rstrip()`, the tokenizer (`13a`, `zh`, `char`, `none`; plus our `cjk`),
clipped n-gram matches and totals per order, then `BLEU.compute_bleu`:
brevity penalty `exp(1 - ref_len / hyp_len)` (0 for an empty hypothesis),
smoothing `exp` (mteval's 1 / 2^k for the k-th zero order, default), `floor`
(value 0.1), `add-k` (value 1, orders >= 2) or `none`, `log(0)` floored at
-9999999999, the geometric mean over `max_order` orders (or, with effective
order, over the orders with a non-zero total), score 0 when no unigram
matches, on the 0-100 scale.

Statistics are per pair (`[B, max_order]` matches and totals, `[B]`
lengths): sum them over batches or replicas for a corpus score.
`bleu_statistics_ids` compiles under XLA; the scoring runs in float64.

An eager call on Python strings with the `13a` or `none` tokenizer takes
the host path: numpy segmentation (`segmentation.host_segment`), exact
token ids (`_inputs.host_token_ids`) and n-gram counts
(`_ngrams.host_ngram_counts`), then the same float64 scoring as one cached
graph. Its statistics are the in-graph ones; other inputs and tokenizers,
and every call inside a `tf.function`, run in-graph.
"""

import collections
import functools

import numpy as np
import tensorflow as tf

from keras_selffb.metrics import _inputs
from keras_selffb.metrics._ngrams import host_ngram_counts, ngram_counts
from keras_selffb.text import segmentation

# Plain TF ops with no Python control flow on tensors: AutoGraph need not
# convert them (it is slow), inside the caller's tf.function too.
_no_autograph = tf.autograph.experimental.do_not_convert

SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1.0, "exp": None}
_LOG_ZERO = -9999999999.0  # sacrebleu.utils.my_log(0)


class BLEUStatistics(collections.namedtuple(
        "BLEUStatistics", ["matches", "totals", "hyp_len", "ref_len"])):
    """BLEU sufficient statistics: int32 `[B, N]`, `[B, N]`, `[B]`, `[B]`."""

    __slots__ = ()

    def total(self):
        """Sum over the batch axis: the statistics of the whole corpus."""
        return BLEUStatistics(*(tf.reduce_sum(x, axis=0) for x in self))


class BLEUScore(collections.namedtuple(
        "BLEUScore", ["score", "precisions", "brevity_penalty", "hyp_len",
                      "ref_len"])):
    """BLEU (0-100), n-gram precisions (0-100), brevity penalty, lengths."""

    __slots__ = ()


def _check_order(max_order):
    """Validate `max_order` (a positive Python int)."""
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"`max_order` must be a positive int, got {max_order!r}.")


def _check_smoothing(smooth_method, smooth_value):
    """Validate the smoothing name and return the value to use."""
    if smooth_method not in SMOOTH_DEFAULTS:
        raise ValueError(
            f"Unknown smooth_method {smooth_method!r}. Valid names: "
            f"{', '.join(repr(k) for k in SMOOTH_DEFAULTS)}."
        )
    return SMOOTH_DEFAULTS[smooth_method] if smooth_value is None else smooth_value


def _preprocess(lowercase):
    """sacrebleu `_preprocess_segment`: optional lower(), then rstrip()."""
    def apply(texts):
        if lowercase:
            texts = tf.strings.lower(texts, encoding="utf-8")
        return segmentation.python_strip(texts, left=False)
    return apply


def _statistics(ref, ref_len, hyp, hyp_len, max_order):
    """BLEUStatistics from compacted ids."""
    matches, totals, _ = ngram_counts(ref, ref_len, hyp, hyp_len, max_order)
    return BLEUStatistics(matches, totals, hyp_len, ref_len)


def _host_preprocess(lowercase):
    """`_preprocess` on a Python str (sacrebleu's own `lower`, `rstrip`)."""
    if lowercase:
        return lambda text: text.lower().rstrip()
    return str.rstrip


def _host_statistics(references, hypotheses, tokenize, lowercase, max_order):
    """Per-pair statistics as numpy arrays from the host path, or None.

    None when the call is not eager, the inputs are not Python strings or
    the tokenizer is not a host one (see the module docstring).
    """
    if not tf.executing_eagerly():
        return None
    pair_ids = _inputs.host_text_pair_ids(references, hypotheses, tokenize,
                                          _host_preprocess(lowercase))
    if pair_ids is None:
        return None
    counts = host_ngram_counts(*pair_ids, max_order)
    if counts is None:
        return None
    lengths = np.diff(pair_ids[1])
    return counts[0], counts[1], lengths[1::2], lengths[0::2]


@functools.lru_cache(maxsize=64)
def _compiled_score(smooth_method, smooth_value, use_effective_order, rank,
                    max_order):
    """`bleu_from_statistics` as one graph for float64 statistics."""
    batch = [None] * (rank - 1)
    counts = tf.TensorSpec(batch + [max_order], tf.float64)
    lengths = tf.TensorSpec(batch, tf.float64)
    return tf.function(
        lambda *stats: bleu_from_statistics(
            *stats, smooth_method=smooth_method, smooth_value=smooth_value,
            use_effective_order=use_effective_order),
        input_signature=[counts, counts, lengths, lengths], autograph=False)


def _score_host(stats, smooth_method, smooth_value, use_effective_order):
    """BLEUScore of numpy statistics (`[..., N]`, `[...]`)."""
    stats = [np.asarray(x, np.float64) for x in stats]
    try:
        score = _compiled_score(smooth_method, smooth_value, use_effective_order,
                                stats[0].ndim, stats[0].shape[-1])
    except TypeError:  # an unhashable smooth_value (a tensor)
        score = functools.partial(
            bleu_from_statistics, smooth_method=smooth_method,
            smooth_value=smooth_value, use_effective_order=use_effective_order)
    return score(*stats)


@_no_autograph
def bleu_statistics(references, hypotheses, tokenize="13a", lowercase=False,
                    max_order=4):
    """Per-pair BLEU sufficient statistics of strings.

    Args:
        references: list of str or `tf.string` tensor `[B]`.
        hypotheses: list of str or `tf.string` tensor `[B]`.
        tokenize: str or callable. `"13a"`, `"zh"`, `"char"`, `"none"`,
            `"cjk"`, ... Defaults to `"13a"`.
        lowercase: bool. Lowercase both sides first. Defaults to `False`.
        max_order: int. Highest n-gram order. Defaults to `4`.

    Returns:
        `BLEUStatistics(matches, totals, hyp_len, ref_len)`.
    """
    _check_order(max_order)
    host = _host_statistics(references, hypotheses, tokenize, lowercase,
                            max_order)
    if host is not None:
        return BLEUStatistics(*(tf.constant(x, tf.int32) for x in host))
    compiled = _inputs.run_compiled(
        bleu_statistics, references, hypotheses, tokenize=tokenize,
        lowercase=lowercase, max_order=max_order)
    if compiled is not None:
        return compiled
    ids = _inputs.text_pair_ids(references, hypotheses, tokenize,
                                preprocess=_preprocess(lowercase))
    return _statistics(*ids, max_order)


@_no_autograph
def bleu_statistics_ids(ref_ids, hyp_ids, ref_mask=None, hyp_mask=None,
                        pad_id=0, max_order=4):
    """Per-pair BLEU sufficient statistics of token ids (XLA-compatible).

    Args:
        ref_ids: int tensor `[B, Tr]`. Ids must lie in `[0, 2**62)`.
        hyp_ids: int tensor `[B, Th]`.
        ref_mask: optional bool tensor `[B, Tr]`. Defaults to
            `ref_ids != pad_id`.
        hyp_mask: optional bool tensor `[B, Th]`. Defaults to
            `hyp_ids != pad_id`.
        pad_id: int. Padding id used where a mask is None. Defaults to `0`.
        max_order: int. Highest n-gram order. Defaults to `4`.

    Returns:
        `BLEUStatistics(matches, totals, hyp_len, ref_len)`.
    """
    _check_order(max_order)
    ids = _inputs.id_pair(ref_ids, hyp_ids, ref_mask, hyp_mask, pad_id)
    return _statistics(*ids, max_order)


@_no_autograph
def bleu_from_statistics(matches, totals, hyp_len, ref_len, smooth_method="exp",
                         smooth_value=None, use_effective_order=False):
    """BLEU from statistics (`sacrebleu.BLEU.compute_bleu`, vectorised).

    Args:
        matches: int/float tensor `[..., N]`. Clipped n-gram matches.
        totals: int/float tensor `[..., N]`. Hypothesis n-gram counts.
        hyp_len: tensor `[...]`. Hypothesis lengths.
        ref_len: tensor `[...]`. Reference lengths.
        smooth_method: str. `"exp"`, `"floor"`, `"add-k"` or `"none"`.
            Defaults to `"exp"`.
        smooth_value: float. For `"floor"` (default 0.1) and `"add-k"`
            (default 1). Defaults to `None`.
        use_effective_order: bool. Average only over orders with a non-zero
            total. Defaults to `False`.

    Returns:
        `BLEUScore` of float64 tensors (`score` has shape `[...]`).
    """
    value = _check_smoothing(smooth_method, smooth_value)
    f64 = tf.float64
    matches = tf.cast(matches, f64)
    totals = tf.cast(totals, f64)
    hyp_len = tf.cast(hyp_len, f64)
    ref_len = tf.cast(ref_len, f64)
    max_order = matches.shape[-1]
    any_match = tf.reduce_any(matches > 0, axis=-1)
    ratio = ref_len / tf.where(hyp_len > 0, hyp_len, 1.0)
    bp = tf.where(hyp_len < ref_len,
                  tf.where(hyp_len > 0, tf.exp(1.0 - ratio), 0.0), 1.0)
    if smooth_method == "add-k":  # sacrebleu adds k to orders n > 1 only
        bump = tf.constant([0.0] + [float(value)] * (max_order - 1), f64)
        matches, totals = matches + bump, totals + bump
    # Orders before the first zero total (sacrebleu's loop `break`s there).
    reached = tf.math.cumprod(tf.cast(totals > 0, f64), axis=-1) > 0
    safe_totals = tf.where(totals > 0, totals, 1.0)
    zero = tf.logical_and(reached, tf.equal(matches, 0.0))
    precisions = 100.0 * matches / safe_totals
    if smooth_method == "exp":
        halvings = tf.math.cumsum(tf.cast(zero, f64), axis=-1)
        precisions = tf.where(zero, 100.0 / (2.0 ** halvings * safe_totals),
                              precisions)
    elif smooth_method == "floor":
        precisions = tf.where(zero, 100.0 * value / safe_totals, precisions)
    precisions = tf.where(reached, precisions, 0.0)
    logs = tf.where(precisions > 0,
                    tf.math.log(tf.where(precisions > 0, precisions, 1.0)),
                    _LOG_ZERO)
    if use_effective_order:
        order = tf.reduce_sum(tf.cast(reached, f64), axis=-1)
        used = tf.range(max_order, dtype=f64) < order[..., None]
        logs = tf.where(used, logs, 0.0)
        order = tf.maximum(order, 1.0)
    else:
        order = tf.cast(max_order, f64)
    score = bp * tf.exp(tf.reduce_sum(logs, axis=-1) / order)
    score = tf.where(any_match, score, 0.0)
    return BLEUScore(score, precisions, bp, hyp_len, ref_len)


@_no_autograph
def corpus_bleu(references, hypotheses, tokenize="13a", smooth_method="exp",
                smooth_value=None, max_order=4, lowercase=False,
                use_effective_order=False):
    """Corpus BLEU of string pairs, as `sacrebleu.corpus_bleu`.

    Args:
        references: list of str or `tf.string` tensor `[B]`.
        hypotheses: list of str or `tf.string` tensor `[B]`.
        tokenize: str or callable. Defaults to `"13a"`.
        smooth_method: str. Defaults to `"exp"`.
        smooth_value: float. See `bleu_from_statistics`. Defaults to `None`.
        max_order: int. Highest n-gram order. Defaults to `4`.
        lowercase: bool. Lowercase both sides first. Defaults to `False`.
        use_effective_order: bool. Defaults to `False` (as sacrebleu).

    Returns:
        `BLEUScore` with a scalar `score` on the 0-100 scale.

    Example:

    >>> # sacrebleu.corpus_bleu(["The cat sat on a mat."], [["The cat sat on the mat."]])
    >>> r = corpus_bleu(["The cat sat on the mat."], ["The cat sat on a mat."])
    >>> round(float(r.score), 4), [round(float(p), 2) for p in r.precisions]
    (48.8923, [85.71, 66.67, 40.0, 25.0])
    """
    return _bleu(corpus_bleu, references, hypotheses, tokenize, smooth_method, smooth_value,
                 max_order, lowercase, use_effective_order, corpus=True)


@_no_autograph
def sentence_bleu(references, hypotheses, tokenize="13a", smooth_method="exp",
                  smooth_value=None, max_order=4, lowercase=False,
                  use_effective_order=True):
    """BLEU of each string pair, as `sacrebleu.sentence_bleu`.

    Args:
        references: list of str or `tf.string` tensor `[B]`.
        hypotheses: list of str or `tf.string` tensor `[B]`.
        tokenize: str or callable. Defaults to `"13a"`.
        smooth_method: str. Defaults to `"exp"`.
        smooth_value: float. See `bleu_from_statistics`. Defaults to `None`.
        max_order: int. Highest n-gram order. Defaults to `4`.
        lowercase: bool. Lowercase both sides first. Defaults to `False`.
        use_effective_order: bool. Defaults to `True` (as sacrebleu).

    Returns:
        `BLEUScore` with `score` of shape `[B]` on the 0-100 scale.
    """
    return _bleu(sentence_bleu, references, hypotheses, tokenize, smooth_method, smooth_value,
                 max_order, lowercase, use_effective_order, corpus=False)


def _bleu(entry, references, hypotheses, tokenize, smooth_method, smooth_value, max_order,
          lowercase, use_effective_order, corpus):
    """`corpus_bleu` (`corpus=True`: statistics summed first) or `sentence_bleu`.

    An eager call on Python strings with a host tokenizer takes the host
    path (see the module docstring); another eager call with a named
    tokenizer runs `entry` as one cached graph (`_inputs.run_compiled`);
    otherwise the ops run where they are called.
    """
    _check_smoothing(smooth_method, smooth_value)
    _check_order(max_order)
    host = _host_statistics(references, hypotheses, tokenize, lowercase,
                            max_order)
    if host is not None:
        if corpus:
            host = [np.sum(x, axis=0) for x in host]
        return _score_host(host, smooth_method, smooth_value,
                           use_effective_order)
    compiled = _inputs.run_compiled(
        entry, references, hypotheses, tokenize=tokenize,
        smooth_method=smooth_method, smooth_value=smooth_value,
        max_order=max_order, lowercase=lowercase,
        use_effective_order=use_effective_order)
    if compiled is not None:
        return compiled
    stats = bleu_statistics(references, hypotheses, tokenize, lowercase, max_order)
    if corpus:
        stats = stats.total()
    return bleu_from_statistics(*stats, smooth_method=smooth_method,
                                smooth_value=smooth_value,
                                use_effective_order=use_effective_order)


@_no_autograph
def sentence_bleu_ids(ref_ids, hyp_ids, ref_mask=None, hyp_mask=None, pad_id=0,
                      smooth_method="exp", smooth_value=None, max_order=4,
                      use_effective_order=True):
    """BLEU of each token-id row pair (XLA-compatible), for rewards.

    Args:
        ref_ids: int tensor `[B, Tr]`.
        hyp_ids: int tensor `[B, Th]`.
        ref_mask: optional bool tensor `[B, Tr]`.
        hyp_mask: optional bool tensor `[B, Th]`.
        pad_id: int. Padding id used where a mask is None. Defaults to `0`.
        smooth_method: str. Defaults to `"exp"`.
        smooth_value: float. Defaults to `None`.
        max_order: int. Highest n-gram order. Defaults to `4`.
        use_effective_order: bool. Defaults to `True`.

    Returns:
        `BLEUScore` with `score` of shape `[B]` on the 0-100 scale.
    """
    _check_smoothing(smooth_method, smooth_value)
    stats = bleu_statistics_ids(ref_ids, hyp_ids, ref_mask, hyp_mask, pad_id,
                                max_order)
    return bleu_from_statistics(*stats, smooth_method=smooth_method,
                                smooth_value=smooth_value,
                                use_effective_order=use_effective_order)
