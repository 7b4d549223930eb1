"""Rewards: callables `reward(prompts, candidates, references) -> float32 [B]`.

Overlap with the reference (`RougeLReward`, `BleuReward`), the article's
fluency / relevance / informativeness terms and their preset sum
(`article_reward`), relevance by a learned judge (`JudgeReward`), novelty against the
batch's replies to other prompts (`NoveltyReward`), a learned classifier's
P(real) (`DiscriminatorReward`), per-token values of any of them by
Monte-Carlo roll-outs (`RolloutReward`),
weighted sums (`WeightedReward`) and host-Python functions
(`PythonReward`). All run inside `tf.function`; see
docs/rewards.md for ranges and which ones compile under XLA.
"""

from keras_selffb.rewards.article_reward import article_reward
from keras_selffb.rewards.base import Reward, content_mask
from keras_selffb.rewards.bleu_reward import BleuReward
from keras_selffb.rewards.code_execution import CodeExecutionReward, run_sandboxed
from keras_selffb.rewards.chrf_reward import ChrFReward
from keras_selffb.rewards.discriminator_reward import DiscriminatorReward
from keras_selffb.rewards.fluency_reward import FluencyReward
from keras_selffb.rewards.informativeness_reward import InformativenessReward
from keras_selffb.rewards.judge_reward import JudgeReward
from keras_selffb.rewards.novelty_reward import NoveltyReward
from keras_selffb.rewards.python_reward import PythonReward
from keras_selffb.rewards.relevance_reward import RelevanceReward
from keras_selffb.rewards.rollout_reward import RolloutReward
from keras_selffb.rewards.rouge_l_reward import RougeLReward
from keras_selffb.rewards.rouge_n_reward import RougeNReward, rouge_1_reward, rouge_2_reward
from keras_selffb.rewards.serialization import REWARDS, get
from keras_selffb.rewards.weighted_reward import WeightedReward

__all__ = [
    "REWARDS",
    "BleuReward",
    "CodeExecutionReward",
    "ChrFReward",
    "DiscriminatorReward",
    "FluencyReward",
    "InformativenessReward",
    "JudgeReward",
    "NoveltyReward",
    "PythonReward",
    "RelevanceReward",
    "Reward",
    "RolloutReward",
    "RougeLReward",
    "RougeNReward",
    "WeightedReward",
    "article_reward",
    "content_mask",
    "get",
    "run_sandboxed",
    "rouge_1_reward",
    "rouge_2_reward",
]
