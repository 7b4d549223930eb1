"""Self-BLEU of a set of texts (Zhu et al., 2018, Texygen): their similarity.

Self-BLEU is the mean, over the texts, of the sentence BLEU of each text
(the hypothesis) against all the other texts (the references). It is 1 when
every text is the same (of at least `max_order` words) and low when the
texts share few n-grams, so a rising self-BLEU flags generated replies
collapsing onto one generic reply.

Each term equals Texygen's, i.e. nltk's
`sentence_bleu(others, text, weights=(1 / max_order,) * max_order,
smoothing_function=SmoothingFunction().method1)` on the texts segmented with
`tokenize` (`"cjk"` by default, as `distinct_n`):

- modified precision of order n: hypothesis n-gram counts clipped by the
  largest count of that n-gram in any one other text, over
  `max(1, number of hypothesis n-grams)`;
- `method1`: a precision whose numerator is 0 becomes `0.1 / denominator`.
  A hypothesis shorter than n words has numerator 0 and denominator 1, so
  its order-n precision is 0.1 (nltk does not re-weigh: `auto_reweigh` is
  off), e.g. all-identical texts of 2 words score `0.1 ** 0.5`, not 1;
- the score is 0 when no unigram matches, which includes an empty
  hypothesis (its brevity penalty would be 0 as well);
- brevity penalty `exp(1 - r / c)` when the hypothesis length `c` is not
  above `r`, the length of the other text closest to `c` (ties go to the
  shorter one; an empty text is a reference of length 0), else 1;
- the score is `bp * exp(sum_n log(p_n) / max_order)`.

The O(N^2) pairs are never formed: for every n-gram the largest and second
largest count over the texts (and the text holding the largest) give the
largest count over the *other* texts in O(1), and the sorted lengths give
the closest other length, so the cost is a sort of all n-grams. It runs on
the host (NumPy) after one in-graph segmentation call: an evaluation metric,
not a reward.
"""

import numpy as np
import tensorflow as tf

from keras_selffb.text import segmentation

_EPSILON = 0.1  # nltk SmoothingFunction().method1's default


def _token_ids(texts, tokenize):
    """Segment `texts`; return flat token ids (exact: equal strings, equal ids) and lengths."""
    tokens = segmentation.get_segmenter(tokenize)(segmentation.as_string_batch(texts))
    _, ids = tf.unique(tokens.flat_values, out_idx=tf.int64)
    return ids.numpy(), tokens.row_lengths().numpy().astype(np.int64)


def _closest_other_length(lengths):
    """For each text, the length of the closest other text (ties: the shorter); N >= 2."""
    ordered = np.sort(lengths)
    count = len(ordered)
    low = np.searchsorted(ordered, lengths, side="left")
    high = np.searchsorted(ordered, lengths, side="right")
    below = np.where(low > 0, ordered[np.maximum(low - 1, 0)], -1)
    above = np.where(high < count, ordered[np.minimum(high, count - 1)], -1)
    # The text's own length is in `ordered`; another text of that length is the closest.
    closest = np.where(
        below < 0, above,
        np.where(above < 0, below, np.where(lengths - below <= above - lengths, below, above)))
    return np.where(high - low >= 2, lengths, closest)


def _clipped_matches(grams, rows, num_texts):
    """Per text, the sum over its n-grams of min(count, largest count in another text).

    Args:
        grams: int64 `[G]`. The id of each n-gram occurrence.
        rows: int64 `[G]`. The text each occurrence is in.
        num_texts: int.
    """
    if grams.size == 0:
        return np.zeros(num_texts)
    # Count of each (n-gram, text) pair, sorted by n-gram then count, largest first.
    pairs, counts = np.unique(grams * num_texts + rows, return_counts=True)
    gram, row = pairs // num_texts, pairs % num_texts
    order = np.lexsort((-counts, gram))
    gram, row, counts = gram[order], row[order], counts[order]
    first = np.flatnonzero(np.r_[True, gram[1:] != gram[:-1]])
    size = np.diff(np.r_[first, gram.size])
    group = np.repeat(np.arange(first.size), size)
    largest, holder = counts[first], row[first]
    second = np.where(size >= 2, counts[np.minimum(first + 1, gram.size - 1)], 0)
    # Largest count over the other texts: the largest, unless this text holds it.
    others = np.where(row == holder[group], second[group], largest[group])
    return np.bincount(row, weights=np.minimum(counts, others), minlength=num_texts)


def self_bleu(texts, max_order=4, tokenize="cjk"):
    """Mean sentence BLEU of each text against all the others, in [0, 1].

    Args:
        texts: list of str (or a `tf.string` tensor `[N]`).
        max_order: int. Highest n-gram order; the weights are uniform over
            orders 1..max_order. Defaults to `4`.
        tokenize: str or callable. Segmentation, see
            `keras_selffb.text.segmentation`. Defaults to `"cjk"` (as
            `distinct_n`).

    Returns:
        float. 0.0 for fewer than two texts.

    Example:

    >>> self_bleu(["the cat sat on the mat"] * 3)
    1.0
    >>> round(self_bleu(["the cat sat on the mat", "the cat sat on a mat", "a dog ran"]), 4)
    0.3805
    """
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"`max_order` must be a positive int, got {max_order!r}.")
    segmentation.get_segmenter(tokenize)  # unknown names fail first
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    if isinstance(texts, (list, tuple)) and len(texts) < 2:
        return 0.0
    tokens, lengths = _token_ids(texts, tokenize)
    num_texts = lengths.size
    if num_texts < 2:
        return 0.0
    starts = np.cumsum(lengths) - lengths
    rows = np.repeat(np.arange(num_texts, dtype=np.int64), lengths)
    positions = np.arange(tokens.size, dtype=np.int64) - starts[rows]
    log_sum = np.zeros(num_texts)
    matched_unigram = np.zeros(num_texts, dtype=bool)
    vocabulary = int(tokens.max()) + 1 if tokens.size else 1
    grams = tokens  # id of the n-gram starting at each position (order n)
    for n in range(1, max_order + 1):
        valid = positions + n <= lengths[rows]
        if n > 1:
            # An n-gram is an (n-1)-gram and the token after it; number them densely.
            starts_n = np.flatnonzero(valid)
            _, dense = np.unique(grams[starts_n] * vocabulary + tokens[starts_n + n - 1],
                                 return_inverse=True)
            grams = np.full(tokens.size, -1, dtype=np.int64)
            grams[starts_n] = dense.reshape(-1)
        matches = _clipped_matches(grams[valid], rows[valid], num_texts)
        totals = np.maximum(lengths - n + 1, 0)
        denominators = np.maximum(totals, 1).astype(np.float64)
        precisions = np.where(matches > 0, matches, _EPSILON) / denominators
        log_sum += (1.0 / max_order) * np.log(precisions)
        if n == 1:
            matched_unigram = matches > 0
    closest = _closest_other_length(lengths).astype(np.float64)
    hyp = lengths.astype(np.float64)
    brevity = np.where(hyp > closest, 1.0,
                       np.exp(1.0 - closest / np.where(hyp > 0, hyp, 1.0)))
    scores = np.where(matched_unigram, brevity * np.exp(log_sum), 0.0)
    return float(np.mean(scores))
