"""Batched clipped n-gram counts by sorting, exact and XLA-compatible.

Each row's hypothesis and reference are laid end to end (length L). For
order n every position gets an integer key naming its n-gram: the token id
(which must lie in [0, 2**62)) for n = 1, then
`rank_{n-1}[p] * L + rank_1[p + n - 1]`, where `rank_k` is the dense rank
of the k-gram at p within its row (< L, so keys never overflow and no
n-gram is hashed). Sorting a row's keys groups equal n-grams into runs; per
run, a segment sum of +1 (hypothesis) and -1 (reference) gives
`c_h - c_r`, and the clipped overlap of rouge-score `_score_ngrams` /
sacrebleu `_compute_segment_statistics`, `sum_runs min(c_h, c_r)`, is
`(sum_runs (c_h + c_r) - |c_h - c_r|) / 2`. The run index is the next
order's dense rank. Cost: one row sort per order, memory O(B * L).
"""

import tensorflow as tf


def _rows_sum(values, segments, num_rows, width):
    """Sum `values` `[B, L]` into per-row slots `segments` `[B, L]` (< L)."""
    row_offset = tf.range(num_rows)[:, None] * width
    total = tf.math.unsorted_segment_sum(
        values, segments + row_offset, num_rows * width)
    return tf.reshape(total, tf.stack([num_rows, width]))


def _static_or_dynamic(tensor, axis):
    """The size of `axis`: a Python int when static, else a scalar tensor."""
    size = tensor.shape[axis]
    return size if size is not None else tf.shape(tensor)[axis]


def dense_ranks(tokens):
    """Rank of each token among the distinct tokens of its row, `[B, L]` < L.

    Args:
        tokens: int64 tensor `[B, L]`.
    """
    width = _static_or_dynamic(tokens, 1)
    ordered, order_idx = tf.math.top_k(tokens, k=width)
    new_run = tf.concat([tf.ones_like(ordered[:, :1], tf.bool),
                         tf.not_equal(ordered[:, 1:], ordered[:, :-1])], axis=1)
    run = tf.cumsum(tf.cast(new_run, tf.int32), axis=1) - 1
    return _rows_sum(run, order_idx, tf.shape(tokens)[0], width)


def _ngram_counts(ref, ref_len, hyp, hyp_len, max_order):
    """Clipped n-gram matches and n-gram totals for orders 1..max_order.

    Args:
        ref: int64 tensor `[B, Tr]`, compacted (valid tokens first), ids in
            `[0, 2**62)`.
        ref_len: int32 tensor `[B]`.
        hyp: int64 tensor `[B, Th]`, compacted, ids in `[0, 2**62)`.
        hyp_len: int32 tensor `[B]`.
        max_order: int. Highest n-gram order.

    Returns:
        `(matches, hyp_totals, ref_totals)`, int32 tensors `[B, max_order]`.
    """
    hyp_width = _static_or_dynamic(hyp, 1)
    tokens = tf.concat([hyp, ref], axis=1)
    width = _static_or_dynamic(tokens, 1)
    num_rows = tf.shape(tokens)[0]
    positions = tf.range(width)[None, :]
    is_ref = tf.cast(positions >= hyp_width, tf.int64)
    offset = tf.where(positions < hyp_width, positions, positions - hyp_width)
    limit = tf.where(positions < hyp_width, hyp_len[:, None], ref_len[:, None])
    keys = tokens
    first_rank = rank = None
    matches = []
    for order in range(1, max_order + 1):
        if order > 1:
            shift = order - 1
            following = tf.concat(
                [first_rank[:, shift:], tf.zeros_like(first_rank[:, :shift])],
                axis=1)
            keys = tf.cast(rank * width + following, tf.int64)
        # Sort key: n-gram key, then side in the low bit; -1 = not an n-gram.
        # top_k sorts (descending) and returns the permutation in one op.
        valid = offset + order <= limit
        tagged = tf.where(valid, keys * 2 + is_ref, tf.constant(-1, tf.int64))
        ordered, order_idx = tf.math.top_k(tagged, k=width)
        group = tf.bitwise.right_shift(ordered, 1)
        new_run = tf.concat(
            [tf.ones_like(group[:, :1], tf.bool),
             tf.not_equal(group[:, 1:], group[:, :-1])], axis=1)
        run = tf.cumsum(tf.cast(new_run, tf.int32), axis=1) - 1
        # +1 per hypothesis n-gram, -1 per reference one, 0 for padding:
        # a run sums to c_h - c_r and min(c_h, c_r) = (c_h + c_r - |.|) / 2.
        side = tf.cast(tf.bitwise.bitwise_and(ordered, 1), tf.int32)
        sign = tf.where(ordered >= 0, 1 - 2 * side, 0)
        imbalance = tf.reduce_sum(tf.abs(_rows_sum(sign, run, num_rows, width)),
                                  axis=1)
        both = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
        matches.append((both - imbalance) // 2)
        if order < max_order:  # dense rank of each n-gram, back in place
            rank = _rows_sum(run, order_idx, num_rows, width)
            first_rank = rank if order == 1 else first_rank
    orders = tf.range(max_order, dtype=tf.int32)[None, :]
    hyp_totals = tf.maximum(hyp_len[:, None] - orders, 0)
    ref_totals = tf.maximum(ref_len[:, None] - orders, 0)
    return tf.stack(matches, axis=1), hyp_totals, ref_totals


_ngram_counts_eager = tf.function(_ngram_counts, reduce_retracing=True,
                                  autograph=False)


def ngram_counts(ref, ref_len, hyp, hyp_len, max_order):
    """Clipped matches and totals, see `_ngram_counts`.

    Eager calls run one compiled graph; inside a `tf.function` or XLA the
    ops are traced in place.

    Args:
        ref: int64 tensor `[B, Tr]`, compacted.
        ref_len: int32 tensor `[B]`.
        hyp: int64 tensor `[B, Th]`, compacted.
        hyp_len: int32 tensor `[B]`.
        max_order: int. Highest n-gram order.
    """
    if tf.executing_eagerly():
        return _ngram_counts_eager(ref, ref_len, hyp, hyp_len, max_order)
    return _ngram_counts(ref, ref_len, hyp, hyp_len, max_order)
