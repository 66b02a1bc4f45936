import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_s2s_attn import export, models, quantization, saved_models
from keras_s2s_attn.runs import load_run
from keras_s2s_attn.text import make_tokenizer
from keras_s2s_attn.translation import OUTPUT_NAMES, Translator
from tests.conftest import run_cli
from tests.reference import stored_like_the_export
from tests.serving_fixtures import (INVALID_UTF8, MIXED_TEXTS, SIGNATURES, export_strategies,
                                    greedy_only)

TEXTS = MIXED_TEXTS[:63] + [INVALID_UTF8]  # 64 mixed-length inputs, bad ones included


def env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def fresh_answers(calls, extra_import=""):
    """Makes each `(version_dir, signature, texts, inputs)` call in one new interpreter
    that imports only TensorFlow (and `extra_import`); their answers, in order.

    A call's scalar inputs (sampling's) are `inputs`, else the export's defaults.
    """
    calls = [(path, signature, [t.hex() for t in texts],
              saved_models.read_export_info(path).get("signatures", {}).get(
                  signature, {}).get("inputs", {}) if inputs is None else inputs)
             for path, signature, texts, inputs in calls]
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        {extra_import}
        models, answers = {{}}, []
        for path, signature, texts, inputs in json.load(sys.stdin):
            if path not in models:
                models[path] = tf.saved_model.load(path)
            function = models[path].signatures[signature]
            specs = function.structured_input_signature[1]
            out = function(text=tf.constant([bytes.fromhex(h) for h in texts], tf.string),
                           **{{name: tf.constant(value, specs[name].dtype)
                              for name, value in inputs.items()}})
            answers.append({{"outputs": {{
                k: (v.numpy().astype(str).tolist() if v.dtype == tf.string
                    else v.numpy().tolist()) for k, v in out.items()}}}})
        assert not any(name.startswith("keras_s2s_attn") for name in sys.modules)
        tf_text = "tensorflow_text" in sys.modules
        print(json.dumps([{{**answer, "tf_text": tf_text}} for answer in answers]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env(), timeout=300, input=json.dumps(calls))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def as_bytes(texts):
    return [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]


def assert_same(fresh, local):
    outputs = fresh["outputs"]
    assert sorted(outputs) == sorted(local)
    if "translations" in local:  # beam and sampling: every result, best first
        assert outputs["translations"] == local["translations"].astype(str).tolist()
        np.testing.assert_allclose(outputs["scores"], local["scores"], atol=1e-4)
        assert np.all(np.diff(outputs["scores"], axis=1) <= 1e-5)  # no length penalty here
    assert outputs["translation"] == local["translation"].astype(str).tolist()
    assert outputs["source_tokens"] == local["source_tokens"].astype(str).tolist()
    assert outputs["target_tokens"] == local["target_tokens"].astype(str).tolist()
    assert outputs["truncated"] == local["truncated"].tolist()
    assert outputs["unknown_tokens"] == local["unknown_tokens"].tolist()
    np.testing.assert_allclose(outputs["score"], local["score"], atol=1e-4)
    np.testing.assert_allclose(outputs["attention"], local["attention"], atol=1e-5)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models") / "reverser"
    path = export.export_saved_model(tiny_run, base, strategies=export_strategies())
    return str(base), path


def test_layout_assets_and_warmup_requests(exported, tiny_run):
    base, path = exported
    assert path == os.path.join(base, "1")
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assets = os.path.join(path, "assets")
    contents = {open(os.path.join(assets, name), encoding="utf-8").read()
                for name in os.listdir(assets)}
    _, source, target, _ = load_run(tiny_run)
    # Both vocabularies travel as assets (same file name, neither overwritten).
    assert contents == {"\n".join(source.vocabulary) + "\n", "\n".join(target.vocabulary) + "\n"}
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(os.path.join(path, saved_models.WARMUP_FILE)))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == list(
        SIGNATURES)
    assert all(log.predict_log.request.model_spec.name == "reverser" for log in logs)
    texts = tf.make_ndarray(logs[0].predict_log.request.inputs["text"])
    assert len(texts) == 4 and all(len(t) > 0 for t in texts)
    sample = logs[2].predict_log.request.inputs  # the scalar inputs, at their defaults
    assert {name: tf.make_ndarray(sample[name]).item() for name in sample if name != "text"} == {
        "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 5}
    info = saved_models.read_export_info(path)
    assert list(info["signatures"]) == list(SIGNATURES)
    assert info["signatures"]["beam_search"]["strategy"] == "beam"
    assert info["signatures"]["beam_search"]["options"]["beam_width"] == 3
    assert info["signatures"]["sample"]["inputs"]["seed"] == 5


def exported_floats(model):
    """Sizes of the float variables a float32 export of `model` holds: each weight
    once, and the tables of input products it keeps (`Stepper.keep_tables`: the
    decoder's first cell's for every target id, each first-layer encoder cell's
    for every source id), less the target embedding, whose every use is now the
    table (the encoder's stays: rows with gaps are encoded by the Keras layers),
    and with the decoder's first kernel as the rows the steps read: those after
    the target input's (the table stands for the target's)."""
    encoder, cell = model.get_layer(models.ENCODER), model.get_layer(models.DECODER).cell
    rnn = encoder.rnns[0]
    first = ([rnn.forward_layer.cell, rnn.backward_layer.cell]
             if isinstance(rnn, keras.layers.Bidirectional) else [rnn.cell])
    target_embedding = model.get_layer(models.TARGET_EMBEDDING)
    kernel = cell.cells[0].kernel
    tables = ([target_embedding.input_dim * kernel.shape[1]]
              + [encoder.embedding.input_dim * first_cell.kernel.shape[1] for first_cell in first])
    weights = [int(np.prod(w.shape)) for w in model.weights
               if w is not target_embedding.embeddings and w is not kernel]
    rest = (kernel.shape[0] - cell.target_input_dim) * kernel.shape[1]
    assert len(weights) == len(model.weights) - 2 and len(tables) == 1 + len(first)
    return sorted(weights + tables + [rest])


def test_each_weight_is_saved_once(exported, tiny_run):
    """The SavedModel holds the model's weights once, not a second copy per
    variable, and the tables of input products it reads instead of computing
    them on every call (`exported_floats`)."""
    _, path = exported
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    saved = reader.get_variable_to_shape_map()
    floats = {key: shape for key, shape in saved.items()
              if reader.get_variable_to_dtype_map()[key].is_floating}
    model, _, _, _ = load_run(tiny_run)
    assert len(floats) == len(model.weights) + 2  # a bidirectional encoder: 3 tables
    assert sorted(int(np.prod(shape)) for shape in floats.values()) == exported_floats(model)


def test_int4_packing_round_trips_through_the_graph():
    rng = np.random.default_rng(0)
    for shape in [(70, 5), (64, 9), (2, 32, 3)]:
        weight = rng.normal(size=shape).astype(np.float32)
        weight[:, 0] = 0  # an all-zero column keeps a usable scale
        packed, scales = quantization.quantize_int4(weight.reshape(-1, shape[-1]))
        rows = int(np.prod(shape[:-1]))
        assert packed.dtype == np.uint8 and packed.shape == (-(-rows // 32) * 16, shape[-1])
        assert scales.dtype == np.float16 and scales.shape == (-(-rows // 32), shape[-1])
        unpacked = quantization.dequantize_int4(tf.constant(packed), tf.constant(scales), shape)
        np.testing.assert_array_equal(unpacked.numpy(), stored_like_the_export(weight, "int4"))
        assert np.abs(unpacked.numpy() - weight).max() <= np.abs(weight).max() / 14 * 1.01


def expected_storage(weights, dtype):
    """Sorted `(dtype name, size)` of the variables an export with `weights_dtype=dtype`
    stores for `weights`."""
    if dtype == "float16":
        expected = [("float16", w.size) for w in weights]
    elif dtype == "int8":  # int8 matrices with a float32 scale per column; float16 vectors
        expected = [("int8", w.size) for w in weights if w.ndim >= 2]
        expected += [("float32", w.shape[-1]) for w in weights if w.ndim >= 2]
        expected += [("float16", w.size) for w in weights if w.ndim < 2]
    else:  # matrices of >= 32 rows: two 4-bit values a byte, a float16 scale per 32 rows
        expected = []
        for w in weights:
            rows = w.size // w.shape[-1] if w.ndim >= 2 else 0
            if rows >= 32:
                blocks = -(-rows // 32)
                expected += [("uint8", blocks * 16 * w.shape[-1]),
                             ("float16", blocks * w.shape[-1])]
            else:
                expected.append(("float16", w.size))
        assert any(name == "uint8" for name, _ in expected)
    return sorted(expected)


def test_small_weights_shrink_the_variables_and_compute_like_the_rounded_model(
        exported, tiny_run, tmp_path):
    """Each `weights_dtype` on the trained run (tests/test_model_matrix.py crosses them
    with every score, style and cell on barely trained models)."""
    def data_bytes(version_dir):
        folder = os.path.join(version_dir, "variables")
        return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))

    model, source_tokenizer, target_tokenizer, config = load_run(tiny_run)
    weights = model.get_weights()
    strategies = dict(list(export_strategies().items())[:2])  # greedy and beam
    # Python's model reads the weights when it runs: one translator for every dtype.
    translator = Translator(model, source_tokenizer, target_tokenizer, strategies=strategies,
                            max_source_length=config["max_source_length"])
    paths, local = {}, []
    for dtype, share in (("float16", 0.55), ("int8", 0.35), ("int4", 0.3)):
        path = paths[dtype] = export.export_saved_model(
            tiny_run, tmp_path / dtype, strategies=strategies, weights_dtype=dtype)
        reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
        dtypes = reader.get_variable_to_dtype_map()
        stored = sorted((dtypes[key].name, int(np.prod(shape)))
                        for key, shape in reader.get_variable_to_shape_map().items()
                        if dtypes[key] != tf.string)
        assert stored == expected_storage(weights, dtype), dtype
        assert data_bytes(path) < share * data_bytes(exported[1]), dtype
        # The graph computes in float32 from the stored weights: exactly what the
        # Python model does once its weights are rounded the same way.
        model.set_weights([stored_like_the_export(w, dtype) for w in weights])
        local += [translator(TEXTS, name) for name in strategies]
    fresh = fresh_answers([(path, name, as_bytes(TEXTS), None)
                           for path in paths.values() for name in strategies])
    for answer, expected in zip(fresh, local, strict=True):
        assert_same(answer, expected)


def test_unknown_weights_dtype_is_refused(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="weights_dtype.*int4.*'int2'"):
        export.export_saved_model(tiny_run, tmp_path / "bad", weights_dtype="int2")
    assert not os.path.exists(tmp_path / "bad")


def test_fresh_process_equals_python_greedy_beam_and_sample(exported, tiny_run):
    _, path = exported
    translator = Translator.from_run(tiny_run, strategies=export_strategies())
    # Request inputs override the export's defaults: another seed, other samples.
    reseed = {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 6}
    *answers, reseeded = fresh_answers(
        [(path, signature, as_bytes(TEXTS), None) for signature in reversed(SIGNATURES)]
        + [(path, "sample", as_bytes(TEXTS[:8]), reseed)])
    for signature, fresh in zip(reversed(SIGNATURES), answers):  # serving_default last
        assert fresh["tf_text"] is False  # a core-ops-only graph
        local = translator(TEXTS, signature)
        assert_same(fresh, local)
        if signature == "beam_search":  # the n-best list: K = the width, the best first
            assert np.shape(fresh["outputs"]["translations"]) == (len(TEXTS), 3)
            assert fresh["outputs"]["translation"] == [
                row[0] for row in fresh["outputs"]["translations"]]
    assert_same(reseeded, translator(TEXTS[:8], "sample", temperature=2.0, seed=6))
    # The model really translates, and bad inputs give sensible rows.
    outputs = fresh["outputs"]
    assert outputs["translation"][0] == "CBA" and outputs["translation"][1] == "ABCDEFGH"
    for row in (2, 3, 4):  # empty and whitespace-only: empty translation, zero score
        assert outputs["translation"][row] == "" and outputs["score"][row] == 0.0
        assert not any(outputs["source_tokens"][row])
    assert outputs["truncated"][5] is True and outputs["truncated"][0] is False
    assert outputs["source_tokens"][5][:12] == ["a"] * 12  # cut at max_source_length=12
    assert np.isfinite(outputs["score"]).all()
    assert np.isfinite(np.array(outputs["attention"])).all()
    # Invalid UTF-8 bytes become U+FFFD (out of vocabulary here): no error, and counted.
    assert outputs["source_tokens"][63][:6] == ["a", "b", "[UNK]", "[UNK]", "c", "d"]
    assert outputs["unknown_tokens"][63] == 2 and outputs["unknown_tokens"][0] == 0
    assert outputs["unknown_tokens"][6] == 1  # "abc\u00e9": é is not in the vocabulary


def test_empty_batch(exported, tiny_run):
    _, path = exported
    model = saved_models.load_saved_model(path)
    translator = Translator.from_run(tiny_run, strategies=export_strategies())
    for signature in SIGNATURES:
        inputs = {"seed": tf.constant(1)} if signature == "sample" else {}
        if signature == "sample":
            inputs.update(temperature=tf.constant(1.0), top_k=tf.constant(0),
                          top_p=tf.constant(1.0))
        outputs = model.signatures[signature](text=tf.constant([], tf.string), **inputs)
        local = translator([], signature)
        assert sorted(outputs) == sorted(local)
        for name, value in outputs.items():
            assert value.shape[0] == 0 and local[name].shape[0] == 0, name
        if signature != "serving_default":
            assert outputs["translations"].shape == (0, 3) == local["translations"].shape


def test_nfkc_and_lower_casing_run_in_the_graph_with_tensorflow_text_only(tiny_run, tmp_path):
    model, source, target, _ = load_run(tiny_run)
    # The same vocabularies behind NFKC normalisation and lower-casing, as a run trained
    # with --lower records them: the graph gains NormalizeUTF8 and lower-cases.
    nfkc_source = make_tokenizer("char", lower=True, vocabulary=source.vocabulary)
    nfkc_target = make_tokenizer("char", vocabulary=target.vocabulary)
    path = export.export_saved_model(model, tmp_path / "nfkc", source_tokenizer=nfkc_source,
                                     target_tokenizer=nfkc_target, max_source_length=12,
                                     strategies=greedy_only())
    texts = ["ａｂｃ", "abc", "ABC", "Ａｂｃ", "ﬁ"]  # full-width and ligature forms normalise
    fresh, = fresh_answers([(path, "serving_default", as_bytes(texts), None)],
                           extra_import="import tensorflow_text")
    assert fresh["outputs"]["translation"][:4] == ["CBA"] * 4
    assert fresh["outputs"]["unknown_tokens"][:4] == [0] * 4
    # The export records its tokenizers for tools that need the model's units.
    saved = saved_models.load_exported_tokenizer(path, "source")
    assert saved.get_config() == nfkc_source.get_config()
    assert saved.vocabulary == nfkc_source.vocabulary


def test_saved_model_cli_show_and_run(exported):
    _, path = exported
    show = subprocess.run(["saved_model_cli", "show", "--dir", path, "--all"],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    for name in (*SIGNATURES, "text", "temperature", "top_p", *OUTPUT_NAMES, "translations"):
        assert name in show.stdout
    run = subprocess.run(
        ["saved_model_cli", "run", "--dir", path, "--tag_set", "serve", "--signature_def",
         "serving_default", "--input_exprs", 'text=["abc","hgfedcba"]'],
        capture_output=True, text=True, env=env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "b'CBA'" in run.stdout and "b'ABCDEFGH'" in run.stdout


def test_versions_count_up_and_never_overwrite(tiny_run, tmp_path):
    base = tmp_path / "m"

    def export_greedy(run, **options):  # versions are the same for any signatures
        return export.export_saved_model(run, base, strategies=greedy_only(), **options)

    assert export_greedy(tiny_run).endswith(os.sep + "1")
    assert export_greedy(tiny_run).endswith(os.sep + "2")
    assert export_greedy(tiny_run, version=10).endswith(os.sep + "10")
    assert saved_models.versions(base) == [1, 2, 10]
    with pytest.raises(FileExistsError, match="10"):
        export_greedy(tiny_run, version=10)
    with pytest.raises(ValueError, match="version"):
        export_greedy(tiny_run, version=0)
    with pytest.raises(ValueError, match="tokenizer"):
        export_greedy(load_run(tiny_run)[0])


def test_killed_export_leaves_no_version_behind(tiny_run, tmp_path):
    base = tmp_path / "atomic"
    script = (f"from keras_s2s_attn.export import export_saved_model\n"
              f"export_saved_model({tiny_run!r}, {str(base)!r})\n")
    process = subprocess.Popen([sys.executable, "-c", script], env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    temporary = []
    while time.time() < deadline and process.poll() is None:
        if base.exists():
            temporary = [n for n in os.listdir(base) if n.startswith(".tmp-export-")]
            if temporary and os.path.exists(base / temporary[0] / "saved_model.pb"):
                break  # midway: the graph is written, the rename has not happened
        time.sleep(0.01)
    assert process.poll() is None, "the export finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert saved_models.versions(base) == []  # TF Serving sees no version at all
    # The next export clears the dead process's leftovers and writes version 1.
    assert export.export_saved_model(tiny_run, base).endswith(os.sep + "1")
    assert os.listdir(base) == ["1"]


def test_cli_export_and_translate(tiny_run, tmp_path, capsys):
    def s2s_status(*args):
        return run_cli(capsys, *args)

    def s2s(*args):
        code, out, err = s2s_status(*args)
        assert code == 0, err[-3000:]
        return out

    out = s2s("export", tiny_run, "--name", "rev", "--export-dir", str(tmp_path),
              "--beam-width", "2")
    assert out.strip() == os.path.join(str(tmp_path), "rev", "1")
    assert s2s("translate", str(tmp_path / "rev"), "abc", "dd").split() == ["CBA", "DD"]
    assert s2s("translate", str(tmp_path / "rev"), "abc", "--beam", "2").split() == ["CBA"]
    rows = json.loads(s2s("translate", str(tmp_path / "rev"), "abc", "--json"))
    assert rows[0]["translation"] == "CBA" and rows[0]["target_tokens"][3] == "[END]"
    assert s2s("translate", tiny_run, "abc", "--beam", "5").split() == ["CBA"]
    code, _, err = s2s_status("translate", str(tmp_path / "rev"), "abc", "--beam", "3")
    assert code == 2 and "'beam_width': 2" in err
    only = s2s("export", tiny_run, "--name", "greedy_only", "--export-dir", str(tmp_path),
               "--strategies", "greedy").strip()
    assert list(saved_models.read_export_info(only)["signatures"]) == ["serving_default"]
    code, _, err = s2s_status("translate", only, "abc", "--sample")
    assert code == 2 and "no signature decoding as SamplingSearch" in err
    n_best = s2s("translate", str(tmp_path / "rev"), "abc", "dd", "--beam", "2", "--n-best", "2")
    rows = [line.split("\t") for line in n_best.splitlines()]
    assert [row[0] for row in rows][::2] == ["CBA", "DD"] and len(rows) == 4
    assert float(rows[0][1]) >= float(rows[1][1]) and float(rows[2][1]) >= float(rows[3][1])

    # --input: one translation per line, in order, across batches; empty lines kept.
    lines = tmp_path / "words.txt"
    lines.write_bytes("abc\r\n\ndd\nhgf\nx\u2028y\n".encode("utf-8"))
    batched = s2s("translate", str(tmp_path / "rev"), "--input", str(lines), "--batch-size", "3")
    assert batched.split("\n")[:4] == ["CBA", "", "DD", "FGH"]
    assert batched.count("\n") == 5  # U+2028 is inside a line, not a line end
    rows = json.loads(s2s("translate", str(tmp_path / "rev"), "--input", str(lines), "--json",
                          "--batch-size", "2"))
    assert [row["translation"] for row in rows][:4] == ["CBA", "", "DD", "FGH"]
    assert len(rows) == 5
    for args, message in [(["abc", "--input", str(lines)], "not both"),
                          (["--input", str(tmp_path / "missing.txt")], "--input: no such file"),
                          ([], "at least one TEXT")]:
        code, _, err = s2s_status("translate", str(tmp_path / "rev"), *args)
        assert code == 2 and message in err, err[-2000:]


def test_cli_evaluate_json_and_table(tiny_run, tmp_path, capsys):
    pairs = tmp_path / "test.tsv"
    # Two references for "abc": the second is right; "ddc" has one wrong reference only.
    pairs.write_text("abc\tXYZ\tCBA\nhgf\tFGH\nddc\tCDE\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "evaluate", tiny_run, str(pairs), "--references",
                             "--metrics", "wer,cer,per,exact,bleu", "--batch-size", "2")
    assert code == 0, err[-3000:]
    scores = json.loads(out)
    assert scores["sources"] == 3
    assert scores["wer"] == pytest.approx(1 / 3) and scores["exact"] == pytest.approx(2 / 3)
    assert scores["cer"] == pytest.approx(1 / 9)  # "CDD" vs "CDE": 1 edit in 9 characters
    # PER counts the model's target tokens, characters here: 1 of 9 too (split on
    # whitespace, "CDD" vs "CDE" would be 1 of 3 tokens).
    assert scores["per"] == pytest.approx(1 / 9)
    assert "wer  33.33%" in err and "3/3" in err
    code, out, _ = run_cli(capsys, "evaluate", tiny_run, str(pairs), "--metrics", "wer")
    assert code == 0 and json.loads(out)["wer"] == pytest.approx(2 / 3)  # column 1 only


def test_cli_evaluate_reports_oracle_wer_of_the_n_best(tiny_run, tmp_path, capsys):
    from keras_s2s_attn.decoding import BeamSearch

    pairs = tmp_path / "test.tsv"
    sources = ["abc", "hgf", "ddc", "ab", "fedcb", "gg"]
    translator = Translator.from_run(tiny_run, strategies={"beam": BeamSearch(3)})
    n_best = translator(sources, "beam")["translations"].astype(str)
    # References: the best for two words, the third-best for two, none of the three for two.
    references = [n_best[0, 0], n_best[1, 0], n_best[2, 2], n_best[3, 2], "XYZ", "QQ"]
    pairs.write_text("".join(f"{s}\t{r}\n" for s, r in zip(sources, references)),
                     encoding="utf-8")
    code, out, err = run_cli(capsys, "evaluate", tiny_run, str(pairs), "--metrics", "wer",
                             "--beam", "3", "--n-best", "3")
    assert code == 0, err[-3000:]
    scores = json.loads(out)
    assert scores["wer"] == pytest.approx(4 / 6) and scores["oracle_wer@1"] == scores["wer"]
    assert scores["oracle_wer@2"] == pytest.approx(4 / 6)
    assert scores["oracle_wer@3"] == pytest.approx(2 / 6)
    assert "oracle_wer@3  33.33%" in err


def perturbed_copy(run_dir, destination, seed):
    """A second run with the same tokenizers and a different model (noised weights)."""
    shutil.copytree(run_dir, destination)
    model, _, _, _ = load_run(run_dir)
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0.0, 0.3 * (np.std(w) + 1e-3), w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    keras.saving.save_model(model, os.path.join(destination, "best.keras"))
    return str(destination)


def test_ensemble_export_equals_python_ensemble(tiny_run, tmp_path, capsys):
    other = perturbed_copy(tiny_run, tmp_path / "other_run", seed=0)
    code, out, err = run_cli(capsys, "export", tiny_run, other, "--name", "ens",
                             "--export-dir", str(tmp_path), "--beam-width", "3",
                             "--length-penalty", "0")
    assert code == 0, err[-3000:]
    path = out.strip().splitlines()[-1]
    assert saved_models.read_export_info(path)["ensemble_size"] == 2
    translator = Translator.from_run([tiny_run, other], strategies=export_strategies(
        num_samples=1, seed=-1))
    fresh = fresh_answers([(path, signature, as_bytes(TEXTS), None)
                           for signature in SIGNATURES[:2]])
    for signature, answer in zip(SIGNATURES[:2], fresh):
        assert_same(answer, translator(TEXTS, signature))
    # Neither member alone scores like the ensemble.
    ensemble_scores = translator(TEXTS)["score"]
    for member in (tiny_run, other):
        assert not np.allclose(Translator.from_run(member)(TEXTS)["score"], ensemble_scores,
                               atol=1e-3)
    # Both members' weights (and tables, `exported_floats`) are in the SavedModel, once each.
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    saved = sum(int(np.prod(shape)) for key, shape in reader.get_variable_to_shape_map().items()
                if dtypes[key].is_floating)
    model, _, _, _ = load_run(tiny_run)
    assert saved == 2 * sum(exported_floats(model))


def test_ensemble_refuses_runs_with_other_tokenizers(tiny_run, tmp_path):
    other = tmp_path / "other_run"
    perturbed_copy(tiny_run, other, seed=1)
    vocab = other / "source_vocab" / "vocab.txt"
    lines = vocab.read_text(encoding="utf-8").splitlines()
    lines[-1], lines[-2] = lines[-2], lines[-1]  # same size, other ids
    vocab.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="share their tokenizers.*source tokenizer.*other_run"):
        Translator.from_run([tiny_run, str(other)])


def test_jit_export_answers_as_the_plain_model_in_a_fresh_process(tiny_run, tmp_path):
    path = export.export_saved_model(tiny_run, tmp_path / "rev", strategies=export_strategies(),
                                     jit_compile=True)
    assert saved_models.read_export_info(path)["jit_compile"] is True
    with open(os.path.join(path, "saved_model.pb"), "rb") as handle:
        assert b"_XlaMustCompile" in handle.read()  # the core really is compiled by XLA
    from tensorflow_serving.apis import prediction_log_pb2

    # Warm-up: the usual batch per signature, then a lone input per length bucket.
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request
            for r in tf.data.TFRecordDataset(os.path.join(path, saved_models.WARMUP_FILE))]
    lone = [tf.make_ndarray(log.inputs["text"]) for log in logs[len(SIGNATURES):]]
    assert [len(texts[0]) for texts in lone] == [8, 12]  # max_source_length=12 (char tokens)
    assert all(log.model_spec.signature_name == "serving_default"
               for log in logs[len(SIGNATURES):])
    plain = Translator.from_run(tiny_run, strategies=export_strategies())
    jit = Translator.from_run(tiny_run, strategies=export_strategies(), jit_compile=True)
    # Odd batch sizes: padded to their buckets (5 rows to 8, 63 to 64), then cut back.
    signatures = ("serving_default", "beam_search")
    fresh = fresh_answers([(path, name, as_bytes(TEXTS[1:]), None) for name in signatures])
    for signature, answer in zip(signatures, fresh):
        local = plain(TEXTS[:5], signature)
        assert_same({"outputs": {name: value.astype(str).tolist()
                                 if value.dtype == object else value.tolist()
                                 for name, value in jit(TEXTS[:5], signature).items()}}, local)
        assert_same(answer, plain(TEXTS[1:], signature))
