"""The package's contestants of vs_pytorch.py, and the data every contestant shares.

Three stages, each a fresh process started by vs_pytorch.py:

- `prepare`: adapts the package's tokenizers to the training pairs (characters
  in, space-separated phones out, as `train` adapts them) and writes them and
  the tokenised pairs to the work dir, for the contestants outside the package;
- `train NAME`: `keras_s2s_attn.training.train(...)` until the time budget is
  spent (the `TimeBudget` callback), then `export_saved_model` of the final
  weights, plain and with `jit_compile=True`;
- `decode NAME`: the exported SavedModel loaded in a fresh process, its
  `serving_default` (greedy) and `beam_search` (beam 4) signatures timed on
  the test words; with `--jit`, those of the XLA export made from the same
  weights (contestant `NAME-xla`).

    python benchmarks/vs_pytorch_package.py prepare|train|decode SPEC [NAME] [--jit]
"""

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
import vs_pytorch_common as common  # benchmarks/, beside this script

from keras_s2s_attn.data import length_buckets, pair_lengths, read_pairs
from keras_s2s_attn.export import export_saved_model
from keras_s2s_attn.models import MaskedAccuracy
from keras_s2s_attn.runs import FINAL_MODEL, SOURCE_VOCAB, TARGET_VOCAB
from keras_s2s_attn.saved_models import load_saved_model
from keras_s2s_attn.text import make_tokenizer
from keras_s2s_attn.training import train

# The package's model options of each contestant (the rest: the package's defaults).
MODEL_OPTIONS = {
    "package": {"style": "bahdanau"},
    "package-luong": {"style": "luong", "input_feeding": False},
}


def set_threads(spec):
    """TensorFlow's thread pools at the spec's size (before TensorFlow starts)."""
    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(spec["threads"])


class TimeBudget(keras.callbacks.Callback):
    """Stops `fit` once its training steps have taken the budget (`TrainClock`), and
    counts the target tokens of the timed steps.

    The tokens are read from the model's `MaskedAccuracy`, whose `total` is the
    number of real (non-padding) labels of the epoch so far; it is read at the
    end of the warm-up, of each epoch's last step and of the last step.
    """

    def __init__(self, seconds, warmup_steps):
        super().__init__()
        self.clock = common.TrainClock(seconds, warmup_steps)
        self.tokens = 0
        self._read = 0.0  # the epoch's token total when last read

    def _total(self):
        """The real labels of the epoch so far (`MaskedAccuracy.total`)."""
        for metric in self.model.metrics:
            for inner in getattr(metric, "metrics", [metric]):
                if isinstance(inner, MaskedAccuracy):
                    return float(inner.total.numpy())
        raise ValueError("TimeBudget counts tokens with a compiled MaskedAccuracy metric")

    def on_epoch_begin(self, epoch, logs=None):
        self._read = 0.0
        self.clock.start()

    def on_train_batch_end(self, batch, logs=None):
        done = self.clock.step()
        last_of_epoch = batch == self.params["steps"] - 1
        if self.clock.steps == self.clock.warmup_steps:
            self._read = self._total()
        elif self.clock.warm and (done or last_of_epoch):
            total = self._total()
            self.tokens += int(total - self._read)
            self._read = total
        if done:
            self.model.stop_training = True

    def summary(self):
        """`TrainClock.summary` with the tokens counted."""
        return self.clock.summary(self.tokens)


def prepare(spec):
    """The shared tokenizers and tokenised training pairs (kept if present)."""
    arrays_path = os.path.join(spec["work"], common.TRAIN_IDS)
    if os.path.exists(arrays_path):
        return
    pairs = read_pairs(os.path.join(spec["data"], "train.tsv"))
    arrays = {}
    for side, kind, texts in zip(("source", "target"), ("char", "space"), pairs):
        tokenizer = make_tokenizer(kind).adapt(texts)
        tokenizer.save(os.path.join(spec["work"], common.VOCAB_DIR, side))
        ids = tokenizer.encode(tf.constant(texts))
        arrays[f"{side}_ids"] = ids.flat_values.numpy()
        arrays[f"{side}_lengths"] = ids.row_lengths().numpy()
    # The buckets `make_dataset` fits to these pairs ("auto"), for the PyTorch contestant.
    lengths = pair_lengths(arrays["source_lengths"], arrays["target_lengths"])
    arrays["buckets"] = np.array(length_buckets(lengths, common.BATCH_SIZE), "int64")
    np.savez(arrays_path, **arrays)


def same_vocabulary(run_dir, spec):
    """Refuses a run whose tokenizers differ from the shared ones."""
    for side, run_side in (("source", SOURCE_VOCAB), ("target", TARGET_VOCAB)):
        ours = common.Vocabulary(os.path.join(spec["work"], common.VOCAB_DIR, side)).tokens
        if common.Vocabulary(os.path.join(run_dir, run_side)).tokens != ours:
            raise SystemExit(f"the run's {side} vocabulary differs from the other contestants'")


def train_and_export(spec, name):
    """`train(...)` under the time budget, then the final weights exported."""
    directory = common.contestant_dir(spec, name)
    run_dir, export_dir = (os.path.join(directory, part) for part in ("run", "export"))
    for path in (run_dir, export_dir):
        shutil.rmtree(path, ignore_errors=True)
    budget = TimeBudget(spec["train_seconds"], spec["warmup_steps"])
    train(os.path.join(spec["data"], "train.tsv"), run_dir,
          valid_data=os.path.join(spec["data"], "dev.tsv"),
          source_tokenizer="char", target_tokenizer="space", epochs=common.EPOCHS,
          batch_size=common.BATCH_SIZE, learning_rate=common.LEARNING_RATE,
          embedding_dim=common.EMBEDDING_DIM, units=common.UNITS, dropout=common.DROPOUT,
          seed=common.SEED, lr_decay=False, callbacks=[budget], verbose=0,
          **MODEL_OPTIONS[name])
    same_vocabulary(run_dir, spec)
    parameters = keras.saving.load_model(os.path.join(run_dir, FINAL_MODEL)).count_params()
    version = export_saved_model(run_dir, export_dir, which="final")
    jit_version = export_saved_model(run_dir, export_dir, which="final", jit_compile=True)
    common.write_json(os.path.join(directory, "train.json"),
                      {"parameters": parameters, "export": version, "export_jit": jit_version,
                       **budget.summary()})


def decode_exported(spec, name, jit=False):
    """The exported signatures timed on the test words, in this fresh process; with
    `jit`, those of the XLA export (`--jit`), written as contestant `NAME-xla` (every
    shape bucket compiled in an untimed pass first, as a warm server has them)."""
    directory = common.contestant_dir(spec, name)
    trained = common.read_json(os.path.join(directory, "train.json"))
    version = trained["export_jit" if jit else "export"]
    if jit:
        directory = common.contestant_dir(spec, name + "-xla")
        os.makedirs(directory, exist_ok=True)
    # tf.saved_model.load, with tensorflow-text's NFKC op registered first.
    signatures = load_saved_model(version).signatures

    def search(signature):
        function = signatures[signature]
        return lambda words: [text.decode() for text in
                              function(text=tf.constant(words))["translation"].numpy()]

    result = common.run_decoding(spec, {"greedy": search("serving_default"),
                                        "beam": search("beam_search")}, warm_all=jit)
    common.write_json(os.path.join(directory, "decode.json"), result)


def main():
    """`STAGE SPEC [NAME]` from the command line."""
    stage, spec = sys.argv[1], common.read_json(sys.argv[2])
    set_threads(spec)
    if stage == "prepare":
        prepare(spec)
    elif stage == "train":
        train_and_export(spec, sys.argv[3])
    elif stage == "decode":
        decode_exported(spec, sys.argv[3], jit="--jit" in sys.argv[4:])
    else:
        raise SystemExit(f"unknown stage {stage!r}: prepare, train or decode")


if __name__ == "__main__":
    main()
