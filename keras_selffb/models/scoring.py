"""Teacher-forced scoring of a response given its prompt: one pass, per-token NLL."""

from keras import ops

from keras_selffb.text.tokenizer import PAD_ID


def response_token_nll(policy, prompt_ids, response_ids, training=False, logit_bias=None):
    """Per-token negative log-likelihood of `response_ids` given the prompt.

    One teacher-forced pass over `prompt + response[:-1]`.

    Returns:
        `(nll (B, R), mask (B, R), logits (B, R, V))`; `mask` is 1.0 on real
        response tokens (EOS included) and 0.0 on padding.

    Example:

    >>> import numpy as np
    >>> from keras_selffb.models import PolicyNetwork
    >>> policy = PolicyNetwork(vocab_size=10, embedding_dim=4, hidden_dim=4)
    >>> policy.head.set_weights([np.zeros_like(w) for w in policy.head.get_weights()])
    >>> nll, mask, logits = response_token_nll(policy, np.array([[1, 7, 4]]), np.array([[8, 2, 0]]))
    >>> mask.numpy().tolist(), tuple(logits.shape)
    ([[1.0, 1.0, 0.0]], (1, 3, 10))
    >>> bool(np.allclose(nll, [[np.log(10), np.log(10), 0.0]]))  # uniform: log V a token
    True
    """
    response_length = ops.shape(response_ids)[1]
    inputs = ops.concatenate([prompt_ids, response_ids[:, :-1]], axis=1)
    # The last R positions predict the R response tokens (the first of them
    # is the prompt's SEP predicting the first response token).
    logits = policy(inputs, training=training)
    logits = logits[:, ops.shape(logits)[1] - response_length :, :]
    logits = ops.cast(logits, "float32")
    if logit_bias is not None:
        logits = logits + logit_bias
    nll = ops.sparse_categorical_crossentropy(response_ids, logits, from_logits=True)
    mask = ops.cast(ops.not_equal(response_ids, PAD_ID), "float32")
    return nll * mask, mask, logits
