"""Batched clipped n-gram counts by sorting, exact and XLA-compatible.

The clipped overlap of rouge-score `_score_ngrams` / sacrebleu
`_compute_segment_statistics` for order n is `sum_g min(c_h, c_r)` over the
distinct n-grams g of a pair, which is `(sum_g (c_h + c_r) - |c_h - c_r|) / 2`.

Main kernel (`_packed_counts`), one row sort for every order at once. Each
token becomes a small "digit" >= 1: its id + 1 when every id of the batch
fits in `62 // max_order` bits (the string functions pass dense vocabulary
ids), else its dense rank in its row + 1. The hypothesis and the reference
are laid end to end, each followed by `max_order - 1` zero digits, and
position p gets the key `digits[p : p + max_order]` packed high to low (a
zero digit: past the end of its side). Sorting a row's keys (descending,
the side read from each key's source position) puts equal n-grams of
every order next to each other, since an n-gram is a key prefix: a new
order-n group
starts where the key differs from the previous one in its first n digits.
One cumulative sum of those starts, all orders packed in one int64 (a field
of `63 // max_order` bits each), numbers the groups; a segment sum of +1
(hypothesis) / -1 (reference) per group gives `c_h - c_r`. Positions with
fewer than n tokens left (a side's last r < n tokens) form groups of their
own, shared by the two sides only when their last r tokens are equal; they
are taken back out exactly. Cost: one sort (two with dense ranks) and
`O(B * L * max_order)` element-wise work.

Fallback (`_chained_counts`, when the padded row, both sides and gaps, has
2**(62 // max_order) positions or more):
for order n the key is the token id for n = 1, then
`rank_{n-1}[p] * L + rank_1[p + n - 1]`, where `rank_k` is the dense rank
of the k-gram at p within its row (< L, so keys never overflow and no
n-gram is hashed); one row sort per order.
"""

import numpy as np
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


def _chained_counts(ref, ref_len, hyp, hyp_len, max_order):
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


def _totals(hyp_len, ref_len, max_order):
    """Hypothesis and reference n-gram counts per order, int32 `[B, N]`."""
    orders = tf.range(max_order, dtype=tf.int32)[None, :]
    return (tf.maximum(hyp_len[:, None] - orders, 0),
            tf.maximum(ref_len[:, None] - orders, 0))


def _packed_counts(hyp_digits, hyp_len, ref_digits, ref_len, max_order):
    """Clipped matches from per-token digits (see the module docstring).

    Args:
        hyp_digits: int64 tensor `[B, Th]`, in `[1, 2**(62 // max_order))`
            on the first `hyp_len` positions, 0 after.
        hyp_len: int32 tensor `[B]`.
        ref_digits: int64 tensor `[B, Tr]`, as `hyp_digits`.
        ref_len: int32 tensor `[B]`.
        max_order: int. Highest n-gram order; `Th + Tr + 2 * (max_order - 1)`
            must stay below `2**(63 // max_order)`.

    Returns:
        int32 tensor `[B, max_order]` of clipped matches.
    """
    bits, field = 62 // max_order, 63 // max_order
    num_rows = tf.shape(hyp_digits)[0]
    hyp_width = _static_or_dynamic(hyp_digits, 1)
    gap = tf.zeros(tf.stack([num_rows, max_order - 1]), tf.int64)
    digits = tf.concat([hyp_digits, gap, ref_digits, gap], axis=1)
    width = _static_or_dynamic(digits, 1)
    key = digits
    for k in range(1, max_order):  # what rolls in at the end is the gap
        key = tf.bitwise.bitwise_or(tf.bitwise.left_shift(key, bits),
                                    tf.roll(digits, -k, axis=1))
    # Padding and gap positions sort last (0); the side is read from
    # where a key came from.
    ordered, source = tf.math.top_k(tf.where(digits > 0, key, 0), k=width)
    sign = tf.where(ordered > 0, tf.where(
        source < hyp_width + max_order - 1, 1, -1), 0)
    # A new order-n group where the first n digits change, i.e. where the
    # xor with the previous key reaches bit bits * (max_order - n); the
    # count of such orders indexes `table` (one count field per order).
    change = tf.bitwise.bitwise_xor(ordered, tf.roll(ordered, 1, axis=1))
    change = tf.where(tf.range(width) > 0, change, 1 << 62)  # row start
    lowest = tf.constant([1 << (bits * (max_order - n))
                          for n in range(max_order, 0, -1)], tf.int64)
    # One padded column: the kernel fails on zero-width values (an empty batch).
    num_new = tf.searchsorted(lowest[None, :], tf.pad(tf.reshape(change, [1, -1]), [[0, 0], [0, 1]]),
                              side="right")[:, :-1]
    table = tf.constant([sum(1 << (field * (n - 1))
                             for n in range(max_order - c + 1, max_order + 1))
                         for c in range(max_order + 1)], tf.int64)
    starts = tf.reshape(tf.gather(table, num_new[0]), tf.shape(ordered))
    counts = tf.cumsum(starts, axis=1)  # group numbers + 1, one field each
    # One order at a time: [B, L] arrays stay in cache.
    offsets = tf.range(num_rows)[:, None] * width - 1
    imbalance = []
    for n in range(max_order):
        groups = tf.cast(tf.bitwise.bitwise_and(
            tf.bitwise.right_shift(counts, field * n), (1 << field) - 1),
            tf.int32)
        sums = tf.math.unsorted_segment_sum(sign, groups + offsets,
                                            num_rows * width)
        imbalance.append(tf.reduce_sum(tf.abs(tf.reshape(
            sums, tf.stack([num_rows, width]))), axis=1))
    imbalance = tf.stack(imbalance, axis=1)
    matches = (hyp_len[:, None] + ref_len[:, None] - imbalance) // 2
    if max_order == 1:
        return matches
    # Take out the tails: for order n, the groups of the last r < n tokens
    # matched once each where the two sides end with the same r tokens.
    back = tf.range(1, max_order)[None, :]
    hyp_pos, ref_pos = hyp_len[:, None] - back, ref_len[:, None] - back
    ref_first = hyp_width + max_order - 1  # `digits` is never empty
    same = tf.logical_and(
        tf.equal(tf.gather(digits, tf.maximum(hyp_pos, 0), batch_dims=1),
                 tf.gather(digits, ref_first + tf.maximum(ref_pos, 0),
                           batch_dims=1)),
        tf.logical_and(hyp_pos >= 0, ref_pos >= 0))
    equal_tails = tf.cumsum(tf.math.cumprod(tf.cast(same, tf.int32), axis=1),
                            axis=1)
    return matches - tf.pad(equal_tails, [[0, 0], [1, 0]])


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
    limit = 1 << (62 // max_order)
    hyp_width = _static_or_dynamic(hyp, 1)
    width = _static_or_dynamic(hyp, 1) + _static_or_dynamic(ref, 1)
    width += 2 * (max_order - 1)
    hyp_totals, ref_totals = _totals(hyp_len, ref_len, max_order)

    def packed():
        hyp_valid = tf.sequence_mask(hyp_len, hyp_width)
        ref_valid = tf.sequence_mask(ref_len, _static_or_dynamic(ref, 1))
        # Compacted rows are 0 after their length: padding can't widen these.
        top = tf.maximum(tf.reduce_max(hyp), tf.reduce_max(ref))
        bottom = tf.minimum(tf.reduce_min(hyp), tf.reduce_min(ref))

        def ranks():
            both = tf.cast(dense_ranks(tf.concat([hyp, ref], axis=1)),
                           tf.int64)
            return both[:, :hyp_width], both[:, hyp_width:]

        # Small ids are digits as they are; others become row ranks (< L).
        hyp_rank, ref_rank = tf.cond(
            tf.logical_and(top < limit - 1, bottom >= 0),
            lambda: (hyp, ref), ranks)
        hyp_digits = tf.where(hyp_valid, hyp_rank + 1, 0)
        ref_digits = tf.where(ref_valid, ref_rank + 1, 0)
        return _packed_counts(hyp_digits, hyp_len, ref_digits, ref_len,
                              max_order)

    def chained():
        return _chained_counts(ref, ref_len, hyp, hyp_len, max_order)[0]

    if isinstance(width, int):
        matches = packed() if width < limit else chained()
    else:
        matches = tf.cond(width < limit, packed, chained)
    return matches, hyp_totals, ref_totals


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



def host_ngram_counts(ids, row_splits, max_order):
    """Clipped n-gram matches and totals with numpy, for eager string calls.

    `_packed_counts` on the host. Each position's key packs its next
    `max_order` token digits (0 past the end of its row), high to low, and
    its side in the low bit. One sort per pair (numpy's vectorised sort)
    puts equal n-grams of every order next to each other; an order-n group
    is a run of keys with equal top n digits. As in `_packed_counts`, a
    side's last r < n tokens form groups of their own, taken back out where
    the two sides end with the same r tokens. Digits are the ids themselves
    when they fit in `62 // max_order` bits, else each id's rank within its
    pair + 1.

    Args:
        ids: int64 array `[M]` of token ids in `[1, 2**32)` (equal tokens,
            equal ids).
        row_splits: int64 array `[2 * B + 1]`: the rows of pair p are
            2p (its reference) and 2p + 1 (its hypothesis).
        max_order: int. Highest n-gram order.

    Returns:
        `(matches, hyp_totals, ref_totals)`, int64 arrays `[B, max_order]`,
        or None when a pair has `2**(62 // max_order) - 1` tokens or more
        (the in-graph kernels handle those).
    """
    num_pairs = (len(row_splits) - 1) // 2
    bits = 62 // max_order
    digit_mask = (1 << bits) - 1
    lengths = np.diff(row_splits)
    ref_len, hyp_len = lengths[0::2], lengths[1::2]
    orders = np.arange(max_order)
    hyp_totals = np.maximum(hyp_len[:, None] - orders, 0)
    ref_totals = np.maximum(ref_len[:, None] - orders, 0)
    pair_len = ref_len + hyp_len
    width = int(pair_len.max()) if num_pairs else 0
    count = len(ids)
    if width >= digit_mask:
        return None
    matches = np.zeros((num_pairs, max_order), np.int64)
    if not count:
        return matches, hyp_totals, ref_totals
    row = np.repeat(np.arange(2 * num_pairs), lengths)
    digits = ids
    if int(ids.max()) > digit_mask:  # the id's rank within its pair
        pair = row >> 1
        distinct, index = np.unique(pair << 32 | ids, return_inverse=True)
        first = np.searchsorted(distinct >> 32, np.arange(num_pairs))
        digits = index.reshape(-1) - first[pair] + 1
    key = digits << (bits * (max_order - 1) + 1)
    for k in range(1, max_order):
        key[:-k] |= digits[k:] << (bits * (max_order - 1 - k) + 1)
    # A row's last r < max_order positions keep only their r digits.
    row_end = row_splits[1:]
    for r in range(1, max_order):
        at = (row_end - r)[lengths >= r]
        key[at] &= ~((1 << (bits * (max_order - r) + 1)) - 1)
    key |= row & 1  # the side: 1 for the hypothesis
    # Each pair's keys in one row of the grid; 0 pads, sorted first.
    in_grid = np.arange(width) < pair_len[:, None]
    grid = np.zeros((num_pairs, width), np.int64)
    grid[in_grid] = key
    grid.sort(axis=1)
    keys = grid[in_grid[:, ::-1]]
    # A group starts at a pair's first key and where the key changes in
    # its top n digits; its hypothesis count minus its reference count is
    # 2 * (hypothesis keys) - (keys).
    change = keys[1:] ^ keys[:-1]
    pair_start = np.concatenate([[0], np.cumsum(pair_len)])
    firsts = pair_start[:-1][pair_len > 0]
    hyp_seen = np.zeros(count + 1, np.int64)
    np.cumsum(keys & 1, out=hyp_seen[1:])
    start = np.empty(count, bool)
    for n in range(1, max_order + 1):
        np.greater_equal(change, 1 << (1 + bits * (max_order - n)),
                         out=start[1:])
        start[firsts] = True
        bounds = np.append(np.flatnonzero(start), count)
        sums = np.abs(2 * np.diff(hyp_seen[bounds]) - np.diff(bounds))
        first_group = np.searchsorted(bounds[:-1], pair_start[:-1])
        imbalance = np.add.reduceat(sums, np.minimum(first_group, len(sums) - 1))
        imbalance[pair_len == 0] = 0
        matches[:, n - 1] = (hyp_len + ref_len - imbalance) // 2
    # Take out the tails: the last r < n tokens of both sides, when equal.
    back = np.arange(1, max_order)
    hyp_at, ref_at = row_splits[2::2, None] - back, row_splits[1::2, None] - back
    same = ((hyp_len[:, None] >= back) & (ref_len[:, None] >= back)
            & (digits.take(np.maximum(hyp_at, 0), mode="clip")
               == digits.take(np.maximum(ref_at, 0), mode="clip")))
    equal_tails = np.cumsum(np.cumprod(same, axis=1), axis=1)
    matches[:, 1:] -= equal_tails
    return matches, hyp_totals, ref_totals
