"""A tiny trained run, shared by the export and serving tests."""

import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from keras_s2s_attn.training import train


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
    """A run directory whose graph needs no tensorflow-text op (normalization=None)."""
    root = tmp_path_factory.mktemp("tiny_run")
    run_dir = os.path.join(root, "run")
    train(write_pairs(root / "pairs.tsv"), run_dir, epochs=8, units=32, embedding_dim=16,
          batch_size=32, dropout=0.0, learning_rate=0.01, normalization=None,
          max_source_length=12, verbose=0)
    return run_dir


MIXED_TEXTS = (
    ["abc", "hgfedcba", "", "   ", "\t\n", "a" * 100_000, "abc\u00e9", "dcba  abc", "\U0001F355"]
    + ["".join("abcdefgh"[(i * 7 + j) % 8] for j in range(1 + i % 11)) for i in range(55)]
)
INVALID_UTF8 = b"ab\xff\xfecd"


def free_port():
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`s2s-attn serve BASE_PATH ARGS...` in its own process on a loopback port.

    Use as a context manager; `request(path, body)` returns `(status, JSON)`.
    """

    def __init__(self, base_path, *args, port=None, env=None):
        self.port = port or free_port()
        self.command = ["s2s-attn", "serve", str(base_path), "--port", str(self.port), *args]
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        self.process = None

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=self.env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}: "
                                     f"{self.process.stderr.read()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("serve did not listen within 120 s")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path), data=data,
                                         method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self):
        """Stops the server (SIGINT, as Ctrl-C); returns `(returncode, stdout, stderr)`."""
        self.process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
        return self.process.returncode, stdout, stderr

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.stop()
