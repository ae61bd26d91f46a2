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
"""

import numbers

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
    """Builds a named encoder: a functional model from images to a representation.

    Args:
        name: str, one of ``ENCODER_NAMES`` (see the module docstring for the
            architectures).
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
            ResNets take none.

    Returns:
        A ``keras.Model`` named ``name`` whose input is ``[batch, *input_shape]``
        float32 images in [0, 1] and whose output is ``[batch, rep_dim]``, with
        ``rep_dim = model.output_shape[-1] = representation_dim(name, **kwargs)``.

    Raises:
        ValueError: unknown `name`, bad `input_shape`, non-bool
            `synchronized_bn` (or True for a ViT), or unknown/bad keyword
            arguments.

    Example:

    >>> encoder = build_encoder("small_cnn", (8, 8, 1))
    >>> encoder.output_shape
    (None, 128)
    >>> build_encoder("vit_tiny_patch4_32", (32, 32, 3), depth=2).output_shape
    (None, 192)
    """
    _validate_name(name)
    input_shape = _validate_input_shape(name, input_shape)
    if not isinstance(synchronized_bn, bool):
        raise ValueError(
            f"`synchronized_bn` must be a bool, received: synchronized_bn={synchronized_bn!r}"
        )
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
