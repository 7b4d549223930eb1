"""`OverlapReward`: the base of rewards that score a candidate against its reference.

It owns the two input modes; a subclass only scores, in one small method
per mode:

- with a tokenizer, both sides are detokenized in the graph and compared as
  words (`score_text`, segmentation `tokenize`, default `"cjk"`: Chinese
  per character, other scripts per word). String ops run in `tf.function`
  but do not compile under XLA.
- without one, the ids are compared directly (`score_ids`) on their content
  tokens (`base.content_mask`: no PAD/BOS/EOS/SEP/UNK). This form compiles
  under XLA.
"""

from keras_selffb.rewards.base import Reward, check_tokenizer, content_mask
from keras_selffb.text import segmentation


class OverlapReward(Reward):
    """Base class: scores candidates against references as words or ids.

    Args:
        tokenizer: a `keras_selffb.text` tokenizer or None. With one, the
            reward compares detokenized text; without, token ids. Defaults
            to `None`.
        tokenize: str or callable. Word segmentation of the text form, see
            `keras_selffb.text.segmentation`. Unused without a tokenizer.
            Defaults to `"cjk"`.
        name: str. The logged name. Defaults to the class's `default_name`.
    """

    def __init__(self, tokenizer=None, tokenize="cjk", name=None):
        super().__init__(name=name)
        self.tokenizer = check_tokenizer(tokenizer, type(self).__name__)
        segmentation.get_segmenter(tokenize)  # an unknown name fails here
        self.tokenize = tokenize

    def score_text(self, references, candidates):
        """Scores `tf.string [B]` candidates against references; `[B]`."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_text().")

    def score_ids(self, references, candidates, reference_mask, candidate_mask):
        """Scores id rows `[B, N]` against `[B, R]` under masks; `[B]`."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_ids().")

    def call(self, prompts, candidates, references):
        if self.tokenizer is not None:
            return self.score_text(
                self.tokenizer.detokenize(references), self.tokenizer.detokenize(candidates)
            )
        return self.score_ids(
            references, candidates, content_mask(references), content_mask(candidates)
        )

    def __repr__(self):
        mode = f"tokenize={self.tokenize!r}" if self.tokenizer is not None else "ids"
        return f"{type(self).__name__}(name={self.name!r}, {mode})"
