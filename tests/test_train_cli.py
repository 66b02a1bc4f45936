"""Tests of `s2s-attn train` and `training.train`.

Subprocesses where the process itself is under test (signals, a kill);
`cli.main` in-process for the command line's exit codes and output, and
`train()` in-process for the rest.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from keras_s2s_attn import cli, training
from keras_s2s_attn.callbacks import read_metrics, saved_epoch
from keras_s2s_attn.training import train
from tests.conftest import run_cli
from tests.serving_fixtures import TINY, write_pairs

SMALL = ["--units", "32", "--embedding-dim", "16", "--batch-size", "32", "--dropout", "0"]


def env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def test_train_writes_a_complete_run_directory(tmp_path, capsys, monkeypatch):
    traces = []
    train_step = keras.Model.train_step

    def counted(self, data):  # Python runs it only while `tf.function` traces the step
        traces.append(data)
        return train_step(self, data)

    monkeypatch.setattr(keras.Model, "train_step", counted)
    pairs = write_pairs(tmp_path / "pairs.tsv")
    run = tmp_path / "runs" / "demo"
    code, out, err = run_cli(capsys, "train", "--train", pairs, "--tokenizer", "char",
                             "--out", run, "--epochs", "4", *SMALL, "--learning-rate", "0.01",
                             "--encoder-layers", "2", "--early-stopping", "3")
    assert code == 0, err[-3000:]
    for name in ("config.json", "best.keras", "model.keras", "metrics.csv",
                 "source_vocab", "target_vocab", "logs"):
        assert (run / name).exists(), name
    assert saved_epoch(run) == 4  # the resume state is kept, to train on later
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["units"] == 32 and config["epochs"] == 4
    assert config["early_stopping"] == 3
    # --encoder-layers overrides --layers for the encoder only.
    assert (config["model"]["encoder_layers"], config["model"]["decoder_layers"]) == (2, 1)
    assert config["source_tokenizer"] == "char" and config["source_vocab_size"] == 4 + 8
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    val_losses = [float(r["val_loss"]) for r in rows]
    assert val_losses[-1] < 0.8 * val_losses[0], val_losses
    # stdout is the JSON summary alone (`train ... > summary.json`); progress is on stderr.
    summary = json.loads(out)
    assert summary["epochs_trained"] == 4 and summary["diverged"] is False
    assert summary["val_loss"] == pytest.approx(min(val_losses))
    assert "Epoch 4/4" in err and "val token accuracy" in err
    # Keras is told the number of batches: no "Unknown" first-epoch bar, no warning.
    assert "Unknown" not in err and "ran out of data" not in err
    # One trace of the training step for every batch shape and epoch (the optimizer's
    # variables exist before `fit`, so the first trace is not redone without them).
    assert len(traces) == 1
    # A second run into the same directory is refused, not overwritten.
    code, _, err = run_cli(capsys, "train", "--train", pairs, "--out", run, "--epochs", "1",
                           *SMALL)
    assert code == 2 and "already holds a run" in err


def test_resume_after_sigkill_trains_each_epoch_exactly_once(tmp_path, capsys):
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

    code, out, err = run_cli(capsys, "train", "--out", run, "--resume")
    assert code == 0, err[-3000:]
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    assert json.loads(out)["epochs_trained"] == epochs
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


def test_cli_errors_are_clear(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--train", tmp_path / "nope.tsv", "--out",
                           tmp_path / "r")
    assert code == 2 and "nope.tsv" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nbroken line\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "train", "--train", bad, "--out", tmp_path / "r2")
    assert code == 2 and f"{bad}:2:" in err
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "r3", "--resume")
    assert code == 2 and "Cannot resume" in err
    assert "Traceback" not in err


def test_diverging_run_stops_and_keeps_the_last_good_model(tmp_path):
    from keras_s2s_attn.runs import load_run

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
    assert summary["diverged"] is True and summary["best_epoch"] == 1
    assert not (run / "model.keras").exists()  # no final model from NaN weights
    assert saved_epoch(run) == 1  # a resume starts again from the last good epoch
    model, _, _, _ = load_run(run)  # the best (epoch 1) model is intact
    assert all(np.isfinite(w).all() for w in model.get_weights())
    rows = read_metrics(run / "metrics.csv")
    assert np.isfinite(float(rows[0]["loss"])) and not np.isfinite(float(rows[-1]["loss"]))


class StopAfter(keras.callbacks.Callback):
    """A time budget: asks `fit` to stop at the end of epoch `last` (0-based); counts epochs."""

    def __init__(self, last=None):
        super().__init__()
        self.last, self.epochs = last, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.last:
            self.model.stop_training = True


def test_resume_continues_a_finished_run_from_any_directory(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    write_pairs("pairs.tsv", n=300)
    first = train("pairs.tsv", "run", epochs=2, learning_rate=0.01, **TINY)  # relative paths
    assert first["epochs_trained"] == 2 and first["stopped"] is None
    before = read_metrics("run/metrics.csv")
    steps = int(keras.saving.load_model("run/model.keras").optimizer.iterations) // 2

    monkeypatch.chdir(tmp_path / "elsewhere")  # config.json holds absolute paths
    budget = StopAfter(last=2)
    summary = train(None, tmp_path / "run", resume=True, epochs=5, callbacks=[budget])
    # Only the third epoch ran, from the saved weights and optimizer state.
    assert budget.epochs == [2]
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert rows[:2] == before and [int(row["epoch"]) for row in rows] == [0, 1, 2]
    resumed = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert int(resumed.optimizer.iterations) == 3 * steps
    # A stop that a callback asks for is no divergence: the run ends with its model.keras.
    assert summary["stopped"] == "a callback stopped training after epoch 3 of 5"
    assert summary["diverged"] is False and summary["epochs_trained"] == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 5
    # A resume that asks for no more epochs than done is refused, and trains nothing.
    for epochs in (3, 2):
        with pytest.raises(ValueError, match="has trained 3 epoch.* asks for "
                                             f"{epochs} in all .*more than 3"):
            train(None, tmp_path / "run", resume=True, epochs=epochs)
    assert len(read_metrics(tmp_path / "run" / "metrics.csv")) == 3


@pytest.mark.parametrize("ema", [None, 0.5])
def test_early_stopping_ends_with_the_best_weights(tmp_path, ema):
    class Spoil(keras.callbacks.Callback):
        """From the third epoch on, a model that is worse and stays so (learning rate 0)."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                self.model.optimizer.learning_rate.assign(0.0)
                bias = self.model.get_layer("output_projection").bias
                bias.assign(bias + 100.0 * np.eye(bias.shape[0], dtype="float32")[0])

    pairs = write_pairs(tmp_path / "pairs.tsv", n=300)
    run = tmp_path / "run"
    summary = train(pairs, run, epochs=6, learning_rate=0.01, lr_decay=False, early_stopping=1,
                    ema=ema, callbacks=[Spoil()], **TINY)
    rows = read_metrics(run / "metrics.csv")
    val_losses = [float(row["val_loss"]) for row in rows]
    assert len(rows) == 3 and val_losses[1] < val_losses[0] and val_losses[2] > 10
    assert summary["epochs_trained"] == 3 and summary["best_epoch"] == 2
    assert summary["diverged"] is False
    assert summary["stopped"] == ("early stopping after epoch 3 of 6: val_loss did not improve "
                                  "for 1 epoch(s); model.keras has the weights of epoch 2")
    # With `ema`, both hold the best epoch's averages (EarlyStopping restores raw weights).
    final = keras.saving.load_model(run / "model.keras").get_weights()
    best = keras.saving.load_model(run / "best.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(final, best))


@pytest.mark.parametrize("option, message", [
    ({"learning_rate": -1}, r"`learning_rate` must be a number in \(0, inf\)"),
    ({"learning_rate": float("nan")}, "learning_rate=nan"),
    ({"dropout": 1.5}, r"`dropout` must be in \[0, 1\)"),
    ({"label_smoothing": 1.0}, "label_smoothing=1.0"),
    ({"epochs": 0}, "`epochs` must be a positive integer"),
    ({"batch_size": -64}, "batch_size=-64"),
    ({"units": 0}, "units=0"),
    ({"max_source_length": 0}, "max_source_length=0"),
    ({"early_stopping": 0}, "early_stopping=0"),
    ({"valid_percent": 100}, "valid_percent=100"),
    ({"ema": 1.0}, r"`ema` must be a number in \(0, 1\)"),
    ({"keep_checkpoints": 0}, "keep_checkpoints=0"),
    ({"scheduled_sampling": "cubic:0.3"}, "scheduled_sampling='cubic:0.3'"),
    ({"scheduled_sampling": "linear:2"}, r"'linear:P' or 'constant:P' with P in \[0, 1\]"),
    ({"select_by": "accuracy"}, "select_by='accuracy'"),
    ({"lr_decay": "step"}, "`lr_decay` must be one of 'plateau', 'cosine', 'none'"),
    ({"lower": "both"}, "`lower` must be one of False, True, 'source', 'target'"),
    ({"cell_type": "rnn"}, "cell_type='rnn'"),
    ({"attention": "cosine"}, "attention='cosine'"),
    ({"strategy": "tpu"}, "strategy='tpu'"),
    ({"tokenizer": "bytes"}, "tokenizer `kind` 'bytes'"),
    ({"min_count": 0}, "min_count"),
    ({"target_vocab": "no/such/dir"}, "`target_vocab`: no tokenizer directory at"),
])
def test_bad_options_are_refused_before_any_data_is_read(tmp_path, option, message):
    # The pairs file does not exist: reading it first would raise FileNotFoundError.
    with pytest.raises(ValueError, match=message):
        train(str(tmp_path / "missing.tsv"), tmp_path / "run", **option)
    assert not (tmp_path / "run").exists()


def test_given_vocabularies_are_used_as_they_are(tmp_path):
    train(write_pairs(tmp_path / "a.tsv", n=200), tmp_path / "a", epochs=1, **TINY)
    few = tmp_path / "b.tsv"  # two letters: built from it, each vocabulary would have 4 + 2
    few.write_text("ab\tBA\nba\tAB\n" * 50, encoding="utf-8")
    given = {f"{side}_vocab": tmp_path / "a" / f"{side}_vocab" for side in ("source", "target")}
    train(str(few), tmp_path / "b", epochs=1, **given, **TINY)
    for side in ("source", "target"):
        vocab = f"{side}_vocab/vocab.txt"
        assert (tmp_path / "b" / vocab).read_text() == (tmp_path / "a" / vocab).read_text()
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["vocabularies"]["target"] == str(tmp_path / "a" / "target_vocab")
    assert config["source_vocab_size"] == 4 + 8


class RecordLearningRate(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []  # (training steps so far, learning rate) at each epoch end

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        self.seen.append((int(optimizer.iterations),
                          float(keras.ops.convert_to_numpy(optimizer.learning_rate))))


def test_cosine_decay_follows_a_cosine_over_the_whole_run(tmp_path, capsys, monkeypatch):
    record, rate = RecordLearningRate(), 0.02
    run = tmp_path / "run"
    train(write_pairs(tmp_path / "pairs.tsv", n=300), run, epochs=3, learning_rate=rate,
          lr_decay="cosine", callbacks=[record], **TINY)
    steps = record.seen[-1][0]
    assert [seen[0] for seen in record.seen] == [steps // 3, 2 * steps // 3, steps]
    for done, value in record.seen:  # CosineDecay with alpha=0.01, no plateau halving
        expected = rate * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * done / steps)))
        assert value == pytest.approx(expected, rel=1e-5)
    assert json.loads((run / "config.json").read_text())["lr_decay"] == "cosine"
    # The command line: --lr-decay names it, --no-lr-decay is "none", and `train` (which
    # records what it is given, above) gets that; a spy, since training adds nothing here.
    given = []

    def spy(*args, lr_decay, **kwargs):
        given.append(lr_decay)
        return {"diverged": False}

    monkeypatch.setattr(training, "train", spy)
    for flags in (["--lr-decay", "cosine"], ["--no-lr-decay"], []):
        code, _, err = run_cli(capsys, "train", "--train", tmp_path / "pairs.tsv", "--out",
                               tmp_path / "cli", *flags)
        assert code == 0, err[-3000:]
    assert given == ["cosine", "none", "plateau"]


def test_lower_source_lower_cases_the_source_side_only(tmp_path, capsys):
    """G2P: "CAT" reads as "cat", and the phones come out as the dictionary writes them."""
    from keras_s2s_attn.translation import Translator

    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--train", write_pairs(tmp_path / "pairs.tsv", n=200),
                           "--out", run, "--epochs", "1", *SMALL, "--lower", "source")
    assert code == 0, err[-3000:]
    assert json.loads((run / "config.json").read_text())["tokenizer_options"]["lower"] == "source"
    translator = Translator.from_run(str(run))
    assert (translator.source_tokenizer.lower, translator.target_tokenizer.lower) == (True, False)
    assert "D" in translator.target_tokenizer.vocabulary  # upper-case, as in the pairs
    texts = translator(["ABC", "abc"])["translation"].tolist()
    assert texts[0] == texts[1]
    code, _, err = run_cli(capsys, "train", "--train", "x.tsv", "--out", tmp_path / "b",
                           "--lower", "both")
    assert code == 2 and "--lower: invalid choice: 'both'" in err


def test_cli_refuses_a_bad_option_in_one_line(tmp_path, capsys):
    code = cli.main(["train", "--train", str(tmp_path / "missing.tsv"), "--out",
                     str(tmp_path / "run"), "--learning-rate", "-1"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.strip() == ("s2s-attn train: error: `learning_rate` must be a number "
                                    "in (0, inf). Received: learning_rate=-1.0")


def test_ctrl_c_stops_with_one_line_saying_how_to_resume(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.tsv", n=300)
    run = tmp_path / "run"
    process = subprocess.Popen(["s2s-attn", "train", "--train", pairs, "--out", str(run),
                                "--epochs", "1000", *SMALL], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.time() + 240
    while time.time() < deadline and saved_epoch(run) == 0:  # a resume state to keep
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert stdout == "" and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"s2s-attn train: interrupted; continue with: s2s-attn train --out {run} --resume")
    assert 1 <= saved_epoch(run) == len(read_metrics(run / "metrics.csv"))
