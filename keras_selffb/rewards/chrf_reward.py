"""`ChrFReward`: sentence chrF of each candidate against its reference, / 100.

Uses the in-graph `keras_selffb.metrics.sentence_chrf` (with a tokenizer:
the detokenized texts, equal to `sacrebleu.CHRF(...).sentence_score(hyp,
[ref]).score / 100`) or `sentence_chrf_ids` (without one: every content
token id is one "character", whitespace included, and this form compiles
under XLA). Range [0, 1]; an empty candidate scores 0. Characters need no
word segmentation, so Chinese, English and accented text are scored alike.
"""

import tensorflow as tf

from keras_selffb.metrics.chrf import BETA, CHAR_ORDER, WORD_ORDER, sentence_chrf, sentence_chrf_ids
from keras_selffb.rewards.overlap_reward import OverlapReward


class ChrFReward(OverlapReward):
    """Sentence chrF (chrF2 by default; chrF++ with `word_order=2`) on a 0-1 scale.

    Args:
        tokenizer: a `keras_selffb.text` tokenizer or None. With one, the
            detokenized texts are scored exactly as sacrebleu's `CHRF`
            (whitespace removed); without, the content token ids, each one
            a character. Defaults to `None`.
        char_order: int. Highest character n-gram order. Defaults to `6`.
        word_order: int. Highest word n-gram order, text form only (2:
            chrF++). Defaults to `0`.
        beta: float. Weight of recall against precision. Defaults to `2`.
        lowercase: bool. Text form: lowercase both sides first. Defaults
            to `False`.
        name: str. The logged name. Defaults to `"chrf"`.

    Example:

    >>> reward = ChrFReward()
    >>> # Content ids "5 6 7 9" against "5 6 7 8" (EOS 2 and padding dropped):
    >>> # sacrebleu.CHRF().sentence_score("abcx", ["abcd"]).score is 47.9167 (ids as letters).
    >>> round(float(reward([[1, 9, 4]], [[5, 6, 7, 9, 2]], [[5, 6, 7, 8, 2, 0]])[0]), 4)
    0.4792

    References:
        Popović (2015), "chrF: character n-gram F-score for automatic MT
        evaluation"; Popović (2017), "chrF++: words helping character
        n-grams"; Post (2018), sacrebleu.
    """

    default_name = "chrf"

    def __init__(self, tokenizer=None, char_order=CHAR_ORDER, word_order=WORD_ORDER, beta=BETA,
                 lowercase=False, name=None):
        super().__init__(tokenizer=tokenizer, tokenize="char", name=name)
        if word_order and tokenizer is None:
            raise ValueError(
                "ChrFReward(word_order > 0) needs a tokenizer: word n-grams are read from the "
                "detokenized text; the id form scores characters only."
            )
        # Checks the orders and beta now rather than in the first training step.
        sentence_chrf(["a"], ["a"], char_order=char_order, word_order=word_order, beta=beta)
        self.char_order, self.word_order, self.beta = char_order, word_order, beta
        self.lowercase = lowercase

    def score_text(self, references, candidates):
        score = sentence_chrf(references, candidates, char_order=self.char_order,
                              word_order=self.word_order, beta=self.beta, lowercase=self.lowercase)
        return tf.cast(score / 100.0, tf.float32)

    def score_ids(self, references, candidates, reference_mask, candidate_mask):
        score = sentence_chrf_ids(references, candidates, ref_mask=reference_mask,
                                  hyp_mask=candidate_mask, char_order=self.char_order, beta=self.beta)
        return tf.cast(score / 100.0, tf.float32)

    def __repr__(self):
        mode = "text" if self.tokenizer is not None else "ids"
        return (f"{type(self).__name__}(name={self.name!r}, {mode}, char_order={self.char_order}, "
                f"word_order={self.word_order}, beta={self.beta})")
