"""Backend-agnostic layers (keras.ops only)."""

from keras_s2s_attn.layers.attention import BahdanauLuongAttention, masked_softmax
from keras_s2s_attn.layers.decoder import AttentionDecoder
from keras_s2s_attn.layers.decoder_cell import AttentionDecoderCell
from keras_s2s_attn.layers.encoder import Encoder, StateBridge

__all__ = [
    "AttentionDecoder",
    "AttentionDecoderCell",
    "BahdanauLuongAttention",
    "Encoder",
    "StateBridge",
    "masked_softmax",
]
