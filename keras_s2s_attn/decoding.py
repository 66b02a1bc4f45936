"""Inference: greedy and beam-search decoding of a trained model in TensorFlow.

The encoder runs once per batch, the attention's memory projection is
computed once, and the model's own `AttentionDecoderCell` is stepped inside a
`tf.while_loop` with a `maximum_iterations` bound and fixed-size output
buffers (no dynamically sized `TensorArray`, which XLA mishandles): the same
implementation of the math as in training.

Beam search uses stock TensorFlow ops only: each step records its tokens,
parent beams and attention in fixed-size buffers, and the best hypotheses are
read back by walking the parent pointers (what tfa's `GatherTree` custom op
did, which stock TF Serving lacks).
"""

import tensorflow as tf

from keras_s2s_attn import models
from keras_s2s_attn.checks import non_negative, positive_int
from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID

# A log-probability for impossible hypotheses: finite, so sums never give NaN.
NEG_INF = -1e9


def _same_shapes(new, old):
    """Loop variables keep their static shapes (ops like top_k lose the batch size)."""
    for new_tensor, old_tensor in zip(tf.nest.flatten(new), tf.nest.flatten(old)):
        new_tensor.set_shape(old_tensor.shape)
    return new


def _write(buffer, t, row):
    """Writes `row` at index t of a fixed-size (steps, ...) buffer."""
    return tf.tensor_scatter_nd_update(buffer, [[t]], row[None])


class Decoder:
    """Greedy and beam-search decoding with the parts of a seq2seq model.

    Args:
        model: A model from `build_seq2seq_model` (trained, or loaded from a
            `.keras` file).
        start_id: The first decoder input.
        end_id: The id that ends a sequence.
        jit_compile: Compile the numeric core with XLA (one compilation per
            batch shape and `max_output_length`).

    Example:

    >>> decoder = Decoder(model)
    >>> greedy = decoder.greedy(np.array([[5, 6, 7]]), max_output_length=10)
    >>> beam = decoder.beam_search(np.array([[5, 6, 7]]), beam_width=4)
    >>> sorted(greedy)
    ['attention', 'ids', 'lengths', 'scores']
    """

    def __init__(self, model, start_id=START_ID, end_id=END_ID, jit_compile=False):
        self.encoder = model.get_layer(models.ENCODER)
        self.bridge = model.get_layer(models.BRIDGE)
        self.embedding = model.get_layer(models.TARGET_EMBEDDING)
        self.cell = model.get_layer(models.DECODER).cell
        self.projection = model.get_layer(models.OUTPUT_PROJECTION)
        self.start_id = int(start_id)
        self.end_id = int(end_id)
        self.jit_compile = bool(jit_compile)
        self.has_attention = self.cell.attention is not None
        self._greedy = tf.function(self.greedy_graph, jit_compile=self.jit_compile,
                                   reduce_retracing=True)
        self._beam = tf.function(self.beam_graph, jit_compile=self.jit_compile,
                                 reduce_retracing=True)

    # ------------------------------------------------------------ public API
    def greedy(self, source_ids, max_output_length=None):
        """Greedy decoding: the most likely token at every step.

        Args:
            source_ids: Int `(batch, S)`, 0 for padding.
            max_output_length: Most tokens per row (the end id included);
                default 2·S + 10.

        Returns:
            A dict: `ids` `(batch, T)` (the end id included, 0 after it),
            `lengths` `(batch,)` (tokens before the end id), `scores`
            `(batch,)` (sum of log-probabilities, the end token's included)
            and `attention` `(batch, T, S)` (zeros after the end id; absent
            for a model without attention). T is the number of steps taken,
            at most `max_output_length`.
        """
        source_ids, max_length = self._check(source_ids, max_output_length)
        ids, lengths, scores, attention, steps = self._greedy(source_ids, max_length)
        return self._public({"ids": ids[:, :steps], "lengths": lengths, "scores": scores,
                             "attention": attention[:, :steps]})

    __call__ = greedy

    def beam_search(self, source_ids, beam_width=4, max_output_length=None,
                    length_penalty_weight=0.0, coverage_penalty_weight=0.0, num_results=1):
        """Beam search with GNMT's length and coverage penalties (Wu et al. 2016).

        Hypotheses are ranked by log P(Y|X) / lp(Y) + cp(X; Y) with
        lp(Y) = ((5 + |Y|) / 6)^α and cp = β Σ_j log(min(Σ_i a_ij, 1)) over
        the real source positions j. With `beam_width=1` the result equals
        `greedy`.

        Args:
            source_ids: Int `(batch, S)`, 0 for padding.
            beam_width: Hypotheses kept per row.
            max_output_length: As in `greedy`.
            length_penalty_weight: α ≥ 0.
            coverage_penalty_weight: β ≥ 0.
            num_results: How many of the best hypotheses to return (≤ beam_width).

        Returns:
            A dict like `greedy`'s for the best hypothesis (`scores` is its
            sum of log-probabilities, `ranking_scores` the penalised score);
            with `num_results` > 1 every value gains a second axis of that
            size, best first.
        """
        positive_int(beam_width, "beam_width")
        positive_int(num_results, "num_results")
        if num_results > beam_width:
            raise ValueError(f"`num_results` ({num_results}) cannot exceed `beam_width` "
                             f"({beam_width}).")
        non_negative(length_penalty_weight, "length_penalty_weight")
        non_negative(coverage_penalty_weight, "coverage_penalty_weight")
        source_ids, max_length = self._check(source_ids, max_output_length)
        # beam_width stays a Python int: top_k's k must be static under XLA.
        result = self._beam(source_ids, max_length, beam_width,
                            tf.constant(float(length_penalty_weight)),
                            tf.constant(float(coverage_penalty_weight)))
        ids, lengths, scores, ranking, attention, steps = result
        result = {"ids": ids[:, :num_results, :steps], "lengths": lengths[:, :num_results],
                  "scores": scores[:, :num_results], "ranking_scores": ranking[:, :num_results],
                  "attention": attention[:, :num_results, :steps]}
        if num_results == 1:
            result = {key: value[:, 0] for key, value in result.items()}
        return self._public(result)

    # --------------------------------------------------------------- helpers
    def _public(self, result):
        """Drops the all-zero attention buffers of a model without attention."""
        if not self.has_attention:
            del result["attention"]
        return result

    def _check(self, source_ids, max_output_length):
        source_ids = tf.convert_to_tensor(source_ids)
        if not source_ids.dtype.is_integer:
            raise ValueError(f"`source_ids` must be integer ids. Received dtype {source_ids.dtype}")
        source_ids = tf.cast(source_ids, tf.int32)
        if source_ids.shape.rank != 2:
            raise ValueError(
                f"`source_ids` must be (batch, S). Received shape {source_ids.shape}"
            )
        if max_output_length is None:
            max_output_length = 2 * int(tf.shape(source_ids)[1]) + 10
        max_output_length = positive_int(int(max_output_length), "max_output_length")
        if self.jit_compile:
            # Buffer sizes must be compile-time constants under XLA (one
            # compilation per value); a tensor otherwise avoids retracing.
            return source_ids, max_output_length
        return source_ids, tf.constant(max_output_length)

    def encode(self, source_ids):
        """Runs the encoder once: (memory, mask, prepared memory, initial states)."""
        cell = self.cell
        memory, summary = self.encoder(source_ids, training=False)
        mask = tf.not_equal(source_ids, PAD_ID)
        states = cell.get_initial_state(tf.shape(source_ids)[0], self.bridge(summary))
        return memory, mask, cell.prepare_memory(memory), states

    def step(self, tokens, states, memory, mask, prepared, t):
        """One decoder step: (log-probabilities, attention weights, new states).

        The log-probabilities are the model's, with PAD and START set to
        `NEG_INF` so that no search can pick them.
        """
        (output, weights), states = self.cell(
            self.embedding(tokens), states, memory, memory_mask=mask,
            prepared_memory=prepared, step=t, training=False,
        )
        log_probs = tf.nn.log_softmax(tf.cast(self.projection(output), tf.float32))
        # PAD and START are not output tokens: a decoder that picked one would
        # emit a token that detokenisation then silently drops.
        reserved = tf.one_hot([PAD_ID, START_ID], tf.shape(log_probs)[-1], on_value=NEG_INF,
                              off_value=0.0)
        log_probs += tf.reduce_sum(reserved, axis=0)
        if weights is None:  # the plain encoder-decoder has no attention
            weights = tf.zeros(tf.shape(mask), tf.float32)
        return log_probs, tf.cast(weights, tf.float32), states

    # ------------------------------------------------------------- greedy core
    def greedy_graph(self, source_ids, max_length, encoded=None):
        """`greedy` as TensorFlow ops, to call inside another `tf.function`.

        `encoded` is `encode(source_ids)` when the caller has run it already.
        Returns `(ids, lengths, scores, attention, steps)` with ids and
        attention in buffers of `max_length` steps (the first `steps` used).
        """
        batch, source_length = tf.shape(source_ids)[0], tf.shape(source_ids)[1]
        memory, mask, prepared, states = self.encode(source_ids) if encoded is None else encoded

        def body(t, tokens, states, finished, scores, lengths, ids, attention):
            log_probs, weights, states = self.step(tokens, states, memory, mask, prepared, t)
            chosen = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
            chosen = tf.where(finished, PAD_ID, chosen)
            scores += tf.where(finished, 0.0, tf.reduce_max(log_probs, axis=-1))
            lengths += tf.cast(~finished & (chosen != self.end_id), tf.int32)
            weights = tf.where(finished[:, None], 0.0, weights)
            finished |= chosen == self.end_id
            return (t + 1, chosen, states, finished, scores, lengths,
                    _write(ids, t, chosen), _write(attention, t, weights))

        def body_same_shapes(*loop_vars):
            return _same_shapes(body(*loop_vars), loop_vars)

        loop = (tf.constant(0), tf.fill([batch], self.start_id), states,
                tf.zeros([batch], tf.bool), tf.zeros([batch]), tf.zeros([batch], tf.int32),
                tf.zeros([max_length, batch], tf.int32),
                tf.zeros([max_length, batch, source_length]))
        steps, _, _, _, scores, lengths, ids, attention = tf.while_loop(
            lambda t, _1, _2, finished, *rest: ~tf.reduce_all(finished),
            body_same_shapes, loop, maximum_iterations=max_length,
        )
        return (tf.transpose(ids), lengths, scores, tf.transpose(attention, (1, 0, 2)), steps)

    # --------------------------------------------------------------- beam core
    def beam_graph(self, source_ids, max_length, beam_width, alpha, beta, encoded=None):
        """`beam_search` as TensorFlow ops, to call inside another `tf.function`.

        `beam_width` is a Python int; `encoded` is `encode(source_ids)` when
        the caller has run it already. Returns `(ids, lengths, scores,
        ranking_scores, attention, steps)` for all beams, best first, in
        buffers of `max_length` steps (the first `steps` used).
        """
        batch, source_length = tf.shape(source_ids)[0], tf.shape(source_ids)[1]
        memory, mask, prepared, states = self.encode(source_ids) if encoded is None else encoded
        flat = batch * beam_width

        def tile(x):  # (batch, ...) -> (batch * beam, ...), beams of a row adjacent
            # None: the prepared memory of a model without attention.
            return None if x is None else tf.repeat(x, beam_width, axis=0)

        # Nested structures: an ensemble has one memory and state list per member.
        memory, mask, prepared, states = tf.nest.map_structure(
            tile, (memory, mask, prepared, states))
        real = tf.cast(tf.reshape(mask, (batch, beam_width, -1)), tf.float32)

        def penalised(log_probs, produced, coverage, complete):
            """GNMT ranking score; the coverage penalty counts for complete hypotheses.

            log_probs, produced and complete are (batch, beam) or (batch, beam,
            vocab); coverage is (batch, beam, S).
            """
            lp = tf.pow((5.0 + tf.cast(produced, tf.float32)) / 6.0, alpha)
            # Clipped, not `+ epsilon`: Grappler folds `(1 - real) + 1e-10` to
            # `1 - real` in float32, and log(0) = -inf times 0 is NaN. And a
            # `where`, not a product with the mask, for the same reason.
            covered = tf.math.log(tf.clip_by_value(coverage, 1e-10, 1.0))
            cp = beta * tf.reduce_sum(tf.where(real > 0, covered, 0.0), axis=-1)  # (batch, beam)
            if log_probs.shape.rank == 3:
                cp = cp[..., None]
            return log_probs / lp + cp * tf.cast(complete, tf.float32)

        def gather(x, parents):  # x (batch, beam, ...) indexed by parent beam
            return tf.gather(x, parents, batch_dims=1)

        def body(t, tokens, states, finished, scores, produced, coverage, token_buf,
                 parent_buf, attention_buf):
            log_probs, weights, states = self.step(tf.reshape(tokens, [flat]), states, memory,
                                                   mask, prepared, t)
            vocab = tf.shape(log_probs)[-1]
            log_probs = tf.reshape(log_probs, (batch, beam_width, vocab))
            weights = tf.reshape(weights, (batch, beam_width, source_length))
            # A finished hypothesis continues only with padding, at no cost.
            pad_only = tf.one_hot(PAD_ID, vocab, on_value=0.0, off_value=NEG_INF)
            log_probs = tf.where(finished[..., None], pad_only, log_probs)
            weights = tf.where(finished[..., None], 0.0, weights)
            candidates = scores[..., None] + log_probs  # (batch, beam, vocab)
            new_produced = produced + tf.cast(~finished, tf.int32)  # tokens, end id included
            new_coverage = coverage + weights
            complete = finished[..., None] | tf.equal(tf.range(vocab), self.end_id)
            ranking = penalised(candidates, new_produced[..., None], new_coverage, complete)
            _, best = tf.math.top_k(tf.reshape(ranking, (batch, -1)), k=beam_width)
            parents, chosen = best // vocab, best % vocab
            scores = tf.gather(tf.reshape(candidates, (batch, -1)), best, batch_dims=1)
            finished = gather(finished, parents) | (chosen == self.end_id)
            produced = gather(new_produced, parents)
            coverage = gather(new_coverage, parents)
            flat_parents = tf.reshape(parents + tf.range(batch)[:, None] * beam_width, [flat])
            states = tf.nest.map_structure(lambda s: tf.gather(s, flat_parents), states)
            return (t + 1, chosen, states, finished, scores, produced, coverage,
                    _write(token_buf, t, chosen), _write(parent_buf, t, parents),
                    _write(attention_buf, t, gather(weights, parents)))

        def body_same_shapes(*loop_vars):
            return _same_shapes(body(*loop_vars), loop_vars)

        # Only beam 0 is alive at the start, so the first step does not pick
        # the same token once per beam.
        first = tf.concat([[0.0], tf.fill([beam_width - 1], NEG_INF)], 0)
        loop = (
            tf.constant(0), tf.fill([batch, beam_width], self.start_id), states,
            tf.zeros([batch, beam_width], tf.bool), tf.tile(first[None], [batch, 1]),
            tf.zeros([batch, beam_width], tf.int32),
            tf.zeros([batch, beam_width, source_length]),
            tf.zeros([max_length, batch, beam_width], tf.int32),
            tf.zeros([max_length, batch, beam_width], tf.int32),
            tf.zeros([max_length, batch, beam_width, source_length]),
        )
        (steps, _, _, finished, scores, produced, coverage, token_buf, parent_buf,
         attention_buf) = tf.while_loop(
            lambda t, _1, _2, finished, *rest: ~tf.reduce_all(finished),
            body_same_shapes, loop, maximum_iterations=max_length,
        )
        ranking = penalised(scores, produced, coverage, finished)
        lengths = produced - tf.cast(finished, tf.int32)  # tokens before the end id
        order = tf.argsort(ranking, axis=-1, direction="DESCENDING", stable=True)

        # Walk the parent pointers back from the last step (a pure-TF GatherTree).
        def back(t, beams, ids, attention):
            ids = _write(ids, t, tf.gather(token_buf[t], beams, batch_dims=1))
            attention = _write(attention, t, tf.gather(attention_buf[t], beams, batch_dims=1))
            return t - 1, tf.gather(parent_buf[t], beams, batch_dims=1), ids, attention

        _, _, ids, attention = tf.while_loop(
            lambda t, *rest: t >= 0, back,
            (steps - 1, order, tf.zeros_like(token_buf), tf.zeros_like(attention_buf)),
            maximum_iterations=max_length,
        )
        return (tf.transpose(ids, (1, 2, 0)), tf.gather(lengths, order, batch_dims=1),
                tf.gather(scores, order, batch_dims=1), tf.gather(ranking, order, batch_dims=1),
                tf.transpose(attention, (1, 2, 0, 3)), steps)


class EnsembleDecoder(Decoder):
    """Decodes with several models at once, as one model whose next-token
    distribution is the mean of theirs.

    Each model runs its own encoder and decoder cell; at every step the
    members' probabilities are averaged (log of the mean probability, as
    fairseq and Marian ensembles do), so greedy and beam search pick tokens
    all members agree on most. The attention map returned is the mean of the
    members' maps (still summing to 1 over the real source positions). The
    members must share the source and target vocabularies: train them on the
    same data with the same tokenizer kinds (`train` builds the same
    vocabularies from the same pairs).

    Args:
        models: Two or more models from `build_seq2seq_model` (any sizes,
            cells and attention scores).
        start_id, end_id, jit_compile: As in `Decoder`.

    Example:

    >>> ensemble = EnsembleDecoder([model_a, model_b])
    >>> ensemble.greedy(np.array([[5, 6, 7]]), max_output_length=10)["ids"]
    """

    def __init__(self, models, start_id=START_ID, end_id=END_ID, jit_compile=False):
        models = list(models)
        if len(models) < 2:
            raise ValueError(f"`models` must hold at least 2 models for an ensemble; got "
                             f"{len(models)} (use `Decoder` for one).")
        self.members = [Decoder(model, start_id, end_id) for model in models]
        sizes = [(m.encoder.embedding.input_dim, m.projection.units) for m in self.members]
        if len(set(sizes)) != 1:
            raise ValueError("The ensemble's models must share their vocabularies; got "
                             "(source, target) vocabulary sizes " + ", ".join(map(str, sizes)))
        super().__init__(models[0], start_id, end_id, jit_compile)
        self.has_attention = any(member.has_attention for member in self.members)

    def encode(self, source_ids):
        """Each member's encoder: `(memories, mask, prepared memories, states)`."""
        encoded = [member.encode(source_ids) for member in self.members]
        memory = tuple(e[0] for e in encoded)
        prepared = tuple(e[2] for e in encoded)
        states = tuple(e[3] for e in encoded)
        return memory, encoded[0][1], prepared, states

    def step(self, tokens, states, memory, mask, prepared, t):
        """One step of every member: log of the mean probability, and the mean
        attention of the members that have attention (zeros if none has)."""
        steps = [member.step(tokens, member_states, member_memory, mask, member_prepared, t)
                 for member, member_states, member_memory, member_prepared
                 in zip(self.members, states, memory, prepared)]
        count = float(len(steps))
        log_probs = (tf.reduce_logsumexp(tf.stack([s[0] for s in steps]), axis=0)
                     - tf.math.log(count))
        attending = [s[1] for member, s in zip(self.members, steps) if member.has_attention]
        weights = (tf.add_n(attending) / float(len(attending)) if attending
                   else tf.zeros_like(steps[0][1]))
        return log_probs, weights, tuple(s[2] for s in steps)
