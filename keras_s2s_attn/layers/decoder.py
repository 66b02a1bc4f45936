"""Runs an `AttentionDecoderCell` over a teacher-forced target sequence."""

import keras
from keras import ops

from keras_s2s_attn.layers.decoder_cell import AttentionDecoderCell


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class AttentionDecoder(keras.layers.Layer):
    """Teacher-forced decoding: the cell stepped over every target position.

    The memory-side projection of the attention is computed once, then the
    cell runs step by step with `keras.ops.scan`. For `style="luong"` without
    input feeding no step depends on an earlier attention result, so the layer
    takes a parallel path: the RNN over the whole sequence, then one batched
    attention call over all T queries (one (T × S) score matrix per row).
    Both paths use the cell's own `rnn_step`, `attend` and `combine`: the
    outputs equal stepping the cell by hand.

    Args:
        cell: An `AttentionDecoderCell`.
        return_state: Also return the final flat state list.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: `(batch, T, input_dim)` embedded target inputs.
        memory: `(batch, S, memory_dim)` encoder states.
        initial_state: Optional list of RNN states (see
            `AttentionDecoderCell.get_initial_state`); zeros when None.
        memory_mask: Boolean `(batch, S)`; defaults to the Keras mask of
            `memory`.
        training: Python boolean.

    Returns:
        `(outputs, attention_weights)`: `(batch, T, cell.output_size)` and
        `(batch, T, S)`; only `outputs` when the cell has no attention; the
        final states appended when `return_state=True`.

    Example:

    >>> cell = AttentionDecoderCell(16, BahdanauLuongAttention(score="additive"))
    >>> decoder = AttentionDecoder(cell)
    >>> outputs, weights = decoder(np.zeros((2, 7, 4), "float32"),
    ...                            np.random.rand(2, 5, 8).astype("float32"))
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((2, 7, 24), (2, 7, 5))
    """

    def __init__(self, cell, return_state=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not isinstance(cell, AttentionDecoderCell):
            raise ValueError(
                f"`cell` must be an AttentionDecoderCell. Received: cell={cell!r}"
            )
        self.cell = cell
        self.return_state = bool(return_state)
        # keras.ops.scan's TensorFlow loop has no `maximum_iterations`, which
        # XLA needs to differentiate through it; this keeps `compile()`'s
        # default jit_compile="auto" off XLA under TensorFlow instead of
        # failing in `fit`. JAX's scan compiles (and must: run eagerly, each
        # batch re-dispatches the scan op by op, minutes per epoch).
        self.supports_jit = keras.config.backend() != "tensorflow"

    @property
    def parallel(self):
        """True when the Luong parallel path applies (no input feeding)."""
        cell = self.cell
        return cell.attention is not None and cell.style == "luong" and not cell.input_feeding

    def build(self, inputs_shape, memory_shape=None):
        if len(inputs_shape) != 3:
            raise ValueError(
                f"`inputs` must be (batch, T, input_dim). Received shape {tuple(inputs_shape)}"
            )
        if not self.cell.built:
            self.cell.build(tuple(inputs_shape[:1]) + tuple(inputs_shape[2:]), memory_shape)

    def call(self, inputs, memory=None, initial_state=None, memory_mask=None, training=None):
        cell = self.cell
        batch = ops.shape(inputs)[0]
        states = cell.get_initial_state(batch, initial_state)
        prepared = cell.prepare_memory(memory) if cell.attention is not None else None
        time_major = ops.transpose(inputs, (1, 0, 2))
        # Drawn before the loop (see `AttentionDecoderCell.dropout_masks`), sliced per step.
        masks = cell.dropout_masks(batch, ops.shape(inputs)[1], training=training)

        def masks_at(step):
            return None if masks is None else keras.tree.map_structure(
                lambda mask: ops.take(mask, step, axis=0), masks)

        if self.parallel:
            rnn_states, _ = cell.split_states(states)

            def rnn_only(carry, x):
                output, new_states = cell.rnn_step(x, carry["states"], training=training,
                                                   dropout_masks=masks_at(carry["step"]))
                new = {"states": new_states, "output": output, "step": carry["step"] + 1}
                return new, new

            init = {
                "states": rnn_states,
                "output": ops.zeros((batch, cell.top_output_size), inputs.dtype),
                "step": ops.convert_to_tensor(0, "int32"),
            }
            final, history = ops.scan(rnn_only, init, time_major)
            top = ops.transpose(history["output"], (1, 0, 2))
            context, weights = cell.attend(
                top, memory, memory_mask, prepared, step=0, training=training
            )
            outputs = cell.combine(top, context, training=training)
            if masks is not None:
                outputs = outputs * ops.transpose(masks["output"], (1, 0, 2))
            final_states = final["states"]
        else:

            def one_step(carry, x_t):
                (output, weights), new_states = cell(
                    x_t, carry["states"], memory, memory_mask=memory_mask,
                    prepared_memory=prepared, step=carry["step"], training=training,
                    dropout_masks=masks_at(carry["step"]),
                )
                new = {"states": new_states, "output": output, "step": carry["step"] + 1}
                if weights is not None:
                    new["weights"] = weights
                return new, new

            init = {
                "states": states,
                "output": ops.zeros((batch, cell.output_size), inputs.dtype),
                "step": ops.convert_to_tensor(0, "int32"),
            }
            if cell.attention is not None:
                init["weights"] = ops.zeros_like(ops.cast(memory[..., 0], "float32"))
            # The carry and the per-step outputs have the same structure, and the
            # step counter rides in the carry rather than in `xs`, on purpose:
            # keras.ops.scan's TensorFlow implementation (Keras 3.15) stacks
            # `ys` with the carry's structure and shapes, and fails on several
            # `xs` of unknown length.
            final, history = ops.scan(one_step, init, time_major)
            outputs = ops.transpose(history["output"], (1, 0, 2))
            weights = (
                ops.transpose(history["weights"], (1, 0, 2))
                if cell.attention is not None else None
            )
            final_states = final["states"]

        result = [outputs] if weights is None else [outputs, weights]
        if self.return_state:
            result.append(final_states)
        return result[0] if len(result) == 1 else tuple(result)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, inputs_shape, memory_shape=None):
        batch, steps = inputs_shape[0], inputs_shape[1]
        cell = self.cell
        if not cell.built:
            self.build(inputs_shape, memory_shape)
        result = [(batch, steps, cell.output_size)]
        if cell.attention is not None:
            result.append((batch, steps, memory_shape[1]))
        if self.return_state:
            sizes = cell.rnn_state_sizes if self.parallel else cell.state_size
            result.append([(batch, size) for size in sizes])
        return result[0] if len(result) == 1 else tuple(result)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "cell": keras.saving.serialize_keras_object(self.cell),
                "return_state": self.return_state,
            }
        )
        return config
