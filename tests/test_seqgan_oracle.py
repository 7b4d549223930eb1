"""The SeqGAN oracle benchmark's pieces and `DiscriminatorReward`.

The benchmark lives in `benchmarks/` (not a package): it is imported from
its path. The oracle's parameters are the real file,
`benchmarks/data/seqgan_oracle.npz`.
"""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.models import LLMEncoder
from keras_selffb.rewards import DiscriminatorReward, Reward
from keras_selffb.text.tokenizer import NUM_RESERVED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK = os.path.join(ROOT, "benchmarks", "seqgan_oracle.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("seqgan_oracle_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def oracle(bench):
    return bench.Oracle()


def numpy_log_likelihood(params, ids):
    """The README's equations, plainly: per-token log p [N, T] of ids [N, T]."""

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    p = {k: v.astype(np.float64) for k, v in params.items()}
    n, length = ids.shape
    h = np.zeros((n, 32))
    c = np.zeros((n, 32))
    previous = np.zeros(n, dtype=np.int64)  # generation starts from token 0
    out = np.zeros((n, length))
    for t in range(length):
        x = p["embedding"][previous]
        i = sigmoid(x @ p["Wi"] + h @ p["Ui"] + p["bi"])
        f = sigmoid(x @ p["Wf"] + h @ p["Uf"] + p["bf"])
        o = sigmoid(x @ p["Wog"] + h @ p["Uog"] + p["bog"])
        c_tilde = np.tanh(x @ p["Wc"] + h @ p["Uc"] + p["bc"])
        c = f * c + i * c_tilde
        h = o * np.tanh(c)
        logits = h @ p["Wo"] + p["bo"]
        top = logits.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        out[:, t] = logits[np.arange(n), ids[:, t]] - log_z
        previous = ids[:, t]
    return out


def test_oracle_log_likelihood_matches_numpy_equations(bench, oracle):
    params = bench.load_oracle_parameters()
    own = oracle.sample(3, seed=11)
    rng = np.random.default_rng(0)
    edge = np.array([[0] * 20, [4999] * 20])
    ids = np.concatenate([own, rng.integers(0, 5000, (3, 20)), edge]).astype(np.int32)
    expected = numpy_log_likelihood(params, ids)
    got = oracle.log_likelihood(ids)
    assert got.shape == (8, 20)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # Chunking does not change the values beyond float32 rounding: the
    # batch size picks the matmul kernel, which on some CPUs (AMD EPYC)
    # changes the last bits (1.9e-6 on values near -2.3 was seen).
    np.testing.assert_allclose(oracle.log_likelihood(ids, batch_size=3), got, atol=1e-5, rtol=0)


def test_oracle_sampling_is_reproducible(oracle):
    first = oracle.sample(40, seed=3, batch_size=16)
    assert first.shape == (40, 20) and first.dtype == np.int32
    assert first.min() >= 0 and first.max() < 5000
    np.testing.assert_array_equal(first, oracle.sample(40, seed=3, batch_size=16))
    assert not np.array_equal(first, oracle.sample(40, seed=4, batch_size=16))
    assert not np.array_equal(first, oracle.sample(40, seed=3, stream=1, batch_size=16))


def test_oracle_entropy_rate_and_uniform_sequences(oracle):
    # Per-sequence NLL has a std of about 0.55 nats, so 200 sequences give a
    # mean within about 0.04 (one standard error): +-0.3 is ~8 of them.
    own = oracle.nll(oracle.sample(200, seed=0, stream=5))
    assert abs(own - 5.75) < 0.3, own
    uniform = np.random.default_rng(0).integers(0, 5000, (200, 20))
    assert abs(oracle.nll(uniform) - 11.4) < 0.3


def test_oracle_rejects_bad_ids(oracle):
    with pytest.raises(ValueError, match="0..4999"):
        oracle.log_likelihood(np.full((2, 20), 5000))
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        oracle.log_likelihood(np.zeros(20, np.int32))
    with pytest.raises(TypeError, match="integers"):
        oracle.log_likelihood(np.zeros((2, 20), np.float32))


def test_generator_masks_reserved_ids_and_matches_oracle_shapes(bench):
    policy = bench.OracleGenerator()
    samples = bench.generator_sample(policy, 33, temperature=1.3, seed=1, batch_size=16)
    assert samples.shape == (33, 20) and samples.min() >= 0 and samples.max() < 5000
    np.testing.assert_array_equal(samples, bench.generator_sample(policy, 33, temperature=1.3, seed=1,
                                                                  batch_size=16))
    logits = policy(tf.constant(bench.packed_rows(samples[:2])[:, :-1]))
    probs = tf.nn.softmax(logits, axis=-1).numpy()
    assert probs[..., :5].max() == 0.0  # PAD, BOS, EOS, UNK, SEP are never generated
    # Untrained: NLL-test near log(5000) per token.
    assert abs(bench.generator_nll(policy, samples) - np.log(5000)) < 0.1


def test_seqgan_initialisation_draws_every_array_from_normal_0_1(bench):
    policy = bench.OracleGenerator()
    bench.seqgan_initialize(policy, seed=3)
    weights = policy.get_weights()
    values = np.concatenate([w.ravel() for w in weights])
    assert abs(values.mean()) < 0.002 and abs(values.std() - 0.1) < 0.002
    # Biases too (Keras would start them at 0, the forget gate's at 1).
    for w in weights:
        assert w.std() > 0.05, w.shape
    again = bench.OracleGenerator()
    bench.seqgan_initialize(again, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(weights, again.get_weights()))
    other = bench.OracleGenerator()
    bench.seqgan_initialize(other, seed=4)
    assert not np.array_equal(weights[0], other.get_weights()[0])


def small_classifier(vocab_size):
    return keras.Sequential([
        LLMEncoder(vocab_size=vocab_size, embedding_dim=8, hidden_dim=8),
        keras.layers.Dense(1, activation="sigmoid"),
    ])


def test_discriminator_reward_is_the_classifiers_probability():
    classifier = small_classifier(30)
    reward = DiscriminatorReward(classifier)
    ids = np.random.default_rng(0).integers(5, 30, (6, 7)).astype(np.int32)
    values = reward(None, ids, None).numpy()
    assert values.shape == (6,) and values.dtype == np.float32
    assert values.min() >= 0.0 and values.max() <= 1.0
    np.testing.assert_allclose(values, classifier(ids, training=False).numpy()[:, 0], atol=1e-6)
    # Inside a tf.function (as the trainers call it), same values.
    graph = tf.function(lambda c: reward(None, c, None))
    np.testing.assert_allclose(graph(tf.constant(ids)).numpy(), values, atol=1e-6)
    assert reward.component_names() == ["discriminator"]


def test_discriminator_reward_from_logits_applies_a_sigmoid():
    classifier = keras.Sequential([LLMEncoder(vocab_size=30, embedding_dim=8, hidden_dim=8), keras.layers.Dense(1)])
    reward = DiscriminatorReward(classifier, from_logits=True)
    ids = np.random.default_rng(1).integers(5, 30, (4, 5)).astype(np.int32)
    expected = tf.sigmoid(classifier(ids)[:, 0]).numpy()
    np.testing.assert_allclose(reward(None, ids, None).numpy(), expected, atol=1e-6)


def test_fit_discriminator_learns_an_easy_toy():
    keras.utils.set_random_seed(0)
    reward = DiscriminatorReward(small_classifier(40), learning_rate=0.02)
    rng = np.random.default_rng(0)
    real = rng.integers(5, 15, (96, 8))  # small ids
    fake = rng.integers(30, 40, (96, 8))  # large ids
    before = reward(None, np.concatenate([real, fake]), None).numpy()
    history = reward.fit_discriminator(real, fake, epochs=6, batch_size=32, seed=0)
    assert set(history) == {"loss", "accuracy"} and len(history["loss"]) == 6
    assert history["loss"][-1] < history["loss"][0]
    test_real = rng.integers(5, 15, (20, 8))
    test_fake = rng.integers(30, 40, (20, 8))
    real_reward = reward(None, test_real, None).numpy()
    fake_reward = reward(None, test_fake, None).numpy()
    assert real_reward.min() > fake_reward.max()
    assert real_reward.mean() - fake_reward.mean() > abs(before[:96].mean() - before[96:].mean()) + 0.3
    # A second call keeps training the same classifier with the same optimizer.
    optimizer = reward.optimizer
    reward.fit_discriminator(real[:8], fake[:8], epochs=1, batch_size=8, seed=1)
    assert reward.optimizer is optimizer


def test_discriminator_reward_errors():
    reward = DiscriminatorReward(small_classifier(20))
    with pytest.raises(ValueError, match=r"candidates \[B, N\]"):
        reward(None, np.zeros((2, 3, 4), np.int32), None)
    with pytest.raises(TypeError, match="integer candidate ids"):
        reward(None, np.zeros((2, 3), np.float32), None)
    with pytest.raises(ValueError, match="same length T"):
        reward.fit_discriminator(np.ones((4, 5), np.int32), np.ones((4, 6), np.int32))
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        reward.fit_discriminator(np.ones(5, np.int32), np.ones((4, 5), np.int32))
    with pytest.raises(TypeError, match="integer token ids"):
        reward.fit_discriminator(np.ones((4, 5), np.float32), np.ones((4, 5), np.int32))
    with pytest.raises(ValueError, match="empty"):
        reward.fit_discriminator(np.ones((0, 5), np.int32), np.ones((4, 5), np.int32))
    with pytest.raises(ValueError, match="epochs"):
        reward.fit_discriminator(np.ones((4, 5), np.int32), np.ones((4, 5), np.int32), epochs=0)
    with pytest.raises(TypeError, match="Keras classifier"):
        DiscriminatorReward(lambda ids: ids)
    wide = DiscriminatorReward(keras.Sequential([LLMEncoder(20, 8, 8), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match=r"one value per row"):
        wide(None, np.ones((2, 3), np.int32), None)


class ConstantClassifier(keras.Model):
    """P(real) = sigmoid(b) for every row, with an optional L2 on a weight w that multiplies nothing."""

    def __init__(self, l2=0.0):
        super().__init__()
        self.b = self.add_weight(shape=(), initializer="zeros", name="b")
        self.w = self.add_weight(shape=(3,), initializer="ones", name="w",
                                 regularizer=keras.regularizers.L2(l2) if l2 else None)

    def call(self, ids, training=False):
        zero = tf.zeros_like(tf.cast(ids[:, :1], tf.float32))
        # w enters with weight 0: its only gradient is its regulariser's.
        return tf.sigmoid(self.b + zero + 0.0 * tf.reduce_sum(self.w))


def test_label_smoothing_is_one_sided_optimum_by_hand():
    # Equal real and fake rows, one shared output p: the cross-entropy against
    # targets (1 - s) for real and 0 for fake is least at p = (1 - s) / 2.
    real = np.full((32, 4), 7)
    fake = np.full((32, 4), 9)
    for smoothing, expected in ((0.0, 0.5), (0.2, 0.4)):
        keras.utils.set_random_seed(0)
        reward = DiscriminatorReward(ConstantClassifier(), learning_rate=0.05, label_smoothing=smoothing)
        reward.fit_discriminator(real, fake, epochs=150, batch_size=64, seed=0)
        assert reward(None, real[:1], None).numpy()[0] == pytest.approx(expected, abs=0.01)
    for bad in (-0.1, 0.5, True):
        with pytest.raises(ValueError, match="label_smoothing"):
            DiscriminatorReward(ConstantClassifier(), label_smoothing=bad)


def test_fit_discriminator_adds_the_classifiers_regularisation_losses():
    # w has no gradient from the data; only its L2 term moves it. Adam's
    # first steps move every weight by about the learning rate, so after 20
    # steps at 0.01 an L2-penalised w has fallen from 1 toward 0.8, and a
    # w without the penalty has not moved.
    real = np.full((16, 4), 7)
    fake = np.full((16, 4), 9)
    moved = {}
    for l2 in (0.0, 1.0):
        classifier = ConstantClassifier(l2=l2)
        reward = DiscriminatorReward(classifier, learning_rate=0.01)
        reward.fit_discriminator(real, fake, epochs=10, batch_size=16, seed=0)
        moved[l2] = 1.0 - classifier.w.numpy()
    np.testing.assert_allclose(moved[0.0], 0.0, atol=1e-7)
    np.testing.assert_allclose(moved[1.0], 0.2, atol=0.02)


def test_regularised_benchmark_discriminator_has_penalties_only_when_asked(bench):
    plain = bench.make_discriminator(vocab_size=40, length=6, filter_sizes=(1, 2), num_filters=4)
    plain(np.ones((2, 6), np.int32))
    assert plain.losses == []
    penalised = bench.make_discriminator(vocab_size=40, length=6, filter_sizes=(1, 2), num_filters=4, l2=1e-3)
    penalised(np.ones((2, 6), np.int32))
    # embedding, two convolutions, the highway's two dense layers, the output layer
    assert len(penalised.losses) == 6
    expected = 1e-3 * sum(float(np.sum(np.square(v.numpy()))) for v in penalised.trainable_variables
                          if v.path.endswith(("embeddings", "kernel")))
    assert float(sum(penalised.losses)) == pytest.approx(expected, rel=1e-5)


def test_set_overrides_are_typed_and_checked(bench):
    config = dict(bench.FULL)
    assert bench.parse_setting("disc_l2=1e-4", config) == ("disc_l2", 1e-4)
    assert bench.parse_setting("rounds=150", config) == ("rounds", 150)
    assert bench.parse_setting("init=keras", config) == ("init", "keras")
    for item, message in (("rounds=1.5", "takes a int"), ("disc_l3=1", "unknown setting"),
                          ("disc_l2", "KEY=VALUE"), ("temperatures=1", "is a list")):
        with pytest.raises(ValueError, match=message):
            bench.parse_setting(item, config)
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--set", "nonsense=1"])


# Every method (the default ones and those that run only on request) in one
# tiny run of two rounds with a cached MLE generator. Each method starts from
# the same MLE generator with its own seed (`self_feedback`), so its curve is
# what a run of it alone gives; the tests below read these curves and compare
# some with reruns that load the cache.
def shared_config(bench):
    """The quick protocol shrunk to seconds: every piece runs, nothing is learned."""
    return {
        **bench.QUICK,
        "num_train": 48, "num_test": 32, "num_eval": 32, "mle_epochs": 1, "eval_every": 1,
        "rounds": 2, "eval_every_round": 1, "prompts_per_step": 4, "num_samples": 2,
        "disc_pretrain_epochs": 1, "disc_samples": 16, "disc_batch_size": 16,
        "temperatures": [1.0], "num_temperature_eval": 16, "rollouts": 2,
        "filter_samples": 16, "filter_keep": 4,
    }


def shared_args(cache, *methods):
    return ["--quick", "--seed", "3", "--no-xla", "--methods", ",".join(methods), "--mle-cache", str(cache)]


@pytest.fixture(scope="module")
def shared_run(bench, tmp_path_factory):
    """`(results, cache)`: one tiny run of every method (MLE trained once, then cached)."""
    root = tmp_path_factory.mktemp("shared")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "QUICK", shared_config(bench))
        args = shared_args(root / "cache", *bench.METHODS, *bench.ON_REQUEST)
        results = bench.main(args + ["--output", str(root / "all.json")])
    return results, root / "cache"


@pytest.fixture(scope="module")
def rerun(bench, shared_run):
    """`(results, mle_trainings)`: one rerun from the shared run's MLE cache, for two checks at once.

    The batch-mean control runs with the shared run's settings (the cache
    must give its numbers again); the filtered method weights its kept
    samples by score (`filter_weighting` applies to that method only).
    """
    _, cache = shared_run
    trained = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "QUICK", shared_config(bench))
        real_train_mle = bench.train_mle
        patch.setattr(bench, "train_mle", lambda *a, **k: trained.append(1) or real_train_mle(*a, **k))
        args = shared_args(cache, "reinforce_discriminator_seqgan_batch_mean", "filtered_discriminator")
        results = bench.main(args + ["--set", "filter_weighting=reward", "--output", str(cache.parent / "rerun.json")])
    return results, trained


def test_benchmark_runs_end_to_end_on_tiny_sizes(bench, shared_run, monkeypatch):
    results, cache = shared_run
    saved = json.loads((cache.parent / "all.json").read_text())
    assert saved["quick"] is True and saved["seed"] == 3
    assert (cache.parent / "all.png").stat().st_size > 0
    assert np.isfinite(saved["mle_nll_oracle"]) and saved["mle"]["epoch"] == [0, 1]
    assert set(saved["methods"]) == set(bench.METHODS + bench.ON_REQUEST)
    for method in saved["methods"]:
        curve = saved["methods"][method]
        assert curve["round"] == [0, 1, 2] and len(curve["nll_oracle"]) == 3
        assert all(np.isfinite(curve[key][-1]) for key in ("nll_oracle", "nll_test"))
        assert curve["seconds"] > 0
    assert set(saved["temperature_curves"]) == {"MLE", *bench.METHODS, *bench.ON_REQUEST}
    assert saved["temperature_curves"]["MLE"]["temperature"] == [1.0]
    assert 4.0 < saved["oracle_samples_nll_oracle"] < 7.5
    assert results["mle_nll_test"] == saved["mle_nll_test"]
    text = bench.table(saved)
    assert "QUICK RUN" in text and "9.038" in text and "8.736" in text
    # With no --methods the benchmark runs the default methods (the table's rows), and only those.
    class Asked(Exception):
        pass

    def run(config, seed, quick, xla=True, methods=None, mle_cache=None):
        raise Asked(methods)

    monkeypatch.setattr(bench, "run", run)
    with pytest.raises(Asked) as asked:
        bench.main(["--quick", "--output", str(cache.parent / "unused.json")])
    assert asked.value.args == (bench.METHODS,)

def test_batch_mean_control_keeps_the_rewards_scale_and_drops_its_ranking(bench):
    classifier = small_classifier(30)
    inner = DiscriminatorReward(classifier)
    control = bench.BatchMeanReward(inner)
    ids = np.random.default_rng(2).integers(5, 30, (8, 7)).astype(np.int32)
    values = inner(None, ids, None).numpy()
    assert values.std() > 0  # the inner reward does rank the samples
    mean = control(None, ids, None).numpy()
    np.testing.assert_allclose(mean, np.full(8, values.mean()), rtol=1e-6)
    graph = tf.function(lambda c: control(None, c, None))
    np.testing.assert_allclose(graph(tf.constant(ids)).numpy(), mean, rtol=1e-6)


def test_benchmark_refuses_unknown_methods(bench):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--methods", "reinforce_discriminator,gan"])
    with pytest.raises(ValueError, match="Unknown methods"):
        bench.run(bench.QUICK, 0, True, methods=("seqgan",))


def test_mle_cache_reuses_the_generator_and_gives_the_same_results(bench, shared_run, rerun, monkeypatch):
    first, cache = shared_run
    assert (cache / "mle_seed3.weights.h5").exists() and (cache / "mle_seed3.json").exists()
    second, trained = rerun
    method = "reinforce_discriminator_seqgan_batch_mean"
    assert not trained  # loaded, not trained again
    assert second["mle"] == first["mle"]
    for key in ("nll_oracle", "nll_test", "reward"):
        np.testing.assert_allclose(second["methods"][method][key][1:], first["methods"][method][key][1:], rtol=1e-5)
    assert second["temperature_curves"]["MLE"] == first["temperature_curves"]["MLE"]

    # Other MLE settings: the cache is not used, the generator is trained again.
    class Retrained(Exception):
        pass

    def retrain(*args, **kwargs):
        raise Retrained

    monkeypatch.setattr(bench, "train_mle", retrain)
    config, quick, xla = shared_config(bench), True, False
    policy, curve = bench.cached_mle(str(cache), None, None, None, config, 3, quick, xla=xla, log=lambda _: None)
    assert curve == first["mle"] and policy.count_params() > 0
    for changed in ({**config, "mle_epochs": 2}, {**config, "mle_lr": 0.001}):
        with pytest.raises(Retrained):
            bench.cached_mle(str(cache), None, None, None, changed, 3, quick, xla=xla, log=lambda _: None)
    with pytest.raises(Retrained):  # another seed has its own cache file
        bench.cached_mle(str(cache), None, None, None, config, 4, quick, xla=xla, log=lambda _: None)


def test_lagged_rollout_policy_follows_the_generator_at_the_rate(bench, shared_run):
    lagged = bench.OracleGenerator(vocab_size=12, embedding_dim=4, hidden_dim=4)
    policy = bench.OracleGenerator(vocab_size=12, embedding_dim=4, hidden_dim=4)
    ids = np.zeros((1, 3), np.int32)
    lagged(ids), policy(ids)
    before = [w.copy() for w in lagged.get_weights()]
    bench.lag_update(lagged, policy, 0.8)
    for old, new, target in zip(before, lagged.get_weights(), policy.get_weights()):
        np.testing.assert_allclose(new, 0.8 * old + 0.2 * target, rtol=1e-6, atol=1e-7)
    # The method ran end to end in the shared run, rolling out with its own copy for two rounds.
    curve = shared_run[0]["methods"]["reinforce_discriminator_rollout_lagged"]
    assert curve["round"] == [0, 1, 2] and np.isfinite(curve["nll_oracle"]).all()


def test_teacher_forcing_steps_fit_the_real_sequences(bench, shared_run, monkeypatch):
    # The MLE trainer of the teacher-forcing steps updates the policy itself
    # (not a copy) toward the real rows: their NLL under the policy falls.
    keras.utils.set_random_seed(0)
    policy = bench.OracleGenerator(vocab_size=bench.VOCAB)
    real = np.random.default_rng(0).integers(0, 40, (64, bench.LENGTH))  # 40 of the 5,000 ids
    before = bench.generator_nll(policy, real)
    teacher = bench.mle_trainer(policy, bench.FULL["teacher_lr"], bench.FULL["clip_norm"])
    for _ in range(20):
        teacher.fit(bench.packed_rows(real), batch_size=64, epochs=1, shuffle=False, verbose=0)
    after = bench.generator_nll(policy, real)
    assert before == pytest.approx(np.log(bench.VOCAB), abs=0.05)  # an untrained policy: near uniform
    assert after < before - 1.0
    assert bench.FULL["mle_steps_per_round"] == 0  # SeqGAN's protocol has none
    # A round with a teacher-forcing step runs end to end and changes the result
    # of the shared run's plain SeqGAN update (same seed, same cached MLE generator).
    plain, cache = shared_run
    monkeypatch.setattr(bench, "QUICK", shared_config(bench))
    method = "reinforce_discriminator_seqgan"
    taught = bench.main(shared_args(cache, method) + ["--set", "mle_steps_per_round=1",
                                                      "--output", str(cache.parent / "tf.json")])
    assert taught["config"]["mle_steps_per_round"] == 1 and plain["config"]["mle_steps_per_round"] == 0
    assert taught["methods"][method]["nll_test"][1] != plain["methods"][method]["nll_test"][1]
    assert taught["methods"][method]["nll_test"][0] == plain["methods"][method]["nll_test"][0]


class FixedProbabilities(Reward):
    """P(real) fixed per candidate row, for hand-computed MaliGAN weights."""

    def __init__(self, values):
        super().__init__()
        self.values = tf.constant(values, tf.float32)

    def call(self, prompts, candidates, references):
        return self.values


def test_maligan_weights_match_hand_computed_values(bench):
    # D = 0.5, 0.8, 0.2, 0.5 -> D / (1 - D) = 1, 4, 0.25, 1 (mean 1.5625);
    # each weight is r / mean(r) - 1.
    reward = bench.MaliGANReward(FixedProbabilities([0.5, 0.8, 0.2, 0.5]))
    ids = np.zeros((4, 3), np.int32)
    expected = np.array([1.0, 4.0, 0.25, 1.0]) / 1.5625 - 1.0
    np.testing.assert_allclose(reward(None, ids, None).numpy(), expected, rtol=1e-5)
    assert abs(float(np.sum(reward(None, ids, None).numpy()))) < 1e-5  # centred: no push on every sample
    # Certain rows are clipped, not infinite; the graph gives the same values.
    clipped = bench.MaliGANReward(FixedProbabilities([1.0, 0.0, 0.5, 0.5]), epsilon=1e-3)
    graph = tf.function(lambda c: clipped(None, c, None))
    values = graph(tf.constant(ids)).numpy()
    ratios = np.array([0.999 / 0.001, 0.001 / 0.999, 1.0, 1.0])
    np.testing.assert_allclose(values, ratios / ratios.mean() - 1.0, rtol=1e-4)


def test_maligan_method_runs_on_request(bench, shared_run):
    method = "reinforce_discriminator_maligan"
    assert method in bench.ON_REQUEST and method not in bench.METHODS
    curve = shared_run[0]["methods"][method]
    assert curve["round"] == [0, 1, 2] and np.isfinite(curve["nll_oracle"]).all()
    np.testing.assert_allclose(curve["reward"][1:], 0.0, atol=1e-5)  # the centred weights average to 0


class LowIdShare(Reward):
    """P(real) := the share of a candidate's tokens among the oracle's ids 0..2499 (a known ranking)."""

    def call(self, prompts, candidates, references):
        low = tf.cast(tf.convert_to_tensor(candidates) - NUM_RESERVED < 2500, tf.float32)
        return tf.reduce_mean(low, axis=-1)


class FitSpy:
    """Stands in for the MLE trainer: records what `filtered_step` trains on."""

    def __init__(self):
        self.calls = []

    def fit(self, rows, batch_size, epochs, shuffle, verbose):
        self.calls.append((np.array(rows), batch_size))


def test_filtered_step_keeps_the_discriminators_best(bench):
    keras.utils.set_random_seed(0)
    policy = bench.OracleGenerator(vocab_size=bench.VOCAB)
    config = {**bench.FULL, "filter_samples": 40, "filter_keep": 10}
    spy = FitSpy()
    mean_score, kept_score = bench.filtered_step(spy, LowIdShare(), policy, config, seed=7)
    # The same (seed, stream) gives the same samples: rank them with numpy.
    samples = bench.generator_sample(policy, 40, seed=7, stream=bench.FILTER_STREAM)
    scores = (samples < 2500).mean(axis=1)
    best = np.argsort(-scores, kind="stable")[:10]
    (rows, batch_size), = spy.calls
    threshold = np.sort(scores)[-10]
    expected = samples[scores >= threshold]  # ties at the threshold are kept too
    assert batch_size == len(expected) >= 10
    np.testing.assert_array_equal(rows, bench.packed_rows(expected))
    assert mean_score == pytest.approx(scores.mean(), abs=1e-6)
    assert kept_score == pytest.approx(scores[scores >= threshold].mean(), abs=1e-6)
    assert kept_score >= scores[best].min() > mean_score - 1e-9
    # Weighted by score: the kept rows carry D / mean(D) as a last column.
    spy = FitSpy()
    bench.filtered_step(spy, LowIdShare(), policy, {**config, "filter_weighting": "reward"}, seed=7)
    (rows, _), = spy.calls
    kept_scores = scores[scores >= threshold]
    np.testing.assert_allclose(rows[:, -1], kept_scores / kept_scores.mean(), rtol=1e-5)


def test_filtered_self_training_moves_the_policy_toward_what_the_evaluator_prefers(bench):
    # Real MLE steps on the kept samples: the evaluator's mean score of the
    # policy's samples rises (from about 0.5 for an untrained policy).
    keras.utils.set_random_seed(1)
    policy = bench.OracleGenerator(vocab_size=bench.VOCAB)
    config = {**bench.FULL, "filter_samples": 128, "filter_keep": 32}
    trainer = bench.mle_trainer(policy, 0.01, 5.0)
    first, _ = bench.filtered_step(trainer, LowIdShare(), policy, config, seed=0)
    for step in range(1, 30):
        bench.filtered_step(trainer, LowIdShare(), policy, config, seed=step)
    after = (bench.generator_sample(policy, 512, seed=99, stream=bench.EVAL_STREAM) < 2500).mean()
    assert first == pytest.approx(0.5, abs=0.05)
    assert after > first + 0.1


def test_filtered_method_runs_on_request_and_checks_its_settings(bench, shared_run, rerun, monkeypatch):
    method = "filtered_discriminator"
    assert method in bench.ON_REQUEST and method not in bench.METHODS
    uniform, cache = shared_run
    weighted, _ = rerun
    assert weighted["config"]["filter_weighting"] == "reward" and uniform["config"]["filter_weighting"] == "uniform"
    monkeypatch.setattr(bench, "QUICK", shared_config(bench))
    args = shared_args(cache, method)
    for results in (uniform, weighted):
        curve = results["methods"][method]
        assert curve["round"] == [0, 1, 2] and np.isfinite(curve["nll_oracle"]).all()
        assert all(0.0 < r < 1.0 for r in curve["reward"][1:])  # the mean P(real) of the scored samples
    assert uniform["methods"][method]["nll_test"][1] != weighted["methods"][method]["nll_test"][1]
    # Bad settings are refused before the MLE stage: no generator is trained or loaded.
    monkeypatch.setattr(bench, "cached_mle", lambda *a, **k: pytest.fail("MLE before the settings check"))
    with pytest.raises(ValueError, match="filter_weighting"):
        bench.main(args + ["--set", "filter_weighting=best", "--output", str(cache.parent / "bad.json")])
    with pytest.raises(ValueError, match="filter_keep"):
        bench.main(args + ["--set", "filter_keep=17", "--output", str(cache.parent / "bad.json")])
