"""`NoveltyReward` against a brute-force count over Python lists of words."""

import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.rewards import NoveltyReward, get
from keras_selffb.text import CharTokenizer, pack_pairs


def brute_force(prompts, replies, n):
    """Share of each reply's n-gram occurrences that no reply to another prompt contains."""
    grams = [[tuple(words[i:i + n]) for i in range(len(words) - n + 1)] for words in replies]
    values = []
    for i, own in enumerate(grams):
        elsewhere = {g for j, other in enumerate(grams) if prompts[j] != prompts[i] for g in other}
        has_other = any(p != prompts[i] for p in prompts)
        values.append(sum(g not in elsewhere for g in own) / len(own) if own and has_other else 0.0)
    return np.array(values)


def test_token_ids_match_brute_force_on_random_batches():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        for _ in range(20):
            rows = 12
            prompt_of_row = rng.integers(0, 4, rows)
            prompts = np.stack([[1, 10 + p, 4] for p in prompt_of_row])
            lengths = rng.integers(0, 9, rows)
            candidates = np.zeros((rows, 10), np.int32)
            replies = []
            for r, length in enumerate(lengths):
                tokens = rng.integers(5, 9, length)  # a small vocabulary: many shared n-grams
                candidates[r, :length] = tokens
                candidates[r, length] = 2  # EOS
                replies.append(list(tokens))
            got = NoveltyReward(n=n)(prompts, candidates, None).numpy()
            np.testing.assert_allclose(got, brute_force(list(prompt_of_row), replies, n), atol=1e-6)


def test_words_of_chinese_and_accented_text_inside_tf_function():
    pairs = [("你好", "我 很 好 谢谢 你"), ("你好", "我 很 好"), ("café?", "un café noir s'il vous plaît"),
             ("天气", "今天 天气 很 好"), ("天气", "")]
    tokenizer = CharTokenizer.train([t for p in pairs for t in p])
    packed = pack_pairs(tokenizer, pairs, 8, 40, warn=False)
    reward = NoveltyReward(n=2, tokenizer=tokenizer)
    got = tf.function(lambda p, c: reward(p, c, None))(tf.constant(packed[:, :8]), tf.constant(packed[:, 8:]))
    from keras_selffb.text import segmentation

    words = [[w.decode() for w in row] for row in segmentation.segment([r for _, r in pairs], "cjk").to_list()]
    np.testing.assert_allclose(got.numpy(), brute_force([p for p, _ in pairs], words, 2), atol=1e-6)
    # "cjk" makes each Han character a word. Row 0's bigrams: 我很 很好 好谢 谢谢 谢你. It shares
    # 我很 with row 1 (same prompt: free) and 很好 with row 3 (another prompt): 4 of 5 novel.
    assert got.numpy()[0] == pytest.approx(0.8) and got.numpy()[4] == 0.0


def test_one_prompt_batch_and_errors():
    candidates = [[5, 6, 7, 2], [5, 6, 8, 2]]
    assert NoveltyReward()([[1, 9, 4], [1, 9, 4]], candidates, None).numpy().tolist() == [0.0, 0.0]
    # A generic reply shared by every prompt earns 0.
    generic = NoveltyReward()([[1, 9, 4], [1, 8, 4]], [[5, 6, 7, 2], [5, 6, 7, 2]], None).numpy()
    assert generic.tolist() == [0.0, 0.0]
    assert isinstance(get("novelty"), NoveltyReward)
    with pytest.raises(ValueError, match="positive int"):
        NoveltyReward(n=0)
    with pytest.raises(ValueError, match="needs the prompts"):
        NoveltyReward()(None, candidates, None)
