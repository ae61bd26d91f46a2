"""Encoder backbones: functional Keras models mapping images to a pooled representation.

Every encoder is a named functional ``keras.Model``:

    inputs:  images, ``[batch, height, width, channels]`` float32 in [0, 1],
             channels 1 or 3;
    outputs: the representation r, ``[batch, rep_dim]`` float (float32, or the
             compute dtype under mixed precision): global average pooling
             for the CNNs, the class token output for the ViTs.

``model.output_shape[-1]`` (or ``representation_dim(name)``, without building
anything) gives ``rep_dim``. The models are built only from stock Keras layers
and ``supcon_tf.layers`` (registered), so ``model.save("x.keras")`` /
``keras.saving.load_model`` round-trip them (a user build function's model
as far as its own layers allow).

Names (``ENCODER_NAMES``):

- ``"resnet18"``, ``"resnet34"``, ``"resnet50"``: CIFAR-style ResNets (He et
  al. 2016, as used for CIFAR by the SupCon and SimCLR code): a 3x3 stride-1
  stem convolution with 64 filters, BN, ReLU and *no* max-pool; four stages of
  widths 64/128/256/512 and strides 1/2/2/2 with [2, 2, 2, 2] basic blocks
  (resnet18), [3, 4, 6, 3] basic blocks (resnet34) or [3, 4, 6, 3] bottleneck
  blocks with expansion 4 (resnet50); a 1x1 convolution + BN projection
  shortcut wherever a block changes the shape. rep_dim 512 / 512 / 2048.
  Strided 3x3 convolutions pad one pixel on every side (PyTorch's
  ``padding=1``) instead of Keras' asymmetric ``"same"``, so the sampled grid
  lines up with the strided 1x1 shortcut. Bottlenecks put the stride on the
  3x3 convolution (ResNet v1.5, as torchvision).
- ``"imagenet_resnet50"``: ``keras.applications.ResNet50(include_top=False,
  weights=None, pooling="avg")`` (ImageNet stem: 7x7 stride-2 conv and max-pool)
  behind a ``CaffeImageNetPreprocessing`` layer that turns [0, 1] RGB (or
  grayscale, repeated to RGB) into the 0-255 BGR mean-subtracted input that
  ``keras.applications.resnet50.preprocess_input`` produces. rep_dim 2048. Its
  BatchNormalization layers keep the keras.applications settings (momentum
  0.99, epsilon 1.001e-5). Weights are always randomly initialised (no
  download).
- ``"small_cnn"``: a three-convolution network for tiny images such as the
  bundled 8x8x1 digits: conv(32w) -> BN -> ReLU -> conv(64w) -> BN -> ReLU ->
  [2x2 max-pool when the smaller spatial side is >= 8] -> conv(128w) -> BN ->
  ReLU -> global average pool, all 3x3 ``"same"`` convolutions, where ``w`` is
  the ``width`` multiplier (default 1). rep_dim ``round(128 * width)``.
- ``"vit_tiny_patch4_32"``, ``"vit_b16"``: Vision Transformers (Dosovitskiy
  et al. 2021, "An Image is Worth 16x16 Words", arXiv 2010.11929), the
  architecture the SupCon paper reports also works with its loss.

  ==================  =====  ======  =====  =====  =====  ===============
  name                patch  hidden  depth  heads  MLP    parameters*
  ==================  =====  ======  =====  =====  =====  ===============
  vit_tiny_patch4_32  4      192     6      3      768    2,691,648
  vit_b16 (ViT-B/16)  16     768     12     12     3072   85,798,656
  ==================  =====  ======  =====  =====  =====  ===============

  (*) For RGB inputs of the reference sizes, 32x32 (64 patches) and 224x224
  (196 patches); the ViT-B/16 count equals the published ViT-Base/16 without
  its classifier. The tiny one is ViT-Ti's width and heads (DeiT) at half its
  depth on 4x4 patches, small enough to train on a CPU at test scale; its
  ``hidden_dim``, ``depth``, ``num_heads`` and ``mlp_dim`` are keyword
  arguments.

  Layout: a fixed ``Rescaling`` from [0, 1] to [-1, 1] (the reference ViT
  input range; no weights); the patch embedding, a ``Conv2D(hidden, patch,
  strides=patch, padding="valid")`` with LeCun-normal kernel, reshaped to
  ``H/patch * W/patch`` tokens (grayscale images are embedded from their one
  channel, no repetition to RGB); a learned class token in front
  (``ClassToken``, zero-initialised); learned position embeddings for all
  ``tokens + 1`` positions (``PositionEmbedding``, normal with stddev 0.02);
  embedding dropout; ``depth`` pre-norm ``TransformerBlock``s (LayerNorm ->
  multi-head self-attention -> residual; LayerNorm -> Dense(MLP) -> GELU ->
  Dense(hidden) -> residual); a final LayerNorm; then ``TokenPooling``: the
  class token (``pool="cls"``, default; ViT's ``z_L^0``) or the mean of the
  patch tokens (``pool="mean"``). LayerNorm epsilon 1e-6. rep_dim = hidden
  (192 / 768). Dropout (``dropout_rate`` on the embeddings, attention output
  and MLP; ``attention_dropout_rate`` on the attention probabilities)
  defaults to 0. Any height and width that are multiples of the patch size
  work (the names give the reference sizes); the position embeddings are
  sized for the ``input_shape`` given, so a built model only takes that
  size.

Conventions for the networks built here (CIFAR ResNets, small CNN):
convolutions use ``kernel_initializer="he_normal"`` and ``use_bias=False``
(the following BN has a shift), BN uses momentum 0.9 and epsilon 1e-5 (the
PyTorch defaults: PyTorch's momentum 0.1 is Keras' 0.9).

``synchronized_bn=True`` makes every BatchNormalization
``BatchNormalization(synchronized=True)``: under a ``tf.distribute`` strategy
the batch statistics are then computed over the global batch, across replicas
(the cross-replica BN the paper's TPU code uses). It applies to every CNN
encoder, ``"imagenet_resnet50"`` included (its BatchNormalization layers are
rebuilt with ``synchronized=True`` by cloning the keras.applications model).
The ViTs have no BatchNormalization (LayerNorm needs no cross-replica
statistics): they accept ``synchronized_bn=False`` and reject ``True``.

Other backbones (``build_encoder`` takes them in place of a name; see
docs/backbones.md):

- ``"keras.applications:<Name>"``, e.g. ``"keras.applications:EfficientNetV2B0"``:
  ``keras.applications.<Name>(include_top=False, weights=None, pooling="avg",
  input_shape=(H, W, 3))`` (random initialisation, nothing is downloaded)
  behind weightless preprocessing layers (``application_preprocessing``)
  that turn the [0, 1] images into what that application documents as its
  input: pixels in [0, 255] passed through the family's own
  ``keras.applications.<family>.preprocess_input`` (caffe BGR mean
  subtraction for ResNet/VGG, [-1, 1] for MobileNet(V2)/ResNetV2/Inception/
  Xception/NASNet, ImageNet mean/std for DenseNet, the identity for
  EfficientNet(V2)/ConvNeXt/MobileNetV3, whose models rescale [0, 255]
  themselves). A 1-channel image is repeated to 3 channels first (the
  applications' preprocessing and stems are defined on RGB), so the backbone
  always sees 3 channels. Height and width must be at least 32 (more for
  some: 75 InceptionV3 / InceptionResNetV2, 71 Xception).
  ``synchronized_bn=True`` rebuilds its BatchNormalization layers
  synchronized, as for ``"imagenet_resnet50"``. Keyword arguments of the
  constructor other than the fixed ones (e.g. ``alpha``, ``minimalistic``)
  pass through.
- ``"<module>:<function>"`` or ``"<path/to/file.py>:<function>"``: the user's
  own build function, imported (this *runs that module's code*) and called
  as ``function(input_shape)``. It must return a ``keras.Model`` from
  ``[batch, H, W, C]`` float images in [0, 1] to ``[batch, dim]``. A model
  that is not a functional model with exactly that static input shape (a
  subclassed model, or one with ``None`` sizes) is wrapped in one, called on
  ``keras.Input(input_shape)``. ``synchronized_bn=True`` is rejected (build
  ``BatchNormalization(synchronized=True)`` in the function instead).

``load_encoder_weights(encoder, path)`` initialises any encoder from a
``.weights.h5`` file (``encoder.save_weights``) or from the encoder of a
``.keras`` model (a SupConModel, a classifier or a bare encoder), after
checking that every variable's shape matches.
"""

import importlib
import importlib.util
import inspect
import numbers
import os
import re
import sys
import warnings

import keras

from supcon_tf.layers import (
    BN_EPSILON,
    BN_MOMENTUM,
    TOKEN_POOLING_MODES,
    VIT_LAYER_NORM_EPSILON,
    CaffeImageNetPreprocessing,
    ClassToken,
    PositionEmbedding,
    TokenPooling,
    TransformerBlock,
)

ENCODER_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "imagenet_resnet50",
    "imagenet_resnet200",
    "small_cnn",
    "vit_tiny_patch4_32",
    "vit_b16",
)

# The other accepted forms of an encoder (module docstring, docs/backbones.md).
APPLICATIONS_PREFIX = "keras.applications:"
ENCODER_FORMS = ("keras.applications:<Name>", "<module>:<function>", "<path/to/file.py>:<function>")
# keras.applications refuses inputs below 32x32 (a few need more; their own
# constructors say how much, and build_encoder reports it).
APPLICATION_MIN_SPATIAL = 32
# Constructor arguments build_encoder fixes (or leaves at their defaults) for every keras.applications
# model; `name` too, as EfficientNetV2 looks its architecture up by its default name.
_APPLICATION_FIXED_ARGS = (
    "include_top", "weights", "input_tensor", "input_shape", "pooling", "classes", "classifier_activation",
    "name", "include_preprocessing",
)

# name -> default architecture of the Vision Transformers (module docstring).
_VITS = {
    "vit_tiny_patch4_32": {
        "patch_size": 4,
        "hidden_dim": 192,
        "depth": 6,
        "num_heads": 3,
        "mlp_dim": 768,
    },
    "vit_b16": {
        "patch_size": 16,
        "hidden_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "mlp_dim": 3072,
    },
}
_VIT_SIZE_KWARGS = ("hidden_dim", "depth", "num_heads", "mlp_dim")
_VIT_OPTION_KWARGS = ("dropout_rate", "attention_dropout_rate", "pool")

# Smallest allowed height/width per encoder. CIFAR ResNets downsample 8x (an
# 8x8 input reaches the last stage as 1x1); keras.applications refuses inputs
# below 32x32; 3x3 convolutions on images smaller than 4x4 see mostly padding.
_MIN_SPATIAL = {
    "resnet18": 8,
    "resnet34": 8,
    "resnet50": 8,
    "imagenet_resnet50": 32,
    "imagenet_resnet200": 32,
    "small_cnn": 4,
    # ViTs: at least one patch (and height, width divisible by the patch size).
    "vit_tiny_patch4_32": _VITS["vit_tiny_patch4_32"]["patch_size"],
    "vit_b16": _VITS["vit_b16"]["patch_size"],
}

# name -> (block kind, blocks per stage)
_CIFAR_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    # ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool), He et al. 2016's
    # 200-layer bottleneck layout; SupCon's strongest ImageNet encoder (81.4%).
    "imagenet_resnet200": ("bottleneck", (3, 24, 36, 3)),
}
_IMAGENET_STEM = ("imagenet_resnet200",)
_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
_BOTTLENECK_EXPANSION = 4

# Keyword arguments each encoder accepts besides `synchronized_bn`.
_ENCODER_KWARGS = {
    "resnet18": (),
    "resnet34": (),
    "resnet50": (),
    "imagenet_resnet50": (),
    "imagenet_resnet200": (),
    "small_cnn": ("width",),
    "vit_tiny_patch4_32": _VIT_SIZE_KWARGS + _VIT_OPTION_KWARGS,
    "vit_b16": _VIT_OPTION_KWARGS,
}


def _validate_name(name, forms=False):
    if not isinstance(name, str) or name not in ENCODER_NAMES:
        other = f", or one of the forms {', '.join(ENCODER_FORMS)}" if forms else ""
        raise ValueError(f"`name` must be one of {ENCODER_NAMES}{other}, received: name={name!r}")


def parse_encoder(name):
    """Splits an encoder string into ``(kind, module, attribute)``, checking only its syntax.

    Nothing is imported. ``kind`` is ``"registered"`` (one of
    ``ENCODER_NAMES``; module and attribute None), ``"application"``
    (``"keras.applications:<Name>"``; module ``"keras.applications"``),
    ``"file"`` (``"<path/to/file.py>:<function>"``; module is the path) or
    ``"module"`` (``"<dotted.module>:<function>"``).

    Raises:
        ValueError: `name` is none of these forms.
    """
    if isinstance(name, str) and name in ENCODER_NAMES:
        return "registered", None, None
    if isinstance(name, str) and ":" in name:
        module, attribute = name.rsplit(":", 1)
        if attribute.isidentifier():
            if module == APPLICATIONS_PREFIX[:-1]:
                return "application", module, attribute
            if module.endswith(".py") and len(module) > 3:
                return "file", module, attribute
            if module and all(part.isidentifier() for part in module.split(".")):
                return "module", module, attribute
    _validate_name(name, forms=True)  # raises


def _validate_kwargs(name, kwargs):
    unknown = sorted(set(kwargs) - set(_ENCODER_KWARGS[name]))
    if unknown:
        raise ValueError(
            f"Encoder {name!r} accepts the keyword arguments "
            f"{list(_ENCODER_KWARGS[name])} (besides `synchronized_bn`), received "
            f"unknown: {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}"
        )


def _validate_width(width):
    if (
        not isinstance(width, numbers.Real)
        or isinstance(width, bool)
        or not (0 < float(width) < float("inf"))
    ):
        raise ValueError(f"`width` must be a positive number, received: width={width!r}")
    return float(width)


def _scaled(channels, width):
    return max(1, int(round(channels * width)))


def _shape_tuple(input_shape):
    """`input_shape` as `(height, width, channels)` ints, channels 1 or 3."""
    if (
        not isinstance(input_shape, (list, tuple))
        or len(input_shape) != 3
        or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in input_shape
        )
    ):
        raise ValueError(
            "`input_shape` must be a tuple of 3 ints (height, width, channels), all positive, "
            f"received: input_shape={input_shape!r}"
        )
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise ValueError(
            "`input_shape` must have 1 or 3 channels (last entry), "
            f"received: input_shape={input_shape!r}"
        )
    return height, width, channels


def _validate_input_shape(name, input_shape):
    height, width, channels = _shape_tuple(input_shape)
    min_spatial = _MIN_SPATIAL[name]
    if height < min_spatial or width < min_spatial:
        raise ValueError(
            f"Encoder {name!r} needs `input_shape` height and width >= {min_spatial}, "
            f"received: input_shape={input_shape!r}"
        )
    if name in _VITS:
        patch = _VITS[name]["patch_size"]
        if height % patch or width % patch:
            raise ValueError(
                f"Encoder {name!r} needs `input_shape` height and width divisible by its "
                f"patch size {patch}, received: input_shape={input_shape!r}"
            )
    return (height, width, channels)


def _positive_int(value, arg):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{arg}` must be a positive int, received: {arg}={value!r}")
    return int(value)


def _vit_config(name, kwargs):
    """The validated, complete ViT architecture: defaults of `name` updated by `kwargs`."""
    config = dict(_VITS[name])
    for arg in _VIT_SIZE_KWARGS:
        if arg in kwargs:
            config[arg] = _positive_int(kwargs[arg], arg)
    if config["hidden_dim"] % config["num_heads"]:
        raise ValueError(
            "`hidden_dim` must be divisible by `num_heads`, received: "
            f"hidden_dim={config['hidden_dim']!r}, num_heads={config['num_heads']!r}"
        )
    for arg in ("dropout_rate", "attention_dropout_rate"):
        rate = kwargs.get(arg, 0.0)
        if (
            not isinstance(rate, numbers.Real)
            or isinstance(rate, bool)
            or not (0.0 <= float(rate) < 1.0)
        ):
            raise ValueError(f"`{arg}` must be a float in [0, 1), received: {arg}={rate!r}")
        config[arg] = float(rate)
    pool = kwargs.get("pool", "cls")
    if not isinstance(pool, str) or pool not in TOKEN_POOLING_MODES:
        raise ValueError(f"`pool` must be one of {TOKEN_POOLING_MODES}, received: pool={pool!r}")
    config["pool"] = pool
    return config


def representation_dim(name, **kwargs):
    """Returns the representation size ``rep_dim`` of an encoder, without building it.

    Args:
        name: str, one of ``ENCODER_NAMES``.
        **kwargs: the encoder's own keyword arguments (see ``build_encoder``);
            ``width`` for ``"small_cnn"`` and ``hidden_dim`` for
            ``"vit_tiny_patch4_32"`` change the size; unknown ones are
            rejected, and all are validated.

    Returns:
        int: the last dimension of the encoder's ``[batch, rep_dim]`` output,
        equal to ``build_encoder(name, ...).output_shape[-1]``.

    Raises:
        ValueError: unknown `name` or keyword argument, or a bad value of one.
    """
    _validate_name(name)
    _validate_kwargs(name, kwargs)
    if name in _VITS:
        return _vit_config(name, kwargs)["hidden_dim"]
    if name in _CIFAR_RESNETS:
        block, _ = _CIFAR_RESNETS[name]
        return _STAGE_WIDTHS[-1] * (_BOTTLENECK_EXPANSION if block == "bottleneck" else 1)
    if name == "imagenet_resnet50":
        return 2048
    return _scaled(128, _validate_width(kwargs.get("width", 1.0)))


def build_encoder(name, input_shape, *, synchronized_bn=False, **kwargs):
    """Builds an encoder: a functional model from images to a representation.

    Args:
        name: str, one of ``ENCODER_NAMES`` (see the module docstring for the
            architectures), ``"keras.applications:<Name>"`` (any
            keras.applications model, randomly initialised), or a user build
            function ``"<module>:<function>"`` / ``"<path/to/file.py>:<function>"``
            (imported, which runs the module, and called as
            ``function(input_shape)``). ``parse_encoder`` checks the syntax.
        input_shape: tuple of 3 ints ``(height, width, channels)``, channels 1
            or 3; height and width at least 8 for the CIFAR ResNets, 32 for
            ``"imagenet_resnet50"``, 4 for ``"small_cnn"``; for the ViTs,
            positive multiples of the patch size (4 for
            ``"vit_tiny_patch4_32"``, reference 32x32; 16 for ``"vit_b16"``,
            reference 224x224).
        synchronized_bn: bool. If True every BatchNormalization layer is
            ``BatchNormalization(synchronized=True)`` (cross-replica batch
            statistics under a distribution strategy; TensorFlow backend).
            The ViTs have no BatchNormalization and reject True.
        **kwargs: encoder-specific options. ``"small_cnn"`` takes ``width``
            (positive number, default 1.0): a multiplier on its 32/64/128
            channels. Both ViTs take ``dropout_rate`` and
            ``attention_dropout_rate`` (floats in [0, 1), default 0.0) and
            ``pool`` (``"cls"``, default: the class token output; or
            ``"mean"``: the mean of the patch tokens after the final
            LayerNorm). ``"vit_tiny_patch4_32"`` also takes the positive ints
            ``hidden_dim`` (default 192, must be divisible by ``num_heads``),
            ``depth`` (6), ``num_heads`` (3) and ``mlp_dim`` (768). The
            ResNets take none. keras.applications models take their
            constructor's own options (e.g. ``alpha``, ``minimalistic``);
            user build functions take none.

    Returns:
        A ``keras.Model`` named ``name`` whose input is ``[batch, *input_shape]``
        float32 images in [0, 1] and whose output is ``[batch, rep_dim]``, with
        ``rep_dim = model.output_shape[-1] = representation_dim(name, **kwargs)``.

    Raises:
        ValueError: unknown `name`, bad `input_shape` (e.g. smaller than the
            encoder's minimum), non-bool `synchronized_bn` (or True for a ViT
            or a user function), unknown/bad keyword arguments; for a user
            function, a module or function that cannot be found, an exception
            while importing or calling it (its type and message), or a
            returned object that is not a model from those images to
            ``[batch, dim]``.

    Example:

    >>> encoder = build_encoder("small_cnn", (8, 8, 1))
    >>> encoder.output_shape
    (None, 128)
    >>> build_encoder("vit_tiny_patch4_32", (32, 32, 3), depth=2).output_shape
    (None, 192)
    """
    kind, module, attribute = parse_encoder(name)
    if not isinstance(synchronized_bn, bool):
        raise ValueError(
            f"`synchronized_bn` must be a bool, received: synchronized_bn={synchronized_bn!r}"
        )
    if kind == "application":
        return _application_encoder(name, attribute, input_shape, synchronized_bn, kwargs)
    if kind in ("file", "module"):
        return _function_encoder(name, kind, module, attribute, input_shape, synchronized_bn, kwargs)
    input_shape = _validate_input_shape(name, input_shape)
    if synchronized_bn and name in _VITS:
        raise ValueError(
            f"Encoder {name!r} has no BatchNormalization (a ViT uses LayerNorm), so "
            "`synchronized_bn=True` has no meaning for it; pass synchronized_bn=False. "
            "Received: synchronized_bn=True"
        )
    _validate_kwargs(name, kwargs)
    if name in _VITS:
        return _vit(name, input_shape, **_vit_config(name, kwargs))
    if name in _CIFAR_RESNETS:
        block, blocks_per_stage = _CIFAR_RESNETS[name]
        return _cifar_resnet(name, input_shape, block, blocks_per_stage, synchronized_bn)
    if name == "imagenet_resnet50":
        return _imagenet_resnet50(input_shape, synchronized_bn)
    width = _validate_width(kwargs.get("width", 1.0))
    return _small_cnn(input_shape, width, synchronized_bn)


# ---------------------------------------------------------------------------
# Building blocks (private; inputs already validated).


def _conv(x, filters, kernel_size, stride, name):
    """kxk convolution without bias; strided 3x3 ones pad 1 pixel on every side."""
    if stride > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(padding=kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _bn(x, synchronized, name):
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=synchronized, name=name
    )(x)


def _shortcut(x, out_channels, stride, synchronized, name):
    """Identity, or a 1x1 conv + BN projection when the block changes the shape."""
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    x = _conv(x, out_channels, 1, stride, name=f"{name}_conv")
    return _bn(x, synchronized, name=f"{name}_bn")


def _basic_block(x, filters, stride, synchronized, name):
    shortcut = _shortcut(x, filters, stride, synchronized, name=f"{name}_shortcut")
    y = _conv(x, filters, 3, stride, name=f"{name}_conv1")
    y = _bn(y, synchronized, name=f"{name}_bn1")
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, filters, 3, 1, name=f"{name}_conv2")
    y = _bn(y, synchronized, name=f"{name}_bn2")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, filters, stride, synchronized, name):
    out_channels = filters * _BOTTLENECK_EXPANSION
    shortcut = _shortcut(x, out_channels, stride, synchronized, name=f"{name}_shortcut")
    y = _conv(x, filters, 1, 1, name=f"{name}_conv1")
    y = _bn(y, synchronized, name=f"{name}_bn1")
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, filters, 3, stride, name=f"{name}_conv2")
    y = _bn(y, synchronized, name=f"{name}_bn2")
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(y, out_channels, 1, 1, name=f"{name}_conv3")
    y = _bn(y, synchronized, name=f"{name}_bn3")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _cifar_resnet(name, input_shape, block, blocks_per_stage, synchronized):
    block_fn = _bottleneck_block if block == "bottleneck" else _basic_block
    inputs = keras.Input(shape=input_shape, name="images")
    if name in _IMAGENET_STEM:
        x = _conv(inputs, 64, 7, 2, name="stem_conv")
        x = _bn(x, synchronized, name="stem_bn")
        x = keras.layers.ReLU(name="stem_relu")(x)
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    else:
        x = _conv(inputs, 64, 3, 1, name="stem_conv")
        x = _bn(x, synchronized, name="stem_bn")
        x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, (width, stride, n_blocks) in enumerate(
        zip(_STAGE_WIDTHS, _STAGE_STRIDES, blocks_per_stage), start=1
    ):
        for b in range(n_blocks):
            x = block_fn(
                x,
                width,
                stride if b == 0 else 1,
                synchronized,
                name=f"stage{stage}_block{b + 1}",
            )
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name=name)


def _small_cnn(input_shape, width, synchronized):
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for i, channels in enumerate((32, 64, 128), start=1):
        if i == 3 and min(input_shape[:2]) >= 8:
            x = keras.layers.MaxPooling2D(pool_size=2, name="pool")(x)
        x = _conv(x, _scaled(channels, width), 3, 1, name=f"conv{i}")
        x = _bn(x, synchronized, name=f"bn{i}")
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def _synchronize_bn(layer):
    """clone_model hook: a fresh copy of `layer`, BatchNormalization made synchronized."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.BatchNormalization):
        config["synchronized"] = True
    return layer.__class__.from_config(config)


def _imagenet_resnet50(input_shape, synchronized):
    backbone = keras.applications.ResNet50(
        include_top=False,
        weights=None,
        pooling="avg",
        input_shape=input_shape[:2] + (3,),
        name="resnet50",
    )
    if synchronized:
        backbone = keras.models.clone_model(backbone, clone_function=_synchronize_bn)
    inputs = keras.Input(shape=input_shape, name="images")
    x = CaffeImageNetPreprocessing(name="caffe_preprocessing")(inputs)
    outputs = backbone(x)
    return keras.Model(inputs, outputs, name="imagenet_resnet50")


def _vit(
    name,
    input_shape,
    patch_size,
    hidden_dim,
    depth,
    num_heads,
    mlp_dim,
    dropout_rate,
    attention_dropout_rate,
    pool,
):
    """ViT (Dosovitskiy et al. 2021, Eq. 1-4) on `input_shape` images; see the module docstring."""
    height, width, _ = input_shape
    num_patches = (height // patch_size) * (width // patch_size)
    inputs = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Rescaling(scale=2.0, offset=-1.0, name="rescale")(inputs)  # [0,1] -> [-1,1]
    x = keras.layers.Conv2D(
        hidden_dim,
        patch_size,
        strides=patch_size,
        padding="valid",
        kernel_initializer="lecun_normal",
        name="patch_embedding",
    )(x)
    x = keras.layers.Reshape((num_patches, hidden_dim), name="patch_tokens")(x)
    x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    x = keras.layers.Dropout(dropout_rate, name="embedding_dropout")(x)
    for i in range(depth):
        x = TransformerBlock(
            num_heads,
            mlp_dim,
            dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            layer_norm_epsilon=VIT_LAYER_NORM_EPSILON,
            name=f"block{i + 1}",
        )(x)
    x = keras.layers.LayerNormalization(epsilon=VIT_LAYER_NORM_EPSILON, name="final_norm")(x)
    outputs = TokenPooling(pool, name="pool")(x)
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------
# keras.applications backbones.


# keras.applications sub-module (family) -> the input convention of its models, i.e. what the family's
# `preprocess_input` does to [0, 255] RGB pixels. Each is rebuilt from stock layers (and the registered
# CaffeImageNetPreprocessing), so a saved encoder loads after a plain `import supcon_tf`;
# tests/test_backbones.py checks every entry against the family's own preprocess_input.
APPLICATION_INPUT_MODES = {
    "resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "resnet_v2": "tf", "mobilenet": "tf", "mobilenet_v2": "tf", "inception_v3": "tf",
    "inception_resnet_v2": "tf", "xception": "tf", "nasnet": "tf",
    "densenet": "torch",
    # These models contain their own Rescaling / Normalization of [0, 255] inputs.
    "efficientnet": "raw", "efficientnet_v2": "raw", "convnext": "raw", "mobilenet_v3": "raw",
}
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # the "torch" convention, on [0, 1] pixels
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def application_preprocessing(family, images):
    """Applies the input convention of a keras.applications family to [0, 1] images (a symbolic tensor).

    The result equals ``keras.applications.<family>.preprocess_input(255 * rgb)``,
    where ``rgb`` is `images` with a single channel repeated to three:
    "caffe" (resnet, vgg16, vgg19: BGR, ImageNet means subtracted), "tf"
    ([-1, 1]), "torch" (densenet: ImageNet mean / std) or "raw" ([0, 255];
    efficientnet, efficientnet_v2, convnext, mobilenet_v3, whose models
    rescale their inputs themselves). See ``APPLICATION_INPUT_MODES``.

    Args:
        family: str, a key of ``APPLICATION_INPUT_MODES`` (``application_family(name)``).
        images: ``[batch, H, W, 1 or 3]`` symbolic tensor (``keras.Input``).

    Returns:
        ``[batch, H, W, 3]`` symbolic tensor; the layers added have no weights.
    """
    mode = APPLICATION_INPUT_MODES.get(family)
    if mode is None:
        raise ValueError(
            f"`family` must be one of {sorted(APPLICATION_INPUT_MODES)} (keras.applications families with a "
            f"known input convention), received: family={family!r}"
        )
    if mode == "caffe":
        return CaffeImageNetPreprocessing(name="caffe_preprocessing")(images)
    x = images
    if images.shape[-1] == 1:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    if mode == "tf":
        return keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus_one_one")(x)
    if mode == "torch":
        return keras.layers.Normalization(
            mean=IMAGENET_MEAN_RGB, variance=[s * s for s in IMAGENET_STD_RGB], name="imagenet_normalization"
        )(x)
    return keras.layers.Rescaling(255.0, name="to_0_255")(x)


def application_family(name):
    """The ``keras.applications`` sub-module (e.g. ``"resnet"``) that defines the model ``name``."""
    constructor = _application_constructor(f"{APPLICATIONS_PREFIX}{name}", name)
    return constructor.__module__.rsplit(".", 1)[-1]


def _application_constructor(spec, name):
    constructor = getattr(keras.applications, name, None)
    if constructor is None or inspect.ismodule(constructor) or not callable(constructor):
        available = sorted(
            n for n in dir(keras.applications)
            if not n.startswith("_") and not inspect.ismodule(getattr(keras.applications, n))
        )
        raise ValueError(
            f"encoder {spec!r}: keras.applications has no model {name!r}; available: {', '.join(available)}"
        )
    return constructor


def _application_encoder(spec, name, input_shape, synchronized, kwargs):
    constructor = _application_constructor(spec, name)
    height, width, _ = _shape_tuple(input_shape)
    if height < APPLICATION_MIN_SPATIAL or width < APPLICATION_MIN_SPATIAL:
        raise ValueError(
            f"encoder {spec!r} needs images of at least {APPLICATION_MIN_SPATIAL}x{APPLICATION_MIN_SPATIAL} "
            f"pixels (raise the image size), received: input_shape={tuple(input_shape)!r}"
        )
    parameters = inspect.signature(constructor).parameters
    unknown = sorted(k for k in kwargs if k in _APPLICATION_FIXED_ARGS or k not in parameters)
    if unknown:
        allowed = [k for k in parameters if k not in _APPLICATION_FIXED_ARGS]
        raise ValueError(
            f"encoder {spec!r} accepts the keyword arguments {allowed} (besides `synchronized_bn`), "
            f"received: {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}"
        )
    family = constructor.__module__.rsplit(".", 1)[-1]
    if family not in APPLICATION_INPUT_MODES:
        raise ValueError(
            f"encoder {spec!r}: the input convention of keras.applications.{family} is not known here; "
            "build it in your own function ('<module>:<function>') with the preprocessing it needs"
        )
    try:
        backbone = constructor(
            include_top=False,
            weights=None,
            pooling="avg",
            input_shape=(height, width, 3),
            **kwargs,
        )
    except ValueError as error:
        minimum = re.search(r"at least (\d+)x(\d+)", str(error))
        if minimum:
            raise ValueError(
                f"encoder {spec!r} needs images of at least {minimum.group(1)}x{minimum.group(2)} pixels "
                f"(raise the image size), received: input_shape={tuple(input_shape)!r}"
            ) from None
        raise ValueError(
            f"encoder {spec!r} cannot be built for input_shape={tuple(input_shape)!r}: "
            f"{' '.join(str(error).split())}"
        ) from error
    if synchronized:
        backbone = keras.models.clone_model(backbone, clone_function=_synchronize_bn)
    inputs = keras.Input(shape=(height, width, input_shape[-1]), name="images")
    outputs = backbone(application_preprocessing(family, inputs))
    return keras.Model(inputs, outputs, name=name.lower())


# ---------------------------------------------------------------------------
# User build functions.


def _one_line(error):
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _import_user_module(spec, kind, module_name):
    """Imports (runs) the module of a user encoder: a dotted module on sys.path, or a .py file."""
    if kind == "file":
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise ValueError(f"encoder {spec!r}: the file {path!r} does not exist")
        name = os.path.splitext(os.path.basename(path))[0]
        loaded = sys.modules.get(name)
        if loaded is not None:
            if os.path.abspath(getattr(loaded, "__file__", "") or "") == path:
                return loaded
            raise ValueError(
                f"encoder {spec!r}: a different module named {name!r} is already imported "
                f"({getattr(loaded, '__file__', None)!r}); rename the file"
            )
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # so that pickling / Keras serialisation can find its classes
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise ValueError(f"encoder {spec!r}: running {path!r} raised {_one_line(error)}") from error
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ValueError(
                f"encoder {spec!r}: no module named {missing!r} on the Python path (add its folder to "
                "PYTHONPATH, or give the file: 'path/to/file.py:<function>')"
            ) from None
        raise ValueError(f"encoder {spec!r}: importing {module_name!r} raised {_one_line(error)}") from error
    except Exception as error:
        raise ValueError(f"encoder {spec!r}: importing {module_name!r} raised {_one_line(error)}") from error


def _static_input_shape(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not isinstance(inputs, list) or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def _function_encoder(spec, kind, module_name, function_name, input_shape, synchronized, kwargs):
    input_shape = _shape_tuple(input_shape)
    if kwargs:
        raise ValueError(
            f"encoder {spec!r} is built by its function alone: it takes no keyword arguments, "
            f"received: {', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))}"
        )
    if synchronized:
        raise ValueError(
            f"encoder {spec!r}: `synchronized_bn=True` is not applied to a user build function; build its "
            "layers with keras.layers.BatchNormalization(synchronized=True) instead"
        )
    module = _import_user_module(spec, kind, module_name)
    function = getattr(module, function_name, None)
    if function is None:
        raise ValueError(
            f"encoder {spec!r}: module {module_name!r} has no attribute {function_name!r}"
        )
    if not callable(function):
        raise ValueError(
            f"encoder {spec!r}: {function_name!r} is not callable (a {type(function).__name__})"
        )
    call = f"{function_name}({input_shape!r})"
    try:
        model = function(input_shape)
    except Exception as error:
        raise ValueError(f"encoder {spec!r}: {call} raised {_one_line(error)}") from error
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"encoder {spec!r}: {call} must return a keras.Model from [batch, H, W, C] images in [0, 1] to "
            f"[batch, dim], returned a {type(model).__name__}"
        )
    static = _static_input_shape(model)
    if static is not None and (
        len(static) != 3 or any(s is not None and s != d for s, d in zip(static, input_shape))
    ):
        raise ValueError(
            f"encoder {spec!r}: {call} returned a model that takes inputs of shape {static}, "
            f"not the images' {input_shape}"
        )
    if static != input_shape:
        inputs = keras.Input(shape=input_shape, name="images")
        try:
            outputs = model(inputs)
        except Exception as error:
            raise ValueError(
                f"encoder {spec!r}: the model of {call} cannot be called on images of shape "
                f"{input_shape}: {_one_line(error)}"
            ) from error
        model = keras.Model(inputs, outputs, name=f"{model.name}_encoder")
    output_shape = model.output_shape
    if (
        isinstance(output_shape, list)
        or len(output_shape) != 2
        or not isinstance(output_shape[-1], int)
    ):
        raise ValueError(
            f"encoder {spec!r}: {call} must return a model with outputs [batch, dim] (pool the "
            f"features), its output shape is {output_shape}"
        )
    return model


# ---------------------------------------------------------------------------
# Initialising an encoder from a file.


def _weights_file_shapes(path):
    """The shapes of the variables stored in a Keras `.weights.h5` file, in file order."""
    import h5py

    shapes = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, item: shapes.append(tuple(item.shape)) if isinstance(item, h5py.Dataset) else None)
    return shapes


def _shape_mismatch(expected, found):
    """A short description of where two lists of variable shapes differ, or None if equal."""
    if len(expected) != len(found):
        return f"the file holds {len(found)} variables, the encoder has {len(expected)}"
    if sorted(expected) != sorted(found):
        for i, (a, b) in enumerate(zip(sorted(expected), sorted(found))):
            if a != b:
                return f"variable shapes differ, e.g. the encoder has {a} where the file has {b}"
    return None


def load_encoder_weights(encoder, path):
    """Initialises `encoder` in place from a weights file or from the encoder of a saved model.

    Args:
        encoder: a built ``keras.Model`` (``build_encoder``).
        path: a ``.weights.h5`` file written by ``encoder.save_weights`` of the
            same architecture, or a ``.keras`` file of a SupConModel, a
            classifier (its ``.encoder`` is taken) or a bare encoder.

    Returns:
        `encoder`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: another extension, an unreadable file, or variables whose
            number or shapes differ from `encoder`'s (nothing is assigned).
    """
    if not isinstance(encoder, keras.Model) or not encoder.built:
        raise ValueError(f"`encoder` must be a built keras.Model, received: encoder={encoder!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"`path` must be a file path, received: path={path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    expected = [tuple(w.shape) for w in encoder.weights]
    hint = "save the weights of an encoder built with the same --encoder and image shape (encoder.save_weights)"
    if path.endswith(".weights.h5"):
        try:
            found = _weights_file_shapes(path)
        except OSError as error:
            raise ValueError(f"weights file {path!r} is not a readable .weights.h5 file: {_one_line(error)}") from None
        mismatch = _shape_mismatch(expected, found)
        if mismatch:
            raise ValueError(f"weights file {path!r} does not fit encoder {encoder.name!r}: {mismatch}; {hint}")
        before = encoder.get_weights()
        problem = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                encoder.load_weights(path)
            except ValueError as error:
                problem = _one_line(error)[:300]
        # Keras only warns (and keeps the fresh values) for parts of the model it finds no group for.
        skipped = [w for w in caught if issubclass(w.category, UserWarning) and "skipping" in str(w.message).lower()]
        if problem is None and skipped:
            problem = " ".join(str(skipped[0].message).split())[:300]
        if problem is not None:
            encoder.set_weights(before)
            raise ValueError(f"weights file {path!r} does not fit encoder {encoder.name!r}: {problem}; {hint}")
        for w in caught:  # anything else is passed on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return encoder
    if path.endswith(".keras"):
        try:
            loaded = keras.saving.load_model(path, compile=False)
        except Exception as error:
            raise ValueError(f"model file {path!r} does not load: {_one_line(error)[:300]}") from error
        source = getattr(loaded, "encoder", loaded)
        if not isinstance(source, keras.Model):
            raise ValueError(f"model file {path!r} holds no encoder (a {type(loaded).__name__})")
        values = source.get_weights()
        found = [tuple(v.shape) for v in values]
        if found != expected:
            mismatch = _shape_mismatch(expected, found) or "the variables come in another order"
            raise ValueError(
                f"the encoder in {path!r} ({source.name!r}) does not fit encoder {encoder.name!r}: {mismatch}"
            )
        encoder.set_weights(values)
        return encoder
    raise ValueError(f"weights file {path!r} must end in .weights.h5 (encoder.save_weights) or .keras (a saved model)")
