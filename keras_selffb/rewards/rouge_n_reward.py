"""`RougeNReward`: ROUGE-N F1 of each candidate against its reference.

Uses the in-graph `keras_selffb.metrics.rouge_n` / `rouge_n_ids`, equal to
rouge-score's `rouge1` / `rouge2` / ... F-measure (clipped n-gram overlap,
P = overlap / #candidate n-grams, R = overlap / #reference n-grams,
beta = 1) on the same tokens. Range [0, 1]; 0 when either side has fewer
than `n` tokens.

`rouge_1_reward` and `rouge_2_reward` build the two usual orders; they are
what `keras_selffb.rewards.get("rouge_1")` / `get("rouge_2")` return.
"""

from keras_selffb.metrics import rouge_n, rouge_n_ids
from keras_selffb.metrics.rouge import _check_order
from keras_selffb.rewards.overlap_reward import OverlapReward


class RougeNReward(OverlapReward):
    """ROUGE-N F1 of candidate vs reference, per candidate, in [0, 1].

    Args:
        n: int >= 1. The n-gram order. Defaults to `1`.
        tokenizer: a `keras_selffb.text` tokenizer or None. With one, the
            texts are compared word by word (`tokenize`); without, the
            content token ids (reserved ids, `[UNK]` included, are left
            out). Defaults to `None`.
        tokenize: str or callable. Word segmentation of the text form:
            `"cjk"` (Chinese per character, other scripts per word),
            `"rouge"` (rouge-score's own, which drops all CJK text), ...
            Defaults to `"cjk"`.
        name: str. The logged name. Defaults to `"rouge_<n>"`.

    Example:

    >>> reward = RougeNReward(n=2)
    >>> prompts = [[1, 9, 4]]
    >>> references = [[5, 6, 7, 8, 2]]  # bigrams 56 67 78 (EOS 2 dropped)
    >>> candidates = [[5, 6, 7, 9, 2]]  # bigrams 56 67 79: 2 shared
    >>> round(float(reward(prompts, candidates, references)[0]), 4)
    0.6667

    References:
        Lin (2004), "ROUGE: A Package for Automatic Evaluation of Summaries".
    """

    def __init__(self, n=1, tokenizer=None, tokenize="cjk", name=None):
        _check_order(n)
        self.n = n
        super().__init__(tokenizer=tokenizer, tokenize=tokenize, name=name or f"rouge_{n}")

    def score_text(self, references, candidates):
        return rouge_n(references, candidates, n=self.n, tokenize=self.tokenize).fmeasure

    def score_ids(self, references, candidates, reference_mask, candidate_mask):
        return rouge_n_ids(
            references, candidates, n=self.n, ref_mask=reference_mask, hyp_mask=candidate_mask
        ).fmeasure

    def __repr__(self):
        mode = f"tokenize={self.tokenize!r}" if self.tokenizer is not None else "ids"
        return f"{type(self).__name__}(n={self.n}, name={self.name!r}, {mode})"


def rouge_1_reward(tokenizer=None, tokenize="cjk", name=None):
    """`RougeNReward(n=1)`: unigram ROUGE F1, named `"rouge_1"` by default."""
    return RougeNReward(1, tokenizer=tokenizer, tokenize=tokenize, name=name)


def rouge_2_reward(tokenizer=None, tokenize="cjk", name=None):
    """`RougeNReward(n=2)`: bigram ROUGE F1, named `"rouge_2"` by default."""
    return RougeNReward(2, tokenizer=tokenizer, tokenize=tokenize, name=name)
