"""The `keras-selffb train` pipeline: data -> tokenizer -> MLE -> self-feedback rounds -> report.

Everything a run produces goes to its run directory:

    .keras-selffb-run marks the directory as a run (JSON: the version that
                      made it and the data's fingerprint: size and sha256)
    tokenizer.json    the trained tokenizer
    config.yaml       the resolved settings (read back by `generate`, `--resume`)
    policy_mle.keras  the policy after MLE warm-up (mle.json: its figures)
    judge.keras       the learned relevance judge (judge.json: its figures)
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
scored candidates; a finished contrastive stage is loaded, not trained
again (`checkpoints/contrastive/`). Every random draw is derived from the seed and the
epoch/round number, so a resumed run ends with the same numbers as an
uninterrupted one (tests/test_resume.py checks this with SIGKILL).
Settings that differ from the run directory's `config.yaml`, and data
whose size or sha256 differs from the fingerprint in the marker, are
refused before anything is written (no file of the run changes) rather
than mixed into the old run: use `fresh=True` (`--fresh`) or another name.

Everything is validated before the first write: the data (readable, not
empty, non-empty splits), the settings, and the run directory; what may be
written into or deleted from a run directory, and loading a run back, is
`keras_selffb.run_directory`'s job.
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

from keras_selffb.config import TrainConfig
from keras_selffb.data import load_chatterbot, load_chitchat, load_pairs, split_pairs
from keras_selffb.distribute import data_sharding_options, get_strategy, is_chief, read_tf_config
from keras_selffb.generator import ResponseGenerator
from keras_selffb.models import CausalLMPolicy, PolicyNetwork, causal_lm_policy, frozen_copy
from keras_selffb.models.causal_lm_policy import KINDS as CAUSAL_LM_KINDS
from keras_selffb.text import PresetTokenizer, make_dataset, pack_pairs, save_tokenizer, train_tokenizer
from keras_selffb.loop import SelfFeedbackLoop
from keras_selffb.training import MLETrainer, run_contrastive_stage, unigram_perplexity
from keras_selffb.training.checkpoint import (
    epoch_order, fit_resumable, load_arrays, read_json, save_arrays, write_json,
)
from keras_selffb.plots import plot_curves, plot_rounds, rounds_figure  # noqa: F401 (rounds_figure: public here too)
from keras_selffb.run_directory import (  # noqa: F401 (re-exported: the run directory's API)
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    MLE_POLICY_FILE,
    POLICY_FILE,
    RUN_MARKER,
    _check_run_directory,
    _check_tokenizer,
    _create_run_directory,
    check_output_location,
    check_resumable,
    data_fingerprint,
    load_run,
    read_marker,
    run_directory_kind,
    save_policy,
)

# The policies `build_policy` makes (`TrainConfig.model`).
POLICY_KINDS = ("lstm", *CAUSAL_LM_KINDS)
JUDGE_FILE = "judge.keras"
# What every evaluation of a run reports (validation.<stage> in metrics.json),
# with the judge's retrieval accuracy when the run has a judge.
EVAL_METRICS = ("rouge_l", "bleu", "perplexity", "distinct_1", "distinct_2", "distinct_replies",
                "self_bleu", "mean_reply_length")
# The relevance judge's heads and pooling; its encoder is the LSTM policy's
# (sizes and MLE weights), or 64/128 wide for the transformer policies.
JUDGE_SIZES = {"projection_dim": 64, "pooling": "mean"}


def read_pairs(config):
    """The run's `(prompt, response)` pairs: its data file, or the corpus `config.corpus`.

    `"chitchat"`: `config.corpus_pairs` pairs of whole conversations (shuffled
    by the seed), each side at most `response_length - 1` characters so that
    no reply is cut (a longer prompt keeps its last `prompt_length - 2`).
    """
    if config.data:
        return load_pairs(config.data)
    if config.corpus == "chitchat":
        return load_chitchat(max_pairs=config.corpus_pairs, max_chars=config.response_length - 1, seed=config.seed)
    return load_chatterbot(config.language)


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


def build_policy(config, vocab_size, tokenizer=None):
    """The run's untrained policy, from `config.model` and its sizes, or `config.preset`.

    With `config.preset`: the preset's pretrained `CausalLM`, its ids mapped
    to `tokenizer` (the run's `PresetTokenizer`; `CausalLMPolicy.from_preset`),
    checked to hold `prompt_length + response_length` positions.

    `"lstm"`: the article's `PolicyNetwork` (`embedding_dim`, `hidden_dim`,
    `num_layers`, `dropout`). `"gpt2"`, `"llama"`: a keras-hub transformer
    with random weights (`causal_lm_policy`: `hidden_dim` wide, `num_layers`
    blocks, `num_heads` heads, dropout 0, `prompt_length + response_length`
    positions), seeded with `config.seed`. LoRA is not enabled here: see
    `enable_lora`.
    """
    if config.preset:
        check_preset_positions(config)
        return CausalLMPolicy.from_preset(config.preset, tokenizer)
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


def check_preset_positions(config):
    """Refuses a preset whose model has fewer positions than `prompt_length + response_length`.

    Reads the backbone's `max_sequence_length` from the preset's
    `config.json` (models without one, RoPE models such as Llama, pass).
    """
    try:
        with open(os.path.join(config.preset, "config.json"), encoding="utf-8") as f:
            context = json.load(f).get("config", {}).get("max_sequence_length")
    except (OSError, ValueError, AttributeError):
        return  # not readable here: loading the preset names the problem
    needed = config.prompt_length + config.response_length
    if isinstance(context, int) and needed > context:
        raise ValueError(
            f"The preset {config.preset} has {context} positions, fewer than prompt_length + "
            f"response_length = {needed}; lower them in the config."
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
    """`metrics.json`'s `"model"`: kind, parameter counts and LoRA rank (and the preset)."""
    preset = {"preset": config.preset, "class": type(policy.causal_lm).__name__} if config.preset else {}
    return {
        "kind": "preset" if config.preset else config.model,
        **preset,
        "parameters": int(policy.count_params()),
        "trainable_parameters": int(sum(int(np.prod(w.shape)) for w in policy.trainable_weights)),
        "lora_rank": config.lora_rank,
    }


def train_mle(config, train_packed, validation_packed, vocab_size, verbose=None, callbacks=(), tokenizer=None):
    """Builds the policy and fits it by MLE; returns `(policy, trainer, history, seconds)`.

    A preset with `lora_rank` trains LoRA only (its pretrained weights are
    kept) and merges the LoRA update into the weights at the end, so the
    MLE model is the rounds' KL reference (LoRA off) and their start.

    Through `fit_resumable` (checkpoints in `checkpoints/mle/`): the data
    order of epoch `e` depends only on `(seed, e)`, and early stopping on
    validation perplexity keeps the best epoch's weights, across restarts
    too. `callbacks` (e.g. EarlyStopping) join TensorBoard and
    TerminateOnNaN; any of them may stop training.
    """
    run_dir = config.run_dir
    policy = build_policy(config, vocab_size, tokenizer)
    if config.preset and config.lora_rank:
        policy.enable_lora(config.lora_rank)
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
    if config.preset and config.lora_rank:
        policy.merge_lora()
    return policy, trainer, result["history"], time.perf_counter() - start


def train_or_load_judge(config, tokenizer, train_packed, validation_packed, policy, verbose=None):
    """The run's relevance judge, trained on the training split (or loaded when done); None without one.

    A `RelevanceJudge` (dual encoder, `JUDGE_SIZES`; with the LSTM policy,
    its encoder starts as a copy of the MLE policy's embedding and LSTM,
    `RelevanceJudge.initialize_from`) trained for
    `config.judge_epochs` epochs by in-batch InfoNCE on the training
    pairs (`training.train_judge`), seeded by `config.seed` alone, so a
    resumed run trains the same judge. Saved as `judge.keras`; `judge.json`
    (written last: it marks the stage done) holds its training time and
    its retrieval accuracy on the validation references (among 20
    validation prompts), the ceiling the policy's replies are measured
    against.
    """
    from keras_selffb.models import RelevanceJudge
    from keras_selffb.training import retrieval_accuracy, train_judge

    if not config.judge_epochs:
        return None, None
    run_dir = config.run_dir
    path, record_path = os.path.join(run_dir, JUDGE_FILE), os.path.join(run_dir, "judge.json")
    if os.path.exists(path) and os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as f:
            return keras.saving.load_model(path), json.load(f)
    if len(train_packed) < 2:
        raise ValueError(
            f"The relevance judge learns from in-batch negatives and needs at least 2 training pairs; got "
            f"{len(train_packed)}. Use more data, or set judge_epochs: 0 and reward_judge: 0."
        )
    keras.utils.set_random_seed(config.seed)
    start = time.perf_counter()
    if isinstance(policy, PolicyNetwork):  # the judge starts from the MLE policy's encoder
        judge = RelevanceJudge(
            tokenizer.vocabulary_size, embedding_dim=policy.embedding_dim, hidden_dim=policy.hidden_dim,
            num_layers=policy.num_layers, **JUDGE_SIZES,
        ).initialize_from(policy)
    else:
        judge = RelevanceJudge(tokenizer.vocabulary_size, embedding_dim=64, hidden_dim=128, **JUDGE_SIZES)
    history = train_judge(
        judge, train_packed, config.prompt_length, epochs=config.judge_epochs,
        batch_size=min(64, len(train_packed)), seed=config.seed, verbose=_verbosity(verbose),
    )
    record = {
        "epochs": config.judge_epochs,
        "seconds": round(time.perf_counter() - start, 1),
        "train_loss": round(float(history["loss"][-1]), 4),
        "validation_reference_retrieval_accuracy": round(float(retrieval_accuracy(
            judge, validation_packed[:, : config.prompt_length], validation_packed[:, config.prompt_length:]
        )), 4),
    }
    save_policy(judge, path)
    write_json(record_path, record)  # last: marks the stage done
    return judge, record


def make_reward(config, tokenizer, reference_policy, judge=None):
    """The RL stage's reward, by name (`config.rl_reward`).

    `"composite"`: `WeightedReward` of ROUGE-L against the reference, the
    judge's relevance (`JudgeReward`), informativeness, fluency under
    the MLE policy and novelty against the batch's other replies
    (`NoveltyReward`), with the config's weights (a weight of 0 leaves its
    term out); each term is logged as `reward/<name>`.
    """
    from keras_selffb import rewards

    if config.rl_reward == "rouge_l":
        return rewards.RougeLReward(tokenizer)
    if config.rl_reward == "bleu":
        return rewards.BleuReward(tokenizer)
    if config.rl_reward == "chrf":
        return rewards.ChrFReward(tokenizer)
    if config.rl_reward == "composite":
        terms = [
            (config.reward_rouge_l, lambda: rewards.RougeLReward(tokenizer)),
            (config.reward_judge, lambda: rewards.JudgeReward(judge)),
            (config.reward_informativeness, lambda: rewards.InformativenessReward(tokenizer=tokenizer)),
            (config.reward_fluency, lambda: rewards.FluencyReward(reference_policy)),
            (config.reward_novelty, lambda: rewards.NoveltyReward(tokenizer=tokenizer)),
        ]
        return rewards.WeightedReward([(make(), weight) for weight, make in terms if weight], name="composite")
    return rewards.article_reward(reference_policy, tokenizer=tokenizer)


def build_loop(config, policy, tokenizer, train, validation, verbose=None, callbacks=(), judge=None):
    """The `SelfFeedbackLoop` of a run, from its config; `callbacks` go to every round's `fit`.

    The KL reference (also the `"dpo"` reference, and the `"article"`
    reward's language model) is the policy as it is now, after MLE: with
    LoRA on, the same model with LoRA switched off (`policy.reference()`),
    otherwise a frozen copy. With a `judge`, it gives the composite
    reward's relevance term and every round's `judge_retrieval_accuracy`.
    The loop keeps the best round by `feedback_monitor` among those whose
    distinct greedy replies stay above `feedback_min_distinct` of the MLE
    policy's (the collapse guard).
    """
    reference = policy.reference() if config.lora_rank else frozen_copy(policy)
    methods = tuple(m.strip() for m in config.feedback_methods.split(","))
    return SelfFeedbackLoop(
        policy,
        tokenizer,
        make_reward(config, tokenizer, reference, judge),
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
        dpo_steps=config.rl_steps,
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
        dpo_options={"beta": config.dpo_beta, "loss_type": config.dpo_loss_type, "reference_policy": reference},
        monitor=config.feedback_monitor,
        target=config.feedback_target,
        mode="min" if config.feedback_monitor == "val_perplexity" else "max",
        restore_best=config.feedback_keep_best,
        eval_metrics=EVAL_METRICS,
        judge=judge,
        min_distinct_fraction=config.feedback_min_distinct,
        directory=os.path.join(config.run_dir, CHECKPOINT_DIR, "loop"),
        log_dir=config.run_dir,
        seed=config.seed,
        callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks],
        verbose=_verbosity(verbose),
    )


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
    if config.preset:
        tokenizer = PresetTokenizer.from_preset(config.preset)
        check_preset_positions(config)
    else:
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
            config, train_packed, validation_packed, tokenizer.vocabulary_size, verbose, callbacks, tokenizer
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

    judge, report["judge"] = train_or_load_judge(config, tokenizer, train_packed, validation_packed, policy, verbose)
    if judge is None:
        del report["judge"]
    enable_lora(config, policy)
    report["model"] = model_record(config, policy)
    generator = ResponseGenerator(
        policy, tokenizer, config.prompt_length, config.response_length, config.sampler, seed=config.seed
    )
    first_reply = {}
    for prompt, reference in validation:
        first_reply.setdefault(prompt, reference)  # distinct prompts, in order
    samples = list(first_reply.items())[: config.num_samples]
    mle_replies = generator([p for p, _ in samples], seed=config.seed)  # before the rounds, same prompts

    evaluator = ResponseGenerator(policy, tokenizer, config.prompt_length, config.response_length, batch_size=64)

    def evaluate():  # greedy replies to the validation prompts
        return _scores(_evaluate(evaluator, validation, validation_packed[:, : config.prompt_length], judge))

    if config.feedback_rounds > 0:
        loop = build_loop(config, policy, tokenizer, train, validation, verbose, callbacks, judge)
        start = time.perf_counter()
        rounds = loop.run()
        report["rounds"] = rounds
        report["feedback"] = {
            "methods": list(loop.methods), "seconds": round(time.perf_counter() - start, 1),
            "rounds": len(rounds) - 1, "target": config.feedback_target, "monitor": config.feedback_monitor,
            "collapsed": any(r.get("collapsed") for r in rounds),
        }
        rolled_back = config.feedback_keep_best or report["feedback"]["collapsed"]
        report["feedback"]["final_round"] = loop.best_round() if rolled_back else rounds[-1]["round"]
        evaluation = {_stage_name(r): _round_scores(r["metrics"]) for r in rounds}
        plot_rounds(rounds, os.path.join(run_dir, "rounds.png"))
    else:
        evaluation = {"mle": evaluate()}
    if config.contrastive_epochs > 0:
        stage_dir = os.path.join(run_dir, CHECKPOINT_DIR, "contrastive")
        done = read_json(os.path.join(stage_dir, "stage.json"))
        if done is not None:  # written last: the stage's policy is on disk
            print("contrastive stage already finished: loading its policy")
            load_arrays(os.path.join(stage_dir, "policy.npz"), policy.weights, "policy")
            report["contrastive"] = done["report"]
        else:
            report["contrastive"] = run_contrastive_stage(
                generator, train_packed=train_packed, validation_packed=validation_packed,
                epochs=config.contrastive_epochs, seed=config.seed, mode=config.contrastive_mode,
                verbose=_verbosity(verbose),
            )
            done = {"report": report["contrastive"]}
            if config.contrastive_mode == "sequence_likelihood":  # the policy changed
                done["evaluation"] = evaluate()
            os.makedirs(stage_dir, exist_ok=True)
            save_arrays(os.path.join(stage_dir, "policy.npz"), policy.weights)
            write_json(os.path.join(stage_dir, "stage.json"), done)
        if "evaluation" in done:
            evaluation["contrastive"] = done["evaluation"]
    report["validation"] = evaluation
    save_policy(policy, os.path.join(run_dir, POLICY_FILE))

    replies = generator([p for p, _ in samples], seed=config.seed)
    report["samples"] = [
        {"prompt": p, "reference": r, "mle_reply": before, "reply": after}
        for (p, r), before, after in zip(samples, mle_replies, replies)
    ]
    write_json(os.path.join(run_dir, METRICS_FILE), report)
    return report


def _evaluate(generator, pairs, prompt_ids, judge=None):
    """`EVAL_METRICS` of greedy replies to `pairs`, and the judge's retrieval accuracy with a judge."""
    from keras_selffb.training import retrieval_accuracy

    result = generator.evaluate(pairs, metrics=EVAL_METRICS)
    if judge is not None:
        result["judge_retrieval_accuracy"] = float(retrieval_accuracy(judge, prompt_ids, result["reply_ids"]))
    return result


def _stage_name(record):
    return "mle" if record["round"] == 0 else f"round {record['round']}"


def _round_scores(metrics):
    return {k.removeprefix("val_"): round(v, 4) for k, v in metrics.items()}


def _scores(result):
    return {k: round(v, 4) for k, v in result.items() if k not in ("replies", "reply_ids")}


