"""Argument checks shared by several supcon_tf modules (private)."""

import numbers


def is_int(value):
    """True for an integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_size(value, name):
    """Returns `value` (int or pair of ints) as a `(height, width)` tuple of positive ints."""
    if is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_int(v) and v >= 1 for v in value):
        raise ValueError(
            f"`{name}` must be a positive int or a pair (height, width) of positive ints, "
            f"received: {name}={value!r}"
        )
    return int(value[0]), int(value[1])
