"""Two localhost workers under MultiWorkerMirroredStrategy, and the strategy helpers.

Each worker is a subprocess (`multiworker_worker.py`) with its own
`TF_CONFIG`: a real two-task cluster talking gRPC on 127.0.0.1. One pair of
workers trains the three trainers in turn (one epoch, 8 rows, global batch
4 = 2 rows per worker, SGD). Checked:

- both workers start from the same seeded weights and end with bitwise the
  same weights, which moved;
- for MLE and REINFORCE (greedy candidates, so the candidates do not depend
  on the replica layout) the two-worker weights equal one device's to 1e-5:
  the losses' global counts are all-reduced across machines too;
- a worker killed mid-training makes the other fail, within a bounded time,
  with an error naming the dead task (the coordination service's heartbeat),
  instead of hanging in the all-reduce.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import multiworker_worker as worker
from keras_selffb import distribute
from keras_selffb.distribute import (
    data_sharding_options,
    get_strategy,
    global_batch_size,
    is_chief,
    make_distributed_dataset,
    read_tf_config,
)

from conftest import cpu_devices, mirrored_strategy

WORKER_SCRIPT = Path(__file__).with_name("multiworker_worker.py")
# Generous: two TensorFlow processes trace three trainers on 2 shared cores.
RUN_TIMEOUT_S = 480
# A killed worker must be noticed within this long (heartbeats: ~10 s).
FAILURE_DEADLINE_S = 120


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_workers(out, extra_args=None, common_args=()):
    """Starts both workers; stdout/stderr go to files under `out`."""
    extra_args = extra_args or {}
    cluster = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    procs = []
    for index in range(2):
        command = [sys.executable, str(WORKER_SCRIPT), "--workers", cluster, "--index", str(index),
                   "--out", str(out / f"w{index}"), *common_args, *extra_args.get(index, ())]
        with open(out / f"w{index}.out", "w") as stdout, open(out / f"w{index}.err", "w") as stderr:
            procs.append(subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env))
    return procs


def log_tail(out, index, lines=30):
    text = (out / f"w{index}.err").read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel reaps SIGKILLed children
            pass


def load_weights(path):
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
    """One pair of workers trains every trainer; returns `(out, reports, seconds)`."""
    out = tmp_path_factory.mktemp("multiworker")
    started = time.monotonic()
    procs = start_workers(out)
    try:
        deadline = started + RUN_TIMEOUT_S
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the workers ran over {RUN_TIMEOUT_S} s:\n{log_tail(out, 0)}\n{log_tail(out, 1)}")
    finally:
        stop(procs)
    seconds = time.monotonic() - started
    for index, proc in enumerate(procs):
        assert proc.returncode == 0, f"worker {index} failed:\n{log_tail(out, index)}"
    reports = [json.loads((out / f"w{i}" / "report.json").read_text()) for i in range(2)]
    print(f"\ntwo-worker run: {seconds:.1f} s; steps/s per trainer: "
          + ", ".join(f"{k} {v['steps_per_s']:.2f}" for k, v in reports[0]["trainers"].items()))
    return out, reports, seconds


@pytest.mark.slow
@pytest.mark.parametrize("kind", worker.TRAINERS)
def test_two_workers_end_with_identical_weights(two_worker_run, kind):
    out, reports, _ = two_worker_run
    initial = [load_weights(out / f"w{i}" / f"{kind}_initial.npz") for i in range(2)]
    final = [load_weights(out / f"w{i}" / f"{kind}_final.npz") for i in range(2)]
    for a, b in zip(*initial):
        np.testing.assert_array_equal(a, b)  # the same seeded start
    for a, b in zip(*final):
        np.testing.assert_array_equal(a, b)  # mirrored: bitwise the same
    assert max(np.abs(a - b).max() for a, b in zip(final[0], initial[0])) > 1e-3  # it trained
    # 8 rows in global batches of 4: two steps on each worker, not one each.
    assert [r["trainers"][kind]["steps"] for r in reports] == [2, 2]
    assert reports[0]["trainers"][kind]["history"] == reports[1]["trainers"][kind]["history"]


@pytest.mark.slow
def test_worker_zero_is_the_chief(two_worker_run):
    _, reports, _ = two_worker_run
    assert [r["chief"] for r in reports] == [True, False]
    assert [r["replicas"] for r in reports] == [2, 2]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mle", "reinforce"])
def test_two_workers_equal_one_device(two_worker_run, kind):
    out, reports, _ = two_worker_run
    initial = load_weights(out / "w0" / f"{kind}_initial.npz")
    expected = load_weights(out / "w0" / f"{kind}_final.npz")
    tokenizer, packed = worker.build_data()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        policy = worker.build_policy(tokenizer.vocabulary_size)
        policy.set_weights(initial)
        trainer = worker.build_trainer(kind, policy, tokenizer)
    dataset = make_distributed_dataset(packed, worker.GLOBAL_BATCH, strategy)
    history = trainer.fit(dataset, epochs=1, verbose=0).history
    for a, b in zip(expected, policy.weights):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-5)
    logged = reports[0]["trainers"][kind]["history"]
    for key, values in history.items():
        np.testing.assert_allclose(logged[key], values, rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_killed_worker_makes_the_other_fail_in_bounded_time(tmp_path):
    # Worker 1 stalls after its second step (worker 0 then waits in the third
    # step's all-reduce) and is SIGKILLed there, as by a crash or an OOM kill.
    procs = start_workers(
        tmp_path, {1: ["--stall-after-steps", "2"]}, common_args=["--trainers", "mle", "--repeat", "4"]
    )
    survivor, victim = procs
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "STALLED" not in (tmp_path / "w1.out").read_text():
            for index, proc in enumerate(procs):
                assert proc.poll() is None, f"worker {index} ended early:\n{log_tail(tmp_path, index)}"
            assert time.monotonic() < deadline, "worker 1 never reached its second step"
            time.sleep(0.5)
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        try:
            survivor.wait(timeout=FAILURE_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker 0 still waits {FAILURE_DEADLINE_S} s after its peer died")
        seconds = time.monotonic() - killed_at
    finally:
        stop(procs)
    print(f"\nsurvivor exited {seconds:.1f} s after its peer was killed")
    assert survivor.returncode != 0
    assert not (tmp_path / "w0" / "report.json").exists()
    error = (tmp_path / "w0.err").read_text(errors="replace")
    assert "UnavailableError" in error
    assert "task:1" in error, log_tail(tmp_path, 0)  # it names the dead worker


# -- the helpers, in this process ------------------------------------------------------

TWO_WORKERS = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})


def test_get_strategy_names_and_instances():
    default = get_strategy()
    assert default is get_strategy("default")
    assert default.num_replicas_in_sync == 1
    assert get_strategy(mirrored_strategy()) is mirrored_strategy()
    for bad in ["mirror", "tpu", 3]:
        with pytest.raises(ValueError, match="Unknown strategy"):
            get_strategy(bad)
    with pytest.raises(ValueError, match="multi_worker"):
        get_strategy("default", timeout_seconds=10)
    with mirrored_strategy().scope(), pytest.raises(RuntimeError, match="outside"):
        get_strategy("default")


def test_mirrored_uses_every_gpu_or_every_logical_cpu(monkeypatch):
    # A recording stand-in: a second real MirroredStrategy in this process
    # could collide with the shared one on collective keys.
    monkeypatch.setattr(distribute.tf.distribute, "MirroredStrategy", lambda devices=None: devices)
    devices = get_strategy("mirrored")
    if tf.config.list_physical_devices("GPU"):
        assert devices is None  # TensorFlow's default: all GPUs
    else:
        assert devices == cpu_devices() and len(devices) >= 2


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "TF_CONFIG environment variable, which is not set"),
        ("{not json", "not valid JSON"),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "'worker'"),
        ('{"cluster": {"worker": ["a:1"]}}', "'task' with 'type' and 'index'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "not in the cluster"),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        get_strategy("multi_worker")


def test_multi_worker_timeout_must_be_positive(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", TWO_WORKERS)
    with pytest.raises(ValueError, match="timeout_seconds must be > 0"):
        get_strategy("multi_worker", timeout_seconds=0)


def test_multi_worker_after_tensorflow_started_says_to_build_it_first(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    ))
    tf.constant(1.0) + 1.0  # TensorFlow's runtime is up in this process
    with pytest.raises(RuntimeError, match="first in the program"):
        get_strategy("multi_worker")


@pytest.mark.parametrize(
    "cluster, task, chief",
    [
        ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 0}, True),  # worker 0 leads
        ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 1}, False),
        ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True),
        ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),  # a chief exists
        ({"worker": ["a:1"], "evaluator": ["e:1"]}, {"type": "evaluator", "index": 0}, False),
    ],
)
def test_is_chief_from_tf_config(cluster, task, chief):
    environ = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
    assert is_chief(environ=environ) is chief


def test_is_chief_without_a_cluster():
    assert is_chief(environ={}) is True
    assert is_chief(mirrored_strategy()) is True  # one process: it writes
    assert read_tf_config({"TF_CONFIG": TWO_WORKERS})["task"]["index"] == 1


def test_distributed_dataset_is_sharded_by_data_in_global_batches():
    packed = np.arange(7 * 5, dtype="int32").reshape(7, 5)
    dataset = make_distributed_dataset(packed, 4, mirrored_strategy())
    policy = dataset.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA
    assert data_sharding_options().experimental_distribute.auto_shard_policy == policy
    np.testing.assert_array_equal(np.concatenate(list(dataset.as_numpy_iterator())), packed)
    assert global_batch_size(3, mirrored_strategy()) == 6
    with pytest.raises(ValueError, match="at least the 2 replicas"):
        make_distributed_dataset(packed, 1, mirrored_strategy())
    with pytest.raises(ValueError, match=">= 1"):
        global_batch_size(0, mirrored_strategy())


@pytest.mark.slow
def test_a_replica_left_empty_by_the_last_batch_changes_nothing():
    # 5 rows in global batches of 4: the last batch has 1 row, so one of the
    # two replicas gets none. The step must still equal one device's and
    # every logged value stay finite (a mean over no rows is NaN).
    tokenizer, packed = worker.build_data()
    results = []
    for strategy in [tf.distribute.OneDeviceStrategy("/cpu:0"), mirrored_strategy()]:
        keras.utils.set_random_seed(worker.SEED)
        with strategy.scope():
            policy = worker.build_policy(tokenizer.vocabulary_size)
            trainer = worker.build_trainer("reinforce", policy, tokenizer)
        dataset = make_distributed_dataset(packed[:5], 4, strategy)
        history = trainer.fit(dataset, epochs=1, verbose=0).history
        results.append(([w.numpy() for w in policy.weights], history))
    (single, logs1), (mirrored, logs2) = results
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in logs1:
        assert np.isfinite(logs2[key]).all(), key
        np.testing.assert_allclose(logs1[key], logs2[key], rtol=1e-4, atol=1e-6, err_msg=key)
