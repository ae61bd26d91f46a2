"""The small CNN encoder (``"small_cnn"``) for tiny images such as the bundled 8x8x1 digits.

conv(32w) -> BN -> ReLU -> conv(64w) -> BN -> ReLU -> [2x2 max-pool when the
smaller spatial side is >= 8] -> conv(128w) -> BN -> ReLU -> global average
pool, all 3x3 ``"same"`` convolutions (He-normal, no bias) with PyTorch-like
BN, where ``w`` is the ``width`` multiplier (default 1). rep_dim
``round(128 * width)``.
"""

import keras

from supcon_tf._checks import positive_number
from supcon_tf.encoders._common import bn, conv, scaled

_CHANNELS = (32, 64, 128)


def small_cnn_representation_dim(width):
    """rep_dim of the small CNN with the width multiplier `width` (validated)."""
    return scaled(_CHANNELS[-1], positive_number(width, "width"))


def small_cnn(input_shape, width, synchronized):
    """The small CNN on `input_shape` images (validated) with the width multiplier `width` (validated here)."""
    width = positive_number(width, "width")
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for i, channels in enumerate(_CHANNELS, start=1):
        if i == 3 and min(input_shape[:2]) >= 8:
            x = keras.layers.MaxPooling2D(pool_size=2, name="pool")(x)
        x = conv(x, scaled(channels, width), 3, 1, name=f"conv{i}")
        x = bn(x, synchronized, name=f"bn{i}")
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name="small_cnn")
