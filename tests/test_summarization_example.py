"""The summarization example's data: the headline rule, determinism, disjoint splits, user files.

Fast: the generator is plain Python (no model is trained here).
"""

import importlib.util
import json
import os
import random

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "summarization.py")
_SPEC = importlib.util.spec_from_file_location("summarization_example", _PATH)
summarization = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(summarization)

# Hand-written documents and the headline the rule gives them.
HAND_CASES = [
    (
        "the city council approved a new budget on monday . it followed months of complaints . "
        "the art museum declined to comment .",
        "council approves budget after complaints",
    ),
    (  # no reason sentence: no "after"; the side event of another organisation is not the event
        "a large bank sold its main office today . the county court bought the river bridge last year .",
        "bank sells office",
    ),
    (  # the event does not lead: a remark comes first
        "the local police welcomed the news . the farmers union delayed a jobs program for youth last week . "
        "officials cited a drop in funding .",
        "union delays jobs program after funding cut",
    ),
    (
        "the school board wants more details . a tech company expanded a study of air quality on friday .",
        "company expands air study",
    ),
]


@pytest.mark.parametrize("document, summary", HAND_CASES)
def test_headline_rule_on_hand_written_documents(document, summary):
    assert summarization.headline_rule(document) == summary


def test_headline_rule_rejects_a_document_without_an_event():
    with pytest.raises(ValueError, match="No event sentence"):
        summarization.headline_rule("the county court declined to comment .")


def test_make_example_follows_the_rule_and_reports_its_parts():
    rng = random.Random(3)
    for _ in range(200):
        event = (rng.randrange(12), rng.randrange(10), rng.randrange(12))
        document, summary, parts = summarization.make_example(rng, event)
        assert (parts["actor"], parts["verb"], parts["object"]) == event
        actor, verb, obj = (summarization.ACTORS[event[0]], summarization.VERBS[event[1]],
                            summarization.OBJECTS[event[2]])
        assert f"{actor[0]} {verb[0]} {obj[0]} " in document
        expected = f"{actor[1]} {verb[1]} {obj[1]}"
        if parts["reason"] is not None:
            reason = summarization.REASONS[parts["reason"]]
            assert reason[0] in document
            expected += f" after {reason[1]}"
        assert summary == expected == summarization.headline_rule(document)
        # Only the event's organisation is the actor; the other sentences name others.
        assert document.count(actor[0]) == 1
        assert document.endswith(" .") and 2 <= document.count(" . ") + 1 <= 4


def test_synthetic_pairs_deterministic_per_seed_and_sized():
    a = summarization.synthetic_pairs(5, train_size=200, dev_size=40, test_size=50)
    b = summarization.synthetic_pairs(5, train_size=200, dev_size=40, test_size=50)
    c = summarization.synthetic_pairs(6, train_size=200, dev_size=40, test_size=50)
    assert a == b
    assert a["train"] != c["train"]
    assert {k: len(v) for k, v in a.items()} == {"train": 200, "dev": 40, "test": 50}
    for pairs in a.values():
        assert all(summarization.headline_rule(d) == s for d, s in pairs)


def _events(pairs):
    # The event is the summary without its reason: (actor, verb, object) short forms.
    return {s.split(" after ")[0] for _, s in pairs}


def test_synthetic_splits_are_disjoint_by_event():
    splits = summarization.synthetic_pairs(0, train_size=3000)
    train, dev, test = (_events(splits[k]) for k in ("train", "dev", "test"))
    assert not train & dev and not train & test and not dev & test
    documents = {k: {d for d, _ in v} for k, v in splits.items()}
    assert not documents["train"] & documents["test"] and not documents["dev"] & documents["test"]
    # 20% of the 1440 events are held out; training sees most of the rest.
    assert len(dev) <= 144 and len(test) <= 144 and len(train) > 1000


def test_user_files_tsv_and_jsonl(tmp_path):
    pairs = [(f"document number {i} . it has words .", f"summary {i}") for i in range(20)]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("document\tsummary\n" + "".join(f"{d}\t{s}\n" for d, s in pairs), encoding="utf-8")
    assert summarization.load_user_pairs(str(tsv)) == pairs
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"article": d + "\n", "highlights": s}) + "\n" for d, s in pairs),
                     encoding="utf-8")
    assert summarization.load_user_pairs(str(jsonl)) == pairs  # whitespace normalised
    generic = tmp_path / "generic.jsonl"
    generic.write_text("".join(json.dumps({"source": d, "target": s}) + "\n" for d, s in pairs), encoding="utf-8")
    assert summarization.load_user_pairs(str(generic)) == pairs
    short = tmp_path / "short.tsv"
    short.write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="need at least 10"):
        summarization.load_user_pairs(str(short))


def test_split_user_pairs_deterministic_and_disjoint():
    pairs = [(f"doc {i % 40}", f"sum {i}") for i in range(100)]  # 40 documents, some repeated
    a, b = summarization.split_user_pairs(pairs, 0), summarization.split_user_pairs(pairs, 0)
    assert a == b and a != summarization.split_user_pairs(pairs, 1)
    docs = {k: {d for d, _ in v} for k, v in a.items()}
    assert (len(docs["dev"]), len(docs["test"])) == (4, 4)
    assert not docs["train"] & docs["dev"] and not docs["train"] & docs["test"] and not docs["dev"] & docs["test"]
    assert sum(len(v) for v in a.values()) == 100
