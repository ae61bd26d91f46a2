"""Pure, vectorised TensorFlow image ops and the named augmentation policies built from them.

Conventions shared by every function here:

* Images are batched, ``[B, H, W, C]`` with ``C`` in {1, 3}, float32 in
  [0, 1]. ``uint8`` input in [0, 255] is accepted and converted to float32
  [0, 1] first (``to_float_images``). The rank and ``C`` must be known
  statically; ``B``, ``H`` and ``W`` may be dynamic.
* Randomness is stateless: a random op takes ``seed``, an int32/int64 tensor
  of shape ``[2]``, and the same seed (with the same input shape) gives the
  same output. Sub-seeds are derived with
  ``tf.random.experimental.stateless_split``.
* Random parameters are drawn per sample, with closed-form batched ops (no
  per-sample Python loops, no ``map_fn``), so everything runs inside
  ``tf.function`` and ``tf.data.Dataset.map``.

The SimCLR policy follows the augmentation of Chen et al. 2020 that SupCon
(Khosla et al. 2020, Sec. 4 and App. B) uses for CIFAR: random resized crop
(scale 0.2-1), horizontal flip, colour jitter 0.4/0.4/0.4/0.1 applied with
p 0.8, grayscale with p 0.2.

For ImageNet SupCon uses AutoAugment (Cubuk et al. 2019) and, for ResNet-200,
"Stacked RandAugment" (the SimCLR augmentation followed by RandAugment,
Cubuk et al. 2020). AutoAugment's ops are written here (`auto_augment`,
`autoaugment_op`); RandAugment drives the ops of Keras 3's
`keras.layers.RandAugment` per sample and statelessly (`StatelessRandAugment`).
"""

import functools
import inspect
import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from supcon_tf._checks import as_size as _as_size
from supcon_tf._checks import is_int as _is_int

# ITU-R 601-2 luma weights, as torchvision uses them (they sum to 1, so a gray image keeps its luma;
# `tf.image.rgb_to_grayscale` rounds them to 0.2989, 0.5870, 0.1140).
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Colour-jitter op ids; `color_jitter` applies them in a per-sample random order.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3
_NUM_JITTER_OPS = 4


# ---------------------------------------------------------------------------
# Argument validation (private).
# ---------------------------------------------------------------------------



def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)




def _check_probability(value, name):
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], received: {name}={value!r}")
    return float(value)


def _check_range(value, name, *, low, high):
    """Checks that `value` is a pair (lo, hi) of numbers with low < lo <= hi <= high."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(_is_number(v) for v in value)
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


def _check_nonnegative(value, name, *, maximum=None):
    if not _is_number(value) or value < 0 or (maximum is not None and value > maximum):
        limit = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"`{name}` must be a number >= 0{limit}, received: {name}={value!r}")
    return float(value)


def _check_seed(seed):
    """Returns `seed` as an int32/int64 tensor of shape [2], or raises ValueError."""
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


def to_float_images(images):
    """Converts a batch of images to float32 in [0, 1] and checks its shape.

    Args:
      images: `[B, H, W, C]` uint8 in [0, 255] or float in [0, 1], `C` in {1, 3}
        and the rank and `C` known statically.

    Returns:
      `[B, H, W, C]` float32 in [0, 1] (uint8 divided by 255; floats are cast,
      not rescaled).

    Raises:
      ValueError: if `images` is not rank 4, `C` is not 1 or 3, or the dtype
        is neither uint8 nor floating point.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(
            "`images` must be a batch [B, H, W, C] (rank 4), received: "
            f"images with shape={images.shape}"
        )
    if images.shape[-1] not in (1, 3):
        raise ValueError(
            "`images` must have 1 or 3 channels (static), received: "
            f"images with shape={images.shape}"
        )
    if images.dtype == tf.uint8:
        return tf.image.convert_image_dtype(images, tf.float32)
    if images.dtype.is_floating:
        return tf.cast(images, tf.float32)
    raise ValueError(
        f"`images` must be uint8 or floating point, received: images with dtype={images.dtype.name}"
    )


def _luma(images):
    """`[B, H, W, C]` float32 -> `[B, H, W, 1]` float32 luma (the image itself if C == 1)."""
    if images.shape[-1] == 1:
        return images
    weights = tf.constant(_LUMA_WEIGHTS, tf.float32)
    return tf.reduce_sum(images * weights, axis=-1, keepdims=True)


def _per_sample(values):
    """`[B]` -> `[B, 1, 1, 1]`, to broadcast a per-sample value over an image batch."""
    return tf.reshape(values, [-1, 1, 1, 1])


# ---------------------------------------------------------------------------
# Ops.
# ---------------------------------------------------------------------------


def random_resized_crop(images, seed, *, size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crops a random box from every image (its own box per sample) and resizes it to `size`.

    The box follows torchvision's `RandomResizedCrop`, vectorised: for each
    sample, 10 candidate boxes are drawn with area fraction uniform in `scale`
    and aspect ratio (width / height, in pixels) log-uniform in `ratio`; the
    first candidate that fits inside the image is used, at a uniform random
    position. When none fits, the sample falls back to a central crop of the
    whole image with its aspect ratio clamped to `ratio`. Boxes are continuous
    (not rounded to whole pixels) and resampled bilinearly with
    `tf.image.crop_and_resize`; a box as large as the output is copied exactly.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.
      size: output `(height, width)`, or one int for a square output.
      scale: `(lo, hi)`, 0 < lo <= hi <= 1, the range of the crop's area as a
        fraction of the image's area.
      ratio: `(lo, hi)`, 0 < lo <= hi, the range of the crop's aspect ratio.

    Returns:
      `[B, size[0], size[1], C]` float32 in [0, 1].
    """
    height_out, width_out = _as_size(size, "size")
    scale = _check_range(scale, "scale", low=0.0, high=1.0)
    ratio = _check_range(ratio, "ratio", low=0.0, high=float("inf"))
    seed = _check_seed(seed)
    images = to_float_images(images)

    num_tries = 10
    shape = tf.shape(images)
    batch = shape[0]
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    area_seed, ratio_seed, offset_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )

    area = tf.random.stateless_uniform(
        [batch, num_tries], area_seed, minval=scale[0], maxval=scale[1]
    ) * (height * width)
    log_ratio = tf.random.stateless_uniform(
        [batch, num_tries], ratio_seed, minval=np.log(ratio[0]), maxval=np.log(ratio[1])
    )
    aspect = tf.exp(log_ratio)
    # Box sizes as fractions of the image's height and width.
    crop_h = tf.sqrt(area / aspect) / height
    crop_w = tf.sqrt(area * aspect) / width
    fits = tf.logical_and(crop_h <= 1.0, crop_w <= 1.0)
    first_fit = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=1)
    crop_h = tf.gather(crop_h, first_fit, axis=1, batch_dims=1)
    crop_w = tf.gather(crop_w, first_fit, axis=1, batch_dims=1)

    # Fallback: a central crop with the image's aspect ratio clamped to `ratio`.
    image_ratio = width / height
    fallback_h = tf.where(image_ratio > ratio[1], 1.0, tf.minimum(1.0, image_ratio / ratio[0]))
    fallback_w = tf.where(image_ratio < ratio[0], 1.0, tf.minimum(1.0, ratio[1] / image_ratio))
    crop_h = tf.where(any_fit, crop_h, fallback_h)
    crop_w = tf.where(any_fit, crop_w, fallback_w)

    offsets = tf.random.stateless_uniform([batch, 2], offset_seed)
    top = tf.where(any_fit, offsets[:, 0] * (1.0 - crop_h), (1.0 - crop_h) / 2.0)
    left = tf.where(any_fit, offsets[:, 1] * (1.0 - crop_w), (1.0 - crop_w) / 2.0)

    # `crop_and_resize` maps box coordinate y to pixel index y * (H - 1) and samples from the
    # first to the last point of the box. The crop covers [top * H, (top + crop_h) * H) in
    # continuous pixel units, so its first and last pixel centres have indices top * H and
    # (top + crop_h) * H - 1: a crop whose size equals the output size is copied exactly.
    def to_box(start, extent, length):
        first = start * length
        last = tf.maximum(first, (start + extent) * length - 1.0)
        denominator = tf.maximum(length - 1.0, 1.0)
        return first / denominator, last / denominator

    y1, y2 = to_box(top, crop_h, height)
    x1, x2 = to_box(left, crop_w, width)
    boxes = tf.stack([y1, x1, y2, x2], axis=1)

    crops = tf.image.crop_and_resize(
        images,
        boxes,
        box_indices=tf.range(batch),
        crop_size=(height_out, width_out),
        method="bilinear",
    )
    return tf.clip_by_value(crops, 0.0, 1.0)


def random_flip_left_right(images, seed, p=0.5):
    """Mirrors each image horizontally with probability `p`, drawn per sample.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.
      p: probability in [0, 1] that a sample is flipped.

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    p = _check_probability(p, "p")
    seed = _check_seed(seed)
    images = to_float_images(images)
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < p
    return tf.where(_per_sample(flip), tf.reverse(images, axis=[2]), images)


def _shift_hue(images, delta):
    """Rotates the HSV hue of `[B, H, W, 3]` float32 images by `delta` `[B]` (fraction of a turn)."""
    hsv = tf.image.rgb_to_hsv(images)
    hue = tf.math.floormod(hsv[..., 0] + tf.reshape(delta, [-1, 1, 1]), 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))


def color_jitter(
    images,
    seed,
    *,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    p=0.8,
):
    """Jitters brightness, contrast, saturation and hue, with factors and order drawn per sample.

    With probability `p` (per sample) the image is jittered; otherwise it is
    returned unchanged. A jittered sample gets its own factors, as in
    torchvision's `ColorJitter`:

    * brightness: `x * b`, b ~ U[max(0, 1 - brightness), 1 + brightness];
    * contrast: `c * x + (1 - c) * mean(luma(x))`, c drawn like b;
    * saturation: `s * x + (1 - s) * luma(x)`, s drawn like b;
    * hue: the HSV hue is rotated by h ~ U[-hue, hue] (a fraction of a turn),

    and the four ops are applied in a random order of its own (a per-sample
    permutation), each followed by clipping to [0, 1]. The order costs four
    stages of one per-sample blend each (cheap); the HSV round trip of the hue
    op runs once per jittered sample, gathered at its stage. Saturation and hue
    are no-ops for 1-channel images.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.
      brightness: strength >= 0 of the brightness jitter (0 disables it).
      contrast: strength >= 0 of the contrast jitter (0 disables it).
      saturation: strength >= 0 of the saturation jitter (0 disables it).
      hue: strength in [0, 0.5] of the hue jitter (0 disables it).
      p: probability in [0, 1] that a sample is jittered at all.

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    brightness = _check_nonnegative(brightness, "brightness")
    contrast = _check_nonnegative(contrast, "contrast")
    saturation = _check_nonnegative(saturation, "saturation")
    hue = _check_nonnegative(hue, "hue", maximum=0.5)
    p = _check_probability(p, "p")
    seed = _check_seed(seed)
    images = to_float_images(images)
    is_rgb = images.shape[-1] == 3
    batch = tf.shape(images)[0]

    apply_seed, order_seed, factor_seed, hue_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    apply = tf.random.stateless_uniform([batch], apply_seed) < p
    # A random permutation of the four ops per sample: `order[b, t]` is the op of stage t.
    order = tf.argsort(
        tf.random.stateless_uniform([batch, _NUM_JITTER_OPS], order_seed), axis=1
    )
    unit = tf.random.stateless_uniform([batch, 3], factor_seed)
    strengths = tf.constant([brightness, contrast, saturation], tf.float32)
    low = tf.maximum(0.0, 1.0 - strengths)
    factors = low + unit * (1.0 + strengths - low)  # [B, 3]: brightness, contrast, saturation.
    if not is_rgb:
        factors = tf.concat([factors[:, :2], tf.ones_like(factors[:, 2:])], axis=1)
    hue_delta = tf.random.stateless_uniform([batch], hue_seed, minval=-hue, maxval=hue)
    use_hue = is_rgb and hue > 0.0

    out = images
    for stage in range(_NUM_JITTER_OPS):
        op = order[:, stage]
        # Each of brightness, contrast and saturation is `a * x + g * luma(x) + m * mean(luma(x))`
        # for per-sample (a, g, m); the samples whose stage-`stage` op is hue get (1, 0, 0).
        b_factor = tf.where(op == _BRIGHTNESS, factors[:, 0], 1.0)
        c_factor = tf.where(op == _CONTRAST, factors[:, 1], 1.0)
        s_factor = tf.where(op == _SATURATION, factors[:, 2], 1.0)
        luma = _luma(out)
        mean_luma = tf.reduce_mean(luma, axis=[1, 2, 3], keepdims=True)
        out = (
            _per_sample(b_factor * c_factor * s_factor) * out
            + _per_sample(1.0 - s_factor) * luma
            + _per_sample(1.0 - c_factor) * mean_luma
        )
        out = tf.clip_by_value(out, 0.0, 1.0)
        if use_hue:
            # The HSV round trip runs only on the samples whose hue op is in this stage, so the
            # random order costs one round trip per jittered sample in total.
            index = tf.where(tf.logical_and(op == _HUE, apply))
            shifted = _shift_hue(tf.gather_nd(out, index), tf.gather_nd(hue_delta, index))
            out = tf.tensor_scatter_nd_update(out, index, tf.clip_by_value(shifted, 0.0, 1.0))
    return tf.where(_per_sample(apply), out, images)


def random_grayscale(images, seed, p=0.2):
    """Replaces each image by its luma with probability `p` (per sample), keeping the channel count.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.
      p: probability in [0, 1] that a sample is converted.

    Returns:
      `[B, H, W, C]` float32 in [0, 1]; converted RGB samples have three equal
      channels. 1-channel images are returned unchanged.
    """
    p = _check_probability(p, "p")
    seed = _check_seed(seed)
    images = to_float_images(images)
    if images.shape[-1] == 1:
        return images
    gray = tf.broadcast_to(_luma(images), tf.shape(images))
    convert = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < p
    return tf.where(_per_sample(convert), gray, images)


def resize(images, image_size):
    """Resizes a batch bilinearly (deterministic); a no-op when the size already matches.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      image_size: output `(height, width)`, or one int for a square output.

    Returns:
      `[B, image_size[0], image_size[1], C]` float32 in [0, 1].
    """
    height, width = _as_size(image_size, "image_size")
    images = to_float_images(images)
    if tuple(images.shape[1:3]) == (height, width):
        return images
    resized = tf.image.resize(images, (height, width), method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


# ---------------------------------------------------------------------------
# AutoAugment ops (Cubuk et al., "AutoAugment: Learning Augmentation Strategies
# from Data", CVPR 2019).
# ---------------------------------------------------------------------------

# The ops of the paper's search space that its ImageNet policy uses (Table 1 of the paper lists
# them with their magnitude ranges; Cutout and SamplePairing are in the search space but not in
# the ImageNet policy and are not implemented).
AUTOAUGMENT_OPS = (
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "AutoContrast",
    "Invert",
    "Equalize",
    "Solarize",
    "Posterize",
    "Contrast",
    "Color",
    "Brightness",
    "Sharpness",
)
_OP_ID = {name: index for index, name in enumerate(AUTOAUGMENT_OPS)}
_GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BLEND_OPS = ("Contrast", "Color", "Brightness", "Sharpness")

# The AutoAugment ImageNet policy: Cubuk et al. 2019, Appendix, Table 9 ("Policy on ImageNet"),
# transcribed row by row. Each sub-policy is two (operation, probability, magnitude) entries,
# magnitude on the paper's 0..10 scale (the table lists one for every op, including those that
# ignore it: AutoContrast, Equalize, Invert). Rows 20-24 repeat rows 4, 1, 13, 14 and 2, as in
# the paper.
AUTOAUGMENT_IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),  # 0
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),  # 1
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),  # 2
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),  # 3
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),  # 4
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),  # 5
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),  # 6
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),  # 7
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),  # 8
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),  # 9
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),  # 10
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),  # 11
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),  # 12
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),  # 13
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),  # 14
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),  # 15
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),  # 16
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),  # 17
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),  # 18
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),  # 19
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),  # 20
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),  # 21
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),  # 22
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),  # 23
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),  # 24
)

# Magnitude ranges of the paper's Table 1, reached at magnitude 10.
_MAX_MAGNITUDE = 10.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE_FRACTION = 150.0 / 331.0  # 150 px on the paper's 331 px ImageNet images.
_MAX_ROTATE_DEGREES = 30.0
_MIN_ENHANCE_FACTOR, _MAX_ENHANCE_FACTOR = 0.1, 1.9
# Pixels that a geometric op pulls from outside the image: mid grey, (128, 128, 128) in uint8.
_AUTOAUGMENT_FILL = 128.0 / 255.0
# PIL's ImageFilter.SMOOTH kernel, which ImageEnhance.Sharpness blends with.
_SMOOTH_KERNEL = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))


def _levels(images):
    """`[B, H, W, C]` float32 in [0, 1] -> int32 levels in 0..255 (rounded)."""
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.int32)


def _project(images, transforms):
    """Applies one projective transform per sample, `transforms` `[B, 8]` (output -> input).

    Row `[a0, a1, a2, b0, b1, b2, c0, c1]` maps the output pixel `(x, y)` (column, row; pixel
    centres at integers) to the input point `((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k)`
    with `k = c0 x + c1 y + 1`, sampled bilinearly; outside points read `_AUTOAUGMENT_FILL`.
    """
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(_AUTOAUGMENT_FILL, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _affine_rows(a0, a1, a2, b0, b1, b2):
    """Stacks per-sample `[B]` (or broadcastable) coefficients into `[B, 8]` transform rows."""
    columns = [a0, a1, a2, b0, b1, b2]
    batch = tf.shape(a2)[0]
    columns = [tf.broadcast_to(tf.cast(c, tf.float32), [batch]) for c in columns]
    zeros = tf.zeros([batch], tf.float32)
    return tf.stack(columns + [zeros, zeros], axis=1)


def _geometric_transforms(op, signed_level, height, width):
    """The `[B, 8]` output -> input transform of each sample's geometric op (identity otherwise).

    `signed_level` `[B]` is `sign * magnitude / 10`. Conventions (those of PIL, whose ops the
    paper uses): ShearX maps output `(x, y)` to input `(x + s * y, y)` (shear about the top-left
    corner), ShearY to `(x, y + s * x)`; TranslateX to `(x + t, y)` with `t` in pixels; Rotate
    turns the content counter-clockwise (as displayed, rows going down) about the image centre
    by `theta` for `theta > 0`.
    """
    zeros = tf.zeros_like(signed_level)
    ones = tf.ones_like(signed_level)
    shear = _MAX_SHEAR * signed_level
    shift_x = _MAX_TRANSLATE_FRACTION * signed_level * width
    shift_y = _MAX_TRANSLATE_FRACTION * signed_level * height
    theta = signed_level * (_MAX_ROTATE_DEGREES * math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Input point = R(-theta) (output - centre) + centre; pixel centres at integers.
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    candidates = {
        "ShearX": _affine_rows(ones, shear, zeros, zeros, ones, zeros),
        "ShearY": _affine_rows(ones, zeros, zeros, shear, ones, zeros),
        "TranslateX": _affine_rows(ones, zeros, shift_x, zeros, ones, zeros),
        "TranslateY": _affine_rows(ones, zeros, zeros, zeros, ones, shift_y),
        "Rotate": _affine_rows(
            cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy
        ),
    }
    transforms = _affine_rows(ones, zeros, zeros, zeros, ones, zeros)
    for name in _GEOMETRIC_OPS:
        transforms = tf.where((op == _OP_ID[name])[:, None], candidates[name], transforms)
    return transforms


def _autocontrast(images):
    """PIL `ImageOps.autocontrast` (cutoff 0): each channel of each image stretched to [0, 1]."""
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    span = high - low
    stretched = (images - low) / tf.where(span > 0.0, span, 1.0)
    return tf.where(span > 0.0, stretched, images)


def _equalize(images):
    """PIL `ImageOps.equalize`, per channel per image, vectorised with one segment sum.

    On 0..255 levels: with `h` the channel's 256-bin histogram and `last` the count of its
    highest occupied level, `step = (sum(h) - last) // 255`; level `v` maps to
    `min(255, (step // 2 + sum(h[:v])) // step)`. A channel with `step == 0` (a single level, or
    fewer than 255 pixels below its highest level, e.g. any image under 16x16) is unchanged, as
    in PIL. All `B * C` histograms come from one `unsorted_segment_sum` over `B * H * W * C`
    pixels, and the lookup is one gather.
    """
    shape = tf.shape(images)
    batch, channels = shape[0], shape[3]
    levels = _levels(images)
    # Histogram id of each pixel: (b * C + c) * 256 + level.
    planes = tf.reshape(tf.range(batch * channels), [batch, 1, 1, channels])
    ids = planes * 256 + levels
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(ids), ids, num_segments=batch * channels * 256
    )
    histograms = tf.reshape(counts, [batch * channels, 256])
    occupied = histograms > 0
    # Count of the highest occupied level of each histogram.
    highest = 255 - tf.argmax(tf.cast(tf.reverse(occupied, axis=[1]), tf.int32), axis=1,
                              output_type=tf.int32)
    last = tf.gather(histograms, highest, axis=1, batch_dims=1)
    total = tf.reduce_sum(histograms, axis=1)
    step = (total - last) // 255  # [B * C]
    safe_step = tf.maximum(step, 1)[:, None]
    lut = tf.minimum(
        (safe_step // 2 + tf.cumsum(histograms, axis=1, exclusive=True)) // safe_step, 255
    )
    equalized = tf.cast(tf.gather(tf.reshape(lut, [-1]), ids), tf.float32) / 255.0
    keep = tf.reshape(step == 0, [batch, 1, 1, channels])
    return tf.where(keep, images, equalized)


def _solarize(images, threshold):
    """PIL `ImageOps.solarize`: inverts the pixels whose 0..255 level is >= `threshold` `[B]`."""
    invert = tf.cast(_levels(images), tf.float32) >= _per_sample(threshold)
    return tf.where(invert, 1.0 - images, images)


def _posterize(images, bits):
    """PIL `ImageOps.posterize`: keeps the top `bits` `[B]` int32 bits of each 0..255 level.

    Samples with 8 bits are returned unchanged (for float input, not rounded to 0..255 levels).
    """
    mask = tf.bitwise.left_shift(tf.constant(255, tf.int32), 8 - bits) & 255
    posterized = tf.cast(tf.bitwise.bitwise_and(_levels(images), _per_sample(mask)), tf.float32)
    return tf.where(_per_sample(bits >= 8), images, posterized / 255.0)


def _smooth(images):
    """PIL `ImageFilter.SMOOTH` (3x3 kernel, centre weight 5, sum 13); border pixels unchanged."""
    channels = images.shape[-1]
    kernel = tf.constant(_SMOOTH_KERNEL, tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    smoothed = tf.nn.depthwise_conv2d(images, kernel, strides=[1, 1, 1, 1], padding="SAME")
    shape = tf.shape(images)
    rows = tf.range(shape[1])
    cols = tf.range(shape[2])
    inner_rows = tf.logical_and(rows >= 1, rows <= shape[1] - 2)
    inner_cols = tf.logical_and(cols >= 1, cols <= shape[2] - 2)
    inner = tf.logical_and(inner_rows[:, None], inner_cols[None, :])
    return tf.where(inner[None, :, :, None], smoothed, images)


def _autoaugment_stage(images, op, magnitude, sign, apply):
    """Applies to each sample its own AutoAugment op (one stage of a sub-policy).

    Args:
      images: `[B, H, W, C]` float32 in [0, 1].
      op: `[B]` int32 index into `AUTOAUGMENT_OPS`.
      magnitude: `[B]` float32 on the 0..10 scale.
      sign: `[B]` float32, +1 or -1 (used by the geometric ops only).
      apply: `[B]` bool; samples with False are returned unchanged.

    Magnitude m maps to the ranges of the paper's Table 1, the way the authors' code does
    (`float_parameter` / `int_parameter`, integer parameters truncated):

    * ShearX/Y: shear `sign * 0.3 * m / 10`; TranslateX/Y: `sign * (150 / 331) * m / 10` of the
      width/height, in pixels; Rotate: `sign * 30 * m / 10` degrees (see `_geometric_transforms`);
    * Solarize: threshold `256 - floor(256 * m / 10)` (m = 0 changes nothing, m = 10 inverts);
    * Posterize: `8 - floor(4 * m / 10)` bits (8 at m = 0, 4 at m = 10);
    * Contrast, Color, Brightness, Sharpness: factor `0.1 + 1.8 * m / 10`, unsigned (1.0, the
      identity, at m = 5), blending the image with a degenerate one: black (Brightness), its
      luma (Color; a no-op for 1-channel images), its mean luma (Contrast), its 3x3 smoothing
      (Sharpness): `out = clip(degenerate + factor * (image - degenerate), 0, 1)`;
    * AutoContrast, Invert (`1 - x`), Equalize: no magnitude.

    Cost: every op is computed for the whole batch and each sample selects its own with
    `tf.where` masks. The five geometric ops share one `ImageProjectiveTransformV3` call (per-
    sample matrices, identity for the others) and the four blends share one blend, so a stage
    costs one projective transform, one 3x3 depthwise convolution, one histogram (segment sum)
    and gather, and about fifteen elementwise passes over the batch, instead of one op per
    sample. That is negligible next to a training step at CIFAR/ImageNet sizes.

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    op = tf.where(apply, op, -1)  # -1: no op.
    shape = tf.shape(images)
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    level = magnitude / _MAX_MAGNITUDE

    def selected(names):
        return _per_sample(tf.reduce_any(tf.stack([op == _OP_ID[n] for n in names]), axis=0))

    out = images
    transforms = _geometric_transforms(op, sign * level, height, width)
    out = tf.where(selected(_GEOMETRIC_OPS), _project(images, transforms), out)
    out = tf.where(selected(["AutoContrast"]), _autocontrast(images), out)
    out = tf.where(selected(["Invert"]), 1.0 - images, out)
    out = tf.where(selected(["Equalize"]), _equalize(images), out)
    threshold = 256.0 - tf.floor(magnitude * 256.0 / _MAX_MAGNITUDE)
    out = tf.where(selected(["Solarize"]), _solarize(images, threshold), out)
    bits = 8 - tf.cast(tf.floor(magnitude * 4.0 / _MAX_MAGNITUDE), tf.int32)
    out = tf.where(selected(["Posterize"]), _posterize(images, bits), out)

    factor = _MIN_ENHANCE_FACTOR + (_MAX_ENHANCE_FACTOR - _MIN_ENHANCE_FACTOR) * level
    luma = _luma(images)
    degenerate = tf.where(selected(["Color"]), luma, tf.zeros_like(luma))
    degenerate = tf.where(
        selected(["Contrast"]), tf.reduce_mean(luma, axis=[1, 2, 3], keepdims=True), degenerate
    )
    degenerate = tf.where(selected(["Sharpness"]), _smooth(images), degenerate)
    blended = degenerate + _per_sample(factor) * (images - degenerate)
    out = tf.where(selected(_BLEND_OPS), blended, out)
    return tf.clip_by_value(out, 0.0, 1.0)


def _check_autoaugment_policy(policy):
    """Validates a policy table; returns `(ops, probabilities, magnitudes)` as `[N, K]` arrays."""

    def fail(reason):
        raise ValueError(
            "`policy` must be a non-empty sequence of sub-policies, each a sequence of the same "
            f"number (>= 1) of (operation, probability, magnitude) with operation in "
            f"{list(AUTOAUGMENT_OPS)}, probability in [0, 1] and magnitude in [0, 10]; {reason}"
        )

    if not isinstance(policy, (tuple, list)) or not policy:
        fail(f"received: policy={policy!r}")
    width = None
    ops, probabilities, magnitudes = [], [], []
    for row, sub_policy in enumerate(policy):
        if not isinstance(sub_policy, (tuple, list)) or not sub_policy:
            fail(f"sub-policy {row} is {sub_policy!r}")
        if width is None:
            width = len(sub_policy)
        if len(sub_policy) != width:
            fail(f"sub-policy {row} has {len(sub_policy)} ops, sub-policy 0 has {width}")
        for entry in sub_policy:
            ok = isinstance(entry, (tuple, list)) and len(entry) == 3
            if ok:
                name, probability, magnitude = entry
                ok = (
                    isinstance(name, str)
                    and name in _OP_ID
                    and _is_number(probability)
                    and 0.0 <= probability <= 1.0
                    and _is_number(magnitude)
                    and 0.0 <= magnitude <= _MAX_MAGNITUDE
                )
            if not ok:
                fail(f"sub-policy {row} has the entry {entry!r}")
        ops.append([_OP_ID[name] for name, _, _ in sub_policy])
        probabilities.append([float(p) for _, p, _ in sub_policy])
        magnitudes.append([float(m) for _, _, m in sub_policy])
    return (
        np.array(ops, np.int32),
        np.array(probabilities, np.float32),
        np.array(magnitudes, np.float32),
    )


def autoaugment_op(images, name, magnitude, *, sign=1.0):
    """Applies one AutoAugment op at a fixed magnitude to every image of a batch.

    The same code path as `auto_augment` (see `_autoaugment_stage` for the magnitude mapping),
    with the op always applied; meant for inspection and tests.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      name: one of `AUTOAUGMENT_OPS`.
      magnitude: number in [0, 10], the paper's magnitude scale.
      sign: +1 or -1, the direction of the geometric ops (ignored by the others).

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    if not isinstance(name, str) or name not in _OP_ID:
        raise ValueError(f"`name` must be one of {list(AUTOAUGMENT_OPS)}, received: name={name!r}")
    if not _is_number(magnitude) or not 0.0 <= magnitude <= _MAX_MAGNITUDE:
        raise ValueError(
            f"`magnitude` must be a number in [0, 10], received: magnitude={magnitude!r}"
        )
    if not _is_number(sign) or sign not in (1, -1):
        raise ValueError(f"`sign` must be 1 or -1, received: sign={sign!r}")
    images = to_float_images(images)
    batch = tf.shape(images)[0]
    return _autoaugment_stage(
        images,
        tf.fill([batch], _OP_ID[name]),
        tf.fill([batch], float(magnitude)),
        tf.fill([batch], float(sign)),
        tf.fill([batch], True),
    )


def auto_augment(images, seed, *, policy=AUTOAUGMENT_IMAGENET_POLICY):
    """AutoAugment: each sample gets a random sub-policy, whose ops fire with their probabilities.

    For every sample independently: a sub-policy is drawn uniformly from `policy`; its ops are
    applied in order, each with its own probability, at its fixed magnitude, and the geometric
    ops (shear, translate, rotate) with a random sign (Cubuk et al. 2019, Sec. 3). All of it is
    vectorised over the batch (`_autoaugment_stage`); no per-sample loops.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.
      policy: sub-policies, each a sequence of the same number of `(operation, probability,
        magnitude)` entries; default: the paper's ImageNet policy
        (`AUTOAUGMENT_IMAGENET_POLICY`, Appendix Table 9).

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    ops, probabilities, magnitudes = _check_autoaugment_policy(policy)
    seed = _check_seed(seed)
    images = to_float_images(images)
    batch = tf.shape(images)[0]
    choice_seed, apply_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    num_sub_policies, num_stages = ops.shape
    choice = tf.random.stateless_uniform(
        [batch], choice_seed, minval=0, maxval=num_sub_policies, dtype=tf.int32
    )
    op = tf.gather(tf.constant(ops), choice)  # [B, K]
    probability = tf.gather(tf.constant(probabilities), choice)
    magnitude = tf.gather(tf.constant(magnitudes), choice)
    apply = tf.random.stateless_uniform([batch, num_stages], apply_seed) < probability
    sign = tf.where(tf.random.stateless_uniform([batch, num_stages], sign_seed) < 0.5, -1.0, 1.0)
    for stage in range(num_stages):
        images = _autoaugment_stage(
            images, op[:, stage], magnitude[:, stage], sign[:, stage], apply[:, stage]
        )
    return images


# ---------------------------------------------------------------------------
# RandAugment through Keras 3's layer.
# ---------------------------------------------------------------------------


class _StatelessSeedGenerator(keras.random.SeedGenerator):
    """A `keras.random.SeedGenerator` without state: its i-th draw is `fold_in(seed, i)`.

    Keras' random ops take a seed only as a Python int or a `SeedGenerator` (whose `next()` they
    call); a `SeedGenerator` keeps its state in a variable, which is neither stateless nor
    creatable inside `tf.data.Dataset.map`. This one derives every draw from a seed tensor
    instead, counting draws in Python (at trace time under `tf.function`), so the draws are a
    function of the seed alone. It deliberately skips `SeedGenerator.__init__` (which would
    create the variable); Keras only calls `next()` (`keras.src.random.seed_generator.draw_seed`),
    which `tests/test_augment_policies.py` guards.
    """

    def __init__(self, seed):  # No super().__init__(): it would create the state variable.
        self._seed = seed
        self._draws = 0

    def next(self, ordered=True):
        del ordered
        seed = tf.random.experimental.stateless_fold_in(self._seed, self._draws)
        self._draws += 1
        return seed


class StatelessRandAugment:
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
    * for each slot and op, the samples that chose it are gathered, transformed by the Keras
      sub-layer (`get_random_transformation` + `transform_images`) and scattered back, so a
      slot costs about one op on the whole batch, not eleven (`tf.cond` skips ops no sample
      chose; Keras' `AutoContrast` and `Equalization` fail on an empty batch);
    * every random draw comes from `seed` (`_StatelessSeedGenerator`), so the output is a pure
      function of `(images, seed)`, eagerly, under `tf.function` and in `tf.data`.

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
        # `_AUGMENT_LAYERS` names the layer's sub-layer attributes (guarded by a test).
        self._ops = tuple(
            (name, getattr(self._layer, name)) for name in type(self._layer)._AUGMENT_LAYERS
        )

    @property
    def op_names(self):
        """The names of Keras' RandAugment sub-layers, in the order of the op indices."""
        return tuple(name for name, _ in self._ops)

    def _apply_op(self, sublayer, images, rows, seed):
        subset = tf.gather_nd(images, rows)
        generator = _StatelessSeedGenerator(seed)
        transformation = sublayer.get_random_transformation(subset, training=True, seed=generator)
        transformed = sublayer.transform_images(subset, transformation, training=True)
        transformed = tf.clip_by_value(tf.cast(transformed, tf.float32), 0.0, 1.0)
        return tf.tensor_scatter_nd_update(images, rows, transformed)

    def __call__(self, images, seed):
        seed = _check_seed(seed)
        images = to_float_images(images)
        for _, sublayer in self._ops:
            # Keras' tf.data mode: the sub-layers compute with TensorFlow ops whatever the
            # Keras backend.
            sublayer.backend.set_backend("tensorflow")
        choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        choice = tf.random.stateless_uniform(
            [tf.shape(images)[0], self.num_ops],
            choice_seed,
            minval=0,
            maxval=len(self._ops),
            dtype=tf.int32,
        )
        out = images
        for slot in range(self.num_ops):
            for index, (_, sublayer) in enumerate(self._ops):
                rows = tf.where(choice[:, slot] == index)  # [k, 1] int64
                # Seeds depend on (slot, index) only, so eager execution (which runs one branch
                # of `tf.cond`) and graphs (which trace both) draw the same numbers.
                seed_here = tf.random.experimental.stateless_fold_in(
                    op_seed, slot * len(self._ops) + index
                )
                out = tf.cond(
                    tf.shape(rows)[0] > 0,
                    functools.partial(self._apply_op, sublayer, out, rows, seed_here),
                    functools.partial(tf.identity, out),
                )
        return out

    def get_config(self):
        """Returns the constructor arguments as a JSON-friendly dict."""
        factor = list(self.factor) if isinstance(self.factor, tuple) else self.factor
        return {"num_ops": self.num_ops, "factor": factor, "interpolation": self.interpolation}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _check_num_ops(value):
    if not _is_int(value) or value < 1:
        raise ValueError(f"`num_ops` must be an int >= 1, received: num_ops={value!r}")
    return int(value)


def _check_factor(value):
    """Keras' RandAugment `factor`: a number in [0, 1] or a pair 0 <= lo <= hi <= 1."""
    if _is_number(value) and 0.0 <= value <= 1.0:
        return float(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(_is_number(v) for v in value)
        and 0.0 <= value[0] <= value[1] <= 1.0
    ):
        return float(value[0]), float(value[1])
    raise ValueError(
        "`factor` must be a number in [0, 1] or a pair (lo, hi) with 0 <= lo <= hi <= 1, "
        f"received: factor={value!r}"
    )


# ---------------------------------------------------------------------------
# Policies.
# ---------------------------------------------------------------------------


class SimCLRAugment:
    """SimCLR-style augmentation: random resized crop -> flip -> colour jitter -> grayscale.

    The policy of SimCLR (Chen et al. 2020) that SupCon uses for CIFAR
    (Khosla et al. 2020, App. B), with all random parameters per sample and
    stateless.

    Args:
      image_size: output `(height, width)`, or one int for a square output.
      crop_scale: `(lo, hi)` area-fraction range of the random resized crop.
      flip: whether to flip horizontally with probability 0.5.
      brightness: colour-jitter brightness strength (>= 0).
      contrast: colour-jitter contrast strength (>= 0).
      saturation: colour-jitter saturation strength (>= 0).
      hue: colour-jitter hue strength (in [0, 0.5]).
      jitter_prob: probability that a sample is colour-jittered.
      grayscale_prob: probability that a sample is converted to grayscale.

    Call arguments:
      images: `[B, H, W, C]` uint8 in [0, 255] or float32 in [0, 1], C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.

    Returns:
      `[B, image_size[0], image_size[1], C]` float32 in [0, 1].

    Example:
      >>> augment = SimCLRAugment(32)
      >>> views = augment(images, tf.constant([0, 1]))  # [B, 32, 32, C]
    """

    def __init__(
        self,
        image_size,
        *,
        crop_scale=(0.2, 1.0),
        flip=True,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        jitter_prob=0.8,
        grayscale_prob=0.2,
    ):
        self.image_size = _as_size(image_size, "image_size")
        self.crop_scale = _check_range(crop_scale, "crop_scale", low=0.0, high=1.0)
        if not isinstance(flip, bool):
            raise ValueError(f"`flip` must be a bool, received: flip={flip!r}")
        self.flip = flip
        self.brightness = _check_nonnegative(brightness, "brightness")
        self.contrast = _check_nonnegative(contrast, "contrast")
        self.saturation = _check_nonnegative(saturation, "saturation")
        self.hue = _check_nonnegative(hue, "hue", maximum=0.5)
        self.jitter_prob = _check_probability(jitter_prob, "jitter_prob")
        self.grayscale_prob = _check_probability(grayscale_prob, "grayscale_prob")

    def __call__(self, images, seed):
        seed = _check_seed(seed)
        images = to_float_images(images)
        crop_seed, flip_seed, jitter_seed, gray_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 4)
        )
        images = random_resized_crop(images, crop_seed, size=self.image_size, scale=self.crop_scale)
        if self.flip:
            images = random_flip_left_right(images, flip_seed)
        if self.jitter_prob > 0.0:
            images = color_jitter(
                images,
                jitter_seed,
                brightness=self.brightness,
                contrast=self.contrast,
                saturation=self.saturation,
                hue=self.hue,
                p=self.jitter_prob,
            )
        if self.grayscale_prob > 0.0:
            images = random_grayscale(images, gray_seed, p=self.grayscale_prob)
        return images

    def get_config(self):
        """Returns the constructor arguments as a JSON-friendly dict."""
        return {
            "image_size": list(self.image_size),
            "crop_scale": list(self.crop_scale),
            "flip": self.flip,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
            "jitter_prob": self.jitter_prob,
            "grayscale_prob": self.grayscale_prob,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class NoAugment:
    """No augmentation: converts to float32 [0, 1] and resizes bilinearly to `image_size`.

    Args:
      image_size: output `(height, width)`, or one int for a square output.

    Call arguments:
      images: `[B, H, W, C]` uint8 in [0, 255] or float32 in [0, 1], C in {1, 3}.
      seed: ignored (accepted so that every policy has the same call signature).

    Returns:
      `[B, image_size[0], image_size[1], C]` float32 in [0, 1].
    """

    def __init__(self, image_size):
        self.image_size = _as_size(image_size, "image_size")

    def __call__(self, images, seed=None):
        del seed  # Deterministic.
        return resize(images, self.image_size)

    def get_config(self):
        """Returns the constructor arguments as a JSON-friendly dict."""
        return {"image_size": list(self.image_size)}

    def __repr__(self):
        return f"{type(self).__name__}(image_size={self.image_size!r})"


def _check_flip(flip):
    if not isinstance(flip, bool):
        raise ValueError(f"`flip` must be a bool, received: flip={flip!r}")
    return flip


class AutoAugmentPolicy:
    """ImageNet AutoAugment as SupCon uses it: random resized crop -> flip -> AutoAugment.

    The crop and flip are those of `SimCLRAugment` (per sample, stateless); then each sample
    gets a uniformly drawn sub-policy of the paper's ImageNet policy (Cubuk et al. 2019,
    Appendix Table 9, `AUTOAUGMENT_IMAGENET_POLICY`), each op applied with its probability
    (`auto_augment`). Everything is vectorised over the batch and a pure function of
    `(images, seed)`.

    Args:
      image_size: output `(height, width)`, or one int for a square output.
      crop_scale: `(lo, hi)` area-fraction range of the random resized crop (ImageNet: 0.08-1).
      flip: whether to flip horizontally with probability 0.5.

    Call arguments:
      images: `[B, H, W, C]` uint8 in [0, 255] or float32 in [0, 1], C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.

    Returns:
      `[B, image_size[0], image_size[1], C]` float32 in [0, 1].

    Example:
      >>> augment = AutoAugmentPolicy(224)
      >>> views = augment(images, tf.constant([0, 1]))  # [B, 224, 224, C]

    Reference:
      Cubuk, Zoph, Mane, Vasudevan, Le. "AutoAugment: Learning Augmentation Strategies from
      Data". CVPR 2019 (arXiv:1805.09501).
    """

    def __init__(self, image_size, *, crop_scale=(0.08, 1.0), flip=True):
        self.image_size = _as_size(image_size, "image_size")
        self.crop_scale = _check_range(crop_scale, "crop_scale", low=0.0, high=1.0)
        self.flip = _check_flip(flip)

    def __call__(self, images, seed):
        seed = _check_seed(seed)
        images = to_float_images(images)
        crop_seed, flip_seed, policy_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        images = random_resized_crop(images, crop_seed, size=self.image_size, scale=self.crop_scale)
        if self.flip:
            images = random_flip_left_right(images, flip_seed)
        return auto_augment(images, policy_seed)

    def get_config(self):
        """Returns the constructor arguments as a JSON-friendly dict."""
        return {
            "image_size": list(self.image_size),
            "crop_scale": list(self.crop_scale),
            "flip": self.flip,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class RandAugmentPolicy:
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

    Call arguments:
      images: `[B, H, W, C]` uint8 in [0, 255] or float32 in [0, 1], C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.

    Returns:
      `[B, image_size[0], image_size[1], C]` float32 in [0, 1].

    Example:
      >>> augment = RandAugmentPolicy(224, num_ops=2, factor=0.5)
      >>> views = augment(images, tf.constant([0, 1]))  # [B, 224, 224, C]

    Reference:
      Cubuk, Zoph, Shlens, Le. "RandAugment: Practical automated data augmentation with a
      reduced search space". NeurIPS 2020 (arXiv:1909.13719).
    """

    def __init__(
        self,
        image_size,
        *,
        num_ops=2,
        factor=0.5,
        interpolation="bilinear",
        crop_scale=(0.08, 1.0),
        flip=True,
    ):
        self.image_size = _as_size(image_size, "image_size")
        self.crop_scale = _check_range(crop_scale, "crop_scale", low=0.0, high=1.0)
        self.flip = _check_flip(flip)
        self.rand_augment = StatelessRandAugment(
            num_ops=num_ops, factor=factor, interpolation=interpolation
        )

    def __call__(self, images, seed):
        seed = _check_seed(seed)
        images = to_float_images(images)
        crop_seed, flip_seed, rand_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        images = random_resized_crop(images, crop_seed, size=self.image_size, scale=self.crop_scale)
        if self.flip:
            images = random_flip_left_right(images, flip_seed)
        return self.rand_augment(images, rand_seed)

    def get_config(self):
        """Returns the constructor arguments as a JSON-friendly dict."""
        return {
            "image_size": list(self.image_size),
            **self.rand_augment.get_config(),
            "crop_scale": list(self.crop_scale),
            "flip": self.flip,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class StackedRandAugmentPolicy:
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

    Call arguments:
      images: `[B, H, W, C]` uint8 in [0, 255] or float32 in [0, 1], C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.

    Returns:
      `[B, image_size[0], image_size[1], C]` float32 in [0, 1].

    Example:
      >>> augment = StackedRandAugmentPolicy(224)
      >>> views = augment(images, tf.constant([0, 1]))  # [B, 224, 224, C]
    """

    def __init__(
        self,
        image_size,
        *,
        num_ops=2,
        factor=0.5,
        interpolation="bilinear",
        crop_scale=(0.08, 1.0),
        flip=True,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        jitter_prob=0.8,
        grayscale_prob=0.2,
    ):
        self.simclr = SimCLRAugment(
            image_size,
            crop_scale=crop_scale,
            flip=flip,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            hue=hue,
            jitter_prob=jitter_prob,
            grayscale_prob=grayscale_prob,
        )
        self.rand_augment = StatelessRandAugment(
            num_ops=num_ops, factor=factor, interpolation=interpolation
        )
        self.image_size = self.simclr.image_size

    def __call__(self, images, seed):
        seed = _check_seed(seed)
        simclr_seed, rand_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        return self.rand_augment(self.simclr(images, simclr_seed), rand_seed)

    def get_config(self):
        """Returns the constructor arguments as a JSON-friendly dict."""
        return {**self.simclr.get_config(), **self.rand_augment.get_config()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# Named policies; add a class here to make `get_augmentation` know it.
# A policy is constructed as `cls(image_size, **kwargs)` and called as `policy(images, seed)`.
AUGMENTATIONS = {
    "simclr": SimCLRAugment,
    "autoaugment": AutoAugmentPolicy,
    "randaugment": RandAugmentPolicy,
    "stacked_randaugment": StackedRandAugmentPolicy,
    "none": NoAugment,
}


def get_augmentation(name, image_size, **kwargs):
    """Builds the augmentation policy registered under `name`.

    Args:
      name: a key of `AUGMENTATIONS` ("simclr", "autoaugment", "randaugment",
        "stacked_randaugment", "none").
      image_size: output `(height, width)`, or one int for a square output.
      **kwargs: the policy's other constructor arguments.

    Returns:
      A callable `(images [B, H, W, C], seed [2]) -> [B, image_size..., C]` float32.

    Raises:
      ValueError: for an unknown name, or keyword arguments the policy does not take.
    """
    if not isinstance(name, str) or name not in AUGMENTATIONS:
        raise ValueError(
            f"`name` must be one of {sorted(AUGMENTATIONS)}, received: name={name!r}"
        )
    cls = AUGMENTATIONS[name]
    try:
        inspect.signature(cls).bind(image_size, **kwargs)
    except TypeError as error:
        accepted = [k for k in inspect.signature(cls).parameters if k != "image_size"]
        unexpected = ", ".join(f"`{k}`" for k in kwargs if k not in accepted) or "(none)"
        received = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ValueError(
            f"Augmentation {name!r} ({cls.__name__}) takes the keyword arguments {accepted}; "
            f"unexpected: {unexpected}; received: {received} ({error})"
        ) from error
    return cls(image_size, **kwargs)
