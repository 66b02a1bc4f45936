"""Every model the builder and `s2s-attn train` accept exports, and the export answers as Python.

Each combination of `model_matrix.FACTORS` that the builder accepts is
trained for a few steps, exported, loaded in a fresh process that imports
TensorFlow only, and must give the Python `Translator`'s greedy and beam
outputs; each combination it refuses must fail at build time with a
`ValueError` naming the option.

The default run takes `COVERING_SET`, 24 combinations in which every pair of
values of two factors that some accepted combination holds appears at least
once (a pairwise covering set, made once by a random search with seed 0),
except the pairs of a score and a weights dtype: each score meets three of
the four dtypes. The weights dtype is applied to every stored variable by its
shape and rank, whichever layer holds it (`quantization.py`), so a score adds
no case of its own; covering those 32 pairs too took 32 combinations.
The full matrix, every accepted combination (3,168 of them), runs behind a
marker:

    python -m pytest -m full_matrix tests/test_model_matrix.py

(S2S_MATRIX_WORKERS sets the worker processes, default the CPU count.)
"""

import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from keras_s2s_attn import build_seq2seq_model
from tests import model_matrix
from tests.conftest import run_cli
from tests.serving_fixtures import ServeProcess, write_pairs
from tests.model_matrix import FACTORS, TEXTS, combination, model_options, refusal

# (score, style, cell, layers, window, tokenizer, weights_dtype)
COVERING_SET = [
    ('dot', 'luong-no-feeding', 'lstm', 1, 'local-m', 'space', 'int4'),
    ('dot', 'bahdanau', 'lstm', 2, 'global', 'word', 'float32'),
    ('dot', 'luong', 'gru', 1, 'local-p', 'char', 'int8'),
    ('general', 'luong-no-feeding', 'lstm', 1, 'local-p', 'char', 'float32'),
    ('general', 'luong', 'lstm', 2, 'local-m', 'word', 'int8'),
    ('general', 'bahdanau', 'gru', 1, 'global', 'space', 'float16'),
    ('concat', 'bahdanau', 'gru', 2, 'local-m', 'char', 'float32'),
    ('concat', 'luong', 'lstm', 1, 'local-p', 'space', 'int4'),
    ('concat', 'luong-no-feeding', 'gru', 1, 'global', 'word', 'float16'),
    ('additive', 'luong-no-feeding', 'gru', 2, 'local-p', 'space', 'float32'),
    ('additive', 'bahdanau', 'lstm', 2, 'local-m', 'word', 'int8'),
    ('additive', 'luong', 'gru', 1, 'global', 'char', 'float16'),
    ('additive-normalize', 'luong-no-feeding', 'gru', 1, 'global', 'char', 'int4'),
    ('additive-normalize', 'luong', 'gru', 1, 'local-p', 'word', 'float16'),
    ('additive-normalize', 'bahdanau', 'lstm', 2, 'local-m', 'space', 'float32'),
    ('scaled_dot', 'luong', 'gru', 1, 'global', 'space', 'float32'),
    ('scaled_dot', 'bahdanau', 'gru', 2, 'local-p', 'word', 'int4'),
    ('scaled_dot', 'luong-no-feeding', 'lstm', 2, 'local-m', 'char', 'float16'),
    ('location', 'bahdanau', 'lstm', 2, 'local-p', 'space', 'int4'),
    ('location', 'luong-no-feeding', 'gru', 2, 'global', 'char', 'int8'),
    ('location', 'luong', 'lstm', 1, 'local-m', 'word', 'float16'),
    ('none', 'luong-no-feeding', 'lstm', 1, 'global', 'word', 'float16'),
    ('none', 'bahdanau', 'lstm', 2, 'global', 'space', 'int8'),
    ('none', 'luong', 'gru', 1, 'global', 'char', 'float32'),
]


NOT_PAIRED = {"score", "weights_dtype"}  # see the module docstring


def pairs_of(combo):
    return {((a, combo[a]), (b, combo[b])) for a, b in itertools.combinations(FACTORS, 2)
            if {a, b} != NOT_PAIRED}


def test_covering_set_covers_every_pair_an_accepted_model_can_hold():
    accepted = [c for c in model_matrix.all_combinations() if refusal(c) is None]
    needed = set().union(*(pairs_of(c) for c in accepted))
    chosen = [combination(values) for values in COVERING_SET]
    assert all(refusal(c) is None for c in chosen)
    assert needed - set().union(*(pairs_of(c) for c in chosen)) == set()
    assert len(accepted) == 3168
    for score in FACTORS["score"]:
        assert len({c["weights_dtype"] for c in chosen if c["score"] == score}) == 3, score


def test_refused_combinations_fail_at_build_time_naming_the_option():
    refused = [c for c in model_matrix.all_combinations() if refusal(c) is not None]
    assert refused  # attention=None with a local window
    for combo in refused[:: max(1, len(refused) // 12)]:
        options = model_options(combo)
        with pytest.raises(ValueError, match=f"`{refusal(combo)}`.*attention=None"):
            build_seq2seq_model(10, 10, **options)


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    paths, texts = json.load(sys.stdin)
    utf8 = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])
    results = []
    for path in paths:
        model = tf.saved_model.load(path)
        answers = {}
        for signature in ("serving_default", "beam_search"):
            out = model.signatures[signature](text=tf.constant(texts, tf.string))
            answers[signature] = {
                k: (utf8(v.numpy()).tolist() if v.dtype == tf.string else v.numpy().tolist())
                for k, v in out.items()}
        results.append(answers)
    assert not any(name.startswith(("keras_s2s_attn", "tensorflow_text")) for name in sys.modules)
    print(json.dumps(results))
""")


def start(args, share):
    """A Python subprocess reading `share` as JSON on stdin; stderr goes to a file
    (a pipe nobody reads until the end could fill up and block the process)."""
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=log, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    process.stdin.write(json.dumps(share))
    process.stdin.close()
    return process, log


def finish(process, log):
    """Waits for `process`; its stdout, or a failure showing its stderr."""
    output = process.stdout.read()
    process.wait()
    log.seek(0)
    assert process.returncode == 0, log.read()[-4000:]
    log.close()
    return output


def in_processes(jobs, workers):
    """Runs `(args, stdin)` jobs, `workers` at a time; their stdouts, in order."""
    outputs, running = [None] * len(jobs), []
    for index, (args, share) in enumerate(jobs):
        running.append((index, start(args, share)))
        while len(running) >= workers or (running and index == len(jobs) - 1):
            done, started = running.pop(0)
            outputs[done] = finish(*started)
    return outputs


def run_matrix(combos, workdir, workers, chunk=32):
    """Runs the combinations in worker processes (at most `chunk` each, so that
    none grows without bound), then loads their exports in fresh ones.

    Returns the Python answers and the exported ones, in the order of `combos`.
    """
    size = min(chunk, -(-len(combos) // workers))
    shares = [list(range(len(combos)))[i:i + size] for i in range(0, len(combos), size)]
    in_processes([(["-m", "tests.model_matrix", str(workdir)],
                   [(i, list(combos[i].values())) for i in share]) for share in shares],
                 workers)
    python = []
    for index in range(len(combos)):
        with open(os.path.join(workdir, str(index), "python.json")) as handle:
            python.append(json.load(handle))
    loaded = in_processes([(["-c", FRESH_PROCESS], [[python[i]["export"] for i in share], TEXTS])
                           for share in shares], workers)
    exported = [answers for output in loaded
                for answers in json.loads(output.strip().splitlines()[-1])]
    return python, exported


def ranking(answers, row):
    """The beam's GNMT ranking score of one answer: score / ((5 + |Y|) / 6)^α."""
    produced = sum(1 for token in answers["target_tokens"][row] if token)
    return answers["score"][row] / ((5.0 + produced) / 6.0) ** model_matrix.LENGTH_PENALTY


def tied_rows(local, served):
    """Rows whose exported beam answer differs from Python's only by a near-tie.

    Float rounding differs between the two graphs, so hypotheses whose
    ranking scores agree to 1e-3 can win in either, and the two searches can
    then go on along different paths. Such a row is accepted when the
    exported answer ranks within 1e-3 of Python's; any other difference fails.
    """
    rows = set()
    for row, (mine, theirs) in enumerate(zip(local["translation"], served["translation"])):
        if mine != theirs:
            best = ranking(local, row)
            assert abs(ranking(served, row) - best) <= 1e-3 * max(1.0, abs(best)), (
                row, mine, theirs, best, ranking(served, row))
            rows.add(row)
    return rows


def assert_same_answers(combo, python, exported):
    for signature in ("serving_default", "beam_search"):
        local, served = python[signature], exported[signature]
        where = f"{combo} {signature}"
        assert sorted(served) == sorted(local), where
        assert ("attention" in served) == (combo["score"] != "none"), where
        tied = tied_rows(local, served) if signature == "beam_search" else set()
        assert len(tied) <= 1, where  # a tie, not a habit
        keep = [row for row in range(len(TEXTS)) if row not in tied]
        for name in ("translation", "source_tokens", "target_tokens", "truncated", "score",
                     "attention"):
            if name not in served:
                continue
            mine, theirs = ([column[row] for row in keep] for column in (local[name],
                                                                         served[name]))
            if name == "score":
                # The export is another graph (other fusions): measured within 1.1e-7
                # relative of Python over the covering set, allowed 1e-5.
                np.testing.assert_allclose(theirs, mine, rtol=1e-5, atol=1e-6, err_msg=where)
            elif name == "attention":
                np.testing.assert_allclose(theirs, mine, atol=1e-6, err_msg=where)  # 3e-8
            else:
                assert theirs == mine, f"{where} {name}"
    # Only the nine-word input is cut at MAX_SOURCE_LENGTH (9 tokens, or 26 characters).
    assert python["serving_default"]["truncated"] == [False] * 6 + [True, False]


def check_matrix(combos, tmp_path, workers):
    python, exported = run_matrix(combos, tmp_path, workers)
    for combo, local, served in zip(combos, python, exported):
        assert_same_answers(combo, local, served)


def test_covering_set_exports_and_answers_as_python(tmp_path):
    check_matrix([combination(values) for values in COVERING_SET], tmp_path, workers=1)


@pytest.mark.full_matrix
def test_full_matrix(tmp_path):
    combos = [c for c in model_matrix.all_combinations() if refusal(c) is None]
    workers = int(os.environ.get("S2S_MATRIX_WORKERS", os.cpu_count() or 1))
    check_matrix(combos, tmp_path, workers)


def test_attention_none_trains_exports_serves_and_translates(tmp_path, capsys):
    """The plain encoder-decoder goes the whole way through the command line
    (`cli.main` in this process, the server in its own)."""
    def s2s(*args):
        return run_cli(capsys, *args)

    pairs = write_pairs(tmp_path / "pairs.tsv", n=400)
    code, _, err = s2s("train", "--train", pairs, "--out", str(tmp_path / "run"),
                       "--attention", "none", "--units", "32", "--embedding-dim", "16",
                       "--epochs", "6", "--learning-rate", "0.01", "--dropout", "0",
                       "--no-normalize", "--batch-size", "32")
    assert code == 0, err[-3000:]
    code, out, err = s2s("export", str(tmp_path / "run"), "--name", "plain", "--export-dir",
                         str(tmp_path / "saved_models"), "--beam-width", "4")
    assert code == 0, err[-3000:]
    base = tmp_path / "saved_models" / "plain"
    greedy = s2s("translate", str(base), "abc", "hgf", "--json")
    beam = s2s("translate", str(base), "abc", "hgf", "--beam", "4", "--json")
    for code, out, err in (greedy, beam):
        assert code == 0, err[-3000:]
        rows = json.loads(out)
        assert len(rows) == 2 and all("attention" not in row for row in rows)
        assert all(row["translation"] for row in rows)
    code, _, err = s2s("translate", str(base), "abc", "--plot", str(tmp_path / "map.png"))
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("s2s-attn")] == [
        f"s2s-attn translate: error: --plot: {str(base)!r} was built without attention "
        "(--attention none), so there is no attention map to draw."]
    assert not (tmp_path / "map.png").exists()
    with ServeProcess(base) as server:
        status, body = server.request("/v1/models/plain/metadata")
        assert status == 200
        for signature in ("serving_default", "beam_search"):
            outputs = body["metadata"]["signature_def"]["signature_def"][signature]["outputs"]
            assert "attention" not in outputs and "translation" in outputs
            status, answer = server.request("/v1/models/plain:predict", {
                "signature_name": signature, "instances": ["abc", "hgf"]})
            assert status == 200, answer
            assert [row["translation"] for row in answer["predictions"]] == [
                row["translation"] for row in json.loads((greedy, beam)[
                    signature == "beam_search"][1])]
    code, _, err = s2s("train", "--train", pairs, "--out", str(tmp_path / "refused"),
                       "--attention", "none", "--window", "3")
    assert code == 2 and "`window` cannot be used with attention=None" in err
    assert not (tmp_path / "refused").exists()
