"""`BleuReward`: sentence BLEU of each candidate against its reference, / 100.

Uses the in-graph `keras_selffb.metrics.sentence_bleu` / `sentence_bleu_ids`,
equal to `sacrebleu.sentence_bleu(hyp, [ref], smooth_method=...)` (effective
order, as sacrebleu) divided by 100, so the range is [0, 1]. An empty
candidate scores 0 (brevity penalty 0).
"""

import tensorflow as tf

from keras_selffb.metrics import sentence_bleu, sentence_bleu_ids
from keras_selffb.metrics.bleu import SMOOTH_DEFAULTS
from keras_selffb.rewards.overlap_reward import OverlapReward


class BleuReward(OverlapReward):
    """Sentence BLEU of candidate vs reference on a 0-1 scale.

    Args:
        tokenizer: a `keras_selffb.text` tokenizer or None. With one, the
            texts are compared word by word (`tokenize`); without, the
            content token ids. Defaults to `None`.
        tokenize: str or callable. Word segmentation of the text form:
            `"cjk"`, `"13a"`, `"zh"`, `"char"`, ... Defaults to `"cjk"`.
        smooth_method: str. `"exp"`, `"floor"`, `"add-k"` or `"none"`, as
            sacrebleu. Defaults to `"exp"`.
        name: str. The logged name. Defaults to `"bleu"`.

    Example:

    >>> reward = BleuReward()
    >>> # Content ids "5 6 7 9" against "5 6 7 8" (EOS 2 and padding dropped):
    >>> # sacrebleu.sentence_bleu("5 6 7 9", ["5 6 7 8"], tokenize="none") is 59.4604.
    >>> round(float(reward([[1, 9, 4]], [[5, 6, 7, 9, 2]], [[5, 6, 7, 8, 2, 0]])[0]), 4)
    0.5946

    References:
        Papineni et al. (2002), "BLEU: a Method for Automatic Evaluation of
        Machine Translation"; Post (2018), "A Call for Clarity in Reporting
        BLEU Scores" (sacrebleu).
    """

    default_name = "bleu"

    def __init__(self, tokenizer=None, tokenize="cjk", smooth_method="exp", name=None):
        super().__init__(tokenizer=tokenizer, tokenize=tokenize, name=name)
        if smooth_method not in SMOOTH_DEFAULTS:
            raise ValueError(
                f"Unknown smooth_method {smooth_method!r}; choose one of "
                f"{sorted(SMOOTH_DEFAULTS)}."
            )
        self.smooth_method = smooth_method

    def score_text(self, references, candidates):
        score = sentence_bleu(
            references, candidates, tokenize=self.tokenize, smooth_method=self.smooth_method
        ).score
        return tf.cast(score / 100.0, tf.float32)

    def score_ids(self, references, candidates, reference_mask, candidate_mask):
        score = sentence_bleu_ids(
            references,
            candidates,
            ref_mask=reference_mask,
            hyp_mask=candidate_mask,
            smooth_method=self.smooth_method,
        ).score
        return tf.cast(score / 100.0, tf.float32)
