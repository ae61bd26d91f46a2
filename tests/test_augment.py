"""Tests for supcon_tf.augment: shapes, ranges, seeding, per-sample randomness, validation."""

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import augment

SEED = tf.constant([3, 7], tf.int32)
OTHER_SEED = tf.constant([4, 7], tf.int32)


def _images(batch=6, height=12, width=10, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(size=(batch, height, width, channels)), tf.float32)


def _same_image_batch(batch=8, channels=3):
    """A batch of one image repeated, so that any difference between samples is randomness."""
    image = _images(batch=1, channels=channels)
    return tf.repeat(image, batch, axis=0)


def _ops(size=(8, 6)):
    """(name, op) pairs for every random op and policy, each `(images, seed) -> images`."""
    return [
        ("crop", lambda x, s: augment.random_resized_crop(x, s, size=size)),
        ("flip", lambda x, s: augment.random_flip_left_right(x, s)),
        ("jitter", lambda x, s: augment.color_jitter(x, s)),
        ("grayscale", lambda x, s: augment.random_grayscale(x, s, p=0.5)),
        ("simclr", augment.SimCLRAugment(size)),
    ]


def _assert_valid_images(out, shape):
    assert out.dtype == tf.float32
    assert tuple(out.shape) == shape
    values = out.numpy()
    assert np.all(np.isfinite(values))
    assert values.min() >= 0.0 and values.max() <= 1.0


@pytest.mark.parametrize("channels", [1, 3])
def test_ops_shapes_dtype_and_range(channels):
    images = _images(channels=channels)
    for name, op in _ops(size=(8, 6)):
        out = op(images, SEED)
        expected_hw = (8, 6) if name in ("crop", "simclr") else (12, 10)
        _assert_valid_images(out, (6, *expected_hw, channels))


def test_uint8_input_is_converted_to_unit_range():
    images = tf.cast(_images() * 255.0, tf.uint8)
    out = augment.SimCLRAugment(8)(images, SEED)
    _assert_valid_images(out, (6, 8, 8, 3))
    # NoAugment at the same size is exactly x / 255.
    same = augment.NoAugment((12, 10))(images, SEED)
    np.testing.assert_allclose(same.numpy(), images.numpy() / 255.0, atol=1e-6)


def test_same_seed_same_output_different_seed_different_output():
    images = _images()
    for name, op in _ops():
        first = op(images, SEED).numpy()
        again = op(images, tf.constant([3, 7], tf.int64)).numpy()
        other = op(images, OTHER_SEED).numpy()
        np.testing.assert_array_equal(first, again, err_msg=name)
        assert not np.array_equal(first, other), name


def test_crops_differ_between_identical_samples():
    images = _same_image_batch(batch=8)
    out = augment.random_resized_crop(images, SEED, size=(6, 6)).numpy()
    distinct = {out[i].tobytes() for i in range(len(out))}
    assert len(distinct) == len(out)


def test_jitter_factors_differ_between_identical_samples():
    images = _same_image_batch(batch=8)
    out = augment.color_jitter(images, SEED, p=1.0).numpy()
    distinct = {out[i].tobytes() for i in range(len(out))}
    assert len(distinct) == len(out)


def test_crop_full_scale_and_unit_ratio_of_square_image_is_identity():
    # scale=(1, 1) and ratio=(1, 1) on a square image: the box is the whole image.
    images = _images(height=9, width=9)
    out = augment.random_resized_crop(images, SEED, size=9, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(out.numpy(), images.numpy(), atol=1e-5)


def test_crop_fallback_is_central_when_no_box_fits():
    # A 4x16 image cannot hold a box of area >= 0.9 with ratio 1: the fallback
    # is the central 4x4 square (torchvision's rule), the same for every sample.
    images = _images(batch=3, height=4, width=16, channels=1)
    out = augment.random_resized_crop(images, SEED, size=4, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(out.numpy(), images.numpy()[:, :, 6:10, :], atol=1e-5)


def test_flip_mirrors_exactly_and_probabilities_are_honoured():
    images = _images(batch=32)
    out = augment.random_flip_left_right(images, SEED, p=0.5).numpy()
    flipped = images.numpy()[:, :, ::-1, :]
    is_flipped = np.all(out == flipped, axis=(1, 2, 3))
    is_same = np.all(out == images.numpy(), axis=(1, 2, 3))
    assert np.all(is_flipped ^ is_same)
    assert 0 < is_flipped.sum() < 32
    np.testing.assert_array_equal(augment.random_flip_left_right(images, SEED, p=0.0), images)
    np.testing.assert_array_equal(augment.random_flip_left_right(images, SEED, p=1.0), flipped)


def test_grayscale_gives_equal_channels_where_applied():
    images = _images(batch=32)
    out = augment.random_grayscale(images, SEED, p=0.5).numpy()
    equal_channels = np.all(
        np.isclose(out[..., 0], out[..., 1]) & np.isclose(out[..., 1], out[..., 2]), axis=(1, 2)
    )
    unchanged = np.all(out == images.numpy(), axis=(1, 2, 3))
    assert np.all(equal_channels ^ unchanged)
    assert 0 < equal_channels.sum() < 32
    luma = images.numpy() @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out[equal_channels, ..., 0], luma[equal_channels], atol=1e-6)
    all_gray = augment.random_grayscale(images, SEED, p=1.0).numpy()
    assert all_gray.shape == images.shape
    np.testing.assert_allclose(all_gray[..., 0], all_gray[..., 2], atol=1e-6)


def test_grayscale_and_saturation_hue_are_noops_for_one_channel():
    images = _images(channels=1)
    np.testing.assert_array_equal(augment.random_grayscale(images, SEED, p=1.0), images)
    out = _jitter_only(images, saturation=0.9, hue=0.5)
    np.testing.assert_allclose(out.numpy(), images.numpy(), atol=1e-6)


def _jitter_only(images, **strengths):
    """Colour jitter with p=1 and only the given strengths non-zero."""
    kwargs = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0)
    kwargs.update(strengths)
    return augment.color_jitter(images, SEED, **kwargs)


def _mid_range_images(batch=6):
    # Values in [0.4, 0.6] so that no jitter of strength <= 0.4 needs clipping.
    return 0.4 + 0.2 * _images(batch=batch)


def test_brightness_scales_each_sample_by_its_own_factor():
    images = _mid_range_images()
    out = _jitter_only(images, brightness=0.4)
    factors = out.numpy() / images.numpy()
    per_sample = factors.reshape(len(factors), -1)
    first = np.broadcast_to(per_sample[:, :1], per_sample.shape)
    np.testing.assert_allclose(per_sample, first, rtol=1e-5)
    assert np.all((per_sample >= 0.6 - 1e-6) & (per_sample <= 1.4 + 1e-6))
    assert len(np.unique(per_sample[:, 0].round(5))) == len(per_sample)


def test_contrast_keeps_mean_luma_and_saturation_keeps_luma():
    images = _mid_range_images()
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    luma = images.numpy() @ weights
    contrast = _jitter_only(images, contrast=0.4)
    mean_luma = (contrast.numpy() @ weights).mean(axis=(1, 2))
    np.testing.assert_allclose(mean_luma, luma.mean(axis=(1, 2)), atol=1e-5)
    assert not np.allclose(contrast, images, atol=1e-3)
    saturation = _jitter_only(images, saturation=0.4)
    np.testing.assert_allclose(saturation.numpy() @ weights, luma, atol=1e-5)
    assert not np.allclose(saturation, images, atol=1e-3)


def test_hue_keeps_hsv_value_and_saturation():
    images = _images()
    out = _jitter_only(images, hue=0.3)
    hsv_in = tf.image.rgb_to_hsv(images).numpy()
    hsv_out = tf.image.rgb_to_hsv(out).numpy()
    np.testing.assert_allclose(hsv_out[..., 1:], hsv_in[..., 1:], atol=1e-4)
    assert not np.allclose(hsv_out[..., 0], hsv_in[..., 0], atol=1e-3)


def test_jitter_probability_zero_is_identity_and_partial_probability_mixes():
    images = _images(batch=32)
    np.testing.assert_array_equal(augment.color_jitter(images, SEED, p=0.0), images)
    out = augment.color_jitter(images, SEED, p=0.5).numpy()
    unchanged = np.all(out == images.numpy(), axis=(1, 2, 3))
    assert 0 < unchanged.sum() < 32


def test_policies_work_in_tf_data_and_tf_function():
    policy = augment.SimCLRAugment((8, 8))
    images = tf.cast(_images(batch=5) * 255.0, tf.uint8)
    # Batches of unknown size [None, 12, 10, 3], one seed per batch from its int64 index.
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2).enumerate()
    dataset = dataset.map(lambda i, x: policy(x, tf.random.experimental.stateless_fold_in(SEED, i)))
    batches = list(dataset)
    assert [tuple(b.shape) for b in batches] == [(2, 8, 8, 3), (2, 8, 8, 3), (1, 8, 8, 3)]
    first_seed = tf.random.experimental.stateless_fold_in(SEED, tf.constant(0, tf.int64))
    expected = policy(images[:2], first_seed)
    np.testing.assert_allclose(batches[0].numpy(), expected.numpy(), atol=1e-6)

    traced = tf.function(
        lambda x, s: augment.NoAugment(4)(x, s),
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32),
            tf.TensorSpec([2], tf.int32),
        ],
    )
    assert tuple(traced(_images(batch=3), SEED).shape) == (3, 4, 4, 3)


def test_no_augment_resizes_deterministically():
    images = _images()
    policy = augment.NoAugment((6, 5))
    out = policy(images)
    _assert_valid_images(out, (6, 6, 5, 3))
    np.testing.assert_array_equal(out, policy(images, OTHER_SEED))


def test_get_augmentation_builds_registered_policies():
    simclr = augment.get_augmentation("simclr", 16, crop_scale=(0.5, 1.0), flip=False)
    assert isinstance(simclr, augment.SimCLRAugment)
    assert simclr.image_size == (16, 16) and simclr.crop_scale == (0.5, 1.0)
    assert simclr.flip is False
    assert isinstance(augment.get_augmentation("none", (4, 5)), augment.NoAugment)
    assert set(augment.AUGMENTATIONS) >= {"simclr", "none"}


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: augment.get_augmentation("trivialaugment", 8), "name"),
        (lambda: augment.get_augmentation("none", 8, hue=0.1), "hue"),
        (lambda: augment.SimCLRAugment(0), "image_size"),
        (lambda: augment.SimCLRAugment((8, 8, 3)), "image_size"),
        (lambda: augment.SimCLRAugment(8, crop_scale=(0.0, 1.0)), "crop_scale"),
        (lambda: augment.SimCLRAugment(8, crop_scale=(0.8, 0.2)), "crop_scale"),
        (lambda: augment.SimCLRAugment(8, jitter_prob=1.5), "jitter_prob"),
        (lambda: augment.SimCLRAugment(8, grayscale_prob=-0.1), "grayscale_prob"),
        (lambda: augment.SimCLRAugment(8, flip="yes"), "flip"),
        (lambda: augment.SimCLRAugment(8, hue=0.7), "hue"),
        (lambda: augment.NoAugment(-3), "image_size"),
        (lambda: augment.random_resized_crop(_images(), SEED, size=(0, 4)), "size"),
        (lambda: augment.random_resized_crop(_images(), SEED, size=4, ratio=(2.0, 1.0)), "ratio"),
        (lambda: augment.random_resized_crop(_images(), SEED, size=4, scale=(0.5, 1.5)), "scale"),
        (lambda: augment.random_flip_left_right(_images(), SEED, p=2.0), "p"),
        (lambda: augment.random_grayscale(_images(), SEED, p=-1.0), "p"),
        (lambda: augment.color_jitter(_images(), SEED, brightness=-0.1), "brightness"),
        (lambda: augment.color_jitter(_images(), SEED, contrast=-0.1), "contrast"),
        (lambda: augment.color_jitter(_images(), SEED, saturation=-1), "saturation"),
        (lambda: augment.random_flip_left_right(_images(), tf.constant([1, 2, 3])), "seed"),
        (lambda: augment.random_flip_left_right(_images(), tf.constant([1.0, 2.0])), "seed"),
        (lambda: augment.random_flip_left_right(_images(), 5), "seed"),
        (lambda: augment.random_flip_left_right(_images()[0], SEED), "images"),
        (lambda: augment.random_flip_left_right(_images(channels=2), SEED), "images"),
        (lambda: augment.random_flip_left_right(tf.zeros([1, 4, 4, 3], tf.int32), SEED), "images"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()
