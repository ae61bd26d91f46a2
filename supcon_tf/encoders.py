"""Encoder backbones: functional Keras models mapping images to a pooled representation.

Every encoder is a named functional ``keras.Model``:

    inputs:  images, ``[batch, height, width, channels]`` float32 in [0, 1],
             channels 1 or 3;
    outputs: the representation r, ``[batch, rep_dim]`` float (float32, or the
             compute dtype under mixed precision), taken after global average
             pooling.

``model.output_shape[-1]`` (or ``representation_dim(name)``, without building
anything) gives ``rep_dim``. The models are built only from stock Keras layers
and ``supcon_tf.layers`` (registered), so ``model.save("x.keras")`` /
``keras.saving.load_model`` round-trip them.

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

Conventions for the networks built here (CIFAR ResNets, small CNN):
convolutions use ``kernel_initializer="he_normal"`` and ``use_bias=False``
(the following BN has a shift), BN uses momentum 0.9 and epsilon 1e-5 (the
PyTorch defaults: PyTorch's momentum 0.1 is Keras' 0.9).

``synchronized_bn=True`` makes every BatchNormalization
``BatchNormalization(synchronized=True)``: under a ``tf.distribute`` strategy
the batch statistics are then computed over the global batch, across replicas
(the cross-replica BN the paper's TPU code uses). It applies to every encoder,
``"imagenet_resnet50"`` included (its BatchNormalization layers are rebuilt
with ``synchronized=True`` by cloning the keras.applications model).
"""

import numbers

import keras

from supcon_tf.layers import BN_EPSILON, BN_MOMENTUM, CaffeImageNetPreprocessing

ENCODER_NAMES = ("resnet18", "resnet34", "resnet50", "imagenet_resnet50", "small_cnn")

# Smallest allowed height/width per encoder. CIFAR ResNets downsample 8x (an
# 8x8 input reaches the last stage as 1x1); keras.applications refuses inputs
# below 32x32; 3x3 convolutions on images smaller than 4x4 see mostly padding.
_MIN_SPATIAL = {
    "resnet18": 8,
    "resnet34": 8,
    "resnet50": 8,
    "imagenet_resnet50": 32,
    "small_cnn": 4,
}

# name -> (block kind, blocks per stage)
_CIFAR_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
_BOTTLENECK_EXPANSION = 4

# Keyword arguments each encoder accepts besides `synchronized_bn`.
_ENCODER_KWARGS = {
    "resnet18": (),
    "resnet34": (),
    "resnet50": (),
    "imagenet_resnet50": (),
    "small_cnn": ("width",),
}


def _validate_name(name):
    if not isinstance(name, str) or name not in ENCODER_NAMES:
        raise ValueError(
            f"`name` must be one of {ENCODER_NAMES}, received: name={name!r}"
        )


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


def _validate_input_shape(name, input_shape):
    if (
        not isinstance(input_shape, (list, tuple))
        or len(input_shape) != 3
        or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in input_shape
        )
    ):
        raise ValueError(
            "`input_shape` must be a tuple of 3 ints (height, width, channels), "
            f"received: input_shape={input_shape!r}"
        )
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise ValueError(
            "`input_shape` must have 1 or 3 channels (last entry), "
            f"received: input_shape={input_shape!r}"
        )
    min_spatial = _MIN_SPATIAL[name]
    if height < min_spatial or width < min_spatial:
        raise ValueError(
            f"Encoder {name!r} needs `input_shape` height and width >= {min_spatial}, "
            f"received: input_shape={input_shape!r}"
        )
    return (height, width, channels)


def representation_dim(name, **kwargs):
    """Returns the representation size ``rep_dim`` of an encoder, without building it.

    Args:
        name: str, one of ``ENCODER_NAMES``.
        **kwargs: the encoder's own keyword arguments that change its size
            (``width`` for ``"small_cnn"``); others are rejected.

    Returns:
        int: the last dimension of the encoder's ``[batch, rep_dim]`` output,
        equal to ``build_encoder(name, ...).output_shape[-1]``.

    Raises:
        ValueError: unknown `name` or keyword argument, or a bad `width`.
    """
    _validate_name(name)
    _validate_kwargs(name, kwargs)
    if name in _CIFAR_RESNETS:
        block, _ = _CIFAR_RESNETS[name]
        return _STAGE_WIDTHS[-1] * (_BOTTLENECK_EXPANSION if block == "bottleneck" else 1)
    if name == "imagenet_resnet50":
        return 2048
    return _scaled(128, _validate_width(kwargs.get("width", 1.0)))


def build_encoder(name, input_shape, *, synchronized_bn=False, **kwargs):
    """Builds a named encoder: a functional model from images to a pooled representation.

    Args:
        name: str, one of ``ENCODER_NAMES`` (see the module docstring for the
            architectures).
        input_shape: tuple of 3 ints ``(height, width, channels)``, channels 1
            or 3; height and width at least 8 for the CIFAR ResNets, 32 for
            ``"imagenet_resnet50"``, 4 for ``"small_cnn"``.
        synchronized_bn: bool. If True every BatchNormalization layer is
            ``BatchNormalization(synchronized=True)`` (cross-replica batch
            statistics under a distribution strategy; TensorFlow backend).
        **kwargs: encoder-specific options. ``"small_cnn"`` takes ``width``
            (positive number, default 1.0): a multiplier on its 32/64/128
            channels. The other encoders take none.

    Returns:
        A ``keras.Model`` named ``name`` whose input is ``[batch, *input_shape]``
        float32 images in [0, 1] and whose output is ``[batch, rep_dim]``, with
        ``rep_dim = model.output_shape[-1] = representation_dim(name, **kwargs)``.

    Raises:
        ValueError: unknown `name`, bad `input_shape`, non-bool
            `synchronized_bn`, or unknown/bad keyword arguments.

    Example:

    >>> encoder = build_encoder("small_cnn", (8, 8, 1))
    >>> encoder.output_shape
    (None, 128)
    """
    _validate_name(name)
    input_shape = _validate_input_shape(name, input_shape)
    if not isinstance(synchronized_bn, bool):
        raise ValueError(
            f"`synchronized_bn` must be a bool, received: synchronized_bn={synchronized_bn!r}"
        )
    _validate_kwargs(name, kwargs)
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
