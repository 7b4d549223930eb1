"""The `keras-selffb train` pipeline: data -> tokenizer -> MLE policy -> report.

Everything a run produces goes to its run directory:

    tokenizer.json   the trained tokenizer
    policy_mle.keras the policy after the MLE stage (mle.json: its figures)
    policy.keras     the final policy (after RL when `rl_steps > 0`)
    config.yaml      the resolved settings (read back by `generate`)
    metrics.json     perplexities, baselines, timings, sample replies
    history.csv      MLE per-epoch losses; curves.png the same as a plot
    rl_history.csv   RL stage logs
    logs/            TensorBoard event files
    backup/          the last finished epoch, while a run is in progress

A run that is killed resumes when the same command is run again: from the
last finished MLE epoch (Keras `BackupAndRestore`), or, once MLE has
finished, from the saved MLE policy (the RL stage then starts over).
"""

import json
import os
import sys
import time

import keras
import yaml

from keras_selffb.config import TrainConfig
from keras_selffb.data import load_chatterbot, load_pairs, split_pairs
from keras_selffb.models import PolicyNetwork, ResponseGenerator, frozen_copy
from keras_selffb.text import load_tokenizer, make_dataset, pack_pairs, save_tokenizer, train_tokenizer
from keras_selffb.evaluation import evaluate_policy
from keras_selffb.training import MLETrainer, ReinforceTrainer, run_contrastive_stage, unigram_perplexity

POLICY_FILE = "policy.keras"
MLE_POLICY_FILE = "policy_mle.keras"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


def load_data(config):
    """Loads and splits the run's pairs: `(train, validation, test)`."""
    pairs = load_pairs(config.data) if config.data else load_chatterbot(config.language)
    train, validation, test = split_pairs(
        pairs, config.seed, config.validation_fraction, config.test_fraction
    )
    if not validation:
        raise ValueError(
            f"The validation split is empty ({len(pairs)} examples, "
            f"validation_fraction={config.validation_fraction}); use more data "
            "or a larger validation_fraction."
        )
    return train, validation, test


def _verbosity(verbose):
    if verbose is None:
        return 1 if sys.stdout.isatty() else 2
    return verbose


def train_mle(config, train_packed, validation_packed, vocab_size, verbose=None):
    """Builds the policy and fits it by MLE; returns `(policy, history, seconds)`."""
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
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv")),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        # The corpus is small and validation prompts are unseen: keep the
        # epoch with the best validation perplexity.
        keras.callbacks.EarlyStopping(
            "val_perplexity", mode="min", patience=config.patience, restore_best_weights=True
        ),
    ]
    start = time.perf_counter()
    history = trainer.fit(
        make_dataset(train_packed, config.batch_size, shuffle=True, seed=config.seed),
        validation_data=make_dataset(validation_packed, config.batch_size),
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=_verbosity(verbose),
        shuffle=False,  # the dataset shuffles itself, seeded
    )
    return policy, trainer, history.history, time.perf_counter() - start


def make_reward(config, tokenizer, reference_policy):
    """The RL stage's reward, by name (`config.rl_reward`)."""
    from keras_selffb import rewards

    if config.rl_reward == "rouge_l":
        return rewards.RougeLReward(tokenizer)
    if config.rl_reward == "bleu":
        return rewards.BleuReward(tokenizer)
    return rewards.article_reward(reference_policy, tokenizer=tokenizer)


def train_rl(config, policy, tokenizer, train_packed, verbose=None):
    """Policy-gradient stage (`ReinforceTrainer`); returns `(history, seconds)`."""
    run_dir = config.run_dir
    reference = frozen_copy(policy)
    trainer = ReinforceTrainer(
        policy,
        make_reward(config, tokenizer, reference),
        prompt_length=config.prompt_length,
        max_new_tokens=config.response_length,
        num_samples=config.rl_samples,
        temperature=config.rl_temperature,
        baseline=config.rl_baseline,
        kl_coef=config.rl_kl_coef,
        reference_policy=reference if config.rl_kl_coef > 0 else None,
        gamma=config.rl_gamma,
        seed=config.seed,
    )
    trainer.compile(optimizer=keras.optimizers.Adam(config.rl_learning_rate, clipnorm=1.0))
    dataset = make_dataset(train_packed, config.rl_batch_size, shuffle=True, seed=config.seed,
                           drop_remainder=True).repeat()
    callbacks = [
        keras.callbacks.CSVLogger(os.path.join(run_dir, "rl_history.csv")),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs", "rl"), update_freq=10),
    ]
    start = time.perf_counter()
    history = trainer.fit(
        dataset, epochs=1, steps_per_epoch=config.rl_steps, callbacks=callbacks,
        verbose=_verbosity(verbose), shuffle=False,
    )
    return history.history, time.perf_counter() - start


def run_train(config=None, verbose=None):
    """Runs the whole pipeline for `config`; returns the metrics dict.

    Stages: tokenizer -> MLE (resumable per epoch; skipped when a finished
    `policy_mle.keras` exists) -> evaluation -> RL (`rl_steps > 0`) ->
    evaluation -> contrastive (`contrastive_epochs > 0`) -> report.
    """
    config = config or TrainConfig()
    keras.utils.set_random_seed(config.seed)
    run_dir = config.run_dir
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, allow_unicode=True, sort_keys=False)

    train, validation, test = load_data(config)
    texts = [text for pair in train for text in pair]
    tokenizer = train_tokenizer(texts, config.tokenizer, config.vocabulary_size)
    save_tokenizer(tokenizer, run_dir)
    pack = lambda pairs: pack_pairs(tokenizer, pairs, config.prompt_length, config.response_length)  # noqa: E731
    train_packed, validation_packed = pack(train), pack(validation)
    report = {
        "examples": {"train": len(train), "validation": len(validation), "test": len(test)},
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
    evaluation = {"mle": _scores(evaluate_policy(policy, tokenizer, validation, *lengths))}
    if config.rl_steps > 0:
        rl_history, seconds = train_rl(config, policy, tokenizer, train_packed, verbose)
        report["rl"] = {
            "steps": config.rl_steps,
            "seconds": round(seconds, 1),
            "final": {k: float(v[-1]) for k, v in rl_history.items()},
        }
        evaluation["rl"] = _scores(evaluate_policy(policy, tokenizer, validation, *lengths))
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
