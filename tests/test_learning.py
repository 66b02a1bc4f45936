"""Learning tests: the models must actually learn, with stated accuracies.

Reversal of random token sequences (lengths 5-25) needs every source position
at every target step: the attention model must solve it, while the plain
encoder-decoder, which has only a fixed-size summary of the source, fails on
the long sequences within the same budget (Bahdanau et al. 2015, Figure 2).
"""

import pytest

from keras_s2s_attn.decoding import Decoder
from keras_s2s_attn.synthetic import exact_match
from tests.conftest import train_reversal


def exact_match_all_and_long(model, test_set):
    test_inputs, test_labels = test_set
    predicted = Decoder(model).greedy(test_inputs["source_ids"], max_output_length=30)
    predicted = predicted["ids"].numpy()
    long_rows = (test_inputs["source_ids"] > 0).sum(1) >= 16
    return (exact_match(predicted, test_labels),
            exact_match(predicted[long_rows], test_labels[long_rows]))


@pytest.mark.timeout(600)
def test_attention_learns_reversal_and_beats_plain_encoder_decoder(reversal_model):
    attention_all, attention_long = exact_match_all_and_long(*reversal_model)
    plain_all, plain_long = exact_match_all_and_long(*train_reversal(None))
    print(f"exact match: attention {attention_all:.3f} (long {attention_long:.3f}), "
          f"plain {plain_all:.3f} (long {plain_long:.3f})")
    assert attention_all >= 0.95
    assert attention_long >= 0.90
    assert plain_long <= 0.20
    assert attention_long - plain_long >= 0.5
