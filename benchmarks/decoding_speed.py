"""Decoding speed: XLA (`jit_compile=True`) against the plain tf.function, same
process, with the FLOPs each variant does and the fraction of the machine's
float32 matmul peak that is.

A G2P-sized model (by default the issue-16 architecture: embeddings of 256, a
bidirectional GRU encoder of 256+256 and a Bahdanau GRU decoder of 256 with
additive attention; 31 source and 43 target symbols) decodes a batch of
random 10-symbol sources to a fixed 24 steps (the end id is masked out of
the argmax, so every run does the same work). Each variant is warmed up
(tracing and compilation excluded), then timed over repeats; ratios are
against the plain greedy decoder.

Useful FLOPs count the matrix products the model cannot avoid (2 per
multiply-add): the encoder's GRU kernels per source token and direction, the
attention's memory projection per source token, and per decoder step and
hypothesis the decoder GRU, the attention query, scores and context, and the
output projection. Kernels that meet only an embedding (the encoder's first
input kernels, the decoder GRU's rows for the target embedding) are not a
per-token cost: every symbol's product is one table, counted once per
decode (as the package's plain graphs compute them). Element-wise work
(gates, tanh, softmax) is not counted.
The peak is float32 `tf.matmul` at the decoder GRU's input shape with at
least 256 rows (a one-row product measures call overhead, not the
machine), timed in the same run.

    python benchmarks/decoding_speed.py [--batch 256] [--repeats 10] [--units 256]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from timing import timed  # benchmarks/timing.py, beside this script

from keras_s2s_attn import build_seq2seq_model
from keras_s2s_attn.decoding import Decoder

SOURCE_LENGTH, STEPS, BEAM = 10, 24, 4


def _matrix(model, path_end):
    """The shape of the one weight whose path ends with `path_end`."""
    (shape,) = [tuple(w.shape) for w in model.weights if w.path.endswith(path_end)]
    return shape


def useful_flops(model, batch, source_length, steps, width=1):
    """FLOPs of the unavoidable matrix products of a greedy (`width` 1) or beam decode."""
    def product(shape):
        return 2 * shape[0] * shape[1]

    encoder_kernels = [tuple(w.shape) for w in model.get_layer("encoder").weights
                       if w.path.endswith("kernel")]  # both directions, input and recurrent
    # The first layer's input kernels meet the embedding only: a table, once per decode.
    first = [w for w in model.get_layer("encoder").weights
             if "_0/" in w.path and w.path.endswith("/kernel")]
    source_vocabulary = _matrix(model, "encoder/embedding/embeddings")[0]
    encoder = (sum(map(product, encoder_kernels))
               - sum(product(tuple(w.shape)) for w in first))
    memory_dim, attention_dim = _matrix(model, "attention/memory_kernel")
    per_token = encoder + product((memory_dim, attention_dim))
    vocabulary, embedding_dim = _matrix(model, "target_embedding/embeddings")
    gates = _matrix(model, "gru_cell_0/kernel")[1]
    per_step = (sum(product(tuple(w.shape)) for w in model.get_layer("decoder").weights
                    if w.path.endswith("kernel") and "attention/memory" not in w.path)
                - product((embedding_dim, gates))  # the target embedding's rows: the table
                + 2 * source_length * (attention_dim + memory_dim)  # scores and context
                + product(_matrix(model, "output_projection/kernel")))
    tables = (vocabulary * product((embedding_dim, gates))
              + source_vocabulary * sum(product(tuple(w.shape)) for w in first))
    return batch * (source_length * per_token + width * steps * per_step) + tables


def matmul_peak(rows, shape, repeats):
    """Float32 FLOP/s of `(rows, k) @ (k, n)` for the kernel `shape` (k, n), in this run."""
    a, b = tf.random.normal([rows, shape[0]]), tf.random.normal(shape)
    product = tf.function(lambda a, b: tf.matmul(a, b))
    return 2 * rows * shape[0] * shape[1] / timed(lambda: product(a, b), repeats * 10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--embedding-dim", type=int, default=256)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = build_seq2seq_model(31, 43, embedding_dim=args.embedding_dim, units=args.units,
                                dropout=0.0)
    # No row may finish early: a large negative bias on the end id.
    projection = model.get_layer("output_projection")
    bias = projection.bias.numpy()
    bias[3] = -1e4
    projection.bias.assign(bias)
    sources = np.random.default_rng(0).integers(
        4, 31, size=(args.batch, SOURCE_LENGTH)).astype("int32")

    plain, xla = Decoder(model), Decoder(model, jit_compile=True)
    rows = [
        ("greedy, tf.function", 1, lambda: plain.greedy(sources, max_output_length=STEPS)),
        ("greedy, XLA", 1, lambda: xla.greedy(sources, max_output_length=STEPS)),
        ("beam 4, tf.function", BEAM,
         lambda: plain.beam_search(sources, max_output_length=STEPS, beam_width=BEAM)),
        ("beam 4, XLA", BEAM,
         lambda: xla.beam_search(sources, max_output_length=STEPS, beam_width=BEAM)),
    ]
    results = [(name, width, timed(fn, args.repeats)) for name, width, fn in rows]
    peak_rows = max(args.batch, 256)
    peak = matmul_peak(peak_rows, _matrix(model, "gru_cell_0/kernel"), args.repeats)
    baseline = results[0][2]
    print(f"batch {args.batch}, {SOURCE_LENGTH} source tokens, {STEPS} steps, median of "
          f"{args.repeats}; float32 matmul peak at the decoder GRU's shape, {peak_rows} rows: "
          f"{peak / 1e9:.1f} GFLOP/s")
    for name, width, seconds in results:
        flops = useful_flops(model, args.batch, SOURCE_LENGTH, STEPS, width) / seconds
        print(f"{name:<22} {1000 * seconds:8.1f} ms  {baseline / seconds:5.2f}x vs greedy "
              f"tf.function  {args.batch * STEPS / seconds:8,.0f} tokens/s  "
              f"{flops / 1e9:6.1f} GFLOP/s = {flops / peak:4.0%} of peak")


if __name__ == "__main__":
    main()
