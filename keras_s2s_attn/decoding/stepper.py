"""Steppers: a trained model seen one decoder step at a time.

A stepper knows the model and nothing of the search: `encode` runs the
encoder once per batch (and the attention's memory projection), `step`
runs the model's own `AttentionDecoderCell` for one token, the same
implementation of the math as in training. `EnsembleStepper` is a stepper
made of steppers. The search strategies (`strategies.py`) drive either.
"""

from keras_s2s_attn.backends import require_tensorflow_backend

require_tensorflow_backend(__name__)  # a clear message before TensorFlow is imported

import tensorflow as tf

from keras_s2s_attn.decoding.packed import can_pack, first_layer_tables, packed_encode
from keras_s2s_attn.generation import NEG_INF, ModelSteps  # noqa: F401  (NEG_INF: re-exported)
from keras_s2s_attn.special_ids import END_ID, START_ID


class Stepper(ModelSteps):
    """The parts of a `build_seq2seq_model` model, for step-by-step decoding.

    `generation.ModelSteps` under the name the strategies know: its `encode`
    and `step` are `keras.ops`, so they run inside the search's TensorFlow
    graph as they run eagerly on any backend. Subclass it to change what a
    step computes (e.g. to add a bias to the log-probabilities, or a
    language model); every strategy then uses it.

    Example:

    >>> stepper = Stepper(model)
    >>> memory, states = stepper.encode(tf.constant([[5, 6, 7]]))
    >>> log_probs, weights, states = stepper.step(tf.constant([START_ID]), states, memory, 0)

    Args:
        model, start_id, end_id: As for `ModelSteps`.
        dynamic_shapes: Whether the graph may change a tensor's size as it
            runs (False under XLA). If so, the encoder runs over the real
            tokens only (`packed.packed_encode`, where `can_pack` allows) and
            compactable searches drop inputs that have finished: the same
            results, much less work on batches of mixed lengths. A subclass
            whose `step` reads per-row tensors of its own must carry them in
            `memory` or `states`, which the search shrinks with the batch.
            If not (XLA's fixed shapes), the encoder steps up to the batch's
            last real token, not through the bucket's padding (the Encoder's
            `to_last_step`, where `can_pack` allows), and a step weighs the
            memory's share of its input product (`ModelSteps`'
            `memory_gates`), which pays at the small batches one compiles for
            latency.
    """

    def __init__(self, model, start_id=START_ID, end_id=END_ID, dynamic_shapes=True):
        super().__init__(model, start_id, end_id, memory_gates=not dynamic_shapes)
        self.dynamic_shapes = bool(dynamic_shapes)
        self.packed = self.dynamic_shapes and can_pack(self.encoder)
        self._kept = None

    def keep_tables(self):
        """Computes the tables of input products that every call would compute
        from the weights alone (`target_table`, the encoder's
        `first_layer_tables`) once, now, as variables that later calls read.
        The packed encoder looks its tokens up in the latter (otherwise made
        on each call); so does the fixed-shape encoder of XLA (otherwise
        multiplying its tokens' embeddings). The decoder's first kernel is
        kept in the parts its steps read (`step_weights`).

        For weights that no longer change, as in a float32 export: computing
        the tables took 6-8% of a lone word's greedy decoding (the model of
        `benchmarks/vs_pytorch.py`). A change of the model's weights after
        this call does not reach the tables. A model computing in another
        dtype than float32 (`mixed_bfloat16`) keeps none: its products round
        differently in each kernel, so a table made now would not give what
        the model computes in its graph (attention off by up to 0.007).

        Returns:
            The `tf.Module` holding the variables (none if nothing is kept),
            for a SavedModel to track.
        """
        kept, self._kept = tf.Module(), None
        kept.target, kept.source, kept.first_layer = None, [], None
        if self.cell.compute_dtype != "float32":
            return kept
        with tf.init_scope():
            constants = self.step_constants() or {}
            table = constants.get("table")
            kept.target = None if table is None else tf.Variable(table, trainable=False)
            kept.source = [tf.Variable(t, trainable=False) for t in (
                first_layer_tables(self.encoder) if can_pack(self.encoder) else [])]
            if "weights" in constants:
                kept.first_layer = _first_layer_parts(constants["weights"], table is None)
        self._kept = kept
        return kept

    def step_weights(self):
        """The cell's `step_weights()`, from the kept parts of its first layer's
        kernel after `keep_tables()`: the graph then reads no slice of it."""
        if self._kept is None or self._kept.first_layer is None:
            return super().step_weights()
        return self.cell.step_weights(first_layer={
            name: tf.convert_to_tensor(part) for name, part in self._kept.first_layer.items()})

    def target_table(self, weights):
        """The kept table after `keep_tables()`, else `ModelSteps.target_table`."""
        if self._kept is not None and self._kept.target is not None:
            return tf.convert_to_tensor(self._kept.target)
        return super().target_table(weights)

    def run_encoder(self, source_ids):
        tables = None if self._kept is None else [
            tf.convert_to_tensor(table) for table in self._kept.source]
        if self.packed:
            return packed_encode(self.encoder, source_ids, tables)
        if self.dynamic_shapes or not can_pack(self.encoder):
            return super().run_encoder(source_ids)
        # Fixed shapes (XLA): the layers over the batch's real columns of the
        # bucket only, from the kept tables' rows where kept.
        given = {"to_last_step": True}
        if tables:
            given["first_layer_products"] = [tf.gather(table, source_ids) for table in tables]
        return self.encoder(source_ids, training=False, **given)

    def constants_for_step(self):
        """The last `encode`'s `step_constants()` where this step's graph can
        read them (the search's loop runs inside the graph that encoded),
        else computed here."""
        constants = getattr(self, "_constants", None)
        if constants is None or not _readable_here(tf.nest.flatten(constants)[0]):
            return self.step_constants()
        return constants


def _first_layer_parts(weights, with_target):
    """The first decoder layer's kernel rows as variables of their own: those
    after the target input's (`rest`), which the memory gates or each step
    multiply, and the target's where no table replaces them.

    Kept contiguous: a slice of the kernel taken in the graph is a copy on
    every call (XLA's took 0.09 ms of a lone word's 1.8 ms, the model of
    `benchmarks/vs_pytorch.py`); stored instead of the kernel, not beside it.
    """
    first = weights["layers"][0]
    names = ("rest", "target") if with_target else ("rest",)
    return {name: tf.Variable(first[name], trainable=False) for name in names}


def _readable_here(tensor):
    """Whether `tensor` belongs to the graph being built or to one it is nested in
    (eagerly: whether it is an eager tensor)."""
    if tf.executing_eagerly():
        return not tf.is_symbolic_tensor(tensor)
    if not tf.is_symbolic_tensor(tensor):
        return False  # an eager value would be baked into the graph: take fresh ones
    graph = tf.compat.v1.get_default_graph()
    while graph is not None:
        if graph is tensor.graph:
            return True
        graph = getattr(graph, "outer_graph", None)
    return False


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
        self.dynamic_shapes = all(getattr(member, "dynamic_shapes", False)
                                  for member in self.members)

    @property
    def has_attention(self):
        return any(member.has_attention for member in self.members)

    @property
    def vocabulary_sizes(self):
        return self.members[0].vocabulary_sizes

    def keep_tables(self):
        """Each member's `Stepper.keep_tables()`, in one `tf.Module`."""
        kept = tf.Module()
        kept.members = [member.keep_tables() for member in self.members]
        return kept

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


def make_stepper(model_or_models, start_id=START_ID, end_id=END_ID, dynamic_shapes=True):
    """A `Stepper` for one model, an `EnsembleStepper` for a list of two or more."""
    models = (list(model_or_models) if isinstance(model_or_models, (list, tuple))
              else [model_or_models])
    steppers = [Stepper(model, start_id, end_id, dynamic_shapes) for model in models]
    return steppers[0] if len(steppers) == 1 else EnsembleStepper(steppers)
