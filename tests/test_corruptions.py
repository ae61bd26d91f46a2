"""Corruptions: shape/dtype/range, monotone severity (measured distance), determinism, references for the maths."""

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import corruptions as C
from supcon_tf import data

NAMES = C.CORRUPTION_NAMES
SEED = tf.constant([3, 7], tf.int64)


def _digits(size, n=48):
    images, _ = data.load_digits("test")
    x = tf.image.resize(tf.cast(images[:n], tf.float32) / 255.0, (size, size))
    return tf.clip_by_value(x, 0.0, 1.0)


def _smooth_rgb(size=32, n=12):
    rng = np.random.default_rng(0)
    x = tf.image.resize(tf.constant(rng.uniform(size=(n, 8, 8, 3)), tf.float32), (size, size), method="bicubic")
    return tf.clip_by_value(x, 0.0, 1.0)


IMAGE_SETS = {"digits16_gray": lambda: _digits(16), "smooth32_rgb": lambda: _smooth_rgb(32)}


def test_names_and_tables():
    assert NAMES == (
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "gaussian_blur",
        "defocus_blur",
        "contrast",
        "brightness",
        "jpeg_compression",
        "pixelate",
    )
    for table in (
        C.GAUSSIAN_NOISE_SIGMA,
        C.SHOT_NOISE_PHOTONS,
        C.IMPULSE_NOISE_AMOUNT,
        C.GAUSSIAN_BLUR_SIGMA,
        C.DEFOCUS_BLUR_RADIUS_ALIAS,
        C.CONTRAST_FACTOR,
        C.BRIGHTNESS_DELTA,
        C.JPEG_QUALITY,
        C.PIXELATE_FACTOR,
    ):
        assert len(table) == 5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_preserved(name, channels):
    x = tf.random.stateless_uniform([3, 12, 10, channels], [1, 2])
    for severity in (1, 5):
        y = C.corrupt(x, name, severity, SEED)
        assert y.shape == x.shape and y.dtype == tf.float32
        assert float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 1.0
    x8 = tf.cast(tf.round(x * 255), tf.uint8)
    y8 = C.corrupt(x8, name, 3, SEED)
    assert y8.shape == x8.shape and y8.dtype == tf.uint8


@pytest.mark.parametrize("name", NAMES)
def test_dynamic_shapes_in_tf_function(name):
    fn = tf.function(
        lambda x: C.corrupt(x, name, 2, SEED), input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)]
    )
    x = tf.random.stateless_uniform([2, 9, 11, 1], [4, 4])
    assert fn(x).shape == (2, 9, 11, 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("image_set", sorted(IMAGE_SETS))
def test_severity_increases_distortion(name, image_set):
    """Mean |x' - x| over a fixed image set grows strictly with the severity."""
    x = IMAGE_SETS[image_set]()
    distances = [float(tf.reduce_mean(tf.abs(C.corrupt(x, name, s, SEED) - x))) for s in C.SEVERITIES]
    assert all(b > a for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    x = _digits(16, n=8)
    a = C.corrupt(x, name, 4, SEED)
    b = C.corrupt(x, name, 4, tf.constant([3, 7], tf.int32))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = C.corrupt(x, name, 4, tf.constant([3, 8], tf.int64))
    if name in C.RANDOM_CORRUPTIONS:
        assert not np.array_equal(a.numpy(), other.numpy())
    else:
        np.testing.assert_array_equal(a.numpy(), other.numpy())


def test_corrupt_dataset_is_reproducible_and_batch_seeded():
    x = _digits(16, n=20).numpy()
    labels = np.arange(20, dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
    first = [b.numpy() for b, _ in C.corrupt_dataset(dataset, "gaussian_noise", 3, seed=5)]
    second = [b.numpy() for b, _ in C.corrupt_dataset(dataset, "gaussian_noise", 3, seed=5)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    third = [b.numpy() for b, _ in C.corrupt_dataset(dataset, "gaussian_noise", 3, seed=6)]
    assert not np.array_equal(first[0], third[0])
    labels_out = np.concatenate([y.numpy() for _, y in C.corrupt_dataset(dataset, "contrast", 1)])
    np.testing.assert_array_equal(labels_out, labels)


def test_contrast_and_brightness_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(2, 5, 6, 3)).astype(np.float32)
    for severity in C.SEVERITIES:
        factor = C.CONTRAST_FACTOR[severity - 1]
        mean = x.mean(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(
            C.contrast(x, severity).numpy(), np.clip((x - mean) * factor + mean, 0, 1), atol=1e-6
        )
    gray = x[..., :1]
    np.testing.assert_allclose(C.brightness(gray, 5).numpy(), np.clip(gray + 0.3, 0, 1), atol=1e-6)
    # RGB: the HSV value (max channel) rises by delta (clipped); hue and saturation stay.
    out = C.brightness(x, 2).numpy()
    np.testing.assert_allclose(out.max(-1), np.clip(x.max(-1) + 0.1, 0, 1), atol=1e-5)
    hsv_in = tf.image.rgb_to_hsv(x).numpy()
    hsv_out = tf.image.rgb_to_hsv(out).numpy()
    np.testing.assert_allclose(hsv_out[..., 1], hsv_in[..., 1], atol=1e-4)


def test_gaussian_blur_against_looped_numpy():
    """Separable Gaussian with edge ('nearest') padding, written as a slow 2-D loop."""
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(1, 7, 9, 1))
    sigma = C.GAUSSIAN_BLUR_SIGMA[4]
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    expected = np.zeros_like(x)
    for i in range(7):
        for j in range(9):
            total = 0.0
            for di in range(-radius, radius + 1):
                for dj in range(-radius, radius + 1):
                    ii, jj = min(max(i + di, 0), 6), min(max(j + dj, 0), 8)
                    total += taps[di + radius] * taps[dj + radius] * x[0, ii, jj, 0]
            expected[0, i, j, 0] = total
    np.testing.assert_allclose(C.gaussian_blur(x.astype(np.float32), 5).numpy(), expected, atol=1e-5)


def test_defocus_kernel():
    for radius, alias in C.DEFOCUS_BLUR_RADIUS_ALIAS:
        kernel = C.defocus_kernel(radius, alias)
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
        np.testing.assert_allclose(kernel.sum(), 1.0, atol=1e-6)
        np.testing.assert_allclose(kernel, kernel.T, atol=1e-7)  # symmetric
        assert kernel[kernel.shape[0] // 2, kernel.shape[0] // 2] == kernel.max()
    # Radius 1.5 covers the full 3x3 neighbourhood before smoothing; radius 0.3 only the centre.
    assert C.defocus_kernel(0.3, 1e-3)[2, 2] > 0.999
    np.testing.assert_allclose(C.defocus_kernel(1.5, 1e-3)[2:5, 2:5], np.full((3, 3), 1 / 9), atol=1e-6)
    # A constant image is unchanged by every blur (normalised kernels, edge padding).
    constant = tf.fill([1, 8, 8, 3], 0.37)
    for severity in C.SEVERITIES:
        np.testing.assert_allclose(C.defocus_blur(constant, severity).numpy(), 0.37, atol=1e-6)
        np.testing.assert_allclose(C.gaussian_blur(constant, severity).numpy(), 0.37, atol=1e-6)
        np.testing.assert_allclose(C.pixelate(constant, severity).numpy(), 0.37, atol=1e-6)


def test_noise_statistics():
    x = tf.fill([4, 32, 32, 1], 0.5)
    noisy = C.gaussian_noise(x, 5, SEED).numpy()
    assert abs(noisy.std() - 0.10) < 0.01 and abs(noisy.mean() - 0.5) < 0.01
    shot = C.shot_noise(x, 1, SEED).numpy()  # Poisson(250) / 500: mean 0.5, std sqrt(250) / 500
    assert abs(shot.mean() - 0.5) < 0.01 and abs(shot.std() - np.sqrt(250) / 500) < 0.005
    impulse = C.impulse_noise(x, 5, SEED).numpy()  # 7% of the values set to 0 or 1
    changed = impulse != 0.5
    assert abs(changed.mean() - 0.07) < 0.015
    assert set(np.unique(impulse[changed])) <= {0.0, 1.0}


def test_pixelate_sizes_and_jpeg_quality():
    x = _smooth_rgb(32, n=2)
    # 0.65 * 32 = 20.8 -> 20 px: the image is a box-resampled 20x20 image.
    out = C.pixelate(x, 5)
    small = tf.image.resize(x, (20, 20), method="area")
    np.testing.assert_allclose(out.numpy(), tf.image.resize(small, (32, 32), method="area").numpy(), atol=1e-6)
    expected = tf.stack([tf.image.adjust_jpeg_quality(image, 40) for image in x])
    np.testing.assert_allclose(C.jpeg_compression(x, 5).numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: C.corrupt(x, "fog", 1), "name"),
        (lambda x: C.corrupt(x, "contrast", 0), "severity"),
        (lambda x: C.corrupt(x, "contrast", 6), "severity"),
        (lambda x: C.corrupt(x, "contrast", True), "severity"),
        (lambda x: C.gaussian_noise(x, 1, [1, 2, 3]), "seed"),
        (lambda x: C.gaussian_noise(x[0], 1, SEED), "images"),
        (lambda x: C.contrast(tf.zeros([1, 4, 4, 2]), 1), "images"),
        (lambda x: C.contrast(tf.zeros([1, 4, 4, 1], tf.int32), 1), "dtype"),
        (lambda x: C.corrupt_dataset(tf.data.Dataset.range(1), "contrast", 1, seed=-1), "seed"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(tf.zeros([2, 4, 4, 1]))
