"""Training: losses written for tf.distribute and the trainers (train_step overrides)."""

from keras_selffb.training.losses import global_sum, response_token_nll, split_packed
from keras_selffb.training.mle_trainer import MLETrainer, unigram_perplexity
from keras_selffb.training.trackers import RatioTracker
from keras_selffb.training.reinforce_trainer import ReinforceTrainer
