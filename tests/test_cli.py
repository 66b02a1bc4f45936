"""The `s2s-attn` command as a user meets it: start-up, options, reports (subprocesses)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from keras_s2s_attn import export
from keras_s2s_attn.cli import MAX_PLOTTED_MAPS
from keras_s2s_attn.plotting import figure_inches
from tests.serving_fixtures import export_strategies


def user_env():
    """The environment of a user's shell: no TF_CPP_MIN_LOG_LEVEL set by the tests."""
    return {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}


def s2s(*args):
    return subprocess.run(["s2s-attn", *args], capture_output=True, text=True, timeout=300,
                          env=user_env())


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("cli") / "reverser"
    export.export_saved_model(tiny_run, base, strategies=export_strategies(beam_width=2))
    return str(base)


def test_help_imports_no_tensorflow():
    """--help (of the command and of each sub-command) starts without TensorFlow or Keras."""
    script = textwrap.dedent("""
        import contextlib, io, sys
        from keras_s2s_attn.cli import main
        for argv in (["--help"], *([name, "--help"] for name in
                                   ("train", "average", "distill", "export", "translate",
                                    "evaluate", "serve"))):
            with contextlib.redirect_stdout(io.StringIO()) as shown:
                try:
                    main(argv)
                except SystemExit as done:
                    assert done.code == 0, (argv, done.code)
            assert "usage: s2s-attn" in shown.getvalue(), argv
        heavy = sorted(name for name in ("tensorflow", "keras", "sacrebleu") if name in sys.modules)
        print(heavy)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env=user_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_translate_reports_quietly_with_options_anywhere(model, tmp_path):
    """One run checks several promises of `translate` (each TensorFlow start costs seconds):

    options before and after the texts; no TensorFlow start-up lines on
    stderr, only the command's own notes; unknown source tokens counted per
    text and reported; --plot drawing at most MAX_PLOTTED_MAPS maps and
    saying so.
    """
    texts = ["abc", "abz"] + ["".join("abcdefgh"[(i + j) % 8] for j in range(2 + i % 5))
                              for i in range(MAX_PLOTTED_MAPS + 4)]
    plot = tmp_path / "maps.png"
    result = s2s("translate", "--json", model, texts[0], "--plot", str(plot), *texts[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert len(rows) == len(texts) and rows[0]["translation"] == "CBA"
    assert [row["unknown_tokens"] for row in rows[:3]] == [0, 1, 0]
    assert result.stderr.splitlines() == [
        f"attention maps of the first {MAX_PLOTTED_MAPS} of {len(texts)} texts (at most "
        f"{MAX_PLOTTED_MAPS}) written to {plot}",
        "note: 1 of 22 texts had source tokens the model does not know, read as [UNK] (1 in "
        "all; first: 'abz', 1). Check the input against the training data (case, script, "
        "alphabet); --json shows unknown_tokens per text."]
    maps = [(None, [t for t in row["source_tokens"] if t], [t for t in row["target_tokens"] if t])
            for row in rows[:MAX_PLOTTED_MAPS]]
    width, height = figure_inches(maps)
    assert Image.open(plot).size == (round(width * 100), round(height * 100))


def test_verbose_shows_tensorflow_start_up():
    result = s2s("evaluate", "--verbose", "no-such-model", "no-such-pairs.tsv")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[-1] == "s2s-attn evaluate: error: No pairs file at 'no-such-pairs.tsv'"
    assert len(lines) > 1  # TensorFlow's own start-up lines come first
    quiet = s2s("evaluate", "no-such-model", "no-such-pairs.tsv")
    assert quiet.stderr.splitlines() == lines[-1:]


def test_evaluate_refuses_unknown_metrics_before_doing_anything():
    result = s2s("evaluate", "no-such-model", "no-such-pairs.tsv", "--metrics", "wer,bogus")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "s2s-attn evaluate: error: argument --metrics: unknown metric(s) bogus; choose from "
        "bleu, chrf, wer, per, cer, exact")
