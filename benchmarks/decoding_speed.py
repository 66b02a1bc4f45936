"""Decoding speed: XLA (`jit_compile=True`) against the plain tf.function, same process.

A G2P-sized model (bidirectional GRU encoder and Bahdanau decoder of 192 units,
31 source and 43 target symbols) decodes a batch of random 10-symbol sources
to a fixed 24 steps (the end id is masked out of the argmax, so every run does
the same work). Each variant is warmed up (tracing and compilation excluded),
then timed over repeats; ratios are against the plain greedy decoder.

    python benchmarks/decoding_speed.py [--batch 256] [--repeats 10]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from timing import timed  # benchmarks/timing.py, beside this script

from keras_s2s_attn import build_seq2seq_model
from keras_s2s_attn.decoding import Decoder


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = build_seq2seq_model(31, 43, embedding_dim=64, units=192, dropout=0.0)
    # No row may finish early: a large negative bias on the end id.
    projection = model.get_layer("output_projection")
    bias = projection.bias.numpy()
    bias[3] = -1e4
    projection.bias.assign(bias)
    sources = np.random.default_rng(0).integers(4, 31, size=(args.batch, 10)).astype("int32")

    plain, xla = Decoder(model), Decoder(model, jit_compile=True)
    rows = [
        ("greedy, tf.function", lambda: plain.greedy(sources, max_output_length=24)),
        ("greedy, XLA", lambda: xla.greedy(sources, max_output_length=24)),
        ("beam 4, tf.function",
         lambda: plain.beam_search(sources, max_output_length=24, beam_width=4)),
        ("beam 4, XLA", lambda: xla.beam_search(sources, max_output_length=24, beam_width=4)),
    ]
    results = [(name, timed(fn, args.repeats)) for name, fn in rows]
    baseline = results[0][1]
    print(f"batch {args.batch}, 24 steps, median of {args.repeats}")
    for name, seconds in results:
        print(f"{name:<22} {1000 * seconds:8.1f} ms  {baseline / seconds:5.2f}x vs greedy "
              f"tf.function  ({args.batch * 24 / seconds:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
