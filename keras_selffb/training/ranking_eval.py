"""How well a model's preferences over candidates agree with their quality.

Host-side NumPy (evaluation, not training): for G prompts with M candidates
each, `model_scores [G, M]` (higher = the model prefers it: a likelihood or
`-distance`) against `quality [G, M]` (e.g. ROUGE-L F to the reference).

- `spearman`: Spearman's rank correlation, ties given their average rank
  (equal to `scipy.stats.spearmanr`, without needing SciPy).
- `ranking_agreement`: pairwise accuracy, best-against-worst accuracy,
  mean per-prompt Spearman and the quality of the model's top pick.
"""

import numpy as np


def average_ranks(values):
    """Ranks `0 .. n-1` of a 1-D array, tied values sharing their mean rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(x, y):
    """Spearman's rho of two 1-D arrays; NaN when either is constant.

    Example:

    >>> round(spearman([1, 2, 3, 4], [10, 30, 20, 40]), 4)
    0.8
    >>> round(spearman([1, 1, 2], [1, 2, 3]), 4)
    0.866
    """
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def ranking_agreement(model_scores, quality, min_score_gap=0.0):
    """Agreement of `model_scores [G, M]` with `quality [G, M]`.

    Pairs are candidates of the same prompt whose quality differs by more
    than `min_score_gap`; the model orders a pair right when it scores the
    better candidate strictly higher (a tie counts as wrong).

    Returns:
        dict of floats: `pair_accuracy` (over all pairs),
        `best_vs_worst_accuracy` (the best against the worst candidate of
        each prompt, ties by candidate order as in `select_pairs`),
        `spearman` (mean over prompts where both sides vary), `top1_quality`
        (mean quality of the candidate the model prefers: reranking),
        `mean_quality` (a random pick), `oracle_quality` (the best pick),
        `pairs` and `prompts` counted.

    Example:

    >>> # The model orders the pairs (0, 1) and (0, 2) right, (1, 2) wrong.
    >>> r = ranking_agreement([[0.3, 0.1, 0.2]], [[0.9, 0.5, 0.1]])
    >>> r["pairs"], round(r["pair_accuracy"], 4), round(r["spearman"], 4), r["top1_quality"]
    (3, 0.6667, 0.5, 0.9)
    """
    model_scores = np.asarray(model_scores, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    if model_scores.shape != quality.shape or model_scores.ndim != 2:
        raise ValueError(
            f"Expected two [G, M] arrays of the same shape; got {model_scores.shape} "
            f"and {quality.shape}."
        )
    better = quality[:, :, None] - quality[:, None, :] > min_score_gap
    right = model_scores[:, :, None] > model_scores[:, None, :]
    pairs = int(better.sum())
    order = np.argsort(-quality, axis=1, kind="stable")
    rows = np.arange(len(quality))
    best, worst = order[:, 0], order[:, -1]
    has_pair = quality[rows, best] - quality[rows, worst] > min_score_gap
    best_vs_worst = model_scores[rows, best] > model_scores[rows, worst]
    rhos = [spearman(s, q) for s, q in zip(model_scores, quality)]
    rhos = [r for r in rhos if not np.isnan(r)]
    top1 = quality[rows, np.argmax(model_scores, axis=1)]
    return {
        "pair_accuracy": float((better & right).sum() / max(pairs, 1)),
        "best_vs_worst_accuracy": float(best_vs_worst[has_pair].mean()) if has_pair.any() else 0.0,
        "spearman": float(np.mean(rhos)) if rhos else float("nan"),
        "top1_quality": float(top1.mean()),
        "mean_quality": float(quality.mean()),
        "oracle_quality": float(quality.max(axis=1).mean()),
        "pairs": pairs,
        "prompts": int(len(quality)),
    }
