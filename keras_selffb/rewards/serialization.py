"""`get`: rewards by name, the way the CLI and configs refer to them."""

from keras_selffb.rewards.article_reward import article_reward
from keras_selffb.rewards.base import Reward
from keras_selffb.rewards.bleu_reward import BleuReward
from keras_selffb.rewards.chrf_reward import ChrFReward
from keras_selffb.rewards.fluency_reward import FluencyReward
from keras_selffb.rewards.informativeness_reward import InformativenessReward
from keras_selffb.rewards.judge_reward import JudgeReward
from keras_selffb.rewards.novelty_reward import NoveltyReward
from keras_selffb.rewards.python_reward import PythonReward
from keras_selffb.rewards.relevance_reward import RelevanceReward
from keras_selffb.rewards.rouge_l_reward import RougeLReward
from keras_selffb.rewards.rouge_n_reward import rouge_1_reward, rouge_2_reward
from keras_selffb.rewards.weighted_reward import WeightedReward

REWARDS = {
    "rouge_l": RougeLReward,
    "bleu": BleuReward,
    "chrf": ChrFReward,
    "fluency": FluencyReward,
    "relevance": RelevanceReward,
    "informativeness": InformativenessReward,
    "judge_relevance": JudgeReward,
    "novelty": NoveltyReward,
    "weighted": WeightedReward,
    "python": PythonReward,
    "article": article_reward,
    "rouge_1": rouge_1_reward,
    "rouge_2": rouge_2_reward,
}


def get(identifier, **kwargs):
    """Returns a reward from a name, a config dict or an instance.

    Args:
        identifier: str, dict or `Reward`. One of `REWARDS` (`"rouge_l"`,
            `"rouge_1"`, `"rouge_2"`, `"bleu"`, `"chrf"`, `"fluency"`,
            `"relevance"`, `"informativeness"`, `"judge_relevance"`,
            `"weighted"`, `"python"`, `"article"`), a
            `{"class_name": name, "config": {...}}` dict, or a reward,
            returned as is.
        **kwargs: constructor arguments for a named reward, e.g.
            `tokenizer=...`, `reference_policy=...`, `judge=...`, `n=2`.

    Example:

    >>> get("bleu", smooth_method="floor")
    BleuReward(name='bleu', ids)
    """
    if isinstance(identifier, Reward):
        if kwargs:
            raise ValueError(
                f"get() was given a ready reward {identifier!r} and also arguments "
                f"{sorted(kwargs)}; pass a name to build a new one."
            )
        return identifier
    if isinstance(identifier, dict):
        kwargs = {**identifier.get("config", {}), **kwargs}
        identifier = identifier.get("class_name")
    if not isinstance(identifier, str) or identifier not in REWARDS:
        raise ValueError(
            f"Unknown reward {identifier!r}. Valid names: "
            f"{', '.join(repr(name) for name in REWARDS)}; or pass a Reward instance."
        )
    return REWARDS[identifier](**kwargs)
