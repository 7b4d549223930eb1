"""Token-level losses shared by the trainers, written for `tf.distribute`.

Under a distribution strategy each replica computes gradients of its own
loss and the optimizer SUMS them. A token mean must therefore divide each
replica's summed loss by the GLOBAL token count (all-reduced), so that the
summed gradients equal the single-device gradient of the global mean.
"""

import tensorflow as tf
from keras import ops

from keras_selffb.models.scoring import response_token_nll  # noqa: F401 (re-export)


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
