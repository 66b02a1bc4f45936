"""What the TensorFlow side of the package needs, said once, before it fails deep inside.

The layers, `build_seq2seq_model`, the loss, the metric and `generation`
(greedy and beam search in `keras.ops`) run on every Keras backend. The rest
is TensorFlow: the tokenizers and `tf.data` pipelines need TensorFlow
installed (they work beside any Keras backend), while decoding in
`tf.function`, `Translator`, training runs, the export and the server call
the Keras layers inside TensorFlow graphs and so need `KERAS_BACKEND` to be
`tensorflow`. Each such module calls one of the two checks below at import.
"""

import functools
import importlib.util

TRAIN_ANYWHERE = (
    "train on any backend with build_seq2seq_model and model.fit, save a .keras file, "
    "then load it in a TensorFlow process to export it (see the README, 'Other Keras backends')"
)


class BackendError(ImportError):
    """A TensorFlow-only module imported without TensorFlow, or on another Keras backend."""


def require_tensorflow(module):
    """Raises `BackendError` unless TensorFlow is installed."""
    if importlib.util.find_spec("tensorflow") is None:
        raise BackendError(f"{module} needs TensorFlow: pip install 'tensorflow==2.21.*'")


def require_tensorflow_backend(module):
    """Raises `BackendError` unless TensorFlow is installed and Keras runs on it."""
    require_tensorflow(module)
    import keras  # here, so the CLI can import `BackendError` without starting Keras

    backend = keras.config.backend()
    if backend != "tensorflow":
        raise BackendError(
            f"{module} needs the TensorFlow Keras backend; Keras runs on {backend!r}. Set "
            f"KERAS_BACKEND=tensorflow before Keras is imported, or {TRAIN_ANYWHERE}; "
            "keras_s2s_attn.generation decodes on any backend."
        )


@functools.cache
def cudnn_available():
    """Whether Keras' own GRU/LSTM layers may run a cuDNN kernel here: TensorFlow or
    PyTorch with a GPU (a step loop written in `keras.ops` cannot beat one).

    Asked once per process (the backend and its devices are fixed by then): the
    encoder asks at every call, which under PyTorch, run eagerly, is every step."""
    import keras

    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False
