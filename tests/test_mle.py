"""MLE training: masked token loss, exact perplexity, a fit that learns."""

import keras
import numpy as np
import pytest

from keras_selffb.generator import ResponseGenerator
from keras_selffb.models import PolicyNetwork
from keras_selffb.text import RESERVED_TOKENS, CharTokenizer, make_dataset, pack_pairs
from keras_selffb.training import MLETrainer, unigram_perplexity, weighted_rows

TOKENIZER = CharTokenizer(list(RESERVED_TOKENS) + list("abcdefghij"))
PAIRS = [("ab", "cd"), ("cd", "ef"), ("ef", "gh"), ("gh", "ij"), ("ij", "ab")]


def packed():
    return pack_pairs(TOKENIZER, PAIRS, prompt_length=5, response_length=4)


def test_loss_is_token_mean_nll_over_response_only():
    policy = PolicyNetwork(TOKENIZER.vocabulary_size, 8, 8)
    trainer = MLETrainer(policy, prompt_length=5)
    trainer.compile(optimizer="sgd")
    data = packed()
    result = trainer.evaluate(data, batch_size=2, verbose=0, return_dict=True)

    logits = policy(data[:, :-1]).numpy()
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    targets = data[:, 1:]
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    weights = (np.arange(targets.shape[1]) >= 4)[None, :] & (targets != 0)
    expected = -(picked * weights).sum() / weights.sum()
    # Batches of 2, 2, 1 rows: the epoch value is still the exact token mean.
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(result["perplexity"], np.exp(expected), rtol=1e-5)
    # The prompt does not count: changing nothing but padding-masked
    # positions leaves the loss unchanged.
    assert weights.sum() == 5 * 3  # 2 chars + EOS per response


def test_weighted_rows_give_the_weighted_token_mean_as_dict_batches_do():
    policy = PolicyNetwork(TOKENIZER.vocabulary_size, 8, 8)
    trainer = MLETrainer(policy, prompt_length=5)
    trainer.compile(optimizer="sgd")
    data = packed()
    row_weights = np.array([2.0, 0.5, 1.0, 0.0, 3.25], np.float32)

    logits = policy(data[:, :-1]).numpy()
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    targets = data[:, 1:]
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    mask = (np.arange(targets.shape[1]) >= 4)[None, :] & (targets != 0)
    expected = -(picked * mask * row_weights[:, None]).sum() / (mask * row_weights[:, None]).sum()

    packed_float = weighted_rows(data, row_weights)
    assert packed_float.dtype == np.float32 and packed_float.shape == (5, data.shape[1] + 1)
    np.testing.assert_array_equal(packed_float[:, :-1].astype(np.int32), data)  # ids exact
    as_tensor = trainer.evaluate(packed_float, batch_size=2, verbose=0, return_dict=True)
    as_dict = trainer.evaluate({"rows": data, "weights": row_weights}, batch_size=2, verbose=0, return_dict=True)
    np.testing.assert_allclose(as_tensor["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(as_dict["loss"], as_tensor["loss"], rtol=1e-6)
    with pytest.raises(ValueError, match="rows \\[B, L\\] and weights \\[B\\]"):
        weighted_rows(data, row_weights[:3])
    with pytest.raises(ValueError, match="Token ids must be in"):
        weighted_rows(np.array([[2**24]]), np.ones(1))


def test_fit_lowers_loss_and_learns_the_mapping():
    keras.utils.set_random_seed(0)
    policy = PolicyNetwork(TOKENIZER.vocabulary_size, 16, 32)
    trainer = MLETrainer(policy, prompt_length=5)
    trainer.compile(optimizer=keras.optimizers.Adam(0.03))
    history = trainer.fit(make_dataset(packed(), 5), epochs=60, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.2 * losses[0]
    replies = ResponseGenerator(policy, TOKENIZER, 5, 4)([p for p, _ in PAIRS])
    assert replies == [r for _, r in PAIRS]


def test_fit_is_reproducible_with_a_seed():
    def run():
        keras.utils.set_random_seed(5)
        policy = PolicyNetwork(TOKENIZER.vocabulary_size, 8, 8)
        trainer = MLETrainer(policy, prompt_length=5)
        trainer.compile(optimizer="adam")
        trainer.fit(make_dataset(packed(), 2, shuffle=True, seed=5), epochs=3, verbose=0)
        return [w.numpy() for w in policy.weights]

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_unigram_perplexity_by_hand():
    # Responses "cd" and "cc": with add-one counts over 15 ids (PAD excluded).
    tokenizer = TOKENIZER
    train = pack_pairs(tokenizer, [("a", "cd"), ("a", "cc")], 3, 3)
    counts = np.ones(tokenizer.vocabulary_size)
    counts[0] = 0
    c, d, eos = 7, 8, 2
    counts[c] += 3
    counts[d] += 1
    counts[eos] += 2
    probs = counts / counts.sum()
    evaluation = pack_pairs(tokenizer, [("a", "d")], 3, 3)
    expected = np.exp(-(np.log(probs[d]) + np.log(probs[eos])) / 2)
    assert unigram_perplexity(train, evaluation, 3, tokenizer.vocabulary_size) == pytest.approx(expected)


def test_trainer_save_load(tmp_path):
    trainer = MLETrainer(PolicyNetwork(TOKENIZER.vocabulary_size, 8, 8), prompt_length=5)
    trainer.build((None, 9))
    data = packed()
    expected = trainer.predict(data, verbose=0)
    trainer.save(tmp_path / "trainer.keras")
    loaded = keras.saving.load_model(tmp_path / "trainer.keras")
    assert loaded.prompt_length == 5
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), expected)
