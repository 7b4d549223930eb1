"""Keras callbacks: generation metrics, TensorBoard samples and histograms, targets.

- `GenerationMetrics`: ROUGE-L, BLEU and perplexity of generated validation
  replies into the epoch logs (`val_rouge_l`, `val_bleu`, `val_perplexity`);
- `TextSamples`: a TensorBoard text table of prompts, replies and reward
  components each epoch;
- `RewardHistograms`: TensorBoard histograms of a `ReinforceTrainer`'s
  rewards and advantages;
- `TargetReached`: stops training when a logged value reaches a target.

See docs/callbacks.md.
"""

from keras_selffb.callbacks.generation_metrics import GenerationMetrics
from keras_selffb.callbacks.reward_histograms import RewardHistograms
from keras_selffb.callbacks.target_reached import TargetReached
from keras_selffb.callbacks.text_samples import TextSamples

__all__ = ["GenerationMetrics", "RewardHistograms", "TargetReached", "TextSamples"]
