"""Rewards: tables of cases with exact values, checked against references.

References: rouge-score (with a CJK word tokenizer object) for ROUGE-L and
ROUGE-1, sacrebleu `sentence_bleu` for BLEU, a numpy log-softmax over the
policy's logits for fluency, a numpy cosine over separately encoded
sequences for relevance, and hand counts for distinct-n.
"""

import re

import keras
import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from rouge_score import rouge_scorer

from keras_selffb import rewards
from keras_selffb.models import LLMEncoder, PolicyNetwork
from keras_selffb.text import CharTokenizer, pack_prompts, pack_responses

P, R = 32, 32  # packed prompt and response columns: every test text fits
TEXTS = [
    "the cat sat on the mat", "the cat on a mat", "the cat is on the mat",
    "hello world", "good morning", "how is the weather today",
    "the weather is good", "今天天气很好", "今天天气不错", "你好，世界。",
    "你好世界", "今天天气怎么样", "天气很好", "哈哈哈哈哈哈", "我爱北京",
]
_CJK = "\u3001-\u303f\u3040-\u30ff\u4e00-\u9fff\uff01-\uffef"


class CJKWords:
    """Python twin of the "cjk" segmentation, as a rouge-score tokenizer."""

    def tokenize(self, text):
        text = re.sub(f"([{_CJK}])", r" \1 ", text.lower())
        return re.findall(rf"[{_CJK}]|[^\W_]+", text)


def cjk_join(text):
    """Pre-segmented text for sacrebleu's `tokenize="none"`."""
    return " ".join(CJKWords().tokenize(text))


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(TEXTS)


@pytest.fixture(scope="module")
def policy(tokenizer):
    keras.utils.set_random_seed(7)
    return PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=8, hidden_dim=8)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    keras.utils.set_random_seed(8)
    return LLMEncoder(tokenizer.vocabulary_size, embedding_dim=8, hidden_dim=8)


def pack(tokenizer, prompts, candidates, references=None):
    """Packed int32 `(prompts [B, P], candidates [B, R], references [B, R])`."""
    references = candidates if references is None else references
    return (
        pack_prompts(tokenizer, list(prompts), P)[0],
        pack_responses(tokenizer, list(candidates), R)[0],
        pack_responses(tokenizer, list(references), R)[0],
    )


def ids(rows, width=6):
    """Right-pads lists of ids with PAD into an int32 tensor."""
    return tf.constant([row + [0] * (width - len(row)) for row in rows], tf.int32)


def check(values, expected, atol=1e-5):
    assert values.dtype == tf.float32
    np.testing.assert_allclose(values.numpy(), np.asarray(expected, np.float64), atol=atol)


# --- ROUGE-L ---------------------------------------------------------------

ROUGE_TEXT_CASES = [
    # (reference, candidate, expected ROUGE-L F)
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),  # identical
    ("the cat sat on the mat", "the cat on a mat", 8 / 11),  # LCS 4: P 4/5, R 4/6
    ("hello world", "good morning", 0.0),  # no common word
    ("hello world", "", 0.0),  # empty candidate (EOS only)
    ("今天天气很好", "今天天气不错", 4 / 6),  # per character: LCS 今天天气
    ("你好，世界。", "你好世界", 0.8),  # full-width punctuation is a token: R 4/6
    ("今天天气很好", "good morning", 0.0),  # scripts that share nothing
]


def test_rouge_l_text_cases_match_rouge_score(tokenizer):
    references, candidates, expected = zip(*ROUGE_TEXT_CASES)
    batch = pack(tokenizer, ["hello"] * len(expected), candidates, references)
    values = rewards.RougeLReward(tokenizer)(*batch)
    check(values, expected)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CJKWords())
    reference = [scorer.score(r, c)["rougeL"].fmeasure for r, c in zip(references, candidates)]
    check(values, reference)


def test_rouge_l_with_rouge_score_tokenizer_scores_chinese_zero(tokenizer):
    # tokenize="rouge" is rouge-score's default, which drops every CJK char.
    batch = pack(tokenizer, ["hello"] * 2, ["今天天气很好", "the cat on a mat"],
                 ["今天天气很好", "the cat sat on the mat"])
    check(rewards.RougeLReward(tokenizer, tokenize="rouge")(*batch), [0.0, 8 / 11])


ROUGE_ID_CASES = [
    # (reference ids, candidate ids, expected)
    ([5, 6, 7, 2], [5, 6, 7, 2], 1.0),  # identical
    ([5, 6, 7, 2], [5, 7, 2], 0.8),  # LCS 2: P 1, R 2/3
    ([5, 6, 2], [8, 9, 2], 0.0),  # no overlap
    ([5, 6, 2], [2], 0.0),  # empty candidate: only EOS
    ([5, 6, 2], [], 0.0),  # no token at all
    ([3, 3, 2], [3, 3, 2], 0.0),  # [UNK] is not content: nothing to match
    ([5, 3, 6, 2], [5, 6, 2], 1.0),  # UNK dropped from the reference
]


def test_rouge_l_id_cases():
    references, candidates, expected = zip(*ROUGE_ID_CASES)
    prompts = ids([[1, 9, 4]] * len(expected))
    check(rewards.RougeLReward()(prompts, ids(candidates), ids(references)), expected)


# --- BLEU ------------------------------------------------------------------

BLEU_TEXT_CASES = [
    # (reference, candidate, expected sentence BLEU / 100)
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),  # identical
    # 5/6 3/5 1/4 precisions, 4-grams 0/3 -> "exp" smoothing gives 1/(2*3)
    ("the cat sat on the mat", "the cat is on the mat", (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25),
    ("hello world", "good morning", 0.0),  # no common word
    ("hello world", "", 0.0),  # empty candidate: brevity penalty 0
    # per character: 4/6 3/5 2/4 1/3 precisions, no brevity penalty
    ("今天天气很好", "今天天气不错", (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25),
]


def test_bleu_text_cases_match_sacrebleu(tokenizer):
    references, candidates, expected = zip(*BLEU_TEXT_CASES)
    batch = pack(tokenizer, ["hello"] * len(expected), candidates, references)
    values = rewards.BleuReward(tokenizer)(*batch)
    check(values, expected)
    reference = [
        sacrebleu.sentence_bleu(cjk_join(c), [cjk_join(r)], tokenize="none").score / 100
        for r, c in zip(references, candidates)
    ]
    check(values, reference)


def test_bleu_zh_tokenizer_matches_sacrebleu_zh(tokenizer):
    references = ["今天天气很好", "你好，世界。", "the cat sat on the mat"]
    candidates = ["今天天气不错", "你好世界", "the cat on a mat"]
    batch = pack(tokenizer, ["hello"] * 3, candidates, references)
    values = rewards.BleuReward(tokenizer, tokenize="zh")(*batch)
    reference = [sacrebleu.sentence_bleu(c, [r], tokenize="zh").score / 100
                 for r, c in zip(references, candidates)]
    check(values, reference)


BLEU_ID_CASES = [
    # (reference ids, candidate ids, expected)
    ([5, 6, 7, 8, 2], [5, 6, 7, 8, 2], 1.0),  # identical
    ([5, 6, 7, 8, 2], [5, 6, 7, 9, 2], 0.125 ** 0.25),  # 3/4 2/3 1/2, 4-gram 0 -> exp 1/2
    ([5, 6, 2], [8, 9, 2], 0.0),  # no overlap
    ([5, 6, 2], [2], 0.0),  # empty candidate
    ([3, 3, 2], [3, 3, 2], 0.0),  # [UNK] is not content
]


def test_bleu_id_cases_match_sacrebleu():
    references, candidates, expected = zip(*BLEU_ID_CASES)
    prompts = ids([[1, 9, 4]] * len(expected))
    values = rewards.BleuReward()(prompts, ids(candidates), ids(references))
    check(values, expected)
    words = lambda row: " ".join(str(i) for i in row if i >= 5)  # noqa: E731
    reference = [sacrebleu.sentence_bleu(words(c), [words(r)], tokenize="none").score / 100
                 for r, c in zip(references, candidates)]
    check(values, reference)


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="smooth_method"):
        rewards.BleuReward(smooth_method="bogus")
    with pytest.raises(ValueError, match="Unknown tokenization"):
        rewards.RougeLReward(tokenize="bogus")
    with pytest.raises(TypeError, match="detokenize"):
        rewards.RougeLReward(tokenizer="not a tokenizer")


# --- Fluency ---------------------------------------------------------------


def numpy_fluency(policy, prompts, candidates):
    """exp(mean log-softmax) over real candidate tokens, in numpy (float64)."""
    prompts, candidates = np.asarray(prompts), np.asarray(candidates)
    inputs = np.concatenate([prompts, candidates[:, :-1]], axis=1)
    logits = np.asarray(policy(inputs), np.float64)[:, P - 1:, :]
    logits[..., [0, 1, 3, 4]] -= 1e9  # the sampler's special_token_bias
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    out = []
    for row, tokens in zip(log_probs, candidates):
        n = int((tokens != 0).sum())
        out.append(np.exp(row[np.arange(n), tokens[:n]].mean()) if n else 0.0)
    return np.asarray(out)


def test_fluency_matches_numpy_log_softmax(policy, tokenizer):
    # Chinese, English, EOS only, a reply cut at R tokens (no EOS).
    candidates = ["今天天气很好", "the cat sat on the mat", "", "哈" * (R + 2)]
    prompts, cand_ids, _ = pack(tokenizer, ["你好"] * 4, candidates)
    cand_ids = tf.concat([cand_ids, tf.zeros([1, R], tf.int32)], axis=0)  # no token at all
    prompts = tf.concat([prompts, prompts[:1]], axis=0)
    values = rewards.FluencyReward(policy)(prompts, cand_ids, None)
    check(values, numpy_fluency(policy, prompts, cand_ids))
    assert values[4] == 0.0  # no token at all
    assert np.all(values.numpy()[:4] > 0) and np.all(values.numpy() <= 1)


def test_fluency_of_a_uniform_model_is_one_over_allowed_ids(tokenizer):
    # Zero output layer: uniform over the V - 4 ids the sampler may emit,
    # so every reply has perplexity V - 4 whatever its length.
    lm = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=8, hidden_dim=8)
    lm.head.set_weights([np.zeros_like(w) for w in lm.head.get_weights()])
    batch = pack(tokenizer, ["你好", "hello"], ["今天天气很好", ""])
    check(rewards.FluencyReward(lm)(*batch), [1 / (tokenizer.vocabulary_size - 4)] * 2)


def test_fluency_with_a_dynamic_prompt_width_equals_eager(policy, tokenizer):
    reward = rewards.FluencyReward(policy)
    graph = tf.function(reward.__call__, input_signature=[tf.TensorSpec([None, None], tf.int32)] * 3)
    batch = pack(tokenizer, ["你好", "hello"], ["今天天气很好", "hi"])
    check(graph(*batch), reward(*batch).numpy())


def test_fluency_sends_no_gradient_to_the_reference(policy, tokenizer):
    batch = pack(tokenizer, ["你好"], ["今天天气很好"])
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(rewards.FluencyReward(policy)(*batch))
    assert all(g is None for g in tape.gradient(value, policy.trainable_variables))


# --- Relevance -------------------------------------------------------------


def numpy_relevance(encoder, prompts, candidates):
    """(1 + cos) / 2 of features of each row's content ids, encoded alone."""
    out = []
    for p, c in zip(np.asarray(prompts), np.asarray(candidates)):
        p, c = p[p >= 5], c[c >= 5]
        if not len(p) or not len(c):
            out.append(0.0)
            continue
        a = np.asarray(encoder(p[None]), np.float64)[0]
        b = np.asarray(encoder(c[None]), np.float64)[0]
        out.append((1 + a @ b / np.linalg.norm(a) / np.linalg.norm(b)) / 2)
    return np.asarray(out)


def test_relevance_encoder_matches_numpy_cosine(encoder, tokenizer):
    prompts = ["今天天气怎么样", "今天天气怎么样", "hello world", "hello world"]
    candidates = ["今天天气怎么样", "天气很好", "good morning", ""]
    batch = pack(tokenizer, prompts, candidates)
    values = rewards.RelevanceReward(encoder)(*batch)
    check(values, numpy_relevance(encoder, batch[0], batch[1]))
    check(values[0], 1.0)  # same content as the prompt: cosine 1
    check(values[3], 0.0)  # empty candidate


RELEVANCE_TEXT_CASES = [
    # (prompt, candidate, expected ROUGE-1 F of candidate vs prompt)
    ("how is the weather today", "the weather is good", 2 / 3),  # 3 shared: P 3/4, R 3/5
    ("今天天气怎么样", "天气很好", 4 / 11),  # 天 气 shared: P 2/4, R 2/7
    ("hello world", "good morning", 0.0),  # nothing shared
    ("hello world", "", 0.0),  # empty candidate
]


def test_relevance_overlap_text_cases_match_rouge_score(tokenizer):
    prompts, candidates, expected = zip(*RELEVANCE_TEXT_CASES)
    values = rewards.RelevanceReward(tokenizer=tokenizer)(*pack(tokenizer, prompts, candidates))
    check(values, expected)
    scorer = rouge_scorer.RougeScorer(["rouge1"], tokenizer=CJKWords())
    check(values, [scorer.score(p, c)["rouge1"].fmeasure for p, c in zip(prompts, candidates)])


def test_relevance_overlap_id_cases():
    prompts = ids([[0, 1, 5, 6, 7, 4]] * 4)
    candidates = ids([
        [6, 7, 8, 9, 2],  # 2 shared: P 2/4, R 2/3 -> 4/7
        [5, 6, 7, 2],  # the prompt's content exactly
        [2],  # empty candidate
        [1, 4, 2],  # only reserved ids: BOS/SEP are not prompt words
    ])
    check(rewards.RelevanceReward()(prompts, candidates, None), [4 / 7, 1.0, 0.0, 0.0])


# --- Informativeness -------------------------------------------------------

INFORMATIVENESS_ID_CASES = [
    # (candidate ids, expected distinct-2 * min(1, length / 10))
    (list(range(5, 15)) + [2], 1.0),  # 10 different tokens: 9/9 bigrams, full length
    ([5] * 10 + [2], 1 / 9),  # one token repeated: 1 distinct of 9 bigrams
    ([5, 6, 2], 0.2),  # 1/1 bigram, but 2 tokens of 10
    ([5, 2], 0.0),  # one token: no bigram
    ([2], 0.0),  # empty candidate
    ([5, 6, 5, 6, 5, 6, 5, 6, 5, 6, 5, 6, 2], 2 / 11),  # 2 distinct of 11, capped length
]


def test_informativeness_id_cases():
    candidates, expected = zip(*INFORMATIVENESS_ID_CASES)
    reward = rewards.InformativenessReward(n=2, target_length=10)
    check(reward(None, ids(candidates, width=14), None), expected)


def test_informativeness_unigrams_and_text(tokenizer):
    # n=1, target 4: [5, 5, 6] has 2 distinct of 3 unigrams, length 3/4.
    unigrams = rewards.InformativenessReward(n=1, target_length=4)
    check(unigrams(None, ids([[5, 5, 6, 2]]), None), [0.5])
    cases = [
        ("the cat sat on the mat", 0.6),  # 5/5 distinct word bigrams, 6 words of 10
        ("今天天气很好", 0.6),  # 5/5 character bigrams, 6 of 10
        ("哈哈哈哈哈哈", 0.12),  # 1 of 5 bigrams distinct, 6 of 10
        ("", 0.0),  # empty candidate
    ]
    texts, expected = zip(*cases)
    _, candidates, _ = pack(tokenizer, ["hello"] * 4, texts)
    check(rewards.InformativenessReward(tokenizer=tokenizer)(None, candidates, None), expected)


def test_informativeness_bad_arguments():
    with pytest.raises(ValueError, match="`n`"):
        rewards.InformativenessReward(n=0)
    with pytest.raises(ValueError, match="target_length"):
        rewards.InformativenessReward(target_length=0)


# --- WeightedReward, article_reward, get -----------------------------------


def test_weighted_components_and_total_by_hand():
    prompts = ids([[0, 1, 5, 6, 4]] * 2)
    references = ids([[5, 6, 7, 2], [5, 6, 2]])
    candidates = ids([[5, 7, 2], [8, 9, 2]])
    reward = rewards.WeightedReward({rewards.RougeLReward(): 2.0, rewards.RelevanceReward(): -0.5})
    parts = reward.components(prompts, candidates, references)
    assert list(parts) == ["rouge_l", "relevance"]
    check(parts["rouge_l"], [0.8, 0.0])  # LCS 2 of 3/2; no overlap
    check(parts["relevance"], [0.5, 0.0])  # 1 shared: P 1/2, R 1/2; none
    check(reward.total(parts), [2 * 0.8 - 0.5 * 0.5, 0.0])
    check(reward(prompts, candidates, references), [1.35, 0.0])


def test_weighted_rejects_duplicates_and_bad_items():
    with pytest.raises(ValueError, match=r"distinct names.*\['bleu'\]"):
        rewards.WeightedReward({rewards.BleuReward(): 1.0, rewards.BleuReward(): 1.0})
    with pytest.raises(TypeError, match="Reward instances"):
        rewards.WeightedReward({len: 1.0})
    with pytest.raises(ValueError, match="finite"):
        rewards.WeightedReward({rewards.BleuReward(): float("nan")})
    with pytest.raises(ValueError, match="at least one"):
        rewards.WeightedReward({})


def test_article_reward_is_the_weighted_sum_of_its_parts(policy, encoder, tokenizer):
    batch = pack(tokenizer, ["今天天气怎么样", "hello world"], ["天气很好", ""])
    reward = rewards.article_reward(
        policy, encoder=encoder, tokenizer=tokenizer, weights=(1.0, 2.0, 0.5))
    parts = reward.components(*batch)
    assert list(parts) == ["fluency", "relevance", "informativeness"]
    check(parts["fluency"], numpy_fluency(policy, batch[0], batch[1]))
    check(parts["relevance"], numpy_relevance(encoder, batch[0], batch[1]))
    check(parts["informativeness"], [0.4, 0.0])  # 3/3 char bigrams * 4/10; empty
    expected = parts["fluency"] + 2.0 * parts["relevance"] + 0.5 * parts["informativeness"]
    check(reward(*batch), expected.numpy())
    with pytest.raises(ValueError, match="three weights"):
        rewards.article_reward(policy, weights=(1.0, 1.0))


def test_get_by_name_dict_and_instance():
    assert isinstance(rewards.get("rouge_l"), rewards.RougeLReward)
    bleu = rewards.get({"class_name": "bleu", "config": {"smooth_method": "floor"}})
    assert isinstance(bleu, rewards.BleuReward) and bleu.smooth_method == "floor"
    assert rewards.get(bleu) is bleu
    with pytest.raises(ValueError, match="'rouge_l', 'bleu', 'chrf', 'fluency'"):
        rewards.get("rogue")


# --- PythonReward ----------------------------------------------------------


def candidate_length(prompts, candidates, references):
    return [len(c) for c in candidates]


def test_python_reward_gives_the_function_floats(tokenizer):
    batch = pack(tokenizer, ["你好", "hello"], ["今天天气很好", ""])
    reward = rewards.PythonReward(candidate_length, tokenizer)
    assert reward.name == "candidate_length"
    check(reward(*batch), [6.0, 0.0])  # characters, reserved ids removed
    echo = rewards.PythonReward(lambda p, c, r: [float(len(x)) for x in p], tokenizer)
    assert echo.name == "python"  # a lambda has no usable name
    check(echo(*batch), [2.0, 5.0])


PYTHON_ERROR_CASES = [
    # (what fn returns for a batch of 2, the error message)
    (lambda p, c, r: [1.0], "returned 1 values for a batch of 2"),  # wrong length
    (lambda p, c, r: [1.0, None], "returned None for candidate 1"),  # never a silent NaN
    (lambda p, c, r: [1.0, "x"], "non-numeric value for candidate 1"),  # a string
    (lambda p, c, r: 3.0, "must return a sequence of 2 floats"),  # a scalar
]


def test_python_reward_bad_outputs_raise_naming_the_reward(tokenizer):
    batch = pack(tokenizer, ["你好", "hello"], ["今天天气很好", ""])
    for fn, message in PYTHON_ERROR_CASES:
        reward = rewards.PythonReward(fn, tokenizer, name="my_score")
        with pytest.raises(ValueError, match=f"'my_score'.*{message}"):
            reward(*batch)
    # In a graph TensorFlow re-raises it with the same message.
    wrong_length = rewards.PythonReward(PYTHON_ERROR_CASES[0][0], tokenizer, name="my_score")
    with pytest.raises(tf.errors.InvalidArgumentError, match="'my_score'.*batch of 2"):
        tf.function(wrong_length)(*batch)


# --- Graph mode, XLA -------------------------------------------------------

# The id forms are compared in graph mode by the XLA test below; the
# article preset is a WeightedReward of parts that are all listed here.
REWARD_FACTORIES = {
    "rouge_l_text": lambda t, p, e: rewards.RougeLReward(t),
    "bleu_text": lambda t, p, e: rewards.BleuReward(t),
    "fluency": lambda t, p, e: rewards.FluencyReward(p),
    "relevance_encoder": lambda t, p, e: rewards.RelevanceReward(e),
    "relevance_text": lambda t, p, e: rewards.RelevanceReward(tokenizer=t),
    "informativeness_text": lambda t, p, e: rewards.InformativenessReward(tokenizer=t),
    "python": lambda t, p, e: rewards.PythonReward(candidate_length, t),
}


@pytest.mark.parametrize("kind", sorted(REWARD_FACTORIES))
def test_tf_function_equals_eager(kind, tokenizer, policy, encoder):
    batch = pack(tokenizer, ["今天天气怎么样", "how is the weather today", "hello world"],
                 ["天气很好", "the weather is good", ""],
                 ["今天天气很好", "the cat sat on the mat", "hello world"])
    reward = REWARD_FACTORIES[kind](tokenizer, policy, encoder)
    # Unknown batch and response widths; the prompt width P is static, as
    # in the trainer (FluencyReward needs it to find the response logits).
    spec = [tf.TensorSpec([None, P], tf.int32)] + [tf.TensorSpec([None, None], tf.int32)] * 2
    graph = tf.function(reward.__call__, input_signature=spec)
    values = graph(*batch)
    assert values.shape == [3]
    check(values, reward(*batch).numpy())


def test_id_rewards_compile_under_xla(policy, encoder):
    prompts = ids([[0, 1, 5, 6, 7, 4], [1, 8, 9, 10, 11, 4]])
    candidates = ids([[6, 7, 8, 9, 2], [9, 9, 9, 2]])
    references = ids([[5, 6, 7, 8, 2], [9, 10, 2]])
    reward = rewards.WeightedReward([
        (rewards.RougeLReward(), 1.0), (rewards.BleuReward(), 1.0),
        (rewards.RelevanceReward(), 1.0), (rewards.InformativenessReward(), 1.0),
        (rewards.FluencyReward(policy), 1.0),
        (rewards.RelevanceReward(encoder, name="cosine"), 1.0),
    ])
    compiled = tf.function(reward.components, jit_compile=True)(prompts, candidates, references)
    eager = reward.components(prompts, candidates, references)
    for name, values in eager.items():
        check(compiled[name], values.numpy())


def test_the_pipelines_composite_reward_is_the_weighted_sum_of_its_five_terms():
    from keras_selffb.config import TrainConfig
    from keras_selffb.models import RelevanceJudge
    from keras_selffb.pipeline import make_reward

    tokenizer = CharTokenizer.train(TEXTS)
    keras.utils.set_random_seed(0)
    reference = PolicyNetwork(tokenizer.vocabulary_size, 8, 16)
    judge = RelevanceJudge(tokenizer.vocabulary_size, embedding_dim=8, hidden_dim=8, projection_dim=8)
    config = TrainConfig(reward_rouge_l=1.0, reward_judge=0.5, reward_informativeness=0.25, reward_fluency=2.0,
                         reward_novelty=0.75)
    reward = make_reward(config, tokenizer, reference, judge)
    prompts = pack_prompts(tokenizer, TEXTS[:6], P)[0]
    candidates = pack_responses(tokenizer, TEXTS[6:12], R)[0]
    references = pack_responses(tokenizer, TEXTS[3:9], R)[0]
    parts = reward.components(prompts, candidates, references)
    assert reward.component_names() == ["rouge_l", "judge_relevance", "informativeness", "fluency", "novelty"]
    # Each term, computed on its own by the reward class it names.
    alone = {
        "rouge_l": rewards.RougeLReward(tokenizer),
        "judge_relevance": rewards.JudgeReward(judge),
        "informativeness": rewards.InformativenessReward(tokenizer=tokenizer),
        "fluency": rewards.FluencyReward(reference),
        "novelty": rewards.NoveltyReward(tokenizer=tokenizer),
    }
    expected = np.zeros(6)
    for (name, single), weight in zip(alone.items(), (1.0, 0.5, 0.25, 2.0, 0.75)):
        value = single(prompts, candidates, references).numpy()
        np.testing.assert_allclose(parts[name].numpy(), value, atol=1e-6)
        expected += weight * value
    np.testing.assert_allclose(reward.total(parts).numpy(), expected, atol=1e-5)
    # A weight of 0 leaves its term out.
    lean = make_reward(TrainConfig(reward_fluency=0.0, reward_informativeness=0.0, reward_novelty=0.0),
                       tokenizer, reference, judge)
    assert lean.component_names() == ["rouge_l", "judge_relevance"]


def test_the_pipelines_named_rewards_are_their_classes():
    from keras_selffb.config import TrainConfig
    from keras_selffb.pipeline import make_reward

    tokenizer = CharTokenizer.train(TEXTS)
    expected = {"rouge_l": rewards.RougeLReward, "bleu": rewards.BleuReward, "chrf": rewards.ChrFReward}
    for name, cls in expected.items():
        reward = make_reward(TrainConfig(rl_reward=name), tokenizer, None)
        assert type(reward) is cls and reward.name == name
