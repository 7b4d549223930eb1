"""`PresetTokenizer`: a pretrained keras-hub tokenizer under this package's ids.

The package has one id convention (`keras_selffb.text.tokenizer`): ids 0..4
are PAD, BOS, EOS, UNK, SEP and text tokens start at `NUM_RESERVED`. A
pretrained tokenizer (GPT-2 byte-pair, Llama/Gemma SentencePiece, ...) has its
own ids, so they are shifted at this boundary: our id = hub id +
`NUM_RESERVED` for every hub token. Packing, rewards and generation then work
unchanged, and `token_map()` says which hub ids our reserved ids stand for,
which `CausalLMPolicy(token_map=...)` uses to feed the pretrained model.

The hub tokenizer always runs on its TensorFlow path (inside a
`tf.function`): keras-hub runs eager calls through a pure-Python path
(`tokenizers`/`sentencepiece`), so the graph path is used everywhere for the
same ids in eager code, `tf.data` and an exported SavedModel.
"""

import hashlib
import json
import os
import shutil
import tempfile

import tensorflow as tf

from keras_selffb.text.tokenizer import NUM_RESERVED, UNK_ID, _as_ragged_ids, _to_string_tensor

# Where `save_tokenizer` writes the hub tokenizer, inside a run directory.
PRESET_SUBDIR = "tokenizer_preset"
# The files keras-hub's `Tokenizer.save_to_preset` writes.
_HUB_CONFIG = "tokenizer.json"


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _check_directory(directory, what):
    """Raises a one-line `FileNotFoundError` unless `directory` is a directory."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a directory path, got {type(directory).__name__}.")
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{what}: {directory} is not a directory (expected a keras-hub preset directory, as "
            "written by save_to_preset or downloaded by from_preset)."
        )
    return directory


def _fingerprint(tokenizer):
    """SHA-256 (hex) of a keras-hub tokenizer's config and vocabulary files."""
    digest = hashlib.sha256()
    config = dict(tokenizer.get_config())
    config.pop("name", None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_assets(tmp)
        for name in sorted(os.listdir(tmp)):
            digest.update(name.encode("utf-8"))
            with open(os.path.join(tmp, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _hub_id(tokenizer, name):
    """`tokenizer.<name>` as an int, or None when missing, unset or negative."""
    value = getattr(tokenizer, name, None)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


class PresetTokenizer(tf.Module):
    """A keras-hub tokenizer with the package's reserved ids in front.

    Our id of a hub token is its hub id plus `NUM_RESERVED` (5); ids 0..4
    keep their meaning (PAD, BOS, EOS, UNK, SEP), so `pack_pairs`,
    `detokenize_texts` and the trainers use it like any tokenizer of
    `keras_selffb.text`.

    Args:
        tokenizer: a `keras_hub.tokenizers.Tokenizer` with integer ids and a
            vocabulary (`GPT2Tokenizer`, `LlamaTokenizer`, `GemmaTokenizer`,
            ...), without a `sequence_length`.
        name: str or None. The module name. Defaults to `None`.

    Attributes:
        tokenizer: the wrapped keras-hub tokenizer.
        vocabulary_size: int. `NUM_RESERVED` + the hub vocabulary size.

    Example:

    >>> import keras_hub
    >>> vocabulary = {"h": 0, "i": 1, "Ġ": 2, "Ċ": 3, "hi": 4, "<|endoftext|>": 5}
    >>> hub = keras_hub.tokenizers.GPT2Tokenizer(vocabulary=vocabulary, merges=["h i"])
    >>> tokenizer = PresetTokenizer(hub)
    >>> tokenizer.vocabulary_size  # 5 reserved ids + 6 hub ids
    11
    >>> tokenizer.tokenize(["hi hi", ""]).to_list()  # hub ids [4, 2, 4] + 5
    [[9, 7, 9], []]
    >>> tokenizer.token_map()  # the hub ids PAD, BOS, EOS, UNK, SEP stand for
    {'pad': 0, 'bos': 5, 'eos': 5, 'unk': 5, 'sep': 3, 'size': 6}
    >>> tokenizer.detokenize([[1, 9, 4, 7, 9, 2]]).numpy().tolist()  # reserved ids dropped
    [b'hi hi']
    """

    kind = "preset"

    def __init__(self, tokenizer, name=None):
        super().__init__(name=name)
        import keras_hub

        if not isinstance(tokenizer, keras_hub.tokenizers.Tokenizer):
            raise TypeError(
                f"PresetTokenizer wraps a keras_hub.tokenizers.Tokenizer; got {type(tokenizer).__name__}."
            )
        label = type(tokenizer).__name__
        if getattr(tokenizer, "sequence_length", None):
            raise ValueError(
                f"{label} pads to sequence_length={tokenizer.sequence_length}; PresetTokenizer needs "
                "ragged output: build it with sequence_length=None."
            )
        if not tf.as_dtype(tokenizer.compute_dtype).is_integer:
            raise ValueError(f"{label} returns {tokenizer.compute_dtype} tokens; PresetTokenizer needs integer ids.")
        try:
            size = int(tokenizer.vocabulary_size())
        except (NotImplementedError, ValueError, TypeError) as e:
            raise ValueError(f"{label} has no vocabulary to map ids from ({_one_line(e)}).") from None
        self.tokenizer = tokenizer
        self._hub_size = size
        self._trace()
        self._token_map = self._find_token_map()
        self._fingerprint = None

    def _trace(self):
        # Graph mode only (see the module docstring), one trace each: a batch
        # of strings in, ragged ids out, and back.
        self._tokenize_graph = tf.function(
            self._model_in_graph(self.tokenizer.tokenize), input_signature=[tf.TensorSpec([None], tf.string)]
        )
        self._detokenize_graph = tf.function(
            self._model_in_graph(self.tokenizer.detokenize),
            input_signature=[tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1)],
        )

    def _model_in_graph(self, method):
        """`method` with a SentencePiece model op built inside the graph being traced.

        keras-hub builds its tensorflow-text SentencePiece model once,
        eagerly; a graph that captured that model's handle fails once
        TensorFlow drops it (see `_call_hub`), e.g. the reward in a training
        step traced before a round re-seeds. Built inside the trace, the
        model op is part of every graph that tokenizes (the reward, the
        export) and recreates its resource whenever the graph runs.
        Other tokenizers (byte-pair, WordPiece) hold plain lookup tables:
        `method` is returned as it is.
        """
        hub = self.tokenizer
        if not (hasattr(hub, "_maybe_initialized_tf") and getattr(hub, "proto", None)):
            return method

        def call(value):
            eager_model = getattr(hub, "_sentence_piece", None)
            hub._sentence_piece = None  # keras-hub then builds one in this graph
            try:
                return method(value)
            finally:
                hub._sentence_piece = eager_model

        return call

    def _call_hub(self, name, value):
        """`self.<name>(value)`, rebuilding a SentencePiece model TensorFlow dropped.

        tensorflow-text's SentencePiece model lives in its op's kernel (the
        TODO b/318839908 in tensorflow_text), and TensorFlow drops eager
        kernels whenever the global seed is set: after
        `keras.utils.set_random_seed` (which every run calls) a keras-hub
        SentencePiece tokenizer fails with "Resource ... SentencepieceResource
        does not exist". Eager calls rebuild it from its proto and retry.
        """
        try:
            return getattr(self, name)(value)
        except tf.errors.NotFoundError:
            hub = self.tokenizer
            proto = getattr(hub, "proto", None)
            if not (tf.executing_eagerly() and proto and hasattr(hub, "set_proto")):
                raise
            hub.set_proto(proto)
            self._trace()
            return getattr(self, name)(value)

    # -- construction -----------------------------------------------------------

    @classmethod
    def from_preset(cls, directory):
        """The tokenizer of a keras-hub preset directory.

        Args:
            directory: str. A local preset directory: what
                `keras_hub.models.CausalLM.from_preset` downloads or
                `save_to_preset` writes (its `config.json`, `tokenizer.json`
                and `assets/tokenizer/`).

        Returns:
            A `PresetTokenizer`.

        Raises:
            FileNotFoundError: `directory` does not exist.
            ValueError: it holds no readable keras-hub tokenizer.
        """
        import keras_hub

        directory = _check_directory(directory, "PresetTokenizer.from_preset")
        try:
            # An absolute path: keras-hub reads a bare name such as
            # "gpt2_base_en" as a built-in preset to download.
            hub = keras_hub.tokenizers.Tokenizer.from_preset(os.path.abspath(directory))
        except Exception as e:  # keras-hub raises many kinds; one line for all
            raise ValueError(
                f"{directory} is not a keras-hub preset with a tokenizer (expected config.json, "
                f"tokenizer.json and assets/tokenizer/): {_one_line(e)}"
            ) from None
        return cls(hub)

    @classmethod
    def from_tokenizer_directory(cls, directory, fingerprint=None):
        """Reads a tokenizer written by keras-hub's `Tokenizer.save_to_preset`.

        That directory holds `tokenizer.json` and `assets/tokenizer/` but no
        `config.json`, which `keras_hub.tokenizers.Tokenizer.from_preset`
        requires; so the config is deserialized here and the assets loaded
        with the tokenizer's own `load_preset_assets`.

        Args:
            directory: str. The directory `save` (or `save_to_preset`) wrote.
            fingerprint: str or None. If given, the tokenizer read must have
                this `fingerprint()` (checked before it is traced). Defaults
                to `None`.

        Returns:
            A `PresetTokenizer`.
        """
        import keras
        import keras_hub  # noqa: F401  (registers the keras-hub classes)

        directory = _check_directory(directory, "PresetTokenizer")
        path = os.path.join(directory, _HUB_CONFIG)
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            hub = keras.saving.deserialize_keras_object(config)
            hub.load_preset_assets(os.path.abspath(directory))
        except Exception as e:  # a missing, torn or foreign file: one line
            raise ValueError(f"{path} is not a readable keras-hub tokenizer: {_one_line(e)}") from None
        if fingerprint is not None and fingerprint != _fingerprint(hub):
            raise ValueError(
                f"{directory} is not the tokenizer tokenizer.json describes (its vocabulary files differ); "
                "restore the run's tokenizer_preset folder."
            )
        return cls(hub)

    # -- ids ----------------------------------------------------------------------

    @property
    def vocabulary_size(self):
        return NUM_RESERVED + self._hub_size

    def tokenize(self, strings):
        """Maps `tf.string [B]` to ragged int32 ids `[B, None]` (a scalar to `[None]`).

        A hub id outside the vocabulary (keras-hub's byte-pair tokenizer
        gives -1 for a piece it cannot find) becomes `[UNK]`.
        """
        strings = _to_string_tensor(strings)
        if strings.shape.rank == 0:
            return self.tokenize(strings[None])[0]
        ids = self._call_hub("_tokenize_graph", strings)
        if not isinstance(ids, tf.RaggedTensor):  # a tokenizer with dense output rows
            ids = tf.RaggedTensor.from_tensor(ids)
        return tf.ragged.map_flat_values(
            lambda x: tf.where(x < 0, UNK_ID, tf.cast(x, tf.int32) + NUM_RESERVED), ids
        )

    def detokenize(self, ids):
        """Maps our int ids `[B, T]` (dense or ragged) to `tf.string [B]`.

        Our reserved ids (PAD, BOS, EOS, UNK, SEP) and ids outside the
        vocabulary are dropped; the rest go back to hub ids for the hub's
        own detokenizer. Byte-level tokens can end mid-character (a reply
        cut at its last column, a sampled stray byte): invalid UTF-8 becomes
        U+FFFD, as keras-hub's Python path and Python's
        `bytes.decode(errors="replace")` do, so the text always decodes.
        """
        ids = _as_ragged_ids(ids)
        keep = (ids >= NUM_RESERVED) & (ids < self.vocabulary_size)
        ids = tf.ragged.boolean_mask(ids, keep) - NUM_RESERVED
        text = self._call_hub("_detokenize_graph", ids)
        return tf.strings.unicode_transcode(
            text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        )

    def token_map(self):
        """The hub ids that our reserved ids stand for, and the hub vocabulary size.

        - `bos`: the hub start token (GPT-2: `<|endoftext|>`), or the end
          token for tokenizers without one (Qwen);
        - `eos`: the hub end token;
        - `pad`: the hub pad token, else the end token (a padded position is
          masked, so any valid id does);
        - `unk`: the hub unknown token, else the end token (our `[UNK]` is
          never fed to the model as text anyway);
        - `sep`: the hub id of `"\\n"` when a newline is one token, else the
          end token;
        - `size`: the hub vocabulary size.

        Returns:
            dict of str to int: `{"pad", "bos", "eos", "unk", "sep", "size"}`.
        """
        return dict(self._token_map)

    def _find_token_map(self):
        hub = self.tokenizer
        label = type(hub).__name__
        eos = _hub_id(hub, "end_token_id")
        if eos is None:
            raise ValueError(
                f"{label} has no end token (end_token_id), which a causal language model "
                "needs to end a reply; use the tokenizer of a CausalLM preset."
            )
        bos = _hub_id(hub, "start_token_id")
        pad = _hub_id(hub, "pad_token_id")
        # SentencePiece keeps its unknown id private (`_unk_token_id`);
        # byte-pair tokenizers have none (every byte is a token).
        unk = _hub_id(hub, "unk_token_id")
        if unk is None:
            unk = _hub_id(hub, "_unk_token_id")
        newline = self._tokenize_graph(tf.constant(["\n"]))
        newline = tf.reshape(getattr(newline, "flat_values", newline), [-1]).numpy()
        sep = int(newline[0]) if newline.size == 1 and newline[0] >= 0 else None
        token_map = {
            "pad": eos if pad is None else pad,
            "bos": eos if bos is None else bos,
            "eos": eos,
            "unk": eos if unk is None else unk,
            "sep": eos if sep is None else sep,
            "size": self._hub_size,
        }
        for key, value in token_map.items():
            if key != "size" and not 0 <= value < self._hub_size:
                raise ValueError(
                    f"{label}: its {key} token id {value} is outside its vocabulary of {self._hub_size}."
                )
        return token_map

    # -- persistence --------------------------------------------------------------

    def fingerprint(self):
        """A SHA-256 of the hub tokenizer's config and vocabulary files (hex str).

        Two tokenizers with the same fingerprint give the same ids; a run
        directory uses it to notice a different tokenizer.
        """
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.tokenizer)
        return self._fingerprint

    def get_config(self):
        """What `save_tokenizer` writes to `tokenizer.json` (JSON-safe)."""
        return {
            "kind": self.kind,
            "directory": PRESET_SUBDIR,
            "class_name": type(self.tokenizer).__name__,
            "token_map": self.token_map(),
            "fingerprint": self.fingerprint(),
        }

    def save(self, directory):
        """Writes the hub tokenizer to `directory/tokenizer_preset`, replacing it whole.

        keras-hub's `Tokenizer.save_to_preset` writes `tokenizer.json` and
        `assets/tokenizer/` only. The copy is written next to the target
        and renamed into place, so a crash leaves either the old copy or the
        new one, never half of one.

        Args:
            directory: str. The run directory.

        Returns:
            dict: `get_config()`, for `tokenizer.json`.
        """
        target = os.path.join(directory, PRESET_SUBDIR)
        tmp, old = f"{target}.tmp", f"{target}.old"
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            self.tokenizer.save_to_preset(tmp)
            if os.path.isdir(target):
                os.replace(target, old)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        return self.get_config()

    @classmethod
    def load(cls, directory, config):
        """Rebuilds the tokenizer `save` wrote; checks it against `config`.

        Args:
            directory: str. The run directory.
            config: dict. The `tokenizer.json` entries (without `"kind"`).

        Returns:
            A `PresetTokenizer`.
        """
        subdir = config.get("directory", PRESET_SUBDIR)
        if not isinstance(subdir, str) or os.path.isabs(subdir) or ".." in subdir.split("/"):
            raise ValueError(f"tokenizer.json: 'directory' must be a folder inside the run; got {subdir!r}.")
        path = os.path.join(directory, subdir)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"No tokenizer found: {path} (the run's preset tokenizer) does not exist.")
        return cls.from_tokenizer_directory(path, fingerprint=config.get("fingerprint"))
