"""The `keras-selffb` command: `train`, `generate` and `export`.

`keras-selffb train` with no arguments trains on the embedded English
dialogue corpus and writes `runs/default/`. Errors in the user's input
(missing files, bad config, empty data) print one clear line and exit 2.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-selffb",
        description="Make a Keras text generator better from its own feedback.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a policy (MLE) and report")
    train.add_argument("--config", help="YAML file of settings (see docs/getting-started.md)")
    train.add_argument("--language", choices=["en", "zh"], help="embedded corpus language")
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
    resume = train.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output/--name with its saved settings")
    resume.add_argument("--fresh", action="store_true", help="delete the run directory's old run first")

    generate = commands.add_parser("generate", help="reply to prompts with a trained run")
    generate.add_argument("prompts", nargs="+", help="one or more prompts")
    generate.add_argument("--run", required=True, help="run directory written by `train`")
    generate.add_argument("--sampler", default="greedy",
                          choices=["greedy", "top_k", "top_p", "random", "beam"])
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=5)
    generate.add_argument("--top-p", type=float, default=0.9)
    generate.add_argument("--num-beams", type=int, default=4)
    generate.add_argument("--max-new-tokens", type=int, help="defaults to the run's response_length")
    generate.add_argument("--seed", type=int, default=0)

    export = commands.add_parser("export", help="write a SavedModel that serves a trained run")
    export.add_argument("--run", required=True, help="run directory written by `train`")
    export.add_argument("--output", required=True, help="directory for the SavedModel")
    export.add_argument("--max-new-tokens", type=int, help="defaults to the run's response_length")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    return parser


def _train(args):
    from keras_selffb.config import TrainConfig
    from keras_selffb.pipeline import CONFIG_FILE, run_train

    overrides = {
        key: value
        for key, value in {
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
        }.items()
        if value is not None
    }
    if args.resume:
        run_dir = TrainConfig.from_dict({k: overrides[k] for k in ("name", "output") if k in overrides}).run_dir
        saved = os.path.join(run_dir, CONFIG_FILE)
        if not os.path.exists(saved):
            raise FileNotFoundError(f"--resume: {run_dir} holds no run to resume (no {CONFIG_FILE}).")
        config = TrainConfig.from_yaml(saved, **overrides)
    elif args.config:
        config = TrainConfig.from_yaml(args.config, **overrides)
    else:
        config = TrainConfig.from_dict(overrides)
    print(f"keras-selffb train: writing to {config.run_dir}")
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
    lines.append("")
    lines.append(f"{'validation':<16}{'ROUGE-L':>10}{'BLEU':>10}{'perplexity':>12}{'reward':>10}")
    for stage, scores in report["validation"].items():
        label = "after MLE" if stage == "mle" else f"after {stage}"
        reward = f"{scores['reward']:>10.4f}" if "reward" in scores else ""
        lines.append(f"{label:<16}{scores['rouge_l']:>10.4f}{scores['bleu']:>10.2f}"
                     f"{scores['perplexity']:>12.3f}{reward}")
    if "feedback" in report:
        feedback = report["feedback"]
        lines.append(f"self-feedback: {feedback['rounds']} round(s) of {'+'.join(feedback['methods'])} "
                     f"in {feedback['seconds']:.0f} s (per-round plot: rounds.png)")
    if "contrastive" in report:
        stage = report["contrastive"]
        lines.append(f"contrastive ({stage['mode']}): {stage['epochs']} epochs in {stage['seconds']:.0f} s; "
                     "ranking of sampled validation candidates vs their ROUGE-L:")
        for when in ("before", "after"):
            scores = stage[when]
            lines.append(f"  {when:<7} pair accuracy {scores['pair_accuracy']:.3f}  "
                         f"Spearman {scores['spearman']:.3f}  top-1 ROUGE-L {scores['top1_quality']:.4f}")
    lines.append("")
    for sample in report["samples"]:
        lines.append(f"> {sample['prompt']}")
        lines.append(f"  reply:     {sample['reply']}")
        lines.append(f"  reference: {sample['reference']}")
    lines.append(f"\nEverything is in {run_dir}/ (metrics.json, policy.keras, logs/ for TensorBoard).")
    return "\n".join(lines)


def _generate(args):
    from keras_selffb.models import ResponseGenerator
    from keras_selffb.pipeline import load_run

    policy, tokenizer, config = load_run(args.run)
    sampler_kwargs = {"temperature": args.temperature}
    if args.sampler in ("top_k", "top_p", "random"):
        sampler_kwargs["seed"] = args.seed
    if args.sampler == "top_k":
        sampler_kwargs["k"] = args.top_k
    elif args.sampler == "top_p":
        sampler_kwargs["p"] = args.top_p
    elif args.sampler == "beam":
        sampler_kwargs["num_beams"] = args.num_beams
    generator = ResponseGenerator(
        policy,
        tokenizer,
        config.prompt_length,
        args.max_new_tokens or config.response_length,
        args.sampler,
        **sampler_kwargs,
    )
    for prompt, reply in zip(args.prompts, generator(args.prompts, seed=args.seed)):
        print(f"> {prompt}\n{reply}")


def _export(args):
    from keras_selffb.export import export_generator
    from keras_selffb.pipeline import load_run

    policy, tokenizer, config = load_run(args.run)
    path = export_generator(
        policy,
        tokenizer,
        args.output,
        config.prompt_length,
        args.max_new_tokens or config.response_length,
        overwrite=args.overwrite,
    )
    print(f"keras-selffb export: wrote {path} (signatures: generate, score; see docs/serving.md)")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "export":
            _export(args)
        else:
            _generate(args)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, ImportError) as e:
        print(f"keras-selffb {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nkeras-selffb {args.command}: interrupted; run the same command again to "
            "resume from the last checkpoint.",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
