"""chrF / chrF++ (`keras_selffb.metrics.chrf`) and `ChrFReward` against sacrebleu 2.x `CHRF`."""

import random

import numpy as np
import pytest
import tensorflow as tf
from sacrebleu.metrics import CHRF

from keras_selffb import metrics, rewards
from keras_selffb.text import CharTokenizer, pack_pairs

TOL = 1e-6  # on the 0-100 scale

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "(hi)", "there,", "you!", "ok.", "'quoted'",
         "café", "naïve", "Zürich", "über", "三千", "零", "四十二", "年", "月", "日", "2021", "3.5", "-",
         "Hello", "HELLO", "x"]
SPACES = [" ", " ", " ", "  ", "\t", "\u3000", "\xa0", "\n"]


def _sentence(rng, low=0, high=9):
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    text = ""
    for word in words:
        text += word + rng.choice(SPACES)
    return text if rng.random() < 0.5 else text.strip()


def _perturb(rng, text):
    words = text.split()
    out = []
    for word in words:
        roll = rng.random()
        if roll < 0.15:
            continue
        if roll < 0.3:
            word = rng.choice(WORDS)
        elif roll < 0.4:
            word = word[:-1] + rng.choice("xyz!,.") if word else word
        out.append(word)
        if rng.random() < 0.1:
            out.append(rng.choice(WORDS))
    return rng.choice([" ", "  ", "\t"]).join(out)


def random_pairs(seed, count):
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        ref = _sentence(rng)
        hyp = _perturb(rng, ref) if rng.random() < 0.8 else _sentence(rng)
        pairs.append((ref, hyp))
    return pairs


EDGE_PAIRS = [
    ("", ""),
    ("", "something"),
    ("something", ""),
    ("   ", "   "),
    ("\t \u3000", "a"),
    ("a", " \n "),
    ("a", "a"),
    ("ab", "abcdefgh"),
    ("abcdefgh", "ab"),
    ("identical sentence, with punctuation!", "identical sentence, with punctuation!"),
    ("今天天气很好", "今天天气不错"),
    ("三千零四十二", "三千零四十"),
    ("2021年3月5日", "2021年3月15日"),
    ("東京は晴れです。", "東京は雨です。"),
    ("오늘 날씨가 좋다", "오늘 날씨 좋다"),
    ("Crème brûlée à la française", "Creme brulee a la francaise"),
    ("naïve café", "naïve  café"),
    ("(hi) there", "( hi ) there"),
    ("x", "y"),
    ("aaaa aaaa", "aaaaaaa"),
    ("emoji 😀 text", "emoji 😀😀 text"),
]


def sacre_sentence(pairs, **options):
    metric = CHRF(**options)
    return np.array([metric.sentence_score(h, [r]).score for r, h in pairs])


def sacre_corpus(pairs, **options):
    return CHRF(**options).corpus_score([h for _, h in pairs], [[r for r, _ in pairs]]).score


def ours_sentence(pairs, **options):
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return metrics.sentence_chrf(refs, hyps, **options).numpy()


def ours_corpus(pairs, **options):
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return float(metrics.chrf(refs, hyps, **options))


OPTIONS = [
    {},  # chrF2
    {"word_order": 2},  # chrF++
    {"word_order": 1, "char_order": 3},
    {"beta": 1},
    {"beta": 3, "eps_smoothing": True},
    {"word_order": 2, "eps_smoothing": True},
    {"whitespace": True},
    {"char_order": 0, "word_order": 2},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "chrF2")
def test_sentence_and_corpus_match_sacrebleu(options):
    pairs = random_pairs(0, 250) + EDGE_PAIRS
    np.testing.assert_allclose(ours_sentence(pairs, **options), sacre_sentence(pairs, **options), atol=TOL, rtol=0)
    assert abs(ours_corpus(pairs, **options) - sacre_corpus(pairs, **options)) < TOL
    # A corpus is not the mean of its sentences.
    assert abs(sacre_corpus(pairs, **options) - sacre_sentence(pairs, **options).mean()) > 0.01


@pytest.mark.parametrize("pair", EDGE_PAIRS, ids=range(len(EDGE_PAIRS)))
def test_edge_cases_one_by_one(pair):
    for options in ({}, {"word_order": 2}):
        assert abs(ours_sentence([pair], **options)[0] - sacre_sentence([pair], **options)[0]) < TOL
        assert abs(ours_corpus([pair], **options) - sacre_corpus([pair], **options)) < TOL


def test_hand_computed_values():
    # Identical non-empty strings: 100. Empty or whitespace-only sides: 0.
    scores = ours_sentence([("abc def", "abc def"), ("", ""), ("  ", "\t"), ("abc", ""), ("", "abc")])
    np.testing.assert_allclose(scores, [100.0, 0.0, 0.0, 0.0, 0.0], atol=1e-12)
    # "ab" vs "abc": orders 1-2 effective, P = (2/3 + 1/2) / 2 = 7/12, R = 1.
    # chrF2 = 5 P R / (4 P + R) = (35/12) / (40/12) = 87.5.
    assert abs(ours_sentence([("ab", "abc")])[0] - 87.5) < 1e-9
    # Whitespace is removed before the n-grams: "a b" equals "ab".
    assert abs(ours_sentence([("a b", "ab")])[0] - 100.0) < 1e-9


def test_long_strings_use_the_sort_per_order_path():
    rng = random.Random(3)
    long_pairs = []
    for _ in range(3):
        ref = " ".join(_sentence(rng, 150, 220) for _ in range(3))
        long_pairs.append((ref, _perturb(rng, ref)))
    assert min(len("".join(r.split())) + len("".join(h.split())) for r, h in long_pairs) > 1100
    for options in ({}, {"word_order": 2}):
        np.testing.assert_allclose(ours_sentence(long_pairs, **options), sacre_sentence(long_pairs, **options),
                                   atol=TOL, rtol=0)
        assert abs(ours_corpus(long_pairs, **options) - sacre_corpus(long_pairs, **options)) < TOL


def test_lowercase():
    pairs = [("Hello World", "hello world"), ("ÉCOLE Über", "école über"), ("MiXeD", "mixed case")]
    for options in ({"lowercase": True}, {"lowercase": True, "word_order": 2}):
        np.testing.assert_allclose(ours_sentence(pairs, **options), sacre_sentence(pairs, **options), atol=TOL)


def test_statistics_match_sacrebleu_and_sum_to_the_corpus():
    pairs = random_pairs(1, 40) + EDGE_PAIRS
    metric = CHRF(word_order=2)
    expected = np.array(metric._extract_corpus_statistics([h for _, h in pairs], [[r for r, _ in pairs]]))
    stats = metrics.chrf_statistics([r for r, _ in pairs], [h for _, h in pairs], word_order=2)
    ours = np.stack([stats.hyp.numpy(), stats.ref.numpy(), stats.matches.numpy()], axis=-1).reshape(len(pairs), -1)
    np.testing.assert_array_equal(ours, expected)
    total = stats.total()
    assert abs(float(metrics.chrf_from_statistics(*total)) - sacre_corpus(pairs, word_order=2)) < TOL


def test_inside_tf_function_any_batch_size():
    pairs = random_pairs(2, 30)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    def score(refs, hyps):
        return metrics.sentence_chrf(refs, hyps), metrics.chrf(refs, hyps, word_order=2)

    for count in (30, 7):
        part = pairs[:count]
        sentence, corpus = score(tf.constant([r for r, _ in part]), tf.constant([h for _, h in part]))
        np.testing.assert_allclose(sentence.numpy(), sacre_sentence(part), atol=TOL)
        assert abs(float(corpus) - sacre_corpus(part, word_order=2)) < TOL


def test_ids_equal_text_when_each_id_is_a_character():
    rng = random.Random(4)
    alphabet = "abcdefgh"
    pairs = [("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))),
              "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))) for _ in range(60)]

    def ids(texts, width):
        return np.array([[alphabet.index(c) + 3 for c in t] + [0] * (width - len(t)) for t in texts])

    ref_ids, hyp_ids = ids([r for r, _ in pairs], 16), ids([h for _, h in pairs], 15)
    expected = sacre_sentence(pairs)
    np.testing.assert_allclose(metrics.sentence_chrf_ids(ref_ids, hyp_ids).numpy(), expected, atol=TOL)
    compiled = tf.function(lambda r, h: metrics.sentence_chrf_ids(r, h), jit_compile=True)
    np.testing.assert_allclose(compiled(tf.constant(ref_ids), tf.constant(hyp_ids)).numpy(), expected, atol=TOL)


def test_argument_checks():
    with pytest.raises(ValueError, match="char_order"):
        metrics.sentence_chrf(["a"], ["a"], char_order=-1)
    with pytest.raises(ValueError, match="at least 1"):
        metrics.chrf(["a"], ["a"], char_order=0, word_order=0)
    with pytest.raises(ValueError, match="beta"):
        metrics.chrf(["a"], ["a"], beta=-1)
    with pytest.raises(ValueError, match="same batch size"):
        metrics.sentence_chrf(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="strings"):
        metrics.sentence_chrf([1], ["a"])


def test_reward_text_form_in_tf_function_equals_sacrebleu_over_100():
    pairs = [("三千零四十二", "三千零四十"), ("three thousand and forty-two", "three thousand and forty"),
             ("2021年3月5日", "2021年3月5日"), ("March 5, 2021", "May 3, 2021"), ("naïve café", "")]
    tokenizer = CharTokenizer.train([t for pair in pairs for t in pair])
    packed = pack_pairs(tokenizer, [("x", r) for r, _ in pairs], 4, 32)
    candidates = pack_pairs(tokenizer, [("x", h) for _, h in pairs], 4, 32)
    prompts, references = packed[:, :4], packed[:, 4:]
    for options in ({}, {"word_order": 2}):
        reward = rewards.ChrFReward(tokenizer, **options)
        scored = tf.function(reward)(tf.constant(prompts), tf.constant(candidates[:, 4:]), tf.constant(references))
        assert scored.dtype == tf.float32
        np.testing.assert_allclose(scored.numpy(), sacre_sentence(pairs, **options) / 100, atol=1e-6)


def test_reward_id_form_and_registry():
    reward = rewards.get("chrf")
    assert isinstance(reward, rewards.ChrFReward) and reward.name == "chrf"
    # Content ids (>= 5) as letters: 5 6 7 9 vs 5 6 7 8 is "abcx" vs "abcd".
    value = tf.function(reward, jit_compile=True)(
        tf.constant([[1, 9, 4]]), tf.constant([[5, 6, 7, 9, 2]]), tf.constant([[5, 6, 7, 8, 2, 0]]))
    assert abs(float(value[0]) - CHRF().sentence_score("abcx", ["abcd"]).score / 100) < 1e-6
    with pytest.raises(ValueError, match="needs a tokenizer"):
        rewards.ChrFReward(word_order=2)
