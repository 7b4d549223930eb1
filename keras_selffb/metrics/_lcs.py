"""Batched longest-common-subsequence length, bit-parallel, XLA-compatible.

The reference `[B, Tr]` is a bit vector in words of 62 bits (int64 lanes
stay non-negative, so a carry is bit 62). One loop step per hypothesis
position updates every row of the batch at once with the recurrence of
Crochemore, Iliopoulos, Pinzon and Reid (2001), "A fast and practical
bit-vector algorithm for the longest common subsequence problem":

    U = V & M[h_i];  V = (V + U) | (V & ~U)

and the LCS length is the number of zero bits of V. `M[h_i]` (reference
positions holding token h_i) comes from a per-row table indexed by the
token's dense rank, built once with a segment sum. The carry of `V + U`
across words uses a Kogge-Stone prefix scan (log2(words) vectorised
steps). The result equals rouge-score's `_lcs_table` dynamic program.
"""

import tensorflow as tf

from keras_selffb.metrics._ngrams import dense_ranks

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


def _match_masks(ref, ref_len, hyp, num_words):
    """`[B, Th, W]` int64: bit j of word w set where ref[62 w + j] == hyp[i]."""
    hyp_width = hyp.shape[1] if hyp.shape[1] is not None else tf.shape(hyp)[1]
    ranks = dense_ranks(tf.concat([hyp, ref], axis=1))
    width = tf.shape(ranks)[1]
    num_rows = tf.shape(ref)[0]
    ref_rank = ranks[:, hyp_width:]
    position = tf.range(tf.shape(ref)[1])
    bits = tf.bitwise.left_shift(tf.ones([], tf.int64),
                                 tf.cast(position % _BITS, tf.int64))
    valid = tf.sequence_mask(ref_len, tf.shape(ref)[1])
    slot = (tf.range(num_rows)[:, None] * width + ref_rank) * num_words + (
        position // _BITS)
    table = tf.math.unsorted_segment_sum(  # distinct bits: sum == OR
        tf.where(valid, bits, tf.zeros_like(bits)), slot,
        num_rows * width * num_words)
    table = tf.reshape(table, tf.stack([num_rows, width, num_words]))
    return tf.gather(table, ranks[:, :hyp_width], batch_dims=1)


def _lcs_length(ref, ref_len, hyp, hyp_len):
    """The bit-parallel LCS kernel (see `lcs_length`)."""
    ref_width = ref.shape[1]
    if ref_width is not None:
        num_words = max(1, -(-ref_width // _BITS))
    else:
        num_words = tf.maximum(1, (tf.shape(ref)[1] + _BITS - 1) // _BITS)
    masks = _match_masks(ref, ref_len, hyp, num_words)
    full = tf.constant(_FULL, tf.int64)

    def body(i, v):
        u = tf.bitwise.bitwise_and(v, masks[:, i])
        total = v + u  # both < 2**62: no int64 overflow
        partial = tf.bitwise.bitwise_and(total, full)
        if isinstance(num_words, int) and num_words == 1:
            summed = partial  # the carry out of the last word is dropped
        else:
            generate = tf.not_equal(tf.bitwise.right_shift(total, _BITS), 0)
            propagate = tf.equal(partial, full)
            carry = tf.cast(_carry_in(generate, propagate, num_words), tf.int64)
            summed = tf.bitwise.bitwise_and(partial + carry, full)
        kept = tf.bitwise.bitwise_and(v, tf.bitwise.invert(u))
        new_v = tf.bitwise.bitwise_or(summed, kept)
        active = (i < hyp_len)[:, None]
        return i + 1, tf.where(active, new_v, v)

    v0 = tf.fill(tf.stack([tf.shape(hyp)[0], num_words]), full)
    _, v = tf.while_loop(lambda i, v: i < tf.shape(hyp)[1], body,
                         (tf.constant(0), v0))
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
