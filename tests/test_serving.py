"""The local TF-Serving-compatible server, over real HTTP on loopback."""

import base64
import concurrent.futures
import gzip
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from keras_s2s_attn import export, saved_models, serving
from keras_s2s_attn.options import ServingOptions
from keras_s2s_attn.serving import BATCHER, RequestError
from keras_s2s_attn.translation import Translator, open_translator
from tests.serving_fixtures import INVALID_UTF8, Server, export_strategies, greedy_only


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("served") / "reverser"
    export.export_saved_model(tiny_run, base, strategies=export_strategies())
    server = Server(base, max_request_bytes=64 * 1024, max_batch_size=8)
    yield server, base, Translator.from_run(tiny_run, strategies=export_strategies())
    server.close()


PREDICT = "/v1/models/reverser:predict"


def wait_for(condition, seconds=60):
    """Polls `condition()` until it is true (returning it) or `seconds` pass (None)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return None


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
    local_beam = translator(texts, "beam_search")
    assert beam["outputs"]["translation"] == local_beam["translation"].astype(str).tolist()
    status, versioned = server.request("/v1/models/reverser/versions/1:predict",
                                       {"instances": texts})
    assert status == 200 and versioned == rows


def assert_lists_match(rows, local):
    """REST rows of a listing signature against Python's outputs: n-best, best first."""
    assert [row["translations"] for row in rows] == local["translations"].astype(str).tolist()
    np.testing.assert_allclose([row["scores"] for row in rows], local["scores"], atol=1e-3)
    assert [row["translation"] for row in rows] == [row["translations"][0] for row in rows]
    assert all(np.all(np.diff(row["scores"]) <= 1e-6) for row in rows)


def test_n_best_and_samples_over_rest_equal_python(served):
    server, _, translator = served
    texts = ["abc", "hgfedcba", "dd", ""]
    status, beam = server.request(PREDICT, {"signature_name": "beam_search", "instances": texts})
    assert status == 200 and len(beam["predictions"][0]["translations"]) == 3
    assert_lists_match(beam["predictions"], translator(texts, "beam_search"))
    # Sampling: the export's defaults (seed 5) when a request leaves the inputs out ...
    status, sample = server.request(PREDICT, {"signature_name": "sample", "instances": texts})
    assert status == 200
    assert_lists_match(sample["predictions"], translator(texts, "sample"))
    # ... and TF Serving's columnar format sets them per request.
    inputs = {"text": texts, "temperature": 2.0, "seed": 6, "top_k": 5}
    status, columns = server.request(PREDICT, {"signature_name": "sample", "inputs": inputs})
    assert status == 200
    local = translator(texts, "sample", temperature=2.0, seed=6, top_k=5)
    assert columns["outputs"]["translations"] == local["translations"].astype(str).tolist()
    assert columns["outputs"]["translations"] != sample["predictions"]  # the seed counts
    for scalars, words in (({"top_p": 2.0}, "top_p must be in (0, 1]"),
                           ({"temperature": "hot"}, "'temperature' must be a number"),
                           ({"seed": 2**40}, "'seed' must fit in int32"),
                           ({"beam": 3}, "['beam'] not among the inputs of 'sample'")):
        status, body = server.request(PREDICT, {"signature_name": "sample",
                                                "inputs": {"text": texts, **scalars}})
        assert status == 400 and words in body["error"], body
    status, body = server.request(PREDICT, {"inputs": {"text": texts, "temperature": 1.0}})
    assert status == 400 and "not among the inputs of 'serving_default'" in body["error"]


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
    signature = server.request("/v1/models/reverser/metadata")[1]["metadata"][
        "signature_def"]["signature_def"]["serving_default"]
    assert server.request(PREDICT, {"inputs": []}) == (200, {"outputs": {
        name: [] for name in signature["outputs"]}})


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
        # Issue 14: each of these was a 500 with a traceback in the log.
        pytest.param(None, b'{"instances": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400,
                     "nested more than", id="deep-nesting"),
        pytest.param(None, b'{"instances": [' + b"7" * 5000 + b"]}", 400,
                     "a number longer than 4300", id="5000-digits"),
        pytest.param(None, b'{"instances": ["ok", "\\ud800"]}', 400,
                     "instances[1] is not valid Unicode: it holds the lone surrogate",
                     id="lone-surrogate"),
        pytest.param(None, b'{"inputs": {"text": ["ok", "x\\udfff"]}}', 400,
                     "inputs[1] is not valid Unicode", id="lone-surrogate-columns"),
        pytest.param({"instances": ["a"], "output_filter": ["translation", "nope"]}, None, 400,
                     "['nope'] not among the outputs", id="unknown-output"),
        pytest.param({"instances": ["a"], "output_filter": "translation"}, None, 400,
                     "'output_filter' must be a list", id="output-filter-not-a-list"),
        pytest.param({"instances": [{"k" * 40_000: "a"}]}, None, 400,
                     "instances[0] must have exactly the key 'text'", id="long-key"),
        pytest.param({"instances": [[[[[[[["a"]]]]]]]]}, None, 400,
                     "instances[0] must be a string", id="nested-instance"),
    ],
)
def test_client_errors_are_json_and_the_server_stays_up(served, body, raw, status, words,
                                                        caplog):
    server, _, _ = served
    got_status, got = server.request(PREDICT, body=body, raw=raw)
    assert got_status == status and words in got["error"], got
    assert "\n" not in got["error"] and len(got["error"]) < 500
    assert server.request(PREDICT, {"instances": ["abc"]})[0] == 200
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"


def test_content_encoding_is_decoded_within_the_limit(served, caplog):
    server, _, _ = served
    body = json.dumps({"instances": ["abc"]}).encode()
    status, answer = server.request(PREDICT, raw=gzip.compress(body),
                                    headers={"Content-Encoding": "gzip"})
    assert status == 200 and answer["predictions"][0]["translation"] == "CBA"
    # A body that is not what its Content-Encoding says (issue 14: a 500 and two tracebacks).
    status, answer = server.request(PREDICT, raw=body, headers={"Content-Encoding": "gzip"})
    assert status == 400 and "not gzip data, as its Content-Encoding says" in answer["error"]
    status, answer = server.request(PREDICT, raw=gzip.compress(body)[:-9],
                                    headers={"Content-Encoding": "gzip"})
    assert status == 400 and "cut short" in answer["error"]
    # 20 MB of spaces in 20 kB: refused once past the limit, not decompressed whole.
    bomb = gzip.compress(b'{"instances": ["abc"]' + b" " * 20_000_000 + b"}")
    status, answer = server.request(PREDICT, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413 and "65536 bytes once decompressed" in answer["error"]
    status, answer = server.request(PREDICT, raw=body, headers={"Content-Encoding": "br"})
    assert status == 415 and "Unsupported Content-Encoding 'br'" in answer["error"]
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"


def test_batch_size_is_capped(served):
    server, _, _ = served
    assert server.request(PREDICT, {"instances": ["abc"] * 8})[0] == 200
    for body in ({"instances": ["abc"] * 9}, {"inputs": {"text": ["abc"] * 9}}):
        status, answer = server.request(PREDICT, body)
        assert status == 400, answer
        assert "holds 9 instances; the limit is 8 a request (--max-batch-size)" in answer["error"]


def test_rows_hold_their_own_lengths_and_rounded_floats(served):
    """Issue 14: each row held the batch's padded attention, in floats of 17 digits."""
    server, _, translator = served
    texts = ["ab", "hgfedcba", ""]
    local = translator(texts)
    status, body = server.request(PREDICT, {"instances": texts})
    assert status == 200
    for row, i in zip(body["predictions"], range(len(texts))):
        source = [t.decode() for t in local["source_tokens"][i] if t]
        target = [t.decode() for t in local["target_tokens"][i] if t]
        assert row["source_tokens"] == source and row["target_tokens"] == target
        assert len(row["attention"]) == len(target)
        assert all(len(weights) == len(source) for weights in row["attention"])
        np.testing.assert_allclose(
            np.reshape(row["attention"], (len(target), len(source))),
            local["attention"][i][:len(target), :len(source)], atol=5e-5)
        floats = [row["score"], *np.ravel(row["attention"]).tolist()]
        assert all(value == round(value, 4) for value in floats)
    # A short text's row is the same size in a batch with long texts as alone.
    alone = server.request(PREDICT, {"instances": ["ab"]})[1]["predictions"][0]
    assert np.shape(alone["attention"]) == np.shape(body["predictions"][0]["attention"])
    # Columns stay the batch's tensors, as TF Serving's.
    columns = server.request(PREDICT, {"inputs": texts})[1]["outputs"]
    assert np.shape(columns["attention"]) == local["attention"].shape


def test_output_filter_answers_only_the_outputs_asked_for(served):
    server, _, _ = served
    status, body = server.request(PREDICT, {"instances": ["abc", "dd"],
                                            "output_filter": ["translation"]})
    assert (status, body) == (200, {"predictions": [{"translation": "CBA"},
                                                    {"translation": "DD"}]})
    status, body = server.request(PREDICT, {"inputs": ["abc"],
                                            "output_filter": ["score", "attention"]})
    assert status == 200 and set(body["outputs"]) == {"score", "attention"}
    assert np.shape(body["outputs"]["attention"]) == (1, 4, 3)
    status, body = server.request(PREDICT, {"instances": ["abc"], "output_filter": []})
    assert status == 200 and "attention" in body["predictions"][0]


def test_request_timeout_is_a_504(served, tiny_run):
    _, base, _ = served
    server = Server(base, request_timeout=0.001, batch_timeout_micros=0)
    try:
        status, body = server.request(PREDICT, {"instances": ["hgfedcba"] * 512})
        assert status == 504 and "within 0.001 s (--request-timeout)" in body["error"]
        assert server.request("/v1/models/reverser")[0] == 200
    finally:
        server.close()


def test_the_explorer_page_is_served_unless_turned_off(served, tiny_run):
    server, base, _ = served
    with urllib.request.urlopen(server.url("/"), timeout=30) as response:
        page = response.read().decode("utf-8")
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert '<meta name="s2s-model" content="reverser">' in page
    assert "{{" not in page
    with urllib.request.urlopen(server.url("/explorer/explorer.js"), timeout=30) as response:
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert b"/v1/models/" in response.read()
    assert server.request("/explorer/../serving.py")[0] == 404
    assert server.request("/explorer/nothing.js") == (404, {"error": "No such file: "
                                                                     "/explorer/'nothing.js'"})
    plain = Server(base, ui=False)
    try:
        assert plain.request("/") == (404, {"error": "Not Found"})
        assert plain.request("/v1/models/reverser")[0] == 200  # the REST API is unchanged
    finally:
        plain.close()


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


def assert_same_json(got, alone, where="answer"):
    """`got` is `alone`, but for floats off by up to twice their last rounded decimal."""
    if isinstance(alone, float):
        assert got == pytest.approx(alone, abs=2e-4), where
    elif isinstance(alone, (list, dict)):
        assert type(got) is type(alone) and len(got) == len(alone), where
        pairs = (zip(got, alone) if isinstance(alone, list)
                 else ((got[key], alone[key]) for key in alone))
        for index, (mine, theirs) in enumerate(pairs):
            assert_same_json(mine, theirs, f"{where}[{index}]")
    else:
        assert got == alone, where


def mixed_bodies():
    """16 requests of 1 to 8 words: greedy rows and columns (some filtered), beam rows, and
    seeded samples with equal scalar inputs."""
    words = ["".join("abcdefgh"[(i * 5 + j) % 8] for j in range(1 + (i * 3) % 9))
             for i in range(80)]
    bodies = []
    for i in range(16):
        texts = words[5 * i: 5 * i + 1 + i % 8]
        if i % 4 == 3:
            bodies.append({"signature_name": "sample",
                           "inputs": {"text": texts, "temperature": 1.5, "seed": 3}})
        elif i % 4 == 2:
            bodies.append({"signature_name": "beam_search", "instances": texts})
        else:
            bodies.append({"instances": texts} if i % 2 else {"inputs": {"text": texts}})
        if i % 5 == 4:
            bodies[-1]["output_filter"] = ["translation", "attention"]
    return bodies


def test_concurrent_requests_share_signature_calls_and_get_their_own_rows(served):
    """16 clients at once: each gets exactly the answer it gets alone (its own rows, in
    order, cut to its own lengths in both formats), from fewer signature calls than
    requests; samples are never merged."""
    alone_server, base, _ = served
    bodies = mixed_bodies()
    alone = [alone_server.request(PREDICT, body) for body in bodies]
    server = Server(base, num_batch_threads=1, batch_timeout_micros=500_000)
    try:
        start = threading.Barrier(len(bodies))

        def ask(body):
            start.wait()
            return server.request(PREDICT, body)

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            together = list(pool.map(ask, bodies))
        batcher = server.app[BATCHER]
    finally:
        server.close()
    for index, ((status, answer), (_, expected)) in enumerate(zip(together, alone)):
        assert status == 200, answer
        assert_same_json(answer, expected, f"request {index}")
    samples = sum(body.get("signature_name") == "sample" for body in bodies)
    assert batcher.calls == len(bodies)
    # Each sample alone; the 8 greedy and 4 beam requests in one call per signature, give
    # or take a straggler.
    assert samples + 2 <= batcher.batches <= samples + 5, batcher.batches


@pytest.fixture(scope="module")
def gated_server(served):
    """A server of one batch thread whose signature calls record their texts, wait for
    `gate` while they hold "WAIT", and fail as the graph would on "BOOM"."""
    _, base, _ = served
    calls, gate = [], threading.Event()
    real = serving.predict_batch

    def predict_batch(jobs, decimals=None):
        texts = [text.decode() for job in jobs for text in job.request.texts]
        calls.append(texts)
        if "WAIT" in texts:
            assert gate.wait(30)
        if "BOOM" in texts:
            raise RequestError("the graph rejects BOOM")
        return real(jobs, decimals)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serving, "predict_batch", predict_batch)
        server = Server(base, num_batch_threads=1, max_batch_size=4, max_enqueued_batches=1)
    yield server, calls, gate
    gate.set()
    server.close()


@pytest.fixture
def gated(gated_server):
    """`gated_server` with no calls recorded yet and its gate closed."""
    _, calls, gate = gated_server
    calls.clear()
    gate.clear()
    yield gated_server
    gate.set()


def test_a_rejected_request_fails_alone_and_a_full_queue_is_503(gated):
    server, calls, gate = gated
    texts = ["abc", "BOOM", "hgf", "dd"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(texts) + 1) as pool:
        first = pool.submit(server.request, PREDICT, {"instances": ["WAIT"]})
        assert wait_for(lambda: calls, 10)  # the batch thread is busy
        queued = [pool.submit(server.request, PREDICT, {"instances": [text]}) for text in texts]
        assert wait_for(lambda: server.app[BATCHER].queued_rows == 4, 10)
        status, body = server.request(PREDICT, {"instances": ["abc"]})
        gate.set()
        answers = [future.result() for future in queued]
        assert first.result()[0] == 200
    assert (status, body) == (503, {"error": "The server is busy: 4 instances wait for a batch, "
                                             "and 4 may (--max-enqueued-batches x "
                                             "--max-batch-size); try again later."})
    assert [(status, body.get("error") or body["predictions"][0]["translation"])
            for status, body in answers] == [(200, "CBA"), (400, "the graph rejects BOOM"),
                                             (200, "FGH"), (200, "DD")]
    # One merged call, which failed; then each request alone.
    assert sorted(calls[1]) == sorted(texts) and sorted(calls[2:]) == [[text] for text in
                                                                      sorted(texts)]


def test_a_client_that_leaves_while_queued_is_not_computed(gated):
    server, calls, gate = gated
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(server.request, PREDICT, {"instances": ["WAIT"]})
        assert wait_for(lambda: calls, 10)
        body = json.dumps({"instances": ["gone"]}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                               % (PREDICT.encode(), len(body), body))
            assert wait_for(lambda: server.app[BATCHER].queued_rows == 1, 10)
        assert wait_for(lambda: server.app[BATCHER].queued_rows == 0, 10)
        gate.set()
        assert first.result()[0] == 200
    assert server.request(PREDICT, {"instances": ["abc"]})[0] == 200
    assert calls == [["WAIT"], ["abc"]]


def test_batching_flags_and_their_checks():
    from keras_s2s_attn.cli import _parser

    args = _parser().parse_args(["serve", "m", "--no-enable-batching", "--batch-timeout-micros",
                                 "500", "--max-enqueued-batches", "3", "--num-batch-threads", "2"])
    assert (args.enable_batching, args.batch_timeout_micros, args.max_enqueued_batches,
            args.num_batch_threads) == (False, 500, 3, 2)
    assert _parser().parse_args(["serve", "m"]).enable_batching is True
    for changes, message in [
        ({"batch_timeout_micros": -1},
         "batch_timeout_micros must be 0 or a positive number of microseconds; got -1"),
        ({"batch_timeout_micros": 2_000_000, "request_timeout": 2.0},
         "batch_timeout_micros (2000000) must be less than request_timeout (2 s)"),
        ({"max_enqueued_batches": 0}, "max_enqueued_batches must be a positive integer; got 0"),
        ({"num_batch_threads": 0}, "num_batch_threads must be a positive integer; got 0"),
        ({"tensorflow_intra_op_parallelism": -1},
         "tensorflow_intra_op_parallelism must be 0 (the cores shared out among the batch "
         "threads) or a number of threads; got -1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            ServingOptions(**changes)


def test_tensorflow_threads_an_op_are_the_cores_shared_out_among_the_batch_threads(
        caplog, monkeypatch):
    from keras_s2s_attn.cli import _parser

    args = _parser().parse_args(["serve", "m", "--tensorflow-intra-op-parallelism", "3"])
    assert args.tensorflow_intra_op_parallelism == 3
    assert ServingOptions(tensorflow_intra_op_parallelism=3).intra_op_threads(cores=16) == 3
    assert [ServingOptions(num_batch_threads=n).intra_op_threads(cores=c)
            for n, c in [(2, 2), (2, 16), (4, 2), (1, 8), (3, 16)]] == [1, 8, 1, 8, 5]
    # TensorFlow runs in this process already: an explicit number it cannot take is an
    # error; the default is logged, and the server goes on.
    tf.constant(0) + 1  # (TensorFlow starts at its first op)
    other = tf.config.threading.get_intra_op_parallelism_threads() + 2
    with pytest.raises(ValueError, match=re.escape(
            f"tensorflow_intra_op_parallelism={other}: TensorFlow already runs in this "
            "process with ")):
        serving._set_intra_op_threads(ServingOptions(tensorflow_intra_op_parallelism=other))
    monkeypatch.setattr(ServingOptions, "intra_op_threads", lambda self, cores=None: other)
    serving._set_intra_op_threads(ServingOptions())
    assert f"threads an op, not {other}: it is set before TensorFlow first runs" in caplog.text


def test_new_version_is_picked_up(tiny_run, tmp_path):
    base = tmp_path / "moving"
    export.export_saved_model(tiny_run, base, max_output_length=30, strategies=greedy_only())
    server = Server(base)
    try:
        assert server.request("/v1/models/moving")[1]["model_version_status"][0]["version"] == "1"
        export.export_saved_model(tiny_run, base, max_output_length=2,  # version 2 differs
                                  strategies=greedy_only())
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


def copy_version(source, target):
    """Copies a version directory the way an export writes one: beside it, then renamed."""
    shutil.copytree(source, f"{target}.partial")
    os.rename(f"{target}.partial", target)


def test_a_broken_version_is_reported_once_and_the_last_good_one_serves(served, tmp_path,
                                                                        caplog):
    """Issue 14: a junk 99/ was a 32-line traceback every second, and not in the status."""
    _, base, _ = served
    moving = tmp_path / "reverser"
    copy_version(base / "1", moving / "1")
    (moving / "5").mkdir()  # empty: fails to load at start-up, and version 1 serves
    caplog.set_level(logging.ERROR, logger="keras_s2s_attn.serving")
    server = Server(moving)
    try:
        (moving / "99").mkdir()
        (moving / "99" / "saved_model.pb").write_bytes(b"junk")
        status = wait_for(lambda: [entry for entry in server.request("/v1/models/reverser")[1][
            "model_version_status"] if entry["version"] == "99"])
        assert status and status[0]["state"] == "END", status
        assert status[0]["status"]["error_code"] == "UNKNOWN"
        assert "Cannot parse file" in status[0]["status"]["error_message"]
        time.sleep(1.0)  # five more polls, with nothing new to log
        states = server.request("/v1/models/reverser")[1]["model_version_status"]
        assert [(entry["version"], entry["state"]) for entry in states] == [
            ("99", "END"), ("5", "END"), ("1", "AVAILABLE")]
        assert server.request("/v1/models/reverser/versions/99")[1] == {
            "model_version_status": status}
        assert server.request(PREDICT, {"instances": ["abc"]})[0] == 200
        assert server.request("/v1/models/reverser/versions/99:predict",
                              {"instances": ["abc"]})[0] == 404
        failures = [record.getMessage().split(":")[0] for record in caplog.records]
        assert failures == ["version 5 of reverser failed to load",
                            "version 99 of reverser failed to load"]
        assert not [record for record in caplog.records if record.exc_info]
        # Replaced by a good one, version 99 loads: its files changed.
        shutil.rmtree(moving / "99")
        copy_version(base / "1", moving / "99")
        assert wait_for(lambda: server.request("/v1/models/reverser")[1][
            "model_version_status"][0] == {"version": "99", "state": "AVAILABLE", "status": {
                "error_code": "OK", "error_message": ""}})
        assert server.request("/v1/models/reverser/versions/99:predict",
                              {"instances": ["abc"]})[0] == 200
    finally:
        server.close()


def test_only_ascii_digit_names_are_versions(served, tiny_run, tmp_path):
    """Issue 14: `²/` (isdigit() but not int()) broke serve, translate and export."""
    _, base, _ = served
    moving = tmp_path / "reverser"
    copy_version(base / "1", moving / "1")
    for name in ("\u00b2", "\u0663", "007", "-3", "1e3"):
        (moving / name).mkdir()
    assert saved_models.versions(moving) == [1]
    assert saved_models.latest_version_dir(moving) == str(moving / "1")
    assert open_translator(str(moving))(["abc"])["translation"].tolist() == [b"CBA"]
    server = Server(moving)
    try:
        assert server.request(PREDICT, {"instances": ["abc"]})[0] == 200
    finally:
        server.close()
    version = export.export_saved_model(tiny_run, moving, strategies=greedy_only())
    assert version.endswith(os.sep + "2")


def rewrite_warmup(version_dir, signature):
    """Replaces a version's warm-up file by one predict request for `signature`."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="reverser", signature_name=signature))
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["abc"], dtype=tf.string))
    with tf.io.TFRecordWriter(os.path.join(version_dir, saved_models.WARMUP_FILE)) as writer:
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())


def test_warmup_requests_run_before_a_version_serves(served, tmp_path):
    """A version is served once its own warm-up requests ran; one whose warm-up fails is not."""
    _, base, _ = served
    moving = tmp_path / "reverser"
    copy_version(base / "1", moving / "1")
    copy_version(base / "1", moving / "2")
    rewrite_warmup(moving / "2", "no_such_signature")
    server = Server(moving)
    try:
        states = server.request("/v1/models/reverser")[1]["model_version_status"]
        assert [(entry["version"], entry["state"]) for entry in states] == [
            ("2", "END"), ("1", "AVAILABLE")]
        assert "asks for signature 'no_such_signature'" in states[0]["status"]["error_message"]
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
    model = saved_models.load_saved_model(saved_models.latest_version_dir(base))

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            assert request.model_spec.name == "reverser"
            function = model.signatures[request.model_spec.signature_name]
            outputs = function(**{name: tf.constant(tf.make_ndarray(tensor))
                                  for name, tensor in request.inputs.items()})
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
        local = translator(["abc", "dd"], "beam_search")
        beam = client.predict(f"127.0.0.1:{port}", "reverser", ["abc", "dd"], "beam_search")
        assert beam["translations"].tolist() == local["translations"].tolist()
        inputs = {"temperature": 1.5, "top_k": 0, "top_p": 0.9, "seed": 2}
        sample = client.predict(f"127.0.0.1:{port}", "reverser", ["abc", "dd"], "sample", inputs)
        local = translator(["abc", "dd"], "sample", **inputs)
        assert sample["translations"].tolist() == local["translations"].tolist()
    finally:
        server.stop(None)
