"""A local server that speaks TF Serving's REST API over a SavedModel base path.

For quick local use and tests; production goes to TF Serving itself, and the
same client code works against both. Built on aiohttp; concurrent predict
requests are merged into batches, one signature call each, run in batch
threads (`keras_s2s_attn.batching`), as TF Serving's `--enable_batching` does.

    GET  /                                        the attention explorer (a web page; --no-ui)
    GET  /v1/models/NAME[/versions/N]             model version status
    GET  /v1/models/NAME[/versions/N]/metadata    signature definitions
    POST /v1/models/NAME[/versions/N]:predict     {"instances": [...]} or {"inputs": ...}

The highest integer version under the base path that loads is served, once
its `assets.extra/tf_serving_warmup_requests` have run. A newer version that
appears is loaded in the background and swapped in when it is ready; one that
fails to load is logged once and shown in the status with its error, as TF
Serving shows it. Every request has a bounded cost: the limits and timeouts
are `keras_s2s_attn.options.ServingOptions`.
"""

from keras_s2s_attn.backends import require_tensorflow

require_tensorflow(__name__)  # a clear message before TensorFlow is imported

import asyncio
import base64
import functools
import html
import importlib.resources
import json
import logging
import os
import re
import reprlib
import resource
import signal
import socket
import sys
import threading
import zlib
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import error_codes_pb2

from keras_s2s_attn.batching import Batcher, QueueFull
from keras_s2s_attn.saved_models import (
    WARMUP_FILE,
    exported_strategies,
    load_saved_model,
    read_export_info,
    versions,
)
from keras_s2s_attn.options import ServingOptions

log = logging.getLogger("keras_s2s_attn.serving")
access_log = logging.getLogger("keras_s2s_attn.serving.access")
# aiohttp's own messages about connections (malformed requests, lost clients).
http_log = logging.getLogger("keras_s2s_attn.serving.http")

# TF Serving reads at most this many warm-up records (WarmupConsts::kMaxNumRecords).
MAX_WARMUP_RECORDS = 1000
# Open files the process needs besides its connections: the model, TensorFlow,
# the listen backlog (a burst of connections may pass the limit by that much).
_SPARE_FILES = 512
# Content-Encoding of a request body -> zlib's wbits to decode it.
_CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                      "deflate": zlib.MAX_WBITS}


class RequestError(Exception):
    """A request the client got wrong: answered with its HTTP status and message.

    `close` also closes the connection after the answer (its body was not
    read to the end).
    """

    def __init__(self, message, status=400, close=False):
        super().__init__(message)
        self.status = status
        self.close = close


def _short(value):
    """A client's value in a message, cut short (long strings and lists, deep nesting)."""
    return reprlib.repr(value)


def _one_line(error):
    """An exception's message on one line (TensorFlow's often span several)."""
    return " ".join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------------- versions
def _fingerprint(path):
    """What a version directory holds: `(file, size, mtime)` of each file, sorted."""
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:  # removed meanwhile: the next poll sees the change
                continue
            files.append((os.path.relpath(os.path.join(root, name), path), stat.st_size,
                          stat.st_mtime_ns))
    return tuple(sorted(files))


def _error_code(error):
    """TF Serving's `error_code` for a load failure: TensorFlow's code, else UNKNOWN."""
    if isinstance(error, tf.errors.OpError):
        return error_codes_pb2.Code.Name(error.error_code)
    return "UNKNOWN"


def run_warmup_requests(model, version_dir):
    """Runs a version's `assets.extra/tf_serving_warmup_requests`, as TF Serving does.

    Each record is a `PredictionLog` whose predict request is run once on its
    signature, so that the first real request finds the graph ready.

    Args:
        model: The loaded SavedModel.
        version_dir: Its directory.

    Returns:
        How many requests ran: 0 without the file.

    Raises:
        ValueError: For more than `MAX_WARMUP_RECORDS` records, a record that is
            not a predict request, or one naming a signature the model lacks.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(version_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path):
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise ValueError(f"{WARMUP_FILE} holds more than {MAX_WARMUP_RECORDS} records.")
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if entry.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{WARMUP_FILE}: record {count} is a "
                             f"{entry.WhichOneof('log_type')}; this server runs predict "
                             "requests only.")
        request = entry.predict_log.request
        signature = request.model_spec.signature_name or "serving_default"
        if signature not in model.signatures:
            raise ValueError(f"{WARMUP_FILE}: record {count} asks for signature "
                             f"{signature!r}; the model has {sorted(model.signatures)}.")
        model.signatures[signature](**{name: tf.constant(tf.make_ndarray(tensor))
                                       for name, tensor in request.inputs.items()})
    return count


def request_defaults(version_dir):
    """`{signature: {input: default}}`: what the export baked in for the scalar inputs
    (sampling's temperature, ...), filled in when a request leaves them out."""
    signatures = read_export_info(version_dir).get("signatures", {})
    return {name: entry.get("inputs", {}) for name, entry in signatures.items()}


# Strategies whose answer for a row does not depend on the other rows of its batch: only
# requests for their signatures are merged (a sample depends on the batch it is drawn in).
_ROW_INDEPENDENT_STRATEGIES = ("greedy", "beam")


def mergeable_signatures(version_dir):
    """The signatures whose requests may share a batch: those of row-independent strategies."""
    return frozenset(name for name, (strategy, _) in exported_strategies(version_dir).items()
                     if strategy in _ROW_INDEPENDENT_STRATEGIES)


class Servable(NamedTuple):
    """A loaded version, as requests use it."""

    version: int
    model: object  # the SavedModel
    defaults: dict  # {signature: {input: default}} (`request_defaults`)
    mergeable: frozenset  # signatures whose requests may share a batch


class ModelBasePath:
    """The versions of one model: the newest that loads is served, swapped atomically.

    A version that fails to load (or to warm up) is logged once, reported by
    `status` as TF Serving reports it (state END with its error), and tried
    again only when its files change.

    Args:
        base_path: `saved_models/NAME`, holding integer version directories.

    Raises:
        FileNotFoundError: If no version there loads.
    """

    def __init__(self, base_path):
        self.base_path = os.fspath(base_path)
        if not os.path.isdir(self.base_path):
            raise FileNotFoundError(f"No model base path at {self.base_path!r}")
        self.name = os.path.basename(os.path.normpath(self.base_path))
        self._lock = threading.Lock()
        self._served = None  # a Servable
        self._failed = {}  # version -> (fingerprint, error code, message)
        self.refresh()
        if self._served is None:
            raise FileNotFoundError(self._nothing_served())

    def _nothing_served(self):
        if not self._failed:
            return (f"{self.base_path!r} holds no version directory (1/, 2/, ...): export a "
                    "model there first (s2s-attn export).")
        failures = "; ".join(f"version {version}: {message}"
                             for version, (_, _, message) in sorted(self._failed.items()))
        return f"No version under {self.base_path!r} loads: {failures}"

    def refresh(self):
        """Serves the newest version above the served one that loads, if there is one."""
        present = versions(self.base_path)
        with self._lock:
            self._failed = {v: failure for v, failure in self._failed.items() if v in present}
        served = self._served.version if self._served else -1
        for version in reversed(present):
            if version <= served or self._load(version):
                return

    def _load(self, version):
        """Loads and warms up one version and serves it; False if it fails (logged once)."""
        path = os.path.join(self.base_path, str(version))
        fingerprint = _fingerprint(path)
        with self._lock:
            failure = self._failed.get(version)
        if failure and failure[0] == fingerprint:
            return False
        try:
            model = load_saved_model(path)
            warmups = run_warmup_requests(model, path)
            servable = Servable(version, model, request_defaults(path),
                                mergeable_signatures(path))
        except Exception as error:  # noqa: BLE001 (a bad version must not stop serving)
            with self._lock:
                self._failed[version] = (fingerprint, _error_code(error), _one_line(error))
            log.error("version %d of %s failed to load: %s", version, self.name,
                      _one_line(error))
            return False
        with self._lock:
            self._failed.pop(version, None)
            self._served = servable
        log.info("serving %s version %d (warmed up with %d requests from %s)", self.name,
                 version, warmups, WARMUP_FILE)
        return True

    def get(self, version=None):
        """The served `Servable`; a version other than the served one is not found (404)."""
        with self._lock:
            served = self._served
        if version is not None and version != served.version:
            raise RequestError(f"Servable not found for request: Specific({self.name}, "
                               f"{version})", status=404)
        return served

    def status(self, version=None):
        """TF Serving's `model_version_status` entries (all versions, or `version`'s)."""
        with self._lock:
            states = {v: ("END", code, message)
                      for v, (_, code, message) in self._failed.items()}
            states[self._served.version] = ("AVAILABLE", "OK", "")
        if version is not None:
            if version not in states:
                raise RequestError(f"Servable not found for request: Specific({self.name}, "
                                   f"{version})", status=404)
            states = {version: states[version]}
        return [{"version": str(v), "state": state,
                 "status": {"error_code": code, "error_message": message}}
                for v, (state, code, message) in sorted(states.items(), reverse=True)]


# --------------------------------------------------------------- request body
async def read_body(request, options):
    """A request's body, decoded from its Content-Encoding, within the time and size limits."""
    try:
        raw = await asyncio.wait_for(request.read(), options.read_timeout)
    except asyncio.TimeoutError:
        raise RequestError(f"The request body did not arrive within {options.read_timeout:g} s "
                           "(--read-timeout).", status=408, close=True) from None
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(f"The request body is larger than the limit of "
                           f"{options.max_request_bytes} bytes (--max-request-bytes).",
                           status=413, close=True) from None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    return _decode_content(raw, encoding, options.max_request_bytes)


def _decode_content(raw, encoding, limit):
    """`raw` decompressed as `encoding` says, refusing more than `limit` bytes."""
    if encoding in ("", "identity"):
        return raw
    if encoding not in _CONTENT_ENCODINGS:
        raise RequestError(f"Unsupported Content-Encoding {encoding!r}: send the body as is, "
                           "gzip or deflate.", status=415)
    decompressor = zlib.decompressobj(_CONTENT_ENCODINGS[encoding])
    try:
        body = decompressor.decompress(raw, limit + 1)
    except zlib.error as error:
        raise RequestError(f"The request body is not {encoding} data, as its Content-Encoding "
                           f"says: {error}") from None
    if len(body) > limit:
        raise RequestError(f"The request body is larger than the limit of {limit} bytes once "
                           "decompressed (--max-request-bytes).", status=413)
    if not decompressor.eof:
        raise RequestError(f"The request body is cut short: its {encoding} data ends early.")
    return body


def _parse_json(body):
    """The request body as JSON; malformed, too deep or too long numbers are client errors."""
    try:
        return json.loads(body)
    except RecursionError:
        raise RequestError("Malformed JSON in the request body: arrays or objects nested more "
                           f"than about {sys.getrecursionlimit()} deep.") from None
    except json.JSONDecodeError as error:
        raise RequestError(f"Malformed JSON in the request body: {error}") from None
    except UnicodeDecodeError as error:
        raise RequestError(f"Malformed JSON in the request body: not UTF-8 ({error})") from None
    except ValueError:  # an integer literal past Python's limit on digits
        raise RequestError("Malformed JSON in the request body: a number longer than "
                           f"{sys.get_int_max_str_digits()} digits.") from None


# ------------------------------------------------------------ JSON <-> tensors
class PredictRequest(NamedTuple):
    """A parsed predict body."""

    signature: str
    texts: list  # the inputs, as bytes
    row_format: bool  # "instances" (answered with "predictions"), else "inputs"
    output_filter: tuple  # the outputs to answer with; empty for all
    scalars: dict  # the columnar format's other inputs: name -> JSON number


def _string_value(value, where):
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RequestError(f"{where} is not valid Unicode: it holds the lone surrogate "
                               f"{value[error.start]!r} (send raw bytes as "
                               "{\"b64\": ...})") from None
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as error:
            raise RequestError(f"{where}: invalid base64 in 'b64': {error}") from None
    raise RequestError(f"{where} must be a string (or {{\"b64\": ...}} for raw bytes); "
                       f"got {_short(value)}")


def _check_batch_size(values, where, max_batch_size):
    if len(values) > max_batch_size:
        raise RequestError(f"{where} holds {len(values)} instances; the limit is "
                           f"{max_batch_size} a request (--max-batch-size): send fewer at "
                           "a time.")


def _instances(rows, input_name, max_batch_size):
    if not isinstance(rows, list):
        raise RequestError("'instances' must be a list.")
    _check_batch_size(rows, "'instances'", max_batch_size)
    values = []
    for index, row in enumerate(rows):
        if isinstance(row, dict) and "b64" not in row:
            if set(row) != {input_name}:
                raise RequestError(f"instances[{index}] must have exactly the key "
                                   f"'{input_name}'; got {_short(sorted(row))}")
            row = row[input_name]
        values.append(_string_value(row, f"instances[{index}]"))
    return values


def _inputs(column, input_name, max_batch_size):
    """The columnar format: the texts, and the other (scalar) inputs by name."""
    scalars = {}
    if isinstance(column, dict) and "b64" not in column:
        if input_name not in column:
            raise RequestError(f"'inputs' must have the key '{input_name}'; got "
                               f"{_short(sorted(column))}")
        scalars = {name: value for name, value in column.items() if name != input_name}
        column = column[input_name]
    if not isinstance(column, list):
        raise RequestError(f"'inputs' must be a list of strings (the '{input_name}' batch).")
    _check_batch_size(column, "'inputs'", max_batch_size)
    return [_string_value(v, f"inputs[{i}]") for i, v in enumerate(column)], scalars


def _output_filter(body):
    names = body.get("output_filter", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise RequestError("'output_filter' must be a list of output names.")
    return tuple(dict.fromkeys(names))


def parse_predict_body(body, max_batch_size, input_name="text"):
    """A TF Serving predict body (parsed JSON) to a `PredictRequest`.

    Besides TF Serving's keys, `"output_filter": [names]` asks for only
    those outputs (as the gRPC API's `PredictRequest.output_filter`). In
    the columnar format, `inputs` may name scalar inputs beside `text`
    (`{"text": [...], "temperature": 0.8}`); the row format gives texts only.

    Raises:
        RequestError: For a malformed body, or more than `max_batch_size` instances.
    """
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object with 'instances' or "
                           "'inputs'.")
    signature = body.get("signature_name", "serving_default")
    if not isinstance(signature, str):
        raise RequestError("'signature_name' must be a string.")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("The request must have exactly one of 'instances' (row format) "
                           "and 'inputs' (columnar format).")
    row_format = "instances" in body
    texts, scalars = ((_instances(body["instances"], input_name, max_batch_size), {})
                      if row_format else _inputs(body["inputs"], input_name, max_batch_size))
    return PredictRequest(signature, texts, row_format, _output_filter(body), scalars)


def _batch_values(value, decimals=None):
    """One output of all the rows being formatted made ready for JSON at once: bytes decoded
    (as UTF-8, bad bytes replaced), floats rounded to `decimals` (as float64).
    Each row is then a slice of it (`_json_value`), with no numpy call per row."""
    value = np.asarray(value)
    if value.dtype == object:
        texts = np.empty(value.shape, dtype=object)
        texts.reshape(-1)[:] = [item.decode("utf-8", "replace") if isinstance(item, bytes)
                                else item for item in value.reshape(-1)]
        return texts
    if decimals is not None and np.issubdtype(value.dtype, np.floating):
        return np.round(value.astype(np.float64), decimals)
    return value


def _json_value(value):
    """A value of a `_batch_values` array (a row, a slice or an element) as Python."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


# Outputs padded after the batch axis, and the token outputs whose non-empty
# entries give each row's real length along each padded axis.
_PADDED_AXES = {"attention": ("target_tokens", "source_tokens"),
                "source_tokens": ("source_tokens",), "target_tokens": ("target_tokens",)}


def _real_lengths(tokens):
    """Per row of a `(batch, length)` token array: one past its last non-empty token."""
    positions = np.arange(1, tokens.shape[1] + 1)
    return ((tokens != b"") * positions).max(axis=1, initial=0)


def _cut(name, value, lengths, batch_axis):
    """Output `name`'s `value` cut along its padded axes to `lengths` (`{token output:
    length}`); `batch_axis`: 1 if its first axis is the batch, else 0."""
    axes = _PADDED_AXES.get(name, ())
    if axes and all(axis in lengths for axis in axes) and np.ndim(value) == len(axes) + batch_axis:
        value = value[(slice(None),) * batch_axis
                      + tuple(slice(0, lengths[axis]) for axis in axes)]
    return value


def _row(outputs, index, names, lengths):
    """One instance's answer: its outputs, padded axes cut to the instance's own lengths."""
    own = {axis: rows[index] for axis, rows in lengths.items()}
    return {name: _json_value(_cut(name, outputs[name][index], own, 0)) for name in names}


def format_outputs(outputs, row_format, names=None, decimals=None):
    """Signature outputs to TF Serving's `predictions` (rows) or `outputs` (columns).

    A row holds its instance's outputs only: `attention`, `source_tokens`
    and `target_tokens` are cut to its own source and target lengths, not
    padded to the longest in the batch. Columns are the batch tensors cut
    to the batch's longest row, so that the answer to a request is the same
    whichever requests shared its batch (a signature may pad further: a
    beam to its longest hypothesis, an empty input to a few steps).

    Args:
        outputs: The signature's outputs, numpy arrays keyed by name.
        row_format: True for `predictions`, False for `outputs`.
        names: The outputs to give; default all.
        decimals: Round floats to this many decimals; default as they are.
    """
    names = list(outputs) if names is None else names
    lengths = {name: _real_lengths(outputs[name]) for name in ("source_tokens", "target_tokens")
               if name in outputs and np.ndim(outputs[name]) == 2}
    batch = len(next(iter(outputs.values()))) if outputs else 0
    outputs = {name: _batch_values(outputs[name], decimals) for name in names}
    if not row_format:
        longest = {name: int(rows.max(initial=0)) for name, rows in lengths.items()}
        return {"outputs": {name: _json_value(_cut(name, outputs[name], longest, 1))
                            for name in names}}
    return {"predictions": [_row(outputs, i, names, lengths) for i in range(batch)]}


def _tensor_info(tensor):
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in tensor.shape]
    return {"dtype": types_pb2.DataType.Name(tensor.dtype.as_datatype_enum), "name": tensor.name,
            "tensor_shape": {"dim": dims, "unknown_rank": tensor.shape.rank is None}}


def signature_metadata(model):
    """The `signature_def` part of TF Serving's metadata answer, from the graph's tensors."""
    definitions = {}
    for key, function in model.signatures.items():
        _, input_specs = function.structured_input_signature
        inputs = {name: tensor for name, tensor in zip(sorted(input_specs), function.inputs)}
        definitions[key] = {
            "inputs": {name: _tensor_info(tensor) for name, tensor in inputs.items()},
            "outputs": {name: _tensor_info(tensor)
                        for name, tensor in function.structured_outputs.items()},
            "method_name": "tensorflow/serving/predict",
        }
    return {"signature_def": {"signature_def": definitions}}


def _scalar_inputs(function, request, defaults):
    """The signature's inputs other than `text`, checked: `((name, value), ...)` in the
    order of their names, the request's values, else the defaults."""
    specs = function.structured_input_signature[1]
    unknown = sorted(set(request.scalars) - set(specs))
    if unknown:
        raise RequestError(f"'inputs': {_short(unknown)} not among the inputs of "
                           f"{request.signature!r}: {sorted(specs)}")
    values = []
    for name, spec in sorted(specs.items()):
        if name == "text":
            continue
        value = request.scalars.get(name, defaults.get(name))
        if value is None:
            raise RequestError(f"{request.signature!r} needs the input {name!r} in 'inputs' "
                               "(the columnar format).")
        integer = spec.dtype.is_integer
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            kind = "an integer" if integer else "a number"
            raise RequestError(f"'inputs': {name!r} must be {kind}; got {_short(value)}")
        if integer and not -2**31 <= value < 2**31:
            raise RequestError(f"'inputs': {name!r} must fit in int32; got {_short(value)}")
        values.append((name, value))
    return tuple(values)


def _invalid_argument(message):
    """One line from a graph's InvalidArgumentError: a failed assertion's own words and the
    value it got, else the first informative line."""
    match = re.search(r"assertion failed: \[(.+?)\] \[.*?\] \[x \(.*?\) = \] \[(.*?)\]",
                      message)
    if match:
        return f"{match.group(1)}; got {match.group(2)}"
    lines = [line for line in message.strip().splitlines()
             if line.strip() and line.strip() != "Graph execution error:"]
    return lines[0] if lines else "Invalid argument"


class PredictJob(NamedTuple):
    """A predict request, checked and ready to run."""

    function: object  # the signature's concrete function
    request: PredictRequest
    scalars: tuple  # `_scalar_inputs`: its inputs other than `text`


def prepare_predict(servable, body, options):
    """Parses and checks one predict request body (bytes), in a thread.

    Args:
        servable: The served version (`Servable`).
        body: The request body.
        options: `ServingOptions`.

    Returns:
        `(key, job)`: the `PredictJob`, and the key of the requests it may
        share a signature call with (same version, signature and scalar
        inputs), or None when it runs alone: batching is off, or its
        signature's answers depend on the batch (sampling).

    Raises:
        RequestError: For a malformed or unanswerable request.
    """
    request = parse_predict_body(_parse_json(body), options.max_batch_size)
    function = servable.model.signatures.get(request.signature)
    if function is None:
        raise RequestError(f"Serving signature name: {_short(request.signature)} not found in "
                           f"signature def; the model has {sorted(servable.model.signatures)}")
    unknown = [name for name in request.output_filter if name not in function.structured_outputs]
    if unknown:
        raise RequestError(f"'output_filter': {_short(unknown)} not among the outputs of "
                           f"{request.signature!r}: {sorted(function.structured_outputs)}")
    scalars = _scalar_inputs(function, request, servable.defaults.get(request.signature, {}))
    merged = options.enable_batching and request.signature in servable.mergeable
    key = (servable.version, request.signature, scalars) if merged else None
    return key, PredictJob(function, request, scalars)


def predict_batch(jobs, decimals=None):
    """Answers predict jobs of one signature and scalar inputs with one signature call.

    Runs in a batch thread. Each job gets its own rows back, in its order,
    formatted as if it had run alone (`format_outputs` cuts padded axes to
    the job's own rows).

    Args:
        jobs: `PredictJob`s sharing a key of `prepare_predict`.
        decimals: Round floats to this many decimals; default as they are.

    Returns:
        Each job's JSON answer, as bytes.

    Raises:
        RequestError: If the graph rejects the inputs (its InvalidArgumentError).
    """
    function = jobs[0].function
    specs = function.structured_input_signature[1]
    texts = [text for job in jobs for text in job.request.texts]
    try:
        outputs = function(text=tf.constant(texts, tf.string, shape=[len(texts)]),
                           **{name: tf.constant(value, specs[name].dtype)
                              for name, value in jobs[0].scalars})
    except tf.errors.InvalidArgumentError as error:  # e.g. top_p outside (0, 1]
        raise RequestError(_invalid_argument(error.message)) from None
    outputs = {name: value.numpy() for name, value in outputs.items()}
    answers, start = [], 0
    for job in jobs:
        end = start + len(job.request.texts)
        answer = format_outputs({name: value[start:end] for name, value in outputs.items()},
                                job.request.row_format, list(job.request.output_filter) or None,
                                decimals)
        answers.append(json.dumps(answer, ensure_ascii=False).encode("utf-8"))
        start = end
    return answers


# -------------------------------------------------------------------- logging
def log_access(request, status, seconds, instances="-"):
    """The access log line of one request: client, method, path, status, time, instances."""
    access_log.info('%s "%s %s" %d %.1f ms instances=%s', request.remote, request.method,
                    request.path_qs, status, 1000 * seconds, instances)


class _AccessLog(AbstractAccessLogger):
    """aiohttp's access logger, writing `log_access` lines."""

    def log(self, request, response, time):
        log_access(request, response.status, time, getattr(response, "instances", "-"))

    @property
    def enabled(self):
        return self.logger.isEnabledFor(logging.INFO)


class _ClientErrorsOnOneLine(logging.Filter):
    """aiohttp's report of a malformed request or a lost client: one line, no traceback."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (HttpProcessingError, web.RequestPayloadError, ConnectionError)):
            record.msg, record.args = f"{record.getMessage()}: {_one_line(error)}", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


http_log.addFilter(_ClientErrorsOnOneLine())


# ------------------------------------------------------------------------ app
MODELS = web.AppKey("models", ModelBasePath)
BATCHER = web.AppKey("batcher", Batcher)


class _Answer(web.Response):
    """A predict answer (JSON bytes), with its batch size for the access log."""

    def __init__(self, body, instances):
        super().__init__(body=body, content_type="application/json")
        self.instances = instances


class _Handlers:
    """The REST API's request handlers over one model base path."""

    def __init__(self, models, options):
        self.models, self.options = models, options
        self.batcher = Batcher(functools.partial(predict_batch, decimals=options.float_decimals),
                               options.max_batch_size, options.batch_timeout_micros,
                               options.max_enqueued_batches, options.num_batch_threads)

    def _version(self, request):
        if request.match_info["name"] != self.models.name:
            raise RequestError("Servable not found for request: "
                               f"Latest({request.match_info['name']})", status=404)
        version = request.match_info.get("version")
        return None if version is None else int(version)

    async def status(self, request):
        return web.json_response(
            {"model_version_status": self.models.status(self._version(request))})

    async def metadata(self, request):
        servable = self.models.get(self._version(request))
        return web.json_response({
            "model_spec": {"name": self.models.name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": signature_metadata(servable.model)})

    async def predict(self, request):
        servable = self.models.get(self._version(request))
        body = await read_body(request, self.options)
        try:  # on a timeout or a lost client, a request still queued never runs
            instances, answer = await asyncio.wait_for(self._predict(servable, body),
                                                       self.options.request_timeout)
        except asyncio.TimeoutError:
            raise RequestError(f"The prediction did not finish within "
                               f"{self.options.request_timeout:g} s (--request-timeout).",
                               status=504) from None
        return _Answer(answer, instances)

    async def _predict(self, servable, body):
        """`(instances, answer)`: the body parsed in a thread, then answered in a batch."""
        key, job = await asyncio.get_running_loop().run_in_executor(
            None, prepare_predict, servable, body, self.options)
        try:
            answer = await self.batcher.run(key, job, len(job.request.texts))
        except QueueFull:
            raise RequestError(
                f"The server is busy: {self.batcher.queued_rows} instances wait for a batch, "
                f"and {self.batcher.max_queued_rows} may (--max-enqueued-batches x "
                "--max-batch-size); try again later.", status=503) from None
        return len(job.request.texts), answer


@web.middleware
async def _answer_errors(request, handler):
    """Errors as TF Serving's `{"error": ...}`; a client gone before its answer is a 499."""
    started = asyncio.get_running_loop().time()
    try:
        return await handler(request)
    except RequestError as error:
        response = web.json_response({"error": str(error)}, status=error.status)
        if error.close:
            response.force_close()
        return response
    except web.HTTPException as error:  # no such route or method
        return web.json_response({"error": error.reason}, status=error.status)
    except ConnectionError:  # aiohttp logs the (undeliverable) answer's status
        return web.Response(status=499, reason="Client Closed Request")
    except asyncio.CancelledError:  # the connection closed: aiohttp logs nothing
        log_access(request, 499, asyncio.get_running_loop().time() - started)
        raise
    except Exception as error:  # noqa: BLE001 (the server must stay up)
        log.exception("request failed")
        return web.json_response({"error": f"{type(error).__name__}: {error}"}, status=500)


def make_app(base_path, options=ServingOptions()):
    """The aiohttp application serving one model base path.

    Loads (and warms up) the newest version that loads first. The
    per-connection limits (idle and header time, body draining, the access
    log, cancelling the work of a client that is gone) are set on the
    application, so any aiohttp runner applies them; the connection cap and
    the socket are `serve`'s.

    Args:
        base_path: `saved_models/NAME`.
        options: A `ServingOptions`.

    Returns:
        An `aiohttp.web.Application`; `app[MODELS]` is its `ModelBasePath`,
        `app[BATCHER]` the `Batcher` of its predict requests (with counters).
    """
    models = ModelBasePath(base_path)
    handlers = _Handlers(models, options)

    async def watch_versions(app):
        async def poll():
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(options.poll_seconds)
                await loop.run_in_executor(None, models.refresh)

        task = asyncio.create_task(poll())
        yield
        task.cancel()
        handlers.batcher.close()

    app = web.Application(
        client_max_size=options.max_request_bytes, middlewares=[_answer_errors],
        handler_args={"keepalive_timeout": options.keepalive_timeout,
                      "lingering_time": options.read_timeout, "auto_decompress": False,
                      "handler_cancellation": True, "access_log_class": _AccessLog,
                      "access_log": access_log, "logger": http_log})
    app.cleanup_ctx.append(watch_versions)
    name, version = "{name:[^/:]+}", "/versions/{version:[0-9]{1,18}}"
    for prefix in (f"/v1/models/{name}", f"/v1/models/{name}{version}"):
        app.router.add_get(prefix, handlers.status)
        app.router.add_get(prefix + "/metadata", handlers.metadata)
        app.router.add_post(prefix + ":predict", handlers.predict)
    if options.ui:
        _add_explorer(app, models.name)
    app[MODELS] = models
    app[BATCHER] = handlers.batcher
    return app


# The attention explorer: a page, its script and its style, shipped in the package.
_EXPLORER_FILES = {"explorer.js": "text/javascript", "explorer.css": "text/css"}
_EXPLORER_HEADERS = {
    "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
    # Everything comes from this server; the map's PNG is drawn through blob: and data: URLs.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
}


def _add_explorer(app, model_name):
    """Routes GET / to the explorer page (the model's name written into it) and
    GET /explorer/FILE to its script and style, all read once here."""
    folder = importlib.resources.files("keras_s2s_attn") / "explorer"
    page = (folder / "index.html").read_text("utf-8").replace(
        "{{model_name}}", html.escape(model_name, quote=True)).encode("utf-8")
    files = {name: (folder / name).read_bytes() for name in _EXPLORER_FILES}

    async def index(request):
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers=_EXPLORER_HEADERS)

    async def asset(request):
        name = request.match_info["file"]
        if name not in files:
            raise RequestError(f"No such file: /explorer/{_short(name)}", status=404)
        return web.Response(body=files[name], content_type=_EXPLORER_FILES[name],
                            charset="utf-8", headers=_EXPLORER_HEADERS)

    app.router.add_get("/", index)
    app.router.add_get("/explorer/{file}", asset)


# ---------------------------------------------------------------- the command
class _ConnectionLimit:
    """The listening socket's protocol factory, capping open connections.

    Below `limit` open connections a new one gets aiohttp's handler; past
    it, a 503 naming the limit, and is closed. Each stretch of refusals is
    logged once, when it starts and when it ends.
    """

    def __init__(self, server, limit):
        self._server, self._limit, self._refused = server, limit, 0
        body = json.dumps({"error": f"Too many connections: the server's limit is {limit} "
                                    "(--max-connections); try again later."}).encode()
        self._answer = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body))

    def __call__(self):
        if len(self._server.connections) < self._limit:
            if self._refused:
                log.warning("accepting connections again, after refusing %d past the limit "
                            "of %d", self._refused, self._limit)
                self._refused = 0
            return self._server()
        if not self._refused:
            log.warning("%d connections open, the limit (--max-connections): answering new "
                        "ones 503", self._limit)
        self._refused += 1
        return _Refused(self._answer)


class _Refused(asyncio.Protocol):
    """A connection past the limit: answered at once, then closed."""

    def __init__(self, answer):
        self._answer = answer

    def connection_made(self, transport):
        transport.write(self._answer)
        transport.close()


def _raise_open_files_limit(max_connections):
    """Raises the soft limit on open files to fit `max_connections` (up to the hard limit)."""
    needed = max_connections + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(f"max_connections {max_connections} needs about {needed} open files, "
                         f"but this process may open {hard} (ulimit -Hn): lower "
                         "--max-connections.")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _bind(host, port):
    """A TCP socket bound to `host:port`, not yet listening (connections are refused)."""
    sock = None
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        if sock is not None:
            sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def _url(sock, name):
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/v1/models/{name}"


async def _serve_until_stopped(app, sock, options):
    """Listens on `sock` and serves `app` until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    runner = web.AppRunner(app, shutdown_timeout=options.request_timeout)
    await runner.setup()
    try:
        try:
            server = await loop.create_server(
                _ConnectionLimit(runner.server, options.max_connections), sock=sock)
        except OSError as error:  # another process bound the port too and listened first
            raise OSError(f"cannot listen on {options.host}:{options.port}: "
                          f"{error.strerror or error}") from None
        models = app[MODELS]
        print(f"Serving {models.name} version {models.get().version} at "
              f"{_url(sock, models.name)}",
              flush=True)
        await stopped.wait()
        server.close()
    finally:
        await runner.cleanup()


def _set_intra_op_threads(options):
    """Sets TensorFlow's threads an op (`options.intra_op_threads()`) before it starts.

    Raises:
        ValueError: If TensorFlow already runs in this process with another
            number and `tensorflow_intra_op_parallelism` asked for one; with
            0 (the default) that is logged and the server goes on.
    """
    threads = options.intra_op_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow has run: the number is fixed for the process
        current = tf.config.threading.get_intra_op_parallelism_threads()
        message = (f"TensorFlow already runs in this process with {current or 'all'} threads "
                   f"an op, not {threads}: it is set before TensorFlow first runs")
        if options.tensorflow_intra_op_parallelism:
            raise ValueError(f"tensorflow_intra_op_parallelism={threads}: {message}") from None
        log.warning("%s", message)
        return
    log.info("TensorFlow ops use %d thread(s) each, beside %d batch thread(s)", threads,
             options.num_batch_threads)


def serve(base_path, options=ServingOptions()):
    """Runs `s2s-attn serve` until SIGINT or SIGTERM.

    Binds the port first (so a port in use fails at once), sets TensorFlow's
    threads an op (`options.intra_op_threads()`), then loads and warms up
    the model, then listens and prints the model's URL with the bound port
    (`port=0` picks a free one). Logs (access lines, versions,
    refusals) go to the `keras_s2s_attn.serving` loggers.

    Args:
        base_path: `saved_models/NAME`.
        options: A `ServingOptions`.

    Raises:
        OSError: If `host:port` cannot be listened on (in use, no such address).
        FileNotFoundError: If no version under `base_path` loads.
        ValueError: If the open-files limit cannot fit `max_connections`, or
            TensorFlow already runs here with other threads an op than an
            explicit `tensorflow_intra_op_parallelism`.
    """
    _raise_open_files_limit(options.max_connections)
    with _bind(options.host, options.port) as sock:
        _set_intra_op_threads(options)
        app = make_app(base_path, options)
        asyncio.run(_serve_until_stopped(app, sock, options))
