"""Logits of fixed weights under the current Keras backend (tests/test_backends.py).

`python -m tests.backend_parity OUT.npz` writes, for each configuration in
`CONFIGS`, the logits of a model whose every weight is drawn from a seed
made of its path, on fixed padded inputs: the same numbers whatever the
backend, if the layers compute the same function.
"""

import sys
import zlib

import keras
import numpy as np

from keras_s2s_attn import build_seq2seq_model
from keras_s2s_attn.options import CELL_TYPES, SCORES, STYLES

VOCAB, S, T = 13, 6, 5
# Every score with both styles and both cells, and every style with both cells: a pairwise
# covering of score x style x cell (the cell alternates), 12 models instead of the 24 of
# the full product, whose every model costs XLA compilations under JAX (~2 s each).
SCORE_STYLE_CELL = [
    {"attention": score, "style": style, "cell_type": CELL_TYPES[(i + j) % len(CELL_TYPES)]}
    for i, score in enumerate(SCORES) for j, style in enumerate(STYLES)]
CONFIGS = (
    SCORE_STYLE_CELL
    + [{"attention": "general", "style": "luong", "window": 2, "window_mode": "local-m"},
       {"attention": "additive", "window": 2, "window_mode": "local-p", "cell_type": "lstm"},
       {"attention": "dot", "style": "luong", "input_feeding": False},
       {"attention": "additive", "normalize_attention": True, "decoder_layers": 2},
       {"attention": None}]
)


def fixed_inputs():
    rng = np.random.default_rng(7)
    source = rng.integers(4, VOCAB, size=(3, S)).astype("int32")
    target = rng.integers(4, VOCAB, size=(3, T)).astype("int32")
    source[1, 4:], source[2, 2:], target[1, 3:] = 0, 0, 0  # padding
    return {"source_ids": source, "target_ids": target}


def logits(config):
    """The logits `(3, T, VOCAB)` of `config` with its fixed weights, as float64 numpy."""
    model = build_seq2seq_model(VOCAB, VOCAB, embedding_dim=6, units=8, dropout=0.0,
                                max_source_length=S if config["attention"] == "location" else None,
                                **config)
    for weight in model.weights:
        rng = np.random.default_rng(zlib.crc32(weight.path.encode()))
        weight.assign(rng.normal(0.0, 0.5, size=weight.shape).astype("float32"))
    return np.asarray(keras.ops.convert_to_numpy(model(fixed_inputs(), training=False)),
                      "float64")


def all_logits():
    return {str(index): logits(config) for index, config in enumerate(CONFIGS)}


if __name__ == "__main__":
    np.savez(sys.argv[1], backend=keras.config.backend(), **all_logits())
