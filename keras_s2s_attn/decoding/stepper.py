"""Steppers: a trained model seen one decoder step at a time.

A stepper knows the model and nothing of the search: `encode` runs the
encoder once per batch (and the attention's memory projection), `step`
runs the model's own `AttentionDecoderCell` for one token, the same
implementation of the math as in training. `EnsembleStepper` is a stepper
made of steppers. The search strategies (`strategies.py`) drive either.
"""

import tensorflow as tf

from keras_s2s_attn import models
from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID

# A log-probability for impossible tokens and hypotheses: finite, so sums never give NaN.
NEG_INF = -1e9


class Stepper:
    """The parts of a `build_seq2seq_model` model, for step-by-step decoding.

    Subclass it to change what a step computes (e.g. to add a bias to the
    log-probabilities, or a language model); every strategy then uses it.

    Args:
        model: A model from `build_seq2seq_model` (trained, or loaded from a
            `.keras` file).
        start_id: The first decoder input.
        end_id: The id that ends a sequence.

    Example:

    >>> stepper = Stepper(model)
    >>> memory, states = stepper.encode(tf.constant([[5, 6, 7]]))
    >>> log_probs, weights, states = stepper.step(tf.constant([START_ID]), states, memory, 0)
    """

    def __init__(self, model, start_id=START_ID, end_id=END_ID):
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

        Args:
            source_ids: Int32 `(batch, S)`, 0 for padding.

        Returns:
            `(memory, states)`: a structure the steps read (the encoder
            states, the source mask, the prepared attention memory) and the
            decoder's initial states. Both are nests of `(batch, ...)`
            tensors, so a search may repeat them along the batch axis.
        """
        memory, summary = self.encoder(source_ids, training=False)
        mask = tf.not_equal(source_ids, PAD_ID)
        states = self.cell.get_initial_state(tf.shape(source_ids)[0], self.bridge(summary))
        prepared = self.cell.prepare_memory(memory)
        return (memory, mask) + (() if prepared is None else (prepared,)), states

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
        prepared = memory[2] if len(memory) > 2 else None
        (output, weights), states = self.cell(
            self.embedding(tokens), states, encoded, memory_mask=mask,
            prepared_memory=prepared, step=t, training=False,
        )
        log_probs = tf.nn.log_softmax(tf.cast(self.projection(output), tf.float32))
        # PAD and START are not output tokens: a search that picked one would
        # emit a token that detokenisation then silently drops.
        reserved = tf.one_hot([PAD_ID, START_ID], tf.shape(log_probs)[-1], on_value=NEG_INF,
                              off_value=0.0)
        log_probs += tf.reduce_sum(reserved, axis=0)
        if weights is None:
            weights = tf.zeros(tf.shape(mask), tf.float32)
        return log_probs, tf.cast(weights, tf.float32), states


class EnsembleStepper:
    """Several steppers decoded as one model whose next-token distribution is
    the mean of theirs.

    Each member runs its own encoder and decoder cell; at every step the
    members' probabilities are averaged (log of the mean probability, as
    fairseq and Marian ensembles do). The attention weights are the mean of
    the attending members' (still summing to 1 over the real source
    positions). The members must share the source and target vocabularies.

    Args:
        steppers: Two or more `Stepper`s (any sizes, cells and scores).

    Example:

    >>> ensemble = EnsembleStepper([Stepper(model_a), Stepper(model_b)])
    >>> GreedySearch().decode(ensemble, tf.constant([[5, 6, 7]]), max_length=10)
    """

    def __init__(self, steppers):
        self.members = list(steppers)
        if len(self.members) < 2:
            raise ValueError(f"`steppers` must hold at least 2 steppers for an ensemble; got "
                             f"{len(self.members)} (use the stepper itself for one).")
        sizes = [member.vocabulary_sizes for member in self.members]
        if len(set(sizes)) != 1:
            raise ValueError("The ensemble's models must share their vocabularies; got "
                             "(source, target) vocabulary sizes " + ", ".join(map(str, sizes)))
        self.start_id = self.members[0].start_id
        self.end_id = self.members[0].end_id

    @property
    def has_attention(self):
        return any(member.has_attention for member in self.members)

    @property
    def vocabulary_sizes(self):
        return self.members[0].vocabulary_sizes

    def encode(self, source_ids):
        """Each member's `encode`: `(memories, states)`, tuples with one entry per member."""
        encoded = [member.encode(source_ids) for member in self.members]
        return tuple(e[0] for e in encoded), tuple(e[1] for e in encoded)

    def step(self, tokens, states, memory, t):
        """One step of every member: log of the mean probability, mean attention."""
        steps = [member.step(tokens, member_states, member_memory, t)
                 for member, member_states, member_memory in zip(self.members, states, memory)]
        log_probs = (tf.reduce_logsumexp(tf.stack([s[0] for s in steps]), axis=0)
                     - tf.math.log(float(len(steps))))
        attending = [s[1] for member, s in zip(self.members, steps) if member.has_attention]
        weights = (tf.add_n(attending) / float(len(attending)) if attending
                   else tf.zeros_like(steps[0][1]))
        return log_probs, weights, tuple(s[2] for s in steps)


def make_stepper(model_or_models, start_id=START_ID, end_id=END_ID):
    """A `Stepper` for one model, an `EnsembleStepper` for a list of two or more."""
    if isinstance(model_or_models, (list, tuple)):
        if len(model_or_models) == 1:
            return Stepper(model_or_models[0], start_id, end_id)
        return EnsembleStepper([Stepper(model, start_id, end_id) for model in model_or_models])
    return Stepper(model_or_models, start_id, end_id)
