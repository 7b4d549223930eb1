"""Edge cases as a table: each row has a hand-computed value and is also
checked against rouge-score and sacrebleu."""

import random

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from keras_selffb import metrics

# (reference, hypothesis, ROUGE-L F by hand, sentence BLEU by hand), 13a.
CASES = [
    # empty hypothesis: every score is 0
    ("the cat sat", "", 0.0, 0.0),
    # empty reference: every score is 0
    ("", "the cat sat", 0.0, 0.0),
    # both empty
    ("", "", 0.0, 0.0),
    # identical: F = 1, BLEU = 100 (7 tokens with the final period)
    ("The cat sat on the mat.", "The cat sat on the mat.", 1.0, 100.0),
    # no overlap at all
    ("the cat sat", "a dog ran", 0.0, 0.0),
    # punctuation only: no rouge token; 13a keeps "!" and "?" -> 1 of 2 match,
    # no bigram of 2: effective order 2, p2 = 100 / (2 * 1) (exp smoothing)
    ("! ?", "! !", 0.0, (50.0 * 50.0) ** 0.5),
    # reversed: LCS 1 of 4; BLEU p1 = 100, p2..p4 smoothed 100/6, 100/8, 100/8
    ("a b c d", "d c b a", 0.25, (100 * 100 / 6 * 12.5 * 12.5) ** 0.25),
    # clipping: 3 of 6 hypothesis "the" count; LCS 3 -> P 1/2, R 1 -> F 2/3;
    # BLEU p_n = 3/6, 2/5, 1/4, 0 -> smoothed 100/(2*3); hyp longer: bp = 1
    ("the the the", "the the the the the the", 2 / 3,
     (50.0 * 40.0 * 25.0 * 100 / 6) ** 0.25),
    # brevity: 2 of 4 reference words, all hypothesis n-grams match, eff. order 2
    ("the cat sat down", "the cat", 2 * 1 * 0.5 / 1.5,
     np.exp(1 - 4 / 2) * 100.0),
    # HTML entities are unescaped by 13a (identical tokens, BLEU 100) but not
    # by rouge-score: [at amp t rocks] vs [at t rocks] -> P 1, R 3/4, F 6/7
    ("AT&amp;T rocks", "AT&T rocks", 6 / 7, 100.0),
]


@pytest.mark.parametrize("ref, hyp, rouge_f, bleu", CASES)
def test_table_case_by_hand_and_references(ref, hyp, rouge_f, bleu):
    ours_rouge = float(metrics.rouge_l([ref], [hyp]).fmeasure[0])
    ours_bleu = float(metrics.sentence_bleu([ref], [hyp]).score[0])
    assert ours_rouge == pytest.approx(rouge_f, abs=1e-6)
    assert ours_bleu == pytest.approx(bleu, abs=1e-4)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    assert ours_rouge == pytest.approx(
        scorer.score(ref, hyp)["rougeL"].fmeasure, abs=1e-6)
    assert ours_bleu == pytest.approx(
        sacrebleu.sentence_bleu(hyp, [ref]).score, abs=1e-4)


def test_table_as_one_batch_and_corpus():
    refs = [c[0] for c in CASES]
    hyps = [c[1] for c in CASES]
    np.testing.assert_allclose(metrics.rouge_l(refs, hyps).fmeasure.numpy(),
                               [c[2] for c in CASES], atol=1e-6)
    np.testing.assert_allclose(metrics.sentence_bleu(refs, hyps).score.numpy(),
                               [c[3] for c in CASES], atol=1e-4)
    assert float(metrics.corpus_bleu(refs, hyps).score) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-4)


def test_chinese_with_zh_tokenizer():
    ref, hyp = "我爱北京天安门。", "我爱北京。"
    # zh: 8 vs 5 tokens (one per character); 13a sees 2 vs 2 "words"
    want = sacrebleu.sentence_bleu(hyp, [ref], tokenize="zh").score
    got = float(metrics.sentence_bleu([ref], [hyp], tokenize="zh").score[0])
    assert got == pytest.approx(want, abs=1e-4) and 0 < got < 100
    assert float(metrics.sentence_bleu([ref], [hyp]).score[0]) == pytest.approx(
        sacrebleu.sentence_bleu(hyp, [ref]).score, abs=1e-4)


def test_thousand_tokens():
    rng = random.Random(3)
    words = [f"w{rng.randint(0, 40)}" for _ in range(1000)]
    edited = [w for w in words if rng.random() > 0.1]
    edited = [rng.choice(["x", w]) if rng.random() < 0.05 else w for w in edited]
    ref, hyp = " ".join(words), " ".join(edited + ["tail"] * 80)
    scores = rouge_scorer.RougeScorer(["rougeL", "rouge2"]).score(ref, hyp)
    ours_l = metrics.rouge_l([ref], [hyp])
    ours_2 = metrics.rouge_n([ref], [hyp], n=2)
    assert float(ours_l.fmeasure[0]) == pytest.approx(
        scores["rougeL"].fmeasure, abs=1e-6)
    assert float(ours_2.recall[0]) == pytest.approx(
        scores["rouge2"].recall, abs=1e-6)
    for smooth in ("exp", "none"):
        want = sacrebleu.sentence_bleu(hyp, [ref], smooth_method=smooth).score
        got = metrics.sentence_bleu([ref], [hyp], smooth_method=smooth).score
        assert float(got[0]) == pytest.approx(want, abs=1e-4)
