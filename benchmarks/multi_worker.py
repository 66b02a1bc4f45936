"""Training speed with 1 and 2 workers (`s2s-attn train --strategy multi-worker`), one run.

Both train the same model on the same synthetic pairs for the same epochs
with the same global batch: one process with `--batch-size 2B`, then two
worker processes on loopback ports, each with `--batch-size B` and its
`TF_CONFIG`. Steps/s and pairs/s come from each run's own `seconds` (the
`fit` call, first-epoch tracing included), and the losses of each epoch show
that both trained alike.

    python benchmarks/multi_worker.py [--pairs 6000] [--epochs 3] [--batch 32]

On one machine the two workers share its cores: this shows that the
cluster runs and trains correctly, not the speed-up of two machines.
"""

import argparse
import csv
import json
import math
import os
import random
import subprocess
import sys
import tempfile

from keras_s2s_attn.distributed import loopback_tf_configs


def write_pairs(path, count, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 12)))
            handle.write(f"{word}\t{word[::-1].upper()}\n")


def train_command(pairs, out, batch, epochs, strategy):
    return ["s2s-attn", "train", "--train", pairs, "--out", out, "--epochs", str(epochs),
            "--batch-size", str(batch), "--units", "64", "--embedding-dim", "32",
            "--dropout", "0", "--no-lr-decay", "--strategy", strategy]


def run_workers(commands, envs):
    """Starts the commands together; the first one's JSON summary."""
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
                 for command, env in zip(commands, envs)]
    outputs = [process.communicate()[0] for process in processes]
    for process in processes:
        if process.returncode:
            sys.exit(f"a worker exited with {process.returncode}")
    return json.loads(outputs[0])


def measure(args, workdir, workers):
    """`{"workers", "seconds", "steps_per_s", "pairs_per_s", "losses", "val_losses"}`."""
    out = os.path.join(workdir, f"run{workers}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if workers == 1:
        summary = run_workers([train_command(args.pairs_file, out, args.batch * 2,
                                             args.epochs, "default")], [env])
    else:
        envs = [{**env, "TF_CONFIG": tf_config} for tf_config in loopback_tf_configs(workers)]
        command = train_command(args.pairs_file, out, args.batch * 2 // workers, args.epochs,
                                "multi-worker")
        summary = run_workers([command] * workers, envs)
    train_pairs = summary["stats"]["train"]["pairs"]
    steps = math.ceil(train_pairs / (args.batch * 2)) * args.epochs
    with open(os.path.join(out, "metrics.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["loss"]) for row in rows]
    val_losses = [float(row["val_loss"]) for row in rows]
    return {"workers": workers, "seconds": summary["seconds"],
            "steps_per_s": steps / summary["seconds"],
            "pairs_per_s": train_pairs * args.epochs / summary["seconds"],
            "losses": losses, "val_losses": val_losses}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="batch of each of 2 workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        args.pairs_file = os.path.join(workdir, "pairs.tsv")
        write_pairs(args.pairs_file, args.pairs)
        rows = [measure(args, workdir, workers) for workers in (1, 2)]
    print(f"{os.cpu_count()} CPU cores, global batch {args.batch * 2}, {args.epochs} epochs")
    print("| workers | seconds | steps/s | pairs/s | vs 1 worker | loss by epoch "
          "| val_loss by epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['workers']} | {row['seconds']:.1f} | {row['steps_per_s']:.2f} | "
              f"{row['pairs_per_s']:.0f} | {row['steps_per_s'] / rows[0]['steps_per_s']:.2f}× | "
              f"{', '.join(f'{v:.3f}' for v in row['losses'])} | "
              f"{', '.join(f'{v:.3f}' for v in row['val_losses'])} |")


if __name__ == "__main__":
    main()
