"""The search loop every strategy shares: fixed-size buffers, one `tf.while_loop`.

Each step runs the stepper on every live hypothesis, masks the finished
ones (they continue with padding only, at no cost), asks the strategy for
the next tokens (`next_tokens`) and records tokens, parent hypotheses and
attention in buffers of `max_length` steps (no dynamically sized
`TensorArray`, which XLA mishandles). Strategies that reorder their
hypotheses (beam search) are read back by walking the parent pointers, in
stock TensorFlow ops (what tfa's `GatherTree` custom op did, which stock TF
Serving lacks).
"""

from typing import NamedTuple

import tensorflow as tf

from keras_s2s_attn.decoding.stepper import NEG_INF
from keras_s2s_attn.special_ids import PAD_ID


class Hypotheses(NamedTuple):
    """What a strategy sees of its hypotheses when it picks the next tokens.

    All tensors are `(batch, width, ...)`, with `width` the strategy's
    hypotheses per input.

    Attributes:
        scores: Float32: sums of the log-probabilities so far.
        finished: Bool: the hypothesis ended before this step (it can only
            continue with padding, at log-probability 0).
        lengths: Int32: tokens produced once this step's token is added (the
            end token counts; a finished hypothesis does not grow).
        coverage: Float32 `(..., S)`: attention summed over the steps,
            this step's included.
        source_mask: Float32 `(..., S)`: 1 at real source positions.
        end_id: The (Python int) id that ends a hypothesis.
    """

    scores: tf.Tensor
    finished: tf.Tensor
    lengths: tf.Tensor
    coverage: tf.Tensor
    source_mask: tf.Tensor
    end_id: int


class SearchResult(NamedTuple):
    """A search's results, best first: `(batch, K, ...)` for K results per input.

    `ids` `(batch, K, T)` (the end id included, 0 after it), `lengths`
    `(batch, K)` (tokens before the end id), `scores` `(batch, K)` (sums of
    the model's log-probabilities, the end token's included),
    `ranking_scores` `(batch, K)` (what the strategy sorted by), `attention`
    `(batch, K, T, S)` (zeros after the end id) and `steps` (scalar: steps
    taken). T is the buffers' size, `max_length`; `trimmed()` cuts them to
    `steps`.
    """

    ids: tf.Tensor
    lengths: tf.Tensor
    scores: tf.Tensor
    ranking_scores: tf.Tensor
    attention: tf.Tensor
    steps: tf.Tensor

    def trimmed(self):
        """The result with `ids` and `attention` cut to the steps taken."""
        return self._replace(ids=self.ids[:, :, :self.steps],
                             attention=self.attention[:, :, :self.steps])


def _same_shapes(new, old):
    """Loop variables keep their static shapes (ops like top_k lose the batch size)."""
    for new_tensor, old_tensor in zip(tf.nest.flatten(new), tf.nest.flatten(old)):
        new_tensor.set_shape(old_tensor.shape)
    return new


def _write(buffer, t, row):
    """Writes `row` at index t of a fixed-size (steps, ...) buffer."""
    return tf.tensor_scatter_nd_update(buffer, [[t]], row[None])


def _gather(x, parents):
    """`x` `(batch, width, ...)` indexed by parent hypothesis `(batch, width)`."""
    return tf.gather(x, parents, batch_dims=1)


def run_search(strategy, stepper, source_ids, max_length, parameters, step_limit=None):
    """Runs `strategy` over `stepper` for a batch of source ids.

    The loop stops when every row with a source token has finished: rows of
    padding only (an empty input, or rows a caller added to fill a fixed
    batch size) are decoded alongside but never keep the loop going.

    Args:
        strategy: A `DecodingStrategy`.
        stepper: A `Stepper` or `EnsembleStepper`.
        source_ids: Int32 `(batch, S)`, 0 for padding.
        max_length: The buffers' size, most steps (the end token included):
            a Python int or a scalar int32 tensor (a compile-time constant
            under XLA, e.g. one derived from the static shape).
        parameters: The strategy's per-request values (`strategy.parameters`).
        step_limit: Most steps as a scalar int32 tensor, at most
            `max_length` (under XLA it may vary from call to call without a
            new compilation); default `max_length`.

    Returns:
        A `SearchResult` with the strategy's `num_results` best hypotheses.
    """
    width = strategy.width
    batch, source_length = tf.shape(source_ids)[0], tf.shape(source_ids)[1]
    memory, states = stepper.encode(source_ids)
    if width > 1:  # (batch, ...) -> (batch * width, ...), hypotheses of an input adjacent
        memory, states = tf.nest.map_structure(lambda x: tf.repeat(x, width, axis=0),
                                               (memory, states))
    source_mask = tf.repeat(tf.cast(tf.not_equal(source_ids, PAD_ID), tf.float32)[:, None],
                            width, axis=1)
    step = _step_function(strategy, stepper, memory, source_mask, parameters)
    # Rows of padding only never hold the loop up.
    idle = tf.repeat(~tf.reduce_any(tf.not_equal(source_ids, PAD_ID), axis=1)[:, None],
                     width, axis=1)
    step_limit = max_length if step_limit is None else step_limit
    loop = (tf.constant(0), tf.fill([batch, width], stepper.start_id), states,
            strategy.initial_scores(batch), tf.zeros([batch, width], tf.bool),
            tf.zeros([batch, width], tf.int32), tf.zeros([batch, width, source_length]),
            tf.zeros([max_length, batch, width], tf.int32),
            tf.zeros([max_length, batch, width], tf.int32) if strategy.reorders else (),
            tf.zeros([max_length, batch, width, source_length]))
    (steps, _, _, scores, finished, lengths, coverage, token_buf, parent_buf,
     attention_buf) = tf.while_loop(
        lambda t, tokens, states, scores, finished, *rest: (
            (t < step_limit) & ~tf.reduce_all(finished | idle)),
        lambda *loop_vars: _same_shapes(step(*loop_vars), loop_vars),
        loop, maximum_iterations=max_length,
    )
    final = Hypotheses(scores, finished, lengths, coverage, source_mask, stepper.end_id)
    ranking = strategy.ranking(final, parameters)
    order = tf.argsort(ranking, axis=-1, direction="DESCENDING",
                       stable=True)[:, :strategy.num_results]
    if strategy.reorders:
        ids, attention = _backtrack(token_buf, parent_buf, attention_buf, order, steps,
                                    max_length)
    else:
        ids = _gather(tf.transpose(token_buf, (1, 2, 0)), order)
        attention = _gather(tf.transpose(attention_buf, (1, 2, 0, 3)), order)
    return SearchResult(ids, _gather(lengths - tf.cast(finished, tf.int32), order),
                        _gather(scores, order), _gather(ranking, order), attention, steps)


def _step_function(strategy, stepper, memory, source_mask, parameters):
    """The loop body: one stepper step, the strategy's choice, the buffers written."""

    def step(t, tokens, states, scores, finished, lengths, coverage, token_buf, parent_buf,
             attention_buf):
        batch, width = tf.shape(tokens)[0], tf.shape(tokens)[1]
        log_probs, weights, states = stepper.step(tf.reshape(tokens, [-1]), states, memory, t)
        vocab = tf.shape(log_probs)[-1]
        log_probs = tf.reshape(log_probs, (batch, width, vocab))
        weights = tf.reshape(weights, (batch, width, -1))
        # A finished hypothesis continues only with padding, at no cost.
        pad_only = tf.one_hot(PAD_ID, vocab, on_value=0.0, off_value=NEG_INF)
        log_probs = tf.where(finished[..., None], pad_only, log_probs)
        weights = tf.where(finished[..., None], 0.0, weights)
        grown = Hypotheses(scores, finished, lengths + tf.cast(~finished, tf.int32),
                           coverage + weights, source_mask, stepper.end_id)
        tokens, parents = strategy.next_tokens(log_probs, grown, t, parameters)
        if strategy.reorders:
            flat = parents * vocab + tokens
            scores = (_gather(scores, parents)
                      + tf.gather(tf.reshape(log_probs, (batch, -1)), flat, batch_dims=1))
            finished, lengths, coverage, weights = (
                _gather(x, parents) for x in (finished, grown.lengths, grown.coverage, weights))
            rows = tf.reshape(parents + tf.range(batch)[:, None] * width, [-1])
            states = tf.nest.map_structure(lambda s: tf.gather(s, rows), states)
            parent_buf = _write(parent_buf, t, parents)
        else:
            scores += tf.gather(log_probs, tokens, batch_dims=2)
            lengths, coverage = grown.lengths, grown.coverage
        finished |= tf.equal(tokens, stepper.end_id)
        return (t + 1, tokens, states, scores, finished, lengths, coverage,
                _write(token_buf, t, tokens), parent_buf, _write(attention_buf, t, weights))

    return step


def _backtrack(token_buf, parent_buf, attention_buf, order, steps, max_length):
    """The hypotheses `order` `(batch, K)` read back along their parent pointers."""
    batch, results = tf.shape(order)[0], tf.shape(order)[1]
    source_length = tf.shape(attention_buf)[-1]

    def back(t, beams, ids, attention):
        ids = _write(ids, t, _gather(token_buf[t], beams))
        attention = _write(attention, t, _gather(attention_buf[t], beams))
        return t - 1, _gather(parent_buf[t], beams), ids, attention

    _, _, ids, attention = tf.while_loop(
        lambda t, *rest: t >= 0, back,
        (steps - 1, order, tf.zeros([max_length, batch, results], tf.int32),
         tf.zeros([max_length, batch, results, source_length])),
        maximum_iterations=max_length,
    )
    return tf.transpose(ids, (1, 2, 0)), tf.transpose(attention, (1, 2, 0, 3))
