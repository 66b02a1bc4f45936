"""Quality metrics: BLEU and chrF (sacrebleu), error rates (edit distance), exact match.

Every metric takes hypotheses (one string per source) and references (one
list of acceptable strings per source). Error rates follow the G2P
convention: a word is correct if it matches any reference (WER), and its
phone error is the edit distance to the closest reference over that
reference's length (PER; CER the same on characters).
"""

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


def _closest_error(hypothesis, alternatives):
    """(edit distance, reference length) against the closest alternative (unit sequences)."""
    best = None
    for reference in alternatives:
        distance = Levenshtein.distance(hypothesis, reference)
        rate = distance / max(len(reference), 1)
        if best is None or rate < best[0]:
            best = (rate, distance, len(reference))
    return best[1], best[2]


def whitespace_tokens(texts):
    """The default units of `per`: each text's whitespace-separated pieces."""
    return [text.split() for text in texts]


def characters(normalize=None):
    """The units of `cer`: a `split` giving each text's characters, after `normalize`."""
    def split(texts):
        return [list(text) for text in (normalize(texts) if normalize else texts)]

    return split


def tokenizer_units(tokenizer):
    """`evaluate_texts`' `tokenize` and `normalize` arguments from a target
    tokenizer (`keras_s2s_attn.text`): `per` then counts its tokens, and `cer`
    the characters of its normalised text."""
    def tokenize(texts):
        return [[token.decode("utf-8") for token in row]
                for row in tokenizer.tokenize(texts).to_list()]

    def normalize(texts):
        return [text.decode("utf-8") for text in tokenizer.normalize(texts).numpy()]

    return {"tokenize": tokenize, "normalize": normalize}


def _in_units(hypotheses, references, split):
    """Hypotheses and references as unit sequences, `split` called once on them all."""
    flat = [reference for alternatives in references for reference in alternatives]
    units = split(list(hypotheses) + flat)
    hypothesis_units, reference_units = units[:len(hypotheses)], iter(units[len(hypotheses):])
    return hypothesis_units, [[next(reference_units) for _ in alternatives]
                              for alternatives in references]


def _normalized(hypotheses, references, normalize):
    """Hypotheses and references passed through `normalize` (in one call), if given."""
    if normalize is None:
        return hypotheses, references
    return _in_units(hypotheses, references, normalize)


def error_rate(hypotheses, references, split=whitespace_tokens):
    """Edit distance to the closest reference, summed, over the summed reference lengths.

    Args:
        hypotheses: List of str.
        references: List of lists of str (alternatives per source).
        split: A function from a list of str to a list of unit sequences:
            tokens (default: whitespace pieces; `s2s-attn evaluate` uses the
            model's target tokenizer) or characters.

    Returns:
        A float (0 is perfect; can exceed 1 with many insertions).
    """
    hypotheses, references = _check(hypotheses, references)
    hypothesis_units, reference_units = _in_units(hypotheses, references, split)
    errors = total = 0
    for hypothesis, alternatives in zip(hypothesis_units, reference_units):
        distance, length = _closest_error(hypothesis, alternatives)
        errors += distance
        total += length
    return errors / max(total, 1)


def sequence_error_rate(hypotheses, references):
    """Share of sources whose hypothesis matches none of its references (G2P WER)."""
    hypotheses, references = _check(hypotheses, references)
    wrong = sum(" ".join(h.split()) not in {" ".join(r.split()) for r in alternatives}
                for h, alternatives in zip(hypotheses, references))
    return wrong / len(hypotheses)


def oracle_error_rates(n_best, references, ks=None, normalize=None):
    """Oracle WER@k: the share of sources none of whose k best hypotheses matches a
    reference (a G2P word counts as right if any of its top k is).

    Args:
        n_best: List of lists of str: each source's hypotheses, best first.
        references: List of lists of str (alternatives per source).
        ks: The k to report; default 1, 2, 4, ... up to, and with, K (the
            number of hypotheses per source).
        normalize: Applied to hypotheses and references before they are
            compared (as in `evaluate_texts`), or None.

    Returns:
        `{"oracle_wer@k": rate}` for each k.

    Example:

    >>> oracle_error_rates([["HH AH L OW", "HH EH L OW"]], [["HH EH L OW"]])
    {'oracle_wer@1': 1.0, 'oracle_wer@2': 0.0}
    """
    n_best, references = _check(n_best, references)
    if normalize is not None:  # one call for every text: the n-best lists group like references
        _, groups = _in_units([], [*n_best, *references], normalize)
        n_best, references = groups[:len(n_best)], groups[len(n_best):]
    size = min(len(hypotheses) for hypotheses in n_best)
    if ks is None:
        ks = sorted({2 ** i for i in range(size.bit_length()) if 2 ** i <= size} | {size})
    if not size or any(not 1 <= k <= size for k in ks):
        raise ValueError(f"Every k must be from 1 to the hypotheses per source ({size}); "
                         f"got {list(ks)}.")
    first_right = []
    for hypotheses, alternatives in zip(n_best, references):
        accepted = {" ".join(r.split()) for r in alternatives}
        ranks = [i for i, h in enumerate(hypotheses) if " ".join(h.split()) in accepted]
        first_right.append(ranks[0] if ranks else size)
    return {f"oracle_wer@{k}": sum(rank >= k for rank in first_right) / len(n_best)
            for k in ks}


def evaluate_texts(hypotheses, references, metrics=METRICS, tokenize=whitespace_tokens,
                   normalize=None):
    """The chosen metrics as a dict of floats (BLEU and chrF on their 0-100 scale).

    `wer` is the sequence error rate, the G2P convention (a source is wrong
    unless it matches a reference exactly); `per` the token (phone/word) error
    rate and `cer` the character error rate against the closest reference;
    `exact` is 1 − wer.

    Args:
        hypotheses: List of str, one per source.
        references: List of lists of str (acceptable answers per source).
        metrics: Names from `METRICS`.
        tokenize: A function from a list of str to a list of token lists: the
            units of `per` (default: whitespace pieces; `s2s-attn evaluate`
            passes the model's target tokenizer).
        normalize: A function from a list of str to a list of str applied
            before `wer` and `exact` compare texts and `cer` counts
            characters (the target tokenizer's normalisation), or None.

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
        import sacrebleu  # here: its import costs more than the rest of the module

        # sacrebleu wants one stream per reference slot: pad short lists with their first.
        slots = max(len(r) for r in references)
        streams = [[r[i] if i < len(r) else r[0] for r in references] for i in range(slots)]
        if "bleu" in metrics:
            results["bleu"] = sacrebleu.corpus_bleu(hypotheses, streams).score
        if "chrf" in metrics:
            results["chrf"] = sacrebleu.corpus_chrf(hypotheses, streams).score
    if "wer" in metrics or "exact" in metrics:
        # Right if equal once both sides are normalised as the model's tokenizer does (a
        # model that lower-cases its targets answers "ah" where the reference says "AH").
        wer = sequence_error_rate(*_normalized(hypotheses, references, normalize))
        if "wer" in metrics:
            results["wer"] = wer
        if "exact" in metrics:
            results["exact"] = 1.0 - wer
    if "per" in metrics:
        results["per"] = error_rate(hypotheses, references, tokenize)
    if "cer" in metrics:
        results["cer"] = error_rate(hypotheses, references, characters(normalize))
    return {name: results[name] for name in metrics}
