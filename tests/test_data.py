import numpy as np
import pytest

from keras_s2s_attn import data
from keras_s2s_attn.special_ids import END_ID, START_ID
from keras_s2s_attn.text import make_tokenizer


def write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


GOOD_AND_BAD = (
    "hello\tbonjour\n"       # 1 good
    "only one column\n"      # 2 missing column
    "cat\t   \n"             # 3 empty target
    "\n"                     # 4 blank: not a row
).encode("utf-8") + b"caf\xe9\tcoffee\n" + (  # 5 Latin-1 byte, not UTF-8
    "dog\tchien\n"           # 6 good
    "\tvide\n"               # 7 empty source
).encode("utf-8")


def test_bad_rows_raise_with_file_and_line(tmp_path):
    path = write(tmp_path / "pairs.tsv", GOOD_AND_BAD)
    with pytest.raises(data.MalformedRowError) as error:
        data.read_pairs(path)
    message = str(error.value)
    assert f"{path}:2:" in message and "1 column(s)" in message
    assert "on_bad_row='skip'" in message
    # Each kind of defect is reported with its own line.
    for line, content, words in [
        (1, "cat\t \n", "empty target"),
        (1, b"caf\xe9\tcoffee\n", "not valid utf-8"),
        (1, "\tvide\n", "empty source"),
    ]:
        single = write(tmp_path / "single.tsv", content)
        with pytest.raises(data.MalformedRowError, match=f"single.tsv:{line}: .*{words}"):
            data.read_pairs(single)


def test_bad_rows_skipped_and_counted_in_a_warning(tmp_path):
    path = write(tmp_path / "pairs.tsv", GOOD_AND_BAD)
    with pytest.warns(UserWarning, match=r"Skipped 4 malformed row\(s\)") as record:
        sources, targets = data.read_pairs(path, on_bad_row="skip")
    assert sources == ["hello", "dog"] and targets == ["bonjour", "chien"]
    assert f"{path}:2 " in str(record[0].message)


def test_named_columns_header_and_csv_quoting(tmp_path):
    path = write(tmp_path / "pairs.csv",
                 'id,target,source\n1,"Bonjour, le monde","Hello, world"\n2,"dit ""oui""",said "yes"\n')
    sources, targets = data.read_pairs(path, source_column="source", target_column="target")
    assert sources == ["Hello, world", 'said "yes"']
    assert targets == ["Bonjour, le monde", 'dit "oui"']
    numbered = data.read_pairs(path, source_column=2, target_column=1, header=True)
    assert numbered == (sources, targets)
    with pytest.raises(ValueError, match="source_column='text'. is not a column"):
        data.read_pairs(path, source_column="text", target_column="target")
    tsv = write(tmp_path / "quotes.tsv", 'a "quoted" word\tun mot "cité"\n')
    assert data.read_pairs(tsv) == (['a "quoted" word'], ['un mot "cité"'])


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        data.read_pairs(tmp_path / "nope.tsv")
    path = write(tmp_path / "pairs.tsv", "a\tb\n")
    with pytest.raises(ValueError, match="on_bad_row.*'error', 'skip'"):
        data.read_pairs(path, on_bad_row="ignore")
    with pytest.raises(ValueError, match="delimiter"):
        data.read_pairs(write(tmp_path / "pairs.dat", "a\tb\n"))
    with pytest.raises(ValueError, match=r"`targets\[1\]`"):
        data.check_pairs(["a", "b"], ["x", ""])
    with pytest.raises(ValueError, match="same length"):
        data.check_pairs(["a"], ["x", "y"])


def test_split_is_deterministic_and_disjoint():
    sources = [f"word{i}" for i in range(400)]
    targets = [f"mot{i}" for i in range(400)]
    (train_s, _), (valid_s, valid_t) = data.split_pairs(sources, targets, valid_percent=5)
    again = data.split_pairs(list(reversed(sources)), list(reversed(targets)), valid_percent=5)
    assert sorted(valid_s) == sorted(again[1][0])
    assert not set(train_s) & set(valid_s)
    assert len(train_s) + len(valid_s) == 400
    assert 5 <= len(valid_s) <= 40
    assert all(t == s.replace("word", "mot") for s, t in zip(valid_s, valid_t))


def test_make_dataset_shift_padding_truncation():
    sources = ["abc", "de", "fghijk", "a"]
    targets = ["xy", "zzz", "w", "xyzxyz"]
    src_tok = make_tokenizer("char").adapt(sources)
    tgt_tok = make_tokenizer("char").adapt(targets)
    dataset, stats = data.make_dataset(sources, targets, src_tok, tgt_tok, batch_size=8,
                                       max_source_length=4, max_target_length=3, shuffle=False,
                                       bucket_boundaries=None)
    assert stats == {"pairs": 4, "truncated_sources": 1, "truncated_targets": 1,
                     "empty_after_tokenization": 0}
    (inputs, labels), = list(dataset)
    source_ids = inputs["source_ids"].numpy()
    target_ids = inputs["target_ids"].numpy()
    labels = labels.numpy()
    assert source_ids.shape == (4, 4) and target_ids.shape == (4, 4) and labels.shape == (4, 4)
    np.testing.assert_array_equal(source_ids[0], np.append(src_tok.encode(["abc"]).to_list()[0], 0))
    xy = tgt_tok.encode(["xy"]).to_list()[0]
    np.testing.assert_array_equal(target_ids[0], [START_ID, *xy, 0])
    np.testing.assert_array_equal(labels[0], [*xy, END_ID, 0])
    # Truncated target: three tokens kept, then the end id.
    assert labels[3, 3] == END_ID and np.all(labels[3, :3] > END_ID)
    assert np.all(source_ids[2] > 0)  # "fghijk" cut to 4 characters


def test_buckets_group_similar_lengths():
    sources = ["a" * n for n in range(1, 41)] * 4
    targets = ["b" * n for n in range(1, 41)] * 4
    tok = make_tokenizer("char").adapt(sources + targets)
    dataset, _ = data.make_dataset(sources, targets, tok, tok, batch_size=8, seed=0,
                                   bucket_boundaries=(10, 20, 30))
    total = 0
    for inputs, labels in dataset:
        lengths = (inputs["source_ids"].numpy() > 0).sum(1)
        total += len(lengths)
        # One bucket per batch: every row falls in the same length band.
        bands = np.digitize(lengths + 1, [10, 20, 30])
        assert len(set(bands)) == 1
    assert total == 160


def test_length_buckets_are_as_narrow_as_the_data_allows():
    # 2 full batches of 4 at least per band: 8 pairs.
    lengths = [3] * 8 + [4] * 5 + [5] * 3 + [6] * 9 + [7] * 2 + [9] * 5
    # 3 alone (8); 4 and 5 together (8); 6 alone (9); 7 and 9 (7) too few: merged below.
    assert data.length_buckets(lengths, batch_size=4, min_batches=2) == (4, 6)
    assert data.length_buckets([5] * 1000, batch_size=4) == ()
    assert data.length_buckets([2] * 100 + [3] * 7, batch_size=4, min_batches=2) == ()
    assert data.length_buckets(np.repeat(np.arange(2, 21), 600), batch_size=64) == tuple(
        range(3, 21))  # plenty of pairs: every length a band of its own
    assert data.length_buckets([], batch_size=4) == ()


def test_auto_buckets_pad_nothing_on_plentiful_data_and_nothing_is_lost():
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), int(n))) for n in rng.integers(2, 12, 3000)]
    tok = make_tokenizer("char").adapt(words)
    dataset, _ = data.make_dataset(words, words, tok, tok, batch_size=32, seed=0)
    padded = real = rows = 0
    for inputs, labels in dataset:
        labels = labels.numpy()
        padded += labels.size
        real += int((labels > 0).sum())
        rows += labels.shape[0]
        # Labels are one longer than the source: every row of a batch has one length.
        assert len(set((labels > 0).sum(1))) == 1
    assert rows == 3000 and real == padded
    assert int(dataset.cardinality()) == sum(1 for _ in dataset)
    with pytest.raises(ValueError, match="`bucket_boundaries` must be 'auto'"):
        data.make_dataset(words, words, tok, tok, bucket_boundaries="fine")
    with pytest.raises(ValueError, match=r"`bucket_boundaries\[...\]` must be a positive"):
        data.make_dataset(words, words, tok, tok, bucket_boundaries=(4, 0))


def test_small_data_gets_one_band_of_full_batches():
    sources = ["a" * n for n in range(1, 41)]
    tok = make_tokenizer("char").adapt(sources)
    dataset, _ = data.make_dataset(sources, sources, tok, tok, batch_size=8, seed=0)
    assert sorted(labels.shape[0] for _, labels in dataset) == [8] * 5


def test_batch_multiple_pads_with_rows_that_carry_no_labels():
    sources = ["abc", "de", "fgh", "ij", "k"]
    targets = ["x", "yy", "zzz", "w", "v"]
    tok = make_tokenizer("char").adapt(sources + targets)
    plain, _ = data.make_dataset(sources, targets, tok, tok, batch_size=5, shuffle=False,
                                 bucket_boundaries=None)
    padded, _ = data.make_dataset(sources, targets, tok, tok, batch_size=5, shuffle=False,
                                  bucket_boundaries=None, batch_multiple=4)
    (inputs, labels), = list(plain)
    (padded_inputs, padded_labels), = list(padded)
    assert padded_labels.shape[0] == 8
    np.testing.assert_array_equal(padded_labels[:5], labels)
    np.testing.assert_array_equal(padded_inputs["source_ids"][:5], inputs["source_ids"])
    assert np.all(padded_labels[5:].numpy() == 0)
    assert np.all(padded_inputs["source_ids"][5:].numpy() == 0)
    assert np.all(padded_inputs["target_ids"][5:].numpy() == 0)


def test_lines_longer_than_the_cap_are_malformed_rows(tmp_path):
    cap = data.MAX_LINE_BYTES
    longest = "s" * (cap - 2) + "\tt"  # exactly the cap: read
    too_long = "s" * (cap - 1) + "\tt"  # one byte more: a malformed row
    huge = "x\t" + "y" * 3_000_000  # read in pieces, never held whole
    path = write(tmp_path / "pairs.tsv",
                 f"a\tb\n{too_long}\r\n{longest}\r\n{huge}\nc\td\n{huge}")
    with pytest.raises(data.MalformedRowError,
                       match=f"pairs.tsv:2: malformed row: longer than {cap} bytes"):
        data.read_pairs(path)
    with pytest.warns(UserWarning, match=r"Skipped 3 malformed row\(s\)") as record:
        sources, targets = data.read_pairs(path, on_bad_row="skip")
    assert sources == ["a", "s" * (cap - 2), "c"] and targets == ["b", "t", "d"]
    assert f"{path}:2 " in str(record[0].message) and f"{path}:4 " in str(record[0].message)
    csv_path = write(tmp_path / "pairs.csv", f'a,b\n"{huge}",z\n')
    with pytest.raises(data.MalformedRowError, match="pairs.csv:2: .*longer than"):
        data.read_pairs(csv_path)


def test_a_long_line_in_the_validation_file_names_that_file(tmp_path):
    from keras_s2s_attn.training import train

    pairs = write(tmp_path / "pairs.tsv", "ab\tBA\ncd\tDC\n")
    valid = write(tmp_path / "valid.tsv", "ab\tBA\n" + "a" * 1_000_000 + "\tb\n")
    with pytest.raises(data.MalformedRowError, match="valid.tsv:2: malformed row: longer"):
        train(pairs, tmp_path / "run", valid_data=valid)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options", [
    {"batch_size": 8},
    {"batch_size": 5, "batch_multiple": 2, "max_source_length": 9, "max_target_length": 15},
    {"batch_size": 8, "bucket_boundaries": (7, 8, 9, 10, 30)},
    {"batch_size": 64, "bucket_boundaries": None},
])
def test_the_number_of_batches_is_known_before_iterating(options):
    rng = np.random.default_rng(0)
    sources = ["a" * int(n) for n in rng.integers(1, 40, 157)]
    targets = ["b" * int(n) for n in rng.integers(1, 40, 157)]
    tok = make_tokenizer("char").adapt(sources + targets)
    dataset, _ = data.make_dataset(sources, targets, tok, tok, seed=1, **options)
    batches = int(dataset.cardinality())
    assert batches > 0
    for _ in range(2):  # every epoch (reshuffled) has that many batches
        assert sum(1 for _ in dataset) == batches
