"""Text in, text out: tokenise, decode, detokenise, all in TensorFlow.

`Translator` joins a trained model, its two tokenizers and a `Decoder`. The
same graph code serves Python callers (`translator(["text", ...])`,
`translate(...)`) and the exported SavedModel's signatures (`export.py`), so
a served model answers exactly as the model does in Python.
"""

import os

import tensorflow as tf

from keras_s2s_attn.checks import non_negative, positive_int
from keras_s2s_attn.decoding import Decoder, EnsembleDecoder
from keras_s2s_attn.special_ids import PAD_ID, UNK_ID

DEFAULT_MAX_SOURCE_LENGTH = 256
OUTPUT_NAMES = ("translation", "score", "attention", "source_tokens", "target_tokens",
                "truncated", "unknown_tokens")
# A model built with attention=None has no attention map: its outputs leave
# `attention` out (rather than invent an all-zero one), so a client tells the
# two kinds of model apart from the signature's outputs alone.
OUTPUT_NAMES_WITHOUT_ATTENTION = tuple(name for name in OUTPUT_NAMES if name != "attention")


def is_run_dirs(value):
    """True for a run directory (a path) or a non-empty list of them, False for models."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(is_run_dirs(item) for item in value)
    return isinstance(value, (str, bytes, os.PathLike))


class Translator:
    """A trained model with its tokenizers: strings to translations and attention.

    Args:
        model: A model from `build_seq2seq_model`, or a list of such models
            sharing the tokenizers, decoded as one ensemble (`EnsembleDecoder`).
        source_tokenizer, target_tokenizer: The run's adapted tokenizers.
        max_source_length: Source tokens kept per input; longer inputs are
            cut and flagged in `truncated`.
        max_output_length: Most target tokens (the end token included);
            default 2·S + 10 for a batch whose longest source has S tokens.
        beam_width: Beam width of `beam=True` (and of the exported beam
            signature).
        length_penalty_weight, coverage_penalty_weight: GNMT penalties of the
            beam search.
        jit_compile: Compile the decoder's numeric core with XLA in Python
            calls (string ops always stay outside XLA).

    Call arguments:
        texts: A str, a list of str, or a 1-D `tf.string` tensor.
        beam: Use beam search instead of greedy decoding.

    Returns:
        A dict of numpy arrays, one row per text: `translation` (bytes, UTF-8),
        `score` (sum of log-probabilities), `attention` `(batch, T, S)` (absent
        for a model without attention, see `output_names`), `source_tokens`
        `(batch, S)` and `target_tokens` `(batch, T)` (bytes, "" where padded,
        for labelling attention maps), `truncated` (bool), `unknown_tokens`
        (int32: how many of the row's source tokens, after truncation, the
        source vocabulary lacks; a text the model cannot read shows here).

    Example:

    >>> translator = Translator.from_run("runs/g2p")
    >>> translator(["attention"])["translation"]
    array([b'AH T EH N SH AH N'], dtype=object)
    """

    def __init__(self, model, source_tokenizer, target_tokenizer, *,
                 max_source_length=DEFAULT_MAX_SOURCE_LENGTH, max_output_length=None,
                 beam_width=4, length_penalty_weight=0.6, coverage_penalty_weight=0.0,
                 jit_compile=False):
        self.models = list(model) if isinstance(model, (list, tuple)) else [model]
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.max_source_length = positive_int(max_source_length, "max_source_length")
        self.max_output_length = (None if max_output_length is None
                                  else positive_int(max_output_length, "max_output_length"))
        self.beam_width = positive_int(beam_width, "beam_width")
        self.length_penalty_weight = non_negative(length_penalty_weight, "length_penalty_weight")
        self.coverage_penalty_weight = non_negative(coverage_penalty_weight,
                                                    "coverage_penalty_weight")
        self.decoder = (Decoder(self.models[0], jit_compile=jit_compile)
                        if len(self.models) == 1
                        else EnsembleDecoder(self.models, jit_compile=jit_compile))
        self._encode_graph = tf.function(self.encode_text, reduce_retracing=True)
        self._finish_graph = tf.function(self.finish, reduce_retracing=True)

    @property
    def output_names(self):
        """The keys of the output dict (and of the exported signatures' outputs)."""
        return OUTPUT_NAMES if self.decoder.has_attention else OUTPUT_NAMES_WITHOUT_ATTENTION

    def settings(self):
        """The decoding settings, as a JSON-able dict."""
        return {"ensemble_size": len(self.models), "outputs": list(self.output_names),
                "max_source_length": self.max_source_length,
                "max_output_length": self.max_output_length, "beam_width": self.beam_width,
                "length_penalty_weight": self.length_penalty_weight,
                "coverage_penalty_weight": self.coverage_penalty_weight}

    @classmethod
    def from_run(cls, run_dir, which="best", **kwargs):
        """A translator for a run directory written by `train`, or an ensemble
        of several (a list of run directories with the same tokenizers).

        `max_source_length` defaults to the (first) run's own, else 256.
        """
        from keras_s2s_attn.training import load_run

        if not is_run_dirs(run_dir):
            raise ValueError("`run_dir` must be a run directory or a non-empty list of them; "
                             f"got {run_dir!r}.")
        run_dirs = list(run_dir) if isinstance(run_dir, (list, tuple)) else [run_dir]
        runs = [load_run(path, which=which) for path in run_dirs]
        _, source_tokenizer, target_tokenizer, config = runs[0]
        for path, (_, source, target, _) in zip(run_dirs[1:], runs[1:]):
            for side, mine, first in (("source", source, source_tokenizer),
                                      ("target", target, target_tokenizer)):
                if (mine.get_config(), mine.vocabulary) != (first.get_config(),
                                                            first.vocabulary):
                    raise ValueError(
                        f"An ensemble's runs must share their tokenizers: the {side} "
                        f"tokenizer of {os.fspath(path)!r} differs from that of "
                        f"{os.fspath(run_dirs[0])!r} ({mine!r} vs {first!r}).")
        kwargs.setdefault("max_source_length",
                          config.get("max_source_length") or DEFAULT_MAX_SOURCE_LENGTH)
        return cls([model for model, _, _, _ in runs], source_tokenizer, target_tokenizer,
                   **kwargs)

    # ------------------------------------------------------------ graph parts
    def encode_text(self, text):
        """Strings `[batch]` to `(source_ids (batch, S ≥ 1), truncated, empty)`."""
        ids = self.source_tokenizer.encode(text)
        lengths = ids.row_lengths()
        ids = ids[:, : self.max_source_length]
        source_ids = ids.to_tensor(default_value=PAD_ID)
        # At least one (padding) column, so an all-empty batch still encodes.
        missing = tf.maximum(0, 1 - tf.shape(source_ids)[1])
        source_ids = tf.pad(source_ids, [[0, 0], [0, missing]])
        return source_ids, lengths > self.max_source_length, tf.equal(lengths, 0)

    def max_length_for(self, source_ids):
        """The decoding budget for a batch: 2·S + 10, capped by `max_output_length`."""
        budget = 2 * tf.shape(source_ids)[1] + 10
        if self.max_output_length is not None:
            budget = tf.minimum(budget, self.max_output_length)
        return budget

    def finish(self, source_ids, truncated, empty, ids, lengths, scores, attention=None):
        """Decoder results to the output dict (detokenised, labelled, empty rows blank).

        `attention` is ignored (and may be None) for a model without attention.
        """
        translation = self.target_tokenizer.decode(ids)
        translation = tf.where(empty, tf.constant(""), translation)
        steps = tf.shape(ids)[1]
        # Target labels: the tokens up to and including the end token.
        kept = tf.range(steps)[None, :] <= lengths[:, None]
        kept &= ~empty[:, None] & tf.not_equal(ids, PAD_ID)
        target_tokens = tf.where(kept, self.target_tokenizer.id_to_token(ids), "")
        source_tokens = tf.where(tf.not_equal(source_ids, PAD_ID),
                                 self.source_tokenizer.id_to_token(source_ids), "")
        outputs = {
            "translation": translation,
            "score": tf.where(empty, 0.0, scores),
            "source_tokens": source_tokens,
            "target_tokens": target_tokens,
            "truncated": truncated,
            "unknown_tokens": tf.reduce_sum(tf.cast(tf.equal(source_ids, UNK_ID), tf.int32),
                                            axis=1),
        }
        if self.decoder.has_attention:
            outputs["attention"] = tf.where(kept[..., None], attention, 0.0)
        return {name: outputs[name] for name in self.output_names}

    def decode_graph(self, source_ids, beam=False):
        """The numeric core as TensorFlow ops: source ids to `(ids, lengths,
        scores, attention)` of the best hypothesis, greedy or beam search.

        It holds every read of the model's weights and no string op, so the
        export can wrap it alone (stored weights, XLA) between the string
        parts `encode_text` and `finish`.
        """
        max_length = self.max_length_for(source_ids)
        if beam:
            ids, lengths, scores, _, attention, steps = self.decoder.beam_graph(
                source_ids, max_length, self.beam_width,
                tf.constant(self.length_penalty_weight),
                tf.constant(self.coverage_penalty_weight))
            return ids[:, 0, :steps], lengths[:, 0], scores[:, 0], attention[:, 0, :steps]
        ids, lengths, scores, attention, steps = self.decoder.greedy_graph(source_ids,
                                                                           max_length)
        return ids[:, :steps], lengths, scores, attention[:, :steps]

    def translate_graph(self, text, beam=False):
        """The whole text-to-text path as TensorFlow ops: `encode_text`,
        `decode_graph`, `finish`. `beam` is a Python bool."""
        source_ids, truncated, empty = self.encode_text(text)
        return self.finish(source_ids, truncated, empty, *self.decode_graph(source_ids, beam))

    # ------------------------------------------------------------ Python API
    def __call__(self, texts, beam=False):
        if isinstance(texts, str):
            texts = [texts]
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank != 1:
            raise ValueError(f"`texts` must be a str or a 1-D list of str; got shape "
                             f"{texts.shape}.")
        source_ids, truncated, empty = self._encode_graph(texts)
        budget = int(self.max_length_for(source_ids))
        if beam:
            result = self.decoder.beam_search(
                source_ids, beam_width=self.beam_width, max_output_length=budget,
                length_penalty_weight=self.length_penalty_weight,
                coverage_penalty_weight=self.coverage_penalty_weight)
        else:
            result = self.decoder.greedy(source_ids, max_output_length=budget)
        outputs = self._finish_graph(source_ids, truncated, empty, result["ids"],
                                     result["lengths"], result["scores"],
                                     result.get("attention"))
        return {name: value.numpy() for name, value in outputs.items()}


def translate(model_or_run_dir, texts, *, source_tokenizer=None, target_tokenizer=None,
              beam_width=1, **kwargs):
    """Translates `texts` with a model (and its tokenizers) or a run directory.

    Args:
        model_or_run_dir: A run directory from `train` (or a list of them,
            decoded as their ensemble), or a model (then pass both tokenizers).
        texts: A str or a list of str.
        beam_width: 1 for greedy decoding, more for beam search.
        **kwargs: `Translator` options (`max_source_length`, `jit_compile`, ...).

    Returns:
        A list of str, one translation per text.

    Example:

    >>> translate("runs/g2p", ["attention", "seq2seq"], beam_width=4)
    ['AH T EH N SH AH N', 'S IY K T UW S IY K']
    """
    kwargs["beam_width"] = beam_width
    if is_run_dirs(model_or_run_dir):
        translator = Translator.from_run(model_or_run_dir, **kwargs)
    else:
        if source_tokenizer is None or target_tokenizer is None:
            raise ValueError("Pass `source_tokenizer` and `target_tokenizer` with a model "
                             "(or give a run directory instead).")
        translator = Translator(model_or_run_dir, source_tokenizer, target_tokenizer, **kwargs)
    outputs = translator(texts, beam=beam_width > 1)
    return [text.decode("utf-8") for text in outputs["translation"]]


def open_translator(path, beam_width=1):
    """A function `texts -> outputs` for a run directory or an exported SavedModel.

    Args:
        path: A run directory (any `beam_width`), `saved_models/NAME` (its
            highest version) or one version directory. An exported model's
            beam width is fixed at export: `beam_width` must be 1 or that.
        beam_width: 1 for greedy decoding.

    Returns:
        A callable taking a list of str and returning the output dict of
        numpy arrays (see `Translator`). Its `output_names` attribute lists
        that dict's keys; `target_tokenizer` is the model's target tokenizer
        (None for an export that did not save it).
    """
    from keras_s2s_attn import export  # export imports this module

    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "config.json")):
        translator = Translator.from_run(path, beam_width=beam_width)

        def run(texts):
            return translator(texts, beam=beam_width > 1)

        run.output_names = translator.output_names
        run.target_tokenizer = translator.target_tokenizer
        return run
    version_dir = export.latest_version_dir(path)
    signature = "serving_default"
    if beam_width > 1:
        exported = export.read_export_info(version_dir).get("beam_width")
        if exported != beam_width:
            raise ValueError(f"{version_dir!r} was exported with beam_width={exported}: use "
                             f"--beam {exported} (or 1), or translate with the run directory.")
        signature = "beam_search"
    function = export.load_saved_model(version_dir).signatures[signature]

    def run(texts):
        outputs = function(text=tf.constant(list(texts), tf.string, shape=[len(texts)]))
        return {name: value.numpy() for name, value in outputs.items()}

    run.output_names = tuple(function.structured_outputs)
    run.target_tokenizer = export.load_exported_tokenizer(version_dir, "target")
    return run
