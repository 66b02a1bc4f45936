import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_s2s_attn import build_seq2seq_model
from keras_s2s_attn.decoding import BeamSearch, Decoder, EnsembleStepper, GreedySearch, Stepper
from keras_s2s_attn.decoding.packed import can_pack, packed_encode
from keras_s2s_attn.layers.encoder import Encoder
from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID


def untrained(**kwargs):
    keras.utils.set_random_seed(3)
    return build_seq2seq_model(12, 12, embedding_dim=8, units=16, dropout=0.0, **kwargs)


SOURCES = np.array([[4, 5, 6, 7, 8], [9, 10, 0, 0, 0], [11, 4, 4, 0, 0]], np.int32)


def never_reserved(log_probs):
    """The decoders never emit the padding or start id: they are not output tokens."""
    log_probs = log_probs.copy()
    log_probs[..., [PAD_ID, START_ID]] = -np.inf
    return log_probs


def numpy_greedy(model, source_ids, max_length):
    """Reference: the whole model re-run on the growing prefix, argmax each time."""
    targets = np.full((len(source_ids), 1), START_ID, np.int32)
    finished = np.zeros(len(source_ids), bool)
    scores = np.zeros(len(source_ids))
    for _ in range(max_length):
        logits = keras.ops.convert_to_numpy(
            model({"source_ids": source_ids, "target_ids": targets}))[:, -1]
        log_probs = never_reserved(logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
            -1, keepdims=True)) - logits.max(-1, keepdims=True))
        chosen = np.where(finished, 0, log_probs.argmax(-1))
        scores += np.where(finished, 0.0, log_probs.max(-1))
        finished |= chosen == END_ID
        targets = np.concatenate([targets, chosen[:, None]], 1)
        if finished.all():
            break
    return targets[:, 1:], scores


@pytest.mark.parametrize("kwargs", [dict(), dict(attention="general", style="luong"),
                                    dict(attention=None)])
def test_greedy_equals_rerunning_the_training_graph(kwargs):
    model = untrained(**kwargs)
    result = Decoder(model).greedy(SOURCES, max_output_length=7)
    want_ids, want_scores = numpy_greedy(model, SOURCES, 7)
    ids = result["ids"].numpy()
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(result["scores"].numpy(), want_scores, rtol=1e-4, atol=1e-4)
    if kwargs.get("attention", "") is None:
        assert "attention" not in result  # no map is invented for the plain encoder-decoder
    else:
        assert result["attention"].shape == (3, ids.shape[1], 5)
    for row in range(3):  # lengths count tokens before the end id
        tokens = list(ids[row])
        expected = tokens.index(END_ID) if END_ID in tokens else len(tokens)
        assert result["lengths"].numpy()[row] == expected


def test_padding_and_start_ids_are_never_emitted():
    """A model that puts most of its mass on PAD and START still emits real tokens only.

    (Before the fix the decoders picked PAD as a token, which decode() then
    dropped, so a row could come out empty or shorter with a worse score.)
    """
    model = untrained()
    projection = model.get_layer("output_projection")
    kernel, bias = projection.get_weights()
    bias[[PAD_ID, START_ID]] += 20.0
    projection.set_weights([kernel, bias])
    decoder = Decoder(model)
    for result in (decoder.greedy(SOURCES, max_output_length=7),
                   decoder.beam_search(SOURCES, beam_width=3, num_results=3,
                                       max_output_length=7)):
        ids = np.asarray(result["ids"])
        produced = np.arange(ids.shape[-1]) < np.asarray(result["lengths"])[..., None]
        assert produced.any()
        assert not np.isin(ids[produced], [PAD_ID, START_ID]).any()


def test_greedy_attention_equals_teacher_forced_attention(reversal_model):
    from keras_s2s_attn import attention_model

    model, (inputs, _) = reversal_model
    sources = inputs["source_ids"][:8]
    result = Decoder(model).greedy(sources, max_output_length=30)
    ids = result["ids"].numpy()
    targets = np.concatenate([np.full((8, 1), START_ID), ids[:, :-1]], 1)
    forced = keras.ops.convert_to_numpy(
        attention_model(model)({"source_ids": sources, "target_ids": targets}))
    alive = np.concatenate([np.ones((8, 1), bool), (ids[:, :-1] != END_ID) & (ids[:, :-1] != 0)],
                           1)
    np.testing.assert_allclose(result["attention"].numpy()[alive], forced[alive], atol=1e-5)
    assert np.all(result["attention"].numpy()[~alive] == 0.0)


def test_beam_width_one_equals_greedy(reversal_model):
    model, (inputs, _) = reversal_model
    decoder = Decoder(model)
    sources = inputs["source_ids"][:64]
    greedy = decoder.greedy(sources, max_output_length=30)
    beam = decoder.beam_search(sources, beam_width=1, max_output_length=30,
                               length_penalty_weight=0.6)
    np.testing.assert_array_equal(beam["ids"].numpy(), greedy["ids"].numpy())
    np.testing.assert_array_equal(beam["lengths"].numpy(), greedy["lengths"].numpy())
    np.testing.assert_allclose(beam["scores"].numpy(), greedy["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(beam["attention"].numpy(), greedy["attention"].numpy(), atol=1e-6)


def test_beam_scores_at_least_greedy_on_a_trained_model(reversal_model):
    model, (inputs, _) = reversal_model
    sources = inputs["source_ids"][:200]
    decoder = Decoder(model)
    greedy = decoder.greedy(sources, max_output_length=30)["scores"].numpy()
    beam = decoder.beam_search(sources, beam_width=5, max_output_length=30,
                               length_penalty_weight=0.0, num_results=1)["scores"].numpy()
    assert np.all(beam >= greedy - 1e-4), (beam - greedy).min()

    # A noisier copy of the model makes real search errors: the beam fixes many
    # of them. Beam search does not promise to beat greedy on every row (the
    # greedy prefix can fall out of the beam), so that part is a rate.
    weak = Decoder(untrained_reversal_like(model)[0])
    greedy = weak.greedy(sources, max_output_length=30)["scores"].numpy()
    beam = weak.beam_search(sources, beam_width=5, max_output_length=30,
                            length_penalty_weight=0.0, num_results=1)["scores"].numpy()
    assert beam.mean() >= greedy.mean() + 0.3, (beam.mean(), greedy.mean())
    assert np.mean(beam > greedy + 1e-4) >= 0.3
    assert np.mean(beam >= greedy - 1e-4) >= 0.97


def untrained_reversal_like(model):
    """The trained model with noise on its weights: worse, so greedy errs more."""
    clone = keras.models.clone_model(model)
    rng = np.random.default_rng(0)
    clone.set_weights([w + rng.normal(scale=0.15, size=w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return clone, None


def test_n_best_sorted_and_penalties(reversal_model):
    model, (inputs, _) = reversal_model
    decoder = Decoder(model)
    sources = inputs["source_ids"][:16]
    result = decoder.beam_search(sources, beam_width=4, num_results=3, max_output_length=30,
                                 length_penalty_weight=1.0, coverage_penalty_weight=0.2)
    ranking = result["ranking_scores"].numpy()
    assert result["ids"].shape[:2] == (16, 3) and ranking.shape == (16, 3)
    assert np.all(np.diff(ranking, axis=1) <= 1e-6)  # best first
    ids = result["ids"].numpy()
    assert not any(np.array_equal(ids[b, 0], ids[b, 1]) for b in range(16))  # distinct beams
    # The ranking score is the GNMT formula applied to the returned numbers.
    lengths = result["lengths"].numpy() + 1  # + the end token
    attention = result["attention"].numpy()
    real = sources > 0
    coverage = np.log(np.minimum(attention.sum(2), 1.0) + 1e-10)
    cp = 0.2 * (coverage * real[:, None, :]).sum(-1)
    want = result["scores"].numpy() / ((5.0 + lengths) / 6.0) + cp
    np.testing.assert_allclose(ranking, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("coverage_penalty_weight", [0.0, 0.4])
def test_beam_ranking_is_finite_when_real_positions_get_no_attention(coverage_penalty_weight):
    """A local window leaves real source positions with zero coverage.

    The penalty's log(min(coverage, 1)) must stay finite there. (Before the
    fix, Grappler folded the `+ 1e-10` guard away in the traced graph, so the
    ranking became NaN, even with a zero penalty weight, and the beam picked
    arbitrary tokens.)
    """
    model = untrained(attention="general", window=1, window_mode="local-m")
    sources = np.array([[4, 5, 6, 7, 8, 9, 10, 11]], np.int32)
    result = Decoder(model).beam_search(sources, beam_width=3, num_results=3,
                                        max_output_length=2, length_penalty_weight=0.0,
                                        coverage_penalty_weight=coverage_penalty_weight)
    ranking = result["ranking_scores"].numpy()
    assert np.isfinite(ranking).all() and np.isfinite(result["scores"].numpy()).all()
    coverage = result["attention"].numpy().sum(2)
    assert (coverage == 0).any()  # the case under test: uncovered real positions
    cp = coverage_penalty_weight * np.log(np.clip(coverage, 1e-10, 1.0)).sum(-1)
    finished = result["lengths"].numpy() < 2  # the end token came within the 2 steps
    want = result["scores"].numpy() + cp * finished  # α = 0: no length penalty
    np.testing.assert_allclose(ranking, want, rtol=1e-5, atol=1e-4)


def test_jit_compile_gives_the_same_results(reversal_model):
    model, (inputs, _) = reversal_model
    sources = inputs["source_ids"][:16]
    plain, jit = Decoder(model), Decoder(model, jit_compile=True)
    for method, kwargs in (("greedy", {}), ("beam_search", {"beam_width": 3})):
        a = getattr(plain, method)(sources, max_output_length=30, **kwargs)
        b = getattr(jit, method)(sources, max_output_length=30, **kwargs)
        np.testing.assert_array_equal(a["ids"].numpy(), b["ids"].numpy())
        np.testing.assert_allclose(a["scores"].numpy(), b["scores"].numpy(), atol=1e-4)
    # The XLA stepper's steps weigh the memory gates; the plain one's multiply the context.
    gates = [d.stepper.encode(tf.constant(sources))[0][3] for d in (plain, jit)]
    assert gates[0] == () and gates[1].shape[:2] == sources.shape


def test_the_xla_encoder_steps_to_the_last_real_column(reversal_model, monkeypatch):
    """Under XLA a batch is padded to a bucket: the encoder's loops stop at its
    last real column (`to_last_step`), with the plain decoder's results."""
    from keras_s2s_attn.layers import recurrence

    model, (inputs, _) = reversal_model
    sources = np.concatenate([inputs["source_ids"][:8], np.zeros((8, 5), np.int32)], axis=1)
    calls = []
    run_sequence = recurrence.run_sequence

    def recording(*args, **kwargs):
        calls.append(kwargs.get("to_last_step", False))
        return run_sequence(*args, **kwargs)

    monkeypatch.setattr(recurrence, "run_sequence", recording)
    jit = Decoder(model, jit_compile=True).greedy(sources, max_output_length=30)
    assert calls and all(calls)
    plain = Decoder(model).greedy(sources, max_output_length=30)
    np.testing.assert_array_equal(jit["ids"].numpy(), plain["ids"].numpy())
    np.testing.assert_allclose(jit["attention"].numpy(), plain["attention"].numpy(), atol=1e-5)


def test_rows_of_padding_never_hold_the_loop_up(reversal_model):
    model, (inputs, _) = reversal_model
    sources = inputs["source_ids"][:4]
    padded = np.concatenate([sources, np.zeros_like(sources)])  # 4 rows of padding only
    decoder = Decoder(model)
    for method, kwargs in (("greedy", {}), ("beam_search", {"beam_width": 3})):
        alone = getattr(decoder, method)(sources, max_output_length=30, **kwargs)
        with_idle = getattr(decoder, method)(padded, max_output_length=30, **kwargs)
        assert with_idle["ids"].shape[-1] == alone["ids"].shape[-1] < 30  # the same steps
        np.testing.assert_array_equal(with_idle["ids"].numpy()[:4], alone["ids"].numpy())
    # All rows idle: no step at all.
    assert decoder.greedy(np.zeros_like(sources), max_output_length=30)["ids"].shape == (4, 0)


def test_bad_decoding_arguments():
    decoder = Decoder(untrained())
    with pytest.raises(ValueError, match="beam_width"):
        decoder.beam_search(SOURCES, beam_width=0)
    with pytest.raises(ValueError, match="num_results"):
        decoder.beam_search(SOURCES, beam_width=2, num_results=3)
    with pytest.raises(ValueError, match="length_penalty_weight"):
        decoder.beam_search(SOURCES, length_penalty_weight=-1.0)
    with pytest.raises(ValueError, match="max_output_length"):
        decoder.greedy(SOURCES, max_output_length=0)
    with pytest.raises(ValueError, match=r"\(batch, S\)"):
        decoder.greedy(SOURCES[0])
    with pytest.raises(ValueError, match="integer"):
        decoder.greedy(SOURCES.astype("float32"))


def numpy_ensemble_greedy(models, source_ids, max_length):
    """Reference: every model re-run on the growing prefix, argmax of the mean probability."""
    targets = np.full((len(source_ids), 1), START_ID, np.int32)
    finished = np.zeros(len(source_ids), bool)
    scores = np.zeros(len(source_ids))
    for _ in range(max_length):
        probs = np.exp(never_reserved(np.log(np.mean([keras.ops.convert_to_numpy(
            keras.ops.softmax(model({"source_ids": source_ids, "target_ids": targets})[:, -1]))
            for model in models], axis=0))))
        chosen = np.where(finished, 0, probs.argmax(-1))
        scores += np.where(finished, 0.0, np.log(probs.max(-1)))
        finished |= chosen == END_ID
        targets = np.concatenate([targets, chosen[:, None]], 1)
        if finished.all():
            break
    return targets[:, 1:], scores


def test_ensemble_greedy_follows_the_mean_probability():
    first = untrained()
    keras.utils.set_random_seed(4)
    second = build_seq2seq_model(12, 12, embedding_dim=8, units=16, dropout=0.0,
                                 attention="general", style="luong", cell_type="lstm")
    models = [first, second]
    ensemble = Decoder(models)
    result = ensemble.greedy(SOURCES, max_output_length=7)
    ids, scores = numpy_ensemble_greedy(models, SOURCES, 7)
    np.testing.assert_array_equal(result["ids"], ids)
    np.testing.assert_allclose(result["scores"], scores, rtol=1e-5, atol=1e-5)
    # Neither member alone decodes like the ensemble (so the test can tell them apart).
    for model in models:
        assert not np.array_equal(Decoder(model).greedy(SOURCES, max_output_length=7)["ids"],
                                  result["ids"])
    # The attention map is the members' mean: rows still sum to 1 over real positions.
    attention = np.asarray(result["attention"])
    produced = np.asarray(result["ids"]) != 0
    np.testing.assert_allclose(attention.sum(-1)[produced], 1.0, atol=1e-5)
    padding = np.broadcast_to((SOURCES == 0)[:, None], attention.shape)
    assert np.all(attention[padding] == 0)


def test_ensemble_of_one_model_twice_equals_the_model(reversal_model):
    model, (inputs, _) = reversal_model
    sources = inputs["source_ids"][:32]
    single = Decoder(model).beam_search(sources, beam_width=3, max_output_length=30,
                                        length_penalty_weight=0.6)
    double = Decoder([model, model]).beam_search(
        sources, beam_width=3, max_output_length=30, length_penalty_weight=0.6)
    np.testing.assert_array_equal(single["ids"], double["ids"])
    np.testing.assert_allclose(single["scores"], double["scores"], atol=1e-4)
    np.testing.assert_allclose(single["attention"], double["attention"], atol=1e-5)


def test_ensemble_needs_shared_vocabularies_and_two_models():
    with pytest.raises(ValueError, match="share their vocabularies"):
        Decoder([untrained(), build_seq2seq_model(13, 12, units=8, embedding_dim=4)])
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleStepper([Stepper(untrained())])


@pytest.mark.parametrize("kwargs", [dict(attention="additive"),
                                    dict(attention="general", style="luong", cell_type="lstm"),
                                    dict(attention=None)])
def test_keras_ops_searches_equal_the_tensorflow_strategies(reversal_model, kwargs):
    """`generation` (any backend, eager) gives `Decoder`'s tokens, lengths and scores."""
    from keras_s2s_attn.generation import beam_search, greedy_search

    model = reversal_model[0] if kwargs["attention"] == "additive" else build_seq2seq_model(
        24, 24, embedding_dim=8, units=16, **kwargs)
    source_ids = reversal_model[1][0]["source_ids"][:24].copy()
    source_ids[3] = 0  # a row of padding only
    decoder = Decoder(model)
    for python, graph in (
            (greedy_search(model, source_ids), decoder.greedy(source_ids)),
            (beam_search(model, source_ids, beam_width=3, length_penalty_weight=0.6,
                         coverage_penalty_weight=0.2, num_results=3, max_output_length=20),
             decoder.beam_search(source_ids, beam_width=3, length_penalty_weight=0.6,
                                 coverage_penalty_weight=0.2, max_output_length=20))):
        assert sorted(python) == sorted(graph)
        np.testing.assert_array_equal(python["ids"], graph["ids"].numpy())
        np.testing.assert_array_equal(python["lengths"], graph["lengths"].numpy())
        np.testing.assert_allclose(python["scores"], graph["scores"].numpy(), atol=1e-4)
        if "attention" in python:
            np.testing.assert_allclose(python["attention"], graph["attention"].numpy(),
                                       atol=1e-5)


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional, num_layers, table", [(True, 2, True), (False, 1, True),
                                                              (True, 1, False)])
def test_packed_encoder_equals_the_keras_layers(cell_type, bidirectional, num_layers, table,
                                                monkeypatch):
    """With a table of the first layer's input products for the whole vocabulary,
    or (a vocabulary over `MAX_TABLE_VOCABULARY`) without: only the real tokens'
    embeddings are multiplied, never all 30 ids' (that cost 12x a lone input's
    decoding with 32,000 word pieces)."""
    from keras_s2s_attn import generation
    from keras_s2s_attn.decoding import packed

    if not table:
        monkeypatch.setattr(generation, "MAX_TABLE_VOCABULARY", 29)
    rows = []
    project_inputs = packed.recurrence.project_inputs
    monkeypatch.setattr(packed.recurrence, "project_inputs", lambda cell, inputs, *args: (
        rows.append(inputs.shape[0]) or project_inputs(cell, inputs, *args)))
    encoder = Encoder(30, 8, 16, num_layers=num_layers, cell_type=cell_type,
                      bidirectional=bidirectional)
    source_ids = np.random.default_rng(0).integers(1, 30, (5, 9)).astype("int32")
    for row, length in enumerate([9, 3, 0, 5, 1]):  # an empty row, rows of every length
        source_ids[row, length:] = PAD_ID
    encoder(source_ids)
    for weight in encoder.weights:  # biases too, so no term can hide behind a zero
        weight.assign(np.random.default_rng(1).normal(0, 0.5, weight.shape))
    assert can_pack(encoder)
    memory, summary = encoder(source_ids)
    rows.clear()  # the Keras layers' own products (batch 5)
    packed_memory, packed_summary = tf.function(
        lambda ids: packed_encode(encoder, ids), autograph=False)(source_ids)
    real = (source_ids != PAD_ID)[..., None]
    np.testing.assert_allclose(packed_memory.numpy() * real, memory.numpy() * real, atol=1e-6)
    assert not np.any(packed_memory.numpy()[~real[..., 0]])  # padding: zeros
    np.testing.assert_allclose(packed_summary.numpy(), summary.numpy(), atol=1e-6)
    assert rows.count(30) == ((2 if bidirectional else 1) if table else 0)  # a table per cell


def test_packed_encoder_leaves_other_cases_to_the_keras_layers():
    encoder = Encoder(30, 8, 16)
    holes = np.array([[5, 0, 6, 7], [8, 9, 0, 0]], np.int32)  # a PAD between tokens
    for packed, keras_layers in zip(packed_encode(encoder, holes), encoder(holes)):
        np.testing.assert_array_equal(packed.numpy(), keras_layers.numpy())

    class OwnCall(Encoder):
        def call(self, source_ids, training=None):
            return super().call(source_ids, training=training)

    class OwnRun(Encoder):
        def run_rnn(self, rnn, inputs, mask, training=None):
            return super().run_rnn(rnn, inputs, mask, training=training)

    assert not can_pack(OwnCall(30, 8, 16)) and not can_pack(OwnRun(30, 8, 16))
    OwnRun(30, 8, 16)(holes)  # a `run_rnn` without `projected` still runs
    assert not can_pack(Encoder(30, 8, 16, dtype="mixed_bfloat16"))
    assert not Stepper(untrained(), dynamic_shapes=False).packed


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
def test_encoder_from_first_layer_products_equals_the_keras_layers(cell_type):
    """The fixed-shape (XLA) encoder of a kept table starts from its rows."""
    from keras_s2s_attn.decoding import packed

    encoder = Encoder(30, 8, 16, num_layers=2, cell_type=cell_type)
    source_ids = np.random.default_rng(2).integers(1, 30, (4, 7)).astype("int32")
    source_ids[1, 3:] = source_ids[2, 1:] = PAD_ID
    encoder(source_ids)
    for weight in encoder.weights:
        weight.assign(np.random.default_rng(3).normal(0, 0.5, weight.shape))
    products = [tf.gather(table, source_ids) for table in packed.first_layer_tables(encoder)]
    got = encoder(source_ids, first_layer_products=products)
    for value, want in zip(got, encoder(source_ids)):
        np.testing.assert_allclose(value.numpy(), want.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="`first_layer_products` is for inference"):
        encoder(source_ids, training=True, first_layer_products=products)
    encoder.rnns[0].forward_layer.cell.dropout = 0.5  # a cell the equations are not for
    with pytest.raises(ValueError, match="`projected` needs Keras GRU or LSTM cells"):
        encoder(source_ids, first_layer_products=products)


def test_kept_tables_are_read_instead_of_computed(reversal_model, monkeypatch):
    """`Stepper.keep_tables()` (what a float32 export does): the tables of input
    products are computed once, then read; the same results, in a graph that
    multiplies no embedding table by a kernel."""
    from keras_s2s_attn import generation
    from keras_s2s_attn.decoding import packed
    from keras_s2s_attn.layers import recurrence

    model, (inputs, _) = reversal_model
    sources = tf.constant(np.asarray(inputs["source_ids"][:24], np.int32))
    computed = Stepper(model)
    kept = Stepper(model)
    tables = kept.keep_tables()
    vocabulary = model.get_layer("target_embedding").input_dim
    assert tables.target.shape == (vocabulary, 3 * 64) and len(tables.source) == 2
    np.testing.assert_allclose(tables.target.numpy(), computed.step_constants()["table"],
                               atol=1e-6)
    for table, expected in zip(tables.source, packed.first_layer_tables(computed.encoder)):
        np.testing.assert_allclose(table.numpy(), expected.numpy(), atol=1e-6)
    expected = GreedySearch().decode(computed, sources, 30)

    def refused(*args):
        raise AssertionError("a kept table was computed again")

    fixed = Stepper(model, dynamic_shapes=False)  # XLA's: no packing, the same tables
    assert len(fixed.keep_tables().source) == 2

    monkeypatch.setattr(generation.ModelSteps, "target_table", refused)
    monkeypatch.setattr(packed, "first_layer_tables", refused)
    # The decoder's first kernel is kept in the parts the steps read (its rows after
    # the target's; the table stands for the target's): the graph reads no slice of it.
    assert sorted(tables.first_layer) == ["rest"]
    first_cell = model.get_layer("decoder").cell.cells[0]
    input_kernel = recurrence.input_kernel
    monkeypatch.setattr(recurrence, "input_kernel",
                        lambda cell: refused() if cell is first_cell else input_kernel(cell))

    def check(stepper):
        result = tf.function(lambda ids: GreedySearch().decode(stepper, ids, 30),
                             autograph=False)(sources)
        np.testing.assert_array_equal(result.ids.numpy(), expected.ids.numpy())
        np.testing.assert_allclose(result.scores.numpy(), expected.scores.numpy(), atol=1e-5)

    check(kept)
    # The fixed-shape encoder reads no embedding at all (the packed one's graph keeps
    # the Keras layers for rows with gaps): every token's product is a table's row.
    monkeypatch.setattr(keras.layers.Embedding, "call", refused)
    check(fixed)
    # bfloat16 products round differently in each kernel: such a model keeps none (the
    # export then answers as its graph does; tests/test_training_recipes.py).
    mixed = Stepper(untrained(dtype="mixed_bfloat16")).keep_tables()
    assert mixed.target is None and mixed.source == [] and mixed.first_layer is None


@pytest.mark.parametrize("strategy", [GreedySearch(), BeamSearch(beam_width=3, num_results=3)])
def test_finished_inputs_leave_the_batch_with_the_same_results(reversal_model, strategy):
    model, (inputs, _) = reversal_model
    sources = inputs["source_ids"][:24]  # 5 to 25 symbols: the rows end at different steps
    sizes = []

    class Counting(Stepper):
        def step(self, tokens, states, memory, t):
            sizes.append(int(tokens.shape[0]))
            return super().step(tokens, states, memory, t)

    compacted = strategy.decode(Counting(model), sources, 30)  # eagerly, to count the rows
    static = strategy.decode(Stepper(model, dynamic_shapes=False), sources, 30)
    width = strategy.width
    assert sizes[0] == 24 * width and sizes[-1] < 12 * width  # inputs left the batch
    assert sizes == sorted(sizes, reverse=True) and int(compacted.steps) == int(static.steps)
    for name in ("ids", "lengths"):
        np.testing.assert_array_equal(getattr(compacted, name).numpy(),
                                      getattr(static, name).numpy())
    for name in ("scores", "ranking_scores", "attention"):
        np.testing.assert_allclose(getattr(compacted, name).numpy(),
                                   getattr(static, name).numpy(), atol=1e-4)


def test_the_step_paths_give_the_same_results(reversal_model, monkeypatch):
    """A step looks its tokens up in a table of input products, or multiplies their
    embeddings by the kernel (a large vocabulary), or calls the Keras cells (a cell
    subclass with its own `rnn_step`): the same translations and scores."""
    from keras_s2s_attn import generation
    from keras_s2s_attn.layers import AttentionDecoderCell

    model, (inputs, _) = reversal_model
    sources = np.asarray(inputs["source_ids"][:24], np.int32)

    def decoded(keep_tables=False):
        decoder = Decoder(model)
        if keep_tables:  # as an export does
            decoder.stepper.keep_tables()
        result = decoder.beam_search(sources, beam_width=3, max_output_length=30)
        return result["ids"].numpy(), result["scores"].numpy()

    stepper = Stepper(model)
    stepper.encode(tf.constant(sources[:2]))
    assert "table" in stepper.constants_for_step()
    table_ids, table_scores = decoded()
    monkeypatch.setattr(generation, "MAX_TABLE_VOCABULARY", 0)
    product_ids, product_scores = decoded()
    # No table to stand for the first kernel's target rows: they are kept too.
    assert sorted(Stepper(model).keep_tables().first_layer) == ["rest", "target"]
    kept_ids, kept_scores = decoded(keep_tables=True)
    class OwnStep(AttentionDecoderCell):
        def rnn_step(self, *args, **kwargs):
            return super().rnn_step(*args, **kwargs)

    cell = model.get_layer("decoder").cell
    monkeypatch.setattr(cell, "__class__", OwnStep)
    assert cell.step_weights() is None  # an overridden `rnn_step`: the cells are called
    cell_ids, cell_scores = decoded()
    for ids, scores in ((product_ids, product_scores), (kept_ids, kept_scores),
                        (cell_ids, cell_scores)):
        np.testing.assert_array_equal(ids, table_ids)
        np.testing.assert_allclose(scores, table_scores, atol=1e-4)


def test_step_constants_of_another_graph_are_not_used():
    stepper = Stepper(untrained())
    memory, states = tf.function(stepper.encode)(tf.constant(SOURCES))  # stash: that graph's
    eager = stepper.step(tf.fill([3], START_ID), states, memory, 0)
    memory, states = stepper.encode(tf.constant(SOURCES))
    again = stepper.step(tf.fill([3], START_ID), states, memory, 0)
    np.testing.assert_allclose(eager[0].numpy(), again[0].numpy(), atol=1e-6)
