"""The `s2s-attn` command: a thin layer over the Python API."""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    parser.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    parser.add_argument("--attention", default="additive",
                        help="additive, dot, general, concat, scaled_dot, location, or none")
    parser.add_argument("--style", default="bahdanau", choices=["bahdanau", "luong"])
    parser.add_argument("--no-input-feeding", action="store_true")
    parser.add_argument("--window", type=_positive_int, help="local attention half-width D")
    parser.add_argument("--window-mode", default="local-p", choices=["local-m", "local-p"])
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
        units=args.units, encoder_layers=args.layers, decoder_layers=args.layers,
        cell_type=args.cell, attention=None if args.attention == "none" else args.attention,
        style=args.style, input_feeding=not args.no_input_feeding, window=args.window,
        window_mode=args.window_mode, dropout=args.dropout,
        max_source_length=args.max_source_length, max_target_length=args.max_target_length,
        on_bad_row=args.on_bad_row, source_column=args.source_column,
        target_column=args.target_column, header=args.header or None, seed=args.seed,
        strategy=args.strategy, resume=args.resume,
    )
    print(json.dumps(summary, indent=2))
    return 1 if summary["stopped"] else 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="s2s-attn", description="Sequence-to-sequence models with attention."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"s2s-attn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
