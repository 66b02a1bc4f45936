"""The local TF-Serving-compatible server, over real HTTP on loopback."""

import asyncio
import base64
import concurrent.futures
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from keras_s2s_attn import export
from keras_s2s_attn.serving import make_app
from keras_s2s_attn.translation import Translator
from tests.serving_fixtures import INVALID_UTF8


class Server:
    """make_app's application on an ephemeral loopback port, in a thread."""

    def __init__(self, base_path, **options):
        self.app = make_app(base_path, poll_seconds=0.2, **options)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(self.app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(60)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, path, body=None, raw=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url(path), data=data,
                                         method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("served") / "reverser"
    export.export_saved_model(tiny_run, base, beam_width=3)
    server = Server(base, max_request_bytes=64 * 1024)
    yield server, base, Translator.from_run(tiny_run, beam_width=3)
    server.close()


PREDICT = "/v1/models/reverser:predict"


def test_status_and_metadata(served):
    server, _, _ = served
    status, body = server.request("/v1/models/reverser")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert server.request("/v1/models/reverser/versions/1")[0] == 200
    status, body = server.request("/v1/models/reverser/metadata")
    assert status == 200 and body["model_spec"] == {"name": "reverser", "signature_name": "",
                                                    "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) >= {"serving_default", "beam_search"}
    text = signatures["serving_default"]["inputs"]["text"]
    assert text["dtype"] == "DT_STRING" and text["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""}]
    outputs = signatures["serving_default"]["outputs"]
    assert outputs["attention"]["dtype"] == "DT_FLOAT" and len(
        outputs["attention"]["tensor_shape"]["dim"]) == 3


def test_row_and_columnar_formats_match_python(served):
    server, _, translator = served
    texts = ["abc", "hgfedcba", "dd"]
    local = translator(texts)
    status, rows = server.request(PREDICT, {"instances": texts})
    assert status == 200
    assert [row["translation"] for row in rows["predictions"]] == ["CBA", "ABCDEFGH", "DD"]
    for row, score in zip(rows["predictions"], local["score"]):
        assert row["score"] == pytest.approx(float(score), abs=1e-4)
    assert rows["predictions"][0]["source_tokens"][:3] == ["a", "b", "c"]
    assert rows["predictions"][0]["target_tokens"][:4] == ["C", "B", "A", "[END]"]
    status, objects = server.request(PREDICT, {"instances": [{"text": t} for t in texts]})
    assert status == 200 and objects == rows
    status, columns = server.request(PREDICT, {"inputs": {"text": texts}})
    assert status == 200 and columns["outputs"]["translation"] == ["CBA", "ABCDEFGH", "DD"]
    assert server.request(PREDICT, {"inputs": texts})[1] == columns
    assert columns["outputs"]["truncated"] == [False, False, False]
    assert len(columns["outputs"]["attention"]) == 3
    status, beam = server.request(PREDICT, {"signature_name": "beam_search", "inputs": texts})
    assert status == 200
    local_beam = translator(texts, beam=True)
    assert beam["outputs"]["translation"] == local_beam["translation"].astype(str).tolist()
    status, versioned = server.request("/v1/models/reverser/versions/1:predict",
                                       {"instances": texts})
    assert status == 200 and versioned == rows


def test_bad_inputs_get_sensible_answers(served):
    server, _, _ = served
    texts = ["", "   ", "a" * 30_000, {"b64": base64.b64encode(INVALID_UTF8).decode()}]
    status, body = server.request(PREDICT, {"instances": texts})
    assert status == 200
    rows = body["predictions"]
    assert rows[0]["translation"] == "" and rows[1]["translation"] == ""
    assert rows[2]["truncated"] is True and rows[0]["truncated"] is False
    assert rows[3]["source_tokens"][:6] == ["a", "b", "[UNK]", "[UNK]", "c", "d"]
    assert server.request(PREDICT, {"instances": []}) == (200, {"predictions": []})
    assert server.request(PREDICT, {"inputs": []}) == (200, {"outputs": {
        name: [] for name in ("attention", "score", "source_tokens", "target_tokens",
                              "translation", "truncated")}})


@pytest.mark.parametrize(
    "body, raw, status, words",
    [
        ({"instances": ["ok", 3]}, None, 400, "instances[1] must be a string"),
        ({"instances": [None]}, None, 400, "instances[0] must be a string"),
        ({"inputs": {"text": "abc"}}, None, 400, "list of strings"),
        ({"instances": [{"txt": "abc"}]}, None, 400, "exactly the key 'text'"),
        ({"instances": ["a"], "inputs": ["a"]}, None, 400, "exactly one of"),
        ({}, None, 400, "exactly one of"),
        ([1, 2], None, 400, "JSON object"),
        ({"instances": [{"b64": "***"}]}, None, 400, "invalid base64"),
        ({"signature_name": "nope", "instances": ["a"]}, None, 400, "nope"),
        (None, b'{"instances": ["abc"', 400, "Malformed JSON"),
        (None, b"\xff\xfe", 400, "Malformed JSON"),
        (None, b'{"instances": ["' + b"a" * 70_000 + b'"]}', 413, "larger than"),
    ],
)
def test_client_errors_are_json_and_the_server_stays_up(served, body, raw, status, words):
    server, _, _ = served
    got_status, got = server.request(PREDICT, body=body, raw=raw)
    assert got_status == status and words in got["error"], got
    assert server.request(PREDICT, {"instances": ["abc"]})[0] == 200


def test_unknown_model_and_version_are_404(served):
    server, _, _ = served
    assert server.request("/v1/models/other")[0] == 404
    status, body = server.request("/v1/models/reverser/versions/7:predict", {"instances": ["a"]})
    assert status == 404 and "Specific(reverser, 7)" in body["error"]
    assert server.request("/v1/models/other:predict", {"instances": ["a"]})[0] == 404


def test_concurrent_clients(served):
    server, _, translator = served
    words = ["".join("abcdefgh"[(i + j) % 8] for j in range(2 + i % 6)) for i in range(32)]
    expected = translator(words)["translation"].astype(str).tolist()

    def ask(i):
        body = ({"instances": [words[i]]} if i % 2 else {"inputs": {"text": [words[i]]}})
        status, answer = server.request(PREDICT, body)
        assert status == 200
        return (answer["predictions"][0]["translation"] if i % 2
                else answer["outputs"]["translation"][0])

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(len(words))))
    assert answers == expected


def test_new_version_is_picked_up(tiny_run, tmp_path):
    base = tmp_path / "moving"
    export.export_saved_model(tiny_run, base, max_output_length=30)
    server = Server(base)
    try:
        assert server.request("/v1/models/moving")[1]["model_version_status"][0]["version"] == "1"
        export.export_saved_model(tiny_run, base, max_output_length=2)  # version 2 differs
        deadline = time.time() + 60
        version = "1"
        while time.time() < deadline and version != "2":
            time.sleep(0.2)
            version = server.request("/v1/models/moving")[1]["model_version_status"][0]["version"]
        assert version == "2"
        status, body = server.request("/v1/models/moving:predict", {"instances": ["hgfedcba"]})
        assert status == 200 and len(body["predictions"][0]["translation"]) == 2
        assert server.request("/v1/models/moving/versions/1:predict",
                              {"instances": ["a"]})[0] == 404
    finally:
        server.close()


def load_example(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rest_example_client(served):
    import subprocess
    import sys

    server, _, _ = served
    result = subprocess.run(
        [sys.executable, "examples/serving_rest_client.py", "--url", server.url(""), "--model",
         "reverser", "abc", "hgfedcba"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "abc -> CBA" in result.stdout and "hgfedcba -> ABCDEFGH" in result.stdout
    assert "C <- c" in result.stdout  # the attention peak of the first output token


def test_grpc_example_client_against_a_grpc_prediction_service(served):
    """The gRPC client against an in-process PredictionService backed by the SavedModel."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    _, base, translator = served
    model = export.load_saved_model(export.latest_version_dir(base))

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            assert request.model_spec.name == "reverser"
            function = model.signatures[request.model_spec.signature_name]
            outputs = function(text=tf.constant(tf.make_ndarray(request.inputs["text"])))
            response = predict_pb2.PredictResponse()
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = load_example("serving_grpc_client")
        outputs = client.predict(f"127.0.0.1:{port}", "reverser", ["abc", "dd"])
        assert outputs["translation"].tolist() == [b"CBA", b"DD"]
        assert outputs["attention"].shape[0] == 2
        beam = client.predict(f"127.0.0.1:{port}", "reverser", ["abc"], "beam_search")
        assert beam["translation"].tolist() == translator(["abc"], beam=True)[
            "translation"].tolist()
    finally:
        server.stop(None)
