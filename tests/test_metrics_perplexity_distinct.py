"""perplexity and distinct_n against numpy / plain Python counting."""

import numpy as np
import pytest
import tensorflow as tf

from keras_selffb import metrics


def _numpy_perplexity(logits, targets, weights):
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return np.exp(-(picked * weights).sum() / weights.sum())


def test_perplexity_matches_numpy_with_mask_pad_and_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, 9)).astype("float32")
    targets = rng.integers(0, 9, size=(4, 6))
    mask = (rng.random((4, 6)) < 0.8).astype("float32")
    want = _numpy_perplexity(logits, targets, mask)
    assert float(metrics.perplexity(logits, targets, mask)) == pytest.approx(
        want, rel=1e-5)
    pad_weights = (targets != 2).astype("float32")
    assert float(metrics.perplexity(logits, targets, pad_id=2)) == pytest.approx(
        _numpy_perplexity(logits, targets, pad_weights), rel=1e-5)
    probs = tf.nn.softmax(logits)
    assert float(metrics.perplexity(probs, targets, mask, from_logits=False)) == (
        pytest.approx(want, rel=1e-4))
    xla = tf.function(metrics.perplexity, jit_compile=True)
    assert float(xla(logits, targets, mask)) == pytest.approx(want, rel=1e-5)
    # Uniform logits over V classes: perplexity V (hand value).
    assert float(metrics.perplexity(np.zeros((1, 3, 5), "float32"), [[1, 2, 3]])) == (
        pytest.approx(5.0))


def _python_distinct(sequences, n):
    grams = [[tuple(s[i:i + n]) for i in range(len(s) - n + 1)] for s in sequences]
    per_row = [len(set(g)) / len(g) if g else 0.0 for g in grams]
    pooled = [x for g in grams for x in g]
    return per_row, (len(set(pooled)) / len(pooled) if pooled else 0.0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_distinct_n_on_ids_matches_python_counting_and_xla(n):
    rng = np.random.default_rng(n)
    ids = rng.integers(1, 5, size=(300, 12))
    lengths = rng.integers(0, 13, size=300)
    ids = np.where(np.arange(12) < lengths[:, None], ids, 0)
    rows = [list(r[r > 0]) for r in ids]
    per_row, pooled = _python_distinct(rows, n)
    got_rows = metrics.distinct_n(ids, n=n, per_example=True)
    np.testing.assert_allclose(got_rows.numpy(), per_row, atol=1e-6)
    assert float(metrics.distinct_n(ids, n=n)) == pytest.approx(pooled, abs=1e-6)
    xla = tf.function(lambda x: metrics.distinct_n(x, n=n), jit_compile=True)
    assert float(xla(tf.constant(ids))) == pytest.approx(pooled, abs=1e-6)


def test_distinct_n_on_strings_uses_the_segmentation():
    texts = ["the cat the cat", "我爱我家", "", "Hello, hello!"]
    rows = [["the", "cat", "the", "cat"], ["我", "爱", "我", "家"], [],
            ["hello", "hello"]]
    for n in (1, 2):
        per_row, pooled = _python_distinct(rows, n)
        np.testing.assert_allclose(
            metrics.distinct_n(texts, n=n, per_example=True).numpy(), per_row,
            atol=1e-6)
        assert float(metrics.distinct_n(texts, n=n)) == pytest.approx(pooled)
