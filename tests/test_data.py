"""Loaders on small fixtures, the embedded corpus and the split."""

import json

import pytest

from keras_selffb.data import (
    load_chatterbot,
    load_jsonl,
    load_pairs,
    load_text,
    load_tsv,
    split_pairs,
)


def test_text_loader(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\tworld\n\njust a line\n你好\t世界\n", encoding="utf-8")
    assert load_text(str(path)) == [("hello", "world"), ("", "just a line"), ("你好", "世界")]


def test_jsonl_loader_both_field_names(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [{"prompt": "a", "response": "b"}, {"source": "长文本", "target": "摘要"}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    assert load_pairs(str(path)) == [("a", "b"), ("长文本", "摘要")]


def test_jsonl_missing_field_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2: missing fields.*found \['prompt'\]"):
        load_jsonl(str(path))
    path.write_text('{"prompt": "a", "response": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        load_jsonl(str(path))


def test_tsv_loader_skips_header_and_checks_columns(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("prompt\tresponse\nq1\ta1\nq2\ta2\n", encoding="utf-8")
    assert load_tsv(str(path)) == [("q1", "a1"), ("q2", "a2")]
    path.write_text("q1\ta1\textra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: expected 2 tab-separated fields"):
        load_tsv(str(path))


def test_missing_file_non_utf8_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pairs(str(tmp_path / "missing.txt"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8.*0xe9 on line 2"):
        load_text(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_text(str(empty))
    with pytest.raises(ValueError, match="Cannot tell the format"):
        load_pairs(str(tmp_path / "data.csv"))


def test_chatterbot_corpus_english_and_chinese():
    english = load_chatterbot("en")
    chinese = load_chatterbot("zh")
    assert len(english) > 2000 and len(chinese) > 500
    # Consecutive turns: the reply to "Hello" in the greetings file is "Hi".
    assert ("Hello", "Hi") in english
    assert ("你好", "嗨") in chinese
    with pytest.raises(ValueError, match="Unknown corpus language"):
        load_chatterbot("xx")


def test_split_is_deterministic_and_grouped_by_prompt():
    pairs = load_chatterbot("en")
    first = split_pairs(pairs, seed=3)
    assert split_pairs(pairs, seed=3) == first
    assert split_pairs(pairs, seed=4) != first
    train, validation, test = first
    assert len(train) + len(validation) + len(test) == len(pairs)
    train_prompts = {p for p, _ in train}
    assert not train_prompts & {p for p, _ in validation}
    assert not train_prompts & {p for p, _ in test}
    with pytest.raises(ValueError, match="empty dataset"):
        split_pairs([])
