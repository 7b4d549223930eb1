"""Text: tokenizers, packing strings into id tensors, word segmentation."""

from keras_selffb.text.packing import make_dataset, pack_pairs, pack_prompts, pack_responses
from keras_selffb.text.preset_tokenizer import PresetTokenizer
from keras_selffb.text.tokenizer import (
    BOS_ID,
    EOS_ID,
    NUM_RESERVED,
    PAD_ID,
    RESERVED_TOKENS,
    SEP_ID,
    UNK_ID,
    CharTokenizer,
    WordPieceTokenizer,
    detokenize_texts,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
