"""Tokenizers and packing: round trips on real text, reserved ids, errors."""

import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.text import (
    BOS_ID,
    EOS_ID,
    NUM_RESERVED,
    PAD_ID,
    RESERVED_TOKENS,
    SEP_ID,
    UNK_ID,
    CharTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    pack_pairs,
    pack_prompts,
    save_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "Hello, world! How are you?",
    "你好，世界！今天天气很好。",
    "Crème brûlée à l'érable, naïve façade",
    "Emoji: 😀🎉 👍🏽 ok",
    "",
]


def decode(tensor):
    return [t.decode("utf-8") for t in tensor.numpy()]


def test_reserved_ids_are_fixed():
    assert RESERVED_TOKENS == ("[PAD]", "[BOS]", "[EOS]", "[UNK]", "[SEP]")
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID, SEP_ID) == (0, 1, 2, 3, 4)
    tokenizer = CharTokenizer.train(TEXTS)
    assert tokenizer.vocabulary[:NUM_RESERVED] == list(RESERVED_TOKENS)


def test_char_round_trip_english_chinese_accents_emoji():
    tokenizer = CharTokenizer.train(TEXTS)
    ids = tokenizer.tokenize(TEXTS)
    # One id per code point, same as Python's own iteration over a str.
    assert ids.row_lengths().numpy().tolist() == [len(t) for t in TEXTS]
    assert decode(tokenizer.detokenize(ids)) == TEXTS
    assert int(tf.reduce_min(ids.flat_values)) >= NUM_RESERVED


def test_char_vocabulary_order_and_cap():
    tokenizer = CharTokenizer.train(["aaab", "bc"], vocabulary_size=NUM_RESERVED + 2)
    # Most frequent first: a (3), b (2); c is cut and becomes [UNK].
    assert tokenizer.vocabulary[NUM_RESERVED:] == ["a", "b"]
    ids = tokenizer.tokenize(["abc"]).to_list()
    assert ids == [[NUM_RESERVED, NUM_RESERVED + 1, UNK_ID]]
    assert decode(tokenizer.detokenize(tf.ragged.constant(ids))) == ["ab\ufffd"]


def test_detokenize_drops_special_ids():
    tokenizer = CharTokenizer.train(["ab"])
    a, b = NUM_RESERVED, NUM_RESERVED + 1
    ids = tf.constant([[PAD_ID, BOS_ID, a, SEP_ID, b, EOS_ID, PAD_ID]])
    assert decode(tokenizer.detokenize(ids)) == ["ab"]


def test_wordpiece_round_trip_keeps_words_and_cjk():
    corpus = [t for t in TEXTS if t] * 20
    tokenizer = WordPieceTokenizer.train(corpus, vocabulary_size=200)
    assert tokenizer.vocabulary[:NUM_RESERVED] == list(RESERVED_TOKENS)
    texts = ["Hello world", "你好世界", "Crème brûlée"]
    out = decode(tokenizer.detokenize(tokenizer.tokenize(texts)))
    # Case and accents kept; CJK characters are split then re-joined.
    assert out == texts


def test_save_load_round_trip(tmp_path):
    for kind in ("char", "wordpiece"):
        tokenizer = train_tokenizer([t for t in TEXTS if t] * 5, kind=kind, vocabulary_size=300)
        save_tokenizer(tokenizer, tmp_path / kind)
        loaded = load_tokenizer(str(tmp_path / kind))
        assert type(loaded) is type(tokenizer)
        assert loaded.vocabulary == tokenizer.vocabulary
        np.testing.assert_array_equal(
            loaded.tokenize(TEXTS[:3]).to_tensor().numpy(),
            tokenizer.tokenize(TEXTS[:3]).to_tensor().numpy(),
        )


def test_vocabulary_smaller_than_reserved_is_refused():
    with pytest.raises(ValueError, match="reserved tokens"):
        CharTokenizer.train(["abc"], vocabulary_size=3)
    with pytest.raises(ValueError, match="reserved tokens"):
        WordPieceTokenizer.train(["abc"], vocabulary_size=5)


def test_bad_tokenizer_inputs():
    with pytest.raises(ValueError, match="empty corpus"):
        CharTokenizer.train([])
    with pytest.raises(ValueError, match="Unknown tokenizer kind"):
        train_tokenizer(["a"], kind="bpe")
    with pytest.raises(FileNotFoundError, match="No tokenizer found"):
        load_tokenizer("/nonexistent/run")
    with pytest.raises(TypeError, match="tf.string"):
        CharTokenizer.train(["a"]).tokenize(tf.constant([1, 2]))


def test_pack_layout_left_pads_prompt_right_pads_response():
    tokenizer = CharTokenizer(list(RESERVED_TOKENS) + list("abcdefgh"))
    packed = pack_pairs(tokenizer, [("ab", "cde"), ("", "f")], prompt_length=5, response_length=5)
    a, b, c, d, e, f = range(NUM_RESERVED, NUM_RESERVED + 6)
    np.testing.assert_array_equal(
        packed,
        [
            [PAD_ID, BOS_ID, a, b, SEP_ID] + [c, d, e, EOS_ID, PAD_ID],
            [PAD_ID, PAD_ID, PAD_ID, BOS_ID, SEP_ID] + [f, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
        ],
    )


def test_pack_truncates_long_prompts_from_the_front_with_a_warning():
    tokenizer = CharTokenizer(list(RESERVED_TOKENS) + list("abcdefgh"))
    with pytest.warns(UserWarning, match="1 of 1 prompts were longer than 3 tokens"):
        packed = pack_pairs(tokenizer, [("abcdef", "gh")], prompt_length=5, response_length=3)
    d, e, f, g, h = range(NUM_RESERVED + 3, NUM_RESERVED + 8)
    np.testing.assert_array_equal(packed, [[BOS_ID, d, e, f, SEP_ID, g, h, EOS_ID]])
    ids, truncated = pack_prompts(tokenizer, ["abcdef", "ab"], 5)
    assert truncated.numpy().tolist() == [True, False]


def test_pack_refuses_empty_dataset_and_tiny_lengths():
    tokenizer = CharTokenizer(list(RESERVED_TOKENS) + ["a"])
    with pytest.raises(ValueError, match="empty"):
        pack_pairs(tokenizer, [], 5, 5)
    with pytest.raises(ValueError, match="prompt_length must be >= 3"):
        pack_pairs(tokenizer, [("a", "a")], 2, 5)
