"""The Chit-Chat Challenge corpus (`chitchat-dataset`, MIT licence) as pairs.

The BYU PCC lab's corpus holds about 7,000 two-person conversations. Each
conversation is a list of turns, and each turn a list of messages sent in a
row by one speaker. A turn's text is its messages' texts joined with one
space, with whitespace normalised; consecutive turns give the
(prompt, reply) pairs.
"""

import functools
import json
import numbers
import os

import numpy as np


def _check_limit(name, value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int or None; got {value!r}.")


def _turn_text(turn):
    """A turn's messages joined with one space; every run of whitespace becomes one space."""
    return " ".join(" ".join(str(message.get("text") or "") for message in turn).split())


@functools.lru_cache(maxsize=None)
def _conversations():
    """The pairs of each conversation, in sorted conversation-id order (read once per process)."""
    try:
        import chitchat_dataset
    except ImportError:
        raise ImportError(
            "The Chit-Chat corpus needs the 'chitchat-dataset' package: pip install chitchat-dataset"
        ) from None
    # The file `chitchat_dataset.Dataset()` reads, opened here as UTF-8 and closed.
    path = os.path.join(os.path.dirname(chitchat_dataset.__file__), "dataset.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    conversations = []
    for key in sorted(data):
        turns = [_turn_text(turn) for turn in data[key].get("messages") or []]
        conversations.append(
            tuple((prompt, reply) for prompt, reply in zip(turns[:-1], turns[1:]) if prompt and reply)
        )
    return tuple(conversations)


def load_chitchat(max_pairs=None, max_chars=None, seed=0):
    """(prompt, reply) pairs from the Chit-Chat Challenge conversations.

    Each conversation with turns `[t0, t1, t2, ...]` gives `(t0, t1), (t1, t2),
    ...`; a turn is its messages' texts joined with one space, stripped, with
    every run of whitespace (newlines and tabs included) made one space. Pairs
    with an empty side are dropped; duplicates are kept. Conversations are
    taken in sorted id order, so the list is the same on every machine. The
    40 MB file is parsed once per process.

    Args:
        max_pairs: int or None. Keep at most this many pairs, taking whole
            conversations (all their pairs that pass `max_chars`) in an
            order shuffled by `seed`, skipping any that would overflow the
            limit: a seeded random sample of conversations. `None` (the
            default) keeps every pair, in conversation order.
        max_chars: int or None. Drop pairs whose prompt or reply has more
            than this many characters, so a model with a fixed character
            window is never fed cut text. Defaults to `None` (no limit).
        seed: int. Seeds `numpy.random.default_rng` for the conversation
            order; only used with `max_pairs`. Defaults to `0`.

    Returns:
        A list of `(prompt, reply)` str tuples.

    Example:

    >>> pairs = load_chitchat(max_pairs=50, max_chars=80, seed=1)
    >>> 0 < len(pairs) <= 50
    True
    >>> all(0 < len(p) <= 80 and 0 < len(r) <= 80 for p, r in pairs)
    True
    >>> pairs == load_chitchat(max_pairs=50, max_chars=80, seed=1)
    True
    """
    _check_limit("max_pairs", max_pairs)
    _check_limit("max_chars", max_chars)
    conversations = _conversations()
    if max_chars is not None:
        conversations = [
            [(p, r) for p, r in pairs if len(p) <= max_chars and len(r) <= max_chars]
            for pairs in conversations
        ]
    if max_pairs is None:
        result = [pair for pairs in conversations for pair in pairs]
    else:
        result = []
        for index in np.random.default_rng(seed).permutation(len(conversations)):
            pairs = conversations[index]
            if len(result) + len(pairs) <= max_pairs:
                result.extend(pairs)
                if len(result) == max_pairs:
                    break
    if not result:
        raise ValueError(
            f"No Chit-Chat pairs left with max_pairs={max_pairs!r} and max_chars={max_chars!r}: "
            "raise the limits."
        )
    return result
