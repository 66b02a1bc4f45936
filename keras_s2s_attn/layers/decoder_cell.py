"""One decoder time step with attention, in the Bahdanau or the Luong order."""

import keras
from keras import ops

from keras_s2s_attn.checks import positive_int, rate
import keras_s2s_attn.layers.recurrence as recurrence
from keras_s2s_attn.layers.attention import BahdanauLuongAttention
from keras_s2s_attn.options import CELL_TYPES, STYLES


def _flat_sizes(state_size):
    """A cell's `state_size` (int or list of ints) as a list of ints."""
    if isinstance(state_size, (list, tuple)):
        return [int(size) for size in state_size]
    return [int(state_size)]


def _output_size(cell):
    """The width of an RNN cell's output: its `output_size`, else its first state's."""
    return getattr(cell, "output_size", None) or _flat_sizes(cell.state_size)[0]


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class AttentionDecoderCell(keras.layers.Layer):
    """One decoder step: a (stacked) RNN cell with attention over encoder memory.

    `style="bahdanau"` (Bahdanau et al. 2015): attend with the previous top
    state s_{t−1} to get c_t, run the RNN on [y_{t−1}; c_t] to get s_t, and
    output [s_t; c_t] (or tanh(W_o [s_t; c_t]) when `attention_layer_size` is
    set).

    `style="luong"` (Luong et al. 2015): run the RNN on y_{t−1} (with
    `input_feeding=True`, on [y_{t−1}; h̃_{t−1}]) to get h_t, attend with h_t
    to get c_t, and output the attentional vector h̃_t = tanh(W_c [c_t; h_t]).

    With `attention=None` the cell is a plain stacked RNN decoder: the source
    reaches it only through the initial state (the encoder-decoder baseline).

    Unlike a Keras RNN cell, the call takes the encoder memory explicitly
    (Keras 3's `keras.layers.RNN` has no `constants` argument) and returns the
    attention weights with the output, so a decoder can keep the alignment
    history. `AttentionDecoder` runs it over a sequence; the inference
    decoders step it one token at a time: one implementation of the math.

    Extension points: `rnn_step`, `attend` and `combine` are the three stages
    of a step; a subclass may override any of them.

    A loop over steps can hand every step the same `step_weights()`, taken
    once before the loop, and the target inputs' share of the first RNN
    layer's input product for all steps at once (`project_inputs`); a step
    then multiplies only the context (Bahdanau) or the input-feeding vector
    (Luong) by the kernel, and a sequence's target inputs go through one
    matrix product instead of one per step. `AttentionDecoder` does this.
    A decoder that steps many times over one memory can take the context's
    product on the memory side too, once per source (`memory_gates`), as the
    XLA decoders do (`generation.ModelSteps(memory_gates=True)`).
    It applies to Keras' `GRUCell` and `LSTMCell` (see
    `layers.recurrence.fusable`); with other cells `step_weights()` is None
    and each step runs the cells as they are.

    The state is a flat list: the states of each RNN layer from bottom to top
    (one tensor per GRU layer, [h, c] per LSTM layer), then, for Luong style
    with input feeding, the previous attentional vector h̃_{t−1}.

    Args:
        units: Width of each RNN layer.
        attention: A `BahdanauLuongAttention` (or subclass) instance, or None.
        cell_type: `"gru"`, `"lstm"`, or a Keras RNN cell instance (then
            `num_layers` must be 1) or a list of cell instances.
        style: `"bahdanau"` or `"luong"`.
        input_feeding: Luong style only: feed h̃_{t−1} into the next step.
        attention_layer_size: Width of the attentional vector (Luong; default
            `units`) or of the output projection (Bahdanau; default none, the
            output is the concatenation [s_t; c_t]).
        num_layers: Number of stacked RNN layers; attention uses the top one.
        dropout: Dropout rate between stacked layers and on the output.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: `(batch, input_dim)`, the embedded previous target token;
            with `projected=True`, its `project_inputs` instead.
        states: The flat state list described above.
        memory: `(batch, S, memory_dim)` encoder states.
        memory_mask: Boolean `(batch, S)`, True at real source positions.
        prepared_memory: `attention.prepare_memory(memory)`, computed once
            per source; computed here when None.
        step: The decoder position t (local-m attention needs it).
        training: Python boolean.
        dropout_masks: None (dropout draws its own masks), or this step's
            slice of `dropout_masks(...)`, as `AttentionDecoder` passes.
        step_weights: None, or `step_weights()` taken before the step loop.
        projected: Whether `inputs` are `project_inputs(...)` (needs
            `step_weights`).
        memory_gates: None, or `memory_gates(memory, step_weights)`, taken
            once per source (needs `projected=True`): a Bahdanau step then
            weighs its rows by the attention weights instead of multiplying
            the context by the kernel. For inference.

    Returns:
        `((output, attention_weights), new_states)`: output `(batch,
        output_size)`, weights `(batch, S)` (None without attention), and the
        new flat state list.

    Example:

    >>> cell = AttentionDecoderCell(16, BahdanauLuongAttention(score="additive"))
    >>> memory = np.random.rand(2, 5, 8).astype("float32")
    >>> cell.build((2, 4), (2, 5, 8))
    >>> states = cell.get_initial_state(2)
    >>> (output, weights), states = cell(np.zeros((2, 4), "float32"), states, memory)
    >>> tuple(output.shape), tuple(weights.shape)
    ((2, 24), (2, 5))
    """

    def __init__(
        self,
        units,
        attention,
        cell_type="gru",
        style="bahdanau",
        input_feeding=True,
        attention_layer_size=None,
        num_layers=1,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        positive_int(units, "units")
        positive_int(num_layers, "num_layers")
        positive_int(attention_layer_size, "attention_layer_size", allow_none=True)
        if style not in STYLES:
            raise ValueError(
                f"`style` must be one of {', '.join(map(repr, STYLES))}. Received: style={style!r}"
            )
        if isinstance(attention, dict):
            attention = keras.saving.deserialize_keras_object(attention)
        if attention is not None and not isinstance(attention, BahdanauLuongAttention):
            raise ValueError(
                "`attention` must be a BahdanauLuongAttention instance (or subclass) or "
                f"None. Received: attention={attention!r}"
            )
        self.units = units
        self.attention = attention
        self.style = style
        self.input_feeding = bool(input_feeding) and style == "luong" and attention is not None
        self.attention_layer_size = attention_layer_size
        self.dropout = rate(dropout, "dropout")
        self.cell_type = cell_type
        self.cells = self._make_cells(cell_type, units, num_layers, self.dtype_policy)
        self.num_layers = len(self.cells)
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout",
                                                  dtype=self.dtype_policy)
        self.output_dense = None
        if attention is not None and (style == "luong" or attention_layer_size is not None):
            self.output_dense = keras.layers.Dense(
                attention_layer_size or units, activation="tanh", use_bias=False,
                name="attention_layer", dtype=self.dtype_policy,
            )

    @staticmethod
    def _make_cells(cell_type, units, num_layers, dtype):
        if isinstance(cell_type, str):
            if cell_type not in CELL_TYPES:
                raise ValueError(
                    f"`cell_type` must be one of {', '.join(map(repr, CELL_TYPES))} or a "
                    f"Keras RNN cell instance. Received: cell_type={cell_type!r}"
                )
            make = keras.layers.GRUCell if cell_type == "gru" else keras.layers.LSTMCell
            # The cells' own dropout caches a mask per sequence, which cannot live
            # inside the step loop; this layer applies dropout itself.
            return [make(units, name=f"{cell_type}_cell_{i}", dtype=dtype)
                    for i in range(num_layers)]
        cells = cell_type if isinstance(cell_type, (list, tuple)) else [cell_type]
        cells = [
            keras.saving.deserialize_keras_object(c) if isinstance(c, dict) else c
            for c in cells
        ]
        for cell in cells:
            if not isinstance(cell, keras.layers.Layer) or not hasattr(cell, "state_size"):
                raise ValueError(
                    "`cell_type` must be 'gru', 'lstm', a Keras RNN cell (a layer with "
                    f"`state_size`) or a list of them. Received: cell_type={cell_type!r}"
                )
        if not isinstance(cell_type, (list, tuple)) and num_layers != 1:
            raise ValueError(
                "With a cell instance as `cell_type`, `num_layers` must be 1 (pass a list "
                f"of cells to stack them). Received: num_layers={num_layers}"
            )
        return list(cells)

    # ------------------------------------------------------------------ sizes
    @property
    def rnn_state_sizes(self):
        """Sizes of the RNN part of the state, one int per state tensor."""
        sizes = []
        for cell in self.cells:
            sizes.extend(_flat_sizes(cell.state_size))
        return sizes

    @property
    def state_size(self):
        sizes = self.rnn_state_sizes
        if self.input_feeding:
            sizes.append(self.attention_layer_size or self.units)
        return sizes

    @property
    def top_output_size(self):
        return _output_size(self.cells[-1])

    @property
    def output_size(self):
        if self.attention is None:
            return self.top_output_size
        if self.output_dense is not None:
            return self.attention_layer_size or self.units
        return self.top_output_size + self.memory_dim

    # ------------------------------------------------------------------ build
    def build(self, inputs_shape, memory_shape=None):
        input_dim = inputs_shape[-1]
        self.target_input_dim = input_dim
        top_size = self.top_output_size
        self.memory_dim = None
        if self.attention is not None:
            if memory_shape is None:
                raise ValueError("An AttentionDecoderCell with attention needs `memory`.")
            self.memory_dim = memory_shape[-1]
            if not self.attention.built:
                self.attention.build((None, top_size), memory_shape)
        first_input = input_dim
        if self.attention is not None and self.style == "bahdanau":
            first_input += self.memory_dim
        if self.input_feeding:
            first_input += self.attention_layer_size or self.units
        size = first_input
        for cell in self.cells:
            if not cell.built:
                cell.build((None, size))
            size = _output_size(cell)
        if self.output_dense is not None and not self.output_dense.built:
            combine_dim = top_size + self.memory_dim
            self.output_dense.build((None, combine_dim))

    # ----------------------------------------------------------------- states
    def get_initial_state(self, batch_size, rnn_states=None):
        """The flat initial state list.

        Args:
            batch_size: Batch size (int or scalar tensor).
            rnn_states: Optional list of RNN states (one tensor per entry of
                `rnn_state_sizes`, e.g. bridged from the encoder). Zeros when
                None. The input-feeding state always starts at zero.

        Returns:
            A list matching `state_size`.
        """
        if rnn_states is None:
            rnn_states = [ops.zeros((batch_size, size), self.compute_dtype)
                          for size in self.rnn_state_sizes]
        else:
            rnn_states = list(rnn_states)
            if len(rnn_states) != len(self.rnn_state_sizes):
                raise ValueError(
                    f"`rnn_states` must hold {len(self.rnn_state_sizes)} tensors of sizes "
                    f"{self.rnn_state_sizes}; received {len(rnn_states)}."
                )
        if self.input_feeding:
            rnn_states.append(
                ops.zeros((batch_size, self.attention_layer_size or self.units), self.compute_dtype)
            )
        return rnn_states

    def split_states(self, states):
        """Splits a flat state list into (rnn_states, previous attentional vector)."""
        states = list(states)
        count = len(self.rnn_state_sizes)
        feed = states[count] if self.input_feeding else None
        return states[:count], feed

    # ---------------------------------------------------------------- dropout
    def dropout_masks(self, batch_size, steps, training=None):
        """This cell's dropout masks for `steps` steps, drawn at once.

        `AttentionDecoder` draws them before its step loop and hands each step
        its slice (`dropout_masks` of `call` and `rnn_step`): a draw inside the
        loop would advance a seed generator from within `ops.scan`, which JAX
        refuses. Every step still gets masks of its own.

        Args:
            batch_size: Batch size (int or scalar tensor).
            steps: Number of steps.
            training: Python boolean; no masks unless True.

        Returns:
            None without dropout, else `{"between": [...], "output": ...}`:
            `(steps, batch, size)` masks (0, or 1 / (1 - rate)) for the output
            of each stacked layer but the top one, and for the step's output.
        """
        if not training or not self.dropout:
            return None

        def draw(size):
            ones = ops.ones((steps, batch_size, size), self.compute_dtype)
            return keras.random.dropout(ones, self.dropout,
                                        seed=self.dropout_layer.seed_generator)

        return {"between": [draw(_output_size(cell)) for cell in self.cells[:-1]],
                "output": draw(self.output_size)}

    def _dropout(self, x, training, mask=None):
        """Dropout on `x`: by `mask` (a step's slice of `dropout_masks`) when given."""
        return x * mask if mask is not None else self.dropout_layer(x, training=training)

    # ------------------------------------------------------------ sub-steps
    def step_weights(self, first_layer=None):
        """The loop-invariant weights of a step, taken once before a step loop.

        Args:
            first_layer: None, or the first RNN layer's input kernel already
                taken apart and kept elsewhere: a dict with `"rest"` (its rows
                after the target input's) and, where the caller still
                projects target inputs with it, `"target"`. The layer's kernel
                is then not read (the TensorFlow `Stepper` of an export keeps
                the parts as variables of their own: a slice of the kernel
                taken in the graph is copied on every call). Steps must then
                take projected target inputs (`projected=True`).

        Returns:
            None when a cell is not one `layers.recurrence` computes, or when
            a subclass overrides `call` or `rnn_step` (the steps then call
            the cells, as before), else a dict with, per RNN layer, its
            input kernel (the first layer's split into the rows that multiply
            the target input and those that multiply the rest of its input)
            and its recurrent weights.
        """
        # A subclass with its own `call` or `rnn_step` gets the cells called.
        own = type(self).call is not AttentionDecoderCell.call or (
            type(self).rnn_step is not AttentionDecoderCell.rnn_step)
        if own or not all(recurrence.fusable(cell) for cell in self.cells):
            return None
        layers = []
        for index, cell in enumerate(self.cells):
            weights = {"recurrent": recurrence.recurrent_weights(cell)}
            if index == 0 and first_layer is not None:
                weights.update(first_layer)
            else:
                kernel = recurrence.input_kernel(cell)
                weights["kernel"] = kernel
                if index == 0:
                    # A split, not two slices: under TensorFlow the gradient of a
                    # split is one concatenation, where each slice's fills a
                    # zero kernel-sized tensor and an AddN sums them.
                    weights["target"], weights["rest"] = ops.split(
                        kernel, [self.target_input_dim], axis=0)
            layers.append(weights)
        return {"layers": layers}

    def project_inputs(self, inputs, step_weights):
        """The target inputs' share of the first RNN layer's input product (its
        bias included), for inputs of any leading shape: `(batch, T,
        input_dim)` for a whole sequence at once.

        Args:
            inputs: `(..., input_dim)` embedded target tokens.
            step_weights: `step_weights()` (not None).

        Returns:
            `(..., gates)`, what a step takes with `projected=True`.
        """
        return recurrence.project_inputs(self.cells[0], inputs,
                                         step_weights["layers"][0]["target"])

    def memory_gates(self, memory, step_weights):
        """The memory's share of the first RNN layer's input product, for inference.

        A Bahdanau step multiplies its context c_t = Σ_s a_ts m_s by the kernel
        rows W_c that meet it; that equals Σ_s a_ts (m_s W_c), the attention
        weights applied to this product of the memory. Taken once per source,
        it saves each step the product by W_c (the largest weight of a step)
        for a weighted sum over S rows: at batch 1 a step of the model of
        `benchmarks/vs_pytorch.py` then reads less than half the weights it
        did. Training keeps the context's product: there the weighted sum's
        gradient costs what the product saves, and the attention's dropout
        weighs the context with other weights.

        Args:
            memory: `(batch, S, memory_dim)` encoder states.
            step_weights: `step_weights()`, or None.

        Returns:
            `(batch, S, gates)`, what `call` takes as `memory_gates`; None where
            the identity does not hold or is not computed here: Luong style, no
            attention, no `step_weights`, a subclass's own `attend` or
            attention `call`, or a compute dtype other than float32 (16-bit
            products would round otherwise than the trained model's).
        """
        if (step_weights is None or self.attention is None or self.style != "bahdanau"
                or self.compute_dtype != "float32"
                or type(self).attend is not AttentionDecoderCell.attend
                or type(self.attention).call is not BahdanauLuongAttention.call):
            return None
        return ops.matmul(memory, step_weights["layers"][0]["rest"])

    def rnn_step(self, inputs, rnn_states, training=None, dropout_masks=None,
                 step_weights=None, projected=None):
        """Runs the stacked RNN one step.

        Args:
            inputs: `(batch, input_dim)`; with `projected`, the rest of the
                first layer's input after the target input (or None when there
                is none).
            rnn_states: Flat list of the RNN layers' states.
            training: Python boolean.
            dropout_masks: None, or this step's slice of `dropout_masks(...)`.
            step_weights: None (the cells are called), or `step_weights()`.
            projected: None, or `project_inputs` of the step's target input.

        Returns:
            `(top_output, new_rnn_states)`.
        """
        new_states = []
        position = 0
        x = inputs
        for index, cell in enumerate(self.cells):
            count = len(_flat_sizes(cell.state_size))
            cell_states = rnn_states[position: position + count]
            position += count
            if index > 0:
                mask = None if dropout_masks is None else dropout_masks["between"][index - 1]
                x = self._dropout(x, training, mask)
            if step_weights is None:
                x, cell_new = cell(x, cell_states if count > 1 else cell_states[0],
                                   training=training)
                cell_new = cell_new if isinstance(cell_new, (list, tuple)) else [cell_new]
            else:
                weights = step_weights["layers"][index]
                if index == 0 and projected is not None:
                    gates = projected if x is None else (
                        projected + ops.matmul(x, weights["rest"]))
                else:
                    gates = recurrence.project_inputs(cell, x, weights["kernel"])
                x, cell_new = recurrence.step(cell, gates, cell_states, weights["recurrent"])
            new_states.extend(cell_new)
        return x, new_states

    def attend(self, query, memory, memory_mask=None, prepared_memory=None, step=None,
               training=None):
        """Context vector(s) and attention weights for `query`.

        Args:
            query: `(batch, units)` or `(batch, T, units)`.
            memory, memory_mask, prepared_memory, step, training: As in `call`.

        Returns:
            `(context, weights)`: the context in this cell's compute dtype, the
            weights in float32 (as the attention computes both).
        """
        context, weights = self.attention(
            query, memory, memory_mask=memory_mask, step=step,
            prepared_memory=prepared_memory, training=training,
            return_attention_scores=True,
        )
        return ops.cast(context, self.compute_dtype), weights

    def combine(self, rnn_output, context, training=None):
        """The step's output from the top RNN output and the context.

        Luong: h̃ = tanh(W_c [c; h]). Bahdanau: [s; c], or tanh(W_o [s; c])
        with `attention_layer_size`. Works on `(batch, d)` and `(batch, T, d)`.
        """
        if self.style == "luong":
            joined = ops.concatenate([context, rnn_output], axis=-1)
        else:
            joined = ops.concatenate([rnn_output, context], axis=-1)
        if self.output_dense is not None:
            joined = self.output_dense(joined)
        return joined

    def prepare_memory(self, memory):
        """`attention.prepare_memory(memory)`, or None without attention."""
        if self.attention is None:
            return None
        return self.attention.prepare_memory(memory)

    # ------------------------------------------------------------------- call
    def call(self, inputs, states, memory=None, memory_mask=None, prepared_memory=None,
             step=None, training=None, dropout_masks=None, step_weights=None, projected=False,
             memory_gates=None):
        rnn_states, feed = self.split_states(states)
        output_mask = None if dropout_masks is None else dropout_masks["output"]
        # With `projected`, the RNN takes the target input's projection and the
        # rest of its input apart; else the whole input, joined.
        if projected and step_weights is None:
            raise ValueError("`projected=True` needs the `step_weights()` of this cell.")
        if memory_gates is not None and not projected:
            raise ValueError("`memory_gates` needs `projected=True` inputs.")
        if memory_gates is not None and training and self.attention.dropout:
            raise ValueError("`memory_gates` is for inference: the attention's dropout "
                             "weighs the context with other weights in training.")
        rnn_kwargs = {"training": training, "dropout_masks": dropout_masks,
                      "step_weights": step_weights, "projected": inputs if projected else None}

        def rnn_input(rest):
            if projected:
                return rest
            return inputs if rest is None else ops.concatenate([inputs, rest], axis=-1)

        if self.attention is None:
            output, new_states = self.rnn_step(rnn_input(None), rnn_states, **rnn_kwargs)
            return (self._dropout(output, training, output_mask), None), new_states
        if prepared_memory is None:
            prepared_memory = self.prepare_memory(memory)
        if self.style == "bahdanau":
            query = self._top_hidden(rnn_states)
            context, weights = self.attend(
                query, memory, memory_mask, prepared_memory, step, training
            )
            if memory_gates is None:
                top, new_states = self.rnn_step(rnn_input(context), rnn_states, **rnn_kwargs)
            else:
                # Σ_s a_ts (m_s W_c) for c_t W_c (`memory_gates`), as a product and
                # a sum, which XLA fuses into one loop (a batched (1 × S) matrix
                # product took 4% longer at batch 256 there).
                weighed = ops.sum(ops.expand_dims(weights, -1) * memory_gates, axis=1)
                rnn_kwargs["projected"] = inputs + weighed
                top, new_states = self.rnn_step(None, rnn_states, **rnn_kwargs)
            output = self.combine(top, context, training=training)
        else:
            top, new_states = self.rnn_step(
                rnn_input(feed if self.input_feeding else None), rnn_states, **rnn_kwargs)
            context, weights = self.attend(
                top, memory, memory_mask, prepared_memory, step, training
            )
            output = self.combine(top, context, training=training)
            if self.input_feeding:
                new_states = new_states + [output]
        return (self._dropout(output, training, output_mask), weights), new_states

    def _top_hidden(self, rnn_states):
        """The top layer's hidden state (the first state tensor of the top cell)."""
        top_count = len(_flat_sizes(self.cells[-1].state_size))
        return rnn_states[len(rnn_states) - top_count]

    # ----------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        cell_type = self.cell_type
        if not isinstance(cell_type, str):
            cell_type = [keras.saving.serialize_keras_object(c) for c in self.cells]
        config.update(
            {
                "units": self.units,
                "attention": (
                    None if self.attention is None
                    else keras.saving.serialize_keras_object(self.attention)
                ),
                "cell_type": cell_type,
                "style": self.style,
                "input_feeding": self.input_feeding,
                "attention_layer_size": self.attention_layer_size,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
            }
        )
        return config
