"""Tests of keras_s2s_attn.text: round trips, exact ids, OOV, graph modes, save/load, errors."""

import collections
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID, UNK_ID
from keras_s2s_attn.text import (
    RESERVED_TOKENS,
    TOKENIZER_KINDS,
    CharTokenizer,
    SpaceTokenizer,
    WordTokenizer,
    load_tokenizer,
    make_tokenizer,
)

try:
    import sentencepiece  # noqa: F401

    HAVE_SENTENCEPIECE = True
except ImportError:
    HAVE_SENTENCEPIECE = False

needs_sentencepiece = pytest.mark.skipif(
    not HAVE_SENTENCEPIECE, reason="training a sentencepiece model needs `sentencepiece`")

UNICODE_TEXTS = [
    "한국어 문장입니다.",
    "Élève à l'école, déjà!",
    "I ❤️ 🍕 pizza",
    "我爱北京天安门。",
    "Wait...  what?!\t(yes)  \n «ok» — done;   [x]",
    "ﬁne ＡＢＣ ① x²",
    "  leading and trailing  ",
]
ALL_KINDS = ["char", "word", "wordpiece",
             pytest.param("sentencepiece", marks=needs_sentencepiece)]


def _strings(tensor):
    return [s.decode("utf-8") for s in np.asarray(tensor.numpy()).reshape(-1).tolist()]


def _adapted(kind, texts=UNICODE_TEXTS, **options):
    return make_tokenizer(kind, **options).adapt(texts)


# ------------------------------------------------------------------------ normalisation
def test_normalize_nfkc_lower_and_whitespace():
    tok = make_tokenizer("char", lower=True)
    assert _strings(tok.normalize(["ﬁne ＡＢＣ", " a \n\t b\u00a0c\u3000d\u2028e ", "x\r\ny"])) == [
        "fine abc", "a b c d e", "x y"]
    assert _strings(make_tokenizer("char").normalize(["ＡＢＣ ﬁ"])) == ["ABC fi"]
    # Without NFKC the ligature and full-width letters stay (only whitespace is normalised).
    assert _strings(make_tokenizer("char", normalization=None).normalize(["ＡＢＣ  ﬁ"])) == [
        "ＡＢＣ ﬁ"]


def test_space_marker_in_input_is_a_space_for_word_kinds():
    assert _strings(make_tokenizer("word").normalize(["a\u2581b \u2581 c"])) == ["a b c"]
    assert _strings(make_tokenizer("char").normalize(["a\u2581b"])) == ["a\u2581b"]


# ------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("options", [{}, {"lower": True}, {"normalization": None}])
def test_round_trip_unicode(kind, options):
    tok = _adapted(kind, **options)
    ids = tok.encode(UNICODE_TEXTS)
    assert isinstance(ids, tf.RaggedTensor) and ids.dtype == tf.int32
    assert ids.shape[0] == len(UNICODE_TEXTS)
    flat = ids.flat_values.numpy()
    assert (flat >= 4).all() and (flat < tok.vocabulary_size).all()  # no unknown, no reserved
    decoded = _strings(tok.decode(ids))
    assert decoded == _strings(tok.normalize(UNICODE_TEXTS))
    if options.get("lower"):
        assert decoded[5] == "fine abc 1 x2" and decoded[1] == "élève à l'école, déjà!"
    elif options.get("normalization", "NFKC") == "NFKC":
        assert decoded[5] == "fine ABC 1 x2"
    else:
        assert decoded[5] == "ﬁne ＡＢＣ ① x²"
    wait = "wait" if options.get("lower") else "Wait"
    assert decoded[4] == wait + "... what?! (yes) «ok» — done; [x]"
    assert decoded[6] == "leading and trailing"


def test_char_tokens_are_characters_and_spaces():
    tok = _adapted("char")
    tokens = _strings(tok.id_to_token(tok.encode("I ❤️ 🍕")))
    assert tokens == ["I", " ", "❤", "\ufe0f", " ", "🍕"]


def test_word_tokens_split_punctuation_and_mark_spaces():
    tok = _adapted("word")
    tokens = _strings(tok.id_to_token(tok.encode("Élève à l'école, déjà!")))
    assert tokens == ["Élève", "▁à", "▁l", "'", "école", ",", "▁déjà", "!"]
    tokens = _strings(tok.id_to_token(tok.encode("Wait... what?! (yes) I ❤️ 🍕")))
    # "▁I" (a word after a space) was never seen: only "I" at a text start was.
    assert tokens == ["Wait", ".", ".", ".", "▁what", "?", "!", "▁(", "yes", ")", "[UNK]",
                      "▁❤️", "▁🍕"]
    assert _strings(tok.id_to_token(tok.encode("我爱北京天安门。"))) == ["我爱北京天安门", "。"]


# -------------------------------------------------------------------------- exact ids
CORPUS = ["the cat", "the dog.", "a cat!"]


def test_word_vocabulary_order_and_ids():
    tok = WordTokenizer().adapt(CORPUS)
    # Counts: the 2, ▁cat 2, then count 1 in code point order: ! . a ▁dog.
    assert tok.vocabulary == [*RESERVED_TOKENS, "the", "▁cat", "!", ".", "a", "▁dog"]
    assert tok.vocabulary_size == 10
    assert tok.encode(["the cat.", "a dog!"]).to_list() == [[4, 5, 7], [8, 9, 6]]
    assert tok.encode("a cat").numpy().tolist() == [8, 5]  # scalar in, 1-D out
    assert _strings(tok.id_to_token([[4, 9], [1, 99]])) == ["the", "▁dog", "[UNK]", "[UNK]"]


def test_char_vocabulary_order_and_ids():
    tok = CharTokenizer().adapt(["abba", "cab"])
    assert tok.vocabulary == [*RESERVED_TOKENS, "a", "b", "c"]  # a 3, b 3, c 1
    assert tok.encode(["cab", "b a"]).to_list() == [[6, 4, 5], [5, UNK_ID, 4]]


def test_max_vocab_size_and_min_count():
    capped = make_tokenizer("word", max_vocab_size=6).adapt(CORPUS)
    assert capped.vocabulary == [*RESERVED_TOKENS, "the", "▁cat"]
    frequent = make_tokenizer("word", min_count=2).adapt(CORPUS)
    assert frequent.vocabulary == [*RESERVED_TOKENS, "the", "▁cat"]
    assert frequent.encode(["the dog"]).to_list() == [[4, UNK_ID]]


def test_decode_drops_pad_and_start_and_stops_at_end():
    tok = WordTokenizer().adapt(CORPUS)
    dense = tf.constant([[START_ID, 4, 5, END_ID, 9, 6],
                         [8, PAD_ID, 9, 6, PAD_ID, PAD_ID],
                         [END_ID, 4, 0, 0, 0, 0],
                         [4, 1, 7, 500, -3, 0]])
    assert _strings(tok.decode(dense)) == ["the cat", "a dog!", "", "the [UNK]. [UNK] [UNK]"]
    ragged = tf.ragged.constant([[2, 4, 5, 3, 9], [], [8, 9]])
    assert _strings(tok.decode(ragged)) == ["the cat", "", "a dog"]
    assert _strings(tok.decode(np.array([4, 5, 3, 4], np.int64))) == ["the cat"]
    assert tok.decode([4, 5]).shape == ()


@pytest.mark.parametrize("kind", [*ALL_KINDS, "space"])
def test_dense_ids_decode_as_their_ragged_rows(kind):
    """Dense ids (dense masks, no ragged rows built first) and ragged rows decode
    as the rows cleaned here, in numpy, do: cut at the first end id, padding and
    start ids dropped, out-of-range ids unknown; no columns decode to empty strings."""
    tok = _adapted(kind)
    size = tok.vocabulary_size
    rng = np.random.default_rng(3)
    dense = rng.integers(-2, size + 3, (40, 9)).astype("int32")
    dense[rng.random(dense.shape) < 0.15] = END_ID
    dense[rng.random(dense.shape) < 0.15] = PAD_ID
    dense[:, 0] = np.where(rng.random(40) < 0.5, START_ID, dense[:, 0])
    cleaned = []
    for row in dense.tolist():
        row = row[:row.index(END_ID)] if END_ID in row else row
        cleaned.append([UNK_ID if i < 0 or i >= size else i for i in row
                        if i not in (PAD_ID, START_ID)])
    expected = _strings(tok.decode(tf.ragged.constant(cleaned, dtype=tf.int32)))
    assert _strings(tok.decode(tf.ragged.constant(dense.tolist()))) == expected
    assert _strings(tok.decode(dense)) == expected
    assert _strings(tf.function(tok.decode)(tf.constant(dense))) == expected
    assert len(set(expected)) > 20  # varied rows, not all cut at once
    assert _strings(tok.decode(np.zeros((2, 0), "int32"))) == ["", ""]


def test_a_subclass_join_decodes_dense_ids_too():
    """A subclass with its own `_join` gets it on dense ids as on ragged ones."""

    class Dashed(SpaceTokenizer):
        def _join(self, tokens):
            return tf.strings.reduce_join(tokens, axis=-1, separator="-")

    tok = Dashed().adapt(["HH AH L OW", "W ER L D"])
    ids = tok.encode(["HH AH L D", "W"])
    assert _strings(tok.decode(ids)) == ["HH-AH-L-D", "W"]
    assert _strings(tok.decode(ids.to_tensor())) == ["HH-AH-L-D", "W"]


# ------------------------------------------------------------------------------- OOV
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_oov_maps_to_unknown(kind):
    tok = make_tokenizer(kind).adapt(["abc abc", "bca"])
    ids = tok.encode(["xyz", "", "abc qqq"])
    assert ids.to_list()[1] == []
    assert UNK_ID in ids.to_list()[0] and UNK_ID in ids.to_list()[2]
    assert "[UNK]" in _strings(tok.decode(ids))[0]
    assert _strings(tok.decode(ids))[2].startswith("abc")


def test_word_oov_decodes_as_unknown_word():
    tok = WordTokenizer().adapt(CORPUS)
    ids = tok.encode(["the zebra cat!", "zebra"])
    assert ids.to_list() == [[4, UNK_ID, 5, 6], [UNK_ID]]
    assert _strings(tok.decode(ids)) == ["the [UNK] cat!", "[UNK]"]


# ------------------------------------------------------------------ eager / graph / data
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_same_ids_eager_dataset_and_tf_function(kind):
    tok = _adapted(kind)
    texts = UNICODE_TEXTS + ["unseen zzz ÿ"]
    eager = tok.encode(texts).to_list()

    mapped = tf.data.Dataset.from_tensor_slices(texts).map(tok.encode)
    assert [row.numpy().tolist() for row in mapped] == eager
    batched = tf.data.Dataset.from_tensor_slices(texts).batch(3).map(tok.encode)
    assert [row for batch in batched for row in batch.to_list()] == eager

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode_decode(strings):
        ids = tok.encode(strings)
        return ids.to_tensor(), tok.decode(ids)

    dense, text = encode_decode(tf.constant(texts))
    assert tf.RaggedTensor.from_tensor(dense, padding=PAD_ID).to_list() == eager
    assert _strings(text) == _strings(tok.decode(tf.ragged.constant(eager)))


@pytest.mark.parametrize("make_data", [
    lambda t: t,
    lambda t: (s for s in t),
    lambda t: np.array(t),
    lambda t: tf.constant(t),
    lambda t: tf.data.Dataset.from_tensor_slices(t),
    lambda t: tf.data.Dataset.from_tensor_slices(t).batch(2),
], ids=["list", "generator", "numpy", "tensor", "dataset", "batched_dataset"])
def test_adapt_accepts_all_input_forms(make_data):
    expected = WordTokenizer().adapt(CORPUS).vocabulary
    assert WordTokenizer().adapt(make_data(CORPUS)).vocabulary == expected


# ---------------------------------------------------------------------------- save/load
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_save_load_identical(kind, tmp_path):
    tok = _adapted(kind, lower=True)
    tok.save(tmp_path / "tok")
    with open(tmp_path / "tok" / "vocab.txt", encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == tok.vocabulary
    with open(tmp_path / "tok" / "tokenizer.json", encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["config"] == tok.get_config() and meta["config"]["kind"] == kind
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert type(loaded) is type(tok) and loaded.get_config() == tok.get_config()
    assert loaded.vocabulary == tok.vocabulary
    texts = UNICODE_TEXTS + ["unseen zzz"]
    assert loaded.encode(texts).to_list() == tok.encode(texts).to_list()
    ids = tok.encode(texts)
    assert _strings(loaded.decode(ids)) == _strings(tok.decode(ids))


def test_load_missing_raises_file_not_found(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    WordTokenizer().adapt(CORPUS).save(tmp_path / "partial")
    os.remove(tmp_path / "partial" / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_tokenizer(tmp_path / "partial")


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_saved_model_export_keeps_ids(kind, tmp_path):
    make_tokenizer(kind).adapt(UNICODE_TEXTS).save(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    module = tf.Module()
    module.tokenizer = tok
    module.encode = tf.function(lambda s: tok.encode(s).to_tensor(),
                                input_signature=[tf.TensorSpec([None], tf.string)])
    module.decode = tf.function(lambda ids: tok.decode(ids),
                                input_signature=[tf.TensorSpec([None, None], tf.int32)])
    tf.saved_model.save(module, str(tmp_path / "export"))
    assert os.path.isfile(tmp_path / "export" / "assets" / "vocab.txt")
    restored = tf.saved_model.load(str(tmp_path / "export"))
    dense = restored.encode(tf.constant(UNICODE_TEXTS))
    assert dense.numpy().tolist() == tok.encode(UNICODE_TEXTS).to_tensor().numpy().tolist()
    assert _strings(restored.decode(dense)) == _strings(tok.normalize(UNICODE_TEXTS))


def _op_types(concrete_function):
    graph_def = concrete_function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return {node.op for node in nodes}


@pytest.mark.parametrize("kind", ["char", "word"])
def test_core_kinds_without_normalization_use_only_core_ops(kind):
    for normalization, expected_custom in [(None, set()), ("NFKC", {"NormalizeUTF8"})]:
        tok = make_tokenizer(kind, normalization=normalization).adapt(CORPUS)
        encode = tf.function(tok.encode).get_concrete_function(tf.TensorSpec([None], tf.string))
        decode = tf.function(tok.decode).get_concrete_function(
            tf.TensorSpec([None, None], tf.int32))
        ops = _op_types(encode) | _op_types(decode)
        assert {"LookupTableFindV2", "StaticRegexReplace"} <= ops
        assert {op for op in ops if not hasattr(tf.raw_ops, op)} == expected_custom


def test_config_rebuilds_same_tokenizer():
    tok = make_tokenizer("word", lower=True, normalization=None, max_vocab_size=50, min_count=2)
    config = tok.get_config()
    assert config == {"kind": "word", "lower": True, "normalization": None,
                      "max_vocab_size": 50, "min_count": 2}
    assert make_tokenizer(**config).get_config() == config


def test_given_vocabulary():
    tok = make_tokenizer("word", vocabulary=["the", "▁cat"])
    assert tok.vocabulary == [*RESERVED_TOKENS, "the", "▁cat"]
    assert tok.encode(["the cat dog"]).to_list() == [[4, 5, UNK_ID]]
    with pytest.raises(ValueError, match="duplicate"):
        make_tokenizer("word", vocabulary=["a", "a"])
    with pytest.raises(ValueError, match="line break"):
        make_tokenizer("char", vocabulary=["a", "\n"])


# ---------------------------------------------------------------------------- subwords
WORDPIECE_CORPUS = ["walking talking jumping playing singing reading",
                    "walked talked jumped played", "walks talks jumps plays sings reads",
                    "the singer talks to the reader", "a walker jumps"]


def test_wordpiece_learns_subwords_and_splits_unseen_words():
    tok = make_tokenizer("wordpiece", min_count=2).adapt(WORDPIECE_CORPUS)
    vocab = tok.vocabulary
    assert vocab[:4] == list(RESERVED_TOKENS)
    counts = collections.Counter("".join(WORDPIECE_CORPUS).replace(" ", ""))
    counts["▁"] = sum(text.count(" ") for text in WORDPIECE_CORPUS)
    alphabet = sorted(counts, key=lambda char: (-counts[char], char))
    assert alphabet[:3] == ["▁", "a", "e"]  # the most frequent characters
    assert vocab[4:4 + 2 * len(alphabet)] == alphabet + ["##" + c for c in alphabet]
    assert {"##ing", "##er", "##ed"} <= set(vocab)
    assert "▁jumps" in vocab and "▁singers" not in vocab and "▁jumper" not in vocab
    ids = tok.encode(["singers jumper!", "a jumps"])
    pieces = [_strings(row) for row in tok.id_to_token(ids)]
    assert pieces[0][-3:] == ["##p", "##er", "[UNK]"]  # "!" never seen: one unknown word
    assert pieces[0][:4] == ["s", "##ing", "##er", "##s"] and pieces[1] == ["a", "▁jumps"]
    assert _strings(tok.decode(ids)) == ["singers jumper [UNK]", "a jumps"]
    text = ["a singer walked to the reader", "talking jumps"]
    assert _strings(tok.decode(tok.encode(text))) == text


def test_wordpiece_max_vocab_size_keeps_alphabet():
    tok = make_tokenizer("wordpiece", max_vocab_size=50).adapt(WORDPIECE_CORPUS)
    assert tok.vocabulary_size == 50 and "##y" in tok.vocabulary
    ids = tok.encode(["the talker jumped"])
    assert UNK_ID not in ids.flat_values.numpy()
    assert _strings(tok.decode(ids)) == ["the talker jumped"]


@needs_sentencepiece
@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_reserved_ids_and_round_trip(model_type):
    tok = make_tokenizer("sentencepiece", model_type=model_type, max_vocab_size=40)
    tok.adapt(WORDPIECE_CORPUS)
    assert tok.vocabulary[:4] == list(RESERVED_TOKENS) and tok.vocabulary_size <= 40
    ids = tok.encode(["the player replays", "they played"])
    assert UNK_ID not in ids.flat_values.numpy()
    assert _strings(tok.decode(ids)) == ["the player replays", "they played"]
    assert _strings(tok.decode([[START_ID, *ids[0].numpy(), END_ID, 9, 9]])) == [
        "the player replays"]
    assert _strings(tok.decode(tok.encode(["qq the"]))) == ["[UNK] the"]


def test_sentencepiece_training_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        make_tokenizer("sentencepiece").adapt(CORPUS)


# ------------------------------------------------------------------------- bad options
def test_unknown_kind_names_accepted_values():
    with pytest.raises(ValueError, match="kind") as info:
        make_tokenizer("bytes")
    assert all(kind in str(info.value) for kind in TOKENIZER_KINDS)


@pytest.mark.parametrize("options, argument", [
    ({"max_vocab_size": 0}, "max_vocab_size"),
    ({"max_vocab_size": -5}, "max_vocab_size"),
    ({"max_vocab_size": 4}, "max_vocab_size"),
    ({"max_vocab_size": 10.5}, "max_vocab_size"),
    ({"min_count": 0}, "min_count"),
    ({"min_count": -1}, "min_count"),
    ({"normalization": "NFC"}, "normalization"),
    ({"normalization": "nfkc"}, "normalization"),
    ({"lower": "yes"}, "lower"),
    ({"lowercase": True}, "lowercase"),
])
@pytest.mark.parametrize("kind", ["char", "word", "wordpiece"])
def test_bad_options(kind, options, argument):
    with pytest.raises(ValueError, match=argument):
        make_tokenizer(kind, **options)


def test_bad_sentencepiece_options():
    with pytest.raises(ValueError, match="min_count"):
        make_tokenizer("sentencepiece", min_count=2)
    with pytest.raises(ValueError, match="model_type"):
        make_tokenizer("sentencepiece", model_type="word")
    with pytest.raises(ValueError, match="character_coverage"):
        make_tokenizer("sentencepiece", character_coverage=0)
    with pytest.raises(ValueError, match="vocabulary"):
        make_tokenizer("sentencepiece", vocabulary=["a"])


@pytest.mark.parametrize("kind", ["char", "word", "wordpiece"])
@pytest.mark.parametrize("data", [
    [], (), np.array([], dtype=object), tf.constant([], tf.string),
    tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string)), ["", "  \n "],
], ids=["list", "tuple", "numpy", "tensor", "dataset", "blank"])
def test_adapt_on_empty_data_raises(kind, data):
    with pytest.raises(ValueError, match="data"):
        make_tokenizer(kind).adapt(data)


def test_misuse_errors():
    with pytest.raises(RuntimeError, match="adapt"):
        make_tokenizer("word").encode(["x"])
    tok = WordTokenizer().adapt(CORPUS)
    with pytest.raises(ValueError, match="strings"):
        tok.encode([["a", "b"]])
    with pytest.raises(ValueError, match="ids"):
        tok.decode(tf.constant([[1.0]]))
    with pytest.raises(ValueError, match="data"):
        tok.adapt([1, 2])


def test_space_tokenizer_keeps_pieces_whole():
    tok = make_tokenizer("space").adapt(["HH AH0 L OW1", "W ER1 L D", "HH AH0 L OW1"])
    assert tok.vocabulary[4:] == ["L", "AH0", "HH", "OW1", "D", "ER1", "W"]  # count, then text
    ids = tok.encode(["HH  AH0\tL  D", "ZH OW1"])
    assert ids.to_list() == [[6, 5, 4, 8], [1, 7]]
    assert tok.decode(ids).numpy().tolist() == [b"HH AH0 L D", b"[UNK] OW1"]
    assert tok.id_to_token(ids).to_list()[0] == [b"HH", b"AH0", b"L", b"D"]
