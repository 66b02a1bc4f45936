"""A local server that speaks TF Serving's REST API over a SavedModel base path.

For quick local use and tests; production goes to TF Serving itself, and the
same client code works against both. Built on aiohttp; inference runs in a
thread pool so slow requests do not block the event loop.

    GET  /v1/models/NAME[/versions/N]             model version status
    GET  /v1/models/NAME[/versions/N]/metadata    signature definitions
    POST /v1/models/NAME[/versions/N]:predict     {"instances": [...]} or {"inputs": ...}

The highest integer version under the base path is served; a newer version
that appears is loaded in the background and swapped in once it is ready.
"""

import asyncio
import base64
import concurrent.futures
import json
import logging
import os
import threading

import numpy as np
import tensorflow as tf
from aiohttp import web
from tensorflow.core.framework import types_pb2

from keras_s2s_attn.export import load_saved_model, versions

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
log = logging.getLogger("keras_s2s_attn.serving")


class RequestError(Exception):
    """A request the client got wrong: answered with its HTTP status and message."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class ModelBasePath:
    """The served versions of one model: the newest loaded one, swapped atomically.

    Args:
        base_path: `saved_models/NAME`, holding integer version directories.
    """

    def __init__(self, base_path):
        self.base_path = os.fspath(base_path)
        if not os.path.isdir(self.base_path):
            raise FileNotFoundError(f"No model base path at {self.base_path!r}")
        self.name = os.path.basename(os.path.normpath(self.base_path))
        self._lock = threading.Lock()
        self._loaded = None  # (version, SavedModel)
        if not self.refresh():
            raise FileNotFoundError(
                f"{self.base_path!r} holds no version directory (1/, 2/, ...): export a "
                "model there first (s2s-attn export).")

    def refresh(self):
        """Loads the highest version if it is newer than the served one; True if any is served."""
        available = versions(self.base_path)
        current = self._loaded[0] if self._loaded else None
        if available and available[-1] != current:
            version = available[-1]
            loaded = load_saved_model(os.path.join(self.base_path, str(version)))
            with self._lock:
                self._loaded = (version, loaded)
            log.info("serving %s version %d", self.name, version)
        return self._loaded is not None

    def get(self, version=None):
        """`(version, model)`; a version other than the served one is not found (404)."""
        with self._lock:
            served = self._loaded
        if version is not None and version != served[0]:
            raise RequestError(f"Servable not found for request: Specific({self.name}, "
                               f"{version})", status=404)
        return served


# ------------------------------------------------------------------ JSON <-> tensors
def _string_value(value, where):
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as error:
            raise RequestError(f"{where}: invalid base64 in 'b64': {error}") from None
    raise RequestError(f"{where} must be a string (or {{\"b64\": ...}} for raw bytes); "
                       f"got {json.dumps(value)[:80]}")


def parse_predict_body(body, input_name="text"):
    """A TF Serving predict body to `(signature_name, strings, row_format)`."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object with 'instances' or "
                           "'inputs'.")
    signature = body.get("signature_name", "serving_default")
    if not isinstance(signature, str):
        raise RequestError("'signature_name' must be a string.")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("The request must have exactly one of 'instances' (row format) "
                           "and 'inputs' (columnar format).")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise RequestError("'instances' must be a list.")
        values = []
        for index, row in enumerate(rows):
            if isinstance(row, dict) and "b64" not in row:
                if set(row) != {input_name}:
                    raise RequestError(f"instances[{index}] must have exactly the key "
                                       f"'{input_name}'; got {sorted(row)}")
                row = row[input_name]
            values.append(_string_value(row, f"instances[{index}]"))
        return signature, values, True
    column = body["inputs"]
    if isinstance(column, dict) and "b64" not in column:
        if set(column) != {input_name}:
            raise RequestError(f"'inputs' must have exactly the key '{input_name}'; got "
                               f"{sorted(column)}")
        column = column[input_name]
    if not isinstance(column, list):
        raise RequestError(f"'inputs' must be a list of strings (the '{input_name}' batch).")
    return signature, [_string_value(v, f"inputs[{i}]") for i, v in enumerate(column)], False


def _json_value(array):
    array = np.asarray(array)
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(
            array).tolist() if array.size else array.tolist()
    return array.tolist()


def format_outputs(outputs, row_format):
    """Signature outputs to TF Serving's `predictions` (rows) or `outputs` (columns)."""
    columns = {name: _json_value(value) for name, value in outputs.items()}
    if not row_format:
        return {"outputs": columns}
    batch = len(next(iter(columns.values()))) if columns else 0
    return {"predictions": [{name: column[i] for name, column in columns.items()}
                            for i in range(batch)]}


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


# ---------------------------------------------------------------------- the app
def make_app(base_path, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, poll_seconds=1.0,
             workers=4):
    """The aiohttp application serving one model base path.

    Args:
        base_path: `saved_models/NAME`.
        max_request_bytes: Larger request bodies are refused with 413.
        poll_seconds: How often to look for a new version.
        workers: Threads running inference.

    Returns:
        An `aiohttp.web.Application`.
    """
    models = ModelBasePath(base_path)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    name_pattern = "{name:[^/:]+}"
    version_part = "/versions/{version:[0-9]+}"

    def model_for(request):
        if request.match_info["name"] != models.name:
            raise RequestError(f"Servable not found for request: Latest({request.match_info['name']})",
                               status=404)
        version = request.match_info.get("version")
        return models.get(None if version is None else int(version))

    async def status(request):
        version, _ = model_for(request)
        return web.json_response({"model_version_status": [{
            "version": str(version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})

    async def metadata(request):
        version, model = model_for(request)
        return web.json_response({
            "model_spec": {"name": models.name, "signature_name": "", "version": str(version)},
            "metadata": signature_metadata(model)})

    async def predict(request):
        version, model = model_for(request)
        try:
            body = json.loads(await request.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"Malformed JSON in the request body: {error}") from None
        signature, texts, row_format = parse_predict_body(body)
        if signature not in model.signatures:
            raise RequestError(f"Serving signature name: \"{signature}\" not found in "
                               f"signature def; the model has {sorted(model.signatures)}")
        function = model.signatures[signature]
        texts = tf.constant(texts, tf.string, shape=[len(texts)])
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(executor, lambda: function(text=texts))
        return web.json_response(format_outputs(outputs, row_format))

    @web.middleware
    async def errors_as_json(request, handler):
        try:
            return await handler(request)
        except RequestError as error:
            return web.json_response({"error": str(error)}, status=error.status)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(
                {"error": f"Request body larger than {max_request_bytes} bytes."}, status=413)
        except web.HTTPException as error:
            return web.json_response({"error": error.reason}, status=error.status)
        except Exception as error:  # noqa: BLE001: the server must stay up
            log.exception("request failed")
            return web.json_response({"error": f"{type(error).__name__}: {error}"}, status=500)

    async def watch_versions(app):
        async def poll():
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(poll_seconds)
                try:
                    await loop.run_in_executor(executor, models.refresh)
                except Exception:  # noqa: BLE001: a bad new version must not stop serving
                    log.exception("could not load a new version of %s", models.name)

        task = asyncio.create_task(poll())
        yield
        task.cancel()
        executor.shutdown(wait=False)

    app = web.Application(client_max_size=max_request_bytes, middlewares=[errors_as_json])
    app.cleanup_ctx.append(watch_versions)
    for prefix in (f"/v1/models/{name_pattern}", f"/v1/models/{name_pattern}{version_part}"):
        app.router.add_get(prefix, status)
        app.router.add_get(prefix + "/metadata", metadata)
        app.router.add_post(prefix + ":predict", predict)
    app["models"] = models
    return app


def serve(base_path, host="127.0.0.1", port=8501, **options):
    """Runs the server until interrupted (loopback only unless `host` says otherwise)."""
    app = make_app(base_path, **options)
    print(f"Serving {app['models'].name} version {app['models'].get()[0]} at "
          f"http://{host}:{port}/v1/models/{app['models'].name}", flush=True)
    web.run_app(app, host=host, port=port, print=None)
