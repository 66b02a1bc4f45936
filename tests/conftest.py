import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_s2s_attn import (  # noqa: E402
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    build_seq2seq_model,
)
from keras_s2s_attn.synthetic import reversal_task  # noqa: E402

REVERSAL_SYMBOLS = 20


# The longest test files, started first: the two pytest-xdist workers take whole files
# in this order, so the long ones overlap the rest instead of running alone at the end.
SLOW_FIRST = ("test_model_matrix.py", "test_decoding.py", "test_export.py", "test_train_cli.py",
              "test_learning.py", "test_serving.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order within each file is kept


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


def train_reversal(attention, epochs=7):
    """A small model trained on reversing 5-25 random symbols; (model, test set)."""
    keras.utils.set_random_seed(0)
    inputs, labels = reversal_task(6400, num_symbols=REVERSAL_SYMBOLS, seed=1)
    test_set = reversal_task(500, num_symbols=REVERSAL_SYMBOLS, seed=2)
    vocab = 4 + REVERSAL_SYMBOLS
    model = build_seq2seq_model(vocab, vocab, embedding_dim=32, units=64, attention=attention,
                                dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3, clipnorm=1.0),
                  loss=MaskedSparseCategoricalCrossentropy(), metrics=[MaskedAccuracy()])
    data = tf.data.Dataset.from_tensor_slices((inputs, labels)).shuffle(6400, seed=0).batch(64)
    model.fit(data, epochs=epochs, verbose=0, shuffle=False)  # shuffled above
    return model, test_set


@pytest.fixture(scope="session")
def reversal_model():
    """Trained once per test session; shared by the learning and decoding tests."""
    return train_reversal("additive")


from tests.serving_fixtures import tiny_run  # noqa: E402,F401  (a shared fixture)
