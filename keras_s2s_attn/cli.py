"""The `s2s-attn` command: a thin layer over the Python API."""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Loaded with the package (its __init__ imports the export) at no extra cost.
from keras_s2s_attn.export import WEIGHT_DTYPES


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _column(text):
    return int(text) if text.isdigit() else text


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
    parser.add_argument("--tokenizer", default="char", help="tokenizer kind for both sides")
    parser.add_argument("--source-tokenizer", help="tokenizer kind for the source side")
    parser.add_argument("--target-tokenizer", help="tokenizer kind for the target side")
    parser.add_argument("--lower", action="store_true", help="lower-case text")
    parser.add_argument("--no-normalize", action="store_true",
                        help="skip Unicode NFKC normalisation")
    parser.add_argument("--max-vocab-size", type=_positive_int)
    parser.add_argument("--min-count", type=_positive_int, default=1)
    parser.add_argument("--epochs", type=_positive_int,
                        help="total epochs (default 10; with --resume, the run's own total)")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--embedding-dim", type=_positive_int, default=256)
    parser.add_argument("--units", type=_positive_int, default=256)
    parser.add_argument("--layers", type=_positive_int, default=1,
                        help="encoder and decoder layers")
    parser.add_argument("--encoder-layers", type=_positive_int,
                        help="bidirectional encoder layers (default: --layers)")
    parser.add_argument("--decoder-layers", type=_positive_int,
                        help="stacked decoder layers (default: --layers)")
    parser.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    parser.add_argument("--attention", default="additive",
                        help="additive, dot, general, concat, scaled_dot, location, or none")
    parser.add_argument("--style", default="bahdanau", choices=["bahdanau", "luong"])
    parser.add_argument("--no-input-feeding", action="store_true")
    parser.add_argument("--window", type=_positive_int, help="local attention half-width D")
    parser.add_argument("--window-mode", default="local-p", choices=["local-m", "local-p"])
    parser.add_argument("--normalize-attention", action="store_true",
                        help="weight-normalise the additive score (--attention additive)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--max-source-length", type=_positive_int)
    parser.add_argument("--max-target-length", type=_positive_int)
    parser.add_argument("--on-bad-row", default="error", choices=["error", "skip"])
    parser.add_argument("--source-column", type=_column, default=0,
                        help="column index or name (a name implies a header row)")
    parser.add_argument("--target-column", type=_column, default=1)
    parser.add_argument("--header", action="store_true", help="the first row holds names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="default", choices=["default", "mirrored"])
    parser.add_argument("--no-lr-decay", action="store_true",
                        help="keep the learning rate constant (default: halve it when the "
                             "validation loss stalls)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last finished epoch")
    parser.set_defaults(handler=_train)


def _train(args):
    from keras_s2s_attn.training import train

    if args.train is None and not args.resume:
        raise SystemExit("s2s-attn train: error: --train is required (unless --resume)")
    summary = train(
        args.train, args.out, valid_data=args.valid, tokenizer=args.tokenizer,
        source_tokenizer=args.source_tokenizer, target_tokenizer=args.target_tokenizer,
        lower=args.lower, normalization=None if args.no_normalize else "NFKC",
        max_vocab_size=args.max_vocab_size, min_count=args.min_count, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        label_smoothing=args.label_smoothing, embedding_dim=args.embedding_dim,
        units=args.units, encoder_layers=args.encoder_layers or args.layers,
        decoder_layers=args.decoder_layers or args.layers,
        cell_type=args.cell, attention=None if args.attention == "none" else args.attention,
        style=args.style, input_feeding=not args.no_input_feeding, window=args.window,
        window_mode=args.window_mode, normalize_attention=args.normalize_attention,
        dropout=args.dropout,
        max_source_length=args.max_source_length, max_target_length=args.max_target_length,
        on_bad_row=args.on_bad_row, source_column=args.source_column,
        target_column=args.target_column, header=args.header or None, seed=args.seed,
        strategy=args.strategy, resume=args.resume, lr_decay=not args.no_lr_decay,
    )
    print(json.dumps(summary, indent=2))
    return 1 if summary["stopped"] else 0


def _add_export(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a run as a TF Serving SavedModel",
        description="Export a run's model with its tokenizers as saved_models/NAME/<version>/: "
                    "strings in, translations and attention out (greedy 'serving_default' and "
                    "'beam_search' signatures), with TF Serving warm-up requests.")
    parser.add_argument("run_dir", nargs="+",
                        help="a run directory; several (with the same tokenizers) export "
                             "their ensemble, which averages the models' probabilities")
    parser.add_argument("--name", required=True, help="model name (the directory under "
                                                      "--export-dir)")
    parser.add_argument("--export-dir", default="saved_models")
    parser.add_argument("--version", type=_positive_int, help="default: the next integer")
    parser.add_argument("--which", default="best", choices=["best", "final"])
    parser.add_argument("--max-source-length", type=_positive_int,
                        help="default: the run's, else 256")
    parser.add_argument("--max-output-length", type=_positive_int)
    parser.add_argument("--beam-width", type=_positive_int, default=4)
    parser.add_argument("--length-penalty", type=float, default=0.6)
    parser.add_argument("--coverage-penalty", type=float, default=0.0)
    parser.add_argument("--weights-dtype", default="float32", choices=WEIGHT_DTYPES,
                        help="store the weights smaller: float16 (half the size), int8 "
                             "(about a quarter, per-column scales) or int4 (about a seventh, a "
                             "scale per column and 32 rows); the model still computes in "
                             "float32")
    parser.set_defaults(handler=_export)


def _export(args):
    from keras_s2s_attn.export import export_saved_model

    options = {"beam_width": args.beam_width, "length_penalty_weight": args.length_penalty,
               "coverage_penalty_weight": args.coverage_penalty,
               "max_output_length": args.max_output_length}
    if args.max_source_length:
        options["max_source_length"] = args.max_source_length
    path = export_saved_model(args.run_dir, os.path.join(args.export_dir, args.name),
                              version=args.version, which=args.which,
                              weights_dtype=args.weights_dtype, **options)
    print(path)
    return 0


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
    parser.add_argument("--beam", type=_positive_int, default=1,
                        help="beam width (an exported model has its width fixed at export)")
    parser.add_argument("--json", action="store_true", help="print every output as JSON")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="save the attention maps of the texts as one PNG")
    parser.set_defaults(handler=_translate)


def _read_lines(path):
    """The lines of a UTF-8 file (or stdin for "-"), without their line ends.

    Only "\n" (and "\r\n") end a line: `str.splitlines` would also split at
    U+2028 and other separators inside a text and misalign the outputs.
    """
    if path == "-":
        text = sys.stdin.read()
    else:
        try:  # open() rather than isfile(): pipes such as <(cut -f1 pairs.tsv) are fine
            with open(path, encoding="utf-8", newline="") as handle:
                text = handle.read()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"--input: no such file {path!r}") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _in_batches(run, texts, batch_size, progress=False):
    """Yields `run`'s output dict for each batch of `texts`, in order."""
    for start in range(0, len(texts), batch_size):
        yield run(texts[start: start + batch_size])
        if progress:
            done = min(start + batch_size, len(texts))
            bar = "#" * (30 * done // len(texts))
            print(f"\r[{bar:<30}] {done}/{len(texts)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)


def _translate(args):
    from keras_s2s_attn.translation import open_translator

    if args.input is not None and args.texts:
        raise ValueError("Give TEXT arguments or --input FILE, not both.")
    texts = _read_lines(args.input) if args.input is not None else args.texts
    if not texts:
        raise ValueError(f"--input: {args.input!r} holds no lines to translate."
                         if args.input is not None else "Give at least one TEXT (or --input).")
    run = open_translator(args.model, beam_width=args.beam)
    if args.plot and "attention" not in run.output_names:
        raise ValueError(f"--plot: {args.model!r} was built without attention "
                         "(--attention none), so there is no attention map to draw.")
    batches = list(_in_batches(run, texts, args.batch_size, progress=args.input is not None))
    if args.plot:
        from keras_s2s_attn.plotting import plot_attention_maps

        rows = [(outputs, i) for outputs in batches for i in range(len(outputs["translation"]))]
        maps = [(outputs["attention"][i], outputs["source_tokens"][i],
                 outputs["target_tokens"][i], text) for (outputs, i), text in zip(rows, texts)
                if any(outputs["target_tokens"][i]) and any(outputs["source_tokens"][i])]
        if not maps:
            raise ValueError("Nothing to plot: every text was empty.")
        plot_attention_maps(maps, args.plot)
        print(f"attention map written to {args.plot}", file=sys.stderr)
    if args.json:
        from keras_s2s_attn.serving import format_outputs

        rows = [row for outputs in batches
                for row in format_outputs(outputs, row_format=True)["predictions"]]
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        for outputs in batches:
            for text in outputs["translation"]:
                print(text.decode("utf-8"))
    return 0


def _add_evaluate(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="score a model on a file of pairs",
        description="Translate the sources of a pairs file in batches and score the outputs "
                    "against the targets: JSON on stdout, a table on stderr.")
    parser.add_argument("model", help="saved_models/NAME, a version directory, or a run dir")
    parser.add_argument("pairs", help="TSV/CSV: source, target (more target columns with "
                                      "--references)")
    parser.add_argument("--metrics", default="bleu,chrf,wer,per,cer,exact",
                        help="comma-separated: bleu, chrf, wer, per, cer, exact")
    parser.add_argument("--beam", type=_positive_int, default=1)
    parser.add_argument("--batch-size", type=_positive_int, default=256)
    parser.add_argument("--references", action="store_true",
                        help="every column after the source is an acceptable reference")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args):
    from keras_s2s_attn.data import read_pairs
    from keras_s2s_attn.evaluation import evaluate_texts
    from keras_s2s_attn.translation import open_translator

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    sources, references = read_pairs(args.pairs, all_targets=args.references)
    references = [r if args.references else [r] for r in references]
    run = open_translator(args.model, beam_width=args.beam)
    hypotheses = [text.decode("utf-8")
                  for outputs in _in_batches(run, sources, args.batch_size, progress=True)
                  for text in outputs["translation"]]
    scores = evaluate_texts(hypotheses, references, metrics)
    for name, value in scores.items():
        shown = f"{value:.2f}" if name in ("bleu", "chrf") else f"{100 * value:.2f}%"
        print(f"{name:>6}  {shown}", file=sys.stderr)
    print(json.dumps({"model": args.model, "pairs": args.pairs, "sources": len(sources),
                      "beam": args.beam, **scores}))
    return 0


def _add_serve(subparsers):
    parser = subparsers.add_parser(
        "serve", help="serve saved_models/NAME over TF Serving's REST API",
        description="Serve the highest version of saved_models/NAME over TF Serving's REST API "
                    "(GET /v1/models/NAME, .../metadata, POST .../NAME:predict); a newer "
                    "version is picked up when it appears.")
    parser.add_argument("base_path", help="saved_models/NAME")
    parser.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--max-request-bytes", type=_positive_int, default=4 * 1024 * 1024)
    parser.set_defaults(handler=_serve)


def _serve(args):
    from keras_s2s_attn.serving import serve

    serve(args.base_path, host=args.host, port=args.port,
          max_request_bytes=args.max_request_bytes)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="s2s-attn", description="Sequence-to-sequence models with attention."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    _add_export(subparsers)
    _add_translate(subparsers)
    _add_evaluate(subparsers)
    _add_serve(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"s2s-attn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
