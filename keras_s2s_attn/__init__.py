"""Sequence-to-sequence models with Bahdanau and Luong attention for Keras 3."""

from keras_s2s_attn.layers import (
    AttentionDecoder,
    AttentionDecoderCell,
    BahdanauLuongAttention,
    Encoder,
    StateBridge,
    masked_softmax,
)
from keras_s2s_attn.models import (
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    attention_model,
    build_seq2seq_model,
)
from keras_s2s_attn.special_ids import END_ID, PAD_ID, START_ID, UNK_ID

# The TensorFlow-side API, also what the s2s-attn command runs.
from keras_s2s_attn.decoding import Decoder  # noqa: E402
from keras_s2s_attn.evaluation import evaluate_texts  # noqa: E402
from keras_s2s_attn.export import export_saved_model  # noqa: E402
from keras_s2s_attn.text import load_tokenizer, make_tokenizer  # noqa: E402
from keras_s2s_attn.training import load_run, train  # noqa: E402
from keras_s2s_attn.translation import Translator, translate  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AttentionDecoder",
    "Decoder",
    "Translator",
    "evaluate_texts",
    "export_saved_model",
    "load_run",
    "load_tokenizer",
    "make_tokenizer",
    "train",
    "translate",
    "AttentionDecoderCell",
    "BahdanauLuongAttention",
    "END_ID",
    "Encoder",
    "MaskedAccuracy",
    "MaskedSparseCategoricalCrossentropy",
    "PAD_ID",
    "START_ID",
    "StateBridge",
    "UNK_ID",
    "attention_model",
    "build_seq2seq_model",
    "masked_softmax",
]
