"""Decoding strategies: sampling's distribution, the registry, a strategy of one's own."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_s2s_attn import build_seq2seq_model
from keras_s2s_attn.decoding import (
    NEG_INF,
    BeamSearch,
    Decoder,
    GreedySearch,
    SamplingSearch,
    Stepper,
    get_strategy,
    register_strategy,
    strategy_names,
)
from keras_s2s_attn.decoding.registry import strategy_class
from keras_s2s_attn.special_ids import END_ID, START_ID, UNK_ID

SOURCES = np.array([[4, 5, 6, 7, 8], [9, 10, 0, 0, 0], [11, 4, 4, 0, 0]], np.int32)


def untrained(vocabulary=12, **kwargs):
    keras.utils.set_random_seed(3)
    return build_seq2seq_model(vocabulary, vocabulary, embedding_dim=8, units=16, dropout=0.0,
                               **kwargs)


def first_step_probabilities(model, source):
    """The model's next-token distribution at step 0, over the output tokens (PAD and
    START are not: sampling draws from the rest, renormalised)."""
    stepper = Stepper(model)
    memory, states = stepper.encode(tf.constant(source))
    log_probs, _, _ = stepper.step(tf.constant([START_ID]), states, memory, tf.constant(0))
    probabilities = np.exp(log_probs.numpy()[0].astype(np.float64))
    return probabilities / probabilities.sum()


def one_step_samples(model, source, count, **options):
    """`count` first tokens drawn by `SamplingSearch(**options)` for one source."""
    strategy = SamplingSearch(num_samples=count, **options)
    result = strategy.decode(Stepper(model), tf.constant(source), 1)
    return result.ids.numpy()[0, :, 0]


def assert_frequencies_match(samples, probabilities):
    """Pearson's chi-square test of the sample counts against `probabilities`.

    Tokens expected fewer than 5 times are pooled into one cell, as the
    test's approximation needs.
    """
    expected = probabilities * len(samples)
    observed = np.bincount(samples, minlength=len(probabilities)).astype(float)
    assert observed[expected == 0].sum() == 0, "a token of probability 0 was drawn"
    big = expected >= 5
    cells_expected = np.append(expected[big], expected[~big].sum())
    cells_observed = np.append(observed[big], observed[~big].sum())
    keep = cells_expected > 0
    assert keep.sum() >= 3, "too few cells for the test to tell distributions apart"
    _, p_value = stats.chisquare(cells_observed[keep], cells_expected[keep])
    assert p_value > 0.001, (p_value, cells_observed[keep], cells_expected[keep])


@pytest.fixture(scope="module")
def flat_model():
    """An untrained model with a 40-token vocabulary: many tokens have real mass."""
    model = untrained(vocabulary=40)
    projection = model.get_layer("output_projection")
    kernel, bias = projection.get_weights()
    projection.set_weights([kernel * 4.0, bias])  # peakier than uniform, still spread out
    return model


def test_samples_follow_the_models_distribution(flat_model):
    source = SOURCES[:1]
    probabilities = first_step_probabilities(flat_model, source)
    assert probabilities.max() < 0.5 and (probabilities > 0.01).sum() >= 10
    samples = one_step_samples(flat_model, source, 20000, seed=11)
    assert_frequencies_match(samples, probabilities)


def test_temperature_and_top_k_reshape_the_distribution(flat_model):
    source = SOURCES[:1]
    probabilities = first_step_probabilities(flat_model, source)
    tempered = np.where(probabilities > 0, probabilities ** (1 / 0.7), 0.0)
    top = np.argsort(-tempered)[:6]
    want = np.zeros_like(tempered)
    want[top] = tempered[top] / tempered[top].sum()
    samples = one_step_samples(flat_model, source, 20000, seed=12, temperature=0.7, top_k=6)
    assert set(samples) <= set(top)
    assert_frequencies_match(samples, want)


def test_top_p_never_leaves_the_nucleus(flat_model):
    source = SOURCES[:1]
    probabilities = first_step_probabilities(flat_model, source)
    order = np.argsort(-probabilities)
    mass = np.cumsum(probabilities[order])
    nucleus = order[: np.searchsorted(mass, 0.6) + 1]  # smallest top set with mass >= 0.6
    samples = one_step_samples(flat_model, source, 20000, seed=13, top_p=0.6)
    assert set(samples) <= set(nucleus)
    assert len(set(samples)) == len(nucleus) >= 3  # the whole nucleus is drawn from
    want = np.zeros_like(probabilities)
    want[nucleus] = probabilities[nucleus] / probabilities[nucleus].sum()
    assert_frequencies_match(samples, want)


def test_same_seed_same_samples_and_top_k_one_is_greedy():
    model = untrained()
    decoder = Decoder(model)
    first = decoder.sample(SOURCES, max_output_length=9, num_samples=5, seed=7)
    again = decoder.sample(SOURCES, max_output_length=9, num_samples=5, seed=7)
    other = decoder.sample(SOURCES, max_output_length=9, num_samples=5, seed=8)
    np.testing.assert_array_equal(first["ids"], again["ids"])
    assert not np.array_equal(first["ids"], other["ids"])
    scores = first["scores"].numpy()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    greedy = decoder.greedy(SOURCES, max_output_length=9)
    for options in ({"top_k": 1, "seed": 3}, {"temperature": 0.0, "seed": 4}):
        sampled = decoder.sample(SOURCES, max_output_length=9, num_samples=3, **options)
        for k in range(3):
            np.testing.assert_array_equal(sampled["ids"][:, k], greedy["ids"])
            np.testing.assert_allclose(sampled["scores"][:, k], greedy["scores"], atol=1e-5)
            np.testing.assert_allclose(sampled["attention"][:, k], greedy["attention"],
                                       atol=1e-6)


def test_sample_scores_are_the_models_log_probabilities():
    """A sample's score is the sum of the model's (untempered) log-probabilities, as
    greedy and beam scores are."""
    model = untrained()
    result = Decoder(model).sample(SOURCES, max_output_length=6, num_samples=4, seed=5,
                                   temperature=1.5)
    ids, lengths = result["ids"].numpy(), result["lengths"].numpy()
    for row in range(len(SOURCES)):
        for k in range(4):
            tokens = ids[row, k][: lengths[row, k] + 1]
            tokens = tokens[tokens != 0]
            targets = np.concatenate([[START_ID], tokens[:-1]])[None]
            logits = keras.ops.convert_to_numpy(
                model({"source_ids": SOURCES[row: row + 1], "target_ids": targets}))[0]
            log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
                -1, keepdims=True)) - logits.max(-1, keepdims=True)
            want = log_probs[np.arange(len(tokens)), tokens].sum()
            np.testing.assert_allclose(result["scores"][row, k], want, atol=1e-4)


def test_bad_sampling_options_name_the_argument():
    for options, name in (({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"),
                          ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                          ({"num_samples": 0}, "num_samples"), ({"seed": 2**31}, "seed")):
        with pytest.raises(ValueError, match=name):
            SamplingSearch(**options)
    strategy = SamplingSearch()
    with pytest.raises(ValueError, match="takes no input"):
        strategy.parameters(beam_width=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="top_p"):
        strategy.decode(Stepper(untrained()), tf.constant(SOURCES), 4, top_p=2.0)


def test_registry_builds_the_strategies_by_name():
    assert strategy_names()[:3] == ("greedy", "beam", "sample")
    assert isinstance(get_strategy("greedy"), GreedySearch)
    beam = get_strategy("beam", beam_width=3, num_results=2)
    assert isinstance(beam, BeamSearch) and (beam.width, beam.num_results) == (3, 2)
    assert get_strategy(beam) is beam
    with pytest.raises(ValueError, match="Unknown decoding strategy 'nope'.*greedy, beam"):
        get_strategy("nope")


@register_strategy("banned_beam")
class BannedTokenBeam(BeamSearch):
    """A constrained beam: never emits `banned` (a strategy of one's own, by subclassing)."""

    signature_name = "banned_beam"

    def __init__(self, banned, **options):
        super().__init__(**options)
        self.banned = int(banned)

    def get_config(self):
        return {**super().get_config(), "banned": self.banned}

    def next_tokens(self, log_probs, hypotheses, t, parameters):
        ban = tf.one_hot(self.banned, tf.shape(log_probs)[-1], on_value=NEG_INF, off_value=0.0)
        return super().next_tokens(log_probs + ban, hypotheses, t, parameters)


def test_a_subclass_plugs_in_by_its_own_next_tokens():
    model = untrained()
    decoder = Decoder(model)
    plain = decoder.beam_search(SOURCES, beam_width=3, max_output_length=9, num_results=1)
    produced = plain["ids"].numpy()
    banned = int(np.bincount(produced[produced > END_ID]).argmax())  # the model's favourite
    assert strategy_class("banned_beam") is BannedTokenBeam
    constrained = decoder.decode(BannedTokenBeam(banned, beam_width=3, num_results=3), SOURCES,
                                 max_output_length=9)
    assert not (constrained["ids"].numpy() == banned).any()
    assert np.all(np.diff(constrained["ranking_scores"].numpy(), axis=1) <= 1e-6)
    # Banning a token the search never picks changes nothing.
    unused = [t for t in range(4, 12) if t not in produced][0]
    same = decoder.decode(BannedTokenBeam(unused, beam_width=3, num_results=1), SOURCES,
                          max_output_length=9)
    np.testing.assert_array_equal(same["ids"][:, 0], plain["ids"])


def test_unknown_tokens_are_replaced_by_the_most_attended_source_word(tmp_path):
    from keras_s2s_attn.text import make_tokenizer
    from keras_s2s_attn.translation import Translator

    source = make_tokenizer("word").adapt(["the cat sat on a mat"])
    target = make_tokenizer("word").adapt(["le chat"])
    model = untrained(vocabulary=max(source.vocabulary_size, target.vocabulary_size))
    model = build_seq2seq_model(source.vocabulary_size, target.vocabulary_size, units=16,
                                embedding_dim=8, dropout=0.0)
    projection = model.get_layer("output_projection")
    kernel, bias = projection.get_weights()
    bias[UNK_ID] += 30.0  # every token is unknown until the length budget runs out
    projection.set_weights([kernel, bias])
    texts = ["the cat sat", "the mat"]  # in the source vocabulary ("a" at the start is not)
    plain = Translator(model, source, target, max_output_length=4)(texts)
    assert plain["translation"].tolist() == [b"[UNK] [UNK] [UNK] [UNK]"] * 2
    replaced = Translator(model, source, target, max_output_length=4, replace_unknown=True)
    for signature in ("serving_default", "beam_search"):
        outputs = replaced(texts, signature)
        for row, text in enumerate(texts):
            words = text.split()
            picked = outputs["attention"][row].argmax(-1)[:4]
            want = " ".join(words[i] for i in picked)
            assert outputs["translation"][row].decode() == want
            assert [t.decode().lstrip("▁") for t in outputs["target_tokens"][row][:4]] == [
                words[i] for i in picked]
    with pytest.raises(ValueError, match="char, word or space"):
        Translator(model, source, make_tokenizer("wordpiece").adapt(["le chat"] * 5),
                   replace_unknown=True)
    # In the graph: the export replaces as Python does.
    from keras_s2s_attn.export import export_saved_model
    from keras_s2s_attn.saved_models import load_saved_model

    path = export_saved_model(model, tmp_path / "replacing", source_tokenizer=source,
                              target_tokenizer=target, max_output_length=4,
                              replace_unknown=True, strategies={"serving_default": "greedy"})
    exported = load_saved_model(path).signatures["serving_default"](text=tf.constant(texts))
    assert exported["translation"].numpy().tolist() == replaced(texts)["translation"].tolist()


def test_one_result_is_the_first_of_the_n_best():
    """num_results=1 is today's 1-best beam: the first of the same search's n-best list."""
    decoder = Decoder(untrained())
    one = decoder.beam_search(SOURCES, beam_width=4, num_results=1, max_output_length=9)
    four = decoder.beam_search(SOURCES, beam_width=4, num_results=4, max_output_length=9)
    for key in ("ids", "lengths", "scores", "ranking_scores", "attention"):
        np.testing.assert_array_equal(one[key], four[key][:, 0])
    ids = four["ids"].numpy()
    assert all(len({tuple(ids[b, k]) for k in range(4)}) == 4 for b in range(len(SOURCES)))


def test_a_custom_strategy_works_through_translator_and_the_export(tmp_path):
    import json
    import subprocess
    import sys
    import textwrap

    from keras_s2s_attn.export import export_saved_model
    from keras_s2s_attn.text import make_tokenizer
    from keras_s2s_attn.translation import Translator

    source = make_tokenizer("char").adapt(["abcdefgh"])
    target = make_tokenizer("char").adapt(["ABCDEFGH"])
    model = untrained(vocabulary=source.vocabulary_size)
    texts = ["abc", "hgfe", "dd", ""]
    plain = Translator(model, source, target, strategies={"beam": BeamSearch(3)})(texts, "beam")
    produced = "".join(plain["translations"].astype(str).ravel())
    banned_char = max(set(produced), key=produced.count)  # the model's favourite letter
    banned = target.vocabulary.index(banned_char)
    strategies = {"serving_default": GreedySearch(),
                  "banned_beam": BannedTokenBeam(banned, beam_width=3)}
    translator = Translator(model, source, target, strategies=strategies)
    local = translator(texts, "banned_beam")
    assert banned_char not in "".join(local["translations"].astype(str).ravel())
    path = export_saved_model(model, tmp_path / "custom", source_tokenizer=source,
                              target_tokenizer=target, strategies=strategies)
    script = textwrap.dedent(f"""
        import json
        import tensorflow as tf
        import tensorflow_text  # the tokenizers' NFKC normalisation
        model = tf.saved_model.load({path!r})
        out = model.signatures["banned_beam"](text=tf.constant({texts!r}))
        print(json.dumps({{"signatures": sorted(model.signatures),
                          "translations": out["translations"].numpy().astype(str).tolist()}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["signatures"] == ["banned_beam", "serving_default"]
    assert fresh["translations"] == local["translations"].astype(str).tolist()
    from keras_s2s_attn.saved_models import read_export_info
    entry = read_export_info(path)["signatures"]["banned_beam"]
    assert entry["strategy"] == "banned_beam" and entry["options"]["banned"] == banned
