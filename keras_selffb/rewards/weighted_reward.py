"""`WeightedReward`: a weighted sum of named rewards.

Each sub-reward is one component, logged under its own name
(`reward/<name>`); the value optimised is `sum(weight * component)`. A
nested `WeightedReward` is one component whose value is its own total.
"""

import math
import numbers

import tensorflow as tf

from keras_selffb.rewards.base import Reward


def _weight_pairs(rewards):
    """`(reward, weight)` pairs from a dict or an iterable of pairs."""
    pairs = list(rewards.items()) if isinstance(rewards, dict) else list(rewards)
    if not pairs:
        raise ValueError("WeightedReward needs at least one (reward, weight) pair.")
    checked = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(
                "WeightedReward takes {reward: weight, ...} or [(reward, weight), ...]; "
                f"got the item {pair!r}."
            )
        reward, weight = pair
        if not isinstance(reward, Reward):
            raise TypeError(
                f"WeightedReward components must be Reward instances; got "
                f"{type(reward).__name__} ({reward!r}). Wrap a Python function "
                "in PythonReward."
            )
        number = isinstance(weight, numbers.Real) and not isinstance(weight, bool)
        if not number or not math.isfinite(weight):
            raise ValueError(
                f"The weight of {reward.name!r} must be a finite number; got {weight!r}."
            )
        checked.append((reward, float(weight)))
    names = [reward.name for reward, _ in checked]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"WeightedReward components must have distinct names, they are logged "
            f"as reward/<name>; {duplicates} appear more than once in {names}. "
            "Give each reward its own `name=`."
        )
    return checked


class WeightedReward(Reward):
    """Weighted sum of rewards, each logged as a named component.

    Args:
        rewards: dict `{reward: weight}` or a list of `(reward, weight)`
            pairs. Rewards must have distinct names; weights are finite
            numbers (negative for a penalty).
        name: str. The logged name of the total. Defaults to `"weighted"`.

    Example:

    >>> from keras_selffb.rewards import BleuReward, RougeLReward
    >>> reward = WeightedReward({RougeLReward(): 0.5, BleuReward(): 0.5})
    >>> parts = reward.components([[1, 9, 4]], [[5, 6, 7, 9, 2]], [[5, 6, 7, 8, 2]])
    >>> {name: round(float(value[0]), 4) for name, value in parts.items()}
    {'rouge_l': 0.75, 'bleu': 0.5946}
    >>> round(float(reward.total(parts)[0]), 4)  # 0.5 * 0.75 + 0.5 * 0.5946
    0.6723
    """

    default_name = "weighted"

    def __init__(self, rewards, name=None):
        super().__init__(name=name)
        self.weighted = _weight_pairs(rewards)

    @property
    def weights(self):
        """`{name: weight}` of the components, in order."""
        return {reward.name: weight for reward, weight in self.weighted}

    def components(self, prompts, candidates, references):
        """`{name: values [B]}`, one entry per sub-reward."""
        return {
            reward.name: reward(prompts, candidates, references) for reward, _ in self.weighted
        }

    def component_names(self):
        """The sub-rewards' names, in order."""
        return list(self.weights)

    def total(self, components):
        """`sum(weight * components[name])` over the sub-rewards, `[B]`."""
        missing = [name for name in self.weights if name not in components]
        if missing:
            raise KeyError(
                f"{self.name!r} needs the components {missing}; got {sorted(components)}."
            )
        terms = [
            weight * tf.cast(components[name], tf.float32)
            for name, weight in self.weights.items()
        ]
        return tf.add_n(terms)

    def call(self, prompts, candidates, references):
        return self.total(self.components(prompts, candidates, references))

    def __repr__(self):
        parts = ", ".join(f"{r!r}: {w:g}" for r, w in self.weighted)
        return f"WeightedReward({{{parts}}}, name={self.name!r})"
