"""The `keras-selffb train` pipeline: data -> tokenizer -> MLE -> self-feedback rounds -> report.

Everything a run produces goes to its run directory:

    .keras-selffb-run marks the directory as a run (JSON: the version that
                      made it and the data's fingerprint: size and sha256)
    tokenizer.json    the trained tokenizer
    config.yaml       the resolved settings (read back by `generate`, `--resume`)
    policy_mle.keras  the policy after MLE warm-up (mle.json: its figures)
    policy.keras      the final policy
    metrics.json      perplexities, per-round metrics, timings, sample replies
    history.csv       MLE per-epoch logs; curves.png the same as a plot
    rounds.png        validation metrics per self-feedback round
    rl_history.csv    (and filtered_/contrastive_history.csv) per-epoch logs
                      of each round's adjust phase
    logs/             TensorBoard event files (mle/, rl/, rounds/ ...)
    checkpoints/      epoch and round checkpoints (see below)

A run that is killed (even with SIGKILL) resumes when the same command is
run again, from its last checkpoint: the last finished MLE epoch, or inside
the self-feedback loop the last finished round, epoch of a round, or set of
scored candidates. Every random draw is derived from the seed and the
epoch/round number, so a resumed run ends with the same numbers as an
uninterrupted one (tests/test_resume.py checks this with SIGKILL).
Settings that differ from the run directory's `config.yaml`, and data
whose size or sha256 differs from the fingerprint in the marker, are
refused before anything is written (no file of the run changes) rather
than mixed into the old run: use `fresh=True` (`--fresh`) or another name.

Everything is validated before the first write: the data (readable, not
empty, non-empty splits), the settings, and the run directory. A new run
goes only into a new or empty directory; `fresh=True` deletes only a
directory holding the marker. A directory made by a version before the
marker (no marker, but `config.yaml` and nothing a run does not write) is
taken as a run: it resumes (its data is then checked by its
`tokenizer.json`, and the marker is added) and `fresh=True` may delete it.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf
import yaml

from keras_selffb.config import TrainConfig
from keras_selffb.data import load_chatterbot, load_pairs, split_pairs
from keras_selffb.distribute import data_sharding_options, get_strategy, is_chief, read_tf_config
from keras_selffb.models import CausalLMPolicy, PolicyNetwork, ResponseGenerator, causal_lm_policy, frozen_copy
from keras_selffb.models.causal_lm_policy import KINDS as CAUSAL_LM_KINDS
from keras_selffb.text import load_tokenizer, make_dataset, pack_pairs, save_tokenizer, train_tokenizer
from keras_selffb.evaluation import evaluate_policy
from keras_selffb.loop import SelfFeedbackLoop
from keras_selffb.training import MLETrainer, run_contrastive_stage, unigram_perplexity
from keras_selffb.training.checkpoint import epoch_order, fit_resumable, write_json

POLICY_FILE = "policy.keras"
MLE_POLICY_FILE = "policy_mle.keras"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
RUN_MARKER = ".keras-selffb-run"  # in every run directory: `--fresh` deletes only directories holding it
# Settings that change nothing a checkpoint holds: a run may resume under new values.
# (The model settings, `model`, `num_heads`, `lora_rank` and the sizes, are not.)
_RESUME_FREE = ("name", "output", "num_samples", "sampler")
# The policies `build_policy` makes (`TrainConfig.model`).
POLICY_KINDS = ("lstm", *CAUSAL_LM_KINDS)


def read_pairs(config):
    """The run's `(prompt, response)` pairs: its data file, or the embedded corpus."""
    return load_pairs(config.data) if config.data else load_chatterbot(config.language)


def load_data(config, pairs=None):
    """Loads and splits the run's pairs: `(train, validation, test, duplicates)`.

    Exact duplicate (prompt, response) pairs are dropped first (with
    `config.deduplicate`): the embedded English corpus holds 2,377 pairs
    of which only 1,243 are distinct (ten tech-support pairs repeat 88-121
    times each), and a duplicate adds only weight, and lets one pair
    dominate a validation score. `pairs`: those of `read_pairs(config)`,
    when already read.
    """
    pairs = read_pairs(config) if pairs is None else pairs
    duplicates = 0
    if config.deduplicate:
        distinct = list(dict.fromkeys(pairs))
        duplicates, pairs = len(pairs) - len(distinct), distinct
    train, validation, test = split_pairs(
        pairs, config.seed, config.validation_fraction, config.test_fraction
    )
    if not validation:
        raise ValueError(
            f"The validation split is empty ({len(pairs)} examples, "
            f"validation_fraction={config.validation_fraction}); use more data "
            "or a larger validation_fraction."
        )
    return train, validation, test, duplicates


def _verbosity(verbose):
    if verbose is None:
        return 1 if sys.stdout.isatty() else 2
    return verbose


def build_policy(config, vocab_size):
    """The run's untrained policy, from `config.model` and its sizes.

    `"lstm"`: the article's `PolicyNetwork` (`embedding_dim`, `hidden_dim`,
    `num_layers`, `dropout`). `"gpt2"`, `"llama"`: a keras-hub transformer
    with random weights (`causal_lm_policy`: `hidden_dim` wide, `num_layers`
    blocks, `num_heads` heads, dropout 0, `prompt_length + response_length`
    positions), seeded with `config.seed`. LoRA is not enabled here: see
    `enable_lora`.
    """
    if config.model == "lstm":
        return PolicyNetwork(
            vocab_size,
            embedding_dim=config.embedding_dim,
            hidden_dim=config.hidden_dim,
            num_layers=config.num_layers,
            dropout=config.dropout,
        )
    return causal_lm_policy(
        config.model,
        vocab_size,
        num_layers=config.num_layers,
        hidden_dim=config.hidden_dim,
        num_heads=config.num_heads,
        max_sequence_length=config.prompt_length + config.response_length,
        seed=config.seed,
    )


def enable_lora(config, policy):
    """Switches LoRA on for the stages after MLE when `config.lora_rank > 0`.

    The transformer of a run starts from random weights, so MLE trains all
    of them (LoRA on a random base would only train a low-rank model); the
    self-feedback rounds and the contrastive stage then train only the
    LoRA weights, and the KL reference is the MLE model itself, the same
    weights with LoRA switched off (`policy.reference()`). Returns `policy`.
    """
    if config.lora_rank and not getattr(policy, "lora_rank", None):
        policy.enable_lora(config.lora_rank)
    return policy


def model_record(config, policy):
    """`metrics.json`'s `"model"`: kind, parameter counts and LoRA rank."""
    return {
        "kind": config.model,
        "parameters": int(policy.count_params()),
        "trainable_parameters": int(sum(int(np.prod(w.shape)) for w in policy.trainable_weights)),
        "lora_rank": config.lora_rank,
    }


def train_mle(config, train_packed, validation_packed, vocab_size, verbose=None, callbacks=()):
    """Builds the policy and fits it by MLE; returns `(policy, trainer, history, seconds)`.

    Through `fit_resumable` (checkpoints in `checkpoints/mle/`): the data
    order of epoch `e` depends only on `(seed, e)`, and early stopping on
    validation perplexity keeps the best epoch's weights, across restarts
    too. `callbacks` (e.g. EarlyStopping) join TensorBoard and
    TerminateOnNaN; any of them may stop training.
    """
    run_dir = config.run_dir
    policy = build_policy(config, vocab_size)
    trainer = MLETrainer(policy, prompt_length=config.prompt_length)
    trainer.build((None, config.prompt_length + config.response_length))
    # No XLA: measured here, jit_compile=True made the masked-LSTM step
    # about 1.4-2x slower on CPU (0.64-0.91 s vs 1.28 s per batch of 32).
    trainer.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=1.0), jit_compile=False
    )
    train_packed = np.asarray(train_packed, np.int32)

    def epoch_data(epoch):
        rows = train_packed[epoch_order(len(train_packed), config.seed, epoch)]
        return make_dataset(rows, config.batch_size).with_options(data_sharding_options())

    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        *callbacks,
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs", "mle")),
    ]
    start = time.perf_counter()
    result = fit_resumable(
        trainer, epoch_data, config.epochs, os.path.join(run_dir, CHECKPOINT_DIR, "mle"),
        validation_data=make_dataset(validation_packed, config.batch_size),
        callbacks=callbacks,
        csv_path=os.path.join(run_dir, "history.csv"),
        # The corpus is small and validation prompts are unseen: keep the
        # epoch with the best validation perplexity.
        monitor="val_perplexity", mode="min", patience=config.patience,
        verbose=_verbosity(verbose),
    )
    if result["resumed_from"]:
        print(f"MLE resumed after epoch {result['resumed_from']}")
    if not all(np.isfinite(w).all() for w in policy.get_weights()):
        raise ValueError(
            f"MLE diverged: the policy's weights are NaN or inf after epoch {result['epochs_done']} "
            f"(learning_rate={config.learning_rate}); lower learning_rate and start again with --fresh."
        )
    return policy, trainer, result["history"], time.perf_counter() - start


def make_reward(config, tokenizer, reference_policy):
    """The RL stage's reward, by name (`config.rl_reward`)."""
    from keras_selffb import rewards

    if config.rl_reward == "rouge_l":
        return rewards.RougeLReward(tokenizer)
    if config.rl_reward == "bleu":
        return rewards.BleuReward(tokenizer)
    return rewards.article_reward(reference_policy, tokenizer=tokenizer)


def build_loop(config, policy, tokenizer, train, validation, verbose=None, callbacks=()):
    """The `SelfFeedbackLoop` of a run, from its config; `callbacks` go to every round's `fit`.

    The KL reference (and the `"article"` reward's language model) is the
    policy as it is now, after MLE: with LoRA on, the same model with LoRA
    switched off (`policy.reference()`), otherwise a frozen copy.
    """
    reference = policy.reference() if config.lora_rank else frozen_copy(policy)
    methods = tuple(m.strip() for m in config.feedback_methods.split(","))
    return SelfFeedbackLoop(
        policy,
        tokenizer,
        make_reward(config, tokenizer, reference),
        train,
        validation,
        config.prompt_length,
        config.response_length,
        methods=methods,
        rounds=config.feedback_rounds,
        num_samples=config.rl_samples,
        temperature=config.rl_temperature,
        threshold_quantiles=tuple(
            min(1.0, config.filter_quantile + r * config.filter_quantile_step)
            for r in range(config.feedback_rounds)
        ),
        epochs_per_round=config.filter_epochs,
        rl_steps=config.rl_steps,
        contrastive_steps=config.rl_steps,
        batch_size=config.batch_size,
        rl_batch_size=config.rl_batch_size,
        learning_rate=config.filter_learning_rate,
        rl_learning_rate=config.rl_learning_rate,
        rl_options={
            "baseline": config.rl_baseline,
            "kl_coef": config.rl_kl_coef,
            "reference_policy": reference if config.rl_kl_coef > 0 else None,
            "gamma": config.rl_gamma,
            "include_greedy": config.rl_include_greedy,
        },
        monitor=config.feedback_monitor,
        target=config.feedback_target,
        mode="min" if config.feedback_monitor == "val_perplexity" else "max",
        directory=os.path.join(config.run_dir, CHECKPOINT_DIR, "loop"),
        log_dir=config.run_dir,
        seed=config.seed,
        callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks],
        verbose=_verbosity(verbose),
    )


# Everything a run writes into its directory (plus `*history.csv` and `*.tmp`).
_RUN_ENTRIES = frozenset({
    RUN_MARKER, CONFIG_FILE, "tokenizer.json", POLICY_FILE, MLE_POLICY_FILE, "mle.json", METRICS_FILE,
    "curves.png", "rounds.png", "logs", CHECKPOINT_DIR,
})


def _is_run_entry(name):
    return name in _RUN_ENTRIES or name.endswith(("history.csv", ".tmp"))


def _listing(names, limit=3):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def data_fingerprint(config, pairs=None):
    """What identifies the run's data: `{"source", "size", "sha256"}`.

    Of a data file, its bytes; of the embedded corpus, its pairs as JSON
    (`pairs`: those already read, or they are read again).
    """
    digest, size = hashlib.sha256(), 0
    if config.data:
        with open(config.data, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        source = config.data
    else:
        data = json.dumps(read_pairs(config) if pairs is None else pairs, ensure_ascii=False).encode("utf-8")
        digest.update(data)
        size, source = len(data), f"chatterbot-corpus ({config.language})"
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


def run_train(config=None, verbose=None, fresh=False, strategy=None, callbacks=()):
    """Runs (or resumes) the whole pipeline for `config`; returns the metrics dict.

    Stages: tokenizer -> MLE warm-up (resumable per epoch; skipped when a
    finished `policy_mle.keras` exists) -> self-feedback rounds
    (`feedback_rounds > 0`: RL, filtered self-training and/or contrastive,
    resumable per round and epoch) -> contrastive ranking stage
    (`contrastive_epochs > 0`) -> report.

    Args:
        config: a `TrainConfig`. Defaults to the default settings.
        verbose: `fit` verbosity; None picks a progress bar on a terminal.
        fresh: bool. Delete an existing run in the run directory first.
        strategy: a `tf.distribute.Strategy` to use instead of
            `config.strategy`. Everything (policy, trainers, optimizers,
            metrics) is created in its scope.
        callbacks: Keras callbacks for MLE and for every self-feedback
            round (e.g. `EarlyStopping`); their state is checkpointed with
            the run, and any of them may stop a stage (see
            `fit_resumable` and `SelfFeedbackLoop(callbacks=...)`).
    """
    config = config or TrainConfig()
    # First: MultiWorkerMirroredStrategy must exist before any TF op runs.
    strategy = get_strategy(strategy or config.strategy)
    if not is_chief(strategy):
        # Workers other than the chief compute the same steps but write to
        # a directory of their own, so they never clobber the chief's files.
        worker = read_tf_config()["task"]["index"]
        config = dataclasses.replace(config, output=f"{config.run_dir.rstrip(os.sep)}.worker_{worker}")
    if strategy is not tf.distribute.get_strategy():  # not the default, one-device strategy
        print(f"strategy: {type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s); global "
              f"batch {config.batch_size} (MLE), {config.rl_batch_size} prompts (RL)")
    else:
        print(f"strategy: one device, {strategy.num_replicas_in_sync} replica(s)")
    with strategy.scope():
        return _run_train(config, verbose, fresh, list(callbacks))


def _run_train(config, verbose, fresh, callbacks=()):
    keras.utils.set_random_seed(config.seed)
    run_dir = config.run_dir
    # Everything is checked before the first write (and before --fresh deletes
    # anything): the output location, the data, the run directory against
    # these settings and this data, and the tokenizer against the saved one.
    check_output_location(config)
    pairs = read_pairs(config)
    train, validation, test, duplicates = load_data(config, pairs)
    fingerprint = data_fingerprint(config, pairs)
    kind = _check_run_directory(config, fresh, fingerprint)
    texts = [text for pair in train for text in pair]
    tokenizer = train_tokenizer(texts, config.tokenizer, config.vocabulary_size)
    same_tokenizer = not fresh and _check_tokenizer(run_dir, tokenizer)
    pack = lambda pairs: pack_pairs(tokenizer, pairs, config.prompt_length, config.response_length)  # noqa: E731
    train_packed, validation_packed = pack(train), pack(validation)

    if fresh and kind in ("run", "legacy"):
        print(f"--fresh: deleting the old run in {run_dir}")
        shutil.rmtree(run_dir)
    elif kind == "legacy":
        print(f"{run_dir}: a run of an earlier keras-selffb (no {RUN_MARKER}); its data is checked by its "
              "tokenizer, and the marker is added")
    _create_run_directory(config, fingerprint)
    if not same_tokenizer:
        save_tokenizer(tokenizer, run_dir)
    report = {
        "examples": {"train": len(train), "validation": len(validation), "test": len(test),
                     "duplicates_dropped": duplicates},
        "vocabulary_size": tokenizer.vocabulary_size,
    }

    mle_path = os.path.join(run_dir, MLE_POLICY_FILE)
    if os.path.exists(mle_path) and os.path.exists(os.path.join(run_dir, "mle.json")):
        print(f"MLE stage already finished: loading {mle_path}")
        policy = keras.saving.load_model(mle_path)
        with open(os.path.join(run_dir, "mle.json"), encoding="utf-8") as f:
            report["mle"] = json.load(f)
    else:
        policy, trainer, history, seconds = train_mle(
            config, train_packed, validation_packed, tokenizer.vocabulary_size, verbose, callbacks
        )
        report["mle"] = {"epochs": len(history["loss"]), "seconds": round(seconds, 1)}
        splits = {"validation": validation_packed, **({"test": pack(test)} if test else {})}
        for split, packed in splits.items():
            result = trainer.evaluate(make_dataset(packed, config.batch_size), verbose=0, return_dict=True)
            report["mle"][f"{split}_perplexity"] = float(result["perplexity"])
            report["mle"][f"{split}_unigram_perplexity"] = unigram_perplexity(
                train_packed, packed, config.prompt_length, tokenizer.vocabulary_size
            )
        plot_curves(history, os.path.join(run_dir, "curves.png"))
        save_policy(policy, mle_path)
        write_json(os.path.join(run_dir, "mle.json"), report["mle"])  # last: marks the stage done

    enable_lora(config, policy)
    report["model"] = model_record(config, policy)
    lengths = (config.prompt_length, config.response_length)
    if config.feedback_rounds > 0:
        loop = build_loop(config, policy, tokenizer, train, validation, verbose, callbacks)
        start = time.perf_counter()
        rounds = loop.run()
        report["rounds"] = rounds
        report["feedback"] = {
            "methods": list(loop.methods), "seconds": round(time.perf_counter() - start, 1),
            "rounds": len(rounds) - 1, "target": config.feedback_target, "monitor": config.feedback_monitor,
        }
        evaluation = {_stage_name(r): _round_scores(r["metrics"]) for r in rounds}
        plot_rounds(rounds, os.path.join(run_dir, "rounds.png"))
    else:
        evaluation = {"mle": _scores(evaluate_policy(policy, tokenizer, validation, *lengths))}
    if config.contrastive_epochs > 0:
        report["contrastive"] = run_contrastive_stage(
            policy, tokenizer, train_packed, validation_packed, *lengths,
            epochs=config.contrastive_epochs, seed=config.seed, mode=config.contrastive_mode,
            verbose=_verbosity(verbose),
        )
        if config.contrastive_mode == "sequence_likelihood":  # the policy changed
            evaluation["contrastive"] = _scores(evaluate_policy(policy, tokenizer, validation, *lengths))
    report["validation"] = evaluation
    save_policy(policy, os.path.join(run_dir, POLICY_FILE))

    first_reply = {}
    for prompt, reference in validation:
        first_reply.setdefault(prompt, reference)  # distinct prompts, in order
    samples = list(first_reply.items())[: config.num_samples]
    generator = ResponseGenerator(
        policy, tokenizer, config.prompt_length, config.response_length, config.sampler, seed=config.seed
    )
    replies = generator([p for p, _ in samples], seed=config.seed)
    report["samples"] = [
        {"prompt": p, "reference": r, "reply": g} for (p, r), g in zip(samples, replies)
    ]
    write_json(os.path.join(run_dir, METRICS_FILE), report)
    return report


def save_policy(policy, path):
    """`policy.save(path)` through a temporary file: a crash never leaves half a `.keras`."""
    tmp = f"{path[: -len('.keras')]}.tmp.keras"
    policy.save(tmp)
    os.replace(tmp, path)


def _stage_name(record):
    return "mle" if record["round"] == 0 else f"round {record['round']}"


def _round_scores(metrics):
    return {k.removeprefix("val_"): round(v, 4) for k, v in metrics.items()}


def rounds_figure(rounds):
    """The validation metrics per self-feedback round, one axis per scale.

    ROUGE-L, the reward and any other 0-1 metric share the first axis, BLEU
    (0-100) has the second and perplexity the third, so no curve is
    flattened against another one's scale. Returns a matplotlib `Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = rounds[0]["metrics"]
    panels = [
        ("validation ROUGE-L and reward (0-1)", [k for k in metrics if k not in ("val_bleu", "val_perplexity")]),
        ("validation BLEU (0-100)", [k for k in metrics if k == "val_bleu"]),
        ("validation perplexity (per token)", [k for k in metrics if k == "val_perplexity"]),
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    x = [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    colors = {"val_bleu": "tab:green", "val_perplexity": "tab:red"}
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            ax.plot(x, [r["metrics"][key] for r in rounds], marker="o", label=key.removeprefix("val_"),
                    color=colors.get(key))
        ax.set_title(title)
        ax.set_xlabel("round (0 = after MLE)")
        ax.set_xticks(x)
        if len(keys) > 1:
            ax.legend()
    fig.tight_layout()
    return fig


def plot_rounds(rounds, path):
    """Writes `rounds_figure(rounds)` as a PNG (atomically: temporary file, then rename)."""
    import matplotlib.pyplot as plt

    fig = rounds_figure(rounds)
    try:
        fig.savefig(f"{path}.tmp", dpi=100, format="png")
        os.replace(f"{path}.tmp", path)
    finally:
        plt.close(fig)
    return path


def _scores(result):
    return {k: round(v, 4) for k, v in result.items() if k != "replies"}


def plot_curves(history, path):
    """Writes train/validation perplexity per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["perplexity"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, history["perplexity"], marker="o", label="train")
    if "val_perplexity" in history:
        ax.plot(epochs, history["val_perplexity"], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (per token)")
    ax.set_yscale("log")
    ax.set_title("MLE training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
