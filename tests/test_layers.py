"""Tests for supcon_tf.layers: L2Normalize, ProjectionHead, CaffeImageNetPreprocessing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_serialization_roundtrip
from supcon_tf.layers import CaffeImageNetPreprocessing, L2Normalize, ProjectionHead


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _reference_l2_normalize(x, axis=-1, epsilon=1e-12):
    """Looped float64 NumPy version of x / max(||x||, eps), straight from the formula."""
    x = np.asarray(x, dtype=np.float64)
    moved = np.moveaxis(x, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        norm = np.sqrt(sum(v * v for v in row))
        out[i] = row / max(norm, epsilon)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def _relu(x):
    return np.maximum(x, 0.0)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------- L2Normalize


def test_l2_normalize_gives_unit_norm_rows():
    x = np.random.normal(size=(5, 16)).astype("float32") * 7.0
    y = _np(L2Normalize()(x))
    assert y.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-6)
    # Direction is kept: y is a positive multiple of x.
    np.testing.assert_allclose(y * np.linalg.norm(x, axis=-1, keepdims=True), x, rtol=1e-5)


def test_l2_normalize_exact_geometry():
    y = _np(L2Normalize()(np.array([[3.0, 4.0], [0.0, -2.0]], dtype="float32")))
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, -1.0]], atol=1e-7)


def test_l2_normalize_zero_row_is_finite_with_finite_gradient():
    x = tf.constant([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=tf.float32)
    layer = L2Normalize()
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        total = tf.reduce_sum(y * tf.constant([[1.0, -2.0, 3.0]]))
    grad = tape.gradient(total, x)
    y, grad = _np(y), _np(grad)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(y[0], 0.0)
    np.testing.assert_allclose(y[1], [1 / 3, 2 / 3, 2 / 3], atol=1e-7)


def test_l2_normalize_matches_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 10))
    x[2] *= 1e-14  # norm below epsilon: divided by epsilon, not normalised
    x[4] = 0.0
    expected = _reference_l2_normalize(x)
    assert np.linalg.norm(expected[2]) < 0.1  # the clamp really applies to row 2

    y64 = L2Normalize()(x)  # float64 in -> float64 out
    assert keras.backend.standardize_dtype(y64.dtype) == "float64"
    np.testing.assert_allclose(_np(y64), expected, rtol=1e-12, atol=1e-15)

    x32 = x.astype("float32")
    x32[2] = 0.0  # 1e-14-scale values are denormal-adjacent in float32; keep them out
    y32 = L2Normalize()(x32)
    assert keras.backend.standardize_dtype(y32.dtype) == "float32"
    np.testing.assert_allclose(_np(y32), _reference_l2_normalize(x32), atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, (1, 2)])
def test_l2_normalize_axis_matches_reference(axis):
    x = np.random.normal(size=(3, 4, 5))
    y = _np(L2Normalize(axis=axis)(x))
    if isinstance(axis, tuple):
        flat = x.reshape(3, 20)
        expected = _reference_l2_normalize(flat).reshape(3, 4, 5)
    else:
        expected = _reference_l2_normalize(x, axis=axis)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_l2_normalize_custom_epsilon():
    y = _np(L2Normalize(epsilon=10.0)(np.array([[3.0, 4.0]])))
    np.testing.assert_allclose(y, [[0.3, 0.4]])


def test_l2_normalize_half_precision_inputs_give_float32():
    x = np.random.normal(size=(4, 8)).astype("float16")
    y = L2Normalize()(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    np.testing.assert_allclose(_np(y), _reference_l2_normalize(x), atol=1e-6)
    inputs = keras.Input((8,), dtype="bfloat16")
    assert keras.backend.standardize_dtype(L2Normalize()(inputs).dtype) == "float32"


def test_l2_normalize_keeps_float32_under_mixed_precision(mixed_float16):
    inputs = keras.Input((8,))
    x = keras.layers.Dense(8)(inputs)
    assert keras.backend.standardize_dtype(x.dtype) == "float16"
    outputs = L2Normalize()(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
    model = keras.Model(inputs, outputs)
    y = model(np.random.normal(size=(2, 8)).astype("float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


@pytest.mark.parametrize("kwargs", [{}, {"axis": 1, "epsilon": 1e-6}, {"axis": (1, 2)}])
def test_l2_normalize_serialization_roundtrip(kwargs):
    x = np.random.normal(size=(2, 4, 3)).astype("float32")
    layer = L2Normalize(**kwargs)
    layer(x)
    assert_serialization_roundtrip(layer, x)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"axis": 1.5}, "axis"),
        ({"axis": ()}, "axis"),
        ({"axis": (1, 1)}, "axis"),
        ({"axis": True}, "axis"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1e-3}, "epsilon"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"epsilon": "small"}, "epsilon"),
    ],
)
def test_l2_normalize_rejects_bad_arguments(kwargs, argument):
    (value,) = kwargs.values()
    with pytest.raises(ValueError, match=rf"`{argument}`.*received: {argument}="):
        L2Normalize(**kwargs)
    assert repr(value) in _error_message(L2Normalize, kwargs)


def _error_message(cls, kwargs):
    try:
        cls(**kwargs)
    except ValueError as error:
        return str(error)
    raise AssertionError("no ValueError")


# --------------------------------------------------------------------------- ProjectionHead


@pytest.mark.parametrize(
    "kwargs, rep_dim",
    [
        ({}, 64),
        ({"hidden_dims": (32,), "output_dim": 16}, 64),
        ({"hidden_dims": [32, 24], "output_dim": 8, "use_batch_norm": True}, 20),
        ({"hidden_dims": (), "output_dim": 5}, 7),
        ({"hidden_dims": (16,), "output_dim": 3, "normalize": False}, 12),
    ],
)
def test_projection_head_output_shape_and_dtype(kwargs, rep_dim):
    head = ProjectionHead(**kwargs)
    z = head(np.random.normal(size=(3, rep_dim)).astype("float32"))
    expected_dim = kwargs.get("output_dim", 128)
    assert tuple(z.shape) == (3, expected_dim)
    assert keras.backend.standardize_dtype(z.dtype) == "float32"
    assert head.compute_output_shape((None, rep_dim)) == (None, expected_dim)
    symbolic = head(keras.Input((rep_dim,)))
    assert tuple(symbolic.shape) == (None, expected_dim)


def test_projection_head_paper_default_is_2048_2048_128():
    head = ProjectionHead()
    head.build((None, 2048))
    shapes = [tuple(w.shape) for w in head.weights]
    assert shapes == [(2048, 2048), (2048,), (2048, 128), (128,)]
    assert head.hidden_dims == (2048,) and head.output_dim == 128 and head.normalize


@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_projection_head_normalized_rows_have_unit_norm(use_batch_norm):
    head = ProjectionHead(hidden_dims=(32,), output_dim=16, use_batch_norm=use_batch_norm)
    x = np.random.normal(size=(6, 24)).astype("float32")
    for training in (False, True):
        z = _np(head(x, training=training))
        np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, atol=1e-6)


def test_projection_head_unnormalized_matches_numpy_mlp():
    head = ProjectionHead(hidden_dims=(32,), output_dim=16, normalize=False)
    x = np.random.normal(size=(4, 24)).astype("float32")
    z = _np(head(x))
    w1, b1, w2, b2 = (_np(w).astype(np.float64) for w in head.weights)
    expected = _relu(x @ w1 + b1) @ w2 + b2
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.linalg.norm(z, axis=-1), 1.0)


def test_projection_head_normalized_matches_numpy_mlp():
    head = ProjectionHead(hidden_dims=(32, 8), output_dim=16, activation="tanh")
    x = np.random.normal(size=(4, 24)).astype("float32")
    z = _np(head(x))
    w1, b1, w2, b2, w3, b3 = (_np(w).astype(np.float64) for w in head.weights)
    expected = _reference_l2_normalize(np.tanh(np.tanh(x @ w1 + b1) @ w2 + b2) @ w3 + b3)
    np.testing.assert_allclose(z, expected, atol=1e-5)


def test_projection_head_empty_hidden_dims_is_linear():
    head = ProjectionHead(hidden_dims=(), output_dim=5, normalize=False)
    x = np.random.normal(size=(3, 7)).astype("float32")
    z = _np(head(x))
    assert [tuple(w.shape) for w in head.weights] == [(7, 5), (5,)]
    kernel, bias = (_np(w) for w in head.weights)
    np.testing.assert_allclose(z, x @ kernel + bias, rtol=1e-5, atol=1e-6)
    # Linearity: f(a x + b y) - bias == a (f(x) - bias) + b (f(y) - bias).
    y = np.random.normal(size=(3, 7)).astype("float32")
    lhs = _np(head(2.0 * x - 3.0 * y)) - bias
    rhs = 2.0 * (z - bias) - 3.0 * (_np(head(y)) - bias)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-5)


def test_projection_head_batch_norm_layout():
    head = ProjectionHead(hidden_dims=(16, 8), output_dim=4, use_batch_norm=True)
    head.build((None, 10))
    names = [w.path.split("/", 1)[1] for w in head.weights]
    assert names == [
        "hidden_dense_0/kernel",
        "hidden_bn_0/gamma",
        "hidden_bn_0/beta",
        "hidden_bn_0/moving_mean",
        "hidden_bn_0/moving_variance",
        "hidden_dense_1/kernel",
        "hidden_bn_1/gamma",
        "hidden_bn_1/beta",
        "hidden_bn_1/moving_mean",
        "hidden_bn_1/moving_variance",
        "output_dense/kernel",
        "output_dense/bias",
    ]
    x = np.random.normal(loc=3.0, size=(8, 10)).astype("float32")
    # Training mode uses batch statistics, inference mode the (fresh) moving ones.
    assert not np.allclose(_np(head(x, training=True)), _np(head(x, training=False)))


def test_projection_head_output_is_float32_under_mixed_precision(mixed_float16):
    for normalize in (True, False):
        head = ProjectionHead(hidden_dims=(16,), output_dim=8, normalize=normalize)
        inputs = keras.Input((12,))
        outputs = head(inputs)
        assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
        assert head._output_dense.compute_dtype == "float16"
        y = keras.Model(inputs, outputs)(np.random.normal(size=(2, 12)).astype("float32"))
        assert keras.backend.standardize_dtype(y.dtype) == "float32"
        if normalize:
            np.testing.assert_allclose(np.linalg.norm(_np(y), axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"hidden_dims": (16, 8), "output_dim": 4, "use_batch_norm": True},
        {"hidden_dims": (), "output_dim": 6, "normalize": False},
        {"hidden_dims": (8,), "output_dim": 4, "activation": "gelu", "name": "head"},
    ],
)
def test_projection_head_serialization_roundtrip(kwargs):
    x = np.random.normal(size=(4, 12)).astype("float32")
    head = ProjectionHead(**kwargs)
    # A training call moves the BN statistics away from their initial values,
    # so the round trip checks that the moving statistics are restored too.
    head(x, training=True)
    clone = assert_serialization_roundtrip(head, x)
    assert clone.get_config() == head.get_config()


def test_projection_head_keras_file_restores_weights(tmp_path):
    """A model saved with a head and loaded back has the same head weights."""
    inputs = keras.Input((12,))
    head = ProjectionHead(hidden_dims=(8,), output_dim=4, use_batch_norm=True, name="head")
    model = keras.Model(inputs, head(inputs))
    model(np.random.normal(size=(4, 12)).astype("float32"), training=True)
    path = tmp_path / "head.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_head = loaded.get_layer("head")
    assert isinstance(loaded_head, ProjectionHead)
    assert len(loaded_head.weights) == len(head.weights) == 7
    for original, restored in zip(head.weights, loaded_head.weights):
        np.testing.assert_array_equal(_np(original), _np(restored))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"output_dim": 0}, "output_dim"),
        ({"output_dim": -3}, "output_dim"),
        ({"output_dim": 2.5}, "output_dim"),
        ({"hidden_dims": 2048}, "hidden_dims"),
        ({"hidden_dims": (64, 0)}, "hidden_dims"),
        ({"hidden_dims": (64.0,)}, "hidden_dims"),
        ({"activation": "no_such_activation"}, "activation"),
        ({"use_batch_norm": "yes"}, "use_batch_norm"),
        ({"normalize": 1}, "normalize"),
    ],
)
def test_projection_head_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf"`{argument}`.*received: {argument}="):
        ProjectionHead(**kwargs)
    (value,) = kwargs.values()
    assert repr(value) in _error_message(ProjectionHead, kwargs)


def test_projection_head_rejects_unknown_rep_dim():
    with pytest.raises(ValueError, match="input_shape"):
        ProjectionHead(hidden_dims=(), output_dim=2).build((None,))


# ------------------------------------------------------------ CaffeImageNetPreprocessing


def test_caffe_preprocessing_matches_keras_applications():
    images = np.random.uniform(size=(2, 8, 8, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(images * 255.0)
    y = CaffeImageNetPreprocessing()(images)
    np.testing.assert_allclose(_np(y), _np(expected), atol=1e-4)


def test_caffe_preprocessing_repeats_grayscale():
    gray = np.random.uniform(size=(2, 8, 8, 1)).astype("float32")
    y = _np(CaffeImageNetPreprocessing()(gray))
    assert y.shape == (2, 8, 8, 3)
    expected = keras.applications.resnet50.preprocess_input(np.repeat(gray, 3, axis=-1) * 255.0)
    np.testing.assert_allclose(y, _np(expected), atol=1e-4)


def test_caffe_preprocessing_rejects_bad_channels():
    with pytest.raises(ValueError, match="channels 1 or 3"):
        CaffeImageNetPreprocessing()(np.zeros((1, 8, 8, 2), "float32"))


def test_caffe_preprocessing_serialization_roundtrip():
    images = np.random.uniform(size=(2, 8, 8, 3)).astype("float32")
    layer = CaffeImageNetPreprocessing()
    layer(images)
    assert_serialization_roundtrip(layer, images, atol=1e-4)
