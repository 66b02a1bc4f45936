"""Generated tasks whose answers can be checked exactly (learning tests, demos)."""

import numpy as np

from keras_s2s_attn.special_ids import END_ID, NUM_RESERVED, START_ID


def reversal_task(num_examples, min_length=5, max_length=25, num_symbols=20, seed=0):
    """Random token sequences and their reversals, as padded id arrays.

    Symbols are ids `NUM_RESERVED .. NUM_RESERVED + num_symbols - 1`.

    Args:
        num_examples: Number of pairs.
        min_length: Shortest source (inclusive).
        max_length: Longest source (inclusive).
        num_symbols: Alphabet size.
        seed: Seed for `numpy.random.default_rng`.

    Returns:
        `(inputs, labels)`: inputs is a dict with `source_ids` `(n,
        max_length)`, `target_ids` `(n, max_length + 1)` (start id, then the
        reversed source) and labels `(n, max_length + 1)` (the reversed
        source, then the end id), all int32 and 0-padded.
    """
    if not 1 <= min_length <= max_length:
        raise ValueError(
            f"Need 1 <= min_length <= max_length. Received: min_length={min_length}, "
            f"max_length={max_length}"
        )
    rng = np.random.default_rng(seed)
    source = np.zeros((num_examples, max_length), np.int32)
    target_in = np.zeros((num_examples, max_length + 1), np.int32)
    labels = np.zeros((num_examples, max_length + 1), np.int32)
    lengths = rng.integers(min_length, max_length + 1, size=num_examples)
    for row, length in enumerate(lengths):
        tokens = rng.integers(NUM_RESERVED, NUM_RESERVED + num_symbols, size=length)
        reversed_tokens = tokens[::-1]
        source[row, :length] = tokens
        target_in[row, 0] = START_ID
        target_in[row, 1: length + 1] = reversed_tokens
        labels[row, :length] = reversed_tokens
        labels[row, length] = END_ID
    return {"source_ids": source, "target_ids": target_in}, labels


def exact_match(predicted_ids, labels):
    """Share of rows whose predicted ids equal the labels up to the end id.

    Args:
        predicted_ids: `(n, T1)` int array from a decoder (end id included,
            0 after it).
        labels: `(n, T2)` int array (end id included, 0 after it).

    Returns:
        A float in [0, 1].
    """
    predicted_ids = np.asarray(predicted_ids)
    labels = np.asarray(labels)
    width = max(predicted_ids.shape[1], labels.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])))  # noqa: E731
    return float(np.mean(np.all(pad(predicted_ids) == pad(labels), axis=1)))
