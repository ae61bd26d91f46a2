"""Argument checks of the data sources and pipelines (private to `supcon_tf.data`): one helper per check.

The checks shared with the rest of the package live in `supcon_tf._checks`;
these are the data-specific ones.
"""

import tensorflow as tf

from supcon_tf._checks import boolean as _check_bool
from supcon_tf._checks import choice as _check_choice
from supcon_tf._checks import non_negative_int as _check_non_negative_int
from supcon_tf._checks import positive_int as _check_positive_int
from supcon_tf._checks import seed as _check_seed

# Where the training views are made: "host" (in the tf.data pipeline, the batches carry float32 views) or
# "device" (the batches carry the images and the views' seeds; the model augments inside its train step).
AUGMENT_ON = ("host", "device")


def check_augment(augment):
    """Checks that `augment` is callable (a `(images, seed) -> images` augmentation)."""
    if not callable(augment):
        raise ValueError(
            "`augment` must be a callable (images, seed) -> images, "
            f"received: augment={augment!r}"
        )


def check_source(dataset, name="dataset"):
    """Checks that `dataset` follows the source convention (image [H, W, C], integer label [], or the float label
    rows of a labels file: multi-hot [classes], continuous [] or [k])."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"`{name}` must be a tf.data.Dataset of (image, label) pairs, "
            f"received: {name} of type {type(dataset).__name__}"
        )
    spec = dataset.element_spec
    ok = (
        isinstance(spec, tuple)
        and len(spec) == 2
        and all(isinstance(s, tf.TensorSpec) for s in spec)
    )
    if ok:
        image_spec, label_spec = spec
        ok = (
            image_spec.shape.rank == 3
            and image_spec.shape[-1] in (1, 3)
            and (image_spec.dtype == tf.uint8 or image_spec.dtype.is_floating)
            and (
                (label_spec.shape.rank == 0 and label_spec.dtype.is_integer)
                or (label_spec.shape.rank in (0, 1) and label_spec.dtype.is_floating)  # a labels file's rows
            )
        )
    if not ok:
        raise ValueError(
            f"`{name}` must yield (image uint8 [H, W, C] with C in {{1, 3}}, label int scalar, or float [] / [k] "
            f"label row) pairs, received: {name} with element_spec={spec!r}"
        )


def check_non_empty_string(value, name):
    """`value`, which must be a non-empty str."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{name}` must be a non-empty string, received: {name}={value!r}")
    return value


def check_view_stream(dataset, *, num_views, augment, seed, repeat, start_batch, augment_on="host"):
    """The arguments every multi-view training stream takes.

    Returns `(num_views, seed, repeat, start_batch, augment_on)`.

    Checks `dataset` (a source), `num_views` (int >= 1), `augment_on` ("host"
    or "device"), `augment` (callable; None is allowed with "device", where
    the stream does not call it), `seed` (int in [0, 2**31)), `repeat` (bool)
    and `start_batch` (int >= 0), in that order.
    """
    check_source(dataset)
    num_views = _check_positive_int(num_views, "num_views")
    augment_on = _check_choice(augment_on, "augment_on", AUGMENT_ON)
    if augment is not None or augment_on == "host":
        check_augment(augment)
    seed = _check_seed(seed)
    repeat = _check_bool(repeat, "repeat")
    start_batch = _check_non_negative_int(start_batch, "start_batch")
    return num_views, seed, repeat, start_batch, augment_on
