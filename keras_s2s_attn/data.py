"""Text pairs in, `tf.data` batches of ids out.

`read_pairs` reads source/target pairs from a TSV or CSV file (or
`check_pairs` checks Python lists); `make_dataset` tokenises them, truncates
and counts what it cut, and builds a `tf.data` pipeline that adds the
start/end ids for teacher forcing, caches, shuffles, buckets by length, pads
and prefetches.
"""

from keras_s2s_attn.backends import require_tensorflow

require_tensorflow(__name__)  # a clear message before TensorFlow is imported

import csv
import os
import warnings
import zlib

import numpy as np
import tensorflow as tf

from keras_s2s_attn.checks import positive_int
from keras_s2s_attn.special_ids import END_ID, START_ID

ON_BAD_ROW = ("error", "skip")

# The longest line `read_pairs` reads, in bytes without its line end; a longer
# one is a malformed row. It bounds the memory a line costs (the reader never
# holds more of one), and stays below the `csv` module's field limit (131,072).
MAX_LINE_BYTES = 65_536


class MalformedRowError(ValueError):
    """A row of a pairs file that cannot be used; the message names file and line."""


def _delimiter_for(path, delimiter):
    if delimiter is not None:
        return delimiter
    extension = os.path.splitext(path)[1].lower()
    if extension == ".csv":
        return ","
    if extension in (".tsv", ".tab", ".txt"):
        return "\t"
    raise ValueError(
        f"Cannot tell the delimiter of {path!r} from its extension; pass delimiter='\\t' or ','."
    )


def _column_index(column, header, path, which):
    if isinstance(column, int):
        return column
    if header is None:
        raise ValueError(
            f"`{which}_column={column!r}` names a column, which needs header=True "
            f"(the first row of {path} holds the column names)."
        )
    if column not in header:
        raise ValueError(
            f"`{which}_column={column!r}` is not a column of {path}; its header has {header}."
        )
    return header.index(column)


def text_lines(handle, encoding="utf-8"):
    """Yields `(number, text, problem)` for each line of a binary file.

    `text` is the line decoded, without its line end and a leading byte-order
    mark; it is None when `problem` says why the line cannot be read: bytes
    that are not valid `encoding`, or more than `MAX_LINE_BYTES` (whose bytes
    past the limit are read in pieces and dropped, never held at once).
    """
    number = 0
    while chunk := handle.readline(MAX_LINE_BYTES + 2):  # + 2: room for "\r\n"
        number += 1
        ended = chunk.endswith(b"\n")
        raw = chunk.rstrip(b"\r\n")
        if len(raw) > MAX_LINE_BYTES or not ended and len(chunk) == MAX_LINE_BYTES + 2:
            while not ended:
                rest = handle.readline(MAX_LINE_BYTES)
                ended = not rest or rest.endswith(b"\n")
            yield number, None, f"longer than {MAX_LINE_BYTES} bytes, the limit on a line"
            continue
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as error:
            yield number, None, (f"bytes that are not valid {encoding} ({error.reason} at "
                                 f"byte {error.start})")
            continue
        yield number, text.removeprefix("\ufeff") if number == 1 else text, None


def read_pairs(path, *, source_column=0, target_column=1, header=None, delimiter=None,
               on_bad_row="error", encoding="utf-8", all_targets=False):
    """Reads source/target text pairs from a TSV or CSV file, one pair per line.

    Args:
        path: The file. `.csv` is comma-separated (with CSV quoting); `.tsv`,
            `.tab` and `.txt` are tab-separated (no quoting: quotes are text).
        source_column: Column index, or column name (needs a header).
        target_column: Column index, or column name (needs a header).
        header: True if the first line holds column names; default True
            when a column is given by name, else False.
        delimiter: Overrides the delimiter implied by the extension.
        on_bad_row: `"error"` raises `MalformedRowError` naming file and
            line for a row with a missing column, bytes that are not valid
            `encoding`, an empty (whitespace-only) side, or more than
            `MAX_LINE_BYTES` (64 KiB) bytes; `"skip"` skips such rows and
            warns with their count and first line numbers.
        encoding: Text encoding of the file.
        all_targets: Each target is the list of the non-empty columns from
            `target_column` on (alternative references, for evaluation).

    Returns:
        `(sources, targets)`: two lists of equal length, of str (targets: of
        lists of str with `all_targets`).

    Raises:
        FileNotFoundError: If `path` does not exist.
        MalformedRowError: For a bad row with `on_bad_row="error"`, or when
            no usable row is left.

    Example:

    >>> sources, targets = read_pairs("pairs.tsv")
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(
            f"`on_bad_row` must be one of {', '.join(map(repr, ON_BAD_ROW))}. "
            f"Received: on_bad_row={on_bad_row!r}"
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No pairs file at {path!r}")
    delimiter = _delimiter_for(path, delimiter)
    if header is None:
        header = isinstance(source_column, str) or isinstance(target_column, str)
    if not header:  # a column given by name needs the header that names it
        for which, column in (("source", source_column), ("target", target_column)):
            _column_index(column, None, path, which)
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE

    sources, targets, bad = [], [], []
    names = None
    with open(path, "rb") as handle:
        for number, line, problem in text_lines(handle, encoding):
            if problem is None:
                if not line.strip():
                    continue  # blank lines separate nothing; they are not pairs
                fields = next(csv.reader([line], delimiter=delimiter, quoting=quoting))
                if header and names is None:
                    names = fields
                    source_index = _column_index(source_column, names, path, "source")
                    target_index = _column_index(target_column, names, path, "target")
                    continue
                if names is None:
                    source_index, target_index = source_column, target_column
                needed = max(source_index, target_index) + 1
                if len(fields) < needed:
                    problem = f"{len(fields)} column(s), needs at least {needed}"
                else:
                    source, target = fields[source_index].strip(), fields[target_index].strip()
                    if source and target:
                        sources.append(source)
                        targets.append([f.strip() for f in fields[target_index:] if f.strip()]
                                       if all_targets else target)
                        continue
                    problem = f"empty {'source' if not source else 'target'}"
            bad.append((number, problem))
            if on_bad_row == "error":
                break
    if bad and on_bad_row == "error":
        number, problem = bad[0]
        raise MalformedRowError(
            f"{path}:{number}: malformed row: {problem}. Fix the row, or pass "
            "on_bad_row='skip' (--on-bad-row skip) to skip such rows with a warning."
        )
    if bad:
        first = ", ".join(f"{path}:{number} ({problem})" for number, problem in bad[:3])
        warnings.warn(f"Skipped {len(bad)} malformed row(s) of {path}: {first}"
                      f"{' ...' if len(bad) > 3 else ''}", stacklevel=2)
    if not sources:
        raise MalformedRowError(f"{path}: no usable source/target pair found.")
    return sources, targets


def check_pairs(sources, targets):
    """Validates pairs given as Python lists; returns them as lists of str.

    Raises:
        ValueError: For different lengths, no pairs, or a non-string or empty
            item (its index is named).
    """
    sources, targets = list(sources), list(targets)
    if len(sources) != len(targets):
        raise ValueError(
            f"`sources` and `targets` must have the same length; got {len(sources)} and "
            f"{len(targets)}."
        )
    if not sources:
        raise ValueError("No pairs given: `sources` and `targets` are empty.")
    for name, texts in (("sources", sources), ("targets", targets)):
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"`{name}[{index}]` must be a non-empty string; got {text!r}.")
    return sources, targets


def split_pairs(sources, targets, valid_percent=5):
    """Deterministically holds out about `valid_percent`% of the pairs.

    A pair goes to validation when crc32 of its source and target, mod 100, is
    below `valid_percent`, so the split does not depend on order or on the
    rest of the file. At least one pair goes to each side.

    Returns:
        `((train_sources, train_targets), (valid_sources, valid_targets))`.
    """
    if not 0 < valid_percent < 100:
        raise ValueError(f"`valid_percent` must be in (0, 100). Received: {valid_percent!r}")
    if len(sources) < 2:
        raise ValueError("Need at least 2 pairs to hold out a validation slice.")
    held = np.array([
        zlib.crc32(f"{s}\t{t}".encode("utf-8")) % 100 < valid_percent
        for s, t in zip(sources, targets)
    ])
    if held.all() or not held.any():
        held[:] = False
        held[-1] = True
    pick = lambda texts, keep: [x for x, k in zip(texts, keep) if k]  # noqa: E731
    return ((pick(sources, ~held), pick(targets, ~held)),
            (pick(sources, held), pick(targets, held)))


# A bucket of `length_buckets` holds at least this many full batches, so that
# the partial batch each bucket ends an epoch with is at most 1 in 8 of its own.
MIN_BATCHES_PER_BUCKET = 8


def length_buckets(lengths, batch_size, min_batches=MIN_BATCHES_PER_BUCKET):
    """Bucket boundaries fitted to the data: the narrowest length bands that
    each hold at least `min_batches` full batches.

    Going up from the shortest length, a band closes as soon as it holds
    `min_batches * batch_size` pairs; the last band takes whatever is left
    over (merged into the band below when it would be smaller). Where the
    data is plentiful every length gets a band of its own and a batch pads
    nothing: on the CMUdict words (2 to 20 symbols, batches of 64) fixed
    bands of 8 padded 667 positions a batch for 476 real labels. A small
    data set gets a single band, full batches, no tiny ones.

    Args:
        lengths: Int array, each pair's bucketing length (`pair_lengths`).
        batch_size: Pairs per batch.
        min_batches: Full batches each band holds at least.

    Returns:
        A sorted tuple of boundaries for `tf.data`'s
        `bucket_by_sequence_length` (a band holds lengths from one boundary up
        to, not including, the next); empty for one band.
    """
    lengths = np.asarray(lengths, "int64")
    if lengths.size == 0:
        return ()
    counts = np.bincount(lengths)
    least = min_batches * batch_size
    boundaries, held = [], 0
    for length, count in enumerate(counts[:-1]):
        held += count
        if held >= least:
            boundaries.append(length + 1)
            held = 0
    if boundaries and held + counts[-1] < least:
        boundaries.pop()  # the band above the last boundary is too small: merge it
    return tuple(boundaries)


def pair_lengths(source_lengths, target_lengths):
    """Each pair's bucketing length: the longer of its source and its labels (the
    target and the END id), from the token counts of both sides."""
    return np.maximum(np.asarray(source_lengths), np.asarray(target_lengths) + 1)


def _boundaries(bucket_boundaries, lengths, batch_size):
    """`make_dataset`'s `bucket_boundaries` as a sorted list (empty: no buckets)."""
    if isinstance(bucket_boundaries, str):
        if bucket_boundaries != "auto":
            raise ValueError("`bucket_boundaries` must be 'auto', a sequence of lengths or "
                             f"None. Received: bucket_boundaries={bucket_boundaries!r}")
        return list(length_buckets(lengths, batch_size))
    if not bucket_boundaries:
        return []
    boundaries = [int(b) if isinstance(b, np.integer) else b for b in bucket_boundaries]
    for boundary in boundaries:
        positive_int(boundary, "bucket_boundaries[...]")
    return sorted(set(boundaries))


def make_dataset(sources, targets, source_tokenizer, target_tokenizer, *, batch_size=64,
                 max_source_length=None, max_target_length=None, shuffle=True, seed=None,
                 bucket_boundaries="auto", cache=True, batch_multiple=1):
    """A `tf.data.Dataset` of `({"source_ids", "target_ids"}, labels)` batches.

    Each target becomes the decoder input `[START] y₁ … yₙ` and the labels
    `y₁ … yₙ [END]`. All pairs are tokenised once, in one batched call per
    side (which also counts what truncation cuts); the pipeline then caches
    the teacher-forcing pairs, shuffles them, groups them into buckets of
    similar length (less padding), pads with 0 and prefetches. The number of
    batches is known (`dataset.cardinality()`), with buckets too.

    Args:
        sources, targets: Lists of str (see `read_pairs`, `check_pairs`).
        source_tokenizer, target_tokenizer: Adapted tokenizers.
        batch_size: Pairs per batch.
        max_source_length: Source tokens kept (the rest is cut), or None.
        max_target_length: Target tokens kept before the end id, or None.
        shuffle: Shuffle the pairs every epoch.
        seed: Shuffle seed.
        bucket_boundaries: `"auto"` (`length_buckets` of these pairs: bands
            as narrow as the data allows), a sequence of length boundaries,
            or None to pad each batch to its longest pair without bucketing.
            A pair's length is the longer of its source and its labels.
        cache: Cache the tokenised pairs in memory.
        batch_multiple: Pad every batch with all-padding rows up to a
            multiple of this (the number of replicas under a distribution
            strategy, so each gets an equal share). Such rows have only
            padding labels: they add nothing to the loss or the metrics.

    Returns:
        `(dataset, stats)`: stats is a dict with `pairs`,
        `truncated_sources` and `truncated_targets` (how many pairs were cut).

    Example:

    >>> dataset, stats = make_dataset(sources, targets, src_tok, tgt_tok, batch_size=32)
    """
    sources, targets = check_pairs(sources, targets)
    positive_int(batch_size, "batch_size")
    positive_int(batch_multiple, "batch_multiple")
    positive_int(max_source_length, "max_source_length", allow_none=True)
    positive_int(max_target_length, "max_target_length", allow_none=True)
    source_ids = source_tokenizer.encode(tf.constant(sources))
    target_ids = target_tokenizer.encode(tf.constant(targets))
    source_lengths = source_ids.row_lengths().numpy()
    target_lengths = target_ids.row_lengths().numpy()
    stats = {
        "pairs": len(sources),
        "truncated_sources": int(np.sum(source_lengths > (max_source_length or np.inf))),
        "truncated_targets": int(np.sum(target_lengths > (max_target_length or np.inf))),
        "empty_after_tokenization": int(np.sum((source_lengths == 0) | (target_lengths == 0))),
    }
    if max_source_length:
        source_ids = source_ids[:, :max_source_length]
    if max_target_length:
        target_ids = target_ids[:, :max_target_length]

    def teacher_forcing(source, target):
        start = tf.constant([START_ID], target.dtype)
        end = tf.constant([END_ID], target.dtype)
        inputs = {"source_ids": source, "target_ids": tf.concat([start, target], 0)}
        return inputs, tf.concat([target, end], 0)

    dataset = tf.data.Dataset.from_tensor_slices((source_ids, target_ids)).map(
        teacher_forcing, num_parallel_calls=tf.data.AUTOTUNE
    )
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(min(len(sources), 10_000), seed=seed,
                                  reshuffle_each_iteration=True)
    lengths = pair_lengths(source_ids.row_lengths().numpy(), target_ids.row_lengths().numpy())
    boundaries = _boundaries(bucket_boundaries, lengths, batch_size)
    if boundaries:
        dataset = dataset.bucket_by_sequence_length(
            lambda inputs, labels: tf.maximum(tf.shape(inputs["source_ids"])[0],
                                              tf.shape(labels)[0]),
            bucket_boundaries=boundaries,
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        )
        # Each pair always falls in the same bucket, so an epoch always has
        # this many batches; saying so lets Keras show and check the count.
        per_bucket = np.bincount(np.searchsorted(boundaries, lengths, side="right"))
        batches = int(np.sum(-(-per_bucket // batch_size)))
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    else:
        dataset = dataset.padded_batch(batch_size)
    if batch_multiple > 1:
        def pad_rows(inputs, labels):
            missing = -tf.shape(labels)[0] % batch_multiple
            pad = lambda x: tf.pad(x, [[0, missing], [0, 0]])  # noqa: E731
            return tf.nest.map_structure(pad, inputs), pad(labels)

        dataset = dataset.map(pad_rows)
    return dataset.prefetch(tf.data.AUTOTUNE), stats
