"""Export a trained model as a self-contained SavedModel for TF Serving.

The SavedModel takes raw strings and returns translations and attention
maps: tokenisation, decoding and detokenisation are in the graph, the
vocabularies are SavedModel assets, and no device is pinned, so TF Serving
answers with it on CPU or GPU as it is. The layout and the files beside the
SavedModel are `saved_models.py`'s.

One signature per entry of the `Translator`'s strategies, by default
`serving_default` (greedy), `beam_search` (n-best) and `sample`; each takes
`text` (`tf.string`, shape `[None]`) plus its strategy's scalar request
inputs (sampling: `temperature`, `top_k`, `top_p`, `seed`), and returns
`translation`, `score`, `attention` `(batch, T, S)` (absent without
attention), `source_tokens`, `target_tokens`, `truncated`, `unknown_tokens`
and, for beam and sampling, `translations` and `scores` `(batch, K)`.
"""

from keras_s2s_attn.backends import require_tensorflow_backend

require_tensorflow_backend(__name__)  # a clear message before TensorFlow is imported

import json
import os
import re
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from keras_s2s_attn import runs
from keras_s2s_attn.checks import positive_int
from keras_s2s_attn.graphs import graph_function
from keras_s2s_attn.options import WEIGHT_DTYPES
from keras_s2s_attn.quantization import StoredWeights
from keras_s2s_attn.saved_models import (
    EXPORT_INFO_FILE,
    TOKENIZER_DIRS,
    WARMUP_FILE,
    versions,
)
from keras_s2s_attn.special_ids import NUM_RESERVED
from keras_s2s_attn.translation import Translator, column_buckets

_TEMPORARY = re.compile(r"^\.tmp-export-([0-9]+)-")  # not \d: int("²") fails


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


def _vocabulary_text(source_tokenizer, length):
    """An in-vocabulary input of about `length` tokens."""
    vocabulary_size = source_tokenizer.vocabulary_size
    ids = NUM_RESERVED + np.arange(length) % max(1, vocabulary_size - NUM_RESERVED)
    return source_tokenizer.decode(ids[None].astype("int32"))[0].numpy().decode()


def default_warmup_texts(source_tokenizer, count=4):
    """A few in-vocabulary inputs of growing length, built from the source vocabulary."""
    return [_vocabulary_text(source_tokenizer, length) for length in (3, 8, 16, 32)[:count]]


def _warmup_batches(translator, texts):
    """`(signature, strategy, texts)` of each warm-up request: `texts` for every
    signature and, for an XLA export, a lone input of each source-length bucket
    for the first signature (what single requests most often use), so that
    those compilations happen when the model loads rather than at a client's
    first request."""
    batches = [(signature, strategy, texts) for signature, strategy in
               translator.strategies.items()]
    if translator.jit_compile:
        signature, strategy = next(iter(translator.strategies.items()))
        batches += [(signature, strategy, [_vocabulary_text(translator.source_tokenizer, size)])
                    for size in column_buckets(translator.max_source_length)]
    return batches


def write_warmup_requests(path, model_name, texts, translator):
    """Writes TF Serving warm-up requests: one predict request per signature
    (and with XLA, one per source-length bucket, see `_warmup_batches`).

    Args:
        path: The `assets.extra/tf_serving_warmup_requests` file to write.
        model_name: The model name TF Serving serves the model under.
        texts: The request batch.
        translator: The exported `Translator`: its signatures, and their
            request inputs at their defaults.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, strategy, batch in _warmup_batches(translator, texts):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            for name, (dtype, default) in strategy.request_inputs().items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(default, dtype=dtype))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _input_specs(strategy):
    """The signature's inputs: `text`, then the strategy's scalar request inputs."""
    return [tf.TensorSpec([None], tf.string, name="text")] + [
        tf.TensorSpec([], dtype, name=name)
        for name, (dtype, _) in strategy.request_inputs().items()]


def _signature_functions(translator, stored=None):
    """`{signature name: (function(text, *inputs) -> outputs, input specs)}`.

    Each signature's numeric core (`Translator.decode_graph`: the model's
    encoder and one search loop, every read of the weights, through `stored`
    when the weights are stored small; compiled with XLA when the translator
    has `jit_compile`) is traced on its own; tokenisation and detokenisation
    are traced once, called by all. No `tf.cond` joins the searches:
    Grappler's dependency optimizer cannot sort a graph with while loops
    inside a cond, and logs two errors on every first call.
    """
    ids, texts = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.string)
    flags, limit = tf.TensorSpec([None], tf.bool), tf.TensorSpec([], tf.int32)
    results = (tf.TensorSpec([None, None, None], tf.int32), tf.TensorSpec([None, None], tf.int32),
               tf.TensorSpec([None, None], tf.float32),
               tf.TensorSpec([None, None, None, None], tf.float32))
    # Concrete functions traced from explicit specs: each is traced once, and the
    # SavedModel can describe their arguments.
    encode = graph_function(translator.encode_text).get_concrete_function(texts)
    finish = {lists: graph_function(translator.finish).get_concrete_function(
        ids, flags, flags, *results, lists=lists) for lists in (False, True)}

    def signature(core, names, lists):
        def translate(text, *values):
            source_ids, truncated, empty = encode(text)
            return finish[lists](source_ids, truncated, empty, *translator.search_graph(
                core, source_ids, **dict(zip(names, values))))

        return translate

    functions = {}
    for name, strategy in translator.strategies.items():
        specs = _input_specs(strategy)

        def core(source_ids, step_limit, _name=name, **inputs):
            return translator.decode_graph(_name, source_ids, step_limit, **inputs)

        core = graph_function(stored.wrap(core) if stored is not None else core,
                              jit_compile=translator.jit_compile)
        concrete = core.get_concrete_function(ids, limit,
                                              **{spec.name: spec for spec in specs[1:]})
        functions[name] = (signature(concrete, [spec.name for spec in specs[1:]],
                                     strategy.lists_results), specs)
    return functions


def _translator(model_or_run_dir, source_tokenizer, target_tokenizer, which, options):
    """The `Translator` to export: of run directories, or of models and their tokenizers."""
    if runs.is_run_dirs(model_or_run_dir):
        return Translator.from_run(model_or_run_dir, which=which, **options)
    if source_tokenizer is None or target_tokenizer is None:
        raise ValueError("Exporting a model needs its `source_tokenizer` and "
                         "`target_tokenizer` (or give a run directory instead).")
    return Translator(model_or_run_dir, source_tokenizer, target_tokenizer, **options)


def _version_dir(export_dir, version):
    """The new version's path (the next version when `version` is None); it must not exist."""
    os.makedirs(export_dir, exist_ok=True)
    _remove_stale_temporaries(export_dir)
    if version is None:
        version = (versions(export_dir) or [0])[-1] + 1
    positive_int(version, "version")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final!r} exists already: pick another version, or None for "
                              "the next one.")
    return final


def _archive(translator, weights_dtype):
    """A Keras `ExportArchive` with one endpoint per signature."""
    archive = keras.export.ExportArchive()
    # The endpoints' own variables are saved through them. Tracking the model
    # as well would save each variable a second time (Keras 3.15 saves the
    # Keras variable and the tf.Variable under it as two objects), doubling
    # the SavedModel. The tokenizers are tracked for their lookup tables.
    archive.track(translator.source_tokenizer)
    archive.track(translator.target_tokenizer)
    stored = None
    if weights_dtype != "float32":
        stored = StoredWeights(translator.models, weights_dtype)
        archive.track(stored)
    else:  # smaller weights keep computing the tables: stored, they would cost size
        archive.track(translator.stepper.keep_tables())
    for name, (function, specs) in _signature_functions(translator, stored).items():
        archive.add_endpoint(name, function, input_signature=specs)
    return archive


def _write_version(archive, translator, temporary, model_name, warmup_texts):
    """Writes the SavedModel and the files beside it into `temporary`."""
    archive.write_out(temporary, verbose=False)
    texts = warmup_texts or default_warmup_texts(translator.source_tokenizer)
    write_warmup_requests(os.path.join(temporary, WARMUP_FILE), model_name, texts, translator)
    with open(os.path.join(temporary, EXPORT_INFO_FILE), "w") as handle:
        json.dump(translator.settings(), handle, indent=2)
    translator.source_tokenizer.save(os.path.join(temporary, TOKENIZER_DIRS["source"]))
    translator.target_tokenizer.save(os.path.join(temporary, TOKENIZER_DIRS["target"]))


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
            every signature decoding with the mean of their probabilities.
        export_dir: The model's base path, `saved_models/NAME`; NAME is the
            model name in the warm-up requests.
        version: An integer version; default the next one after the highest
            present (1 for a new base path).
        source_tokenizer, target_tokenizer: With a model, its tokenizers.
        which: With a run directory, which of its models: `"best"`, `"final"`
            or `"averaged"` (`runs.load_run`).
        warmup_texts: Inputs for the warm-up requests; default a few built
            from the source vocabulary.
        weights_dtype: `"float32"`; `"float16"` to store the weights at half
            the size, `"int8"` at about a quarter (matrices quantised per
            output column, biases in float16) or `"int4"` at about a seventh
            (4-bit matrices with a scale per column and 32 rows). The graph
            turns them back into float32 and computes as trained, so only the
            rounding of the weights separates its outputs from the model's.
        **translator_options: `Translator` options: `strategies` (one
            signature each; default `default_strategies()`),
            `max_source_length`, `max_output_length`, `replace_unknown`,
            `jit_compile` (the numeric core compiled with XLA, once per
            bucket of batch shapes; TF Serving serves it on CPU with
            `--xla_cpu_compilation_enabled=true`).

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
    translator = _translator(model_or_run_dir, source_tokenizer, target_tokenizer, which,
                             translator_options)
    export_dir = os.fspath(export_dir)
    final = _version_dir(export_dir, version)
    archive = _archive(translator, weights_dtype)
    temporary = os.path.join(export_dir, f".tmp-export-{os.getpid()}-{time.time_ns()}")
    try:
        _write_version(archive, translator, temporary,
                       os.path.basename(os.path.normpath(export_dir)), warmup_texts)
        os.rename(temporary, final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final
