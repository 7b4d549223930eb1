"""`RougeNReward`: ROUGE-1 / ROUGE-2 F1 rewards, checked against rouge-score and hand counts.

English text cases are compared with rouge-score's `rouge1` / `rouge2`
F-measure (its own tokenizer for `tokenize="rouge"`, a Python twin of the
"cjk" segmentation otherwise); Chinese cases with hand-counted n-grams
(one token per character). The id form must agree with the text form when
every word is one token, and everything must run inside `tf.function`.
"""

import re

import numpy as np
import pytest
import tensorflow as tf
from rouge_score import rouge_scorer

from keras_selffb import rewards
from keras_selffb.rewards import RougeNReward
from keras_selffb.text import CharTokenizer, WordPieceTokenizer, pack_prompts, pack_responses

P, R = 48, 48
_CJK = "\u3001-\u303f\u3040-\u30ff\u4e00-\u9fff\uff01-\uffef"

EN_CASES = [
    # (reference, candidate)
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "the cat on a mat"),
    ("the cat sat on the mat", "the the the the"),  # clipped unigram counts
    ("the printer needs a new cable", "a new printer cable is needed"),
    ("police arrested two men on monday", "two men were arrested by police"),
    ("hello world", "good morning"),
    ("hello world", ""),  # empty candidate
    ("hello", "hello"),  # one word: no bigram on either side
]

ZH_CASES = [
    # (reference, candidate, hand-counted ROUGE-1 F, ROUGE-2 F)
    # 今天天气很好 has unigrams 今 天 天 气 很 好 and bigrams 今天 天天 天气 气很 很好.
    # vs 今天天气不错: 4 of 6 unigrams (今 天 天 气), 3 of 5 bigrams (今天 天天 天气).
    ("今天天气很好", "今天天气不错", 4 / 6, 3 / 5),
    # vs 天气很好: P1 = 4/4, R1 = 4/6 -> 0.8; bigrams 天气 气很 很好 = 3/3 and 3/5 -> 0.75.
    ("今天天气很好", "天气很好", 0.8, 0.75),
    # Full-width punctuation is a token: 你 好 ， 世 界 。 vs 你 好 世 界:
    # P1 4/4, R1 4/6 -> 0.8; bigrams 你好 世界 shared of 3 and 5 -> 2 (2/3)(2/5) / (16/15) = 0.5.
    ("你好，世界。", "你好世界", 0.8, 0.5),
    # The same characters in another order: all unigrams; bigrams 我爱 爱北 北京
    # vs 北京 京爱 爱我 share 北京 only: 1/3 each -> 1/3.
    ("我爱北京", "北京爱我", 1.0, 1 / 3),
    ("今天天气很好", "good morning", 0.0, 0.0),
]


class CJKWords:
    """Python twin of the "cjk" segmentation, as a rouge-score tokenizer."""

    def tokenize(self, text):
        text = re.sub(f"([{_CJK}])", r" \1 ", text.lower())
        return re.findall(rf"[{_CJK}]|[^\W_]+", text)


def pack(tokenizer, candidates, references):
    """Packed int32 `(prompts [B, P], candidates [B, R], references [B, R])`."""
    return (
        pack_prompts(tokenizer, ["hello"] * len(candidates), P)[0],
        pack_responses(tokenizer, list(candidates), R)[0],
        pack_responses(tokenizer, list(references), R)[0],
    )


def rouge_score_f(references, candidates, n, tokenizer=None):
    key = f"rouge{n}"
    scorer = rouge_scorer.RougeScorer([key], tokenizer=tokenizer)
    return [scorer.score(r, c)[key].fmeasure for r, c in zip(references, candidates)]


def check(values, expected, atol=1e-6):
    assert values.dtype == tf.float32
    np.testing.assert_allclose(values.numpy(), np.asarray(expected, np.float64), atol=atol)


@pytest.fixture(scope="module")
def char_tokenizer():
    return CharTokenizer.train([t for case in EN_CASES + ZH_CASES for t in case[:2]])


@pytest.fixture(scope="module")
def word_tokenizer():
    texts = [t for case in EN_CASES for t in case]
    tokenizer = WordPieceTokenizer.train(texts * 20, vocabulary_size=400)  # repeated: whole words
    # The id form equals the text form only when every word is one token.
    for word in {w for t in texts for w in t.split()}:
        assert len(np.asarray(tokenizer.tokenize([word])[0])) == 1, word
    return tokenizer


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("tokenize", ["cjk", "rouge"])
def test_english_text_matches_rouge_score(char_tokenizer, n, tokenize):
    references, candidates = zip(*EN_CASES)
    values = RougeNReward(n, char_tokenizer, tokenize=tokenize)(*pack(char_tokenizer, candidates, references))
    # tokenize="rouge" is rouge-score's own tokenizer (its default).
    expected = rouge_score_f(references, candidates, n, None if tokenize == "rouge" else CJKWords())
    check(values, expected)
    assert values.numpy()[0] == pytest.approx(1.0)


def test_english_hand_counts(char_tokenizer):
    # "the cat sat on the mat" vs "the cat on a mat": unigrams the cat on mat
    # shared (4 of 5, 4 of 6) -> 8/11; bigrams "the cat" only (1 of 4, 1 of 5) -> 2/9.
    batch = pack(char_tokenizer, ["the cat on a mat"], ["the cat sat on the mat"])
    check(RougeNReward(1, char_tokenizer)(*batch), [8 / 11])
    check(RougeNReward(2, char_tokenizer)(*batch), [2 / 9])
    # Clipping: "the the the the" shares only the reference's two "the".
    batch = pack(char_tokenizer, ["the the the the"], ["the cat sat on the mat"])
    check(RougeNReward(1, char_tokenizer)(*batch), [2 * (2 / 4) * (2 / 6) / (2 / 4 + 2 / 6)])


def test_chinese_cjk_segmentation_hand_counts(char_tokenizer):
    references, candidates, rouge1, rouge2 = zip(*ZH_CASES)
    batch = pack(char_tokenizer, candidates, references)
    check(RougeNReward(1, char_tokenizer)(*batch), rouge1)
    check(RougeNReward(2, char_tokenizer)(*batch), rouge2)
    # The same figures from rouge-score given the per-character tokenizer.
    check(RougeNReward(1, char_tokenizer)(*batch), rouge_score_f(references, candidates, 1, CJKWords()))
    check(RougeNReward(2, char_tokenizer)(*batch), rouge_score_f(references, candidates, 2, CJKWords()))
    # rouge-score's own tokenizer drops every CJK character: all zero.
    check(RougeNReward(1, char_tokenizer, tokenize="rouge")(*batch), [0.0] * len(ZH_CASES))


def test_id_mode_equals_text_mode_when_words_are_tokens(word_tokenizer, char_tokenizer):
    references, candidates = zip(*EN_CASES)
    batch = pack(word_tokenizer, candidates, references)
    for n in (1, 2):
        check(RougeNReward(n)(*batch), RougeNReward(n, word_tokenizer)(*batch).numpy())
    # Chinese through a character tokenizer: one id per character, as "cjk".
    references, candidates, rouge1, rouge2 = zip(*ZH_CASES)
    batch = pack(char_tokenizer, candidates, references)
    check(RougeNReward(1)(*batch), rouge1)
    check(RougeNReward(2)(*batch), rouge2)


def test_id_mode_hand_cases():
    # Content ids only: PAD 0, EOS 2 and UNK 3 are left out.
    prompts = tf.constant([[1, 9, 4]] * 4, tf.int32)
    references = tf.constant([[5, 6, 7, 8, 2], [5, 6, 2, 0, 0], [5, 3, 6, 2, 0], [5, 2, 0, 0, 0]], tf.int32)
    candidates = tf.constant([[5, 6, 7, 9, 2], [6, 5, 2, 0, 0], [5, 6, 2, 0, 0], [5, 2, 0, 0, 0]], tf.int32)
    # bigrams: {56,67,78} vs {56,67,79}: 2/3; {56} vs {65}: 0; UNK dropped -> {56} = {56}: 1;
    # one token each side: no bigram -> 0 (rouge-score's divide by max(count, 1)).
    check(RougeNReward(2)(prompts, candidates, references), [2 / 3, 0.0, 1.0, 0.0])
    check(RougeNReward(1)(prompts, candidates, references), [0.75, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("n", [1, 2])
def test_inside_tf_function(word_tokenizer, n):
    references, candidates = zip(*EN_CASES)
    batch = pack(word_tokenizer, candidates, references)
    expected = rouge_score_f(references, candidates, n, CJKWords())
    text_reward, id_reward = RougeNReward(n, word_tokenizer), RougeNReward(n)
    check(tf.function(text_reward.__call__)(*batch), expected)
    check(tf.function(id_reward.__call__)(*batch), expected)
    check(tf.function(id_reward.__call__, jit_compile=True)(*batch), expected)


def test_names_registration_and_errors(char_tokenizer):
    one, two = rewards.get("rouge_1"), rewards.get("rouge_2", tokenizer=char_tokenizer)
    assert isinstance(one, RougeNReward) and (one.n, one.name, one.tokenizer) == (1, "rouge_1", None)
    assert isinstance(two, RougeNReward) and (two.n, two.name) == (2, "rouge_2")
    assert two.tokenizer is char_tokenizer
    assert RougeNReward(3).name == "rouge_3" and RougeNReward(2, name="r2").name == "r2"
    assert repr(one) == "RougeNReward(n=1, name='rouge_1', ids)"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive int"):
            RougeNReward(bad)
    with pytest.raises(ValueError, match="Unknown tokenization"):
        RougeNReward(1, tokenize="bogus")
    # In a weighted sum: the mean of ROUGE-1, ROUGE-2 and ROUGE-L.
    batch = pack(char_tokenizer, ["the cat on a mat"], ["the cat sat on the mat"])
    composite = rewards.WeightedReward(
        [(rewards.get("rouge_1", tokenizer=char_tokenizer), 1 / 3),
         (rewards.get("rouge_2", tokenizer=char_tokenizer), 1 / 3),
         (rewards.RougeLReward(char_tokenizer), 1 / 3)]
    )
    check(composite(*batch), [(8 / 11 + 2 / 9 + 8 / 11) / 3])
