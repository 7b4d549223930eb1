"""`InformativenessReward`: distinct n-grams, scaled down for short replies.

The article's informativeness term (section 3.1.2), made hard to game:

    distinct_n(candidate) * min(1, length / target_length)

`distinct_n` is the fraction of the candidate's n-grams that are distinct
(Li et al., 2016, per candidate), so a reply that repeats one token scores
low; the length factor stops empty and one-word replies, whose few n-grams
are trivially distinct, from winning. Range [0, 1]; an empty candidate, or
one shorter than `n` tokens, scores 0.
"""

import tensorflow as tf

from keras_selffb.metrics import distinct_n
from keras_selffb.rewards.base import Reward, check_tokenizer, word_ids
from keras_selffb.text import segmentation


class InformativenessReward(Reward):
    """Distinct-n ratio times a length term, per candidate, in [0, 1].

    Args:
        n: int. N-gram order of the distinct ratio. Defaults to `2`.
        target_length: number. Length (tokens or words) from which the
            length term is 1. Defaults to `10`.
        tokenizer: a `keras_selffb.text` tokenizer or None. With one, count
            words of the detokenized candidate (`tokenize`); without, its
            content token ids. Defaults to `None`.
        tokenize: str or callable. Word segmentation of the text form.
            Defaults to `"cjk"`.
        name: str. The logged name. Defaults to `"informativeness"`.

    Example:

    >>> reward = InformativenessReward(n=2, target_length=10)
    >>> candidates = [[5, 6, 7, 8, 9, 2], [5, 5, 5, 5, 5, 2]]
    >>> [round(float(x), 4) for x in reward(None, candidates, None)]
    [0.5, 0.125]

    References:
        Li et al. (2016), "A Diversity-Promoting Objective Function for
        Neural Conversation Models".
    """

    default_name = "informativeness"

    def __init__(self, n=2, target_length=10, tokenizer=None, tokenize="cjk", name=None):
        super().__init__(name=name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive int, got {n!r}.")
        number = isinstance(target_length, (int, float)) and not isinstance(target_length, bool)
        if not number or not target_length > 0:
            raise ValueError(f"`target_length` must be a positive number, got {target_length!r}.")
        self.n = n
        self.target_length = target_length
        self.tokenizer = check_tokenizer(tokenizer, "InformativenessReward")
        segmentation.get_segmenter(tokenize)  # an unknown name fails here
        self.tokenize = tokenize

    def call(self, prompts, candidates, references):
        ids, mask, lengths = word_ids(candidates, self.tokenizer, self.tokenize)
        ratio = distinct_n(ids, n=self.n, mask=mask, per_example=True)
        length_term = tf.minimum(1.0, tf.cast(lengths, tf.float32) / float(self.target_length))
        return ratio * length_term
