"""Strings -> packed `(prompt, response)` id tensors, the layout every stage shares.

One example is one int32 row of length `P + R`:

    [PAD .. PAD BOS p1 .. pk SEP | r1 .. rm EOS PAD .. PAD]
     <------ prompt, P, left-padded ----> <--- response, R, right-padded -->

Left-padding the prompt makes every prompt end at the same column, so
generation starts at column `P` for the whole batch (exact beam search, one
batched prefill); the LSTM masks padding, so the padding changes nothing.
A prompt longer than `P - 2` tokens keeps its LAST `P - 2` tokens (the most
recent context) and a response longer than `R - 1` keeps its first `R - 1`
(then it has no EOS); both are counted and reported with a warning.
"""

import warnings

import numpy as np
import tensorflow as tf

from keras_selffb.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID


def _check_lengths(prompt_length, response_length):
    if prompt_length is not None and prompt_length < 3:
        raise ValueError(f"prompt_length must be >= 3 (BOS, a token, SEP); got {prompt_length}.")
    if response_length is not None and response_length < 2:
        raise ValueError(f"response_length must be >= 2 (a token, EOS); got {response_length}.")


def pack_prompts(tokenizer, prompts, prompt_length):
    """Tokenizes `prompts` into left-padded `[BOS] ... [SEP]` rows `(B, P)`.

    Returns `(ids, truncated)`: int32 `(B, prompt_length)` and a bool `(B,)`
    marking prompts that lost tokens from the front.
    """
    _check_lengths(prompt_length, None)
    ids = tokenizer.tokenize(prompts)
    room = prompt_length - 2
    truncated = ids.row_lengths() > room
    ids = ids[:, -room:]
    batch = ids.nrows()
    bos = tf.fill([batch, 1], BOS_ID)
    sep = tf.fill([batch, 1], SEP_ID)
    ids = tf.concat([tf.RaggedTensor.from_tensor(bos), ids, tf.RaggedTensor.from_tensor(sep)], axis=1)
    return left_pad(ids, prompt_length), truncated


def pack_responses(tokenizer, responses, response_length):
    """Tokenizes `responses` into right-padded `... [EOS]` rows `(B, R)`.

    Returns `(ids, truncated)`; a truncated response has no EOS.
    """
    _check_lengths(None, response_length)
    ids = tokenizer.tokenize(responses)
    truncated = ids.row_lengths() > response_length - 1
    eos = tf.RaggedTensor.from_tensor(tf.fill([ids.nrows(), 1], EOS_ID))
    ids = tf.concat([ids, eos], axis=1)[:, :response_length]
    return ids.to_tensor(default_value=PAD_ID, shape=[None, response_length]), truncated


def left_pad(ragged_ids, length):
    """Right-aligns ragged rows in a `(B, length)` tensor padded with PAD."""
    dense = ragged_ids.to_tensor(default_value=PAD_ID, shape=[None, length])
    lengths = tf.cast(ragged_ids.row_lengths(), tf.int32)
    source = tf.range(length)[None, :] - (length - lengths)[:, None]
    gathered = tf.gather(dense, tf.maximum(source, 0), batch_dims=1)
    return tf.where(source >= 0, gathered, PAD_ID)


def pack_pairs(tokenizer, pairs, prompt_length, response_length, warn=True):
    """Packs a list of `(prompt, response)` strings into a `(N, P + R)` array.

    Args:
        tokenizer: a tokenizer from `keras_selffb.text`.
        pairs: list of `(prompt, response)` tuples of str.
        prompt_length: int. Prompt columns `P`, BOS and SEP included.
        response_length: int. Response columns `R`, EOS included.
        warn: bool. Warn with the number of truncated prompts/responses.
            Defaults to `True`.

    Example:

    >>> from keras_selffb.text import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["hi", "yo"])
    >>> tokenizer.vocabulary[5:]
    ['h', 'i', 'o', 'y']
    >>> # [PAD .. BOS prompt SEP | response EOS PAD ..]; PAD 0, BOS 1, EOS 2, SEP 4.
    >>> pack_pairs(tokenizer, [("hi", "yo"), ("i", "")], prompt_length=4, response_length=3)
    array([[1, 5, 6, 4, 8, 7, 2],
           [0, 1, 6, 4, 2, 0, 0]], dtype=int32)
    """
    _check_lengths(prompt_length, response_length)
    if len(pairs) == 0:
        raise ValueError("No examples to pack: the dataset is empty.")
    prompts = [p for p, _ in pairs]
    responses = [r for _, r in pairs]
    prompt_ids, cut_prompts = pack_prompts(tokenizer, prompts, prompt_length)
    response_ids, cut_responses = pack_responses(tokenizer, responses, response_length)
    n_prompts = int(tf.reduce_sum(tf.cast(cut_prompts, tf.int32)))
    n_responses = int(tf.reduce_sum(tf.cast(cut_responses, tf.int32)))
    if warn and (n_prompts or n_responses):
        warnings.warn(
            f"{n_prompts} of {len(pairs)} prompts were longer than "
            f"{prompt_length - 2} tokens and kept their last tokens; "
            f"{n_responses} responses were longer than {response_length - 1} "
            "tokens and were cut (no EOS).",
            stacklevel=2,
        )
    return np.concatenate([prompt_ids.numpy(), response_ids.numpy()], axis=1)


def make_dataset(packed, batch_size, shuffle=False, seed=0, drop_remainder=False):
    """A `tf.data.Dataset` of single int32 tensors `(batch, P + R)`.

    One tensor per batch (not a tuple) keeps `fit()` working under
    MultiWorkerMirroredStrategy (keras-team/keras#20585); trainers split the
    row at `P` themselves.
    """
    packed = np.asarray(packed, dtype=np.int32)
    if packed.ndim != 2 or len(packed) == 0:
        raise ValueError(f"Expected a non-empty (N, P + R) array of ids; got shape {packed.shape}.")
    dataset = tf.data.Dataset.from_tensor_slices(packed)
    if shuffle:
        dataset = dataset.shuffle(len(packed), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
