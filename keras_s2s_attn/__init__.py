"""Sequence-to-sequence models with Bahdanau and Luong attention for Keras 3.

Importing the package loads nothing heavy: each name below is imported on
first use, so `s2s-attn --help` starts without TensorFlow, and the layers and
`build_seq2seq_model` work on every Keras backend while the TensorFlow side
(tokenizers, `tf.data`, decoding in `tf.function`, export, serving) is only
imported when used.

Keras can load a saved model only once its classes are registered, which
their modules do when imported. So the layers, the loss and the metric are
imported as soon as Keras is: at once if it already is, else right after
`import keras` runs (`_RegisterAfterKeras`). `import keras_s2s_attn` then
`keras.saving.load_model("model.keras")` works in either order of imports.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from keras_s2s_attn.lazy import lazy_names

__version__ = "0.1.0"

_EXPORTS = {
    **dict.fromkeys(("AttentionDecoder", "AttentionDecoderCell", "BahdanauLuongAttention",
                     "Encoder", "StateBridge", "masked_softmax"), "keras_s2s_attn.layers"),
    **dict.fromkeys(("MaskedAccuracy", "MaskedSparseCategoricalCrossentropy",
                     "attention_model", "build_seq2seq_model"), "keras_s2s_attn.models"),
    **dict.fromkeys(("END_ID", "PAD_ID", "START_ID", "UNK_ID"), "keras_s2s_attn.special_ids"),
    "FusedAdam": "keras_s2s_attn.optimizers",
    "evaluate_texts": "keras_s2s_attn.evaluation",
    **dict.fromkeys(("ModelSteps", "beam_search", "greedy_search"), "keras_s2s_attn.generation"),
    # The TensorFlow side.
    **dict.fromkeys(("BeamSearch", "Decoder", "DecodingStrategy", "EnsembleStepper",
                     "GreedySearch", "SamplingSearch", "Stepper", "register_strategy"),
                    "keras_s2s_attn.decoding"),
    "export_saved_model": "keras_s2s_attn.export",
    **dict.fromkeys(("load_tokenizer", "make_tokenizer"), "keras_s2s_attn.text"),
    "load_run": "keras_s2s_attn.runs",
    "train": "keras_s2s_attn.training",
    **dict.fromkeys(("Translator", "translate"), "keras_s2s_attn.translation"),
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_names(__name__, globals(), _EXPORTS)


def _register_keras_objects():
    """Imports the modules whose Keras classes `keras.saving.load_model` must find."""
    importlib.import_module("keras_s2s_attn.models")  # the layers, the loss, the metric
    importlib.import_module("keras_s2s_attn.optimizers")  # FusedAdam, which train() uses


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """A one-shot import hook: lets `import keras` run, then registers our classes.

    It finds Keras's own module spec and wraps that loader's `exec_module`
    (the module's loader stays Keras's own), so nothing about the import of
    Keras changes but what happens after it.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, execute = spec.loader, spec.loader.exec_module

        def exec_module(module):
            try:
                execute(module)
            finally:
                del loader.exec_module  # the loader's own method again
            _register_keras_objects()

        loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    _register_keras_objects()
elif not any(isinstance(finder, _RegisterAfterKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
