"""Distribution strategies, distributed datasets and the chief worker.

One place turns a name (`"default"`, `"mirrored"`, `"multi_worker"`) into a
`tf.distribute.Strategy`; library code receives the strategy, it never looks
it up. The trainers already scale their losses by GLOBAL counts (see
`keras_selffb.training.losses.global_sum`), so the same global batch gives
the same step on 1 device, N GPUs or N machines.

Order matters for `"multi_worker"`: `MultiWorkerMirroredStrategy` starts a
gRPC server and configures collective ops, which TensorFlow only accepts
before its runtime is initialised. Build the strategy first, before any
TensorFlow op runs (tokenizer training, packing, `list_logical_devices`).
"""

import json
import os

import numpy as np
import tensorflow as tf

from keras_selffb.text.packing import make_dataset

STRATEGIES = ("default", "mirrored", "multi_worker")
# Jobs that take part in synchronous all-reduce training.
_TRAINING_JOBS = ("chief", "worker")

_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)


def read_tf_config(environ=None):
    """Parses and checks the `TF_CONFIG` environment variable.

    Args:
        environ: mapping or None. Where to read `TF_CONFIG`. Defaults to
            `os.environ`.

    Returns:
        The parsed dict, or None when `TF_CONFIG` is unset or empty.

    Raises:
        ValueError: `TF_CONFIG` is not JSON, has no `worker`/`chief` job,
            or its `task` does not name one of the cluster's tasks.

    Example:

    >>> read_tf_config({}) is None
    True
    >>> config = read_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]},'
    ...                           ' "task": {"type": "worker", "index": 1}}'})
    >>> config["task"]
    {'type': 'worker', 'index': 1}
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {raw!r}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not any(cluster.get(job) for job in _TRAINING_JOBS):
        raise ValueError(
            f"TF_CONFIG needs a 'cluster' with a 'worker' (or 'chief') list of "
            f"host:port addresses; got {raw!r}. Example: {_TF_CONFIG_EXAMPLE}"
        )
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            f"TF_CONFIG needs a 'task' with 'type' and 'index' (which entry of "
            f"the cluster this process is); got {raw!r}. Example: {_TF_CONFIG_EXAMPLE}"
        )
    members = cluster.get(task["type"])
    index = task["index"]
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise ValueError(
            f"TF_CONFIG task {task} is not in the cluster {cluster}: 'index' must "
            f"be an int in [0, len(cluster[{task['type']!r}]))."
        )
    return config


def get_strategy(name_or_strategy=None, timeout_seconds=None):
    """Returns a `tf.distribute.Strategy` from a name or a strategy.

    Args:
        name_or_strategy: str, `tf.distribute.Strategy` or None.
            `"default"` (or None): TensorFlow's default strategy, one
            device. `"mirrored"`: `MirroredStrategy` over all GPUs, or over
            all logical CPU devices when there is no GPU. `"multi_worker"`:
            `MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`
            (every GPU, or the CPU, of every worker). A strategy instance
            is returned as is. Defaults to `None`.
        timeout_seconds: float or None. `"multi_worker"` only: a collective
            (gradient all-reduce, metric read) that has not completed after
            this many seconds fails with `DeadlineExceededError` instead of
            waiting forever for a worker that died. It counts from the
            launch of each collective, so leave room for the slowest
            worker's tracing on the first step. Defaults to `None` (no
            limit; the coordination service's heartbeat still reports a
            dead peer).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: an unknown name, or `"multi_worker"` without a valid
            `TF_CONFIG`.
        RuntimeError: `"multi_worker"` after TensorFlow has initialised.

    Example:

    >>> strategy = get_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
    >>> get_strategy(strategy) is strategy
    True
    """
    if isinstance(name_or_strategy, tf.distribute.Strategy):
        return name_or_strategy
    name = "default" if name_or_strategy is None else name_or_strategy
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy {name_or_strategy!r}; choose one of {STRATEGIES} "
            "or pass a tf.distribute.Strategy."
        )
    if timeout_seconds is not None and name != "multi_worker":
        raise ValueError("timeout_seconds applies to the 'multi_worker' strategy only.")
    if name == "multi_worker":
        return _multi_worker_strategy(timeout_seconds)
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    if tf.distribute.has_strategy():
        raise RuntimeError(
            "get_strategy('default') was called inside another strategy's scope(); "
            "call it outside any `strategy.scope()`."
        )
    return tf.distribute.get_strategy()  # outside any scope: the default strategy


def _multi_worker_strategy(timeout_seconds):
    if read_tf_config() is None:
        raise ValueError(
            "strategy 'multi_worker' reads the cluster from the TF_CONFIG environment "
            "variable, which is not set. Set it on every machine, with the same "
            f"'cluster' and this machine's 'task', e.g. {_TF_CONFIG_EXAMPLE}"
        )
    if timeout_seconds is not None and timeout_seconds <= 0:
        raise ValueError(f"timeout_seconds must be > 0; got {timeout_seconds}.")
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as error:
        raise RuntimeError(
            "MultiWorkerMirroredStrategy must be created before TensorFlow initialises "
            "(before any op runs or devices are listed): call "
            f"get_strategy('multi_worker') first in the program. TensorFlow said: {error}"
        ) from error


def is_chief(strategy=None, environ=None):
    """True on the worker that should write files (checkpoints, exports, logs).

    The chief is the `chief` task if the cluster has one, else worker 0.
    Without a multi-worker cluster every process is the chief.

    Args:
        strategy: a `tf.distribute.Strategy` or None. With a
            `MultiWorkerMirroredStrategy`, its cluster decides; any other
            strategy runs in one process, which is the chief. Defaults to
            `None`: read `TF_CONFIG`.
        environ: mapping or None. Where to read `TF_CONFIG` when `strategy`
            is None. Defaults to `os.environ`.

    Example:

    >>> is_chief(environ={})
    True
    >>> is_chief(environ={"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]},'
    ...                                ' "task": {"type": "worker", "index": 1}}'})
    False
    """
    if strategy is not None:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return True
        resolver = strategy.cluster_resolver
        cluster = resolver.cluster_spec().as_dict()
        task_type, task_index = resolver.task_type, resolver.task_id
    else:
        config = read_tf_config(environ)
        if config is None:
            return True
        cluster, task_type, task_index = config["cluster"], config["task"]["type"], config["task"]["index"]
    if not cluster or task_type is None:  # a MultiWorkerMirroredStrategy on one machine
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_index == 0 and "chief" not in cluster


def data_sharding_options():
    """`tf.data.Options` that shard a dataset across workers by element.

    Packed rows live in memory (`from_tensor_slices`), so there are no files
    to split between workers: `AutoShardPolicy.DATA` makes every worker read
    the whole pipeline and keep its own share of each global batch. The
    default `AUTO` policy comes to the same after a warning.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def global_batch_size(per_replica_batch_size, strategy):
    """The global batch for `per_replica_batch_size` rows on each replica.

    Args:
        per_replica_batch_size: int. Rows each replica (GPU, CPU device) gets.
        strategy: a `tf.distribute.Strategy`.

    Example:

    >>> global_batch_size(16, get_strategy("default"))
    16
    """
    if per_replica_batch_size < 1:
        raise ValueError(f"per_replica_batch_size must be >= 1; got {per_replica_batch_size}.")
    return per_replica_batch_size * strategy.num_replicas_in_sync


def make_distributed_dataset(packed, batch_size, strategy, shuffle=False, seed=0, drop_remainder=False):
    """Packed rows as a dataset of global batches, sharded by element.

    `batch_size` is the GLOBAL batch (what one optimizer step sees, as in
    `fit(batch_size=...)`); each step splits it over
    `strategy.num_replicas_in_sync` replicas. Every worker must build the
    same dataset: the same rows and the same `seed`.

    Args:
        packed: int array `(N, P + R)` from `keras_selffb.text.pack_pairs`.
        batch_size: int. Global batch size, at least the number of replicas.
        strategy: a `tf.distribute.Strategy`.
        shuffle: bool. Shuffle each epoch with `seed`. Defaults to `False`.
        seed: int. Shuffle seed, the same on every worker. Defaults to `0`.
        drop_remainder: bool. Drop the last partial batch. Defaults to
            `False`.

    Example:

    >>> packed = np.array([[1, 5, 4, 6, 2]] * 6, "int32")
    >>> dataset = make_distributed_dataset(packed, 4, get_strategy("default"))
    >>> [int(batch.shape[0]) for batch in dataset]
    [4, 2]
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size < replicas:
        raise ValueError(
            f"batch_size={batch_size} is the global batch; it must be at least the "
            f"{replicas} replicas in sync so each replica gets a row."
        )
    dataset = make_dataset(np.asarray(packed), batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder)
    return dataset.with_options(data_sharding_options())
