"""English grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary.

Prepares the data (examples/cmudict_to_tsv.py: letters and apostrophes, stress
removed, 39 phones, the crc32 word split), trains the shipped model's three
members with `s2s-attn train`, exports them as one ensemble in
saved_models/g2p_en/<version>/ (weights stored as float16) and scores it on
the test words with `s2s-attn evaluate` (WER: a word is right if it matches any of its
pronunciations; PER: phone edit distance to the closest one). Each step is the
command a user would type; this script runs them in order.

The members share the data and tokenizers (so they share vocabularies) and
differ in depth, dropout and seed:

    a: bidirectional GRU encoder, 1 layer of 192 units, dropout 0.1, 16 epochs
    b: the same with a 2-layer encoder and dropout 0.2, 24 epochs
    c: as a, with another seed

Four more members are not in the shipped model: d and e (as b with seeds 4
and 5, 20 epochs) and f and g (256 units, two encoder layers, dropout 0.25,
label smoothing 0.1, 22 epochs, seeds 6 and 7). The int4 ensemble of a, b, c
and d (4.7 MB) missed the test floor, and no int4 ensemble of 5 MB or less
with f or g did better on dev (README). `--members a,b,c,d --weights-dtype
int4` repeats the first. h is a single-model attempt: f's model with
`--ema`, `--lr-decay cosine` and `--select-by wer` (README, "The shipped
model").

On a CPU, single-threaded runs side by side use the cores a little better
than one run with many threads (the RNN steps are small): `--jobs 2` on 2
cores trains two members at once. On the 2-core Xeon of November 2026, a
256-unit member took 470 ms a step on one core beside another, 257 ms alone
on both: 4.3 steps/s in all against 3.9.

    python examples/g2p_cmudict.py --jobs 2              # the shipped model's recipe
    python examples/g2p_cmudict.py --members a --epochs 2 --name g2p_quick
    python examples/g2p_cmudict.py --jobs 2 --members a,b,c,d --weights-dtype int4 \
        --name g2p_int4
"""

import argparse
import os
import subprocess
import sys

from keras_s2s_attn.options import WEIGHT_DTYPES

# --lower source: the words are lower-cased (cmudict_to_tsv.py); the source tokenizer records
# it, so the export lower-cases its input too and "Attention" reads as "attention". The phones
# stay upper-case, as the dictionary writes them.
COMMON = ["--source-tokenizer", "char", "--target-tokenizer", "space", "--lower", "source",
          "--embedding-dim", "64", "--batch-size", "128", "--learning-rate", "0.002"]
LARGE = ["--units", "256", "--encoder-layers", "2", "--dropout", "0.25", "--label-smoothing", "0.1"]
MEMBERS = {
    "a": ["--units", "192", "--dropout", "0.1", "--epochs", "16"],
    "b": ["--units", "192", "--encoder-layers", "2", "--dropout", "0.2", "--epochs", "24"],
    "c": ["--units", "192", "--dropout", "0.1", "--epochs", "16", "--seed", "1"],
    "d": ["--units", "192", "--encoder-layers", "2", "--dropout", "0.2", "--epochs", "20",
          "--seed", "4"],
    "e": ["--units", "192", "--encoder-layers", "2", "--dropout", "0.2", "--epochs", "20",
          "--seed", "5"],
    "f": [*LARGE, "--epochs", "22", "--seed", "6"],
    "g": [*LARGE, "--epochs", "22", "--seed", "7"],
    # f's model with weight averaging and a cosine decay, picked by dev WER each epoch (one
    # run on both cores; the README says how far it got).
    "h": [*LARGE, "--ema", "0.999", "--lr-decay", "cosine", "--select-by", "wer",
          "--keep-checkpoints", "4", "--epochs", "14", "--seed", "13"],
}


def run(*command):
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def train_members(names, args):
    """Trains the members, `args.jobs` at a time, each single-threaded when jobs > 1."""
    env = dict(os.environ)
    if args.jobs > 1:
        env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    pending, running = list(names), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            options = list(MEMBERS[name])
            if args.epochs:
                options[options.index("--epochs") + 1] = args.epochs
            command = ["s2s-attn", "train", "--train", f"{args.data}/train.tsv", "--valid",
                       f"{args.data}/dev.tsv", *COMMON, *options,
                       "--out", f"{args.runs}/{args.name}_{name}"]
            print("$", " ".join(command), flush=True)
            log = open(f"{args.runs}/{args.name}_{name}.log", "w")
            running.append((name, subprocess.Popen(command, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT), log))
        name, process, log = running.pop(0)
        if process.wait() != 0:
            sys.exit(f"training member {name} failed: see {log.name}")
        log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/cmudict")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--name", default="g2p_en")
    parser.add_argument("--members", default="a,b,c",
                        help="comma-separated members to train and export (default a,b,c)")
    parser.add_argument("--epochs", help="override every member's epochs (for a quick try)")
    parser.add_argument("--jobs", type=int, default=1, help="members trained at once")
    parser.add_argument("--beam", default="4")
    parser.add_argument("--weights-dtype", default="float16",
                        choices=WEIGHT_DTYPES,
                        help="how the export stores the weights (default float16, as shipped)")
    args = parser.parse_args()
    names = args.members.split(",")
    unknown = sorted(set(names) - set(MEMBERS))
    if unknown:
        parser.error(f"--members: unknown {unknown}; choose from {sorted(MEMBERS)}")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    here = os.path.dirname(os.path.abspath(__file__))
    run(sys.executable, os.path.join(here, "cmudict_to_tsv.py"), "--out", args.data)
    os.makedirs(args.runs, exist_ok=True)
    train_members(names, args)
    run("s2s-attn", "export", *[f"{args.runs}/{args.name}_{name}" for name in names],
        "--name", args.name, "--beam-width", args.beam, "--max-source-length", "40",
        "--weights-dtype", args.weights_dtype, "--num-samples", "5")
    for beam in ("1", args.beam):  # the beam with its n-best list: oracle WER@k too
        run("s2s-attn", "evaluate", f"saved_models/{args.name}", f"{args.data}/test.tsv",
            "--references", "--metrics", "wer,per,cer,exact", "--beam", beam,
            *(["--n-best", beam] if beam != "1" else []))


if __name__ == "__main__":
    main()
