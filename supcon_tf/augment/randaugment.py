"""RandAugment (Cubuk et al. 2020) with Keras 3's ops, per sample and stateless, and its policies.

`StatelessRandAugment` drives the ops of `keras.layers.RandAugment` per sample and from a
stateless seed; `RandAugmentPolicy` puts a random resized crop and a flip before it, and
`StackedRandAugmentPolicy` (SupCon's ResNet-200 recipe) the whole SimCLR augmentation.

Reference:
  Cubuk, Zoph, Shlens, Le. "RandAugment: Practical automated data augmentation with a reduced
  search space". NeurIPS 2020 (arXiv:1909.13719).
"""

import functools

import keras
import tensorflow as tf

from supcon_tf import _keras_compat
from supcon_tf._checks import is_int
from supcon_tf.augment._checks import check_seed, is_number
from supcon_tf.augment._policy_base import (
    Augmentation,
    CropFlipAugmentation,
    arguments_of,
    forwards_arguments,
)
from supcon_tf.augment.ops import to_float_images
from supcon_tf.augment.simclr import SimCLRAugment

__all__ = ["StatelessRandAugment", "RandAugmentPolicy", "StackedRandAugmentPolicy"]


def _check_num_ops(value):
    if not is_int(value) or value < 1:
        raise ValueError(f"`num_ops` must be an int >= 1, received: num_ops={value!r}")
    return int(value)


def _check_factor(value):
    """Keras' RandAugment `factor`: a number in [0, 1] or a pair 0 <= lo <= hi <= 1."""
    if is_number(value) and 0.0 <= value <= 1.0:
        return float(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(is_number(v) for v in value)
        and 0.0 <= value[0] <= value[1] <= 1.0
    ):
        return float(value[0]), float(value[1])
    raise ValueError(
        "`factor` must be a number in [0, 1] or a pair (lo, hi) with 0 <= lo <= hi <= 1, "
        f"received: factor={value!r}"
    )


class StatelessRandAugment(Augmentation):
    """RandAugment with Keras 3's ops, chosen per sample and drawn from a stateless seed.

    Keras' `keras.layers.RandAugment` (Cubuk et al. 2020, "RandAugment: Practical automated
    data augmentation with a reduced search space") picks `num_ops` ops out of its eleven (shear,
    translation, rotation, brightness, colour degeneration, contrast, sharpness, posterization,
    solarization, auto-contrast, equalization) *once per batch*: its `layer_idxes` has shape
    `[num_ops]`, so every image of a batch gets the same ops (only the magnitudes are per
    sample), and its draws come from a stateful `SeedGenerator` variable, so the output depends
    on how often the layer ran before, not on a seed you pass.

    This class keeps Keras' ops, their magnitude mapping (`factor`) and value handling (the
    layer's sub-layers, built with `value_range=(0, 1)`) but drives them itself:

    * each sample draws its own `num_ops` op indices (uniform, with replacement, as Keras);
    * for each slot, the batch is split by op (`tf.dynamic_partition`), each op's samples are
      transformed by its Keras sub-layer (`get_random_transformation` + `transform_images`) and
      the batch is stitched back (`tf.dynamic_stitch`), so a slot costs about one op on the
      whole batch, not eleven (`tf.cond` skips ops no sample chose; Keras' `AutoContrast` and
      `Equalization` fail on an empty batch);
    * every random draw comes from `seed` (`supcon_tf._keras_compat.StatelessSeedGenerator`),
      so the output is a pure function of `(images, seed)`, eagerly, under `tf.function` and
      in `tf.data`.

    Keras draws each sub-layer's parameters once per call and reuses them when an op is chosen
    twice; here each slot draws its own.

    Args:
      num_ops: int >= 1, the number of ops applied in sequence to each sample (RandAugment's N).
      factor: number in [0, 1], or a pair `(lo, hi)` with 0 <= lo <= hi <= 1: Keras'
        normalised strength (a number f means the range (0, f)); each op draws its magnitude
        per sample from the range that Keras derives from it for that op.
      interpolation: "bilinear" or "nearest", for the geometric ops.

    Call arguments:
      images: `[B, H, W, C]` uint8 in [0, 255] or float32 in [0, 1], C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.

    Returns:
      `[B, H, W, C]` float32 in [0, 1] (the size is kept).
    """


    _INTERPOLATIONS = ("bilinear", "nearest")

    def __init__(self, *, num_ops=2, factor=0.5, interpolation="bilinear"):
        self.num_ops = _check_num_ops(num_ops)
        self.factor = _check_factor(factor)
        if interpolation not in self._INTERPOLATIONS:
            raise ValueError(
                f"`interpolation` must be one of {list(self._INTERPOLATIONS)}, "
                f"received: interpolation={interpolation!r}"
            )
        self.interpolation = interpolation
        factor_arg = list(self.factor) if isinstance(self.factor, tuple) else self.factor
        self._layer = keras.layers.RandAugment(
            value_range=(0, 1),
            num_ops=self.num_ops,
            factor=factor_arg,
            interpolation=interpolation,
            seed=0,  # Unused: every draw here comes from the call's seed.
            dtype="float32",
        )
        self._ops = _keras_compat.rand_augment_sublayers(self._layer)
        self._seed_generator = _keras_compat.StatelessSeedGenerator()

    @property
    def op_names(self):
        """The names of Keras' RandAugment sub-layers, in the order of the op indices."""
        return tuple(name for name, _ in self._ops)

    def _apply_op(self, sublayer, subset, seed):
        generator = self._seed_generator.from_seed(seed)
        transformation = sublayer.get_random_transformation(subset, training=True, seed=generator)
        transformed = sublayer.transform_images(subset, transformation, training=True)
        return tf.clip_by_value(tf.cast(transformed, tf.float32), 0.0, 1.0)

    def __call__(self, images, seed):
        seed = check_seed(seed)
        images = to_float_images(images)
        for _, sublayer in self._ops:
            # Keras' tf.data mode: the sub-layers compute with TensorFlow ops whatever the
            # Keras backend.
            _keras_compat.compute_with_tensorflow(sublayer)
        choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        choice = tf.random.stateless_uniform(
            [tf.shape(images)[0], self.num_ops],
            choice_seed,
            minval=0,
            maxval=len(self._ops),
            dtype=tf.int32,
        )
        out = images
        positions_of = tf.range(tf.shape(images)[0])
        for slot in range(self.num_ops):
            # The samples that chose each op, in batch order; each op runs on its own samples only.
            positions = tf.dynamic_partition(positions_of, choice[:, slot], len(self._ops))
            parts = tf.dynamic_partition(out, choice[:, slot], len(self._ops))
            results = []
            for index, (_, sublayer) in enumerate(self._ops):
                # Seeds depend on (slot, index) only, so eager execution (which runs one branch
                # of `tf.cond`) and graphs (which trace both) draw the same numbers.
                seed_here = tf.random.experimental.stateless_fold_in(
                    op_seed, slot * len(self._ops) + index
                )
                results.append(tf.cond(
                    tf.shape(parts[index])[0] > 0,
                    functools.partial(self._apply_op, sublayer, parts[index], seed_here),
                    functools.partial(tf.identity, parts[index]),
                ))
            out = tf.reshape(tf.dynamic_stitch(positions, results), tf.shape(images))
        return out


class RandAugmentPolicy(CropFlipAugmentation):
    """Random resized crop -> flip -> RandAugment (Keras 3's ops, per sample, stateless).

    RandAugment is `StatelessRandAugment`: Keras' `keras.layers.RandAugment` ops and magnitude
    mapping, but with the ops chosen per sample (Keras chooses them once per batch) and every
    draw taken from the call's seed (Keras draws from a stateful generator), so the output is a
    pure function of `(images, seed)`.

    Args:
      image_size: output `(height, width)`, or one int for a square output.
      num_ops: int >= 1, ops applied in sequence to each sample (RandAugment's N).
      factor: Keras' normalised strength, a number in [0, 1] or a pair `(lo, hi)` within it.
      interpolation: "bilinear" or "nearest", for the geometric ops.
      crop_scale: `(lo, hi)` area-fraction range of the random resized crop (ImageNet: 0.08-1).
      flip: whether to flip horizontally with probability 0.5.

    Called as `policy(images, seed)` (conventions: `supcon_tf.augment.ops`); returns
    `[B, image_size[0], image_size[1], C]` float32 in [0, 1].

    Example:
      >>> augment = RandAugmentPolicy(224, num_ops=2, factor=0.5)
      >>> views = augment(images, tf.constant([0, 1]))  # [B, 224, 224, C]

    Reference:
      Cubuk, Zoph, Shlens, Le. "RandAugment: Practical automated data augmentation with a
      reduced search space". NeurIPS 2020 (arXiv:1909.13719).
    """

    _PARTS = ("rand_augment",)

    @forwards_arguments(StatelessRandAugment)
    def __init__(self, image_size, *, crop_scale=(0.08, 1.0), flip=True, **rand_augment_args):
        super().__init__(image_size, crop_scale=crop_scale, flip=flip)
        self.rand_augment = StatelessRandAugment(**rand_augment_args)

    def __call__(self, images, seed):
        images, (rand_seed,) = self._crop_and_flip(images, seed, 3)
        return self.rand_augment(images, rand_seed)


class StackedRandAugmentPolicy(Augmentation):
    """Stacked RandAugment (SupCon's ResNet-200 recipe): `SimCLRAugment` followed by RandAugment.

    The SimCLR augmentation (random resized crop, flip, colour jitter, grayscale) and then
    `StatelessRandAugment` on its output (Khosla et al. 2020, Sec. 4 and App.). Per sample,
    vectorised and a pure function of `(images, seed)`.

    Args:
      image_size: output `(height, width)`, or one int for a square output.
      num_ops: int >= 1, RandAugment ops applied in sequence to each sample.
      factor: Keras' RandAugment strength, a number in [0, 1] or a pair `(lo, hi)` within it.
      interpolation: "bilinear" or "nearest", for RandAugment's geometric ops.
      crop_scale: `(lo, hi)` area-fraction range of the random resized crop (ImageNet: 0.08-1).
      flip: whether to flip horizontally with probability 0.5.
      brightness, contrast, saturation, hue, jitter_prob, grayscale_prob: as in `SimCLRAugment`
        (same defaults).

    Called as `policy(images, seed)` (conventions: `supcon_tf.augment.ops`); returns
    `[B, image_size[0], image_size[1], C]` float32 in [0, 1].

    Example:
      >>> augment = StackedRandAugmentPolicy(224)
      >>> views = augment(images, tf.constant([0, 1]))  # [B, 224, 224, C]
    """

    _PARTS = ("simclr", "rand_augment")

    # The SimCLR part's arguments and defaults are SimCLRAugment's, but for ImageNet's crop.
    @forwards_arguments(StatelessRandAugment, (SimCLRAugment, {"crop_scale": (0.08, 1.0)}))
    def __init__(self, image_size, **arguments):
        self.simclr = SimCLRAugment(image_size, **arguments_of(SimCLRAugment, arguments))
        self.rand_augment = StatelessRandAugment(**arguments_of(StatelessRandAugment, arguments))
        self.image_size = self.simclr.image_size

    def __call__(self, images, seed):
        seed = check_seed(seed)
        simclr_seed, rand_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        return self.rand_augment(self.simclr(images, simclr_seed), rand_seed)
