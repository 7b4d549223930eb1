"""Token-level losses shared by the trainers, written for `tf.distribute`.

Under a distribution strategy each replica computes gradients of its own
loss and the optimizer SUMS them. A token mean must therefore divide each
replica's summed loss by the GLOBAL token count (all-reduced), so that the
summed gradients equal the single-device gradient of the global mean.
"""

import tensorflow as tf
from keras import ops

from keras_selffb.text.tokenizer import PAD_ID


def global_sum(value):
    """Sums `value` over the replicas of the current strategy (identity without one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def split_packed(batch, prompt_length):
    """Splits packed rows `(B, P + R)` into `(prompt (B, P), response (B, R))`."""
    batch = ops.cast(batch, "int32")
    return batch[:, :prompt_length], batch[:, prompt_length:]


def response_token_nll(policy, prompt_ids, response_ids, training=False, logit_bias=None):
    """Per-token negative log-likelihood of `response_ids` given the prompt.

    One teacher-forced pass over `prompt + response[:-1]`.

    Returns:
        `(nll (B, R), mask (B, R), logits (B, R, V))`; `mask` is 1.0 on real
        response tokens (EOS included) and 0.0 on padding.
    """
    prompt_length = prompt_ids.shape[1]
    inputs = ops.concatenate([prompt_ids, response_ids[:, :-1]], axis=1)
    logits = policy(inputs, training=training)[:, prompt_length - 1 :, :]
    logits = ops.cast(logits, "float32")
    if logit_bias is not None:
        logits = logits + logit_bias
    nll = ops.sparse_categorical_crossentropy(response_ids, logits, from_logits=True)
    mask = ops.cast(ops.not_equal(response_ids, PAD_ID), "float32")
    return nll * mask, mask, logits
