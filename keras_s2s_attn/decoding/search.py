"""The search loop every strategy shares: fixed-size buffers, one `tf.while_loop`.

Each step runs the stepper on every live hypothesis, masks the finished
ones (they continue with padding only, at no cost), asks the strategy for
the next tokens (`next_tokens`) and records tokens, parent hypotheses and
attention in buffers of `max_length` steps (no dynamically sized
`TensorArray`, which XLA mishandles). Strategies that reorder their
hypotheses (beam search) are read back by walking the parent pointers, in
stock TensorFlow ops (what tfa's `GatherTree` custom op did, which stock TF
Serving lacks).

Where shapes may change as the graph runs (not under XLA), an input whose
hypotheses have all finished leaves the loop's tensors altogether for a
compactable strategy, so a batch costs about its real output tokens rather
than its longest row's; its results wait in full-size arrays.
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


class _Live(NamedTuple):
    """The loop's per-input state, of the inputs still decoding (`rows`).

    `rows` `(n,)` are their indices in the batch; `tokens`, `scores`,
    `finished`, `lengths`, `idle` are `(n, width)`, `coverage` and
    `source_mask` `(n, width, S)`; `states` and `memory` are the stepper's
    nests of `(n * width, ...)` tensors.
    """

    rows: tf.Tensor
    tokens: tf.Tensor
    states: object
    scores: tf.Tensor
    finished: tf.Tensor
    lengths: tf.Tensor
    coverage: tf.Tensor
    memory: object
    source_mask: tf.Tensor
    idle: tf.Tensor


def _write(buffer, t, rows, values):
    """Writes `values` `(n, ...)` at step t of a `(steps, batch, ...)` buffer, rows `rows`."""
    indices = tf.stack([tf.fill(tf.shape(rows), t), rows], axis=1)
    return tf.tensor_scatter_nd_update(buffer, indices, values)


def _gather(x, parents):
    """`x` `(batch, width, ...)` indexed by parent hypothesis `(batch, width)`."""
    return tf.gather(x, parents, batch_dims=1)


def run_search(strategy, stepper, source_ids, max_length, parameters, step_limit=None):
    """Runs `strategy` over `stepper` for a batch of source ids.

    The loop stops when every row with a source token has finished: rows of
    padding only (an empty input, or rows a caller added to fill a fixed
    batch size) are decoded alongside but never keep the loop going. Where
    the strategy is `compactable` and the stepper allows `dynamic_shapes`,
    inputs whose hypotheses have all finished leave the batch (once a
    quarter of it has finished), so the rest of the loop computes only the
    live ones.

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
    compact = strategy.compactable and getattr(stepper, "dynamic_shapes", False)
    source_mask = tf.repeat(tf.cast(tf.not_equal(source_ids, PAD_ID), tf.float32)[:, None],
                            width, axis=1)
    live = _initial(strategy, stepper, source_ids, source_mask)
    batch, source_length = tf.shape(source_ids)[0], tf.shape(source_ids)[1]
    buffers = (tf.zeros([max_length, batch, width], tf.int32),
               # Identity parents: an input that left the batch keeps its hypotheses' order.
               tf.broadcast_to(tf.range(width), [max_length, batch, width])
               if strategy.reorders else (),
               tf.zeros([max_length, batch, width, source_length]))
    step = _step_function(strategy, stepper, parameters, width, compact)
    loop = (tf.constant(0), live, buffers, _outcome(batch, width, source_length))
    invariants = tf.nest.map_structure(lambda x: x.shape, loop)
    if compact:  # the live inputs' count varies
        invariants = (invariants[0], tf.nest.map_structure(_any_rows, invariants[1]),
                      *invariants[2:])
    step_limit = max_length if step_limit is None else step_limit
    steps, live, (token_buf, parent_buf, attention_buf), outcome = tf.while_loop(
        lambda t, live, *rest: (t < step_limit) & ~tf.reduce_all(live.finished | live.idle),
        lambda *loop_vars: _with_shapes(step(*loop_vars), invariants),
        loop, shape_invariants=invariants, maximum_iterations=max_length,
    )
    scores, finished, lengths, coverage = _kept(outcome, live)
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


def _initial(strategy, stepper, source_ids, source_mask):
    """The encoded batch and the hypotheses before the first step, all inputs live
    (`source_mask` `(batch, width, S)`: 1 at real source positions)."""
    width = strategy.width
    batch, source_length = tf.shape(source_ids)[0], tf.shape(source_ids)[1]
    memory, states = stepper.encode(source_ids)
    if width > 1:  # (batch, ...) -> (batch * width, ...), hypotheses of an input adjacent
        memory, states = tf.nest.map_structure(lambda x: tf.repeat(x, width, axis=0),
                                               (memory, states))
    idle = ~tf.reduce_any(source_mask > 0, axis=-1)  # rows of padding only: never waited for
    return _Live(tf.range(batch), tf.fill([batch, width], stepper.start_id), states,
                 strategy.initial_scores(batch), tf.zeros([batch, width], tf.bool),
                 tf.zeros([batch, width], tf.int32), tf.zeros([batch, width, source_length]),
                 memory, source_mask, idle)


def _outcome(batch, width, source_length):
    """Where inputs that leave the batch keep their final scores, finished, lengths, coverage."""
    return (tf.zeros([batch, width]), tf.zeros([batch, width], tf.bool),
            tf.zeros([batch, width], tf.int32), tf.zeros([batch, width, source_length]))


def _kept(outcome, live):
    """`outcome` with the live inputs' values written into their rows."""
    index = live.rows[:, None]
    return tuple(tf.tensor_scatter_nd_update(kept, index, value) for kept, value in
                 zip(outcome, (live.scores, live.finished, live.lengths, live.coverage)))


def _any_rows(shape):
    """`shape` with its first (live inputs) dimension unknown."""
    return tf.TensorShape([None]).concatenate(shape[1:]) if shape.rank else shape


def _with_shapes(new, invariants):
    """Loop variables keep their static shapes (ops like top_k lose the batch size)."""
    for tensor, shape in zip(tf.nest.flatten(new), tf.nest.flatten(invariants)):
        tensor.set_shape(shape)
    return new


def _compacted(live, outcome, width, alive):
    """The inputs with a live hypothesis (`alive` `(n,)`); the others' results are moved
    to `outcome`."""
    outcome = _kept(outcome, live)
    keep = tf.cast(tf.where(alive)[:, 0], tf.int32)
    hypotheses = tf.reshape(keep[:, None] * width + tf.range(width), [-1])
    per_input = {name: tf.gather(getattr(live, name), keep) for name in (
        "rows", "tokens", "scores", "finished", "lengths", "coverage", "source_mask", "idle")}
    per_hypothesis = {name: tf.nest.map_structure(lambda x: tf.gather(x, hypotheses),
                                                  getattr(live, name))
                      for name in ("states", "memory")}
    return live._replace(**per_input, **per_hypothesis), outcome


def _step_function(strategy, stepper, parameters, width, compact):
    """The loop body: one stepper step, the strategy's choice, the buffers written and,
    with `compact`, finished inputs dropped."""

    def step(t, live, buffers, outcome):
        token_buf, parent_buf, attention_buf = buffers
        live, parents, weights = _advance(strategy, stepper, parameters, t, live)
        token_buf = _write(token_buf, t, live.rows, live.tokens)
        if strategy.reorders:
            parent_buf = _write(parent_buf, t, live.rows, parents)
        attention_buf = _write(attention_buf, t, live.rows, weights)
        if compact:
            alive = ~tf.reduce_all(live.finished | live.idle, axis=1)
            remaining = tf.reduce_sum(tf.cast(alive, tf.int32))
            live, outcome = tf.cond(4 * remaining <= 3 * tf.shape(live.rows)[0],
                                    lambda: _compacted(live, outcome, width, alive),
                                    lambda: (live, outcome))
        return t + 1, live, (token_buf, parent_buf, attention_buf), outcome

    return step


def _advance(strategy, stepper, parameters, t, live):
    """One step of every live hypothesis: `(live, parents, weights)` after it."""
    batch, width = tf.shape(live.tokens)[0], tf.shape(live.tokens)[1]
    log_probs, weights, states = stepper.step(tf.reshape(live.tokens, [-1]), live.states,
                                              live.memory, t)
    vocab = tf.shape(log_probs)[-1]
    log_probs = tf.reshape(log_probs, (batch, width, vocab))
    weights = tf.reshape(weights, (batch, width, -1))
    finished = live.finished
    # A finished hypothesis continues only with padding, at no cost.
    pad_only = tf.one_hot(PAD_ID, vocab, on_value=0.0, off_value=NEG_INF)
    log_probs = tf.where(finished[..., None], pad_only, log_probs)
    weights = tf.where(finished[..., None], 0.0, weights)
    grown = Hypotheses(live.scores, finished, live.lengths + tf.cast(~finished, tf.int32),
                       live.coverage + weights, live.source_mask, stepper.end_id)
    tokens, parents = strategy.next_tokens(log_probs, grown, t, parameters)
    if strategy.reorders:
        flat = parents * vocab + tokens
        scores = (_gather(live.scores, parents)
                  + tf.gather(tf.reshape(log_probs, (batch, -1)), flat, batch_dims=1))
        finished, lengths, coverage, weights = (
            _gather(x, parents) for x in (finished, grown.lengths, grown.coverage, weights))
        rows = tf.reshape(parents + tf.range(batch)[:, None] * width, [-1])
        states = tf.nest.map_structure(lambda s: tf.gather(s, rows), states)
    else:
        scores = live.scores + tf.gather(log_probs, tokens, batch_dims=2)
        lengths, coverage = grown.lengths, grown.coverage
    finished |= tf.equal(tokens, stepper.end_id)
    return (live._replace(tokens=tokens, states=states, scores=scores, finished=finished,
                          lengths=lengths, coverage=coverage), parents, weights)


def _backtrack(token_buf, parent_buf, attention_buf, order, steps, max_length):
    """The hypotheses `order` `(batch, K)` read back along their parent pointers."""
    batch, results = tf.shape(order)[0], tf.shape(order)[1]
    source_length = tf.shape(attention_buf)[-1]

    def back(t, beams, ids, attention):
        ids = tf.tensor_scatter_nd_update(ids, [[t]], _gather(token_buf[t], beams)[None])
        attention = tf.tensor_scatter_nd_update(attention, [[t]],
                                                _gather(attention_buf[t], beams)[None])
        return t - 1, _gather(parent_buf[t], beams), ids, attention

    _, _, ids, attention = tf.while_loop(
        lambda t, *rest: t >= 0, back,
        (steps - 1, order, tf.zeros([max_length, batch, results], tf.int32),
         tf.zeros([max_length, batch, results, source_length])),
        maximum_iterations=max_length,
    )
    return tf.transpose(ids, (1, 2, 0)), tf.transpose(attention, (1, 2, 0, 3))
