"""Tests for the AutoAugment, RandAugment and Stacked RandAugment policies and AutoAugment's ops.

Each AutoAugment op is checked against a NumPy reference written from the op's
definition (PIL's, which the paper uses) on small known images; the policies
are checked for shape/dtype/range, channel counts, `tf.data`, per-sample
randomness and seeding.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import augment

SEED = tf.constant([3, 7], tf.int32)
OTHER_SEED = tf.constant([4, 7], tf.int32)
POLICY_NAMES = ["simclr", "autoaugment", "randaugment", "stacked_randaugment", "none"]
RANDOM_POLICY_NAMES = [name for name in POLICY_NAMES if name != "none"]
OUT_SIZE = 16
FILL = 128.0 / 255.0


def _uint8_images(batch=4, size=32, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, size, size, channels), dtype=np.uint8)


def _unit_images(batch=4, size=32, channels=3, seed=0):
    """Float32 images on exact 0..255 levels (as uint8 data gives), so quantising ops are exact."""
    return _uint8_images(batch, size, channels, seed).astype(np.float32) / 255.0


def _same_image_batch(batch=8, channels=3):
    return tf.repeat(tf.constant(_unit_images(batch=1, channels=channels)), batch, axis=0)


def _num_distinct(images):
    values = np.asarray(images)
    return len({values[i].tobytes() for i in range(len(values))})


def _op(images, name, magnitude, sign=1.0):
    return augment.autoaugment_op(tf.constant(images), name, magnitude, sign=sign).numpy()


def _assert_valid(out, shape):
    assert out.dtype == tf.float32
    assert tuple(out.shape) == shape
    values = out.numpy()
    assert np.all(np.isfinite(values)) and values.min() >= 0.0 and values.max() <= 1.0


# ---------------------------------------------------------------------------
# Every policy.
# ---------------------------------------------------------------------------


def test_registry_holds_the_policies_and_the_error_lists_the_names():
    assert set(augment.AUGMENTATIONS) == set(POLICY_NAMES)
    assert isinstance(augment.get_augmentation("autoaugment", 8), augment.AutoAugmentPolicy)
    assert isinstance(augment.get_augmentation("randaugment", 8), augment.RandAugmentPolicy)
    stacked = augment.get_augmentation("stacked_randaugment", 8, num_ops=1, hue=0.2)
    assert isinstance(stacked, augment.StackedRandAugmentPolicy)
    assert stacked.rand_augment.num_ops == 1 and stacked.simclr.hue == 0.2
    with pytest.raises(ValueError, match="`name`") as error:
        augment.get_augmentation("trivialaugment", 8)
    for name in POLICY_NAMES:
        assert repr(name) in str(error.value)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_runs_in_tf_data_on_batches_and_matches_the_eager_call(name):
    policy = augment.get_augmentation(name, OUT_SIZE)
    images = _uint8_images(batch=5)
    # Batches of unknown size [None, 32, 32, 3], one seed per batch from its int64 index.
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2).enumerate()
    dataset = dataset.map(lambda i, x: policy(x, tf.random.experimental.stateless_fold_in(SEED, i)))
    batches = list(dataset)
    assert [tuple(b.shape) for b in batches] == [(2, 16, 16, 3), (2, 16, 16, 3), (1, 16, 16, 3)]
    for batch in batches:
        _assert_valid(batch, tuple(batch.shape))
    first_seed = tf.random.experimental.stateless_fold_in(SEED, tf.constant(0, tf.int64))
    np.testing.assert_allclose(batches[0], policy(images[:2], first_seed), atol=1e-6)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_keeps_one_channel_and_accepts_float_input(name):
    policy = augment.get_augmentation(name, OUT_SIZE)
    out = policy(tf.constant(_unit_images(channels=1)), SEED)
    _assert_valid(out, (4, OUT_SIZE, OUT_SIZE, 1))


@pytest.mark.parametrize("name", RANDOM_POLICY_NAMES)
def test_identical_images_get_different_augmentations(name):
    out = augment.get_augmentation(name, OUT_SIZE)(_same_image_batch(), SEED)
    assert _num_distinct(out) >= 2


@pytest.mark.parametrize("name", RANDOM_POLICY_NAMES)
def test_policy_is_a_function_of_the_seed(name):
    policy = augment.get_augmentation(name, OUT_SIZE)
    images = _unit_images()
    first = policy(images, SEED).numpy()
    np.testing.assert_array_equal(first, policy(images, tf.constant([3, 7], tf.int64)))
    assert not np.array_equal(first, policy(images, OTHER_SEED))


def test_none_ignores_the_seed():
    policy = augment.get_augmentation("none", 32)
    images = _unit_images()
    np.testing.assert_array_equal(policy(images, SEED), images)
    np.testing.assert_array_equal(policy(images, OTHER_SEED), images)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (augment.AutoAugmentPolicy, dict(crop_scale=(0.2, 1.0), flip=False)),
        (augment.RandAugmentPolicy, dict(num_ops=3, factor=(0.1, 0.4), interpolation="nearest")),
        (augment.StackedRandAugmentPolicy, dict(num_ops=1, factor=0.3, grayscale_prob=0.0)),
    ],
)
def test_get_config_rebuilds_the_same_policy(cls, kwargs):
    policy = cls((8, 6), **kwargs)
    config = policy.get_config()
    for key, value in kwargs.items():
        expected = list(value) if isinstance(value, tuple) else value
        assert config[key] == expected, key
    rebuilt = cls(**config)
    assert rebuilt.get_config() == config
    assert repr(rebuilt) == repr(policy)


# ---------------------------------------------------------------------------
# AutoAugment: the policy table.
# ---------------------------------------------------------------------------


def test_imagenet_policy_table_is_25_sub_policies_of_two_valid_ops():
    policy = augment.AUTOAUGMENT_IMAGENET_POLICY
    assert len(policy) == 25
    for sub_policy in policy:
        assert len(sub_policy) == 2
        for name, probability, magnitude in sub_policy:
            assert name in augment.AUTOAUGMENT_OPS
            assert 0.0 <= probability <= 1.0
            assert isinstance(magnitude, int) and 0 <= magnitude <= 10
    # Spot checks against the paper's Table 9 (first and last rows; rows 20-24 repeat earlier).
    assert policy[0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))
    assert policy[18] == (("ShearX", 0.6, 5), ("Equalize", 1.0, 9))
    assert [policy[i] for i in (20, 21, 22, 23, 24)] == [policy[i] for i in (4, 1, 13, 14, 2)]
    assert {name for row in policy for name, _, _ in row} <= set(augment.AUTOAUGMENT_OPS)


# ---------------------------------------------------------------------------
# AutoAugment: each op against a NumPy reference.
# ---------------------------------------------------------------------------


def test_invert():
    images = _unit_images()
    np.testing.assert_allclose(_op(images, "Invert", 4), 1.0 - images, atol=1e-6)


@pytest.mark.parametrize("magnitude, threshold", [(0, 256), (3, 180), (5, 128), (10, 0)])
def test_solarize_inverts_levels_at_or_above_the_threshold(magnitude, threshold):
    levels = _uint8_images().astype(np.int32)
    expected = np.where(levels >= threshold, 255 - levels, levels) / 255.0
    np.testing.assert_allclose(_op(levels / np.float32(255), "Solarize", magnitude), expected,
                               atol=1e-6)


@pytest.mark.parametrize(
    "magnitude, mask", [(0, 0xFF), (3, 0xFE), (5, 0xFC), (8, 0xF8), (10, 0xF0)]
)
def test_posterize_keeps_the_top_bits(magnitude, mask):
    # Bits = 8 - floor(4 * m / 10): 8, 7, 6, 5, 4.
    levels = _uint8_images().astype(np.int32)
    expected = (levels & mask) / 255.0
    np.testing.assert_allclose(_op(levels / np.float32(255), "Posterize", magnitude), expected,
                               atol=1e-6)


def test_autocontrast_stretches_each_channel_and_keeps_flat_channels():
    images = 0.2 + 0.5 * _unit_images()
    images[1, ..., 2] = 0.3  # A flat channel is left alone.
    low = images.min(axis=(1, 2), keepdims=True)
    high = images.max(axis=(1, 2), keepdims=True)
    expected = np.where(high > low, (images - low) / np.maximum(high - low, 1e-12), images)
    out = _op(images, "AutoContrast", 5)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out[0, ..., 0].min() == 0.0 and out[0, ..., 0].max() == 1.0


def _equalize_reference(levels):
    """PIL's ImageOps.equalize on one channel of 0..255 ints, straight from its definition."""
    histogram = np.bincount(levels.ravel(), minlength=256)
    occupied = histogram[histogram > 0]
    if len(occupied) <= 1:
        return levels
    step = (occupied.sum() - occupied[-1]) // 255
    if step == 0:
        return levels
    lut, n = [], step // 2
    for level in range(256):
        lut.append(min(255, n // step))
        n += histogram[level]
    return np.array(lut)[levels]


def test_equalize_spreads_a_two_level_image_to_black_and_white():
    image = np.full((1, 32, 32, 1), 64, np.int32)
    image[:, :, 16:] = 192
    out = _op(image / np.float32(255), "Equalize", 8)
    np.testing.assert_array_equal(out[0, :, :16], 0.0)
    np.testing.assert_array_equal(out[0, :, 16:], 1.0)


def test_equalize_matches_the_per_channel_histogram_definition():
    rng = np.random.default_rng(1)
    # Skewed levels (squares of uniforms), so that equalising changes them.
    levels = (255 * rng.uniform(size=(3, 32, 32, 3)) ** 2).astype(np.int32)
    expected = np.stack(
        [np.stack([_equalize_reference(levels[b, ..., c]) for c in range(3)], -1) for b in range(3)]
    )
    out = _op(levels / np.float32(255), "Equalize", 0)
    np.testing.assert_allclose(out, expected / 255.0, atol=1e-6)
    # Under 255 pixels below the top level (an 8x8 image), PIL's step is 0: unchanged.
    small = _unit_images(size=8)
    np.testing.assert_array_equal(_op(small, "Equalize", 0), small)


def test_brightness_scales_by_its_factor_and_magnitude_5_is_identity():
    images = _unit_images()
    np.testing.assert_allclose(_op(images, "Brightness", 5), images, atol=1e-6)
    np.testing.assert_allclose(_op(images, "Brightness", 0), 0.1 * images, atol=1e-6)
    np.testing.assert_allclose(_op(images, "Brightness", 10), np.minimum(1.9 * images, 1.0),
                               atol=1e-6)


def _luma(images):
    return images @ np.array([0.299, 0.587, 0.114], np.float32)


def test_color_blends_with_grayscale_and_is_a_noop_for_one_channel():
    images = _unit_images()
    gray = _luma(images)[..., None]
    np.testing.assert_allclose(_op(images, "Color", 0), 0.1 * images + 0.9 * gray, atol=1e-6)
    expected = np.clip(gray + 1.9 * (images - gray), 0.0, 1.0)
    np.testing.assert_allclose(_op(images, "Color", 10), expected, atol=1e-5)
    one_channel = _unit_images(channels=1)
    np.testing.assert_allclose(_op(one_channel, "Color", 0), one_channel, atol=1e-6)


def test_contrast_blends_with_the_mean_luma():
    images = _unit_images()
    mean = _luma(images).mean(axis=(1, 2))[:, None, None, None]
    for magnitude, factor in [(0, 0.1), (10, 1.9)]:
        expected = np.clip(mean + factor * (images - mean), 0.0, 1.0)
        np.testing.assert_allclose(_op(images, "Contrast", magnitude), expected, atol=1e-5)


def test_sharpness_blends_with_the_3x3_smoothing_and_keeps_the_border():
    images = _unit_images(batch=2, size=9)
    smooth = images.copy()
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    for row in range(1, 8):
        for col in range(1, 8):
            window = images[:, row - 1 : row + 2, col - 1 : col + 2, :]
            smooth[:, row, col, :] = np.einsum("bijc,ij->bc", window, kernel)
    for magnitude, factor in [(0, 0.1), (10, 1.9)]:
        expected = np.clip(smooth + factor * (images - smooth), 0.0, 1.0)
        out = _op(images, "Sharpness", magnitude)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        np.testing.assert_allclose(out[:, 0], images[:, 0], atol=1e-6)


def _warp_reference(images, source_of):
    """Output pixel (x, y) reads input point `source_of(x, y)` bilinearly; outside reads FILL."""
    _, height, width, _ = images.shape
    out = np.empty_like(images)

    def read(y, x):
        inside = 0 <= y < height and 0 <= x < width
        return images[:, y, x, :] if inside else np.full(images[:, 0, 0, :].shape, FILL)

    for y in range(height):
        for x in range(width):
            sx, sy = source_of(x, y)
            x0, y0 = math.floor(sx), math.floor(sy)
            ax, ay = sx - x0, sy - y0
            out[:, y, x, :] = (1 - ay) * ((1 - ax) * read(y0, x0) + ax * read(y0, x0 + 1)) + ay * (
                (1 - ax) * read(y0 + 1, x0) + ax * read(y0 + 1, x0 + 1)
            )
    return out


def _rotation_source(degrees, size):
    """Content turns counter-clockwise (as displayed) by `degrees` about the centre (PIL's rotate).

    With x right and y down, a counter-clockwise turn moves a point q to
    p = c + [[cos, sin], [-sin, cos]] (q - c); the output pixel p reads q = c + R^T (p - c).
    """
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    centre = (size - 1) / 2.0

    def source_of(x, y):
        dx, dy = x - centre, y - centre
        return centre + cos * dx - sin * dy, centre + sin * dx + cos * dy

    return source_of


@pytest.mark.parametrize("name", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometric_ops_are_identity_at_magnitude_0(name):
    images = _unit_images(batch=2, size=12)
    np.testing.assert_allclose(_op(images, name, 0), images, atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize(
    "name, source",
    [
        # PIL's affine data (1, s, 0, 0, 1, 0): shear about the top-left corner, s = 0.3 at m = 10.
        ("ShearX", lambda s: lambda x, y: (x + 0.3 * s * y, y)),
        ("ShearY", lambda s: lambda x, y: (x, y + 0.3 * s * x)),
        # 150 / 331 of the width at m = 10: 5.44 px of a 12 px image.
        ("TranslateX", lambda s: lambda x, y: (x + s * 12 * 150 / 331, y)),
        ("TranslateY", lambda s: lambda x, y: (x, y + s * 12 * 150 / 331)),
        ("Rotate", lambda s: _rotation_source(30.0 * s, 12)),
    ],
)
def test_geometric_ops_at_magnitude_10_match_the_definition(name, source, sign):
    images = _unit_images(batch=2, size=12)
    expected = _warp_reference(images, source(sign))
    np.testing.assert_allclose(_op(images, name, 10, sign=sign), expected, atol=1e-4)


def test_rotate_turns_content_counter_clockwise():
    # A dot 8 px right of the centre of a 33x33 image, rotated by +30 degrees, lands up and
    # to the right: (row, col) = (16 - 8 sin 30, 16 + 8 cos 30) = (12, 22.9).
    image = np.zeros((1, 33, 33, 1), np.float32)
    image[0, 16, 24, 0] = 1.0
    out = _op(image, "Rotate", 10, sign=1.0)[0, ..., 0]
    out[out == np.float32(FILL)] = 0.0
    row, col = np.unravel_index(np.argmax(out), out.shape)
    assert (row, col) == (12, 23)


# ---------------------------------------------------------------------------
# AutoAugment: sub-policies and probabilities.
# ---------------------------------------------------------------------------


def test_sub_policy_ops_run_in_order_and_honour_probabilities():
    images = _unit_images(batch=8)
    # Invert then Solarize at m = 10 (threshold 0: invert everything) gives the image back.
    policy = ((("Invert", 1.0, 0), ("Solarize", 1.0, 10)),)
    twice = augment.auto_augment(images, SEED, policy=policy)
    np.testing.assert_allclose(twice, images, atol=1e-6)
    never = augment.auto_augment(images, SEED, policy=((("Invert", 0.0, 0), ("Invert", 0.0, 0)),))
    np.testing.assert_array_equal(never, images)
    # Probability 0.5: each sample is either inverted or unchanged, and both happen.
    batch = _unit_images(batch=32, size=4)
    out = augment.auto_augment(batch, SEED, policy=((("Invert", 0.5, 0),),)).numpy()
    inverted = np.all(np.isclose(out, 1.0 - batch, atol=1e-6), axis=(1, 2, 3))
    unchanged = np.all(out == batch, axis=(1, 2, 3))
    assert np.all(inverted ^ unchanged) and 0 < inverted.sum() < 32


def test_each_sample_draws_its_own_sub_policy():
    images = _same_image_batch(batch=16)
    policy = ((("Invert", 1.0, 0),), (("Brightness", 1.0, 0),))
    out = augment.auto_augment(images, SEED, policy=policy).numpy()
    inverted = np.all(np.isclose(out, 1.0 - images, atol=1e-6), axis=(1, 2, 3))
    darkened = np.all(np.isclose(out, 0.1 * images, atol=1e-6), axis=(1, 2, 3))
    assert np.all(inverted ^ darkened) and 0 < inverted.sum() < 16


def test_auto_augment_keeps_shape_for_both_channel_counts_under_tf_function():
    traced = tf.function(
        augment.auto_augment,
        input_signature=[
            tf.TensorSpec([None, None, None, 1], tf.float32),
            tf.TensorSpec([2], tf.int32),
        ],
    )
    images = _unit_images(batch=6, channels=1)
    out = traced(images, SEED)
    _assert_valid(out, images.shape)
    np.testing.assert_allclose(out, augment.auto_augment(images, SEED), atol=1e-6)
    _assert_valid(augment.auto_augment(_unit_images(), SEED), (4, 32, 32, 3))


# ---------------------------------------------------------------------------
# RandAugment through Keras.
# ---------------------------------------------------------------------------


def test_rand_augment_uses_keras_ops_and_leaves_keras_generators_untouched():
    # Guards the private Keras pieces the wrapper relies on (`_AUGMENT_LAYERS`, sub-layer
    # `get_random_transformation(seed=...)`, `draw_seed` calling `SeedGenerator.next()`).
    rand_augment = augment.StatelessRandAugment(num_ops=2, factor=0.5)
    assert rand_augment.op_names == tuple(keras.layers.RandAugment._AUGMENT_LAYERS)
    assert len(rand_augment.op_names) == 11
    generators = [rand_augment._layer.generator] + [
        layer.generator for _, layer in rand_augment._ops if hasattr(layer, "generator")
    ]
    before = [g.state.numpy().copy() for g in generators]
    images = _unit_images(batch=8)
    first = rand_augment(images, SEED).numpy()
    np.testing.assert_array_equal(first, rand_augment(images, SEED))
    for generator, state in zip(generators, before):
        np.testing.assert_array_equal(generator.state.numpy(), state)


def test_rand_augment_chooses_ops_per_sample_where_keras_chooses_per_batch():
    # factor=0 makes every op's parameters constant, so the only randomness left is which op
    # each sample gets. Keras' own layer picks one op for the whole batch: one distinct output.
    images = _same_image_batch(batch=8)
    ours = augment.StatelessRandAugment(num_ops=1, factor=0.0)(images, SEED)
    assert _num_distinct(ours) >= 2
    keras_layer = keras.layers.RandAugment(value_range=(0, 1), num_ops=1, factor=0.0, seed=1)
    assert _num_distinct(keras_layer(images)) == 1
    # And Keras' layer is stateful: the same input and construction seed, called again, differs.
    stateful = keras.layers.RandAugment(value_range=(0, 1), num_ops=2, factor=0.5, seed=1)
    assert not np.array_equal(stateful(images), stateful(images))


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------


def _auto_augment_with(*sub_policies):
    return augment.auto_augment(_unit_images(), SEED, policy=sub_policies)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: augment.AutoAugmentPolicy(0), "image_size"),
        (lambda: augment.AutoAugmentPolicy(8, crop_scale=(0.0, 1.0)), "crop_scale"),
        (lambda: augment.AutoAugmentPolicy(8, flip="yes"), "flip"),
        (lambda: augment.get_augmentation("autoaugment", 8, factor=0.5), "factor"),
        (lambda: augment.RandAugmentPolicy(8, num_ops=0), "num_ops"),
        (lambda: augment.RandAugmentPolicy(8, num_ops=1.5), "num_ops"),
        (lambda: augment.RandAugmentPolicy(8, factor=1.5), "factor"),
        (lambda: augment.RandAugmentPolicy(8, factor=(0.6, 0.2)), "factor"),
        (lambda: augment.RandAugmentPolicy(8, interpolation="cubic"), "interpolation"),
        (lambda: augment.RandAugmentPolicy(8, crop_scale=(0.5, 1.5)), "crop_scale"),
        (lambda: augment.StackedRandAugmentPolicy(8, hue=0.7), "hue"),
        (lambda: augment.StackedRandAugmentPolicy(8, factor=-0.1), "factor"),
        (lambda: augment.get_augmentation("randaugment", 8, magnitude=9), "magnitude"),
        (lambda: augment.autoaugment_op(_unit_images(), "Cutout", 5), "name"),
        (lambda: augment.autoaugment_op(_unit_images(), "Rotate", 11), "magnitude"),
        (lambda: augment.autoaugment_op(_unit_images(), "Rotate", 5, sign=0.5), "sign"),
        (lambda: augment.auto_augment(_unit_images(), SEED, policy=()), "policy"),
        (lambda: _auto_augment_with((("Zoom", 0.5, 5),)), "policy"),
        (lambda: _auto_augment_with((("Invert", 1.5, 5),)), "policy"),
        (lambda: _auto_augment_with((("Invert", 0.5, 11),)), "policy"),
        (lambda: _auto_augment_with((("Invert", 0.5, 1),), (("Invert", 0.5, 1),) * 2), "policy"),
        (lambda: augment.auto_augment(_unit_images(), tf.constant([1, 2, 3])), "seed"),
        (lambda: augment.AutoAugmentPolicy(8)(_unit_images(channels=2), SEED), "images"),
        (lambda: augment.RandAugmentPolicy(8)(_unit_images(), tf.constant([1.0, 2.0])), "seed"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


# ---------------------------------------------------------------------------
# Optional cross-check against PIL, the library whose ops the paper uses.
# ---------------------------------------------------------------------------


def test_pixel_ops_agree_with_pil_on_uint8_images():
    image_module = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps  # Optional: installed with matplotlib/tensorboard.

    levels = (255 * np.random.default_rng(2).uniform(size=(2, 32, 32, 3)) ** 2).astype(np.uint8)
    pil = [image_module.fromarray(level) for level in levels]
    cases = [
        ("Invert", 0, ImageOps.invert, 0),
        ("Equalize", 0, ImageOps.equalize, 0),
        ("AutoContrast", 0, ImageOps.autocontrast, 1),  # PIL truncates its lookup table.
        ("Solarize", 5, lambda im: ImageOps.solarize(im, 128), 0),
        ("Posterize", 10, lambda im: ImageOps.posterize(im, 4), 0),
        # PIL's blends round/truncate to uint8 at each step (its grayscale, its integer mean for
        # Contrast, its smoothed image); ours stay in float: within 1.5 levels of 255.
        ("Color", 2, lambda im: ImageEnhance.Color(im).enhance(0.46), 1.5),
        ("Brightness", 8, lambda im: ImageEnhance.Brightness(im).enhance(1.54), 1.5),
        ("Contrast", 8, lambda im: ImageEnhance.Contrast(im).enhance(1.54), 1.5),
        ("Sharpness", 7, lambda im: ImageEnhance.Sharpness(im).enhance(1.36), 1.5),
    ]
    for name, magnitude, reference, tolerance in cases:
        expected = np.stack([np.asarray(reference(im)) for im in pil]).astype(np.float32)
        out = _op(levels / np.float32(255), name, magnitude) * 255.0
        np.testing.assert_allclose(out, expected, atol=tolerance + 1e-3, err_msg=name)
