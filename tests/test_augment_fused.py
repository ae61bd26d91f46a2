"""The fused augmentation path against float64 NumPy references and against the unfused composition.

`SimCLRAugment` crops uint8 input directly, flips through the crop's box and runs colour jitter and
grayscale one sample at a time in one XLA computation (`ops.color_transform`); these tests pin that
the result is the documented policy: the hue rotation and the jitter against references written from
their formulas (colorsys in float64), and the whole policy against the op-by-op composition.
"""

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import augment
from supcon_tf.augment import ops

LUMA = np.array([0.299, 0.587, 0.114])


def _float_images(batch=6, size=7, channels=3, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, channels)).astype(np.float32)


def _uint8_images(batch=6, size=12, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, channels), dtype=np.uint8)


def _hue_reference(image, delta):
    """float64 colorsys: rgb -> hsv, hue + delta (mod 1), hsv -> rgb, per pixel."""
    out = np.empty(image.shape, np.float64)
    for index in np.ndindex(image.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*image[index].astype(np.float64))
        out[index] = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
    return out


def _jitter_reference(image, order, factors, delta, rgb):
    """One sample's jitter in float64: the ops of `order`, each clipped to [0, 1] (ColorJitter's formulas)."""
    out = image.astype(np.float64)
    for op in order:
        luma = out @ LUMA[:, None] if rgb else out
        if op == 0:
            out = out * factors[0]
        elif op == 1:
            out = factors[1] * out + (1 - factors[1]) * luma.mean()
        elif op == 2:
            out = factors[2] * out + (1 - factors[2]) * luma
        elif rgb:
            out = _hue_reference(out, delta)
        out = np.clip(out, 0.0, 1.0)
    return out


@pytest.mark.parametrize("delta", [-0.5, -0.1, 0.0, 0.07, 0.33, 0.5])
def test_hue_rotation_matches_colorsys(delta):
    images = _float_images(batch=2, size=9)
    images[0, 0, :3] = [[0.2, 0.2, 0.2], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # grey, a primary, black
    out = ops._rotate_hue(tf.constant(images), tf.constant(delta, tf.float32)).numpy()
    expected = np.stack([_hue_reference(image, delta) for image in images])
    np.testing.assert_allclose(out, expected, atol=2e-6)


@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_matches_the_float64_reference_with_its_own_draws(channels):
    images = _float_images(batch=16, size=6, channels=channels)
    seed = tf.constant([4, 2], tf.int64)
    out = augment.color_jitter(images, seed, p=0.7).numpy()
    rgb = channels == 3
    apply, order, factors, delta = (
        t.numpy()
        for t in ops.jitter_draws(16, seed, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.7, rgb=rgb)
    )
    assert 0 < apply.sum() < 16 and len({tuple(o) for o in order}) > 1
    for b in range(16):
        expected = _jitter_reference(images[b], order[b], factors[b], delta[b], rgb) if apply[b] else images[b]
        np.testing.assert_allclose(out[b], expected, atol=2e-6, err_msg=f"sample {b}")


def test_uint8_crop_equals_the_float_crop():
    images = _uint8_images()
    seed = tf.constant([1, 9], tf.int64)
    from_uint8 = augment.random_resized_crop(images, seed, size=8).numpy()
    from_float = augment.random_resized_crop(images.astype(np.float32) / 255.0, seed, size=8).numpy()
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)


def test_a_box_read_right_to_left_is_the_mirrored_crop():
    images = _float_images(batch=8, size=10)
    seed = tf.constant([3, 3], tf.int64)
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    boxes = ops.crop_boxes(tf.shape(images), seed, scale=scale, ratio=ratio)
    flip = tf.constant([True, False] * 4)
    mirrored = ops.crop_to_size(images, ops.crop_boxes(tf.shape(images), seed, scale=scale, ratio=ratio, flip=flip), (6, 6))
    plain = ops.crop_to_size(images, boxes, (6, 6)).numpy()
    expected = np.where(flip.numpy()[:, None, None, None], plain[:, :, ::-1], plain)
    np.testing.assert_allclose(mirrored.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("channels", [3, 1])
def test_simclr_policy_equals_its_ops_one_after_another(channels):
    """The fused policy against crop -> flip -> jitter -> grayscale, each op on its own, same sub-seeds."""
    images = _uint8_images(batch=16, size=12, channels=channels)
    seed = tf.constant([5, 8], tf.int64)
    policy = augment.SimCLRAugment(8)
    crop_seed, flip_seed, jitter_seed, gray_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    expected = augment.random_resized_crop(images, crop_seed, size=8)
    expected = augment.random_flip_left_right(expected, flip_seed)
    expected = augment.color_jitter(expected, jitter_seed)
    expected = augment.random_grayscale(expected, gray_seed)
    np.testing.assert_allclose(policy(images, seed).numpy(), expected.numpy(), atol=1e-5)


def test_color_transform_without_jitter_is_grayscale_only():
    images = _float_images(batch=4, size=5)
    gray = tf.constant([True, False, True, False])
    out = ops.color_transform(tf.constant(images), None, gray, use_hue=False).numpy()
    expected = np.where(gray.numpy()[:, None, None, None], np.repeat(images @ LUMA[:, None], 3, axis=-1), images)
    np.testing.assert_allclose(out, expected, atol=1e-6)
