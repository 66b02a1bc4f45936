"""SavedModel latency: exported models side by side, in one process, against the first.

Loads each SavedModel (a `saved_models/NAME` base path or a version directory)
and times both signatures on batches of words read from a file (one per line,
or the first column of a TSV), after a warm-up call; the median over repeats
is reported with its ratio to the first model's. Use it to compare exports
of the same run with different `--weights-dtype`, or two versions of a model.

    python benchmarks/savedmodel_latency.py saved_models/g2p_en /tmp/g2p_int4 \\
        --words data/cmudict/dev.tsv [--batches 1,256] [--repeats 20]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf
from timing import timed  # benchmarks/timing.py, beside this script

from keras_s2s_attn.saved_models import latest_version_dir, load_saved_model


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="SavedModels; the first is the baseline")
    parser.add_argument("--words", required=True, help="a file of inputs, one per line")
    parser.add_argument("--batches", default="1,256", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not os.path.isfile(args.words):
        parser.error(f"--words: no such file {args.words!r}")
    with open(args.words, encoding="utf-8") as handle:
        words = [line.rstrip("\n").split("\t")[0] for line in handle if line.strip()]
    batches = [int(b) for b in args.batches.split(",")]
    if not words or max(batches) > len(words):
        parser.error(f"--words: {args.words} has {len(words)} inputs; need at least "
                     f"{max(batches)}")

    loaded = [(path, latest_version_dir(path)) for path in args.models]
    signatures = {path: load_saved_model(version).signatures for path, version in loaded}
    baseline = {}
    print(f"{'model':<40} {'MB':>5} {'signature':<16} {'batch':>5} {'ms':>9} {'ratio':>6}")
    for path, version in loaded:
        size = directory_bytes(version) / 1e6
        for name in ("serving_default", "beam_search"):
            for batch in batches:
                text = tf.constant(words[:batch])
                function = signatures[path][name]
                seconds = timed(lambda f=function, t=text: f(text=t), args.repeats)
                baseline.setdefault((name, batch), seconds)
                print(f"{path:<40} {size:>5.1f} {name:<16} {batch:>5} {1000 * seconds:>9.1f} "
                      f"{seconds / baseline[(name, batch)]:>6.2f}")


if __name__ == "__main__":
    main()
