"""The fast paths of the string metrics, each checked against rouge-score and
sacrebleu: one cached graph for eager calls whatever the batch size, the
n-gram kernel's fallbacks (large ids, very long rows) and the LCS carry
across more than 62 words."""

import random

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from rouge_score import rouge_scorer

from keras_selffb import metrics
from keras_selffb.metrics import _inputs

WORDS = ("the a cat sat on mat dog The Cat , . ! ? 3.14 1,000 x-ray café "
         "naïve &amp; AT&T don't").split()


def _pairs(rng, count, low=0, high=30):
    refs, hyps = [], []
    for _ in range(count):
        ref = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
        hyp = [w for w in ref if rng.random() > 0.2]
        hyp += [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    return refs, hyps


def test_eager_calls_of_any_batch_size_reuse_one_graph():
    rng = random.Random(11)
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge2"])
    for size in (7, 1, 19, 3):
        refs, hyps = _pairs(rng, size)
        want = [scorer.score(r, h) for r, h in zip(refs, hyps)]
        np.testing.assert_allclose(
            metrics.rouge_l(refs, hyps).fmeasure.numpy(),
            [w["rougeL"].fmeasure for w in want], atol=1e-6)
        np.testing.assert_allclose(
            metrics.rouge_n(refs, hyps, n=2).recall.numpy(),
            [w["rouge2"].recall for w in want], atol=1e-6)
        np.testing.assert_allclose(
            metrics.sentence_bleu(refs, hyps).score.numpy(),
            [sacrebleu.sentence_bleu(h, [r]).score for r, h in zip(refs, hyps)],
            atol=1e-4, rtol=0)
        assert float(metrics.corpus_bleu(refs, hyps).score) == pytest.approx(
            sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-4)
    # A string tensor takes the same graph as a list.
    refs, hyps = _pairs(rng, 5)
    np.testing.assert_array_equal(
        metrics.rouge_l(tf.constant(refs), tf.constant(hyps)).fmeasure,
        metrics.rouge_l(refs, hyps).fmeasure)
    graph = _inputs._compiled(metrics.rouge_l, (("tokenize", "rouge"),))
    assert graph.experimental_get_tracing_count() == 1


def test_ngram_counts_for_large_ids_and_very_long_rows_equal_sacrebleu():
    rng = np.random.default_rng(5)
    # Ids of 2**40 and more do not fit the packed key: row ranks are used.
    ref = rng.integers(0, 9, size=(50, 30))
    hyp = np.where(rng.random((50, 30)) < 0.8, ref, rng.integers(0, 9, (50, 30)))
    kept = np.arange(30) < rng.integers(0, 31, size=50)[:, None]
    big = (2**40 + 7919 * ref, np.where(kept, 2**40 + 7919 * hyp, 0))
    texts = [[" ".join(f"w{i}" for i in row if i) for row in ids] for ids in big]
    got = metrics.sentence_bleu_ids(*big).score.numpy()
    want = [sacrebleu.sentence_bleu(h, [r], tokenize="none").score
            for r, h in zip(*texts)]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # A pair of 33,000 tokens (rows of 2**15 or more): one sort per order.
    words = [f"w{rng.integers(0, 60)}" for _ in range(20000)]
    ref_text = " ".join(words)
    hyp_text = " ".join(w for w in words[:16000] if rng.random() > 0.1)
    score = metrics.sentence_bleu([ref_text], [hyp_text], tokenize="none")
    assert float(score.score[0]) == pytest.approx(sacrebleu.sentence_bleu(
        hyp_text, [ref_text], tokenize="none").score, abs=1e-4)
    rouge = rouge_scorer.RougeScorer(["rouge2"]).score(ref_text, hyp_text)
    ours = metrics.rouge_n([ref_text], [hyp_text], n=2)
    assert float(ours.fmeasure[0]) == pytest.approx(
        rouge["rouge2"].fmeasure, abs=1e-6)


@pytest.mark.parametrize("form", ["strings", "ids"])
def test_lcs_over_more_than_62_words_equals_rouge_score(form):
    rng = random.Random(3)
    # 4,000 reference tokens: 65 words of 62 bits, the prefix-scan carry.
    ref = [f"w{rng.randint(0, 50)}" for _ in range(4000)]
    hyps = [[w for w in ref[start:start + 900] if rng.random() < 0.1]
            for start in (0, 2500)] + [[]]
    ref_text, hyp_texts = " ".join(ref), [" ".join(h) for h in hyps]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = [scorer.score(ref_text, h)["rougeL"].fmeasure for h in hyp_texts]
    if form == "strings":
        got = metrics.rouge_l([ref_text] * 3, hyp_texts).fmeasure
    else:
        def ids(words, width):
            row = [int(w[1:]) + 1 for w in words]
            return row + [0] * (width - len(row))

        ref_ids = tf.constant([ids(ref, 4000)] * 3)
        hyp_ids = tf.constant([ids(h, 200) for h in hyps])
        got = tf.function(metrics.rouge_l_ids)(ref_ids, hyp_ids).fmeasure
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


@pytest.mark.parametrize("graph", [False, True])
def test_an_empty_batch_and_empty_rows_score_like_the_references(graph):
    """A replica left empty by the last batch scores nothing; empty rows score 0, as rouge-score and sacrebleu do."""
    run = tf.function if graph else (lambda f: f)
    empty = tf.constant([], tf.string)
    assert run(lambda r, h: metrics.rouge_l(r, h).fmeasure)(empty, empty).shape == (0,)
    assert run(lambda r, h: metrics.sentence_bleu(r, h).score)(empty, empty).shape == (0,)
    assert run(lambda r, h: metrics.rouge_l_ids(r, h).fmeasure)(
        tf.zeros([0, 3], tf.int32), tf.zeros([0, 4], tf.int32)).shape == (0,)
    refs, hyps = ["", "a b", "", "the cat"], ["a", "", "", "the cat sat"]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)]
    got = run(lambda r, h: metrics.rouge_l(r, h).fmeasure)(tf.constant(refs), tf.constant(hyps))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
    bleu = [sacrebleu.sentence_bleu(h, [r]).score for r, h in zip(refs, hyps)]
    got = run(lambda r, h: metrics.sentence_bleu(r, h).score)(tf.constant(refs), tf.constant(hyps))
    np.testing.assert_allclose(np.asarray(got), bleu, atol=1e-4)
