"""Pure, vectorised, stateless per-sample TensorFlow image ops: crop, flip, jitter, grayscale.

Conventions shared by every op here and by the policies built from them:

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
"""

import numpy as np
import tensorflow as tf

from supcon_tf._checks import as_size
from supcon_tf.augment._checks import (
    check_nonnegative,
    check_probability,
    check_range,
    check_seed,
)
from supcon_tf.augment._tensors import luma, per_sample

__all__ = [
    "to_float_images",
    "random_resized_crop",
    "random_flip_left_right",
    "color_jitter",
    "random_grayscale",
    "resize",
]

# Colour-jitter op ids; `color_jitter` applies them in a per-sample random order.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3
_NUM_JITTER_OPS = 4


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
      images, seed: as the module docstring says.
      size: output `(height, width)`, or one int for a square output.
      scale: `(lo, hi)`, 0 < lo <= hi <= 1, the range of the crop's area as a
        fraction of the image's area.
      ratio: `(lo, hi)`, 0 < lo <= hi, the range of the crop's aspect ratio.

    Returns:
      `[B, size[0], size[1], C]` float32 in [0, 1].
    """
    height_out, width_out = as_size(size, "size")
    scale = check_range(scale, "scale", low=0.0, high=1.0)
    ratio = check_range(ratio, "ratio", low=0.0, high=float("inf"))
    seed = check_seed(seed)
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
      images, seed: as the module docstring says.
      p: probability in [0, 1] that a sample is flipped.

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    p = check_probability(p, "p")
    seed = check_seed(seed)
    images = to_float_images(images)
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < p
    return tf.where(per_sample(flip), tf.reverse(images, axis=[2]), images)


def _shift_hue(images, delta):
    """Rotates the HSV hue of `[B, H, W, 3]` float32 images by `delta` `[B]` (turns)."""
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
      images, seed: as the module docstring says.
      brightness: strength >= 0 of the brightness jitter (0 disables it).
      contrast: strength >= 0 of the contrast jitter (0 disables it).
      saturation: strength >= 0 of the saturation jitter (0 disables it).
      hue: strength in [0, 0.5] of the hue jitter (0 disables it).
      p: probability in [0, 1] that a sample is jittered at all.

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    brightness = check_nonnegative(brightness, "brightness")
    contrast = check_nonnegative(contrast, "contrast")
    saturation = check_nonnegative(saturation, "saturation")
    hue = check_nonnegative(hue, "hue", maximum=0.5)
    p = check_probability(p, "p")
    seed = check_seed(seed)
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
        out_luma = luma(out)
        mean_luma = tf.reduce_mean(out_luma, axis=[1, 2, 3], keepdims=True)
        out = (
            per_sample(b_factor * c_factor * s_factor) * out
            + per_sample(1.0 - s_factor) * out_luma
            + per_sample(1.0 - c_factor) * mean_luma
        )
        out = tf.clip_by_value(out, 0.0, 1.0)
        if use_hue:
            # The HSV round trip runs only on the samples whose hue op is in this stage, so the
            # random order costs one round trip per jittered sample in total.
            index = tf.where(tf.logical_and(op == _HUE, apply))
            shifted = _shift_hue(tf.gather_nd(out, index), tf.gather_nd(hue_delta, index))
            out = tf.tensor_scatter_nd_update(out, index, tf.clip_by_value(shifted, 0.0, 1.0))
    return tf.where(per_sample(apply), out, images)


def random_grayscale(images, seed, p=0.2):
    """Replaces each image by its luma with probability `p` (per sample), keeping the channel count.

    Args:
      images, seed: as the module docstring says.
      p: probability in [0, 1] that a sample is converted.

    Returns:
      `[B, H, W, C]` float32 in [0, 1]; converted RGB samples have three equal
      channels. 1-channel images are returned unchanged.
    """
    p = check_probability(p, "p")
    seed = check_seed(seed)
    images = to_float_images(images)
    if images.shape[-1] == 1:
        return images
    gray = tf.broadcast_to(luma(images), tf.shape(images))
    convert = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < p
    return tf.where(per_sample(convert), gray, images)


def resize(images, image_size):
    """Resizes a batch bilinearly (deterministic); a no-op when the size already matches.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      image_size: output `(height, width)`, or one int for a square output.

    Returns:
      `[B, image_size[0], image_size[1], C]` float32 in [0, 1].
    """
    height, width = as_size(image_size, "image_size")
    images = to_float_images(images)
    if tuple(images.shape[1:3]) == (height, width):
        return images
    resized = tf.image.resize(images, (height, width), method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)
