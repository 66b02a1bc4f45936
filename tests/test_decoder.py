import keras
import numpy as np
import pytest

from keras_s2s_attn import AttentionDecoder, AttentionDecoderCell, BahdanauLuongAttention

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
