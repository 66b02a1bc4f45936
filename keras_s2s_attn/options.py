"""Option groups and their defaults: one home for each (plain Python, no TensorFlow).

The command line builds its flags and defaults from these classes, so that
`s2s-attn --help` needs no TensorFlow; the Python API takes the same names.
"""

import dataclasses
import os

# The models a run directory holds: the best epoch's (by --select-by), after the last
# epoch, and the mean of the last epochs' weights (`s2s-attn average`); runs.py names
# their files.
RUN_MODELS = ("best", "final", "averaged")
LR_DECAYS = ("plateau", "cosine", "none")  # `train(lr_decay=...)`; True, False: plateau, none
LOWER_SIDES = ("source", "target")  # `train(lower=...)`: one side alone, or True/False
# How the export may store the weights (`export_saved_model(weights_dtype=...)`).
WEIGHT_DTYPES = ("float32", "float16", "int8", "int4")
# The names the layers and tokenizers accept: plain data, so the command line offers
# them without importing Keras (the layers and `make_tokenizer` check against them).
SCORES = ("dot", "general", "concat", "additive", "scaled_dot", "location")
WINDOW_MODES = ("local-m", "local-p")
STYLES = ("bahdanau", "luong")
CELL_TYPES = ("gru", "lstm")
TOKENIZER_KINDS = ("char", "word", "space", "wordpiece", "sentencepiece")


def _help(text, flag=None, choices=None):
    """A dataclass field's command-line help, its flag when not `--field-name`, and the
    values it accepts."""
    return {"help": text, **({"flag": flag} if flag else {}),
            **({"choices": choices} if choices else {})}


def flag_name(field):
    """The command-line flag of a dataclass field: its own, else `--field-name`."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """The model's options and defaults: `build_seq2seq_model` and `train` take them
    as keyword arguments, `s2s-attn train` as flags, and a run's config.json records
    them under "model". The layers check the values."""

    embedding_dim: int = dataclasses.field(
        default=256, metadata=_help("embedding size, source and target"))
    units: int = dataclasses.field(
        default=256, metadata=_help("RNN units (each direction of the encoder, the decoder)"))
    encoder_layers: int = dataclasses.field(
        default=1, metadata=_help("bidirectional encoder layers (or --layers)"))
    decoder_layers: int = dataclasses.field(
        default=1, metadata=_help("stacked decoder layers (or --layers)"))
    cell_type: str = dataclasses.field(
        default="gru", metadata=_help("RNN cell", "--cell", CELL_TYPES))
    attention: str = dataclasses.field(
        default="additive",
        metadata=_help("attention score; none for the plain encoder-decoder", None,
                       SCORES + ("none",)))
    style: str = dataclasses.field(
        default="bahdanau",
        metadata=_help("bahdanau: attend with the previous state, then step; luong: step, "
                       "then attend", None, STYLES))
    input_feeding: bool = dataclasses.field(
        default=True, metadata=_help("turn off Luong's input feeding", "--no-input-feeding"))
    window: int = dataclasses.field(
        default=None, metadata=_help("local attention half-width D (default: global)"))
    window_mode: str = dataclasses.field(
        default="local-p", metadata=_help("local attention's window", None, WINDOW_MODES))
    normalize_attention: bool = dataclasses.field(
        default=False,
        metadata=_help("weight-normalise the additive score (--attention additive)"))
    dropout: float = dataclasses.field(
        default=0.1, metadata=_help("dropout rate of the embeddings and RNN outputs"))


@dataclasses.dataclass(frozen=True)
class ServingOptions:
    """What `s2s-attn serve` (`keras_s2s_attn.serving.serve`) takes, and its defaults.

    Every field is a `--flag` of `s2s-attn serve` (underscores as dashes;
    `--flag/--no-flag` for a switch), with the field's default and help;
    `ServingOptions(**changes)` checks the values and raises `ValueError`
    naming the one that is wrong. The batching fields are named as TF
    Serving's `batching_parameters.txt` fields.
    """

    host: str = dataclasses.field(
        default="127.0.0.1",
        metadata=_help("address to listen on; the default lets only this machine in"))
    port: int = dataclasses.field(
        default=8501, metadata=_help("TCP port; 0 picks a free one and prints it"))
    max_request_bytes: int = dataclasses.field(
        default=4 * 1024 * 1024,
        metadata=_help("larger request bodies (after Content-Encoding) are refused with 413"))
    max_batch_size: int = dataclasses.field(
        default=1024,
        metadata=_help("most instances in one predict request (more: 400), and in one batch "
                       "of merged requests"))
    enable_batching: bool = dataclasses.field(
        default=True,
        metadata=_help("merge concurrent predict requests into batches, one signature call "
                       "each, as TF Serving's --enable_batching"))
    batch_timeout_micros: int = dataclasses.field(
        default=5000,
        metadata=_help("microseconds a free batch thread may wait, after a request arrives, "
                       "for more to fill its batch while another batch runs (a request that "
                       "finds no batch running starts at once); 0: never wait"))
    max_enqueued_batches: int = dataclasses.field(
        default=10,
        metadata=_help("batches' worth of instances (times --max-batch-size) that may wait; "
                       "a request past them is answered 503"))
    num_batch_threads: int = dataclasses.field(
        default=2,
        metadata=_help("threads running batches (signature calls) at once; about the number "
                       "of cores, as TF Serving's guide advises on CPU (the cores are shared "
                       "out among their calls: --tensorflow-intra-op-parallelism)"))
    tensorflow_intra_op_parallelism: int = dataclasses.field(
        default=0,
        metadata=_help("threads one TensorFlow op may use, as TF Serving's flag of that "
                       "name; 0: the cores shared out among --num-batch-threads (at least one "
                       "each), where TF Serving's 0 lets every op use all of them"))
    max_connections: int = dataclasses.field(
        default=256,
        metadata=_help("open connections at once; a connection past them is answered 503 "
                       "and closed"))
    read_timeout: float = dataclasses.field(
        default=5.0,
        metadata=_help("seconds a request body may take to arrive (then 408 and the "
                       "connection is closed), and to drain an unread one after an error"))
    keepalive_timeout: float = dataclasses.field(
        default=15.0,
        metadata=_help("seconds a connection may sit idle, or spend sending its request line "
                       "and headers, before it is closed"))
    request_timeout: float = dataclasses.field(
        default=30.0,
        metadata=_help("seconds a predict request may wait for its batch and run (then 504), "
                       "as TF Serving's --rest_api_timeout_in_ms"))
    float_decimals: int = dataclasses.field(
        default=4, metadata=_help("decimals of the floats in predict answers"))
    poll_seconds: float = dataclasses.field(
        default=1.0, metadata=_help("how often to look for a new version directory"))
    ui: bool = dataclasses.field(
        default=True,
        metadata=_help("serve the attention explorer, a web page at / that calls the REST "
                       "API (--no-ui: the API only)"))

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be from 0 to 65535 (0: any free port); got {self.port}")
        for name in ("max_request_bytes", "max_batch_size", "max_connections",
                     "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)}")
        for name in ("read_timeout", "keepalive_timeout", "request_timeout", "poll_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds; got "
                                 f"{getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must be 0 or a positive number of "
                             f"microseconds; got {self.batch_timeout_micros}")
        if self.batch_timeout_micros >= 1e6 * self.request_timeout:
            raise ValueError(f"batch_timeout_micros ({self.batch_timeout_micros}) must be less "
                             f"than request_timeout ({self.request_timeout:g} s): a request "
                             "waiting for its batch to fill would time out")
        if not 0 <= self.float_decimals <= 17:
            raise ValueError(f"float_decimals must be from 0 to 17; got {self.float_decimals}")
        if self.tensorflow_intra_op_parallelism < 0:
            raise ValueError("tensorflow_intra_op_parallelism must be 0 (the cores shared out "
                             "among the batch threads) or a number of threads; got "
                             f"{self.tensorflow_intra_op_parallelism}")

    def intra_op_threads(self, cores=None):
        """The threads a TensorFlow op may use: `tensorflow_intra_op_parallelism`, or with
        0 the `cores` (default: those this process may run on) over `num_batch_threads`.

        Batches run side by side on the batch threads; each op using every core
        made them contend for the cores (measured in the README, "Batching")."""
        if self.tensorflow_intra_op_parallelism:
            return self.tensorflow_intra_op_parallelism
        if cores is None:
            cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
        return max(1, cores // self.num_batch_threads)


@dataclasses.dataclass(frozen=True)
class BeamOptions:
    """Beam search's options and defaults (`BeamSearch`, `s2s-attn translate --beam`)."""

    beam_width: int = dataclasses.field(
        default=4, metadata=_help("beam width: hypotheses kept per input", "--beam"))
    length_penalty_weight: float = dataclasses.field(
        default=0.6, metadata=_help("GNMT length penalty α (0: none)", "--length-penalty"))
    coverage_penalty_weight: float = dataclasses.field(
        default=0.0, metadata=_help("GNMT coverage penalty β (0: none)", "--coverage-penalty"))
    num_results: int = dataclasses.field(
        default=None, metadata=_help("best hypotheses returned per input, at most the beam "
                                     "width (translate and evaluate: default 1; the export and "
                                     "BeamSearch: default all of the beam)", "--n-best"))


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """Sampling's options and defaults (`SamplingSearch`, `s2s-attn translate --sample`)."""

    temperature: float = dataclasses.field(
        default=1.0, metadata=_help("divides the log-probabilities; 0: the most likely token"))
    top_k: int = dataclasses.field(
        default=0, metadata=_help("sample among the k most likely tokens (0: all)"))
    top_p: float = dataclasses.field(
        default=1.0, metadata=_help("sample within the smallest set of most likely tokens "
                                    "whose probability reaches p (1: all)"))
    num_samples: int = dataclasses.field(
        default=1, metadata=_help("samples drawn per input"))
    seed: int = dataclasses.field(
        default=-1, metadata=_help("random seed, for reproducible samples (-1: a fresh one "
                                   "each call)"))
