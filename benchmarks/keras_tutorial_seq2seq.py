"""vs_pytorch.py's tutorial-style contestant: Keras built-ins, as TensorFlow's NMT
tutorial builds its model.

Embedding and a bidirectional GRU encoder (`mask_zero`), a Dense+tanh bridge
from its final states to the decoder's initial state, a GRU decoder run over
the whole target in one layer call, then `keras.layers.AdditiveAttention`
over the encoder outputs (query and keys projected to the memory's width
without biases, its learned scale the vector v) and the tutorial's
attention vector tanh(W_c [c_t; h_t]) (no bias) projected to the
vocabulary; dropout on both embeddings and on the attention vector. That is
the package's `style="luong", input_feeding=False` with additive attention,
weight for weight (the parent prints both parameter counts). It trains with
`fit` on the package's `make_dataset` batches, its loss and its Adam
(clipnorm 1), and decodes greedily in a `tf.function` (a batch at a time,
stopping when every row has ended), calling the decoder GRU on one step.

    python benchmarks/keras_tutorial_seq2seq.py train|decode SPEC    (vs_pytorch.py starts it)

`train` saves the weights (`model.weights.h5` in the contestant's directory);
`decode` loads them in a fresh process.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
import vs_pytorch_common as common  # benchmarks/, beside this script
from keras import layers
from vs_pytorch_package import TimeBudget, set_threads

from keras_s2s_attn.data import make_dataset, read_pairs
from keras_s2s_attn.models import MaskedAccuracy, MaskedSparseCategoricalCrossentropy
from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID
from keras_s2s_attn.text import load_tokenizer

NAME = "tutorial"


def build_model(source_vocab, target_vocab, embedding_dim=common.EMBEDDING_DIM,
                units=common.UNITS, dropout=common.DROPOUT):
    """The training model: `{"source_ids", "target_ids"}` to logits `(batch, T, vocab)`."""
    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    embedded = layers.Embedding(source_vocab, embedding_dim, mask_zero=True,
                                name="source_embedding")(source_ids)
    memory, forward, backward = layers.Bidirectional(
        layers.GRU(units, return_sequences=True, return_state=True),
        name="encoder")(layers.Dropout(dropout)(embedded))
    state = layers.Dense(units, activation="tanh", name="bridge")(
        layers.Concatenate()([forward, backward]))
    embedded = layers.Embedding(target_vocab, embedding_dim, mask_zero=True,
                                name="target_embedding")(target_ids)
    decoded, _ = layers.GRU(units, return_sequences=True, return_state=True,
                            name="decoder")(layers.Dropout(dropout)(embedded),
                                            initial_state=state)
    context = layers.AdditiveAttention(use_scale=True, name="attention")(
        [layers.Dense(2 * units, use_bias=False, name="query")(decoded), memory,
         layers.Dense(2 * units, use_bias=False, name="keys")(memory)],
        mask=[keras.ops.not_equal(target_ids, PAD_ID), keras.ops.not_equal(source_ids, PAD_ID)])
    attentional = layers.Dense(units, activation="tanh", use_bias=False, name="attention_vector")(
        layers.Concatenate()([context, decoded]))
    logits = layers.Dense(target_vocab, name="logits")(layers.Dropout(dropout)(attentional))
    return keras.Model({"source_ids": source_ids, "target_ids": target_ids}, logits)


def greedy_function(model):
    """Greedy decoding of source ids `(batch, S)` to ids `(batch, steps)`, in a tf.function."""
    layer = model.get_layer
    reserved = tf.reduce_sum(tf.one_hot([PAD_ID, START_ID], layer("logits").units,
                                        on_value=-1e9), axis=0)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def greedy(source_ids):
        mask = tf.not_equal(source_ids, PAD_ID)
        memory, forward, backward = layer("encoder")(layer("source_embedding")(source_ids),
                                                     mask=mask)
        state = layer("bridge")(tf.concat([forward, backward], -1))
        keys = layer("keys")(memory)
        batch = tf.shape(source_ids)[0]
        tokens = tf.fill([batch], START_ID)
        finished = tf.zeros([batch], tf.bool)
        steps = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
        for t in tf.range(common.max_output_length(tf.shape(source_ids)[1])):
            decoded, state = layer("decoder")(layer("target_embedding")(tokens[:, None]),
                                              initial_state=state)
            context = layer("attention")([layer("query")(decoded), memory, keys],
                                         mask=[None, mask])
            attentional = layer("attention_vector")(tf.concat([context, decoded], -1))
            logits = layer("logits")(attentional)[:, 0] + reserved
            tokens = tf.where(finished, PAD_ID, tf.argmax(logits, -1, output_type=tf.int32))
            steps = steps.write(t, tokens)
            finished |= tf.equal(tokens, END_ID)
            if tf.reduce_all(finished):
                break
        return tf.transpose(steps.stack())

    return greedy


def train(model, spec):
    """`fit` on the package's batches until the time budget is spent; the clock's summary."""
    vocab_dir = os.path.join(spec["work"], common.VOCAB_DIR)
    tokenizers = [load_tokenizer(os.path.join(vocab_dir, side)) for side in ("source", "target")]
    dataset, _ = make_dataset(*read_pairs(os.path.join(spec["data"], "train.tsv")), *tokenizers,
                              batch_size=common.BATCH_SIZE, seed=common.SEED)
    model.compile(keras.optimizers.Adam(common.LEARNING_RATE, clipnorm=common.CLIPNORM),
                  loss=MaskedSparseCategoricalCrossentropy(),
                  metrics=[MaskedAccuracy(name="accuracy")])
    budget = TimeBudget(spec["train_seconds"], spec["warmup_steps"])
    model.fit(dataset, epochs=common.EPOCHS, callbacks=[budget], verbose=0)
    return budget.summary()


def main():
    """`train SPEC` (train under the time budget, save the weights) or `decode SPEC`
    (time decoding with the saved weights)."""
    stage, spec = sys.argv[1], common.read_json(sys.argv[2])
    set_threads(spec)
    keras.utils.set_random_seed(common.SEED)
    directory = common.contestant_dir(spec, NAME)
    source_vocab, target_vocab = (common.Vocabulary(os.path.join(spec["work"], common.VOCAB_DIR,
                                                                 side))
                                  for side in ("source", "target"))
    model = build_model(len(source_vocab), len(target_vocab))
    weights = os.path.join(directory, "model.weights.h5")
    if stage == "train":
        summary = train(model, spec)
        model.save_weights(weights)
        common.write_json(os.path.join(directory, "train.json"),
                          {"parameters": model.count_params(), **summary})
        return
    if stage != "decode":
        raise SystemExit(f"unknown stage {stage!r}: train or decode")
    model.load_weights(weights)
    greedy = greedy_function(model)

    def decode(words):
        ids, _ = source_vocab.encode_characters(words)
        return target_vocab.decode(greedy(ids.astype(np.int32)).numpy())

    common.write_json(os.path.join(directory, "decode.json"),
                      common.run_decoding(spec, {"greedy": decode}))


if __name__ == "__main__":
    main()
