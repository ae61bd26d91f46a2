"""Tests for the ViT encoders (supcon_tf.encoders) and their layers (supcon_tf.layers)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_serialization_roundtrip
from supcon_tf.encoders import ENCODER_NAMES, build_encoder, representation_dim
from supcon_tf.encoders.vit import ClassToken, PositionEmbedding, TokenPooling, TransformerBlock

TINY = "vit_tiny_patch4_32"
B16 = "vit_b16"
IMAGES_32 = (32, 32, 3)
# A shrunken tiny ViT for the tests that build several models or take gradients.
SMALL = {"hidden_dim": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64}


def _vit_params(patch, channels, tokens, hidden, depth, mlp):
    """Trainable parameters of the ViT layout in supcon_tf/encoders/vit.py, counted from the architecture."""
    patch_embedding = patch * patch * channels * hidden + hidden
    class_token = hidden
    position_embedding = (tokens + 1) * hidden
    layer_norm = 2 * hidden
    attention = 4 * (hidden * hidden + hidden)  # query, key, value, output projections
    mlp_params = hidden * mlp + mlp + mlp * hidden + hidden
    block = 2 * layer_norm + attention + mlp_params
    return patch_embedding + class_token + position_embedding + depth * block + layer_norm


# ViT-Base/16 at 224x224 without its classifier: the published 86,567,656 parameters
# (e.g. timm's vit_base_patch16_224) minus the 1000-class head (768 * 1000 + 1000).
VIT_B16_PARAMS = 86_567_656 - 769_000
TINY_PARAMS = 2_691_648


def _images(shape, batch=2):
    return np.random.uniform(size=(batch, *shape)).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _n_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _blocks(model):
    return [layer for layer in model.layers if isinstance(layer, TransformerBlock)]


def _error_message(fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_parameter_formula_matches_the_published_counts():
    assert _vit_params(16, 3, 196, 768, 12, 3072) == VIT_B16_PARAMS == 85_798_656
    assert _vit_params(4, 3, 64, 192, 6, 768) == TINY_PARAMS


def test_vit_names_and_representation_dims():
    assert ENCODER_NAMES[-2:] == (TINY, B16)
    assert representation_dim(TINY) == 192
    assert representation_dim(B16) == 768
    assert representation_dim(TINY, hidden_dim=64, num_heads=4) == 64
    assert representation_dim(TINY, **SMALL, pool="mean", dropout_rate=0.1) == 32
    assert representation_dim(B16, pool="mean", attention_dropout_rate=0.1) == 768


def test_vit_b16_has_the_vit_base_shape():
    model = build_encoder(B16, (224, 224, 3))
    assert model.name == B16
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 768) == (None, representation_dim(B16))
    assert _n_trainable(model) == VIT_B16_PARAMS
    assert model.count_params() == VIT_B16_PARAMS  # nothing non-trainable
    patch = model.get_layer("patch_embedding")
    assert patch.kernel.shape == (16, 16, 3, 768)
    assert patch.strides == (16, 16) and patch.padding == "valid"
    assert model.get_layer("position_embedding").embeddings.shape == (14 * 14 + 1, 768)
    blocks = _blocks(model)
    assert len(blocks) == 12
    assert all(b.num_heads == 12 and b.mlp_dim == 3072 for b in blocks)
    assert all(b.dropout_rate == 0.0 and b.attention_dropout_rate == 0.0 for b in blocks)


def test_vit_b16_runs_on_small_grayscale_inputs():
    model = build_encoder(B16, (32, 32, 1))
    assert model.get_layer("position_embedding").embeddings.shape == (5, 768)
    assert _n_trainable(model) == _vit_params(16, 1, 4, 768, 12, 3072)
    r = _np(model(_images((32, 32, 1)), training=False))
    assert r.shape == (2, 768) and np.all(np.isfinite(r))
    assert not np.allclose(r[0], r[1])


@pytest.mark.slow
def test_vit_b16_forward_at_224():
    model = build_encoder(B16, (224, 224, 3))
    r = model(_images((224, 224, 3)), training=False)
    assert tuple(r.shape) == (2, 768)
    assert keras.backend.standardize_dtype(r.dtype) == "float32"
    r = _np(r)
    assert np.all(np.isfinite(r)) and not np.allclose(r[0], r[1])


@pytest.mark.parametrize("channels", [3, 1])
def test_tiny_vit_forward(channels):
    shape = (32, 32, channels)
    model = build_encoder(TINY, shape)
    assert model.name == TINY
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, 192)
    assert _n_trainable(model) == _vit_params(4, channels, 64, 192, 6, 768)
    blocks = _blocks(model)
    assert len(blocks) == 6 and all(b.num_heads == 3 and b.mlp_dim == 768 for b in blocks)
    rescale = model.get_layer("rescale")  # fixed [0, 1] -> [-1, 1]
    assert rescale.scale == 2.0 and rescale.offset == -1.0
    r = model(_images(shape), training=False)
    assert tuple(r.shape) == (2, 192)
    assert keras.backend.standardize_dtype(r.dtype) == "float32"
    r = _np(r)
    assert np.all(np.isfinite(r)) and not np.allclose(r[0], r[1])
    # Without dropout, training mode changes nothing (there is no BatchNormalization).
    x = _images(shape)
    np.testing.assert_allclose(_np(model(x, training=True)), _np(model(x, training=False)))
    assert TINY_PARAMS == _vit_params(4, 3, 64, 192, 6, 768)


@pytest.mark.parametrize(
    "name, shape, tokens",
    [
        (TINY, (32, 32, 3), 64),
        (TINY, (8, 8, 1), 4),
        (TINY, (16, 32, 3), 32),
        (TINY, (4, 4, 3), 1),
    ],
)
def test_position_embeddings_cover_patches_and_class_token(name, shape, tokens):
    model = build_encoder(name, shape, **SMALL)
    assert model.get_layer("patch_tokens").output.shape == (None, tokens, SMALL["hidden_dim"])
    assert model.get_layer("class_token").output.shape == (None, tokens + 1, 32)
    assert model.get_layer("position_embedding").embeddings.shape == (tokens + 1, 32)
    assert tuple(model(_images(shape)).shape) == (2, 32)


def test_patch_embedding_is_a_linear_map_of_row_major_patches():
    model = build_encoder(TINY, (8, 12, 3), **SMALL)
    x = _images((8, 12, 3))
    tokens = _np(keras.Model(model.input, model.get_layer("patch_tokens").output)(x))
    kernel, bias = (_np(w) for w in model.get_layer("patch_embedding").weights)
    scaled = 2.0 * x - 1.0
    assert tokens.shape == (2, 2 * 3, 32)
    for i in range(2):
        for j in range(3):
            patch = scaled[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4, :]
            expected = np.einsum("bhwc,hwcd->bd", patch, kernel) + bias
            np.testing.assert_allclose(tokens[:, 3 * i + j], expected, atol=1e-5)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_pool_takes_class_token_or_mean_of_patch_tokens(pool):
    model = build_encoder(TINY, IMAGES_32, pool=pool, **SMALL)
    assert model.get_layer("pool").mode == pool
    x = _images(IMAGES_32)
    final = _np(keras.Model(model.input, model.get_layer("final_norm").output)(x))
    assert final.shape == (2, 65, 32)
    expected = final[:, 0] if pool == "cls" else final[:, 1:].mean(axis=1)
    np.testing.assert_allclose(_np(model(x)), expected, atol=1e-6)


def test_pool_modes_share_the_architecture():
    cls_model = build_encoder(TINY, IMAGES_32, **SMALL)
    mean_model = build_encoder(TINY, IMAGES_32, pool="mean", **SMALL)
    assert cls_model.get_layer("pool").mode == "cls"  # the default
    assert _n_trainable(cls_model) == _n_trainable(mean_model)
    mean_model.set_weights(cls_model.get_weights())
    x = _images(IMAGES_32)
    assert not np.allclose(_np(cls_model(x)), _np(mean_model(x)))


def test_dropout_options_reach_every_block_and_act_in_training_only():
    model = build_encoder(TINY, IMAGES_32, dropout_rate=0.1, attention_dropout_rate=0.2, **SMALL)
    assert model.get_layer("embedding_dropout").rate == 0.1
    for block in _blocks(model):
        assert block.dropout_rate == 0.1 and block.attention_dropout_rate == 0.2
    x = _images(IMAGES_32)
    inference = _np(model(x, training=False))
    np.testing.assert_allclose(_np(model(x, training=False)), inference)
    assert not np.allclose(_np(model(x, training=True)), inference)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_tiny_vit_serialization_roundtrip(pool):
    model = build_encoder(TINY, IMAGES_32, pool=pool, dropout_rate=0.1, **SMALL)
    assert_serialization_roundtrip(model, _images(IMAGES_32), atol=1e-5)


def test_gradients_reach_every_trainable_variable():
    model = build_encoder(TINY, IMAGES_32, **SMALL)
    x = tf.constant(_images(IMAGES_32, batch=4))
    # A random projection, not a plain sum: the sum of a LayerNorm output over
    # its features is constant, so it would hide every gradient below it.
    direction = tf.constant(np.random.normal(size=(4, 32)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) * direction)
    grads = tape.gradient(loss, model.trainable_variables)
    # patch conv (2) + class token + position embeddings + 16 per block + final LN (2)
    assert len(model.trainable_variables) == 4 + 16 * SMALL["depth"] + 2
    for variable, grad in zip(model.trainable_variables, grads):
        assert grad is not None, variable.path
        grad = _np(grad)
        assert np.all(np.isfinite(grad)), variable.path
        assert np.any(grad != 0), variable.path


def test_tiny_vit_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build_encoder(TINY, IMAGES_32, **SMALL)
        r = model(_images(IMAGES_32), training=False)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(r.dtype) == "float16"
    assert all(w.dtype == "float32" for w in model.weights)
    assert np.all(np.isfinite(_np(r).astype("float32")))


# ---------------------------------------------------------------------------
# Layers.


def _layer_norm(x, gamma, beta, epsilon):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _reference_block(x, w, epsilon):
    """ViT Eq. 2-3 in float64 NumPy: pre-norm attention and MLP, both residual."""
    h = _layer_norm(x, w["attention_norm/gamma"], w["attention_norm/beta"], epsilon)
    q = np.einsum("btd,dhk->bthk", h, w["attention/query/kernel"]) + w["attention/query/bias"]
    k = np.einsum("btd,dhk->bthk", h, w["attention/key/kernel"]) + w["attention/key/bias"]
    v = np.einsum("btd,dhk->bthk", h, w["attention/value/kernel"]) + w["attention/value/bias"]
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)
    attended = np.einsum("bhqs,bshk->bqhk", probs, v)
    y = x + (
        np.einsum("bqhk,hkd->bqd", attended, w["attention/attention_output/kernel"])
        + w["attention/attention_output/bias"]
    )
    m = _layer_norm(y, w["mlp_norm/gamma"], w["mlp_norm/beta"], epsilon)
    m = _gelu(m @ w["mlp_dense_1/kernel"] + w["mlp_dense_1/bias"])
    return y + m @ w["mlp_dense_2/kernel"] + w["mlp_dense_2/bias"]


def test_transformer_block_matches_numpy_reference():
    block = TransformerBlock(num_heads=2, mlp_dim=16, layer_norm_epsilon=1e-3)
    x = np.random.normal(size=(2, 5, 8))
    block(x.astype("float32"))
    # Randomise every weight (biases and LayerNorm scales included) so that
    # none of them can be silently unused.
    for w in block.weights:
        w.assign(np.random.normal(scale=0.3, size=w.shape).astype("float32"))
    weights = {w.path.split("/", 1)[1]: _np(w).astype("float64") for w in block.weights}
    assert len(weights) == 16
    expected = _reference_block(x, weights, 1e-3)
    np.testing.assert_allclose(_np(block(x.astype("float32"))), expected, atol=1e-4, rtol=1e-4)


def test_class_token_prepends_one_learned_token():
    layer = ClassToken(initializer="random_normal")
    x = np.random.normal(size=(3, 4, 6)).astype("float32")
    y = _np(layer(x))
    assert y.shape == (3, 5, 6) and layer.token.shape == (1, 1, 6)
    np.testing.assert_allclose(y[:, 1:], x)
    np.testing.assert_allclose(y[:, 0], np.broadcast_to(_np(layer.token)[0], (3, 6)))
    assert np.any(y[:, 0] != 0)
    assert np.all(_np(ClassToken()(x))[:, 0] == 0)  # zeros by default


def test_position_embedding_adds_one_row_per_position():
    layer = PositionEmbedding()
    x = np.random.normal(size=(3, 5, 6)).astype("float32")
    y = _np(layer(x))
    embeddings = _np(layer.embeddings)
    assert embeddings.shape == (5, 6)
    np.testing.assert_allclose(y - x, np.broadcast_to(embeddings, (3, 5, 6)), atol=1e-6)
    assert 0.005 < embeddings.std() < 0.05  # RandomNormal(stddev=0.02)
    # Each layer draws its own values.
    other = PositionEmbedding()
    other(x)
    assert not np.allclose(_np(other.embeddings), embeddings)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (ClassToken(initializer="random_normal"), (2, 4, 6)),
        (PositionEmbedding(), (2, 5, 6)),
        (TransformerBlock(2, 12, dropout_rate=0.1, attention_dropout_rate=0.1), (2, 5, 8)),
        (TransformerBlock(1, 4, activation="relu", layer_norm_epsilon=1e-5), (2, 3, 4)),
        (TokenPooling(), (2, 5, 6)),
        (TokenPooling("mean"), (2, 5, 6)),
    ],
    ids=["class_token", "position", "block", "block_relu", "pool_cls", "pool_mean"],
)
def test_layer_serialization_roundtrip(layer, shape):
    x = np.random.normal(size=shape).astype("float32")
    layer(x)
    assert_serialization_roundtrip(layer, x, atol=1e-5)


# ---------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    "name, shape, reason",
    [
        (TINY, (30, 30, 3), "divisible by its patch size 4"),
        (TINY, (32, 30, 3), "divisible by its patch size 4"),
        (B16, (200, 200, 3), "divisible by its patch size 16"),
        (B16, (224, 232, 1), "divisible by its patch size 16"),
        (TINY, (2, 2, 3), ">= 4"),
        (B16, (8, 8, 3), ">= 16"),
        (TINY, (32, 32, 2), "1 or 3 channels"),
        (B16, (224, 224, 4), "1 or 3 channels"),
        (TINY, (32, 32), "3 ints"),
        (TINY, (32.0, 32, 3), "3 ints"),
    ],
)
def test_bad_input_shape_raises(name, shape, reason):
    message = _error_message(build_encoder, name, shape)
    assert "`input_shape`" in message and f"input_shape={shape!r}" in message
    assert reason in message


@pytest.mark.parametrize("name", [TINY, B16])
def test_synchronized_bn_is_rejected_for_vits(name):
    message = _error_message(build_encoder, name, (32, 32, 3), synchronized_bn=True)
    assert "`synchronized_bn=True`" in message and "no BatchNormalization" in message
    assert name in message
    message = _error_message(build_encoder, name, (32, 32, 3), synchronized_bn=1)
    assert "`synchronized_bn` must be a bool" in message
    model = build_encoder(TINY, (8, 8, 1), synchronized_bn=False, **SMALL)
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    )


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"hidden_dim": 19.0}, "hidden_dim"),
        ({"hidden_dim": True}, "hidden_dim"),
        ({"depth": 0}, "depth"),
        ({"depth": "6"}, "depth"),
        ({"num_heads": -3}, "num_heads"),
        ({"mlp_dim": None}, "mlp_dim"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"dropout_rate": -0.1}, "dropout_rate"),
        ({"dropout_rate": "0.1"}, "dropout_rate"),
        ({"attention_dropout_rate": 1}, "attention_dropout_rate"),
        ({"attention_dropout_rate": float("nan")}, "attention_dropout_rate"),
        ({"pool": "max"}, "pool"),
        ({"pool": None}, "pool"),
    ],
)
def test_bad_vit_kwargs_raise(kwargs, arg):
    ((key, value),) = kwargs.items()
    for fn, args in ((build_encoder, (TINY, IMAGES_32)), (representation_dim, (TINY,))):
        message = _error_message(fn, *args, **kwargs)
        assert f"`{arg}`" in message and f"{key}={value!r}" in message


def test_heads_must_divide_hidden_dim():
    message = _error_message(build_encoder, TINY, IMAGES_32, num_heads=5)
    assert "`hidden_dim`" in message and "`num_heads`" in message
    assert "hidden_dim=192" in message and "num_heads=5" in message
    message = _error_message(representation_dim, TINY, hidden_dim=30, num_heads=4)
    assert "hidden_dim=30" in message and "num_heads=4" in message


def test_unknown_vit_kwargs_raise():
    for kwargs in ({"hidden_dim": 256}, {"depth": 2}, {"patch_size": 8}):
        ((key, value),) = kwargs.items()
        for fn, args in ((build_encoder, (B16, (224, 224, 3))), (representation_dim, (B16,))):
            message = _error_message(fn, *args, **kwargs)
            assert f"{key}={value!r}" in message and B16 in message
    message = _error_message(build_encoder, TINY, IMAGES_32, width=2)
    assert "width=2" in message and TINY in message


@pytest.mark.parametrize(
    "factory, arg",
    [
        (lambda: TransformerBlock(0, 8), "num_heads"),
        (lambda: TransformerBlock(2.0, 8), "num_heads"),
        (lambda: TransformerBlock(2, 0), "mlp_dim"),
        (lambda: TransformerBlock(2, 8, dropout_rate=1.0), "dropout_rate"),
        (lambda: TransformerBlock(2, 8, attention_dropout_rate=-0.5), "attention_dropout_rate"),
        (lambda: TransformerBlock(2, 8, activation="no_such_activation"), "activation"),
        (lambda: TransformerBlock(2, 8, layer_norm_epsilon=0.0), "layer_norm_epsilon"),
        (lambda: ClassToken(initializer="no_such_initializer"), "initializer"),
        (lambda: ClassToken(initializer=None), "initializer"),
        (lambda: PositionEmbedding(initializer=3), "initializer"),
        (lambda: TokenPooling("max"), "mode"),
    ],
)
def test_bad_layer_arguments_raise(factory, arg):
    message = _error_message(factory)
    assert f"`{arg}`" in message and f"{arg}=" in message


def test_layers_reject_bad_input_shapes():
    message = _error_message(TransformerBlock(3, 8), np.zeros((2, 5, 8), "float32"))
    assert "num_heads=3" in message and "input_shape=(2, 5, 8)" in message
    message = _error_message(PositionEmbedding(), keras.Input(shape=(None, 8)))
    assert "known tokens and dim" in message and "input_shape=(None, None, 8)" in message
    message = _error_message(ClassToken(), np.zeros((2, 8), "float32"))
    assert "[batch, tokens, dim]" in message and "input_shape=(2, 8)" in message
    message = _error_message(TokenPooling("mean"), np.zeros((2, 1, 8), "float32"))
    assert "at least 2 tokens" in message and "input_shape=(2, 1, 8)" in message
