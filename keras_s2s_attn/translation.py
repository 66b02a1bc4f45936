"""Text in, text out: tokenise, decode, detokenise, all in TensorFlow.

`Translator` joins a trained model (a stepper over it), its two tokenizers
and a set of decoding strategies, one per signature name. The same graph
code serves Python callers (`translator(["text", ...], signature)`,
`translate(...)`) and the exported SavedModel's signatures (`export.py`),
so a served model answers exactly as the model does in Python.
"""

from keras_s2s_attn.backends import require_tensorflow_backend

require_tensorflow_backend(__name__)  # a clear message before TensorFlow is imported

import functools
import os
import re

import tensorflow as tf

from keras_s2s_attn import runs, saved_models
from keras_s2s_attn.checks import positive_int
from keras_s2s_attn.decoding import BeamSearch, GreedySearch, SamplingSearch, make_stepper
from keras_s2s_attn.decoding.registry import get_strategy
from keras_s2s_attn.generation import default_max_length
from keras_s2s_attn.graphs import graph_function
from keras_s2s_attn.options import BeamOptions, SamplingOptions
from keras_s2s_attn.special_ids import PAD_ID, UNK_ID

DEFAULT_MAX_SOURCE_LENGTH = 256
OUTPUT_NAMES = ("translation", "score", "attention", "source_tokens", "target_tokens",
                "truncated", "unknown_tokens")
# What a strategy that `lists_results` adds: all its results, best first.
LIST_OUTPUT_NAMES = ("translations", "scores")
_SIGNATURE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def default_strategies(beam=BeamOptions(), sampling=SamplingOptions()):
    """`{signature name: strategy}` of a `Translator` (and an export) by default:
    `serving_default` greedy, `beam_search` and `sample`."""
    return {"serving_default": GreedySearch(),
            "beam_search": BeamSearch(**vars(beam)),
            "sample": SamplingSearch(**vars(sampling))}


class Translator:
    """A trained model with its tokenizers: strings to translations and attention.

    Args:
        model: A model from `build_seq2seq_model`, or a list of such models
            sharing the tokenizers, decoded as one ensemble (`EnsembleStepper`).
        source_tokenizer, target_tokenizer: The run's adapted tokenizers.
        strategies: `{signature name: strategy}`: each a `DecodingStrategy`
            or a registered name; default `default_strategies()`
            (`serving_default` greedy, `beam_search`, `sample`).
        max_source_length: Source tokens kept per input; longer inputs are
            cut and flagged in `truncated`.
        max_output_length: Most target tokens (the end token included);
            default 2·S + 10 for a batch whose longest source has S tokens.
        replace_unknown: Replace each unknown target token by the source
            token it attended to most (OpenNMT's `replace_unknown_target`);
            needs attention and a `char`, `word` or `space` target tokenizer.
        jit_compile: Compile the numeric core (encoder and search) with XLA,
            in Python calls and in the export; string ops stay outside XLA.
            Batches are padded to bucket shapes (`bucket_shape`), so XLA
            compiles once per bucket. XLA draws other samples than the plain
            graph for one seed.

    Call arguments:
        texts: A str, a list of str, or a 1-D `tf.string` tensor.
        signature: Which strategy decodes (a key of `strategies`).
        **inputs: The strategy's per-call values (`SamplingSearch`:
            `temperature`, `top_k`, `top_p`, `seed`).

    Returns:
        A dict of numpy arrays, one row per text: `translation` (bytes, UTF-8),
        `score` (sum of log-probabilities), `attention` `(batch, T, S)` (absent
        for a model without attention, see `output_names`), `source_tokens`
        `(batch, S)` and `target_tokens` `(batch, T)` (bytes, "" where padded,
        for labelling attention maps), `truncated` (bool), `unknown_tokens`
        (int32: how many of the row's source tokens, after truncation, the
        source vocabulary lacks; a text the model cannot read shows here).
        A strategy that lists its results (beam, sampling) adds
        `translations` and `scores` `(batch, K)`, best first; the other
        outputs are those of the best.

    Example:

    >>> translator = Translator.from_run("runs/g2p")
    >>> translator(["attention"])["translation"]
    array([b'AH T EH N SH AH N'], dtype=object)
    >>> translator(["attention"], "beam_search")["translations"].shape
    (1, 4)
    """

    def __init__(self, model, source_tokenizer, target_tokenizer, *, strategies=None,
                 max_source_length=DEFAULT_MAX_SOURCE_LENGTH, max_output_length=None,
                 replace_unknown=False, jit_compile=False):
        self.models = list(model) if isinstance(model, (list, tuple)) else [model]
        self.jit_compile = bool(jit_compile)
        # XLA needs static shapes: no packed encoder, no compacted searches.
        self.stepper = make_stepper(self.models, dynamic_shapes=not self.jit_compile)
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.strategies = _checked_strategies(default_strategies() if strategies is None
                                              else strategies)
        self.max_source_length = positive_int(max_source_length, "max_source_length")
        self.max_output_length = (None if max_output_length is None
                                  else positive_int(max_output_length, "max_output_length"))
        self.replace_unknown = bool(replace_unknown)
        if self.replace_unknown:
            _check_replace_unknown(self.stepper, target_tokenizer)
        self._encode_graph = graph_function(self.encode_text, reduce_retracing=True)
        self._finish_graph = graph_function(self.finish, reduce_retracing=True)
        self._searches = {}

    @property
    def has_attention(self):
        return self.stepper.has_attention

    def output_names(self, signature="serving_default"):
        """The keys of a signature's output dict (and of the exported signature)."""
        names = OUTPUT_NAMES if self.has_attention else tuple(
            name for name in OUTPUT_NAMES if name != "attention")
        if self._strategy(signature).lists_results:
            names += LIST_OUTPUT_NAMES
        return names

    def settings(self):
        """What the export fixes, as a JSON-able dict (its info file)."""
        return {"ensemble_size": len(self.models),
                "max_source_length": self.max_source_length,
                "max_output_length": self.max_output_length,
                "replace_unknown": self.replace_unknown,
                "jit_compile": self.jit_compile,
                "signatures": {name: {"strategy": strategy.name,
                                      "options": strategy.get_config(),
                                      "inputs": {key: default for key, (_, default)
                                                 in strategy.request_inputs().items()},
                                      "outputs": list(self.output_names(name))}
                               for name, strategy in self.strategies.items()}}

    @classmethod
    def from_run(cls, run_dir, which="best", **kwargs):
        """A translator for a run directory written by `train`, or an ensemble
        of several (a list of run directories with the same tokenizers).

        `max_source_length` defaults to the (first) run's own, else 256.
        """
        models, source_tokenizer, target_tokenizer, config = runs.load_runs(run_dir, which)
        kwargs.setdefault("max_source_length",
                          config.get("max_source_length") or DEFAULT_MAX_SOURCE_LENGTH)
        return cls(models, source_tokenizer, target_tokenizer, **kwargs)

    def _strategy(self, signature):
        strategy = self.strategies.get(signature)
        if strategy is None:
            raise ValueError(f"No signature {signature!r}; this translator has "
                             f"{sorted(self.strategies)}.")
        return strategy

    # ------------------------------------------------------------ graph parts
    def encode_text(self, text):
        """Strings `[batch]` to `(source_ids (batch, S ≥ 1), truncated, empty)`."""
        ids = self.source_tokenizer.encode(text)
        lengths = ids.row_lengths()
        # Cut to `max_source_length` columns by the padding op itself (a slice of
        # the ragged rows first is a dozen ops more); at least one (padding)
        # column, so an all-empty batch still encodes.
        width = tf.clip_by_value(ids.bounding_shape(axis=1), 1, self.max_source_length)
        source_ids = ids.to_tensor(default_value=PAD_ID, shape=tf.stack([ids.nrows(), width]))
        return source_ids, lengths > self.max_source_length, tf.equal(lengths, 0)

    def max_length_for(self, source_ids):
        """The decoding budget for a batch: 2·S + 10, capped by `max_output_length`."""
        budget = default_max_length(tf.shape(source_ids)[1])
        if self.max_output_length is not None:
            budget = tf.minimum(budget, self.max_output_length)
        return budget

    def decode_graph(self, signature, source_ids, step_limit=None, **inputs):
        """The numeric core as TensorFlow ops: source ids to the signature's
        search results `(ids, lengths, scores, attention, steps)`, `(batch,
        K, ...)`, untrimmed: T is `max_length_for(source_ids)`, of which
        `steps` were taken (at most `step_limit`, a scalar tensor).

        It holds every read of the model's weights, no string op and no
        shape that depends on a value, so the export can wrap it alone
        (stored weights) and compile it with XLA between the string parts
        `encode_text` and `finish`; `search_graph` calls it.
        """
        result = self._strategy(signature).decode(
            self.stepper, source_ids, self.max_length_for(source_ids), step_limit, **inputs)
        return result.ids, result.lengths, result.scores, result.attention, result.steps

    def search_graph(self, core, source_ids, **inputs):
        """Runs `core` (a `decode_graph`, maybe compiled with XLA) on
        `source_ids`: `(ids, lengths, scores, attention)` trimmed to the
        steps taken, the input to `finish`.

        With `jit_compile`, the ids are padded first to a bucket shape
        (`bucket_shape`), so that XLA compiles once per bucket rather than
        once per batch shape; the step limit stays the unpadded batch's, so
        the results are those of the batch alone.
        """
        batch, length = tf.shape(source_ids)[0], tf.shape(source_ids)[1]
        limit = self.max_length_for(source_ids)
        if self.jit_compile:
            rows, columns = bucket_shape(batch, length, self.max_source_length)
            source_ids = tf.pad(source_ids, [[0, rows - batch], [0, columns - length]])
        ids, lengths, scores, attention, steps = core(source_ids, limit, **inputs)
        return (ids[:batch, :, :steps], lengths[:batch], scores[:batch],
                attention[:batch, :, :steps, :length])

    def finish(self, source_ids, truncated, empty, ids, lengths, scores, attention,
               lists=False):
        """Search results `(batch, K, ...)` to the output dict (detokenised,
        labelled, empty rows blank); with `lists`, `translations` and `scores`
        of all K too. `attention` is ignored for a model without attention."""
        source_tokens = tf.where(tf.not_equal(source_ids, PAD_ID),
                                 self.source_tokenizer.id_to_token(source_ids), "")
        steps = tf.shape(ids)[2]
        # Target labels: the tokens up to and including the end token.
        kept = (tf.range(steps) <= lengths[..., None]) & tf.not_equal(ids, PAD_ID)
        kept &= ~empty[:, None, None]
        tokens = self.target_tokenizer.id_to_token(ids)
        if self.replace_unknown:
            copied = tf.gather(source_tokens, tf.argmax(attention, axis=-1, output_type=tf.int32),
                               batch_dims=1)
            tokens = tf.where(tf.equal(ids, UNK_ID),
                              self.target_tokenizer.copied_surface(copied), tokens)
            translations = self._join(tokens, tf.range(steps) < lengths[..., None])
        else:  # explicit sizes, not -1: an empty batch has none to infer
            batch, results = tf.shape(ids)[0], tf.shape(ids)[1]
            translations = tf.reshape(
                self.target_tokenizer.decode(tf.reshape(ids, (batch * results, steps))),
                (batch, results))
        translations = tf.where(empty[:, None], tf.constant(""), translations)
        scores = tf.where(empty[:, None], 0.0, scores)
        outputs = {
            "translation": translations[:, 0],
            "score": scores[:, 0],
            "source_tokens": source_tokens,
            "target_tokens": tf.where(kept, tokens, "")[:, 0],
            "truncated": truncated,
            "unknown_tokens": tf.reduce_sum(tf.cast(tf.equal(source_ids, UNK_ID), tf.int32),
                                            axis=1),
            "translations": translations,
            "scores": scores,
        }
        if self.has_attention:
            outputs["attention"] = tf.where(kept[..., None], attention, 0.0)[:, 0]
        names = OUTPUT_NAMES + (LIST_OUTPUT_NAMES if lists else ())
        return {name: outputs[name] for name in names if name in outputs}

    def _join(self, tokens, before_end):
        """Token strings `(batch, K, T)` to text `(batch, K)`: those before the end id."""
        batch, results = tf.shape(tokens)[0], tf.shape(tokens)[1]
        flat = tf.reshape(tokens, (batch * results, -1))
        ragged = tf.ragged.boolean_mask(flat, tf.reshape(before_end, tf.shape(flat)))
        return tf.reshape(self.target_tokenizer.detokenize(ragged), (batch, results))

    def translate_graph(self, text, signature="serving_default", **inputs):
        """The whole text-to-text path as TensorFlow ops: `encode_text`,
        `decode_graph`, `finish`."""
        source_ids, truncated, empty = self.encode_text(text)
        core = functools.partial(self.decode_graph, signature)
        return self.finish(source_ids, truncated, empty,
                           *self.search_graph(core, source_ids, **inputs),
                           lists=self._strategy(signature).lists_results)

    # ------------------------------------------------------------ Python API
    def __call__(self, texts, signature="serving_default", **inputs):
        strategy = self._strategy(signature)
        if isinstance(texts, str):
            texts = [texts]
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank != 1:
            raise ValueError(f"`texts` must be a str or a 1-D list of str; got shape "
                             f"{texts.shape}.")
        # All inputs, always as tensors: one trace per strategy, whichever a call sets.
        inputs = strategy.request_values(**inputs)
        source_ids, truncated, empty = self._encode_graph(texts)
        if texts.shape[0]:
            results = self._search(signature)(source_ids, **inputs)
        else:  # a search traced for a static batch of 0 cannot write its buffers
            k, width = strategy.num_results, source_ids.shape[1]
            results = (tf.zeros([0, k, 0], tf.int32), tf.zeros([0, k], tf.int32),
                       tf.zeros([0, k]), tf.zeros([0, k, 0, width]))
        outputs = self._finish_graph(source_ids, truncated, empty, *results,
                                     lists=strategy.lists_results)
        return {name: value.numpy() for name, value in outputs.items()}

    def _search(self, signature):
        """`search_graph` over the signature's core, as `tf.function`s (the core
        compiled with XLA under `jit_compile`), made once per signature."""
        search = self._searches.get(signature)
        if search is None:
            core = graph_function(functools.partial(self.decode_graph, signature),
                                  jit_compile=self.jit_compile, reduce_retracing=True)
            search = graph_function(functools.partial(self.search_graph, core),
                                    reduce_retracing=True)
            self._searches[signature] = search
        return search


def column_buckets(max_source_length):
    """The source lengths XLA compiles for: 8, 16, 24, 32, 48, 64, 96, ...
    (each at most 1.5 times the one before) below `max_source_length`, then
    `max_source_length` itself (no source is longer)."""
    sizes, size = [], 8
    while size < max_source_length:
        sizes.append(size)
        size = size + 8 if size < 32 else size * 3 // 2 // 8 * 8
    return sizes + [max_source_length]


def bucket_shape(batch, length, max_source_length):
    """The padded shape XLA compiles a batch of source ids for: rows the next
    power of two, columns the next of `column_buckets(max_source_length)`.

    Args:
        batch, length: The batch's shape (scalar int32 tensors).
        max_source_length: A Python int.

    Returns:
        `(rows, columns)`, scalar int32 tensors.
    """
    sizes = tf.constant(column_buckets(max_source_length))
    powers = tf.constant([2**i for i in range(31)])
    rows = powers[tf.reduce_sum(tf.cast(powers < batch, tf.int32))]
    index = tf.minimum(tf.reduce_sum(tf.cast(sizes < length, tf.int32)), tf.size(sizes) - 1)
    return rows, tf.maximum(length, sizes[index])


def _checked_strategies(strategies):
    if not isinstance(strategies, dict) or not strategies:
        raise ValueError("`strategies` must be a non-empty dict {signature name: strategy}; "
                         f"got {strategies!r}.")
    checked = {}
    for name, strategy in strategies.items():
        if not isinstance(name, str) or not _SIGNATURE_NAME.fullmatch(name):
            raise ValueError(f"A signature name must be an identifier; got {name!r}.")
        checked[name] = get_strategy(strategy)
    return checked


def _check_replace_unknown(stepper, target_tokenizer):
    if not stepper.has_attention:
        raise ValueError("`replace_unknown` needs attention: the model was built without it, "
                         "so no source token can be picked.")
    if target_tokenizer.copied_surface is None:
        raise ValueError(f"`replace_unknown` needs a char, word or space target tokenizer; "
                         f"got {target_tokenizer.kind!r}, whose tokens are pieces of words.")


def translate(model_or_run_dir, texts, *, source_tokenizer=None, target_tokenizer=None,
              strategy="greedy", **kwargs):
    """Translates `texts` with a model (and its tokenizers) or a run directory.

    Args:
        model_or_run_dir: A run directory from `train` (or a list of them,
            decoded as their ensemble), or a model (then pass both tokenizers).
        texts: A str or a list of str.
        strategy: A `DecodingStrategy` or a registered name (`"greedy"`,
            `"beam"`, `"sample"`); its best result is returned.
        **kwargs: `Translator` options (`max_source_length`, `jit_compile`, ...).

    Returns:
        A list of str, one translation per text.

    Example:

    >>> translate("runs/g2p", ["attention", "seq2seq"], strategy=BeamSearch(4))
    ['AH T EH N SH AH N', 'S IY K T UW S IY K']
    """
    kwargs["strategies"] = {"translate": strategy}
    if runs.is_run_dirs(model_or_run_dir):
        translator = Translator.from_run(model_or_run_dir, **kwargs)
    else:
        if source_tokenizer is None or target_tokenizer is None:
            raise ValueError("Pass `source_tokenizer` and `target_tokenizer` with a model "
                             "(or give a run directory instead).")
        translator = Translator(model_or_run_dir, source_tokenizer, target_tokenizer, **kwargs)
    outputs = translator(texts, "translate")
    return [text.decode("utf-8") for text in outputs["translation"]]


def open_translator(path, strategy="greedy", replace_unknown=False, which=None):
    """A function `texts -> outputs` for a run directory or an exported SavedModel.

    Args:
        path: A run directory (any strategy), `saved_models/NAME` (its
            highest version) or one version directory. An exported model
            decodes only with the strategies exported: the strategy must
            match one of its signatures (a beam's width and penalties, the
            number of samples), though it may ask for fewer results.
        strategy: A `DecodingStrategy` or a registered name.
        replace_unknown: Replace unknown target tokens (see `Translator`); an
            export must have been exported so.
        which: A run directory's model: `"best"` (the default), `"final"` or
            `"averaged"` (see `runs.load_run`). An export holds one model, so
            it takes none.

    Returns:
        A callable taking a list of str and returning the output dict of
        numpy arrays (see `Translator`). Its `output_names` attribute lists
        that dict's keys; `target_tokenizer` is the model's target tokenizer
        (None for an export that did not save it).
    """
    strategy = get_strategy(strategy)
    path = os.fspath(path)
    if runs.is_run_dir(path):
        translator = Translator.from_run(path, which or "best",
                                         strategies={"translate": strategy},
                                         replace_unknown=replace_unknown)

        def run(texts):
            return translator(texts, "translate")

        run.output_names = translator.output_names("translate")
        run.target_tokenizer = translator.target_tokenizer
        return run
    if which is not None:
        raise ValueError(f"`which` ({which!r}) picks one of a run directory's models; "
                         f"{path!r} is not a run directory (an export holds one model).")
    version_dir = saved_models.latest_version_dir(path)
    if replace_unknown and not saved_models.read_export_info(version_dir).get("replace_unknown"):
        raise ValueError(f"{version_dir!r} was exported without unknown-word replacement: "
                         "export it with --replace-unknown, or translate with the run "
                         "directory.")
    signature, inputs = _matching_signature(version_dir, strategy)
    function = saved_models.load_saved_model(version_dir).signatures[signature]
    inputs = {name: tf.constant(value, function.structured_input_signature[1][name].dtype)
              for name, value in inputs.items()}
    results = strategy.num_results

    def run(texts):
        outputs = function(text=tf.constant(list(texts), tf.string, shape=[len(texts)]),
                           **inputs)
        return {name: value.numpy()[:, :results] if name in LIST_OUTPUT_NAMES
                else value.numpy() for name, value in outputs.items()}

    run.output_names = tuple(function.structured_outputs)
    run.target_tokenizer = saved_models.load_exported_tokenizer(version_dir, "target")
    return run


def _matching_signature(version_dir, strategy):
    """The exported signature that decodes as `strategy`, and the inputs to give it."""
    exported = saved_models.exported_strategies(version_dir)
    mine = strategy.get_config()
    inputs = {name: mine[name] for name in strategy.request_inputs()}
    def fixed(config):  # what the export fixed: all but request inputs and the count
        return {key: value for key, value in config.items()
                if key not in inputs and key != "num_results"}

    for signature, (name, options) in exported.items():
        if name != strategy.name:
            continue
        theirs = get_strategy(name, **options)
        if (fixed(theirs.get_config()) == fixed(mine)
                and strategy.num_results <= theirs.num_results):
            return signature, inputs
    listed = "; ".join(f"{signature}: {name} {options}"
                       for signature, (name, options) in exported.items())
    raise ValueError(f"{version_dir!r} has no signature decoding as {strategy!r} (it has "
                     f"{listed}): use those options, or translate with the run directory.")
