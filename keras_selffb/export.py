"""A SavedModel that serves a policy without this package: strings in, strings out.

`export_generator` writes a `tf.Module` with two signatures:

- `generate(prompts, max_new_tokens, temperature, seed) -> replies`.
  Tokenizing, packing (`keras_selffb.text.packing.pack_prompts`: left-padded
  `[BOS] prompt [SEP]`, the last tokens kept when too long), the decoding loop
  and detokenizing all run in the graph. Temperature 0 (the default) is greedy
  decoding and gives exactly the replies of `ResponseGenerator` with the
  greedy sampler; a temperature above 0 samples with
  `tf.random.stateless_categorical`, so one seed always gives the same replies
  for the same batch. PAD, BOS, SEP and UNK are never generated and a row stops
  at its first EOS, as in `keras_selffb.models.generation`.
- `score(prompts, replies) -> log_likelihood, num_tokens`: the teacher-forced
  log-likelihood of `reply + EOS` given the prompt, as
  `keras_selffb.models.response_token_nll` computes it on the same packing
  (replies longer than `max_new_tokens - 1` tokens are cut, without EOS).

For a `PolicyNetwork` no Keras code is saved: the weights are copied into
`tf.Variable`s and the LSTM step is written with raw TF ops (Keras' fused
kernel, gates in the order input, forget, cell, output; sigmoid gates and
tanh). For a `CausalLMPolicy` (keras-hub GPT-2 / Llama) the module holds the
policy's variables and traces the package's own decoding
(`keras_selffb.models.generation.generate_ids` with a sampler that is greedy
at temperature 0) and teacher-forced scoring into the graph; the SavedModel
holds those graphs and variables, not the Keras objects, so it loads without
Keras or keras-hub just the same. With a `CharTokenizer` the graph holds core
TensorFlow ops only, so plain `tf.saved_model.load` and TF Serving run it. A
`WordPieceTokenizer` graph holds tensorflow_text ops: `import tensorflow_text`
before loading it.
"""

import os
import shutil
import tempfile

import keras_hub
import numpy as np
import tensorflow as tf

from keras_selffb.generator import ResponseGenerator, as_generator
from keras_selffb.models.causal_lm_policy import CausalLMPolicy
from keras_selffb.models.generation import generate_ids, special_token_bias
from keras_selffb.models.scoring import response_token_nll
from keras_selffb.text.packing import pack_prompts, pack_responses
from keras_selffb.text.tokenizer import EOS_ID, PAD_ID

SUPPORTED_TOKENIZERS = ("char", "wordpiece")
SIGNATURES = ("generate", "score")


def _activation_name(function):
    return getattr(function, "__name__", str(function))


def _check_tokenizer(policy, tokenizer):
    kind = getattr(tokenizer, "kind", None)
    supported = SUPPORTED_TOKENIZERS + (("preset",) if isinstance(policy, CausalLMPolicy) else ())
    if kind not in supported:
        raise ValueError(
            f"Unknown tokenizer type {type(tokenizer).__name__} (kind {kind!r}): "
            f"export_generator supports keras_selffb CharTokenizer and WordPieceTokenizer "
            f"({', '.join(SUPPORTED_TOKENIZERS)}), and a preset's PresetTokenizer with a CausalLMPolicy."
        )
    if tokenizer.vocabulary_size != policy.vocab_size:
        raise ValueError(
            f"Vocabulary mismatch: the tokenizer has {tokenizer.vocabulary_size} "
            f"tokens but the policy was built for {policy.vocab_size}."
        )


def _check_policy(policy, tokenizer):
    for name in ("embedding", "lstm_layers", "head"):
        if not hasattr(policy, name):
            raise ValueError(
                f"export_generator needs a keras_selffb PolicyNetwork or CausalLMPolicy; "
                f"{type(policy).__name__} has no `{name}`."
            )
    if policy.compute_dtype != "float32":
        raise ValueError(
            f"export_generator runs the LSTM in float32; the policy computes in "
            f"{policy.compute_dtype}. Export a float32 copy of the policy."
        )
    for lstm in policy.lstm_layers:
        cell = lstm.cell
        activations = (_activation_name(cell.activation), _activation_name(cell.recurrent_activation))
        if activations != ("tanh", "sigmoid") or not cell.use_bias:
            raise ValueError(
                f"{lstm.name}: only LSTMs with tanh, sigmoid gates and a bias can be exported."
            )
    if _activation_name(policy.head.activation) != "linear":
        raise ValueError("The policy's output layer must return logits (linear activation).")
    _check_tokenizer(policy, tokenizer)


class _GeneratorModule(tf.Module):
    """The exported object: policy weights, tokenizer and the two signatures.

    Args:
        policy: a `PolicyNetwork`.
        tokenizer: its `CharTokenizer` or `WordPieceTokenizer`.
        prompt_length: int. Prompt columns, BOS and SEP included.
        max_new_tokens: int. Default longest reply (EOS included), and the
            response columns `score` packs replies into.
    """

    def __init__(self, policy, tokenizer, prompt_length, max_new_tokens):
        super().__init__(name="keras_selffb_generator")
        self.tokenizer = tokenizer
        self._prompt_length = prompt_length
        self._response_length = max_new_tokens
        self._hidden_dim = policy.hidden_dim

        def copy(weight, name):
            value = np.asarray(weight.numpy(), dtype="float32")
            return tf.Variable(value, trainable=False, name=name)

        self.embedding = copy(policy.embedding.embeddings, "embedding")
        self.lstm_weights = [
            (
                copy(lstm.cell.kernel, f"lstm_{i}_kernel"),
                copy(lstm.cell.recurrent_kernel, f"lstm_{i}_recurrent_kernel"),
                copy(lstm.cell.bias, f"lstm_{i}_bias"),
            )
            for i, lstm in enumerate(policy.lstm_layers)
        ]
        self.head_kernel = copy(policy.head.kernel, "head_kernel")
        self.head_bias = copy(policy.head.bias, "head_bias")
        self._forbidden = tf.constant(special_token_bias(policy.vocab_size).numpy())

        # Python defaults that are tensors become SignatureDef defaults
        # (PlaceholderWithDefault): TF Serving and the restored
        # `loaded.generate(prompts)` may leave these inputs out.
        def generate(
            prompts,
            max_new_tokens=tf.constant(max_new_tokens, tf.int32),
            temperature=tf.constant(0.0, tf.float32),
            seed=tf.constant(0, tf.int64),
        ):
            return {"replies": self._generate(prompts, max_new_tokens, temperature, seed)}

        def score(prompts, replies):
            log_likelihood, num_tokens = self._score(prompts, replies)
            return {"log_likelihood": log_likelihood, "num_tokens": num_tokens}

        # Loops and branches are explicit tf.while_loop / tf.cond: no autograph.
        self.generate, self.score = _signature_functions(generate, score, autograph=False)

    def _zero_state(self, batch_size):
        return tf.zeros([len(self.lstm_weights), 2, batch_size, self._hidden_dim])

    def _step(self, token, state):
        """One LSTM step for ids `(B,)` from `state (layers, 2, B, H)`.

        Returns `(logits (B, V), new_state)`; a PAD id leaves a row's state
        unchanged, as the masked Keras LSTM does.
        """
        keep = tf.not_equal(token, PAD_ID)[:, None]
        x = tf.gather(self.embedding, token)
        layers = []
        for i, (kernel, recurrent_kernel, bias) in enumerate(self.lstm_weights):
            h, c = state[i, 0], state[i, 1]
            z = tf.add(tf.matmul(x, kernel), tf.matmul(h, recurrent_kernel))
            z_i, z_f, z_c, z_o = tf.split(tf.add(z, bias), 4, axis=1)
            new_c = tf.sigmoid(z_f) * c + tf.sigmoid(z_i) * tf.tanh(z_c)
            new_h = tf.sigmoid(z_o) * tf.tanh(new_c)
            new_h = tf.where(keep, new_h, h)
            new_c = tf.where(keep, new_c, c)
            layers.append(tf.stack([new_h, new_c]))
            x = new_h
        logits = tf.add(tf.matmul(x, self.head_kernel), self.head_bias)
        return logits, tf.stack(layers)

    def _prefill(self, ids, state):
        """The state after feeding every column of `ids (B, T)`."""

        def body(t, state):
            _, state = self._step(ids[:, t], state)
            return t + 1, state

        _, state = tf.while_loop(lambda t, _: t < tf.shape(ids)[1], body, (tf.constant(0), state))
        return state

    def _next_token(self, logits, temperature, seed, step):
        def greedy():
            # keras-hub's GreedySampler takes the argmax of the softmax.
            return tf.argmax(tf.nn.softmax(logits), axis=-1, output_type=tf.int32)

        def sample():
            step_seed = tf.stack([seed, tf.cast(step, tf.int64)])
            draw = tf.random.stateless_categorical(
                logits / temperature, 1, seed=step_seed, dtype=tf.int32
            )
            return draw[:, 0]

        return tf.cond(temperature > 0.0, sample, greedy)

    def _generate(self, prompts, max_new_tokens, temperature, seed):
        tf.debugging.assert_positive(max_new_tokens, message="max_new_tokens must be >= 1")
        tf.debugging.assert_non_negative(
            temperature, message="temperature must be >= 0 (0 is greedy decoding)"
        )
        prompt_ids, _ = pack_prompts(self.tokenizer, prompts, self._prompt_length)
        batch_size = tf.shape(prompt_ids)[0]
        # As `generate_ids`: prefill all but SEP, which the first step feeds.
        state = self._prefill(prompt_ids[:, :-1], self._zero_state(batch_size))

        def cond(step, token, state, done, reply):
            return tf.logical_and(step < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

        def body(step, token, state, done, reply):
            logits, state = self._step(token, state)
            token = self._next_token(logits + self._forbidden, temperature, seed, step)
            token = tf.where(done, PAD_ID, token)
            reply = tf.concat([reply, token[:, None]], axis=1)
            return step + 1, token, state, done | tf.equal(token, EOS_ID), reply

        loop_vars = (
            tf.constant(0),
            prompt_ids[:, -1],
            state,
            tf.zeros([batch_size], tf.bool),
            tf.zeros([batch_size, 0], tf.int32),
        )
        invariants = (
            tf.TensorShape([]),
            tf.TensorShape([None]),
            state.shape,
            tf.TensorShape([None]),
            tf.TensorShape([None, None]),
        )
        reply = tf.while_loop(cond, body, loop_vars, shape_invariants=invariants)[-1]
        return self.tokenizer.detokenize(reply)

    def _score(self, prompts, replies):
        tf.debugging.assert_equal(
            tf.size(prompts), tf.size(replies), message="score needs one reply per prompt"
        )
        prompt_ids, _ = pack_prompts(self.tokenizer, prompts, self._prompt_length)
        response_ids, _ = pack_responses(self.tokenizer, replies, self._response_length)
        batch_size = tf.shape(prompt_ids)[0]
        state = self._prefill(prompt_ids[:, :-1], self._zero_state(batch_size))
        # Column j feeds SEP or response token j - 1 and predicts token j.
        inputs = tf.concat([prompt_ids[:, -1:], response_ids[:, :-1]], axis=1)
        mask = tf.cast(tf.not_equal(response_ids, PAD_ID), tf.float32)

        def body(j, state, total):
            logits, state = self._step(inputs[:, j], state)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(response_ids[:, j], logits)
            return j + 1, state, total - nll * mask[:, j]

        _, _, total = tf.while_loop(
            lambda j, *_: j < self._response_length,
            body,
            (tf.constant(0), state, tf.zeros([batch_size])),
        )
        return total, tf.cast(tf.reduce_sum(mask, axis=1), tf.int32)


def _signature_functions(generate, score, autograph):
    """`generate` and `score` as `tf.function`s with the exported input signatures."""
    generate = tf.function(
        generate,
        autograph=autograph,
        input_signature=[
            tf.TensorSpec([None], tf.string, name="prompts"),
            tf.TensorSpec([], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int64, name="seed"),
        ],
    )
    score = tf.function(
        score,
        autograph=autograph,
        input_signature=[
            tf.TensorSpec([None], tf.string, name="prompts"),
            tf.TensorSpec([None], tf.string, name="replies"),
        ],
    )
    return generate, score


class _ExportSampler(keras_hub.samplers.Sampler):
    """The exported sampler: greedy at temperature 0, else a seeded stateless draw.

    Greedy is `GreedySampler`'s rule (the argmax of the softmax of the
    logits), so temperature 0 gives exactly `keras-selffb generate`'s
    replies. Above 0 it draws from `softmax(logits / temperature)` with
    `tf.random.stateless_categorical` seeded by `(seed, column)`: the same
    seed, prompts and batch give the same replies. `temperature` and `seed`
    are the signature's input tensors.
    """

    def __init__(self, temperature, seed):
        super().__init__()
        self._temperature_input = temperature
        self._seed_input = seed
        self._column = tf.constant(0, tf.int32)

    def __call__(self, next, prompt, cache=None, index=0, **kwargs):
        def next_with_column(prompt, cache, index):
            self._column = index  # the column this step fills, for the seed
            return next(prompt, cache, index)

        return super().__call__(next_with_column, prompt, cache=cache, index=index, **kwargs)

    def compute_probabilities(self, logits):
        return tf.cast(logits, tf.float32)  # `get_next_token` takes logits

    def get_next_token(self, logits):
        def greedy():
            return tf.argmax(tf.nn.softmax(logits), axis=-1, output_type=tf.int32)

        def sample():
            seed = tf.stack([self._seed_input, tf.cast(self._column, tf.int64)])
            draw = tf.random.stateless_categorical(
                logits / self._temperature_input, 1, seed=seed, dtype=tf.int32
            )
            return draw[:, 0]

        return tf.cond(self._temperature_input > 0.0, sample, greedy)


def _context_length(policy):
    """The positions a `CausalLMPolicy` can attend over, or None if unknown."""
    for owner in (policy, getattr(policy, "backbone", None)):
        length = getattr(owner, "max_sequence_length", None)
        if isinstance(length, int):
            return length
    return None


class _CausalLMModule(tf.Module):
    """The exported object for a `CausalLMPolicy`: its variables, the tokenizer, two signatures.

    The Keras model is not an attribute (it would be saved as a Keras
    object graph): the traced functions capture its variables, which the
    module tracks as a plain list. `generate` always decodes the export's
    `max_new_tokens` columns (stopping once every row has EOS) and cuts the
    reply to the requested length: greedy decoding, and the seeded draws,
    of a shorter reply are the first columns of the longer one.

    Args:
        policy: a `CausalLMPolicy`.
        tokenizer: its `CharTokenizer` or `WordPieceTokenizer`.
        prompt_length: int. Prompt columns, BOS and SEP included.
        max_new_tokens: int. Default and longest reply (EOS included), and
            the response columns `score` packs replies into.
    """

    def __init__(self, policy, tokenizer, prompt_length, max_new_tokens):
        super().__init__(name="keras_selffb_generator")
        self.tokenizer = tokenizer
        # Keras variables wrap a tf.Variable (`.value`): the SavedModel keeps those.
        self.policy_variables = [getattr(v, "value", v) for v in policy.variables]
        longest = max_new_tokens

        def generate(
            prompts,
            max_new_tokens=tf.constant(max_new_tokens, tf.int32),
            temperature=tf.constant(0.0, tf.float32),
            seed=tf.constant(0, tf.int64),
        ):
            tf.debugging.assert_positive(max_new_tokens, message="max_new_tokens must be >= 1")
            tf.debugging.assert_less_equal(
                max_new_tokens, tf.constant(longest, tf.int32),
                message=f"max_new_tokens must be <= {longest} (the export's --max-new-tokens)",
            )
            tf.debugging.assert_non_negative(
                temperature, message="temperature must be >= 0 (0 is greedy decoding)"
            )
            prompt_ids, _ = pack_prompts(self.tokenizer, prompts, prompt_length)
            reply = generate_ids(policy, prompt_ids, longest, _ExportSampler(temperature, seed))
            reply = tf.cast(reply, tf.int32)[:, :max_new_tokens]
            return {"replies": self.tokenizer.detokenize(reply)}

        def score(prompts, replies):
            tf.debugging.assert_equal(
                tf.size(prompts), tf.size(replies), message="score needs one reply per prompt"
            )
            prompt_ids, _ = pack_prompts(self.tokenizer, prompts, prompt_length)
            response_ids, _ = pack_responses(self.tokenizer, replies, max_new_tokens)
            nll, mask, _ = response_token_nll(policy, prompt_ids, response_ids)
            return {
                "log_likelihood": -tf.reduce_sum(nll, axis=1),
                "num_tokens": tf.cast(tf.reduce_sum(mask, axis=1), tf.int32),
            }

        self.generate, self.score = _signature_functions(generate, score, autograph=True)


class OutputPathError(OSError, ValueError):
    """A SavedModel cannot be written where asked; the message is one line.

    An `OSError` (the cause is the file system) and a `ValueError` (the
    path is the caller's input), as `io.UnsupportedOperation` is both.
    """


def _reason(error):
    """The one-line cause of an `OSError` or a TensorFlow file error."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        reason = getattr(error, "message", None) or str(error) or type(error).__name__
    return " ".join(str(reason).split())


def _nearest_existing(path):
    """`path`'s closest ancestor that exists (`path` itself if it exists)."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_output_path(path, overwrite=False):
    """Checks that a SavedModel can be written to `path`; creates and deletes nothing.

    Raises a one-line error for: `path` is a file; it holds files and
    `overwrite` is false, or it holds files but no SavedModel; a component
    of it is a file; or no directory can be created where it goes
    (`OutputPathError`, with the path and the system's reason).

    Args:
        path: str or path-like.
        overwrite: bool. An earlier SavedModel at `path` may be replaced.

    Returns:
        `path` as a str.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        raise FileExistsError(f"{path} is a file; give a directory path for the SavedModel.")
    if os.path.isdir(path):
        try:
            entries = os.listdir(path)
        except OSError as e:
            raise OutputPathError(f"Cannot write the SavedModel to {path}: {_reason(e)}.") from None
        if entries:
            if not overwrite:
                raise FileExistsError(
                    f"{path} already exists and is not empty; choose a new path or pass "
                    "overwrite=True (CLI: --overwrite) to replace an earlier export."
                )
            if not os.path.exists(os.path.join(path, "saved_model.pb")):
                raise FileExistsError(
                    f"{path} is not empty and holds no SavedModel; refusing to replace it."
                )
        where = path
    else:
        where = _nearest_existing(path)
        if not os.path.isdir(where):
            kind = "a broken symbolic link" if os.path.islink(where) else "a file"
            raise OutputPathError(
                f"Cannot write the SavedModel to {path}: {where} is {kind}, not a directory."
            )
    # A directory made and removed at once is the one sure test (permissions,
    # read-only or pseudo file systems such as /proc, quotas).
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".keras_selffb_check_", dir=where))
    except OSError as e:
        raise OutputPathError(
            f"Cannot write the SavedModel to {path}: cannot create a directory in {where} ({_reason(e)})."
        ) from None
    return path


def _prepare_path(path, overwrite):
    path = check_output_path(path, overwrite)
    if os.path.isdir(path) and os.listdir(path):
        shutil.rmtree(path)
    return path


def _remove_partial(path, existed):
    """Removes what a failed export wrote: `path` itself unless it `existed` (empty)."""
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for entry in os.listdir(path) if os.path.isdir(path) else ():
        full = os.path.join(path, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.remove(full)
            except OSError:
                pass


def export_generator(policy, tokenizer=None, path=None, prompt_length=None, max_new_tokens=None, overwrite=False):
    """Writes a SavedModel with `generate` and `score` signatures to `path`.

    With a `ResponseGenerator`: `export_generator(generator, path)`; it
    brings the policy, the tokenizer and both lengths.

    Args:
        policy: a `keras_selffb.models.PolicyNetwork` (float32), or a
            `CausalLMPolicy` (keras-hub GPT-2 / Llama; see docs/serving.md),
            or a `ResponseGenerator`.
        tokenizer: the `CharTokenizer` or `WordPieceTokenizer` the policy was
            trained with.
        path: str or path-like. A new (or empty) directory for the SavedModel.
            It is checked first (`check_output_path`); a path where no
            directory can be written, or a failure while writing, raises
            `OutputPathError` (an `OSError` and a `ValueError`) with one line.
        prompt_length: int. Prompt columns, BOS and SEP included; use the
            run's `prompt_length` so prompts are packed as in training.
        max_new_tokens: int. Default longest reply in tokens, EOS included
            (`keras-selffb generate` uses the run's `response_length`); also
            the response columns `score` packs replies into, so at least 2.
        overwrite: bool. Replace an earlier SavedModel at `path`. Defaults to
            `False`.

    Returns:
        The path written, as a str.

    Example:

    >>> import tempfile
    >>> from keras_selffb.generator import generate
    >>> from keras_selffb.models import PolicyNetwork
    >>> from keras_selffb.text import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["hello", "你好"])
    >>> policy = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=8, hidden_dim=8)
    >>> path = export_generator(policy, tokenizer, tempfile.mkdtemp() + "/gen", 8, 4)
    >>> loaded = tf.saved_model.load(path)
    >>> sorted(loaded.signatures)
    ['generate', 'score']
    >>> replies = loaded.generate(tf.constant(["hello", "你好"]))["replies"]  # greedy
    >>> [reply.decode() for reply in replies.numpy()] == generate(
    ...     policy, tokenizer, ["hello", "你好"], prompt_length=8, max_new_tokens=4)
    True
    """
    if isinstance(policy, ResponseGenerator):
        if path is None and isinstance(tokenizer, (str, os.PathLike)):
            tokenizer, path = None, tokenizer  # export_generator(generator, path)
        generator = as_generator(policy, tokenizer, prompt_length, max_new_tokens, owner="export_generator")
        policy, tokenizer = generator.policy, generator.tokenizer
        prompt_length, max_new_tokens = generator.prompt_length, generator.max_new_tokens
    missing = [n for n, v in (("tokenizer", tokenizer), ("path", path), ("prompt_length", prompt_length),
                              ("max_new_tokens", max_new_tokens)) if v is None]
    if missing:
        raise TypeError(f"export_generator needs {', '.join(missing)} (or a ResponseGenerator and a path).")
    causal_lm = isinstance(policy, CausalLMPolicy)
    if causal_lm:
        _check_tokenizer(policy, tokenizer)
    else:
        _check_policy(policy, tokenizer)
    if prompt_length < 3:
        raise ValueError(f"prompt_length must be >= 3 (BOS, a token, SEP); got {prompt_length}.")
    if max_new_tokens < 2:
        raise ValueError(
            f"max_new_tokens must be >= 2 (a token and EOS, as a packed response); "
            f"got {max_new_tokens}."
        )
    context = _context_length(policy) if causal_lm else None
    if context is not None and prompt_length + max_new_tokens > context:
        raise ValueError(
            f"prompt_length + max_new_tokens ({prompt_length} + {max_new_tokens}) is more than the "
            f"{context} positions the policy was built for; use max_new_tokens <= {context - prompt_length}."
        )
    path = _prepare_path(path, overwrite)
    module = (_CausalLMModule if causal_lm else _GeneratorModule)(policy, tokenizer, prompt_length, max_new_tokens)
    existed = os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
        tf.saved_model.save(module, path, signatures={name: getattr(module, name) for name in SIGNATURES})
    except (OSError, tf.errors.OpError) as e:
        # Disk full, permissions changed, a path that cannot be created...:
        # one line, and no half-written SavedModel left behind.
        _remove_partial(path, existed)
        raise OutputPathError(f"Could not write the SavedModel to {path}: {_reason(e)}.") from e
    return path
