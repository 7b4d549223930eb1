"""Batched generation from a `PolicyNetwork` with keras-hub samplers.

keras-hub samplers own the decoding loop (`ops.while_loop`) and call
`next(prompt, cache, index)`; here the cache is the LSTM `(h, c)` state,
shaped `(batch, layers, 2, hidden)` so beam search can repeat and reorder it
along the batch axis. Prompts are left-padded (see `keras_selffb.text.packing`),
so every row starts generating at the same column and beam search is exact.

Special ids other than EOS (PAD, BOS, SEP, UNK) are never generated.
"""

import warnings

import keras_hub
import tensorflow as tf
from keras import ops

from keras_selffb.text.packing import pack_prompts
from keras_selffb.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, UNK_ID, detokenize_texts

SAMPLERS = {
    "greedy": keras_hub.samplers.GreedySampler,
    "top_k": keras_hub.samplers.TopKSampler,
    "top_p": keras_hub.samplers.TopPSampler,
    "random": keras_hub.samplers.RandomSampler,
    "beam": keras_hub.samplers.BeamSampler,
}
FORBIDDEN_IDS = (PAD_ID, BOS_ID, SEP_ID, UNK_ID)


def get_sampler(identifier="greedy", **kwargs):
    """Returns a keras-hub sampler from a name, a config dict or an instance.

    Args:
        identifier: str, dict or `keras_hub.samplers.Sampler`. One of
            `"greedy"`, `"top_k"`, `"top_p"`, `"random"`, `"beam"`, a
            `{"class_name": name, "config": {...}}` dict, or a sampler.
        **kwargs: constructor arguments for a named sampler, e.g. `k=5`,
            `p=0.9`, `num_beams=4`, `temperature=0.8`, `seed=1`.
    """
    if isinstance(identifier, keras_hub.samplers.Sampler):
        return identifier
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        kwargs = {**identifier.get("config", {}), **kwargs}
        identifier = name
    if identifier not in SAMPLERS:
        raise ValueError(f"Unknown sampler {identifier!r}; choose one of {sorted(SAMPLERS)}.")
    if identifier in ("greedy", "beam"):
        kwargs.pop("seed", None)
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
        policy: a `PolicyNetwork`.
        prompt_ids: int32 `(B, P)`, left-padded `[BOS] ... [SEP]` rows.
        max_new_tokens: int. Response columns `N` generated.
        sampler: a keras-hub sampler.
        stop_at_eos: bool. Stop the loop once every row has an EOS.
            Defaults to `True`.

    Returns:
        int32 `(B, N)`: the response, EOS included, PAD after it.
    """
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
        return ops.cast(logits[:, 0, :], "float32") + bias, None, cache

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


class ResponseGenerator:
    """Strings in, strings out: tokenizes, packs, samples, detokenizes.

    The sampling loop is compiled once per batch shape. A `seed` given to a
    call resets the sampler's random state first, so the same seed gives the
    same replies.

    Args:
        policy: a `PolicyNetwork`.
        tokenizer: the tokenizer the policy was trained with.
        prompt_length: int. Prompt columns, BOS and SEP included.
        max_new_tokens: int. Longest reply in tokens, EOS included.
        sampler: str, dict or keras-hub sampler. Defaults to `"greedy"`.
        **sampler_kwargs: arguments for a named sampler (`k`, `p`,
            `num_beams`, `temperature`, `seed`).
    """

    def __init__(self, policy, tokenizer, prompt_length, max_new_tokens, sampler="greedy", **sampler_kwargs):
        if tokenizer.vocabulary_size != policy.vocab_size:
            raise ValueError(
                f"Vocabulary mismatch: the tokenizer has {tokenizer.vocabulary_size} "
                f"tokens but the policy was built for {policy.vocab_size}."
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}.")
        self.policy = policy
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.sampler = get_sampler(sampler, **sampler_kwargs)
        self._step = tf.function(self._generate, reduce_retracing=True)

    def _generate(self, prompt_ids):
        return generate_ids(self.policy, prompt_ids, self.max_new_tokens, self.sampler)

    def reseed(self, seed):
        """Resets the sampler's random state to `seed`."""
        reseed_sampler(self.sampler, seed)

    def generate_ids(self, prompts, seed=None):
        """Returns `(prompt_ids, response_ids, truncated)` for a list of str."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("generate() needs at least one prompt.")
        prompt_ids, truncated = pack_prompts(self.tokenizer, prompts, self.prompt_length)
        if seed is not None:
            self.reseed(seed)
        return prompt_ids, self._step(prompt_ids), truncated

    def __call__(self, prompts, seed=None):
        """Replies to each prompt; a list of str."""
        _, response_ids, truncated = self.generate_ids(prompts, seed=seed)
        if bool(tf.reduce_any(truncated)):
            warnings.warn(
                f"{int(tf.reduce_sum(tf.cast(truncated, tf.int32)))} prompt(s) longer "
                f"than {self.prompt_length - 2} tokens kept their last tokens.",
                stacklevel=2,
            )
        return detokenize_texts(self.tokenizer, response_ids)


def generate(policy, tokenizer, prompts, prompt_length=64, max_new_tokens=64, sampler="greedy", seed=None, **sampler_kwargs):
    """One-shot convenience around `ResponseGenerator`; returns a list of str."""
    generator = ResponseGenerator(policy, tokenizer, prompt_length, max_new_tokens, sampler, **sampler_kwargs)
    return generator(prompts, seed=seed)
