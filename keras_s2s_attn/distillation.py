"""Sequence-level knowledge distillation (Kim & Rush 2016).

A teacher (a model, or an ensemble) translates the training sources, usually
with beam search; its translations become the targets a smaller student is
trained on (`s2s-attn train --train distilled.tsv`). The student then learns
the teacher's one consistent answer per source rather than the spread of the
references, which is easier for a small model to fit.
"""

import os

from keras_s2s_attn import runs
from keras_s2s_attn.callbacks import replace_atomically
from keras_s2s_attn.checks import positive_int
from keras_s2s_attn.data import read_pairs
from keras_s2s_attn.decoding import BeamSearch, get_strategy
from keras_s2s_attn.translation import Translator, open_translator

def teacher_translator(teachers, strategy):
    """`texts -> outputs` for one teacher (a run directory or an export) or an
    ensemble of run directories that share their tokenizers."""
    teachers = [os.fspath(path) for path in teachers]
    if not teachers:
        raise ValueError("`teachers` must name at least one run directory or exported model.")
    if len(teachers) == 1:
        return open_translator(teachers[0], strategy)
    not_runs = [path for path in teachers if not runs.is_run_dir(path)]
    if not_runs:
        raise ValueError(f"An ensemble of teachers must be run directories; not one: "
                         f"{not_runs[0]!r} (export an ensemble and give its directory alone).")
    translator = Translator.from_run(teachers, strategies={"distill": strategy})
    return lambda texts: translator(texts, "distill")


def distill_pairs(teachers, train_data, out, *, strategy=None, keep_references=False,
                  batch_size=256, source_column=0, target_column=1, header=None,
                  on_bad_row="error", progress=None):
    """Writes a training set whose targets are the teachers' translations.

    Args:
        teachers: A list of paths: one run directory or exported model, or
            several run directories decoded as one ensemble.
        train_data: The training pairs file (read as `data.read_pairs` does,
            with the column options below).
        out: The TSV file to write (source, tab, target per line), written
            beside its place and renamed into it.
        strategy: How the teachers decode; default `BeamSearch` with its
            default width (4; Kim & Rush used 5), the best hypothesis.
        keep_references: Also write every original pair after the distilled
            ones: the student then sees the teacher's outputs and the real
            targets.
        batch_size: Sources translated per call.
        source_column, target_column, header, on_bad_row: As for `read_pairs`.
        progress: None, or `progress(done, total)` called after each batch.

    Returns:
        A dict: `pairs` (read), `distilled` (rows written with the teacher's
        target), `empty` (sources the teacher answered with nothing: no row,
        as training refuses empty targets), `references` (original rows
        written) and `out`.

    Example:

    >>> distill_pairs(["runs/a", "runs/b"], "data/train.tsv", "data/distilled.tsv")
    {'pairs': ..., 'distilled': ..., 'empty': 0, 'references': 0, 'out': 'data/distilled.tsv'}
    """
    positive_int(batch_size, "batch_size")
    strategy = BeamSearch(num_results=1) if strategy is None else get_strategy(strategy)
    sources, targets = read_pairs(train_data, source_column=source_column,
                                  target_column=target_column, header=header,
                                  on_bad_row=on_bad_row)
    translate = teacher_translator(teachers, strategy)
    rows, empty = [], 0
    for start in range(0, len(sources), batch_size):
        batch = sources[start: start + batch_size]
        outputs = translate(batch)
        for source, translation in zip(batch, outputs["translation"]):
            translation = translation.decode("utf-8")
            if translation.strip():
                rows.append((source, translation))
            else:
                empty += 1
        if progress is not None:
            progress(min(start + batch_size, len(sources)), len(sources))
    references = list(zip(sources, targets)) if keep_references else []
    _write_tsv(out, rows + references)
    return {"pairs": len(sources), "distilled": len(rows), "empty": empty,
            "references": len(references), "out": os.fspath(out)}


def _write_tsv(path, rows):
    """Writes `(source, target)` rows as TSV, atomically; refuses a tab or line
    break inside a text (a TSV row has no quoting to hold them)."""
    for row in rows:
        for text in row:
            if "\t" in text or "\n" in text or "\r" in text:
                raise ValueError(f"A text holds a tab or a line break, which a TSV row cannot "
                                 f"hold: {text!r}")

    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(f"{source}\t{target}\n" for source, target in rows)

    replace_atomically(os.fspath(path), write)
