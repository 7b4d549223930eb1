"""Training: losses written for tf.distribute and the trainers (train_step overrides)."""

from keras_selffb.training.losses import global_sum, response_token_nll, split_packed
from keras_selffb.training.mle_trainer import MLETrainer, unigram_perplexity, weighted_rows
from keras_selffb.training.trackers import RatioTracker
from keras_selffb.training.reinforce_trainer import ReinforceTrainer
from keras_selffb.training.dpo_trainer import DPOTrainer, dpo_loss, sequence_log_probs
from keras_selffb.training.contrastive import (
    feature_distance,
    margin_loss,
    ranking_loss,
    rouge_distance,
    rouge_distance_ids,
    select_pairs,
)
from keras_selffb.training.contrastive_trainer import ContrastiveTrainer
from keras_selffb.training.contrastive_stage import run_contrastive_stage
from keras_selffb.training.ranking_eval import ranking_agreement, spearman
from keras_selffb.training.judge_training import JudgeTrainer, retrieval_accuracy, train_judge
