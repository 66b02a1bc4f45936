"""A tiny trained run, shared by the export and serving tests."""

import asyncio
import json
import os
import random
import re
import select
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from keras_s2s_attn.options import ServingOptions
from keras_s2s_attn.serving import make_app
from keras_s2s_attn.training import train


# A tiny model for `train()` in-process on `write_pairs` data (the tests that train runs).
TINY = {"units": 16, "embedding_dim": 8, "batch_size": 32, "dropout": 0.0, "verbose": 0}


def write_pairs(path, n=800, seed=0):
    """Lower-case letters in, the word reversed and upper-cased out (two vocabularies)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(n):
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 8)))
            handle.write(f"{word}\t{word[::-1].upper()}\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory whose graph needs no tensorflow-text op (normalization=None).

    Trained once per test run, for every pytest-xdist worker: tests read it and
    never write into it (they copy it first).
    """
    from tests.conftest import shared_by_workers

    def make(root):
        run_dir = os.path.join(root, "run")
        if not os.path.exists(os.path.join(run_dir, "model.keras")):
            train(write_pairs(root / "pairs.tsv"), run_dir, epochs=8, units=32,
                  embedding_dim=16, batch_size=32, dropout=0.0, learning_rate=0.01,
                  normalization=None, max_source_length=12, verbose=0)
        return run_dir

    return shared_by_workers(tmp_path_factory, "tiny_run", make)


def http_json(url, data=None, headers=None, method=None, timeout=60):
    """`(status, parsed JSON body)` of one HTTP request: GET without `data`, else POST
    (or `method`); an error status is an answer like any other."""
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method=method or ("GET" if data is None else "POST"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Server:
    """make_app's application on an ephemeral loopback port, in a thread."""

    def __init__(self, base_path, **options):
        self.app = make_app(base_path, ServingOptions(**{"poll_seconds": 0.2, **options}))
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

    def request(self, path, body=None, raw=None, headers=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        return http_json(self.url(path), data, headers, timeout=120)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


MIXED_TEXTS = (
    ["abc", "hgfedcba", "", "   ", "\t\n", "a" * 100_000, "abc\u00e9", "dcba  abc", "\U0001F355"]
    + ["".join("abcdefgh"[(i * 7 + j) % 8] for j in range(1 + i % 11)) for i in range(55)]
)
INVALID_UTF8 = b"ab\xff\xfecd"


class ServeProcess:
    """`s2s-attn serve BASE_PATH ARGS... --port 0` in its own process, on loopback.

    The port is read from the URL the server prints on stdout once it is ready
    (`stdout_line`); what it writes on stderr is kept in `stderr` (see
    `new_stderr`). Use as a context manager; `request(path, body)` returns
    `(status, JSON)`.
    """

    def __init__(self, base_path, *args, env=None):
        self.command = ["s2s-attn", "serve", str(base_path), *args, "--port", "0"]
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        self.process, self.port, self.stdout_line, self.stderr = None, None, "", ""

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=self.env)
        os.set_blocking(self.process.stderr.fileno(), False)
        ready, _, _ = select.select([self.process.stdout], [], [], 180)
        self.stdout_line = self.process.stdout.readline() if ready else ""
        match = re.fullmatch(r"Serving \S+ version [0-9]+ at http://127\.0\.0\.1:([1-9][0-9]*)"
                             r"/v1/models/\S+\n", self.stdout_line)
        if not match:
            self.process.kill()
            raise AssertionError(f"no URL on stdout: {self.stdout_line!r}; stderr: "
                                 f"{self.new_stderr()[-3000:]}")
        self.port = int(match.group(1))
        return self

    def new_stderr(self):
        """What the server wrote on stderr since the last call (kept in `stderr` too)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.process.stderr.fileno(), 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", "replace")
        self.stderr += text
        return text

    def wait_for_log(self, pattern, seconds=10):
        """The stderr lines written from now on until one matches `pattern`."""
        deadline, lines = time.time() + seconds, ""
        while time.time() < deadline:
            lines += self.new_stderr()
            if re.search(pattern, lines):
                return lines
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} on stderr within {seconds} s: {lines[-2000:]}")

    def rss_mb(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) / 1024

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, path, body=None, timeout=60):
        return http_json(self.url(path), None if body is None else json.dumps(body).encode(),
                         timeout=timeout)

    def stop(self):
        """Stops the server (SIGINT, as Ctrl-C); returns `(returncode, stdout, the stderr
        written since the last `new_stderr`)`."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.set_blocking(self.process.stderr.fileno(), True)
        rest = self.process.stderr.read()
        self.stderr += rest
        return self.process.returncode, self.process.stdout.read(), rest

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.stop()


def export_strategies(beam_width=3, num_samples=3, seed=5):
    """The strategies the tests export: a narrow beam without length penalty (so its
    n-best list is in the order of its scores), and sampling with a fixed seed (so a fresh
    process, the server and Python draw the same samples)."""
    from keras_s2s_attn.options import BeamOptions, SamplingOptions
    from keras_s2s_attn.translation import default_strategies

    return default_strategies(BeamOptions(beam_width=beam_width, length_penalty_weight=0.0),
                              SamplingOptions(num_samples=num_samples, seed=seed))


SIGNATURES = ("serving_default", "beam_search", "sample")


def greedy_only():
    """Strategies for tests of versions and reloads, not of the searches: each other
    signature costs a trace and a save (~2 s each for the tiny run)."""
    from keras_s2s_attn.decoding import GreedySearch

    return {"serving_default": GreedySearch()}
