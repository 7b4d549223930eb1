"""`load_chitchat` against pairs computed here directly from the raw JSON."""

import json
import os
import re
import sys

import numpy as np
import pytest

from keras_selffb.data import chitchat, load_chitchat

chitchat_dataset = pytest.importorskip("chitchat_dataset")


def _text(turn):
    return re.sub(r"\s+", " ", " ".join(m["text"] for m in turn)).strip()


@pytest.fixture(scope="module")
def raw():
    path = os.path.join(os.path.dirname(chitchat_dataset.__file__), "dataset.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def blocks(raw):
    """The expected pairs of each conversation, in sorted id order."""
    result = []
    for key in sorted(raw):
        turns = [_text(turn) for turn in raw[key]["messages"]]
        result.append([(a, b) for a, b in zip(turns, turns[1:]) if a and b])
    return result


@pytest.fixture(scope="module")
def full():
    return load_chitchat()


def _filtered(blocks, max_chars):
    return [[(p, r) for p, r in b if len(p) <= max_chars and len(r) <= max_chars] for b in blocks]


def _decompose(pairs, blocks):
    """Indices of the whole, distinct, non-empty blocks whose concatenation is `pairs`, else None."""
    by_first = {}
    for index, block in enumerate(blocks):
        if block:
            by_first.setdefault(block[0], []).append(index)
    for candidates in by_first.values():
        candidates.sort(key=lambda i: -len(blocks[i]))
    used, position = [], 0
    while position < len(pairs):
        for index in by_first.get(pairs[position], []):
            block = blocks[index]
            if index not in used and pairs[position : position + len(block)] == block:
                used.append(index)
                position += len(block)
                break
        else:
            return None
    return used


def test_all_pairs_equal_an_independent_count(raw, blocks, full):
    count = 0
    for conversation in raw.values():
        turns = [" ".join(m["text"] for m in turn).strip() for turn in conversation["messages"]]
        count += sum(1 for a, b in zip(turns, turns[1:]) if a and b)
    assert len(full) == count
    assert full == [pair for block in blocks for pair in block]
    assert all(isinstance(p, str) and isinstance(r, str) for p, r in full)


def test_first_pair_of_the_first_conversation(raw, full):
    first = raw[sorted(raw)[0]]["messages"]
    assert full[0] == (_text(first[0]), _text(first[1]))
    assert full[0][0] == "I would binge watch just about about every tv show"
    assert full[0][1].startswith("After high confusion and probably a mental breakdown")


def test_multi_message_turns_are_joined_with_one_space(raw, full):
    # A turn of several messages appears as a prompt: their texts joined.
    key = next(k for k in sorted(raw) if any(len(t) > 1 for t in raw[k]["messages"][:-1]))
    turns = raw[key]["messages"]
    i = next(i for i, t in enumerate(turns[:-1]) if len(t) > 1)
    expected = " ".join(" ".join(m["text"].split()) for m in turns[i])
    assert expected in {p for p, _ in full}


def test_whitespace_is_normalised(raw, full):
    # The raw text does hold newlines and runs of spaces, so this checks something.
    texts = [m["text"] for c in raw.values() for t in c["messages"] for m in t]
    assert any("\n" in t or "  " in t or t != t.strip() for t in texts)
    for prompt, reply in full:
        for side in (prompt, reply):
            assert side and side == side.strip()
            assert "  " not in side and "\n" not in side and "\t" not in side and "\r" not in side


@pytest.mark.parametrize("max_chars", [1, 80, 120])
def test_max_chars_equals_filtering_the_full_list(full, max_chars):
    pairs = load_chitchat(max_chars=max_chars)
    assert pairs == [(p, r) for p, r in full if len(p) <= max_chars and len(r) <= max_chars]
    assert 0 < len(pairs) < len(full)
    assert max(max(len(p), len(r)) for p, r in pairs) <= max_chars


@pytest.mark.parametrize("max_chars", [None, 80])
def test_max_pairs_takes_whole_conversations(blocks, max_chars):
    if max_chars is not None:
        blocks = _filtered(blocks, max_chars)
    pairs = load_chitchat(max_pairs=500, max_chars=max_chars, seed=3)
    # Hundreds of one-pair conversations let the sample fill up exactly.
    assert len(pairs) == 500
    used = _decompose(pairs, blocks)
    assert used is not None, "the sample is not a union of whole conversations"
    assert len(used) > 1
    # A shuffled sample, not the first conversations in id order.
    assert sorted(used) != list(range(len(used)))


def test_max_pairs_one_and_numpy_ints(full):
    assert len(load_chitchat(max_pairs=1)) == 1
    assert load_chitchat(max_pairs=np.int64(40), max_chars=np.int32(80)) == load_chitchat(
        max_pairs=40, max_chars=80
    )
    # A limit above the corpus size keeps every pair (in shuffled order).
    everything = load_chitchat(max_pairs=10**9, seed=5)
    assert len(everything) == len(full) and sorted(everything) == sorted(full)


def test_seed_makes_the_sample_deterministic():
    a = load_chitchat(max_pairs=300, seed=0)
    assert a == load_chitchat(max_pairs=300, seed=0)
    assert a != load_chitchat(max_pairs=300, seed=1)
    assert set(a) != set(load_chitchat(max_pairs=300, seed=1))


def test_results_are_fresh_lists(full):
    pairs = load_chitchat(max_pairs=10)
    expected = list(pairs)
    pairs.clear()
    full_copy = load_chitchat()
    assert load_chitchat(max_pairs=10) == expected
    assert full_copy == full and full_copy is not full


def test_skips_conversations_that_would_overflow(monkeypatch):
    toy = ((("a", "b"), ("b", "cc"), ("cc", "d")), (("e", "f"),), (("g", "h"), ("h", "i")))
    monkeypatch.setattr(chitchat, "_conversations", lambda: toy)
    for seed in range(10):
        pairs = load_chitchat(max_pairs=3, seed=seed)
        assert len(pairs) == 3  # 3 alone, or 1 + 2, whichever the order reaches first
        assert _decompose(pairs, [list(b) for b in toy]) is not None
        # max_chars applies first: the first conversation shrinks to one pair.
        assert load_chitchat(max_pairs=1, max_chars=1, seed=seed) in ([("a", "b")], [("e", "f")])
    monkeypatch.setattr(chitchat, "_conversations", lambda: toy[:1])
    with pytest.raises(ValueError, match=r"max_pairs=2"):
        load_chitchat(max_pairs=2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_pairs": 0}, "max_pairs"),
        ({"max_pairs": -5}, "max_pairs"),
        ({"max_pairs": True}, "max_pairs"),
        ({"max_pairs": 2.5}, "max_pairs"),
        ({"max_pairs": "10"}, "max_pairs"),
        ({"max_chars": 0}, "max_chars"),
        ({"max_chars": False}, "max_chars"),
        ({"max_chars": 80.0}, "max_chars"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(kwargs, name):
    (value,) = kwargs.values()
    with pytest.raises(ValueError, match=re.escape(f"{name} must be a positive int or None; got {value!r}")):
        load_chitchat(**kwargs)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "chitchat_dataset", None)
    with pytest.raises(ImportError, match="pip install chitchat-dataset"):
        chitchat._conversations.__wrapped__()


def test_the_pipeline_reads_chitchat_pairs_that_fit_the_reply_window():
    from keras_selffb.config import TrainConfig
    from keras_selffb.pipeline import read_pairs
    from keras_selffb.run_directory import data_fingerprint

    config = TrainConfig(corpus="chitchat", corpus_pairs=300, response_length=40, seed=4)
    pairs = read_pairs(config)
    assert pairs == load_chitchat(max_pairs=300, max_chars=39, seed=4)
    assert len(pairs) == 300 and all(len(p) <= 39 and len(r) <= 39 for p, r in pairs)
    assert data_fingerprint(config, pairs)["source"] == "chitchat-dataset"
    # The chatterbot corpus stays the default.
    assert read_pairs(TrainConfig()) != pairs and TrainConfig().corpus == "chatterbot"
