"""`FluencyReward`: 1 / perplexity of the candidate under a frozen reference LM.

The article's fluency term (section 3.1.2): how likely a reply is under a
language model of the data. One teacher-forced pass of the reference
`PolicyNetwork` over `prompt + candidate` (`training.losses.response_token_nll`)
gives the log-probability of every candidate token; the reward is

    exp(mean over candidate tokens of log p(token | prompt, prefix))

i.e. 1 / perplexity, in (0, 1]. EOS counts as a token (it is the model's
choice to stop), padding does not; a row with no token at all scores 0.
The sampler's `special_token_bias` is added to the logits, so the
probabilities are those of the distribution replies are sampled from.
"""

import tensorflow as tf

from keras_selffb.models.generation import special_token_bias
from keras_selffb.models.scoring import response_token_nll
from keras_selffb.rewards.base import Reward


class FluencyReward(Reward):
    """Geometric-mean token probability of the candidate given the prompt.

    The reference model is only read: it runs with `training=False` and the
    result is wrapped in `tf.stop_gradient`, so no gradient reaches it even
    when the reward is computed under the trainer's tape. Pass a copy of
    the policy (the MLE model), not the policy being trained, or the
    reward moves with it.

    Args:
        reference_policy: a `keras_selffb.models.PolicyNetwork`. The frozen
            reference language model.
        name: str. The logged name. Defaults to `"fluency"`.

    Example:

    >>> import numpy as np
    >>> from keras_selffb.models import PolicyNetwork
    >>> lm = PolicyNetwork(vocab_size=12, embedding_dim=4, hidden_dim=4)
    >>> # A zero output layer: uniform over the 12 - 4 ids replies can hold
    >>> # (PAD, BOS, SEP and UNK are never sampled), so 1 / 8 at any length.
    >>> lm.head.set_weights([np.zeros_like(w) for w in lm.head.get_weights()])
    >>> reward = FluencyReward(lm)
    >>> values = reward([[1, 7, 4], [1, 7, 4]], [[8, 9, 2, 0], [8, 2, 0, 0]], None)
    >>> [round(float(v), 4) for v in values]
    [0.125, 0.125]

    References:
        The source article, sections 3.1.2 and 4.1 (fluency, relevance and
        informativeness as the reward R).
    """

    default_name = "fluency"

    def __init__(self, reference_policy, name=None):
        super().__init__(name=name)
        if not hasattr(reference_policy, "vocab_size"):
            raise TypeError(
                "FluencyReward needs a PolicyNetwork (a language model with "
                f"`vocab_size`); got {type(reference_policy).__name__}."
            )
        self.reference_policy = reference_policy

    def call(self, prompts, candidates, references):
        prompts = tf.cast(prompts, tf.int32)
        candidates = tf.cast(candidates, tf.int32)
        if prompts.shape.rank != 2:
            raise ValueError(f"FluencyReward needs prompts [B, P]; got shape {prompts.shape}.")
        bias = special_token_bias(self.reference_policy.vocab_size)
        nll, mask, _ = response_token_nll(
            self.reference_policy, prompts, candidates, training=False, logit_bias=bias
        )
        count = tf.reduce_sum(mask, axis=1)
        mean_log_prob = -tf.math.divide_no_nan(tf.reduce_sum(nll, axis=1), count)
        return tf.stop_gradient(tf.where(count > 0, tf.exp(mean_log_prob), 0.0))
