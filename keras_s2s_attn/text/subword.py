"""Subword tokenizers: WordPiece and SentencePiece, tokenising with tensorflow-text ops."""

import collections
import io
import os
from typing import ClassVar

import tensorflow as tf

from keras_s2s_attn.special_ids import END_ID, NUM_RESERVED, PAD_ID, START_ID, UNK_ID
from keras_s2s_attn.text._base import (
    RESERVED_TOKENS,
    UNK_TOKEN,
    Tokenizer,
    _existing_file,
    _import_tf_text,
    read_vocabulary_file,
)
from keras_s2s_attn.text._ops import SPACE_MARKER, join_words, split_words

SUFFIX_INDICATOR = "##"
MAX_BYTES_PER_WORD = 200  # longer words encode as one unknown id
MAX_UNIQUE_CHARS = 1000  # alphabet size cap of the WordPiece learner
MAX_TOKEN_LENGTH = 50  # longer words are left out of WordPiece learning
SENTENCEPIECE_MODEL_FILENAME = "sentencepiece.model"
_SENTENCEPIECE_DEFAULT_VOCAB_SIZE = 8000  # soft target when max_vocab_size is None


class WordpieceTokenizer(Tokenizer):
    """WordPiece subwords of the words found by the "word" tokenizer's splitting.

    Text is normalised and split into words and punctuation exactly like the "word" kind
    (words after a space carry a leading "▁"), then each word is cut into the longest
    vocabulary pieces from the left; pieces after the first carry the "##" suffix indicator:
    "▁unhappiness" -> ["▁un", "##happi", "##ness"]. A word that cannot be cut into known pieces
    (or is longer than 200 bytes) becomes one unknown id. Decoding drops the "##", joins and
    turns "▁" into spaces, so `decode(encode(x)) == normalize(x)` whenever no unknown id occurs
    (every word made of characters seen by `adapt` can be cut, since the learner keeps each
    character both as a word start and as a "##" piece, unless `max_vocab_size` cuts them).

    The vocabulary is learned with `tensorflow_text.tools.wordpiece_vocab`'s
    `wordpiece_tokenizer_learner_lib` (the steps of its `learn`) on our own word counts
    (`bert_vocab_from_dataset` would split words with BERT's BasicTokenizer, which drops the
    spaces we need for exact decoding). Vocabulary order: reserved tokens, the characters, the
    "##" characters (both by descending character count, then code point), then longer pieces
    by descending count, then token (the learner's order).
    `min_count` is the learner's frequency threshold for a piece; with `max_vocab_size` set, the
    learner binary-searches a threshold >= `min_count` that fits and the list is then cut to
    `max_vocab_size` (the alphabet is kept first: a cap smaller than the alphabet loses the
    rarest characters, whose words then encode as unknown). Encoding uses the tensorflow-text op
    `WordpieceTokenizeWithOffsets` (via `tensorflow_text.WordpieceTokenizer`) on the same lookup
    table; decoding is core TF.

    Args:
        lower, normalization, max_vocab_size, min_count, vocabulary: see `make_tokenizer`.
    """

    kind = "wordpiece"
    copied_surface = None  # no unknown-word replacement: tokens are pieces of words
    _marker_is_space = True
    _unknown_surface = SPACE_MARKER + UNK_TOKEN

    def _split(self, normalized):
        return split_words(normalized)

    def _learn(self, normalized_batches):
        from tensorflow_text.tools.wordpiece_vocab import (
            wordpiece_tokenizer_learner_lib as lib,
        )

        counts = self._count_tokens(normalized_batches)
        word_counts = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        params = lib.Params(
            upper_thresh=None, lower_thresh=self.min_count, num_iterations=4,
            max_input_tokens=-1, max_token_length=MAX_TOKEN_LENGTH,
            max_unique_chars=MAX_UNIQUE_CHARS, vocab_size=self.max_vocab_size or 0,
            slack_ratio=0.05, include_joiner_token=True, joiner=SUFFIX_INDICATOR,
            reserved_tokens=list(RESERVED_TOKENS))
        # The steps of `lib.learn`, with our thresholds: it would raise the lower threshold to
        # the smallest word count, overriding `min_count`.
        words = lib.get_input_words(word_counts, params.reserved_tokens, MAX_TOKEN_LENGTH)
        allowed_chars = lib.get_allowed_chars(words, MAX_UNIQUE_CHARS)
        words = lib.filter_input_words(words, allowed_chars, -1)
        if not words:
            raise ValueError("`data` passed to adapt() holds no word the WordPiece learner can "
                             f"use (all longer than {MAX_TOKEN_LENGTH} characters).")
        if self.max_vocab_size is None:
            # A fixed threshold: every piece seen at least `min_count` times.
            vocabulary = lib.learn_with_thresh(words, self.min_count, params)
        else:
            # Binary search of the threshold between min_count and the largest count.
            upper = max(self.min_count, max(n for _, n in words))
            vocabulary = lib.learn_binary_search(words, self.min_count, upper, params)
        # Alphabet first (characters, then "##" characters: with them every word of known
        # characters can be cut), then the longer pieces in the learner's order (by count).
        learned = vocabulary[len(RESERVED_TOKENS):]
        learned_set = set(learned)
        char_counts = collections.Counter()
        for word, count in words:
            for char in word:
                char_counts[char] += count
        by_count = sorted(char_counts, key=lambda char: (-char_counts[char], char))
        chars = [c for c in by_count if c in learned_set]
        suffix_chars = [SUFFIX_INDICATOR + c for c in by_count
                        if SUFFIX_INDICATOR + c in learned_set]
        alphabet = set(chars + suffix_chars)
        vocabulary = [*RESERVED_TOKENS, *chars, *suffix_chars,
                      *(t for t in learned if t not in alphabet)]
        if self.max_vocab_size is not None:
            vocabulary = vocabulary[:self.max_vocab_size]
        return vocabulary

    def _on_vocabulary_set(self):
        self._wordpiece = _import_tf_text().WordpieceTokenizer(
            self._token_to_id, suffix_indicator=SUFFIX_INDICATOR,
            max_bytes_per_word=MAX_BYTES_PER_WORD, token_out_type=tf.int64,
            unknown_token=UNK_TOKEN)

    def _encode_normalized(self, normalized):
        pieces = self._wordpiece.tokenize(split_words(normalized))  # [batch, words, pieces]
        return pieces.merge_dims(1, 2)

    def _tokenize_normalized(self, normalized):
        self._check_adapted()
        return self.id_to_token(self._encode_normalized(normalized))

    def _join(self, tokens):
        pieces = tf.ragged.map_flat_values(
            tf.strings.regex_replace, tokens, "^" + SUFFIX_INDICATOR, "")
        return join_words(pieces)


class SentencepieceTokenizer(Tokenizer):
    """SentencePiece subwords, trained with the `sentencepiece` package.

    `adapt` trains a SentencePiece model (`model_type` "unigram" or "bpe") on the normalised
    text, with SentencePiece's own normalisation off (rule "identity": ours runs first) and
    the reserved ids as its pad/unk/bos/eos pieces "[PAD]", "[UNK]", "[START]", "[END]"; the
    unknown id decodes as "[UNK]". `max_vocab_size` is the trainer's `vocab_size` (a soft limit:
    small corpora give fewer pieces; default 8000); the vocabulary is in SentencePiece's
    order (by score), not by count. `min_count` must be 1 and `vocabulary=` is not accepted
    (the model, not a list, defines the pieces). Training needs `pip install sentencepiece`;
    encoding and decoding run `tensorflow_text.SentencepieceTokenizer` (custom ops
    `SentencepieceOp`, `SentencepieceTokenizeOp`, `SentencepieceDetokenizeOp`) and a loaded
    tokenizer does not need the `sentencepiece` package.

    Args:
        lower, normalization, max_vocab_size: see `make_tokenizer`.
        model_type: "unigram" (default) or "bpe".
        character_coverage: float in (0, 1], share of characters the model must cover
            (SentencePiece recommends 0.9995 for large CJK corpora). Default 1.0.
    """

    kind = "sentencepiece"
    copied_surface = None  # no unknown-word replacement: tokens are pieces of words
    _marker_is_space = True
    _extra_options: ClassVar[dict] = {"model_type": "unigram", "character_coverage": 1.0}
    _MODEL_TYPES = ("unigram", "bpe")

    def __init__(self, vocabulary=None, **options):
        if vocabulary is not None:
            raise ValueError("`vocabulary` is not accepted for kind='sentencepiece': call "
                             "adapt() or load_tokenizer() (the model defines the pieces).")
        self._model_proto = None
        super().__init__(**options)

    def _validate_extra_options(self):
        if self.min_count != 1:
            raise ValueError("`min_count` must be 1 for kind='sentencepiece' (SentencePiece "
                             f"has no count threshold), got {self.min_count!r}.")
        if self._options["model_type"] not in self._MODEL_TYPES:
            raise ValueError(f"`model_type` must be one of {self._MODEL_TYPES}, got "
                             f"{self._options['model_type']!r}.")
        coverage = self._options["character_coverage"]
        if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) \
                or not 0 < coverage <= 1:
            raise ValueError(f"`character_coverage` must be a number in (0, 1], got "
                             f"{coverage!r}.")
        self._options["character_coverage"] = float(coverage)

    def _learn(self, normalized_batches):
        try:
            import sentencepiece
        except ImportError as error:
            raise ImportError("Training a 'sentencepiece' tokenizer needs the `sentencepiece` "
                              "package: pip install sentencepiece.") from error
        sentences = [s for batch in normalized_batches for s in batch.numpy().tolist() if s]
        if not sentences:
            raise ValueError("`data` passed to adapt() holds no tokens (only empty or "
                             "whitespace strings).")
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=(s.decode("utf-8") for s in sentences), model_writer=model,
            model_type=self._options["model_type"],
            vocab_size=self.max_vocab_size or _SENTENCEPIECE_DEFAULT_VOCAB_SIZE,
            hard_vocab_limit=False, character_coverage=self._options["character_coverage"],
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=START_ID, eos_id=END_ID,
            pad_piece=RESERVED_TOKENS[PAD_ID], unk_piece=RESERVED_TOKENS[UNK_ID],
            bos_piece=RESERVED_TOKENS[START_ID], eos_piece=RESERVED_TOKENS[END_ID],
            unk_surface=UNK_TOKEN, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=True, num_threads=1,
            minloglevel=2)
        self._model_proto = model.getvalue()
        return self._pieces()

    def _pieces(self):
        processor = _import_tf_text().SentencepieceTokenizer(self._model_proto)
        size = int(processor.vocab_size())
        pieces = [p.decode("utf-8") for p in processor.id_to_string(tf.range(size)).numpy()]
        if size < NUM_RESERVED or tuple(pieces[:NUM_RESERVED]) != RESERVED_TOKENS:
            raise ValueError(f"The SentencePiece model must start with the pieces "
                             f"{list(RESERVED_TOKENS)}, got {pieces[:NUM_RESERVED]}.")
        return pieces

    def _on_vocabulary_set(self):
        self._sentencepiece = _import_tf_text().SentencepieceTokenizer(
            self._model_proto, out_type=tf.int32)

    def _encode_normalized(self, normalized):
        return self._sentencepiece.tokenize(normalized)

    def _tokenize_normalized(self, normalized):
        self._check_adapted()
        return self.id_to_token(self._encode_normalized(normalized))

    def _decode_ids(self, ids):
        return self._sentencepiece.detokenize(tf.cast(ids, tf.int32))

    def _join(self, tokens):  # `detokenize`: pieces mark a word's start with "▁"
        return join_words(tokens)

    def _save_extra(self, directory):
        with open(os.path.join(directory, SENTENCEPIECE_MODEL_FILENAME), "wb") as f:
            f.write(self._model_proto)
        return {"sentencepiece_model_file": SENTENCEPIECE_MODEL_FILENAME}

    def _restore(self, directory, meta):
        model_path = _existing_file(
            directory, meta.get("sentencepiece_model_file", SENTENCEPIECE_MODEL_FILENAME))
        vocab_path = _existing_file(directory, meta.get("vocabulary_file", "vocab.txt"))
        with open(model_path, "rb") as f:
            self._model_proto = f.read()
        pieces = self._pieces()
        if read_vocabulary_file(vocab_path) != pieces:
            raise ValueError(f"{vocab_path!r} does not match the pieces of {model_path!r}.")
        self._set_vocabulary(pieces, vocabulary_file=vocab_path)
