"""Preference data: `(prompt, chosen, rejected)` triples from files, packed for `DPOTrainer`.

File formats (the fields of TRL's preference datasets):

- JSONL (`.jsonl`): one object per line with string fields `prompt`,
  `chosen` and `rejected` (other fields are ignored);
- TSV (`.tsv`): `prompt<TAB>chosen<TAB>rejected` per line; a header line
  `prompt<TAB>chosen<TAB>rejected` is skipped.

Blank lines are skipped; every error names the file and the line in one
line. A packed triple is one int32 row of `P + 2R` columns: the prompt as
`pack_prompts` lays it out, then the chosen and the rejected reply as
`pack_responses` does (`... EOS PAD ..`, R columns each).
"""

import os
import warnings

import numpy as np

from keras_selffb.data.loaders import _require_examples, read_jsonl_records, read_tsv_rows

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
PREFERENCE_EXTENSIONS = (".jsonl", ".tsv")


def _triple(record, where):
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    missing = [key for key in PREFERENCE_FIELDS if key not in record]
    if missing:
        raise ValueError(
            f"{where}: missing field(s) {missing}; each line needs 'prompt', 'chosen' and 'rejected', "
            f"found {sorted(record)}."
        )
    for key in PREFERENCE_FIELDS:
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: '{key}' must be a string, got {type(record[key]).__name__}.")
    return tuple(record[key] for key in PREFERENCE_FIELDS)


def _load_jsonl(path):
    return [_triple(record, where) for record, where in read_jsonl_records(path)]


def _load_tsv(path):
    return read_tsv_rows(path, PREFERENCE_FIELDS, (PREFERENCE_FIELDS,))


def load_preferences(path):
    """Loads `(prompt, chosen, rejected)` str triples from a `.jsonl` or `.tsv` file.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "prefs.tsv")
    >>> _ = open(path, "w").write("prompt\\tchosen\\trejected\\nhi\\thello\\tgo away\\n")
    >>> load_preferences(path)
    [('hi', 'hello', 'go away')]
    """
    extension = os.path.splitext(path)[1].lower()
    if extension not in PREFERENCE_EXTENSIONS:
        raise ValueError(
            f"Cannot tell the format of {path}: preference files end in one of {list(PREFERENCE_EXTENSIONS)}."
        )
    triples = _load_jsonl(path) if extension == ".jsonl" else _load_tsv(path)
    return _require_examples(triples, path)


def pack_preferences(tokenizer, triples, prompt_length, response_length, warn=True):
    """Packs `(prompt, chosen, rejected)` str triples into int32 rows `(N, P + 2R)`.

    Args:
        tokenizer: a tokenizer from `keras_selffb.text`.
        triples: list of `(prompt, chosen, rejected)` str tuples.
        prompt_length: int. Prompt columns `P`, BOS and SEP included.
        response_length: int. Columns `R` of each reply, EOS included.
        warn: bool. Warn with the number of cut prompts and replies.
            Defaults to `True`.

    Example:

    >>> from keras_selffb.text import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["hi", "yo"])
    >>> tokenizer.vocabulary[5:]
    ['h', 'i', 'o', 'y']
    >>> # [PAD .. BOS prompt SEP | chosen EOS PAD .. | rejected EOS PAD ..]
    >>> pack_preferences(tokenizer, [("hi", "yo", "o")], prompt_length=4, response_length=3)
    array([[1, 5, 6, 4, 8, 7, 2, 7, 2, 0]], dtype=int32)
    """
    # Imported here: `keras_selffb.data` (read by the config) stays free of TensorFlow.
    from keras_selffb.text.packing import pack_prompts, pack_responses

    triples = [tuple(t) for t in triples]
    if not triples:
        raise ValueError("No preference triples to pack: the list is empty.")
    if any(len(t) != 3 or not all(isinstance(s, str) for s in t) for t in triples):
        raise ValueError("Preference triples must be (prompt, chosen, rejected) tuples of str.")
    prompts, chosen, rejected = (list(column) for column in zip(*triples))
    prompt_ids, cut_prompts = pack_prompts(tokenizer, prompts, prompt_length)
    chosen_ids, cut_chosen = pack_responses(tokenizer, chosen, response_length)
    rejected_ids, cut_rejected = pack_responses(tokenizer, rejected, response_length)
    counts = [int(np.sum(np.asarray(c))) for c in (cut_prompts, cut_chosen, cut_rejected)]
    if warn and any(counts):
        warnings.warn(
            f"Of {len(triples)} preference triples, {counts[0]} prompts were longer than "
            f"{prompt_length - 2} tokens and kept their last tokens; {counts[1]} chosen and "
            f"{counts[2]} rejected replies were longer than {response_length - 1} tokens and were "
            "cut (no EOS).",
            stacklevel=2,
        )
    return np.concatenate([prompt_ids.numpy(), chosen_ids.numpy(), rejected_ids.numpy()], axis=1).astype(np.int32)
