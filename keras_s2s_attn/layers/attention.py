"""Bahdanau (additive) and Luong (multiplicative, location, local) attention.

Written with `keras.ops` only, so the layer runs on every Keras backend.
"""

import math

import keras
from keras import ops

from keras_s2s_attn.checks import positive_int, rate
from keras_s2s_attn.options import SCORES, WINDOW_MODES

# Scores whose value is a product of query and memory; `scale=True` applies to
# these only, as in tfa's `LuongAttention(scale=True)`.
MULTIPLICATIVE_SCORES = ("dot", "general", "scaled_dot")


def masked_softmax(scores, mask=None, axis=-1):
    """Softmax over `axis` that gives exactly zero weight where `mask` is False.

    `keras.ops.softmax` has no mask argument, and the usual trick of adding a
    large negative number leaves a tiny non-zero weight on padding and turns a
    fully masked row into a uniform distribution. Here masked entries are
    zeroed after the exponential, and a row with no valid entry gives all
    zeros instead of NaN.

    Args:
        scores: Float tensor.
        mask: Boolean tensor broadcastable to `scores`, True where valid.
        axis: The axis to normalise over.

    Returns:
        A tensor of the shape of `scores`.
    """
    if mask is None:
        return ops.softmax(scores, axis=axis)
    mask = ops.broadcast_to(mask, ops.shape(scores))
    minus_inf = ops.full_like(scores, float("-inf"))
    row_max = ops.max(ops.where(mask, scores, minus_inf), axis=axis, keepdims=True)
    # A fully masked row has max -inf: shift by 0 instead.
    row_max = ops.where(ops.isfinite(row_max), row_max, ops.zeros_like(row_max))
    shifted = ops.where(mask, scores - ops.stop_gradient(row_max), minus_inf)
    exp = ops.exp(shifted)
    total = ops.sum(exp, axis=axis, keepdims=True)
    return exp / ops.where(total > 0, total, ops.ones_like(total))


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class BahdanauLuongAttention(keras.layers.Layer):
    """Attention of a decoder query over encoder memory (Bahdanau or Luong).

    For each query vector h_t and each memory vector h̄_s the layer computes a
    score, turns the scores into weights with a softmax over the real
    (unpadded) memory positions, and returns the weighted sum of the memory,
    the context vector c_t.

    Scores (`score=`):

    - `"dot"`: hᵀ s (Luong). Query and memory depths must match, or set
      `units` to project the memory to the query depth.
    - `"general"`: hᵀ W s (Luong).
    - `"concat"`: vᵀ tanh(W [h; s]) (Luong).
    - `"additive"`: vᵀ tanh(W₁ h + W₂ s) (Bahdanau). With `normalize=True`,
      v is weight-normalised (g · v / ‖v‖) and a bias is added inside tanh.
    - `"scaled_dot"`: hᵀ s / √d.
    - `"location"`: softmax(W h), scores from the query alone (Luong §3.1);
      needs `max_length`, the most memory positions W can score.

    Local attention (Luong §3.2): with `window=D` only the positions in
    [p_t − D, p_t + D] are attended to. `window_mode="local-m"` sets p_t = t,
    the decoder step; `"local-p"` predicts p_t = S · sigmoid(v_pᵀ tanh(W_p h_t))
    with S the row's real length, and multiplies the weights by a Gaussian
    exp(−(s − p_t)² / 2σ²), σ = D / 2, as in the paper (so local-p weights sum
    to at most 1). A window that holds no real position gives zero weights.

    Padded memory positions get exactly zero weight; a row whose memory is all
    padding gets all-zero weights and a zero context, never NaN. Masks are
    assumed to be right-padded when lengths are needed (local attention).

    Subclassing: override `score(query, prepared_memory)` to define a new score
    function, `build` to create its weights and `prepare_memory(memory)` to
    precompute a memory-side projection once per source sequence.

    Args:
        units: Hidden size of the `"additive"`/`"concat"` scores (default: the
            memory depth); for `"dot"`/`"scaled_dot"`, the depth the memory is
            projected to (the query depth must then equal `units`). Not used by
            `"general"` and `"location"`.
        score: One of `"dot"`, `"general"`, `"concat"`, `"additive"`,
            `"scaled_dot"`, `"location"`.
        normalize: Weight-normalise the additive score (additive only).
        scale: Multiply multiplicative scores by a learned scalar (`"dot"`,
            `"general"`, `"scaled_dot"` only).
        window: Half-width D of the local-attention window, a positive
            integer, or None for global attention.
        window_mode: `"local-m"` or `"local-p"`.
        max_length: The largest memory length `"location"` can score;
            positions past it get zero weight.
        dropout: Dropout rate on the attention weights during training.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        query: `(batch, query_dim)` for one decoder step or
            `(batch, T, query_dim)` for T steps.
        memory: `(batch, S, memory_dim)` encoder states.
        memory_mask: Boolean `(batch, S)`, True at real positions. Defaults to
            the Keras mask of `memory`, if any.
        step: The decoder position of the (first) query, an int scalar or a
            `(batch,)` tensor; used by `"local-m"` (p_t = step + t), required
            there for a 2-D query. Defaults to 0 for a 3-D query.
        prepared_memory: The output of `prepare_memory(memory)`, to reuse across
            decoder steps. Computed here when None.
        training: Python boolean, enables attention dropout.
        return_attention_scores: Also return the attention weights.

    Returns:
        The context, `(batch, memory_dim)` or `(batch, T, memory_dim)`, and
        with `return_attention_scores=True` also the weights, `(batch, S)` or
        `(batch, T, S)`.

    Example:

    >>> attention = BahdanauLuongAttention(units=16, score="additive")
    >>> query = np.random.rand(2, 8).astype("float32")
    >>> memory = np.random.rand(2, 5, 12).astype("float32")
    >>> context, weights = attention(query, memory, return_attention_scores=True)
    >>> tuple(context.shape), tuple(weights.shape)
    ((2, 12), (2, 5))
    """

    def __init__(
        self,
        units=None,
        score="additive",
        normalize=False,
        scale=False,
        window=None,
        window_mode="local-p",
        max_length=None,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if score not in SCORES:
            raise ValueError(
                f"`score` must be one of {', '.join(map(repr, SCORES))}. "
                f"Received: score={score!r}"
            )
        if window_mode not in WINDOW_MODES:
            raise ValueError(
                f"`window_mode` must be one of {', '.join(map(repr, WINDOW_MODES))}. "
                f"Received: window_mode={window_mode!r}"
            )
        self.units = positive_int(units, "units", allow_none=True)
        self.window = positive_int(window, "window", allow_none=True)
        self.max_length = positive_int(max_length, "max_length", allow_none=True)
        if normalize and score != "additive":
            raise ValueError(
                "`normalize=True` weight-normalises the additive (Bahdanau) score "
                f"and needs score='additive'. Received: score={score!r}"
            )
        if scale and score not in MULTIPLICATIVE_SCORES:
            raise ValueError(
                "`scale=True` applies to multiplicative scores only: "
                f"{', '.join(map(repr, MULTIPLICATIVE_SCORES))}. Received: score={score!r}"
            )
        if score in ("general", "location") and units is not None:
            raise ValueError(
                f"`units` is not used by score={score!r} (its weight's size follows "
                f"the query depth{' and max_length' if score == 'location' else ''}). "
                f"Received: units={units!r}; leave it None."
            )
        if score == "location" and max_length is None:
            raise ValueError(
                "score='location' needs `max_length`, the largest memory length its "
                "weight W (query_dim × max_length) can score. Received: max_length=None"
            )
        self.dropout = rate(dropout, "dropout")
        self.score_name = score
        self.normalize = bool(normalize)
        self.scale = bool(scale)
        self.window_mode = window_mode
        self.supports_masking = True
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="weights_dropout",
                                                  dtype=self.dtype_policy)

    # ------------------------------------------------------------------ build
    def build(self, query_shape, memory_shape):
        query_dim = query_shape[-1]
        memory_dim = memory_shape[-1]
        if query_dim is None or memory_dim is None:
            raise ValueError(
                "The last dimension of `query` and `memory` must be known. Received: "
                f"query shape {tuple(query_shape)}, memory shape {tuple(memory_shape)}"
            )
        self.query_dim = query_dim
        self.memory_dim = memory_dim
        score = self.score_name
        if score in ("dot", "scaled_dot"):
            key_dim = self.units or memory_dim
            if key_dim != query_dim:
                if self.units is None:
                    hint = (
                        f"Use score='general', or set units={query_dim} to project "
                        "the memory to the query depth."
                    )
                else:
                    hint = f"Set units={query_dim}, or use score='general'."
                raise ValueError(
                    f"score={score!r} multiplies query and memory keys, so their depths "
                    f"must match: query depth is {query_dim}, key depth is {key_dim} "
                    f"({'units' if self.units else 'memory depth'}). {hint}"
                )
            if self.units is not None:
                self.memory_kernel = self.add_weight(
                    name="memory_kernel", shape=(memory_dim, self.units),
                    initializer="glorot_uniform",
                )
        elif score == "general":
            self.memory_kernel = self.add_weight(
                name="memory_kernel", shape=(memory_dim, query_dim),
                initializer="glorot_uniform",
            )
        elif score in ("additive", "concat"):
            units = self.units or memory_dim
            if score == "additive":
                self.query_kernel = self.add_weight(
                    name="query_kernel", shape=(query_dim, units),
                    initializer="glorot_uniform",
                )
                self.memory_kernel = self.add_weight(
                    name="memory_kernel", shape=(memory_dim, units),
                    initializer="glorot_uniform",
                )
            else:
                # One W over [h; s], as in Luong's equation; split at call time.
                self.concat_kernel = self.add_weight(
                    name="concat_kernel", shape=(query_dim + memory_dim, units),
                    initializer="glorot_uniform",
                )
            self.v = self.add_weight(name="v", shape=(units,), initializer="glorot_uniform")
            if self.normalize:
                self.g = self.add_weight(
                    name="g", shape=(),
                    initializer=keras.initializers.Constant(math.sqrt(1.0 / units)),
                )
                self.b = self.add_weight(name="b", shape=(units,), initializer="zeros")
        elif score == "location":
            if memory_shape[1] is not None and memory_shape[1] > self.max_length:
                raise ValueError(
                    f"score='location' was built with max_length={self.max_length} but "
                    f"the memory has {memory_shape[1]} positions. Raise `max_length`."
                )
            self.location_kernel = self.add_weight(
                name="location_kernel", shape=(query_dim, self.max_length),
                initializer="glorot_uniform",
            )
        if self.scale:
            self.scale_weight = self.add_weight(
                name="scale", shape=(), initializer="ones"
            )
        if self.window is not None and self.window_mode == "local-p":
            self.position_kernel = self.add_weight(
                name="position_kernel", shape=(query_dim, query_dim),
                initializer="glorot_uniform",
            )
            self.position_v = self.add_weight(
                name="position_v", shape=(query_dim,), initializer="glorot_uniform"
            )

    # ------------------------------------------------------- extension points
    def prepare_memory(self, memory):
        """Computes the memory side of the score once per source sequence.

        The decoder calls this once and passes the result to every step as
        `prepared_memory`, so the `(batch, S, memory_dim)` projection is not
        repeated T times. Override it together with `score` in a subclass.

        Args:
            memory: `(batch, S, memory_dim)` encoder states.

        Returns:
            A tensor `score` understands, `(batch, S, ...)`.
        """
        score = self.score_name
        if score in ("general", "additive") or (
            score in ("dot", "scaled_dot") and self.units is not None
        ):
            return ops.matmul(memory, self.memory_kernel)
        if score == "concat":
            return ops.matmul(memory, self.concat_kernel[self.query_dim:])
        return memory

    def score(self, query, prepared_memory):
        """Raw alignment scores of each query against each memory position.

        This is the extension point for a custom score function: override it
        (and `build` for its weights) in a subclass. Masking, the softmax,
        local windows and dropout are applied by `call` afterwards.

        Args:
            query: `(batch, T, query_dim)`; a one-step query arrives with T = 1.
            prepared_memory: The output of `prepare_memory(memory)`.

        Returns:
            Scores of shape `(batch, T, S)`.
        """
        score = self.score_name
        if score in ("dot", "general", "scaled_dot"):
            if query.shape[1] == 1:
                # One step: a product and a sum (see `call`), summed in float32
                # (as the matrix product accumulates) under mixed precision too.
                products = ops.multiply(ops.cast(query, "float32"),
                                        ops.cast(prepared_memory, "float32"))
                scores = ops.expand_dims(ops.sum(products, axis=-1), 1)
            else:
                scores = ops.matmul(query, ops.transpose(prepared_memory, (0, 2, 1)))
            if score == "scaled_dot":
                scores = scores / math.sqrt(self.query_dim)
        elif score in ("additive", "concat"):
            if score == "additive":
                projected_query = ops.matmul(query, self.query_kernel)
            else:
                projected_query = ops.matmul(query, self.concat_kernel[: self.query_dim])
            # (batch, T, 1, units) + (batch, 1, S, units)
            hidden = ops.expand_dims(projected_query, 2) + ops.expand_dims(prepared_memory, 1)
            v = self.v
            if self.normalize:
                hidden = hidden + self.b
                v = self.g * v / ops.sqrt(ops.sum(ops.square(v)))
            # vᵀ tanh(·) as one matrix product (a product and a sum cost two
            # passes over the (batch, T, S, units) values, and more to differentiate).
            scores = ops.tensordot(ops.tanh(hidden), v, axes=1)
        else:  # location
            all_positions = ops.matmul(query, self.location_kernel)  # (B, T, max_length)
            length = ops.shape(prepared_memory)[1]
            positions = ops.minimum(ops.arange(length), self.max_length - 1)
            scores = ops.take(all_positions, positions, axis=-1)
        if self.scale:
            scores = scores * self.scale_weight
        return scores

    # ------------------------------------------------------------------- call
    def call(
        self,
        query,
        memory,
        memory_mask=None,
        step=None,
        prepared_memory=None,
        training=None,
        return_attention_scores=False,
    ):
        single_step = len(query.shape) == 2
        if single_step:
            query = ops.expand_dims(query, 1)
        elif len(query.shape) != 3:
            raise ValueError(
                "`query` must be (batch, query_dim) or (batch, T, query_dim). "
                f"Received shape {tuple(query.shape)}"
            )
        if len(memory.shape) != 3:
            raise ValueError(
                f"`memory` must be (batch, S, memory_dim). Received shape {tuple(memory.shape)}"
            )
        if prepared_memory is None:
            prepared_memory = self.prepare_memory(memory)
        scores = self.score(query, prepared_memory)  # (B, T, S)

        source_length = ops.shape(memory)[1]
        positions = ops.arange(source_length)
        mask = None
        if memory_mask is not None:
            mask = ops.expand_dims(ops.cast(memory_mask, "bool"), 1)  # (B, 1, S)
        if self.score_name == "location":
            beyond = ops.reshape(positions < self.max_length, (1, 1, -1))
            mask = beyond if mask is None else ops.logical_and(mask, beyond)

        gaussian = None
        if self.window is not None:
            center = self._window_center(query, memory, memory_mask, step, single_step)
            distance = ops.cast(positions, "float32")[None, None, :] - center[..., None]
            inside = ops.abs(distance) <= self.window
            mask = inside if mask is None else ops.logical_and(mask, inside)
            if self.window_mode == "local-p":
                sigma = self.window / 2.0
                gaussian = ops.exp(-ops.square(distance) / (2.0 * sigma * sigma))

        # The softmax, the weights and the context in float32 under a mixed
        # precision policy too (as Keras' own attention layers keep softmax).
        weights = masked_softmax(ops.cast(scores, "float32"), mask)
        if gaussian is not None:
            weights = weights * gaussian
        attended = self.dropout_layer(weights, training=training)
        memory = ops.cast(memory, "float32")
        if single_step:
            # One query: the weighted sum over S as a product and a sum. As a
            # (B, 1, S) x (B, S, D) batched matmul it took TensorFlow's CPU
            # kernel ~0.1 ms a call at batch 1, where a greedy step takes ~0.6.
            context = ops.sum(ops.multiply(ops.squeeze(attended, 1)[..., None], memory), axis=1)
            weights = ops.squeeze(weights, 1)
        else:
            context = ops.matmul(attended, memory)
        if return_attention_scores:
            return context, weights
        return context

    def _window_center(self, query, memory, memory_mask, step, single_step):
        """p_t for local attention, a float32 `(batch, T)` tensor (positions in
        bfloat16 are exact only up to 256)."""
        dtype = "float32"
        batch = ops.shape(query)[0]
        num_queries = ops.shape(query)[1]
        if self.window_mode == "local-m":
            if step is None:
                if single_step:
                    raise ValueError(
                        "window_mode='local-m' needs `step` (the decoder position t) "
                        "when the query is a single step (batch, query_dim)."
                    )
                step = 0
            step = ops.reshape(ops.cast(step, dtype), (-1, 1))  # (1 or B, 1)
            offsets = ops.cast(ops.arange(num_queries), dtype)[None, :]
            return ops.broadcast_to(step + offsets, (batch, num_queries))
        # local-p: p_t = S · sigmoid(v_pᵀ tanh(W_p h_t)), S the real length.
        if memory_mask is None:
            lengths = ops.cast(ops.full((batch,), ops.shape(memory)[1]), dtype)
        else:
            lengths = ops.sum(ops.cast(memory_mask, dtype), axis=-1)
        hidden = ops.tanh(ops.matmul(query, self.position_kernel))
        fraction = ops.sigmoid(ops.cast(ops.sum(hidden * self.position_v, axis=-1), dtype))
        return lengths[:, None] * fraction

    def compute_mask(self, query, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "score": self.score_name,
                "normalize": self.normalize,
                "scale": self.scale,
                "window": self.window,
                "window_mode": self.window_mode,
                "max_length": self.max_length,
                "dropout": self.dropout,
            }
        )
        return config
