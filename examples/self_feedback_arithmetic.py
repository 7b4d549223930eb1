"""Self-feedback with an exact reward: "write an expression equal to N".

A stand-in for code generation with execution feedback. The warm-up data
comes from a noisy teacher: 60% of its answers are `N+1` (wrong), the rest
one of `N+0`, `N*1`, `N-0`, `0+N`. A policy trained on it by maximum
likelihood answers `N+1` when decoding greedily. `SelfFeedbackLoop` then
runs rounds of: sample 4 answers per training target, execute them with a
safe evaluator (a host-Python reward), keep the ones that pass, fine-tune
on them. The pass rate on 300 held-out targets (never seen in training)
is printed per round and plotted to `runs/arithmetic/rounds.png`.

    python examples/self_feedback_arithmetic.py --seed 0
"""

import argparse
import os
import time

import keras

from keras_selffb.data.arithmetic import arithmetic_pairs, pass_reward, split_targets
from keras_selffb.loop import SelfFeedbackLoop
from keras_selffb.generator import generate
from keras_selffb.models import PolicyNetwork
from keras_selffb.plots import plot_rounds
from keras_selffb.rewards import PythonReward
from keras_selffb.text import CharTokenizer, make_dataset, pack_pairs
from keras_selffb.training import MLETrainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="runs/arithmetic")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    train_targets, held_out = split_targets(999, 0.3, seed=args.seed)
    tokenizer = CharTokenizer.train(["0123456789+-*()"])
    policy = PolicyNetwork(tokenizer.vocabulary_size, 32, 128)
    mle = MLETrainer(policy, prompt_length=6)
    mle.compile(optimizer=keras.optimizers.Adam(3e-3))
    start = time.perf_counter()
    warm_up = pack_pairs(tokenizer, arithmetic_pairs(train_targets, 1, 0.6, seed=args.seed), 6, 8)
    mle.fit(make_dataset(warm_up, 32, shuffle=True, seed=args.seed), epochs=15, verbose=2)

    loop = SelfFeedbackLoop(
        policy, tokenizer, PythonReward(pass_reward, tokenizer, name="passes"),
        [(str(n), "") for n in train_targets], [(str(n), "") for n in held_out], 6, 8,
        methods="filtered", rounds=args.rounds, num_samples=4, min_reward=1.0,
        threshold_quantiles=(0.0,), epochs_per_round=2, batch_size=32, learning_rate=3e-3,
        text_metrics=False, directory=os.path.join(args.output, "checkpoints"), log_dir=args.output,
        seed=args.seed, score_batch_size=256, verbose=2,
    )
    history = loop.run()
    print(f"\n{'round':<8}{'held-out pass rate':>20}{'train candidates passing':>26}{'kept':>8}")
    for record in history:
        passing = record.get("candidate_reward_mean")
        kept = record.get("filtered", {}).get("kept", "")
        print(f"{record['round']:<8}{record['metrics']['val_reward']:>20.3f}"
              f"{'' if passing is None else f'{passing:.3f}':>26}{kept:>8}")
    print(f"total {time.perf_counter() - start:.0f} s; plot: {plot_rounds(history, os.path.join(args.output, 'rounds.png'))}")
    prompts = [str(n) for n in held_out[:8]]
    for prompt, reply in zip(prompts, generate(policy, tokenizer, prompts, 6, 8)):
        print(f"  {prompt} -> {reply}")


if __name__ == "__main__":
    main()
