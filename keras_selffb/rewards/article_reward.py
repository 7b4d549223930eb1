"""`article_reward`: the source article's reward R = fluency + relevance + informativeness.

Sections 3.1.2 and 4.1 of the article score a generated reply by its
fluency (under the MLE language model), its relevance to the prompt and its
informativeness, and optimise their (weighted) sum.
"""

from keras_selffb.rewards.fluency_reward import FluencyReward
from keras_selffb.rewards.informativeness_reward import InformativenessReward
from keras_selffb.rewards.relevance_reward import RelevanceReward
from keras_selffb.rewards.weighted_reward import WeightedReward


def article_reward(reference_policy, encoder=None, tokenizer=None, weights=(1.0, 1.0, 1.0)):
    """The article's reward: weighted fluency + relevance + informativeness.

    Args:
        reference_policy: a `PolicyNetwork`. The frozen language model of
            `FluencyReward` (pass a copy of the MLE policy).
        encoder: an `LLMEncoder` or None. Relevance by feature cosine with
            one, by unigram overlap with the prompt without. Defaults to
            `None`.
        tokenizer: a `keras_selffb.text` tokenizer or None. With one,
            overlap relevance and informativeness count words (`"cjk"`
            segmentation) instead of token ids. Defaults to `None`.
        weights: three numbers, the weights of fluency, relevance and
            informativeness. Defaults to `(1.0, 1.0, 1.0)`.

    Returns:
        A `WeightedReward` named `"article"` with the components
        `"fluency"`, `"relevance"` and `"informativeness"`; its total lies
        in `[0, sum(weights)]` for non-negative weights.
    """
    weights = tuple(weights)
    if len(weights) != 3:
        raise ValueError(
            "article_reward takes three weights (fluency, relevance, "
            f"informativeness); got {weights!r}."
        )
    parts = [
        FluencyReward(reference_policy),
        RelevanceReward(encoder=encoder, tokenizer=tokenizer),
        InformativenessReward(tokenizer=tokenizer),
    ]
    return WeightedReward(list(zip(parts, weights)), name="article")
