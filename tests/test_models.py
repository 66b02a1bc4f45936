import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_s2s_attn import (
    BahdanauLuongAttention,
    FusedAdam,
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    attention_model,
    build_seq2seq_model,
)
from keras_s2s_attn.callbacks import build_optimizer
from keras_s2s_attn.synthetic import reversal_task
from tests.conftest import tensorflow_only

VOCAB = 16


def to_numpy(x):
    return ops.convert_to_numpy(x)


@keras.saving.register_keras_serializable(package="keras_s2s_attn_tests")
class CosineAttention(BahdanauLuongAttention):
    """A user's own score: temperature-scaled cosine similarity of h and W s."""

    def __init__(self, temperature=5.0, **kwargs):
        kwargs.setdefault("score", "general")
        super().__init__(**kwargs)
        self.temperature = temperature

    def build(self, query_shape, memory_shape):
        super().build(query_shape, memory_shape)  # makes the general W
        self.temperature_weight = self.add_weight(
            name="temperature", shape=(),
            initializer=keras.initializers.Constant(self.temperature),
        )

    def score(self, query, prepared_memory):
        query = query / ops.sqrt(ops.sum(query * query, axis=-1, keepdims=True) + 1e-6)
        keys = prepared_memory / ops.sqrt(
            ops.sum(prepared_memory * prepared_memory, axis=-1, keepdims=True) + 1e-6
        )
        return self.temperature_weight * ops.matmul(query, ops.transpose(keys, (0, 2, 1)))

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def small_model(**kwargs):
    kwargs = {"embedding_dim": 8, "units": 16, "dropout": 0.0, **kwargs}
    return build_seq2seq_model(VOCAB, VOCAB, **kwargs)


def compiled(model):
    model.compile(FusedAdam(1e-2), loss=MaskedSparseCategoricalCrossentropy(),
                  metrics=[MaskedAccuracy()])
    return build_optimizer(model)


def dataset(n=128, seed=0):
    inputs, labels = reversal_task(n, min_length=2, max_length=6, num_symbols=8, seed=seed)
    return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(32), inputs, labels


def test_model_inputs_outputs_and_attention_model():
    model = small_model()
    assert sorted(model.input) == ["source_ids", "target_ids"]
    _, inputs, _ = dataset(4)
    logits = model(inputs)
    assert logits.shape == (4, 7, VOCAB)
    weights = to_numpy(attention_model(model)(inputs))
    assert weights.shape == (4, 7, 6)
    real = inputs["source_ids"] > 0
    assert np.all(weights[~np.broadcast_to(real[:, None, :], weights.shape)] == 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="attention=None"):
        attention_model(small_model(attention=None))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        # Dropout in the decoder's step loop (JAX refused draws inside its scan), and in
        # the Luong order without input feeding, whose RNN runs in a loop of its own.
        dict(attention="dot", style="luong", input_feeding=False, cell_type="lstm",
             decoder_layers=2, dropout=0.3),
        dict(attention="general", style="luong", decoder_layers=2, encoder_layers=2,
             dropout=0.3),
        dict(attention="location", max_source_length=6, style="luong"),
        dict(attention="additive", window=2, window_mode="local-p"),
        dict(attention=None),
    ],
)
def test_fit_on_tf_data_then_keras_save_load(tmp_path, kwargs):
    ds, inputs, _ = dataset()
    model = compiled(small_model(**kwargs))
    history = model.fit(ds, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded(inputs)), to_numpy(model(inputs)))
    # The compiled loss, metric and optimizer (its state too) come back, and training
    # can go on.
    assert isinstance(loaded.loss, MaskedSparseCategoricalCrossentropy)
    assert type(loaded.optimizer) is FusedAdam
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(restored), to_numpy(saved))
    loaded.fit(ds, epochs=1, verbose=0)


def test_decoder_dropout_masks_are_new_for_each_step_and_only_in_training():
    model = small_model(dropout=0.5, decoder_layers=2)
    _, inputs, _ = dataset(4)
    first, second = (to_numpy(model(inputs, training=True)) for _ in range(2))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(to_numpy(model(inputs)), to_numpy(model(inputs)))
    cell = model.get_layer("decoder").cell
    masks = cell.dropout_masks(4, 7, training=True)
    output = to_numpy(masks["output"])
    assert output.shape == (7, 4, cell.output_size)
    assert set(np.unique(output)) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - 0.5)
    assert not np.array_equal(output[0], output[1])  # each step a mask of its own
    assert [tuple(mask.shape) for mask in masks["between"]] == [(7, 4, 16)]
    assert cell.dropout_masks(4, 7, training=False) is None


def test_mixed_precision_computes_in_bfloat16_with_float32_logits_and_attention(tmp_path):
    _, inputs, labels = dataset(4)
    options = {"attention": "general", "style": "luong", "decoder_layers": 2}
    mixed = small_model(dtype="mixed_bfloat16", **options)
    plain = small_model(**options)
    plain.set_weights(mixed.get_weights())  # float32 weights in both
    logits = mixed(inputs)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert mixed.get_layer("decoder").compute_dtype == "bfloat16"
    difference = np.abs(to_numpy(logits) - to_numpy(plain(inputs))).max()
    assert 0 < difference < 0.05, difference  # computed in bfloat16, close to float32
    weights = attention_model(mixed)(inputs)
    assert keras.backend.standardize_dtype(weights.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(weights).sum(-1), 1.0, atol=1e-5)
    model = compiled(mixed)
    assert np.isfinite(model.fit(inputs, labels, epochs=2, verbose=0).history["loss"]).all()
    model.save(tmp_path / "mixed.keras")
    loaded = keras.saving.load_model(tmp_path / "mixed.keras")
    # Sub-layers made inside our layers keep the policy when loaded.
    assert loaded.get_layer("encoder").rnns[0].compute_dtype == "bfloat16"
    np.testing.assert_array_equal(to_numpy(loaded(inputs)), to_numpy(model(inputs)))


def test_subclassed_score_trains_saves_and_loads(tmp_path):
    ds, inputs, labels = dataset(256, seed=3)
    model = compiled(small_model(attention=CosineAttention(temperature=4.0, name="attention")))
    attention = model.get_layer("decoder").cell.attention
    assert isinstance(attention, CosineAttention)
    before = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
    model.fit(ds, epochs=5, verbose=0)
    after = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
    assert after < 0.8 * before
    # The custom weight exists and was trained.
    assert abs(float(attention.temperature_weight.numpy()) - 4.0) > 1e-4
    path = tmp_path / "custom.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_attention = loaded.get_layer("decoder").cell.attention
    assert isinstance(loaded_attention, CosineAttention)
    assert loaded_attention.temperature == 4.0
    np.testing.assert_array_equal(to_numpy(loaded(inputs)), to_numpy(model(inputs)))
    np.testing.assert_array_equal(to_numpy(attention_model(loaded)(inputs)),
                                  to_numpy(attention_model(model)(inputs)))


def reference_loss(labels, logits, smoothing):
    """Mean over non-padding tokens of −Σ_k q_k log p_k, q = (1−ε)·onehot + ε/K."""
    total, count = 0.0, 0
    vocab = logits.shape[-1]
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] == 0:
                continue
            z = logits[b, t] - logits[b, t].max()
            log_p = z - np.log(np.exp(z).sum())
            q = np.full(vocab, smoothing / vocab)
            q[labels[b, t]] += 1.0 - smoothing
            total += -(q * log_p).sum()
            count += 1
    return total / count


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_loss_and_accuracy_match_hand_computation(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype("float32")
    labels = np.array([[4, 5, 6, 3, 0], [4, 3, 0, 0, 0], [5, 5, 5, 5, 3]])
    loss = MaskedSparseCategoricalCrossentropy(label_smoothing=smoothing)
    np.testing.assert_allclose(float(loss(labels, logits)),
                               reference_loss(labels, logits, smoothing), rtol=1e-5)
    # Padding logits do not matter at all.
    noisy = logits.copy()
    noisy[labels == 0] = 100.0
    np.testing.assert_allclose(float(loss(labels, noisy)), float(loss(labels, logits)), rtol=1e-6)

    metric = MaskedAccuracy()
    metric.update_state(labels, logits)
    predicted = logits.argmax(-1)
    real = labels != 0
    assert float(metric.result()) == pytest.approx((predicted == labels)[real].mean())


def adam_reference(weights, gradients, rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                   clipnorm=None):
    """Adam (Kingma & Ba, Algorithm 1, with Keras' placement of epsilon) in numpy:
    `weights` after one step per gradient, each first scaled to a norm of at
    most `clipnorm` where given."""
    weights, m, v = weights.astype("float64"), 0.0, 0.0
    for t, g in enumerate(gradients, start=1):
        if clipnorm is not None:
            g = g * clipnorm / max(np.sqrt(np.sum(np.square(g, dtype="float64"))), clipnorm)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        step = rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        weights = weights - step * m / (np.sqrt(v) + epsilon)
    return weights


def test_fused_adam_follows_the_adam_equations():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(2, 4, 3)).astype("float32")  # two variables
    gradients = rng.normal(size=(5, 2, 4, 3)).astype("float32")
    gradients[1:3] *= 4.0  # norms of ~14 against 3.5: clipped with `clipnorm=5`
    for options in ({}, {"clipnorm": 5.0}):
        results = []
        for optimizer in (FusedAdam(0.05, **options), keras.optimizers.Adam(0.05, **options)):
            variables = [keras.Variable(w) for w in start]
            for g in gradients:
                optimizer.apply([ops.convert_to_tensor(x) for x in g], variables)
            results.append([to_numpy(v) for v in variables])
        for index in range(2):
            expected = adam_reference(start[index], gradients[:, index], 0.05, **options)
            np.testing.assert_allclose(results[0][index], expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(results[1][index], expected, rtol=1e-5, atol=1e-6)


@tensorflow_only("the fused kernel, and tf.IndexedSlices (an embedding's gradients)")
def test_fused_adam_is_one_kernel_per_variable_and_sums_repeated_rows_first():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(6, 3)).astype("float32")
    rows = np.array([1, 4, 1, 1, 0])  # row 1 looked up three times
    values = rng.normal(size=(3, 5, 3)).astype("float32")
    # Adam's g is the gradient, the repeated rows' slices summed, before it is
    # squared, and clipped by its own norm (not by the norm of its slices).
    dense = np.zeros((3, 6, 3), "float32")
    for step in range(3):
        np.add.at(dense[step], rows, values[step])
    for options in ({}, {"clipnorm": 1.5}):
        variable = keras.Variable(table)
        optimizer = FusedAdam(0.05, **options)
        for step in values:
            optimizer.apply([tf.IndexedSlices(tf.constant(step), tf.constant(rows),
                                              tf.constant([6, 3]))], [variable])
        np.testing.assert_allclose(to_numpy(variable),
                                   adam_reference(table, dense, 0.05, **options),
                                   rtol=1e-5, atol=1e-6)
    # One kernel per variable: Keras' own update has a square root of v in the graph.
    variables, optimizer = [keras.Variable(table), keras.Variable(table[0])], FusedAdam(0.05)
    graph = tf.function(lambda: optimizer.apply([tf.ones((6, 3)), tf.ones(3)], variables))
    kinds = [node.type for node in graph.get_concrete_function().graph.get_operations()]
    assert kinds.count("ResourceApplyAdam") == 2 and "Sqrt" not in kinds
    # With `clipnorm`, each gradient's norm is one L2Loss kernel (no Square and Sum).
    optimizer = FusedAdam(0.05, clipnorm=1.0)
    graph = tf.function(lambda: optimizer.apply([tf.ones((6, 3)), tf.ones(3)], variables))
    kinds = [node.type for node in graph.get_concrete_function().graph.get_operations()]
    assert kinds.count("L2Loss") == 2 and not {"Square", "Sum", "ClipByValue"} & set(kinds)


def test_loss_and_model_bad_arguments():
    with pytest.raises(ValueError, match="label_smoothing"):
        MaskedSparseCategoricalCrossentropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="attention.*'additive'"):
        small_model(attention="multiplicative")
    with pytest.raises(ValueError, match="style"):
        small_model(style="transformer")
    with pytest.raises(ValueError, match="cell_type"):
        small_model(cell_type="rnn")
    with pytest.raises(ValueError, match="window"):
        small_model(window=0)
    with pytest.raises(ValueError, match="`max_source_length`"):
        small_model(attention="location")
