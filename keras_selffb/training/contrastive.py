"""Contrastive self-feedback, the pure parts: distances, pairs and the two losses.

Pure functions on tensors, each tested against hand-computed values.

- `rouge_distance` / `rouge_distance_ids`: the article's example distance
  (section 4.2) `d(x, y) = 1 - ROUGE-L F(x, y)`, on text or on token ids.
  ROUGE-L F is symmetric, so `d` is too.
- `feature_distance`: `1 - cos(a, b)` or `||a - b||_2` between features.
- `rank_order` / `select_pairs`: candidates of one prompt ranked by a
  quality score, and the (positive, negative) pairs taken from them.
- `margin_loss`: the article's loss per pair (section 4.2),
  `d(x, x+) + max(0, m - d(x, x-))`: the contrastive loss of Hadsell, Chopra
  and LeCun (2006), with `d` where they square it.
- `ranking_loss_terms` / `ranking_loss`: BRIO's pairwise ranking loss
  (Liu et al. 2022) on the model's scores of candidates sorted by quality,
  `sum_{i<j} max(0, s_j - s_i + (j - i) * margin)`, each gap's pairs
  averaged, then summed over gaps (as BRIO's `RankingLoss`).

Ranking convention, everywhere: candidates are ordered by quality, best
first; equal scores keep the candidate order (the earlier ranks higher).
Two candidates form a pair only if the better one scores MORE than
`min_score_gap` above the other, so ties never make a pair.
"""

import collections

import tensorflow as tf

from keras_selffb.metrics import rouge_l, rouge_l_ids
from keras_selffb.rewards.base import content_mask

DISTANCES = ("cosine", "euclidean")


def rouge_distance(x, y, tokenize="cjk"):
    """`1 - ROUGE-L F(x, y)` for each pair of strings; float32 `[B]` in [0, 1].

    The article's distance (section 4.2). Two texts with no word in common,
    or an empty one, are at distance 1.

    Args:
        x: list of str or `tf.string` tensor `[B]`.
        y: list of str or `tf.string` tensor `[B]`.
        tokenize: str or callable. Word segmentation, see
            `keras_selffb.text.segmentation`; `"cjk"` scores Chinese per
            character. Defaults to `"cjk"`.

    Example:

    >>> d = rouge_distance(["the cat sat on the mat", "今天天气很好"],
    ...                    ["the cat on a mat", "今天天气不错"])
    >>> [round(float(v), 4) for v in d]
    [0.2727, 0.3333]
    """
    return 1.0 - rouge_l(x, y, tokenize=tokenize).fmeasure


def rouge_distance_ids(x_ids, y_ids, x_mask=None, y_mask=None):
    """`1 - ROUGE-L F` for each pair of id rows; float32 `[B]` (XLA-compatible).

    Args:
        x_ids: int tensor `[B, Tx]`.
        y_ids: int tensor `[B, Ty]`.
        x_mask: optional bool `[B, Tx]`, True on the tokens compared.
            Defaults to the content tokens (`rewards.content_mask`: no PAD,
            BOS, EOS, UNK or SEP).
        y_mask: optional bool `[B, Ty]`. Defaults to the content tokens.

    Example:

    >>> d = rouge_distance_ids([[5, 6, 7, 8, 2]], [[5, 7, 8, 2, 0]])
    >>> round(float(d[0]), 4)
    0.1429
    """
    x_ids = tf.convert_to_tensor(x_ids)
    y_ids = tf.convert_to_tensor(y_ids)
    x_mask = content_mask(x_ids) if x_mask is None else x_mask
    y_mask = content_mask(y_ids) if y_mask is None else y_mask
    return 1.0 - rouge_l_ids(x_ids, y_ids, ref_mask=x_mask, hyp_mask=y_mask).fmeasure


def check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(f"Unknown distance {distance!r}; choose one of {DISTANCES}.")
    return distance


def feature_distance(a, b, distance="cosine"):
    """Distance between feature rows `[..., H]`; float32 `[...]`.

    Args:
        a: float tensor `[..., H]`.
        b: float tensor `[..., H]`, broadcastable against `a`.
        distance: str. `"cosine"`: `1 - cos(a, b)`, in [0, 2], a zero
            vector counts as orthogonal to everything (distance 1);
            `"euclidean"`: `||a - b||_2`. Defaults to `"cosine"`.
    """
    check_distance(distance)
    a = tf.cast(a, tf.float32)
    b = tf.cast(b, tf.float32)
    if distance == "cosine":
        cosine = tf.reduce_sum(tf.math.l2_normalize(a, -1) * tf.math.l2_normalize(b, -1), -1)
        return 1.0 - cosine
    squared = tf.reduce_sum(tf.square(a - b), -1)
    # sqrt has an infinite slope at 0: a floor keeps the gradient finite
    # for identical rows (distance 1e-6 instead of 0).
    return tf.sqrt(tf.maximum(squared, 1e-12))


def margin_loss(positive_distance, negative_distance, margin):
    """The article's contrastive loss per pair: `d+ + max(0, m - d-)`.

    Args:
        positive_distance: float tensor, `d(x, x+)`.
        negative_distance: float tensor, `d(x, x-)`, same shape.
        margin: float >= 0. `m`: negatives farther than `m` cost nothing.

    Example:

    >>> [round(float(v), 4) for v in margin_loss([0.1, 0.0], [0.2, 0.9], 0.5)]
    [0.4, 0.0]

    References:
        Hadsell, Chopra and LeCun (2006), "Dimensionality Reduction by
        Learning an Invariant Mapping".
    """
    check_margin(margin)
    positive_distance = tf.cast(positive_distance, tf.float32)
    negative_distance = tf.cast(negative_distance, tf.float32)
    return positive_distance + tf.nn.relu(margin - negative_distance)


def check_margin(margin):
    if margin < 0:
        raise ValueError(f"margin must be >= 0; got {margin}.")
    return float(margin)


def rank_order(scores):
    """Candidate indices of each row of `scores [G, K]`, best first (ties: earlier first)."""
    return tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)


def _num_candidates(scores):
    count = scores.shape[-1]
    if count is None:
        raise ValueError("The number of candidates per prompt must be known statically.")
    if count < 2:
        raise ValueError(
            f"Contrastive training needs at least 2 candidates per prompt (K >= 2); got K={count}."
        )
    return count


def select_pairs(scores, num_pairs=1, min_score_gap=0.0):
    """Positive and negative candidates of each prompt: top-k against bottom-k.

    The p-th best candidate is paired with the p-th worst (best against
    worst for `num_pairs=1`); the rank order is `rank_order`'s, so tied
    candidates are never both the positive and the negative.

    Args:
        scores: float tensor `[G, K]`, the quality of K candidates for each
            of G prompts.
        num_pairs: int. Pairs per prompt, `1 <= num_pairs <= K // 2`.
            Defaults to `1`.
        min_score_gap: float >= 0. A pair counts only if its positive scores
            more than this above its negative. Defaults to `0.0`.

    Returns:
        `(positive, negative, valid)`: int32 `[G, num_pairs]` candidate
        indices and a bool `[G, num_pairs]`, True for the pairs that count.

    Example:

    >>> pos, neg, valid = select_pairs([[0.5, 0.2, 0.9, 0.2]])
    >>> pos.numpy().tolist(), neg.numpy().tolist(), valid.numpy().tolist()
    ([[2]], [[3]], [[True]])
    """
    scores = tf.convert_to_tensor(scores, tf.float32)
    count = _num_candidates(scores)
    if not 1 <= num_pairs <= count // 2:
        raise ValueError(
            f"num_pairs={num_pairs}: need 1 <= num_pairs <= K // 2 = {count // 2} "
            "so positives and negatives are different candidates."
        )
    check_score_gap(min_score_gap)
    order = rank_order(scores)
    positive = order[:, :num_pairs]
    negative = tf.reverse(order, axis=[1])[:, :num_pairs]
    gap = tf.gather(scores, positive, batch_dims=1) - tf.gather(scores, negative, batch_dims=1)
    return positive, negative, gap > min_score_gap


def check_score_gap(min_score_gap):
    if min_score_gap < 0:
        raise ValueError(f"min_score_gap must be >= 0; got {min_score_gap}.")
    return float(min_score_gap)


def skipped_groups(scores, min_score_gap=0.0):
    """True for prompts whose candidates make no pair (best - worst <= gap); bool `[G]`."""
    scores = tf.convert_to_tensor(scores, tf.float32)
    spread = tf.reduce_max(scores, axis=-1) - tf.reduce_min(scores, axis=-1)
    return tf.logical_not(spread > min_score_gap)


class RankingTerms(collections.namedtuple(
        "RankingTerms", ["hinge_sums", "pair_counts", "violations", "correct"])):
    """Sums of BRIO's ranking loss, kept apart so they can be summed over replicas.

    - `hinge_sums`: float32 `[K - 1]`, the hinge summed over the pairs at
      rank distance `g = 1 .. K - 1`;
    - `pair_counts`: float32 `[K - 1]`, the number of pairs at each distance;
    - `violations`: float32, pairs whose hinge is active (`s_i < s_j + gap`);
    - `correct`: float32, pairs the model orders right (`s_i > s_j`).
    """

    __slots__ = ()

    def loss(self, pair_counts=None):
        """`sum_g hinge_sums[g] / pair_counts[g]` (a distance with no pair adds 0)."""
        counts = self.pair_counts if pair_counts is None else pair_counts
        return tf.reduce_sum(self.hinge_sums / tf.maximum(counts, 1.0))


def ranking_loss_terms(model_scores, quality, margin=0.001, min_score_gap=0.0):
    """The pieces of BRIO's ranking loss for `[G, K]` candidates.

    Candidates are sorted by `quality`, best first (`rank_order`); for
    ranks `i < j` whose quality differs by more than `min_score_gap`, the
    pair costs `max(0, s_j - s_i + (j - i) * margin)`, where `s` is the
    model's score (e.g. length-normalised log-likelihood).

    Args:
        model_scores: float tensor `[G, K]`, higher means the model prefers it.
        quality: float tensor `[G, K]`, the ranking function's scores.
        margin: float >= 0. Margin per step of rank distance. Defaults to
            `0.001` (BRIO).
        min_score_gap: float >= 0. Defaults to `0.0` (ties make no pair).

    Returns:
        `RankingTerms`.
    """
    margin = check_margin(margin)
    check_score_gap(min_score_gap)
    model_scores = tf.convert_to_tensor(model_scores, tf.float32)
    quality = tf.convert_to_tensor(quality, tf.float32)
    count = _num_candidates(quality)
    order = rank_order(quality)
    s = tf.gather(model_scores, order, batch_dims=1)
    q = tf.gather(quality, order, batch_dims=1)
    hinge_sums, pair_counts = [], []
    violations = correct = tf.constant(0.0)
    for gap in range(1, count):
        better, worse = s[:, :-gap], s[:, gap:]
        valid = tf.cast(q[:, :-gap] - q[:, gap:] > min_score_gap, tf.float32)
        hinge = tf.nn.relu(worse - better + gap * margin)
        hinge_sums.append(tf.reduce_sum(hinge * valid))
        pair_counts.append(tf.reduce_sum(valid))
        violations += tf.reduce_sum(tf.cast(hinge > 0, tf.float32) * valid)
        correct += tf.reduce_sum(tf.cast(better > worse, tf.float32) * valid)
    return RankingTerms(tf.stack(hinge_sums), tf.stack(pair_counts), violations, correct)


def ranking_loss(model_scores, quality, margin=0.001, min_score_gap=0.0):
    """BRIO's pairwise ranking loss on one device; a float32 scalar.

    `sum_{g=1}^{K-1} mean over pairs (i, i + g) of max(0, s_{i+g} - s_i + g * margin)`,
    ranks by `quality` (best first), pairs within `min_score_gap` left out.
    With all pairs kept this is BRIO's `RankingLoss` with no gold term.

    Example:

    >>> # Quality orders the candidates 0 > 1 > 2; the model scores 2 highest.
    >>> round(float(ranking_loss([[-1.0, -2.0, -0.5]], [[0.9, 0.5, 0.1]], margin=0.1)), 4)
    1.5

    References:
        Liu, Liu, Radev and Neubig (2022), "BRIO: Bringing Order to
        Abstractive Summarization".
    """
    return ranking_loss_terms(model_scores, quality, margin, min_score_gap).loss()
