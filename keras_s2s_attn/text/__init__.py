"""Tokenizers: text to int ids for the seq2seq models, in TensorFlow.

Five kinds, built with `make_tokenizer(kind, **options)`:

- "char": Unicode characters (core TF ops).
- "word": words and punctuation, SentencePiece-style "▁" word marks (core TF ops).
- "space": the space-separated pieces as they are, e.g. phone strings (core TF ops).
- "wordpiece": WordPiece subwords of those words (`tensorflow_text.WordpieceTokenizer`).
- "sentencepiece": SentencePiece subwords (`tensorflow_text.SentencepieceTokenizer`;
  training needs the `sentencepiece` package).

Every tokenizer is a `tf.Module`: `adapt(texts)` learns the vocabulary, `encode(strings)` gives
an int32 `tf.RaggedTensor` (no start/end ids), `decode(ids)` gives strings back, and both run
eagerly, in `tf.function`, in `tf.data` and in an exported SavedModel. Reserved ids (see
`keras_s2s_attn.special_ids`): 0 "[PAD]", 1 "[UNK]", 2 "[START]", 3 "[END]".

Example:

>>> from keras_s2s_attn.text import make_tokenizer, load_tokenizer
>>> tok = make_tokenizer("word", lower=True).adapt(["Hello, world!", "Hello there."])
>>> ids = tok.encode(["hello world!"])
>>> tok.decode(ids).numpy()
array([b'hello world!'], dtype=object)
>>> tok.save("/tmp/tok"); load_tokenizer("/tmp/tok").encode(["hello world!"]).to_list()
"""

from keras_s2s_attn.text._base import RESERVED_TOKENS, Tokenizer
from keras_s2s_attn.text.subword import SentencepieceTokenizer, WordpieceTokenizer
from keras_s2s_attn.text.tokenizers import (
    TOKENIZER_KINDS,
    CharTokenizer,
    SpaceTokenizer,
    WordTokenizer,
    load_tokenizer,
    make_tokenizer,
)

__all__ = [
    "RESERVED_TOKENS",
    "TOKENIZER_KINDS",
    "CharTokenizer",
    "SentencepieceTokenizer",
    "SpaceTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "WordpieceTokenizer",
    "load_tokenizer",
    "make_tokenizer",
]
