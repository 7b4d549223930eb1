"""Loaders on small fixtures, the embedded corpus and the split."""

import json

import numpy as np
import pytest

from keras_selffb.data import (
    load_chatterbot,
    load_json,
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


def _old_split_pairs(pairs, seed=0, validation_fraction=0.1, test_fraction=0.1):
    """split_pairs before lines with an empty prompt were split one by one."""
    prompts = sorted({p for p, _ in pairs})
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_val = int(round(len(prompts) * validation_fraction))
    n_test = int(round(len(prompts) * test_fraction))
    val_prompts = {prompts[i] for i in order[:n_val]}
    test_prompts = {prompts[i] for i in order[n_val : n_val + n_test]}
    train, validation, test = [], [], []
    for pair in pairs:
        if pair[0] in val_prompts:
            validation.append(pair)
        elif pair[0] in test_prompts:
            test.append(pair)
        else:
            train.append(pair)
    return train, validation, test


def _prompted_pairs(rng, n):
    """`n` pairs over about n / 3 distinct non-empty prompts, in random order."""
    prompts = [f"q{rng.integers(0, 10**6)}" for _ in range(max(1, n // 3))]
    return [(prompts[rng.integers(0, len(prompts))], f"r{i}") for i in range(n)]


def test_split_without_empty_prompts_is_unchanged():
    corpus = list(dict.fromkeys(load_chatterbot("en")))
    assert all(prompt for prompt, _ in corpus)
    rng = np.random.default_rng(0)
    datasets = [corpus, load_chatterbot("zh")] + [_prompted_pairs(rng, n) for n in (5, 17, 60, 301)]
    for pairs in datasets:
        for seed in (0, 1, 7):
            for fractions in ((0.1, 0.1), (0.2, 0.0), (0.3, 0.25)):
                assert split_pairs(pairs, seed, *fractions) == _old_split_pairs(pairs, seed, *fractions)


def test_plain_text_lines_are_split_line_by_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line number {i}\n" for i in range(50)), encoding="utf-8")
    pairs = load_pairs(str(path))
    assert all(prompt == "" for prompt, _ in pairs)
    # The old split put every line in one split (here: validation, leaving no training).
    assert sum(bool(part) for part in _old_split_pairs(pairs)) == 1
    for seed in range(5):
        train, validation, test = split_pairs(pairs, seed=seed)
        assert (len(train), len(validation), len(test)) == (40, 5, 5)
        assert sorted(train + validation + test) == sorted(pairs)
        assert split_pairs(pairs, seed=seed) == (train, validation, test)
    assert split_pairs(pairs, seed=0) != split_pairs(pairs, seed=1)


def test_split_groups_shared_prompts_and_identical_plain_lines():
    rng = np.random.default_rng(3)
    pairs = _prompted_pairs(rng, 90) + [("", f"plain {i % 30}") for i in range(60)]
    order = rng.permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    for seed in range(10):
        parts = split_pairs(pairs, seed=seed, validation_fraction=0.2, test_fraction=0.2)
        assert sorted(sum(parts, [])) == sorted(pairs)
        assert all(parts)
        # A non-empty prompt (and an identical plain line) lies in exactly one split.
        keys = [{p if p else ("", r) for p, r in part} for part in parts]
        assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
        # Plain lines are spread over the splits, not kept together.
        assert all(any(p == "" for p, _ in part) for part in parts)


def _write_json(path, value):
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")
    return str(path)


def test_json_array_and_json_lines(tmp_path):
    records = [{"prompt": "a", "response": "b"}, {"source": "长文本", "target": "摘要"}]
    expected = [("a", "b"), ("长文本", "摘要")]
    assert load_pairs(_write_json(tmp_path / "array.json", records)) == expected
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    assert load_pairs(str(lines)) == expected
    single = tmp_path / "single.json"
    single.write_text(json.dumps(records[0]), encoding="utf-8")  # one object on one line: JSON lines
    assert load_json(str(single)) == [("a", "b")]


@pytest.mark.parametrize(
    "content,message",
    [
        ([{"prompt": "a", "response": "b"}, {"prompt": "c"}],
         r"element \[1\]: missing fields; each element needs 'prompt' and 'response'.*found \['prompt'\]"),
        ([{"prompt": "a", "response": "b"}, "just text"], r"element \[1\]: expected a JSON object, got str"),
        ([{"prompt": "a", "response": 3}], r"element \[0\]: 'prompt' and 'response' must be strings"),
        ([], "holds no examples"),
        ({"prompt": "a", "response": "b"}, "holds one JSON object; a .json file must hold a JSON array"),
    ],
)
def test_json_errors_name_the_element(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        load_pairs(_write_json(tmp_path / "data.json", content))


def test_json_array_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"prompt": "a", "response": "b"},\n  {"prompt": "c", "response": }\n]\n')
    with pytest.raises(ValueError, match=r"line 3 column 31: not a valid JSON array"):
        load_pairs(str(path))


def test_unicode_line_separators_inside_records_are_text(tmp_path):
    # json.dumps(ensure_ascii=False) leaves U+2028 and U+0085 raw inside strings;
    # str.splitlines() would cut those lines in two.
    pairs = [("a\u2028b", "c\x85d"), ("e\x0cf", "g")]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "response": r}, ensure_ascii=False) for p, r in pairs),
                    encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert load_pairs(str(path)) == pairs
    text = tmp_path / "data.txt"
    text.write_bytes("one\u2028still one\r\ntwo\rthree\n".encode("utf-8"))
    assert load_text(str(text)) == [("", "one\u2028still one"), ("", "two"), ("", "three")]
