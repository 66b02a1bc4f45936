"""Argument checks shared by the layers and the TensorFlow modules (plain Python)."""


def positive_int(value, name, allow_none=False):
    """Returns `value` if it is a positive int (or None when allowed), else a ValueError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer{' or None' if allow_none else ''}. "
            f"Received: {name}={value!r}"
        )
    return value


def non_negative(value, name):
    """Returns `value` as a float if it is a number >= 0 (a penalty weight)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
    return float(value)


def rate(value, name):
    """Returns `value` as a float if it is in [0, 1) (a dropout or smoothing rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
    return float(value)
