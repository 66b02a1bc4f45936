"""`train(...)`: text pairs to a trained model in a run directory.

The `s2s-attn train` command is a thin layer over this function. A run
directory holds everything needed later:

    config.json              every option, the vocabulary sizes, the library versions
    source_vocab/, target_vocab/   the tokenizers (plain vocabulary files)
    best.keras               the best model by validation loss
    model.keras              the model after the last epoch
    metrics.csv              one row per epoch (loss, accuracy, val_loss, val_accuracy)
    logs/                    TensorBoard logs
    backup/                  the state `resume=True` continues from (removed when done)

Every file is written so that a run killed at any moment can be resumed
(`callbacks.RunCheckpoint`).
"""

import json
import math
import os
import time

import keras
import tensorflow as tf

from keras_s2s_attn import data as data_lib
from keras_s2s_attn.callbacks import RunCheckpoint, read_metrics
from keras_s2s_attn.models import (
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    build_seq2seq_model,
)
from keras_s2s_attn.text import load_tokenizer, make_tokenizer

STRATEGIES = ("default", "mirrored")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
BEST_MODEL = "best.keras"
FINAL_MODEL = "model.keras"
SOURCE_VOCAB = "source_vocab"
TARGET_VOCAB = "target_vocab"


def _strategy(name):
    if name in (None, "default"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: mirror over the logical CPU devices (one unless configured).
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    raise ValueError(
        f"`strategy` must be one of {', '.join(map(repr, STRATEGIES))}. Received: {name!r}"
    )


def _load_pairs(source, on_bad_row, source_column, target_column, header):
    if isinstance(source, (str, os.PathLike)):
        return data_lib.read_pairs(source, on_bad_row=on_bad_row, source_column=source_column,
                                   target_column=target_column, header=header)
    sources, targets = source
    return data_lib.check_pairs(sources, targets)


def train(train_data, out, *, valid_data=None, tokenizer="char", source_tokenizer=None,
          target_tokenizer=None, lower=False, normalization="NFKC", max_vocab_size=None,
          min_count=1, epochs=None, batch_size=64, learning_rate=1e-3, label_smoothing=0.0,
          embedding_dim=256, units=256, encoder_layers=1, decoder_layers=1, cell_type="gru",
          attention="additive", style="bahdanau", input_feeding=True, window=None,
          window_mode="local-p", normalize_attention=False, dropout=0.1,
          max_source_length=None, max_target_length=None,
          valid_percent=5, on_bad_row="error", source_column=0, target_column=1, header=None,
          seed=0, strategy="default", resume=False, lr_decay=True, callbacks=(),
          verbose="auto"):
    """Trains a seq2seq model on text pairs and writes a run directory.

    Args:
        train_data: A TSV/CSV path, or a `(sources, targets)` pair of lists.
            With `resume=True`, None means the path recorded in config.json.
        out: The run directory (created).
        valid_data: Like `train_data`; default: a deterministic ~`valid_percent`%
            slice held out of `train_data` (see `data.split_pairs`).
        tokenizer: Tokenizer kind for both sides (`"char"`, `"word"`,
            `"wordpiece"`, ...), unless `source_tokenizer` / `target_tokenizer`
            name one per side.
        lower, normalization, max_vocab_size, min_count: Tokenizer options.
        epochs: Total epochs (default 10; a resumed run counts the ones
            already done, and keeps its recorded total when None).
        batch_size, learning_rate, label_smoothing: Training options.
        embedding_dim ... dropout: Passed to `build_seq2seq_model`.
        max_source_length, max_target_length: Truncation (counted, reported).
        on_bad_row, source_column, target_column, header: See `read_pairs`.
        seed: Seed for weights and shuffling.
        strategy: `"default"` or `"mirrored"` (`tf.distribute.MirroredStrategy`
            over the GPUs, or over the logical CPUs when there is no GPU).
        resume: Continue the run in `out` from its last finished epoch; the
            model and data options then come from its config.json.
        lr_decay: Halve the learning rate when the validation loss has not
            improved for an epoch (`ReduceLROnPlateau`, down to 1e-5).
        callbacks: More Keras callbacks for `fit`, run after the run's own.
        verbose: Keras `fit` verbosity.

    Returns:
        A dict summary: `epochs_trained`, `val_loss`, `val_accuracy` (of the
        best epoch), `best_epoch`, `stopped` (None, or why training stopped
        early), `run_dir` and the data `stats`.

    Example:

    >>> summary = train("pairs.tsv", "runs/demo", tokenizer="char", epochs=5)
    """
    out = os.fspath(out)
    config_path = os.path.join(out, CONFIG_FILE)
    if resume:
        if not os.path.exists(config_path):
            raise FileNotFoundError(
                f"Cannot resume: no {CONFIG_FILE} in {out!r}. Start the run without resume."
            )
        with open(config_path) as handle:
            config = json.load(handle)
        if epochs is not None:
            config["epochs"] = epochs
        train_data = train_data if train_data is not None else config["train_data"]
        valid_data = valid_data if valid_data is not None else config["valid_data"]
        if train_data is None:
            raise ValueError("This run was trained on in-memory pairs: pass them again as "
                             "`train_data` to resume it.")
    else:
        if os.path.exists(config_path):
            raise FileExistsError(
                f"{out!r} already holds a run; resume it (--resume) or choose another --out."
            )
        config = {
            "train_data": train_data if isinstance(train_data, (str, os.PathLike)) else None,
            "valid_data": valid_data if isinstance(valid_data, (str, os.PathLike)) else None,
            "source_tokenizer": source_tokenizer or tokenizer,
            "target_tokenizer": target_tokenizer or tokenizer,
            "tokenizer_options": {"lower": lower, "normalization": normalization,
                                  "max_vocab_size": max_vocab_size, "min_count": min_count},
            "epochs": 10 if epochs is None else epochs, "batch_size": batch_size, "learning_rate": learning_rate,
            "label_smoothing": label_smoothing, "max_source_length": max_source_length,
            "max_target_length": max_target_length, "valid_percent": valid_percent,
            "on_bad_row": on_bad_row, "source_column": source_column,
            "target_column": target_column, "header": header, "seed": seed,
            "strategy": strategy, "lr_decay": lr_decay,
            "model": {"embedding_dim": embedding_dim, "units": units,
                      "encoder_layers": encoder_layers, "decoder_layers": decoder_layers,
                      "cell_type": cell_type, "attention": attention, "style": style,
                      "input_feeding": input_feeding, "window": window,
                      "window_mode": window_mode, "normalize_attention": normalize_attention,
                      "dropout": dropout},
        }
    for key in ("train_data", "valid_data"):
        if config[key] is not None:
            config[key] = os.fspath(config[key])

    keras.utils.set_random_seed(config["seed"])
    pairs = _load_pairs(train_data, config["on_bad_row"], config["source_column"],
                        config["target_column"], config["header"])
    if valid_data is None:
        pairs, valid_pairs = data_lib.split_pairs(*pairs, valid_percent=config["valid_percent"])
    else:
        valid_pairs = _load_pairs(valid_data, config["on_bad_row"], config["source_column"],
                                  config["target_column"], config["header"])

    source_dir, target_dir = os.path.join(out, SOURCE_VOCAB), os.path.join(out, TARGET_VOCAB)
    if resume:
        source_tok, target_tok = load_tokenizer(source_dir), load_tokenizer(target_dir)
    else:
        options = config["tokenizer_options"]
        source_tok = make_tokenizer(config["source_tokenizer"], **options).adapt(pairs[0])
        target_tok = make_tokenizer(config["target_tokenizer"], **options).adapt(pairs[1])

    distribution = _strategy(config["strategy"])
    lengths = {"max_source_length": config["max_source_length"],
               "max_target_length": config["max_target_length"],
               # Keras' first-batch shape probe under a strategy fails on a
               # batch that splits unevenly across replicas (Keras 3.15).
               "batch_multiple": distribution.num_replicas_in_sync}
    train_ds, train_stats = data_lib.make_dataset(
        *pairs, source_tok, target_tok, batch_size=config["batch_size"], seed=config["seed"],
        **lengths)
    valid_ds, valid_stats = data_lib.make_dataset(
        *valid_pairs, source_tok, target_tok, batch_size=config["batch_size"], shuffle=False,
        **lengths)
    stats = {"train": train_stats, "valid": valid_stats}
    for side, numbers in stats.items():
        for key in ("truncated_sources", "truncated_targets"):
            if numbers[key]:
                print(f"note: {numbers[key]} of {numbers['pairs']} {side} pairs had "
                      f"{key.split('_')[1]} cut at the maximum length")

    # The model first: options it refuses must leave no run directory behind.
    with distribution.scope():
        model_options = dict(config["model"])
        if model_options["attention"] == "location":
            model_options["max_source_length"] = config["max_source_length"]
        model = build_seq2seq_model(source_tok.vocabulary_size, target_tok.vocabulary_size,
                                    **model_options)
        model.compile(
            keras.optimizers.Adam(config["learning_rate"], clipnorm=1.0),
            loss=MaskedSparseCategoricalCrossentropy(label_smoothing=config["label_smoothing"]),
            metrics=[MaskedAccuracy(name="accuracy")],
        )

    os.makedirs(out, exist_ok=True)
    if not resume:
        source_tok.save(source_dir)
        target_tok.save(target_dir)
        config["source_vocab_size"] = source_tok.vocabulary_size
        config["target_vocab_size"] = target_tok.vocabulary_size
        config["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
        with open(config_path, "w") as handle:
            json.dump(config, handle, indent=2, ensure_ascii=False)

    callbacks = [
        RunCheckpoint(out, metrics_file=METRICS_FILE, best_file=BEST_MODEL),
        keras.callbacks.TerminateOnNaN(),
        *([keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1,
                                             min_lr=1e-5, verbose=1)]
          if config.get("lr_decay", True) else []),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        *callbacks,
    ]
    start = time.time()
    history = model.fit(train_ds, validation_data=valid_ds, epochs=config["epochs"],
                        callbacks=callbacks, verbose=verbose, shuffle=False)
    seconds = time.time() - start

    rows = read_metrics(os.path.join(out, METRICS_FILE))
    losses = history.history.get("loss", [])
    diverged = any(not math.isfinite(x) for x in losses) or (
        model.stop_training and len(rows) < config["epochs"]
    )
    if diverged:
        stopped = ("the loss became NaN/inf: training stopped (TerminateOnNaN); "
                   f"the last good model is {os.path.join(out, BEST_MODEL)}")
        print(f"error: {stopped}")
    else:
        stopped = None
        model.save(os.path.join(out, FINAL_MODEL))
    finished = [row for row in rows if math.isfinite(float(row["val_loss"]))]
    best = min(finished, key=lambda row: float(row["val_loss"]), default=None)
    summary = {
        "run_dir": out,
        "epochs_trained": len(rows),
        "best_epoch": None if best is None else int(best["epoch"]) + 1,
        "val_loss": None if best is None else float(best["val_loss"]),
        "val_accuracy": None if best is None else float(best["val_accuracy"]),
        "stopped": stopped,
        "seconds": round(seconds, 1),
        "stats": stats,
    }
    if best is not None:
        print(f"best epoch {summary['best_epoch']}/{len(rows)}: val_loss "
              f"{summary['val_loss']:.4f}, val token accuracy {summary['val_accuracy']:.2%}")
    return summary


def load_run(run_dir, which="best", compile=False):
    """Loads a run's model and tokenizers.

    Args:
        run_dir: A directory written by `train`.
        which: `"best"` (lowest validation loss) or `"final"`.
        compile: Also restore the optimizer, loss and metrics (to train on);
            off by default, so inference and exports carry no optimizer state.

    Returns:
        `(model, source_tokenizer, target_tokenizer, config)`.
    """
    path = os.path.join(run_dir, BEST_MODEL if which == "best" else FINAL_MODEL)
    if which not in ("best", "final"):
        raise ValueError(f"`which` must be 'best' or 'final'. Received: {which!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model at {path!r}: is {run_dir!r} a finished run?")
    with open(os.path.join(run_dir, CONFIG_FILE)) as handle:
        config = json.load(handle)
    return (keras.saving.load_model(path, compile=compile), load_tokenizer(os.path.join(run_dir, SOURCE_VOCAB)),
            load_tokenizer(os.path.join(run_dir, TARGET_VOCAB)), config)
