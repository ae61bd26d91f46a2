"""ResNet encoders: the CIFAR-stem ResNet-18/34/50 and the ImageNet-stem ResNet-50 and ResNet-200.

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
- ``"imagenet_resnet200"``: the same stages with He et al. 2016's 200-layer
  bottleneck layout [3, 24, 36, 3] (SupCon's strongest ImageNet encoder,
  81.4% top-1) behind the ImageNet stem: a 7x7 stride-2 convolution with 64
  filters, BN, ReLU and a 3x3 stride-2 max-pool. rep_dim 2048.
- ``"imagenet_resnet50"``: ``keras.applications.ResNet50(include_top=False,
  weights=None, pooling="avg")`` (ImageNet stem: 7x7 stride-2 conv and max-pool)
  behind a ``CaffeImageNetPreprocessing`` layer that turns [0, 1] RGB (or
  grayscale, repeated to RGB) into the 0-255 BGR mean-subtracted input that
  ``keras.applications.resnet50.preprocess_input`` produces. rep_dim 2048. Its
  BatchNormalization layers keep the keras.applications settings (momentum
  0.99, epsilon 1.001e-5). Weights are always randomly initialised (no
  download).

The ResNets built here use ``kernel_initializer="he_normal"``, bias-free
convolutions and PyTorch-like BN (``supcon_tf.encoders._common``).
"""

import keras

from supcon_tf.encoders._common import bn, conv
from supcon_tf.encoders.applications import wrap_application

# name -> (block kind, blocks per stage), behind the 3x3 stride-1 CIFAR stem.
CIFAR_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
# name -> (block kind, blocks per stage), behind the ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool).
IMAGENET_RESNETS = {
    "imagenet_resnet200": ("bottleneck", (3, 24, 36, 3)),
}
# Names of the ResNets built here from the tables above (imagenet_resnet50 comes from keras.applications).
RESNETS = {**CIFAR_RESNETS, **IMAGENET_RESNETS}
IMAGENET_RESNET50_DIM = 2048

_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
_BOTTLENECK_EXPANSION = 4


def resnet_representation_dim(name):
    """rep_dim of the ResNet `name` (one of ``RESNETS`` or ``"imagenet_resnet50"``)."""
    if name == "imagenet_resnet50":
        return IMAGENET_RESNET50_DIM
    block, _ = RESNETS[name]
    return _STAGE_WIDTHS[-1] * (_BOTTLENECK_EXPANSION if block == "bottleneck" else 1)


def _shortcut(x, out_channels, stride, synchronized, name):
    """Identity, or a 1x1 conv + BN projection when the block changes the shape."""
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    x = conv(x, out_channels, 1, stride, name=f"{name}_conv")
    return bn(x, synchronized, name=f"{name}_bn")


def _residual_block(x, convs, synchronized, name):
    """ReLU(shortcut(x) + the `convs`, each ``(filters, kernel, stride)``, conv -> BN, ReLU between them)."""
    stride = max(s for _, _, s in convs)
    shortcut = _shortcut(x, convs[-1][0], stride, synchronized, name=f"{name}_shortcut")
    y = x
    for i, (filters, kernel_size, conv_stride) in enumerate(convs, start=1):
        y = conv(y, filters, kernel_size, conv_stride, name=f"{name}_conv{i}")
        y = bn(y, synchronized, name=f"{name}_bn{i}")
        if i < len(convs):
            y = keras.layers.ReLU(name=f"{name}_relu{i}")(y)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _block_convs(block, filters, stride):
    """The ``(filters, kernel, stride)`` convolutions of a basic or a bottleneck (v1.5) block."""
    if block == "bottleneck":
        return ((filters, 1, 1), (filters, 3, stride), (filters * _BOTTLENECK_EXPANSION, 1, 1))
    return ((filters, 3, stride), (filters, 3, 1))


def resnet(name, input_shape, synchronized):
    """The ResNet `name` (one of ``RESNETS``) on `input_shape` images (validated)."""
    block, blocks_per_stage = RESNETS[name]
    inputs = keras.Input(shape=input_shape, name="images")
    if name in IMAGENET_RESNETS:
        x = conv(inputs, 64, 7, 2, name="stem_conv")
        x = bn(x, synchronized, name="stem_bn")
        x = keras.layers.ReLU(name="stem_relu")(x)
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    else:
        x = conv(inputs, 64, 3, 1, name="stem_conv")
        x = bn(x, synchronized, name="stem_bn")
        x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, (width, stride, n_blocks) in enumerate(
        zip(_STAGE_WIDTHS, _STAGE_STRIDES, blocks_per_stage), start=1
    ):
        for b in range(n_blocks):
            convs = _block_convs(block, width, stride if b == 0 else 1)
            x = _residual_block(x, convs, synchronized, name=f"stage{stage}_block{b + 1}")
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name=name)


def imagenet_resnet50(input_shape, synchronized):
    """keras.applications ResNet50 (random weights) behind the caffe preprocessing, on `input_shape` images."""
    backbone = keras.applications.ResNet50(
        include_top=False,
        weights=None,
        pooling="avg",
        input_shape=input_shape[:2] + (3,),
        name="resnet50",
    )
    return wrap_application(backbone, "resnet", input_shape, synchronized, name="imagenet_resnet50")
