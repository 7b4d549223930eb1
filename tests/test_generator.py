"""`ResponseGenerator`: the one object that generates, scores and evaluates.

Scores are compared with numpy (log-softmax by hand), rouge-score and
sacrebleu; the components that take a generator are checked to build the
same thing as with `(policy, tokenizer, prompt_length, max_new_tokens)`.
"""

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from keras_selffb.callbacks import GenerationMetrics
from keras_selffb.export import export_generator
from keras_selffb.generator import (
    ResponseGenerator,
    as_generator,
    fixed_batches,
    map_batched,
    score_replies,
    unpack_generator,
)
from keras_selffb.loop import SelfFeedbackLoop
from keras_selffb.models import PolicyNetwork, get_sampler
from keras_selffb.rewards import RougeLReward
from keras_selffb.text import PAD_ID, CharTokenizer
from keras_selffb.training import ContrastiveTrainer, MLETrainer, ReinforceTrainer

PAIRS = [
    ("hello there", "hi there friend"),
    ("how are you", "fine thanks"),
    ("tell me more", "there is more to tell"),
    ("bye", "see you"),
    ("what now", "now we rest"),
]
TOKENIZER = CharTokenizer.train([t for pair in PAIRS for t in pair])
P, R = 14, 10


def policy(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return PolicyNetwork(TOKENIZER.vocabulary_size, embedding_dim=8, hidden_dim=16)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("total, size, multiple", [(5, 2, 1), (5, 8, 1), (7, 4, 2), (3, 4, 2), (6, 3, 2)])
def test_fixed_batches_have_one_shape_and_cover_every_row_once(total, size, multiple):
    rows = np.arange(total * 2).reshape(total, 2)
    chunks = list(fixed_batches([rows, -rows], size, multiple))
    shapes = {c[0].shape for _, c, _ in chunks}
    assert len(shapes) == 1
    (rows_per_chunk, _), = shapes
    assert rows_per_chunk % multiple == 0 and rows_per_chunk >= min(size, total)
    real = np.concatenate([c[0][:n] for _, c, n in chunks])
    np.testing.assert_array_equal(real, rows)
    for start, (a, b), n in chunks:
        np.testing.assert_array_equal(a[n:], np.repeat(a[n - 1 : n], len(a) - n, axis=0))  # padding: the last row
        np.testing.assert_array_equal(b, -a)
        assert a[0, 0] == rows[start, 0]
    np.testing.assert_array_equal(map_batched(lambda x, y: x * 10 + y, [rows, -rows], size), rows * 9)


def test_fixed_batches_refuse_empty_and_ragged_input():
    with pytest.raises(ValueError, match="no rows"):
        list(fixed_batches([np.zeros((0, 3))], 4))
    with pytest.raises(ValueError, match="differ in rows"):
        list(fixed_batches([np.zeros((3, 3)), np.zeros((2, 3))], 4))
    with pytest.raises(ValueError, match="batch_size"):
        list(fixed_batches([np.zeros((3, 3))], 0))


def test_score_is_the_log_softmax_of_the_reply_tokens():
    model = policy()
    generator = ResponseGenerator(model, TOKENIZER, P, R, batch_size=2)  # 5 rows: 3 batches
    rows = generator.pack(PAIRS)
    scores = generator.score(rows)
    assert scores.shape == (len(PAIRS), R)
    # By hand: one forward pass over the whole row; position t predicts t + 1.
    logits = np.asarray(model(rows[:, :-1]))
    expected = np.take_along_axis(log_softmax(logits[:, P - 1 :]), rows[:, P:, None], axis=-1)[..., 0]
    expected = np.where(rows[:, P:] == PAD_ID, 0.0, expected)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # Perplexity: exp of the mean NLL over the real reply tokens.
    tokens = (rows[:, P:] != PAD_ID).sum()
    assert generator.perplexity(rows) == pytest.approx(np.exp(-expected.sum() / tokens), rel=1e-5)
    # Pairs and packed rows are the same data.
    np.testing.assert_allclose(generator.score(PAIRS), scores, atol=1e-6)


def test_evaluate_equals_rouge_score_sacrebleu_and_counts():
    generator = ResponseGenerator(policy(1), TOKENIZER, P, R, batch_size=2)
    results = generator.evaluate(PAIRS, metrics=("rouge_l", "bleu", "perplexity", "distinct_1", "distinct_replies"))
    replies = results["replies"]
    assert len(replies) == len(PAIRS) and results["reply_ids"].shape == (len(PAIRS), R)
    assert replies == generator([p for p, _ in PAIRS])  # evaluate replies greedily, like generate
    references = [r for _, r in PAIRS]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = np.mean([scorer.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(references, replies)])
    assert results["rouge_l"] == pytest.approx(rouge, abs=1e-6)
    bleu = sacrebleu.corpus_bleu(replies, [references], smooth_method="exp", tokenize="13a").score
    assert results["bleu"] == pytest.approx(bleu, abs=1e-4)
    assert results["perplexity"] == pytest.approx(generator.perplexity(PAIRS), rel=1e-6)
    assert results["distinct_replies"] == len(set(replies))
    words = [w for reply in replies for w in reply.lower().split()]
    assert results["distinct_1"] == pytest.approx(len(set(words)) / len(words) if words else 0.0, abs=1e-6)
    assert list(results)[:5] == ["rouge_l", "bleu", "perplexity", "distinct_1", "distinct_replies"]


def test_score_replies_on_chinese_and_collapse():
    scores = score_replies(["我很好", "你好吗"], ["我很好", "我很好"], ["rouge_l", "distinct_replies", "distinct_2"])
    # ROUGE-L per character: 1.0 for the first pair; "你好吗" vs "我很好" share "好": F = 1/3.
    assert scores == pytest.approx({"rouge_l": (1 + 1 / 3) / 2, "distinct_replies": 1.0, "distinct_2": 0.5})
    with pytest.raises(ValueError, match="replies for"):
        score_replies(["a"], ["a", "b"])


def test_score_replies_exact_match_is_the_percentage_of_equal_strings():
    references = ["三千零四十二", "café au lait", "two", "x"]
    replies = ["三千零四十二", " café au lait ", "Two", ""]
    # Equal after stripping surrounding whitespace; case and content count.
    assert score_replies(references, replies, ["exact_match"]) == {"exact_match": 50.0}
    assert score_replies([], [], ["exact_match"]) == {"exact_match": 0.0}


def test_generate_rows_repeats_each_prompt_prompt_major():
    generator = ResponseGenerator(policy(), TOKENIZER, P, R, batch_size=3)
    rows = generator.pack(PAIRS)
    once = generator.generate_rows(rows)
    three = generator.generate_rows(rows, num_samples=3)
    assert three.shape == (3 * len(PAIRS), R)
    np.testing.assert_array_equal(three, np.repeat(once, 3, axis=0))  # greedy: the same reply three times
    sampled = generator.generate_rows(rows, 2, sampler=get_sampler("random", seed=3), seed=5)
    again = generator.generate_rows(rows, 2, sampler=get_sampler("random", seed=9), seed=5)
    np.testing.assert_array_equal(sampled, again)  # the seed of the call decides the stream
    with pytest.raises(ValueError, match="prompt_length"):
        generator.generate_rows(rows[:, :3])


def test_components_built_from_a_generator_equal_those_built_from_parts(tmp_path):
    model = policy()
    generator = ResponseGenerator(model, TOKENIZER, P, R)
    reward = RougeLReward(TOKENIZER)
    for trainer in (ReinforceTrainer(generator, reward), ContrastiveTrainer(generator)):
        assert (trainer.policy, trainer.prompt_length, trainer.max_new_tokens) == (model, P, R)
    mle = MLETrainer(generator)
    assert (mle.policy, mle.prompt_length) == (model, P)
    with pytest.raises(ValueError, match="differs from the generator's"):
        ReinforceTrainer(generator, reward, P + 1, R)
    with pytest.raises(TypeError, match="max_new_tokens"):
        ReinforceTrainer(model, reward, P)

    loop = SelfFeedbackLoop(generator, reward, PAIRS, PAIRS[:2], rounds=1)
    assert (loop.policy, loop.tokenizer, loop.prompt_length, loop.max_new_tokens) == (model, TOKENIZER, P, R)
    assert loop.reward is reward and loop.validation_pairs == PAIRS[:2]
    parts = SelfFeedbackLoop(model, TOKENIZER, reward, PAIRS, PAIRS[:2], P, R, rounds=1)
    assert loop.evaluate() == parts.evaluate()
    with pytest.raises(TypeError, match="no tokenizer or lengths"):
        SelfFeedbackLoop(generator, reward, PAIRS, PAIRS[:2], P)

    a = GenerationMetrics(PAIRS, generator)
    b = GenerationMetrics(PAIRS, TOKENIZER, P, R)
    for callback in (a, b):
        callback.set_model(model)
    assert a.evaluate() == b.evaluate() and a.replies == b.replies

    path = export_generator(generator, str(tmp_path / "saved"))
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # kept: its functions need its variables alive
    replies = loaded.generate(tf.constant([p for p, _ in PAIRS]))["replies"]
    assert [r.decode() for r in replies.numpy()] == generator([p for p, _ in PAIRS])


def test_generator_arguments_are_checked():
    model = policy()
    with pytest.raises(ValueError, match="Vocabulary mismatch"):
        ResponseGenerator(PolicyNetwork(7, 4, 4), TOKENIZER, P, R)
    for kwargs, name in (({"prompt_length": 2}, "prompt_length"), ({"max_new_tokens": 0}, "max_new_tokens"),
                         ({"batch_size": 0}, "batch_size")):
        arguments = {"prompt_length": P, "max_new_tokens": R, **kwargs}
        with pytest.raises(ValueError, match=name):
            ResponseGenerator(model, TOKENIZER, **arguments)
    generator = ResponseGenerator(model, TOKENIZER, P, R)
    assert as_generator(generator) is generator
    assert unpack_generator(generator, None, None) == (model, P, R)
    with pytest.raises(TypeError, match="tokenizer"):
        as_generator(model, None, P, R, owner="X")
    with pytest.raises(ValueError, match="metrics must be"):
        generator.evaluate(PAIRS, metrics=("rouge",))
    with pytest.raises(ValueError, match="no \\(prompt, reference\\) pairs"):
        generator.evaluate([])
    with pytest.raises(ValueError, match="Packed rows"):
        generator.evaluate(np.zeros((2, P), np.int32))
