"""`CausalLMPolicy`: any keras-hub `CausalLM` (GPT-2, Llama, Gemma, ...) as the policy.

The trainers, the loop, the callbacks and the evaluation use one policy
interface: `policy(token_ids, training=...)` gives next-token logits
`(B, T, V)` for packed rows, `policy.vocab_size`, and
`keras_selffb.models.generation.generate_ids(policy, ...)` samples replies.
This adapter gives a keras-hub `CausalLM` that interface; its token ids are
OURS (the run's tokenizer, reserved ids 0..4), its preprocessor is not used.

The boundary: our packed rows are `[PAD .. BOS prompt SEP | reply EOS PAD ..]`
with a LEFT-padded prompt, while keras-hub models expect RIGHT-padded rows
with positions counted from 0 (and their cached decoding ignores
`padding_mask`). Each row is therefore shifted left by its number of leading
PADs before the model sees it (so it starts at BOS, position 0) and the
logits are shifted back to the original columns; generation builds a
right-padded buffer and runs keras-hub's own sampler loop over
`call_with_cache`, exactly as `CausalLM.generate_step` does, so mixed prompt
lengths in one batch are exact.

Dropout is always off: the wrapped model runs with `training=False` in every
pass, so the teacher-forced re-scoring of RL (and the MLE loss) uses the very
distribution the sampler drew from (`causal_lm_policy` also builds its
configs with dropout 0).

LoRA: `enable_lora(rank)` leaves only the LoRA factors trainable;
`lora_disabled()` and `reference()` give the base model (the KL reference)
without a second copy of the weights; `merge_lora()` folds the factors into
the base weights (after SFT, so that LoRA-off is the fine-tuned model).

Pretrained presets: `CausalLMPolicy.from_preset(directory)` loads a keras-hub
preset with its own tokenizer (`keras_selffb.text.PresetTokenizer`). Its ids
are mapped at this same boundary: our id `NUM_RESERVED + h` is hub id `h`,
and our reserved ids PAD, BOS, EOS, UNK, SEP are fed as the hub ids of the
tokenizer's `token_map()` (e.g. GPT-2: BOS and EOS are `<|endoftext|>`, SEP
is "\n"). Our logits are the hub logits gathered the same way, with -1e9 on
PAD, BOS, UNK, SEP and on the in-text copy of the hub end token (which our
EOS already is): the softmax over our ids is then exactly the hub model's
softmax, our EOS carrying the end token's probability.
"""

import contextlib
import os
import random

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras import ops

from keras_selffb.models.generation import check_sampler_vocabulary, special_token_bias, truncate_after_eos
from keras_selffb.text.tokenizer import BOS_ID, EOS_ID, NUM_RESERVED, PAD_ID, SEP_ID, UNK_ID

KINDS = ("gpt2", "llama")
# The keys of a token map, in the order of our reserved ids 0..4.
TOKEN_MAP_KEYS = ("pad", "bos", "eos", "unk", "sep")


def _leading_pads(token_ids):
    """Number of PAD ids before each row's first other id, `(B,)` int32."""
    seen = ops.cumsum(ops.cast(ops.not_equal(token_ids, PAD_ID), "int32"), axis=1)
    return ops.sum(ops.cast(ops.equal(seen, 0), "int32"), axis=1)


def _shift_left(token_ids, shift):
    """Row `b` moved `shift[b]` columns left, PAD filled in on the right."""
    length = ops.shape(token_ids)[1]
    source = ops.arange(length, dtype="int32")[None, :] + shift[:, None]
    gathered = tf.gather(token_ids, ops.minimum(source, length - 1), batch_dims=1)
    return ops.where(source < length, gathered, PAD_ID)


def _check_token_map(token_map, backbone_size):
    """A copy of `token_map` with int values; one-line `ValueError` if it does not fit."""
    if not isinstance(token_map, dict):
        raise TypeError(f"token_map must be a dict (PresetTokenizer.token_map()); got {type(token_map).__name__}.")
    missing = [key for key in TOKEN_MAP_KEYS + ("size",) if key not in token_map]
    if missing:
        raise ValueError(f"token_map lacks {missing}; expected the keys {list(TOKEN_MAP_KEYS) + ['size']}.")
    checked = {}
    for key in TOKEN_MAP_KEYS + ("size",):
        value = token_map[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"token_map[{key!r}] must be an int; got {value!r}.")
        checked[key] = int(value)
    size = checked["size"]
    if not 0 < size <= backbone_size:
        raise ValueError(
            f"The tokenizer's vocabulary ({size} ids) does not fit the model's ({backbone_size} ids): "
            "use the tokenizer of the same preset."
        )
    for key in TOKEN_MAP_KEYS:
        if not 0 <= checked[key] < size:
            raise ValueError(f"token_map[{key!r}] = {checked[key]} is outside the tokenizer's {size} ids.")
    return checked


def _merge_kernel(layer):
    """Folds `layer`'s LoRA update into its base kernel; LoRA-off then equals LoRA-on."""
    if getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"merge_lora: layer {layer.name} is quantized ({layer.quantization_mode}); "
            "merging LoRA into a quantized kernel is not supported."
        )
    # With LoRA on, Keras' `kernel` property (Dense and EinsumDense alike) is
    # `_kernel + (lora_alpha / lora_rank) * A @ B`, cast to the compute dtype;
    # the same sum is formed here in the variable's dtype, so a mixed-precision
    # policy does not round its base weights to float16/bfloat16.
    update = (layer.lora_alpha / layer.lora_rank) * ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b)
    kernel = layer._kernel
    kernel.assign(ops.add(kernel, ops.cast(update, kernel.dtype)))
    layer.lora_kernel_b.assign(ops.zeros_like(layer.lora_kernel_b))


@keras.saving.register_keras_serializable(package="keras_selffb")
class CausalLMPolicy(keras.Model):
    """A keras-hub `CausalLM` behind the policy interface of the trainers.

    Args:
        causal_lm: a `keras_hub.models.CausalLM` (its preprocessor is not
            used and may be `None`).
        token_map: dict or None. `None`: the model's ids are the run's
            tokenizer's (a model built for it, `causal_lm_policy`). A dict
            (`PresetTokenizer.token_map()`, a pretrained preset): the hub
            ids `{"pad", "bos", "eos", "unk", "sep"}` our reserved ids are
            fed as, and `"size"`, the tokenizer's vocabulary size (at most
            the model's: keras-hub models may pad their embedding); our id
            `NUM_RESERVED + h` is hub id `h`. Defaults to `None`.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Attributes:
        causal_lm: the wrapped `CausalLM`.
        backbone: its backbone.
        token_map: dict or None. As given.
        vocab_size: int. Our vocabulary size: the backbone's without a token
            map, `NUM_RESERVED + token_map["size"]` with one.
        lora_rank: int or None. The LoRA rank once `enable_lora` ran.

    Example:

    >>> import numpy as np
    >>> policy = causal_lm_policy("gpt2", vocab_size=12, num_layers=1, hidden_dim=8, num_heads=2, seed=0)
    >>> rows = np.array([[0, 0, 1, 7, 4, 9], [1, 7, 8, 6, 4, 9]])  # prompts of 3 and 5 ids
    >>> logits = policy(rows)
    >>> tuple(logits.shape)
    (2, 6, 12)
    >>> # Row 0 is scored as the right-padded [1, 7, 4, 9, 0, 0], from position 0.
    >>> right = policy.causal_lm.score(np.array([[1, 7, 4, 9, 0, 0]]), np.array([[1, 1, 1, 1, 0, 0]]))
    >>> bool(np.allclose(logits[0, 2:], right[0, :4], atol=1e-5))
    True
    >>> from keras_selffb.models.generation import generate_ids, get_sampler
    >>> tuple(generate_ids(policy, rows[:, :5], 3, get_sampler("greedy")).shape)
    (2, 3)
    """

    def __init__(self, causal_lm, token_map=None, **kwargs):
        lora_rank = kwargs.pop("lora_rank", None)
        super().__init__(**kwargs)
        if not isinstance(causal_lm, keras_hub.models.CausalLM):
            raise TypeError(
                f"CausalLMPolicy wraps a keras_hub.models.CausalLM; got {type(causal_lm).__name__}."
            )
        self.causal_lm = causal_lm
        backbone_size = int(causal_lm.backbone.vocabulary_size)
        self.token_map = None
        self._id_map = self._logit_bias = None
        self.vocab_size = backbone_size
        if token_map is not None:
            self.token_map = _check_token_map(token_map, backbone_size)
            size = self.token_map["size"]
            self.vocab_size = NUM_RESERVED + size
            # Our id -> hub id: the reserved ids first, then hub id = ours - NUM_RESERVED.
            reserved = [self.token_map[key] for key in TOKEN_MAP_KEYS]
            self._id_map = np.array(reserved + list(range(size)), dtype="int32")
            # Never predicted: PAD, BOS, UNK, SEP, and the in-text copy of the
            # hub end token (our EOS stands for it), so that the softmax over
            # our ids is the hub model's softmax.
            bias = np.zeros(self.vocab_size, dtype="float32")
            bias[[PAD_ID, BOS_ID, UNK_ID, SEP_ID, NUM_RESERVED + self.token_map["eos"]]] = -1e9
            self._logit_bias = bias
        self.lora_rank = getattr(causal_lm.backbone, "_lora_rank", None)
        if lora_rank and not self.lora_rank:
            self.enable_lora(lora_rank)
        self.built = True

    @property
    def backbone(self):
        return self.causal_lm.backbone

    def build(self, input_shape=None):
        self.built = True

    @classmethod
    def from_preset(cls, directory, tokenizer=None, **kwargs):
        """A pretrained keras-hub preset as the policy, with its own tokenizer.

        Args:
            directory: str. A local keras-hub preset directory (what
                `keras_hub.models.CausalLM.from_preset` downloads, or what
                `save_to_preset` writes).
            tokenizer: `keras_selffb.text.PresetTokenizer` or None. The
                run's tokenizer; defaults to `None`, the preset's own
                (`PresetTokenizer.from_preset(directory)`).
            **kwargs: `CausalLMPolicy` arguments (`name`, `lora_rank`).

        Returns:
            A `CausalLMPolicy` whose ids are the tokenizer's; pair it with
            that tokenizer (`PresetTokenizer.from_preset(directory)`).

        Raises:
            FileNotFoundError: `directory` does not exist.
            ValueError: it is not a keras-hub CausalLM preset, or the
                tokenizer does not fit the model's vocabulary.
        """
        from keras_selffb.text.preset_tokenizer import PresetTokenizer, _check_directory, _one_line

        directory = _check_directory(directory, "CausalLMPolicy.from_preset")
        if tokenizer is None:
            tokenizer = PresetTokenizer.from_preset(directory)
        elif not hasattr(tokenizer, "token_map"):
            raise TypeError(
                f"CausalLMPolicy.from_preset needs a PresetTokenizer (keras_selffb.text); "
                f"got {type(tokenizer).__name__}."
            )
        try:
            # An absolute path: keras-hub reads a bare name as a built-in preset to download.
            causal_lm = keras_hub.models.CausalLM.from_preset(os.path.abspath(directory), preprocessor=None)
        except Exception as e:  # keras-hub raises many kinds; one line for all
            raise ValueError(
                f"{directory} is not a keras-hub CausalLM preset (config.json of a causal language "
                f"model backbone and model.weights.h5): {_one_line(e)}"
            ) from None
        kwargs.setdefault("name", f"{causal_lm.backbone.name}_policy")
        return cls(causal_lm, token_map=tokenizer.token_map(), **kwargs)

    def _to_hub(self, token_ids):
        """Our ids -> the wrapped model's ids."""
        if self._id_map is None:
            return token_ids
        return ops.take(self._id_map, token_ids)

    def _from_hub(self, logits):
        """The wrapped model's logits `(..., V_hub)` -> ours `(..., vocab_size)`.

        With a token map, float32 (the -1e9 bias would be -inf in float16).
        """
        if self._id_map is None:
            return logits
        logits = ops.take(ops.cast(logits, "float32"), self._id_map, axis=-1)
        return logits + self._logit_bias

    def call(self, token_ids, training=None):
        """Next-token logits `(B, T, V)` for packed, left-padded rows.

        `training` is ignored: the wrapped model always runs with
        `training=False` (no dropout), so that sampling, the RL re-scoring
        pass and the KL reference all see the same distribution.
        """
        del training
        token_ids = ops.cast(token_ids, "int32")
        length = ops.shape(token_ids)[1]
        shift = _leading_pads(token_ids)
        right = _shift_left(token_ids, shift)
        inputs = {"token_ids": self._to_hub(right), "padding_mask": ops.not_equal(right, PAD_ID)}
        logits = self._from_hub(self.causal_lm(inputs, training=False))
        # Column j of the original row is column j - shift of the shifted one.
        back = ops.mod(ops.arange(length, dtype="int32")[None, :] - shift[:, None], length)
        return tf.gather(logits, back, batch_dims=1)

    def generate_ids(self, prompt_ids, max_new_tokens, sampler, stop_at_eos=True):
        """Reply ids `(B, max_new_tokens)` for left-padded prompts; graph-friendly.

        The contract of `keras_selffb.models.generation.generate_ids`: the
        reply ends at its first EOS, PAD after it, and the reserved ids
        other than EOS are never generated. Each prompt is moved to the
        front of a right-padded buffer of `P + max_new_tokens` columns and
        keras-hub's sampler loop runs over `call_with_cache` from the
        shortest prompt's end, its `mask` keeping the longer prompts' ids
        (as `CausalLM.generate_step` does); each row's new ids are then
        read after its own prompt.
        """
        check_sampler_vocabulary(sampler, self.vocab_size)
        prompt_ids = ops.cast(prompt_ids, "int32")
        prompt_length = prompt_ids.shape[1]
        batch_size = ops.shape(prompt_ids)[0]
        shift = _leading_pads(prompt_ids)
        lengths = prompt_length - shift
        buffer = ops.concatenate(
            [_shift_left(prompt_ids, shift), ops.zeros((batch_size, max_new_tokens), "int32")], axis=1
        )
        columns = ops.arange(prompt_length + max_new_tokens, dtype="int32")[None, :]
        mask = columns < lengths[:, None]
        bias = special_token_bias(self.vocab_size)
        causal_lm = self.causal_lm
        # The sampler's buffer holds our ids; the model sees them mapped.
        hidden_states, cache = causal_lm._build_cache(self._to_hub(buffer))

        def next_fn(prompt, cache, index):
            cache_update_index = index - 1
            rows = ops.shape(prompt)[0]
            token = self._to_hub(ops.slice(prompt, [0, cache_update_index], [rows, 1]))
            logits, hidden_states, cache = causal_lm.call_with_cache(token, cache, cache_update_index)
            logits = ops.cast(self._from_hub(logits[:, 0, :]), "float32")
            # NaN logits (a diverged policy) become -1e9, as in `generation`.
            logits = ops.where(ops.isnan(logits), -1e9, logits)
            return logits + bias, hidden_states[:, 0, :], cache

        output = sampler(
            next=next_fn,
            prompt=buffer,
            cache=cache,
            index=ops.min(lengths),
            mask=mask,
            stop_token_ids=[EOS_ID] if stop_at_eos else None,
            hidden_states=hidden_states,
            model=causal_lm,
        )
        positions = lengths[:, None] + ops.arange(max_new_tokens, dtype="int32")[None, :]
        return truncate_after_eos(tf.gather(output, positions, batch_dims=1))

    # -- LoRA -------------------------------------------------------------------

    def _lora_layers(self):
        return [
            layer for layer in self.backbone._flatten_layers(include_self=False)
            if getattr(layer, "lora_kernel_a", None) is not None
        ]

    def enable_lora(self, rank):
        """`backbone.enable_lora(rank)`, then only the LoRA factors are trainable.

        keras-hub leaves the biases of the LoRA layers trainable; they are
        frozen here too, so the base weights stay exactly as they were.
        """
        if self.lora_rank:
            raise ValueError(f"LoRA is already enabled (rank {self.lora_rank}).")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1; got {rank!r}.")
        self.backbone.enable_lora(rank)
        lora = {id(v) for layer in self._lora_layers() for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
        for variable in self.backbone.trainable_variables:
            if id(variable) not in lora:
                variable.trainable = False
        self.lora_rank = rank

    def merge_lora(self):
        """Folds the LoRA updates into the base weights; the model does not change.

        Each LoRA layer's kernel becomes `kernel + (lora_alpha / rank) * A @ B`
        and `lora_kernel_b` is zeroed, so LoRA-on is unchanged and LoRA-off
        (`lora_disabled()`, `reference()`) is now the merged model. LoRA
        stays enabled and trainable from zero. A preset run trains LoRA in
        MLE (SFT), merges, and the RL rounds use LoRA-off as the KL reference.
        """
        if not self.lora_rank:
            raise ValueError("merge_lora() needs LoRA: call enable_lora(rank) first.")
        layers = self._lora_layers()
        if not all(layer.lora_enabled for layer in layers):
            raise ValueError("merge_lora() cannot run inside lora_disabled(): LoRA is switched off there.")
        for layer in layers:
            _merge_kernel(layer)

    @contextlib.contextmanager
    def lora_disabled(self):
        """Within it, forward passes use the base weights only (LoRA off).

        It switches the layers' `lora_enabled` flag, which Keras reads when
        the kernel is used: inside a `tf.function` it acts at trace time, so
        the pass traced within the block stays a base-weights pass.
        """
        layers = [layer for layer in self._lora_layers() if layer.lora_enabled]
        for layer in layers:
            layer.lora_enabled = False
        try:
            yield self
        finally:
            for layer in layers:
                layer.lora_enabled = True

    def reference(self):
        """The base model (LoRA off) as a frozen reference policy: no weight copy.

        Usable as `ReinforceTrainer(reference_policy=...)` or a
        `FluencyReward`'s reference; it owns no variables, so nothing is
        tracked twice or frozen in the policy.
        """
        if not self.lora_rank:
            raise ValueError(
                "reference() is the model with LoRA switched off: call enable_lora(rank) first "
                "(without LoRA, use keras_selffb.models.frozen_copy(policy))."
            )
        return LoRAReference(self)

    # -- serialization ----------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        causal_lm = keras.saving.serialize_keras_object(self.causal_lm)
        # keras-hub tasks compile themselves; their compile config only makes
        # Keras warn on loading (the policy is never fitted directly).
        causal_lm.pop("compile_config", None)
        config.update({"causal_lm": causal_lm, "token_map": self.token_map, "lora_rank": self.lora_rank})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["causal_lm"] = keras.saving.deserialize_keras_object(config["causal_lm"])
        return cls(**config)


class LoRAReference:
    """A `CausalLMPolicy` seen with LoRA switched off (see `CausalLMPolicy.reference`).

    A plain object, not a Keras layer: assigned to a trainer it is not
    tracked, and it holds no variables (`weights` is empty), so the
    policy's weights are neither tracked twice nor frozen by
    `reference.trainable = False`.
    """

    def __init__(self, policy):
        self.policy = policy
        self.trainable = False

    @property
    def vocab_size(self):
        return self.policy.vocab_size

    @property
    def weights(self):
        return []

    variables = trainable_variables = non_trainable_variables = trainable_weights = weights

    def __call__(self, token_ids, training=None):
        with self.policy.lora_disabled():
            return self.policy(token_ids, training=False)

    def generate_ids(self, prompt_ids, max_new_tokens, sampler, stop_at_eos=True):
        with self.policy.lora_disabled():
            return self.policy.generate_ids(prompt_ids, max_new_tokens, sampler, stop_at_eos=stop_at_eos)


def causal_lm_policy(
    kind,
    vocab_size,
    num_layers=2,
    hidden_dim=64,
    num_heads=4,
    intermediate_dim=None,
    max_sequence_length=256,
    seed=None,
):
    """A small randomly initialised keras-hub policy, dropout 0, no preprocessor.

    Args:
        kind: str. `"gpt2"` (`GPT2CausalLM`) or `"llama"` (`LlamaCausalLM`).
        vocab_size: int. The run's tokenizer's vocabulary size.
        num_layers: int. Transformer layers. Defaults to `2`.
        hidden_dim: int. Model width. Defaults to `64`.
        num_heads: int. Attention (query) heads; must divide `hidden_dim`.
            Llama gets `num_heads // 2` key/value heads (grouped-query
            attention) when `num_heads` is even. Defaults to `4`.
        intermediate_dim: int or None. Feed-forward width. Defaults to
            `4 * hidden_dim` (GPT-2) or `8 * hidden_dim // 3` (Llama's
            SwiGLU).
        max_sequence_length: int. GPT-2's learned positions; Llama (RoPE)
            has no limit and ignores it. Defaults to `256`.
        seed: int or None. Seeds the initial weights without touching the
            global random state. Defaults to `None`.

    Returns:
        A `CausalLMPolicy`.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; choose one of {list(KINDS)}.")
    if hidden_dim < 1 or num_heads < 1 or hidden_dim % num_heads or num_layers < 1:
        raise ValueError(
            f"{kind}: need num_layers >= 1 and num_heads dividing hidden_dim; got "
            f"num_layers={num_layers}, hidden_dim={hidden_dim}, num_heads={num_heads}."
        )
    state = random.getstate()
    if seed is not None:
        # Keras initializers without a seed draw theirs from Python's `random`.
        random.seed(seed)
    try:
        if kind == "gpt2":
            backbone = keras_hub.models.GPT2Backbone(
                vocabulary_size=vocab_size,
                num_layers=num_layers,
                num_heads=num_heads,
                hidden_dim=hidden_dim,
                intermediate_dim=intermediate_dim or 4 * hidden_dim,
                dropout=0.0,
                max_sequence_length=max_sequence_length,
            )
            causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
        else:
            backbone = keras_hub.models.LlamaBackbone(
                vocabulary_size=vocab_size,
                num_layers=num_layers,
                num_query_heads=num_heads,
                num_key_value_heads=num_heads // 2 if num_heads % 2 == 0 else num_heads,
                hidden_dim=hidden_dim,
                intermediate_dim=intermediate_dim or 8 * hidden_dim // 3,
                dropout=0.0,
            )
            causal_lm = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    finally:
        if seed is not None:
            random.setstate(state)
    return CausalLMPolicy(causal_lm, name=f"{kind}_policy")
