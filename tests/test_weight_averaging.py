"""Weight averaging in training: an exponential moving average of the weights
(`train(ema=...)`, `--ema`) and the mean of the last epochs' checkpoints
(`keep_checkpoints`, `s2s-attn average`)."""

import io
import json
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest

from keras_s2s_attn.callbacks import STATE_WEIGHTS, build_optimizer, epoch_states, saved_epoch
from keras_s2s_attn.options import RUN_MODELS
from keras_s2s_attn.runs import load_run
from keras_s2s_attn.training import train
from keras_s2s_attn.translation import Translator
from tests.conftest import run_cli
from tests import serving_fixtures
from tests.serving_fixtures import write_pairs

TINY = {**serving_fixtures.TINY, "learning_rate": 0.01, "lr_decay": False}


class RecordSteps(keras.callbacks.Callback):
    """Keeps the raw trainable weights after each step; stops after `steps`."""

    def __init__(self, steps):
        super().__init__()
        self.steps, self.weights = steps, []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([keras.ops.convert_to_numpy(v)
                             for v in self.model.trainable_variables])
        if len(self.weights) == self.steps:
            self.model.stop_training = True


def state_model(run, state_dir):
    """A compiled model holding the training state saved in `state_dir`."""
    model = build_optimizer(keras.saving.load_model(run / "best.keras"))
    model.load_weights(os.path.join(state_dir, STATE_WEIGHTS))
    return model


def weight_groups(path):
    """The top-level groups of the weights file inside a `.keras` archive."""
    with zipfile.ZipFile(path) as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
            return sorted(weights)


def assert_all_close(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), e, **tolerance)


def test_ema_weights_equal_a_hand_computed_average_after_three_steps(tmp_path):
    decay = 0.5
    record = RecordSteps(3)
    run = tmp_path / "run"
    train(write_pairs(tmp_path / "pairs.tsv", n=400), run, epochs=1, ema=decay,
          callbacks=[record], **TINY)
    raw = record.weights
    assert len(raw) == 3
    # Keras' use_ema: the first step's weights, then ema = decay * ema + (1 - decay) * w.
    ema = [w.astype(np.float64) for w in raw[0]]
    for step in raw[1:]:
        ema = [decay * e + (1 - decay) * w for e, w in zip(ema, step)]
    tolerance = {"rtol": 1e-5, "atol": 1e-6}
    best = keras.saving.load_model(run / "best.keras")
    assert_all_close(best.trainable_weights, ema, **tolerance)
    final = keras.saving.load_model(run / "model.keras")
    assert_all_close(final.trainable_weights, ema, **tolerance)
    # The averages are not the raw weights: three steps at 0.01 move them apart.
    assert max(np.abs(e - w).max() for e, w in zip(ema, raw[-1])) > 1e-3
    # The resume state keeps the raw weights, and the averages in the optimizer.
    (_, state_dir), = epoch_states(run)
    state = state_model(run, state_dir)
    assert_all_close(state.trainable_weights, raw[-1], rtol=0, atol=0)
    assert_all_close(state.optimizer._model_variables_moving_average, ema, **tolerance)


def test_average_writes_the_mean_of_the_last_epochs_weights(tmp_path, capsys):
    run = tmp_path / "run"
    train(write_pairs(tmp_path / "pairs.tsv", n=300), run, epochs=4, keep_checkpoints=3,
          **TINY)
    states = epoch_states(run)
    assert [epoch for epoch, _ in states] == [2, 3, 4] and saved_epoch(run) == 4
    code, out, err = run_cli(capsys, "average", run, "--last", "2")
    assert code == 0, err
    assert out.strip() == str(run / "averaged.keras")
    assert err.strip() == f"averaged epochs 3, 4 into {run / 'averaged.keras'}"
    epochs = [state_model(run, state_dir).get_weights() for _, state_dir in states[1:]]
    mean = [np.mean([weights[i] for weights in epochs], axis=0, dtype=np.float64)
            for i in range(len(epochs[0]))]
    averaged, _, _, _ = load_run(run, "averaged")
    assert_all_close(averaged.get_weights(), mean, rtol=1e-6, atol=1e-7)
    # Stored for inference: without the optimizer's state that best.keras carries.
    assert weight_groups(run / "averaged.keras") == ["layers", "vars"]
    assert weight_groups(run / "best.keras") == ["layers", "optimizer", "vars"]
    assert max(np.abs(a - b).max() for a, b in zip(*epochs)) > 1e-3  # two different epochs
    # translate and evaluate decode the model --which names, and only a run has several.
    scores = {}
    for which in RUN_MODELS:
        code, out, err = run_cli(capsys, "translate", run, "abc", "cab", "--json",
                                 "--which", which)
        assert code == 0, err
        scores[which] = [row["score"] for row in json.loads(out)]
        expected = Translator.from_run(run, which)(["abc", "cab"])["score"]
        np.testing.assert_allclose(scores[which], expected, rtol=1e-4)
    assert scores["averaged"] != scores["final"]
    code, out, err = run_cli(capsys, "evaluate", run, tmp_path / "pairs.tsv", "--metrics",
                             "exact", "--which", "averaged")
    assert code == 0 and json.loads(out)["sources"] == 300, err
    code, _, err = run_cli(capsys, "translate", tmp_path / "no_run", "abc", "--which", "final")
    assert code == 2
    assert err.strip() == ("s2s-attn translate: error: `which` ('final') picks one of a run "
                           f"directory's models; {str(tmp_path / 'no_run')!r} is not a run "
                           "directory (an export holds one model).")
    # More epochs than the run kept, or a run without the file: one line naming the fix.
    code, _, err = run_cli(capsys, "average", run, "--last", "4")
    assert code == 2
    assert err.strip() == (f"s2s-attn average: error: `last`: {str(run)!r} keeps the states of "
                           "3 epoch(s), fewer than the 4 asked for; train with "
                           "keep_checkpoints=4 or more (--keep-checkpoints).")
    os.remove(run / "averaged.keras")
    with pytest.raises(FileNotFoundError, match="average its last epochs first"):
        load_run(run, "averaged")
