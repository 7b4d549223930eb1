"""keras-selffb: make Keras text generators better from their own feedback.

A policy generates replies, scores them (ROUGE-L, BLEU, fluency, relevance,
informativeness or any reward) and updates itself by maximum likelihood,
policy gradient or a contrastive margin loss, all through `model.fit`.
"""

__version__ = "0.1.0"

__all__ = ["ResponseGenerator", "SelfFeedbackLoop"]


def __getattr__(name):
    # Lazy: `import keras_selffb` (and the CLI's start) stays free of TensorFlow.
    if name == "SelfFeedbackLoop":
        from keras_selffb.loop import SelfFeedbackLoop

        return SelfFeedbackLoop
    if name == "ResponseGenerator":
        from keras_selffb.generator import ResponseGenerator

        return ResponseGenerator
    raise AttributeError(f"module 'keras_selffb' has no attribute {name!r}")
