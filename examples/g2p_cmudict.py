"""English grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary.

Prepares the data (examples/cmudict_to_tsv.py: letters and apostrophes, stress
removed, 39 phones, the crc32 word split), trains a character-to-phone model
with `s2s-attn train`, exports it as saved_models/g2p_en/<version>/ and scores
it on the test words with `s2s-attn evaluate` (WER: a word is right if it
matches any of its pronunciations; PER: phone edit distance to the closest one).
Each step is the command a user would type; this script runs them in order.

    python examples/g2p_cmudict.py                       # the shipped model's recipe
    python examples/g2p_cmudict.py --epochs 2 --name g2p_quick
"""

import argparse
import os
import subprocess
import sys


def run(*command):
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/cmudict")
    parser.add_argument("--run", default="runs/g2p_en")
    parser.add_argument("--name", default="g2p_en")
    parser.add_argument("--epochs", default="16")
    parser.add_argument("--units", default="192")
    parser.add_argument("--beam", default="4")
    args = parser.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    run(sys.executable, os.path.join(here, "cmudict_to_tsv.py"), "--out", args.data)
    run("s2s-attn", "train", "--train", f"{args.data}/train.tsv", "--valid",
        f"{args.data}/dev.tsv", "--source-tokenizer", "char", "--target-tokenizer", "space",
        "--units", args.units, "--embedding-dim", "64", "--batch-size", "128",
        "--learning-rate", "0.002", "--dropout", "0.1", "--epochs", args.epochs,
        "--out", args.run)
    run("s2s-attn", "export", args.run, "--name", args.name, "--beam-width", args.beam,
        "--max-source-length", "40")
    for beam in ("1", args.beam):
        run("s2s-attn", "evaluate", f"saved_models/{args.name}", f"{args.data}/test.tsv",
            "--references", "--metrics", "wer,per", "--beam", beam)


if __name__ == "__main__":
    main()
