"""Backend-agnostic layers (keras.ops only)."""

# Keras first, before any layer module starts: the package registers its Keras classes
# right after Keras's first import (keras_s2s_attn/__init__.py), which imports models.py,
# which imports these modules; started from inside one of them, that import met it
# half-done and failed (`from keras_s2s_attn import AttentionDecoder` in a fresh process).
import keras  # noqa: F401

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
