"""`train(...)`: text pairs to a trained model in a run directory.

The `s2s-attn train` command is a thin layer over this function. A run
directory holds everything needed later:

    config.json              every option, the vocabulary sizes, the library versions
    source_vocab/, target_vocab/   the tokenizers (plain vocabulary files)
    best.keras               the best model by validation loss (with `ema`, its
                             moving average of the weights, as model.keras)
    model.keras              the model after the last epoch
    metrics.csv              one row per epoch (loss, accuracy, val_loss, val_accuracy)
    logs/                    TensorBoard logs
    backup/                  the state `resume=True` continues from (weights and
                             optimizer after the last good epoch; kept when the
                             run ends, so that it can train for more epochs), and
                             those of earlier epochs with `keep_checkpoints`
    averaged.keras           written later by `averaging.average_run`

Every file is written so that a run killed at any moment can be resumed
(`callbacks.RunCheckpoint`).
"""

from keras_s2s_attn.backends import require_tensorflow_backend

require_tensorflow_backend(__name__)  # a clear message before TensorFlow is imported

import json
import math
import os
import shutil
import sys
import time

import keras
import tensorflow as tf

from keras_s2s_attn import data as data_lib
from keras_s2s_attn import distributed
from keras_s2s_attn.callbacks import (
    EMAValidation,
    RunCheckpoint,
    build_optimizer,
    read_metrics,
    saved_epoch,
)
from keras_s2s_attn.checks import positive_int, rate
from keras_s2s_attn.evaluation import METRICS
from keras_s2s_attn.models import (
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    build_seq2seq_model,
)
from keras_s2s_attn.optimizers import FusedAdam
from keras_s2s_attn.options import (
    CELL_TYPES,
    LOWER_SIDES,
    LR_DECAYS,
    SCORES,
    STYLES,
    WINDOW_MODES,
    ModelOptions,
)
from keras_s2s_attn.runs import (
    BEST_MODEL,
    CONFIG_FILE,
    FINAL_MODEL,
    METRICS_FILE,
    SOURCE_VOCAB,
    TARGET_VOCAB,
)
from keras_s2s_attn.selection import ValidationMetric
from keras_s2s_attn.text import load_tokenizer, make_tokenizer

STRATEGIES = ("default", "mirrored", "multi-worker")
COSINE_FLOOR = 0.01  # "cosine" ends at this fraction of the learning rate


def _strategy(name):
    if name in (None, "default"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: mirror over the logical CPU devices (one unless configured).
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multi-worker":
        return distributed.multi_worker_strategy()
    raise ValueError(
        f"`strategy` must be one of {', '.join(map(repr, STRATEGIES))}. Received: {name!r}"
    )


def train(train_data, out, *, valid_data=None, tokenizer="char", source_tokenizer=None,
          target_tokenizer=None, source_vocab=None, target_vocab=None, lower=False,
          normalization="NFKC", max_vocab_size=None, min_count=1, epochs=None, batch_size=64,
          learning_rate=1e-3, label_smoothing=0.0, ema=None, keep_checkpoints=1,
          mixed_precision=False, select_by="loss", scheduled_sampling=None,
          embedding_dim=ModelOptions.embedding_dim, units=ModelOptions.units,
          encoder_layers=ModelOptions.encoder_layers, decoder_layers=ModelOptions.decoder_layers,
          cell_type=ModelOptions.cell_type, attention=ModelOptions.attention,
          style=ModelOptions.style, input_feeding=ModelOptions.input_feeding,
          window=ModelOptions.window, window_mode=ModelOptions.window_mode,
          normalize_attention=ModelOptions.normalize_attention, dropout=ModelOptions.dropout,
          max_source_length=None, max_target_length=None,
          valid_percent=5, on_bad_row="error", source_column=0, target_column=1, header=None,
          seed=0, strategy="default", resume=False, lr_decay="plateau", early_stopping=None,
          callbacks=(), verbose="auto"):
    """Trains a seq2seq model on text pairs and writes a run directory.

    Every option is checked before any data is read. Messages (notes, the
    best epoch, why training stopped) go to stderr; Keras prints its progress.

    Args:
        train_data: A TSV/CSV path, or a `(sources, targets)` pair of lists.
            With `resume=True`, None means the path recorded in config.json
            (recorded as an absolute path, so any working directory will do).
        out: The run directory (created).
        valid_data: Like `train_data`; default: a deterministic ~`valid_percent`%
            slice held out of `train_data` (see `data.split_pairs`).
        tokenizer: Tokenizer kind for both sides (`"char"`, `"word"`,
            `"wordpiece"`, ...), unless `source_tokenizer` / `target_tokenizer`
            name one per side.
        source_vocab, target_vocab: A tokenizer directory (as a run's
            `source_vocab/`, written by `Tokenizer.save`) to use as it is
            instead of building one from `train_data`: runs, or the workers
            of a multi-worker run, that must share their ids.
        lower: Lower-case text: False, True (both sides), `"source"` or
            `"target"` (that side only; G2P lower-cases its words and keeps
            the phones as the dictionary writes them).
        normalization, max_vocab_size, min_count: Tokenizer options.
        epochs: Total epochs, those already done by a resumed run included
            (default 10; a resumed run keeps its recorded total when None).
        batch_size, learning_rate, label_smoothing: Training options.
        ema: None, or a decay in (0, 1): keep an exponential moving average
            of the weights, `ema = decay * ema + (1 - decay) * weights` after
            each step (Adam's `use_ema`); validation, `best.keras` and
            `model.keras` then use the averaged weights, the resume state
            keeps both. 0.999 is a usual value; 1 / (1 - decay) steps is
            about the span it averages over.
        mixed_precision: Compute in 16 bits with float32 weights: Keras'
            `mixed_float16` policy (with loss scaling) when a GPU is visible,
            `mixed_bfloat16` on CPU (fast where the CPU has bfloat16
            instructions: AVX-512 BF16, AMX). The attention's softmax and
            weights, the logits and the loss stay float32. The run records
            the policy chosen, and a resume keeps it.
        scheduled_sampling: None, or `"linear:P"` or `"constant:P"`: in
            training, feed the model's own previous prediction instead of the
            true token with a probability that rises linearly from 0 to P
            over all the run's steps (or is P throughout; Bengio et al. 2015,
            `AttentionDecoder`). P in [0, 1]; P = 0 is plain teacher forcing.
        select_by: What picks `best.keras` (and the summary's best epoch):
            `"loss"` (the validation loss), or a metric of
            `evaluation.METRICS` (`"wer"`, `"bleu"`, ...) computed on the
            greedy translations of the whole validation set at each epoch end
            (`selection.ValidationMetric`; logged as `val_wer`, ...). The
            learning-rate decay and early stopping still follow the loss.
        keep_checkpoints: How many epochs' training states to keep under
            `backup/` (the last one resumes): `averaging.average_run` (`s2s-attn
            average`) averages the weights of the last N of them.
        embedding_dim ... dropout: Passed to `build_seq2seq_model` (`ModelOptions`).
        max_source_length, max_target_length: Truncation (counted, reported).
        on_bad_row, source_column, target_column, header: See `read_pairs`.
        seed: Seed for weights and shuffling.
        strategy: `"default"`, `"mirrored"` (`tf.distribute.MirroredStrategy`
            over the GPUs, or over the logical CPUs when there is no GPU) or
            `"multi-worker"` (`tf.distribute.MultiWorkerMirroredStrategy` over
            the cluster in `TF_CONFIG`; every worker runs this call with the
            same arguments, `batch_size` is each worker's batch, and only the
            chief writes `out`, see `keras_s2s_attn.distributed`).
        resume: Continue the run in `out` after its last finished epoch, with
            its saved weights and optimizer state; the model and data options
            then come from its config.json. A run that is done (it has
            trained `epochs` epochs, or stopped early) continues when
            `epochs` asks for more; asking for no more is refused.
        lr_decay: How the learning rate falls: `"plateau"` (or True, the
            default) halves it when the validation loss has not improved for
            an epoch (`ReduceLROnPlateau`, down to 1e-5); `"cosine"` follows
            a cosine from `learning_rate` down to 1% of it over all the run's
            steps (`keras.optimizers.schedules.CosineDecay`; a resume that
            adds epochs spans the new total, so the rate rises to that
            cosine's value). With `ema` the validation
            loss falls smoothly and seldom stalls, so the plateau rule may
            never fire: use `"cosine"`. `"none"` (or False) keeps it constant.
        early_stopping: None, or a patience: stop when the validation loss
            has not improved for that many epochs, and end with the weights
            of the best epoch (`EarlyStopping(restore_best_weights=True)`).
            A resumed run keeps its recorded patience when None.
        callbacks: More Keras callbacks for `fit`, run after the run's own;
            one may stop training early (`model.stop_training = True`).
        verbose: Keras `fit` verbosity.

    Returns:
        A dict summary: `epochs_trained`, `val_loss`, `val_accuracy` (of the
        best epoch), `best_epoch`, `stopped` (None, or why training ended
        before `epochs`), `diverged` (True when the loss became NaN/inf; the
        run then has no model.keras), `run_dir`, `seconds` and the data
        `stats`.

    Example:

    >>> summary = train("pairs.tsv", "runs/demo", tokenizer="char", epochs=5)
    """
    options = dict(locals())  # the first statement, so it holds exactly the arguments
    role, out, config = _open_run(options)
    train_data = train_data if train_data is not None else config["train_data"]
    valid_data = valid_data if valid_data is not None else config["valid_data"]
    if train_data is None:
        raise ValueError("No `train_data` given (a run trained on in-memory pairs needs them "
                         "again to resume).")

    distribution = _strategy(config["strategy"])  # before any other op: multi-worker needs it
    keras.utils.set_random_seed(config["seed"])
    pairs, valid_pairs = _read_data(config, train_data, valid_data)
    source_tok, target_tok = _tokenizers(out, config, pairs, resume)
    if role is not None:
        _check_same_vocabularies(distribution, source_tok, target_tok)
    workers = 1 if role is None else role.workers
    train_ds, valid_ds, stats = _datasets(config, pairs, valid_pairs, source_tok, target_tok,
                                          replicas=distribution.num_replicas_in_sync,
                                          workers=workers)
    # The model first: options it refuses must leave no run directory behind.
    model = _compiled_model(config, source_tok.vocabulary_size, target_tok.vocabulary_size,
                            distribution, steps=config["epochs"] * int(train_ds.cardinality()))
    if role is not None:
        distributed.work_around_keras_multi_worker_fit(model, train_ds, distribution)
    _write_run(out, config, source_tok, target_tok, new=not resume)
    selector = None if config["select_by"] == "loss" else ValidationMetric(
        config["select_by"], *valid_pairs, source_tok, target_tok,
        max_source_length=config["max_source_length"])
    checkpoint = RunCheckpoint(out, metrics_file=METRICS_FILE, best_file=BEST_MODEL,
                               sync=None if role is None else distributed.chief_state_sync(
                                   distribution), keep=config["keep_checkpoints"],
                               **_selected_by(selector))
    own = [checkpoint] if selector is None else [selector, checkpoint]  # it logs, then picks
    summary = _fit(model, train_ds, valid_ds, _callbacks(out, config, own, callbacks),
                   config, out, stats, verbose)
    if role is not None and not role.is_chief and not summary["diverged"]:
        shutil.rmtree(out, ignore_errors=True)  # a worker's own copy, kept only to resume
    return summary


def _open_run(options):
    """`(role, run directory, config)` of this process: its multi-worker role
    (`distributed.worker_role`, None for one process), the directory it writes
    (a worker's own unless it is the chief) and the run's config, checked."""
    role = distributed.worker_role() if options["strategy"] == "multi-worker" else None
    out = os.fspath(options["out"])
    out = out if role is None else distributed.worker_run_dir(out, role)
    if not options["resume"]:
        return role, out, _new_config(out, options)
    config = _resumed_config(out, options["train_data"], options["valid_data"],
                             options["epochs"], options["early_stopping"])
    if (config["strategy"] == "multi-worker") != (role is not None):
        raise ValueError(f"{out!r} was trained with strategy={config['strategy']!r}: "
                         "resume it with the same strategy (--strategy).")
    return role, out, config


def _check_same_vocabularies(distribution, source_tok, target_tok):
    """Stops every worker, saying why, unless all of them tokenise alike."""
    fingerprint = tf.constant([distributed.vocabulary_fingerprint(source_tok, target_tok)],
                              tf.int64)
    if len(set(distributed.gather_from_workers(distribution, fingerprint)[:, 0].numpy())) > 1:
        raise ValueError("The workers built different vocabularies (a different --train file, "
                         "or tokenizer options, on some worker): give every worker the same "
                         "pairs and options.")


def _recorded_path(data):
    """What config.json records of `train_data` / `valid_data`: an absolute path, or None."""
    return os.path.abspath(data) if isinstance(data, (str, os.PathLike)) else None


def _new_config(out, options):
    """The config of a new run in `out` from `train`'s arguments, checked."""
    if os.path.exists(os.path.join(out, CONFIG_FILE)):
        raise FileExistsError(
            f"{out!r} already holds a run; resume it (--resume) or choose another --out."
        )
    config = {
        "train_data": _recorded_path(options["train_data"]),
        "valid_data": _recorded_path(options["valid_data"]),
        "source_tokenizer": options["source_tokenizer"] or options["tokenizer"],
        "target_tokenizer": options["target_tokenizer"] or options["tokenizer"],
        "tokenizer_options": {name: options[name] for name in (
            "lower", "normalization", "max_vocab_size", "min_count")},
        "vocabularies": {side: _recorded_path(options[f"{side}_vocab"])
                         for side in ("source", "target")},
        "epochs": 10 if options["epochs"] is None else options["epochs"],
        **{name: options[name] for name in (
            "batch_size", "learning_rate", "label_smoothing", "max_source_length",
            "max_target_length", "valid_percent", "on_bad_row", "source_column",
            "target_column", "header", "seed", "strategy", "early_stopping",
            "ema", "keep_checkpoints", "select_by", "scheduled_sampling")},
        "lr_decay": _lr_decay(options["lr_decay"]),
        "mixed_precision": _mixed_policy() if options["mixed_precision"] else None,
        "model": {name: options[name] for name in (
            "embedding_dim", "units", "encoder_layers", "decoder_layers", "cell_type",
            "attention", "style", "input_feeding", "window", "window_mode",
            "normalize_attention", "dropout")},
    }
    _check_config(config)
    return config


def _resumed_config(out, train_data, valid_data, epochs, early_stopping):
    """The config of the run in `out`, updated by what a resume may change, checked.

    Raises:
        ValueError: If the run has already trained the epochs asked for, or
            ended without its resume state (a run of an earlier version).
    """
    config_path = os.path.join(out, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"Cannot resume: no {CONFIG_FILE} in {out!r}. Start the run without resume."
        )
    with open(config_path) as handle:
        config = json.load(handle)
    for key, value in (("train_data", train_data), ("valid_data", valid_data)):
        if value is not None:
            config[key] = _recorded_path(value)
    for key, value in (("epochs", epochs), ("early_stopping", early_stopping)):
        if value is not None:
            config[key] = value
    config.setdefault("lr_decay", "plateau")  # options that runs of earlier versions lack
    config["lr_decay"] = _lr_decay(config["lr_decay"])  # earlier runs: True or False
    config.setdefault("early_stopping", None)
    config.setdefault("ema", None)
    config.setdefault("keep_checkpoints", 1)
    config.setdefault("mixed_precision", None)
    config.setdefault("select_by", "loss")
    config.setdefault("scheduled_sampling", None)
    _check_config(config)
    done = saved_epoch(out)
    if done == 0 and os.path.exists(os.path.join(out, FINAL_MODEL)):
        raise ValueError(f"Cannot resume {out!r}: it finished without keeping its resume state "
                         "(backup/), as runs of earlier versions did. Start a new run.")
    if config["epochs"] <= done:
        raise ValueError(
            f"Cannot resume {out!r}: it has trained {done} epoch(s) already, and `epochs` "
            f"(--epochs) asks for {config['epochs']} in all (those done included); pass more "
            f"than {done} to train it further."
        )
    return config


def _side_options(config, side):
    """The tokenizer options of one side: `lower` may name a side alone."""
    options = dict(config["tokenizer_options"])
    options["lower"] = options["lower"] in (True, side)
    return options


def _one_of(value, accepted, name):
    """Refuses `value` unless it is one of `accepted`."""
    if value not in accepted:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, accepted))}. "
                         f"Received: {name}={value!r}")


def _between(value, low, high, name):
    """Refuses `value` unless it is a number strictly between `low` and `high`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"`{name}` must be a number in ({low}, {high}). "
                         f"Received: {name}={value!r}")


def _check_config(config):
    """Refuses option values training cannot use, naming the option (no data is read)."""
    positive_int(config["epochs"], "epochs")
    positive_int(config["batch_size"], "batch_size")
    _between(config["learning_rate"], 0, math.inf, "learning_rate")
    _between(config["valid_percent"], 0, 100, "valid_percent")
    rate(config["label_smoothing"], "label_smoothing")
    for name in ("max_source_length", "max_target_length", "early_stopping"):
        positive_int(config[name], name, allow_none=True)
    positive_int(config["keep_checkpoints"], "keep_checkpoints")
    _one_of(config["mixed_precision"], (None, "mixed_float16", "mixed_bfloat16"),
            "mixed_precision")
    _one_of(config["select_by"], ("loss", *METRICS), "select_by")
    _one_of(config["lr_decay"], LR_DECAYS, "lr_decay")
    if config["scheduled_sampling"] is not None:
        sampling_schedule(config["scheduled_sampling"])
    if config["ema"] is not None:
        _between(config["ema"], 0, 1, "ema")
    _one_of(config["on_bad_row"], data_lib.ON_BAD_ROW, "on_bad_row")
    _one_of(config["strategy"], STRATEGIES, "strategy")
    _one_of(config["tokenizer_options"]["lower"], (False, True, *LOWER_SIDES), "lower")
    for side in ("source", "target"):  # an unadapted tokenizer checks its kind and options
        make_tokenizer(config[f"{side}_tokenizer"], **_side_options(config, side))
        given = (config.get("vocabularies") or {}).get(side)
        if given is not None and not os.path.isdir(given):
            raise ValueError(f"`{side}_vocab`: no tokenizer directory at {given!r} "
                             "(expected one written by Tokenizer.save, as a run's "
                             f"{side}_vocab/).")
    model = config["model"]
    for name in ("embedding_dim", "units", "encoder_layers", "decoder_layers"):
        positive_int(model[name], name)
    positive_int(model["window"], "window", allow_none=True)
    rate(model["dropout"], "dropout")
    for name, accepted in (("cell_type", CELL_TYPES), ("style", STYLES),
                           ("window_mode", WINDOW_MODES), ("attention", (*SCORES, None))):
        _one_of(model[name], accepted, name)


def _load_pairs(source, config):
    """The pairs of a file (read with the config's options) or of `(sources, targets)` lists."""
    if isinstance(source, (str, os.PathLike)):
        return data_lib.read_pairs(source, on_bad_row=config["on_bad_row"],
                                   source_column=config["source_column"],
                                   target_column=config["target_column"],
                                   header=config["header"])
    sources, targets = source
    return data_lib.check_pairs(sources, targets)


def _read_data(config, train_data, valid_data):
    """`(train pairs, validation pairs)`, each a `(sources, targets)` pair of lists."""
    pairs = _load_pairs(train_data, config)
    if valid_data is None:
        return data_lib.split_pairs(*pairs, valid_percent=config["valid_percent"])
    return pairs, _load_pairs(valid_data, config)


def _tokenizers(out, config, pairs, resume):
    """The source and target tokenizers: a resumed run's own, those given
    (`source_vocab`, `target_vocab`), else adapted to `pairs`."""
    if resume:
        return (load_tokenizer(os.path.join(out, SOURCE_VOCAB)),
                load_tokenizer(os.path.join(out, TARGET_VOCAB)))
    given = config.get("vocabularies") or {}
    return tuple(
        load_tokenizer(given[side]) if given.get(side) else
        make_tokenizer(config[f"{side}_tokenizer"], **_side_options(config, side)).adapt(texts)
        for side, texts in zip(("source", "target"), pairs))


def _datasets(config, pairs, valid_pairs, source_tok, target_tok, replicas, workers=1):
    """`(train dataset, validation dataset, stats)`; notes any truncation on stderr.

    With several workers each batch is the global one, `batch_size` rows per
    worker, and every worker keeps its share of it (sharded by element).
    """
    lengths = {"max_source_length": config["max_source_length"],
               "max_target_length": config["max_target_length"],
               # Keras' first-batch shape probe under a strategy fails on a
               # batch that splits unevenly across replicas (Keras 3.15).
               "batch_multiple": replicas}
    batch_size = config["batch_size"] * workers
    train_ds, train_stats = data_lib.make_dataset(
        *pairs, source_tok, target_tok, batch_size=batch_size, seed=config["seed"], **lengths)
    valid_ds, valid_stats = data_lib.make_dataset(
        *valid_pairs, source_tok, target_tok, batch_size=batch_size, shuffle=False, **lengths)
    if workers > 1:
        train_ds, valid_ds = distributed.shard_by_data(train_ds), distributed.shard_by_data(
            valid_ds)
    stats = {"train": train_stats, "valid": valid_stats}
    for side, numbers in stats.items():
        for key in ("truncated_sources", "truncated_targets"):
            if numbers[key]:
                print(f"note: {numbers[key]} of {numbers['pairs']} {side} pairs had "
                      f"{key.split('_')[1]} cut at the maximum length", file=sys.stderr)
    return train_ds, valid_ds, stats


def sampling_schedule(spec):
    """`(kind, probability)` of a `scheduled_sampling` value: `"linear:P"` or `"constant:P"`."""
    kind, _, probability = str(spec).partition(":")
    try:
        probability = float(probability)
    except ValueError:
        probability = None
    if kind not in ("linear", "constant") or probability is None or not 0 <= probability <= 1:
        raise ValueError("`scheduled_sampling` must be 'linear:P' or 'constant:P' with P in "
                         f"[0, 1]. Received: scheduled_sampling={spec!r}")
    return kind, probability


def _compiled_model(config, source_vocab_size, target_vocab_size, distribution, steps):
    """The model of `config["model"]`, compiled with `FusedAdam` and the masked loss (`steps`:
    the run's training steps in all, which a linear sampling schedule spans)."""
    with distribution.scope():
        model_options = dict(config["model"])
        if config["scheduled_sampling"] is not None:
            kind, probability = sampling_schedule(config["scheduled_sampling"])
            if kind == "linear" and steps <= 0:
                raise ValueError("`scheduled_sampling`: a linear schedule needs the number of "
                                 "training batches, which this dataset does not know; use "
                                 "'constant:P'.")
            model_options.update(sampling_probability=probability,
                                 sampling_steps=steps if kind == "linear" else 0)
        if model_options["attention"] == "location":
            model_options["max_source_length"] = config["max_source_length"]
        policy = config["mixed_precision"]
        model = build_seq2seq_model(source_vocab_size, target_vocab_size, dtype=policy,
                                    **model_options)
        ema = config["ema"]
        optimizer = FusedAdam(_learning_rate(config, steps), clipnorm=1.0,
                              use_ema=ema is not None, ema_momentum=0.99 if ema is None else ema)
        if policy == "mixed_float16":  # float16 gradients underflow without loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer,
            loss=MaskedSparseCategoricalCrossentropy(label_smoothing=config["label_smoothing"]),
            metrics=[MaskedAccuracy(name="accuracy")],
        )
        build_optimizer(model)  # in the scope; and `fit` then traces its step once, not twice
    return model


def _lr_decay(value):
    """`lr_decay` by its name: True and False (as runs of earlier versions recorded
    it) are "plateau" and "none"."""
    if isinstance(value, bool):
        return "plateau" if value else "none"
    return value


def _learning_rate(config, steps):
    """Adam's learning rate: a number, or the cosine schedule over the run's `steps`."""
    if config["lr_decay"] != "cosine":
        return config["learning_rate"]
    if steps <= 0:
        raise ValueError("`lr_decay`: 'cosine' spans the run's training batches, which this "
                         "dataset does not know; use 'plateau'.")
    return keras.optimizers.schedules.CosineDecay(config["learning_rate"], decay_steps=steps,
                                                  alpha=COSINE_FLOOR)


def _mixed_policy():
    """The mixed precision policy for this machine: float16 on a GPU, bfloat16 on CPU."""
    # Physical devices: listing them does not start the runtime (multi-worker needs that).
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def _write_run(out, config, source_tok, target_tok, new):
    """Creates the run directory: config.json, and a new run's tokenizers."""
    os.makedirs(out, exist_ok=True)
    if new:
        source_tok.save(os.path.join(out, SOURCE_VOCAB))
        target_tok.save(os.path.join(out, TARGET_VOCAB))
        config["source_vocab_size"] = source_tok.vocabulary_size
        config["target_vocab_size"] = target_tok.vocabulary_size
        config["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
    path = os.path.join(out, CONFIG_FILE)
    with open(path + ".tmp", "w") as handle:
        json.dump(config, handle, indent=2, ensure_ascii=False)
    os.replace(path + ".tmp", path)  # a resume rewrites it: never leave half a file


def _selected_by(selector):
    """`RunCheckpoint`'s `monitor` and `mode` for a `ValidationMetric` (None: the loss)."""
    if selector is None:
        return {"monitor": "val_loss", "mode": "min"}
    return {"monitor": selector.monitor, "mode": selector.mode}


def _callbacks(out, config, first, extra):
    """The run's own callbacks (those of `first` first), then `extra`."""
    own = [*first, keras.callbacks.TerminateOnNaN()]
    if config["ema"] is not None:  # validation (val_loss: the best epoch) with the averages
        own.append(EMAValidation())
    if config["lr_decay"] == "plateau":
        own.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                     patience=1, min_lr=1e-5, verbose=1))
    if config["early_stopping"]:
        own.append(keras.callbacks.EarlyStopping(monitor="val_loss",
                                                 patience=config["early_stopping"],
                                                 restore_best_weights=True, verbose=1))
    own.append(keras.callbacks.TensorBoard(os.path.join(out, "logs")))
    return [*own, *extra]


def _fit(model, train_ds, valid_ds, callbacks, config, out, stats, verbose):
    """Trains up to `config["epochs"]`, saves model.keras unless the loss diverged.

    Returns:
        `train`'s summary.
    """
    start = time.time()
    history = model.fit(train_ds, validation_data=valid_ds, epochs=config["epochs"],
                        callbacks=callbacks, verbose=verbose, shuffle=False)
    seconds = time.time() - start
    rows = read_metrics(os.path.join(out, METRICS_FILE))
    diverged = not all(math.isfinite(loss) for loss in history.history.get("loss", []))
    if diverged:
        stopped = ("the loss became NaN/inf: training stopped (TerminateOnNaN); "
                   f"the last good model is {os.path.join(out, BEST_MODEL)}")
    else:
        if config["ema"] is not None and config["select_by"] == "loss" and any(
                isinstance(callback, keras.callbacks.EarlyStopping) and callback.best_weights
                for callback in callbacks):
            # EarlyStopping put back the best epoch's raw weights; best.keras holds its averages.
            averages = keras.saving.load_model(os.path.join(out, BEST_MODEL), compile=False)
            model.set_weights(averages.get_weights())
        model.save(os.path.join(out, FINAL_MODEL))
        stopped = _early_stop(model, callbacks, len(rows), config["epochs"])
    if stopped:
        print(f"{'error' if diverged else 'note'}: {stopped}", file=sys.stderr)
    finished = [row for row in rows if math.isfinite(float(row["val_loss"]))]
    # The epoch best.keras holds: by the run's own checkpoint's measure.
    checkpoint = next(callback for callback in callbacks if isinstance(callback, RunCheckpoint))
    best = checkpoint.best_row(finished)
    summary = {
        "run_dir": out,
        "epochs_trained": len(rows),
        "best_epoch": None if best is None else int(best["epoch"]) + 1,
        "val_loss": None if best is None else float(best["val_loss"]),
        "val_accuracy": None if best is None else float(best["val_accuracy"]),
        **({} if checkpoint.monitor == "val_loss" else {
            checkpoint.monitor: None if best is None else float(best[checkpoint.monitor])}),
        "stopped": stopped,
        "diverged": diverged,
        "seconds": round(seconds, 1),
        "stats": stats,
    }
    if best is not None:
        print(f"best epoch {summary['best_epoch']}/{len(rows)}: val_loss "
              f"{summary['val_loss']:.4f}, val token accuracy {summary['val_accuracy']:.2%}",
              file=sys.stderr)
    return summary


def _early_stop(model, callbacks, epochs_done, epochs):
    """Why a callback ended training before `epochs`, or None if it ran them all."""
    if not model.stop_training or epochs_done >= epochs:
        return None
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.EarlyStopping) and callback.stopped_epoch:
            restored = (f"; model.keras has the weights of epoch {callback.best_epoch + 1}"
                        if callback.restore_best_weights else "")
            return (f"early stopping after epoch {epochs_done} of {epochs}: {callback.monitor} "
                    f"did not improve for {callback.patience} epoch(s){restored}")
    return f"a callback stopped training after epoch {epochs_done} of {epochs}"
