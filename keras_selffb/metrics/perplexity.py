"""Token-weighted perplexity from logits (or probabilities) and targets.

perplexity = exp(sum of masked token NLL / number of masked tokens), the
corpus definition (not a mean of per-sequence perplexities), so that sums
from several batches or replicas combine exactly. Matches
`keras_hub.metrics.Perplexity` with a padding mask; runs under XLA.
"""

import tensorflow as tf

# Plain TF ops with no Python control flow on tensors: AutoGraph need not
# convert them (it is slow), inside the caller's tf.function too.
_no_autograph = tf.autograph.experimental.do_not_convert


@_no_autograph
def perplexity_statistics(logits, targets, mask=None, pad_id=None,
                          from_logits=True):
    """Sum of token negative log-likelihoods and number of counted tokens.

    Args:
        logits: float tensor `[B, T, V]`. Logits, or probabilities when
            `from_logits=False`.
        targets: int tensor `[B, T]`. Target token ids.
        mask: optional tensor `[B, T]`. Weight per token (0 drops it).
        pad_id: optional int. Targets equal to it are dropped too.
            Defaults to `None` (no padding id).
        from_logits: bool. Whether `logits` are unnormalised. Defaults to
            `True`.

    Returns:
        `(nll_sum, token_count)`, float32 scalars.
    """
    logits = tf.convert_to_tensor(logits)
    targets = tf.convert_to_tensor(targets)
    if not logits.dtype.is_floating:
        raise TypeError(f"`logits` must be floating point, got {logits.dtype.name}.")
    if not targets.dtype.is_integer:
        raise TypeError(
            f"`targets` must hold integer token ids, got {targets.dtype.name}.")
    if logits.shape.rank != targets.shape.rank + 1:
        raise ValueError(
            "`logits` must have one more axis than `targets` (the vocabulary):"
            f" got shapes {logits.shape} and {targets.shape}.")
    if not logits.shape[:-1].is_compatible_with(targets.shape):
        raise ValueError(
            f"`logits` {logits.shape} and `targets` {targets.shape} disagree.")
    logits = tf.cast(logits, tf.float32)
    if not from_logits:
        logits = tf.math.log(tf.clip_by_value(logits, 1e-12, 1.0))
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.int32), logits=logits)
    weights = tf.ones_like(nll) if mask is None else tf.cast(mask, tf.float32)
    if pad_id is not None:
        weights *= tf.cast(tf.not_equal(targets, pad_id), tf.float32)
    weights = tf.broadcast_to(weights, tf.shape(nll))
    return tf.reduce_sum(nll * weights), tf.reduce_sum(weights)


@_no_autograph
def perplexity(logits, targets, mask=None, pad_id=None, from_logits=True):
    """Perplexity exp(total NLL / total tokens) of a batch.

    Args:
        logits: float tensor `[B, T, V]`.
        targets: int tensor `[B, T]`.
        mask: optional tensor `[B, T]`. Weight per token (0 drops it).
        pad_id: optional int. Targets equal to it are dropped. Defaults to
            `None`.
        from_logits: bool. Defaults to `True`.

    Returns:
        float32 scalar (1.0 when no token is counted).

    Example:

    >>> float(perplexity([[[0.0, 0.0, 0.0, 0.0]]], [[2]]))
    4.0
    """
    nll, count = perplexity_statistics(logits, targets, mask, pad_id,
                                       from_logits)
    return tf.exp(tf.math.divide_no_nan(nll, count))
