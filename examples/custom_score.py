"""A score function of your own: subclass BahdanauLuongAttention, train, save, export.

The subclass scores with a temperature-scaled cosine similarity between the
decoder state h and a learned projection W s of each encoder state,
e(h, s) = τ · cos(h, W s), with τ learned. It overrides `build` (to add τ),
`prepare_memory` (W s, computed once per source) and `score`; masking, softmax,
context, saving and the SavedModel export come from the base class unchanged.

    python examples/custom_score.py --out runs/cosine
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_s2s_attn import (  # noqa: E402
    BahdanauLuongAttention,
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    build_seq2seq_model,
)
from keras_s2s_attn.export import export_saved_model  # noqa: E402
from keras_s2s_attn.saved_models import load_saved_model  # noqa: E402
from keras_s2s_attn.special_ids import NUM_RESERVED  # noqa: E402
from keras_s2s_attn.synthetic import exact_match, reversal_task  # noqa: E402
from keras_s2s_attn.decoding import Decoder  # noqa: E402
from keras_s2s_attn.text import make_tokenizer  # noqa: E402

SYMBOLS = "abcdefghijklmnopqrst"


@keras.saving.register_keras_serializable(package="examples")
class CosineAttention(BahdanauLuongAttention):
    """e(h, s) = τ · cos(h, W s), τ learned (starts at `temperature`)."""

    def __init__(self, temperature=5.0, **kwargs):
        kwargs["score"] = "general"  # the base class builds W (memory_kernel) for "general"
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def build(self, query_shape, memory_shape):
        super().build(query_shape, memory_shape)
        self.tau = self.add_weight(name="tau", shape=(),
                                   initializer=keras.initializers.Constant(self.temperature))

    def prepare_memory(self, memory):
        keys = ops.matmul(memory, self.memory_kernel)
        return keys / ops.sqrt(ops.sum(keys * keys, axis=-1, keepdims=True) + 1e-6)

    def score(self, query, prepared_memory):
        query = query / ops.sqrt(ops.sum(query * query, axis=-1, keepdims=True) + 1e-6)
        return self.tau * ops.matmul(query, ops.transpose(prepared_memory, (0, 2, 1)))

    def get_config(self):
        config = super().get_config()
        config.pop("score")
        return {**config, "temperature": self.temperature}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="runs/cosine")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    inputs, labels = reversal_task(6400, num_symbols=len(SYMBOLS), seed=1)
    test_inputs, test_labels = reversal_task(500, num_symbols=len(SYMBOLS), seed=2)
    vocab = NUM_RESERVED + len(SYMBOLS)
    model = build_seq2seq_model(vocab, vocab, embedding_dim=32, units=64, dropout=0.0,
                                attention=CosineAttention(name="attention"), style="luong")
    model.compile(keras.optimizers.Adam(3e-3, clipnorm=1.0),
                  loss=MaskedSparseCategoricalCrossentropy(), metrics=[MaskedAccuracy()])
    data = tf.data.Dataset.from_tensor_slices((inputs, labels)).shuffle(6400, seed=0).batch(64)
    model.fit(data, epochs=args.epochs, verbose=2, shuffle=False)  # shuffled above
    attention = model.get_layer("decoder").cell.attention
    print(f"learned temperature τ = {float(attention.tau.numpy()):.2f}")

    predicted = Decoder(model).greedy(test_inputs["source_ids"], max_output_length=30)["ids"]
    print(f"greedy exact match on 500 held-out sequences: "
          f"{exact_match(predicted.numpy(), test_labels):.1%}")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    print(f"saved and reloaded {path}: attention layer is "
          f"{type(reloaded.get_layer('decoder').cell.attention).__name__}")

    # Export: the symbols as a character vocabulary, in the model's id order.
    tokenizer = make_tokenizer("char", vocabulary=list(SYMBOLS), normalization=None)
    version = export_saved_model(model, os.path.join(args.out, "saved_model"),
                                 source_tokenizer=tokenizer, target_tokenizer=tokenizer)
    served = load_saved_model(version).signatures["serving_default"]
    answer = served(text=tf.constant(["abcdefghij"]))["translation"][0].numpy().decode()
    print(f"exported {version}; it reverses 'abcdefghij' as {answer!r}")


if __name__ == "__main__":
    main()
