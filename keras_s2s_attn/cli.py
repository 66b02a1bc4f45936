"""The `s2s-attn` command: a thin layer over the Python API."""

import argparse
import json
import os
import sys
import tempfile

from keras_s2s_attn.backends import BackendError
from keras_s2s_attn.evaluation import METRICS
from keras_s2s_attn.options import (
    LOWER_SIDES,
    LR_DECAYS,
    RUN_MODELS,
    TOKENIZER_KINDS,
    WEIGHT_DTYPES,
    ModelOptions,
)


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _column(text):
    """A column index (ASCII digits: "²".isdigit() is True too) or a column name."""
    return int(text) if text.isascii() and text.isdigit() else text


def _add_option_flags(parser, options_class, flags=None, given_only=False):
    """One flag per field of an options dataclass, with its help and default.

    Args:
        flags: `{field name: flags}` to spell some differently.
        given_only: Default None, so `_options` passes only the flags given
            (the dataclass's own defaults fill the rest).
    """
    import dataclasses

    from keras_s2s_attn.options import flag_name

    for field in dataclasses.fields(options_class):
        names = (flags or {}).get(field.name, (flag_name(field),))
        default = None if given_only else field.default
        if field.type is bool:  # a switch away from the default
            parser.add_argument(*names, dest=field.name, action="store_const",
                                const=not field.default, default=default,
                                help=field.metadata["help"])
            continue
        shown = "" if field.default is None else f" (default: {field.default})"
        parser.add_argument(*names, dest=field.name, default=default,
                            type=_positive_int if field.type is int else field.type,
                            choices=field.metadata.get("choices"),
                            help=field.metadata["help"] + shown)


def _options(args, options_class):
    """The options dataclass from parsed flags (those left None get its defaults)."""
    import dataclasses

    return options_class(**{field.name: getattr(args, field.name)
                            for field in dataclasses.fields(options_class)
                            if getattr(args, field.name, None) is not None})


def _add_pair_file_flags(parser):
    """How --train's pairs file is read (train, distill): `data.read_pairs`' options."""
    parser.add_argument("--on-bad-row", default="error", choices=["error", "skip"],
                        help="a malformed row (a missing column, bytes that are not UTF-8, an "
                             "empty side, a line over 64 KiB) stops the run with its file:line "
                             "(error), or is skipped with a warning (skip)")
    parser.add_argument("--source-column", type=_column, default=0,
                        help="column index or name (a name implies a header row)")
    parser.add_argument("--target-column", type=_column, default=1)
    parser.add_argument("--header", action="store_true", help="the first row holds names")


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train", help="train a model on a file of source/target pairs",
        description="Train an attention seq2seq model on text pairs (TSV/CSV) and write a run "
                    "directory: config.json, vocabularies, best.keras, model.keras, "
                    "metrics.csv, TensorBoard logs.",
    )
    parser.add_argument("--train", help="pairs file (.tsv or .csv); optional with --resume")
    parser.add_argument("--valid", help="validation pairs; default: a deterministic ~5%% slice "
                                        "of --train")
    parser.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    parser.add_argument("--tokenizer", default="char", choices=TOKENIZER_KINDS,
                        help="tokenizer kind for both sides (default: char)")
    parser.add_argument("--source-tokenizer", choices=TOKENIZER_KINDS,
                        help="tokenizer kind for the source side")
    parser.add_argument("--target-tokenizer", choices=TOKENIZER_KINDS,
                        help="tokenizer kind for the target side")
    for side in ("source", "target"):
        parser.add_argument(f"--{side}-vocab", metavar="DIR",
                            help=f"use this tokenizer directory (a run's {side}_vocab/) instead "
                                 "of building one from --train")
    parser.add_argument("--lower", nargs="?", const=True, default=False,
                        choices=LOWER_SIDES, metavar="SIDE",
                        help="lower-case text: both sides, or only SIDE (source or target; "
                             "G2P lower-cases the words, not the phones)")
    parser.add_argument("--no-normalize", action="store_true",
                        help="skip Unicode NFKC normalisation")
    parser.add_argument("--max-vocab-size", type=_positive_int)
    parser.add_argument("--min-count", type=_positive_int, default=1)
    parser.add_argument("--epochs", type=_positive_int,
                        help="total epochs, those done before a --resume included (default "
                             "10; with --resume, the run's own total)")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    model = parser.add_argument_group("model")
    model.add_argument("--layers", type=_positive_int,
                       help="encoder and decoder layers (default: 1)")
    _add_option_flags(model, ModelOptions, given_only=True)
    parser.add_argument("--max-source-length", type=_positive_int)
    parser.add_argument("--max-target-length", type=_positive_int)
    _add_pair_file_flags(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="default",
                        choices=["default", "mirrored", "multi-worker"],
                        help="mirrored: the GPUs (or logical CPUs) of this machine; "
                             "multi-worker: the cluster in TF_CONFIG, every worker running this "
                             "command (README, \"Training on several machines\")")
    parser.add_argument("--lr-decay", choices=LR_DECAYS, default="plateau",
                        help="plateau: halve the learning rate when the validation loss "
                             "stalls (default); cosine: a cosine down to 1%% of it over the "
                             "run (with --ema, whose smooth validation loss seldom stalls); "
                             "none: constant")
    parser.add_argument("--no-lr-decay", dest="lr_decay", action="store_const", const="none",
                        help="--lr-decay none")
    parser.add_argument("--early-stopping", type=_positive_int, metavar="PATIENCE",
                        help="stop when the validation loss has not improved for PATIENCE "
                             "epochs, and keep the best epoch's weights in model.keras")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="compute in float16 on a GPU, bfloat16 on CPU, with float32 "
                             "weights, logits and attention (Keras mixed precision)")
    parser.add_argument("--scheduled-sampling", metavar="linear:P|constant:P",
                        help="feed the model's own previous prediction instead of the true "
                             "token with a probability rising from 0 to P over the run "
                             "(linear) or P throughout (Bengio et al. 2015)")
    parser.add_argument("--select-by", default="loss", choices=["loss", *METRICS],
                        help="what picks best.keras: the validation loss, or a metric of the "
                             "validation set's greedy translations at each epoch end")
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="keep an exponential moving average of the weights (e.g. 0.999): "
                             "validation, best.keras and model.keras use it")
    parser.add_argument("--keep-checkpoints", type=_positive_int, default=1, metavar="N",
                        help="keep the last N epochs' states under backup/, to average them "
                             "with s2s-attn average (default 1: the one a resume needs)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out after its last finished epoch, with "
                             "its options; a finished run needs a larger --epochs")
    parser.set_defaults(handler=_train)


def _train(args):
    """Runs `training.train`: progress on stderr, only the JSON summary on stdout.

    Exits 1 if the loss diverged, 130 on Ctrl-C (saying how to resume).
    """
    import contextlib
    import shlex

    from keras_s2s_attn.callbacks import InterruptBetweenSteps
    from keras_s2s_attn.runs import CONFIG_FILE
    from keras_s2s_attn.training import train

    if args.train is None and not args.resume:
        raise ValueError("--train is required (unless --resume)")
    try:
        # Keras prints its progress to stdout; Ctrl-C stops between steps.
        with contextlib.redirect_stdout(sys.stderr), InterruptBetweenSteps() as interrupt:
            summary = train(
                args.train, args.out, valid_data=args.valid, tokenizer=args.tokenizer,
                source_tokenizer=args.source_tokenizer, target_tokenizer=args.target_tokenizer,
                source_vocab=args.source_vocab, target_vocab=args.target_vocab,
                lower=args.lower, normalization=None if args.no_normalize else "NFKC",
                max_vocab_size=args.max_vocab_size, min_count=args.min_count,
                epochs=args.epochs, batch_size=args.batch_size,
                learning_rate=args.learning_rate, label_smoothing=args.label_smoothing,
                ema=args.ema, keep_checkpoints=args.keep_checkpoints,
                mixed_precision=args.mixed_precision, select_by=args.select_by,
                scheduled_sampling=args.scheduled_sampling,
                **_model_options(args),
                max_source_length=args.max_source_length,
                max_target_length=args.max_target_length, on_bad_row=args.on_bad_row,
                source_column=args.source_column, target_column=args.target_column,
                header=args.header or None, seed=args.seed, strategy=args.strategy,
                resume=args.resume, lr_decay=args.lr_decay,
                early_stopping=args.early_stopping, callbacks=[interrupt],
            )
    except Exception as error:  # noqa: BLE001  (only a lost worker is answered here)
        if args.strategy != "multi-worker" or not _lost_worker(error):
            raise
        print(f"\ns2s-attn train: a worker of the cluster stopped "
              f"({str(error).strip().splitlines()[0]}); restart every worker with the same "
              f"command and --resume: they continue after the chief's last finished epoch",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if os.path.exists(os.path.join(args.out, CONFIG_FILE)):
            hint = f"continue with: s2s-attn train --out {shlex.quote(args.out)} --resume"
        else:
            hint = "nothing to resume: the run had not started"
        # On a line of its own: Keras leaves its progress bar's line open.
        print(f"\ns2s-attn train: interrupted; {hint}", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2))
    return 1 if summary["diverged"] else 0


def _lost_worker(error):
    """Whether `error` is TensorFlow's report that a peer worker is gone."""
    import tensorflow as tf

    return isinstance(error, tf.errors.OpError) and (
        "unhealthy" in str(error) or isinstance(error, (tf.errors.UnavailableError,
                                                         tf.errors.AbortedError)))


def _model_options(args):
    """`train`'s model options from the flags given (`ModelOptions` holds the defaults)."""
    import dataclasses

    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(ModelOptions)
             if getattr(args, field.name) is not None}
    for side in ("encoder_layers", "decoder_layers"):
        if args.layers is not None:
            given.setdefault(side, args.layers)
    if given.get("attention") == "none":
        given["attention"] = None
    return given


def _add_average(subparsers):
    parser = subparsers.add_parser(
        "average", help="average the weights of a run's last epochs",
        description="Write RUN/averaged.keras, the mean of the weights of the run's last N "
                    "epochs (kept by train --keep-checkpoints N); export it with "
                    "s2s-attn export RUN --which averaged (translate and evaluate take "
                    "--which too).")
    parser.add_argument("run_dir", help="a run directory")
    parser.add_argument("--last", type=_positive_int, required=True, metavar="N",
                        help="how many of the last epochs to average")
    parser.set_defaults(handler=_average)


def _average(args):
    from keras_s2s_attn.averaging import average_run

    path, epochs = average_run(args.run_dir, args.last)
    print(f"averaged epochs {', '.join(map(str, epochs))} into {path}", file=sys.stderr)
    print(path)
    return 0


def _add_distill(subparsers):
    parser = subparsers.add_parser(
        "distill", help="write a training set whose targets are a teacher's translations",
        description="Sequence-level knowledge distillation (Kim & Rush 2016): translate the "
                    "sources of --train with the TEACHER (a run directory or an exported "
                    "model; several run directories decode as one ensemble), by default with "
                    "beam search, and write the pairs (source, translation) to --out as TSV, "
                    "to train a student on: s2s-attn train --train OUT.")
    parser.add_argument("teachers", nargs="+", metavar="TEACHER")
    parser.add_argument("--train", required=True, help="the training pairs (.tsv or .csv)")
    parser.add_argument("--out", required=True, help="the TSV file to write")
    parser.add_argument("--keep-references", action="store_true",
                        help="also write every original pair, after the distilled ones")
    parser.add_argument("--batch-size", type=_positive_int, default=256,
                        help="sources translated per call")
    _add_pair_file_flags(parser)
    _add_strategy_choice(parser)
    parser.set_defaults(handler=_distill)


def _distill(args):
    from keras_s2s_attn.distillation import distill_pairs

    def progress(done, total):
        print(f"\r{done}/{total} sources", end="", file=sys.stderr, flush=True)

    summary = distill_pairs(args.teachers, args.train, args.out,
                            strategy=_strategy(args, default="beam"),
                            keep_references=args.keep_references, batch_size=args.batch_size,
                            source_column=args.source_column, target_column=args.target_column,
                            header=args.header or None, on_bad_row=args.on_bad_row,
                            progress=progress)
    print(file=sys.stderr)
    if summary["empty"]:
        print(f"note: the teacher answered {summary['empty']} of {summary['pairs']} sources "
              "with nothing; they have no distilled row", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


def _add_which_flag(parser, default=None):
    """`--which`: one of a run directory's models (export, translate, evaluate)."""
    parser.add_argument("--which", default=default, choices=RUN_MODELS,
                        help="a run directory's model: best (by the run's --select-by, the "
                             "validation loss by default; the default), final (last epoch) "
                             "or averaged (written by s2s-attn average)")


def _add_export(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a run as a TF Serving SavedModel",
        description="Export a run's model with its tokenizers as saved_models/NAME/<version>/: "
                    "strings in, translations and attention out, one signature per decoding "
                    "strategy (greedy 'serving_default', n-best 'beam_search', 'sample'), with "
                    "TF Serving warm-up requests.")
    parser.add_argument("run_dir", nargs="+",
                        help="a run directory; several (with the same tokenizers) export "
                             "their ensemble, which averages the models' probabilities")
    parser.add_argument("--name", required=True, help="model name (the directory under "
                                                      "--export-dir)")
    parser.add_argument("--export-dir", default="saved_models")
    parser.add_argument("--version", type=_positive_int, help="default: the next integer")
    _add_which_flag(parser, default="best")
    parser.add_argument("--max-source-length", type=_positive_int,
                        help="default: the run's, else 256")
    parser.add_argument("--max-output-length", type=_positive_int)
    parser.add_argument("--strategies", type=_strategy_list, default=None,
                        help="comma-separated strategies to export, one signature each: greedy "
                             "(serving_default), beam (beam_search), sample (sample); default "
                             "all")
    _add_decoding_flags(parser, given_only=True, beam_flags=("--beam-width", "--beam"))
    parser.add_argument("--weights-dtype", default="float32", choices=WEIGHT_DTYPES,
                        help="store the weights smaller: float16 (half the size), int8 "
                             "(about a quarter, per-column scales) or int4 (about a seventh, a "
                             "scale per column and 32 rows); the model still computes in "
                             "float32")
    parser.add_argument("--jit", action="store_true",
                        help="compile the numeric core (encoder and search) with XLA: faster "
                             "for small batches on CPU, a compilation per batch-shape bucket "
                             "at first use; TF Serving needs --xla_cpu_compilation_enabled=true "
                             "to serve it on CPU")
    parser.set_defaults(handler=_export)


def _export(args):
    from keras_s2s_attn.export import export_saved_model
    from keras_s2s_attn.options import BeamOptions, SamplingOptions
    from keras_s2s_attn.translation import default_strategies

    strategies = default_strategies(_options(args, BeamOptions), _options(args, SamplingOptions))
    options = {"max_output_length": args.max_output_length,
               "replace_unknown": args.replace_unknown,
               "jit_compile": args.jit,
               "strategies": {signature: strategy for signature, strategy in strategies.items()
                              if args.strategies is None or strategy.name in args.strategies}}
    if args.max_source_length:
        options["max_source_length"] = args.max_source_length
    path = export_saved_model(args.run_dir, os.path.join(args.export_dir, args.name),
                              version=args.version, which=args.which,
                              weights_dtype=args.weights_dtype, **options)
    print(path)
    return 0


def _strategy_list(text):
    """`export --strategies`: comma-separated names of built-in strategies."""
    from keras_s2s_attn.decoding.registry import builtin_strategy_names

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in builtin_strategy_names()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown strategy {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(builtin_strategy_names())}")
    return names


def _add_decoding_flags(parser, given_only, beam_flags=("--beam", "--beam-width")):
    """The flags of beam search's and sampling's options (`options.py` holds them)."""
    from keras_s2s_attn.options import BeamOptions, SamplingOptions

    beam = parser.add_argument_group("beam search")
    _add_option_flags(beam, BeamOptions, {"beam_width": beam_flags}, given_only)
    sampling = parser.add_argument_group("sampling")
    _add_option_flags(sampling, SamplingOptions, given_only=given_only)
    parser.add_argument("--replace-unknown", action="store_true",
                        help="replace each unknown target token by the source token it "
                             "attended to most (char, word or space targets; an exported "
                             "model does it only if exported so)")


def _add_strategy_choice(parser):
    """translate/evaluate: which strategy decodes, and its options."""
    from keras_s2s_attn.decoding.registry import strategy_names

    parser.add_argument("--strategy", choices=strategy_names(),
                        help="decoding strategy (default: greedy; beam with --beam N > 1, "
                             "sample with --sample)")
    parser.add_argument("--sample", dest="strategy", action="store_const", const="sample",
                        help="sample translations (--strategy sample)")
    _add_decoding_flags(parser, given_only=True)


def _strategy(args, default="greedy"):
    """The strategy object translate/evaluate/distill decode with, from the flags
    given (`default` when none are)."""
    from keras_s2s_attn.decoding import BeamSearch, SamplingSearch, get_strategy
    from keras_s2s_attn.options import BeamOptions, SamplingOptions

    beam, sampling = _options(args, BeamOptions), _options(args, SamplingOptions)
    beam_given = any(getattr(args, name) is not None for name in vars(beam))
    sampling_given = any(getattr(args, name) is not None for name in vars(sampling))
    name = args.strategy or ("sample" if sampling_given else
                             "beam" if beam_given and (args.beam_width or 2) > 1 else
                             "greedy" if beam_given else default)
    if (name != "beam" and beam_given and (args.beam_width or 1) > 1) or (
            name != "sample" and sampling_given):
        raise ValueError(f"--strategy {name}: the beam or sampling options given belong to "
                         "another strategy.")
    if name == "beam":  # one result unless --n-best asks for more
        return BeamSearch(**{**vars(beam), "num_results": args.num_results or 1})
    if name == "sample":
        return SamplingSearch(**vars(sampling))
    return get_strategy(name)


def _add_translate(subparsers):
    parser = subparsers.add_parser(
        "translate", help="translate text with an exported model or a run",
        description="Translate each TEXT (or each line of --input) with saved_models/NAME "
                    "(its highest version) or a run directory; prints one translation per "
                    "line, in order.")
    parser.add_argument("model", help="saved_models/NAME, a version directory, or a run dir")
    parser.add_argument("texts", nargs="*", metavar="TEXT")
    parser.add_argument("--input", metavar="FILE",
                        help="translate every line of FILE (UTF-8; - for stdin) instead of "
                             "TEXT arguments; an empty line gets an empty translation")
    parser.add_argument("--batch-size", type=_positive_int, default=256,
                        help="texts decoded at once (default 256)")
    _add_which_flag(parser)
    _add_strategy_choice(parser)
    parser.add_argument("--json", action="store_true", help="print every output as JSON")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="save the attention maps of the texts as one PNG (of the first "
                             f"{MAX_PLOTTED_MAPS} texts at most)")
    parser.set_defaults(handler=_translate)


def _read_lines(path):
    """The lines of a UTF-8 file (or stdin for "-"), without their line ends.

    Only "\n" (and "\r\n") end a line: `str.splitlines` would also split at
    U+2028 and other separators inside a text and misalign the outputs. A
    line that is not UTF-8, or longer than `data.MAX_LINE_BYTES`, is refused
    with its file and line number.
    """
    from keras_s2s_attn.data import text_lines

    name = "<stdin>" if path == "-" else path
    try:  # open() rather than isfile(): pipes such as <(cut -f1 pairs.tsv) are fine
        handle = sys.stdin.buffer if path == "-" else open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"--input: no such file {path!r}") from None
    lines = []
    with handle:
        for number, text, problem in text_lines(handle):
            if problem:
                raise ValueError(f"--input: {name}:{number}: {problem}")
            lines.append(text)
    return lines


def _in_batches(run, texts, batch_size, progress=False):
    """Yields `(texts of the batch, run's output dict)` for each batch of `texts`, in order."""
    for start in range(0, len(texts), batch_size):
        batch = texts[start: start + batch_size]
        yield batch, run(batch)
        if progress:
            done = min(start + batch_size, len(texts))
            bar = "#" * (30 * done // len(texts))
            print(f"\r[{bar:<30}] {done}/{len(texts)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)


# translate --plot draws the maps of at most this many texts (a figure per map
# grows with its tokens; hundreds of them made PNGs 100,000 pixels tall).
MAX_PLOTTED_MAPS = 16


class _Printer:
    """Prints translations as they are decoded: one per line, or one JSON array."""

    def __init__(self, as_json):
        self.as_json, self.rows = as_json, 0

    def write(self, outputs):
        if not self.as_json:
            if "translations" in outputs and outputs["translations"].shape[1] > 1:
                # n-best or samples: K lines per text, best first, with their scores
                for texts, scores in zip(outputs["translations"], outputs["scores"]):
                    for text, score in zip(texts, scores):
                        print(f"{text.decode('utf-8')}\t{score:.4f}")
                return
            for text in outputs["translation"]:
                print(text.decode("utf-8"))
            return
        from keras_s2s_attn.serving import format_outputs

        for row in format_outputs(outputs, row_format=True)["predictions"]:
            print(("[" if self.rows == 0 else ",") + json.dumps(row, ensure_ascii=False))
            self.rows += 1

    def close(self):
        if self.as_json:
            print("[]" if self.rows == 0 else "]")


def _unknown_note(texts, unknown):
    """A note for stderr when source tokens were unknown to the model, else None."""
    rows = [(text, count) for text, count in zip(texts, unknown) if count]
    if not rows:
        return None
    text, count = rows[0]
    return (f"note: {len(rows)} of {len(texts)} texts had source tokens the model does not "
            f"know, read as [UNK] ({sum(unknown)} in all; first: {text!r}, {count}). Check the "
            "input against the training data (case, script, alphabet); --json shows "
            "unknown_tokens per text.")


def _attention_maps(texts, outputs, limit):
    """Up to `limit` `(attention, source tokens, target tokens, title)` maps of a batch."""
    maps = []
    for i, text in enumerate(texts):
        if len(maps) == limit:
            break
        if any(outputs["target_tokens"][i]) and any(outputs["source_tokens"][i]):
            maps.append((outputs["attention"][i], outputs["source_tokens"][i],
                         outputs["target_tokens"][i], text))
    return maps


def _translate(args):
    from keras_s2s_attn.translation import open_translator

    if args.input is not None and args.texts:
        raise ValueError("Give TEXT arguments or --input FILE, not both.")
    texts = _read_lines(args.input) if args.input is not None else args.texts
    if not texts:
        raise ValueError(f"--input: {args.input!r} holds no lines to translate."
                         if args.input is not None else "Give at least one TEXT (or --input).")
    run = open_translator(args.model, _strategy(args), replace_unknown=args.replace_unknown,
                          which=args.which)
    if args.plot and "attention" not in run.output_names:
        raise ValueError(f"--plot: {args.model!r} was built without attention "
                         "(--attention none), so there is no attention map to draw.")
    printer, maps, unknown = _Printer(args.json), [], []
    for batch, outputs in _in_batches(run, texts, args.batch_size,
                                      progress=args.input is not None):
        printer.write(outputs)
        unknown.extend(outputs.get("unknown_tokens", [0] * len(batch)))
        if args.plot:
            maps += _attention_maps(batch, outputs, MAX_PLOTTED_MAPS - len(maps))
    printer.close()
    if args.plot:
        _plot(maps, args.plot, len(texts))
    note = _unknown_note(texts, [int(count) for count in unknown])
    if note:
        print(note, file=sys.stderr)
    return 0


def _plot(maps, path, count):
    from keras_s2s_attn.plotting import plot_attention_maps

    if not maps:
        raise ValueError("Nothing to plot: every text was empty.")
    plot_attention_maps(maps, path)
    shown = (f"the first {len(maps)} of {count} texts (at most {MAX_PLOTTED_MAPS})"
             if count > len(maps) else f"{len(maps)} text{'s' if len(maps) > 1 else ''}")
    print(f"attention maps of {shown} written to {path}", file=sys.stderr)


def _add_evaluate(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="score a model on a file of pairs",
        description="Translate the sources of a pairs file in batches and score the outputs "
                    "against the targets: JSON on stdout, a table on stderr.")
    parser.add_argument("model", help="saved_models/NAME, a version directory, or a run dir")
    parser.add_argument("pairs", help="TSV/CSV: source, target (more target columns with "
                                      "--references)")
    parser.add_argument("--metrics", type=_metrics, default=list(METRICS),
                        help=f"comma-separated, from: {', '.join(METRICS)} (default: all); "
                             "per counts the model's target tokens, cer the characters of "
                             "the normalised text")
    _add_which_flag(parser)
    _add_strategy_choice(parser)
    parser.add_argument("--batch-size", type=_positive_int, default=256)
    parser.add_argument("--references", action="store_true",
                        help="every column after the source is an acceptable reference")
    parser.set_defaults(handler=_evaluate)


def _metrics(text):
    """`--metrics`: comma-separated names from `evaluation.METRICS`, checked before decoding."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(METRICS)}")
    return names


def _units(tokenizer):
    """`evaluate_texts`' `tokenize` and `normalize` from the model's target tokenizer."""
    from keras_s2s_attn.evaluation import tokenizer_units

    if tokenizer is None:
        print("note: this export records no tokenizer (it predates them): per counts "
              "whitespace-separated tokens", file=sys.stderr)
        return {}
    return tokenizer_units(tokenizer)


def _evaluate(args):
    from keras_s2s_attn.data import read_pairs
    from keras_s2s_attn.evaluation import evaluate_texts, oracle_error_rates
    from keras_s2s_attn.translation import open_translator

    sources, references = read_pairs(args.pairs, all_targets=args.references)
    references = [r if args.references else [r] for r in references]
    strategy = _strategy(args)
    run = open_translator(args.model, strategy, replace_unknown=args.replace_unknown,
                          which=args.which)
    hypotheses, n_best = [], []
    for _, outputs in _in_batches(run, sources, args.batch_size, progress=True):
        hypotheses += [text.decode("utf-8") for text in outputs["translation"]]
        if "translations" in outputs:
            n_best += [[text.decode("utf-8") for text in row] for row in outputs["translations"]]
    units = _units(run.target_tokenizer)
    scores = evaluate_texts(hypotheses, references, args.metrics, **units)
    if "wer" in args.metrics and n_best and len(n_best[0]) > 1:
        scores.update(oracle_error_rates(n_best, references, normalize=units.get("normalize")))
    for name, value in scores.items():
        shown = f"{value:.2f}" if name in ("bleu", "chrf") else f"{100 * value:.2f}%"
        print(f"{name:>13}  {shown}", file=sys.stderr)
    print(json.dumps({"model": args.model, "pairs": args.pairs, "sources": len(sources),
                      "strategy": repr(strategy), **scores}))
    return 0


def _add_serve(subparsers):
    import dataclasses

    from keras_s2s_attn.options import ServingOptions

    parser = subparsers.add_parser(
        "serve", help="serve saved_models/NAME over TF Serving's REST API",
        description="Serve the highest version of saved_models/NAME that loads over TF "
                    "Serving's REST API (GET /v1/models/NAME, .../metadata, POST "
                    ".../NAME:predict), after running its warm-up requests; a newer version "
                    "is picked up when it appears. Logs one line per request on stderr.")
    parser.add_argument("base_path", help="saved_models/NAME")
    for field in dataclasses.fields(ServingOptions):
        kind = ({"action": argparse.BooleanOptionalAction} if field.type is bool
                else {"type": field.type})
        parser.add_argument(f"--{field.name.replace('_', '-')}", default=field.default,
                            help=f"{field.metadata['help']} (default: %(default)s)", **kind)
    parser.set_defaults(handler=_serve)


def _serve(args):
    import dataclasses
    import logging

    from keras_s2s_attn.options import ServingOptions
    from keras_s2s_attn.serving import serve

    options = ServingOptions(**{field.name: getattr(args, field.name)
                                for field in dataclasses.fields(ServingOptions)})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        serve(args.base_path, options)
    except OSError as error:  # the port is taken, no such host address, no version loads
        print(f"s2s-attn serve: error: {error}", file=sys.stderr)
        return 2
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """Takes options before, between or after the positional arguments.

    `translate MODEL --json TEXT` would otherwise fail: a plain parser gives
    the `TEXT...` positional its (empty) share before it sees `--json`.
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _start_tensorflow(verbose):
    """Imports TensorFlow, Keras and tensorflow-text and probes the devices.

    Their start-up lines (the absl preamble, CUDA probing, CPU features) are
    written straight to file descriptor 2 by C++; unless `verbose`, that
    descriptor points at a temporary file meanwhile, shown only if the start
    fails. Later C++ log lines are hidden too, ERROR ones included: TensorFlow
    writes some during normal runs (on AVX-512 CPUs, oneDNN's "supports DT_BOOL
    only on platforms with AVX-512" at the first graph run), and a real failure
    reaches the user as a Python exception with its message.
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    def start():
        import keras  # noqa: F401
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the ops the graphs may use)

        tf.config.list_physical_devices()  # CUDA is probed here, not at import

    if verbose:
        return start()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            start()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.buffer.write(captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _parser():
    parser = argparse.ArgumentParser(
        prog="s2s-attn", description="Sequence-to-sequence models with attention."
    )
    subparsers = parser.add_subparsers(dest="command", required=True,
                                       parser_class=_IntermixedParser)
    for add in (_add_train, _add_average, _add_distill, _add_export, _add_translate,
                _add_evaluate, _add_serve):
        add(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument("--verbose", action="store_true",
                               help="show TensorFlow's start-up and log lines")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        _start_tensorflow(args.verbose)
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, BackendError) as error:
        print(f"s2s-attn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"s2s-attn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
