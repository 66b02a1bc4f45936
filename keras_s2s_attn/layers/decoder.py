"""Runs an `AttentionDecoderCell` over a teacher-forced target sequence."""

import keras
from keras import ops

from keras_s2s_attn.layers.decoder_cell import AttentionDecoderCell
import keras_s2s_attn.layers.recurrence as recurrence


class _Feedback:
    """Holds layers without Keras tracking them as the holder's own (not saved twice)."""

    layers = None


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class AttentionDecoder(keras.layers.Layer):
    """Teacher-forced decoding: the cell stepped over every target position.

    The memory-side projection of the attention, the cell's `step_weights()`
    and the target inputs' share of its first input product
    (`project_inputs`) are computed once, then the cell runs step by step
    with `keras.ops.scan`. For `style="luong"` without
    input feeding no step depends on an earlier attention result, so the layer
    takes a parallel path: the RNN over the whole sequence, then one batched
    attention call over all T queries (one (T × S) score matrix per row).
    Both paths use the cell's own `rnn_step`, `attend` and `combine`: the
    outputs equal stepping the cell by hand.

    Scheduled sampling (Bengio et al. 2015): with `sampling_probability`, in
    training each row's input at step t > 0 is, with that probability, the
    embedding of the model's own prediction at step t − 1 (its argmax)
    instead of the true previous token; the probability rises linearly from 0
    over `sampling_steps` training calls, then stays. The layer needs the
    model's target embedding and output projection for that
    (`set_feedback`; `build_seq2seq_model` links them). The steps then run in
    sequence (no parallel Luong path), and in inference nothing changes.

    Args:
        cell: An `AttentionDecoderCell`.
        return_state: Also return the final flat state list.
        sampling_probability: None (teacher forcing), or the probability in
            [0, 1] of feeding the model's own prediction.
        sampling_steps: Training calls over which the probability rises
            from 0 to `sampling_probability`; 0 for that probability from the
            start.
        seed: Seed of the scheduled sampling's coin flips.
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

    def __init__(self, cell, return_state=False, sampling_probability=None, sampling_steps=0,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not isinstance(cell, AttentionDecoderCell):
            raise ValueError(
                f"`cell` must be an AttentionDecoderCell. Received: cell={cell!r}"
            )
        self.cell = cell
        self.return_state = bool(return_state)
        if sampling_probability is not None:
            if (isinstance(sampling_probability, bool)
                    or not isinstance(sampling_probability, (int, float))
                    or not 0 <= sampling_probability <= 1):
                raise ValueError("`sampling_probability` must be None or a number in [0, 1]. "
                                 f"Received: sampling_probability={sampling_probability!r}")
            if isinstance(sampling_steps, bool) or not isinstance(sampling_steps, int) or (
                    sampling_steps < 0):
                raise ValueError("`sampling_steps` must be an integer >= 0. Received: "
                                 f"sampling_steps={sampling_steps!r}")
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.sampling_probability = sampling_probability
        self.sampling_steps = int(sampling_steps)
        self.seed = seed
        self._feedback = _Feedback()
        # keras.ops.scan's TensorFlow loop has no `maximum_iterations`, which
        # XLA needs to differentiate through it; this keeps `compile()`'s
        # default jit_compile="auto" off XLA under TensorFlow instead of
        # failing in `fit`. JAX's scan compiles (and must: run eagerly, each
        # batch re-dispatches the scan op by op, minutes per epoch).
        self.supports_jit = keras.config.backend() != "tensorflow"

    @property
    def parallel(self):
        """True when the Luong parallel path applies (no input feeding, no sampling)."""
        cell = self.cell
        return (cell.attention is not None and cell.style == "luong" and not cell.input_feeding
                and self.sampling_probability is None)

    def set_feedback(self, embedding, projection):
        """Links the model's target `embedding` and output `projection` layers,
        which scheduled sampling turns a step's output into the next input with.

        They stay the model's own layers (not tracked or saved here): call this
        again on a model loaded from a file before training it further, e.g.
        `keras_s2s_attn.models.link_feedback(model)`.
        """
        self._feedback.layers = (embedding, projection)

    def sampling_schedule(self):
        """This training call's probability of feeding the model's own prediction."""
        if not self.sampling_steps:
            return ops.convert_to_tensor(self.sampling_probability, "float32")
        done = ops.minimum(self.sampling_calls / float(self.sampling_steps), 1.0)
        return self.sampling_probability * done

    def build(self, inputs_shape, memory_shape=None):
        if len(inputs_shape) != 3:
            raise ValueError(
                f"`inputs` must be (batch, T, input_dim). Received shape {tuple(inputs_shape)}"
            )
        if not self.cell.built:
            self.cell.build(tuple(inputs_shape[:1]) + tuple(inputs_shape[2:]), memory_shape)
        if self.sampling_probability is not None:
            self.sampling_calls = self.add_weight(name="sampling_calls", shape=(),
                                                  initializer="zeros", trainable=False,
                                                  dtype="float32")

    def call(self, inputs, memory=None, initial_state=None, memory_mask=None, training=None):
        cell = self.cell
        batch = ops.shape(inputs)[0]
        states = cell.get_initial_state(batch, initial_state)
        prepared = cell.prepare_memory(memory) if cell.attention is not None else None
        # Taken once for all steps (None for cells `layers.recurrence` does not compute).
        step_weights = cell.step_weights()
        # The target inputs' share of the first RNN layer's input product, for
        # all steps in one product (scheduled sampling projects the model's own
        # predictions as it feeds them).
        projected = step_weights is not None
        feed = self._sampled_inputs(
            batch, ops.shape(inputs)[1], training,
            (lambda x: cell.project_inputs(x, step_weights)) if projected else None)
        if projected:
            inputs = cell.project_inputs(inputs, step_weights)
        time_major = ops.transpose(inputs, (1, 0, 2))
        # Drawn before the loop (see `AttentionDecoderCell.dropout_masks`), sliced per step.
        masks = cell.dropout_masks(batch, ops.shape(inputs)[1], training=training)

        def masks_at(step):
            return None if masks is None else keras.tree.map_structure(
                lambda mask: ops.take(mask, step, axis=0), masks)

        if self.parallel:
            rnn_states, _ = cell.split_states(states)

            def rnn_only(carry, x):
                output, new_states = cell.rnn_step(
                    None if projected else x, carry["states"], training=training,
                    dropout_masks=masks_at(carry["step"]), step_weights=step_weights,
                    projected=x if projected else None)
                new = {"states": new_states, "output": output, "step": carry["step"] + 1}
                return new, new

            init = {
                "states": rnn_states,
                "output": ops.zeros((batch, cell.top_output_size), inputs.dtype),
                "step": ops.convert_to_tensor(0, "int32"),
            }
            final, history = recurrence.scan(rnn_only, init, time_major)
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
                if feed is not None:
                    x_t = feed(carry, x_t)
                (output, weights), new_states = cell(
                    x_t, carry["states"], memory, memory_mask=memory_mask,
                    prepared_memory=prepared, step=carry["step"], training=training,
                    dropout_masks=masks_at(carry["step"]), step_weights=step_weights,
                    projected=projected,
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
            final, history = recurrence.scan(one_step, init, time_major)
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

    def _sampled_inputs(self, batch, steps, training, project=None):
        """None without scheduled sampling in this call, else `feed(carry, x_t)`:
        the step's input, the true token's or the model's own prediction's
        (passed through `project` when the inputs are projected)."""
        if not training or self.sampling_probability is None:
            return None
        if self._feedback.layers is None:
            raise ValueError("Scheduled sampling needs the model's target embedding and "
                             "output projection: call `set_feedback` (for a loaded model, "
                             "keras_s2s_attn.models.link_feedback(model)) before training.")
        embedding, projection = self._feedback.layers
        probability = self.sampling_schedule()
        self.sampling_calls.assign_add(1.0)
        # Drawn before the loop, as the dropout masks (JAX draws nothing inside a scan).
        coins = keras.random.uniform((steps, batch), seed=self.seed_generator)

        def feed(carry, x_t):
            predicted = ops.argmax(projection(carry["output"]), axis=-1)
            own = ops.cast(embedding(ops.stop_gradient(predicted)), x_t.dtype)
            if project is not None:
                own = project(own)
            use_own = ops.logical_and(ops.take(coins, carry["step"], axis=0) < probability,
                                      carry["step"] > 0)
            return ops.where(use_own[:, None], own, x_t)

        return feed

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
                "sampling_probability": self.sampling_probability,
                "sampling_steps": self.sampling_steps,
                "seed": self.seed,
            }
        )
        return config
