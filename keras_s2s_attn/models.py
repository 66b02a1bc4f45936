"""The functional seq2seq model, and the masked loss and accuracy to train it."""

import keras
from keras import ops

from keras_s2s_attn.checks import rate
from keras_s2s_attn.layers.attention import BahdanauLuongAttention
from keras_s2s_attn.layers.decoder import AttentionDecoder
from keras_s2s_attn.layers.decoder_cell import AttentionDecoderCell
from keras_s2s_attn.layers.encoder import Encoder, StateBridge
from keras_s2s_attn.options import SCORES, ModelOptions
from keras_s2s_attn.special_ids import PAD_ID

# Layer names inside a model from `build_seq2seq_model`; the inference
# decoders look the parts up by these names.
ENCODER = "encoder"
BRIDGE = "bridge"
TARGET_EMBEDDING = "target_embedding"
DECODER = "decoder"
OUTPUT_PROJECTION = "output_projection"


def build_seq2seq_model(
    source_vocab_size,
    target_vocab_size,
    *,
    embedding_dim=ModelOptions.embedding_dim,
    units=ModelOptions.units,
    encoder_layers=ModelOptions.encoder_layers,
    decoder_layers=ModelOptions.decoder_layers,
    cell_type=ModelOptions.cell_type,
    attention=ModelOptions.attention,
    style=ModelOptions.style,
    input_feeding=ModelOptions.input_feeding,
    window=ModelOptions.window,
    window_mode=ModelOptions.window_mode,
    max_source_length=None,
    normalize_attention=ModelOptions.normalize_attention,
    dropout=ModelOptions.dropout,
    dtype=None,
    sampling_probability=None,
    sampling_steps=0,
    name="seq2seq",
):
    """Builds an attention encoder-decoder as a functional `keras.Model`.

    The encoder is an embedding and a bidirectional RNN stack; a bridge maps
    its final states to the decoder's initial state; the decoder is an
    `AttentionDecoderCell` run by `AttentionDecoder` over the teacher-forced
    targets; a dense layer gives the logits.

    Args:
        source_vocab_size: Source vocabulary size (id 0 is padding).
        target_vocab_size: Target vocabulary size (id 0 is padding).
        embedding_dim: Width of both embeddings.
        units: Width of each encoder direction and of the decoder.
        encoder_layers: Number of bidirectional encoder layers.
        decoder_layers: Number of stacked decoder layers.
        cell_type: `"gru"` or `"lstm"`.
        attention: A score name (`"additive"`, `"dot"`, `"general"`,
            `"concat"`, `"scaled_dot"`, `"location"`), a
            `BahdanauLuongAttention` instance, or None for the plain
            encoder-decoder, where the source reaches the decoder only
            through its initial state.
        style: `"bahdanau"` or `"luong"` (see `AttentionDecoderCell`).
        input_feeding: Luong input feeding.
        window: Local attention half-width D, or None for global attention.
        window_mode: `"local-m"` or `"local-p"`.
        max_source_length: Needed by `attention="location"`.
        normalize_attention: Weight-normalise the additive score (Bahdanau
            et al.'s appendix; `attention="additive"` only).
        dropout: Dropout rate (embeddings, between layers, decoder output).
        dtype: The layers' Keras dtype policy, e.g. `"mixed_bfloat16"` (mixed
            precision: float32 weights, bfloat16 computation); None for the
            global policy (float32 unless set). The attention's softmax and
            weights and the output projection (the logits the loss reads)
            stay float32 under any policy.
        sampling_probability, sampling_steps: Scheduled sampling in training
            (see `AttentionDecoder`): feed the model's own previous prediction
            instead of the true token with a probability that rises from 0
            to `sampling_probability` over `sampling_steps` training steps.
        name: Model name.

    Returns:
        A `keras.Model` with inputs `{"source_ids": (batch, S), "target_ids":
        (batch, T)}` (int, 0 = padding) and logits `(batch, T,
        target_vocab_size)`. `attention_model(model)` gives the teacher-forced
        attention weights from the same weights.

    Example:

    >>> model = build_seq2seq_model(40, 40, embedding_dim=16, units=32)
    >>> model.compile("adam", loss=MaskedSparseCategoricalCrossentropy(),
    ...               metrics=[MaskedAccuracy()])
    >>> logits = model({"source_ids": np.array([[4, 5, 6]]),
    ...                 "target_ids": np.array([[2, 6, 5]])})
    >>> tuple(logits.shape)
    (1, 3, 40)
    """
    if not isinstance(attention, str):
        # These options configure a score given by name; None or an instance cannot use them.
        given = {name: value for name, value in (("window", window),
                                                 ("normalize_attention", normalize_attention))
                 if value not in (None, False)}
        if given:
            what = ("attention=None (no attention)" if attention is None else
                    "a BahdanauLuongAttention instance (set them on the instance)")
            raise ValueError(f"{' and '.join(f'`{name}`' for name in given)} cannot be used with "
                             f"{what}. Received: "
                             + ", ".join(f"{name}={value!r}" for name, value in given.items()))
    if isinstance(attention, str):
        if attention not in SCORES:
            raise ValueError(
                f"`attention` must be one of {', '.join(map(repr, SCORES))}, a "
                f"BahdanauLuongAttention instance or None. Received: attention={attention!r}"
            )
        if attention == "location" and max_source_length is None:
            raise ValueError("attention='location' scores a fixed number of source positions: "
                             "set `max_source_length` (--max-source-length). Received: "
                             "max_source_length=None")
        memory_dim = 2 * units
        attention = BahdanauLuongAttention(
            # dot products need the memory projected to the decoder's width
            units=units if attention in ("dot", "scaled_dot") and memory_dim != units else None,
            score=attention,
            normalize=normalize_attention,
            window=window,
            window_mode=window_mode,
            max_length=max_source_length if attention == "location" else None,
            name="attention",
            dtype=dtype,
        )
    elif attention is not None and not isinstance(attention, BahdanauLuongAttention):
        raise ValueError(
            "`attention` must be a score name, a BahdanauLuongAttention instance or None. "
            f"Received: attention={attention!r}"
        )
    cell = AttentionDecoderCell(
        units,
        attention,
        cell_type=cell_type,
        style=style,
        input_feeding=input_feeding,
        num_layers=decoder_layers,
        dropout=dropout,
        name="decoder_cell",
        dtype=dtype,
    )
    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    memory, summary = Encoder(
        source_vocab_size, embedding_dim, units, num_layers=encoder_layers,
        cell_type=cell_type, dropout=dropout, name=ENCODER, dtype=dtype,
    )(source_ids)
    initial_state = StateBridge(cell.rnn_state_sizes, name=BRIDGE, dtype=dtype)(summary)
    embedded = keras.layers.Embedding(
        target_vocab_size, embedding_dim, name=TARGET_EMBEDDING, dtype=dtype
    )(target_ids)
    embedded = keras.layers.Dropout(dropout, name="target_dropout", dtype=dtype)(embedded)
    decoded = AttentionDecoder(cell, name=DECODER, dtype=dtype,
                               sampling_probability=sampling_probability,
                               sampling_steps=sampling_steps)(
        embedded, memory, initial_state=initial_state
    )
    outputs = decoded[0] if isinstance(decoded, (list, tuple)) else decoded
    # float32 logits under a mixed policy too: the softmax and the loss need the range.
    logits = keras.layers.Dense(target_vocab_size, name=OUTPUT_PROJECTION,
                                dtype="float32")(outputs)
    model = keras.Model(
        inputs={"source_ids": source_ids, "target_ids": target_ids}, outputs=logits, name=name
    )
    return link_feedback(model)


def link_feedback(model):
    """Links a `build_seq2seq_model` model's decoder to its target embedding and
    output projection (`AttentionDecoder.set_feedback`): the builder does it, and a
    model loaded from a file needs it to train on with scheduled sampling.
    Returns `model`."""
    model.get_layer(DECODER).set_feedback(model.get_layer(TARGET_EMBEDDING),
                                          model.get_layer(OUTPUT_PROJECTION))
    return model


def attention_model(model):
    """A model giving the teacher-forced attention weights of `model`.

    It shares every weight with `model`; its output is `(batch, T, S)`.

    Args:
        model: A model from `build_seq2seq_model` (or one loaded from disk).

    Returns:
        A `keras.Model` with the same inputs.

    Raises:
        ValueError: If the model has no attention.
    """
    decoder = model.get_layer(DECODER)
    if decoder.cell.attention is None:
        raise ValueError("This model was built with attention=None: it has no attention weights.")
    return keras.Model(model.input, decoder.output[1], name=f"{model.name}_attention")


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Token-level cross-entropy from logits that ignores padding labels.

    The loss is the mean over real (non-padding) target tokens of the batch,
    not a mean of per-sequence means, so long targets weigh what they hold.
    With `label_smoothing=ε` the target distribution is (1 − ε) one-hot plus
    ε uniform over the vocabulary. (Keras' `SparseCategoricalCrossentropy`
    has `ignore_class` but no label smoothing, hence this class.)

    Args:
        label_smoothing: ε in [0, 1).
        pad_id: The label to ignore.
        name: Loss name.

    Example:

    >>> loss = MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    >>> float(loss(np.array([[4, 0]]), np.zeros((1, 2, 8), "float32"))) > 0
    True
    """

    def __init__(self, label_smoothing=0.0, pad_id=PAD_ID,
                 name="masked_sparse_categorical_crossentropy", **kwargs):
        kwargs.setdefault("reduction", "sum_over_batch_size")
        super().__init__(name=name, **kwargs)
        self.label_smoothing = rate(label_smoothing, "label_smoothing")
        self.pad_id = int(pad_id)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(log_probs, y_true[..., None], axis=-1), -1)
        if self.label_smoothing:
            uniform = -ops.mean(log_probs, axis=-1)
            nll = (1.0 - self.label_smoothing) * nll + self.label_smoothing * uniform
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        # "sum_over_batch_size" divides by the number of entries; scaling each
        # real token by (entries / real tokens) turns that into the mean over
        # real tokens.
        entries = ops.cast(ops.size(mask), "float32")
        real = ops.maximum(ops.sum(mask), 1.0)
        return nll * mask * (entries / real)

    def get_config(self):
        config = super().get_config()
        config.update({"label_smoothing": self.label_smoothing, "pad_id": self.pad_id})
        return config


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class MaskedAccuracy(keras.metrics.Metric):
    """Share of real (non-padding) target tokens whose argmax is right.

    Args:
        pad_id: The label to ignore.
        name: Metric name.

    Example:

    >>> metric = MaskedAccuracy()
    >>> metric.update_state(np.array([[5, 0]]), np.eye(8)[[[5, 1]]])
    >>> float(metric.result())
    1.0
    """

    def __init__(self, pad_id=PAD_ID, name="masked_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = int(pad_id)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        if sample_weight is not None:
            mask = mask * ops.cast(sample_weight, "float32")
        hits = ops.cast(ops.equal(predicted, y_true), "float32") * mask
        self.correct.assign_add(ops.sum(hits))
        self.total.assign_add(ops.sum(mask))

    def result(self):
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update({"pad_id": self.pad_id})
        return config
