"""The learned relevance judge: `RelevanceJudge`, `JudgeTrainer`, `JudgeReward`.

References: the reward and the InfoNCE loss are recomputed in plain numpy
(float64, loops, from the formulas) on logits the test controls; the
retrieval accuracy by brute force over the full similarity matrix; the
mirrored step against a one-device step on half the rows.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb import rewards
from keras_selffb.models import LLMEncoder, RelevanceJudge
from keras_selffb.rewards import JudgeReward
from keras_selffb.text import CharTokenizer, pack_pairs
from keras_selffb.training import JudgeTrainer, retrieval_accuracy, train_judge
from keras_selffb.training.judge_training import retrieval_successes

from conftest import cpu_devices, mirrored_strategy

CONTENT = 5  # first text id: 0-4 are PAD, BOS, EOS, UNK, SEP


def small_judge(vocab=16, **kwargs):
    return RelevanceJudge(vocab, embedding_dim=8, hidden_dim=8, projection_dim=8, **kwargs)


# --- JudgeReward ---------------------------------------------------------------

# K = 3 candidates for prompts A and B, one for C; packed [PAD.. BOS text SEP].
PROMPTS = np.array(
    [[0, 1, 5, 6, 4]] * 3 + [[1, 7, 8, 9, 4]] * 3 + [[0, 0, 1, 10, 4]],
    dtype="int32",
)
CANDIDATES = np.array(
    [
        [11, 12, 2, 0],  # 0: generic (equal logits for every prompt)
        [5, 6, 2, 0],  # 1: far closer to its own prompt
        [2, 0, 0, 0],  # 2: EOS then padding: no content
        [7, 8, 9, 2],
        [13, 2, 0, 0],
        [8, 14, 15, 2],
        [10, 2, 0, 0],
    ],
    dtype="int32",
)


class FixedJudge:
    """A judge whose logits the test sets: `similarity` returns them as is."""

    def __init__(self, logits):
        self.logits = np.asarray(logits, np.float32)

    def similarity(self, prompt_ids, reply_ids, training=None):
        return tf.constant(self.logits)


def numpy_reward(logits, prompts, candidates):
    """The formula, row by row, in float64: logits[j, i] = (prompt j, candidate i)."""
    logits = np.asarray(logits, np.float64)
    keys = [tuple(t for t in row if t >= CONTENT) for row in np.asarray(prompts)]
    rows_of = {key: keys.count(key) for key in keys}
    out = []
    for i, candidate in enumerate(np.asarray(candidates)):
        others = [j for j in range(len(keys)) if keys[j] != keys[i]]
        n = 1.0 + sum(1.0 / rows_of[keys[j]] for j in others)
        if not others or not any(t >= CONTENT for t in candidate) or not keys[i]:
            out.append(0.0)
            continue
        shift = logits[:, i].max()  # exp of logits up to 1 / 0.01 = 100
        own = np.exp(logits[i, i] - shift)
        denominator = own + sum(np.exp(logits[j, i] - shift) / rows_of[keys[j]] for j in others)
        out.append(float(np.clip(np.log(n * own / denominator) / np.log(n), 0.0, 1.0)))
    return np.array(out)


def test_judge_reward_equals_numpy_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(7, 7))
    logits[:, 0] = 1.3  # generic: every prompt fits equally
    logits[:, 1] = 0.0
    logits[1, 1] = 20.0  # own prompt (row 1, prompt A) far ahead
    logits[[0, 2], 1] = 25.0  # rows sharing prompt A are not rivals: ignored
    got = JudgeReward(FixedJudge(logits))(PROMPTS, CANDIDATES, CANDIDATES).numpy()
    expected = numpy_reward(logits, PROMPTS, CANDIDATES)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (7,)
    assert abs(got[0]) < 1e-6  # generic reply: nothing
    assert got[1] > 0.999  # three distinct prompts, p ~ 1 - 2 e^-20: 1
    assert got[2] == 0.0  # no content
    assert 0 < got[3:].max() < 1 and np.all(got >= 0)  # the random rows are not all clipped
    # Half-way: p_i = sqrt(1 / N) gives 1/2 (N = 3 distinct prompts here).
    half = np.zeros((7, 7))
    half[3, 3] = np.log(2.0) - np.log(np.sqrt(3.0) - 1.0)  # e^S / (e^S + 2) = 1 / sqrt(3)
    value = JudgeReward(FixedJudge(half))(PROMPTS, CANDIDATES, CANDIDATES).numpy()[3]
    assert value == pytest.approx(0.5, abs=1e-5)


def test_judge_reward_without_rival_prompt_or_content_is_zero():
    logits = np.full((3, 3), 2.0)
    logits[np.diag_indices(3)] = 9.0
    reward = JudgeReward(FixedJudge(logits))
    # One distinct prompt: no contrast.
    assert reward(PROMPTS[:3], CANDIDATES[[1, 3, 4]], None).numpy().tolist() == [0.0, 0.0, 0.0]
    # A prompt with no content token: 0 for its candidate, the others score.
    prompts = np.array([[0, 1, 5, 4], [0, 0, 1, 4], [1, 6, 7, 4]], "int32")
    values = reward(prompts, CANDIDATES[[1, 3, 4]], None).numpy()
    assert values[1] == 0.0 and values[0] > 0.5 and values[2] > 0.5


def test_judge_reward_in_tf_function_equals_eager_and_numpy():
    judge = small_judge()
    reward = JudgeReward(judge)
    eager = reward(PROMPTS, CANDIDATES, CANDIDATES).numpy()
    graph = tf.function(lambda p, c: reward(p, c, c))(tf.constant(PROMPTS), tf.constant(CANDIDATES)).numpy()
    np.testing.assert_allclose(graph, eager, atol=1e-6)
    expected = numpy_reward(judge.similarity(PROMPTS, CANDIDATES).numpy(), PROMPTS, CANDIDATES)
    np.testing.assert_allclose(eager, expected, atol=1e-5)
    assert eager[2] == 0.0 and eager.max() > 0  # a random judge still ranks something


def test_judge_reward_registered_and_rejects_a_non_judge():
    judge = small_judge()
    assert isinstance(rewards.get("judge_relevance", judge=judge), JudgeReward)
    assert JudgeReward(judge).name == "judge_relevance"
    with pytest.raises(TypeError, match="similarity"):
        JudgeReward(object())
    with pytest.raises(TypeError, match="RelevanceJudge"):
        JudgeReward(LLMEncoder(16, 4, 4))  # callable, but no similarity()
    with pytest.raises(TypeError, match="similarity"):
        JudgeTrainer(LLMEncoder(16, 4, 4), prompt_length=3)


# --- RelevanceJudge ---------------------------------------------------------------


def test_relevance_judge_properties():
    judge = small_judge()
    prompts = np.array([[0, 1, 5, 6, 4], [1, 3, 2, 4, 0]], "int32")  # row 1: reserved ids only
    embedded = judge.embed_prompts(prompts).numpy()
    np.testing.assert_allclose(np.linalg.norm(embedded[0]), 1.0, atol=1e-5)
    assert np.all(embedded[1] == 0.0)
    replies = np.array([[5, 6, 2, 0, 0], [9, 2, 0, 0, 0], [8, 7, 9, 2, 0]], "int32")
    logits = judge.similarity(prompts, replies).numpy()
    cosine = embedded @ judge.embed_replies(replies).numpy().T
    np.testing.assert_allclose(logits, cosine / 0.05, rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 3)
    square = judge((prompts, replies[:2])).numpy()
    np.testing.assert_allclose(square, logits[:, :2], atol=1e-5)
    # The temperature is learned but stays in [0.01, 1].
    judge.log_temperature.assign(np.log(1e-4))
    assert float(judge.temperature) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="temperature"):
        small_judge(temperature=0.0)


def test_relevance_judge_save_load_round_trip(tmp_path):
    judge = small_judge(vocab=20, num_layers=2, temperature=0.1, pooling="mean")
    judge.log_temperature.assign(np.log(0.07))
    prompts = np.array([[0, 1, 5, 6, 4], [1, 7, 8, 9, 4], [0, 0, 1, 10, 4]], "int32")
    replies = np.array([[5, 6, 2, 0], [19, 2, 0, 0], [8, 14, 15, 2]], "int32")
    path = tmp_path / "judge.keras"
    judge.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, RelevanceJudge)
    assert loaded.get_config() == judge.get_config()
    np.testing.assert_array_equal(
        loaded.similarity(prompts, replies).numpy(), judge.similarity(prompts, replies).numpy()
    )
    assert float(loaded.temperature) == pytest.approx(0.07)


# --- JudgeTrainer -------------------------------------------------------------------

P = 4
# Rows 0 and 1 share a prompt, rows 2 and 3 share a reply.
PACKED = np.array(
    [
        [0, 1, 5, 4, 6, 7, 2, 0],
        [0, 1, 5, 4, 8, 2, 0, 0],
        [1, 9, 10, 4, 11, 12, 2, 0],
        [0, 1, 13, 4, 11, 12, 2, 0],
        [1, 14, 6, 4, 15, 9, 7, 2],
    ],
    dtype="int32",
)


def numpy_info_nce(logits, packed, mask_duplicates=True):
    logits = np.array(logits, np.float64)
    n = len(logits)
    prompts = [tuple(row[:P]) for row in packed]
    replies = [tuple(row[P:]) for row in packed]
    for i in range(n):
        for j in range(n):
            if mask_duplicates and i != j and (prompts[i] == prompts[j] or replies[i] == replies[j]):
                logits[i, j] = -np.inf

    def log_softmax(x, axis):
        shift = x.max(axis=axis, keepdims=True)
        return x - shift - np.log(np.exp(x - shift).sum(axis=axis, keepdims=True))

    prompt_to_reply = np.diag(log_softmax(logits, axis=1))
    reply_to_prompt = np.diag(log_softmax(logits, axis=0))
    loss = np.mean(-(prompt_to_reply + reply_to_prompt) / 2)
    accuracy = np.mean([logits[i, i] > max(logits[j, i] for j in range(n) if j != i) for i in range(n)])
    return loss, accuracy


def test_info_nce_loss_and_accuracy_equal_numpy_with_duplicates():
    judge = small_judge()
    judge.log_temperature.assign(np.log(0.2))  # moderate logits: every term counts
    logits = judge.similarity(PACKED[:, :P], PACKED[:, P:]).numpy()
    expected_loss, expected_accuracy = numpy_info_nce(logits, PACKED)
    unmasked_loss, _ = numpy_info_nce(logits, PACKED, mask_duplicates=False)
    assert abs(unmasked_loss - expected_loss) > 1e-3  # the masking matters here
    trainer = JudgeTrainer(judge, prompt_length=P)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = trainer.evaluate(PACKED, batch_size=5, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(expected_accuracy)
    # train_step logs the loss of the weights before its update.
    history = trainer.fit(PACKED, batch_size=5, epochs=1, shuffle=False, verbose=0).history
    assert history["loss"][0] == pytest.approx(expected_loss, rel=1e-5)
    assert not np.allclose(judge.similarity(PACKED[:, :P], PACKED[:, P:]).numpy(), logits)


@pytest.mark.skipif(len(cpu_devices()) < 2, reason="needs 2 logical CPU devices")
def test_step_on_two_replicas_equals_one_device_step_on_one_replica_rows():
    # Each replica's negatives are its own rows. Both replicas get the same
    # 4 rows, so with the loss over the GLOBAL count the summed gradients
    # are those of the 4-row mean: one device, those 4 rows.
    half = np.delete(PACKED, 1, axis=0)
    weights = small_judge().get_weights()

    def one_step(strategy, batch):
        with strategy.scope():
            judge = small_judge()
            judge.set_weights(weights)
            trainer = JudgeTrainer(judge, prompt_length=P)
            trainer.compile(optimizer=keras.optimizers.SGD(0.5))
        history = trainer.fit(batch, batch_size=len(batch), epochs=1, shuffle=False, verbose=0).history
        return [w.numpy() for w in judge.weights], history

    single, logs1 = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), half)
    mirrored, logs2 = one_step(mirrored_strategy(), np.concatenate([half, half]))
    assert max(np.abs(a - b).max() for a, b in zip(single, weights)) > 1e-3
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in logs1:
        np.testing.assert_allclose(logs1[key], logs2[key], rtol=1e-4, err_msg=key)


# --- retrieval_accuracy -------------------------------------------------------------


def brute_force_successes(logits, prompts, num_candidates):
    keys = [tuple(t for t in row if t >= CONTENT) for row in prompts]
    n = len(keys)
    successes = []
    for i in range(n):
        rivals, seen = [], {keys[i]}
        for step in range(1, n):
            k = (i + step) % n
            if keys[k] not in seen and len(rivals) < num_candidates - 1:
                seen.add(keys[k])
                rivals.append(k)
        successes.append(all(logits[i, i] > logits[k, i] for k in rivals))
    return np.array(successes)


def test_retrieval_accuracy_equals_brute_force_with_duplicate_prompts():
    rng = np.random.default_rng(3)
    pool = rng.integers(CONTENT, 16, size=(6, 3))
    prompts = np.concatenate(
        [np.ones((14, 1), int), pool[rng.integers(0, 6, size=14)], np.full((14, 1), 4)], axis=1
    ).astype("int32")
    replies = np.concatenate([rng.integers(CONTENT, 16, size=(14, 3)), np.full((14, 1), 2)], axis=1).astype("int32")
    judge = small_judge()
    logits = judge.similarity(prompts, replies).numpy()  # the full [N, N] matrix
    for num_candidates in (2, 4):
        expected = brute_force_successes(logits, prompts, num_candidates)
        got = retrieval_successes(judge, prompts, replies, num_candidates=num_candidates, batch_size=5)
        np.testing.assert_array_equal(got, expected)
        assert retrieval_accuracy(judge, prompts, replies, num_candidates) == pytest.approx(expected.mean())
    # More candidates than distinct prompts: every other distinct prompt is a rival.
    keys = [tuple(row) for row in prompts]
    everyone = [
        all(logits[i, i] > logits[j, i] for j in range(14) if keys[j] != keys[i]) for i in range(14)
    ]
    assert retrieval_accuracy(judge, prompts, replies, num_candidates=20) == pytest.approx(np.mean(everyone))
    assert 0 < np.mean(everyone) < 1  # neither trivial outcome
    with pytest.raises(ValueError, match="distinct prompts"):
        retrieval_accuracy(judge, prompts[:1].repeat(3, axis=0), replies[:3])


def make_toy_pairs(n, rng):
    """Prompt: a two-letter keyword between digit strings; reply: the keyword."""
    letters, digits = list("abcdefghij"), list("0123456789")
    pairs = []
    for _ in range(n):
        keyword = "".join(rng.choice(letters, 2))
        before = "".join(rng.choice(digits, rng.integers(1, 4)))
        after = "".join(rng.choice(digits, rng.integers(1, 4)))
        pairs.append((f"{before} {keyword} {after}", f"{keyword}!"))
    return pairs


def test_trained_judge_retrieves_held_out_prompts():
    rng = np.random.default_rng(0)
    train, held_out = make_toy_pairs(200, rng), make_toy_pairs(100, rng)
    tokenizer = CharTokenizer.train([text for pair in train + held_out for text in pair])
    prompt_length, reply_length = 14, 6
    train_packed = pack_pairs(tokenizer, train, prompt_length, reply_length)
    held_packed = pack_pairs(tokenizer, held_out, prompt_length, reply_length)
    keras.utils.set_random_seed(0)
    judge = RelevanceJudge(tokenizer.vocabulary_size, embedding_dim=16, hidden_dim=32, projection_dim=16)
    prompts, replies = held_packed[:, :prompt_length], held_packed[:, prompt_length:]
    before = retrieval_accuracy(judge, prompts, replies)
    history = train_judge(
        judge, train_packed, prompt_length, epochs=20, batch_size=32, learning_rate=1e-2,
        validation_packed=held_packed,
    )
    after = retrieval_accuracy(judge, prompts, replies)
    print(f"toy retrieval accuracy (chance 0.05): before {before:.2f}, after {after:.2f}")
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert history["loss"][-1] < history["loss"][0] / 3
    assert after >= 0.5 and after >= before + 0.3


def test_train_judge_rejects_bad_inputs():
    judge = small_judge()
    with pytest.raises(ValueError, match="batch_size"):
        train_judge(judge, PACKED, P, batch_size=8)
    with pytest.raises(ValueError, match="prompt_length"):
        train_judge(judge, PACKED, 8, batch_size=2)
    with pytest.raises(TypeError, match="similarity"):
        train_judge(object(), PACKED, P, batch_size=2)


def test_initialize_from_copies_the_policys_encoder_and_refuses_other_sizes():
    from keras_selffb.models import PolicyNetwork

    keras.utils.set_random_seed(1)
    policy = PolicyNetwork(20, embedding_dim=8, hidden_dim=12)
    judge = RelevanceJudge(20, embedding_dim=8, hidden_dim=12, projection_dim=4, pooling="last")
    heads = [w.copy() for w in judge.prompt_head.get_weights()]
    assert judge.initialize_from(policy) is judge
    for a, b in zip(judge.encoder.embedding.get_weights() + judge.encoder.lstm_layers[0].get_weights(),
                    policy.embedding.get_weights() + policy.lstm_layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(judge.prompt_head.get_weights(), heads):  # the heads keep their own weights
        np.testing.assert_array_equal(a, b)
    # The encoder now computes the policy's LSTM state: the "last" feature of a
    # sequence is the policy's hidden state after its last token.
    ids = np.array([[7, 8, 9, 10]], "int32")
    outputs = policy.lstm_layers[0](policy.embedding(ids))
    state = (outputs[0] if isinstance(outputs, (tuple, list)) else outputs)[:, -1]
    np.testing.assert_allclose(judge.encoder(ids), state, atol=1e-5)
    with pytest.raises(ValueError, match="sizes"):
        RelevanceJudge(20, embedding_dim=8, hidden_dim=16, projection_dim=4).initialize_from(policy)
