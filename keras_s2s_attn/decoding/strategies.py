"""Decoding strategies: how the next tokens are picked, and how results are ranked.

A strategy owns its search: `decode(stepper, source_ids, max_length)` runs
the shared loop (`search.run_search`) with the strategy's `next_tokens`
choosing each step's tokens and `ranking` ordering the final hypotheses.
Keras-hub's samplers (`get_next_token`) and OpenNMT-tf's decoding
strategies (`initialize`/`step`/`finalize`) were the anchors; here one
method is the extension point, so a constrained or diverse beam is a
subclass overriding `next_tokens` (and, to be found by name, registered
with `register_strategy`).

Per-request values (sampling's temperature, top-k, top-p and seed) are
`request_inputs`: the export gives each its own scalar signature input with
the strategy's value as the default.
"""

import tensorflow as tf

from keras_s2s_attn.checks import non_negative, positive_int
from keras_s2s_attn.decoding.registry import register_strategy
from keras_s2s_attn.decoding.search import run_search
from keras_s2s_attn.decoding.stepper import NEG_INF
from keras_s2s_attn.generation import gnmt_ranking
from keras_s2s_attn.options import BeamOptions, SamplingOptions

_INT32_MAX = 2**31 - 1


class DecodingStrategy:
    """Base class of the strategies.

    Subclasses set `width` and `num_results` and implement `next_tokens`;
    strategies whose hypotheses change parents (a beam) set `reorders`.
    The methods are traced into a graph without AutoGraph (see
    `graphs.graph_function`): branch on tensors with `tf.where` or `tf.cond`,
    not a Python `if`.

    Attributes:
        name: The registry name (set by `register_strategy`).
        signature_name: The export's signature for this strategy.
        reorders: Hypotheses may continue another's prefix (parents are
            tracked and read back); False: hypothesis i always extends i.
        lists_results: The export and `Translator` return all `num_results`
            results (`translations`, `scores`), not only the best.
        compactable: An input whose hypotheses have all finished may leave
            the batch: each input's choices depend on its own rows only, and
            continuing finished hypotheses (with padding) changes nothing
            but their order. False by default, for strategies that draw
            from batch-shaped random streams or look across inputs.
    """

    name = None
    signature_name = None
    reorders = False
    lists_results = False
    compactable = False

    @property
    def width(self):
        """Hypotheses carried per input."""
        return 1

    @property
    def num_results(self):
        """Results returned per input (at most `width`)."""
        return 1

    def get_config(self):
        """The strategy's arguments, JSON-able: `type(self)(**config)` rebuilds it."""
        return {}

    def request_inputs(self):
        """`{name: (tf.DType, default)}`: scalar values a request may set."""
        return {}

    def request_values(self, **inputs):
        """Every request input as a tensor: `inputs` given, defaults for the rest."""
        known = self.request_inputs()
        unknown = sorted(set(inputs) - set(known))
        if unknown:
            raise ValueError(f"{type(self).__name__} takes no input {unknown}; its inputs are "
                             f"{sorted(known) or 'none'}.")
        return {name: tf.cast(inputs.get(name, default), dtype)
                for name, (dtype, default) in known.items()}

    def parameters(self, **inputs):
        """What `next_tokens` and `ranking` receive: `request_values`, checked."""
        return self.request_values(**inputs)

    def initial_scores(self, batch):
        """Scores `(batch, width)` before the first step."""
        return tf.zeros([batch, self.width])

    def next_tokens(self, log_probs, hypotheses, t, parameters):
        """Picks each hypothesis's next token.

        Args:
            log_probs: Float32 `(batch, width, vocab)`: the model's
                log-probabilities (a finished hypothesis: 0 for padding,
                `NEG_INF` for the rest).
            hypotheses: `Hypotheses` before this step's token (lengths and
                coverage as if every live hypothesis grew).
            t: The step (scalar int32).
            parameters: `parameters()`'s tensors.

        Returns:
            `(tokens, parents)`: int32 `(batch, width)` tokens and, for a
            strategy that `reorders`, the hypothesis each extends (None
            otherwise).
        """
        raise NotImplementedError

    def ranking(self, hypotheses, parameters):
        """What the final hypotheses are sorted by (best first): their scores."""
        return hypotheses.scores

    def decode(self, stepper, source_ids, max_length, step_limit=None, **inputs):
        """Runs the search: a `SearchResult` of `num_results` hypotheses per input.

        Args:
            stepper: A `Stepper` or `EnsembleStepper`.
            source_ids: Int32 `(batch, S)`, 0 for padding.
            max_length: Most steps, the buffers' size (a Python int, or a
                scalar tensor).
            step_limit: Most steps, as a tensor at most `max_length`
                (`run_search`'s); default `max_length`.
            **inputs: Values of `request_inputs` for this call.
        """
        return run_search(self, stepper, source_ids, max_length, self.parameters(**inputs),
                          step_limit)

    def __repr__(self):
        options = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({options})"


@register_strategy("greedy")
class GreedySearch(DecodingStrategy):
    """The most likely token at every step.

    Example:

    >>> GreedySearch().decode(Stepper(model), tf.constant([[5, 6, 7]]), 10).ids
    """

    signature_name = "serving_default"
    compactable = True

    def next_tokens(self, log_probs, hypotheses, t, parameters):
        return tf.argmax(log_probs, axis=-1, output_type=tf.int32), None


@register_strategy("beam")
class BeamSearch(DecodingStrategy):
    """Beam search with GNMT's length and coverage penalties (Wu et al. 2016).

    Hypotheses are ranked by log P(Y|X) / lp(Y) + cp(X; Y) with
    lp(Y) = ((5 + |Y|) / 6)^α and cp = β Σ_j log(min(Σ_i a_ij, 1)) over the
    real source positions j (the coverage term for complete hypotheses).
    With `beam_width=1` it equals `GreedySearch`.

    Args:
        beam_width: Hypotheses kept per input.
        length_penalty_weight: α ≥ 0.
        coverage_penalty_weight: β ≥ 0.
        num_results: How many of the best hypotheses to return (≤ beam_width);
            None for all `beam_width`.

    Example:

    >>> BeamSearch(beam_width=4, num_results=3).decode(stepper, source_ids, 20).ids.shape
    TensorShape([1, 3, 20])
    """

    signature_name = "beam_search"
    reorders = True
    compactable = True
    lists_results = True

    def __init__(self, beam_width=BeamOptions.beam_width,
                 length_penalty_weight=BeamOptions.length_penalty_weight,
                 coverage_penalty_weight=BeamOptions.coverage_penalty_weight,
                 num_results=BeamOptions.num_results):
        self.beam_width = positive_int(beam_width, "beam_width")
        self.length_penalty_weight = non_negative(length_penalty_weight,
                                                  "length_penalty_weight")
        self.coverage_penalty_weight = non_negative(coverage_penalty_weight,
                                                    "coverage_penalty_weight")
        num_results = self.beam_width if num_results is None else num_results
        self._num_results = positive_int(num_results, "num_results")
        if num_results > beam_width:
            raise ValueError(f"`num_results` ({num_results}) cannot exceed `beam_width` "
                             f"({beam_width}).")

    @property
    def width(self):
        return self.beam_width

    @property
    def num_results(self):
        return self._num_results

    def get_config(self):
        return {"beam_width": self.beam_width,
                "length_penalty_weight": self.length_penalty_weight,
                "coverage_penalty_weight": self.coverage_penalty_weight,
                "num_results": self.num_results}

    def initial_scores(self, batch):
        # Only beam 0 is alive at the start, so the first step does not pick
        # the same token once per beam.
        first = tf.concat([[0.0], tf.fill([self.beam_width - 1], NEG_INF)], 0)
        return tf.tile(first[None], [batch, 1])

    def penalised(self, scores, lengths, coverage, source_mask, complete):
        """GNMT ranking scores of `(batch, beam[, vocab])` scores and lengths."""
        return gnmt_ranking(scores, lengths, coverage, source_mask, complete,
                            self.length_penalty_weight, self.coverage_penalty_weight)

    def next_tokens(self, log_probs, hypotheses, t, parameters):
        vocab = tf.shape(log_probs)[-1]
        candidates = hypotheses.scores[..., None] + log_probs  # (batch, beam, vocab)
        complete = (hypotheses.finished[..., None]
                    | tf.equal(tf.range(vocab), hypotheses.end_id))
        ranking = self.penalised(candidates, hypotheses.lengths[..., None],
                                 hypotheses.coverage, hypotheses.source_mask, complete)
        batch = tf.shape(log_probs)[0]
        # beam_width is a Python int: top_k's k must be static under XLA.
        _, best = tf.math.top_k(tf.reshape(ranking, (batch, -1)), k=self.beam_width)
        return best % vocab, best // vocab

    def ranking(self, hypotheses, parameters):
        return self.penalised(hypotheses.scores, hypotheses.lengths, hypotheses.coverage,
                              hypotheses.source_mask, hypotheses.finished)


@register_strategy("sample")
class SamplingSearch(DecodingStrategy):
    """Random sampling from the model's distribution, with temperature, top-k
    and top-p (nucleus) filtering.

    At each step the log-probabilities are divided by the temperature, cut to
    the `top_k` most likely tokens, then to the smallest set of most likely
    tokens whose (renormalised) probability reaches `top_p`, and a token is
    drawn from what is left. `num_samples` independent samples are drawn per
    input and returned best first by their score (the model's own
    log-probability, untempered). The draws are counter-based
    (`tf.random.stateless_categorical` seeded with `(seed, step)`), so one
    seed gives the same samples for the same batch on every call (a text in
    another batch, or under XLA, draws others); `top_k=1` or `temperature=0`
    give greedy decoding.

    Args:
        temperature: ≥ 0; below 1 sharpens, above 1 flattens; 0 is greedy.
        top_k: Sample among the `top_k` most likely tokens; 0 for all.
        top_p: In (0, 1]: the nucleus's probability mass; 1 for all.
        num_samples: Samples per input.
        seed: An int in [0, 2^31); None (or -1) for a fresh seed each call.

    Example:

    >>> SamplingSearch(temperature=0.8, top_p=0.9, num_samples=5, seed=1).decode(
    ...     stepper, source_ids, 20).ids.shape
    TensorShape([1, 5, 20])
    """

    signature_name = "sample"
    lists_results = True

    def __init__(self, temperature=SamplingOptions.temperature, top_k=SamplingOptions.top_k,
                 top_p=SamplingOptions.top_p, num_samples=SamplingOptions.num_samples,
                 seed=None):
        self.temperature = non_negative(temperature, "temperature")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"`top_k` must be an integer >= 0 (0: no limit). Received: "
                             f"top_k={top_k!r}")
        self.top_k = top_k
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1]. Received: top_p={top_p!r}")
        self.top_p = float(top_p)
        self.num_samples = positive_int(num_samples, "num_samples")
        seed = SamplingOptions.seed if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not -1 <= seed <= _INT32_MAX:
            raise ValueError(f"`seed` must be an integer in [0, 2^31) or None. Received: "
                             f"seed={seed!r}")
        self.seed = seed

    @property
    def width(self):
        return self.num_samples

    @property
    def num_results(self):
        return self.num_samples

    def get_config(self):
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "num_samples": self.num_samples, "seed": self.seed}

    def request_inputs(self):
        return {"temperature": (tf.float32, self.temperature), "top_k": (tf.int32, self.top_k),
                "top_p": (tf.float32, self.top_p), "seed": (tf.int32, self.seed)}

    def parameters(self, **inputs):
        values = super().parameters(**inputs)
        checks = [
            tf.debugging.assert_greater_equal(values["temperature"], 0.0,
                                              message="temperature must be >= 0"),
            tf.debugging.assert_greater_equal(values["top_k"], 0,
                                              message="top_k must be >= 0 (0: no limit)"),
            tf.debugging.assert_greater(values["top_p"], 0.0, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(values["top_p"], 1.0,
                                           message="top_p must be in (0, 1]"),
            tf.debugging.assert_greater_equal(values["seed"], -1,
                                              message="seed must be in [0, 2^31), or -1"),
        ]
        with tf.control_dependencies(checks):
            seed = tf.identity(values["seed"])
        fresh = tf.random.uniform([], 0, _INT32_MAX, dtype=tf.int32)
        return {**values, "seed": tf.where(seed < 0, fresh, seed)}

    def filtered_logits(self, log_probs, parameters):
        """The tempered, top-k and top-p filtered logits sampled from (-inf: never)."""
        logits = log_probs / tf.maximum(parameters["temperature"], 1e-6)
        vocab = tf.shape(logits)[-1]
        ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
        k = parameters["top_k"]
        k = tf.where(k > 0, tf.minimum(k, vocab), vocab)
        kth = tf.gather(ordered, k - 1, axis=-1)[..., None]
        logits = tf.where(logits >= kth, logits, float("-inf"))
        ordered = tf.where(tf.range(vocab) < k, ordered, float("-inf"))
        # The nucleus: the most likely tokens until their mass reaches top_p
        # (the first always); ties with the last one kept stay in.
        before = tf.math.cumsum(tf.nn.softmax(ordered), axis=-1, exclusive=True)
        kept = before < parameters["top_p"]
        threshold = tf.reduce_min(tf.where(kept, ordered, float("inf")), axis=-1,
                                  keepdims=True)
        nucleus = tf.where(logits >= threshold, logits, float("-inf"))
        return tf.where(parameters["top_p"] < 1.0, nucleus, logits)

    def next_tokens(self, log_probs, hypotheses, t, parameters):
        logits = self.filtered_logits(log_probs, parameters)
        shape = tf.shape(log_probs)
        drawn = tf.random.stateless_categorical(
            tf.reshape(logits, (-1, shape[-1])), 1, seed=tf.stack([parameters["seed"], t]),
            dtype=tf.int32)
        drawn = tf.reshape(drawn, shape[:-1])
        greedy = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        return tf.where(parameters["temperature"] > 0, drawn, greedy), None
