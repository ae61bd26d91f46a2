"""Small helpers shared by the encoder families (private): conv/BN blocks, the input-shape check, one-line errors."""

import keras

from supcon_tf._checks import is_int
from supcon_tf.layers import BN_EPSILON, BN_MOMENTUM


def shape_tuple(input_shape):
    """`input_shape` as `(height, width, channels)` ints, channels 1 or 3."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3 or not all(
        is_int(d) and d > 0 for d in input_shape
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


def one_line(error):
    """`error` as ``"<Type>: <message on one line>"``."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def scaled(channels, width):
    """`channels` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def conv(x, filters, kernel_size, stride, name):
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


def bn(x, synchronized, name):
    """BatchNormalization with the PyTorch-like momentum and epsilon (``supcon_tf.layers.BN_*``)."""
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=synchronized, name=name
    )(x)



def encoder_of(model):
    """The encoder of a SupConModel / LinearProbe / CrossEntropyModel (its `.encoder`), or `model` itself.

    The one way the package finds a model's encoder (evaluation, weights files, pre-trained models).
    """
    encoder = getattr(model, "encoder", None)
    return encoder if isinstance(encoder, keras.layers.Layer) else model
