import pytest

from keras_s2s_attn.evaluation import (
    characters,
    error_rate,
    evaluate_texts,
    sequence_error_rate,
)


def test_wer_counts_a_word_right_if_it_matches_any_reference():
    hypotheses = ["R IY D", "R EH D", "L IY D", "K AE T"]
    references = [["R IY D", "R EH D"], ["R IY D", "R EH D"], ["R IY D"], ["K AE T"]]
    # "L IY D" alone is wrong: 1 of 4.
    assert sequence_error_rate(hypotheses, references) == 0.25
    scores = evaluate_texts(hypotheses, references, ["wer", "exact"])
    assert scores == {"wer": 0.25, "exact": 0.75}


def test_per_uses_the_closest_reference_and_its_length():
    # "L IY D" vs "R IY D": 1 substitution over 3 phones. vs "R EH D" it would be 2.
    assert error_rate(["L IY D"], [["R EH D", "R IY D"]]) == pytest.approx(1 / 3)
    # Summed over words: (1 + 0 + 2) / (3 + 2 + 4); insertion and deletion count 1 each.
    hypotheses = ["L IY D", "AH B", "K AE T S IH"]
    references = [["R IY D"], ["AH B"], ["K AE T S"]]
    # "K AE T S IH" vs "K AE T S": one insertion = 1, so total (1 + 0 + 1) / (3 + 2 + 4).
    assert error_rate(hypotheses, references) == pytest.approx(2 / 9)
    assert error_rate(["", "AH"], [["AH B"], ["AH"]]) == pytest.approx(2 / 3)  # deletions


def test_cer_on_characters():
    # "kitten" -> "sitting": 3 edits over 7 reference characters.
    assert error_rate(["kitten"], [["sitting"]], characters()) == pytest.approx(3 / 7)
    assert evaluate_texts(["kitten"], [["sitting"]], ["cer"]) == {"cer": pytest.approx(3 / 7)}


def test_per_and_cer_count_in_the_units_they_are_given():
    """`s2s-attn evaluate` passes the model's target tokenizer: its tokens are the units."""
    # Whitespace pieces: "don't," is one token, so one substitution in two tokens.
    assert evaluate_texts(["don't, go"], [["do not go"]], ["per"]) == {
        "per": pytest.approx(2 / 3)}
    def words_and_punctuation(texts):
        return [text.replace(",", " ,").replace("'", " '").split() for text in texts]

    # Words and punctuation: "don 't , go" against "do not go": 3 edits in 3 tokens.
    assert evaluate_texts(["don't, go"], [["do not go"]], ["per"],
                          tokenize=words_and_punctuation)["per"] == pytest.approx(3 / 3)
    # CER counts characters after the tokenizer's normalisation (here, lower-casing).
    assert evaluate_texts(["Cat"], [["cat"]], ["cer"])["cer"] == pytest.approx(1 / 3)
    lowered = evaluate_texts(["Cat"], [["cat"]], ["cer"],
                             normalize=lambda texts: [t.lower() for t in texts])
    assert lowered["cer"] == 0.0


def test_bleu_and_chrf_through_sacrebleu():
    import sacrebleu

    hypotheses = ["the cat sat on the mat", "a dog ran"]
    references = [["the cat sat on the mat"], ["the dog ran", "a dog ran fast"]]
    scores = evaluate_texts(hypotheses, references, ["bleu", "chrf"])
    streams = [["the cat sat on the mat", "the dog ran"],
               ["the cat sat on the mat", "a dog ran fast"]]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, streams).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, streams).score)
    assert evaluate_texts(["a b c d"], [["a b c d"]], ["bleu"])["bleu"] == pytest.approx(100.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown metric.*'bleu'"):
        evaluate_texts(["a"], [["a"]], ["meteor"])
    with pytest.raises(ValueError, match="2 hypotheses for 1"):
        evaluate_texts(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        evaluate_texts(["a"], [[]])
    with pytest.raises(ValueError, match="no hypotheses"):
        evaluate_texts([], [])


def test_oracle_wer_counts_a_word_right_if_any_of_its_top_k_matches():
    from keras_s2s_attn.evaluation import oracle_error_rates

    n_best = [["A B", "A C", "X", "Y"], ["Z", "Q", "R", "B  B"], ["P", "P", "P", "P"]]
    references = [["A  C"], ["B B", "W"], ["O"]]
    assert oracle_error_rates(n_best, references) == {
        "oracle_wer@1": 1.0, "oracle_wer@2": 2 / 3, "oracle_wer@4": 1 / 3}
    assert oracle_error_rates(n_best, references, ks=[3]) == {"oracle_wer@3": 2 / 3}
    with pytest.raises(ValueError, match="from 1 to the hypotheses per source"):
        oracle_error_rates(n_best, references, ks=[5])


def test_wer_and_oracle_compare_texts_as_the_tokenizer_normalises_them():
    """A model that lower-cases its targets answers "k ae t" for the reference "K AE T"."""
    def lower(texts):
        return [text.lower() for text in texts]

    hypotheses, references = ["k ae t", "d ao g"], [["K AE T"], ["D AA G"]]
    assert evaluate_texts(hypotheses, references, ["wer", "exact"]) == {"wer": 1.0, "exact": 0.0}
    assert evaluate_texts(hypotheses, references, ["wer", "exact"], normalize=lower) == {
        "wer": 0.5, "exact": 0.5}
    from keras_s2s_attn.evaluation import oracle_error_rates

    n_best = [["k ah t", "k ae t"], ["d aa g", "d ao g"]]
    assert oracle_error_rates(n_best, references) == {"oracle_wer@1": 1.0, "oracle_wer@2": 1.0}
    assert oracle_error_rates(n_best, references, normalize=lower) == {
        "oracle_wer@1": 0.5, "oracle_wer@2": 0.0}
