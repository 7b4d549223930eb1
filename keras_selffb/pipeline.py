"""The `keras-selffb train` pipeline: data -> tokenizer -> MLE -> self-feedback rounds -> report.

Everything a run produces goes to its run directory:

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
Settings that differ from the run directory's `config.yaml` are refused
rather than mixed into the old run: use `fresh=True` (`--fresh`) or
another name.
"""

import dataclasses
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
from keras_selffb.models import PolicyNetwork, ResponseGenerator, frozen_copy
from keras_selffb.text import load_tokenizer, make_dataset, pack_pairs, save_tokenizer, train_tokenizer
from keras_selffb.evaluation import evaluate_policy
from keras_selffb.loop import SelfFeedbackLoop
from keras_selffb.training import MLETrainer, run_contrastive_stage, unigram_perplexity
from keras_selffb.training.checkpoint import epoch_order, fit_resumable

POLICY_FILE = "policy.keras"
MLE_POLICY_FILE = "policy_mle.keras"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
# Settings that change nothing a checkpoint holds: a run may resume under new values.
_RESUME_FREE = ("name", "output", "num_samples", "sampler")


def load_data(config):
    """Loads and splits the run's pairs: `(train, validation, test, duplicates)`.

    Exact duplicate (prompt, response) pairs are dropped first (with
    `config.deduplicate`): the embedded English corpus holds 2,377 pairs
    of which only 1,243 are distinct (ten tech-support pairs repeat 88-121
    times each), and a duplicate adds only weight, and lets one pair
    dominate a validation score.
    """
    pairs = load_pairs(config.data) if config.data else load_chatterbot(config.language)
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


def train_mle(config, train_packed, validation_packed, vocab_size, verbose=None):
    """Builds the policy and fits it by MLE; returns `(policy, trainer, history, seconds)`.

    Epoch by epoch through `fit_resumable` (checkpoints in
    `checkpoints/mle/`): the data order of epoch `e` depends only on
    `(seed, e)`, and early stopping on validation perplexity keeps the best
    epoch's weights, across restarts too.
    """
    run_dir = config.run_dir
    policy = PolicyNetwork(
        vocab_size,
        embedding_dim=config.embedding_dim,
        hidden_dim=config.hidden_dim,
        num_layers=config.num_layers,
        dropout=config.dropout,
    )
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
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs", "mle")),
    ]
    start = time.perf_counter()
    result = fit_resumable(
        trainer, epoch_data, config.epochs, os.path.join(run_dir, CHECKPOINT_DIR, "mle"),
        validation_data=make_dataset(validation_packed, config.batch_size),
        callbacks=callbacks,
        # The corpus is small and validation prompts are unseen: keep the
        # epoch with the best validation perplexity.
        monitor="val_perplexity", mode="min", patience=config.patience,
        verbose=_verbosity(verbose),
    )
    if result["resumed_from"]:
        print(f"MLE resumed after epoch {result['resumed_from']}")
    return policy, trainer, result["history"], time.perf_counter() - start


def make_reward(config, tokenizer, reference_policy):
    """The RL stage's reward, by name (`config.rl_reward`)."""
    from keras_selffb import rewards

    if config.rl_reward == "rouge_l":
        return rewards.RougeLReward(tokenizer)
    if config.rl_reward == "bleu":
        return rewards.BleuReward(tokenizer)
    return rewards.article_reward(reference_policy, tokenizer=tokenizer)


def build_loop(config, policy, tokenizer, train, validation, verbose=None):
    """The `SelfFeedbackLoop` of a run, from its config."""
    reference = frozen_copy(policy)
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
        verbose=_verbosity(verbose),
    )


def check_resumable(config, fresh=False):
    """Refuses to mix a run directory's checkpoints with other settings.

    With `fresh=True` the old run's outputs are deleted first.
    """
    run_dir = config.run_dir
    if fresh and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
        return
    saved_path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(saved_path) or not os.path.isdir(os.path.join(run_dir, CHECKPOINT_DIR)):
        return
    saved = TrainConfig.from_yaml(saved_path).to_dict()
    new = config.to_dict()
    changed = [
        f"{key}: {saved.get(key)!r} -> {new[key]!r}"
        for key in new
        if key not in _RESUME_FREE and saved.get(key) != new[key]
    ]
    if changed:
        raise ValueError(
            f"{run_dir} holds a run with other settings ({'; '.join(changed)}). Resume it with its "
            "own settings (--resume), start it over with --fresh, or use another --name."
        )


def run_train(config=None, verbose=None, fresh=False, strategy=None):
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
        return _run_train(config, verbose, fresh)


def _run_train(config, verbose, fresh):
    keras.utils.set_random_seed(config.seed)
    run_dir = config.run_dir
    check_resumable(config, fresh)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, allow_unicode=True, sort_keys=False)

    train, validation, test, duplicates = load_data(config)
    texts = [text for pair in train for text in pair]
    tokenizer = train_tokenizer(texts, config.tokenizer, config.vocabulary_size)
    save_tokenizer(tokenizer, run_dir)
    pack = lambda pairs: pack_pairs(tokenizer, pairs, config.prompt_length, config.response_length)  # noqa: E731
    train_packed, validation_packed = pack(train), pack(validation)
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
            config, train_packed, validation_packed, tokenizer.vocabulary_size, verbose
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
        policy.save(mle_path)
        with open(os.path.join(run_dir, "mle.json"), "w", encoding="utf-8") as f:
            json.dump(report["mle"], f, indent=2)

    lengths = (config.prompt_length, config.response_length)
    if config.feedback_rounds > 0:
        loop = build_loop(config, policy, tokenizer, train, validation, verbose)
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
    policy.save(os.path.join(run_dir, POLICY_FILE))

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
    with open(os.path.join(run_dir, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=2)
    return report


def _stage_name(record):
    return "mle" if record["round"] == 0 else f"round {record['round']}"


def _round_scores(metrics):
    return {k.removeprefix("val_"): round(v, 4) for k, v in metrics.items()}


def plot_rounds(rounds, path):
    """Writes the validation metrics per self-feedback round as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rounds[0]["metrics"] if k != "val_perplexity"]
    x = [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in keys:
        axes[0].plot(x, [r["metrics"][key] for r in rounds], marker="o", label=key.removeprefix("val_"))
    axes[0].set_xlabel("round (0 = after MLE)")
    axes[0].set_title("validation reward and overlap")
    axes[0].legend()
    if "val_perplexity" in rounds[0]["metrics"]:
        axes[1].plot(x, [r["metrics"]["val_perplexity"] for r in rounds], marker="o", color="tab:red")
        axes[1].set_title("validation perplexity")
    else:
        axes[1].axis("off")
    axes[1].set_xlabel("round (0 = after MLE)")
    for ax in axes:
        ax.set_xticks(x)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    """Loads `(policy, tokenizer, config)` from a run directory."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"Run directory not found: {run_dir}")
    policy_path = os.path.join(run_dir, POLICY_FILE)
    if not os.path.exists(policy_path):
        raise FileNotFoundError(
            f"{run_dir} has no {POLICY_FILE}: the run did not finish training. "
            "Run `keras-selffb train` with the same settings to resume it."
        )
    config = TrainConfig.from_yaml(os.path.join(run_dir, CONFIG_FILE))
    tokenizer = load_tokenizer(run_dir)
    policy = keras.saving.load_model(policy_path)
    if policy.vocab_size != tokenizer.vocabulary_size:
        raise ValueError(
            f"{run_dir}: the policy has {policy.vocab_size} ids but the tokenizer "
            f"{tokenizer.vocabulary_size}; the files come from different runs."
        )
    return policy, tokenizer, config
