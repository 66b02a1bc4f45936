"""Decoding: a stepper over a trained model, strategies that search with it.

- `Stepper` / `EnsembleStepper` (`stepper.py`): `encode` the source once,
  `step` one token; an ensemble is a stepper of steppers.
- `GreedySearch`, `BeamSearch`, `SamplingSearch` (`strategies.py`): each
  owns its search through one shared loop (`search.py`); subclass
  `DecodingStrategy` and override `next_tokens` for a strategy of your own.
- `register_strategy`, `get_strategy`, `strategy_names` (`registry.py`, plain
  Python): strategies by name, read by `Translator`, the export and the CLI.
- `Decoder` (`decoder.py`): the strategies on source ids, from Python.

Names are imported on first use, so `keras_s2s_attn.decoding.registry`
loads without TensorFlow.
"""

from keras_s2s_attn.lazy import lazy_names

_EXPORTS = {
    **dict.fromkeys(("NEG_INF", "EnsembleStepper", "Stepper", "make_stepper"),
                    "keras_s2s_attn.decoding.stepper"),
    **dict.fromkeys(("Hypotheses", "SearchResult", "run_search"),
                    "keras_s2s_attn.decoding.search"),
    **dict.fromkeys(("BeamSearch", "DecodingStrategy", "GreedySearch", "SamplingSearch"),
                    "keras_s2s_attn.decoding.strategies"),
    **dict.fromkeys(("get_strategy", "register_strategy", "strategy_class", "strategy_names"),
                    "keras_s2s_attn.decoding.registry"),
    "Decoder": "keras_s2s_attn.decoding.decoder",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_names(__name__, globals(), _EXPORTS)
