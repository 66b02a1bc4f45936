"""Training and decoding speed of the same model under each Keras backend, one run.

Each backend runs in its own process (Keras picks its backend once, at
import), one after the other, on the README's reversal task: embeddings of
32, a bidirectional GRU encoder and a Bahdanau GRU decoder of 64 units,
additive attention, batch 64 (`--units`, `--batch` change them). Training
steps/s are `model.fit` steps after a warm-up epoch (tracing and XLA
compilation excluded), on numpy arrays so every backend reads the same
batches; decoding is `generation.greedy_search` (keras.ops, eager) over 256
sources, after one untimed pass over them. Ratios are against TensorFlow in the same run.

    python benchmarks/backends.py [--backends tensorflow,jax,torch] [--steps 100]

A backend that is not installed is reported and skipped.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

def measure(args):
    """In the child process: `{"train_steps_per_s": ..., "decode_words_per_s": ...}`."""
    import keras

    from keras_s2s_attn import (MaskedAccuracy, MaskedSparseCategoricalCrossentropy,
                                build_seq2seq_model, greedy_search)
    from keras_s2s_attn.synthetic import reversal_task

    keras.utils.set_random_seed(0)
    count = args.batch * args.steps
    inputs, labels = reversal_task(count, seed=1)
    model = build_seq2seq_model(24, 24, embedding_dim=32, units=args.units,
                                attention="additive", dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3, clipnorm=1.0),
                  loss=MaskedSparseCategoricalCrossentropy(), metrics=[MaskedAccuracy()])
    warm = {key: value[: args.batch * 10] for key, value in inputs.items()}
    model.fit(warm, labels[: args.batch * 10], batch_size=args.batch, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(inputs, labels, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
    train = args.steps / (time.perf_counter() - start)
    sources = reversal_task(256, seed=2)[0]["source_ids"]
    greedy_search(model, sources, max_output_length=30)  # warm-up: JAX compiles per shape
    start = time.perf_counter()
    greedy_search(model, sources, max_output_length=30)
    decode = len(sources) / (time.perf_counter() - start)
    return {"train_steps_per_s": train, "decode_words_per_s": decode}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    results = {}
    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:  # each backend's package has its name
            print(f"{backend}: not installed, skipped", file=sys.stderr)
            continue
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{backend}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results[backend] = json.loads(done.stdout.splitlines()[-1])
    base = results.get("tensorflow")
    print(f"units {args.units}, batch {args.batch}, {args.steps} timed steps, "
          f"{os.cpu_count()} CPUs")
    print(f"{'backend':<12}{'train steps/s':>15}{'vs TF':>8}{'greedy words/s':>16}{'vs TF':>8}")
    for backend, result in results.items():
        train, decode = result["train_steps_per_s"], result["decode_words_per_s"]
        ratio = (lambda value, key: f"{value / base[key]:.2f}x") if base else (
            lambda value, key: "-")
        print(f"{backend:<12}{train:>15.2f}{ratio(train, 'train_steps_per_s'):>8}"
              f"{decode:>16.1f}{ratio(decode, 'decode_words_per_s'):>8}")


if __name__ == "__main__":
    main()
