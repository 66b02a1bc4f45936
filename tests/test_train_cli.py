"""End-to-end tests of `s2s-attn train` (subprocesses, as a user runs it)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from keras_s2s_attn.callbacks import read_metrics
from tests.serving_fixtures import write_pairs

SMALL = ["--units", "32", "--embedding-dim", "16", "--batch-size", "32", "--dropout", "0"]


def env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def s2s(*args, timeout=300):
    return subprocess.run(["s2s-attn", *args], capture_output=True, text=True, env=env(),
                          timeout=timeout)


def test_train_writes_a_complete_run_directory(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.tsv")
    run = tmp_path / "runs" / "demo"
    result = s2s("train", "--train", pairs, "--tokenizer", "char", "--out", str(run),
                 "--epochs", "4", *SMALL, "--learning-rate", "0.01", "--encoder-layers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.json", "best.keras", "model.keras", "metrics.csv",
                 "source_vocab", "target_vocab", "logs"):
        assert (run / name).exists(), name
    assert not (run / "backup").exists()  # removed once the run finished
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["units"] == 32 and config["epochs"] == 4
    # --encoder-layers overrides --layers for the encoder only.
    assert (config["model"]["encoder_layers"], config["model"]["decoder_layers"]) == (2, 1)
    assert config["source_tokenizer"] == "char" and config["source_vocab_size"] == 4 + 8
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    val_losses = [float(r["val_loss"]) for r in rows]
    assert val_losses[-1] < 0.8 * val_losses[0], val_losses
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["epochs_trained"] == 4
    assert summary["val_loss"] == pytest.approx(min(val_losses))
    assert "val token accuracy" in result.stdout
    # A second run into the same directory is refused, not overwritten.
    again = s2s("train", "--train", pairs, "--out", str(run), "--epochs", "1", *SMALL)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_resume_after_sigkill_trains_each_epoch_exactly_once(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.tsv", n=1500)
    run = tmp_path / "run"
    epochs = 5
    args = ["train", "--train", pairs, "--out", str(run), "--epochs", str(epochs), *SMALL]
    process = subprocess.Popen(["s2s-attn", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env())
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if len(read_metrics(run / "metrics.csv")) >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(read_metrics(run / "metrics.csv"))
    assert 1 <= done_before < epochs
    assert not (run / "model.keras").exists()

    result = s2s("train", "--out", str(run), "--resume", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    assert json.loads(result.stdout[result.stdout.index("{"):])["epochs_trained"] == epochs
    assert (run / "model.keras").exists()


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.tsv", n=300)
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_s2s_attn import training
        strategy = training._strategy("mirrored")
        print("replicas", strategy.num_replicas_in_sync)
        summary = training.train({pairs!r}, {str(tmp_path / "run")!r}, epochs=2,
                                 strategy="mirrored", units=16, embedding_dim=8,
                                 batch_size=32, dropout=0.0, verbose=0)
        print("trained", summary["epochs_trained"], summary["val_loss"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout
    assert "trained 2" in result.stdout
    assert (tmp_path / "run" / "model.keras").exists()


def test_cli_errors_are_clear(tmp_path):
    missing = s2s("train", "--train", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "r"))
    assert missing.returncode == 2 and "nope.tsv" in missing.stderr
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nbroken line\n", encoding="utf-8")
    malformed = s2s("train", "--train", str(bad), "--out", str(tmp_path / "r2"))
    assert malformed.returncode == 2 and f"{bad}:2:" in malformed.stderr
    no_run = s2s("train", "--out", str(tmp_path / "r3"), "--resume")
    assert no_run.returncode == 2 and "Cannot resume" in no_run.stderr


def test_diverging_run_stops_and_keeps_the_last_good_model(tmp_path):
    import keras
    import numpy as np

    from keras_s2s_attn.training import load_run, train

    class Explode(keras.callbacks.Callback):
        """From the second epoch on, a learning rate no model survives."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.optimizer.learning_rate.assign(1e30)
                for variable in self.model.trainable_variables[:1]:
                    variable.assign(variable * np.float32(np.inf))

    pairs = write_pairs(tmp_path / "pairs.tsv", n=300)
    run = tmp_path / "run"
    summary = train(pairs, run, epochs=4, units=16, embedding_dim=8, batch_size=32,
                    dropout=0.0, lr_decay=False, callbacks=[Explode()], verbose=0)
    assert summary["stopped"] is not None and "NaN" in summary["stopped"]
    assert summary["best_epoch"] == 1
    assert not (run / "model.keras").exists()  # no final model from NaN weights
    model, _, _, _ = load_run(run)  # the best (epoch 1) model is intact
    assert all(np.isfinite(w).all() for w in model.get_weights())
    rows = read_metrics(run / "metrics.csv")
    assert np.isfinite(float(rows[0]["loss"])) and not np.isfinite(float(rows[-1]["loss"]))
