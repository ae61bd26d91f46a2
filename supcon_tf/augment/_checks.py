"""Argument checks of the augmentation ops and policies (private to `supcon_tf.augment`)."""

import numbers

import tensorflow as tf


def is_number(value):
    """True for a real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_probability(value, name):
    """Returns `value` as a float in [0, 1], or raises ValueError naming `name`."""
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], received: {name}={value!r}")
    return float(value)


def check_range(value, name, *, low, high):
    """Checks that `value` is a pair (lo, hi) of numbers with low < lo <= hi <= high."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(is_number(v) for v in value)
    )
    if ok:
        lo, hi = value
        ok = low < lo <= hi <= high
    if not ok:
        raise ValueError(
            f"`{name}` must be a pair (lo, hi) with {low} < lo <= hi <= {high}, "
            f"received: {name}={value!r}"
        )
    return float(value[0]), float(value[1])


def check_nonnegative(value, name, *, maximum=None):
    """Returns `value` as a float >= 0 (and <= `maximum` if given), or raises ValueError."""
    if not is_number(value) or value < 0 or (maximum is not None and value > maximum):
        limit = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"`{name}` must be a number >= 0{limit}, received: {name}={value!r}")
    return float(value)


def check_flip(flip):
    """Returns `flip` if it is a bool, or raises ValueError."""
    if not isinstance(flip, bool):
        raise ValueError(f"`flip` must be a bool, received: flip={flip!r}")
    return flip


def check_seed(seed):
    """Returns `seed` as an int64 tensor of shape [2], or raises ValueError.

    Accepts int32/int64 tensors (or values convertible to them) of shape [2].
    """
    try:
        tensor = tf.convert_to_tensor(seed)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`seed` must be an int32/int64 tensor of shape [2], received: seed={seed!r}"
        ) from error
    if tensor.dtype not in (tf.int32, tf.int64) or tensor.shape.rank != 1 or tensor.shape[0] != 2:
        raise ValueError(
            "`seed` must be an int32/int64 tensor of shape [2], received: "
            f"seed with dtype={tensor.dtype.name} and shape={tensor.shape}"
        )
    # One dtype inside, so that [3, 7] as int32 and as int64 give the same draws.
    return tf.cast(tensor, tf.int64)
