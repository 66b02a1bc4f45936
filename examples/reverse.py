"""Train an attention seq2seq model to reverse token sequences, then decode.

The main job until the `s2s-attn` CLI exists: it trains a small Bahdanau
model with `model.fit` on generated data, saves it as a `.keras` file,
reports greedy-decoding exact match by source length against the plain
encoder-decoder's, and prints a few translations with the position each
output token attended to most.

    python examples/reverse.py                 # shipped defaults, ~2 min on 2 CPU cores
    python examples/reverse.py --epochs 2 --attention general --style luong
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_s2s_attn import (  # noqa: E402
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    build_seq2seq_model,
)
from keras_s2s_attn.decoding import Decoder  # noqa: E402
from keras_s2s_attn.special_ids import NUM_RESERVED  # noqa: E402
from keras_s2s_attn.synthetic import exact_match, reversal_task  # noqa: E402

SYMBOLS = "abcdefghijklmnopqrst"


def as_text(ids):
    return "".join(SYMBOLS[i - NUM_RESERVED] for i in ids if i >= NUM_RESERVED)


def train(attention, args):
    keras.utils.set_random_seed(args.seed)
    inputs, labels = reversal_task(args.examples, args.min_length, args.max_length,
                                   len(SYMBOLS), seed=args.seed)
    model = build_seq2seq_model(
        NUM_RESERVED + len(SYMBOLS), NUM_RESERVED + len(SYMBOLS),
        embedding_dim=32, units=args.units, attention=attention, style=args.style,
        dropout=0.0,
    )
    model.compile(keras.optimizers.Adam(3e-3, clipnorm=1.0),
                  loss=MaskedSparseCategoricalCrossentropy(),
                  metrics=[MaskedAccuracy()])
    data = (tf.data.Dataset.from_tensor_slices((inputs, labels))
            .shuffle(args.examples, seed=args.seed).batch(64).prefetch(tf.data.AUTOTUNE))
    name = attention or "none"
    print(f"\n== training attention={name} style={args.style} for {args.epochs} epochs")
    start = time.time()
    model.fit(data, epochs=args.epochs, verbose=2, shuffle=False)  # data is shuffled above
    print(f"   trained in {time.time() - start:.0f} s")
    return model


def report(model, test_inputs, test_labels, label):
    result = Decoder(model).greedy(test_inputs["source_ids"], max_output_length=40)
    predicted = result["ids"].numpy()
    lengths = (test_inputs["source_ids"] > 0).sum(1)
    cells = []
    for low, high in ((5, 10), (11, 15), (16, 20), (21, 25)):
        rows = (lengths >= low) & (lengths <= high)
        cells.append(f"{low}-{high}: {exact_match(predicted[rows], test_labels[rows]):6.1%}")
    print(f"   {label:<22} exact match {exact_match(predicted, test_labels):6.1%}  |  "
          + "  ".join(cells))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attention", default="additive")
    parser.add_argument("--style", default="bahdanau", choices=["bahdanau", "luong"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--examples", type=int, default=6400)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--min-length", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the plain encoder-decoder comparison")
    parser.add_argument("--out", default="runs/reverse")
    args = parser.parse_args()

    test_inputs, test_labels = reversal_task(500, args.min_length, args.max_length,
                                             len(SYMBOLS), seed=args.seed + 1)
    model = train(args.attention, args)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.keras")
    model.save(path)
    print(f"   saved {path}")
    baseline = None if args.no_baseline else train(None, args)

    print("\n== greedy decoding of 500 held-out sequences (exact match by source length)")
    result = report(model, test_inputs, test_labels, f"attention={args.attention}")
    if baseline is not None:
        report(baseline, test_inputs, test_labels, "attention=None")

    print("\n== examples (for each output symbol, the source position it attended to most)")
    ids, attention = result["ids"].numpy(), result["attention"].numpy()
    for row in range(4):
        source = as_text(test_inputs["source_ids"][row])
        output = as_text(ids[row])
        steps = len(output)
        peaks = attention[row, :steps, : len(source)].argmax(-1)
        print(f"   {source:<26} -> {output:<26} {'ok' if output == source[::-1] else 'WRONG'}")
        print(f"   {'':<26}    attended: {' '.join(map(str, peaks))}")


if __name__ == "__main__":
    main()
