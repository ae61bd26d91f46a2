"""Base classes of the augmentation policies: config and repr, forwarded arguments, crop + flip."""

import functools
import inspect

import tensorflow as tf

from supcon_tf._checks import as_size
from supcon_tf.augment._checks import check_flip, check_range, check_seed
from supcon_tf.augment.ops import check_images, crop_boxes, crop_to_size

_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _keyword_parameters(cls):
    """The keyword-only parameters of `cls`'s constructor."""
    return [p for p in inspect.signature(cls).parameters.values() if p.kind is _KEYWORD]


def arguments_of(cls, arguments):
    """The entries of the dict `arguments` that are keyword-only parameters of `cls`."""
    return {p.name: arguments[p.name] for p in _keyword_parameters(cls) if p.name in arguments}


def forwards_arguments(*parts):
    """Decorates the `__init__` of a policy that takes the keyword arguments of the parts it builds.

    The decorated `__init__(self, <positional>, *, <keyword-only>, **arguments)` gets the
    signature `(self, <positional>, *, <the parts' keyword-only parameters>, <keyword-only>)`:
    `inspect.signature`, `help` and `get_augmentation` see every argument, with its default, and
    each part's parameters (names, defaults, order) are defined once, by the part. A call binds
    to that signature (an unknown argument raises `TypeError` as usual), fills in the defaults,
    and passes the parts' arguments in `**arguments`; `arguments_of(cls, arguments)` picks a
    part's share.

    Args:
      *parts: classes, or `(class, {name: default})` pairs that override some of a class's
        defaults for this policy.
    """
    forwarded = []
    for part in parts:
        cls, defaults = part if isinstance(part, tuple) else (part, {})
        parameters = _keyword_parameters(cls)
        unknown = set(defaults) - {p.name for p in parameters}
        if unknown:
            raise TypeError(f"{cls.__name__} takes no keyword arguments {sorted(unknown)}")
        forwarded += [p.replace(default=defaults.get(p.name, p.default)) for p in parameters]

    def decorate(init):
        own = inspect.signature(init).parameters.values()
        signature = inspect.Signature(
            [p for p in own if p.kind is _POSITIONAL]
            + forwarded
            + [p for p in own if p.kind is _KEYWORD]
        )

        @functools.wraps(init)
        def wrapper(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as error:  # As Python words it: "C.__init__() got an unexpected ...".
                raise TypeError(f"{init.__qualname__}() {error}") from None
            bound.apply_defaults()
            return init(**bound.arguments)

        wrapper.__signature__ = signature
        return wrapper

    return decorate


class Augmentation:
    """Base of the augmentation classes: `get_config` and `repr` from the constructor's arguments.

    Every augmentation is called as `augmentation(images, seed)`, with `images` a batch
    `[B, H, W, C]` of uint8 in [0, 255] or float32 in [0, 1], C in {1, 3}, and `seed` an
    int32/int64 tensor of shape `[2]`; it returns float32 images in [0, 1], a pure function of
    `(images, seed)`.

    A subclass keeps each argument of its constructor as an attribute of the same name, either on
    itself or on one of its parts: the attributes named in `_PARTS`, `Augmentation`s it builds
    and forwards arguments to (see `forwards_arguments`).
    """

    _PARTS = ()

    def _argument(self, name):
        """The value kept for the constructor argument `name`, here or on one of the parts."""
        if name in vars(self):
            return vars(self)[name]
        for part in self._PARTS:
            try:
                return getattr(self, part)._argument(name)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__} keeps no value for its argument `{name}`")

    def get_config(self):
        """Returns the constructor arguments as a JSON-friendly dict (tuples become lists)."""
        names = [
            name
            for name, p in inspect.signature(type(self)).parameters.items()
            if p.kind in (_POSITIONAL, _KEYWORD)
        ]
        config = {}
        for name in names:
            value = self._argument(name)
            config[name] = list(value) if isinstance(value, tuple) else value
        return config

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class CropFlipAugmentation(Augmentation):
    """Base of the policies that start with a random resized crop to `image_size` and a flip.

    Keeps (validated) `image_size`, `crop_scale` and `flip`; `_crop_and_flip` is the common start
    of `__call__`.
    """

    def __init__(self, image_size, *, crop_scale, flip):
        self.image_size = as_size(image_size, "image_size")
        self.crop_scale = check_range(crop_scale, "crop_scale", low=0.0, high=1.0)
        self.flip = check_flip(flip)

    def _crop_and_flip(self, images, seed, num_seeds):
        """Checks the call's arguments, then crops and (if `flip`) flips every image.

        Args:
          images: the call's images (uint8 or float, `[B, H, W, C]`).
          seed: the call's seed, split into `num_seeds` (>= 2) sub-seeds; the first two drive the
            crop and the flip.

        The flip is the crop's box read from right to left (`ops.crop_boxes`): one resampling
        pass, no second copy of the batch.

        Returns:
          `(images, seeds)`: the cropped and flipped float32 images and the other
          `num_seeds - 2` sub-seeds, for the rest of the policy.
        """
        seed = check_seed(seed)
        images = check_images(images)
        crop_seed, flip_seed, *seeds = tf.unstack(
            tf.random.experimental.stateless_split(seed, num_seeds)
        )
        flip = None
        if self.flip:  # the draw of `random_flip_left_right(images, flip_seed)`, done by the crop's box
            flip = tf.random.stateless_uniform(tf.shape(images)[:1], flip_seed) < 0.5
        boxes = crop_boxes(tf.shape(images), crop_seed, scale=self.crop_scale, ratio=(3 / 4, 4 / 3), flip=flip)
        return crop_to_size(images, boxes, self.image_size), seeds
