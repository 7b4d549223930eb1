"""Data: file loaders, the embedded dialogue corpus and preference triples."""

from keras_selffb.data.chitchat import load_chitchat
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
from keras_selffb.data.preferences import load_preferences, pack_preferences
