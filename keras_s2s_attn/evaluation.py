"""Quality metrics: BLEU and chrF (sacrebleu), error rates (edit distance), exact match.

Every metric takes hypotheses (one string per source) and references (one
list of acceptable strings per source). Error rates follow the G2P
convention: a word is correct if it matches any reference (WER), and its
phone error is the edit distance to the closest reference over that
reference's length (PER; CER the same on characters).
"""

import sacrebleu
from rapidfuzz.distance import Levenshtein

METRICS = ("bleu", "chrf", "wer", "per", "cer", "exact")


def _check(hypotheses, references):
    hypotheses = list(hypotheses)
    references = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(hypotheses) != len(references):
        raise ValueError(f"Got {len(hypotheses)} hypotheses for {len(references)} references.")
    if not hypotheses:
        raise ValueError("Nothing to score: no hypotheses.")
    for index, alternatives in enumerate(references):
        if not alternatives:
            raise ValueError(f"references[{index}] is empty: every source needs a reference.")
    return hypotheses, references


def _closest_error(hypothesis, alternatives, split):
    """(edit distance, reference length) against the closest alternative."""
    best = None
    for reference in alternatives:
        reference_tokens = split(reference)
        distance = Levenshtein.distance(split(hypothesis), reference_tokens)
        rate = distance / max(len(reference_tokens), 1)
        if best is None or rate < best[0]:
            best = (rate, distance, len(reference_tokens))
    return best[1], best[2]


def error_rate(hypotheses, references, unit="token"):
    """Edit distance to the closest reference, summed, over the summed reference lengths.

    Args:
        hypotheses: List of str.
        references: List of lists of str (alternatives per source).
        unit: `"token"` (split on whitespace: phones, words) or `"char"`.

    Returns:
        A float (0 is perfect; can exceed 1 with many insertions).
    """
    hypotheses, references = _check(hypotheses, references)
    split = str.split if unit == "token" else list
    errors = total = 0
    for hypothesis, alternatives in zip(hypotheses, references):
        distance, length = _closest_error(hypothesis, alternatives, split)
        errors += distance
        total += length
    return errors / max(total, 1)


def sequence_error_rate(hypotheses, references):
    """Share of sources whose hypothesis matches none of its references (G2P WER)."""
    hypotheses, references = _check(hypotheses, references)
    wrong = sum(" ".join(h.split()) not in {" ".join(r.split()) for r in alternatives}
                for h, alternatives in zip(hypotheses, references))
    return wrong / len(hypotheses)


def evaluate_texts(hypotheses, references, metrics=METRICS):
    """The chosen metrics as a dict of floats (BLEU and chrF on their 0-100 scale).

    `wer` is the sequence error rate, the G2P convention (a source is wrong
    unless it matches a reference exactly); `per` the token (phone/word) error
    rate and `cer` the character error rate against the closest reference;
    `exact` is 1 − wer.

    Example:

    >>> evaluate_texts(["HH AH L OW"], [["HH AH L OW", "HH EH L OW"]], ["wer", "per"])
    {'wer': 0.0, 'per': 0.0}
    """
    hypotheses, references = _check(hypotheses, references)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; accepted values: {list(METRICS)}")
    results = {}
    if "bleu" in metrics or "chrf" in metrics:
        # sacrebleu wants one stream per reference slot: pad short lists with their first.
        slots = max(len(r) for r in references)
        streams = [[r[i] if i < len(r) else r[0] for r in references] for i in range(slots)]
        if "bleu" in metrics:
            results["bleu"] = sacrebleu.corpus_bleu(hypotheses, streams).score
        if "chrf" in metrics:
            results["chrf"] = sacrebleu.corpus_chrf(hypotheses, streams).score
    if "wer" in metrics or "exact" in metrics:
        wer = sequence_error_rate(hypotheses, references)
        if "wer" in metrics:
            results["wer"] = wer
        if "exact" in metrics:
            results["exact"] = 1.0 - wer
    if "per" in metrics:
        results["per"] = error_rate(hypotheses, references, "token")
    if "cer" in metrics:
        results["cer"] = error_rate(hypotheses, references, "char")
    return {name: results[name] for name in metrics}
