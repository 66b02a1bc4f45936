"""Weights stored small in an export: float16, int8 and int4 copies read back in the graph."""

import keras
import numpy as np
import tensorflow as tf

from keras_s2s_attn.graphs import graph_function

# int4 stores one scale per column for each block of this many rows: one
# scale per column over a whole matrix costs too much accuracy at 4 bits.
INT4_GROUP_SIZE = 32


def quantize_int4(matrix, group_size=INT4_GROUP_SIZE):
    """4-bit symmetric quantisation of a `(rows, columns)` matrix, in row groups.

    Each column is cut into blocks of `group_size` rows (the last block padded
    with zeros); a block gets the float16 scale `s = max|w| / 7` and its
    weights the integers `q = round(w / s)` in [-7, 7], so `w ≈ q · s`.
    Two rows share a byte: row `2i` in the low and `2i + 1` in the high
    nibble, each stored as `q + 8`.

    Args:
        matrix: A float numpy array of rank 2.
        group_size: Rows per scale; even.

    Returns:
        `(packed, scales)`: uint8 `(padded_rows // 2, columns)` and float16
        `(padded_rows // group_size, columns)`.
    """
    rows, columns = matrix.shape
    padded = -(-rows // group_size) * group_size
    blocks = np.zeros((padded, columns), np.float32)
    blocks[:rows] = matrix
    blocks = blocks.reshape(padded // group_size, group_size, columns)
    scales = (np.abs(blocks).max(axis=1) / 7).astype(np.float16)
    scales[scales == 0] = 1
    quantised = np.clip(np.round(blocks / scales[:, None, :].astype(np.float32)), -7, 7)
    nibbles = (quantised.reshape(padded, columns) + 8).astype(np.uint8)
    return nibbles[0::2] | (nibbles[1::2] << 4), scales


def dequantize_int4(packed, scales, shape, dtype="float32"):
    """The graph's inverse of `quantize_int4`: a tensor of `shape` (rows first).

    `packed` and `scales` must have static shapes (variables do), so the
    unpacking is a handful of ops for each matrix.
    """
    groups, columns = scales.shape
    padded = 2 * packed.shape[0]
    packed = tf.cast(packed, tf.int32)
    # (padded // 2, 2, columns): rows 2i and 2i + 1, in order once reshaped.
    nibbles = tf.stack([tf.bitwise.bitwise_and(packed, 15), tf.bitwise.right_shift(packed, 4)],
                       axis=1) - 8
    values = (tf.reshape(tf.cast(nibbles, dtype), [groups, padded // groups, columns])
              * tf.expand_dims(tf.cast(scales, dtype), 1))
    values = tf.reshape(values, [padded, columns])
    rows = _rows(shape)
    return tf.reshape(values if rows == padded else values[:rows], shape)


def _rows(shape):
    """Rows of a weight seen as a matrix (all but its last axis); 0 for vectors."""
    return int(np.prod(shape[:-1])) if len(shape) >= 2 else 0


class StoredWeights(tf.Module):
    """Copies of models' float weights in a smaller dtype, and a wrapper reading them.

    `"float16"` rounds every weight to float16. `"int8"` stores each matrix
    (kernels, embeddings: rank >= 2) as int8 with one float32 scale per output
    column, `w ≈ q · max|w[:, j]| / 127` (symmetric per-channel quantisation);
    `"int4"` stores matrices of 32 rows or more as 4-bit integers, two to a
    byte, with a float16 scale per column for every 32 rows
    (`quantize_int4`). Vectors (biases) and smaller matrices (GRU biases of
    shape (2, 3·units)) are stored as float16.

    `wrap(function)` runs `function` with every float variable mapped to its
    copy turned back into the variable's own dtype (`keras.StatelessScope`),
    so a graph traced from it captures only the copies: the SavedModel
    stores the small weights and computes in the dtype the model was trained
    in.
    """

    def __init__(self, models, dtype):
        super().__init__()
        # Keyed by identity: models sharing a variable store it once, in order.
        self._originals = list({id(v): v for model in models for v in model.weights
                                if "float" in v.dtype}.values())
        self._dtype = dtype
        self.weights, self.scales = [], {}
        with tf.init_scope():
            for index, variable in enumerate(self._originals):
                value = tf.convert_to_tensor(variable.value)
                if dtype == "int8" and value.shape.rank >= 2:
                    scale = tf.reduce_max(tf.abs(value), axis=list(range(value.shape.rank - 1)))
                    scale = tf.where(scale > 0, scale / 127.0, tf.ones_like(scale))
                    self.scales[str(index)] = tf.Variable(scale, trainable=False)
                    stored = tf.cast(tf.round(value / scale), tf.int8)
                elif dtype == "int4" and _rows(value.shape) >= INT4_GROUP_SIZE:
                    matrix = value.numpy().reshape(-1, value.shape[-1])
                    stored, scale = quantize_int4(matrix)
                    self.scales[str(index)] = tf.Variable(scale, trainable=False)
                else:
                    stored = tf.cast(value, "float16" if dtype.startswith("int") else dtype)
                self.weights.append(tf.Variable(stored, trainable=False))

    def _value(self, index, variable):
        stored, scale = self.weights[index], self.scales.get(str(index))
        if scale is None:
            return tf.cast(stored, variable.dtype)
        if self._dtype == "int4":
            return dequantize_int4(stored, scale, tuple(variable.shape), variable.dtype)
        return tf.cast(stored, variable.dtype) * tf.cast(scale, variable.dtype)

    @graph_function(input_signature=[])
    def values(self):
        """Every weight turned back into its variable's dtype, in order.

        One function, so the SavedModel stores the unpacking once for all
        signatures rather than once in each.
        """
        return [self._value(i, v) for i, v in enumerate(self._originals)]

    def wrap(self, function):
        def call(*args, **kwargs):
            with keras.StatelessScope(state_mapping=list(zip(self._originals, self.values()))):
                return function(*args, **kwargs)

        return call
