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

__version__ = "0.1.0"

__all__ = [
    "AttentionDecoder",
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
