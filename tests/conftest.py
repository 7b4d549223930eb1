"""Test configuration shared by the whole suite.

Two logical CPU devices are configured here, at import time, because
TensorFlow only accepts a device configuration before it initialises; the
MirroredStrategy tests need them and every other test simply runs on the
first one.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
    )
except RuntimeError:  # already initialised by a plugin: strategy tests skip
    pass

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global seed."""
    keras.utils.set_random_seed(1234)
    yield


def cpu_devices():
    """The logical CPU devices available to strategy tests."""
    return [d.name for d in tf.config.list_logical_devices("CPU")]


_MIRRORED = []


def mirrored_strategy():
    """The process's one MirroredStrategy over two logical CPU devices.

    Several MirroredStrategy objects in one process can collide on
    collective instance keys and abort each other's all-reduces, so every
    test shares this one.
    """
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(cpu_devices()[:2]))
    return _MIRRORED[0]


# Tiny multilingual (prompt, response) pairs for the end-to-end CLI tests:
# English, Chinese and accented text.
CLI_PAIRS = [
    ("hello", "hi there"),
    ("how are you", "fine, thanks"),
    ("你好", "你好！"),
    ("what is your name", "i am a bot"),
    ("café?", "oui, café."),
]
