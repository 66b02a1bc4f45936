"""TensorFlow ops shared by the tokenizers: word splitting, id cleaning, input batching."""

import numpy as np
import tensorflow as tf

from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID, UNK_ID

# SentencePiece's word-boundary marker: "▁" (U+2581) starts every word that follows a space.
SPACE_MARKER = "\u2581"
# Everything a line-based file or a whitespace split could treat as a separator: ASCII
# whitespace (RE2's \s lacks \v), Unicode separators (Zs, Zl, Zp: no-break space, ideographic
# space, U+2028/2029), the C0 information separators and NEL.
WHITESPACE_RUN = r"[\s\p{Z}\x{000B}\x{001C}-\x{001F}\x{0085}]+"
_BATCH = 4096


def split_words(normalized):
    """Splits normalised strings into words and punctuation, SentencePiece style.

    Each word that follows a space gets a leading "▁"; punctuation and symbol characters
    (Unicode P* and S*, with any combining marks that follow) become tokens of their own.
    "Hello, world!" -> ["Hello", ",", "▁world", "!"]. Core TF ops only.

    Args:
        normalized: 1-D tf.string tensor of normalised text (single spaces, no "▁").

    Returns:
        tf.string `tf.RaggedTensor` [batch, (words)].
    """
    # Normalised text holds no tab and no "▁": tabs mark token boundaries, then each remaining
    # space (the one before a word or a punctuation token) becomes a boundary plus "▁".
    marked = tf.strings.regex_replace(normalized, r"( ?[\p{P}\p{S}]\p{M}*)", "\t\\1\t")
    marked = tf.strings.regex_replace(marked, " ", "\t" + SPACE_MARKER)
    return tf.strings.split(marked)


def join_words(tokens):
    """Inverse of `split_words`: concatenate, "▁" -> " ", strip. Returns tf.string [batch]."""
    text = tf.strings.reduce_join(tokens, axis=-1)
    return tf.strings.strip(tf.strings.regex_replace(text, SPACE_MARKER, " "))


def kept_ids(ids, vocabulary_size):
    """Dense ids `[batch, T]` -> `(ids, keep)`: out-of-range ids mapped to UNK, and
    the ids `decode` keeps (not pad or start, before the row's first end id).

    Dense ops only: building ragged rows first and cleaning those (boolean masks,
    validated row ids) cost about 0.25 ms of a lone word's 1.8 ms in an exported model.
    """
    ends_so_far = tf.cumsum(tf.cast(tf.equal(ids, END_ID), tf.int32), axis=-1)
    keep = tf.equal(ends_so_far, 0) & tf.not_equal(ids, PAD_ID) & tf.not_equal(ids, START_ID)
    outside = (ids < 0) | (ids >= vocabulary_size)
    return tf.where(outside, tf.constant(UNK_ID, ids.dtype), ids), keep


def iterate_string_batches(data):
    """Yields 1-D tf.string tensors from the kinds of `data` that `adapt` accepts."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, tf.TensorSpec) or spec.dtype != tf.string:
            raise ValueError("A tf.data.Dataset given to adapt() must yield string tensors "
                             f"(scalars or batches), got element_spec={spec}.")
        if spec.shape.rank == 0:
            data = data.batch(_BATCH)
        else:
            data = data.map(lambda x: tf.reshape(x, [-1]))
        yield from data
        return
    if isinstance(data, (str, bytes)):
        data = [data]
    if isinstance(data, (tf.Tensor, np.ndarray, tf.RaggedTensor)):
        if isinstance(data, tf.RaggedTensor):
            data = data.flat_values
        data = tf.reshape(tf.convert_to_tensor(data, dtype=tf.string), [-1])
        for start in range(0, int(tf.size(data)), _BATCH):
            yield data[start:start + _BATCH]
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise ValueError("`data` must be text: a list/iterable of str, a string array or "
                         f"tensor, or a tf.data.Dataset of strings; got {type(data).__name__}.")
    chunk = []
    for item in iterator:
        if isinstance(item, (tf.Tensor, np.ndarray)) and item.ndim == 0:
            item = item.numpy() if isinstance(item, tf.Tensor) else item.item()
        if not isinstance(item, (str, bytes)):
            raise ValueError(f"`data` must hold str items, got an item of type "
                             f"{type(item).__name__}.")
        chunk.append(item)
        if len(chunk) == _BATCH:
            yield tf.constant(chunk, tf.string)
            chunk = []
    if chunk:
        yield tf.constant(chunk, tf.string)
