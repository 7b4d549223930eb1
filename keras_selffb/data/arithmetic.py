"""A task with an exact reward: write an arithmetic expression equal to N.

A stand-in for code generation with execution feedback: the prompt is a
number, the reply is an expression, and the reward runs the reply through a
safe evaluator and checks the result. `SelfFeedbackLoop` uses it to show
self-improvement with a reward no n-gram metric can give.

- `safe_evaluate("12+3*4")` -> `24`; anything that is not a short
  expression of non-negative integers, `+ - *` and parentheses -> `None`
  (no `eval`: the expression is parsed with `ast` and only those nodes are
  accepted, with bounds on length and size).
- `arithmetic_pairs(targets, per_target, error_rate, seed)`: the
  supervised warm-up data, from a teacher that is wrong most of the time.
- `pass_reward(prompts, candidates, references)`: 1.0 where the candidate
  evaluates to the prompt's number, else 0.0; a host-Python reward for
  `keras_selffb.rewards.PythonReward`.
"""

import ast

import numpy as np

MAX_LENGTH = 32
MAX_VALUE = 10**6

_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def _value(node):
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if left is None or right is None:
            return None
        result = _OPERATORS[type(node.op)](left, right)
        return result if abs(result) <= MAX_VALUE else None
    return None


def safe_evaluate(expression):
    """The integer value of `expression`, or None if it is not a valid one.

    Accepted: decimal integers, `+`, `-`, `*` (binary) and parentheses, at
    most `MAX_LENGTH` characters, intermediate values within
    `MAX_VALUE`. Nothing is executed.

    Example:

    >>> safe_evaluate("(2+3)*4"), safe_evaluate("2**100"), safe_evaluate("__import__('os')")
    (20, None, None)
    """
    if not isinstance(expression, str):
        return None
    text = expression.strip()
    if not text or len(text) > MAX_LENGTH or not set(text) <= set("0123456789+-*() "):
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return None
    return _value(tree.body)


def target_of(prompt):
    """The number a prompt asks for, or None."""
    text = prompt.strip()
    return int(text) if text.isdigit() else None


def pass_reward(prompts, candidates, references):
    """1.0 where `safe_evaluate(candidate) == int(prompt)`, else 0.0."""
    scores = []
    for prompt, candidate in zip(prompts, candidates):
        target = target_of(prompt)
        scores.append(1.0 if target is not None and safe_evaluate(candidate) == target else 0.0)
    return scores


CORRECT_FORMS = ("{n}+0", "{n}*1", "{n}-0", "0+{n}")
WRONG_FORM = "{n}+1"


def arithmetic_pairs(targets, per_target=1, error_rate=0.6, seed=0):
    """`(str(N), expression)` warm-up pairs from a noisy teacher.

    With probability `1 - error_rate` the answer is one of four correct
    forms (`N+0`, `N*1`, `N-0`, `0+N`); otherwise it is `N+1`, a
    systematic off-by-one error. With the default 0.6, the error is the
    single most frequent answer, so a model trained on these pairs by
    maximum likelihood answers `N+1` when decoding greedily, and fails.
    Only the reward (executing the expression) can tell the forms apart:
    the situation of supervised data with a systematic bug, fixed by
    execution feedback.

    Args:
        targets: iterable of non-negative ints.
        per_target: int. Answers per target.
        error_rate: float. Share of wrong answers.
        seed: int.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for n in targets:
        for _ in range(per_target):
            if rng.random() < error_rate:
                expression = WRONG_FORM.format(n=n)
            else:
                expression = CORRECT_FORMS[rng.integers(len(CORRECT_FORMS))].format(n=n)
            pairs.append((str(n), expression))
    return pairs


def split_targets(maximum=99, held_out=0.3, seed=0):
    """Splits `0..maximum` into `(train, held_out)` target lists, seeded."""
    numbers = np.random.default_rng(seed).permutation(maximum + 1)
    cut = int(round(len(numbers) * (1 - held_out)))
    return sorted(numbers[:cut].tolist()), sorted(numbers[cut:].tolist())
