"""Root pytest configuration: loaded before anything else, for tests and doctests.

`setup.cfg` makes pytest collect the docstring examples of every module in
`keras_selffb/` (`--doctest-modules`) as well as `tests/`, so collection may
import the package before `tests/conftest.py` runs. This file, at the
rootdir, is the first module pytest imports, which does two things:

* Two logical CPU devices are configured here, at import time, because
  TensorFlow only accepts a device configuration before it initialises; the
  MirroredStrategy tests need them and every other test (and doctest) simply
  runs on the first one.
* Importing it puts the repository root at the front of `sys.path` (pytest's
  default `prepend` import mode), so `import keras_selffb` in the tests and
  the doctest collector both load `./keras_selffb` even when a non-editable
  copy is installed in site-packages (`.ci/run`), instead of mixing the two
  ("import file mismatch").
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
    """Every test and every docstring example starts from the same global seed."""
    keras.utils.set_random_seed(1234)
    yield
