"""One worker of a localhost MultiWorkerMirroredStrategy run (used by test_multiworker.py).

Run as a script, it sets `TF_CONFIG` from `--workers` and `--index`, builds
the strategy before anything else touches TensorFlow, trains one trainer
for one epoch of a tiny Chinese dialogue set and writes a JSON report and
the initial and final weights (`.npz`) under `--out`. With `--workers` left
out it trains the same way on TensorFlow's default strategy (one device), for
timing against the two-worker run.

Imported, it only exposes the data and the trainers, so the test can build
the identical single-device reference in its own process.
"""

import argparse
import json
import os
import sys
import time

PAIRS = [
    ("你好", "你好，很高兴认识你"),
    ("今天天气怎么样", "今天天气很好"),
    ("你喜欢什么", "我喜欢看书"),
    ("你叫什么名字", "我叫小明"),
    ("我们去哪里", "我们去公园"),
    ("你吃饭了吗", "我吃过了"),
    ("明天见", "明天见，再见"),
    ("谢谢你", "不客气"),
]
PROMPT_LENGTH = 8
RESPONSE_LENGTH = 6
GLOBAL_BATCH = 4
SEED = 7
TRAINERS = ("mle", "reinforce", "contrastive")


def build_data():
    """The tokenizer and the packed rows `(8, P + R)`, identical in every process."""
    from keras_selffb.text import CharTokenizer, pack_pairs

    tokenizer = CharTokenizer.train([text for pair in PAIRS for text in pair])
    packed = pack_pairs(tokenizer, PAIRS, PROMPT_LENGTH, RESPONSE_LENGTH, warn=False)
    return tokenizer, packed


def build_trainer(kind, policy, tokenizer):
    """A compiled trainer of `kind` around `policy`; call inside `strategy.scope()`."""
    import keras

    from keras_selffb.rewards import RougeLReward
    from keras_selffb.training import ContrastiveTrainer, MLETrainer, ReinforceTrainer

    if kind == "mle":
        trainer = MLETrainer(policy, prompt_length=PROMPT_LENGTH)
    elif kind == "reinforce":
        # Greedy candidates are the same whatever the replica layout, so the
        # two-worker result can be compared with one device; the reward
        # detokenizes in the graph and scores Chinese per character.
        trainer = ReinforceTrainer(
            policy, RougeLReward(tokenizer), prompt_length=PROMPT_LENGTH,
            max_new_tokens=RESPONSE_LENGTH, num_samples=2, sampler="greedy",
            baseline="moving_average", whiten=True, entropy_coef=0.05, gamma=0.7,
        )
    elif kind == "contrastive":
        trainer = ContrastiveTrainer(
            policy, prompt_length=PROMPT_LENGTH, max_new_tokens=RESPONSE_LENGTH,
            mode="sequence_likelihood", num_samples=3, sampler="random", seed=SEED,
            margin=0.05, mle_weight=0.5,
        )
    else:
        raise ValueError(f"Unknown trainer {kind!r}; choose one of {TRAINERS}.")
    # SGD, not Adam: Adam's first steps would hide a loss scaled wrongly by
    # the number of workers.
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    return trainer


def build_policy(vocab_size):
    from keras_selffb.models import PolicyNetwork

    return PolicyNetwork(vocab_size, 8, 8)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", default=",".join(TRAINERS),
                        help=f"comma-separated, in order, from {TRAINERS}")
    parser.add_argument("--out", required=True, help="directory for report.json and weights")
    parser.add_argument("--workers", default="", help="comma-separated host:port of every worker")
    parser.add_argument("--index", type=int, default=0, help="this worker's position in --workers")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="repeat the 8 rows this many times")
    parser.add_argument("--timeout-seconds", type=float, default=None,
                        help="collective timeout of the strategy")
    parser.add_argument("--stall-after-steps", type=int, default=0,
                        help="after this many steps, print STALLED and sleep (to be killed mid-training)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    unknown = set(args.trainers.split(",")) - set(TRAINERS)
    if unknown:
        raise SystemExit(f"Unknown trainers {sorted(unknown)}; choose from {TRAINERS}.")
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.workers:
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": args.workers.split(",")},
            "task": {"type": "worker", "index": args.index},
        })
    else:
        os.environ.pop("TF_CONFIG", None)

    from keras_selffb.distribute import get_strategy, is_chief, make_distributed_dataset

    started = time.perf_counter()
    # First: nothing may run a TensorFlow op before the strategy exists.
    strategy = get_strategy("multi_worker" if args.workers else "default",
                            timeout_seconds=args.timeout_seconds)

    import keras
    import numpy as np

    tokenizer, packed = build_data()
    packed = np.tile(packed, (args.repeat, 1))
    dataset = make_distributed_dataset(packed, GLOBAL_BATCH, strategy)
    reports = {}
    for kind in args.trainers.split(","):
        reports[kind] = train_one(kind, strategy, tokenizer, dataset, args)
    report = {
        "index": args.index,
        "chief": is_chief(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "trainers": reports,
        "total_s": time.perf_counter() - started,
    }
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f)
    print(json.dumps(report), flush=True)
    return 0


def train_one(kind, strategy, tokenizer, dataset, args):
    """Trains a fresh seeded policy with trainer `kind`; writes its weights; returns timings."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(SEED)
    with strategy.scope():
        policy = build_policy(tokenizer.vocabulary_size)
        initial = [w.numpy() for w in policy.weights]
        trainer = build_trainer(kind, policy, tokenizer)

    step_ends = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step_ends.append(time.perf_counter())
            if args.stall_after_steps and len(step_ends) == args.stall_after_steps:
                # The peers are now blocked in the next step's all-reduce.
                print(f"STALLED worker {args.index} after step {len(step_ends)}", flush=True)
                time.sleep(600)

    fit_started = time.perf_counter()
    history = trainer.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[Clock()])
    final = [w.numpy() for w in policy.weights]
    np.savez(os.path.join(args.out, f"{kind}_initial.npz"), *initial)
    np.savez(os.path.join(args.out, f"{kind}_final.npz"), *final)
    steps = len(step_ends)
    return {
        "steps": steps,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "first_step_s": step_ends[0] - fit_started,
        # Steady state: the steps after the first (which traces the step).
        "steps_per_s": (steps - 1) / (step_ends[-1] - step_ends[0]) if steps > 1 else None,
    }


if __name__ == "__main__":
    sys.exit(main())
