"""Batched generation from a `PolicyNetwork` with keras-hub samplers.

The id-level primitives; `keras_selffb.generator.ResponseGenerator` builds
strings in / strings out, scoring and evaluation on them.

keras-hub samplers own the decoding loop (`ops.while_loop`) and call
`next(prompt, cache, index)`; here the cache is the LSTM `(h, c)` state,
shaped `(batch, layers, 2, hidden)` so beam search can repeat and reorder it
along the batch axis. Prompts are left-padded (see `keras_selffb.text.packing`),
so every row starts generating at the same column and beam search is exact.

Special ids other than EOS (PAD, BOS, SEP, UNK) are never generated.
"""

import math
import numbers

import keras_hub
import tensorflow as tf
from keras import ops

from keras_selffb.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, UNK_ID

SAMPLERS = {
    "greedy": keras_hub.samplers.GreedySampler,
    "top_k": keras_hub.samplers.TopKSampler,
    "top_p": keras_hub.samplers.TopPSampler,
    "random": keras_hub.samplers.RandomSampler,
    "beam": keras_hub.samplers.BeamSampler,
}
FORBIDDEN_IDS = (PAD_ID, BOS_ID, SEP_ID, UNK_ID)


# The constructor arguments each named sampler takes, and the CLI flag of each
# (for error messages).
SAMPLER_ARGUMENTS = {
    "greedy": ("temperature",),
    "top_k": ("k", "seed", "temperature"),
    "top_p": ("p", "k", "seed", "temperature"),
    "random": ("seed", "temperature"),
    "beam": ("num_beams", "return_all_beams", "temperature"),
}
_FLAGS = {"k": "--top-k", "p": "--top-p", "num_beams": "--num-beams", "temperature": "--temperature"}


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_sampler_arguments(name, arguments):
    """Raises a one-line `ValueError` for a bad argument of a named sampler.

    Checks `temperature` (a finite number >= 0; 0 is greedy decoding), `k`
    (an integer >= 1; at most the vocabulary, which `check_sampler_vocabulary`
    checks), `p` (0 < p <= 1) and `num_beams` (an integer >= 1), and that
    every argument is one the sampler takes.

    Args:
        name: str. One of `SAMPLERS`.
        arguments: dict of constructor arguments.
    """

    def fail(key, rule):
        flag = f" ({_FLAGS[key]})" if key in _FLAGS and (key != "k" or name == "top_k") else ""
        raise ValueError(f"{name} sampler: {key}{flag} must be {rule}; got {arguments[key]!r}.")

    unknown = sorted(set(arguments) - set(SAMPLER_ARGUMENTS[name]))
    if unknown:
        raise ValueError(
            f"{name} sampler: unknown argument(s) {unknown}; it takes {list(SAMPLER_ARGUMENTS[name])}."
        )
    temperature = arguments.get("temperature", 1.0)
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
        fail("temperature", "a finite number >= 0 (0 is greedy decoding)")
    k = arguments.get("k")
    if "k" in arguments and not (name == "top_p" and k is None) and (not _is_integer(k) or k < 1):
        fail("k", "an integer >= 1" + (" or None" if name == "top_p" else ""))
    p = arguments.get("p")
    if "p" in arguments and (not _is_real(p) or not 0 < p <= 1):
        fail("p", "a number with 0 < p <= 1")
    if "num_beams" in arguments and (not _is_integer(arguments["num_beams"]) or arguments["num_beams"] < 1):
        fail("num_beams", "an integer >= 1")


def check_sampler_vocabulary(sampler, vocab_size):
    """Raises a one-line `ValueError` if `sampler` keeps more top tokens than `vocab_size`."""
    k = getattr(sampler, "k", None)
    if k is not None and _is_integer(k) and k > vocab_size:
        flag = " (--top-k)" if isinstance(sampler, keras_hub.samplers.TopKSampler) else ""
        raise ValueError(
            f"{type(sampler).__name__}: k{flag} = {k} is more than the vocabulary "
            f"({vocab_size} tokens); use 1 to {vocab_size}."
        )


def _sampler_arguments(sampler):
    """The checked constructor arguments a keras-hub sampler instance holds."""
    for name, cls in SAMPLERS.items():
        if type(sampler) is cls:
            keys = [key for key in SAMPLER_ARGUMENTS[name] if key not in ("seed", "return_all_beams")]
            return name, {key: getattr(sampler, key) for key in keys if hasattr(sampler, key)}
    return None, {}


def get_sampler(identifier="greedy", **kwargs):
    """Returns a keras-hub sampler from a name, a config dict or an instance.

    The arguments are checked first (`check_sampler_arguments`): a bad one
    raises a one-line `ValueError`, not an error from inside the decoding
    graph. `temperature=0` means greedy decoding for every named sampler
    (the limit of each as the temperature goes to 0, and what the exported
    SavedModel does at temperature 0): a `GreedySampler` is returned.

    Args:
        identifier: str, dict or `keras_hub.samplers.Sampler`. One of
            `"greedy"`, `"top_k"`, `"top_p"`, `"random"`, `"beam"`, a
            `{"class_name": name, "config": {...}}` dict, or a sampler.
        **kwargs: constructor arguments for a named sampler, e.g. `k=5`,
            `p=0.9`, `num_beams=4`, `temperature=0.8`, `seed=1`.

    Example:

    >>> type(get_sampler("top_k", k=3, temperature=0.0)).__name__
    'GreedySampler'
    >>> get_sampler("top_k", k=0)
    Traceback (most recent call last):
    ...
    ValueError: top_k sampler: k (--top-k) must be an integer >= 1; got 0.
    """
    if isinstance(identifier, keras_hub.samplers.Sampler):
        name, arguments = _sampler_arguments(identifier)
        if name is not None:
            check_sampler_arguments(name, arguments)
            if arguments.get("temperature", 1.0) == 0:
                raise ValueError(
                    f"{type(identifier).__name__} has temperature 0, which divides by zero; "
                    "use the 'greedy' sampler (or get_sampler(name, temperature=0))."
                )
        return identifier
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        kwargs = {**identifier.get("config", {}), **kwargs}
        identifier = name
    if not isinstance(identifier, str) or identifier not in SAMPLERS:
        raise ValueError(f"Unknown sampler {identifier!r}; choose one of {sorted(SAMPLERS)}.")
    if identifier in ("greedy", "beam"):
        kwargs.pop("seed", None)
    check_sampler_arguments(identifier, kwargs)
    if kwargs.get("temperature", 1.0) == 0:
        return keras_hub.samplers.GreedySampler()
    return SAMPLERS[identifier](**kwargs)


def special_token_bias(vocab_size, dtype="float32"):
    """A `(vocab_size,)` additive bias of -1e9 on ids that are never generated."""
    mask = tf.reduce_sum(tf.one_hot(list(FORBIDDEN_IDS), vocab_size, dtype=dtype), axis=0)
    return mask * tf.constant(-1e9, dtype)


def truncate_after_eos(ids):
    """Replaces every id after the first EOS of each row with PAD."""
    is_eos = ops.cast(ops.equal(ids, EOS_ID), "int32")
    seen_before = ops.cumsum(is_eos, axis=1) - is_eos
    return ops.where(seen_before > 0, PAD_ID, ids)


def generate_ids(policy, prompt_ids, max_new_tokens, sampler, stop_at_eos=True):
    """Generates response ids for left-padded prompt ids; graph-friendly.

    Args:
        policy: a `PolicyNetwork`, or a policy with its own
            `generate_ids(prompt_ids, max_new_tokens, sampler, stop_at_eos)`
            (a `CausalLMPolicy`), which is then used.
        prompt_ids: int32 `(B, P)`, left-padded `[BOS] ... [SEP]` rows.
        max_new_tokens: int. Response columns `N` generated.
        sampler: a keras-hub sampler.
        stop_at_eos: bool. Stop the loop once every row has an EOS.
            Defaults to `True`.

    Returns:
        int32 `(B, N)`: the response, EOS included, PAD after it.
    """
    if hasattr(policy, "generate_ids"):
        return policy.generate_ids(prompt_ids, max_new_tokens, sampler, stop_at_eos=stop_at_eos)
    check_sampler_vocabulary(sampler, policy.vocab_size)
    prompt_ids = ops.cast(prompt_ids, "int32")
    prompt_length = prompt_ids.shape[1]
    batch_size = ops.shape(prompt_ids)[0]
    bias = special_token_bias(policy.vocab_size)
    # Prefill: the state after every prompt token but the last (SEP), which
    # the first `next` call feeds.
    _, cache = policy.call_with_cache(prompt_ids[:, :-1], policy.initial_cache(batch_size))
    buffer = ops.concatenate(
        [prompt_ids, ops.zeros((batch_size, max_new_tokens), "int32")], axis=1
    )

    def next_fn(prompt, cache, index):
        rows = ops.shape(prompt)[0]
        token = ops.slice(prompt, [0, index - 1], [rows, 1])
        logits, cache = policy.call_with_cache(token, cache)
        logits = ops.cast(logits[:, 0, :], "float32")
        # A diverged policy (NaN weights) would make the samplers draw an id
        # outside the vocabulary and crash deep in the next embedding lookup;
        # NaN logits become -1e9 so generation finishes and the NaN shows up
        # where it is checked: in the loss (TerminateOnNaN) and the metrics.
        logits = ops.where(ops.isnan(logits), -1e9, logits)
        return logits + bias, None, cache

    output = sampler(
        next_fn,
        buffer,
        cache=cache,
        index=prompt_length,
        stop_token_ids=[EOS_ID] if stop_at_eos else None,
    )
    return truncate_after_eos(output[:, prompt_length:])


def sample_candidates(policy, prompt_ids, num_samples, max_new_tokens, sampler):
    """K candidates per prompt, prompt-major, without gradient.

    Returns:
        `(prompts, candidates)`: the prompts repeated `[B * K, P]` and the
        sampled responses `[B * K, N]` (the rows of prompt `b` are
        `b * K` to `b * K + K - 1`).
    """
    prompts = ops.repeat(prompt_ids, num_samples, axis=0)
    candidates = generate_ids(policy, prompts, max_new_tokens, sampler)
    return prompts, ops.stop_gradient(candidates)


def reseed_sampler(sampler, seed, stream=0):
    """Resets a keras-hub sampler's random state to `(seed, stream)`.

    A sampler built with a seed draws from a `SeedGenerator`; resetting its
    state makes the next draws depend on `seed` alone, not on what was drawn
    before. Greedy and beam samplers hold no state: nothing happens.
    """
    for variable in sampler.variables:
        variable.assign(ops.cast([seed, stream], variable.dtype))
