"""`Decoder`: decoding strategies over a model, from Python, with argument checks."""

from keras_s2s_attn.backends import require_tensorflow_backend

require_tensorflow_backend(__name__)  # a clear message before TensorFlow is imported

import tensorflow as tf

from keras_s2s_attn.checks import positive_int
from keras_s2s_attn.decoding.registry import get_strategy
from keras_s2s_attn.decoding.stepper import make_stepper
from keras_s2s_attn.generation import default_max_length
from keras_s2s_attn.graphs import graph_function
from keras_s2s_attn.special_ids import END_ID, START_ID


class Decoder:
    """Decodes source ids with a model (or an ensemble) and any strategy.

    Each strategy's search is a `tf.function` of its own (traced once per
    strategy object and batch shape; with `jit_compile`, compiled with XLA
    once per `max_output_length` too).

    Args:
        model: A model from `build_seq2seq_model`, or a list of two or more
            sharing their vocabularies, decoded as their ensemble.
        start_id: The first decoder input.
        end_id: The id that ends a sequence.
        jit_compile: Compile the searches with XLA.

    Example:

    >>> decoder = Decoder(model)
    >>> greedy = decoder.greedy(np.array([[5, 6, 7]]), max_output_length=10)
    >>> beam = decoder.beam_search(np.array([[5, 6, 7]]), beam_width=4, num_results=2)
    >>> sorted(greedy)
    ['attention', 'ids', 'lengths', 'scores']
    """

    def __init__(self, model, start_id=START_ID, end_id=END_ID, jit_compile=False):
        self.jit_compile = bool(jit_compile)
        # XLA needs static shapes: no packed encoder, no compacted searches.
        self.stepper = make_stepper(model, start_id, end_id, dynamic_shapes=not self.jit_compile)
        self._functions = {}  # id(strategy) -> its search as a tf.function
        self._strategies = {}  # (class, options) -> the strategy object `_cached` hands out

    @property
    def has_attention(self):
        return self.stepper.has_attention

    def decode(self, strategy, source_ids, max_output_length=None, **inputs):
        """Runs `strategy` (an object or a registered name) on `source_ids`.

        Args:
            strategy: A `DecodingStrategy`, or a registered name (with its
                default options).
            source_ids: Int `(batch, S)`, 0 for padding.
            max_output_length: Most tokens per row (the end id included);
                default 2·S + 10.
            **inputs: The strategy's per-call values (`request_inputs`).

        Returns:
            A dict of tensors: `ids` `(batch, K, T)` (the end id included, 0
            after it), `lengths` `(batch, K)` (tokens before the end id),
            `scores` `(batch, K)` (sums of log-probabilities),
            `ranking_scores` `(batch, K)` and `attention` `(batch, K, T, S)`
            (absent for a model without attention); T is the steps taken.
        """
        strategy = get_strategy(strategy)
        source_ids, max_length = self._check(source_ids, max_output_length)
        function = self._functions.get(id(strategy))
        if function is None:
            function = graph_function(
                lambda ids, length, **values: strategy.decode(self.stepper, ids, length,
                                                              **values),
                jit_compile=self.jit_compile, reduce_retracing=True)
            self._functions[id(strategy)] = function
        result = function(source_ids, max_length, **strategy.request_values(**inputs)).trimmed()
        outputs = {"ids": result.ids, "lengths": result.lengths, "scores": result.scores,
                   "ranking_scores": result.ranking_scores, "attention": result.attention}
        if not self.has_attention:
            del outputs["attention"]
        return outputs

    def greedy(self, source_ids, max_output_length=None):
        """Greedy decoding: `decode`'s dict without its K axis (one result per row)."""
        return _first(self.decode(_GREEDY, source_ids, max_output_length))

    __call__ = greedy

    def beam_search(self, source_ids, max_output_length=None, **options):
        """`BeamSearch(**options)`: `decode`'s dict, without its K axis when
        `num_results=1` (by default K is the beam width)."""
        strategy = self._cached(get_strategy("beam", **options))
        result = self.decode(strategy, source_ids, max_output_length)
        return _first(result) if strategy.num_results == 1 else result

    def sample(self, source_ids, max_output_length=None, **options):
        """`SamplingSearch(**options)`, K = `num_samples` results per row."""
        return self.decode(self._cached(get_strategy("sample", **options)), source_ids,
                           max_output_length)

    def _cached(self, strategy):
        """One strategy object per configuration, so each is traced once."""
        key = (type(strategy), tuple(sorted(strategy.get_config().items())))
        return self._strategies.setdefault(key, strategy)

    def _check(self, source_ids, max_output_length):
        source_ids = tf.convert_to_tensor(source_ids)
        if not source_ids.dtype.is_integer:
            raise ValueError(f"`source_ids` must be integer ids. Received dtype {source_ids.dtype}")
        source_ids = tf.cast(source_ids, tf.int32)
        if source_ids.shape.rank != 2:
            raise ValueError(
                f"`source_ids` must be (batch, S). Received shape {source_ids.shape}"
            )
        if max_output_length is None:
            max_output_length = default_max_length(int(tf.shape(source_ids)[1]))
        max_output_length = positive_int(int(max_output_length), "max_output_length")
        if self.jit_compile:
            # Buffer sizes must be compile-time constants under XLA (one
            # compilation per value); a tensor otherwise avoids retracing.
            return source_ids, max_output_length
        return source_ids, tf.constant(max_output_length)


def _first(result):
    """A `decode` dict without its K axis: the best result of each row."""
    return {key: value[:, 0] for key, value in result.items()}


_GREEDY = get_strategy("greedy")
