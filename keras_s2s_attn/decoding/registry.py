"""Decoding strategies by name (plain Python: the CLI reads it without TensorFlow).

The built-in names map to their classes lazily; `register_strategy` adds a
class of one's own, which `Translator`, the export and `get_strategy` then
accept by name like the built-in ones.
"""

import importlib

# Built-in strategies: name -> (module, class), imported on first use.
_BUILTIN = {
    "greedy": ("keras_s2s_attn.decoding.strategies", "GreedySearch"),
    "beam": ("keras_s2s_attn.decoding.strategies", "BeamSearch"),
    "sample": ("keras_s2s_attn.decoding.strategies", "SamplingSearch"),
}
_REGISTERED = {}


def builtin_strategy_names():
    """The built-in strategies' names: those `default_strategies` exports."""
    return tuple(_BUILTIN)


def strategy_names():
    """Every strategy name: the built-in ones, then those registered."""
    return tuple(_BUILTIN) + tuple(name for name in _REGISTERED if name not in _BUILTIN)


def register_strategy(name):
    """A class decorator that makes a strategy known by `name`.

    Example:

    >>> @register_strategy("constrained")
    ... class ConstrainedBeam(BeamSearch):
    ...     def next_tokens(self, log_probs, hypotheses, t, parameters):
    ...         ...
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"A strategy name must be an identifier; got {name!r}.")

    def register(cls):
        cls.name = name
        _REGISTERED[name] = cls
        return cls

    return register


def strategy_class(name):
    """The class registered as `name`."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        module, attribute = _BUILTIN[name]
        return getattr(importlib.import_module(module), attribute)
    raise ValueError(f"Unknown decoding strategy {name!r}; expected one of "
                     f"{', '.join(strategy_names())}.")


def get_strategy(strategy, **options):
    """A strategy object: `strategy` itself, or a new one of the class named `strategy`.

    Args:
        strategy: A strategy object or a registered name (`"greedy"`,
            `"beam"`, `"sample"`, or one of `register_strategy`).
        **options: The class's arguments, with a name only.
    """
    if isinstance(strategy, str):
        return strategy_class(strategy)(**options)
    if options:
        raise ValueError("Options are given with a strategy name, not with a strategy object; "
                         f"got {sorted(options)}.")
    return strategy
