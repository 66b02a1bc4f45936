"""Human-written dates in eight languages to ISO 8601, with attention maps.

Dates are written with Babel's CLDR data (the `babel` package, `pip install -e
".[examples]"`) in English, French, German, Spanish, Korean, Japanese, Chinese
and Russian, in each locale's medium, long and full formats (and its numeric
short format where that is unambiguous: day-month-year or year-month-day with
a four-digit year). A character-level model learns to write them as
YYYY-MM-DD; its attention maps show the day, month and year alignment.

    python examples/dates.py --out runs/dates
"""

import argparse
import datetime
import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FORMATS = {
    "en_US": ("medium", "long", "full"),
    "fr_FR": ("short", "medium", "long", "full"),
    "de_DE": ("medium", "long", "full"),
    "es_ES": ("medium", "long", "full"),
    "ko_KR": ("medium", "long", "full"),
    "ja_JP": ("short", "long", "full"),
    "zh_CN": ("short", "long", "full"),
    "ru_RU": ("short", "medium", "long", "full"),
}


def make_pairs(count, seed):
    """`count` (written date, ISO date) pairs for dates from 1950 to 2049."""
    try:
        from babel.dates import format_date
    except ImportError as error:
        raise SystemExit('This example needs babel: pip install -e ".[examples]"') from error
    rng = random.Random(seed)
    start, days = datetime.date(1950, 1, 1), (datetime.date(2049, 12, 31) -
                                              datetime.date(1950, 1, 1)).days
    pairs = []
    for _ in range(count):
        date = start + datetime.timedelta(days=rng.randrange(days + 1))
        locale = rng.choice(sorted(FORMATS))
        written = format_date(date, rng.choice(FORMATS[locale]), locale=locale)
        pairs.append((" ".join(written.split()), date.isoformat()))
    return pairs


def write_tsv(path, pairs):
    with open(path, "w", encoding="utf-8") as handle:
        for source, target in pairs:
            handle.write(f"{source}\t{target}\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="runs/dates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from keras_s2s_attn.evaluation import evaluate_texts
    from keras_s2s_attn.plotting import plot_attention_maps
    from keras_s2s_attn.training import train
    from keras_s2s_attn.translation import Translator

    data_dir = os.path.join(args.out + "_data")
    os.makedirs(data_dir, exist_ok=True)
    pairs = make_pairs(args.examples + 1000, args.seed)
    write_tsv(os.path.join(data_dir, "train.tsv"), pairs[:args.examples])
    test = pairs[args.examples:]
    train(os.path.join(data_dir, "train.tsv"), args.out, tokenizer="char", epochs=args.epochs,
          units=128, embedding_dim=32, batch_size=64, learning_rate=2e-3, dropout=0.1,
          seed=args.seed, verbose=2)

    translator = Translator.from_run(args.out)
    outputs = translator([source for source, _ in test])
    hypotheses = [t.decode("utf-8") for t in outputs["translation"]]
    scores = evaluate_texts(hypotheses, [[target] for _, target in test], ["exact", "cer"])
    print(f"test exact match {scores['exact']:.1%}, character error rate {scores['cer']:.2%} "
          f"on {len(test)} dates")
    for (source, target), hypothesis in list(zip(test, hypotheses))[:8]:
        print(f"  {source:<36} -> {hypothesis}  {'ok' if hypothesis == target else target}")

    shown = {}
    for index, (source, _) in enumerate(test):  # one example per script
        key = ("hangul" if any("\uac00" <= c <= "\ud7a3" for c in source) else
               "cjk" if any("\u4e00" <= c <= "\u9fff" for c in source) else
               "cyrillic" if any("\u0400" <= c <= "\u04ff" for c in source) else "latin")
        shown.setdefault(key, index)
    maps = [(outputs["attention"][i], outputs["source_tokens"][i], outputs["target_tokens"][i],
             test[i][0]) for i in shown.values()]
    path = os.path.join(args.out, "attention_dates.png")
    plot_attention_maps(maps, path)
    print(f"attention maps written to {path}")


if __name__ == "__main__":
    main()
