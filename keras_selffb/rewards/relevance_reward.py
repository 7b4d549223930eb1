"""`RelevanceReward`: how close a candidate is to its prompt.

The article's relevance term (section 3.1.2), in two forms:

- with an `LLMEncoder`: the cosine similarity of the encoder features of
  the prompt's and the candidate's content tokens (reserved ids are turned
  into padding, which the encoder masks), mapped to [0, 1] as
  `(1 + cos) / 2`. An untrained encoder gives a meaningless number: use the
  one trained by the contrastive stage or pre-trained on the data.
- without one: unigram overlap with the prompt, ROUGE-1 F1 of the candidate
  against the prompt (words with a tokenizer, content ids without). F1 and
  not recall, so that neither pasting the whole prompt into a long reply
  nor echoing one prompt word is a free win.

Either way a candidate (or prompt) with no content token scores 0.
"""

import tensorflow as tf

from keras_selffb.metrics import rouge_n, rouge_n_ids
from keras_selffb.rewards.base import Reward, check_tokenizer, content_mask
from keras_selffb.text import segmentation
from keras_selffb.text.tokenizer import PAD_ID


class RelevanceReward(Reward):
    """Similarity of candidate and prompt, in [0, 1].

    Args:
        encoder: a `keras_selffb.models.LLMEncoder` or None. With one, the
            reward is `(1 + cosine) / 2` of the two feature vectors.
            Defaults to `None` (unigram overlap).
        tokenizer: a `keras_selffb.text` tokenizer or None. Without an
            encoder, compare words of the detokenized texts rather than
            token ids. Unused with an encoder. Defaults to `None`.
        tokenize: str or callable. Word segmentation of the text form.
            Defaults to `"cjk"`.
        name: str. The logged name. Defaults to `"relevance"`.

    Example:

    >>> reward = RelevanceReward()
    >>> prompts = [[0, 1, 5, 6, 7, 4]]
    >>> candidates = [[6, 7, 8, 9, 2, 0]]
    >>> round(float(reward(prompts, candidates, candidates)[0]), 4)
    0.5714
    """

    default_name = "relevance"

    def __init__(self, encoder=None, tokenizer=None, tokenize="cjk", name=None):
        super().__init__(name=name)
        if encoder is not None and not callable(encoder):
            raise TypeError(
                "RelevanceReward's encoder must be a model mapping ids (B, T) to "
                f"features (B, H), e.g. an LLMEncoder; got {type(encoder).__name__}."
            )
        self.encoder = encoder
        self.tokenizer = check_tokenizer(tokenizer, "RelevanceReward")
        segmentation.get_segmenter(tokenize)  # an unknown name fails here
        self.tokenize = tokenize

    def call(self, prompts, candidates, references):
        if self.encoder is not None:
            return self._cosine(prompts, candidates)
        if self.tokenizer is not None:
            return rouge_n(
                self.tokenizer.detokenize(prompts),
                self.tokenizer.detokenize(candidates),
                n=1,
                tokenize=self.tokenize,
            ).fmeasure
        return rouge_n_ids(
            prompts,
            candidates,
            n=1,
            ref_mask=content_mask(prompts),
            hyp_mask=content_mask(candidates),
        ).fmeasure

    def _cosine(self, prompts, candidates):
        prompt_mask = content_mask(prompts)
        candidate_mask = content_mask(candidates)
        # Reserved ids become padding, which the encoder masks out.
        prompt_ids = tf.where(prompt_mask, tf.cast(prompts, tf.int32), PAD_ID)
        candidate_ids = tf.where(candidate_mask, tf.cast(candidates, tf.int32), PAD_ID)
        a = tf.cast(self.encoder(prompt_ids, training=False), tf.float32)
        b = tf.cast(self.encoder(candidate_ids, training=False), tf.float32)
        dot = tf.reduce_sum(a * b, axis=-1)
        cosine = tf.math.divide_no_nan(dot, tf.norm(a, axis=-1) * tf.norm(b, axis=-1))
        score = (1.0 + tf.clip_by_value(cosine, -1.0, 1.0)) / 2.0
        has_content = tf.reduce_any(prompt_mask, axis=1) & tf.reduce_any(candidate_mask, axis=1)
        return tf.stop_gradient(tf.where(has_content, score, 0.0))
