"""PolicyNetwork and LLMEncoder: shapes, masking, cached steps, save/load."""

import keras
import numpy as np
import pytest

from keras_selffb.models import LLMEncoder, PolicyNetwork

VOCAB = 20
IDS = np.array(
    [
        [0, 0, 1, 7, 4, 9, 11, 2],  # left-padded prompt then a response
        [1, 5, 6, 4, 8, 2, 0, 0],  # right padding
    ],
    dtype="int32",
)


def tiny_policy(**kwargs):
    return PolicyNetwork(VOCAB, embedding_dim=8, hidden_dim=8, **kwargs)


def test_policy_logits_shape():
    policy = tiny_policy(num_layers=2)
    assert tuple(policy(IDS).shape) == (2, 8, VOCAB)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_step_by_step_equals_full_call(num_layers):
    policy = tiny_policy(num_layers=num_layers)
    full = policy(IDS).numpy()
    cache = policy.initial_cache(2)
    steps = []
    for t in range(IDS.shape[1]):
        logits, cache = policy.call_with_cache(IDS[:, t : t + 1], cache)
        steps.append(logits.numpy())
    steps = np.concatenate(steps, axis=1)
    real = IDS != 0  # logits at padding positions are not used anywhere
    np.testing.assert_allclose(steps[real], full[real], atol=1e-5)


def test_padding_does_not_change_logits_of_real_tokens():
    policy = tiny_policy(num_layers=2)
    padded = policy(IDS[:1]).numpy()[0, 2:]
    unpadded = policy(IDS[:1, 2:]).numpy()[0]
    np.testing.assert_allclose(padded, unpadded, atol=1e-6)
    right = policy(IDS[1:]).numpy()[0, :6]
    np.testing.assert_allclose(right, policy(IDS[1:, :6]).numpy()[0], atol=1e-6)


def test_logits_are_causal():
    policy = tiny_policy()
    changed = IDS.copy()
    changed[1, 4] = 13
    a, b = policy(IDS).numpy(), policy(changed).numpy()
    np.testing.assert_allclose(a[1, :4], b[1, :4], atol=1e-7)
    assert np.abs(a[1, 4] - b[1, 4]).max() > 1e-4


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_encoder_ignores_padding(pooling):
    encoder = LLMEncoder(VOCAB, embedding_dim=8, hidden_dim=8, pooling=pooling)
    features = encoder(IDS).numpy()
    assert features.shape == (2, 8)
    np.testing.assert_allclose(features[0], encoder(IDS[:1, 2:]).numpy()[0], atol=1e-6)
    np.testing.assert_allclose(features[1], encoder(IDS[1:, :6]).numpy()[0], atol=1e-6)


def test_encoder_mean_pooling_matches_numpy():
    encoder = LLMEncoder(VOCAB, embedding_dim=8, hidden_dim=8, pooling="mean")
    sequences = keras.Sequential([encoder.embedding, encoder.lstm_layers[0]])
    row = IDS[1:, :6]  # no padding: plain LSTM outputs, averaged
    expected = sequences(row).numpy()[0].mean(axis=0)
    np.testing.assert_allclose(encoder(IDS[1:]).numpy()[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    "model",
    [
        lambda: PolicyNetwork(VOCAB, 8, 8, num_layers=2, dropout=0.1),
        lambda: LLMEncoder(VOCAB, 8, 8, pooling="mean"),
    ],
)
def test_save_load_round_trip(tmp_path, model):
    model = model()
    expected = model(IDS).numpy()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded(IDS).numpy(), expected)


def test_config_round_trip():
    policy = tiny_policy(num_layers=3, dropout=0.2)
    clone = PolicyNetwork.from_config(policy.get_config())
    assert (clone.num_layers, clone.dropout, clone.hidden_dim) == (3, 0.2, 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size >= 2"):
        PolicyNetwork(1)
    with pytest.raises(ValueError, match="dropout"):
        PolicyNetwork(10, dropout=1.5)
    with pytest.raises(ValueError, match="pooling"):
        LLMEncoder(10, pooling="max")
