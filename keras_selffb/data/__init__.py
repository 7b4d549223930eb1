"""Data: file loaders and the embedded dialogue corpus."""

from keras_selffb.data.loaders import (
    DATA_EXTENSIONS,
    load_chatterbot,
    load_json,
    load_jsonl,
    load_pairs,
    load_text,
    load_tsv,
    split_pairs,
)
