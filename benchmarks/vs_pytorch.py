"""Speed against a hand-written PyTorch model: one architecture, four contestants, one run.

On the project's CMUdict G2P split (`python examples/cmudict_to_tsv.py --out
data/cmudict`), each in processes of its own (TensorFlow and PyTorch never
share one, nor compete for the cores): all train, one after another, then
all decode in `--rounds` rounds, one contestant after another in each (a
fresh process each time); a speed is the median of its rounds, so that the
machine's drift over minutes (this one's speed changes by up to a third) meets
every contestant alike:

1. `package`: this package's `train(...)` (char source, space-separated
   target), stopped when its time is up, `export_saved_model`, and the
   SavedModel's `serving_default` (greedy) and `beam_search` (beam 4)
   signatures in a fresh process (vs_pytorch_package.py);
2. `package-xla`: 1's weights exported with `--jit` (XLA), decoded after an
   untimed pass that compiles every shape bucket (as a warm server has
   them); it needs 1 before it in the same run;
3. `package-luong`: the same as 1 with `style="luong", input_feeding=False`;
4. `pytorch`: the architecture of 1 written by hand in PyTorch: teacher
   forcing in a Python loop, eager greedy and beam search (torch_seq2seq.py);
5. `tutorial`: Keras built-ins as TensorFlow's NMT tutorial builds them, the
   architecture of 3, greedy decoding in a `tf.function`
   (keras_tutorial_seq2seq.py).

All: char embedding 256, bidirectional GRU encoder 256+256, GRU decoder 256,
additive attention, dropout 0.1, batches of 64 bucketed by length, Adam 1e-3
(clipnorm 1), the same vocabularies, `--threads` threads each. Each trains
for `--train-seconds` of its training steps (a package run's validation and
checkpoints between epochs are not counted, nor done by the others); the
rate is target tokens/s (real labels, end token included) after
`--warmup-steps` steps. Decoding, in each round: words/s over the first
`--decode-words` test words, text in and text out, at each batch size after
one untimed batch, at most 2·S + 10 steps (S: the batch's padded source length),
stopping when every row has ended. WER and PER (keras_s2s_attn.evaluation)
are of the outputs at the largest batch. Speeds carry their ratio to the
PyTorch contestant; the Luong row also to the tutorial's. Run it on an
otherwise idle machine: with another process on one of its cores, PyTorch's
OpenMP threads (and so its figures) slow down several times over.

PyTorch is the `bench` extra: `pip install -e .[bench]` (CPU-only wheels:
add `--extra-index-url https://download.pytorch.org/whl/cpu`).

    python benchmarks/vs_pytorch.py [--train-seconds 300] [--decode-words 200] \\
        [--rounds 3] [--contestants package,pytorch] [--out DIR] [--json results.json]
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from vs_pytorch_common import BEAM_WIDTH, read_json, read_test, write_json

from keras_s2s_attn.evaluation import evaluate_texts

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(HERE, "vs_pytorch_package.py")
TORCH = os.path.join(HERE, "torch_seq2seq.py")
TUTORIAL = os.path.join(HERE, "keras_tutorial_seq2seq.py")
# name: (label, training stages, decoding stage), each stage the arguments of one
# process (SPEC is the spec file)
CONTESTANTS = {
    "package": ("keras-s2s-attn, Bahdanau", [[PACKAGE, "train", "SPEC", "package"]],
                [PACKAGE, "decode", "SPEC", "package"]),
    "package-luong": ("keras-s2s-attn, Luong, no input feeding",
                      [[PACKAGE, "train", "SPEC", "package-luong"]],
                      [PACKAGE, "decode", "SPEC", "package-luong"]),
    "package-xla": ("keras-s2s-attn, Bahdanau, `--jit` export (same weights)", [],
                    [PACKAGE, "decode", "SPEC", "package", "--jit"]),
    "pytorch": ("PyTorch by hand, Bahdanau", [[TORCH, "train", "SPEC"]],
                [TORCH, "decode", "SPEC"]),
    "tutorial": ("Keras built-ins, tutorial (Luong order)", [[TUTORIAL, "train", "SPEC"]],
                 [TUTORIAL, "decode", "SPEC"]),
}
# Contestants that decode another's weights: name -> the one that trains them.
SAME_WEIGHTS = {"package-xla": "package"}
BASELINE = "pytorch"


def parse_args():
    """The flags, checked (the data files must exist)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/cmudict", help="train/dev/test.tsv are here")
    parser.add_argument("--train-seconds", type=float, default=300)
    parser.add_argument("--warmup-steps", type=int, default=50,
                        help="first training steps left out of the rate")
    parser.add_argument("--decode-words", type=int, default=None,
                        help="decode the first N test words (default: all)")
    parser.add_argument("--batches", default="1,256", help="decoding batch sizes")
    parser.add_argument("--contestants", default=",".join(CONTESTANTS),
                        help=f"comma-separated, of {', '.join(CONTESTANTS)}")
    parser.add_argument("--threads", type=int, default=2, help="threads of each contestant")
    parser.add_argument("--rounds", type=int, default=3,
                        help="decoding rounds, the contestants interleaved (medians reported)")
    parser.add_argument("--out", help="work dir for runs and exports (default: a temporary one)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    args.contestants = [name.strip() for name in args.contestants.split(",") if name.strip()]
    unknown = sorted(set(args.contestants) - set(CONTESTANTS))
    if unknown or not args.contestants:
        parser.error(f"--contestants: unknown {unknown}; choose from {', '.join(CONTESTANTS)}")
    if "package-xla" in args.contestants and (
            "package" not in args.contestants
            or args.contestants.index("package") > args.contestants.index("package-xla")):
        parser.error("--contestants: package-xla decodes package's weights: list package "
                     "before it")
    if BASELINE in args.contestants and importlib.util.find_spec("torch") is None:
        parser.error("the pytorch contestant needs PyTorch: pip install -e .[bench] (CPU wheels: "
                     "--extra-index-url https://download.pytorch.org/whl/cpu)")
    missing = [name for name in ("train.tsv", "dev.tsv", "test.tsv")
               if not os.path.isfile(os.path.join(args.data, name))]
    if missing:
        parser.error(f"--data: {args.data} lacks {', '.join(missing)} (make them with "
                     "`python examples/cmudict_to_tsv.py --out data/cmudict`)")
    args.batches = sorted({int(size) for size in args.batches.split(",")})
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1; got {args.rounds}")
    return args


def machine():
    """The CPU, the cores this process may use, and the library versions."""
    model = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle
                     if line.startswith("model name")]
        model = names[0] if names else model
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {}
    for package in ("tensorflow", "keras", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": usable,
            "python": platform.python_version(), **versions}


def run_stage(arguments, log_path):
    """Runs one process of a contestant, its output appended to `log_path`."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(arguments)}\n")
        log.flush()
        status = subprocess.run([sys.executable, *arguments], stdout=log, stderr=log,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).returncode
    if status:
        with open(log_path, encoding="utf-8") as log:
            tail = log.read()[-4000:]
        raise SystemExit(f"{shlex.join(arguments)} failed (exit {status}); the end of "
                         f"{log_path}:\n{tail}")


def stage_arguments(arguments, spec_path):
    return [spec_path if argument == "SPEC" else argument for argument in arguments]


def train_contestant(name, spec_path, spec):
    """Runs a contestant's training stages; its `train.json` (for one that only
    decodes another's weights, the other's)."""
    directory = os.path.join(spec["work"], name)
    os.makedirs(directory, exist_ok=True)
    for arguments in CONTESTANTS[name][1]:
        run_stage(stage_arguments(arguments, spec_path), os.path.join(directory, "log.txt"))
    trained_by = SAME_WEIGHTS.get(name, name)
    return read_json(os.path.join(spec["work"], trained_by, "train.json"))


def decode_contestant(name, spec_path, spec):
    """Runs a contestant's decoding stage once (a fresh process); its `decode.json`."""
    directory = os.path.join(spec["work"], name)
    os.makedirs(directory, exist_ok=True)
    run_stage(stage_arguments(CONTESTANTS[name][2], spec_path),
              os.path.join(directory, "log.txt"))
    return read_json(os.path.join(directory, "decode.json"))


def median_speeds(rounds):
    """`{kind: {batch: words/s}}`, the median over the rounds' decode results."""
    return {kind: {size: statistics.median(r["words_per_second"][kind][size] for r in rounds)
                   for size in per_size}
            for kind, per_size in rounds[0]["words_per_second"].items()}


def run_contestants(args, spec_path, spec, references):
    """Trains every contestant, one after another, then decodes in `--rounds`
    rounds, each contestant once per round in turn: the machine's speed drifts
    over minutes, and interleaved rounds let every contestant meet the same
    drift. A row's speeds are the medians of its rounds."""
    trained = {}
    for name in args.contestants:
        trains, began = bool(CONTESTANTS[name][1]), time.time()  # not: decodes another's
        if trains:
            print(f"{name}: training {args.train_seconds:g} s ...", file=sys.stderr, flush=True)
        trained[name] = train_contestant(name, spec_path, spec)
        if trains:
            print(f"{name}: trained in {time.time() - began:.0f} s", file=sys.stderr, flush=True)
    decoded = {name: [] for name in args.contestants}
    for index in range(args.rounds):
        for name in args.contestants:
            began = time.time()
            decoded[name].append(decode_contestant(name, spec_path, spec))
            print(f"{name}: decoding round {index + 1} of {args.rounds}, "
                  f"{len(references)} words, in {time.time() - began:.0f} s",
                  file=sys.stderr, flush=True)
    rows = []
    for name in args.contestants:
        rounds = decoded[name]
        scores = {kind: evaluate_texts(outputs, references, ["wer", "per"])
                  for kind, outputs in rounds[0]["hypotheses"].items()}
        rows.append({"name": name, "label": CONTESTANTS[name][0], **trained[name],
                     "words_per_second": median_speeds(rounds), "scores": scores,
                     "rounds": [r["words_per_second"] for r in rounds]})
    return rows


def speeds(row, batches):
    """`{column: value}` of a row's speeds (None where it has none)."""
    columns = {"train tok/s": row["tokens_per_second"]}
    for kind, title in (("greedy", "greedy"), ("beam", f"beam {BEAM_WIDTH}")):
        for size in batches:
            columns[f"{title} b{size} w/s"] = row["words_per_second"].get(kind, {}).get(str(size))
    return columns


def cell(value, baseline):
    """A speed, with its ratio to the baseline's when both are known."""
    if value is None:
        return "–"
    return f"{value:,.0f}" + (f" ({value / baseline:.2f}×)" if baseline else "")


def print_table(rows, batches):
    """One Markdown table: speeds with ratios to PyTorch, parameters, WER and PER."""
    baseline = next((speeds(row, batches) for row in rows if row["name"] == BASELINE), {})
    titles = list(speeds(rows[0], batches))
    print("| contestant | parameters | " + " | ".join(titles)
          + " | greedy WER | greedy PER | beam WER |")
    print("|---" * (len(titles) + 5) + "|")
    for row in rows:
        values = speeds(row, batches)
        scores = row["scores"]
        beam_wer = f"{scores['beam']['wer']:.1%}" if "beam" in scores else "–"
        print(f"| {row['label']} | {row['parameters']:,} | "
              + " | ".join(cell(values[title], baseline.get(title)) for title in titles)
              + f" | {scores['greedy']['wer']:.1%} | {scores['greedy']['per']:.1%} | "
              f"{beam_wer} |")
    print("Training steps in the budget (the untimed warm-up's seconds): " + ", ".join(
        f"{row['name']} {row['steps']:,} ({row['warmup_seconds']:g} s)" for row in rows))
    named = {row["name"]: row for row in rows}
    if "package-luong" in named and "tutorial" in named:
        luong, tutorial = (speeds(named[name], batches) for name in ("package-luong", "tutorial"))
        print("Luong row against the tutorial's: " + ", ".join(
            f"{title} {luong[title] / tutorial[title]:.2f}×" for title in titles
            if luong[title] and tutorial[title]))
    if "package" in named and BASELINE in named:
        counts = named["package"]["parameters"], named[BASELINE]["parameters"]
        print(f"Parameters, package and PyTorch: {counts[0]:,} and {counts[1]:,} "
              f"({'equal' if counts[0] == counts[1] else 'DIFFERENT'})")


def print_rounds(rows, batches):
    """Each round's words/s, so that the spread behind the medians shows, with
    each round's ratio to PyTorch's in the same round (contestants minutes
    apart, where the medians' ratio may pair rounds a quarter of an hour apart)."""
    print("Words/s of each decoding round, in order (ratios to PyTorch's same round):")
    baseline = next((row["rounds"] for row in rows if row["name"] == BASELINE), None)
    for row in rows:
        for kind in row["rounds"][0]:
            for size in batches:
                values = [r[kind][str(size)] for r in row["rounds"]]
                line = f"- {row['name']}, {kind} b{size}: " + ", ".join(
                    f"{value:,.0f}" for value in values)
                if baseline is not None and row["name"] != BASELINE:
                    ratios = [value / r[kind][str(size)] for value, r in zip(values, baseline)]
                    line += f" ({', '.join(f'{ratio:.2f}×' for ratio in ratios)}; median " \
                            f"{statistics.median(ratios):.2f}×)"
                print(line)


def main():
    """Prepares the data, runs each contestant in turn, prints the table."""
    args = parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    with tempfile.TemporaryDirectory(prefix="vs_pytorch-") as temporary:
        work = os.path.abspath(args.out or temporary)
        os.makedirs(work, exist_ok=True)
        spec = {"data": os.path.abspath(args.data), "work": work,
                "train_seconds": args.train_seconds, "warmup_steps": args.warmup_steps,
                "decode_words": args.decode_words, "batches": args.batches,
                "threads": args.threads}
        spec_path = os.path.join(work, "spec.json")
        write_json(spec_path, spec)
        _, references = read_test(spec)
        run_stage([PACKAGE, "prepare", spec_path], os.path.join(work, "prepare.log"))
        rows = run_contestants(args, spec_path, spec, references)
    about = machine()
    print(f"machine: {about['cpu']}, {about['cores']} cores ({about['usable_cores']} usable); "
          f"TensorFlow {about['tensorflow']}, Keras {about['keras']}, PyTorch {about['torch']}, "
          f"Python {about['python']}")
    print(f"command: {command}")
    print(f"{args.train_seconds:g} s of training, {args.threads} thread(s) each, "
          f"{len(references)} test words decoded at batch {', '.join(map(str, args.batches))}, "
          f"medians of {args.rounds} interleaved round(s)\n")
    print_table(rows, args.batches)
    print_rounds(rows, args.batches)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": about, "command": command, "settings": spec,
                       "contestants": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
