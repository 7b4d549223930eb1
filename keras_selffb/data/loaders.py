"""Loaders: text, JSONL and TSV files and the embedded dialogue corpus.

Every loader returns a list of `(prompt, response)` string pairs.

- Plain text: one example per line; a line with a tab is `prompt<TAB>response`,
  a line without one is a response with an empty prompt (plain language
  modelling). Blank lines are skipped.
- JSONL (`.jsonl`, `.json`): one object per line with `prompt`/`response`
  or `source`/`target`. A `.json` file may instead hold one JSON array of
  such objects.
- TSV: `prompt<TAB>response` per line; a header line `prompt<TAB>response`
  (or `source<TAB>target`) is skipped.
- The embedded corpus: consecutive turns of the `chatterbot-corpus`
  conversations (BSD licence, installed from PyPI) as (context, response).

Lines end at `\n`, `\r\n` or `\r` only: other Unicode line separators
(U+2028, U+0085, form feed, ...) are text, as they may be inside a JSON string.
"""

import glob
import json
import os
import re

import numpy as np

JSONL_FIELDS = (("prompt", "response"), ("source", "target"))
CORPUS_LANGUAGES = {"en": "english", "zh": "chinese"}
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _read_text(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"Data file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"Expected a data file, got a directory: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8 text: invalid byte 0x{raw[e.start]:02x} on line "
            f"{line} (byte offset {e.start}). Re-save the file as UTF-8."
        ) from None
    return text


def _read_lines(path):
    # Not str.splitlines(): it also splits at U+2028, U+0085, form feeds and
    # other separators, which json.dumps(ensure_ascii=False) leaves raw
    # inside strings.
    return _NEWLINE.split(_read_text(path))


def _require_examples(pairs, path):
    if not pairs:
        raise ValueError(f"{path} holds no examples: the dataset is empty.")
    return pairs


def load_text(path):
    """Loads a plain text file: one example per line (see module docstring)."""
    pairs = []
    for line in _read_lines(path):
        if not line.strip():
            continue
        if "\t" in line:
            prompt, response = line.split("\t", 1)
            pairs.append((prompt.strip(), response.strip()))
        else:
            pairs.append(("", line.strip()))
    return _require_examples(pairs, path)


def _record_pair(record, where, unit):
    """`(prompt, response)` of one JSON record; `where` names it in errors."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    for prompt_key, response_key in JSONL_FIELDS:
        if prompt_key in record and response_key in record:
            break
    else:
        raise ValueError(
            f"{where}: missing fields; each {unit} needs "
            f"'prompt' and 'response' (or 'source' and 'target'), found "
            f"{sorted(record)}."
        )
    prompt, response = record[prompt_key], record[response_key]
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(f"{where}: '{prompt_key}' and '{response_key}' must be strings.")
    return prompt, response


def read_jsonl_records(path):
    """`(record, where)` for each non-blank line of a JSON-lines file; `where` names file and line."""
    records = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
        records.append((record, f"{path}, line {number}"))
    return records


def load_jsonl(path):
    """Loads JSON lines with `prompt`/`response` or `source`/`target` fields."""
    pairs = [_record_pair(record, where, "line") for record, where in read_jsonl_records(path)]
    return _require_examples(pairs, path)


def load_json(path):
    """Loads a `.json` file: one JSON array of objects, or JSON lines.

    A file whose first non-blank character is `[` is read as one array of
    objects with the fields of `load_jsonl` (errors name the element by its
    index, from 0); any other file is read as JSON lines. One object spread
    over several lines is refused with a message saying so.
    """
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        if len([line for line in _NEWLINE.split(text) if line.strip()]) > 1:
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None
            if isinstance(whole, dict):  # one object spread over lines
                raise ValueError(
                    f"{path} holds one JSON object; a .json file must hold a JSON array of "
                    "objects ([{...}, ...]) or one object per line."
                )
        return load_jsonl(path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}, line {e.lineno} column {e.colno}: not a valid JSON array ({e.msg})."
        ) from None
    pairs = [
        _record_pair(record, f"{path}, element [{index}]", "element")
        for index, record in enumerate(records)
    ]
    return _require_examples(pairs, path)


def read_tsv_rows(path, names, headers):
    """The stripped fields of each non-blank line of a `.tsv` file, one tuple a line.

    Args:
        path: str. The file.
        names: tuple of str. The fields each line must have, in order
            (named in the error for a line with another count).
        headers: collection of tuples of lowercase names: a first line
            equal to one of them is a header and is skipped.
    """
    rows = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = tuple(f.strip() for f in line.split("\t"))
        if len(fields) != len(names):
            raise ValueError(
                f"{path}, line {number}: expected {len(names)} tab-separated fields "
                f"({', '.join(names)}), found {len(fields)}."
            )
        if number == 1 and tuple(f.lower() for f in fields) in headers:
            continue
        rows.append(fields)
    return rows


def load_tsv(path):
    """Loads `prompt<TAB>response` lines; an optional header is skipped."""
    return _require_examples(read_tsv_rows(path, ("prompt", "response"), JSONL_FIELDS), path)


_LOADERS = {".txt": load_text, ".jsonl": load_jsonl, ".json": load_json, ".tsv": load_tsv}
# The extensions `load_pairs` reads (TrainConfig checks `data` against them).
DATA_EXTENSIONS = tuple(sorted(_LOADERS))


def load_pairs(path):
    """Loads a data file, choosing the format by extension (.txt/.jsonl/.json/.tsv)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _LOADERS:
        raise ValueError(
            f"Cannot tell the format of {path}: use one of the extensions {list(DATA_EXTENSIONS)}."
        )
    return _LOADERS[ext](path)


def _corpus_dir(language):
    if language not in CORPUS_LANGUAGES:
        raise ValueError(f"Unknown corpus language {language!r}; choose one of {sorted(CORPUS_LANGUAGES)}.")
    try:
        import chatterbot_corpus
    except ImportError:
        raise ImportError(
            "The embedded dialogue corpus needs the 'chatterbot-corpus' package: "
            "pip install chatterbot-corpus"
        ) from None
    return os.path.join(os.path.dirname(chatterbot_corpus.__file__), "data", CORPUS_LANGUAGES[language])


def load_chatterbot(language="en"):
    """(context, response) pairs from the chatterbot-corpus conversations.

    Each conversation `[t0, t1, t2, ...]` gives `(t0, t1), (t1, t2), ...`.
    Files are read in sorted order, so the list is the same on every machine.

    Args:
        language: str. `"en"` (English) or `"zh"` (Simplified Chinese).
            Defaults to `"en"`.
    """
    import yaml

    pairs = []
    for path in sorted(glob.glob(os.path.join(_corpus_dir(language), "*.yml"))):
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f) or {}
        for conversation in document.get("conversations", []):
            turns = [str(t).strip() for t in conversation if t is not None and str(t).strip()]
            pairs.extend(zip(turns[:-1], turns[1:]))
    return _require_examples(pairs, f"chatterbot-corpus ({language})")


def split_pairs(pairs, seed=0, validation_fraction=0.1, test_fraction=0.1):
    """Splits pairs into train/validation/test, deterministically by `seed`.

    Pairs sharing a prompt go to the same split, so validation and test
    prompts are never seen in training. Pairs with an empty prompt (plain
    language-modelling lines) are split line by line instead: each distinct
    response is a group of its own (identical lines stay together).
    The fractions count groups, not pairs. For data without empty prompts
    the groups are the distinct prompts, in sorted order.

    Returns:
        `(train, validation, test)` lists of pairs.
    """
    if not pairs:
        raise ValueError("Cannot split an empty dataset.")
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError(
            "validation_fraction and test_fraction must be >= 0 and sum to less "
            f"than 1; got {validation_fraction} and {test_fraction}."
        )
    # A group key per pair: (prompt, "") or, for an empty prompt,
    # ("", response). Non-empty prompts sort as the prompts alone would, so
    # data without empty prompts splits exactly as it did before groups.
    group = lambda pair: (pair[0], "") if pair[0] else ("", pair[1])  # noqa: E731
    groups = sorted({group(pair) for pair in pairs})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = int(round(len(groups) * validation_fraction))
    n_test = int(round(len(groups) * test_fraction))
    val_groups = {groups[i] for i in order[:n_val]}
    test_groups = {groups[i] for i in order[n_val : n_val + n_test]}
    train, validation, test = [], [], []
    for pair in pairs:
        key = group(pair)
        if key in val_groups:
            validation.append(pair)
        elif key in test_groups:
            test.append(pair)
        else:
            train.append(pair)
    if not train:
        raise ValueError("The split left no training examples; lower the validation/test fractions.")
    return train, validation, test
