"""Every Keras backend: the same function under each, and "train anywhere, serve with TF Serving".

Run under each backend (`KERAS_BACKEND=jax python -m pytest -x -q`, see
conftest.py); the comparisons that need several backends start the others
in their own processes.
"""

import importlib.util
import itertools
import os
import subprocess
import textwrap

import numpy as np
import pytest

from keras_s2s_attn.options import CELL_TYPES, SCORES, STYLES
from tests import backend_parity
from tests.conftest import BACKEND, REPO, run_python, tensorflow_only

BACKENDS = ("tensorflow", "jax", "torch")  # each the name of its Python package too


@tensorflow_only("it starts JAX and PyTorch in their own processes and compares all three")
def test_same_weights_give_the_same_logits_under_the_three_backends(tmp_path):
    missing = [b for b in BACKENDS if importlib.util.find_spec(b) is None]
    if missing:
        pytest.skip(f"not installed: {missing} (.ci/run installs jax[cpu] and CPU torch)")
    logits = {"tensorflow": backend_parity.all_logits()}
    for backend in ("jax", "torch"):
        out = tmp_path / f"{backend}.npz"
        run_python(backend, "-m", "tests.backend_parity", str(out))
        with np.load(out) as stored:
            assert str(stored["backend"]) == backend
            logits[backend] = {key: stored[key] for key in logits["tensorflow"]}
    for index, config in enumerate(backend_parity.CONFIGS):
        key = str(index)
        assert np.isfinite(logits["tensorflow"][key]).all()
        assert np.abs(logits["tensorflow"][key]).max() > 0.1, config  # not all near zero
        for a, b in (("tensorflow", "jax"), ("tensorflow", "torch"), ("jax", "torch")):
            diff = np.abs(logits[a][key] - logits[b][key]).max()
            assert diff <= 1e-4, f"{config}: {a} vs {b} differ by {diff}"


def test_parity_models_cover_every_pair_of_score_style_and_cell():
    pairs = {(a, b): set() for a, b in (("attention", "style"), ("attention", "cell_type"),
                                        ("style", "cell_type"))}
    for config in backend_parity.SCORE_STYLE_CELL:
        for (a, b), seen in pairs.items():
            seen.add((config[a], config[b]))
    values = {"attention": SCORES, "style": STYLES, "cell_type": CELL_TYPES}
    for (a, b), seen in pairs.items():
        assert seen == set(itertools.product(values[a], values[b])), (a, b)


def test_the_layers_import_here_and_the_tensorflow_side_says_what_it_needs():
    script = textwrap.dedent("""
        import sys
        import keras_s2s_attn
        # The layers first, as the README's layers-only example does (Keras not imported yet).
        from keras_s2s_attn import AttentionDecoder, BahdanauLuongAttention
        from keras_s2s_attn import build_seq2seq_model, greedy_search
        from keras_s2s_attn.text import make_tokenizer  # TensorFlow installed: works anywhere
        print(sorted(m for m in ("keras_s2s_attn.decoding.search", "keras_s2s_attn.export")
                     if m in sys.modules))  # the TensorFlow side is not loaded on the way
        try:
            from keras_s2s_attn import Translator
        except ImportError as error:
            print(type(error).__name__, error)
        else:
            print("imported")
    """)
    lines = run_python(BACKEND, "-c", script, timeout=120).splitlines()
    assert lines[0] == "[]"
    if BACKEND == "tensorflow":
        assert lines[1] == "imported"
    else:
        assert lines[1].startswith(
            f"BackendError keras_s2s_attn.translation needs the TensorFlow Keras backend; "
            f"Keras runs on '{BACKEND}'. Set KERAS_BACKEND=tensorflow")
        assert "keras_s2s_attn.generation decodes on any backend" in lines[1]
        # The command line says the same, in one line, with exit code 2.
        env = {**os.environ, "KERAS_BACKEND": BACKEND}
        done = subprocess.run(["s2s-attn", "translate", os.path.join(REPO, "saved_models",
                                                                     "g2p_en"), "attention"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(
            "s2s-attn translate: error: keras_s2s_attn.translation needs the TensorFlow Keras "
            "backend"), done.stderr
