"""`PythonReward`: any host Python function of strings as a reward.

The three id tensors are detokenized in the graph and handed to `fn` as
lists of `str` through `tf.numpy_function`; the floats it returns come back
as a float32 tensor `[B]`. This is the way to use a reward that only exists
in Python (a classifier from another library, sacrebleu itself, an API
client), at a price: every call is a round-trip to the host Python
interpreter, holding the GIL. It works in `tf.function` on CPU and GPU,
but NOT under XLA (`jit_compile=True`), NOT on TPU, and not in a SavedModel
served without this Python code. Prefer the in-graph rewards where they fit.

What `fn` returns is checked in Python, at every call: one real number per
candidate. `None`, strings and the wrong count raise a `ValueError` that
names the reward (inside a graph TensorFlow re-raises it as an
`InvalidArgumentError` carrying the same message); a `None` is never turned
into NaN. NaN and inf themselves pass through, and the trainer's numerics
check names the component.
"""

import numbers

import numpy as np
import tensorflow as tf

from keras_selffb.rewards.base import Reward, check_tokenizer


def _default_name(fn):
    """`fn.__name__` when it is a usable log name, else `"python"`."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name.isidentifier() else "python"


class PythonReward(Reward):
    """Wraps `fn(prompts, candidates, references) -> floats` over strings.

    Args:
        fn: callable. Takes three lists of `str` of length B (prompts,
            candidates and references as text, reserved tokens removed) and
            returns B real numbers (a list, tuple or numeric numpy array).
        tokenizer: a `keras_selffb.text` tokenizer, used to detokenize the
            ids in the graph.
        name: str. The logged name. Defaults to `fn.__name__` (`"python"`
            for a lambda or a callable without one).

    Example:

    >>> from keras_selffb.text import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["abc"])
    >>> def length(prompts, candidates, references):
    ...     return [len(c) for c in candidates]
    >>> reward = PythonReward(length, tokenizer)
    >>> reward.name, reward([[1, 5, 4]], [[5, 6, 7, 2]], [[5, 2, 0, 0]]).numpy().tolist()
    ('length', [3.0])
    """

    default_name = "python"

    def __init__(self, fn, tokenizer, name=None):
        if not callable(fn):
            raise TypeError(f"PythonReward needs a callable `fn`; got {type(fn).__name__}.")
        if tokenizer is None:
            raise ValueError("PythonReward needs the tokenizer to turn ids into text.")
        super().__init__(name=name or _default_name(fn))
        self.fn = fn
        self.tokenizer = check_tokenizer(tokenizer, "PythonReward")

    def _host_call(self, prompts, candidates, references):
        """Runs on the host: bytes arrays in, float32 `[B]` array out."""
        texts = [
            [t.decode("utf-8", errors="replace") for t in column.tolist()]
            for column in (prompts, candidates, references)
        ]
        values = self.fn(*texts)
        return self._check_values(values, len(texts[1]))

    def _check_values(self, values, batch_size):
        where = f"PythonReward {self.name!r} (fn={getattr(self.fn, '__name__', self.fn)!r})"
        if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
            values = values.reshape(-1).tolist() if values.ndim <= 1 else None
            if values is None:
                raise ValueError(
                    f"{where} must return a flat sequence of floats, got a "
                    "2-D or higher array."
                )
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise ValueError(
                f"{where} must return a sequence of {batch_size} floats, one per "
                f"candidate; got {type(values).__name__}."
            )
        values = list(values)
        if len(values) != batch_size:
            raise ValueError(
                f"{where} returned {len(values)} values for a batch of {batch_size} "
                "candidates; it must return one float per candidate."
            )
        for i, value in enumerate(values):
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            if value is None:
                raise ValueError(
                    f"{where} returned None for candidate {i}; return a float "
                    "(use float('nan') deliberately if a value is undefined)."
                )
            real = isinstance(value, (numbers.Real, np.number))
            if not real or isinstance(value, np.complexfloating):
                raise ValueError(
                    f"{where} returned a non-numeric value for candidate {i}: "
                    f"{value!r} ({type(value).__name__})."
                )
            values[i] = float(value)
        return np.asarray(values, dtype=np.float32)

    def call(self, prompts, candidates, references):
        ids = [tf.convert_to_tensor(x) for x in (prompts, candidates, references)]
        texts = [self.tokenizer.detokenize(x) for x in ids]
        # stateful: fn may be random or keep state; never constant-folded.
        values = tf.numpy_function(self._host_call, texts, tf.float32, stateful=True)
        values.set_shape(ids[1].shape[:1])
        return values
