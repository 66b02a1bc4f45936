"""The README's main job: translate with the shipped G2P model and draw its attention."""

import json
import os
import subprocess

from PIL import Image

from keras_s2s_attn.plotting import figure_inches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "saved_models", "g2p_en")


def test_readme_main_job_translates_and_writes_the_attention_png(tmp_path):
    assert os.path.isdir(SHIPPED), "the G2P model must ship with the repository"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = ["s2s-attn", "translate", SHIPPED, "attention", "seq2seq"]
    result = subprocess.run(command + ["--plot", "attention.png"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    attention, seq2seq = result.stdout.split("\n")[:2]
    assert attention == "AH T EH N SH AH N"
    assert seq2seq.split()[0] == "S" and len(seq2seq.split()) >= 6
    rows = json.loads(subprocess.run(command + ["--json"], capture_output=True, text=True,
                                     env=env, timeout=300, check=True).stdout)
    maps = [(None, [t for t in row["source_tokens"] if t], [t for t in row["target_tokens"] if t])
            for row in rows]
    width, height = figure_inches(maps)
    assert Image.open(tmp_path / "attention.png").size == (round(width * 100),
                                                          round(height * 100))


def test_capitalised_and_empty_inputs_are_answered_right():
    """The model was trained on lower-cased words; its tokenizer lower-cases input too.

    (v3 read "Attention" with an unknown "A" and answered IH T EH N SH AH N.)
    """
    words = ["Attention", "CAT", "Hello", "attention", "cat", "hello", "", "   "]
    result = subprocess.run(["s2s-attn", "translate", SHIPPED, "--json", *words],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert [row["translation"] for row in rows] == [
        "AH T EH N SH AH N", "K AE T", "HH EH L OW"] * 2 + ["", ""]
    assert [row["unknown_tokens"] for row in rows] == [0] * 8
    assert result.stderr == ""  # TensorFlow starts quietly
