"""Inference: greedy decoding of a trained model in a `tf.function`.

The encoder runs once per batch, the attention's memory projection is
computed once, and the model's own `AttentionDecoderCell` is stepped inside a
`tf.while_loop`: the same implementation of the math as in training.
"""

import tensorflow as tf

from keras_s2s_attn import models
from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID


class GreedyDecoder:
    """Greedy decoding with the parts of a `build_seq2seq_model` model.

    Args:
        model: A model from `build_seq2seq_model` (trained, or loaded from a
            `.keras` file).
        start_id: The first decoder input.
        end_id: The id that ends a sequence.

    Call arguments:
        source_ids: Int `(batch, S)`, 0 for padding.
        max_output_length: Most tokens to produce per row; default 2·S + 10.

    Returns:
        A dict of tensors: `ids` `(batch, T)` (the end id included, 0 after
        it), `lengths` `(batch,)` (tokens before the end id), `scores`
        `(batch,)` (sum of log-probabilities, the end token's included) and
        `attention` `(batch, T, S)` (zeros after the end id).

    Example:

    >>> decoder = GreedyDecoder(model)
    >>> result = decoder(np.array([[5, 6, 7]]), max_output_length=10)
    >>> result["ids"].shape[0]
    1
    """

    def __init__(self, model, start_id=START_ID, end_id=END_ID):
        self.encoder = model.get_layer(models.ENCODER)
        self.bridge = model.get_layer(models.BRIDGE)
        self.embedding = model.get_layer(models.TARGET_EMBEDDING)
        self.cell = model.get_layer(models.DECODER).cell
        self.projection = model.get_layer(models.OUTPUT_PROJECTION)
        self.start_id = int(start_id)
        self.end_id = int(end_id)
        self._decode = tf.function(self._decode_graph, reduce_retracing=True)

    def __call__(self, source_ids, max_output_length=None):
        source_ids = tf.convert_to_tensor(source_ids, tf.int32)
        if source_ids.shape.rank != 2:
            raise ValueError(
                f"`source_ids` must be (batch, S). Received shape {source_ids.shape}"
            )
        if max_output_length is None:
            max_output_length = 2 * tf.shape(source_ids)[1] + 10
        elif isinstance(max_output_length, int) and max_output_length <= 0:
            raise ValueError(
                f"`max_output_length` must be positive. Received: {max_output_length}"
            )
        return self._decode(source_ids, tf.convert_to_tensor(max_output_length, tf.int32))

    def _decode_graph(self, source_ids, max_output_length):
        cell = self.cell
        batch = tf.shape(source_ids)[0]
        memory, summary = self.encoder(source_ids, training=False)
        memory_mask = tf.not_equal(source_ids, PAD_ID)
        states = cell.get_initial_state(batch, self.bridge(summary))
        prepared = cell.prepare_memory(memory)
        source_length = tf.shape(source_ids)[1]

        ids_buffer = tf.TensorArray(tf.int32, size=max_output_length)
        attention_buffer = tf.TensorArray(memory.dtype, size=max_output_length)

        def keep_going(t, tokens, states, finished, scores, lengths, ids_buffer, att_buffer):
            return tf.logical_and(t < max_output_length, tf.logical_not(tf.reduce_all(finished)))

        def step(t, tokens, states, finished, scores, lengths, ids_buffer, att_buffer):
            embedded = self.embedding(tokens)
            (output, weights), new_states = cell(
                embedded, states, memory, memory_mask=memory_mask,
                prepared_memory=prepared, step=t, training=False,
            )
            log_probs = tf.nn.log_softmax(tf.cast(self.projection(output), tf.float32))
            next_tokens = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
            best = tf.reduce_max(log_probs, axis=-1)
            next_tokens = tf.where(finished, PAD_ID, next_tokens)
            scores = scores + tf.where(finished, 0.0, best)
            lengths = lengths + tf.cast(
                tf.logical_not(finished) & tf.not_equal(next_tokens, self.end_id), tf.int32
            )
            if weights is None:
                weights = tf.zeros((batch, source_length), memory.dtype)
            weights = tf.where(finished[:, None], tf.zeros_like(weights), weights)
            finished = finished | tf.equal(next_tokens, self.end_id)
            return (
                t + 1, next_tokens, new_states, finished, scores, lengths,
                ids_buffer.write(t, next_tokens), att_buffer.write(t, weights),
            )

        loop_vars = (
            tf.constant(0), tf.fill([batch], self.start_id), states,
            tf.zeros([batch], tf.bool), tf.zeros([batch], tf.float32),
            tf.zeros([batch], tf.int32), ids_buffer, attention_buffer,
        )
        t, _, _, _, scores, lengths, ids_buffer, attention_buffer = tf.while_loop(
            keep_going, step, loop_vars, maximum_iterations=max_output_length
        )
        produced = tf.range(t)
        ids = tf.transpose(ids_buffer.gather(produced))
        attention = tf.transpose(attention_buffer.gather(produced), (1, 0, 2))
        attention = tf.reshape(attention, (batch, t, source_length))
        ids = tf.reshape(ids, (batch, t))
        return {"ids": ids, "lengths": lengths, "scores": scores, "attention": attention}
