"""`NoveltyReward`: the share of a reply's n-grams that replies to OTHER prompts do not use.

A per-reply diversity term (`InformativenessReward`) cannot see the failure
that matters in dialogue rounds: every prompt getting the same generic reply
("I am a ..."), each of which is fine on its own. This reward looks across
the batch. With the batch holding K candidates per prompt (prompt rows
repeated, as the trainers sample them), candidate `i` scores

    novelty_i = |{g in ngrams(i) : no candidate j with prompt_j != prompt_i has g}| / |ngrams(i)|

counting n-gram occurrences (a repeated n-gram counts each time). Candidates
of the same prompt may share n-grams freely: only what is shared with the
replies to other prompts is generic. Range [0, 1]; a candidate with fewer
than `n` tokens, and every candidate of a batch with one distinct prompt,
scores 0 (there is nothing to compare it with, and short replies must not
win by having no n-grams). It targets the corpus-level `distinct_2`,
`self_bleu` and `distinct_replies` that `ResponseGenerator.evaluate`
reports (docs/dialogue-quality.md).
"""

import tensorflow as tf

from keras_selffb.rewards.base import Reward, check_tokenizer, content_mask, word_ids
from keras_selffb.text import segmentation


class NoveltyReward(Reward):
    """Share of a candidate's n-grams absent from the batch's replies to other prompts, in [0, 1].

    Args:
        n: int. N-gram order. Defaults to `2`.
        tokenizer: a `keras_selffb.text` tokenizer or None. With one, compare
            words of the detokenized candidates (`tokenize`); without, their
            content token ids. Defaults to `None`.
        tokenize: str or callable. Word segmentation of the text form.
            Defaults to `"cjk"`.
        name: str. The logged name. Defaults to `"novelty"`.

    Example:

    >>> reward = NoveltyReward(n=2)
    >>> prompts = [[1, 5, 4], [1, 5, 4], [1, 6, 4]]
    >>> candidates = [[7, 8, 9, 2], [7, 8, 2, 0], [7, 8, 10, 2]]
    >>> [round(float(x), 4) for x in reward(prompts, candidates, None)]
    [0.5, 0.0, 0.5]
    """

    default_name = "novelty"

    def __init__(self, n=2, tokenizer=None, tokenize="cjk", name=None):
        super().__init__(name=name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive int, got {n!r}.")
        self.n = n
        self.tokenizer = check_tokenizer(tokenizer, "NoveltyReward")
        segmentation.get_segmenter(tokenize)  # an unknown name fails here
        self.tokenize = tokenize

    def call(self, prompts, candidates, references):
        if prompts is None:
            raise ValueError("NoveltyReward compares candidates across prompts: it needs the prompts.")
        ids, mask, _ = word_ids(candidates, self.tokenizer, self.tokenize)
        ids = tf.cast(ids, tf.int64)
        n = self.n
        # n - 1 padding columns, so a window exists even for rows shorter than n.
        ids = tf.pad(ids, [[0, 0], [0, n - 1]])
        mask = tf.pad(mask, [[0, 0], [0, n - 1]])
        width = tf.shape(ids)[1] - (n - 1)
        valid = tf.ones_like(mask[:, :width])
        same = None
        for k in range(n):
            window = ids[:, k:k + width]  # [B, L]: the k-th token of every n-gram
            valid &= mask[:, k:k + width]
            equal = tf.equal(window[:, :, None, None], window[None, None, :, :])  # [B, L, B, L]
            same = equal if same is None else same & equal
        prompts = tf.cast(prompts, tf.int32)
        prompt_mask = content_mask(prompts)
        prompt_ids = tf.where(prompt_mask, prompts, -1)
        other_prompt = ~tf.reduce_all(tf.equal(prompt_ids[:, None, :], prompt_ids[None, :, :]), axis=-1)  # [B, B]
        shared = same & valid[None, None, :, :] & other_prompt[:, None, :, None]
        used_elsewhere = tf.reduce_any(shared, axis=[2, 3]) & valid  # [B, L]
        total = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1)
        novel = total - tf.reduce_sum(tf.cast(used_elsewhere, tf.float32), axis=1)
        has_other = tf.reduce_any(other_prompt, axis=1)
        return tf.where((total > 0) & has_other, novel / tf.maximum(total, 1.0), 0.0)
