"""The SeqGAN synthetic-oracle benchmark, with self-feedback from a learned evaluator.

Yu, Zhang, Wang and Yu, "SeqGAN: Sequence Generative Adversarial Nets with
Policy Gradient" (AAAI 2017), Table 1: a randomly initialised LSTM, the
ORACLE, defines the true distribution of sequences of 20 tokens over 5,000
ids; a generator is fitted to 10,000 of its samples and judged by
NLL-oracle, the oracle's negative log-likelihood per token of the
generator's samples. Parameters: `benchmarks/data/seqgan_oracle.npz`
(attribution in `benchmarks/data/README.md`). With x_t the embedding of the
previous token (token 0 at t = 0) and (h, c) starting at zero:

    i  = sigmoid(x Wi + h Ui + bi)      f  = sigmoid(x Wf + h Uf + bf)
    o  = sigmoid(x Wog + h Uog + bog)   c~ = tanh(x Wc + h Uc + bc)
    c' = f * c + i * c~                 h' = o * tanh(c')
    p(next token) = softmax(h' Wo + bo)

What runs, in order (sizes of the full protocol; `--quick` shrinks them):

1. `Oracle` (a Keras model holding the file's arrays) samples the training
   set (10,000 sequences) and a disjoint test set (10,000) with seeds.
2. MLE, as published: an LSTM generator with embedding 32 and hidden 32,
   Adam 0.01, batch 64, gradient norm clipped at 5 (global norm, as the
   authors' `clip_by_global_norm`), `--mle-epochs` (120) epochs, through
   keras-selffb's `MLETrainer` (XLA-compiled; `--no-xla`), every generator
   array initialised from N(0, 0.1^2) as the authors' generator was
   (`--init keras`: the Keras layers' defaults). After every
   `--eval-every` (5; the authors logged every 5) epochs:
   NLL-oracle (10,000 generator samples scored by the oracle) and NLL-test
   (the generator's NLL per token of the 10,000 test sequences; Caccia et
   al. 2018). Epoch 0 is the untrained generator.
3. Self-feedback from the MLE generator, each method from a copy of it:
   - `reinforce_discriminator`: keras-selffb's `ReinforceTrainer` (RLOO
     baseline, K samples per prompt) with a `DiscriminatorReward` whose
     classifier (a small SeqGAN-style CNN) is pre-trained on real vs MLE
     samples and retrained every round on real vs the policy's current
     samples (`fit_discriminator`). The learned-evaluator setting of
     SeqGAN, with a sequence-level reward and an RLOO baseline in place of
     SeqGAN's Monte-Carlo roll-outs (per-token rewards).
   - `reinforce_discriminator_seqgan`: the same learned evaluator with
     SeqGAN's update rule: the discriminator's probability as the reward
     (>= 0), no baseline, no scaling, Adam at the authors' 0.01
     (`seqgan_lr`). Rewards that are all positive push up the likelihood
     of every sample the policy draws, so this also sharpens the policy;
     NLL-test and the temperature curve show by how much.
   - `reinforce_discriminator_rollout`: SeqGAN's algorithm: the update
     above with per-token rewards, each token's the mean discriminator
     probability of `rollouts` (16) completions of its prefix sampled from
     the current policy (`RolloutReward`; SeqGAN's eq. 4, where the
     authors rolled out with a slowly updated copy of the generator).
     `reinforce_discriminator_rollout_lagged` (run only when named) rolls
     out with that copy: after every round it keeps 0.8 of its weights and
     takes 0.2 of the generator's (`lag_update`).
   - `reinforce_oracle`: the same trainer with the ORACLE's mean
     log-likelihood per token as the reward (`OracleReward`): an upper
     bound on what a reward can give, which a real task never has.
   - `contrastive_discriminator`: keras-selffb's `ContrastiveTrainer` in
     `"sequence_likelihood"` mode (BRIO/SLiC: the policy's length-
     normalised likelihood is trained to rank its own K samples as the
     discriminator ranks them, plus MLE on the real data), discriminator
     retrained every round as above.
   Each round: `generator_steps` (1) updates on 16 prompts x K = 4 samples
   (64 sequences, SeqGAN's batch), Adam `--rl-lr` (1e-3), then the
   discriminator's epoch on 2,000 real + 2,000 fresh samples; 100 rounds
   (`--rounds`). NLL-oracle and NLL-test every 10 rounds, and the
   discriminator's accuracy on held-out real sequences vs fresh samples.
4. Temperature sweep 0.7 .. 1.3 for MLE and every self-feedback generator:
   NLL-oracle and NLL-test at each temperature (samples at temperature T,
   test NLL of logits / T), the curves of Caccia et al.; a PNG plot.

Token ids: the oracle's ids 0..4999 are keras-selffb ids 5..5004 (shifted
by `NUM_RESERVED`); the generator is a keras-selffb `PolicyNetwork`
(`OracleGenerator`) whose five reserved ids get a fixed -1e9 logit, so its
softmax is exactly one over the oracle's 5,000 ids, it never emits EOS, and
every sample has exactly 20 tokens. Its start token is BOS (prompt
`[PAD, BOS]`; PAD leaves the zero state), an embedding of its own where the
authors' generator fed the embedding of token 0: the same model class.

    python benchmarks/seqgan_oracle.py --seed 0            # full protocol
    python benchmarks/seqgan_oracle.py --quick --seed 0    # < 5 minutes, smaller
    python benchmarks/seqgan_oracle.py --seed 0 --mle-cache runs/seqgan_mle \
        --methods reinforce_discriminator_seqgan_batch_mean   # one method, MLE reused
    python benchmarks/seqgan_oracle.py --seed 2 --mle-cache runs/seqgan_mle \
        --methods reinforce_discriminator_seqgan --set disc_lr=1e-4   # any protocol setting
    python benchmarks/seqgan_oracle.py --seed 0 --mle-cache runs/seqgan_mle \
        --methods reinforce_discriminator_seqgan --rounds 20 \
        --set mle_steps_per_round=1 --set disc_lr=1e-4   # our closest to SeqGAN's 8.736

`--set mle_steps_per_round=N` adds N teacher-forcing steps after each
round: MLE on 64 real sequences each, Adam at `teacher_lr` (Li et al.
2017, "Adversarial Learning for Neural Dialogue Generation").

The full protocol with the first four methods took 44 minutes on the 2-core
development VM with two seeds running side by side (MLE 22 of them); the
roll-out method, now in the default run, adds 12-17 minutes. The quick run
takes 2-3.5 minutes depending on the VM's load. `--methods` picks the self-feedback
methods; `reinforce_discriminator_seqgan_batch_mean` (run only when named)
is the control of the SeqGAN-faithful method: the same update with every
sample rewarded by the batch's mean discriminator probability
(`BatchMeanReward`), so the reward's scale stays and its ranking goes.
`reinforce_discriminator_maligan` (also only when named) trains on MaliGAN's
normalised importance weights D / (1 - D), centred on the batch
(`MaliGANReward`). `filtered_discriminator` (only when named) is the
article's filtered self-training (`SelfFeedbackLoop`'s "filtered" method;
ReST, RAFT): each generator step samples `filter_samples` (256) sequences,
keeps the discriminator's best `filter_keep` (64) and takes one MLE step on
them at `filter_lr` (0.01), uniformly weighted (`filter_weighting`).

Writes `benchmarks/results/seqgan_oracle.json` (`--quick`:
`seqgan_oracle_quick.json`; `--output`) and a PNG (`--plot`), and prints a
table of our figures next to the published ones. JSON keys: `quick` (true
for a `--quick` run: NOT the published protocol), `seed`, `config`,
`published`; `mle_nll_oracle`, `mle_nll_test` (after the last epoch) and
`mle` (per evaluated epoch: `epoch`, `nll_oracle`, `nll_test`,
`train_loss`; `train_seconds`: the MLE stage, evaluations included);
`methods.<name>` (per evaluated round: `round` (0 = the MLE generator),
`nll_oracle`, `nll_test`, `reward`, `discriminator_accuracy` (training),
`discriminator_heldout_accuracy`; `seconds`: rounds and evaluations,
`eval_seconds`: the evaluations); `temperature_curves.<generator>`
(`temperature`, `nll_oracle`, `nll_test`); `oracle_samples_nll_oracle`,
`uniform_nll_oracle` (the README's checks) and `wall_seconds`.
Not part of the test suite (tests/test_seqgan_oracle.py runs its pieces on
tiny sizes).
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_selffb.loop import filter_candidates  # noqa: E402
from keras_selffb.models import PolicyNetwork  # noqa: E402
from keras_selffb.rewards import DiscriminatorReward, Reward, RolloutReward  # noqa: E402
from keras_selffb.text.tokenizer import BOS_ID, NUM_RESERVED, PAD_ID  # noqa: E402
from keras_selffb.training import ContrastiveTrainer, MLETrainer, ReinforceTrainer, weighted_rows  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE_PATH = os.path.join(HERE, "data", "seqgan_oracle.npz")
VOCAB = 5000
LENGTH = 20
START_TOKEN = 0
PROMPT = (PAD_ID, BOS_ID)  # the generator's "start token": BOS from the zero state
PARAMETER_NAMES = ("embedding", "Wi", "Ui", "bi", "Wf", "Uf", "bf", "Wog", "Uog", "bog",
                   "Wc", "Uc", "bc", "Wo", "bo")

# Published NLL-oracle figures (sequence length 20); see
# /work/shared/benchmarks/seqgan_oracle/README.md (copied facts, not code).
PUBLISHED = {
    "random": 10.310,  # SeqGAN paper, Table 1 (a randomly initialised generator)
    "mle": 9.038,  # SeqGAN paper, Table 1
    "scheduled_sampling": 8.985,
    "pg_bleu": 8.946,
    "seqgan": 8.736,  # SeqGAN paper, Table 1
    "oracle_samples": 5.752,  # the oracle's entropy rate, measured from the file
    "authors_log_mle_115": 9.071,  # the public run log: MLE after 115 epochs
    "authors_log_seqgan_150": 8.683,  # ... then after 150 adversarial epochs
}
TEMPERATURES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
# Random streams of one seed: the oracle's training and test sets, the
# generator's evaluation samples, its samples for the discriminator, the
# held-out accuracy's samples, the filtered method's candidates.
TRAIN_STREAM, TEST_STREAM, EVAL_STREAM, FAKE_STREAM, HELDOUT_STREAM, FILTER_STREAM = 0, 1, 2, 3, 4, 5


# -- the oracle ---------------------------------------------------------------


def load_oracle_parameters(path=ORACLE_PATH):
    """The oracle's arrays as a dict of float32 numpy arrays (checked shapes)."""
    with np.load(path) as data:
        params = {name: np.asarray(data[name], np.float32) for name in PARAMETER_NAMES}
    expected = {"embedding": (VOCAB, 32), "Wo": (32, VOCAB), "bo": (VOCAB,)}
    for name, value in params.items():
        shape = expected.get(name, (32,) if name.startswith("b") else (32, 32))
        if value.shape != shape:
            raise ValueError(f"{path}: {name} has shape {value.shape}, expected {shape}.")
    return params


class Oracle(keras.Model):
    """The SeqGAN oracle LSTM, from its equations, as a Keras model.

    `call(ids)` returns the exact per-token log-likelihood `[N, 20]` of
    oracle-id sequences `[N, 20]` (ids 0..4999); `sample(n, seed)` draws
    sequences by ancestral sampling (stateless: the same seed gives the
    same sequences). Weights are frozen.
    """

    def __init__(self, params=None, **kwargs):
        super().__init__(**kwargs)
        params = load_oracle_parameters() if params is None else params
        self.hidden = params["Wi"].shape[0]
        self.vocab_size = params["bo"].shape[0]
        for name in PARAMETER_NAMES:
            setattr(self, f"_{name}", self.add_weight(
                shape=params[name].shape, initializer=keras.initializers.Constant(params[name]),
                trainable=False, name=name))
        self.built = True
        self._log_likelihood = tf.function(self._log_likelihood_graph, reduce_retracing=True)
        self._sample = tf.function(self._sample_graph, reduce_retracing=True)

    def _gates(self):
        """Input and recurrent weights of the four gates, concatenated: i, f, o, c~."""
        w = tf.concat([self._Wi, self._Wf, self._Wog, self._Wc], axis=1)
        u = tf.concat([self._Ui, self._Uf, self._Uog, self._Uc], axis=1)
        b = tf.concat([self._bi, self._bf, self._bog, self._bc], axis=0)
        return w, u, b

    def _cell(self, x_proj, h, c, u):
        z = x_proj + tf.matmul(h, u)
        i, f, o, g = tf.split(z, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, c

    def _log_likelihood_graph(self, ids):
        ids = tf.cast(ids, tf.int32)
        n, length = tf.shape(ids)[0], ids.shape[1]
        w, u, b = self._gates()
        previous = tf.concat([tf.fill([n, 1], START_TOKEN), ids[:, :-1]], axis=1)
        x_proj = tf.einsum("ntd,dk->ntk", tf.gather(self._embedding, previous), w) + b
        h = c = tf.zeros([n, self.hidden])
        out = []
        for t in range(length):
            h, c = self._cell(x_proj[:, t], h, c, u)
            logits = tf.matmul(h, self._Wo) + self._bo
            picked = tf.gather(logits, ids[:, t], batch_dims=1)
            out.append(picked - tf.reduce_logsumexp(logits, axis=1))
        return tf.stack(out, axis=1)

    def _sample_graph(self, n, seed):
        w, u, b = self._gates()
        h = c = tf.zeros([n, self.hidden])
        token = tf.fill([n], START_TOKEN)
        out = []
        for t in range(LENGTH):
            x_proj = tf.matmul(tf.gather(self._embedding, token), w) + b
            h, c = self._cell(x_proj, h, c, u)
            logits = tf.matmul(h, self._Wo) + self._bo
            token = tf.random.stateless_categorical(logits, 1, seed + [0, t], dtype=tf.int32)[:, 0]
            out.append(token)
        return tf.stack(out, axis=1)

    def call(self, ids):
        """Per-token log-likelihood `[N, T]` of oracle ids `[N, T]`."""
        return self._log_likelihood(tf.convert_to_tensor(ids, tf.int32))

    def log_likelihood(self, ids, batch_size=1000):
        """Per-token log-likelihood `[N, T]` (numpy), in chunks of `batch_size`."""
        ids = check_oracle_ids(ids)
        return np.concatenate([self(ids[i:i + batch_size]).numpy()
                               for i in range(0, len(ids), batch_size)])

    def nll(self, ids, batch_size=1000):
        """Mean negative log-likelihood per token of `ids`: NLL-oracle when they are a generator's."""
        return float(-self.log_likelihood(ids, batch_size).mean())

    def sample(self, n, seed=0, stream=0, batch_size=2000):
        """`n` oracle sequences `[n, 20]` (int32 numpy).

        The same `(seed, stream)` gives the same sequences; different
        streams (training set, test set) are independent draws.
        """
        chunks = []
        for k, start in enumerate(range(0, n, batch_size)):
            size = min(batch_size, n - start)
            key = tf.constant([seed, stream * 1_000_000 + k * 1000], tf.int32)
            chunks.append(self._sample(tf.constant(size), key).numpy())
        return np.concatenate(chunks)


def check_oracle_ids(ids):
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"Oracle ids must be integers; got dtype {ids.dtype}.")
    if ids.ndim != 2:
        raise ValueError(f"Oracle ids must be [N, T]; got shape {ids.shape}.")
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB):
        raise ValueError(f"Oracle ids must lie in 0..{VOCAB - 1}; got {ids.min()}..{ids.max()}.")
    return ids.astype(np.int32)


# -- the generator: a keras-selffb PolicyNetwork over the oracle's ids ----------


def to_policy_ids(oracle_ids):
    """Oracle ids 0..4999 -> keras-selffb ids 5..5004 (after the reserved ids)."""
    return np.asarray(oracle_ids, np.int32) + NUM_RESERVED


def to_oracle_ids(policy_ids):
    return np.asarray(policy_ids, np.int32) - NUM_RESERVED


@keras.saving.register_keras_serializable(package="seqgan_oracle")
class OracleGenerator(PolicyNetwork):
    """A `PolicyNetwork` whose reserved ids (PAD, BOS, EOS, UNK, SEP) get -1e9.

    Its softmax is therefore one over the oracle's 5,000 ids (shifted by
    `NUM_RESERVED`): it never emits EOS, so every sample keras-selffb's
    samplers draw has exactly `max_new_tokens` tokens.
    """

    def __init__(self, vocab_size=VOCAB + NUM_RESERVED, embedding_dim=32, hidden_dim=32, **kwargs):
        super().__init__(vocab_size, embedding_dim, hidden_dim, **kwargs)
        mask = np.zeros(vocab_size, np.float32)
        mask[:NUM_RESERVED] = -1e9
        self._reserved_bias = tf.constant(mask)

    def _run(self, token_ids, cache, training):
        logits, cache = super()._run(token_ids, cache, training)
        return logits + tf.cast(self._reserved_bias, logits.dtype), cache


def seqgan_initialize(policy, seed):
    """The authors' initialisation: every generator array drawn from N(0, 0.1^2).

    SeqGAN's generator draws its embedding, all LSTM matrices, the gate
    biases, the output matrix and the output bias from a normal with
    standard deviation 0.1. Keras' defaults (uniform +-0.05 embedding,
    Glorot/orthogonal matrices, zero biases with forget bias 1) learn the
    oracle more slowly and settle higher (NLL-oracle 9.25 after 120 epochs
    against the authors' 9.07); see docs/benchmarks.md.
    """
    rng = np.random.default_rng([seed, 2017])
    policy.set_weights([rng.normal(0.0, 0.1, w.shape).astype(np.float32) for w in policy.get_weights()])


def copy_generator(policy):
    clone = OracleGenerator.from_config(policy.get_config())
    clone.set_weights(policy.get_weights())
    return clone


def packed_rows(oracle_ids):
    """Packed (prompt, reference) rows `[N, 2 + 20]`: `[PAD, BOS]` then the shifted sequence."""
    ids = to_policy_ids(oracle_ids)
    prompt = np.tile(np.array(PROMPT, np.int32), (len(ids), 1))
    return np.concatenate([prompt, ids], axis=1)


_TWINS = {}


def _traced_for(policy, graph):
    """`graph` as one `tf.function` per architecture, reading `policy`'s current weights.

    Every method's generator (and the MLE one) has the same architecture, so
    sampling and scoring are traced once per process instead of once per
    generator: the function reads a twin of that architecture, and the
    policy's weights are copied into it first (a few hundred thousand
    floats, far cheaper than a trace).
    """
    key = (graph.__name__, type(policy).__name__, json.dumps(policy.get_config(), sort_keys=True, default=str))
    if key not in _TWINS:
        twin = type(policy).from_config(policy.get_config())
        twin(np.zeros((1, 1), np.int32))  # builds every weight
        _TWINS[key] = twin, tf.function(lambda *args: graph(twin, *args), reduce_retracing=True)
    twin, function = _TWINS[key]
    twin.set_weights(policy.get_weights())
    return function


def _generator_sample_graph(policy, n, temperature, seed):
    cache = policy.initial_cache(n)
    token = tf.fill([n, 1], BOS_ID)
    out = []
    for t in range(LENGTH):
        logits, cache = policy.call_with_cache(token, cache)
        logits = tf.cast(logits[:, 0, :], tf.float32) / temperature
        token = tf.random.stateless_categorical(logits, 1, seed + [0, t], dtype=tf.int32)
        out.append(token[:, 0])
    return tf.stack(out, axis=1)


def generator_sample(policy, n, temperature=1.0, seed=0, stream=0, batch_size=2000):
    """`n` generator samples as ORACLE ids `[n, 20]` (ancestral, at `temperature`).

    Stateless: the same policy weights and `(seed, stream)` give the same samples.
    """
    chunks = []
    sample = _traced_for(policy, _generator_sample_graph)
    for k, start in enumerate(range(0, n, batch_size)):
        size = min(batch_size, n - start)
        key = tf.constant([seed, stream * 1_000_000 + k * 1000], tf.int32)
        ids = sample(tf.constant(size), tf.constant(float(temperature)), key)
        chunks.append(to_oracle_ids(ids.numpy()))
    return np.concatenate(chunks)


def _generator_nll_graph(policy, packed, temperature):
    logits = tf.cast(policy(packed[:, :-1], training=False), tf.float32)[:, -LENGTH:] / temperature
    picked = tf.gather(logits, packed[:, -LENGTH:], batch_dims=2)
    # log-sum-exp minus the picked logit: the fused softmax cross-entropy
    # also writes the gradient, twice as slow here on CPU.
    return tf.reduce_sum(tf.reduce_logsumexp(logits, axis=-1) - picked)


def generator_nll(policy, oracle_ids, temperature=1.0, batch_size=1000):
    """The generator's NLL per token of oracle sequences (NLL-test), logits / temperature."""
    packed = packed_rows(check_oracle_ids(oracle_ids))
    nll_sum = _traced_for(policy, _generator_nll_graph)
    total = sum(float(nll_sum(tf.constant(packed[i:i + batch_size]), tf.constant(float(temperature))))
                for i in range(0, len(packed), batch_size))
    return total / packed[:, -LENGTH:].size


def evaluate(policy, oracle, test_ids, num_samples, seed, temperature=1.0):
    """(NLL-oracle, NLL-test) of a generator at a temperature.

    NLL-oracle: the oracle's NLL per token of `num_samples` generator
    samples; NLL-test: the generator's NLL per token of `test_ids`.
    """
    samples = generator_sample(policy, num_samples, temperature, seed, stream=EVAL_STREAM)
    return oracle.nll(samples), generator_nll(policy, test_ids, temperature)


# -- rewards: the learned evaluator and the oracle ------------------------------


def make_discriminator(vocab_size=VOCAB + NUM_RESERVED, length=LENGTH, embedding_dim=32,
                       filter_sizes=(1, 2, 3, 4, 5, 8, 10, 15, 20), num_filters=32, dropout=0.5,
                       l2=0.0, seed=0):
    """A SeqGAN-style CNN classifier: ids `[B, 20]` -> P(real) `[B, 1]`.

    Embedding, one convolution per filter width with max-over-time pooling,
    a highway layer, dropout and a sigmoid unit, as the authors' CNN
    discriminator, narrower (embedding 32, 32 filters per width, 9 widths)
    for 2 CPU cores. Held out (real test sequences vs fresh samples of an
    8-epoch MLE generator) it reached 0.60-0.65 accuracy after 1-2 epochs
    on 10,000 + 10,000 sequences and then overfitted the real set; wider
    (embedding 64) or with a smaller learning rate it did no better.
    `l2` > 0 puts an L2 penalty of that weight on the embedding and on
    every kernel (SeqGAN penalised its output layer's, at 0.2).
    """
    init = keras.initializers.GlorotUniform
    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    ids = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocab_size, embedding_dim,
                               embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05, seed=seed),
                               embeddings_regularizer=reg)(ids)
    pooled = [keras.layers.GlobalMaxPooling1D()(
        keras.layers.Conv1D(num_filters, width, activation="relu", kernel_initializer=init(seed + width),
                            kernel_regularizer=reg)(x))
        for width in filter_sizes if width <= length]
    features = keras.layers.Concatenate()(pooled)
    gate = keras.layers.Dense(features.shape[-1], activation="sigmoid", kernel_initializer=init(seed + 101),
                              bias_initializer=keras.initializers.Constant(-1.0), kernel_regularizer=reg)(features)
    transform = keras.layers.Dense(features.shape[-1], activation="relu",
                                   kernel_initializer=init(seed + 102), kernel_regularizer=reg)(features)
    highway = gate * transform + (1.0 - gate) * features
    highway = keras.layers.Dropout(dropout, seed=seed)(highway)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init(seed + 103),
                             kernel_regularizer=reg)(highway)
    return keras.Model(ids, out, name="cnn_discriminator")


class OracleReward(Reward):
    """The oracle's mean log-likelihood per token of a candidate (keras-selffb ids).

    The "true" reward of this benchmark: what the generator is judged by. A
    real task never has it; it bounds what a learned evaluator can give.
    """

    default_name = "oracle_log_likelihood"

    def __init__(self, oracle, name=None):
        super().__init__(name=name)
        self.oracle = oracle

    def call(self, prompts, candidates, references):
        ids = tf.maximum(tf.cast(candidates, tf.int32) - NUM_RESERVED, 0)
        return tf.stop_gradient(tf.reduce_mean(self.oracle(ids), axis=1))


class BatchMeanReward(Reward):
    """Every candidate gets the batch's mean of `reward`: its scale, none of its ranking.

    The control of `reinforce_discriminator_seqgan`: with SeqGAN's update
    (no baseline, rewards >= 0), a reward that carries no information about
    which sample is better still raises the likelihood of every sample the
    policy draws. Whatever that method gains beyond this control is what the
    discriminator's ranking gives.
    """

    default_name = "batch_mean"

    def __init__(self, reward, name=None):
        super().__init__(name=name)
        self.reward = reward

    def call(self, prompts, candidates, references):
        values = self.reward(prompts, candidates, references)
        return tf.stop_gradient(tf.broadcast_to(tf.reduce_mean(values), tf.shape(values)))


class MaliGANReward(Reward):
    """MaliGAN's normalised importance weights from a discriminator's P(real), centred on the batch.

    Che et al. 2017 ("Maximum-Likelihood Augmented Discrete Generative
    Adversarial Networks"): with D the probability that a sample is real,
    r = D / (1 - D) estimates p_data / p_generator for that sample. Each
    sample of the batch gets `r / mean(r) - 1`: its weight normalised
    over the batch, minus the uniform weight, as MaliGAN's baseline.
    The values sum to 0, so unlike SeqGAN's update (probabilities >= 0,
    no baseline) it does not push up every sample the policy draws.
    `D` is clipped to [`epsilon`, 1 - `epsilon`].
    """

    default_name = "maligan"

    def __init__(self, reward, epsilon=1e-6, name=None):
        super().__init__(name=name)
        self.reward = reward
        self.epsilon = float(epsilon)

    def call(self, prompts, candidates, references):
        p_real = tf.clip_by_value(self.reward(prompts, candidates, references), self.epsilon, 1.0 - self.epsilon)
        ratio = p_real / (1.0 - p_real)
        return tf.stop_gradient(ratio / tf.reduce_mean(ratio) - 1.0)


# -- the protocol ---------------------------------------------------------------

FULL = {
    "num_train": 10_000,  # oracle samples to fit (published)
    "num_test": 10_000,  # fresh oracle samples for NLL-test
    "num_eval": 10_000,  # generator samples for NLL-oracle (published)
    "batch_size": 64,  # published
    "mle_lr": 0.01,  # published (Adam)
    "clip_norm": 5.0,  # published (global norm)
    "mle_epochs": 120,  # published
    "init": "seqgan",  # the authors' N(0, 0.1^2) for every generator array; "keras": the layers' defaults
    "eval_every": 5,  # the authors' run log has NLL-oracle every 5 epochs; --eval-every 1 for all
    "rounds": 100,  # self-feedback rounds, each method
    "eval_every_round": 10,
    "prompts_per_step": 16,  # x K samples = 64 sequences a generator step, as SeqGAN's batch
    "num_samples": 4,
    "generator_steps": 1,  # generator updates a round (SeqGAN: 1)
    "rl_lr": 1e-3,  # Adam; SeqGAN's 0.01 made the oracle reward collapse the policy in 40 steps
    "baseline": "rloo",  # SeqGAN had none: with rewards >= 0 that also sharpens the policy
    "rollouts": 16,  # reinforce_discriminator_rollout: completions per prefix (SeqGAN's 16)
    "rollout_update_rate": 0.8,  # ..._rollout_lagged: the roll-out copy keeps 0.8 of itself a round (SeqGAN's)
    "seqgan_lr": 0.01,  # reinforce_discriminator_seqgan: the authors' generator rate, no baseline
    "disc_lr": 1e-3,  # SeqGAN used 1e-4 with many more epochs
    "disc_dropout": 0.5,  # SeqGAN: 0.25 (keep probability 0.75)
    "disc_l2": 0.0,  # L2 on the discriminator's embedding and kernels (SeqGAN: 0.2 on its output layer)
    "disc_label_smoothing": 0.0,  # one-sided: real rows trained toward 1 - this
    "seqgan_kl_coef": 0.0,  # reinforce_discriminator_seqgan*: KL to the MLE generator (0: SeqGAN's update)
    "mle_steps_per_round": 0,  # teacher forcing: MLE updates on real data after each round's generator steps
    "teacher_lr": 0.01,  # Adam rate of those MLE updates (the MLE stage's 0.01)
    "filter_samples": 256,  # filtered_discriminator: candidates sampled and scored a generator step
    "filter_keep": 64,  # ... the best this many by the discriminator are kept (SeqGAN's batch of 64)
    "filter_weighting": "uniform",  # ... "uniform" or "reward" (weights D / mean D over the kept)
    "filter_lr": 0.01,  # ... Adam rate of the fine-tuning step on the kept (the MLE stage's 0.01)
    "disc_pretrain_epochs": 2,  # on num_train real vs as many MLE samples
    "disc_samples": 2_000,  # real and as many fresh fake a round
    "disc_epochs": 1,
    "disc_batch_size": 64,
    "temperatures": list(TEMPERATURES),
    "num_temperature_eval": 10_000,
}
QUICK = {
    **FULL,
    "num_train": 5_000,
    "num_test": 2_000,
    "num_eval": 2_000,
    "mle_epochs": 6,
    "eval_every": 2,
    "rounds": 6,
    "eval_every_round": 3,
    "disc_pretrain_epochs": 1,
    "disc_samples": 1_000,
    "num_temperature_eval": 1_000,
}
METHODS = ("reinforce_discriminator", "reinforce_discriminator_seqgan", "reinforce_discriminator_rollout",
           "reinforce_oracle", "contrastive_discriminator")
# Run only when asked (--methods): SeqGAN's update with the discriminator's
# rewards replaced by their batch mean (`BatchMeanReward`), the roll-out
# method with the authors' slowly updated roll-out policy, and MaliGAN's
# normalised importance weights (`MaliGANReward`), and the article's filtered
# self-training ranked by the discriminator (`filtered_step`).
ON_REQUEST = ("reinforce_discriminator_seqgan_batch_mean", "reinforce_discriminator_rollout_lagged",
              "reinforce_discriminator_maligan", "filtered_discriminator")
PROMPT_LENGTH = len(PROMPT)


def _progress(iterable, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs)


def _say(text):
    from tqdm.auto import tqdm

    tqdm.write(text)


def mle_trainer(policy, learning_rate, clip_norm, jit_compile="auto"):
    """An `MLETrainer` on `policy`, Adam at `learning_rate` with the global norm clipped at `clip_norm`.

    The MLE stage and the teacher-forcing steps between reward updates.
    """
    trainer = MLETrainer(policy, prompt_length=PROMPT_LENGTH)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=clip_norm), jit_compile=jit_compile)
    return trainer


def train_mle(oracle, train_ids, test_ids, config, seed, xla=True, log=_say):
    """Published MLE pre-training with `MLETrainer`; returns (policy, curve dict)."""
    keras.utils.set_random_seed(seed)
    policy = OracleGenerator()
    if config["init"] == "seqgan":
        seqgan_initialize(policy, seed)
    elif config["init"] != "keras":
        raise ValueError(f"init must be 'seqgan' or 'keras', got {config['init']!r}")
    trainer = mle_trainer(policy, config["mle_lr"], config["clip_norm"], jit_compile=xla)
    rows = packed_rows(train_ids)
    curve = {"epoch": [], "nll_oracle": [], "nll_test": [], "train_loss": [], "seconds": []}
    start = time.perf_counter()

    def record(epoch, loss):
        nll_oracle, nll_test = evaluate(policy, oracle, test_ids, config["num_eval"], seed)
        for key, value in (("epoch", epoch), ("nll_oracle", nll_oracle), ("nll_test", nll_test),
                           ("train_loss", loss), ("seconds", time.perf_counter() - start)):
            curve[key].append(value)
        log(f"MLE epoch {epoch:3d}: NLL-oracle {nll_oracle:.3f}  NLL-test {nll_test:.3f}  "
            f"train loss {'-' if loss is None else f'{loss:.3f}'}  ({time.perf_counter() - start:.0f} s)")

    record(0, None)
    bar = _progress(range(1, config["mle_epochs"] + 1), desc="MLE", unit="epoch")
    for epoch in bar:
        history = trainer.fit(rows, batch_size=config["batch_size"], epochs=1, shuffle=True, verbose=0)
        loss = float(history.history["loss"][-1])
        bar.set_postfix(loss=f"{loss:.3f}")
        if epoch % config["eval_every"] == 0 or epoch == config["mle_epochs"]:
            record(epoch, loss)
    curve["train_seconds"] = time.perf_counter() - start
    return policy, curve


# The settings an MLE generator depends on: a cached one is reused only when all match.
MLE_KEYS = ("num_train", "num_test", "num_eval", "batch_size", "mle_lr", "clip_norm", "mle_epochs", "init",
            "eval_every")


def cached_mle(cache_dir, oracle, train_ids, test_ids, config, seed, quick, xla=True, log=_say):
    """`train_mle`, or the generator and curve an earlier run saved in `cache_dir` with the same settings.

    The full protocol's MLE takes most of a run (20+ minutes on 2 cores);
    with a cache, trying another self-feedback method costs only its rounds.
    The cache holds `mle_seed<seed>.weights.h5` and `mle_seed<seed>.json`
    (the settings and the MLE curve; written last, so a run killed while
    saving leaves no half cache). Other settings train again and replace it.
    """
    key = {"seed": seed, "quick": bool(quick), "xla": bool(xla), **{k: config[k] for k in MLE_KEYS}}
    stem = os.path.join(cache_dir, f"mle_seed{seed}")
    record_path, weights_path = stem + ".json", stem + ".weights.h5"
    if os.path.exists(record_path) and os.path.exists(weights_path):
        with open(record_path) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            policy = OracleGenerator()
            policy.load_weights(weights_path)
            log(f"MLE generator loaded from {weights_path} (NLL-oracle {saved['curve']['nll_oracle'][-1]:.3f})")
            return policy, saved["curve"]
        changed = sorted(k for k in key if saved.get("key", {}).get(k) != key[k])
        log(f"the MLE cache in {cache_dir} was made with other settings ({', '.join(changed)}): training again")
    policy, curve = train_mle(oracle, train_ids, test_ids, config, seed, xla=xla, log=log)
    os.makedirs(cache_dir, exist_ok=True)
    if os.path.exists(record_path):
        os.remove(record_path)
    policy.save_weights(weights_path)
    with open(record_path, "w") as f:
        json.dump({"key": key, "curve": curve}, f, indent=1)
    return policy, curve


def discriminator_reward(config, seed, weights=None):
    """The configured `DiscriminatorReward` (CNN, dropout, L2, label smoothing), optionally with `weights`."""
    classifier = make_discriminator(dropout=config["disc_dropout"], l2=config["disc_l2"], seed=seed)
    if weights is not None:
        classifier.set_weights(weights)
    return DiscriminatorReward(classifier, learning_rate=config["disc_lr"],
                               label_smoothing=config["disc_label_smoothing"])


def pretrain_discriminator(policy, train_ids, config, seed):
    """A discriminator trained on real vs the MLE generator's samples; its weights."""
    keras.utils.set_random_seed(seed)
    reward = discriminator_reward(config, seed)
    fake = generator_sample(policy, len(train_ids), seed=seed, stream=FAKE_STREAM)
    history = reward.fit_discriminator(to_policy_ids(train_ids), to_policy_ids(fake),
                                       epochs=config["disc_pretrain_epochs"], batch_size=config["disc_batch_size"],
                                       seed=seed)
    return reward.classifier.get_weights(), history


def heldout_accuracy(discriminator, policy, test_ids, num, seed):
    """The discriminator's accuracy on held-out real sequences vs fresh samples (balanced)."""
    real = to_policy_ids(test_ids[:num])
    fake = to_policy_ids(generator_sample(policy, len(real), seed=seed, stream=HELDOUT_STREAM))
    p_real = discriminator(None, real, None).numpy()
    p_fake = discriminator(None, fake, None).numpy()
    return float(((p_real > 0.5).mean() + (p_fake <= 0.5).mean()) / 2)


def lag_update(lagged, policy, rate):
    """`lagged <- rate * lagged + (1 - rate) * policy`, every array (SeqGAN's roll-out network, rate 0.8).

    The authors copied the embedding outright and moved the other arrays at
    this rate; here every array moves at the rate.
    """
    lagged.set_weights([rate * a + (1.0 - rate) * b for a, b in zip(lagged.get_weights(), policy.get_weights())])


def build_trainer(method, policy, oracle, config, seed, discriminator_weights):
    """The keras-selffb trainer of a method and its reward (None for the oracle)."""
    common = {"prompt_length": PROMPT_LENGTH, "max_new_tokens": LENGTH,
              "num_samples": config["num_samples"], "seed": seed}
    discriminator = None
    if "discriminator" in method:
        discriminator = discriminator_reward(config, seed, discriminator_weights)
    learning_rate = config["rl_lr"]
    if method == "reinforce_discriminator":
        trainer = ReinforceTrainer(policy, discriminator, baseline=config["baseline"], scale_rewards="batch",
                                   **common)
    elif method in ("reinforce_discriminator_seqgan", "reinforce_discriminator_seqgan_batch_mean"):
        # SeqGAN's update: the discriminator's probability as the reward
        # (>= 0, no baseline, not scaled) at the authors' rate 0.01; the
        # control gives every sample the batch's mean of it.
        reward = discriminator if method == "reinforce_discriminator_seqgan" else BatchMeanReward(discriminator)
        kl = {}
        if config["seqgan_kl_coef"] > 0:  # an anchor to the MLE generator (not SeqGAN's)
            kl = {"kl_coef": config["seqgan_kl_coef"], "reference_policy": copy_generator(policy)}
        trainer = ReinforceTrainer(policy, reward, baseline="none", scale_rewards="none", **kl, **common)
        learning_rate = config["seqgan_lr"]
    elif method in ("reinforce_discriminator_rollout", "reinforce_discriminator_rollout_lagged"):
        # SeqGAN itself: its update (as above) with per-token rewards, each
        # token's the mean P(real) of `rollouts` completions of its prefix
        # (`RolloutReward`) by the current policy, or (`_lagged`, as the
        # authors) by a copy that follows it slowly (`lag_update`).
        rollout_policy = policy if method == "reinforce_discriminator_rollout" else copy_generator(policy)
        reward = RolloutReward(discriminator, rollout_policy, num_rollouts=config["rollouts"], seed=seed)
        trainer = ReinforceTrainer(policy, reward, baseline="none", scale_rewards="none", **common)
        learning_rate = config["seqgan_lr"]
    elif method == "reinforce_discriminator_maligan":
        # MaliGAN's update: normalised D / (1 - D) weights minus their
        # uniform value (`MaliGANReward`), not scaled further, at SeqGAN's rate.
        trainer = ReinforceTrainer(policy, MaliGANReward(discriminator), baseline="none", scale_rewards="none",
                                   **common)
        learning_rate = config["seqgan_lr"]
    elif method == "filtered_discriminator":
        check_filter_settings(config)  # before any round (run() checks before MLE too)
        # The article's filtered self-training (ReST / RAFT; `SelfFeedbackLoop`'s
        # "filtered" method): sample, keep the discriminator's best, fine-tune
        # on them by MLE (`filtered_step`).
        return mle_trainer(policy, config["filter_lr"], config["clip_norm"]), discriminator
    elif method == "reinforce_oracle":
        trainer = ReinforceTrainer(policy, OracleReward(oracle), baseline=config["baseline"],
                                   scale_rewards="batch", **common)
    elif method == "contrastive_discriminator":
        trainer = ContrastiveTrainer(policy, mode="sequence_likelihood", ranking_fn=discriminator,
                                     rank_weight=1.0, mle_weight=1.0, **common)
    else:
        raise ValueError(f"Unknown method {method!r}; choose from {METHODS + ON_REQUEST}.")
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=config["clip_norm"]))
    return trainer, discriminator


def check_filter_settings(config):
    """ValueError naming the problem if the filtered method's settings cannot work."""
    if config["filter_weighting"] not in ("uniform", "reward"):
        raise ValueError(f"filter_weighting must be 'uniform' or 'reward', got {config['filter_weighting']!r}")
    if not 0 < config["filter_keep"] <= config["filter_samples"]:
        raise ValueError(f"filter_keep must be in 1..filter_samples ({config['filter_samples']}), "
                         f"got {config['filter_keep']}")


def filtered_step(trainer, discriminator, policy, config, seed):
    """One step of filtered self-training ranked by the discriminator; (mean P(real), kept mean).

    `filter_samples` fresh samples of the policy are scored by the
    discriminator; the best `filter_keep` (those at or above the
    `filter_keep`-th highest score, `keras_selffb.loop.filter_candidates`)
    are kept and `trainer` (an `MLETrainer` on the policy) takes one step on
    them, uniformly or weighted by score (`filter_weighting`). The threshold
    is set afresh every step: the discriminator is retrained every round, so
    its scores from one round to the next are not on one scale (the loop's
    rising threshold assumes a fixed reward).
    """
    check_filter_settings(config)
    samples = generator_sample(policy, config["filter_samples"], seed=seed, stream=FILTER_STREAM)
    scores = np.asarray(discriminator(None, to_policy_ids(samples), None)).reshape(-1)
    threshold = float(np.sort(scores)[-config["filter_keep"]])
    kept, weights = filter_candidates(scores, threshold, config["filter_weighting"])
    if kept.size == 0:  # "reward" weighting and every kept score 0: nothing to learn from
        return float(scores.mean()), 0.0
    rows = packed_rows(samples[kept])
    if config["filter_weighting"] == "reward":
        rows = weighted_rows(rows, weights)
    trainer.fit(rows, batch_size=len(kept), epochs=1, shuffle=False, verbose=0)
    return float(scores.mean()), float(scores[kept].mean())


def self_feedback(method, mle_policy, mle_point, oracle, train_ids, test_ids, config, seed,
                  discriminator_weights, log=_say):
    """Rounds of a self-feedback method from a copy of the MLE generator."""
    keras.utils.set_random_seed(seed)
    policy = copy_generator(mle_policy)
    trainer, discriminator = build_trainer(method, policy, oracle, config, seed, discriminator_weights)
    rng = np.random.default_rng(seed)
    curve = {"round": [0], "nll_oracle": [mle_point[0]], "nll_test": [mle_point[1]], "reward": [None],
             "discriminator_accuracy": [None], "discriminator_heldout_accuracy": [None], "seconds": [0.0]}
    heldout = min(2000, len(test_ids))
    if discriminator is not None:
        curve["discriminator_heldout_accuracy"][0] = heldout_accuracy(discriminator, policy, test_ids, heldout, seed)
    start = time.perf_counter()
    eval_seconds = 0.0
    step_rows = config["prompts_per_step"] * config["generator_steps"]
    teacher = None
    if config["mle_steps_per_round"] > 0:
        teacher = mle_trainer(policy, config["teacher_lr"], config["clip_norm"])
    bar = _progress(range(1, config["rounds"] + 1), desc=method, unit="round")
    for r in bar:
        # Generator steps; the packed rows' references (real data) are what
        # the contrastive MLE term fits; REINFORCE reads only the prompt.
        if method == "filtered_discriminator":
            scored = [filtered_step(trainer, discriminator, policy, config, (seed * 1000 + r) * 100 + step)
                      for step in range(config["generator_steps"])]
            logs = {"reward": [scored[-1][0]]}  # the last step's mean P(real) of its samples
        else:
            rows = packed_rows(train_ids[rng.choice(len(train_ids), step_rows, replace=False)])
            logs = trainer.fit(rows, batch_size=config["prompts_per_step"], epochs=1, shuffle=False,
                               verbose=0).history
        if teacher is not None:
            # Teacher forcing (Li et al. 2017): MLE on real sequences between
            # the reward's updates, so the generator keeps covering the data.
            n_real = config["mle_steps_per_round"] * config["batch_size"]
            real = train_ids[rng.choice(len(train_ids), n_real, replace=n_real > len(train_ids))]
            teacher.fit(packed_rows(real), batch_size=config["batch_size"], epochs=1, shuffle=False, verbose=0)
        rollout_policy = getattr(getattr(trainer, "reward", None), "policy", None)
        if rollout_policy is not None and rollout_policy is not policy:
            lag_update(rollout_policy, policy, config["rollout_update_rate"])
        reward = logs.get("reward", logs.get("score"))
        reward = None if reward is None else float(reward[-1])
        accuracy = None
        if discriminator is not None:
            # The evaluator keeps up: real vs the policy's current samples.
            fake = generator_sample(policy, config["disc_samples"], seed=seed * 1000 + r, stream=FAKE_STREAM)
            real = train_ids[rng.choice(len(train_ids), config["disc_samples"], replace=False)]
            d_history = discriminator.fit_discriminator(
                to_policy_ids(real), to_policy_ids(fake), epochs=config["disc_epochs"],
                batch_size=config["disc_batch_size"], seed=seed * 1000 + r)
            accuracy = d_history["accuracy"][-1]
        bar.set_postfix(reward="-" if reward is None else f"{reward:.3f}",
                        d_acc="-" if accuracy is None else f"{accuracy:.2f}")
        if r % config["eval_every_round"] == 0 or r == config["rounds"]:
            eval_start = time.perf_counter()
            nll_oracle, nll_test = evaluate(policy, oracle, test_ids, config["num_eval"], seed)
            held = None if discriminator is None else heldout_accuracy(discriminator, policy, test_ids, heldout,
                                                                      seed + r)
            eval_seconds += time.perf_counter() - eval_start
            for key, value in (("round", r), ("nll_oracle", nll_oracle), ("nll_test", nll_test),
                               ("reward", reward), ("discriminator_accuracy", accuracy),
                               ("discriminator_heldout_accuracy", held),
                               ("seconds", time.perf_counter() - start)):
                curve[key].append(value)
            log(f"{method} round {r:3d}: NLL-oracle {nll_oracle:.3f}  NLL-test {nll_test:.3f}  "
                f"reward {'-' if reward is None else f'{reward:.3f}'}  "
                f"D accuracy train {'-' if accuracy is None else f'{accuracy:.2f}'} "
                f"held-out {'-' if held is None else f'{held:.2f}'}  ({time.perf_counter() - start:.0f} s)")
    curve["seconds_total"] = time.perf_counter() - start  # rounds and evaluations
    curve["eval_seconds"] = eval_seconds
    return policy, curve


def temperature_sweep(policies, oracle, test_ids, config, seed, log=_say):
    """NLL-oracle and NLL-test of every generator at every temperature."""
    curves = {}
    test = test_ids[: config["num_temperature_eval"]]
    for name, policy in policies.items():
        points = {"temperature": [], "nll_oracle": [], "nll_test": []}
        for temperature in config["temperatures"]:
            nll_oracle, nll_test = evaluate(policy, oracle, test, config["num_temperature_eval"], seed,
                                            temperature)
            points["temperature"].append(temperature)
            points["nll_oracle"].append(nll_oracle)
            points["nll_test"].append(nll_test)
        curves[name] = points
        log(f"temperatures {name}: " + "  ".join(
            f"T={t:.1f}: {o:.3f}/{n:.3f}" for t, o, n in zip(*points.values())) + "  (NLL-oracle/NLL-test)")
    return curves


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    mle = results["mle"]
    left.plot(mle["epoch"], mle["nll_oracle"], "o-", ms=3, label="MLE, NLL-oracle")
    left.plot(mle["epoch"], mle["nll_test"], "s--", ms=3, label="MLE, NLL-test")
    offset = mle["epoch"][-1]
    # One colour per generator in both panels (C0, C1: MLE's two curves on the left).
    colors = {"MLE": "C0", **{name: f"C{i + 2}" for i, name in enumerate(results["methods"])}}
    for name, curve in results["methods"].items():
        x = [offset + r for r in curve["round"]]
        left.plot(x, curve["nll_oracle"], "o-", ms=3, color=colors[name],
                  label=f"{name}, NLL-oracle (x: {offset} + round)")
        left.plot(x, curve["nll_test"], "s--", ms=3, color=colors[name])
    left.axhline(PUBLISHED["mle"], color="gray", lw=0.8, ls=":", label="published MLE 9.038")
    left.axhline(PUBLISHED["seqgan"], color="black", lw=0.8, ls=":", label="published SeqGAN 8.736")
    left.set_xlabel("MLE epoch, then self-feedback round")
    left.set_ylabel("NLL per token (nats)")
    left.set_title("Training curves")
    left.legend(fontsize=7)
    for name, points in results["temperature_curves"].items():
        right.plot(points["nll_test"], points["nll_oracle"], "o-", label=name, color=colors.get(name))
        for t, x, y in zip(points["temperature"], points["nll_test"], points["nll_oracle"]):
            right.annotate(f"{t:.1f}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    right.set_xlabel("NLL-test (coverage; lower is better)")
    right.set_ylabel("NLL-oracle (quality; lower is better)")
    right.set_title("Temperature sweep (labels: temperature)")
    right.legend(fontsize=8)
    label = "QUICK run (smaller sizes), " if results["quick"] else ""
    fig.suptitle(f"SeqGAN synthetic oracle, {label}seed {results['seed']}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results):
    """The printed table: our NLL-oracle next to the published one."""
    rows = [("oracle's own samples", results["oracle_samples_nll_oracle"], PUBLISHED["oracle_samples"],
             "README (numpy, 10,000 samples)", None)]
    mle = results["mle"]
    rows.append(("untrained generator (epoch 0)", mle["nll_oracle"][0], PUBLISHED["random"],
                 "SeqGAN Table 1, random", mle["nll_test"][0]))
    rows.append((f"MLE ({mle['epoch'][-1]} epochs)", results["mle_nll_oracle"], PUBLISHED["mle"],
                 "SeqGAN Table 1, MLE", results["mle_nll_test"]))
    for name, curve in results["methods"].items():
        rows.append((f"{name} ({curve['round'][-1]} rounds)", curve["nll_oracle"][-1], PUBLISHED["seqgan"],
                     "SeqGAN Table 1, SeqGAN", curve["nll_test"][-1]))
    lines = []
    quick = "  [QUICK RUN: smaller sizes, not the published protocol]" if results["quick"] else ""
    lines.append(f"SeqGAN synthetic oracle, seed {results['seed']}{quick}")
    header = (f"{'method':<56}{'NLL-oracle':>11}{'published':>11}{'diff':>8}{'ratio':>7}"
              f"{'NLL-test':>10}  published as")
    lines += [header, "-" * (len(header) + 20)]
    for name, ours, theirs, source, nll_test in rows:
        test = "-" if nll_test is None else f"{nll_test:.3f}"
        lines.append(f"{name:<56}{ours:>11.3f}{theirs:>11.3f}{ours - theirs:>+8.3f}{ours / theirs:>7.3f}"
                     f"{test:>10}  {source}")
    lines.append(f"uniformly random sequences: NLL-oracle {results['uniform_nll_oracle']:.3f} (README: about 11.4)")
    lines.append("reinforce_oracle is rewarded by the oracle itself: an upper bound, not a comparable method.")
    return "\n".join(lines)


def run(config, seed, quick, xla=True, log=_say, methods=METHODS, mle_cache=None):
    """The whole benchmark; returns the results dict (what the JSON holds)."""
    unknown = [m for m in methods if m not in METHODS + ON_REQUEST]
    if unknown or not methods:
        raise ValueError(f"Unknown methods {unknown} (or none given); choose from {METHODS + ON_REQUEST}.")
    if "filtered_discriminator" in methods:
        check_filter_settings(config)  # before the MLE stage (20+ minutes in the full protocol), not after
    wall = time.perf_counter()
    oracle = Oracle()
    train_ids = oracle.sample(config["num_train"], seed=seed, stream=TRAIN_STREAM)
    test_ids = oracle.sample(config["num_test"], seed=seed, stream=TEST_STREAM)
    results = {
        "benchmark": "SeqGAN synthetic oracle (Yu et al. 2017), NLL per token in nats",
        "quick": bool(quick),
        "seed": seed,
        "config": dict(config),
        "published": dict(PUBLISHED),
        "oracle_samples_nll_oracle": oracle.nll(test_ids),
        "uniform_nll_oracle": oracle.nll(np.random.default_rng(seed).integers(0, VOCAB, test_ids.shape)),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                    "keras": keras.__version__},
    }
    log(f"oracle's own samples: NLL-oracle {results['oracle_samples_nll_oracle']:.3f} (published 5.752); "
        f"uniform: {results['uniform_nll_oracle']:.3f}")
    if mle_cache:
        mle_policy, mle = cached_mle(mle_cache, oracle, train_ids, test_ids, config, seed, quick, xla=xla, log=log)
    else:
        mle_policy, mle = train_mle(oracle, train_ids, test_ids, config, seed, xla=xla, log=log)
    results["mle"] = mle
    results["mle_nll_oracle"] = mle["nll_oracle"][-1]
    results["mle_nll_test"] = mle["nll_test"][-1]
    results["mle_seconds"] = mle["train_seconds"]
    start = time.perf_counter()
    weights, d_history = pretrain_discriminator(mle_policy, train_ids, config, seed)
    results["discriminator_pretraining"] = {**d_history, "seconds": time.perf_counter() - start}
    log(f"discriminator pre-training: accuracy {d_history['accuracy'][-1]:.3f} "
        f"({time.perf_counter() - start:.0f} s)")
    policies = {"MLE": mle_policy}
    results["methods"] = {}
    mle_point = (results["mle_nll_oracle"], results["mle_nll_test"])
    for method in methods:
        policy, curve = self_feedback(method, mle_policy, mle_point, oracle, train_ids, test_ids, config,
                                      seed, weights, log=log)
        curve["nll_oracle_final"] = curve["nll_oracle"][-1]
        curve["nll_test_final"] = curve["nll_test"][-1]
        curve["seconds_at_eval"] = curve.pop("seconds")
        curve["seconds"] = curve.pop("seconds_total")
        results["methods"][method] = curve
        policies[method] = policy
    results["temperature_curves"] = temperature_sweep(policies, oracle, test_ids, config, seed, log=log)
    results["wall_seconds"] = time.perf_counter() - wall
    return results


def parse_setting(item, config):
    """`"key=value"` -> (key, value typed as `config[key]`); ValueError naming the problem."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError("expected KEY=VALUE")
    if key not in config:
        raise ValueError(f"unknown setting {key!r}; settings: {sorted(config)}")
    current = config[key]
    if isinstance(current, (list, tuple)):
        raise ValueError(f"{key!r} is a list; it cannot be set here")
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{key!r} takes true or false, got {text!r}")
        return key, text.lower() in ("true", "1")
    try:
        if isinstance(current, int):
            return key, int(text)
        if isinstance(current, float):
            return key, float(text)
    except ValueError:
        raise ValueError(f"{key!r} takes a {type(current).__name__}, got {text!r}") from None
    return key, text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="everything at smaller sizes (about 5,000 samples, 6 MLE epochs): under 5 minutes")
    parser.add_argument("--mle-epochs", type=int, default=None, help="override the MLE epochs")
    parser.add_argument("--rounds", type=int, default=None, help="override the self-feedback rounds")
    parser.add_argument("--eval-every", type=int, default=None, help="MLE epochs between evaluations")
    parser.add_argument("--rl-lr", type=float, default=None, help="Adam rate of the self-feedback updates")
    parser.add_argument("--generator-steps", type=int, default=None,
                        help="generator updates per self-feedback round (1, as SeqGAN)")
    parser.add_argument("--baseline", default=None, choices=("rloo", "none", "moving_average"),
                        help="REINFORCE baseline (rloo; SeqGAN used none)")
    parser.add_argument("--init", default=None, choices=("seqgan", "keras"),
                        help="generator initialisation: the authors' N(0, 0.1^2) (default) or Keras' defaults")
    parser.add_argument("--no-xla", action="store_true", help="MLE steps without XLA")
    parser.add_argument("--output", default=None,
                        help="JSON path; defaults to benchmarks/results/seqgan_oracle.json "
                             "(seqgan_oracle_quick.json with --quick)")
    parser.add_argument("--plot", default=None, help="PNG path; defaults to the output with .png")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a protocol setting (repeatable), e.g. --set disc_l2=1e-4; "
                             "the keys are those of FULL")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated self-feedback methods, of {list(METHODS + ON_REQUEST)}")
    parser.add_argument("--mle-cache", default=None, metavar="DIR",
                        help="reuse the MLE generator saved here by an earlier run with the same settings "
                             "(or train it and save it here)")
    args = parser.parse_args(argv)
    methods = tuple(filter(None, args.methods.split(",")))
    unknown = [m for m in methods if m not in METHODS + ON_REQUEST]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown} (or none given); choose from {list(METHODS + ON_REQUEST)}")
    config = dict(QUICK if args.quick else FULL)
    for key, value in (("mle_epochs", args.mle_epochs), ("rounds", args.rounds), ("eval_every", args.eval_every),
                       ("rl_lr", args.rl_lr), ("baseline", args.baseline), ("init", args.init),
                       ("generator_steps", args.generator_steps)):
        if value is not None:
            config[key] = value
    for item in args.set:
        try:
            key, value = parse_setting(item, config)
        except ValueError as error:
            parser.error(f"--set {item!r}: {error}")
        config[key] = value
    if args.output is None:
        name = "seqgan_oracle_quick.json" if args.quick else "seqgan_oracle.json"
        args.output = os.path.join(HERE, "results", name)
    results = run(config, args.seed, args.quick, xla=not args.no_xla, methods=methods, mle_cache=args.mle_cache)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)
    plot_path = args.plot or os.path.splitext(args.output)[0] + ".png"
    plot(results, plot_path)
    print()
    print(table(results))
    print(f"\nwall time {results['wall_seconds']:.0f} s; results: {args.output}; plot: {plot_path}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
