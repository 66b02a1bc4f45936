"""The space of models `build_seq2seq_model` and `s2s-attn train` accept, for the matrix test.

A combination is one value per factor of `FACTORS`. `run_combination` builds
it, trains it for a few steps on a tiny task, exports it and records what the
Python `Translator` answers (greedy and beam); the test then loads every
export in fresh processes and compares. Run as a module, it is the worker
the test starts (one for the covering set, whose pytest-xdist worker shares the
cores with another; one per core for the full matrix):

    python -m tests.model_matrix WORKDIR < combinations.json
"""

import itertools
import json
import os
import random
import sys

import numpy as np

FACTORS = {
    "score": ("dot", "general", "concat", "additive", "additive-normalize", "scaled_dot",
              "location", "none"),
    "style": ("bahdanau", "luong", "luong-no-feeding"),
    "cell": ("gru", "lstm"),
    "layers": (1, 2),
    "window": ("global", "local-m", "local-p"),
    "tokenizer": ("char", "word", "space"),
    "weights_dtype": ("float32", "float16", "int8", "int4"),
}
MAX_SOURCE_LENGTH = 8
BEAM_WIDTH = 3
LENGTH_PENALTY = 0.6  # the Translator's default α; no coverage penalty
WORDS = ("ab", "cd", "ef", "gh", "abc", "de")
# Inputs for both the Python and the exported decoders: in-vocabulary texts,
# empty and blank ones, unknown characters, and one cut at MAX_SOURCE_LENGTH.
TEXTS = ["ab cd", "ef gh ab", "abc", "", "  ", "zz ab", " ".join(["de"] * 9), "gh"]


def combination(values):
    """A dict of factor -> value from a tuple in `FACTORS` order."""
    return dict(zip(FACTORS, values))


def all_combinations():
    return [combination(values) for values in itertools.product(*FACTORS.values())]


def refusal(combo):
    """The option the builder must name when it refuses `combo`, or None if it builds."""
    if combo["score"] == "none" and combo["window"] != "global":
        return "window"
    return None


def model_options(combo):
    """`build_seq2seq_model` keyword arguments for `combo` (tiny sizes)."""
    score = combo["score"]
    options = {
        "embedding_dim": 6, "units": 8, "dropout": 0.0, "cell_type": combo["cell"],
        "encoder_layers": combo["layers"], "decoder_layers": combo["layers"],
        "style": "bahdanau" if combo["style"] == "bahdanau" else "luong",
        "input_feeding": combo["style"] != "luong-no-feeding",
        "attention": None if score == "none" else score.replace("-normalize", ""),
    }
    if score == "additive-normalize":
        options["normalize_attention"] = True
    if score == "location":
        options["max_source_length"] = MAX_SOURCE_LENGTH
    if combo["window"] != "global":
        options["window"] = 2
        options["window_mode"] = combo["window"]
    return options


def task_pairs(count=160, seed=0):
    """Words in, the words reversed and upper-cased out: works for every tokenizer kind."""
    rng = random.Random(seed)
    sources = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
               for _ in range(count)]
    return sources, [" ".join(reversed(s.split())).upper() for s in sources]


def train_combination(combo, seed=0):
    """`(model, source_tokenizer, target_tokenizer)`, trained for two steps."""
    import keras

    from keras_s2s_attn import (MaskedSparseCategoricalCrossentropy, build_seq2seq_model)
    from keras_s2s_attn.data import make_dataset
    from keras_s2s_attn.text import make_tokenizer

    keras.utils.set_random_seed(seed)
    sources, targets = task_pairs()
    source_tokenizer = make_tokenizer(combo["tokenizer"], normalization=None).adapt(sources)
    target_tokenizer = make_tokenizer(combo["tokenizer"], normalization=None).adapt(targets)
    model = build_seq2seq_model(source_tokenizer.vocabulary_size,
                                target_tokenizer.vocabulary_size, **model_options(combo))
    # Eagerly: two steps cost less than tracing the training step (once per bucket shape).
    model.compile(keras.optimizers.Adam(0.05), loss=MaskedSparseCategoricalCrossentropy(),
                  run_eagerly=True)
    dataset, _ = make_dataset(sources, targets, source_tokenizer, target_tokenizer,
                              batch_size=40, max_source_length=MAX_SOURCE_LENGTH, seed=seed)
    model.fit(dataset.take(2), epochs=1, verbose=0)
    return model, source_tokenizer, target_tokenizer


def as_json(outputs):
    """A translator's numpy outputs as JSON-able lists (strings decoded from UTF-8)."""
    return {name: (np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value).tolist()
                   if value.dtype == object and value.size else value.tolist())
            for name, value in outputs.items()}


def run_combination(combo, directory):
    """Trains, exports (to `directory/model/1`) and writes `python.json`: the
    Translator's greedy and beam outputs, from the weights as the export stores them."""
    import tensorflow as tf

    from keras_s2s_attn.decoding import BeamSearch, GreedySearch
    from keras_s2s_attn.export import export_saved_model
    from keras_s2s_attn.translation import Translator
    from tests.reference import stored_like_the_export

    model, source_tokenizer, target_tokenizer = train_combination(combo)
    strategies = {"serving_default": GreedySearch(),
                  "beam_search": BeamSearch(BEAM_WIDTH, LENGTH_PENALTY, 0.0, num_results=1)}
    options = {"strategies": strategies, "max_source_length": MAX_SOURCE_LENGTH}
    path = export_saved_model(model, os.path.join(directory, "model"), warmup_texts=TEXTS[:2],
                              source_tokenizer=source_tokenizer,
                              target_tokenizer=target_tokenizer,
                              weights_dtype=combo["weights_dtype"], **options)
    model.set_weights([stored_like_the_export(w, combo["weights_dtype"])
                       for w in model.get_weights()])
    translator = Translator(model, source_tokenizer, target_tokenizer, **options)
    # Eagerly: the same code without tracing it again (faster for eight texts),
    # and an execution independent of the exported graph.
    tf.config.run_functions_eagerly(True)
    try:
        result = {"export": path,
                  "serving_default": as_json(translator(TEXTS)),
                  "beam_search": as_json(translator(TEXTS, "beam_search"))}
    finally:
        tf.config.run_functions_eagerly(False)
    with open(os.path.join(directory, "python.json"), "w") as handle:
        json.dump(result, handle)
    return result


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    workdir = sys.argv[1]
    for index, values in json.load(sys.stdin):
        directory = os.path.join(workdir, str(index))
        os.makedirs(directory, exist_ok=True)
        run_combination(combination(values), directory)
        print(index, flush=True)


if __name__ == "__main__":
    main()
