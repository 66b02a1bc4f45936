"""A tiny trained run, shared by the export and serving tests."""

import os
import random

import pytest

from keras_s2s_attn.training import train


def write_pairs(path, n=800, seed=0):
    """Lower-case letters in, the word reversed and upper-cased out (two vocabularies)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(n):
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 8)))
            handle.write(f"{word}\t{word[::-1].upper()}\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory whose graph needs no tensorflow-text op (normalization=None)."""
    root = tmp_path_factory.mktemp("tiny_run")
    run_dir = os.path.join(root, "run")
    train(write_pairs(root / "pairs.tsv"), run_dir, epochs=8, units=32, embedding_dim=16,
          batch_size=32, dropout=0.0, learning_rate=0.01, normalization=None,
          max_source_length=12, verbose=0)
    return run_dir


MIXED_TEXTS = (
    ["abc", "hgfedcba", "", "   ", "\t\n", "a" * 100_000, "abc\u00e9", "dcba  abc", "\U0001F355"]
    + ["".join("abcdefgh"[(i * 7 + j) % 8] for j in range(1 + i % 11)) for i in range(55)]
)
INVALID_UTF8 = b"ab\xff\xfecd"
