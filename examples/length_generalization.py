"""The experiment behind Bahdanau et al. (2015), Figure 2, on a task checked exactly.

Three models with the same budget learn to reverse random symbol sequences of
5 to 40 symbols: the plain encoder-decoder (`attention=None`, the source reaches
the decoder only through a fixed-size state), Bahdanau's additive attention and
Luong's general attention. Greedy exact match and token accuracy are measured per
source length on held-out sequences; a plot of exact match against length is
written, as in the paper's BLEU-against-length figure.

    python examples/length_generalization.py --out length_generalization.png
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_s2s_attn import (  # noqa: E402
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    build_seq2seq_model,
)
from keras_s2s_attn.decoding import Decoder  # noqa: E402
from keras_s2s_attn.special_ids import NUM_RESERVED  # noqa: E402
from keras_s2s_attn.synthetic import reversal_task  # noqa: E402

MODELS = {
    "encoder-decoder (no attention)": dict(attention=None),
    "Bahdanau (additive)": dict(attention="additive", style="bahdanau"),
    "Luong (general, input feeding)": dict(attention="general", style="luong"),
}


def train(options, args):
    keras.utils.set_random_seed(args.seed)
    inputs, labels = reversal_task(args.examples, args.min_length, args.max_length,
                                   args.symbols, seed=args.seed)
    vocab = NUM_RESERVED + args.symbols
    model = build_seq2seq_model(vocab, vocab, embedding_dim=32, units=args.units, dropout=0.0,
                                **options)
    model.compile(keras.optimizers.Adam(3e-3, clipnorm=1.0),
                  loss=MaskedSparseCategoricalCrossentropy(), metrics=[MaskedAccuracy()])
    data = (tf.data.Dataset.from_tensor_slices((inputs, labels))
            .shuffle(args.examples, seed=args.seed).batch(64).prefetch(tf.data.AUTOTUNE))
    model.fit(data, epochs=args.epochs, verbose=0, shuffle=False)  # shuffled above
    return model


def by_length(model, test_inputs, test_labels):
    """{length: (exact match, token accuracy)} of greedy decoding."""
    ids = Decoder(model).greedy(test_inputs["source_ids"],
                                max_output_length=test_labels.shape[1] + 5)["ids"].numpy()
    width = max(ids.shape[1], test_labels.shape[1])
    ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])))
    labels = np.pad(test_labels, ((0, 0), (0, width - test_labels.shape[1])))
    lengths = (test_inputs["source_ids"] > 0).sum(1)
    results = {}
    for length in np.unique(lengths):
        rows = lengths == length
        real = labels[rows] > 0
        results[int(length)] = (float(np.mean(np.all(ids[rows] == labels[rows], axis=1))),
                                float(np.mean((ids[rows] == labels[rows])[real])))
    return results


def plot(results, path, bucket):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=100)
    for name, per_length in results.items():
        lengths = np.array(sorted(per_length))
        centers, values = [], []
        for start in range(lengths.min(), lengths.max() + 1, bucket):
            chosen = [per_length[n][0] for n in lengths if start <= n < start + bucket]
            if chosen:
                centers.append(start + (bucket - 1) / 2)
                values.append(100 * np.mean(chosen))
        axes.plot(centers, values, marker="o", label=name)
    axes.set_xlabel("source length (symbols)")
    axes.set_ylabel("exact match (%), greedy")
    axes.set_ylim(-3, 103)
    axes.set_title("Reversal: attention holds as the source grows")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=12800)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--min-length", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--bucket", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="length_generalization.png")
    args = parser.parse_args()

    test_inputs, test_labels = reversal_task(args.test_examples, args.min_length, args.max_length,
                                             args.symbols, seed=args.seed + 1)
    results = {}
    for name, options in MODELS.items():
        start = time.time()
        results[name] = by_length(train(options, args), test_inputs, test_labels)
        print(f"{name}: trained and evaluated in {time.time() - start:.0f} s", flush=True)

    edges = list(range(args.min_length, args.max_length + 1, args.bucket))
    print("\nexact match (token accuracy) by source length, greedy decoding")
    print(f"{'model':<32}" + "".join(f"{f'{e}-{e + args.bucket - 1}':>14}" for e in edges))
    for name, per_length in results.items():
        cells = []
        for start in edges:
            chosen = [per_length[n] for n in per_length if start <= n < start + args.bucket]
            exact = 100 * np.mean([c[0] for c in chosen])
            token = 100 * np.mean([c[1] for c in chosen])
            cells.append(f"{exact:6.1f} ({token:4.1f})")
        print(f"{name:<32}" + "".join(f"{c:>14}" for c in cells))
    plot(results, args.out, args.bucket)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as handle:
        json.dump(results, handle)
    print(f"\nplot written to {args.out}")


if __name__ == "__main__":
    main()
