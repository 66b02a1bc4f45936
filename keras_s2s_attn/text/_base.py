"""Shared machinery of the tokenizers: options, normalisation, lookup tables, decode, save.

Everything that runs on strings at encode/decode time is TensorFlow (core ops, plus
tensorflow-text custom ops only where a kind or `normalization="NFKC"` needs them), so a
tokenizer runs eagerly, inside `tf.function`, inside `tf.data.Dataset.map` and inside an
exported SavedModel. Vocabulary learning (`adapt`) runs the same normalisation and splitting
ops eagerly and counts in Python.
"""

from keras_s2s_attn.backends import require_tensorflow

require_tensorflow(__name__)  # a clear message before TensorFlow is imported

import collections
import itertools
import json
import os
import re
from typing import ClassVar

import numpy as np
import tensorflow as tf

from keras_s2s_attn.special_ids import END_ID, NUM_RESERVED, PAD_ID, START_ID, UNK_ID
from keras_s2s_attn.text._ops import (
    SPACE_MARKER,
    WHITESPACE_RUN,
    iterate_string_batches,
    kept_ids,
)

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
START_TOKEN = "[START]"
END_TOKEN = "[END]"
RESERVED_TOKENS = (PAD_TOKEN, UNK_TOKEN, START_TOKEN, END_TOKEN)
assert [PAD_ID, UNK_ID, START_ID, END_ID] == list(range(NUM_RESERVED))

NORMALIZATIONS = ("NFKC", None)
CONFIG_FILENAME = "tokenizer.json"
VOCABULARY_FILENAME = "vocab.txt"
FORMAT_VERSION = 1


def _import_tf_text():
    import tensorflow_text  # imported lazily: its custom ops are only needed by some options

    return tensorflow_text


class Tokenizer(tf.Module):
    """Base class of the tokenizers: strings to int32 ids and back, in TensorFlow.

    Subclasses set `kind` and implement `_split` (normalised strings to ragged tokens) or
    override `_encode_normalized` / `_learn` / `_join` (or set `_join_separator`) for their
    scheme. Use `keras_s2s_attn.text.make_tokenizer` to build one.

    Args:
        lower: bool, lower-case the text (`tf.strings.lower(..., encoding="utf-8")`, applied
            after Unicode normalisation).
        normalization: `"NFKC"` (via `tensorflow_text.normalize_utf8`) or `None` (no Unicode
            normalisation; keeps tensorflow-text custom ops out of the graph for "char" and
            "word").
        max_vocab_size: `None` or int >= 5: the largest `vocabulary_size`, **counting the 4
            reserved ids** (so it is the number of embedding rows the model needs). The most
            frequent tokens are kept.
        min_count: int >= 1: tokens seen fewer times during `adapt` are dropped.
        vocabulary: optional list of str, a vocabulary to use instead of calling `adapt`;
            it may start with the 4 reserved tokens, which are prepended otherwise.
        name: optional `tf.Module` name (default "<kind>_tokenizer").
    """

    kind = None
    # Literal "▁" in the input is read as a space by the kinds that use it as a word marker.
    _marker_is_space = False
    _unknown_surface = UNK_TOKEN  # what decode writes for the unknown id
    _join_separator = ""  # what `_join` puts between tokens (where a kind keeps `_join`)
    _extra_options: ClassVar[dict] = {}  # kind-specific options: name -> default

    def __init__(self, lower=False, normalization="NFKC", max_vocab_size=None, min_count=1,
                 vocabulary=None, name=None, **extra):
        super().__init__(name=name or f"{self.kind}_tokenizer")
        if not isinstance(lower, (bool, np.bool_)):
            raise ValueError(f"`lower` must be True or False, got {lower!r}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}.")
        is_int = not isinstance(max_vocab_size, bool) and isinstance(
            max_vocab_size, (int, np.integer))
        if max_vocab_size is not None and (not is_int or max_vocab_size <= NUM_RESERVED):
            raise ValueError(
                f"`max_vocab_size` must be None or an int > {NUM_RESERVED} (it counts the "
                f"{NUM_RESERVED} reserved ids), got {max_vocab_size!r}.")
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) \
                or min_count < 1:
            raise ValueError(f"`min_count` must be an int >= 1, got {min_count!r}.")
        unknown = sorted(set(extra) - set(self._extra_options))
        if unknown:
            accepted = sorted(["lower", "normalization", "max_vocab_size", "min_count",
                               "vocabulary", *self._extra_options])
            raise ValueError(f"Unknown option(s) {unknown} for kind={self.kind!r}; accepted "
                             f"options: {accepted}.")
        self._options = {"lower": bool(lower), "normalization": normalization,
                         "max_vocab_size": None if max_vocab_size is None else int(max_vocab_size),
                         "min_count": int(min_count)}
        for key, default in self._extra_options.items():
            self._options[key] = extra.get(key, default)
        self._validate_extra_options()
        self._vocab = None
        if vocabulary is not None:
            self._set_vocabulary(vocabulary)

    def _validate_extra_options(self):
        pass

    # ----------------------------------------------------------------- properties / config
    @property
    def lower(self):
        return self._options["lower"]

    @property
    def normalization(self):
        return self._options["normalization"]

    @property
    def max_vocab_size(self):
        return self._options["max_vocab_size"]

    @property
    def min_count(self):
        return self._options["min_count"]

    @property
    def is_adapted(self):
        """Whether the tokenizer has a vocabulary (from `adapt`, `vocabulary=` or loading)."""
        return self._vocab is not None

    @property
    def vocabulary(self):
        """The vocabulary as a Python list of str; index = id; starts with the reserved tokens."""
        self._check_adapted()
        return list(self._vocab)

    @property
    def vocabulary_size(self):
        """Number of ids, reserved ones included (the model's vocabulary size)."""
        self._check_adapted()
        return len(self._vocab)

    def get_config(self):
        """Returns the kind and options as a JSON-able dict.

        `make_tokenizer(**tokenizer.get_config())` builds an equal, not yet adapted, tokenizer
        (the vocabulary is data, not config: use `save` / `load_tokenizer` for it).
        """
        return {"kind": self.kind, **self._options}

    def __repr__(self):
        size = len(self._vocab) if self._vocab is not None else "not adapted"
        return f"<{type(self).__name__} {self.get_config()} vocabulary_size={size}>"

    def _check_adapted(self):
        if self._vocab is None:
            raise RuntimeError(f"This {self.kind!r} tokenizer has no vocabulary yet: call "
                               "`adapt(data)` or use `load_tokenizer(directory)` first.")

    # ------------------------------------------------------------------------ vocabulary
    def _set_vocabulary(self, vocabulary, vocabulary_file=None):
        vocab = [t.decode("utf-8") if isinstance(t, bytes) else t for t in vocabulary]
        if not all(isinstance(t, str) for t in vocab):
            raise ValueError("`vocabulary` must be a list of str.")
        if tuple(vocab[:NUM_RESERVED]) != RESERVED_TOKENS:
            vocab = list(RESERVED_TOKENS) + vocab
        bad = [t for t in vocab if not t or "\n" in t or "\r" in t]
        if bad:
            raise ValueError(f"`vocabulary` tokens must be non-empty and hold no line break, "
                             f"got {bad[:5]!r}.")
        seen = collections.Counter(vocab)
        duplicates = [t for t, n in seen.items() if n > 1]
        if duplicates:
            raise ValueError(f"`vocabulary` has duplicate tokens {duplicates[:5]!r} (the reserved "
                             f"tokens {list(RESERVED_TOKENS)} may only come first).")
        self._vocab = tuple(vocab)
        if vocabulary_file is not None:
            # File-backed tables: the file becomes an asset when the module is saved.
            to_id = tf.lookup.TextFileInitializer(
                vocabulary_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, vocab_size=len(vocab))
            to_token = tf.lookup.TextFileInitializer(
                vocabulary_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, vocab_size=len(vocab))
        else:
            keys = tf.constant(vocab, tf.string)
            ids = tf.range(len(vocab), dtype=tf.int64)
            to_id = tf.lookup.KeyValueTensorInitializer(keys, ids)
            to_token = tf.lookup.KeyValueTensorInitializer(ids, keys)
        self._token_to_id = tf.lookup.StaticHashTable(to_id, default_value=UNK_ID)
        self._id_to_token = tf.lookup.StaticHashTable(to_token, default_value=UNK_TOKEN)
        self._on_vocabulary_set()

    def _on_vocabulary_set(self):
        """Hook for subclasses that build more graph state from the vocabulary."""

    # --------------------------------------------------------------------- normalisation
    def normalize(self, strings):
        """Normalises strings exactly as `adapt` and `encode` do.

        In order: invalid UTF-8 bytes become U+FFFD, Unicode NFKC (if `normalization="NFKC"`),
        lower-casing (if `lower`), for the "word", "wordpiece" and "sentencepiece" kinds a
        literal "▁" (U+2581) becomes a space, then every run of whitespace (ASCII, Unicode
        separators, NEL, ...) becomes one space and leading/trailing spaces are stripped. So no
        token ever holds a line break.

        Args:
            strings: tf.string tensor (any shape), or anything convertible to one.

        Returns:
            tf.string tensor of the same shape.
        """
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        return self._normalize(strings)

    def _normalize(self, strings):
        # The one normalisation used by adapt, encode and (through encode) exported graphs.
        strings = tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="replace")
        if self.normalization == "NFKC":
            strings = _import_tf_text().normalize_utf8(strings, "NFKC")
        if self.lower:
            strings = tf.strings.lower(strings, encoding="utf-8")
        if self._marker_is_space:
            strings = tf.strings.regex_replace(strings, SPACE_MARKER, " ")
        strings = tf.strings.regex_replace(strings, WHITESPACE_RUN, " ")
        return tf.strings.strip(strings)

    def _split(self, normalized):
        """1-D normalised strings -> RaggedTensor [batch, (tokens)] of tf.string."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- adapt
    def adapt(self, data):
        """Builds the vocabulary from text.

        Args:
            data: texts: a list/iterable of Python str (or bytes), a str, a string
                array/tensor of any shape, or a `tf.data.Dataset` of scalar strings or of
                batches of strings.

        Returns:
            self.

        Raises:
            ValueError: if `data` holds no strings or no tokens, or is not text.

        Example:

        >>> tok = make_tokenizer("word").adapt(["Hello, world!", "hello again"])
        >>> tok.vocabulary[:6]
        ['[PAD]', '[UNK]', '[START]', '[END]', '!', ',']
        """
        batches = (b for b in iterate_string_batches(data) if int(tf.size(b)) > 0)
        first = next(batches, None)
        if first is None:
            raise ValueError("`data` passed to adapt() holds no strings; give a non-empty list, "
                             "array, tensor or tf.data.Dataset of text.")
        normalized = (self._normalize(b) for b in itertools.chain([first], batches))
        self._set_vocabulary(self._learn(normalized))
        return self

    def _count_tokens(self, normalized_batches):
        counts = collections.Counter()
        for batch in normalized_batches:
            counts.update(self._split(batch).flat_values.numpy().tolist())
        counts = {token.decode("utf-8"): n for token, n in counts.items()}
        counts = {t: n for t, n in counts.items() if t not in RESERVED_TOKENS}
        if not counts:
            raise ValueError("`data` passed to adapt() holds no tokens (only empty or "
                             "whitespace strings).")
        return counts

    def _learn(self, normalized_batches):
        """Returns the learned tokens (without the reserved ones), most frequent first."""
        counts = self._count_tokens(normalized_batches)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        tokens = [t for t, n in ranked if n >= self.min_count]
        if self.max_vocab_size is not None:
            tokens = tokens[:self.max_vocab_size - NUM_RESERVED]
        return tokens

    # ------------------------------------------------------------------- encode / decode
    def encode(self, strings):
        """Turns strings into token ids (no start/end ids added).

        Out-of-vocabulary pieces get the unknown id 1, never an error. Runs eagerly, inside
        `tf.function` and inside `tf.data.Dataset.map`.

        Args:
            strings: tf.string tensor of shape [batch] (or a Python list of str), or a scalar
                string.

        Returns:
            int32 `tf.RaggedTensor` of shape [batch, (tokens)]; for a scalar input, an int32
            1-D tensor.

        Example:

        >>> tok = make_tokenizer("char").adapt(["abba"])
        >>> tok.encode(["ab", "bz"]).to_list()
        [[4, 5], [5, 1]]
        """
        self._check_adapted()
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        rank = strings.shape.rank
        if rank not in (0, 1):
            raise ValueError("`strings` must be a scalar string or a 1-D string tensor, got "
                             f"shape {strings.shape}.")
        batch = tf.reshape(strings, [-1])
        ids = self._encode_normalized(self._normalize(batch))
        ids = tf.cast(ids, tf.int32)
        return ids[0] if rank == 0 else ids

    def _encode_normalized(self, normalized):
        tokens = self._split(normalized)
        return tf.ragged.map_flat_values(self._token_to_id.lookup, tokens)

    def tokenize(self, strings):
        """Splits strings into this tokenizer's tokens, as strings.

        The tokens are what `encode` looks up, after the same normalisation:
        the pieces of the split for the "char", "word" and "space" kinds
        (known or not: no vocabulary needed), the subword pieces for
        "wordpiece" and "sentencepiece" (an unknown one reads "[UNK]"). Used to
        count errors in the model's own units (`s2s-attn evaluate`'s PER).

        Args:
            strings: 1-D tf.string tensor (or a list of str).

        Returns:
            tf.string `tf.RaggedTensor` [batch, (tokens)].
        """
        strings = tf.reshape(tf.convert_to_tensor(strings, dtype=tf.string), [-1])
        return self._tokenize_normalized(self._normalize(strings))

    def _tokenize_normalized(self, normalized):
        return self._split(normalized)

    def id_to_token(self, ids):
        """Maps ids to their token strings (e.g. to label attention maps).

        Args:
            ids: int tensor or `tf.RaggedTensor` of any shape. Ids outside the vocabulary give
                "[UNK]".

        Returns:
            tf.string tensor (ragged if `ids` is) of the same shape.
        """
        self._check_adapted()
        if isinstance(ids, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self._lookup_tokens, ids)
        return self._lookup_tokens(tf.convert_to_tensor(ids))

    def _lookup_tokens(self, ids):
        if not ids.dtype.is_integer:
            raise ValueError(f"`ids` must be integers, got dtype {ids.dtype.name}.")
        return self._id_to_token.lookup(tf.cast(ids, tf.int64))

    def decode(self, ids):
        """Turns token ids back into text.

        Per row, ids 0 (padding) and 2 (start) are dropped and everything from the first
        end id 3 on is cut. The unknown id (and ids outside the vocabulary) decode to "[UNK]"
        (" [UNK]", as a word after a space, for "word" and "wordpiece").

        Args:
            ids: int `tf.RaggedTensor` [batch, (T)] or dense int tensor [batch, T] (or a 1-D
                int tensor / list for one sequence).

        Returns:
            tf.string tensor [batch] (a scalar for 1-D input).

        Example:

        >>> tok = make_tokenizer("word").adapt(["Hello, world!"])
        >>> tok.decode([[2, *tok.encode("Hello, world!").numpy(), 3, 0]]).numpy()
        array([b'Hello, world!'], dtype=object)
        """
        self._check_adapted()
        ragged = isinstance(ids, tf.RaggedTensor)
        if ragged:
            if ids.ragged_rank != 1 or ids.shape.rank != 2:
                raise ValueError(f"Ragged `ids` must have shape [batch, (T)], got {ids.shape}.")
        else:
            ids = tf.convert_to_tensor(ids)
            if ids.shape.rank not in (1, 2):
                raise ValueError(f"`ids` must have shape [batch, T] or [T], got {ids.shape}.")
        if not ids.dtype.is_integer:
            raise ValueError(f"`ids` must be integers, got dtype {ids.dtype.name}.")
        scalar = not ragged and ids.shape.rank == 1
        if ragged:  # padded rows: the padding is dropped as any padding id is
            ids = ids.to_tensor(default_value=PAD_ID)
        elif scalar:
            ids = ids[tf.newaxis]
        ids, keep = kept_ids(tf.cast(ids, tf.int64), len(self._vocab))
        text = self._decode_kept(ids, keep)
        return text[0] if scalar else text

    def _surface(self, ids):
        """Int64 ids (any shape, in range) -> what `decode` writes for each."""
        return tf.where(tf.equal(ids, UNK_ID), self._unknown_surface,
                        self._id_to_token.lookup(ids))

    def _decode_ids(self, ids):
        """Clean int64 ragged ids [batch, (T)] -> tf.string [batch]."""
        return self._join(ids.with_flat_values(self._surface(ids.flat_values)))

    def _decode_kept(self, ids, keep):
        """Int64 ids `[batch, T]` (in range) and where `decode` keeps them -> tf.string
        [batch]: `_decode_ids` of the kept ids (a kind with its own, as sentencepiece's
        detokenizer of pieces, gets them as ragged rows)."""
        if type(self)._decode_ids is not Tokenizer._decode_ids:
            return self._decode_ids(tf.ragged.boolean_mask(ids, keep))
        return self._join_kept(self._surface(ids), keep)

    def _join(self, tokens):
        return tf.strings.reduce_join(tokens, axis=-1, separator=self._join_separator)

    def _join_kept(self, tokens, keep):
        """`_join` of the tokens where `keep` (both `[batch, T]`).

        Where `_join` is this class's, a separator join, with dense ops: the
        ragged rows cost ~60 us more of a lone word's decoding (~1.7 ms) in an
        exported model; a subclass with its own `_join` gets the ragged rows.
        """
        if type(self)._join is not Tokenizer._join:
            return self._join(tf.ragged.boolean_mask(tokens, keep))
        separator = self._join_separator
        text = tf.strings.reduce_join(tf.where(keep, separator + tokens, ""), axis=-1)
        # Each kept token came with the separator: the first one's goes.
        return tf.strings.regex_replace(text, "^" + re.escape(separator), "") if separator \
            else text

    def detokenize(self, tokens):
        """Token strings back into text, as `decode` joins the tokens it looks up.

        Args:
            tokens: `tf.string` `tf.RaggedTensor` [batch, (T)].

        Returns:
            tf.string tensor [batch].
        """
        return self._join(tokens)

    def copied_surface(self, tokens):
        """Tokens of another tokenizer (the source side) as tokens of this one, for
        unknown-word replacement: `detokenize` then reads them as words of the text.
        Subword kinds set this to None: a source token is no piece of theirs."""
        return tokens

    # ------------------------------------------------------------------------ save
    def save(self, directory):
        """Writes the tokenizer to `directory` (created if needed).

        Files: `vocab.txt` (UTF-8, one token per line, line number = id; normalisation
        guarantees no token holds a line break) and `tokenizer.json` (kind, options,
        file names); kinds may add files (sentencepiece: `sentencepiece.model`).

        Args:
            directory: path of the directory.
        """
        self._check_adapted()
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, VOCABULARY_FILENAME), "w", encoding="utf-8",
                  newline="\n") as f:
            f.write("".join(token + "\n" for token in self._vocab))
        files = {"vocabulary_file": VOCABULARY_FILENAME, **self._save_extra(directory)}
        meta = {"format_version": FORMAT_VERSION, "config": self.get_config(),
                "vocabulary_size": len(self._vocab), **files}
        with open(os.path.join(directory, CONFIG_FILENAME), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
            f.write("\n")

    def _save_extra(self, directory):
        return {}

    def _restore(self, directory, meta):
        """Loads the vocabulary (and kind-specific files) written by `save`."""
        path = _existing_file(directory, meta.get("vocabulary_file", VOCABULARY_FILENAME))
        self._set_vocabulary(read_vocabulary_file(path), vocabulary_file=path)


def _existing_file(directory, filename):
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Tokenizer file not found: {path!r}.")
    return path


def read_vocabulary_file(path):
    """Reads a vocabulary file written by `Tokenizer.save`: one token per "\\n"-ended line."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
