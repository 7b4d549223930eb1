"""Input checks and conversions shared by the metric functions.

Errors about dtypes, ranks and batch sizes are raised here, in Python at
trace time, so a user sees one clear message instead of a TensorFlow stack.
Token ids are "compacted" (valid tokens moved to the front, order kept) so
every kernel only needs a length per row, whatever the padding side.
"""

import functools

import numpy as np
import tensorflow as tf

from keras_selffb.text import segmentation


def id_batch(ids, name="ids"):
    """Convert token ids to an int tensor `[B, T]`, rejecting other dtypes.

    Args:
        ids: int array-like or tensor `[B, T]`.
        name: str. The argument name used in error messages.
    """
    if isinstance(ids, tf.RaggedTensor):
        raise TypeError(f"`{name}` must be dense; call `.to_tensor()` first.")
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        hint = " Use the string functions for text." if ids.dtype == tf.string else ""
        raise TypeError(
            f"`{name}` must hold integer token ids, got dtype {ids.dtype.name}."
            + hint
        )
    if ids.shape.rank != 2:
        raise ValueError(f"`{name}` must have shape [batch, length], got {ids.shape}.")
    return tf.cast(ids, tf.int64)


def check_batch(first, second, names):
    """Raise ValueError (static) or add an assert (dynamic) on batch sizes.

    Args:
        first: tensor whose dimension 0 is the batch.
        second: tensor whose dimension 0 is the batch.
        names: (str, str). Argument names for the message.

    Returns:
        A list of assertion ops (empty when the check was static).
    """
    a, b = first.shape[0], second.shape[0]
    message = f"`{names[0]}` and `{names[1]}` must have the same batch size"
    if a is not None and b is not None:
        if a != b:
            raise ValueError(f"{message}, got {a} and {b}.")
        return []
    return [tf.debugging.assert_equal(tf.shape(first)[0], tf.shape(second)[0],
                                      message=message)]


def compact(ids, mask=None, pad_id=0, name="mask"):
    """Move valid tokens to the front of each row; return `(ids, lengths)`.

    Args:
        ids: int64 tensor `[B, T]`.
        mask: optional bool/int tensor `[B, T]`; defaults to `ids != pad_id`.
        pad_id: int. Padding id used when `mask` is None. Defaults to `0`.
        name: str. The mask's argument name used in error messages.
    """
    if mask is None:
        mask = tf.not_equal(ids, tf.cast(pad_id, ids.dtype))
    else:
        mask = tf.cast(mask, tf.bool)
        if not mask.shape.is_compatible_with(ids.shape):
            raise ValueError(f"`{name}` must have the shape of its ids "
                             f"{ids.shape}, got {mask.shape}.")
    order = tf.argsort(tf.cast(tf.logical_not(mask), tf.int32), axis=1,
                       stable=True)
    ids = tf.gather(ids, order, batch_dims=1)
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    valid = tf.sequence_mask(lengths, tf.shape(ids)[1])
    return tf.where(valid, ids, tf.zeros_like(ids)), lengths


def text_ids(texts, tokenize, name):
    """Segment strings and hash the tokens; return `(ids [B, T], lengths)`.

    Args:
        texts: strings, see `segmentation.as_string_batch`.
        tokenize: str or callable. A segmentation method.
        name: str. The argument name used in error messages.
    """
    texts = segmentation.as_string_batch(texts, name)
    tokens = segmentation.get_segmenter(tokenize)(texts)
    ids = segmentation.hash_tokens(tokens)
    return ids.to_tensor(0), tf.cast(ids.row_lengths(), tf.int32)


def text_pair_ids(references, hypotheses, tokenize, preprocess=None):
    """Check and convert a batch of (reference, hypothesis) strings to ids.

    Args:
        references: strings `[B]`.
        hypotheses: strings `[B]`.
        tokenize: str or callable. A segmentation method.
        preprocess: optional callable applied to both string tensors first.

    Returns:
        `(ref_ids, ref_len, hyp_ids, hyp_len)`: int64 ids `[B, T]` (equal
        tokens, equal ids; 0 is padding) and int32 lengths `[B]`.
    """
    if tokenize is not None:
        segmentation.get_segmenter(tokenize)  # unknown names fail first
    refs = segmentation.as_string_batch(references, "references")
    hyps = segmentation.as_string_batch(hypotheses, "hypotheses")
    checks = check_batch(refs, hyps, ("references", "hypotheses"))
    with tf.control_dependencies(checks):
        refs, hyps = tf.identity(refs), tf.identity(hyps)
    if preprocess is not None:
        refs, hyps = preprocess(refs), preprocess(hyps)
    segment = segmentation.get_segmenter(tokenize)
    ref_hash = segmentation.hash_tokens(segment(refs))
    hyp_hash = segmentation.hash_tokens(segment(hyps))
    # Equal tokens, equal hashes; `unique` turns them into 1 + the index in
    # the batch's vocabulary: small ids, so the n-gram kernel can use them
    # as they are (no rank sort). Hashes are cheaper to gather than strings.
    num_ref = tf.size(ref_hash.flat_values)
    _, index = tf.unique(tf.concat([ref_hash.flat_values,
                                    hyp_hash.flat_values], axis=0),
                         out_idx=tf.int64)
    ref_ids = ref_hash.with_flat_values(index[:num_ref] + 1)
    hyp_ids = hyp_hash.with_flat_values(index[num_ref:] + 1)
    ref_len = tf.cast(ref_ids.row_lengths(), tf.int32)
    hyp_len = tf.cast(hyp_ids.row_lengths(), tf.int32)
    ref_ids, hyp_ids = ref_ids.to_tensor(0), hyp_ids.to_tensor(0)
    return ref_ids, ref_len, hyp_ids, hyp_len


def host_strings(texts):
    """`texts` as a list of Python str for the host path, or None.

    Only a list or tuple of str qualifies (a str is a batch of one); any
    other input keeps the TensorFlow path, whose checks raise the errors.
    """
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (list, tuple)) and all(type(t) is str for t in texts):
        return list(texts)
    return None


# Little-endian masks keeping the first k bytes of a uint64 word.
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1],
                       np.uint64)


def _dense(keys):
    """Index of each key among the distinct keys, and their count."""
    # A hash table (`tf.unique`) is several times faster than numpy's
    # sort-based `unique` here.
    distinct, index = tf.unique(keys.view(np.int64), out_idx=tf.int64)
    return index.numpy(), int(distinct.shape[0])


def host_token_ids(data, starts, lengths):
    """Exact ids of byte-span tokens: equal bytes, equal id (no hashing).

    A token's first 7 bytes and a "longer" flag make a uint64 key; longer
    tokens then take 4 more bytes per round, keyed with their id so far.
    Tokens never hold a NUL, so zero padding cannot make two spans equal.

    Args:
        data: uint8 array (the texts' bytes, NUL padded at the end).
        starts: int64 array `[M]`, each token's first byte.
        lengths: int64 array `[M]`, each token's byte length (>= 1).

    Returns:
        int64 array `[M]` of ids in `[1, M]`.
    """
    padded = np.zeros(data.size + 8, np.uint8)
    padded[:data.size] = data
    # words[i]: the 8 bytes from offset i, little-endian.
    words = np.ndarray((data.size,), "<u8", padded, 0, (1,))
    longer = lengths > 7
    keys = words[starts] & _BYTE_MASKS[np.minimum(lengths, 7)]
    keys |= longer.astype(np.uint64) << np.uint64(56)
    ids, base = _dense(keys)
    todo = np.flatnonzero(longer)
    prefix = ids[todo].astype(np.uint64)
    offset = 7
    while todo.size:
        left = lengths[todo] - offset
        more = left > 4
        keys = words[starts[todo] + offset] & _BYTE_MASKS[np.minimum(left, 4)]
        keys |= (prefix << np.uint64(33)) | (more.astype(np.uint64) << np.uint64(32))
        index, count = _dense(keys)
        ids[todo] = base + index
        base += count
        todo, prefix, offset = todo[more], index[more].astype(np.uint64), offset + 4
    return ids.astype(np.int64) + 1


def host_text_pair_ids(references, hypotheses, tokenize, preprocess=None):
    """Token ids of string pairs computed on the host, or None.

    The host path of `text_pair_ids` for eager calls on Python strings with
    a tokenizer in `segmentation.HOST_METHODS`: numpy segmentation and
    exact token ids (`host_token_ids`), the same tokens as in-graph.

    Args:
        references: strings `[B]`.
        hypotheses: strings `[B]`.
        tokenize: str. The segmentation method.
        preprocess: optional callable applied to each Python str first.

    Returns:
        `(ids, row_splits)`: int64 ids `[M]` (>= 1, equal tokens equal ids)
        and row splits `[2 * B + 1]`: rows 2p and 2p + 1 are the reference
        and the hypothesis of pair p; None when the host path does not apply (other inputs,
        other tokenizers, an empty batch, a NUL in a text).
    """
    if not isinstance(tokenize, str) or tokenize not in segmentation.HOST_METHODS:
        return None
    refs, hyps = host_strings(references), host_strings(hypotheses)
    if refs is None or hyps is None or not refs:
        return None
    if len(refs) != len(hyps):
        raise ValueError("`references` and `hypotheses` must have the same "
                         f"batch size, got {len(refs)} and {len(hyps)}.")
    texts = [text for pair in zip(refs, hyps) for text in pair]
    if preprocess is not None:
        texts = [preprocess(text) for text in texts]
    spans = segmentation.host_segment(texts, tokenize)
    if spans is None:
        return None
    data, starts, lengths, row_splits = spans
    if len(starts) >= 2**30:  # ids must fit the round keys
        return None
    return host_token_ids(data, starts, lengths), row_splits


_STRINGS = tf.TensorSpec([None], tf.string)


@functools.lru_cache(maxsize=256)
def _compiled(function, settings):
    """One graph per (string function, settings), for any batch size."""
    kwargs = dict(settings)
    return tf.function(
        lambda references, hypotheses: function(references, hypotheses, **kwargs),
        input_signature=[_STRINGS, _STRINGS], autograph=False)


def run_compiled(function, references, hypotheses, **settings):
    """Run a string metric eagerly as one cached graph; None when not eager.

    Op by op, an eager call pays Python dispatch and ragged bookkeeping for
    every segmentation and kernel op, and the kernels' own `tf.function`s
    retrace on each new batch width. Here the inputs are checked and
    converted in Python (same errors as the graph path), then `function`
    runs inside a `tf.function` traced once per settings with shape
    `[None]` inputs, so a new batch size reuses it.

    Args:
        function: the public string function (`rouge_l`, ...); inside the
            graph it takes its ordinary graph path.
        references: strings `[B]`.
        hypotheses: strings `[B]`.
        **settings: its other arguments. A callable `tokenize` or an
            unhashable value (a tensor) keeps the op-by-op path; a metric
            without a `tokenize` setting (chrF) always takes the graph.

    Returns:
        `function`'s result, or None when the fast path does not apply.
    """
    tokenize = settings.get("tokenize")
    if not tf.executing_eagerly() or ("tokenize" in settings and not isinstance(tokenize, str)):
        return None
    key = tuple(sorted(settings.items()))
    try:
        hash(key)
    except TypeError:
        return None
    if tokenize is not None:
        segmentation.get_segmenter(tokenize)  # unknown names fail first
    refs = segmentation.as_string_batch(references, "references")
    hyps = segmentation.as_string_batch(hypotheses, "hypotheses")
    check_batch(refs, hyps, ("references", "hypotheses"))
    return _compiled(function, key)(refs, hyps)


def id_pair(ref_ids, hyp_ids, ref_mask, hyp_mask, pad_id):
    """Check and compact a batch of (reference, hypothesis) token ids.

    Args:
        ref_ids: int tensor `[B, Tr]`.
        hyp_ids: int tensor `[B, Th]`.
        ref_mask: optional mask `[B, Tr]`.
        hyp_mask: optional mask `[B, Th]`.
        pad_id: int. Padding id used where a mask is None.

    Returns:
        `(ref_ids, ref_len, hyp_ids, hyp_len)`.
    """
    ref_ids = id_batch(ref_ids, "ref_ids")
    hyp_ids = id_batch(hyp_ids, "hyp_ids")
    checks = check_batch(ref_ids, hyp_ids, ("ref_ids", "hyp_ids"))
    with tf.control_dependencies(checks):
        ref_ids, hyp_ids = tf.identity(ref_ids), tf.identity(hyp_ids)
    ref_ids, ref_len = compact(ref_ids, ref_mask, pad_id, "ref_mask")
    hyp_ids, hyp_len = compact(hyp_ids, hyp_mask, pad_id, "hyp_mask")
    return ref_ids, ref_len, hyp_ids, hyp_len


def is_text(values):
    """Whether `values` are strings (str, list of str, `tf.string` tensor)."""
    if isinstance(values, (str, bytes)):
        return True
    if isinstance(values, (list, tuple)):
        return bool(values) and isinstance(values[0], (str, bytes))
    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, np.dtype):
        return dtype.kind in "SUO"
    return tf.is_tensor(values) and values.dtype == tf.string
