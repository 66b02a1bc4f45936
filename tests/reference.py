"""Plain-numpy references: attention from the papers' equations, and the export's weight storage.

Bahdanau et al. 2015, eq. (6) and appendix A.1.2: e_ij = v_aᵀ tanh(W_a s_{i−1} + U_a h_j).
Luong et al. 2015, eq. (8): dot h_tᵀh̄_s, general h_tᵀW_a h̄_s, concat v_aᵀ tanh(W_a[h_t; h̄_s]);
location a_t = softmax(W_a h_t); eq. (9) local-p p_t = S·sigmoid(v_pᵀ tanh(W_p h_t));
eq. (10) a_t(s) = align(h_t, h̄_s) exp(−(s − p_t)² / 2σ²), σ = D/2, over [p_t − D, p_t + D].

Deliberately loop-by-loop, one (b, t, s) at a time, so it shares no vectorised
code with the layer. Weight matrices are passed in the paper's orientation
(W maps a column vector), i.e. the transpose of a Keras kernel.
"""

import keras
import numpy as np


def score(name, h, s, w):
    """e(h, s) for one query vector h and one memory vector s."""
    if name == "dot":
        keys = s if "W_mem" not in w else w["W_mem"] @ s
        e = h @ keys
    elif name == "scaled_dot":
        keys = s if "W_mem" not in w else w["W_mem"] @ s
        e = h @ keys / np.sqrt(h.shape[0])
    elif name == "general":
        e = h @ (w["W_a"] @ s)
    elif name == "concat":
        e = w["v_a"] @ np.tanh(w["W_a"] @ np.concatenate([h, s]))
    elif name == "additive":
        v = w["v_a"]
        bias = 0.0
        if "g" in w:  # weight normalisation: v = g · v / ‖v‖, plus a bias inside tanh
            v = w["g"] * v / np.linalg.norm(v)
            bias = w["b"]
        e = v @ np.tanh(w["W_a"] @ h + w["U_a"] @ s + bias)
    else:
        raise ValueError(name)
    return e * w.get("scale", 1.0)


def attention(name, query, memory, mask, w, window=None, mode=None, step=0):
    """Context (B, T, m) and weights (B, T, S) for 3-D `query` (B, T, q)."""
    batch, steps, _ = query.shape
    length = memory.shape[1]
    weights = np.zeros((batch, steps, length))
    for b in range(batch):
        real = [s for s in range(length) if mask[b, s]]
        source_length = len(real)
        for t in range(steps):
            h = query[b, t]
            if name == "location":
                location_scores = w["W_a"] @ h  # one score per position, up to max_length
                scores = {s: location_scores[s] for s in real if s < len(location_scores)}
            else:
                scores = {s: score(name, h, memory[b, s], w) for s in real}
            p = None
            if window is not None:
                if mode == "local-m":
                    p = float(step + t)
                else:
                    hidden = np.tanh(w["W_p"] @ h)
                    p = source_length / (1.0 + np.exp(-(w["v_p"] @ hidden)))
                scores = {s: e for s, e in scores.items() if abs(s - p) <= window}
            if not scores:
                continue  # nothing to attend to: all-zero weights
            top = max(scores.values())
            total = sum(np.exp(e - top) for e in scores.values())
            for s, e in scores.items():
                a = np.exp(e - top) / total
                if window is not None and mode == "local-p":
                    sigma = window / 2.0
                    a *= np.exp(-((s - p) ** 2) / (2 * sigma**2))
                weights[b, t, s] = a
    context = np.einsum("bts,bsm->btm", weights, memory)
    return context, weights


def paper_weights(layer):
    """The layer's variables, renamed and transposed to the papers' notation."""
    v = {var.path.split("/")[-1]: keras.ops.convert_to_numpy(var) for var in layer.weights}
    w = {}
    name = layer.score_name
    if name in ("dot", "scaled_dot") and "memory_kernel" in v:
        w["W_mem"] = v["memory_kernel"].T
    if name == "general":
        w["W_a"] = v["memory_kernel"].T
    if name == "concat":
        w["W_a"] = v["concat_kernel"].T
        w["v_a"] = v["v"]
    if name == "additive":
        w["W_a"] = v["query_kernel"].T
        w["U_a"] = v["memory_kernel"].T
        w["v_a"] = v["v"]
        if "g" in v:
            w["g"], w["b"] = v["g"], v["b"]
    if name == "location":
        w["W_a"] = v["location_kernel"].T
    if "scale" in v:
        w["scale"] = v["scale"]
    if "position_kernel" in v:
        w["W_p"] = v["position_kernel"].T
        w["v_p"] = v["position_v"]
    return w


def stored_like_the_export(weight, dtype):
    """A numpy reference of the export's weight storage, turned back into float32."""
    if weight.dtype.kind != "f" or dtype == "float32":
        return weight
    if dtype == "int8" and weight.ndim >= 2:  # per output column: w ≈ q · max|w[:, j]| / 127
        scale = np.abs(weight).max(axis=tuple(range(weight.ndim - 1)))
        scale = np.where(scale > 0, scale / np.float32(127), np.float32(1)).astype(weight.dtype)
        quantised = np.round(weight / scale).astype(np.int8)
        assert np.abs(quantised.astype(np.int32)).max() <= 127
        return quantised.astype(weight.dtype) * scale
    rows = int(np.prod(weight.shape[:-1]))
    if dtype == "int4" and weight.ndim >= 2 and rows >= 32:
        # Blocks of 32 rows per column: w ≈ q · s, s = max|w| / 7 in float16, q in [-7, 7].
        matrix = weight.reshape(rows, -1)
        result = np.empty_like(matrix)
        for start in range(0, rows, 32):
            block = matrix[start:start + 32]
            scale = (np.abs(block).max(axis=0) / 7).astype(np.float16).astype(weight.dtype)
            scale[scale == 0] = 1
            quantised = np.round(block / scale)
            assert np.abs(quantised).max() <= 7.5  # float16 rounding of s may give 7.5 -> 8
            result[start:start + 32] = np.clip(quantised, -7, 7) * scale
        return result.reshape(weight.shape)
    return weight.astype(np.float16).astype(weight.dtype)
