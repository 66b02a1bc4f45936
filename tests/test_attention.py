import keras
import numpy as np
import pytest

from keras_s2s_attn import BahdanauLuongAttention, masked_softmax
from tests import reference
from tests.conftest import tensorflow_only

B, T, S = 3, 4, 7
QUERY_DIM, MEMORY_DIM = 6, 10

# (constructor kwargs, memory depth): dot products need equal depths (or units).
CASES = {
    "dot": (dict(score="dot"), QUERY_DIM),
    "dot_units": (dict(score="dot", units=QUERY_DIM), MEMORY_DIM),
    "scaled_dot": (dict(score="scaled_dot"), QUERY_DIM),
    "scaled_dot_scale": (dict(score="scaled_dot", scale=True), QUERY_DIM),
    "general": (dict(score="general"), MEMORY_DIM),
    "general_scale": (dict(score="general", scale=True), MEMORY_DIM),
    "concat": (dict(score="concat", units=5), MEMORY_DIM),
    "additive": (dict(score="additive", units=5), MEMORY_DIM),
    "additive_normalized": (dict(score="additive", units=5, normalize=True), MEMORY_DIM),
    "location": (dict(score="location", max_length=S), MEMORY_DIM),
    "location_short": (dict(score="location", max_length=S - 2), MEMORY_DIM),
}


def make_inputs(memory_dim, seed=0):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(B, T, QUERY_DIM)).astype("float32")
    memory = rng.normal(size=(B, S, memory_dim)).astype("float32")
    lengths = np.array([S, 3, 0])  # full, padded, all padding
    mask = np.arange(S)[None, :] < lengths[:, None]
    return query, memory, mask


def perturb(layer, seed=1):
    """Non-trivial values for every weight (scale, g and b start at 1/0)."""
    rng = np.random.default_rng(seed)
    for var in layer.weights:
        var.assign(rng.normal(scale=0.5, size=var.shape).astype("float32"))


def run(layer, query, memory, mask, **kwargs):
    context, weights = layer(query, memory, memory_mask=mask, return_attention_scores=True,
                             **kwargs)
    return keras.ops.convert_to_numpy(context), keras.ops.convert_to_numpy(weights)


@pytest.mark.parametrize("case", sorted(CASES))
def test_scores_match_paper_equations(case):
    kwargs, memory_dim = CASES[case]
    query, memory, mask = make_inputs(memory_dim)
    layer = BahdanauLuongAttention(**kwargs)
    # Built for memories of any length: longer than max_length must then mask.
    layer.build(query.shape, (B, None, memory_dim))
    perturb(layer)
    if kwargs.get("scale"):
        layer.scale_weight.assign(1.7)
    context, weights = run(layer, query, memory, mask)
    want_context, want_weights = reference.attention(
        layer.score_name, query, memory, mask, reference.paper_weights(layer)
    )
    assert context.shape == (B, T, memory_dim)
    assert weights.shape == (B, T, S)
    np.testing.assert_allclose(weights, want_weights, atol=1e-5)
    np.testing.assert_allclose(context, want_context, atol=1e-5)
    # Padding gets exactly zero; real rows sum to one; all-padding rows are zero.
    assert np.all(weights[1, :, 3:] == 0.0)
    assert np.all(weights[2] == 0.0) and np.all(context[2] == 0.0)
    if case == "location_short":  # positions past max_length cannot be scored
        assert np.all(weights[0, :, S - 2:] == 0.0)
    else:
        np.testing.assert_allclose(weights[:2].sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("case", sorted(set(CASES) - {"location_short"}))  # S > max_length
def test_one_step_query_equals_row_of_sequence_query(case):
    """A one-step query (how decoding and the Bahdanau order call the layer) takes
    other ops than a sequence of queries: the same numbers either way."""
    kwargs, memory_dim = CASES[case]
    query, memory, mask = make_inputs(memory_dim)
    layer = BahdanauLuongAttention(**kwargs)
    full_context, full_weights = run(layer, query, memory, mask)
    for t in range(T):
        context, weights = run(layer, query[:, t], memory, mask)
        assert context.shape == (B, memory_dim) and weights.shape == (B, S)
        np.testing.assert_allclose(weights, full_weights[:, t], atol=1e-6)
        np.testing.assert_allclose(context, full_context[:, t], atol=1e-6)


@pytest.mark.parametrize("case", ["dot", "scaled_dot_scale", "general_scale"])
def test_one_step_query_under_mixed_precision_is_close_to_float32(case):
    """The one-step dot scores are summed in float32 under mixed_bfloat16 too."""
    kwargs, memory_dim = CASES[case]
    query, memory, mask = make_inputs(memory_dim)
    exact = BahdanauLuongAttention(**kwargs)
    mixed = BahdanauLuongAttention(**kwargs, dtype="mixed_bfloat16")
    for layer in (exact, mixed):
        layer.build(query[:, 0].shape, memory.shape)
        perturb(layer)
    context, weights = run(mixed, query[:, 0], memory, mask)
    assert context.dtype == weights.dtype == np.float32
    expected_context, expected_weights = run(exact, query[:, 0], memory, mask)
    np.testing.assert_allclose(weights, expected_weights, atol=0.03)
    np.testing.assert_allclose(context, expected_context, atol=0.05)


@pytest.mark.parametrize("mode", ["local-m", "local-p"])
@pytest.mark.parametrize("score", ["general", "additive"])
def test_local_attention_matches_paper(mode, score):
    query, memory, mask = make_inputs(MEMORY_DIM, seed=3)
    layer = BahdanauLuongAttention(score=score, window=1, window_mode=mode)
    layer.build(query.shape, memory.shape)
    perturb(layer, seed=4)
    step = 2
    context, weights = run(layer, query, memory, mask, step=step)
    want_context, want_weights = reference.attention(
        score, query, memory, mask, reference.paper_weights(layer), window=1, mode=mode,
        step=step,
    )
    np.testing.assert_allclose(weights, want_weights, atol=1e-5)
    np.testing.assert_allclose(context, want_context, atol=1e-5)
    # Never more than 2D + 1 positions, never padding, never NaN.
    assert np.all((weights > 0).sum(-1) <= 3)
    assert np.all(weights[1, :, 3:] == 0.0)
    assert np.isfinite(weights).all() and np.isfinite(context).all()
    if mode == "local-m":
        # Window [t − 1, t + 1] around t = step + query index.
        for t in range(T):
            allowed = {s for s in range(S) if abs(s - (step + t)) <= 1}
            assert set(np.nonzero(weights[0, t])[0]) == allowed
        # One-step query with a per-row step tensor gives the same rows.
        for t in range(T):
            _, row = run(layer, query[:, t], memory, mask, step=np.full((B,), step + t))
            np.testing.assert_allclose(row, weights[:, t], atol=1e-6)
    else:
        # The Gaussian keeps local-p weights below the plain softmax's sum of one.
        assert np.all(weights[:2].sum(-1) <= 1.0 + 1e-6)


def test_local_m_window_past_the_source_gives_zeros_not_nan():
    query, memory, mask = make_inputs(MEMORY_DIM)
    layer = BahdanauLuongAttention(score="general", window=1, window_mode="local-m")
    context, weights = run(layer, query[:, 0], memory, mask, step=10)
    assert np.all(weights == 0.0) and np.all(context == 0.0)


def test_keras_mask_on_memory_is_used():
    query, memory, mask = make_inputs(MEMORY_DIM)
    memory_ids = np.where(mask, 5, 0)
    embedding = keras.layers.Embedding(10, MEMORY_DIM, mask_zero=True)
    masked_memory = embedding(memory_ids)
    layer = BahdanauLuongAttention(score="general")
    _, implicit = layer(query, masked_memory, return_attention_scores=True)
    _, explicit = layer(query, masked_memory, memory_mask=mask, return_attention_scores=True)
    implicit, explicit = keras.ops.convert_to_numpy(implicit), keras.ops.convert_to_numpy(explicit)
    np.testing.assert_array_equal(implicit, explicit)
    assert np.all(implicit[1, :, 3:] == 0.0)


def test_dropout_only_in_training():
    query, memory, mask = make_inputs(MEMORY_DIM)
    layer = BahdanauLuongAttention(score="general", dropout=0.5)
    base = run(layer, query, memory, mask)[0]
    again = run(layer, query, memory, mask, training=False)[0]
    np.testing.assert_array_equal(base, again)
    trained = run(layer, query, memory, mask, training=True)[0]
    assert not np.allclose(trained, base)


@tensorflow_only("the gradient is taken with tf.GradientTape")
def test_masked_softmax_gives_zero_rows_without_nan_gradients():
    import tensorflow as tf

    scores = tf.Variable([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    mask = tf.constant([[True, True, False], [False, False, False]])
    with tf.GradientTape() as tape:
        weights = masked_softmax(scores, mask)
        loss = tf.reduce_sum(weights * [[1.0, 2.0, 3.0]])
    gradient = tape.gradient(loss, scores).numpy()
    e = np.exp([1.0, 2.0])
    p = e / e.sum()
    np.testing.assert_allclose(weights[0], [p[0], p[1], 0.0], atol=1e-7)
    np.testing.assert_array_equal(weights[1], [0.0, 0.0, 0.0])
    # d/ds_i Σ_j c_j p_j = p_i (c_i − Σ_j c_j p_j) on real positions, 0 elsewhere.
    expected = p * (np.array([1.0, 2.0]) - (p * [1.0, 2.0]).sum())
    np.testing.assert_allclose(gradient[0], [expected[0], expected[1], 0.0], atol=1e-6)
    np.testing.assert_array_equal(gradient[1], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trip(case):
    kwargs, memory_dim = CASES[case]
    query, memory, mask = make_inputs(memory_dim)
    layer = BahdanauLuongAttention(window=2, window_mode="local-p", dropout=0.1, **kwargs)
    layer.build(query.shape, (None, None, memory_dim))
    perturb(layer)
    clone = BahdanauLuongAttention.from_config(layer.get_config())
    clone.build(query.shape, (None, None, memory_dim))
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(run(layer, query, memory, mask)[1],
                                  run(clone, query, memory, mask)[1])
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(score="bilinear"), ["score", "'dot'", "'additive'", "'location'"]),
        (dict(window=0), ["window", "positive integer"]),
        (dict(window=-3), ["window", "positive integer"]),
        (dict(window=2.5), ["window", "positive integer"]),
        (dict(window=2, window_mode="local-x"), ["window_mode", "'local-m'", "'local-p'"]),
        (dict(score="location"), ["max_length"]),
        (dict(score="general", units=8), ["units", "general"]),
        (dict(score="dot", normalize=True), ["normalize", "additive"]),
        (dict(score="additive", scale=True), ["scale", "'dot'", "'general'"]),
        (dict(units=0), ["units", "positive integer"]),
        (dict(dropout=1.5), ["dropout", "[0, 1)"]),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, words):
    with pytest.raises(ValueError) as error:
        BahdanauLuongAttention(**kwargs)
    for word in words:
        assert word in str(error.value)


def test_dot_with_mismatched_depths_suggests_the_fix():
    query, memory, _ = make_inputs(MEMORY_DIM)
    with pytest.raises(ValueError) as error:
        BahdanauLuongAttention(score="dot")(query, memory)
    message = str(error.value)
    assert f"query depth is {QUERY_DIM}" in message and f"{MEMORY_DIM}" in message
    assert "score='general'" in message and f"units={QUERY_DIM}" in message


def test_bad_ranks_and_missing_step_are_errors():
    query, memory, _ = make_inputs(MEMORY_DIM)
    layer = BahdanauLuongAttention(score="general")
    with pytest.raises(ValueError, match="memory"):
        layer(query, memory[:, 0])
    local = BahdanauLuongAttention(score="general", window=2, window_mode="local-m")
    with pytest.raises(ValueError, match="step"):
        local(query[:, 0], memory)
    location = BahdanauLuongAttention(score="location", max_length=3)
    with pytest.raises(ValueError, match="max_length"):
        location(query, memory)
