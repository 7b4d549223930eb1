"""Reward settings for the dialogue rounds, compared from one MLE policy; and the held-out comparison.

    python docs/figures/dialogue_quality.py --dev --seed 0            # choose settings: a development split
    python docs/figures/dialogue_quality.py --seed 0 --settings composite,rouge_l   # report: validation/test
    python docs/figures/dialogue_quality.py --plot runs/dialogue_quality/report-seed*/results.json

What it does, for one seed:

1. Runs the `keras-selffb train` pipeline with `feedback_rounds: 0` (MLE and
   the relevance judge, exactly as the default job trains them) into
   `--work/<split>-seed<s>/mle`.
2. For every reward setting (`SETTINGS`, or `--settings`), starts from that
   MLE policy and runs the default job's self-feedback loop
   (`pipeline.build_loop`, the collapse guard included) with the setting's
   `TrainConfig` overrides; one run is what `keras-selffb train` with those
   settings gives.
3. Writes every round's validation metrics, and a prompt-by-prompt
   comparison on the held-out pairs (the test split; the development split's
   own held-out pairs with `--dev`): per-pair ROUGE-L and the judge's
   retrieval success, after MLE and after the rounds, with a bootstrap 95%
   interval of the mean difference and 10 example replies, to
   `--work/<split>-seed<s>/results.json`, and prints a table.

`--dev` never touches the validation or test pairs of the real split: it
re-splits the real training split (same seed), so the settings are chosen on
pairs that are training pairs of the reported runs.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np

# name -> TrainConfig overrides of the default job's settings.
SETTINGS = {
    "rouge_l": {"rl_reward": "rouge_l", "feedback_min_distinct": 0.0},
    "rouge_l+guard": {"rl_reward": "rouge_l"},
    "composite": {},
    "composite_no_novelty": {"reward_novelty": 0.0},
    "judge0.5": {"reward_judge": 0.5},
    "judge2": {"reward_judge": 2.0},
    "kl0.2": {"rl_kl_coef": 0.2},
    "gamma0.5": {"rl_gamma": 0.5},
    "lr2.5e-4": {"rl_learning_rate": 2.5e-4},
    "no_greedy": {"rl_include_greedy": False},
    "rouge+judge": {"reward_informativeness": 0.0, "reward_fluency": 0.0},
    "novelty0.1": {"reward_novelty": 0.1},
    "novelty0.2": {"reward_novelty": 0.2},
    "novelty0.5": {"reward_novelty": 0.5},
    "novelty1": {"reward_novelty": 1.0},
    "novelty1_no_greedy": {"reward_novelty": 1.0, "rl_include_greedy": False},
}


def bootstrap_interval(differences, seed=0, samples=10000):
    """95% percentile interval of the mean of `differences` (resampled pairs)."""
    differences = np.asarray(differences, np.float64)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (samples, len(differences)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare(before, after, seed=0):
    """Counts of pairs that improved / got worse / tied, the mean difference and its interval."""
    difference = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    low, high = bootstrap_interval(difference, seed)
    return {
        "improved": int((difference > 1e-9).sum()), "worse": int((difference < -1e-9).sum()),
        "same": int((np.abs(difference) <= 1e-9).sum()), "mean_before": float(np.mean(before)),
        "mean_after": float(np.mean(after)), "mean_difference": float(difference.mean()),
        "interval": [low, high],
    }


def held_out_replies(policy, tokenizer, config, pairs, judge):
    """Greedy replies to `pairs`, their per-pair ROUGE-L and the judge's per-reply retrieval success."""
    from keras_selffb import ResponseGenerator
    from keras_selffb.metrics import rouge_l
    from keras_selffb.training.judge_training import retrieval_successes

    generator = ResponseGenerator(policy, tokenizer, config.prompt_length, config.response_length, batch_size=64)
    result = generator.evaluate(pairs, metrics=("rouge_l", "distinct_replies"))
    rouge = rouge_l([r for _, r in pairs], result["replies"], tokenize="cjk").fmeasure.numpy()
    rows, _ = generator.rows(pairs)
    success = retrieval_successes(judge, rows[:, : config.prompt_length], result["reply_ids"])
    return result["replies"], rouge, np.asarray(success, np.float64)


def plot(result_files, path):
    """ROUGE-L against distinct greedy replies, round by round, per setting and seed: one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    markers = ["o", "s", "^", "D", "v"]
    for file_index, name in enumerate(result_files):
        with open(name, encoding="utf-8") as f:
            results = json.load(f)
        for index, (setting, entry) in enumerate(sorted(results["settings"].items())):
            rounds = entry["rounds"]
            label = f"{setting}, seed {results['seed']}"
            style = dict(marker=markers[index % len(markers)], linestyle="-" if file_index == 0 else "--",
                         color=f"C{index}")
            axes[0].plot([r["distinct_replies"] for r in rounds], [r["rouge_l"] for r in rounds], label=label, **style)
            axes[1].plot(range(len(rounds)), [r["distinct_2"] for r in rounds], label=label, **style)
            axes[2].plot(range(len(rounds)), [r["judge_retrieval_accuracy"] for r in rounds], label=label, **style)
            final = entry["final_round"]
            axes[0].annotate("kept", (rounds[final]["distinct_replies"], rounds[final]["rouge_l"]), fontsize=7)
    axes[0].set_xlabel("distinct greedy validation replies")
    axes[0].set_ylabel("validation ROUGE-L")
    axes[0].set_title("overlap vs diversity, round by round")
    axes[1].set_title("validation distinct-2")
    axes[2].set_title("judge retrieval accuracy (chance 0.05)")
    for ax in axes[1:]:
        ax.set_xlabel("round (0 = after MLE)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dev", action="store_true", help="choose settings on a development split")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {list(SETTINGS)}")
    parser.add_argument("--work", default="runs/dialogue_quality")
    parser.add_argument("--override", default="", help="extra TrainConfig overrides for every run: k=v,k=v")
    parser.add_argument("--plot", nargs="+", metavar="RESULTS_JSON",
                        help="only draw docs/figures/dialogue_quality.png from earlier results.json files")
    args = parser.parse_args(argv)
    if args.plot:
        return plot(args.plot, os.path.join(os.path.dirname(os.path.abspath(__file__)), "dialogue_quality.png"))

    import keras
    import yaml

    from keras_selffb import pipeline
    from keras_selffb.config import TrainConfig
    from keras_selffb.data import split_pairs

    extra = {}
    for item in filter(None, args.override.split(",")):
        key, value = item.split("=", 1)
        extra[key] = yaml.safe_load(value)
    base = TrainConfig(seed=args.seed, **extra)
    split = "dev" if args.dev else "report"
    work = os.path.join(args.work, f"{split}-seed{args.seed}")
    os.makedirs(work, exist_ok=True)
    train, validation, test, _ = pipeline.load_data(base)
    data = None
    if args.dev:  # the real training split, split again: its validation is the development set
        data = os.path.join(work, "train_split.jsonl")
        with open(data, "w", encoding="utf-8") as f:
            for prompt, reply in train:
                f.write(json.dumps({"prompt": prompt, "response": reply}, ensure_ascii=False) + "\n")
        base = dataclasses.replace(base, data=data)
        train, validation, test = split_pairs(train, base.seed, base.validation_fraction, base.test_fraction)
    held_out = test
    mle_config = dataclasses.replace(base, output=os.path.join(work, "mle"), feedback_rounds=0)
    start = time.perf_counter()
    mle_report = pipeline.run_train(mle_config, verbose=0)
    mle_seconds = time.perf_counter() - start
    tokenizer = pipeline.load_run(mle_config.run_dir)[1]
    judge = keras.saving.load_model(os.path.join(mle_config.run_dir, pipeline.JUDGE_FILE))
    mle_policy = keras.saving.load_model(os.path.join(mle_config.run_dir, pipeline.MLE_POLICY_FILE))
    mle_replies, mle_rouge, mle_success = held_out_replies(mle_policy, tokenizer, base, held_out, judge)

    results = {"seed": args.seed, "split": split, "mle": mle_report["validation"]["mle"],
               "mle_seconds": round(mle_seconds, 1), "judge": mle_report.get("judge"), "settings": {}}
    for name in args.settings.split(","):
        config = dataclasses.replace(base, output=os.path.join(work, name), **SETTINGS[name])
        shutil.rmtree(config.run_dir, ignore_errors=True)  # from scratch: nothing to resume
        os.makedirs(config.run_dir)
        policy = keras.saving.load_model(os.path.join(mle_config.run_dir, pipeline.MLE_POLICY_FILE))
        keras.utils.set_random_seed(config.seed)
        start = time.perf_counter()
        loop = pipeline.build_loop(config, policy, tokenizer, train, validation, verbose=0, judge=judge)
        rounds = loop.run()
        seconds = time.perf_counter() - start
        replies, rouge, success = held_out_replies(policy, tokenizer, base, held_out, judge)
        results["settings"][name] = {
            "overrides": SETTINGS[name],
            "rounds": [{k.removeprefix("val_"): round(v, 4) for k, v in r["metrics"].items()} for r in rounds],
            "final_round": loop.best_round(),
            "collapsed": any(r.get("collapsed") for r in rounds),
            "seconds": round(seconds, 1),
            "held_out": {
                "pairs": len(held_out),
                "rouge_l": compare(mle_rouge, rouge, args.seed),
                "judge_retrieval": compare(mle_success, success, args.seed),
                "distinct_replies": [len(set(mle_replies)), len(set(replies))],
                "examples": [
                    {"prompt": p, "reference": r, "mle": a, "after": b}
                    for (p, r), a, b in list(zip(held_out, mle_replies, replies))[:10]
                ],
            },
        }
        with open(os.path.join(work, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, ensure_ascii=False, indent=1)
        print_setting(name, results)
    return results


def print_setting(name, results):
    entry = results["settings"][name]
    first, final = entry["rounds"][0], entry["rounds"][entry["final_round"]]
    last = entry["rounds"][-1]
    keys = ("rouge_l", "perplexity", "distinct_replies", "distinct_2", "self_bleu", "mean_reply_length",
            "judge_retrieval_accuracy")
    print(f"\n== {name} ({entry['seconds']:.0f} s; final round {entry['final_round']} of "
          f"{len(entry['rounds']) - 1}{', collapsed' if entry['collapsed'] else ''})")
    for label, row in (("MLE", first), ("final", final), ("last round", last)):
        print(f"  {label:<11}" + "  ".join(f"{k} {row.get(k, float('nan')):.4f}" for k in keys))
    gain = final["rouge_l"] / first["rouge_l"] - 1 if first["rouge_l"] else float("nan")
    print(f"  ROUGE-L {gain:+.1%}, distinct {final['distinct_replies'] / max(first['distinct_replies'], 1):.0%} "
          f"of MLE, ppl {final['perplexity'] / first['perplexity'] - 1:+.1%}")
    for key in ("rouge_l", "judge_retrieval"):
        c = entry["held_out"][key]
        print(f"  held-out {key}: {c['improved']} up / {c['worse']} down, mean {c['mean_before']:.4f} -> "
              f"{c['mean_after']:.4f}, diff {c['mean_difference']:+.4f} [{c['interval'][0]:+.4f}, "
              f"{c['interval'][1]:+.4f}]")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
