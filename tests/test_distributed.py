"""One step on 2 logical CPU replicas equals one step on one device (1e-5).

SGD, not Adam: Adam's first step is about lr * sign(gradient), which would
hide a loss that is wrongly scaled by the number of replicas.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.models import PolicyNetwork
from keras_selffb.rewards.base import Reward
from keras_selffb.training import MLETrainer, ReinforceTrainer

from conftest import cpu_devices, mirrored_strategy

pytestmark = pytest.mark.skipif(len(cpu_devices()) < 2, reason="needs 2 logical CPU devices")

VOCAB = 12
# Packed rows: prompt P = 4 (left-padded), response R = 4; uneven lengths so
# replicas hold different token counts (a per-replica mean would be wrong).
BATCH = np.array(
    [
        [0, 1, 5, 4, 6, 7, 8, 2],
        [1, 5, 6, 4, 9, 2, 0, 0],
        [0, 0, 1, 4, 10, 11, 5, 2],
        [0, 1, 7, 4, 2, 0, 0, 0],
    ],
    dtype="int32",
)


class CountReward(Reward):
    default_name = "count"

    def call(self, prompts, candidates, references):
        hits = tf.equal(candidates, 7) | tf.equal(candidates, 9)
        return tf.reduce_sum(tf.cast(hits, tf.float32), axis=1) + tf.cast(candidates[:, 0], tf.float32) / 10


def run_one_step(make_trainer, weights, strategy):
    with strategy.scope():
        policy = PolicyNetwork(VOCAB, 6, 6)
        policy.set_weights(weights)
        trainer = make_trainer(policy)
        trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    history = trainer.fit(BATCH, batch_size=4, epochs=1, verbose=0, shuffle=False)
    return [w.numpy() for w in policy.weights], history.history


def assert_same_step(make_trainer):
    weights = PolicyNetwork(VOCAB, 6, 6).get_weights()
    single, logs1 = run_one_step(make_trainer, weights, tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored, logs2 = run_one_step(make_trainer, weights, mirrored_strategy())
    moved = max(np.abs(a - b).max() for a, b in zip(single, weights))
    assert moved > 1e-3  # the step really changed the weights
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in logs1:
        np.testing.assert_allclose(logs1[key], logs2[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_mle_step_two_replicas_equals_one():
    assert_same_step(lambda policy: MLETrainer(policy, prompt_length=4))


def test_reinforce_step_two_replicas_equals_one():
    # Greedy sampling makes the candidates identical on both setups; every
    # term that needs a global count is on: whitening, the moving baseline,
    # KL to a frozen copy, the entropy bonus and the MLE mix.
    def make(policy):
        return ReinforceTrainer(
            policy, CountReward(), prompt_length=4, max_new_tokens=4, num_samples=2,
            sampler="greedy", baseline="moving_average", whiten=True, kl_coef=0.1,
            entropy_coef=0.05, gamma=0.7,
        )

    assert_same_step(make)


def test_reinforce_step_with_the_greedy_candidate_two_replicas_equals_one():
    # include_greedy builds each group from per-replica rows (K - 1 samples
    # + the greedy decode); greedy sampling keeps both setups identical.
    def make(policy):
        return ReinforceTrainer(
            policy, CountReward(), prompt_length=4, max_new_tokens=4, num_samples=3,
            sampler="greedy", baseline="rloo", include_greedy=True, kl_coef=0.1, gamma=0.7,
        )

    assert_same_step(make)
