"""vs_pytorch.py's PyTorch contestant: the package's default model, written by hand.

What `build_seq2seq_model(...)` computes with its defaults (GRU, additive
attention, Bahdanau order, dropout 0.1), as a practitioner would write it:

- encoder: embedding, dropout, a bidirectional GRU over the packed batch;
  the memory is its outputs `(batch, S, 2·units)`;
- bridge: s₀ = tanh(W [h→; h←] + b) of the GRU's final states (`StateBridge`);
- each decoder step (`AttentionDecoderCell`, Bahdanau order): attend with
  the previous state, e_j = vᵀ tanh(W₁ s_{t−1} + W₂ h_j) (no biases), a
  softmax over the real source positions, c_t = Σ_j a_j h_j; then
  s_t = GRUCell([E y_{t−1}; c_t], s_{t−1}); the output is dropout([s_t; c_t]),
  projected to the target vocabulary;
- Keras' initialisers, and what the package's `train` compiles: Adam(1e-3,
  ε = 1e-7), each gradient tensor clipped to norm 1, the mean cross-entropy
  over the real target tokens.

Training is teacher forcing in a Python loop over the target steps, on
batches bucketed by length as the package's `make_dataset` makes them;
decoding is eager under `torch.inference_mode()`: greedy, and a batched beam
search ranked as the package's `BeamSearch` ranks (GNMT length penalty
((5 + |Y|) / 6)^0.6, finished hypotheses kept in the beam), both stopping when
every row has ended. Needs the `bench` extra (`pip install -e .[bench]`).

    python benchmarks/torch_seq2seq.py train|decode SPEC    (vs_pytorch.py starts it)

`train` saves the weights (`model.pt` in the contestant's directory); `decode`
loads them in a fresh process, so that vs_pytorch.py can interleave the
contestants' decoding rounds.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import vs_pytorch_common as common  # benchmarks/, beside this script
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID

NEG_INF = -1e9  # the package's score of impossible tokens (decoding/stepper.py)


class Seq2Seq(nn.Module):
    """Bidirectional GRU encoder, bridge, Bahdanau GRU decoder with additive attention."""

    def __init__(self, source_vocab, target_vocab, embedding_dim=common.EMBEDDING_DIM,
                 units=common.UNITS, dropout=common.DROPOUT):
        super().__init__()
        memory_dim = 2 * units
        self.source_embedding = nn.Embedding(source_vocab, embedding_dim)
        self.encoder = nn.GRU(embedding_dim, units, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(memory_dim, units)
        self.target_embedding = nn.Embedding(target_vocab, embedding_dim)
        self.query_kernel = nn.Linear(units, memory_dim, bias=False)
        self.memory_kernel = nn.Linear(memory_dim, memory_dim, bias=False)
        self.v = nn.Parameter(torch.empty(memory_dim))
        self.cell = nn.GRUCell(embedding_dim + memory_dim, units)
        self.projection = nn.Linear(units + memory_dim, target_vocab)
        self.dropout = nn.Dropout(dropout)
        keras_initialisation(self)

    def encode(self, source_ids, lengths):
        """`(memory, keys, mask, state)`: the encoder's outputs, their attention
        projection, the real positions and the decoder's initial state."""
        embedded = self.dropout(self.source_embedding(source_ids))
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        outputs, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(outputs, batch_first=True,
                                        total_length=source_ids.shape[1])
        state = torch.tanh(self.bridge(torch.cat([final[0], final[1]], dim=-1)))
        return memory, self.memory_kernel(memory), source_ids != PAD_ID, state

    def step(self, embedded, state, memory, keys, mask):
        """One decoder step: `(output, state)`, the output before dropout."""
        scores = torch.tanh(self.query_kernel(state)[:, None] + keys) @ self.v
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        context = torch.bmm(weights[:, None], memory)[:, 0]
        state = self.cell(torch.cat([embedded, context], dim=-1), state)
        return torch.cat([state, context], dim=-1), state

    def forward(self, source_ids, lengths, target_ids):
        """Teacher forcing: logits `(batch, T, vocab)` for decoder inputs `target_ids`."""
        memory, keys, mask, state = self.encode(source_ids, lengths)
        embedded = self.dropout(self.target_embedding(target_ids))
        outputs = []
        for t in range(target_ids.shape[1]):
            output, state = self.step(embedded[:, t], state, memory, keys, mask)
            outputs.append(output)
        return self.projection(self.dropout(torch.stack(outputs, dim=1)))

    def next_log_probs(self, tokens, state, memory, keys, mask):
        """Decoding: `(log-probabilities, state)` after `tokens`; PAD and START never."""
        output, state = self.step(self.target_embedding(tokens), state, memory, keys, mask)
        log_probs = torch.log_softmax(self.projection(output), dim=-1)
        log_probs[:, [PAD_ID, START_ID]] = NEG_INF
        return log_probs, state


def keras_initialisation(model):
    """Keras' default initialisers: embeddings uniform ±0.05, kernels Glorot-uniform,
    recurrent kernels orthogonal, biases zero (the vector v: Glorot with fan n, n)."""
    for name, parameter in model.named_parameters():
        if "embedding" in name:
            nn.init.uniform_(parameter, -0.05, 0.05)
        elif "bias" in name:
            nn.init.zeros_(parameter)
        elif "weight_hh" in name:
            nn.init.orthogonal_(parameter)
        elif parameter.dim() == 1:
            bound = (3.0 / parameter.shape[0]) ** 0.5
            nn.init.uniform_(parameter, -bound, bound)
        else:
            nn.init.xavier_uniform_(parameter)


def bucketed_batches(arrays, rng, batch_size=common.BATCH_SIZE):
    """One epoch of `(sources, lengths, decoder inputs, labels)` tensors: pairs in a
    random order, grouped by length into the package's buckets (max(source length,
    target length + 1), as `make_dataset`), a batch whenever a bucket fills."""
    source_ends = np.cumsum(arrays["source_lengths"])
    target_ends = np.cumsum(arrays["target_lengths"])
    lengths = np.maximum(arrays["source_lengths"], arrays["target_lengths"] + 1)
    buckets = np.searchsorted(arrays["buckets"], lengths, side="right")
    waiting = {}
    for index in rng.permutation(len(lengths)):
        bucket = waiting.setdefault(buckets[index], [])
        bucket.append(index)
        if len(bucket) == batch_size:
            yield make_batch(arrays, bucket, source_ends, target_ends)
            bucket.clear()
    for bucket in waiting.values():
        if bucket:
            yield make_batch(arrays, bucket, source_ends, target_ends)


def make_batch(arrays, indices, source_ends, target_ends):
    """Padded tensors of the pairs `indices`: decoder inputs [START] y, labels y [END]."""
    source_lengths = arrays["source_lengths"][indices]
    target_lengths = arrays["target_lengths"][indices]
    sources = np.zeros((len(indices), source_lengths.max()), np.int64)
    inputs = np.zeros((len(indices), target_lengths.max() + 1), np.int64)
    labels = np.zeros_like(inputs)
    inputs[:, 0] = START_ID
    for row, index in enumerate(indices):
        source = arrays["source_ids"][source_ends[index] - source_lengths[row]:
                                      source_ends[index]]
        target = arrays["target_ids"][target_ends[index] - target_lengths[row]:
                                      target_ends[index]]
        sources[row, :len(source)] = source
        inputs[row, 1:len(target) + 1] = target
        labels[row, :len(target)] = target
        labels[row, len(target)] = END_ID
    return (torch.from_numpy(sources), torch.from_numpy(source_lengths.astype(np.int64)),
            torch.from_numpy(inputs), torch.from_numpy(labels))


def train(model, arrays, spec):
    """Trains until the time budget is spent; the clock's summary."""
    parameters = list(model.parameters())
    optimizer = torch.optim.Adam(parameters, lr=common.LEARNING_RATE, eps=1e-7)
    clock = common.TrainClock(spec["train_seconds"], spec["warmup_steps"])
    rng = np.random.default_rng(common.SEED)
    tokens = 0
    model.train()
    while True:
        clock.start()
        for sources, lengths, inputs, labels in bucketed_batches(arrays, rng):
            logits = model(sources, lengths, inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=PAD_ID)
            optimizer.zero_grad()
            loss.backward()
            for parameter in parameters:
                nn.utils.clip_grad_norm_(parameter, common.CLIPNORM)
            optimizer.step()
            done = clock.step()
            if clock.warm:
                tokens += int((labels != PAD_ID).sum())
            if done:
                return clock.summary(tokens)


@torch.inference_mode()
def greedy(model, sources, lengths, max_length):
    """The most likely token at each step: `(batch, steps)` ids."""
    memory, keys, mask, state = model.encode(sources, lengths)
    tokens = torch.full((sources.shape[0],), START_ID)
    finished = torch.zeros(sources.shape[0], dtype=torch.bool)
    steps = []
    for _ in range(max_length):
        log_probs, state = model.next_log_probs(tokens, state, memory, keys, mask)
        tokens = log_probs.argmax(dim=-1).masked_fill(finished, PAD_ID)
        steps.append(tokens)
        finished |= tokens == END_ID
        if finished.all():
            break
    return torch.stack(steps, dim=1)


@torch.inference_mode()
def beam_search(model, sources, lengths, max_length, width):
    """The best of `width` hypotheses per row by the GNMT length penalty: `(batch, steps)`."""
    batch = sources.shape[0]
    encoded = model.encode(sources, lengths)
    memory, keys, mask, state = (x.repeat_interleave(width, dim=0) for x in encoded)
    scores = torch.full((batch, width), NEG_INF)
    scores[:, 0] = 0.0  # only beam 0 is alive at first
    finished = torch.zeros((batch, width), dtype=torch.bool)
    produced = torch.zeros((batch, width))
    history = torch.zeros((batch, width, 0), dtype=torch.int64)
    tokens = torch.full((batch * width,), START_ID)
    rows = torch.arange(batch)[:, None] * width
    for _ in range(max_length):
        log_probs, state = model.next_log_probs(tokens, state, memory, keys, mask)
        log_probs = log_probs.view(batch, width, -1)
        vocab = log_probs.shape[-1]
        pad_only = torch.full((vocab,), NEG_INF)
        pad_only[PAD_ID] = 0.0  # a finished hypothesis continues with padding, at no cost
        log_probs = torch.where(finished[..., None], pad_only, log_probs)
        grown = produced + (~finished).float()
        candidates = scores[..., None] + log_probs
        penalty = ((5.0 + grown[..., None]) / 6.0) ** common.LENGTH_PENALTY
        best = (candidates / penalty).view(batch, -1).topk(width, dim=-1).indices
        candidates = candidates.view(batch, -1)
        parents, new_tokens = best // vocab, best % vocab
        scores = candidates.gather(1, best)
        finished = finished.gather(1, parents) | (new_tokens == END_ID)
        produced = grown.gather(1, parents)
        state = state[(parents + rows).view(-1)]
        history = torch.cat([history.gather(1, parents[..., None].expand_as(history)),
                             new_tokens[..., None]], dim=-1)
        tokens = new_tokens.view(-1)
        if finished.all():
            break
    chosen = (scores / ((5.0 + produced) / 6.0) ** common.LENGTH_PENALTY).argmax(dim=-1)
    return history[torch.arange(batch), chosen]


def translator(model, source_vocab, target_vocab, search, **options):
    """Words to texts with `search`: tokenised in Python, decoded in eager mode."""
    def decode(words):
        ids, lengths = source_vocab.encode_characters(words)
        out = search(model, torch.from_numpy(ids), torch.from_numpy(lengths),
                     common.max_output_length(ids.shape[1]), **options)
        return target_vocab.decode(out.numpy())

    return decode


def main():
    """`train SPEC` (train under the time budget, save the weights) or `decode SPEC`
    (time decoding with the saved weights)."""
    stage, spec = sys.argv[1], common.read_json(sys.argv[2])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(common.SEED)
    directory = common.contestant_dir(spec, "pytorch")
    source_vocab, target_vocab = (common.Vocabulary(os.path.join(spec["work"], common.VOCAB_DIR,
                                                                 side))
                                  for side in ("source", "target"))
    model = Seq2Seq(len(source_vocab), len(target_vocab))
    weights = os.path.join(directory, "model.pt")
    if stage == "train":
        arrays = dict(np.load(os.path.join(spec["work"], common.TRAIN_IDS)))
        summary = train(model, arrays, spec)
        torch.save(model.state_dict(), weights)
        common.write_json(os.path.join(directory, "train.json"), {
            "parameters": sum(p.numel() for p in model.parameters()), **summary})
    elif stage == "decode":
        model.load_state_dict(torch.load(weights))
        model.eval()
        result = common.run_decoding(spec, {
            "greedy": translator(model, source_vocab, target_vocab, greedy),
            "beam": translator(model, source_vocab, target_vocab, beam_search,
                               width=common.BEAM_WIDTH)})
        common.write_json(os.path.join(directory, "decode.json"), result)
    else:
        raise SystemExit(f"unknown stage {stage!r}: train or decode")


if __name__ == "__main__":
    main()
