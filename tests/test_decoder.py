import keras
import numpy as np
import pytest

from keras_s2s_attn import AttentionDecoder, AttentionDecoderCell, BahdanauLuongAttention
from keras_s2s_attn.layers import recurrence
from tests.conftest import tensorflow_only

B, T, S = 3, 6, 5
EMBED, UNITS = 4, 8
MEMORY_DIM = UNITS  # so that "dot" needs no projection

SCORE_KWARGS = {
    "dot": dict(score="dot"),
    "general": dict(score="general"),
    "concat": dict(score="concat"),
    "additive": dict(score="additive"),
    "normalized_additive": dict(score="additive", normalize=True),
    "scaled_dot": dict(score="scaled_dot", scale=True),
    "location": dict(score="location", max_length=S),
    "local_m": dict(score="general", window=1, window_mode="local-m"),
    "local_p": dict(score="additive", window=2, window_mode="local-p"),
}
STYLES = {
    "bahdanau": dict(style="bahdanau"),
    "luong_feeding": dict(style="luong", input_feeding=True),
    "luong_parallel": dict(style="luong", input_feeding=False),
}


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(B, T, EMBED)).astype("float32")
    memory = rng.normal(size=(B, S, MEMORY_DIM)).astype("float32")
    mask = np.arange(S)[None, :] < np.array([S, 2, 4])[:, None]
    return inputs, memory, mask


def make_decoder(score, style, cell_type, num_layers=1, **extra):
    attention = None if score is None else BahdanauLuongAttention(**SCORE_KWARGS[score])
    cell = AttentionDecoderCell(UNITS, attention, cell_type=cell_type, num_layers=num_layers,
                                **STYLES[style], **extra)
    return AttentionDecoder(cell, return_state=True)


def step_by_step(cell, inputs, memory, mask, initial_state):
    """The reference: the cell called by hand, one target position at a time."""
    states = cell.get_initial_state(B, initial_state)
    prepared = cell.prepare_memory(memory) if cell.attention is not None else None
    outputs, weights = [], []
    for t in range(T):
        (output, w), states = cell(inputs[:, t], states, memory, memory_mask=mask,
                                   prepared_memory=prepared, step=t)
        outputs.append(to_numpy(output))
        weights.append(None if w is None else to_numpy(w))
    return np.stack(outputs, 1), weights, [to_numpy(s) for s in states]


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("score", sorted(SCORE_KWARGS))
def test_teacher_forcing_equals_stepping_the_cell(score, style, cell_type):
    inputs, memory, mask = make_data()
    decoder = make_decoder(score, style, cell_type)
    decoder.build(inputs.shape, memory.shape)
    cell = decoder.cell
    rng = np.random.default_rng(5)
    initial = [rng.normal(size=(B, size)).astype("float32") for size in cell.rnn_state_sizes]
    outputs, weights, final = decoder(inputs, memory, initial_state=initial, memory_mask=mask)
    outputs, weights = to_numpy(outputs), to_numpy(weights)
    want_outputs, want_weights, want_final = step_by_step(cell, inputs, memory, mask, initial)

    assert outputs.shape == (B, T, cell.output_size)
    assert weights.shape == (B, T, S)
    np.testing.assert_allclose(outputs, want_outputs, atol=1e-5)
    np.testing.assert_allclose(weights, np.stack(want_weights, 1), atol=1e-5)
    rnn_final = want_final[: len(cell.rnn_state_sizes)]
    for got, want in zip(final, rnn_final):
        np.testing.assert_allclose(to_numpy(got), want, atol=1e-5)
    assert np.all(weights[1, :, 2:] == 0.0)  # padding of row 1 never attended
    assert decoder.parallel == (style == "luong_parallel")


@pytest.mark.parametrize("style", sorted(STYLES))
def test_stacked_layers_and_plain_decoder_equal_stepping(style):
    inputs, memory, mask = make_data(1)
    for score in ("additive", None):
        decoder = make_decoder(score, style, "lstm", num_layers=2, attention_layer_size=6)
        outputs = decoder(inputs, memory, memory_mask=mask)
        want_outputs, _, _ = step_by_step(decoder.cell, inputs, memory, mask, None)
        np.testing.assert_allclose(to_numpy(outputs[0]), want_outputs, atol=1e-5)
        if score is None:  # no attention: outputs and final state only
            assert len(outputs) == 2


def test_attention_orders_differ_between_styles():
    """Bahdanau attends with s_{t−1}, Luong with h_t: the first step shows it."""
    inputs, memory, mask = make_data(2)
    for style, uses_previous_state in (("bahdanau", True), ("luong_parallel", False)):
        decoder = make_decoder("general", style, "gru")
        decoder.build(inputs.shape, memory.shape)
        cell = decoder.cell
        initial = [np.full((B, UNITS), 0.3, "float32")]
        _, weights, _ = decoder(inputs, memory, initial_state=initial, memory_mask=mask)
        attention = cell.attention
        query = initial[0] if uses_previous_state else to_numpy(
            cell.rnn_step(inputs[:, 0], initial)[0]
        )
        _, want = attention(query, memory, memory_mask=mask, return_attention_scores=True)
        np.testing.assert_allclose(to_numpy(weights)[:, 0], to_numpy(want), atol=1e-6)


def test_custom_keras_cell():
    inputs, memory, mask = make_data(3)
    cell = AttentionDecoderCell(
        UNITS, BahdanauLuongAttention(score="additive"),
        cell_type=keras.layers.SimpleRNNCell(UNITS), style="luong",
    )
    decoder = AttentionDecoder(cell)
    outputs, weights = decoder(inputs, memory, memory_mask=mask)
    want_outputs, _, _ = step_by_step(cell, inputs, memory, mask, None)
    np.testing.assert_allclose(to_numpy(outputs), want_outputs, atol=1e-5)
    clone = AttentionDecoder.from_config(decoder.get_config())
    assert isinstance(clone.cell.cells[0], keras.layers.SimpleRNNCell)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_decoder_config_round_trip_gives_same_outputs(style):
    inputs, memory, mask = make_data(4)
    decoder = make_decoder("local_p", style, "lstm", num_layers=2, dropout=0.2)
    outputs = decoder(inputs, memory, memory_mask=mask)[0]
    clone = AttentionDecoder.from_config(decoder.get_config())
    clone.build(inputs.shape, memory.shape)
    clone.set_weights(decoder.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(inputs, memory, memory_mask=mask)[0]),
                                  to_numpy(outputs))
    assert clone.get_config() == decoder.get_config()



def with_nan_context_rows(step_weights):
    """`step_weights` whose first layer's context rows are NaN: a step that
    multiplies its context by them answers NaN."""
    layers = [dict(layer) for layer in step_weights["layers"]]
    layers[0]["rest"] = keras.ops.full_like(layers[0]["rest"], float("nan"))
    return {"layers": layers}


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
@pytest.mark.parametrize("score", sorted(SCORE_KWARGS))
def test_memory_gates_step_equals_the_context_product(score, cell_type):
    """Σ_s a_ts (m_s W_c) for c_t W_c: the same step without the context's product."""
    inputs, memory, mask = make_data(6)
    decoder = make_decoder(score, "bahdanau", cell_type, num_layers=2)
    decoder.build(inputs.shape, memory.shape)
    cell = decoder.cell
    weights = cell.step_weights()
    gates = cell.memory_gates(memory, weights)
    assert tuple(gates.shape) == (B, S, (3 if cell_type == "gru" else 4) * UNITS)
    np.testing.assert_allclose(to_numpy(gates), memory @ to_numpy(weights["layers"][0]["rest"]),
                               rtol=1e-5, atol=1e-5)
    prepared = cell.prepare_memory(memory)
    states = want_states = cell.get_initial_state(B)
    blind = with_nan_context_rows(weights)
    for t in range(T):
        projected = cell.project_inputs(inputs[:, t], weights)
        common = dict(memory_mask=mask, prepared_memory=prepared, step=t, projected=True)
        (output, w), states = cell(projected, states, memory, step_weights=blind,
                                   memory_gates=gates, **common)
        (want, want_w), want_states = cell(projected, want_states, memory,
                                           step_weights=weights, **common)
        np.testing.assert_allclose(to_numpy(output), to_numpy(want), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(to_numpy(w), to_numpy(want_w), atol=1e-6)
    for got, want in zip(states, want_states):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-5, atol=1e-5)


class OwnContext(AttentionDecoderCell):
    """A cell whose context is not the attention's weighted sum of the memory."""

    def attend(self, query, memory, memory_mask=None, prepared_memory=None, step=None,
               training=None):
        context, weights = super().attend(query, memory, memory_mask, prepared_memory, step,
                                          training)
        return 2.0 * context, weights


def test_memory_gates_only_where_the_context_is_the_weighted_memory():
    _, memory, _ = make_data(7)

    def gates_of(cell_class=AttentionDecoderCell, style="bahdanau", attention="additive",
                 **options):
        attention = None if attention is None else BahdanauLuongAttention(score=attention)
        cell = cell_class(UNITS, attention, style=style, **options)
        cell.build((None, EMBED), memory.shape)
        return cell.memory_gates(memory, cell.step_weights())

    assert gates_of() is not None
    assert gates_of(style="luong") is None  # the context comes after the RNN
    assert gates_of(attention=None) is None
    assert gates_of(OwnContext) is None
    assert gates_of(cell_type=keras.layers.SimpleRNNCell(UNITS)) is None  # no step weights
    assert gates_of(dtype="mixed_bfloat16") is None  # 16-bit products round otherwise


def test_memory_gates_refused_without_projected_inputs_or_with_attention_dropout():
    inputs, memory, mask = make_data(8)
    cell = AttentionDecoderCell(UNITS, BahdanauLuongAttention(dropout=0.5))
    cell.build((None, EMBED), memory.shape)
    weights = cell.step_weights()
    gates = cell.memory_gates(memory, weights)
    states = cell.get_initial_state(B)
    with pytest.raises(ValueError, match="`memory_gates` needs `projected=True`"):
        cell(inputs[:, 0], states, memory, step_weights=weights, memory_gates=gates)
    projected = cell.project_inputs(inputs[:, 0], weights)
    with pytest.raises(ValueError, match="dropout"):
        cell(projected, states, memory, step_weights=weights, projected=True,
             memory_gates=gates, training=True)
    cell(projected, states, memory, step_weights=weights, projected=True, memory_gates=gates)


def test_model_steps_weigh_the_memory_gates():
    """`ModelSteps` (the decoders of every backend and the export) takes the gates
    once in `encode`, and its steps answer as the trained model does without the
    context's product."""
    from keras_s2s_attn import build_seq2seq_model
    from keras_s2s_attn.generation import ModelSteps
    from keras_s2s_attn.special_ids import START_ID

    model = build_seq2seq_model(12, 12, embedding_dim=8, units=16)
    rng = np.random.default_rng(9)
    source = rng.integers(3, 12, (B, S)).astype("int32")
    source[1, 3:] = 0
    target = np.concatenate([np.full((B, 1), START_ID), rng.integers(3, 12, (B, 2))], 1)
    logits = to_numpy(model({"source_ids": source, "target_ids": target.astype("int32")}))
    assert ModelSteps(model).encode(source)[0][3] == ()  # not by default
    steps = ModelSteps(model, memory_gates=True)
    memory, states = steps.encode(source)
    assert len(memory) == 4  # states, mask, the prepared attention memory, the gates
    assert memory[3].shape == (B, S, 3 * 16)
    steps._constants["weights"] = with_nan_context_rows(steps._constants["weights"])
    for t in range(target.shape[1]):
        log_probs, _, states = steps.step(target[:, t].astype("int32"), states, memory, t)
        want = to_numpy(keras.ops.log_softmax(logits[:, t]))
        np.testing.assert_allclose(to_numpy(log_probs)[:, 3:], want[:, 3:], atol=1e-4)


def test_a_cell_without_prepared_memory_still_weighs_the_gates():
    """A subclass whose `prepare_memory` gives None (its attention prepares the
    memory at every step) keeps the gates where the steps read them, not in the
    prepared memory's place."""
    from keras_s2s_attn import build_seq2seq_model
    from keras_s2s_attn.generation import ModelSteps
    from keras_s2s_attn.special_ids import START_ID

    model = build_seq2seq_model(12, 12, embedding_dim=8, units=16)
    cell = model.get_layer("decoder").cell
    cell.prepare_memory = lambda memory: None  # this instance only
    rng = np.random.default_rng(10)
    source = rng.integers(3, 12, (B, S)).astype("int32")
    target = np.concatenate([np.full((B, 1), START_ID), rng.integers(3, 12, (B, 2))], 1)
    logits = to_numpy(model({"source_ids": source, "target_ids": target.astype("int32")}))
    steps = ModelSteps(model, memory_gates=True)
    memory, states = steps.encode(source)
    assert memory[2] == () and memory[3].shape == (B, S, 3 * 16)
    for t in range(target.shape[1]):
        log_probs, _, states = steps.step(target[:, t].astype("int32"), states, memory, t)
        want = to_numpy(keras.ops.log_softmax(logits[:, t]))
        np.testing.assert_allclose(to_numpy(log_probs)[:, 3:], want[:, 3:], atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(style="vaswani"), ["style", "'bahdanau'", "'luong'"]),
        (dict(cell_type="rnn"), ["cell_type", "'gru'", "'lstm'"]),
        (dict(cell_type=keras.layers.Dense(3)), ["cell_type", "state_size"]),
        (dict(cell_type=keras.layers.GRUCell(4), num_layers=2), ["num_layers"]),
        (dict(num_layers=0), ["num_layers", "positive integer"]),
        (dict(attention="additive"), ["attention", "BahdanauLuongAttention"]),
        (dict(dropout=-0.1), ["dropout"]),
        (dict(attention_layer_size=0), ["attention_layer_size"]),
    ],
)
def test_cell_bad_arguments(kwargs, words):
    kwargs.setdefault("attention", BahdanauLuongAttention())
    with pytest.raises(ValueError) as error:
        AttentionDecoderCell(UNITS, **kwargs)
    for word in words:
        assert word in str(error.value)


def test_decoder_needs_a_cell_and_3d_inputs():
    with pytest.raises(ValueError, match="AttentionDecoderCell"):
        AttentionDecoder(keras.layers.GRUCell(4))
    decoder = make_decoder("additive", "bahdanau", "gru")
    with pytest.raises(ValueError, match="inputs"):
        decoder(np.zeros((B, EMBED), "float32"), make_data()[1])
    cell = decoder.cell
    with pytest.raises(ValueError, match="rnn_states"):
        cell.get_initial_state(B, [np.zeros((B, UNITS)), np.zeros((B, UNITS))])


@tensorflow_only("the ops of TensorFlow's gradient graph")
def test_teacher_forcing_gradient_graph_slices_no_kernel_and_overlaps_iterations():
    import tensorflow as tf

    decoder = make_decoder("additive", "bahdanau", "gru")
    inputs, memory, mask = make_data()
    decoder(inputs, memory, memory_mask=mask)

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            outputs = decoder(inputs, memory, memory_mask=mask)[0]
            loss = tf.reduce_sum(tf.square(outputs))
        return tape.gradient(loss, decoder.trainable_variables)

    graph = gradients.get_concrete_function().graph
    # The first kernel's target and context rows are split apart: a slice's
    # gradient would be a kernel-sized tensor of zeros per slice, summed.
    kernel_shape = tuple(decoder.cell.cells[0].kernel.shape)
    sliced = [op.name for op in graph.get_operations() if op.type == "StridedSliceGrad"
              and tuple(op.outputs[0].shape) == kernel_shape]
    assert not sliced
    assert any(op.type == "Split" or op.type == "SplitV" for op in graph.get_operations())
    # The step loop and its gradient's may run iterations at once (Keras' scan: 1).
    loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert len(loops) == 2
    assert {op.get_attr("parallel_iterations") for op in loops} == {
        recurrence.PARALLEL_ITERATIONS}


def scheduled_models(**sampling):
    """A plain model and one with scheduled sampling, sharing every weight value."""
    from keras_s2s_attn import build_seq2seq_model

    options = {"embedding_dim": 8, "units": 16, "dropout": 0.0}
    plain = build_seq2seq_model(12, 12, **options)
    sampled = build_seq2seq_model(12, 12, **options, **sampling)
    values = {weight.path: weight for weight in plain.weights}
    for weight in sampled.weights:
        if weight.path in values:
            weight.assign(values[weight.path])
    return plain, sampled


def sampling_inputs():
    from keras_s2s_attn.synthetic import reversal_task

    inputs, _ = reversal_task(16, min_length=2, max_length=6, num_symbols=8, seed=0)
    return inputs


def test_scheduled_sampling_at_zero_is_teacher_forcing_exactly():
    inputs = sampling_inputs()
    plain, sampled = scheduled_models(sampling_probability=0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(sampled(inputs, training=True)),
                                  keras.ops.convert_to_numpy(plain(inputs, training=True)))


def test_scheduled_sampling_at_one_feeds_the_models_own_argmax():
    """Bengio et al. 2015 with probability 1: every input after the first is the
    embedding of the previous step's prediction, so the logits equal teacher
    forcing on the target ids [first id, argmax_0, ..., argmax_{T-2}]."""
    inputs = sampling_inputs()
    plain, sampled = scheduled_models(sampling_probability=1.0)
    logits = keras.ops.convert_to_numpy(sampled(inputs, training=True))
    predicted = logits.argmax(-1)
    fed = {"source_ids": inputs["source_ids"],
           "target_ids": np.concatenate([inputs["target_ids"][:, :1], predicted[:, :-1]], 1)}
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(plain(fed, training=True)),
                               atol=1e-6)
    assert not np.allclose(logits, keras.ops.convert_to_numpy(plain(inputs, training=True)))
    # In inference nothing is sampled.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(sampled(inputs)),
                                  keras.ops.convert_to_numpy(plain(inputs)))


def test_scheduled_sampling_probability_rises_linearly_and_survives_save(tmp_path):
    inputs = sampling_inputs()
    plain, sampled = scheduled_models(sampling_probability=0.5, sampling_steps=4)
    decoder = sampled.get_layer("decoder")
    seen = []
    for _ in range(6):
        seen.append(float(keras.ops.convert_to_numpy(decoder.sampling_schedule())))
        sampled(inputs, training=True)
    assert seen == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    sampled.save(tmp_path / "sampled.keras")
    loaded = keras.saving.load_model(tmp_path / "sampled.keras")
    assert float(keras.ops.convert_to_numpy(loaded.get_layer("decoder").sampling_calls)) == 6
    # A loaded model says how to train on with sampling; linked, it does.
    with pytest.raises(ValueError, match="link_feedback"):
        loaded(inputs, training=True)
    from keras_s2s_attn.models import link_feedback

    assert tuple(link_feedback(loaded)(inputs, training=True).shape) == (16, 7, 12)
