"""`layers.recurrence`: Keras' GRU/LSTM equations with the input product out of the loop.

Every case compares with Keras' own layers on the same weights, on every backend.
"""

import keras
import numpy as np
import pytest

from keras_s2s_attn.layers import Encoder, recurrence
from keras_s2s_attn.layers import encoder as encoder_module

# Rows padded at the end, one empty, one with a masked step between real ones.
MASK = np.array([[1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0, 0],
                 [0, 0, 0, 0, 0, 0],
                 [1, 1, 0, 1, 1, 0]], bool)

CELLS = [
    ("gru", {}),
    ("gru", {"reset_after": False}),
    ("gru", {"use_bias": False}),
    ("lstm", {}),
    ("lstm", {"activation": "relu", "use_bias": False}),
]


def randomised(layer):
    """Random values in every weight (biases too, which Keras starts at zero)."""
    rng = np.random.default_rng(0)
    for weight in layer.weights:
        weight.assign(rng.normal(0, 0.4, weight.shape).astype("float32"))
    return layer


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("kind, options", CELLS)
def test_a_sequence_equals_keras_bidirectional_layer(kind, options):
    layer_class = keras.layers.GRU if kind == "gru" else keras.layers.LSTM
    layer = keras.layers.Bidirectional(
        layer_class(5, return_sequences=True, return_state=True, **options))
    x = np.random.default_rng(1).normal(size=(4, 6, 3)).astype("float32")
    layer.build(x.shape)
    randomised(layer)
    expected = [numpy(t) for t in layer(x, mask=MASK)]
    forward, forward_states = recurrence.run_sequence(layer.forward_layer.cell, x, MASK)
    backward, backward_states = recurrence.run_sequence(layer.backward_layer.cell, x, MASK,
                                                        reverse=True)
    np.testing.assert_allclose(numpy(forward), expected[0][..., :5], atol=1e-5)
    np.testing.assert_allclose(numpy(backward), expected[0][..., 5:], atol=1e-5)
    for got, want in zip(forward_states + backward_states, expected[1:]):
        np.testing.assert_allclose(numpy(got), want, atol=1e-5)
    assert np.all(numpy(forward)[~MASK] == 0)  # zeros at masked steps, as Bidirectional


def test_without_zero_output_for_mask_a_masked_step_repeats_the_last_output():
    layer = keras.layers.GRU(5, return_sequences=True, return_state=True)
    x = np.random.default_rng(2).normal(size=(4, 6, 3)).astype("float32")
    layer.build(x.shape)
    randomised(layer)
    expected, state = (numpy(t) for t in layer(x, mask=MASK))
    outputs, states = recurrence.run_sequence(layer.cell, x, MASK, zero_output_for_mask=False)
    np.testing.assert_allclose(numpy(outputs), expected, atol=1e-5)
    np.testing.assert_allclose(numpy(states[0]), state, atol=1e-5)
    np.testing.assert_allclose(numpy(outputs)[1, 4], numpy(outputs)[1, 2])


# MASK with two columns of padding in every row after it (a bucket's).
PADDED_MASK = np.concatenate([MASK, np.zeros((4, 2), bool)], axis=1)


@pytest.mark.parametrize("kind, options", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [True, False])
def test_to_last_step_equals_stepping_through_the_padding(kind, options, reverse,
                                                          zero_output_for_mask):
    """`to_last_step` gives what the whole scan gives, and reads no column after
    the last real one: NaN there would reach every state of the scan."""
    layer_class = keras.layers.GRU if kind == "gru" else keras.layers.LSTM
    layer = layer_class(5, **options)
    x = np.random.default_rng(4).normal(size=(4, 8, 3)).astype("float32")
    layer.build(x.shape)
    randomised(layer)
    options = {"reverse": reverse, "zero_output_for_mask": zero_output_for_mask}
    expected, expected_states = recurrence.run_sequence(layer.cell, x, PADDED_MASK, **options)
    poisoned = x.copy()
    poisoned[:, 6:] = np.nan
    got, states = recurrence.run_sequence(layer.cell, poisoned, PADDED_MASK, to_last_step=True,
                                          **options)
    np.testing.assert_allclose(numpy(got), numpy(expected), atol=1e-6)
    for value, want in zip(states, expected_states):
        np.testing.assert_allclose(numpy(value), numpy(want), atol=1e-6)


def test_the_encoder_to_its_last_step_equals_its_keras_layers():
    encoder = Encoder(30, 8, 16, num_layers=2)
    source_ids = np.random.default_rng(5).integers(1, 30, (3, 9)).astype("int32")
    source_ids[:, 6:] = 0
    source_ids[1, 2:] = 0
    for value, want in zip(encoder(source_ids, to_last_step=True), encoder(source_ids)):
        np.testing.assert_allclose(numpy(value), numpy(want), atol=1e-6)
    with pytest.raises(ValueError, match="`to_last_step` is for inference"):
        encoder(source_ids, training=True, to_last_step=True)


def test_which_cells_are_fusable():
    class OwnCall(keras.layers.GRUCell):
        def call(self, inputs, states, training=False):
            return super().call(inputs, states, training)

    class SameCall(keras.layers.LSTMCell):
        pass

    assert recurrence.fusable(keras.layers.GRUCell(4))
    assert recurrence.fusable(SameCall(4))
    assert not recurrence.fusable(OwnCall(4))
    assert not recurrence.fusable(keras.layers.GRUCell(4, dropout=0.1))
    assert not recurrence.fusable(keras.layers.LSTMCell(4, recurrent_dropout=0.1))
    assert not recurrence.fusable(keras.layers.SimpleRNNCell(4))


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_the_encoder_equals_its_keras_layers(cell_type, bidirectional, monkeypatch):
    encoder = Encoder(20, embedding_dim=6, units=5, num_layers=2, cell_type=cell_type,
                      bidirectional=bidirectional)
    ids = np.array([[3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 0, 0], [12, 0, 0, 0, 0, 0]])
    encoder.build(ids.shape)
    randomised(encoder)
    memory, summary = (numpy(t) for t in encoder(ids))
    # Where a cuDNN kernel could run, the encoder calls the Keras layers themselves.
    monkeypatch.setattr(encoder_module, "cudnn_available", lambda: True)
    keras_memory, keras_summary = (numpy(t) for t in encoder(ids))
    np.testing.assert_allclose(memory, keras_memory, atol=1e-5)
    np.testing.assert_allclose(summary, keras_summary, atol=1e-5)
    if bidirectional:  # Bidirectional zeros masked steps; a lone layer repeats its output
        assert np.all(memory[1, 3:] == 0) and np.all(memory[2, 1:] == 0)
    else:
        np.testing.assert_array_equal(memory[1, 3:], np.repeat(memory[1, 2:3], 3, axis=0))


def test_a_subclass_runs_its_own_rnn_layers():
    """`Encoder.run_rnn` is the extension point that runs one layer of the stack."""
    class Halved(Encoder):
        def run_rnn(self, rnn, inputs, mask, training=None):
            outputs, *states = super().run_rnn(rnn, inputs, mask, training=training)
            return [outputs * 0.5, *[state * 0.5 for state in states]]

    ids = np.array([[3, 4, 5, 0], [6, 7, 0, 0]])
    plain = Encoder(20, embedding_dim=6, units=5)
    plain.build(ids.shape)
    randomised(plain)
    halved = Halved(20, embedding_dim=6, units=5)
    halved.build(ids.shape)
    halved.set_weights(plain.get_weights())
    memory, summary = (numpy(t) for t in plain(ids))
    half_memory, half_summary = (numpy(t) for t in halved(ids))
    np.testing.assert_allclose(half_memory, memory * 0.5, atol=1e-6)
    np.testing.assert_allclose(half_summary, summary * 0.5, atol=1e-6)
