import fcntl
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One compute thread per pytest-xdist worker, and in the processes it starts: the
# workers already fill the cores, and a thread pool per worker on top of that made
# PyTorch's training ~3x slower (its OpenMP threads spin while they wait for a core).
# Set before Keras imports its backend.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("XLA_FLAGS",
                          "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import keras  # noqa: E402
import pytest  # noqa: E402

from keras_s2s_attn import (  # noqa: E402
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    build_seq2seq_model,
)
from keras_s2s_attn.callbacks import build_optimizer  # noqa: E402
from keras_s2s_attn.synthetic import reversal_task  # noqa: E402

REVERSAL_SYMBOLS = 20

# KERAS_BACKEND picks the backend, as for any Keras program. Under JAX and
# PyTorch only these files run: the layers, the model, training and
# `generation` (keras.ops), and the cross-backend checks. The rest is the
# TensorFlow side, which needs the TensorFlow backend.
BACKEND = keras.config.backend()
ANY_BACKEND = ("test_attention.py", "test_decoder.py", "test_models.py", "test_learning.py",
               "test_backends.py", "test_recurrence.py")


def pytest_report_header(config):
    return f"Keras backend: {BACKEND}"


def pytest_ignore_collect(collection_path, config):
    name = collection_path.name
    if BACKEND != "tensorflow" and name.startswith("test_") and name.endswith(".py"):
        return name not in ANY_BACKEND
    return None


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(backend, *args, timeout=600):
    """`python ARGS...` under the Keras `backend`, from the repository root; its stdout."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{backend}: {done.stderr[-3000:]}"
    return done.stdout


def run_cli(capsys, *args):
    """`s2s-attn ARGS...` as `cli.main` in this process: `(exit code, stdout, stderr)`.

    The same argument parsing, handlers and exit codes as the installed command,
    without a TensorFlow start-up (~7 s) per call. Subprocesses stay where the
    process itself is under test: signals, start-up, test_cli and test_main_job.
    """
    from keras_s2s_attn import cli

    capsys.readouterr()
    try:
        code = cli.main([str(arg) for arg in args])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tensorflow_only(reason):
    """Marks a test of an agnostic file that checks something TensorFlow-specific."""
    return pytest.mark.skipif(BACKEND != "tensorflow", reason=f"TensorFlow backend only: {reason}")


# The longest test files, started first: the two pytest-xdist workers take whole files
# in this order (setup.cfg turns off xdist's own reordering, by number of tests, which
# started test_model_matrix.py's four tests and 4 minutes near the end), so the long
# ones overlap the rest instead of running alone at the end. Seconds measured
# (2026-11-30): TensorFlow 243, 170, 121, 100, 98, 75, 69; under JAX test_models.py
# takes 150 and test_learning.py 74, under PyTorch 25 and 163 (its training is eager).
SLOW_FIRST = ("test_model_matrix.py", "test_export.py", "test_train_cli.py",
              "test_decoding.py", "test_serving.py", "test_models.py", "test_learning.py",
              "test_multi_worker.py", "test_backends.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order within each file is kept


@pytest.fixture(scope="session", autouse=True)
def _jax_compilation_cache(tmp_path_factory):
    """Under JAX, one XLA compilation cache for the pytest-xdist workers of a run.

    The tests build many models of the same few shapes, and JAX compiles each
    new function (a reloaded model's training step, an eager call's scan) again
    even when the program is the same; the cache answers those from disk (a
    reloaded model's first fit: 5.4 s -> 1.0 s). It changes no result.
    """
    if BACKEND == "jax":
        import jax

        def configure(directory):
            jax.config.update("jax_compilation_cache_dir", str(directory))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

        shared_by_workers(tmp_path_factory, "jax-compilation-cache", configure)
    yield


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


def reversal_test_set():
    return reversal_task(500, num_symbols=REVERSAL_SYMBOLS, seed=2)


def train_reversal(attention, epochs=3):
    """A small model trained on reversing 5-25 random symbols; (model, test set).

    3 epochs of 100 steps, Adam at 8e-3 decaying to 4e-4 on a cosine: under each
    backend it reaches >= 95% exact match with a margin (measured 0.986-0.994,
    with one thread per process or several), the plain model stays near 0 on the
    long rows. A constant rate left the last epoch's accuracy swinging by 5
    points; more epochs cost minutes under PyTorch, which Keras runs eagerly.
    """
    keras.utils.set_random_seed(0)
    steps_per_epoch, batch_size = 100, 64
    inputs, labels = reversal_task(steps_per_epoch * batch_size, num_symbols=REVERSAL_SYMBOLS,
                                   seed=1)
    test_set = reversal_test_set()
    vocab = 4 + REVERSAL_SYMBOLS
    model = build_seq2seq_model(vocab, vocab, embedding_dim=32, units=64, attention=attention,
                                dropout=0.0)
    rate = keras.optimizers.schedules.CosineDecay(8e-3, decay_steps=epochs * steps_per_epoch,
                                                  alpha=0.05)
    model.compile(keras.optimizers.Adam(rate, clipnorm=1.0),
                  loss=MaskedSparseCategoricalCrossentropy(), metrics=[MaskedAccuracy()])
    build_optimizer(model)  # one trace of the training step under TensorFlow, not two
    # Arrays, not tf.data: the same input path on every backend (Keras shuffles each epoch).
    model.fit(inputs, labels, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    return model, test_set


def shared_by_workers(tmp_path_factory, name, make):
    """`make(directory)`'s result, computed once per test run for all pytest-xdist workers.

    The first worker to ask makes it into `directory` (under a lock) and the
    others wait and reuse it: `make` must return the same thing when
    `directory` already holds its files (it is called then too, to load them).
    Without xdist, `directory` is this process's own.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every worker of a run
    if run is None:
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    with open(shared / f"{name}-{run}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        directory = shared / f"{name}-{run}"
        directory.mkdir(exist_ok=True)
        return make(directory)


@pytest.fixture(scope="session")
def reversal_model(tmp_path_factory):
    """Trained once per test run and shared by the learning and decoding tests
    (and by the pytest-xdist workers, through a `.keras` file)."""
    def make(directory):
        path = directory / "reversal.keras"
        if path.exists():
            return keras.saving.load_model(path), reversal_test_set()
        model, test_set = train_reversal("additive")
        model.save(path)
        return model, test_set

    return shared_by_workers(tmp_path_factory, "reversal", make)


if BACKEND == "tensorflow":
    from tests.serving_fixtures import tiny_run  # noqa: E402,F401  (a shared fixture)
