"""Model selection on the task metric: `train(select_by=...)`, `--select-by wer`."""

import json

import keras
import numpy as np
import pytest

from keras_s2s_attn.callbacks import RunCheckpoint, read_metrics
from keras_s2s_attn.data import read_pairs, split_pairs
from keras_s2s_attn.evaluation import evaluate_texts, tokenizer_units
from keras_s2s_attn.translation import Translator
from tests.conftest import run_cli
from tests.serving_fixtures import write_pairs


@pytest.mark.parametrize("lower", [[], ["--lower"]], ids=["as-written", "lower-cased"])
def test_select_by_wer_keeps_the_epoch_with_the_lowest_greedy_wer(tmp_path, capsys, lower):
    # Lower-cased, the model answers "CBA" as "cba": right once compared the tokenizer's way.
    pairs = write_pairs(tmp_path / "pairs.tsv", n=600)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--train", pairs, "--out", run, "--epochs", "4",
                             "--units", "16", "--embedding-dim", "8", "--batch-size", "32",
                             "--dropout", "0", "--learning-rate", "0.01", "--select-by", "wer",
                             *lower)
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    wers = [float(row["val_wer"]) for row in read_metrics(run / "metrics.csv")]
    assert len(wers) == 4 and len(set(wers)) > 1, wers  # it moves as the model learns
    best = int(np.argmin(wers))
    assert summary["best_epoch"] == best + 1 and summary["val_wer"] == wers[best]
    # best.keras is that epoch's model: decoded apart, it has the WER logged for it.
    _, (sources, targets) = split_pairs(*read_pairs(pairs), valid_percent=5)
    translator = Translator.from_run(str(run))
    hypotheses = [text.decode() for text in translator(sources)["translation"]]
    assert hypotheses[0] == (hypotheses[0].lower() if lower else hypotheses[0].upper())
    assert evaluate_texts(hypotheses, [[t] for t in targets], ["wer"],
                          **tokenizer_units(translator.target_tokenizer))["wer"] == wers[best]
    assert wers[best] < 0.9  # the references are upper-case either way


def test_run_checkpoint_keeps_the_highest_value_in_max_mode(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    checkpoint = RunCheckpoint(tmp_path, monitor="val_bleu", mode="max")
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    saved = []
    for epoch, bleu in enumerate([10.0, 30.0, 20.0]):
        model.layers[0].bias.assign([float(epoch)])
        checkpoint.on_epoch_end(epoch, {"val_bleu": bleu, "loss": 1.0})
        saved.append(float(keras.saving.load_model(tmp_path / "best.keras").layers[0].bias[0]))
    assert saved == [0.0, 1.0, 1.0]  # epoch 2's 20 is no improvement on 30
