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
* Random parameters are drawn per sample, with batched draws (no per-sample
  Python loops), so everything runs inside ``tf.function`` and
  ``tf.data.Dataset.map``, on the host or on an accelerator.

`check_images`, `crop_boxes`, `crop_to_size`, `jitter_draws` and
`color_transform` are the policies' building blocks: they take arguments
already checked by the public op or policy that calls them.

Cost (benchmarks/augment_benchmark.py, one CPU core): a batch of float32
views at 224x224 is larger than the core's caches, so every separate
elementwise op over it moves the whole batch through memory. Hence: the crop
reads uint8 input directly (`crop_to_size`) and a flip is the crop's box read
from right to left (`crop_boxes`); colour jitter and grayscale run in one XLA
computation one sample at a time (`color_transform`), each sample computing
only its own op at each stage while its image stays in cache.
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
    images = check_images(images)
    if images.dtype == tf.uint8:
        return tf.image.convert_image_dtype(images, tf.float32)
    return tf.cast(images, tf.float32)



def check_images(images):
    """Checks a batch of images and returns it as a tensor, without converting it.

    Args:
      images: `[B, H, W, C]` uint8 in [0, 255] or float in [0, 1], `C` in {1, 3}
        and the rank and `C` known statically.

    Returns:
      `images` as a tensor of its own dtype.

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
    if images.dtype != tf.uint8 and not images.dtype.is_floating:
        raise ValueError(
            f"`images` must be uint8 or floating point, received: images with dtype={images.dtype.name}"
        )
    return images


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
    uint8 images are resampled as they are (one pass, no float32 copy of the
    input) and scaled to [0, 1] afterwards.

    Args:
      images, seed: as the module docstring says.
      size: output `(height, width)`, or one int for a square output.
      scale: `(lo, hi)`, 0 < lo <= hi <= 1, the range of the crop's area as a
        fraction of the image's area.
      ratio: `(lo, hi)`, 0 < lo <= hi, the range of the crop's aspect ratio.

    Returns:
      `[B, size[0], size[1], C]` float32 in [0, 1].
    """
    size = as_size(size, "size")
    scale = check_range(scale, "scale", low=0.0, high=1.0)
    ratio = check_range(ratio, "ratio", low=0.0, high=float("inf"))
    seed = check_seed(seed)
    images = check_images(images)
    return crop_to_size(images, crop_boxes(tf.shape(images), seed, scale=scale, ratio=ratio), size)


def crop_boxes(shape, seed, *, scale, ratio, flip=None):
    """The boxes of `random_resized_crop` for images of `shape`, as `crop_and_resize` takes them.

    Args:
      shape: the images' shape `[B, H, W, C]` (a tensor).
      seed: the crop's seed (`[2]` int64, checked).
      scale, ratio: checked `(lo, hi)` pairs, as `random_resized_crop` takes them.
      flip: optional `[B]` bool: the samples to mirror. A mirrored sample's box
        runs from right to left, so `crop_and_resize` samples it mirrored, in
        the same pass (equal to cropping, then flipping, up to float rounding
        of the sampling positions).

    Returns:
      `[B, 4]` float32 boxes `(y1, x1, y2, x2)` in normalised coordinates.
    """
    num_tries = 10
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
    if flip is not None:
        x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
    return tf.stack([y1, x1, y2, x2], axis=1)


def crop_to_size(images, boxes, size):
    """Resamples each image's box (`crop_boxes`) bilinearly to `size`: float32 in [0, 1].

    uint8 images are resampled as they are (`crop_and_resize` reads them
    directly) and scaled by 1 / 255 afterwards, which saves a float32 copy of
    the whole input.
    """
    crops = tf.image.crop_and_resize(
        images,
        boxes,
        box_indices=tf.range(tf.shape(images)[0]),
        crop_size=size,
        method="bilinear",
    )
    if images.dtype == tf.uint8:
        crops = crops * (1.0 / 255.0)
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


def _rotate_hue(images, delta):
    """Rotates the HSV hue of `[..., 3]` float32 RGB in [0, 1] by `delta` (turns, broadcastable).

    The HSV round trip in closed form: a pixel keeps its value (max) and
    chroma (max - min), and hsv -> rgb is `max - chroma * clip(min(k, 4 - k),
    0, 1)` with `k = (n + 6 h) mod 6`, n = 5, 3, 1 for R, G, B. Equal to
    `tf.image.rgb_to_hsv`, a shift and `tf.image.hsv_to_rgb` up to float
    rounding (measured: benchmarks/RESULTS.md), without the saturation's
    division and with `floor` instead of `floormod` (which XLA on CPU does
    not vectorise).
    """
    red, green, blue = tf.unstack(images, axis=-1)
    high = tf.maximum(tf.maximum(red, green), blue)
    chroma = high - tf.minimum(tf.minimum(red, green), blue)
    inverse = 1.0 / tf.where(chroma > 0.0, chroma, 1.0)
    sextant = tf.where(
        high == red,
        (green - blue) * inverse,
        tf.where(high == green, 2.0 + (blue - red) * inverse, 4.0 + (red - green) * inverse),
    ) + 6.0 * delta

    def channel(offset):
        k = offset + sextant
        k = k - 6.0 * tf.floor(k * (1.0 / 6.0))
        return high - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)

    return tf.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def _jitter_one(image, order, factors, hue_delta, use_hue):
    """One sample's colour jitter: the four ops in `order`, each followed by clipping to [0, 1]."""
    out = image

    def brightness():
        return tf.clip_by_value(out * factors[0], 0.0, 1.0)

    def contrast():
        mean = tf.reduce_mean(luma(out[tf.newaxis]))
        return tf.clip_by_value(factors[1] * out + (1.0 - factors[1]) * mean, 0.0, 1.0)

    def saturation():
        return tf.clip_by_value(factors[2] * out + (1.0 - factors[2]) * luma(out[tf.newaxis])[0], 0.0, 1.0)

    def hue():
        return tf.clip_by_value(_rotate_hue(out, hue_delta), 0.0, 1.0) if use_hue else out

    for stage in range(_NUM_JITTER_OPS):
        out = tf.switch_case(order[stage], [brightness, contrast, saturation, hue])
    return out


@tf.function(jit_compile=True)
def color_transform(images, jitter, grayscale, *, use_hue):
    """The colour part of a policy, one sample at a time, in one XLA computation.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1].
      jitter: None, or `(apply [B] bool, order [B, 4] int32, factors [B, 3]
        float32, hue_delta [B] float32)`, the draws of `color_jitter`.
      grayscale: None, or `[B]` bool, the samples that `random_grayscale`
        converts (after the jitter).
      use_hue: whether the hue op rotates (RGB and hue > 0).

    Returns:
      `[B, H, W, C]` float32 in [0, 1].

    A loop over the samples with the op of each stage chosen per sample
    (`switch_case`) keeps one image in cache through all four stages and
    computes only the op it needs: the batched form, which computes every op
    for every sample and selects, moves the whole batch through memory about
    30 times and is 4-12x slower on one CPU core (benchmarks/RESULTS.md).
    """
    gray = grayscale if grayscale is not None else tf.zeros(tf.shape(images)[:1], tf.bool)

    def one(arguments):
        image, convert = arguments[0], arguments[1]
        out = image
        if jitter is not None:
            apply, order, factors, hue_delta = arguments[2:]
            jittered = _jitter_one(image, order, factors, hue_delta, use_hue)
            out = tf.where(apply, jittered, image)
        if grayscale is not None:
            out = tf.where(convert, tf.broadcast_to(luma(out[tf.newaxis])[0], tf.shape(out)), out)
        return out

    arguments = (images, gray) + (tuple(jitter) if jitter is not None else ())
    return tf.map_fn(one, arguments, fn_output_signature=tf.float32)


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
    permutation), each followed by clipping to [0, 1]. The draws are batched
    (`jitter_draws`); the ops run one sample at a time in one XLA computation
    (`color_transform`), each sample computing only its own op at each stage.
    Saturation and hue are no-ops for 1-channel images.

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
    draws = jitter_draws(
        tf.shape(images)[0], seed, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=p,
        rgb=images.shape[-1] == 3,
    )
    return color_transform(images, draws, None, use_hue=images.shape[-1] == 3 and hue > 0.0)


def jitter_draws(batch, seed, *, brightness, contrast, saturation, hue, p, rgb):
    """The per-sample random draws of `color_jitter` (checked arguments; `rgb`: 3 channels).

    Returns:
      `(apply [B] bool, order [B, 4] int32, factors [B, 3] float32, hue_delta
      [B] float32)`: whether each sample is jittered, its op of each stage,
      its brightness, contrast and saturation factors (saturation 1 for
      1-channel images) and its hue rotation.
    """
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
    if not rgb:
        factors = tf.concat([factors[:, :2], tf.ones_like(factors[:, 2:])], axis=1)
    hue_delta = tf.random.stateless_uniform([batch], hue_seed, minval=-hue, maxval=hue)
    return apply, order, factors, hue_delta


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
