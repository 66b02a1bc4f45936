"""Character and word tokenizers, the `make_tokenizer` factory and `load_tokenizer`.

See `keras_s2s_attn.text` for an overview; the subword kinds live in `subword.py`.
"""

import json
import os

import tensorflow as tf

from keras_s2s_attn.options import TOKENIZER_KINDS
from keras_s2s_attn.text._base import (
    CONFIG_FILENAME,
    UNK_TOKEN,
    Tokenizer,
    _existing_file,
)
from keras_s2s_attn.text._ops import SPACE_MARKER, join_words, split_words
from keras_s2s_attn.text.subword import SentencepieceTokenizer, WordpieceTokenizer


class CharTokenizer(Tokenizer):
    """One token per Unicode code point of the normalised text; a space is a token too.

    Normalisation collapses each whitespace run (newlines and tabs included) to one space and
    strips the ends, so `decode(encode(x)) == normalize(x)` for text whose characters are all
    in the vocabulary and no token ever holds a line break.
    The vocabulary is ordered by descending count, then code point order. Encode and decode use
    core TF ops only (plus `tensorflow_text.normalize_utf8` when `normalization="NFKC"`).

    Args:
        lower, normalization, max_vocab_size, min_count, vocabulary: see `make_tokenizer`.

    Example:

    >>> tok = CharTokenizer().adapt(["abba"])
    >>> tok.vocabulary
    ['[PAD]', '[UNK]', '[START]', '[END]', 'a', 'b']
    >>> tok.decode(tok.encode(["ab a"])).numpy()
    array([b'ab[UNK]a'], dtype=object)
    """

    kind = "char"

    def _split(self, normalized):
        return tf.strings.unicode_split(normalized, "UTF-8", errors="replace")


class WordTokenizer(Tokenizer):
    """Words and punctuation of the normalised text, SentencePiece-style space marking.

    After normalisation (whitespace runs -> one space, ends stripped, a literal "▁" U+2581 read
    as a space), each word that follows a space gets a leading "▁" and every punctuation or
    symbol character (Unicode categories P* and S*, with its combining marks, e.g. an emoji
    and its variation selector) is a token of its own:
    "Hello, world!" -> ["Hello", ",", "▁world", "!"]. Decoding concatenates the tokens and
    turns "▁" back into spaces, so `decode(encode(x)) == normalize(x)` for in-vocabulary text.
    An unknown word decodes as " [UNK]" (as if it followed a space). Core TF ops only (plus
    `tensorflow_text.normalize_utf8` when `normalization="NFKC"`).

    Args:
        lower, normalization, max_vocab_size, min_count, vocabulary: see `make_tokenizer`.

    Example:

    >>> tok = WordTokenizer().adapt(["Hello, world!"])
    >>> tok.id_to_token(tok.encode("Hello, world!")).numpy()
    array([b'Hello', b',', b'\\xe2\\x96\\x81world', b'!'], dtype=object)
    """

    kind = "word"
    _marker_is_space = True
    _unknown_surface = SPACE_MARKER + UNK_TOKEN

    def _split(self, normalized):
        return split_words(normalized)

    def _join(self, tokens):
        return join_words(tokens)

    def copied_surface(self, tokens):
        # A copied word reads as a word after a space, as an unknown one does.
        return SPACE_MARKER + tf.strings.regex_replace(tokens, "^" + SPACE_MARKER, "")


class SpaceTokenizer(Tokenizer):
    """Tokens are the space-separated pieces of the normalised text, nothing more.

    For targets that are already token sequences, such as phone strings
    ("HH AH L OW"): no punctuation splitting and no "▁" marks, so each piece
    has one vocabulary entry. Decoding joins the tokens with single spaces, so
    `decode(encode(x)) == normalize(x)` (whitespace runs collapsed) for
    in-vocabulary text. Core TF ops only (plus `tensorflow_text.normalize_utf8`
    when `normalization="NFKC"`).

    Args:
        lower, normalization, max_vocab_size, min_count, vocabulary: see `make_tokenizer`.

    Example:

    >>> tok = SpaceTokenizer().adapt(["HH AH L OW", "W ER L D"])
    >>> tok.decode(tok.encode(["HH  AH L D"])).numpy()
    array([b'HH AH L D'], dtype=object)
    """

    kind = "space"
    _join_separator = " "

    def _split(self, normalized):
        return tf.strings.split(normalized, " ")


TOKENIZER_CLASSES = {
    "char": CharTokenizer,
    "word": WordTokenizer,
    "space": SpaceTokenizer,
    "wordpiece": WordpieceTokenizer,
    "sentencepiece": SentencepieceTokenizer,
}
if tuple(TOKENIZER_CLASSES) != TOKENIZER_KINDS:  # options.py lists them for the CLI
    raise ImportError(f"options.TOKENIZER_KINDS {TOKENIZER_KINDS} does not list the tokenizer "
                      f"classes {tuple(TOKENIZER_CLASSES)}")


def make_tokenizer(kind, **options):
    """Builds a tokenizer (not yet adapted) of the given kind.

    Args:
        kind: one of "char", "word", "space", "wordpiece", "sentencepiece".
        **options: common options
            - `lower=False`: lower-case (after Unicode normalisation).
            - `normalization="NFKC"`: `"NFKC"` or `None`.
            - `max_vocab_size=None`: cap on `vocabulary_size`, **counting the 4 reserved
              ids** (must be > 4).
            - `min_count=1`: minimum count of a learned token ("wordpiece": the learner's
              frequency threshold; "sentencepiece": only 1 is accepted).
            - `vocabulary=None`: a token list to use instead of `adapt` (not for
              "sentencepiece").
            "sentencepiece" also takes `model_type="unigram"` ("unigram" or "bpe") and
            `character_coverage=1.0`.

    Returns:
        A `Tokenizer` (a `tf.Module`): call `adapt(texts)`, then `encode` / `decode`.

    Raises:
        ValueError: for an unknown kind or a bad option.

    Example:

    >>> tok = make_tokenizer("word", lower=True).adapt(["Hello, world!", "hello there"])
    >>> tok.encode(["hello world"]).to_list()
    [[4, 8]]
    >>> tok2 = make_tokenizer(**tok.get_config())  # same kind and options
    """
    if kind not in TOKENIZER_CLASSES:
        raise ValueError(f"Unknown tokenizer `kind` {kind!r}; accepted values: "
                         f"{list(TOKENIZER_KINDS)}.")
    return TOKENIZER_CLASSES[kind](**options)


def load_tokenizer(directory):
    """Loads a tokenizer written by `Tokenizer.save`.

    The lookup tables are initialised from the saved vocabulary file
    (`tf.lookup.TextFileInitializer`), so a `tf.Module` holding the tokenizer carries that file
    as a SavedModel asset when exported.

    Args:
        directory: the directory given to `save`.

    Returns:
        A tokenizer that gives the same ids as the saved one.

    Raises:
        FileNotFoundError: if the directory or one of its files is missing.

    Example:

    >>> tok.save("/tmp/tok")
    >>> same = load_tokenizer("/tmp/tok")
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Tokenizer directory not found: {directory!r}.")
    with open(_existing_file(directory, CONFIG_FILENAME), encoding="utf-8") as f:
        meta = json.load(f)
    config = dict(meta["config"])
    tokenizer = make_tokenizer(**config)
    tokenizer._restore(directory, meta)
    return tokenizer
