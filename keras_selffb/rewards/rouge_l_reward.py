"""`RougeLReward`: ROUGE-L F1 of each candidate against its reference.

Uses the in-graph `keras_selffb.metrics.rouge_l` / `rouge_l_ids`, equal to
rouge-score's `rougeL` F-measure (LCS precision and recall, beta = 1) on the
same tokens. Range [0, 1]; 0 when either side has no token.
"""

from keras_selffb.metrics import rouge_l, rouge_l_ids
from keras_selffb.rewards.overlap_reward import OverlapReward


class RougeLReward(OverlapReward):
    """ROUGE-L F1 of candidate vs reference, per candidate, in [0, 1].

    Args:
        tokenizer: a `keras_selffb.text` tokenizer or None. With one, the
            texts are compared word by word (`tokenize`); without, the
            content token ids (reserved ids, `[UNK]` included, are left
            out). Defaults to `None`.
        tokenize: str or callable. Word segmentation of the text form:
            `"cjk"` (Chinese per character, other scripts per word),
            `"rouge"` (rouge-score's own, which drops all CJK text), ...
            Defaults to `"cjk"`.
        name: str. The logged name. Defaults to `"rouge_l"`.

    Example:

    >>> reward = RougeLReward()
    >>> prompts = [[1, 9, 4]]
    >>> references = [[5, 6, 7, 8, 2]]
    >>> candidates = [[5, 7, 8, 2, 0]]
    >>> round(float(reward(prompts, candidates, references)[0]), 4)
    0.8571

    References:
        Lin (2004), "ROUGE: A Package for Automatic Evaluation of Summaries".
    """

    default_name = "rouge_l"

    def score_text(self, references, candidates):
        return rouge_l(references, candidates, tokenize=self.tokenize).fmeasure

    def score_ids(self, references, candidates, reference_mask, candidate_mask):
        return rouge_l_ids(
            references, candidates, ref_mask=reference_mask, hyp_mask=candidate_mask
        ).fmeasure
