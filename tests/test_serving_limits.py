"""`s2s-attn serve` as a process: its limits, timeouts, logs, ports and exit codes."""

import json
import os
import re
import socket
import subprocess
import time

import pytest

from keras_s2s_attn import export
from keras_s2s_attn.options import ServingOptions
from tests.serving_fixtures import ServeProcess

# The limits the shared server runs with: small, so that the tests are quick.
LIMITS = ("--max-connections", "6", "--keepalive-timeout", "3", "--read-timeout", "1")
MODEL = "limited"
PREDICT = f"/v1/models/{MODEL}:predict"


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("limits") / MODEL
    export.export_saved_model(tiny_run, base)
    return base


@pytest.fixture(scope="module")
def server(exported):
    with ServeProcess(exported, *LIMITS) as process:
        yield process


def connect(server):
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_all(connection):
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    chunks = []
    while chunk := connection.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_serves_on_the_port_it_printed_after_its_warmup(server):
    """Issue 14: --port 0 printed port 0; the first request paid for the warm-up."""
    assert server.stdout_line == (f"Serving {MODEL} version 1 at http://127.0.0.1:{server.port}"
                                  f"/v1/models/{MODEL}\n")
    # One warm-up request per signature: serving_default, beam_search, sample.
    log = server.new_stderr()
    assert re.search(r"INFO serving limited version 1 \(warmed up with 3 requests from "
                     r"assets.extra/tf_serving_warmup_requests\)", log)
    # TensorFlow's threads an op, set before it started: the cores over 2 batch threads.
    threads = ServingOptions().intra_op_threads()
    assert f"INFO TensorFlow ops use {threads} thread(s) each, beside 2 batch thread(s)\n" in log
    status, body = server.request(PREDICT, {"instances": ["abc", "hgf", "dd"]})
    assert status == 200 and [row["translation"] for row in body["predictions"]] == [
        "CBA", "FGH", "DD"]
    # One access line per request: client, method, path, status, milliseconds, instances.
    lines = server.wait_for_log(r'"POST /v1/models/limited:predict" 200')
    assert re.search(r'INFO 127\.0\.0\.1 "POST /v1/models/limited:predict" 200 [0-9.]+ ms '
                     r'instances=3\n', lines), lines
    assert server.request(f"/v1/models/{MODEL}")[0] == 200
    assert re.search(r'"GET /v1/models/limited" 200 [0-9.]+ ms instances=-\n',
                     server.wait_for_log(r'"GET /v1/models/limited"'))


def test_idle_connections_are_capped_and_then_closed(server):
    """Issue 14: 20,000 idle connections were never closed and exhausted the file handles."""
    idle = [connect(server) for _ in range(6)]
    time.sleep(0.2)
    with connect(server) as extra:  # the 7th: answered 503 at once, and closed
        answer = read_all(extra)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "Too many connections: the server's limit is 6 (--max-connections); try "
                 "again later."}
    started = time.time()
    for connection in idle:  # closed by the server after --keepalive-timeout 3
        assert read_all(connection) == b""
        connection.close()
    assert time.time() - started < 6
    assert server.request(PREDICT, {"instances": ["abc"]})[0] == 200
    lines = server.wait_for_log("accepting connections again")
    assert "6 connections open, the limit (--max-connections): answering new ones 503" in lines
    assert "after refusing 1 past the limit of 6" in lines


def test_a_half_sent_request_is_dropped(server):
    """A body that stops arriving gets a 408 after --read-timeout, then the connection ends."""
    with connect(server) as connection:
        connection.sendall(b"POST /v1/models/limited:predict HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 100\r\n\r\n{\"instances\": [\"ab")
        started = time.time()
        answer = read_all(connection)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"did not arrive within 1 s (--read-timeout)" in answer
    assert time.time() - started < 5
    with connect(server) as connection:  # half a request line: closed as an idle one
        connection.sendall(b"POST /v1/models/limi")
        started = time.time()
        assert read_all(connection) == b""
    assert time.time() - started < 6


def test_a_client_that_leaves_is_one_log_line(server):
    """Issue 14: a client gone mid-request was a 15-line traceback counted as a 500."""
    server.new_stderr()
    with connect(server) as connection:
        connection.sendall(b"POST /v1/models/limited:predict HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 100\r\n\r\n{\"instances\": [\"ab")
        time.sleep(0.2)
    lines = server.wait_for_log(r'" 499 ')
    assert re.search(r'INFO 127\.0\.0\.1 "POST /v1/models/limited:predict" 499 [0-9.]+ ms '
                     r'instances=-\n', lines), lines
    time.sleep(0.5)
    lines += server.new_stderr()
    assert "Traceback" not in lines and " 500 " not in lines, lines


def test_memory_stays_flat_over_max_size_requests(server):
    """Issue 14: a 0.9 MB body took the server from 1.8 GB to 14 GB; now a request is capped."""
    words = ["".join("abcdefgh"[(i * 7 + j) % 8] for j in range(2 + i % 11)) for i in range(1024)]
    assert server.request(PREDICT, {"instances": words})[0] == 200
    first = server.rss_mb()
    for _ in range(15):
        status, body = server.request(PREDICT, {"instances": words})
        assert status == 200 and len(body["predictions"]) == 1024
    assert server.rss_mb() - first < 300
    status, body = server.request(PREDICT, {"instances": words + ["abc"]})
    assert status == 400 and "the limit is 1024 a request (--max-batch-size)" in body["error"]


def test_stops_cleanly_on_sigint(server):
    code, stdout, stderr = server.stop()
    assert code == 0 and stdout == ""
    assert "Traceback" not in server.stderr + stderr


def run_serve(base, *args):
    return subprocess.run(["s2s-attn", "serve", str(base), *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_a_port_in_use_is_one_line_and_exit_2(exported):
    """Issue 14: "Serving ... at ..." was printed, then a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(exported, "--port", str(port))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"s2s-attn serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_a_port_out_of_range_is_one_line_and_exit_2(exported):
    result = run_serve(exported, "--port", "99999")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "s2s-attn serve: error: port must be from 0 to 65535 (0: any free port); got 99999"]
