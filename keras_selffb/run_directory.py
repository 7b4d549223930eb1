"""A run directory: what is in it, what may be written or deleted, and loading it back.

A run directory (`runs/<name>/` or `--output`) holds everything a run of
`keras-selffb train` writes (the list is in `keras_selffb.pipeline`), and a
marker file, `.keras-selffb-run` (JSON: the version that made it and the
data's fingerprint, size and sha256), that makes it a run.

The rules that keep a user's files safe:

- Everything is validated before the first write: the output location, the
  settings against the directory's `config.yaml`, the data against the
  fingerprint in the marker, the tokenizer against `tokenizer.json`. A
  refused rerun changes no file.
- A new run goes only into a new or empty directory; `--fresh` deletes
  only a directory that holds the marker, never its parent, never the
  directory that holds the data or the current directory.
- A directory made by a version before the marker (no marker, but
  `config.yaml` and nothing a run does not write) is taken as a run: it
  resumes (its data is then checked by its `tokenizer.json`, and the marker
  is added), and `--fresh` may delete it.
- Files are written to a temporary name and renamed into place.
"""

import hashlib
import json
import os
import shutil
import time

import keras
import tensorflow as tf
import yaml

from keras_selffb.config import TrainConfig
from keras_selffb.models import CausalLMPolicy, PolicyNetwork
from keras_selffb.text import load_tokenizer

POLICY_FILE = "policy.keras"
MLE_POLICY_FILE = "policy_mle.keras"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
RUN_MARKER = ".keras-selffb-run"  # in every run directory: `--fresh` deletes only directories holding it
# Settings that change nothing a checkpoint holds: a run may resume under new values.
# (The model settings, `model`, `num_heads`, `lora_rank` and the sizes, are not.)
_RESUME_FREE = ("name", "output", "num_samples", "sampler")


# Everything a run writes into its directory (plus `*history.csv` and `*.tmp`).
_RUN_ENTRIES = frozenset({
    RUN_MARKER, CONFIG_FILE, "tokenizer.json", POLICY_FILE, MLE_POLICY_FILE, "mle.json", METRICS_FILE,
    "curves.png", "rounds.png", "logs", CHECKPOINT_DIR,
    "tokenizer_preset", "tokenizer_preset.old",  # a --preset run's tokenizer (text.PresetTokenizer.save)
})


def _is_run_entry(name):
    return name in _RUN_ENTRIES or name.endswith(("history.csv", ".tmp"))


def _listing(names, limit=3):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def data_fingerprint(config, pairs):
    """What identifies the run's data: `{"source", "size", "sha256"}`.

    Of a data file, its bytes; of the embedded corpus, its pairs as JSON
    (`pairs`, the pairs the run read).
    """
    digest, size = hashlib.sha256(), 0
    if config.data:
        with open(config.data, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        source = config.data
    else:
        data = json.dumps(pairs, ensure_ascii=False).encode("utf-8")
        digest.update(data)
        corpus = "chitchat-dataset" if config.corpus == "chitchat" else f"chatterbot-corpus ({config.language})"
        size, source = len(data), corpus
    return {"source": source, "size": size, "sha256": digest.hexdigest()}


def read_marker(run_dir):
    """The marker of a run directory as a dict; None without one, {} if unreadable."""
    path = os.path.join(run_dir, RUN_MARKER)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def run_directory_kind(run_dir):
    """What `run_dir` is: "missing", "file", "empty", "run" (it holds the
    marker), "legacy" (no marker, but `config.yaml` with `tokenizer.json`,
    checkpoints or a policy: made by a version before the marker) or
    "other" (a directory that is not a run)."""
    if not os.path.lexists(run_dir):
        return "missing"
    if not os.path.isdir(run_dir):
        return "file"
    entries = os.listdir(run_dir)
    if not entries:
        return "empty"
    if RUN_MARKER in entries:
        return "run"
    if CONFIG_FILE in entries and {"tokenizer.json", CHECKPOINT_DIR, POLICY_FILE, MLE_POLICY_FILE} & set(entries):
        return "legacy"
    return "other"


def check_output_location(config):
    """Refuses a run directory that cannot be one, before anything is written.

    The name must stay inside `runs/`; the directory, or the nearest of its
    parents that exists, must be a writable directory.
    """
    run_dir = config.run_dir
    if config.output is None:
        name = config.name.strip()
        inside = os.path.normpath(os.path.join("runs", config.name))
        if not name or os.path.isabs(config.name) or inside == "runs" or not inside.startswith("runs" + os.sep):
            raise ValueError(
                f"Run name {config.name!r} is not a name for a directory inside runs/: use a plain "
                "name such as 'exp1' (or --output DIR for a directory elsewhere)."
            )
    elif not config.output.strip():
        raise ValueError("The run directory (--output) is empty: give a directory.")
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"The run directory {run_dir} is a file, not a directory: choose another --output.")
    probe = os.path.abspath(run_dir)
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"Cannot create the run directory {run_dir}: {probe} is a file, not a directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(probe).f_flag & getattr(os, "ST_RDONLY", 1)
        raise ValueError(
            f"Cannot write the run directory {run_dir}: {probe} is "
            f"{'on a read-only file system' if read_only else 'not writable'}."
        )


def _check_run_directory(config, fresh=False, fingerprint=None):
    """Validates the run directory for `config` without changing it; returns its kind."""
    run_dir = config.run_dir
    check_output_location(config)
    kind = run_directory_kind(run_dir)
    if kind in ("missing", "empty"):
        return kind
    entries = os.listdir(run_dir)
    if fresh:
        foreign = [e for e in entries if not _is_run_entry(e)]
        if kind == "other" or (kind == "legacy" and foreign):
            raise ValueError(
                f"--fresh deletes only keras-selffb run directories, and {run_dir} is not one (no "
                f"{RUN_MARKER} file; it holds {_listing(foreign or entries)}); nothing was deleted: "
                "delete it yourself or choose another --output/--name."
            )
        target = os.path.realpath(run_dir).rstrip(os.sep) + os.sep
        for what, path in (("the current directory", os.getcwd()), ("the data file", config.data)):
            if path and (os.path.realpath(path) + os.sep).startswith(target):
                raise ValueError(f"--fresh would delete {run_dir}, which holds {what}; nothing was deleted.")
        return kind
    if kind == "other":
        raise ValueError(
            f"{run_dir} is not empty and is not a keras-selffb run (no {RUN_MARKER} file; it holds "
            f"{_listing(entries)}): choose a new or empty --output, or another --name."
        )
    saved_path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.exists(saved_path):
        saved = TrainConfig.from_yaml(saved_path).to_dict()
        new = config.to_dict()
        changed = [
            f"{key}: {saved.get(key)!r} -> {new[key]!r}"
            for key in new
            if key not in _RESUME_FREE and saved.get(key) != new[key]
        ]
        if changed:
            raise ValueError(
                f"{run_dir} holds a run with other settings ({'; '.join(changed)}); nothing was changed. "
                "Resume it with its own settings (--resume), start it over with --fresh, or use another --name."
            )
    old = (read_marker(run_dir) or {}).get("data")
    if fingerprint is not None and isinstance(old, dict) and (
        old.get("size"), old.get("sha256")) != (fingerprint["size"], fingerprint["sha256"]
    ):
        raise ValueError(
            f"{run_dir} was trained on other data: {fingerprint['source']} is now {fingerprint['size']} bytes "
            f"(sha256 {fingerprint['sha256'][:12]}), the run's was {old.get('size')} bytes (sha256 "
            f"{str(old.get('sha256'))[:12]}); nothing was changed. Restore the run's data, start over with "
            "--fresh, or use another --name."
        )
    return kind


def check_resumable(config, fresh=False, fingerprint=None):
    """Refuses to mix a run directory's checkpoints with other settings or data.

    Refuses (ValueError, nothing changed) a directory that is not a run and
    not empty, settings that differ from its `config.yaml`, and data whose
    `fingerprint` (`data_fingerprint`) differs from the one in its marker.
    With `fresh=True` the old run is deleted instead, if the directory is a
    run (see the module docstring); a directory that is not is refused.
    """
    kind = _check_run_directory(config, fresh, fingerprint)
    if fresh and kind in ("run", "legacy"):
        shutil.rmtree(config.run_dir)
    return kind


def _check_tokenizer(run_dir, tokenizer):
    """Refuses a tokenizer that differs from the one the run saved."""
    path = os.path.join(run_dir, "tokenizer.json")
    if not os.path.exists(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except ValueError:
        return False  # torn by a crash: rewritten
    if saved != json.loads(json.dumps(tokenizer.get_config(), ensure_ascii=False)):
        raise ValueError(
            f"{run_dir} was trained on other data: its tokenizer.json differs from the tokenizer of the "
            "data now; nothing was changed. Restore the run's data, start over with --fresh, or use "
            "another --name."
        )
    return True


def _write_text(path, text):
    """Writes `text` to `path` atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):  # a full disk: leave no half-written file behind
            os.remove(tmp)
        raise


def _create_run_directory(config, fingerprint):
    """Creates the run directory (or adopts an existing run): marker and config.yaml."""
    from keras_selffb import __version__

    run_dir = config.run_dir
    os.makedirs(run_dir, exist_ok=True)
    marker = read_marker(run_dir)
    if not marker or marker.get("data") != fingerprint:
        _write_text(os.path.join(run_dir, RUN_MARKER), json.dumps({
            "keras_selffb": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data": fingerprint,
        }, ensure_ascii=False, indent=2) + "\n")
    settings = yaml.safe_dump(config.to_dict(), allow_unicode=True, sort_keys=False)
    config_path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(config_path, encoding="utf-8") as f:
            unchanged = f.read() == settings
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        _write_text(config_path, settings)


def save_policy(policy, path):
    """`policy.save(path)` through a temporary file: a crash never leaves half a `.keras`."""
    tmp = f"{path[: -len('.keras')]}.tmp.keras"
    policy.save(tmp)
    os.replace(tmp, path)


def load_run(run_dir):
    """Loads `(policy, tokenizer, config)` from a run directory.

    A missing file of the run raises a one-line `FileNotFoundError`; a
    corrupt, truncated or unreadable one (`config.yaml`, `tokenizer.json`,
    `policy.keras`) a one-line `ValueError` naming the file and what to do.
    """
    import zipfile

    retrain = ("retrain with `keras-selffb train` (the run's command again rewrites it "
               "from the run's checkpoints; --fresh starts over)")

    def flat(error):
        return " ".join(str(error).split()) or type(error).__name__

    def describe(error, path, problem):
        """`error` on one line, led by `path` and `problem` unless it names the path."""
        return flat(error) if path in flat(error) else f"{path} {problem} ({flat(error)})"

    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"Run directory not found: {run_dir}")
    policy_path = os.path.join(run_dir, POLICY_FILE)
    if not os.path.exists(policy_path):
        raise FileNotFoundError(
            f"{run_dir} has no {POLICY_FILE}: the run did not finish training. "
            "Run `keras-selffb train` with the same settings to resume it."
        )
    config_path = os.path.join(run_dir, CONFIG_FILE)
    tokenizer_path = os.path.join(run_dir, "tokenizer.json")
    for path, what in ((config_path, "settings"), (tokenizer_path, "tokenizer")):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{run_dir} has no {os.path.basename(path)} (the run's {what}); restore it "
                "or train the run again with `keras-selffb train --fresh`."
            )
    try:
        config = TrainConfig.from_yaml(config_path)
    except (ValueError, TypeError, OSError) as e:
        raise ValueError(
            f"{describe(e, config_path, 'is corrupt or invalid')}; restore it "
            "or train the run again with `keras-selffb train --fresh`."
        ) from None
    try:
        tokenizer = load_tokenizer(run_dir)
    except (ValueError, TypeError, AttributeError, KeyError, OSError, tf.errors.OpError) as e:
        raise ValueError(
            f"{describe(e, tokenizer_path, 'is corrupt or invalid')}; restore it "
            "or train the run again with `keras-selffb train --fresh`."
        ) from None
    # A .keras file is a zip archive: check every member's CRC first, so a
    # damaged file gets one clear line instead of an h5py/zip traceback (or
    # Keras' "File not found" for a truncated one).
    try:
        with zipfile.ZipFile(policy_path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise zipfile.BadZipFile(f"bad CRC-32 for {damaged}")
    except Exception as e:  # any failure to read the archive: it is damaged
        raise ValueError(
            f"{policy_path} is corrupt or truncated ({flat(e)}); {retrain}."
        ) from None
    try:
        policy = keras.saving.load_model(policy_path)
    except Exception as e:  # a sound archive Keras cannot rebuild a model from
        raise ValueError(
            f"{policy_path} could not be loaded ({type(e).__name__}: {flat(e)}); {retrain}."
        ) from None
    if not isinstance(policy, (PolicyNetwork, CausalLMPolicy)):
        raise ValueError(
            f"{policy_path} holds a {type(policy).__name__}, not a keras_selffb PolicyNetwork or "
            f"CausalLMPolicy; {retrain}."
        )
    if policy.vocab_size != tokenizer.vocabulary_size:
        raise ValueError(
            f"{run_dir}: the policy has {policy.vocab_size} ids but the tokenizer "
            f"{tokenizer.vocabulary_size}; the files come from different runs."
        )
    return policy, tokenizer, config
