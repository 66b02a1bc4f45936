"""Greedy and beam search in `keras.ops`: decoding on every Keras backend.

`ModelSteps` sees a trained model one decoder step at a time: `encode` runs
the encoder (and the attention's memory projection) once, `step` runs the
model's own `AttentionDecoderCell` for one token. It is written in
`keras.ops` only, so the same code runs eagerly here under JAX, PyTorch or
TensorFlow, and inside the TensorFlow graphs of `keras_s2s_attn.decoding`
(whose `Stepper` is this class) and of the export.

`greedy_search` and `beam_search` drive it from a Python loop that stops
when every input has ended: the model's step runs on the backend, the
choice of tokens (a few small arrays per step) in numpy. They give the
results of the exported `serving_default` and `beam_search` signatures
(same tokens, same scores) to users of JAX and PyTorch, who cannot run the
TensorFlow graphs; under TensorFlow, `keras_s2s_attn.decoding.Decoder` is
the faster way.

Example:

>>> result = greedy_search(model, np.array([[5, 6, 7, 0]]))
>>> sorted(result)
['attention', 'ids', 'lengths', 'ranking_scores', 'scores']
>>> beam_search(model, np.array([[5, 6, 7, 0]]), beam_width=4, num_results=2)["ids"].shape
(1, 2, T)
"""

import numpy as np
from keras import ops

from keras_s2s_attn import models
from keras_s2s_attn.checks import non_negative, positive_int
from keras_s2s_attn.options import BeamOptions
from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID

# A log-probability for impossible tokens and hypotheses: finite, so sums never give NaN.
NEG_INF = -1e9

# The largest vocabulary whose tokens' input products are taken as a table, once
# per `encode` (vocabulary × 3·units values: 0.2 MB for the G2P phones): the target
# side's for the decoder's steps, the source side's for the TensorFlow encoders
# (decoding/packed.py; the XLA one only from tables a float32 export keeps). Above
# it the tokens' own embeddings are multiplied, as the model's graph does: a table
# of 32,000 word pieces would cost more than a whole batch's tokens.
MAX_TABLE_VOCABULARY = 1024


def default_max_length(source_length):
    """Most output tokens (the end id included) when the caller sets none: 2·S + 10.

    `source_length` is an int or a scalar tensor (the export's graphs)."""
    return 2 * source_length + 10


class ModelSteps:
    """The parts of a `build_seq2seq_model` model, for step-by-step decoding.

    Subclass it to change what a step computes (e.g. to add a bias to the
    log-probabilities, or a language model); every search then uses it.

    Args:
        model: A model from `build_seq2seq_model` (trained, or loaded from a
            `.keras` file).
        start_id: The first decoder input.
        end_id: The id that ends a sequence.
        memory_gates: Whether a step weighs the cell's `memory_gates`
            (Bahdanau; `AttentionDecoderCell.memory_gates`), taken in `encode`,
            instead of multiplying its context by the kernel. Faster where a
            step's time goes to reading weights, slower where its products
            are cheap: for a 256-unit G2P model under XLA, 19% less time a
            word greedy and 10% less in beam search at batch 1; 4% and 10%
            more at batch 256. The TensorFlow `Stepper` turns it on under XLA.

    Example:

    >>> steps = ModelSteps(model)
    >>> memory, states = steps.encode(np.array([[5, 6, 7]]))
    >>> log_probs, weights, states = steps.step(np.array([START_ID]), states, memory, 0)
    """

    def __init__(self, model, start_id=START_ID, end_id=END_ID, memory_gates=False):
        self.memory_gates = bool(memory_gates)
        self.encoder = model.get_layer(models.ENCODER)
        self.bridge = model.get_layer(models.BRIDGE)
        self.embedding = model.get_layer(models.TARGET_EMBEDDING)
        self.cell = model.get_layer(models.DECODER).cell
        self.projection = model.get_layer(models.OUTPUT_PROJECTION)
        self.start_id = int(start_id)
        self.end_id = int(end_id)

    @property
    def has_attention(self):
        """False for a model built with `attention=None` (its weights are all zero)."""
        return self.cell.attention is not None

    @property
    def vocabulary_sizes(self):
        """`(source, target)` vocabulary sizes."""
        return self.encoder.embedding.input_dim, self.projection.units

    def encode(self, source_ids):
        """Runs the encoder once.

        It also takes the decoder's `step_constants()`, once for the steps
        that follow (kept on this object until the next `encode`), and with
        `memory_gates=True` the cell's `memory_gates` where it has them.

        Args:
            source_ids: Int32 `(batch, S)`, 0 for padding.

        Returns:
            `(memory, states)`: a structure the steps read (the encoder
            states, the source mask, the prepared attention memory, the
            memory gates; `()` for either of the last two where there is
            none) and the decoder's initial states. Both are nests of
            `(batch, ...)` tensors, so a search may repeat them along the
            batch axis.
        """
        memory, summary = self.run_encoder(source_ids)
        mask = ops.not_equal(source_ids, PAD_ID)
        states = self.cell.get_initial_state(ops.shape(source_ids)[0], self.bridge(summary))
        prepared = self.cell.prepare_memory(memory)
        self._constants = self.step_constants()
        gates = None if self._constants is None or not self.memory_gates else (
            self.cell.memory_gates(memory, self._constants["weights"]))
        # Each part at its own place, an empty nest for one not there: a
        # subclass's prepare_memory may give None where gates exist.
        return (memory, mask) + tuple(() if part is None else part
                                      for part in (prepared, gates)), states

    def run_encoder(self, source_ids):
        """The encoder's `(memory, summary)` for `source_ids` (inference mode).

        The extension point for another way of running the same encoder
        (the TensorFlow `Stepper` runs it over the real tokens only)."""
        return self.encoder(source_ids, training=False)

    def step_constants(self):
        """What every step reads and none changes, computed once per `encode`.

        Returns:
            None where the cell has no `step_weights()` (a step then embeds
            its tokens and calls the cells), else a dict: `"weights"`, the
            cell's step weights, and for a target vocabulary of at most
            `MAX_TABLE_VOCABULARY` tokens `"table"`, every token's share of
            the first RNN layer's input product (its embedding times the
            kernel rows it meets), which a step looks its tokens up in
            instead of multiplying their embeddings.
        """
        weights = self.step_weights()
        if weights is None:
            return None
        if self.embedding.input_dim > MAX_TABLE_VOCABULARY:
            return {"weights": weights}
        return {"weights": weights, "table": self.target_table(weights)}

    def step_weights(self):
        """The cell's `step_weights()`, for `step_constants`: the extension
        point of a stepper that keeps parts of them (the TensorFlow `Stepper`)."""
        return self.cell.step_weights()

    def target_table(self, weights):
        """Every target token's share of the first RNN layer's input product:
        `(vocabulary, gates · units)`, its embedding times the kernel rows it
        meets (`weights`: the cell's `step_weights()`). Computed from the
        weights on each call; the TensorFlow `Stepper` can keep it instead."""
        every_id = ops.arange(self.embedding.input_dim, dtype="int32")
        return self.cell.project_inputs(self.embedding(every_id), weights)

    def constants_for_step(self):
        """The `step_constants()` of the last `encode` (computed now if there was none)."""
        constants = getattr(self, "_constants", None)
        return self.step_constants() if constants is None else constants

    def step(self, tokens, states, memory, t):
        """One decoder step.

        Args:
            tokens: Int32 `(batch,)`: the previous tokens.
            states: The decoder states (from `encode` or the previous step).
            memory: `encode`'s memory.
            t: The step index (scalar int32), for location-based scores.

        Returns:
            `(log_probs, weights, states)`: float32 `(batch, vocab)`
            log-probabilities with PAD and START set to `NEG_INF` (no search
            can pick them), float32 `(batch, S)` attention weights (zeros for
            a model without attention) and the new states.
        """
        encoded, mask = memory[0], memory[1]
        prepared, gates = (None if isinstance(part, tuple) else part for part in memory[2:4])
        constants = self.constants_for_step()
        if constants is None:
            inputs, fused = self.embedding(tokens), {}
        else:
            if "table" in constants:
                inputs = ops.take(constants["table"], tokens, axis=0)
            else:
                inputs = self.cell.project_inputs(self.embedding(tokens), constants["weights"])
            fused = {"step_weights": constants["weights"], "projected": True,
                     "memory_gates": gates}
        (output, weights), states = self.cell(
            inputs, states, encoded, memory_mask=mask,
            prepared_memory=prepared, step=t, training=False, **fused,
        )
        log_probs = ops.log_softmax(ops.cast(self.projection(output), "float32"))
        # PAD and START are not output tokens: a search that picked one would
        # emit a token that detokenisation then silently drops.
        reserved = ops.one_hot(ops.convert_to_tensor([PAD_ID, START_ID]), self.projection.units)
        log_probs += ops.sum(reserved, axis=0) * NEG_INF
        if weights is None:
            weights = ops.zeros_like(ops.cast(mask, "float32"))
        return log_probs, ops.cast(weights, "float32"), states


def gnmt_ranking(scores, lengths, coverage, source_mask, complete, length_penalty_weight,
                 coverage_penalty_weight):
    """GNMT's ranking score (Wu et al. 2016): log P / lp + cp.

    lp = ((5 + |Y|) / 6)^α; cp = β Σ_j log(min(Σ_i a_ij, 1)) over the real
    source positions j, counted for complete hypotheses only.

    Args:
        scores: Float `(batch, beam)` or `(batch, beam, vocab)` log-probabilities.
        lengths: Int lengths broadcastable to `scores`.
        coverage: Float `(batch, beam, S)`: attention summed over the steps.
        source_mask: Float `(batch, beam, S)`: 1 at real source positions.
        complete: Bool, broadcastable to `scores`: the hypothesis has ended.
        length_penalty_weight, coverage_penalty_weight: α, β ≥ 0.

    Returns:
        Float32 of the shape of `scores`.
    """
    lp = ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, length_penalty_weight)
    # Clipped, not `+ epsilon`: Grappler folds `(1 - real) + 1e-10` to
    # `1 - real` in float32, and log(0) = -inf times 0 is NaN. And a
    # `where`, not a product with the mask, for the same reason.
    covered = ops.log(ops.clip(coverage, 1e-10, 1.0))
    cp = coverage_penalty_weight * ops.sum(
        ops.where(source_mask > 0, covered, ops.zeros_like(covered)), axis=-1)  # (batch, beam)
    if len(scores.shape) == 3:
        cp = cp[..., None]
    return scores / lp + cp * ops.cast(complete, "float32")


def greedy_search(model, source_ids, max_output_length=None, steps=None):
    """The most likely token at every step, on any Keras backend.

    The results equal the TensorFlow `GreedySearch` strategy's (and the
    exported `serving_default` signature's).

    Args:
        model: A model from `build_seq2seq_model`.
        source_ids: Int `(batch, S)` array, 0 for padding.
        max_output_length: Most tokens per row (the end id included);
            default 2·S + 10.
        steps: A `ModelSteps` (or subclass) for `model`; default a new one.

    Returns:
        A dict of numpy arrays: `ids` `(batch, T)` (the end id included, 0
        after it), `lengths` `(batch,)` (tokens before the end id), `scores`
        and `ranking_scores` `(batch,)` (sums of log-probabilities: greedy
        ranks by them) and `attention` `(batch, T, S)` (absent for a model
        without attention); T is the steps taken.
    """

    def most_likely(log_probs, hypotheses):
        tokens = np.argmax(log_probs, axis=-1).astype("int32")
        return tokens, np.zeros_like(tokens)

    return _run(model, steps, source_ids, max_output_length, 1, most_likely,
                lambda final: final["scores"], num_results=1)


def beam_search(model, source_ids, beam_width=BeamOptions.beam_width,
                length_penalty_weight=BeamOptions.length_penalty_weight,
                coverage_penalty_weight=BeamOptions.coverage_penalty_weight,
                num_results=1, max_output_length=None, steps=None):
    """Beam search with GNMT's penalties (see `gnmt_ranking`), on any Keras backend.

    The results equal the TensorFlow `BeamSearch` strategy's (and the
    exported `beam_search` signature's).

    Args:
        model: A model from `build_seq2seq_model`.
        source_ids: Int `(batch, S)` array, 0 for padding.
        beam_width: Hypotheses kept per input.
        length_penalty_weight: α ≥ 0.
        coverage_penalty_weight: β ≥ 0.
        num_results: The K best hypotheses returned per input (≤ beam_width);
            with 1 the K axis is dropped.
        max_output_length: Most tokens per row (the end id included);
            default 2·S + 10.
        steps: A `ModelSteps` (or subclass) for `model`; default a new one.

    Returns:
        `greedy_search`'s dict, `ranking_scores` being what the results are
        sorted by, each with a K axis after the batch axis when
        `num_results > 1`.
    """
    width = positive_int(beam_width, "beam_width")
    alpha = non_negative(length_penalty_weight, "length_penalty_weight")
    beta = non_negative(coverage_penalty_weight, "coverage_penalty_weight")
    positive_int(num_results, "num_results")
    if num_results > width:
        raise ValueError(f"`num_results` ({num_results}) cannot exceed `beam_width` ({width}).")

    def ranked(hyp, complete, scores, lengths):
        return _to_numpy(gnmt_ranking(scores, lengths, hyp["coverage"], hyp["source_mask"],
                                      complete, alpha, beta))

    def best_continuations(log_probs, hyp):
        batch, _, vocab = log_probs.shape
        complete = hyp["finished"][..., None] | (np.arange(vocab) == hyp["end_id"])
        ranking = ranked(hyp, complete, hyp["scores"][..., None] + log_probs,
                         hyp["lengths"][..., None])
        # The `width` best of width × vocab, ties to the lower index as tf.math.top_k.
        best = np.argsort(-ranking.reshape(batch, -1), axis=-1, kind="stable")[:, :width]
        return (best % vocab).astype("int32"), best // vocab

    return _run(model, steps, source_ids, max_output_length, width, best_continuations,
                lambda final: ranked(final, final["finished"], final["scores"],
                                     final["lengths"]),
                num_results)


def _run(model, steps, source_ids, max_output_length, width, choose, ranking, num_results):
    """A search, its best `num_results` hypotheses read back as `beam_search` returns them."""
    source_ids = _checked_ids(source_ids)
    if max_output_length is None:
        max_output_length = default_max_length(source_ids.shape[1])
    max_length = positive_int(max_output_length, "max_output_length")
    steps = ModelSteps(model) if steps is None else steps
    final, history = _search(steps, source_ids, width, max_length, choose)
    ranks = ranking(final)
    order = np.argsort(-ranks, axis=-1, kind="stable")[:, :num_results]
    ids, attention = _backtrack(history, order, source_ids.shape[1])
    pick = lambda x: np.take_along_axis(x, order, axis=1)  # noqa: E731
    result = {"ids": ids, "lengths": pick(final["lengths"] - final["finished"]),
              "scores": pick(final["scores"]), "ranking_scores": pick(ranks),
              "attention": attention}
    if not steps.has_attention:
        del result["attention"]
    if num_results == 1:
        result = {key: value[:, 0] for key, value in result.items()}
    return result


def _checked_ids(source_ids):
    source_ids = np.asarray(ops.convert_to_numpy(source_ids))
    if source_ids.ndim != 2 or not np.issubdtype(source_ids.dtype, np.integer):
        raise ValueError("`source_ids` must be an integer (batch, S) array. Received "
                         f"shape {source_ids.shape}, dtype {source_ids.dtype}")
    return source_ids.astype("int32")


def _to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _search(steps, source_ids, width, max_length, choose):
    """The search loop: `(final hypotheses, per-step history)`, `(batch, width, ...)` arrays.

    Each step runs the model on every live hypothesis, masks the finished
    ones (they continue with padding only, at no cost) and lets `choose`
    pick each hypothesis's next token and parent, as `decoding.search` does
    in a `tf.while_loop`.
    """
    batch, source_length = source_ids.shape
    memory, states = steps.encode(ops.convert_to_tensor(source_ids))
    if width > 1:
        rows = np.repeat(np.arange(batch), width)  # hypotheses of an input adjacent
        memory, states = _take(memory, rows), _take(states, rows)
    real = source_ids != PAD_ID
    idle = ~real.any(axis=1, keepdims=True)  # rows of padding only never hold the loop up
    # Only hypothesis 0 is alive at the start, so a beam does not pick a token once per beam.
    first_alive = np.where(np.arange(width) == 0, 0.0, NEG_INF).astype("float32")
    hyp = {
        "tokens": np.full((batch, width), steps.start_id, "int32"),
        "scores": np.tile(first_alive, (batch, 1)),
        "finished": np.zeros((batch, width), bool),
        "lengths": np.zeros((batch, width), "int32"),
        "coverage": np.zeros((batch, width, source_length), "float32"),
        "source_mask": np.repeat(real[:, None].astype("float32"), width, axis=1),
        "end_id": steps.end_id,
    }
    history = []
    for t in range(max_length):
        if np.all(hyp["finished"] | idle):
            break
        log_probs, weights, states = steps.step(
            ops.convert_to_tensor(hyp["tokens"].reshape(-1)), states, memory, t)
        log_probs = _to_numpy(log_probs).reshape(batch, width, -1)
        weights = _to_numpy(weights).reshape(batch, width, -1)
        finished = hyp["finished"]
        pad_only = np.where(np.arange(log_probs.shape[-1]) == PAD_ID, 0.0, NEG_INF)
        log_probs = np.where(finished[..., None], pad_only.astype("float32"), log_probs)
        weights = np.where(finished[..., None], np.float32(0.0), weights)
        hyp = dict(hyp, lengths=hyp["lengths"] + ~finished, coverage=hyp["coverage"] + weights)
        tokens, parents = choose(log_probs, hyp)
        flat = parents * log_probs.shape[-1] + tokens
        hyp = dict(hyp, tokens=tokens,
                   scores=(np.take_along_axis(hyp["scores"], parents, axis=1)
                           + np.take_along_axis(log_probs.reshape(batch, -1), flat, axis=1)),
                   **{key: _take_rows(hyp[key], parents)
                      for key in ("finished", "lengths", "coverage")})
        hyp["finished"] = hyp["finished"] | (tokens == steps.end_id)
        if width > 1:
            states = _take(states, (parents + np.arange(batch)[:, None] * width).reshape(-1))
        history.append((tokens, parents, _take_rows(weights, parents)))
    return hyp, history


def _take_rows(x, parents):
    """`x` `(batch, width, ...)` indexed by parent hypothesis `(batch, width)`."""
    return np.take_along_axis(x, parents.reshape(parents.shape + (1,) * (x.ndim - 2)), axis=1)


def _take(nest, rows):
    """Each tensor of a (tuple or list) nest, rows `rows` of its first axis."""
    if isinstance(nest, (list, tuple)):
        return type(nest)(_take(x, rows) for x in nest)
    return ops.take(nest, ops.convert_to_tensor(rows.astype("int32")), axis=0)


def _backtrack(history, order, source_length):
    """Token ids `(batch, K, T)` and attention `(batch, K, T, S)` of the hypotheses `order`,
    read back along their parent pointers."""
    batch, results = order.shape
    ids = np.zeros((batch, results, len(history)), "int32")
    attention = np.zeros((batch, results, len(history), source_length), "float32")
    beams = order
    for t in range(len(history) - 1, -1, -1):
        tokens, parents, weights = history[t]
        ids[:, :, t] = np.take_along_axis(tokens, beams, axis=1)
        attention[:, :, t] = _take_rows(weights, beams)
        beams = np.take_along_axis(parents, beams, axis=1)
    return ids, attention
