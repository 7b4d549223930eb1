"""Distinct-n: unique n-grams / total n-grams (Li et al., 2016).

`distinct_n(..., per_example=False)` (the default) pools the whole batch,
the definition of "A Diversity-Promoting Objective Function for Neural
Conversation Models": distinct n-grams over all generated n-grams of the
batch. `per_example=True` gives one ratio per row `[B]`. Both are 0 where
there is no n-gram. Counting is exact (no hashing of n-grams): n-grams are
sorted lexicographically by stable radix passes (one `argsort` per
position), then neighbours are compared; it compiles under XLA for ids.
"""

import tensorflow as tf

from keras_selffb.metrics import _inputs

# Plain TF ops with no Python control flow on tensors: AutoGraph need not
# convert them (it is slow), inside the caller's tf.function too.
_no_autograph = tf.autograph.experimental.do_not_convert


def _windows(ids, lengths, n):
    """N-grams `[B, G, n]` of compacted ids and their validity `[B, G]`."""
    width = ids.shape[1]
    if width is None:
        steps = tf.maximum(tf.shape(ids)[1] - n + 1, 0)
    else:  # static under XLA
        steps = max(width - n + 1, 0)
    grams = tf.stack([ids[:, k:k + steps] for k in range(n)], axis=-1)
    valid = tf.sequence_mask(lengths - n + 1, steps)
    return grams, valid


def _count_unique(grams, valid):
    """Unique valid n-grams per row of `grams` `[R, G, n]`."""
    order = tf.argsort(grams[..., -1], axis=-1, stable=True)
    for k in range(grams.shape[-1] - 2, -1, -1):
        key = tf.gather(grams[..., k], order, batch_dims=1)
        order = tf.gather(order, tf.argsort(key, axis=-1, stable=True),
                          batch_dims=1)
    invalid = tf.gather(tf.cast(tf.logical_not(valid), tf.int32), order,
                        batch_dims=1)
    order = tf.gather(order, tf.argsort(invalid, axis=-1, stable=True),
                      batch_dims=1)
    grams = tf.gather(grams, order, batch_dims=1)
    valid = tf.gather(valid, order, batch_dims=1)
    differs = tf.reduce_any(tf.not_equal(grams[:, 1:], grams[:, :-1]), axis=-1)
    first = tf.concat([tf.ones_like(valid[:, :1]), differs], axis=1)
    return tf.reduce_sum(tf.cast(first & valid, tf.int32), axis=-1)


@_no_autograph
def distinct_n(sequences, n=1, mask=None, pad_id=0, tokenize="cjk",
               per_example=False):
    """Ratio of distinct n-grams to all n-grams, over the batch or per row.

    Args:
        sequences: int token ids `[B, T]`, or strings `[B]` (list or
            `tf.string` tensor) segmented with `tokenize`.
        n: int. N-gram order. Defaults to `1`.
        mask: optional bool tensor `[B, T]` for ids. Defaults to
            `ids != pad_id`.
        pad_id: int. Padding id for ids. Defaults to `0`.
        tokenize: str or callable. Segmentation for strings. Defaults to
            `"cjk"`.
        per_example: bool. One ratio per row instead of one for the batch.
            Defaults to `False`.

    Returns:
        float32 scalar, or `[B]` when `per_example=True`.

    Example:

    >>> round(float(distinct_n([[1, 2, 1, 2, 0]], n=2)), 4)
    0.6667
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")
    if _inputs.is_text(sequences):
        ids, lengths = _inputs.text_ids(sequences, tokenize, "sequences")
    else:
        ids = _inputs.id_batch(sequences, "sequences")
        ids, lengths = _inputs.compact(ids, mask, pad_id)
    grams, valid = _windows(ids, lengths, n)
    if not per_example:
        grams = tf.reshape(grams, [1, -1, n])
        valid = tf.reshape(valid, [1, -1])
    unique = tf.cast(_count_unique(grams, valid), tf.float32)
    total = tf.reduce_sum(tf.cast(valid, tf.float32), axis=-1)
    ratio = tf.math.divide_no_nan(unique, total)
    return ratio if per_example else ratio[0]
