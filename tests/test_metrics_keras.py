"""Keras metric classes: sums over updates, distribution, compiled
evaluate, config and saving."""

import keras
import keras_hub
import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from rouge_score import rouge_scorer

from conftest import mirrored_strategy
from keras_selffb import metrics

REFS = ["the cat sat on the mat", "hello world", "a b c d", "我爱北京天安门",
        "x", "The End.", "two words", "&amp; co.", "one two three four five",
        "", "same same", "red green blue"]
HYPS = ["the cat is on a mat", "hello there world", "d c b a", "我爱北京",
        "", "the end", "two words", "& co", "one two three", "not empty",
        "same", "blue green red"]


def _logits_batch(seed, batch=6, steps=5, vocab=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, steps, vocab)).astype("float32")
    targets = rng.integers(0, vocab, size=(batch, steps))
    mask = (rng.random((batch, steps)) < 0.7).astype("float32")
    return targets, logits, mask


def _numpy_nll(targets, logits, mask):
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return -(picked * mask).sum(), mask.sum()


def test_rouge_l_metric_is_the_mean_over_all_updates():
    metric = metrics.RougeL()
    for start in range(0, 12, 5):
        metric.update_state(REFS[start:start + 5], HYPS[start:start + 5])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    f = np.array([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(REFS, HYPS)])
    assert float(metric.result()) == pytest.approx(f.mean(), abs=1e-6)
    weights = np.linspace(0.0, 2.0, 12)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric.update_state(REFS, HYPS, sample_weight=weights)
    assert float(metric.result()) == pytest.approx(
        (f * weights).sum() / weights.sum(), abs=1e-6)


@pytest.mark.parametrize("kwargs", [{}, {"tokenize": "zh", "lowercase": True}])
def test_bleu_metric_is_corpus_bleu_over_all_updates(kwargs):
    metric = metrics.Bleu(**kwargs)
    for start in range(0, 12, 5):
        metric.update_state(REFS[start:start + 5], HYPS[start:start + 5])
    want = sacrebleu.corpus_bleu(HYPS, [REFS], **kwargs).score
    assert float(metric.result()) == pytest.approx(want, abs=1e-3)  # float32


def test_perplexity_metric_is_exp_of_total_nll_over_tokens():
    metric = metrics.Perplexity()
    hub = keras_hub.metrics.Perplexity(from_logits=True)
    nll, count = 0.0, 0.0
    for seed in range(3):
        targets, logits, mask = _logits_batch(seed)
        metric.update_state(targets, logits, sample_weight=mask)
        hub.update_state(targets, logits, sample_weight=mask)
        batch_nll, batch_count = _numpy_nll(targets, logits, mask)
        nll, count = nll + batch_nll, count + batch_count
    assert float(metric.result()) == pytest.approx(np.exp(nll / count), rel=1e-5)
    assert float(metric.result()) == pytest.approx(float(hub.result()), rel=1e-5)


def test_metrics_under_mirrored_strategy_equal_one_device():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices (the root conftest.py)")
    strategy = mirrored_strategy()
    assert strategy.num_replicas_in_sync == 2
    targets, logits, mask = _logits_batch(0, batch=12)
    with strategy.scope():
        rouge, bleu, ppl = (metrics.RougeL(), metrics.Bleu(), metrics.Perplexity())
    data = tf.data.Dataset.from_tensor_slices(
        (REFS, HYPS, targets, logits, mask)).batch(4)

    @tf.function
    def step(refs, hyps, t, l, m):
        def update(refs, hyps, t, l, m):
            rouge.update_state(refs, hyps)
            bleu.update_state(refs, hyps)
            ppl.update_state(t, l, sample_weight=m)
        strategy.run(update, args=(refs, hyps, t, l, m))

    for batch in strategy.experimental_distribute_dataset(data):
        step(*batch)
    single = (metrics.RougeL(), metrics.Bleu(), metrics.Perplexity())
    single[0].update_state(REFS, HYPS)
    single[1].update_state(REFS, HYPS)
    single[2].update_state(targets, logits, sample_weight=mask)
    for distributed, local in zip((rouge, bleu, ppl), single):
        assert float(distributed.result()) == pytest.approx(
            float(local.result()), rel=1e-6)
    assert float(bleu.result()) == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-3)


@keras.saving.register_keras_serializable(package="keras_selffb_tests")
class Reverse(keras.layers.Layer):
    """A "generator" whose output ids are its input ids reversed."""

    def call(self, ids):
        return ids[:, ::-1]


@keras.saving.register_keras_serializable(package="keras_selffb_tests")
def zero_loss(y_true, y_pred):
    """No loss: only the metrics are evaluated."""
    return keras.ops.zeros(())


def test_id_metrics_in_compiled_evaluate_and_after_saving(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(1, 6, size=(16, 7))
    y = rng.integers(1, 6, size=(16, 7))
    y[:, 5:] = 0  # padding
    inputs = keras.Input((7,), dtype="int32")
    model = keras.Model(inputs, Reverse()(inputs))
    model.compile(loss=zero_loss,
                  metrics=[metrics.RougeL(), metrics.Bleu(tokenize="none")],
                  jit_compile=True)
    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    refs = [" ".join(f"w{t}" for t in row if t) for row in y]
    hyps = [" ".join(f"w{t}" for t in row[::-1]) for row in x]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = np.mean([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)])
    assert logs["rouge_l"] == pytest.approx(want, abs=1e-6)
    assert logs["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score, abs=1e-3)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.evaluate(x, y, batch_size=4, verbose=0, return_dict=True) == (
        pytest.approx(logs))


def test_perplexity_in_compiled_evaluate():
    targets, _, _ = _logits_batch(1, batch=8)
    inputs = keras.Input((5,), dtype="int32")
    logits = keras.layers.Dense(7)(keras.layers.Embedding(7, 4)(inputs))
    model = keras.Model(inputs, logits)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[metrics.Perplexity(pad_id=0)])
    logs = model.evaluate(targets, targets, batch_size=4, verbose=0,
                          return_dict=True)
    predicted = model.predict(targets, verbose=0)
    nll, count = _numpy_nll(targets, predicted, (targets != 0).astype("float32"))
    assert logs["perplexity"] == pytest.approx(np.exp(nll / count), rel=1e-5)


@pytest.mark.parametrize("metric", [
    metrics.RougeL(tokenize="cjk", pad_id=3, name="rl"),
    metrics.Bleu(tokenize="zh", max_order=3, smooth_method="floor",
                 smooth_value=0.2, lowercase=True, pad_id=1),
    metrics.Perplexity(from_logits=False, pad_id=0),
])
def test_config_round_trip_and_registration(metric):
    config = metric.get_config()
    clone = type(metric).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(metric)
    assert serialized["registered_name"] == f"keras_selffb>{type(metric).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(metric) and restored.get_config() == config
