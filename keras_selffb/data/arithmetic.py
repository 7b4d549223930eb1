"""A task with an exact reward: write an arithmetic expression equal to N.

A stand-in for code generation with execution feedback: the prompt is a
number, the reply is an expression, and the reward runs the reply through a
safe evaluator and checks the result. `SelfFeedbackLoop` uses it to show
self-improvement with a reward no n-gram metric can give.

- `safe_evaluate("12+3*4")` -> `24`; anything that is not a short
  expression of non-negative integers, `+ - *` and parentheses -> `None`
  (no `eval`: the expression is parsed with `ast` and only those nodes are
  accepted, with bounds on length and size).
- `arithmetic_pairs(targets, per_target, seed)`: `(str(N), "a+b")` pairs,
  the supervised warm-up data.
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


COPY_FORMS = ("{n}+0", "{n}*1")


def arithmetic_pairs(targets, per_target=2, copy_fraction=0.0, seed=0):
    """`(str(N), expression)` warm-up pairs, every expression equal to N.

    Most expressions are `a+b` with `a` drawn uniformly in `[0, N]` (hard
    for a small model: it must subtract); a `copy_fraction` of them use N
    itself (`N+0`, `N*1`: easy, it only copies). A model
    warmed up on this mix mostly writes `a+b` and mostly fails; rounds of
    self-feedback can find out, from the reward alone, that the rare copy
    forms pass.

    Args:
        targets: iterable of non-negative ints.
        per_target: int. Expressions per target.
        copy_fraction: float. Share of copy-form expressions.
        seed: int.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for n in targets:
        for _ in range(per_target):
            if rng.random() < copy_fraction:
                expression = COPY_FORMS[rng.integers(len(COPY_FORMS))].format(n=n)
            else:
                a = int(rng.integers(0, n + 1))
                expression = f"{a}+{n - a}"
            pairs.append((str(n), expression))
    return pairs


def split_targets(maximum=99, held_out=0.3, seed=0):
    """Splits `0..maximum` into `(train, held_out)` target lists, seeded."""
    numbers = np.random.default_rng(seed).permutation(maximum + 1)
    cut = int(round(len(numbers) * (1 - held_out)))
    return sorted(numbers[:cut].tolist()), sorted(numbers[cut:].tolist())
