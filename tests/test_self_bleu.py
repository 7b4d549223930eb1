"""`self_bleu` against nltk's sentence BLEU (Texygen's definition), and the
collapse metrics of `score_replies` (`self_bleu`, `mean_reply_length`).

The reference is the O(N^2) loop: nltk `sentence_bleu(others, text,
(1 / max_order,) * max_order, SmoothingFunction().method1)` averaged over the
texts, on tokens from the same `cjk` segmentation (`segmentation.segment`).
"""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from keras_selffb.generator import METRICS, TEXT_METRICS, score_replies
from keras_selffb.metrics import distinct_n, self_bleu
from keras_selffb.text import segmentation

TOL = 1e-9
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "is", "it", "good", "fine", "thanks", "you"]


def tokens(texts, tokenize="cjk"):
    return [[t.decode("utf-8") for t in row] for row in segmentation.segment(list(texts), tokenize).to_list()]


def nltk_self_bleu(texts, max_order=4, tokenize="cjk"):
    if len(texts) < 2:
        return 0.0
    rows = tokens(texts, tokenize)
    smooth = SmoothingFunction().method1
    weights = (1.0 / max_order,) * max_order
    scores = [
        sentence_bleu(rows[:i] + rows[i + 1:], rows[i], weights, smoothing_function=smooth)
        for i in range(len(rows))
    ]
    return sum(scores) / len(scores)


def random_texts(rng, count, max_words=20, words=WORDS):
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, max_words))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_order", [1, 2, 4, 5])
def test_matches_nltk_on_random_english(seed, max_order):
    rng = random.Random(seed)
    texts = random_texts(rng, rng.randint(2, 30))
    assert self_bleu(texts, max_order=max_order) == pytest.approx(nltk_self_bleu(texts, max_order), abs=TOL)


def test_matches_nltk_with_duplicates_and_a_wide_vocabulary():
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)]
    base = random_texts(rng, 40, max_words=25, words=words)
    texts = base + base[:10] + [base[3]] * 5
    rng.shuffle(texts)
    assert self_bleu(texts) == pytest.approx(nltk_self_bleu(texts), abs=TOL)


@pytest.mark.parametrize("text", ["the cat sat on the mat", "我很好，谢谢你", "café crème brûlée au lait"])
def test_identical_replies_score_one(text):
    assert self_bleu([text] * 5) == pytest.approx(1.0, abs=TOL)
    assert nltk_self_bleu([text] * 5) == pytest.approx(1.0, abs=TOL)


def test_identical_replies_shorter_than_max_order_are_smoothed_as_nltk():
    # Orders above the length get precision 0.1 (method1 on 0/1): sqrt(0.1) for 2 words.
    assert self_bleu(["hi there"] * 3) == pytest.approx(0.1 ** 0.5, abs=TOL)
    assert self_bleu(["hi there"] * 3) == pytest.approx(nltk_self_bleu(["hi there"] * 3), abs=TOL)


def test_cjk_text_matches_nltk_with_characters_as_words():
    texts = ["我很好，谢谢！", "我很好", "你好吗？", "今天天气很好", "我很好，谢谢你", "こんにちは世界", "안녕하세요 세계"]
    assert tokens(["我很好"]) == [["我", "很", "好"]]
    assert self_bleu(texts) == pytest.approx(nltk_self_bleu(texts), abs=TOL)
    assert self_bleu(texts) > 0


def test_accented_and_mixed_text_matches_nltk():
    texts = ["Café crème, s'il vous plaît", "café noir s'il vous plaît", "Ça va très bien", "très bien, café!",
             "Hello 世界 café", "naïve façade über"]
    assert tokens(["Café crème"]) == [["café", "crème"]]
    assert self_bleu(texts) == pytest.approx(nltk_self_bleu(texts), abs=TOL)


def test_empty_texts_score_zero_as_hypotheses_and_count_as_length_zero_references():
    texts = ["", "the cat sat", "the cat", "", "a dog ran on the mat"]
    assert self_bleu(texts) == pytest.approx(nltk_self_bleu(texts), abs=TOL)
    assert self_bleu(["", ""]) == 0.0
    assert self_bleu(["", "the cat sat on the mat"]) == 0.0  # no unigram matches either way
    assert self_bleu(["...", "!?"]) == 0.0  # punctuation only: no words


def test_short_texts_and_closest_length_ties_match_nltk():
    # "b c d" (3 words) has others of 2 and 4 words: the tie goes to 2 (no penalty).
    cases = [["a b", "b c d", "a b c d"], ["a", "a", "b"], ["a b", "a b c", "a"], ["x y z", "x y", "y z", "z"]]
    for texts in cases:
        for max_order in (1, 2, 3, 4):
            assert self_bleu(texts, max_order) == pytest.approx(nltk_self_bleu(texts, max_order), abs=TOL)


def test_clipping_uses_the_largest_count_in_another_text():
    texts = ["a a a b", "a a c", "a d", "a a a"]  # "a" is most frequent in texts 0 and 3
    assert self_bleu(texts, 1) == pytest.approx(nltk_self_bleu(texts, 1), abs=TOL)
    assert self_bleu(texts) == pytest.approx(nltk_self_bleu(texts), abs=TOL)


def test_fewer_than_two_texts_score_zero():
    assert self_bleu([]) == 0.0
    assert self_bleu(["the cat sat on the mat"]) == 0.0
    assert self_bleu("the cat sat on the mat") == 0.0


def test_other_tokenizations_and_bad_arguments():
    texts = ["The cat sat.", "the cat sat", "The dog sat."]
    assert self_bleu(texts, tokenize="none") == pytest.approx(nltk_self_bleu(texts, tokenize="none"), abs=TOL)
    with pytest.raises(ValueError, match="max_order"):
        self_bleu(texts, max_order=0)
    with pytest.raises(ValueError, match="Unknown tokenization"):
        self_bleu(texts, tokenize="nope")


ALPHABET = ["the", "cat", "a", "Café", "café", "很", "好", "我", "！", ",", "hi", "there", "über", "x1"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(ALPHABET), max_size=9).map(" ".join), max_size=10),
       st.integers(1, 5))
def test_matches_nltk_on_generated_sets(texts, max_order):
    assert self_bleu(texts, max_order) == pytest.approx(nltk_self_bleu(texts, max_order), abs=TOL)


def test_mean_reply_length_is_the_mean_cjk_word_count():
    replies = ["Hello, world!", "我很好，谢谢！", "café 很好", "I'm fine 谢谢", ""]
    # hello world | 我 很 好 ， 谢 谢 ！ (full-width punctuation is a CJK token) | café 很 好
    # | i m fine 谢 谢 | (nothing)
    counts = [2, 7, 3, 5, 0]
    assert [len(row) for row in tokens(replies)] == counts
    scores = score_replies(replies, replies, ["mean_reply_length"])
    assert scores == {"mean_reply_length": pytest.approx(sum(counts) / len(counts), abs=TOL)}


def test_score_replies_reports_the_collapse_metrics():
    assert {"self_bleu", "mean_reply_length"} <= set(TEXT_METRICS) <= set(METRICS)
    references = ["i am fine thanks", "see you tomorrow", "我很好", "the weather is nice today"]
    replies = ["i do not know", "i do not know", "i do not know", "i do not know what you mean"]
    scores = score_replies(references, replies, ["distinct_1", "self_bleu", "mean_reply_length"])
    assert list(scores) == ["distinct_1", "self_bleu", "mean_reply_length"]
    assert scores["self_bleu"] == pytest.approx(nltk_self_bleu(replies), abs=TOL)
    assert scores["self_bleu"] > 0.8  # three identical replies score 1 each
    assert scores["mean_reply_length"] == pytest.approx(4.75, abs=TOL)
    assert scores["distinct_1"] == pytest.approx(float(distinct_n(replies, 1, tokenize="cjk")), abs=1e-6)
    assert score_replies([], [], ["self_bleu", "mean_reply_length"]) == {"self_bleu": 0.0,
                                                                         "mean_reply_length": 0.0}
    assert np.isfinite(score_replies(["a", "b"], ["", ""], ["self_bleu"])["self_bleu"])
