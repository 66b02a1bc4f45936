"""Checkpoint averaging: a run's model with the mean of its last epochs' weights.

The weights of the last few epochs of a run lie around a minimum; their mean
often sits closer to it than any one of them (as OpenNMT-tf's and Marian's
checkpoint averaging). `train(..., keep_checkpoints=N)` keeps the states to
average under the run's `backup/`.
"""

import os

import keras
import numpy as np

from keras_s2s_attn.callbacks import (
    STATE_WEIGHTS,
    build_optimizer,
    epoch_states,
    replace_atomically,
)
from keras_s2s_attn.checks import positive_int
from keras_s2s_attn.runs import AVERAGED_MODEL, BEST_MODEL, is_run_dir

def average_run(run_dir, last):
    """Writes `averaged.keras` into `run_dir`: the mean of the weights of its
    last `last` epochs.

    Float weights are averaged (in float64, stored in their own dtype); any
    other variable keeps the last epoch's value. The file is written beside
    its target and renamed into place; `runs.load_run(run_dir, "averaged")`,
    `s2s-attn export --which averaged` and `translate`/`evaluate` read it.

    Args:
        run_dir: A run directory written by `train`.
        last: How many of the last epochs to average; the run must have kept
            that many states (`train(..., keep_checkpoints=last)`, or more).

    Returns:
        `(path, epochs)`: the file written and the epochs averaged (1-based).

    Example:

    >>> train("pairs.tsv", "runs/demo", epochs=10, keep_checkpoints=5)
    >>> average_run("runs/demo", last=5)
    ('runs/demo/averaged.keras', [6, 7, 8, 9, 10])
    """
    positive_int(last, "last")
    run_dir = os.fspath(run_dir)
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"No run directory at {run_dir!r} (no config.json).")
    states = epoch_states(run_dir)[-last:]
    if len(states) < last:
        raise ValueError(f"`last`: {run_dir!r} keeps the states of {len(states)} epoch(s), "
                         f"fewer than the {last} asked for; train with keep_checkpoints="
                         f"{last} or more (--keep-checkpoints).")
    best = os.path.join(run_dir, BEST_MODEL)
    if not os.path.exists(best):
        raise FileNotFoundError(f"No model at {best!r}: is {run_dir!r} a finished run?")
    # The states hold the optimizer's variables too: load them into a model that has them.
    model = build_optimizer(keras.saving.load_model(best))
    sums = None
    for _, directory in states:
        model.load_weights(os.path.join(directory, STATE_WEIGHTS))
        weights = model.get_weights()
        if sums is None:
            sums = [np.zeros(value.shape, np.float64) if np.issubdtype(value.dtype, np.floating)
                    else None for value in weights]
        for total, value in zip(sums, weights):
            if total is not None:
                total += value
    # Other variables (none in the built-in layers) keep the last epoch's value.
    averaged = [value if total is None else (total / len(states)).astype(value.dtype)
                for total, value in zip(sums, weights)]
    plain = keras.saving.load_model(best, compile=False)  # saved without an optimizer
    plain.set_weights(averaged)
    path = os.path.join(run_dir, AVERAGED_MODEL)
    replace_atomically(path, plain.save)
    return path, [epoch for epoch, _ in states]
