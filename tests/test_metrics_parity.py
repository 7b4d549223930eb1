"""Parity of the in-graph text metrics with their references, in batches.

Thousands of seeded random pairs (English words in mixed case, punctuation,
digits, accented words, Chinese/Japanese/Korean text, full-width forms,
HTML entities, odd whitespace, empty strings) are scored in one call each
and compared with rouge-score 0.1.2 and sacrebleu 2.x pair by pair.
"""

import random
import unicodedata

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

from keras_selffb import metrics
from keras_selffb.text import segmentation

WORDS = ("the cat sat on mat dog a an and of to in is was it that he she they "
         "we you The Cat THE Dog Mat hello world good morning").split()
PUNCT = list(".,!?;:'\"-()[]{}/\\@#$%^&*+=<>~`|") + [
    "...", "--", "e.g.", "U.S.", "don't", "it's", "'s"]
DIGITS = ["42", "2024", "3.14", "1,000", "10-20", "-5", "0.5", "7", "1990s",
          "5-", "4.", ",3"]
ACCENTED = ["café", "naïve", "Ünïcödé", "résumé", "Straße", "İstanbul",
            "\u212aelvin", "ÉCOLE", "ΣΟΦΙΑ", "Ñandú", "ﬁne"]
CJK = list("我你他是的了好中国人天气学生今明年月日大小上下")
CJK += list("，。！？、：；（）「」")
CJK += ["の", "です", "カタカナ", "한국어", "ｱｲｳ", "ＡＢＣ１２"]
ODD = ["\u2014", "\u2019", "\u2026", "€", "→", "😀", "\U00020000", "\u00b7",
       "\u2001", "\u3000", "\xa0", "\u200b", "№"]
HTML = ["&amp;", "&quot;", "&lt;", "&gt;", "&amp;quot;", "&amp;lt;",
        "<skipped>", "AT&T", "&", "&#39;", "&nbsp;"]
MIXED = ["abc123", "x-ray", "e-mail", "C++", "3D", "foo_bar", "a.b", "Mr.",
         "end-\n", "co-\nop"]
SEPARATORS = [" "] * 12 + ["", "  ", "\t", "\n", "\u3000", "\xa0", " - "]
POOLS = [(WORDS, 10), (PUNCT, 3), (DIGITS, 2), (ACCENTED, 2), (CJK, 4),
         (ODD, 1), (HTML, 1), (MIXED, 1)]


def _token(rng):
    pools, weights = zip(*POOLS)
    return rng.choice(rng.choices(pools, weights)[0])


def random_text(rng, max_len=25):
    """One random string; ~4% are empty or punctuation only."""
    if rng.random() < 0.04:
        return rng.choice(["", " ", "\n", ".", "...", "&amp;"])
    size = rng.randint(1, max_len)
    if rng.random() < 0.15:  # a Chinese sentence without spaces
        return "".join(rng.choice(CJK[:24]) for _ in range(size)) + rng.choice(
            ["", "。", "！"])
    parts = []
    for _ in range(size):
        parts += [_token(rng), rng.choice(SEPARATORS)]
    text = "".join(parts)
    return text if rng.random() < 0.8 else " " + text


def _mutate(rng, text):
    words = text.split(" ")
    for _ in range(rng.randint(0, 4)):
        action, where = rng.random(), rng.randrange(len(words) + 1)
        if action < 0.3 and words:
            del words[min(where, len(words) - 1)]
        elif action < 0.6:
            words.insert(where, _token(rng))
        elif words:
            words[min(where, len(words) - 1)] = _token(rng)
    return " ".join(words)


def random_pairs(seed, count, max_len=25):
    """(references, hypotheses): mostly edited copies, some unrelated."""
    rng = random.Random(seed)
    refs, hyps = [], []
    for _ in range(count):
        ref = random_text(rng, max_len)
        draw = rng.random()
        if draw < 0.6:
            hyp = _mutate(rng, ref)
        elif draw < 0.65:
            hyp = ref
        else:
            hyp = random_text(rng, max_len)
        if rng.random() < 0.5:
            ref, hyp = hyp, ref
        refs.append(ref)
        hyps.append(hyp)
    return refs, hyps


_CJK_RANGES = [(0x1100, 0x11FF), (0x2E80, 0x2FDF), (0x2FF0, 0x2FFF),
               (0x3001, 0x303F), (0x3040, 0x30FF), (0x3100, 0x318F),
               (0x31A0, 0x31FF), (0x3200, 0x33FF), (0x3400, 0x4DBF),
               (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7FF),
               (0xF900, 0xFAFF), (0xFE10, 0xFE1F), (0xFE30, 0xFE4F),
               (0xFF01, 0xFFEF), (0x20000, 0x3134F)]


class PythonCJKTokenizer:
    """Independent pure-Python statement of the "cjk" rules (for rouge-score)."""

    def tokenize(self, text):
        tokens, word = [], ""
        for char in text.lower():
            if any(lo <= ord(char) <= hi for lo, hi in _CJK_RANGES):
                tokens += [word, char] if word else [char]
                word = ""
            elif unicodedata.category(char)[0] in "LMN":
                word += char
            else:
                tokens += [word] if word else []
                word = ""
        return tokens + ([word] if word else [])


REFS, HYPS = random_pairs(seed=2024, count=2500)
TEXTS = REFS + HYPS


def _decoded(ragged):
    return [[t.decode("utf-8") for t in row] for row in ragged.to_list()]


@pytest.mark.parametrize("method, reference", [
    ("rouge", lambda t: rouge_tokenize.tokenize(t, None)),
    ("13a", lambda t: Tokenizer13a()(t).split()),
    ("zh", lambda t: TokenizerZh()(t).split()),
    ("char", lambda t: " ".join(t).split()),
    ("none", lambda t: t.split()),
    ("cjk", PythonCJKTokenizer().tokenize),
])
def test_segmentation_equals_reference_tokenizers(method, reference):
    ours = _decoded(segmentation.segment(TEXTS, method))
    mismatches = [(t, o) for t, o in zip(TEXTS, ours) if o != reference(t)]
    assert not mismatches, mismatches[:3]


def test_cjk_segmentation_keeps_accents_and_splits_han():
    tokens = _decoded(segmentation.segment(["Café NAÏVE 我爱北京。"], "cjk"))
    assert tokens == [["café", "naïve", "我", "爱", "北", "京", "。"]]


def _rouge_reference(tokenizer=None):
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1", "rouge2"],
                                      use_stemmer=False, tokenizer=tokenizer)
    return [scorer.score(r, h) for r, h in zip(REFS, HYPS)]


@pytest.mark.parametrize("tokenize, tokenizer", [
    ("rouge", None), ("cjk", PythonCJKTokenizer())])
def test_rouge_equals_rouge_score(tokenize, tokenizer):
    expected = _rouge_reference(tokenizer)
    ours = {
        "rougeL": metrics.rouge_l(REFS, HYPS, tokenize=tokenize),
        "rouge1": metrics.rouge_n(REFS, HYPS, n=1, tokenize=tokenize),
        "rouge2": metrics.rouge_n(REFS, HYPS, n=2, tokenize=tokenize),
    }
    for key, score in ours.items():
        for field in ("precision", "recall", "fmeasure"):
            want = np.array([getattr(e[key], field) for e in expected])
            np.testing.assert_allclose(getattr(score, field).numpy(), want,
                                       atol=1e-6, err_msg=f"{key} {field}")
    # The data must exercise partial overlaps, not only 0 and 1.
    f_l = ours["rougeL"].fmeasure.numpy()
    assert np.mean((f_l > 0.05) & (f_l < 0.95)) > 0.4


def test_default_rouge_scores_chinese_zero_and_cjk_does_not():
    refs, hyps = ["今天天气很好"], ["今天天气不错"]
    assert float(metrics.rouge_l(refs, hyps).fmeasure[0]) == 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=PythonCJKTokenizer())
    want = scorer.score(refs[0], hyps[0])["rougeL"].fmeasure  # 4/6
    got = float(metrics.rouge_l(refs, hyps, tokenize="cjk").fmeasure[0])
    assert got == pytest.approx(want, abs=1e-6) and want == pytest.approx(4 / 6)


SMOOTHINGS = ["exp", "floor", "add-k", "none"]


@pytest.mark.parametrize("tokenize", ["13a", "zh"])
def test_sentence_bleu_equals_sacrebleu(tokenize):
    for smooth in SMOOTHINGS:
        want = np.array([
            sacrebleu.sentence_bleu(h, [r], smooth_method=smooth,
                                    tokenize=tokenize).score
            for r, h in zip(REFS, HYPS)])
        got = metrics.sentence_bleu(REFS, HYPS, tokenize=tokenize,
                                    smooth_method=smooth).score.numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0,
                                   err_msg=f"{tokenize} {smooth}")
        if smooth == "none":  # smoothing and effective order both matter here
            smoothed = metrics.sentence_bleu(REFS, HYPS, tokenize=tokenize)
            assert np.sum(np.abs(smoothed.score.numpy() - got) > 1) > 100
            assert np.sum((want > 0) & (want < 100)) > 500


@pytest.mark.parametrize("tokenize", ["13a", "zh", "char", "none"])
@pytest.mark.parametrize("lowercase", [False, True])
def test_corpus_bleu_equals_sacrebleu(tokenize, lowercase):
    want = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize=tokenize,
                                 lowercase=lowercase, force=True)
    got = metrics.corpus_bleu(REFS, HYPS, tokenize=tokenize, lowercase=lowercase)
    assert float(got.score) == pytest.approx(want.score, abs=1e-4)
    np.testing.assert_allclose(got.precisions.numpy(), want.precisions, atol=1e-6)
    assert (float(got.hyp_len), float(got.ref_len)) == (want.sys_len, want.ref_len)
    stats = metrics.bleu_statistics(REFS, HYPS, tokenize=tokenize,
                                    lowercase=lowercase).total()
    np.testing.assert_array_equal(stats.matches.numpy(), want.counts)
    np.testing.assert_array_equal(stats.totals.numpy(), want.totals)


def test_bleu_from_statistics_equals_compute_bleu_on_tiny_corpora():
    # Corpora of 3 pairs hit compute_bleu's zero-match, missing-order and
    # brevity branches; sacrebleu's own formula is the reference.
    stats = metrics.bleu_statistics(REFS[:1500], HYPS[:1500])
    grouped = [tf.reduce_sum(tf.reshape(x, [500, 3, -1]), axis=1) for x in stats]
    grouped[2], grouped[3] = grouped[2][:, 0], grouped[3][:, 0]
    rows = [[int(v) for v in np.concatenate([m, t, [h, r]])]
            for m, t, h, r in zip(*(x.numpy() for x in grouped))]
    branches = set()
    for smooth in SMOOTHINGS:
        for effective in (False, True):
            got = metrics.bleu_from_statistics(
                *grouped, smooth_method=smooth, use_effective_order=effective)
            want = [sacrebleu.BLEU.compute_bleu(
                row[:4], row[4:8], row[8], row[9], smooth_method=smooth,
                effective_order=effective).score for row in rows]
            np.testing.assert_allclose(got.score.numpy(), want, atol=1e-4,
                                       rtol=0, err_msg=f"{smooth} {effective}")
    for row in rows:
        branches.add((min(row[:4]) == 0, min(row[4:8]) == 0, row[8] < row[9]))
    assert len(branches) >= 4  # several compute_bleu branches were exercised


def test_sentence_bleu_lowercase_equals_sacrebleu():
    want = [sacrebleu.sentence_bleu(h, [r], lowercase=True).score
            for r, h in zip(REFS[:1000], HYPS[:1000])]
    got = metrics.sentence_bleu(REFS[:1000], HYPS[:1000], lowercase=True)
    np.testing.assert_allclose(got.score.numpy(), want, atol=1e-4, rtol=0)


def _random_id_batch(rng, batch, width, vocab):
    """Random ids with random padding side, pad 0, and their token lists."""
    ids = rng.integers(1, vocab + 1, size=(batch, width))
    lengths = rng.integers(0, width + 1, size=batch)
    mask = np.arange(width)[None, :] < lengths[:, None]
    left = rng.random(batch) < 0.5
    mask[left] = mask[left][:, ::-1]  # left padding for half the rows
    ids = np.where(mask, ids, 0)
    tokens = [" ".join(f"w{i}" for i in row[row > 0]) for row in ids]
    return ids, tokens


def test_id_forms_equal_references_under_xla():
    rng = np.random.default_rng(7)
    ref_ids, refs = _random_id_batch(rng, 1000, 40, vocab=6)
    hyp_ids, hyps = _random_id_batch(rng, 1000, 70, vocab=6)

    @tf.function(jit_compile=True)
    def score(r, h):
        return (metrics.rouge_l_ids(r, h), metrics.rouge_n_ids(r, h, n=2),
                metrics.bleu_statistics_ids(r, h),
                metrics.sentence_bleu_ids(r, h).score)

    lcs, rouge2, stats, bleu = score(tf.constant(ref_ids), tf.constant(hyp_ids))
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge2"])
    expected = [scorer.score(r, h) for r, h in zip(refs, hyps)]
    for ours, key in ((lcs, "rougeL"), (rouge2, "rouge2")):
        np.testing.assert_allclose(ours.fmeasure.numpy(),
                                   [e[key].fmeasure for e in expected], atol=1e-6)
    want = [sacrebleu.sentence_bleu(h, [r], tokenize="none").score
            for r, h in zip(refs, hyps)]
    np.testing.assert_allclose(bleu.numpy(), want, atol=1e-4, rtol=0)
    corpus = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none")
    total = metrics.BLEUStatistics(*stats).total()
    np.testing.assert_array_equal(total.matches.numpy(), corpus.counts)
    np.testing.assert_array_equal(total.totals.numpy(), corpus.totals)
    got = metrics.bleu_from_statistics(*total).score
    assert float(got) == pytest.approx(corpus.score, abs=1e-4)
