"""Tensor helpers shared by the augmentation ops (private to `supcon_tf.augment`)."""

import tensorflow as tf

# ITU-R 601-2 luma weights, as torchvision uses them (they sum to 1, so a gray image keeps its luma;
# `tf.image.rgb_to_grayscale` rounds them to 0.2989, 0.5870, 0.1140).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(images):
    """`[B, H, W, C]` float32 -> `[B, H, W, 1]` float32 luma (the image itself if C == 1)."""
    if images.shape[-1] == 1:
        return images
    weights = tf.constant(LUMA_WEIGHTS, tf.float32)
    return tf.reduce_sum(images * weights, axis=-1, keepdims=True)


def per_sample(values):
    """`[B]` -> `[B, 1, 1, 1]`, to broadcast a per-sample value over an image batch."""
    return tf.reshape(values, [-1, 1, 1, 1])
