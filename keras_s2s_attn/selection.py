"""Model selection on the task metric: the validation set decoded at each epoch end.

Validation loss rewards a model for spreading probability well; what a user
ships is judged on its decoded output (WER, BLEU, ...). `ValidationMetric`
decodes the validation sources greedily at each epoch end and logs
`val_<metric>`, which `RunCheckpoint` then picks `best.keras` by
(`train(select_by=...)`, `s2s-attn train --select-by wer`).
"""

from keras_s2s_attn.backends import require_tensorflow_backend

require_tensorflow_backend(__name__)  # a clear message before TensorFlow is imported

import keras

from keras_s2s_attn.callbacks import ema_weights
from keras_s2s_attn.checks import positive_int
from keras_s2s_attn.decoding import GreedySearch
from keras_s2s_attn.evaluation import METRICS, evaluate_texts, tokenizer_units
from keras_s2s_attn.translation import DEFAULT_MAX_SOURCE_LENGTH, Translator

# `evaluate_texts` metrics where a higher value is better; the error rates are lower-better.
HIGHER_IS_BETTER = ("bleu", "chrf", "exact")


class ValidationMetric(keras.callbacks.Callback):
    """Logs `val_<metric>` of greedy decoding on the validation set at each epoch end.

    The model decodes with its optimizer's moving average of the weights when
    it keeps one (`use_ema`), as validation does. Place it before the
    callbacks that read the value (`RunCheckpoint(monitor=callback.monitor,
    mode=callback.mode)`): callbacks see the same `logs` in their order.

    Args:
        metric: A name of `evaluation.METRICS` (`"wer"`, `"bleu"`, ...).
        sources, references: The validation pairs, two lists of str.
        source_tokenizer, target_tokenizer: The model's tokenizers.
        max_source_length: Sources are cut to this many tokens, as the
            run's `Translator` and export cut them (None: their default, 256).
        batch_size: Sources decoded per call.

    Example:

    >>> wer = ValidationMetric("wer", valid_sources, valid_targets, source_tok, target_tok)
    >>> model.fit(train_ds, epochs=10, callbacks=[wer, RunCheckpoint(
    ...     "runs/demo", monitor=wer.monitor, mode=wer.mode)])
    """

    def __init__(self, metric, sources, references, source_tokenizer, target_tokenizer,
                 max_source_length=None, batch_size=256):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"`metric` must be one of {', '.join(map(repr, METRICS))}. "
                             f"Received: metric={metric!r}")
        if len(sources) != len(references) or not sources:
            raise ValueError(f"`sources` and `references` must be two non-empty lists of one "
                             f"length; got {len(sources)} and {len(references)}.")
        self.metric, self.sources, self.references = metric, list(sources), list(references)
        self.source_tokenizer, self.target_tokenizer = source_tokenizer, target_tokenizer
        self.max_source_length = positive_int(max_source_length or DEFAULT_MAX_SOURCE_LENGTH,
                                              "max_source_length")
        self.batch_size = positive_int(batch_size, "batch_size")
        self._translator = None

    def on_train_begin(self, logs=None):
        # Decodes as `s2s-attn evaluate RUN` does; traced once, it reads the weights as they are.
        self._translator = Translator(self.model, self.source_tokenizer, self.target_tokenizer,
                                      strategies={"serving_default": GreedySearch()},
                                      max_source_length=self.max_source_length)

    @property
    def monitor(self):
        return f"val_{self.metric}"

    @property
    def mode(self):
        return "max" if self.metric in HIGHER_IS_BETTER else "min"

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        with ema_weights(self.model):
            hypotheses = self.translate()
        logs[self.monitor] = evaluate_texts(
            hypotheses, [[reference] for reference in self.references], [self.metric],
            **tokenizer_units(self.target_tokenizer))[self.metric]

    def translate(self):
        """The model's greedy translations of the validation sources, as str."""
        texts = []
        for start in range(0, len(self.sources), self.batch_size):
            outputs = self._translator(self.sources[start: start + self.batch_size])
            texts.extend(text.decode("utf-8") for text in outputs["translation"])
        return texts
