"""`JudgeReward`: relevance by a learned judge, relative to the batch's other prompts.

A reward that only asks "does this reply fit its prompt?" pays a generic
reply ("I don't know.") that fits every prompt a little. This one asks how
much better the reply fits ITS prompt than the other prompts of the batch,
a pointwise-mutual-information-like score under a `RelevanceJudge` (the
dual encoder trained by `keras_selffb.training.train_judge`).

With `S[j, i]` the judge's logit for prompt `j` and candidate `i`, and the
batch holding K candidates per prompt (prompt rows repeated):

    p_i = exp(S[i, i]) / (exp(S[i, i]) + sum_{j: prompt_j != prompt_i} w_j exp(S[j, i]))
    N_i = 1 + sum_{j: prompt_j != prompt_i} w_j          (distinct prompts in the batch)
    reward_i = clip(log(N_i * p_i) / log(N_i), 0, 1)

`w_j` is 1 / (rows holding prompt `j`): each distinct prompt counts once.
`p_i` is the judge's posterior that candidate `i` answers its own prompt
under a uniform prior over the batch's distinct prompts; `log(N_i p_i)` is
the pointwise mutual information of candidate and prompt, and dividing by
its maximum `log N_i` puts it in [0, 1]: a reply that fits every prompt
equally (`p_i = 1 / N_i`) earns 0, one the judge assigns to its own prompt
with certainty earns 1. A batch of a single distinct prompt gives no
contrast and every reward is 0, as is the reward of a candidate (or a
prompt) without content tokens.
"""

import tensorflow as tf

from keras_selffb.models.judge import check_judge, content_ids
from keras_selffb.rewards.base import Reward, content_mask

# Excluded terms of the log-sum-exp; finite so nothing turns NaN.
_EXCLUDED = -1e9


class JudgeReward(Reward):
    """How much better a candidate fits its own prompt than the batch's others, in [0, 1].

    Prompts are compared by their content tokens (reserved ids ignored), as
    the judge reads them. The judge runs with `training=False` and the
    result is wrapped in `tf.stop_gradient`. Save the judge with the run
    (`judge.save("judge.keras")`; it reloads with `keras.saving.load_model`).

    Args:
        judge: a `keras_selffb.models.RelevanceJudge`, or any object with a
            `similarity(prompt_ids, reply_ids)` method returning logits
            `[P, R]`.
        name: str. The logged name. Defaults to `"judge_relevance"`.

    Example:

    >>> import numpy as np
    >>> from keras_selffb.models import RelevanceJudge
    >>> judge = RelevanceJudge(vocab_size=12, embedding_dim=8, hidden_dim=8, projection_dim=8)
    >>> reward = JudgeReward(judge)
    >>> prompts = [[1, 5, 4], [1, 5, 4], [1, 6, 4]]  # two candidates for prompt "5"
    >>> candidates = [[7, 2, 0], [2, 0, 0], [8, 9, 2]]  # the second one is empty
    >>> values = reward(prompts, candidates, None).numpy()
    >>> bool(np.all((values >= 0) & (values <= 1))), float(values[1])
    (True, 0.0)
    >>> # One distinct prompt: nothing to contrast with, every reward is 0.
    >>> reward(prompts[:2], candidates[:2], None).numpy().tolist()
    [0.0, 0.0]
    """

    default_name = "judge_relevance"

    def __init__(self, judge, name=None):
        super().__init__(name=name)
        self.judge = check_judge(judge, "JudgeReward")

    def call(self, prompts, candidates, references):
        prompts = tf.cast(prompts, tf.int32)
        candidates = tf.cast(candidates, tf.int32)
        if prompts.shape.rank != 2 or candidates.shape.rank != 2:
            raise ValueError(
                f"JudgeReward needs prompts [B, P] and candidates [B, N]; got shapes "
                f"{prompts.shape} and {candidates.shape}."
            )
        # logits[j, i]: prompt j, candidate i.
        logits = tf.cast(self.judge.similarity(prompts, candidates, training=False), tf.float32)
        keys = content_ids(prompts)
        same = tf.reduce_all(tf.equal(keys[:, None, :], keys[None, :, :]), axis=-1)
        rows_per_prompt = tf.reduce_sum(tf.cast(same, tf.float32), axis=1)  # [B], >= 1
        other = tf.logical_not(same)  # symmetric; excludes j = i
        # Terms of the denominator in log space: own prompt, w_j exp(S[j, i]) for others.
        log_weight = -tf.math.log(rows_per_prompt)[:, None]
        eye = tf.eye(tf.shape(logits)[0], dtype=tf.bool)
        terms = tf.where(eye, logits, tf.where(other, logits + log_weight, _EXCLUDED))
        log_p = tf.linalg.diag_part(logits) - tf.reduce_logsumexp(terms, axis=0)
        weights = tf.where(other, 1.0 / rows_per_prompt[:, None], 0.0)
        num_prompts = 1.0 + tf.reduce_sum(weights, axis=0)
        # N_i is an integer up to rounding: > 1.5 means another prompt exists.
        has_rival = num_prompts > 1.5
        log_n = tf.math.log(tf.where(has_rival, num_prompts, 2.0))
        score = tf.clip_by_value((log_n + log_p) / log_n, 0.0, 1.0)
        has_content = tf.reduce_any(content_mask(candidates), axis=1) & tf.reduce_any(
            content_mask(prompts), axis=1
        )
        return tf.stop_gradient(tf.where(has_rival & has_content, score, 0.0))
