"""Keras' GRU and LSTM cell equations, with the input product out of the step loop.

A Keras RNN layer multiplies each step's input by the cell's kernel inside its
step loop, and under TensorFlow the gradient of that loop adds up the
kernel's gradient one step at a time. The input product does not depend on
the previous state, so here it is one matrix product over the whole sequence
before the loop (and its gradient one product after it); the loop keeps the
recurrent product and the gates. Gates are cut apart with `ops.split`, whose
gradient is one concatenation (the slices Keras' cells take cost a zero-filled
copy of the whole product each in the backward pass).

The weights are the Keras cells' own (`kernel`, `recurrent_kernel`, `bias`)
and so are their activations, so the results equal the cells'; `fusable` says
which cells these equations are written for. This is a hand-written copy of
`keras.layers.GRUCell.call` and `LSTMCell.call` because those take the raw
input and multiply it by the kernel at every step, which is the cost this
module exists to avoid.

`scan`, the loop the layers' teacher-forced sequences run in (here and in
`AttentionDecoder`), is `keras.ops.scan` with its iterations free to overlap
under TensorFlow.

Everything here is `keras.ops`: it runs on every Keras backend.
"""

import keras
from keras import ops


def fusable(cell):
    """Whether the equations here are those of `cell`: a Keras `GRUCell` or
    `LSTMCell` (or a subclass with their `call`) without the cell's own dropout."""
    for base in (keras.layers.GRUCell, keras.layers.LSTMCell):
        if isinstance(cell, base) and type(cell).call is base.call:
            return not cell.dropout and not cell.recurrent_dropout
    return False


# Iterations TensorFlow's executor may run at once in a scan's while loop, as
# tf.while_loop's own default (see `scan`).
PARALLEL_ITERATIONS = 10


def scan(f, init, xs, reverse=False):
    """`keras.ops.scan(f, init, xs)`, its iterations free to overlap under TensorFlow.

    Keras' TensorFlow scan passes `unroll` on as the while loop's
    `parallel_iterations`, 1 by default: each iteration (and each of its
    gradient loop's) waits until every operation of the one before has
    finished, where only the carry chains them. With more in flight the
    executor runs what no later step needs (the weight gradients' products
    and sums, the outputs' writes) beside the next step's chain: 0.95-0.98 of
    a CMUdict training step's time, `train_on_batch` on prepared batches
    (`benchmarks/vs_pytorch.py`'s model; through `fit` and its input pipeline
    within the machine's drift). The other backends' `unroll` unrolls the
    loop's body, and is left at 1.
    """
    unroll = PARALLEL_ITERATIONS if keras.config.backend() == "tensorflow" else 1
    return ops.scan(f, init, xs, reverse=reverse, unroll=unroll)


def _is_gru(cell):
    return isinstance(cell, keras.layers.GRUCell)


def state_count(cell):
    """The number of state tensors: 1 (GRU: h) or 2 (LSTM: h, c)."""
    return 1 if _is_gru(cell) else 2


def gates_size(cell):
    """The width of the input product: 3 · units (GRU) or 4 · units (LSTM)."""
    return (3 if _is_gru(cell) else 4) * cell.units


def _weight(cell, variable):
    """A weight in the cell's compute dtype, as the cell's own call sees it (Keras
    casts variables for a mixed-precision policy inside a layer's call only)."""
    return ops.cast(variable, cell.compute_dtype)


def input_kernel(cell):
    """The cell's input kernel `(input_dim, gates_size(cell))`, in its compute dtype."""
    return _weight(cell, cell.kernel)


def input_bias(cell):
    """The bias added to the input product (None without biases)."""
    if not cell.use_bias:
        return None
    bias = _weight(cell, cell.bias)
    return bias[0] if _is_gru(cell) and cell.reset_after else bias


def project_inputs(cell, inputs, kernel=None):
    """`inputs @ kernel + input bias`, for inputs of any leading shape.

    Args:
        cell: A cell for which `fusable` is true.
        inputs: `(..., input_dim)`.
        kernel: Rows of the cell's kernel that `inputs` multiply (default:
            the whole kernel); the bias is added in either case.

    Returns:
        `(..., gates_size(cell))`.
    """
    product = ops.matmul(inputs, input_kernel(cell) if kernel is None else kernel)
    bias = input_bias(cell)
    return product if bias is None else product + bias


def recurrent_weights(cell):
    """The loop-invariant weights `step` reads, taken apart once before a loop
    (a slice taken inside the loop would be taken, and differentiated, at
    every step)."""
    units = cell.units
    kernel = _weight(cell, cell.recurrent_kernel)
    weights = {"kernel": kernel}
    if _is_gru(cell):
        if cell.reset_after:
            if cell.use_bias:
                weights["bias"] = _weight(cell, cell.bias)[1]
        else:
            weights["kernel"] = kernel[:, : 2 * units]
            weights["candidate"] = kernel[:, 2 * units:]
    return weights


def step(cell, projected, states, weights):
    """One step of the cell, given its projected input.

    Args:
        cell: A cell for which `fusable` is true.
        projected: `(batch, gates_size(cell))`, `project_inputs` of the
            step's input.
        states: The cell's states as a list: `[h]` (GRU) or `[h, c]` (LSTM).
        weights: `recurrent_weights(cell)`.

    Returns:
        `(output, new_states)`, as the Keras cell returns them (states as a
        list).
    """
    h = states[0]
    inner = ops.matmul(h, weights["kernel"])
    if "bias" in weights:
        inner = inner + weights["bias"]
    if not _is_gru(cell):
        i, f, candidate, o = ops.split(projected + inner, 4, axis=-1)
        c = (cell.recurrent_activation(f) * states[1]
             + cell.recurrent_activation(i) * cell.activation(candidate))
        h = cell.recurrent_activation(o) * cell.activation(c)
        return h, [h, c]
    x_z, x_r, x_h = ops.split(projected, 3, axis=-1)
    if cell.reset_after:
        r_z, r_r, r_h = ops.split(inner, 3, axis=-1)
    else:
        r_z, r_r = ops.split(inner, 2, axis=-1)
    z = cell.recurrent_activation(x_z + r_z)
    r = cell.recurrent_activation(x_r + r_r)
    if cell.reset_after:
        recurrent_h = r * r_h
    else:
        recurrent_h = ops.matmul(r * h, weights["candidate"])
    candidate = cell.activation(x_h + recurrent_h)
    h = z * h + (1 - z) * candidate
    return h, [h]


def run_sequence(cell, inputs, mask, reverse=False, zero_output_for_mask=True, projected=None,
                 to_last_step=False):
    """The cell over a sequence, as a Keras RNN layer with `return_sequences`
    and `return_state` runs it on a mask.

    At a masked step the states are carried over unchanged and the output is
    zeros, or with `zero_output_for_mask=False` the previous step's output
    (as the Keras layer's option of that name); `reverse` reads the sequence
    from its end (`go_backwards`) and returns the outputs at their own
    positions, as `keras.layers.Bidirectional` hands them on.

    Args:
        cell: A cell for which `fusable` is true.
        inputs: `(batch, T, input_dim)`.
        mask: Boolean `(batch, T)`, True at real steps.
        reverse: Read from the last step to the first.
        zero_output_for_mask: Zeros at masked steps, else the previous output.
        projected: `project_inputs(cell, inputs)` where it is already taken
            (e.g. looked up in a table of every token's); `inputs` is then
            not read and may be None.
        to_last_step: Step only up to the batch's last real step (the steps
            after it are masked in every row, so their outputs follow from
            the others): for inference compiled with XLA, where T is a padded
            bucket and the loop writes each output into its buffer in place
            (other graphs copy the buffer at every step). Inference only: a
            while loop of a value's length has no reverse-mode gradient in JAX.

    Returns:
        `(outputs, states)`: `(batch, T, units)` and the final states (a list).
    """
    weights = recurrent_weights(cell)
    if projected is None:
        projected = project_inputs(cell, inputs)
    if to_last_step:
        return _run_to_last_step(cell, projected, mask, weights, reverse, zero_output_for_mask)
    real = ops.expand_dims(ops.cast(mask, projected.dtype), -1)
    # One sequence to scan: keras.ops.scan under TensorFlow (Keras 3.15) fails
    # on several `xs` of unknown length, so the mask rides as a last column.
    xs = ops.transpose(ops.concatenate([projected, real], axis=-1), (1, 0, 2))
    # The per-step outputs have the carry's structure: keras.ops.scan's
    # TensorFlow implementation (Keras 3.15) stacks `ys` with the carry's.
    initial = _initial_carry(cell, projected)

    def one_step(carry, x):
        projected_t, real_t = ops.split(x, [gates_size(cell)], axis=-1)
        carry = _masked_step(cell, projected_t, real_t, carry, weights, zero_output_for_mask)
        return carry, carry

    final, history = scan(one_step, initial, xs, reverse=reverse)
    return ops.transpose(history["output"], (1, 0, 2)), list(final["states"])


def _initial_carry(cell, projected):
    """Zero states and output for a batch of `projected` `(batch, T, gates)`."""
    zeros = ops.zeros((ops.shape(projected)[0], cell.units), projected.dtype)
    return {"states": [zeros] * state_count(cell), "output": zeros}


def _masked_step(cell, projected_t, real_t, carry, weights, zero_output_for_mask):
    """One step on a mask column `real_t` `(batch, 1)`: the new carry."""
    old = carry["states"]
    output, new_states = step(cell, projected_t, old, weights)
    kept = [real_t * new + (1 - real_t) * was for new, was in zip(new_states, old)]
    held = 0.0 if zero_output_for_mask else (1 - real_t) * carry["output"]
    return {"states": kept, "output": output * real_t + held}


def _run_to_last_step(cell, projected, mask, weights, reverse, zero_output_for_mask):
    """`run_sequence` with `to_last_step`: a while loop over the first L steps,
    L the batch's last real position + 1.

    Past L every row is masked. Read forwards, those steps keep the states and
    output zeros or hold the output of step L - 1; read backwards they come
    first, keep the zero initial states and output zeros. So the loop runs
    steps 0..L-1 (backwards from L - 1) and the buffer starts at zeros.
    """
    batch, steps = ops.shape(projected)[0], ops.shape(projected)[1]
    positions = ops.arange(1, steps + 1, dtype="int32")
    length = ops.max(ops.where(mask, ops.expand_dims(positions, 0), 0))
    time_major = ops.transpose(projected, (1, 0, 2))
    real = ops.expand_dims(ops.transpose(ops.cast(mask, projected.dtype)), -1)
    initial = _initial_carry(cell, projected)
    buffer = ops.zeros((steps, batch, cell.units), projected.dtype)

    def body(i, carry, buffer):
        t = length - 1 - i if reverse else i
        carry = _masked_step(cell, ops.take(time_major, t, axis=0), ops.take(real, t, axis=0),
                             carry, weights, zero_output_for_mask)
        index = ops.convert_to_tensor(0, "int32")
        buffer = ops.slice_update(buffer, [t, index, index], ops.expand_dims(carry["output"], 0))
        return i + 1, carry, buffer

    _, final, buffer = ops.while_loop(
        lambda i, carry, buffer: i < length, body,
        (ops.convert_to_tensor(0, "int32"), initial, buffer), maximum_iterations=steps)
    if not zero_output_for_mask and not reverse:
        after = ops.reshape(ops.arange(steps, dtype="int32") >= length, (-1, 1, 1))
        buffer = ops.where(after, ops.expand_dims(final["output"], 0), buffer)
    return ops.transpose(buffer, (1, 0, 2)), list(final["states"])
