"""A table of bad inputs through every door: the REST API, the command line, `read_pairs`.

Each must get a 4xx with a message naming what was wrong (REST), or one line
`s2s-attn CMD: error: ...` and exit code 2 (command line), or an exception
naming the file and line (`read_pairs`); never a traceback or a 500, and the
server must go on answering. The README's "Bad input" section lists what each
gets.
"""

import gzip
import json
import os

import pytest

from keras_s2s_attn import cli, export
from keras_s2s_attn.data import MAX_LINE_BYTES, MalformedRowError, read_pairs
from tests.serving_fixtures import ServeProcess, export_strategies, http_json, write_pairs

MODEL = "bad_inputs"
PREDICT = f"/v1/models/{MODEL}:predict"
LIMITS = ("--max-batch-size", "8", "--max-request-bytes", "8192")


def body(value):
    return json.dumps(value).encode()


# (what, method, path, request body, headers, status, words in the error)
REST = [
    ("malformed JSON", "POST", PREDICT, b'{"instances": ["abc"', {}, 400, "Malformed JSON"),
    ("a body that is not UTF-8", "POST", PREDICT, b'{"instances": ["\xff"]}', {}, 400,
     "not UTF-8"),
    ("JSON nested 4,000 deep", "POST", PREDICT, b"[" * 4000 + b"]" * 4000, {}, 400,
     "nested more"),
    ("a 5,000-digit integer", "POST", PREDICT, b'{"instances": [' + b"9" * 5000 + b"]}", {},
     400, "a number longer than"),
    ("a lone surrogate", "POST", PREDICT, b'{"instances": ["ok", "\\ud800"]}', {}, 400,
     "instances[1] is not valid Unicode"),
    ("a false Content-Encoding: gzip", "POST", PREDICT, body({"instances": ["abc"]}),
     {"Content-Encoding": "gzip"}, 400, "not gzip data"),
    ("an unknown Content-Encoding", "POST", PREDICT, body({"instances": ["abc"]}),
     {"Content-Encoding": "br"}, 415, "Unsupported Content-Encoding 'br'"),
    ("a gzip bomb past the size limit", "POST", PREDICT,
     gzip.compress(body({"instances": ["a" * 20_000]})), {"Content-Encoding": "gzip"}, 413,
     "once decompressed"),
    ("a body past the size limit", "POST", PREDICT, body({"instances": ["a" * 10_000]}), {},
     413, "larger than the limit of 8192 bytes"),
    ("more instances than --max-batch-size", "POST", PREDICT, body({"instances": ["a"] * 9}),
     {}, 400, "holds 9 instances; the limit is 8"),
    ("a number as an instance", "POST", PREDICT, body({"instances": ["ok", 3]}), {}, 400,
     "instances[1] must be a string"),
    ("null as an instance", "POST", PREDICT, body({"instances": [None]}), {}, 400,
     "instances[0] must be a string"),
    ("an instance with the wrong key", "POST", PREDICT, body({"instances": [{"txt": "a"}]}),
     {}, 400, "exactly the key 'text'"),
    ("both 'instances' and 'inputs'", "POST", PREDICT,
     body({"instances": ["a"], "inputs": ["a"]}), {}, 400, "exactly one of"),
    ("neither 'instances' nor 'inputs'", "POST", PREDICT, body({}), {}, 400, "exactly one of"),
    ("a JSON array as the body", "POST", PREDICT, body([1, 2]), {}, 400, "JSON object"),
    ("'inputs' that is a string", "POST", PREDICT, body({"inputs": {"text": "abc"}}), {}, 400,
     "list of strings"),
    ("invalid base64", "POST", PREDICT, body({"instances": [{"b64": "***"}]}), {}, 400,
     "invalid base64"),
    ("an unknown signature", "POST", PREDICT,
     body({"signature_name": "nope", "instances": ["a"]}), {}, 400, "'nope' not found"),
    ("an unknown output in output_filter", "POST", PREDICT,
     body({"instances": ["a"], "output_filter": ["nope"]}), {}, 400, "not among the outputs"),
    ("an unknown model", "POST", "/v1/models/other:predict", body({"instances": ["a"]}), {},
     404, "Latest(other)"),
    ("an unknown version", "POST", f"/v1/models/{MODEL}/versions/7:predict",
     body({"instances": ["a"]}), {}, 404, f"Specific({MODEL}, 7)"),
    ("GET on :predict", "GET", PREDICT, None, {}, 405, "Method Not Allowed"),
    ("sampling with top_p 2", "POST", PREDICT,
     body({"signature_name": "sample", "inputs": {"text": ["a"], "top_p": 2.0}}), {}, 400,
     "top_p must be in (0, 1]"),
    ("sampling with a text temperature", "POST", PREDICT,
     body({"signature_name": "sample", "inputs": {"text": ["a"], "temperature": "hot"}}), {},
     400, "'temperature' must be a number"),
    ("an input the signature lacks", "POST", PREDICT,
     body({"inputs": {"text": ["a"], "beam_width": 8}}), {}, 400,
     "not among the inputs of 'serving_default'"),
]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_inputs") / MODEL
    export.export_saved_model(tiny_run, base, strategies=export_strategies(beam_width=2))
    with ServeProcess(base, *LIMITS) as process:
        yield process


def ask(server, method, path, data, headers):
    return http_json(server.url(path), data, {"Content-Type": "application/json", **headers},
                     method=method)


def test_rest_api_answers_each_bad_request_with_a_4xx_and_goes_on(server):
    for what, method, path, data, headers, status, words in REST:
        got, answer = ask(server, method, path, data, headers)
        assert (got, words in answer.get("error", "")) == (status, True), (what, got, answer)
        assert len(answer["error"]) < 300, what  # the message, not the request echoed back
    status, answer = ask(server, "POST", PREDICT, body({"instances": ["abc"]}), {})
    assert status == 200 and answer["predictions"][0]["translation"] == "CBA"
    assert "Traceback" not in server.new_stderr()
    assert len(REST) >= 20


def bad_files(tmp_path):
    """Files for the command-line cases: (name, contents)."""
    files = {"not_utf8.txt": b"abc\nd\xffe\n", "long.txt": b"a" * (MAX_LINE_BYTES + 1) + b"\n",
             "empty.txt": b""}
    for name, contents in files.items():
        (tmp_path / name).write_bytes(contents)
    return {name: str(tmp_path / name) for name in files}


def cli_cases(model, run, pairs, files, tmp_path):
    """(what, argv, words in the one error line); every case exits 2."""
    missing = str(tmp_path / "missing")
    return [
        ("translate: no model there", ["translate", missing, "abc"], "No SavedModel"),
        ("translate: --input missing", ["translate", model, "--input", missing],
         "--input: no such file"),
        ("translate: --input not UTF-8", ["translate", model, "--input", files["not_utf8.txt"]],
         "not_utf8.txt:2: bytes that are not valid utf-8"),
        ("translate: --input line too long", ["translate", model, "--input", files["long.txt"]],
         f"long.txt:1: longer than {MAX_LINE_BYTES} bytes"),
        ("translate: --input empty", ["translate", model, "--input", files["empty.txt"]],
         "holds no lines"),
        ("translate: no text", ["translate", model], "at least one TEXT"),
        ("translate: --beam other than exported", ["translate", model, "abc", "--beam", "3"],
         "'beam_width': 2"),
        ("translate: --sample with --beam 4", ["translate", model, "abc", "--sample", "--beam",
                                               "4"], "belong to another strategy"),
        ("translate: --top-p 0", ["translate", run, "abc", "--top-p", "0"],
         "`top_p` must be in (0, 1]"),
        ("translate: --replace-unknown on an export without it",
         ["translate", model, "abc", "--replace-unknown"], "exported without unknown-word"),
        ("export: unknown --strategies", ["export", run, "--name", "x", "--strategies",
                                          "greedy,bogus"], "unknown strategy bogus"),
        ("translate: --batch-size 0", ["translate", model, "abc", "--batch-size", "0"],
         "must be a positive integer"),
        ("evaluate: unknown metric", ["evaluate", model, pairs, "--metrics", "bogus"],
         "unknown metric(s) bogus"),
        ("evaluate: no pairs file", ["evaluate", model, missing], "No pairs file"),
        ("export: no run there", ["export", missing, "--name", "x", "--export-dir",
                                  str(tmp_path)], "is '" + missing + "' a finished run?"),
        ("export: unknown --weights-dtype", ["export", run, "--name", "x", "--weights-dtype",
                                             "int2"], "invalid choice: 'int2'"),
        ("train: --learning-rate -1", ["train", "--train", pairs, "--out", missing,
                                       "--learning-rate", "-1"],
         "`learning_rate` must be a number in (0, inf)"),
        ("train: --dropout 1.5", ["train", "--train", pairs, "--out", missing, "--dropout",
                                  "1.5"], "`dropout` must be in [0, 1)"),
        ("train: --epochs 0", ["train", "--train", pairs, "--out", missing, "--epochs", "0"],
         "must be a positive integer"),
        ("train: no pairs file", ["train", "--train", missing, "--out", missing],
         "No pairs file"),
        ("train: unknown --attention", ["train", "--train", pairs, "--out", missing,
                                        "--attention", "bogus"], "invalid choice: 'bogus'"),
        ("train: --window with --attention none", ["train", "--train", pairs, "--out", missing,
                                                   "--attention", "none", "--window", "2"],
         "`window` cannot be used with attention=None"),
        ("train: resume of nothing", ["train", "--out", missing, "--resume"],
         "Cannot resume"),
        ("serve: --port 99999", ["serve", model, "--port", "99999"],
         "port must be from 0 to 65535"),
        ("serve: no model there", ["serve", missing], "No model base path"),
    ]


def test_command_line_refuses_each_bad_input_in_one_line(tiny_run, tmp_path, capfd):
    model = str(tmp_path / "saved" / MODEL)
    export.export_saved_model(tiny_run, model, strategies=export_strategies(beam_width=2))
    pairs = write_pairs(tmp_path / "pairs.tsv", n=50)
    cases = cli_cases(model, tiny_run, pairs, bad_files(tmp_path), tmp_path)
    for what, argv, words in cases:
        try:
            code = cli.main(argv)
        except SystemExit as error:  # argparse's own refusals
            code = error.code
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and "Traceback" not in err, (what, code, err[-2000:])
        assert lines[-1].startswith(f"s2s-attn {argv[0]}: error: ") and words in lines[-1], (
            what, lines[-1])
    assert not os.path.exists(tmp_path / "missing")  # refused before writing anything
    assert len(cases) >= 20


def write(path, contents):
    path.write_bytes(contents)
    return str(path)


def test_read_pairs_names_the_file_and_line_of_each_bad_row(tmp_path):
    cases = [
        ("no such file", str(tmp_path / "missing.tsv"), {}, FileNotFoundError, "missing.tsv"),
        ("a directory", str(tmp_path), {}, FileNotFoundError, "No pairs file"),
        ("an unknown extension", write(tmp_path / "p.json", b"a\tb\n"), {}, ValueError,
         "delimiter"),
        ("a missing column", write(tmp_path / "c.tsv", b"a\tb\nc\n"), {}, MalformedRowError,
         "c.tsv:2: malformed row: 1 column(s)"),
        ("an empty source", write(tmp_path / "s.tsv", b" \tB\n"), {}, MalformedRowError,
         "s.tsv:1: malformed row: empty source"),
        ("an empty target", write(tmp_path / "t.tsv", b"a\tB\nb\t \n"), {}, MalformedRowError,
         "t.tsv:2: malformed row: empty target"),
        ("bytes that are not UTF-8", write(tmp_path / "u.tsv", b"a\tB\nb\tC\n\xff\tD\n"), {},
         MalformedRowError, "u.tsv:3: malformed row: bytes that are not valid utf-8"),
        ("a line past the cap", write(tmp_path / "l.tsv", b"a\t" + b"B" * MAX_LINE_BYTES + b"\n"),
         {}, MalformedRowError, f"l.tsv:1: malformed row: longer than {MAX_LINE_BYTES} bytes"),
        ("blank lines only", write(tmp_path / "b.tsv", b"\n \n\t\n"), {"on_bad_row": "skip"},
         MalformedRowError, "no usable source/target pair"),
        ("a column name without a header", write(tmp_path / "h.tsv", b"a\tb\n"),
         {"source_column": "word", "header": False}, ValueError, "needs header=True"),
        ("a column name the header lacks", write(tmp_path / "n.tsv", b"src\ttgt\na\tb\n"),
         {"source_column": "word"}, ValueError, "is not a column"),
        ("an unknown on_bad_row", write(tmp_path / "o.tsv", b"a\tb\n"), {"on_bad_row": "drop"},
         ValueError, "on_bad_row"),
    ]
    for what, path, options, error, words in cases:
        with pytest.raises(error) as raised:
            read_pairs(path, **options)
        message = str(raised.value)
        assert words in message and "\n" not in message, (what, message)
    # --on-bad-row skip reads past each bad row, long and undecodable ones included.
    mixed = write(tmp_path / "mixed.tsv", b"a\tA\n\xff\tB\nb\n" + b"c\t" + b"C" * 70_000
                  + b"\nd\tD\n")
    with pytest.warns(UserWarning, match="Skipped 3 malformed row"):
        assert read_pairs(mixed, on_bad_row="skip") == (["a", "d"], ["A", "D"])


def test_the_readme_lists_the_bad_inputs():
    """Every case of this file has its line in the README's "Bad input" section."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md"),
                  encoding="utf-8").read()
    section = readme[readme.index("## Bad input"):]
    section = section[:section.index("\n## ", 1)]
    for what, *_ in REST:
        assert what in section, what
