"""The `keras-selffb` command: `train`, `generate` and `export`.

`keras-selffb train` with no arguments trains on the embedded English
dialogue corpus and writes `runs/default/`. Errors in the user's input
(missing files, bad config, empty data) print one clear line and exit 2.
"""

import argparse
import errno
import os
import sys
import unicodedata
import warnings


def _import_tensorflow(verbose=False):
    """Imports TensorFlow (and Keras) before anything else does, quietly unless `verbose`.

    TF_CPP_MIN_LOG_LEVEL=3 silences TensorFlow's C++ log once it is set up,
    but the lines logged while its libraries load (`All log messages before
    absl::InitializeLog()`, oneDNN, `Could not find cuda drivers`,
    cpu_feature_guard) go straight to the C-level stderr: the file
    descriptor 2 points at /dev/null during the import only.
    """
    if "tensorflow" in sys.modules:  # imported by the caller (tests, a notebook): leave it
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    if verbose:
        import tensorflow  # noqa: F401
        import keras  # noqa: F401

        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        import tensorflow  # noqa: F401
        import keras  # noqa: F401

        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        import tensorflow as tf
        import keras  # noqa: F401

        tf.get_logger().setLevel("ERROR")
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _devices():
    """One line saying which devices TensorFlow will use."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "devices: CPU (no GPU found)"
    names = sorted({tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus})
    return f"devices: {len(gpus)} x GPU ({', '.join(names)})"


def _format_warning(message, category, filename, lineno, line=None):
    """Python warnings as one plain line (`warning: ...`), without the source line."""
    sys.stdout.flush()
    return f"warning: {message}\n"


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-selffb",
        description="Make a Keras text generator better from its own feedback.",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up and C++ log lines (hidden by default)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a policy by MLE, run the self-feedback rounds (default: 3 RL rounds) and report",
        description="Train a policy by MLE, then run the self-feedback rounds (default: 3 rounds of RL "
        "on the composite reward of docs/dialogue-quality.md; --rounds 0 skips them), evaluate on the "
        "validation set and report. "
        "Rerun the same command to resume an interrupted run.",
    )
    train.add_argument("--config", help="YAML file of settings (see docs/getting-started.md)")
    train.add_argument("--corpus", choices=["chatterbot", "chitchat"],
                       help="corpus when no --data: the embedded chatterbot corpus (default) or the "
                            "Chit-Chat Challenge conversations (chitchat-dataset)")
    train.add_argument("--language", choices=["en", "zh"], help="chatterbot corpus language")
    train.add_argument("--data", help="a .txt/.jsonl/.tsv file instead of the embedded corpus")
    train.add_argument("--name", help="run name; outputs go to runs/<name>/")
    train.add_argument("--output", help="run directory (overrides --name)")
    train.add_argument("--epochs", type=int, help="MLE epochs")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--rounds", type=int, help="self-feedback rounds after MLE (0: none)")
    train.add_argument("--methods", help="adjust methods per round, comma-separated: rl,filtered,contrastive")
    train.add_argument("--target", type=float, help="stop the rounds once the monitored metric reaches this")
    train.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"],
                       help="tf.distribute strategy (see docs/distributed.md)")
    train.add_argument("--model", choices=["lstm", "gpt2", "llama"],
                       help="the policy: the article's character LSTM (default) or a keras-hub GPT-2 or "
                       "Llama trained from scratch (see docs/models.md)")
    train.add_argument("--preset", metavar="DIR",
                       help="a keras-hub preset directory on disk (e.g. gpt2_base_en, gemma_1b_en as "
                       "downloaded, or written by save_to_preset): its pretrained model and its own "
                       "tokenizer are the policy (see docs/models.md)")
    train.add_argument("--lora-rank", type=int,
                       help="train only LoRA weights of this rank (gpt2/llama: after MLE; --preset: from "
                       "the start; 0: off)")
    resume = train.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output/--name with its saved settings")
    resume.add_argument("--fresh", action="store_true",
                        help="delete the old run in the run directory first (only a directory that "
                        "keras-selffb made: it holds a .keras-selffb-run file)")
    train.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show TensorFlow's start-up and C++ log lines (hidden by default)")

    generate = commands.add_parser("generate", help="reply to prompts with a trained run")
    generate.add_argument("prompts", nargs="+", help="one or more prompts")
    generate.add_argument("--run", required=True, help="run directory written by `train`")
    generate.add_argument("--sampler", default="greedy",
                          choices=["greedy", "top_k", "top_p", "random", "beam"])
    generate.add_argument("--temperature", type=float, default=1.0,
                          help=">= 0; 0 is greedy decoding whatever the sampler (default 1)")
    generate.add_argument("--top-k", type=int, default=5,
                          help="top_k: sample from the k most likely tokens, 1 to the vocabulary size")
    generate.add_argument("--top-p", type=float, default=0.9,
                          help="top_p: sample from the most likely tokens of total probability p, 0 < p <= 1")
    generate.add_argument("--num-beams", type=int, default=4, help="beam: beams kept, >= 1")
    generate.add_argument("--max-new-tokens", type=int,
                          help="longest reply in tokens, >= 1; defaults to the run's response_length")
    generate.add_argument("--seed", type=int, default=0)

    export = commands.add_parser("export", help="write a SavedModel that serves a trained run")
    export.add_argument("--run", required=True, help="run directory written by `train`")
    export.add_argument("--output", required=True, help="directory for the SavedModel")
    export.add_argument("--max-new-tokens", type=int,
                        help="default longest reply in tokens, >= 2; defaults to the run's response_length")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    return parser


# The command-line flag of each setting `_train` takes from the command line.
_FLAGS = {"feedback_rounds": "--rounds", "feedback_methods": "--methods", "feedback_target": "--target",
          "lora_rank": "--lora-rank", "preset": "--preset"}


def _train(args):
    from keras_selffb.config import TrainConfig
    from keras_selffb.pipeline import run_train
    from keras_selffb.run_directory import CONFIG_FILE

    overrides = {
        key: value
        for key, value in {
            "corpus": args.corpus,
            "language": args.language,
            "data": args.data,
            "name": args.name,
            "output": args.output,
            "epochs": args.epochs,
            "seed": args.seed,
            "feedback_rounds": args.rounds,
            "feedback_methods": args.methods,
            "feedback_target": args.target,
            "strategy": args.strategy,
            "model": args.model,
            "lora_rank": args.lora_rank,
            "preset": args.preset,
        }.items()
        if value is not None
    }
    where = {k: overrides[k] for k in ("name", "output") if k in overrides}
    args.run_dir = TrainConfig.from_dict(where).run_dir
    if args.resume:
        run_dir = args.run_dir
        if args.config:
            raise ValueError(
                f"--resume continues {run_dir} with its saved settings (its {CONFIG_FILE}) and cannot take "
                "--config: drop --config to resume, or start over with --fresh or another --name."
            )
        saved_path = os.path.join(run_dir, CONFIG_FILE)
        if not os.path.exists(saved_path):
            raise FileNotFoundError(f"--resume: {run_dir} holds no run to resume (no {CONFIG_FILE}).")
        saved = TrainConfig.from_yaml(saved_path, **where)
        given = TrainConfig.from_yaml(saved_path, **overrides)
        differ = [
            f"{_FLAGS.get(key, '--' + key)} {value} differs from the saved {key}: {getattr(saved, key)!r}"
            for key, value in overrides.items()
            if key not in where and getattr(given, key) != getattr(saved, key)
        ]
        if differ:
            raise ValueError(
                f"--resume continues {run_dir} with its saved settings, but {'; '.join(differ)}. Drop the "
                "setting to resume, or start over with --fresh or another --name."
            )
        config = given
    elif args.config:
        config = TrainConfig.from_yaml(args.config, **overrides)
    else:
        config = TrainConfig.from_dict(overrides)
    args.run_dir, args.data = config.run_dir, config.data  # for the message of an OSError
    if args.fresh and args.config:
        target = os.path.realpath(config.run_dir).rstrip(os.sep) + os.sep
        if (os.path.realpath(args.config) + os.sep).startswith(target):
            raise ValueError(f"--fresh would delete {config.run_dir}, which holds the --config file; "
                             "nothing was deleted.")
    print(f"keras-selffb train: writing to {config.run_dir}")
    print(_devices())
    report = run_train(config, fresh=args.fresh)
    print(format_report(report, config.run_dir))


def format_report(report, run_dir):
    """The end-of-run summary as plain text."""
    mle = report["mle"]
    lines = [
        "",
        f"{'split':<12}{'perplexity':>12}{'unigram':>12}",
    ]
    for split in ("validation", "test"):
        if f"{split}_perplexity" in mle:
            lines.append(
                f"{split:<12}{mle[f'{split}_perplexity']:>12.3f}"
                f"{mle[f'{split}_unigram_perplexity']:>12.3f}"
            )
    lines.append(f"MLE: {mle['epochs']} epochs in {mle['seconds']:.0f} s; "
                 f"vocabulary {report['vocabulary_size']}")
    if "model" in report:
        model = report["model"]
        trainable = (f" ({model['trainable_parameters']:,} trainable: LoRA rank {model['lora_rank']})"
                     if model.get("lora_rank") else "")
        kind = f"{model['class']} from {model['preset']}" if model.get("preset") else model["kind"]
        lines.append(f"model: {kind}, {model['parameters']:,} parameters{trainable}")
    lines.append("")
    if "judge" in report:
        judge = report["judge"]
        lines.append(f"relevance judge: {judge['epochs']} epochs in {judge['seconds']:.0f} s; it ranks a "
                     f"validation reference's own prompt first among 20 for "
                     f"{judge['validation_reference_retrieval_accuracy']:.1%} of them")
    # Columns present in every stage's scores, in this order.
    columns = [(key, title, width, fmt) for key, title, width, fmt in _REPORT_COLUMNS
               if all(key in scores for scores in report["validation"].values())]
    lines.append(f"{'validation':<16}" + "".join(f"{title:>{width}}" for _, title, width, _ in columns))
    for stage, scores in report["validation"].items():
        label = "after MLE" if stage == "mle" else f"after {stage}"
        lines.append(f"{label:<16}" + "".join(f"{scores[key]:>{width}{fmt}}" for key, _, width, fmt in columns))
    if "feedback" in report:
        feedback = report["feedback"]
        lines.append(f"self-feedback: {feedback['rounds']} round(s) of {'+'.join(feedback['methods'])} "
                     f"in {feedback['seconds']:.0f} s (per-round plot: rounds.png)")
        if feedback.get("collapsed"):
            lines.append("  collapse guard: the replies collapsed onto few distinct ones; the rounds stopped")
        final = feedback.get("final_round")
        if final is not None and final != feedback["rounds"]:
            stage = "the MLE policy" if final == 0 else f"round {final}"
            lines.append(f"  the final policy is {stage}'s (the best {feedback['monitor']} that kept its "
                         "distinct replies)")
    if "contrastive" in report:
        stage = report["contrastive"]
        lines.append(f"contrastive ({stage['mode']}): {stage['epochs']} epochs in {stage['seconds']:.0f} s; "
                     "ranking of sampled validation candidates vs their ROUGE-L:")
        for when in ("before", "after"):
            scores = stage[when]
            lines.append(f"  {when:<7} pair accuracy {scores['pair_accuracy']:.3f}  "
                         f"Spearman {scores['spearman']:.3f}  top-1 ROUGE-L {scores['top1_quality']:.4f}")
    lines.append("")
    before_after = any("mle_reply" in sample for sample in report["samples"]) and "feedback" in report
    for sample in report["samples"]:
        lines.append(f"> {printable(sample['prompt'])}")
        if before_after:
            lines.append(f"  after MLE:    {printable(sample['mle_reply'])}")
            lines.append(f"  after rounds: {printable(sample['reply'])}")
            lines.append(f"  reference:    {printable(sample['reference'])}")
        else:
            lines.append(f"  reply:     {printable(sample['reply'])}")
            lines.append(f"  reference: {printable(sample['reference'])}")
    lines.append(f"\nEverything is in {run_dir}/ (metrics.json, policy.keras, logs/ for TensorBoard).")
    return "\n".join(lines)


# The validation table's columns: (score key, title, width, format).
_REPORT_COLUMNS = [
    ("rouge_l", "ROUGE-L", 9, ".4f"),
    ("bleu", "BLEU", 7, ".2f"),
    ("perplexity", "ppl", 8, ".3f"),
    ("reward", "reward", 8, ".4f"),
    ("distinct_replies", "distinct", 9, ".0f"),
    ("distinct_2", "dist-2", 8, ".3f"),
    ("self_bleu", "selfBLEU", 9, ".3f"),
    ("mean_reply_length", "words", 7, ".1f"),
    ("judge_retrieval_accuracy", "judge@20", 9, ".3f"),
]

# Shown as escapes by `printable`: tab, newline and carriage return by name.
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Bidirectional embeddings, overrides and isolates: they reorder what follows
# on a terminal line.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text):
    r"""`text` made safe to print on one terminal line; other text unchanged.

    Control characters (ASCII C0 and DEL, C1), line and paragraph separators,
    bidirectional overrides and lone surrogates are shown as Python escapes
    (`\x1b`, `\u2028`), tab, newline and carriage return as `\t`, `\n`,
    `\r`, so a reply can neither drive the terminal (colours, bell,
    cursor moves) nor spread over several lines. Letters of any script,
    accents, emoji and spaces are kept as they are; so is a backslash.

    >>> printable("你好, café \x1b[31mred\x07\tend\r\n")
    '你好, café \\x1b[31mred\\x07\\tend\\r\\n'
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _generate(args):
    from keras_selffb.generator import ResponseGenerator
    from keras_selffb.models import get_sampler
    from keras_selffb.run_directory import load_run

    # The arguments are checked before the (slower) model loading.
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1; got {args.max_new_tokens}.")
    for prompt in args.prompts:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal's locale could not decode
            raise ValueError(
                f"the prompt \"{printable(prompt)}\" is not valid UTF-8 (check the terminal's encoding)."
            ) from None
    sampler_kwargs = {"temperature": args.temperature}
    if args.sampler in ("top_k", "top_p", "random"):
        sampler_kwargs["seed"] = args.seed
    if args.sampler == "top_k":
        sampler_kwargs["k"] = args.top_k
    elif args.sampler == "top_p":
        sampler_kwargs["p"] = args.top_p
    elif args.sampler == "beam":
        sampler_kwargs["num_beams"] = args.num_beams
    sampler = get_sampler(args.sampler, **sampler_kwargs)
    policy, tokenizer, config = load_run(args.run)
    generator = ResponseGenerator(
        policy,
        tokenizer,
        config.prompt_length,
        config.response_length if args.max_new_tokens is None else args.max_new_tokens,
        sampler,
    )
    for prompt, reply in zip(args.prompts, generator(args.prompts, seed=args.seed)):
        print(f"> {printable(prompt)}\n{printable(reply)}")


def _export(args):
    from keras_selffb.export import check_output_path, export_generator
    from keras_selffb.run_directory import load_run

    # The arguments and the output location are checked before the (slower)
    # model loading and export.
    if args.max_new_tokens is not None and args.max_new_tokens < 2:
        raise ValueError(
            f"--max-new-tokens must be >= 2 for an export (a token and EOS); got {args.max_new_tokens}."
        )
    check_output_path(args.output, overwrite=args.overwrite)
    policy, tokenizer, config = load_run(args.run)
    path = export_generator(
        policy,
        tokenizer,
        args.output,
        config.prompt_length,
        config.response_length if args.max_new_tokens is None else args.max_new_tokens,
        overwrite=args.overwrite,
    )
    print(f"keras-selffb export: wrote {path} (signatures: generate, score; see docs/serving.md)")


def _os_error(error, args):
    """An OSError as one line: the path, the OS reason and, for a run that can
    resume, what to do (checkpoints are written atomically: no work is lost)."""
    path = error.filename if error.filename is not None else getattr(args, "run_dir", None)
    text = error.strerror or str(error)
    if error.errno in errno.errorcode:
        text = f"{text} ({errno.errorcode[error.errno]})"
    if path is not None:
        text = f"{path}: {text}"
    run_dir = getattr(args, "run_dir", None)
    if args.command != "train" or not run_dir:
        return text
    from keras_selffb.run_directory import RUN_MARKER

    data = getattr(args, "data", None)
    about_data = data and error.filename is not None and os.path.realpath(error.filename) == os.path.realpath(data)
    if os.path.isfile(os.path.join(run_dir, RUN_MARKER)) and not about_data:
        fix = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space",
               errno.EROFS: "make the file system writable"}.get(error.errno, "fix this")
        text += f"; {run_dir} keeps its checkpoints: {fix}, then run the same command again to resume."
    return text


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        _import_tensorflow(args.verbose)
        # formatwarning, not showwarning: a caller recording warnings
        # (pytest.warns, catch_warnings(record=True)) still gets them.
        previous, warnings.formatwarning = warnings.formatwarning, _format_warning
        try:
            if args.command == "train":
                _train(args)
            elif args.command == "export":
                _export(args)
            else:
                _generate(args)
        finally:
            warnings.formatwarning = previous
    except KeyboardInterrupt:
        print(
            f"\nkeras-selffb {args.command}: interrupted; run the same command again to "
            "resume from the last checkpoint.",
            file=sys.stderr,
        )
        return 130
    except OSError as e:
        # Ours (FileNotFoundError("Data file not found: ...")) carry no errno.
        message = str(e) if e.errno is None else _os_error(e, args)
        print(f"keras-selffb {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (ValueError, ImportError) as e:
        print(f"keras-selffb {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
