"""Common image corruptions in the style of CIFAR-10-C / ImageNet-C, as batched TensorFlow ops with 5 severities.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019 (arXiv 1903.12261), define 15
corruptions x 5 severities; their CIFAR-10-C generator gives one parameter
per corruption and severity for 32x32 images. The tables below restate those
CIFAR-10-C parameters (in pixels / intensity units of [0, 1] images) for the
nine corruptions implemented here; the implementations are our own TF ops:

    corruption         parameter per severity 1..5            operation
    gaussian_noise     sigma 0.04 0.06 0.08 0.09 0.10         x + N(0, sigma^2)
    shot_noise         photons 500 250 100 75 50             Poisson(x * photons) / photons
    impulse_noise      amount 0.01 0.02 0.03 0.05 0.07       that fraction of values set to 0 or 1 (p 1/2 each)
    gaussian_blur      sigma 0.4 0.6 0.7 0.8 1.0 px          Gaussian filter, truncated at 4 sigma, edge padding
    defocus_blur       (radius, alias sigma) (0.3, 0.4)       disk of `radius` px smoothed by a 3x3 Gaussian
                       (0.4, 0.5) (0.5, 0.6) (1, 0.2) (1.5, 0.1)   of `alias sigma`, edge padding
    contrast           factor 0.75 0.5 0.4 0.3 0.15          (x - mean) * factor + mean (per image and channel)
    brightness         delta 0.05 0.1 0.15 0.2 0.3           HSV value channel + delta (grayscale: x + delta)
    jpeg_compression   quality 80 65 58 50 40                JPEG encode/decode (`tf.image.adjust_jpeg_quality`)
    pixelate           factor 0.95 0.9 0.85 0.75 0.65        box (area) resample to int(factor * size), box back up

Spatial parameters are in pixels, as in CIFAR-10-C, and are not rescaled to
the image size: on images smaller than 32x32 the blurs and pixelation are
relatively stronger. Every output is clipped to [0, 1].

Conventions (as in `supcon_tf.augment`): images are `[B, H, W, C]`, C in
{1, 3}, float in [0, 1] (uint8 in [0, 255] is accepted and returned as
uint8); rank and C must be static, B/H/W may be dynamic. Random corruptions
take `seed`, an int32/int64 tensor of shape `[2]` (stateless RNG: the same
seed and input give the same output); the deterministic ones accept and
ignore it, so every corruption has the signature `(images, severity, seed)`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

SEVERITIES = (1, 2, 3, 4, 5)

# Parameter tables: CIFAR-10-C values of Hendrycks & Dietterich (2019), severity 1..5.
GAUSSIAN_NOISE_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_NOISE_PHOTONS = (500.0, 250.0, 100.0, 75.0, 50.0)
IMPULSE_NOISE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
GAUSSIAN_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
DEFOCUS_BLUR_RADIUS_ALIAS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))
CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS_DELTA = (0.05, 0.1, 0.15, 0.2, 0.3)
JPEG_QUALITY = (80, 65, 58, 50, 40)
PIXELATE_FACTOR = (0.95, 0.9, 0.85, 0.75, 0.65)

# Salt for seeding corrupted evaluation datasets (see `corrupt_dataset`).
_DATASET_SEED_SALT = 0xC0FFEE


# ---------------------------------------------------------------------------
# Validation and conversion (private).
# ---------------------------------------------------------------------------


def _check_severity(severity):
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"`severity` must be an int in 1..5, received: severity={severity!r}")
    return int(severity) - 1  # index into the tables


def _check_seed(seed):
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(
            f"`seed` must be an int32/int64 tensor of shape [2], received: seed with dtype {seed.dtype.name} "
            f"and shape {seed.shape}"
        )
    return tf.cast(seed, tf.int64)


def _to_float(images):
    """`(float32 images [B, H, W, C] in [0, 1], input dtype)`; checks rank and channels."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"`images` must be [batch, height, width, channels] with channels 1 or 3, received: images with shape "
            f"{images.shape}"
        )
    dtype = images.dtype
    if dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0, dtype
    if not dtype.is_floating:
        raise ValueError(f"`images` must be float in [0, 1] or uint8, received: images with dtype {dtype.name}")
    return tf.cast(images, tf.float32), dtype


def _from_float(images, dtype):
    images = tf.clip_by_value(images, 0.0, 1.0)
    if dtype == tf.uint8:
        return tf.cast(tf.round(images * 255.0), tf.uint8)
    return tf.cast(images, dtype)


def _edge_pad(images, pad_h, pad_w):
    """Pads H by `pad_h` and W by `pad_w` on both sides, repeating the edge pixels (any image size)."""
    shape = tf.shape(images)
    rows = tf.clip_by_value(tf.range(-pad_h, shape[1] + pad_h), 0, shape[1] - 1)
    cols = tf.clip_by_value(tf.range(-pad_w, shape[2] + pad_w), 0, shape[2] - 1)
    return tf.gather(tf.gather(images, rows, axis=1), cols, axis=2)


def _filter2d(images, kernel):
    """Correlates every channel with the 2-D `kernel` [kh, kw] (odd sizes), edge padding, same output size."""
    kernel = np.asarray(kernel, np.float32)
    kh, kw = kernel.shape
    channels = images.shape[-1]
    padded = _edge_pad(images, kh // 2, kw // 2)
    filters = tf.constant(np.tile(kernel[:, :, None, None], (1, 1, channels, 1)))
    return tf.nn.depthwise_conv2d(padded, filters, strides=(1, 1, 1, 1), padding="VALID")


# ---------------------------------------------------------------------------
# Kernels (NumPy, built once per call from the parameter tables).
# ---------------------------------------------------------------------------


def gaussian_kernel_1d(sigma, truncate=4.0):
    """Normalised 1-D Gaussian taps at integer offsets -r..r, r = int(truncate * sigma + 0.5) (scipy's rule)."""
    radius = max(1, int(truncate * sigma + 0.5))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def defocus_kernel(radius, alias_sigma):
    """Disk of `radius` px (pixel centres with x^2 + y^2 <= radius^2), normalised, then smoothed by a 3x3 Gaussian.

    Returns a normalised `[k, k]` float32 kernel, k = 2 * (ceil(radius) + 1) + 1
    (the 3x3 smoothing widens the disk by one pixel on each side).
    """
    half = int(math.ceil(radius)) + 1
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    x, y = np.meshgrid(offsets, offsets)
    disk = (x**2 + y**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-0.5 * (np.arange(-1, 2) / alias_sigma) ** 2)
    taps /= taps.sum()
    smooth = np.outer(taps, taps)
    padded = np.pad(disk, 1)
    kernel = np.zeros_like(disk)
    for dy in range(3):
        for dx in range(3):
            kernel += smooth[dy, dx] * padded[dy : dy + disk.shape[0], dx : dx + disk.shape[1]]
    return (kernel / kernel.sum()).astype(np.float32)


# ---------------------------------------------------------------------------
# The corruptions: (images [B, H, W, C], severity 1..5, seed [2]) -> images.
# ---------------------------------------------------------------------------


def gaussian_noise(images, severity, seed):
    """Additive Gaussian noise, sigma from `GAUSSIAN_NOISE_SIGMA`, then clipping."""
    sigma = GAUSSIAN_NOISE_SIGMA[_check_severity(severity)]
    x, dtype = _to_float(images)
    noise = tf.random.stateless_normal(tf.shape(x), _check_seed(seed), stddev=sigma)
    return _from_float(x + noise, dtype)


def shot_noise(images, severity, seed):
    """Poisson (photon) noise: Poisson(x * photons) / photons, photons from `SHOT_NOISE_PHOTONS`."""
    photons = SHOT_NOISE_PHOTONS[_check_severity(severity)]
    x, dtype = _to_float(images)
    counts = tf.random.stateless_poisson(tf.shape(x), _check_seed(seed), lam=x * photons, dtype=tf.float32)
    return _from_float(counts / photons, dtype)


def impulse_noise(images, severity, seed):
    """Salt-and-pepper noise: each value independently replaced with probability `amount`, by 0 or 1 equally often."""
    amount = IMPULSE_NOISE_AMOUNT[_check_severity(severity)]
    x, dtype = _to_float(images)
    hit_seed, salt_seed = tf.unstack(tf.random.experimental.stateless_split(_check_seed(seed), 2))
    hit = tf.random.stateless_uniform(tf.shape(x), hit_seed) < amount
    salt = tf.cast(tf.random.stateless_uniform(tf.shape(x), salt_seed) < 0.5, tf.float32)
    return _from_float(tf.where(hit, salt, x), dtype)


def gaussian_blur(images, severity, seed=None):
    """Gaussian blur with sigma from `GAUSSIAN_BLUR_SIGMA` (px), separable, edge padding. `seed` is ignored."""
    del seed
    sigma = GAUSSIAN_BLUR_SIGMA[_check_severity(severity)]
    x, dtype = _to_float(images)
    taps = gaussian_kernel_1d(sigma)
    x = _filter2d(x, taps[:, None])
    x = _filter2d(x, taps[None, :])
    return _from_float(x, dtype)


def defocus_blur(images, severity, seed=None):
    """Defocus: convolution with an anti-aliased disk (`DEFOCUS_BLUR_RADIUS_ALIAS`), edge padding. `seed` is ignored."""
    del seed
    radius, alias_sigma = DEFOCUS_BLUR_RADIUS_ALIAS[_check_severity(severity)]
    x, dtype = _to_float(images)
    return _from_float(_filter2d(x, defocus_kernel(radius, alias_sigma)), dtype)


def contrast(images, severity, seed=None):
    """Contrast reduction towards each image's per-channel mean by `CONTRAST_FACTOR`. `seed` is ignored."""
    del seed
    factor = CONTRAST_FACTOR[_check_severity(severity)]
    x, dtype = _to_float(images)
    means = tf.reduce_mean(x, axis=(1, 2), keepdims=True)
    return _from_float((x - means) * factor + means, dtype)


def brightness(images, severity, seed=None):
    """Adds `BRIGHTNESS_DELTA` to the HSV value channel (clipped); for grayscale the value is the pixel. `seed` is ignored."""
    del seed
    delta = BRIGHTNESS_DELTA[_check_severity(severity)]
    x, dtype = _to_float(images)
    if x.shape[-1] == 1:
        return _from_float(x + delta, dtype)
    hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(x), axis=-1)
    value = tf.clip_by_value(value + delta, 0.0, 1.0)
    return _from_float(tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1)), dtype)


def jpeg_compression(images, severity, seed=None):
    """JPEG encode/decode at `JPEG_QUALITY`, one image at a time (values quantised to 8 bits). `seed` is ignored."""
    del seed
    quality = JPEG_QUALITY[_check_severity(severity)]
    x, dtype = _to_float(images)
    out = tf.map_fn(
        lambda image: tf.image.adjust_jpeg_quality(image, quality),
        x,
        fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32),
    )
    return _from_float(out, dtype)


def pixelate(images, severity, seed=None):
    """Box-resamples to `int(size * PIXELATE_FACTOR)` px and back (as PIL's BOX filter in CIFAR-10-C). `seed` is ignored.

    TF's "area" method is the box filter in both directions; a nearest-neighbour
    way back would alias, and its distance to the clean image would then not
    grow monotonically with the severity.
    """
    del seed
    factor = PIXELATE_FACTOR[_check_severity(severity)]
    x, dtype = _to_float(images)
    shape = tf.shape(x)
    small = tf.maximum(tf.cast(tf.cast(shape[1:3], tf.float32) * factor, tf.int32), 1)
    x = tf.image.resize(x, small, method="area")
    x = tf.image.resize(x, shape[1:3], method="area")
    return _from_float(x, dtype)


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "contrast": contrast,
    "brightness": brightness,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
}
CORRUPTION_NAMES = tuple(CORRUPTIONS)
RANDOM_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise")


def corrupt(images, name, severity, seed=(0, 0)):
    """Applies the corruption `name` (one of `CORRUPTION_NAMES`) at `severity` 1..5.

    Args:
      images: `[B, H, W, C]` float in [0, 1] (or uint8), C in {1, 3}.
      name: corruption name.
      severity: int in 1..5.
      seed: int tensor `[2]` (used by the noise corruptions only).

    Returns:
      Images of the same shape and dtype, in [0, 1] (uint8: [0, 255]).
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"`name` must be one of {', '.join(CORRUPTION_NAMES)}; received: name={name!r}")
    return CORRUPTIONS[name](images, severity, seed)


def corrupt_dataset(dataset, name, severity, seed=0):
    """Corrupts every batch of an evaluation dataset of `(images [B, H, W, C], labels)`.

    Batch `i` gets the stateless seed `fold_in([seed, salt], i)`, so the same
    dataset (same batching) and `seed` give the same corrupted images every
    time: compare models on one `corrupt_dataset(...)` setting and they see
    identical inputs.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise ValueError(f"`seed` must be an int in [0, 2**31), received: seed={seed!r}")
    if name not in CORRUPTIONS:
        raise ValueError(f"`name` must be one of {', '.join(CORRUPTION_NAMES)}; received: name={name!r}")
    _check_severity(severity)
    base = tf.constant([int(seed), _DATASET_SEED_SALT], tf.int64)

    def apply(index, batch):
        images, labels = batch
        return corrupt(images, name, severity, tf.random.experimental.stateless_fold_in(base, index)), labels

    return dataset.enumerate().map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
