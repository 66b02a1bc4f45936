"""Export a trained model as a self-contained SavedModel for TF Serving.

The SavedModel takes raw strings and returns translations and attention
maps: tokenisation, greedy or beam-search decoding and detokenisation are in
the graph, the vocabularies are SavedModel assets, and no device is pinned,
so TF Serving answers with it on CPU or GPU as it is.

Layout (what TF Serving's file-system source expects)::

    saved_models/NAME/1/saved_model.pb
                        variables/...
                        assets/vocab.txt ...
                        assets.extra/tf_serving_warmup_requests

Signatures: `serving_default` (greedy) and `beam_search`, both with input
`text` (`tf.string`, shape `[None]`) and outputs `translation`, `score`,
`attention` `(batch, T, S)`, `source_tokens`, `target_tokens`, `truncated`.
"""

import functools
import json
import os
import re
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from keras_s2s_attn.checks import positive_int
from keras_s2s_attn.options import WEIGHT_DTYPES
from keras_s2s_attn.special_ids import NUM_RESERVED
from keras_s2s_attn.translation import Translator, is_run_dirs

SIGNATURES = ("serving_default", "beam_search")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# What was fixed at export time (beam width, lengths), for tools reading the SavedModel.
EXPORT_INFO_FILE = os.path.join("assets.extra", "s2s_attn.json")
# The tokenizers as `Tokenizer.save` writes them, for tools that need the model's
# units (evaluate's PER); the graph itself reads its vocabularies from assets/.
TOKENIZER_DIRS = {"source": os.path.join("assets.extra", "source_tokenizer"),
                  "target": os.path.join("assets.extra", "target_tokenizer")}
_TEMPORARY = re.compile(r"^\.tmp-export-([0-9]+)-")  # not \d: int("²") fails
# A version directory's name: a decimal integer of at most 18 digits (an int64, as
# TF Serving's versions), without leading zeros.
_VERSION_NAME = re.compile(r"0|[1-9][0-9]{0,17}")


def versions(export_dir):
    """The integer version directories under `export_dir`, ascending.

    Only names in ASCII digits are versions, as in TF Serving (`str.isdigit`
    also accepts `²` or `٣`, which `int` refuses), of at most 18 digits. A
    name with leading zeros (`007`) is skipped too: TF Serving would read
    version 7 from it, but its path is not `str(7)`.
    """
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if _VERSION_NAME.fullmatch(name)
                  and os.path.isdir(os.path.join(export_dir, name)))


def _remove_stale_temporaries(export_dir):
    """Deletes half-written exports left by processes that no longer run."""
    for name in os.listdir(export_dir):
        match = _TEMPORARY.match(name)
        if not match:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def default_warmup_texts(source_tokenizer, count=4):
    """A few in-vocabulary inputs of growing length, built from the source vocabulary."""
    vocabulary_size = source_tokenizer.vocabulary_size
    texts = []
    for length in (3, 8, 16, 32)[:count]:
        ids = NUM_RESERVED + np.arange(length) % max(1, vocabulary_size - NUM_RESERVED)
        texts.append(source_tokenizer.decode(ids[None].astype("int32"))[0].numpy().decode())
    return texts


def write_warmup_requests(path, model_name, texts):
    """Writes TF Serving warm-up requests: one predict request per signature.

    Args:
        path: The `assets.extra/tf_serving_warmup_requests` file to write.
        model_name: The model name TF Serving serves the model under.
        texts: The request batch.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature in SIGNATURES:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(texts, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def load_saved_model(path):
    """`tf.saved_model.load` with tensorflow-text's ops registered (NFKC, subwords)."""
    import tensorflow_text  # noqa: F401  (registers the custom ops the graph may use)

    return tf.saved_model.load(os.fspath(path))


def latest_version_dir(path):
    """A version directory: `path` itself if it holds a SavedModel, else its highest version."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise FileNotFoundError(f"No SavedModel at {path!r} and no version directory "
                                "(1/, 2/, ...) under it.")
    return os.path.join(path, str(found[-1]))


def load_exported_tokenizer(version_dir, side):
    """The `"source"` or `"target"` tokenizer saved with an export, or None for an
    export that predates them (exports before December 2026)."""
    from keras_s2s_attn.text import load_tokenizer

    path = os.path.join(version_dir, TOKENIZER_DIRS[side])
    return load_tokenizer(path) if os.path.isdir(path) else None


def read_export_info(version_dir):
    """The settings fixed at export (`Translator.settings()`), or {} for other SavedModels."""
    path = os.path.join(version_dir, EXPORT_INFO_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


# int4 stores one scale per column for each block of this many rows: one
# scale per column over a whole matrix costs too much accuracy at 4 bits.
INT4_GROUP_SIZE = 32


def quantize_int4(matrix, group_size=INT4_GROUP_SIZE):
    """4-bit symmetric quantisation of a `(rows, columns)` matrix, in row groups.

    Each column is cut into blocks of `group_size` rows (the last block padded
    with zeros); a block gets the float16 scale `s = max|w| / 7` and its
    weights the integers `q = round(w / s)` in [-7, 7], so `w ≈ q · s`.
    Two rows share a byte: row `2i` in the low and `2i + 1` in the high
    nibble, each stored as `q + 8`.

    Args:
        matrix: A float numpy array of rank 2.
        group_size: Rows per scale; even.

    Returns:
        `(packed, scales)`: uint8 `(padded_rows // 2, columns)` and float16
        `(padded_rows // group_size, columns)`.
    """
    rows, columns = matrix.shape
    padded = -(-rows // group_size) * group_size
    blocks = np.zeros((padded, columns), np.float32)
    blocks[:rows] = matrix
    blocks = blocks.reshape(padded // group_size, group_size, columns)
    scales = (np.abs(blocks).max(axis=1) / 7).astype(np.float16)
    scales[scales == 0] = 1
    quantised = np.clip(np.round(blocks / scales[:, None, :].astype(np.float32)), -7, 7)
    nibbles = (quantised.reshape(padded, columns) + 8).astype(np.uint8)
    return nibbles[0::2] | (nibbles[1::2] << 4), scales


def dequantize_int4(packed, scales, shape, dtype="float32"):
    """The graph's inverse of `quantize_int4`: a tensor of `shape` (rows first).

    `packed` and `scales` must have static shapes (variables do), so the
    unpacking is a handful of ops for each matrix.
    """
    groups, columns = scales.shape
    padded = 2 * packed.shape[0]
    packed = tf.cast(packed, tf.int32)
    # (padded // 2, 2, columns): rows 2i and 2i + 1, in order once reshaped.
    nibbles = tf.stack([tf.bitwise.bitwise_and(packed, 15), tf.bitwise.right_shift(packed, 4)],
                       axis=1) - 8
    values = (tf.reshape(tf.cast(nibbles, dtype), [groups, padded // groups, columns])
              * tf.expand_dims(tf.cast(scales, dtype), 1))
    values = tf.reshape(values, [padded, columns])
    rows = _rows(shape)
    return tf.reshape(values if rows == padded else values[:rows], shape)


def _rows(shape):
    """Rows of a weight seen as a matrix (all but its last axis); 0 for vectors."""
    return int(np.prod(shape[:-1])) if len(shape) >= 2 else 0


class _StoredWeights(tf.Module):
    """Copies of models' float weights in a smaller dtype, and a wrapper reading them.

    `"float16"` rounds every weight to float16. `"int8"` stores each matrix
    (kernels, embeddings: rank >= 2) as int8 with one float32 scale per output
    column, `w ≈ q · max|w[:, j]| / 127` (symmetric per-channel quantisation);
    `"int4"` stores matrices of 32 rows or more as 4-bit integers, two to a
    byte, with a float16 scale per column for every 32 rows
    (`quantize_int4`). Vectors (biases) and smaller matrices (GRU biases of
    shape (2, 3·units)) are stored as float16.

    `wrap(function)` runs `function` with every float variable mapped to its
    copy turned back into the variable's own dtype (`keras.StatelessScope`),
    so a graph traced from it captures only the copies: the SavedModel
    stores the small weights and computes in the dtype the model was trained
    in.
    """

    def __init__(self, models, dtype):
        super().__init__()
        # Keyed by identity: models sharing a variable store it once, in order.
        self._originals = list({id(v): v for model in models for v in model.weights
                                if "float" in v.dtype}.values())
        self._dtype = dtype
        self.weights, self.scales = [], {}
        with tf.init_scope():
            for index, variable in enumerate(self._originals):
                value = tf.convert_to_tensor(variable.value)
                if dtype == "int8" and value.shape.rank >= 2:
                    scale = tf.reduce_max(tf.abs(value), axis=list(range(value.shape.rank - 1)))
                    scale = tf.where(scale > 0, scale / 127.0, tf.ones_like(scale))
                    self.scales[str(index)] = tf.Variable(scale, trainable=False)
                    stored = tf.cast(tf.round(value / scale), tf.int8)
                elif dtype == "int4" and _rows(value.shape) >= INT4_GROUP_SIZE:
                    matrix = value.numpy().reshape(-1, value.shape[-1])
                    stored, scale = quantize_int4(matrix)
                    self.scales[str(index)] = tf.Variable(scale, trainable=False)
                else:
                    stored = tf.cast(value, "float16" if dtype.startswith("int") else dtype)
                self.weights.append(tf.Variable(stored, trainable=False))

    def _value(self, index, variable):
        stored, scale = self.weights[index], self.scales.get(str(index))
        if scale is None:
            return tf.cast(stored, variable.dtype)
        if self._dtype == "int4":
            return dequantize_int4(stored, scale, tuple(variable.shape), variable.dtype)
        return tf.cast(stored, variable.dtype) * tf.cast(scale, variable.dtype)

    @tf.function(input_signature=[])
    def values(self):
        """Every weight turned back into its variable's dtype, in order.

        One function, so the SavedModel stores the unpacking once for all
        signatures rather than once in each.
        """
        return [self._value(i, v) for i, v in enumerate(self._originals)]

    def wrap(self, function):
        def call(*args, **kwargs):
            with keras.StatelessScope(state_mapping=list(zip(self._originals, self.values()))):
                return function(*args, **kwargs)

        return call


def _signature_functions(translator, stored=None):
    """`{signature name: function(text) -> outputs}`, sharing the string parts.

    Each signature's numeric core (`Translator.decode_graph`: the model's
    encoder and one search loop, every read of the weights, through `stored`
    when the weights are stored small) is traced on its own; tokenisation and
    detokenisation are traced once, called by all. No `tf.cond` joins the
    searches: Grappler's dependency optimizer cannot sort a graph with while
    loops inside a cond, and logs two errors on every first call.
    """
    ids, texts = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.string)
    rows, flags = tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.bool)
    # Concrete functions traced from explicit specs: each is traced once, and the
    # SavedModel can describe their arguments (a *args wrapper it cannot).
    encode = tf.function(translator.encode_text).get_concrete_function(texts)
    finish = tf.function(translator.finish).get_concrete_function(
        ids, flags, flags, ids, rows, tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([None, None, None], tf.float32))

    def signature(core):
        def translate(text):
            source_ids, truncated, empty = encode(text)
            return finish(source_ids, truncated, empty, *core(source_ids))

        return translate

    functions = {}
    for name, beam in zip(SIGNATURES, (False, True)):
        core = functools.partial(translator.decode_graph, beam=beam)
        core = tf.function(stored.wrap(core) if stored is not None else core)
        functions[name] = signature(core.get_concrete_function(ids))
    return functions


def export_saved_model(model_or_run_dir, export_dir="saved_models/model", version=None, *,
                       source_tokenizer=None, target_tokenizer=None, which="best",
                       warmup_texts=None, weights_dtype="float32", **translator_options):
    """Exports a model with its tokenizers as `export_dir/<version>/`.

    The SavedModel is written to a temporary directory beside the target and
    renamed into place, so TF Serving, which polls `export_dir`, never sees a
    half-written version.

    Args:
        model_or_run_dir: A run directory from `train` (its best model by
            default, see `which`), or a model (then pass both tokenizers).
            A list of run directories (or of models) exports their ensemble:
            one signature decoding with the mean of their probabilities.
        export_dir: The model's base path, `saved_models/NAME`; NAME is the
            model name in the warm-up requests.
        version: An integer version; default the next one after the highest
            present (1 for a new base path).
        source_tokenizer, target_tokenizer: With a model, its tokenizers.
        which: With a run directory, `"best"` or `"final"`.
        warmup_texts: Inputs for the warm-up requests; default a few built
            from the source vocabulary.
        weights_dtype: `"float32"`; `"float16"` to store the weights at half
            the size, `"int8"` at about a quarter (matrices quantised per
            output column, biases in float16) or `"int4"` at about a seventh
            (4-bit matrices with a scale per column and 32 rows). The graph
            turns them back into float32 and computes as trained, so only the
            rounding of the weights separates its outputs from the model's.
        **translator_options: `Translator` options: `max_source_length`,
            `max_output_length`, `beam_width`, `length_penalty_weight`,
            `coverage_penalty_weight`.

    Returns:
        The path of the new version directory.

    Raises:
        FileExistsError: If that version already exists.

    Example:

    >>> export_saved_model("runs/g2p", "saved_models/g2p_en")
    'saved_models/g2p_en/1'
    """
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"`weights_dtype` must be one of {WEIGHT_DTYPES}; got "
                         f"{weights_dtype!r}.")
    if is_run_dirs(model_or_run_dir):
        translator = Translator.from_run(model_or_run_dir, which=which, **translator_options)
    else:
        if source_tokenizer is None or target_tokenizer is None:
            raise ValueError("Exporting a model needs its `source_tokenizer` and "
                             "`target_tokenizer` (or give a run directory instead).")
        translator = Translator(model_or_run_dir, source_tokenizer, target_tokenizer,
                                **translator_options)
    export_dir = os.fspath(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    _remove_stale_temporaries(export_dir)
    if version is None:
        version = (versions(export_dir) or [0])[-1] + 1
    positive_int(version, "version")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final!r} exists already: pick another version, or None for "
                              "the next one.")

    archive = keras.export.ExportArchive()
    # The endpoints' own variables are saved through them. Tracking the model
    # as well would save each variable a second time (Keras 3.15 saves the
    # Keras variable and the tf.Variable under it as two objects), doubling
    # the SavedModel. The tokenizers are tracked for their lookup tables.
    archive.track(translator.source_tokenizer)
    archive.track(translator.target_tokenizer)
    stored = None
    if weights_dtype != "float32":
        stored = _StoredWeights(translator.models, weights_dtype)
        archive.track(stored)
    spec = [tf.TensorSpec([None], tf.string, name="text")]
    for name, function in _signature_functions(translator, stored).items():
        archive.add_endpoint(name, function, input_signature=spec)

    temporary = os.path.join(export_dir, f".tmp-export-{os.getpid()}-{time.time_ns()}")
    try:
        archive.write_out(temporary, verbose=False)
        texts = warmup_texts or default_warmup_texts(translator.source_tokenizer)
        write_warmup_requests(os.path.join(temporary, WARMUP_FILE),
                              os.path.basename(os.path.normpath(export_dir)), texts)
        with open(os.path.join(temporary, EXPORT_INFO_FILE), "w") as handle:
            json.dump(translator.settings(), handle, indent=2)
        translator.source_tokenizer.save(os.path.join(temporary, TOKENIZER_DIRS["source"]))
        translator.target_tokenizer.save(os.path.join(temporary, TOKENIZER_DIRS["target"]))
        os.rename(temporary, final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final
