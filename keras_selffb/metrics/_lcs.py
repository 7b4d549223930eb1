"""Batched longest-common-subsequence length, bit-parallel, XLA-compatible.

The reference `[B, Tr]` is a bit vector in words of 62 bits (int64 lanes
stay non-negative, so a carry is bit 62). One loop step per hypothesis
position updates every row of the batch at once with the recurrence of
Crochemore, Iliopoulos, Pinzon and Reid (2001), "A fast and practical
bit-vector algorithm for the longest common subsequence problem":

    U = V & M[h_i];  V = (V + U) | (V & ~U)

and the LCS length is the number of zero bits of V. `M[h_i]` (reference
positions holding token h_i) comes from a per-row table with one slot per
distinct reference token, built once with a segment sum: only the
reference is sorted, and each hypothesis token finds its slot by binary
search. Padded and unmatched hypothesis positions get an empty mask, which
leaves V unchanged, so the loop needs no per-row condition. The carry of
`V + U` across words is one integer addition per row for up to 62 words
(`_packed_carry_in`), a Kogge-Stone prefix scan (log2(words) vectorised
steps) beyond; one word needs none. The result equals rouge-score's
`_lcs_table` dynamic program.
"""

import tensorflow as tf


_BITS = 62
_FULL = (1 << _BITS) - 1


def _shift_words(x, step):
    """Shift `[B, W]` towards higher word indices by `step`, filling False."""
    if isinstance(step, int) and x.shape[1] is not None:
        step = min(step, x.shape[1])
        filler = tf.zeros_like(x[:, :step])
        return tf.concat([filler, x[:, : x.shape[1] - step]], axis=1)
    source = tf.range(tf.shape(x)[1]) - step  # dynamic: shape-stable gather
    shifted = tf.gather(x, tf.maximum(source, 0), axis=1)
    return tf.logical_and(shifted, (source >= 0)[None, :])


def _carry_in(generate, propagate, num_words):
    """Carry into each word given per-word generate/propagate flags."""
    if isinstance(num_words, int):
        step = 1
        while step < num_words:  # static: unrolled, XLA-friendly
            generate = generate | (propagate & _shift_words(generate, step))
            propagate = propagate & _shift_words(propagate, step)
            step *= 2
    else:
        def body(step, g, p):
            g = g | (p & _shift_words(g, step))
            return step * 2, g, p & _shift_words(p, step)

        _, generate, propagate = tf.while_loop(
            lambda step, g, p: step < num_words, body,
            (tf.constant(1), generate, propagate))
    return _shift_words(generate, 1)


def _searchsorted(sorted_rows, values):
    """`tf.searchsorted(sorted_rows, values, side="left")` that also takes empty inputs.

    The kernel views its inputs as `[-1, width]`, which fails for a batch of
    no rows (a replica left empty by the last batch) or of zero-width
    values; one extra row and column of padding, cut off again, avoid both.
    """
    width = tf.shape(values)[1]
    slots = tf.searchsorted(tf.pad(sorted_rows, [[0, 1], [0, 0]]), tf.pad(values, [[0, 1], [0, 1]]), side="left")
    return slots[:-1, :width]


def _match_masks(ref, ref_len, hyp, hyp_len, num_words):
    """`[Th, B, W]` int64: bit j of word w set where ref[62 w + j] == hyp[i].

    Only the reference is sorted: a reference token's slot is the first
    index of its value in its sorted row, and a hypothesis token finds the
    same slot by binary search. Unmatched and padded hypothesis positions
    get the last slot, which holds no bit (a zero mask).
    """
    num_rows = tf.shape(ref)[0]
    ref_width = tf.shape(ref)[1]
    valid = tf.sequence_mask(ref_len, ref_width)
    # Padding sorts last; one extra column keeps every row non-empty.
    last = tf.constant(ref.dtype.max, ref.dtype)
    keyed = tf.concat([tf.where(valid, ref, last),
                       tf.fill(tf.stack([num_rows, 1]), last)], axis=1)
    ordered = tf.sort(keyed, axis=1)
    width = ref_width + 1
    position = tf.range(ref_width)
    bits = tf.bitwise.left_shift(tf.ones([], tf.int64),
                                 tf.cast(position % _BITS, tf.int64))
    ref_slot = _searchsorted(ordered, keyed[:, :-1])
    slot = (tf.range(num_rows)[:, None] * width + ref_slot) * num_words + (
        position // _BITS)
    table = tf.math.unsorted_segment_sum(  # distinct bits: sum == OR
        tf.where(valid, bits, tf.zeros_like(bits)), slot,
        num_rows * width * num_words)
    table = tf.reshape(table, tf.stack([num_rows, width, num_words]))
    hyp_slot = _searchsorted(ordered, hyp)  # <= ref_width
    found = tf.logical_and(
        tf.equal(tf.gather(ordered, hyp_slot, batch_dims=1), hyp),
        tf.sequence_mask(hyp_len, tf.shape(hyp)[1]))
    hyp_slot = tf.where(found, hyp_slot, ref_width)
    # Gathered hypothesis position first: the loop takes one slice a step.
    rows = tf.reshape(table, tf.stack([num_rows * width, num_words]))
    return tf.gather(rows, tf.transpose(
        hyp_slot + tf.range(num_rows)[:, None] * width))


def _packed_carry_in(generate, propagate):
    """`_carry_in` for at most 62 words: one integer addition per row.

    With word w as bit w, the carries of `(G | P) + G` are exactly the
    carries between words: word w generates one (G) or passes the incoming
    one on (P, all ones). `(X + Y) ^ X ^ Y` has bit w set where a carry
    enters bit w.

    Args:
        generate: int64 tensor `[B, W]`, 1 where word w carries out.
        propagate: int64 tensor `[B, W]`, 1 where word w is all ones.

    Returns:
        int64 tensor `[B, W]`: the carry into each word (0 or 1).
    """
    shifts = tf.range(tf.shape(generate)[1], dtype=tf.int64)[None, :]
    g = tf.reduce_sum(tf.bitwise.left_shift(generate, shifts), axis=1)
    p = tf.reduce_sum(tf.bitwise.left_shift(propagate, shifts), axis=1)
    x = tf.bitwise.bitwise_or(g, p)
    carries = tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(x + g, x), g)
    return tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(carries[:, None], shifts), 1)


def _lcs_loop(masks, num_words, carry):
    """Run the recurrence over `masks` `[Th, B, W]`; return V `[B, W]`.

    Args:
        masks: int64 tensor `[Th, B, W]`, zero on padded hypothesis
            positions (a zero mask leaves V unchanged).
        num_words: int or scalar tensor. W.
        carry: None (one word: the carry out is dropped), "packed"
            (W <= 62) or "scan" (any W).
    """
    full = tf.constant(_FULL, tf.int64)

    def body(i, v):
        u = tf.bitwise.bitwise_and(v, masks[i])
        total = v + u  # both < 2**62: no int64 overflow
        summed = tf.bitwise.bitwise_and(total, full)
        if carry is not None:
            generate = tf.bitwise.right_shift(total, _BITS)  # 0 or 1
            propagate = tf.bitwise.right_shift(summed + 1, _BITS)  # all ones
            if carry == "packed":
                carried = _packed_carry_in(generate, propagate)
            else:
                carried = tf.cast(_carry_in(tf.cast(generate, tf.bool),
                                            tf.cast(propagate, tf.bool),
                                            num_words), tf.int64)
            summed = tf.bitwise.bitwise_and(summed + carried, full)
        # V & ~U is V - U, since U is a subset of V's bits.
        return i + 1, tf.bitwise.bitwise_or(summed, v - u)

    v0 = tf.fill(tf.stack([tf.shape(masks)[1], num_words]), full)
    _, v = tf.while_loop(lambda i, v: i < tf.shape(masks)[0], body,
                         (tf.constant(0), v0))
    return v


def _lcs_length(ref, ref_len, hyp, hyp_len):
    """The bit-parallel LCS kernel (see `lcs_length`)."""
    ref_width = ref.shape[1]
    if ref_width is not None:
        num_words = max(1, -(-ref_width // _BITS))
    else:
        num_words = tf.maximum(1, (tf.shape(ref)[1] + _BITS - 1) // _BITS)
    masks = _match_masks(ref, ref_len, hyp, hyp_len, num_words)

    def loop(carry):
        return lambda: _lcs_loop(masks, num_words, carry)

    if isinstance(num_words, int):
        carry = None if num_words == 1 else (
            "packed" if num_words <= 62 else "scan")
        v = loop(carry)()
    else:
        v = tf.case([(tf.equal(num_words, 1), loop(None)),
                     (num_words <= 62, loop("packed"))],
                    default=loop("scan"), exclusive=False)
    ones = tf.reduce_sum(tf.cast(tf.raw_ops.PopulationCount(x=v), tf.int32), -1)
    return num_words * _BITS - ones


_lcs_length_eager = tf.function(_lcs_length, reduce_retracing=True,
                                  autograph=False)


def lcs_length(ref, ref_len, hyp, hyp_len):
    """LCS length of each row pair of compacted token ids.

    Eager calls run one compiled graph (per-op dispatch would dominate);
    inside a `tf.function` or XLA the ops are traced in place, with static
    shapes where the caller has them.

    Args:
        ref: int64 tensor `[B, Tr]`, valid tokens first.
        ref_len: int32 tensor `[B]`.
        hyp: int64 tensor `[B, Th]`, valid tokens first.
        hyp_len: int32 tensor `[B]`.

    Returns:
        int32 tensor `[B]`.
    """
    if tf.executing_eagerly():
        return _lcs_length_eager(ref, ref_len, hyp, hyp_len)
    return _lcs_length(ref, ref_len, hyp, hyp_len)
