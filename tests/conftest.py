"""Helpers shared by the test files (`from conftest import ...`).

The logical CPU devices and the per-test seed are set up in the root
`conftest.py`, which pytest loads first (before the doctest collector
imports `keras_selffb`).
"""

import tensorflow as tf


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
