"""The run directory `train` writes: its file names, and loading a trained run.

    config.json              every option, the vocabulary sizes, the library versions
    source_vocab/, target_vocab/   the tokenizers (plain vocabulary files)
    best.keras               the best model by validation loss
    model.keras              the model after the last epoch
    averaged.keras           the mean of the last epochs' weights (`s2s-attn average`)
    metrics.csv              one row per epoch
    logs/                    TensorBoard logs
    backup/                  the state a resume continues from

Read by translation, export and the CLI; written by `training.py`.
"""

import json
import os

import keras

from keras_s2s_attn.options import RUN_MODELS
from keras_s2s_attn.text import load_tokenizer

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
BEST_MODEL = "best.keras"
FINAL_MODEL = "model.keras"
AVERAGED_MODEL = "averaged.keras"
MODEL_FILES = dict(zip(RUN_MODELS, (BEST_MODEL, FINAL_MODEL, AVERAGED_MODEL)))
SOURCE_VOCAB = "source_vocab"
TARGET_VOCAB = "target_vocab"


def is_run_dir(path):
    """True for a directory holding a run's config.json."""
    return os.path.exists(os.path.join(os.fspath(path), CONFIG_FILE))


def is_run_dirs(value):
    """True for a run directory (a path) or a non-empty list of them, False for models."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(is_run_dirs(item) for item in value)
    return isinstance(value, (str, bytes, os.PathLike))


def load_run(run_dir, which="best", compile=False):
    """Loads a run's model and tokenizers.

    Args:
        run_dir: A directory written by `train`.
        which: `"best"` (the best epoch by the run's `select_by`, the
            validation loss by default), `"final"` or `"averaged"` (written
            by `averaging.average_run`).
        compile: Also restore the optimizer, loss and metrics (to train on);
            off by default, so inference and exports carry no optimizer state.

    Returns:
        `(model, source_tokenizer, target_tokenizer, config)`.
    """
    if which not in MODEL_FILES:
        raise ValueError(f"`which` must be one of {', '.join(map(repr, RUN_MODELS))}. "
                         f"Received: {which!r}")
    path = os.path.join(run_dir, MODEL_FILES[which])
    if not os.path.exists(path):
        hint = (f"average its last epochs first (s2s-attn average {run_dir} --last N)"
                if which == "averaged" else f"is {run_dir!r} a finished run?")
        raise FileNotFoundError(f"No model at {path!r}: {hint}")
    with open(os.path.join(run_dir, CONFIG_FILE)) as handle:
        config = json.load(handle)
    return (keras.saving.load_model(path, compile=compile),
            load_tokenizer(os.path.join(run_dir, SOURCE_VOCAB)),
            load_tokenizer(os.path.join(run_dir, TARGET_VOCAB)), config)


def load_runs(run_dir, which="best"):
    """One run, or several that share their tokenizers (an ensemble).

    Returns:
        `(models, source_tokenizer, target_tokenizer, config of the first)`.
    """
    if not is_run_dirs(run_dir):
        raise ValueError("`run_dir` must be a run directory or a non-empty list of them; "
                         f"got {run_dir!r}.")
    run_dirs = list(run_dir) if isinstance(run_dir, (list, tuple)) else [run_dir]
    loaded = [load_run(path, which=which) for path in run_dirs]
    _, source_tokenizer, target_tokenizer, config = loaded[0]
    for path, (_, source, target, _) in zip(run_dirs[1:], loaded[1:]):
        for side, mine, first in (("source", source, source_tokenizer),
                                  ("target", target, target_tokenizer)):
            if (mine.get_config(), mine.vocabulary) != (first.get_config(), first.vocabulary):
                raise ValueError(
                    f"An ensemble's runs must share their tokenizers: the {side} "
                    f"tokenizer of {os.fspath(path)!r} differs from that of "
                    f"{os.fspath(run_dirs[0])!r} ({mine!r} vs {first!r}).")
    return [model for model, _, _, _ in loaded], source_tokenizer, target_tokenizer, config
