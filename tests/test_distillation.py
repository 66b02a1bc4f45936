"""Sequence-level knowledge distillation: `s2s-attn distill` / `distillation.distill_pairs`."""

import json
import shutil

import pytest

from keras_s2s_attn.data import read_pairs
from keras_s2s_attn.decoding import BeamSearch
from keras_s2s_attn.distillation import distill_pairs
from keras_s2s_attn.translation import Translator
from tests.conftest import run_cli
from tests.serving_fixtures import write_pairs


def test_distilled_targets_are_the_teachers_beam_outputs(tiny_run, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.tsv", n=70, seed=5)
    sources, targets = read_pairs(pairs)
    out = tmp_path / "distilled.tsv"
    code, stdout, err = run_cli(capsys, "distill", tiny_run, "--train", pairs, "--out", out,
                                "--batch-size", "32", "--keep-references")
    assert code == 0, err[-3000:]
    assert json.loads(stdout) == {"pairs": 70, "distilled": 70, "empty": 0, "references": 70,
                                  "out": str(out)}
    # The teacher's own beam search (the default: width 4, one result), batch by batch.
    beam = Translator.from_run(tiny_run, strategies={"beam": BeamSearch(num_results=1)})
    expected = [text.decode() for text in beam(sources, "beam")["translation"]]
    written = read_pairs(out)
    assert written == (sources + sources, expected + targets)
    # The teacher is trained but not perfect: its outputs are not simply the references.
    assert sum(e == t for e, t in zip(expected, targets)) >= 35


def test_an_ensemble_of_teachers_decodes_as_one(tiny_run, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(tiny_run, second)
    pairs = write_pairs(tmp_path / "pairs.tsv", n=20, seed=6)
    sources, _ = read_pairs(pairs)
    summary = distill_pairs([tiny_run, second], pairs, tmp_path / "out.tsv", strategy="greedy")
    assert summary["distilled"] == 20 and summary["references"] == 0
    # Two copies of one model: their ensemble answers as the model alone.
    alone = Translator.from_run(tiny_run)(sources)["translation"]
    assert read_pairs(tmp_path / "out.tsv")[1] == [text.decode() for text in alone]
    with pytest.raises(ValueError, match="An ensemble of teachers must be run directories"):
        distill_pairs([tiny_run, str(tmp_path / "out.tsv")], pairs, tmp_path / "x.tsv")
