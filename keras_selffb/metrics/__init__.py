"""In-graph text metrics: ROUGE, BLEU, perplexity, distinct-n; host-side self-BLEU.

Pure functions (string forms for `tf.function`, id forms for XLA too) and
Keras metrics whose state is sums, so they work in `fit`, `evaluate` and
under `tf.distribute`. See docs/metrics.md for what each one matches.
"""

from keras_selffb.metrics.bleu import SMOOTH_DEFAULTS
from keras_selffb.metrics.bleu import BLEUScore
from keras_selffb.metrics.bleu import BLEUStatistics
from keras_selffb.metrics.bleu import bleu_from_statistics
from keras_selffb.metrics.bleu import bleu_statistics
from keras_selffb.metrics.bleu import bleu_statistics_ids
from keras_selffb.metrics.bleu import corpus_bleu
from keras_selffb.metrics.bleu import sentence_bleu
from keras_selffb.metrics.bleu import sentence_bleu_ids
from keras_selffb.metrics.bleu_metric import Bleu
from keras_selffb.metrics.chrf import CHRFStatistics
from keras_selffb.metrics.chrf import chrf
from keras_selffb.metrics.chrf import chrf_from_statistics
from keras_selffb.metrics.chrf import chrf_statistics
from keras_selffb.metrics.chrf import chrf_statistics_ids
from keras_selffb.metrics.chrf import sentence_chrf
from keras_selffb.metrics.chrf import sentence_chrf_ids
from keras_selffb.metrics.distinct import distinct_n
from keras_selffb.metrics.perplexity import perplexity
from keras_selffb.metrics.perplexity import perplexity_statistics
from keras_selffb.metrics.perplexity_metric import Perplexity
from keras_selffb.metrics.rouge import RougeScore
from keras_selffb.metrics.rouge import rouge_l
from keras_selffb.metrics.rouge import rouge_l_ids
from keras_selffb.metrics.rouge import rouge_n
from keras_selffb.metrics.rouge import rouge_n_ids
from keras_selffb.metrics.rouge_l_metric import RougeL
from keras_selffb.metrics.self_bleu import self_bleu

__all__ = [
    "BLEUScore",
    "BLEUStatistics",
    "Bleu",
    "CHRFStatistics",
    "Perplexity",
    "RougeL",
    "RougeScore",
    "SMOOTH_DEFAULTS",
    "bleu_from_statistics",
    "bleu_statistics",
    "bleu_statistics_ids",
    "chrf",
    "chrf_from_statistics",
    "chrf_statistics",
    "chrf_statistics_ids",
    "corpus_bleu",
    "distinct_n",
    "perplexity",
    "perplexity_statistics",
    "rouge_l",
    "rouge_l_ids",
    "rouge_n",
    "rouge_n_ids",
    "self_bleu",
    "sentence_bleu",
    "sentence_bleu_ids",
    "sentence_chrf",
    "sentence_chrf_ids",
]
