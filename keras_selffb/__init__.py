"""keras-selffb: make Keras text generators better from their own feedback.

A policy generates replies, scores them (ROUGE-L, BLEU, fluency, relevance,
informativeness or any reward) and updates itself by maximum likelihood,
policy gradient or a contrastive margin loss, all through `model.fit`.
"""

__version__ = "0.1.0"
