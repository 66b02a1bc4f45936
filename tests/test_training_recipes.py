"""Training recipes through `s2s-attn train`: mixed precision (`--mixed-precision`: on
CPU bfloat16 compute with float32 weights, logits and attention, through the run
directory and the export; the layers under the policy on every backend are in
tests/test_models.py) and scheduled sampling (`--scheduled-sampling`; the layer's
math on every backend in tests/test_decoder.py)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_s2s_attn.callbacks import build_optimizer
from keras_s2s_attn.export import export_saved_model
from keras_s2s_attn.runs import load_run
from keras_s2s_attn.translation import Translator
from tests.conftest import run_cli
from tests.serving_fixtures import write_pairs

WORDS = ["abc", "hgfe", "a", "bbcadeh"]


def test_mixed_precision_run_trains_and_exports_its_translations(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--train", write_pairs(tmp_path / "pairs.tsv"),
                             "--out", run, "--epochs", "2", "--units", "32",
                             "--embedding-dim", "16", "--dropout", "0.1",
                             "--learning-rate", "0.01", "--mixed-precision")
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert np.isfinite(summary["val_loss"]) and summary["val_accuracy"] > 0.3
    assert json.loads((run / "config.json").read_text())["mixed_precision"] == "mixed_bfloat16"
    model, _, _, _ = load_run(run)
    assert model.get_layer("decoder").compute_dtype == "bfloat16"
    assert all(weight.dtype == "float32" for weight in model.weights)
    # The loss reads float32 logits.
    compiled = build_optimizer(keras.saving.load_model(run / "best.keras"))
    logits = compiled({"source_ids": np.array([[5, 6, 7]]), "target_ids": np.array([[2, 6]])})
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"

    python = Translator.from_run(str(run))(WORDS)
    version = export_saved_model(str(run), tmp_path / "export" / "mixed")
    served = tf.saved_model.load(version).signatures["serving_default"](tf.constant(WORDS))
    assert served["translation"].numpy().tolist() == python["translation"].tolist()
    assert served["attention"].dtype == tf.float32
    np.testing.assert_allclose(served["attention"].numpy(), python["attention"], atol=1e-6)


def test_scheduled_sampling_rises_over_the_whole_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--train", write_pairs(tmp_path / "pairs.tsv"),
                             "--out", run, "--epochs", "2", "--units", "16",
                             "--embedding-dim", "8", "--batch-size", "64", "--dropout", "0",
                             "--learning-rate", "0.01", "--scheduled-sampling", "linear:0.4")
    assert code == 0, err[-3000:]
    assert json.loads((run / "config.json").read_text())["scheduled_sampling"] == "linear:0.4"
    decoder = keras.saving.load_model(run / "model.keras").get_layer("decoder")
    steps = int(keras.saving.load_model(run / "model.keras").optimizer.iterations)
    # One schedule step per training step; the probability reached 0.4 at the last one.
    assert decoder.sampling_steps == steps and float(decoder.sampling_calls) == steps
    assert float(decoder.sampling_schedule()) == pytest.approx(0.4)
    assert np.isfinite(json.loads(out)["val_loss"])
