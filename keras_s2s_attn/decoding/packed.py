"""The encoder over real tokens only, for decoding in TensorFlow graphs.

A Keras RNN over a padded batch runs every row for the longest row's steps
(masked steps compute and are thrown away), and multiplies every position,
padding included, by its input kernel. Over a batch of 256 words whose
lengths run from 2 to 18 that is about twice the work the real tokens need.
`packed_encode` does what PyTorch's `pack_padded_sequence` does: the rows are
sorted by length, so at step t the rows still running are a prefix of the
batch and only they go through the recurrent matrix product; the input
kernel is applied once, to the real tokens only, before the loop (and for
a vocabulary of at most `generation.MAX_TABLE_VOCABULARY` ids the first
layer's is a lookup in the product of the embedding and the kernel,
computed for the whole vocabulary once per call, or once for good by
`Stepper.keep_tables`).

It reads the weights of the model's own Keras GRU/LSTM cells and applies
the cells' equations (`layers.recurrence`, which the layer's training path
uses too), so it gives the layer's outputs at
every real position and its final states (the summary); padded positions
of the memory are zeros, as a `Bidirectional` layer leaves them, and every
consumer masks them. It needs dynamic shapes, so it is not for XLA, and it
is for float32 compute (a mixed-precision encoder runs as Keras runs it).
"""

import keras
import tensorflow as tf

import keras_s2s_attn.layers.recurrence as recurrence
from keras_s2s_attn import generation
from keras_s2s_attn.layers.encoder import Encoder
from keras_s2s_attn.special_ids import PAD_ID


def can_pack(encoder):
    """Whether `packed_encode` computes what `encoder(...)` does.

    True for `Encoder` itself (not a subclass that overrides `call` or
    `run_rnn`) of Keras LSTM or GRU layers (`recurrence.fusable`) computing
    in float32."""
    return (type(encoder).call is Encoder.call and type(encoder).run_rnn is Encoder.run_rnn
            and encoder.compute_dtype == "float32"
            and all(recurrence.fusable(cell)
                    for cells in _layer_cells(encoder) for cell in cells))


def _layer_cells(encoder):
    """Per RNN layer, its cells: (forward,) or (forward, backward)."""
    return [(rnn.forward_layer.cell, rnn.backward_layer.cell)
            if isinstance(rnn, keras.layers.Bidirectional) else (rnn.cell,)
            for rnn in encoder.rnns]


def packed_encode(encoder, source_ids, tables=None):
    """`encoder(source_ids, training=False)` over the real tokens only.

    Rows must be padded at the end (PAD after the last token only), as the
    tokenizers pad them; a row with a PAD between tokens is encoded by the
    Keras layer instead, which skips masked steps wherever they are.

    Args:
        encoder: An `Encoder` for which `can_pack` is true.
        source_ids: Int32 `(batch, S)`, 0 for padding.
        tables: None, or `first_layer_tables(encoder)` computed before (the
            weights have not changed since); by default computed here.

    Returns:
        `(memory, summary)`: float32 `(batch, S, memory_dim)` (zeros at padded
        positions) and `(batch, memory_dim)`, the last layer's final hidden
        states of each direction.
    """
    source_ids = tf.convert_to_tensor(source_ids, tf.int32)
    mask = tf.not_equal(source_ids, PAD_ID)
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    padded_at_end = tf.reduce_all(
        tf.equal(mask, tf.sequence_mask(lengths, tf.shape(source_ids)[1])))
    return tf.cond(padded_at_end,
                   lambda: _packed(encoder, source_ids, lengths, tables),
                   lambda: tuple(encoder(source_ids, training=False)))


def _packed(encoder, source_ids, lengths, tables):
    """`packed_encode` for rows padded at the end."""
    # Longest first, so the rows still running at any step are a prefix.
    order = tf.argsort(lengths, direction="DESCENDING", stable=True)
    lengths = tf.gather(lengths, order)
    x = tf.transpose(tf.gather(source_ids, order))  # (S, B): token ids, time-major
    real_tm = tf.transpose(tf.sequence_mask(lengths, tf.shape(x)[0]))
    positions = tf.where(real_tm)  # row-major: the packed order
    running = tf.reduce_sum(tf.cast(real_tm, tf.int32), axis=1)  # (S,): rows at each step
    for index, cells in enumerate(_layer_cells(encoder)):
        inputs = [x] + [tf.reverse_sequence(x, lengths, seq_axis=0, batch_axis=1)] * (
            len(cells) - 1)
        if index == 0:
            projected = _first_projections(
                encoder, [tf.gather_nd(ids, positions) for ids in inputs], tables)
        else:
            projected = [recurrence.project_inputs(cell, tf.gather_nd(x, positions))
                         for cell, x in zip(cells, inputs)]
        outputs, finals = _run_cells(cells, projected, running, tf.shape(x)[:2])
        if len(cells) > 1:
            outputs[1] = tf.reverse_sequence(outputs[1], lengths, seq_axis=0, batch_axis=1)
        x = tf.concat(outputs, axis=-1) * tf.cast(real_tm, tf.float32)[..., None]
    restore = tf.math.invert_permutation(order)
    memory = tf.gather(tf.transpose(x, (1, 0, 2)), restore)
    return memory, tf.gather(tf.concat(finals, axis=-1), restore)


def first_layer_tables(encoder):
    """Per cell of the first RNN layer, `embedding(ids) @ kernel + bias` for
    every id: `(vocab, gates · units)` tables, in which the packed encoder
    looks its tokens up (one product per call, fewer rows than the tokens of
    a large batch), and the fixed-shape (XLA) encoder too once
    `Stepper.keep_tables` has kept them; `[]` above `generation.MAX_TABLE_VOCABULARY` ids, where
    it multiplies the tokens' own embeddings instead, so that a large
    vocabulary (32,000 word pieces: 133 ms for one 10-token source at 256
    units) costs no more than the batch's tokens."""
    if encoder.embedding.input_dim > generation.MAX_TABLE_VOCABULARY:
        return []
    return [recurrence.project_inputs(cell, encoder.embedding.embeddings)
            for cell in _layer_cells(encoder)[0]]


def _first_projections(encoder, tokens, tables):
    """The first layer's input products of each of its cells' packed `tokens`:
    looked up in `tables` (`first_layer_tables(encoder)` when None) or, where
    there are none, the tokens' embeddings times the kernels."""
    if tables is None:
        tables = first_layer_tables(encoder)
    if tables:
        return [tf.gather(table, ids) for table, ids in zip(tables, tokens)]
    return [recurrence.project_inputs(cell, encoder.embedding(ids))
            for cell, ids in zip(_layer_cells(encoder)[0], tokens)]


def _run_cells(cells, projected, running, shape):
    """Runs each cell over its inputs, the directions side by side.

    `projected` holds per cell its `x @ kernel + bias` over the real tokens
    in the packed order (the `running[t]` rows of step t follow those of
    step t - 1); `shape` is `(S, B)`. Returns `([outputs (S, B, units) per
    cell], [final h (B, units) per cell])`."""
    steps, batch = shape[0], shape[1]
    offsets = tf.cumsum(running, exclusive=True)
    initial = [[tf.zeros([batch, cell.units]) for _ in range(recurrence.state_count(cell))]
               for cell in cells]
    buffers = [tf.TensorArray(tf.float32, size=0, dynamic_size=True,
                              element_shape=[None, cell.units]) for cell in cells]
    # Step 0 always runs (on no rows if all are empty), so the outputs have the batch's size.
    runs = tf.concat([running[:1] * 0 + 1, running[1:], [0]], axis=0)
    weights = [recurrence.recurrent_weights(cell) for cell in cells]

    def body(t, states, buffers):
        n, start = running[t], offsets[t]
        new_states, new_buffers = [], []
        for cell, xw, state, buffer, w in zip(cells, projected, states, buffers, weights):
            _, live = recurrence.step(cell, xw[start:start + n], [s[:n] for s in state], w)
            state = [tf.ensure_shape(tf.concat([new, old[n:]], axis=0), old.shape)
                     for new, old in zip(live, state)]
            new_states.append(state)
            new_buffers.append(buffer.write(t, state[0]))
        return t + 1, new_states, new_buffers

    _, finals, buffers = tf.while_loop(
        lambda t, *rest: runs[t] > 0,
        body, (tf.constant(0), initial, buffers))
    outputs = [_padded(buffer.stack(), steps) for buffer in buffers]
    return outputs, [state[0] for state in finals]


def _padded(stacked, steps):
    """The steps taken, zero-padded to `steps` (the loop stops after the longest row)."""
    return tf.pad(stacked, [[0, steps - tf.shape(stacked)[0]], [0, 0], [0, 0]])

