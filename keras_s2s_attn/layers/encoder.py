"""The source encoder (embedding + bidirectional RNN stack) and its bridge."""

import keras
from keras import ops

import keras_s2s_attn.layers.recurrence as recurrence
from keras_s2s_attn.backends import cudnn_available
from keras_s2s_attn.checks import positive_int, rate
from keras_s2s_attn.options import CELL_TYPES


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class Encoder(keras.layers.Layer):
    """Embeds source ids and reads them with a stack of (bidirectional) RNNs.

    Id 0 is padding: it is masked in every RNN layer, and the mask is passed
    on with the memory, so attention layers downstream ignore padded
    positions.

    The RNN layers are Keras `GRU`/`LSTM` layers (in `Bidirectional`), and
    their weights are what is saved. Where no cuDNN kernel can run them, the
    layer computes their equations with each input product taken once over
    the whole sequence, outside the step loop (`layers.recurrence`): the
    same results, with less work per step (and its gradient one product
    instead of one per step). `run_rnn` is the extension point that runs
    one layer.

    Args:
        vocab_size: Size of the source vocabulary.
        embedding_dim: Width of the embedding.
        units: Width of each RNN direction.
        num_layers: Number of stacked RNN layers.
        cell_type: `"gru"` or `"lstm"`.
        bidirectional: Read the source in both directions (as Bahdanau et
            al.); memory vectors then have width `2 * units`.
        dropout: Dropout rate on the embeddings and between layers.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        source_ids: Int `(batch, S)`, 0 for padding.
        training: Python boolean.
        first_layer_products: None, or for inference, per direction of the
            first RNN layer (forward, backward) its input product of these
            ids, `(batch, S, gates)`, already taken (e.g. looked up in a table
            of every id's, as the XLA decoders of an export do): the layer then
            starts from them instead of the embeddings.
        to_last_step: For inference compiled with XLA: each RNN layer steps
            only up to the batch's last real token (`recurrence.run_sequence`'s
            `to_last_step`), not through the padding of a bucket shape.

    Returns:
        `(memory, summary)`: memory `(batch, S, memory_dim)` with a Keras
        mask, and summary `(batch, memory_dim)`, the final states of the top
        layer (forward and backward concatenated): what the bridge hands to
        the decoder.

    Example:

    >>> encoder = Encoder(vocab_size=50, embedding_dim=8, units=16)
    >>> memory, summary = encoder(np.array([[5, 6, 7, 0]]))
    >>> tuple(memory.shape), tuple(summary.shape)
    ((1, 4, 32), (1, 32))
    """

    def __init__(self, vocab_size, embedding_dim=256, units=256, num_layers=1,
                 cell_type="gru", bidirectional=True, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("vocab_size", vocab_size), ("embedding_dim", embedding_dim),
                            ("units", units), ("num_layers", num_layers)):
            positive_int(value, name)
        if cell_type not in CELL_TYPES:
            raise ValueError(
                f"`cell_type` must be one of {', '.join(map(repr, CELL_TYPES))}. "
                f"Received: cell_type={cell_type!r}"
            )
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.num_layers = num_layers
        self.cell_type = cell_type
        self.bidirectional = bool(bidirectional)
        self.dropout = rate(dropout, "dropout")
        self.supports_masking = True
        # Sub-layers compute in this layer's dtype policy (e.g. mixed_bfloat16).
        policy = self.dtype_policy
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding",
                                                dtype=policy)
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout", dtype=policy)
        rnn_class = keras.layers.GRU if cell_type == "gru" else keras.layers.LSTM
        self.rnns = []
        for i in range(num_layers):
            rnn = rnn_class(units, return_sequences=True, return_state=True,
                            name=f"{cell_type}_{i}", dtype=policy)
            if self.bidirectional:
                rnn = keras.layers.Bidirectional(rnn, name=f"bidirectional_{i}", dtype=policy)
            self.rnns.append(rnn)

    @property
    def memory_dim(self):
        return self.units * (2 if self.bidirectional else 1)

    def build(self, source_ids_shape):
        self.embedding.build(source_ids_shape)
        shape = tuple(source_ids_shape) + (self.embedding_dim,)
        for rnn in self.rnns:
            rnn.build(shape)
            shape = shape[:-1] + (self.memory_dim,)

    def call(self, source_ids, training=None, first_layer_products=None, to_last_step=False):
        if to_last_step and training:
            raise ValueError("`to_last_step` is for inference: its loop has no gradient on "
                             "every backend.")
        mask = ops.not_equal(source_ids, 0)
        if first_layer_products is None:
            x = self.dropout_layer(self.embedding(source_ids), training=training)
        elif training:
            raise ValueError("`first_layer_products` is for inference: training drops "
                             "out embeddings, not products.")
        else:
            x = None
        for index, rnn in enumerate(self.rnns):
            if index > 0:
                x = self.dropout_layer(x, training=training)
            # Passed only when given: a subclass's `run_rnn` may predate them.
            given = {} if index or first_layer_products is None else {
                "projected": first_layer_products}
            if to_last_step:
                given["to_last_step"] = True
            x, *states = self.run_rnn(rnn, x, mask, training=training, **given)
        # GRU: [h] per direction; LSTM: [h, c] per direction. The summary takes
        # the hidden state h of each direction.
        per_direction = len(states) // (2 if self.bidirectional else 1)
        summary = ops.concatenate(states[::per_direction], axis=-1)
        return x, summary

    def run_rnn(self, rnn, inputs, mask, training=None, projected=None, to_last_step=False):
        """Runs one RNN layer of the stack: what `rnn(inputs, mask=mask)` returns.

        Args:
            rnn: An entry of `self.rnns` (a Keras RNN layer, or a
                `Bidirectional` of one).
            inputs: `(batch, S, dim)`.
            mask: Boolean `(batch, S)`.
            training: Python boolean.
            projected: None, or per direction the input product of `inputs`
                (`layers.recurrence.project_inputs`), already taken; `inputs`
                is then not read (and may be None). Needs Keras GRU or LSTM
                cells (`recurrence.fusable`).
            to_last_step: Step only up to the batch's last real token, where
                `layers.recurrence` runs the layer (`run_sequence`'s option of
                that name; the Keras layer, where it runs, steps through all).

        Returns:
            `[outputs, *states]`: `(batch, S, width)` outputs, then the final
            states (of the forward direction, then of the backward one).
        """
        directions = ([(rnn.forward_layer, False), (rnn.backward_layer, True)]
                      if isinstance(rnn, keras.layers.Bidirectional) else [(rnn, False)])
        fusable = all(recurrence.fusable(layer.cell) for layer, _ in directions)
        if projected is None and (cudnn_available() or not fusable):
            return rnn(inputs, mask=mask, training=training)
        if not fusable:
            raise ValueError("`projected` needs Keras GRU or LSTM cells without their own "
                             f"dropout; layer {rnn.name!r} has others.")
        outputs, states = [], []
        for index, (layer, reverse) in enumerate(directions):
            output, final = recurrence.run_sequence(
                layer.cell, inputs, mask, reverse=reverse,
                zero_output_for_mask=layer.zero_output_for_mask,
                projected=None if projected is None else projected[index],
                to_last_step=to_last_step)
            outputs.append(output)
            states.extend(final)
        return [ops.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0], *states]

    def compute_mask(self, source_ids, mask=None):
        return [ops.not_equal(source_ids, 0), None]

    def compute_output_shape(self, source_ids_shape):
        batch, length = source_ids_shape[0], source_ids_shape[1]
        return (batch, length, self.memory_dim), (batch, self.memory_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim,
                "units": self.units,
                "num_layers": self.num_layers,
                "cell_type": self.cell_type,
                "bidirectional": self.bidirectional,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class StateBridge(keras.layers.Layer):
    """Maps the encoder summary to the decoder's initial RNN states.

    Each decoder state tensor gets its own tanh(W · summary + b), as Bahdanau
    et al. initialise s₀ = tanh(W_s h₁).

    Args:
        state_sizes: List of ints, the decoder's `rnn_state_sizes`.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        summary: `(batch, summary_dim)`.

    Returns:
        A list of `(batch, size)` tensors, one per entry of `state_sizes`.

    Example:

    >>> bridge = StateBridge([16, 16])
    >>> [tuple(s.shape) for s in bridge(np.zeros((2, 32), "float32"))]
    [(2, 16), (2, 16)]
    """

    def __init__(self, state_sizes, **kwargs):
        super().__init__(**kwargs)
        state_sizes = [int(size) for size in state_sizes]
        if not state_sizes or min(state_sizes) <= 0:
            raise ValueError(
                f"`state_sizes` must be a non-empty list of positive ints. Received: {state_sizes!r}"
            )
        self.state_sizes = state_sizes
        self.projections = [
            keras.layers.Dense(size, activation="tanh", name=f"state_{i}",
                               dtype=self.dtype_policy)
            for i, size in enumerate(state_sizes)
        ]

    def build(self, summary_shape):
        for projection in self.projections:
            projection.build(summary_shape)

    def call(self, summary):
        return [projection(summary) for projection in self.projections]

    def compute_output_shape(self, summary_shape):
        return [(summary_shape[0], size) for size in self.state_sizes]

    def get_config(self):
        config = super().get_config()
        config.update({"state_sizes": self.state_sizes})
        return config
