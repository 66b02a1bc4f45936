"""Names a package hands out on first use (PEP 562), so importing it stays cheap."""

import importlib


def lazy_names(package, namespace, exports):
    """A package's `__getattr__` and `__dir__` for `exports`, `{name: module}`.

    Each name is imported from its module the first time it is asked for and
    then kept in `namespace` (the package's `globals()`), so later lookups
    do not come back here.

    Example (in a package's `__init__.py`):

    >>> __getattr__, __dir__ = lazy_names(__name__, globals(), {"Decoder": "pkg.decoder"})
    """

    def __getattr__(name):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
