"""Argument checks shared by the supcon_tf modules (private): one helper per kind of check.

Each raises `ValueError` with one line naming the argument and the value
received, and returns the value in its canonical Python type.
"""

import math
import numbers
import re

# dtype names (NumPy or TensorFlow) of the arrays and tensors `real_scalar` reads.
_REAL_DTYPES = ("float", "bfloat", "int", "uint")


def is_int(value):
    """True for an integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """True for a real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_real(value):
    """True for a finite real number that is not a bool."""
    return is_real(value) and math.isfinite(float(value))


def positive_int(value, name):
    """`value` as an int >= 1."""
    if not is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, received: {name}={value!r}")
    return int(value)


def non_negative_int(value, name):
    """`value` as an int >= 0."""
    if not is_int(value) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0, received: {name}={value!r}")
    return int(value)


def real_scalar(value):
    """`value` as a float when it is a real number or a 0-d NumPy array or tensor of one (not a bool), else None."""
    if is_real(value):
        return float(value)
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    try:
        if shape is None or len(shape) != 0 or not str(getattr(dtype, "name", dtype)).startswith(_REAL_DTYPES):
            return None
        return float(value)
    except (TypeError, ValueError):  # a shape of unknown rank, a symbolic tensor
        return None


def positive_number(value, name):
    """`value` as a finite float > 0: a real number, or a 0-d NumPy array or tensor holding one."""
    number = real_scalar(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"`{name}` must be a positive number, received: {name}={value!r}")
    return number


def boolean(value, name):
    """`value`, which must be a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool, received: {name}={value!r}")
    return value


def choice(value, name, choices):
    """`value`, which must be one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(str, choices))}; received: {name}={value!r}")
    return value


def seed(value, name="seed"):
    """`value` as an int in [0, 2**31)."""
    if not is_int(value) or not 0 <= value < 2**31:
        raise ValueError(f"`{name}` must be an int in [0, 2**31), received: {name}={value!r}")
    return int(value)


def activation(value, name="activation"):
    """The Keras activation function named or given by `value`."""
    import keras  # late: the other checks stay importable without Keras

    try:
        return keras.activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be a keras activation name or callable, received: {name}={value!r}"
        ) from error


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


# HOST:PORT (optionally grpc://HOST:PORT): a host name, an IPv4 address or an [IPv6] address, and a port 1..65535.
HOST = r"[A-Za-z0-9][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]"
_HOST_PORT = re.compile(rf"(grpc://)?({HOST}):([0-9]{{1,5}})")


def host_port(value, name, *, scheme=False, example="localhost:5050"):
    """`"HOST:PORT"` or `"grpc://HOST:PORT"` -> `(host, port)`; a ValueError naming `name` otherwise.

    With `scheme`, the `grpc://` prefix is required (a dispatcher address as TensorFlow's clients take it).
    """
    match = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
    if match is None or not 0 < int(match.group(3)) < 65536 or (scheme and not match.group(1)):
        form = "grpc://HOST:PORT" if scheme else "HOST:PORT (or grpc://HOST:PORT)"
        raise ValueError(f"`{name}` must be {form} (e.g. {example}), received: {name}={value!r}")
    return match.group(2), int(match.group(3))
