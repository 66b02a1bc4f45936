"""What the contestants of vs_pytorch.py share: the settings, the time budget, the text
and the decoding timer (plain Python and NumPy: no TensorFlow, no PyTorch).

Each contestant runs in its own process (`vs_pytorch_package.py`, `torch_seq2seq.py`,
`keras_tutorial_seq2seq.py`); the parent hands it a spec (a JSON file) and reads back
what it writes into its directory of the work dir.
"""

import json
import os
import time

import numpy as np

from keras_s2s_attn.options import BeamOptions
from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID, UNK_ID

# One architecture and one optimisation for all (the package's defaults, spelt out).
EMBEDDING_DIM = 256
UNITS = 256
DROPOUT = 0.1
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
CLIPNORM = 1.0  # what the package's `train` compiles: Adam(clipnorm=1.0), per tensor
SEED = 0
# The export's `beam_search` signature: the package's beam defaults.
BEAM_WIDTH = BeamOptions.beam_width
LENGTH_PENALTY = BeamOptions.length_penalty_weight
# Far more than any time budget allows: the budget ends training.
EPOCHS = 100_000
# Where `prepare` (vs_pytorch_package.py) leaves the tokenizers and the tokenised pairs.
VOCAB_DIR = "vocab"
TRAIN_IDS = "train_ids.npz"


def read_json(path):
    """A JSON file: the spec the parent wrote, or what a stage of a contestant left."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def contestant_dir(spec, name):
    """The contestant's own directory of the work dir (created)."""
    path = os.path.join(spec["work"], name)
    os.makedirs(path, exist_ok=True)
    return path


def write_json(path, value):
    """Writes `value` as JSON (a stage's result, or the spec)."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, ensure_ascii=False)


def read_test(spec):
    """The first `decode_words` test words and each one's reference pronunciations."""
    words, references = [], []
    with open(os.path.join(spec["data"], "test.tsv"), encoding="utf-8") as handle:
        for line in handle:
            fields = [field.strip() for field in line.rstrip("\n").split("\t")]
            if len(fields) >= 2 and fields[0]:
                words.append(fields[0])
                references.append([field for field in fields[1:] if field])
    count = spec["decode_words"] or len(words)
    return words[:count], references[:count]


class TrainClock:
    """The wall time of training steps, against a budget, with a warm-up left out.

    Time runs from `start()` (an epoch's beginning) to each `step()`; what
    passes between an epoch's last step and the next `start()` (validation,
    checkpoints) is not counted. The first `warmup_steps` steps (tracing,
    compilation) count against the budget but not in the rate.
    """

    def __init__(self, seconds, warmup_steps):
        self.seconds = seconds
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.elapsed = 0.0
        self.warmup_elapsed = 0.0
        self._last = None

    def start(self):
        """The clock runs again (an epoch begins)."""
        self._last = time.perf_counter()

    def step(self):
        """Counts one step; True when the budget is spent."""
        now = time.perf_counter()
        self.elapsed += now - self._last
        self._last = now
        self.steps += 1
        if self.steps == self.warmup_steps:
            self.warmup_elapsed = self.elapsed
        return self.elapsed >= self.seconds

    @property
    def warm(self):
        """True once the warm-up steps are done (the last `step()` is timed)."""
        return self.steps > self.warmup_steps

    def summary(self, tokens):
        """What the parent reports: `tokens` are the target tokens of the timed steps."""
        timed = self.elapsed - self.warmup_elapsed
        return {"train_seconds": round(self.elapsed, 1), "steps": self.steps,
                "warmup_seconds": round(self.warmup_elapsed if self.steps >= self.warmup_steps
                                        else self.elapsed, 1),
                "timed_steps": max(self.steps - self.warmup_steps, 0), "timed_tokens": tokens,
                "tokens_per_second": tokens / timed if self.warm and timed > 0 else None}


class Vocabulary:
    """A tokenizer's vocab.txt (line number = id) in plain Python, for the contestants
    that tokenise outside a graph: characters to ids, ids to space-joined tokens."""

    def __init__(self, directory):
        with open(os.path.join(directory, "vocab.txt"), encoding="utf-8", newline="") as handle:
            self.tokens = handle.read().split("\n")[:-1]
        self.ids = {token: index for index, token in enumerate(self.tokens)}

    def __len__(self):
        return len(self.tokens)

    def encode_characters(self, words):
        """`(ids, lengths)`: int64 `(batch, longest)` padded with 0, and `(batch,)`."""
        lengths = np.array([len(word) for word in words], np.int64)
        ids = np.zeros((len(words), lengths.max()), np.int64)
        for row, word in enumerate(words):
            ids[row, :len(word)] = [self.ids.get(char, UNK_ID) for char in word]
        return ids, lengths

    def decode(self, rows):
        """Id rows to text: the tokens before the end id, space-joined."""
        texts = []
        for row in rows.tolist():
            end = row.index(END_ID) if END_ID in row else len(row)
            texts.append(" ".join(self.tokens[i] for i in row[:end]
                                  if i not in (PAD_ID, START_ID)))
        return texts


def max_output_length(source_length):
    """The package's decoding budget (`Translator.max_length_for`): 2·S + 10 steps,
    S the batch's padded source length."""
    return 2 * source_length + 10


def decoding_speed(decode, words, batch_size, warm_all=False):
    """Words/s of `decode` (a list of words to a list of texts) over all `words`, in
    batches of `batch_size`, after one untimed batch (with `warm_all`, an untimed pass
    over all of them: an XLA export compiles once per bucket of shapes, as a server
    does once and for all); and its outputs."""
    for begin in range(0, len(words) if warm_all else 1, batch_size):
        decode(words[begin: begin + batch_size])
    outputs = []
    start = time.perf_counter()
    for begin in range(0, len(words), batch_size):
        outputs.extend(decode(words[begin: begin + batch_size]))
    return len(words) / (time.perf_counter() - start), outputs


def run_decoding(spec, searches, warm_all=False):
    """Times each search (`{"greedy": decode, "beam": decode}`) at each batch size of the
    spec over the test words (`decoding_speed`); the outputs kept are those of the
    largest batch."""
    words, _ = read_test(spec)
    speeds, hypotheses = {}, {}
    for kind, decode in searches.items():
        speeds[kind] = {}
        for batch_size in sorted(spec["batches"]):
            speeds[kind][str(batch_size)], hypotheses[kind] = decoding_speed(
                decode, words, batch_size, warm_all)
    return {"words_per_second": speeds, "hypotheses": hypotheses}
