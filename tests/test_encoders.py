"""Tests for supcon_tf.encoders: architectures, rep sizes, synchronized BN, serialisation."""

import keras
import numpy as np
import pytest

from helpers import assert_serialization_roundtrip
from supcon_tf.encoders import ENCODER_NAMES, build_encoder, representation_dim
from supcon_tf.layers import CaffeImageNetPreprocessing

IMAGES_32 = (32, 32, 3)

# Trainable parameters of the CIFAR ResNets without a classifier. These equal
# the well-known PyTorch CIFAR ResNet counts minus the 10-class fc layer
# (ResNet18 11,173,962 - 5,130; ResNet34 21,282,122 - 5,130; ResNet50
# 23,520,842 - 20,490), which pins the block layout, widths and shortcuts.
CIFAR_TRAINABLE_PARAMS = {"resnet18": 11_168_832, "resnet34": 21_276_992, "resnet50": 23_500_352}
BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet50": 16}
PROJECTION_SHORTCUTS = {"resnet18": 3, "resnet34": 3, "resnet50": 4}


def _images(shape, batch=2):
    return np.random.uniform(size=(batch, *shape)).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


def _batch_norms(model):
    return [
        layer
        for layer in _all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _n_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _error_message(fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_encoder_names_and_representation_dims():
    assert ENCODER_NAMES == (
        "resnet18",
        "resnet34",
        "resnet50",
        "imagenet_resnet50",
        "imagenet_resnet200",
        "small_cnn",
        "vit_tiny_patch4_32",
        "vit_b16",
    )
    assert [representation_dim(n) for n in ENCODER_NAMES] == [512, 512, 2048, 2048, 2048, 128, 192, 768]
    assert representation_dim("small_cnn", width=0.5) == 64
    assert representation_dim("small_cnn", width=2) == 256


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        pytest.param("resnet34", marks=pytest.mark.slow),
        pytest.param("resnet50", marks=pytest.mark.slow),
    ],
)
def test_cifar_resnet_builds_and_runs(name):
    model = build_encoder(name, IMAGES_32)
    assert model.name == name
    assert model.input_shape == (None, *IMAGES_32)
    assert model.output_shape == (None, representation_dim(name))
    assert _n_trainable(model) == CIFAR_TRAINABLE_PARAMS[name]
    r = model(_images(IMAGES_32), training=False)
    assert tuple(r.shape) == (2, representation_dim(name))
    assert keras.backend.standardize_dtype(r.dtype) == "float32"
    r = _np(r)
    assert np.all(np.isfinite(r)) and np.all(r >= 0)  # average of ReLU outputs
    assert not np.allclose(r[0], r[1])  # depends on the image


@pytest.mark.parametrize(
    "name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)]
)
def test_cifar_resnet_layout(name):
    model = build_encoder(name, IMAGES_32)
    layers = _all_layers(model)
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1) and stem.filters == 64
    # CIFAR stem: no max-pool anywhere; only 3 stride-2 stages -> 32x32 ends at 4x4.
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in layers)
    assert model.get_layer("avg_pool").input.shape[1:3] == (4, 4)
    assert sum(isinstance(layer, keras.layers.Add) for layer in layers) == BLOCKS[name]
    shortcuts = [c for c in convs if c.name.endswith("_shortcut_conv")]
    assert len(shortcuts) == PROJECTION_SHORTCUTS[name]
    assert all(c.kernel_size == (1, 1) for c in shortcuts)
    for conv in convs:
        assert not conv.use_bias
        assert isinstance(conv.kernel_initializer, keras.initializers.HeNormal)
    for bn in _batch_norms(model):
        assert bn.momentum == 0.9 and bn.epsilon == 1e-5 and not bn.synchronized
    # Stage widths 64/128/256/512 (x4 for bottlenecks) at spatial 32/16/8/4.
    expansion = 4 if name == "resnet50" else 1
    for stage, (width, size) in enumerate(zip((64, 128, 256, 512), (32, 16, 8, 4)), start=1):
        out = model.get_layer(f"stage{stage}_block1_out").output
        assert tuple(out.shape[1:]) == (size, size, width * expansion)


def test_strided_conv_pads_symmetrically_like_pytorch():
    """A strided 3x3 conv sees the pixels the strided 1x1 shortcut samples at its centre."""
    model = build_encoder("resnet18", (8, 8, 1))
    pad = model.get_layer("stage2_block1_conv1_pad")
    assert pad.padding == ((1, 1), (1, 1))
    assert model.get_layer("stage2_block1_conv1").padding == "valid"


@pytest.mark.slow
def test_imagenet_resnet50_builds_and_runs():
    model = build_encoder("imagenet_resnet50", IMAGES_32)
    assert model.name == "imagenet_resnet50"
    assert model.output_shape == (None, 2048)
    assert isinstance(model.layers[1], CaffeImageNetPreprocessing)
    backbone = model.get_layer("resnet50")
    assert backbone.input_shape == (None, 32, 32, 3)
    assert any(isinstance(layer, keras.layers.MaxPooling2D) for layer in _all_layers(backbone))
    r = _np(model(_images(IMAGES_32), training=False))
    assert r.shape == (2, 2048) and np.all(np.isfinite(r))


@pytest.mark.slow
def test_imagenet_resnet50_accepts_grayscale():
    model = build_encoder("imagenet_resnet50", (32, 32, 1))
    assert model.input_shape == (None, 32, 32, 1)
    assert model.get_layer("resnet50").input_shape == (None, 32, 32, 3)
    assert tuple(model(_images((32, 32, 1)), training=False).shape) == (2, 2048)


@pytest.mark.parametrize(
    "shape, pooled", [((8, 8, 1), True), ((16, 16, 1), True), ((4, 4, 3), False)]
)
def test_small_cnn_on_tiny_images(shape, pooled):
    model = build_encoder("small_cnn", shape)
    assert model.name == "small_cnn"
    assert model.output_shape == (None, 128)
    layers = _all_layers(model)
    assert any(isinstance(layer, keras.layers.MaxPooling2D) for layer in layers) == pooled
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    r = _np(model(_images(shape), training=False))
    assert r.shape == (2, 128) and np.all(np.isfinite(r))
    assert not np.allclose(r[0], r[1])


def test_small_cnn_width_scales_channels():
    model = build_encoder("small_cnn", (8, 8, 1), width=0.5)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [16, 32, 64]
    assert model.output_shape == (None, 64) == (None, representation_dim("small_cnn", width=0.5))
    assert tuple(model(_images((8, 8, 1))).shape) == (2, 64)


def test_small_cnn_trains_in_training_mode():
    """training=True uses batch statistics, so outputs differ from inference mode."""
    model = build_encoder("small_cnn", (8, 8, 1))
    x = _images((8, 8, 1), batch=4)
    assert not np.allclose(_np(model(x, training=True)), _np(model(x, training=False)))


@pytest.mark.parametrize(
    "name, shape",
    [
        ("small_cnn", (8, 8, 1)),
        ("resnet18", (8, 8, 3)),
        pytest.param("imagenet_resnet50", IMAGES_32, marks=pytest.mark.slow),
    ],
)
def test_synchronized_bn(name, shape):
    default = build_encoder(name, shape)
    assert _batch_norms(default) and not any(bn.synchronized for bn in _batch_norms(default))
    model = build_encoder(name, shape, synchronized_bn=True)
    bns = _batch_norms(model)
    assert len(bns) == len(_batch_norms(default))
    assert all(bn.synchronized for bn in bns)
    assert all(bn.get_config()["synchronized"] for bn in bns)
    # Same architecture otherwise, and it runs (one replica) in both modes.
    assert model.count_params() == default.count_params()
    x = _images(shape)
    for training in (True, False):
        assert np.all(np.isfinite(_np(model(x, training=training))))


def test_synchronized_bn_survives_keras_file(tmp_path):
    model = build_encoder("small_cnn", (8, 8, 1), synchronized_bn=True)
    path = tmp_path / "encoder.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert all(bn.synchronized for bn in _batch_norms(loaded))


def test_small_cnn_serialization_roundtrip():
    model = build_encoder("small_cnn", (8, 8, 1))
    x = _images((8, 8, 1), batch=4)
    model(x, training=True)  # move BN statistics away from their initial values
    assert_serialization_roundtrip(model, x, atol=1e-5)


@pytest.mark.slow
def test_resnet18_serialization_roundtrip():
    model = build_encoder("resnet18", IMAGES_32)
    x = _images(IMAGES_32)
    model(x, training=True)
    assert_serialization_roundtrip(model, x, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet", "ResNet18", "vit", "", None, 18])
def test_unknown_name_raises(name):
    message = _error_message(build_encoder, name, IMAGES_32)
    assert "`name`" in message and f"name={name!r}" in message
    assert all(valid in message for valid in ENCODER_NAMES)
    assert "`name`" in _error_message(representation_dim, name)


@pytest.mark.parametrize(
    "name, shape, reason",
    [
        ("small_cnn", (8, 8), "3 ints"),
        ("small_cnn", (8, 8, 1, 1), "3 ints"),
        ("small_cnn", [8.0, 8.0, 1.0], "3 ints"),
        ("small_cnn", "8x8x1", "3 ints"),
        ("small_cnn", None, "3 ints"),
        ("small_cnn", (8, 8, True), "3 ints"),
        ("small_cnn", (8, 8, 2), "1 or 3 channels"),
        ("small_cnn", (8, 8, 4), "1 or 3 channels"),
        ("small_cnn", (3, 8, 1), ">= 4"),
        ("resnet18", (4, 4, 3), ">= 8"),
        ("resnet50", (32, 7, 3), ">= 8"),
        ("imagenet_resnet50", (16, 16, 3), ">= 32"),
    ],
)
def test_bad_input_shape_raises(name, shape, reason):
    message = _error_message(build_encoder, name, shape)
    assert "`input_shape`" in message and f"input_shape={shape!r}" in message
    assert reason in message


def test_bad_keyword_arguments_raise():
    message = _error_message(build_encoder, "small_cnn", (8, 8, 1), synchronized_bn="yes")
    assert "`synchronized_bn`" in message and "synchronized_bn='yes'" in message
    message = _error_message(build_encoder, "resnet18", IMAGES_32, width=2)
    assert "width=2" in message and "resnet18" in message
    message = _error_message(build_encoder, "small_cnn", (8, 8, 1), depth=3)
    assert "depth=3" in message
    for width in (0, -1.0, "wide", True, float("nan")):
        message = _error_message(build_encoder, "small_cnn", (8, 8, 1), width=width)
        assert "`width`" in message and f"width={width!r}" in message
        assert "`width`" in _error_message(representation_dim, "small_cnn", width=width)


@pytest.mark.slow
def test_imagenet_resnet200_layout_and_size():
    model = build_encoder("imagenet_resnet200", (64, 64, 3))
    assert model.output_shape == (None, 2048)
    blocks = {layer.name.split("_")[0] + "_" + layer.name.split("_")[1] for layer in model.layers if layer.name.startswith("stage")}
    per_stage = [len([b for b in blocks if b.startswith(f"stage{i}_")]) for i in range(1, 5)]
    assert per_stage == [3, 24, 36, 3]
    # He et al. 2016 (Table in "Identity Mappings"): ResNet-200 has ~64.7M parameters with
    # its 1000-way classifier (2048 * 1000 + 1000 = 2.05M); the backbone here is v1.5 (stride on the 3x3).
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert 62.0e6 < params < 63.5e6, params
    out = model(np.random.rand(1, 64, 64, 3).astype("float32"), training=False)
    assert out.shape == (1, 2048)
