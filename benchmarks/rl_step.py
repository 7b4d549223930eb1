"""Benchmark one ReinforceTrainer step: tokens/s and where the time goes.

Times the three parts of a step separately (each its own compiled
function, on the same batch): sampling K candidates, scoring them, and the
update (teacher-forced re-scoring, loss, gradients, Adam), with the
in-graph `RougeLReward` and with the same ROUGE-L computed by rouge-score
through `PythonReward` (host round-trip). With `--models lstm,gpt2,llama`
the same step is timed for each policy (the article's LSTM and keras-hub
GPT-2 / Llama of a similar parameter count, through `CausalLMPolicy`).
Prints a table and writes a PNG.

    python benchmarks/rl_step.py [--batch 16] [--samples 4] [--repeats 5] [--models lstm,gpt2,llama]
                                 [--jit-compile-sampling]

Not part of the test suite.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from keras_selffb.data import load_chatterbot, split_pairs  # noqa: E402
from keras_selffb.models import PolicyNetwork, causal_lm_policy  # noqa: E402
from keras_selffb.rewards import PythonReward, RougeLReward  # noqa: E402
from keras_selffb.text import CharTokenizer, pack_pairs  # noqa: E402
from keras_selffb.training import ReinforceTrainer  # noqa: E402
from step_profile import step_parts, time_call  # noqa: E402  (benchmarks/, beside this script)


def rouge_score_reward():
    scorer = rouge_scorer.RougeScorer(["rougeL"])

    def rouge_l_python(prompts, candidates, references):
        return [scorer.score(r, c)["rougeL"].fmeasure for r, c in zip(references, candidates)]

    return rouge_l_python


def measure(reward, policy, batch, args):
    trainer = ReinforceTrainer(policy, reward, args.prompt_length, args.response_length,
                               num_samples=args.samples, seed=0, jit_compile_sampling=args.jit_compile_sampling)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    parts, candidates = step_parts(trainer, batch)
    times = {name: time_call(fn, args.repeats) for name, fn in parts.items()}
    tokens = float(tf.reduce_sum(tf.cast(candidates > 0, tf.float32)))
    return times, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-length", type=int, default=48)
    parser.add_argument("--response-length", type=int, default=80)
    parser.add_argument("--models", default="lstm",
                        help="comma-separated policies to time: lstm (64/256), gpt2, llama (2 blocks, width 128)")
    parser.add_argument("--jit-compile-sampling", action="store_true",
                        help="ReinforceTrainer(jit_compile_sampling=True): the decoding compiled with XLA")
    parser.add_argument("--plot", default="runs/rl_step_benchmark.png")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)

    train, _, _ = split_pairs(load_chatterbot("en"), seed=0)
    tokenizer = CharTokenizer.train([t for pair in train for t in pair])
    batch = tf.constant(pack_pairs(tokenizer, train[: args.batch], args.prompt_length,
                                   args.response_length, warn=False))

    def build(kind):
        if kind == "lstm":
            return PolicyNetwork(tokenizer.vocabulary_size, 64, 256)
        return causal_lm_policy(kind, tokenizer.vocabulary_size, num_layers=2, hidden_dim=128, num_heads=4,
                                max_sequence_length=args.prompt_length + args.response_length, seed=0)

    rows = []
    for i, kind in enumerate(args.models.split(",")):
        policy = build(kind)
        policy(batch[:1])
        size = sum(int(np.prod(w.shape)) for w in policy.weights)
        rewards = [("in-graph RougeLReward", RougeLReward(tokenizer, tokenize="rouge"))]
        if i == 0:  # the host round-trip comparison, once
            rewards.append(("PythonReward(rouge-score)", PythonReward(rouge_score_reward(), tokenizer, name="rouge_l")))
        for label, reward in rewards:
            times, tokens = measure(reward, policy, batch, args)
            total = sum(times.values())
            rows.append((f"{kind} ({size / 1e3:.0f}k), {label}", times, total, tokens / total))

    print(f"\nOne RL step: {args.batch} prompts x K={args.samples} candidates, "
          f"up to {args.response_length} tokens each, CPU, best of {args.repeats}")
    header = f"{'policy (parameters), reward':<46}{'tokens/s':>10}{'step s':>9}{'sampling':>10}{'scoring':>10}{'update':>10}"
    print(header)
    print("-" * len(header))
    for label, times, total, speed in rows:
        shares = "".join(f"{100 * times[k] / total:>9.1f}%" for k in ("sampling", "scoring", "update"))
        print(f"{label:<46}{speed:>10.0f}{total:>9.3f}{shares}")
    ours, theirs = rows[0][1]["scoring"], rows[1][1]["scoring"]
    print(f"\nscoring time, rouge-score via PythonReward / in-graph: {theirs / ours:.2f}x")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * len(rows)))
    left = np.zeros(len(rows))
    for part in ("sampling", "scoring", "update"):
        values = np.array([r[1][part] for r in rows])
        ax.barh([r[0] for r in rows], values, left=left, label=part)
        left += values
    ax.set_xlabel("seconds per RL step")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    fig.savefig(args.plot, dpi=100)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
