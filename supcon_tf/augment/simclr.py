"""The SimCLR augmentation policy (SupCon's CIFAR recipe) and `NoAugment`, its evaluation twin.

The SimCLR policy follows the augmentation of Chen et al. 2020 that SupCon
(Khosla et al. 2020, Sec. 4 and App. B) uses for CIFAR: random resized crop
(scale 0.2-1), horizontal flip, colour jitter 0.4/0.4/0.4/0.1 applied with
p 0.8, grayscale with p 0.2.
"""

from supcon_tf._checks import as_size
from supcon_tf.augment._checks import check_nonnegative, check_probability
from supcon_tf.augment._policy_base import Augmentation, CropFlipAugmentation
import tensorflow as tf

from supcon_tf.augment.ops import color_transform, jitter_draws, resize

__all__ = ["SimCLRAugment", "NoAugment"]


class SimCLRAugment(CropFlipAugmentation):
    """SimCLR-style augmentation: random resized crop -> flip -> colour jitter -> grayscale.

    The policy of SimCLR (Chen et al. 2020) that SupCon uses for CIFAR
    (Khosla et al. 2020, App. B), with all random parameters per sample and
    stateless.

    Args:
      image_size: output `(height, width)`, or one int for a square output.
      crop_scale: `(lo, hi)` area-fraction range of the random resized crop.
      flip: whether to flip horizontally with probability 0.5.
      brightness: colour-jitter brightness strength (>= 0).
      contrast: colour-jitter contrast strength (>= 0).
      saturation: colour-jitter saturation strength (>= 0).
      hue: colour-jitter hue strength (in [0, 0.5]).
      jitter_prob: probability that a sample is colour-jittered.
      grayscale_prob: probability that a sample is converted to grayscale.

    Called as `policy(images, seed)` (conventions: `supcon_tf.augment.ops`); returns
    `[B, image_size[0], image_size[1], C]` float32 in [0, 1].

    Example:
      >>> augment = SimCLRAugment(32)
      >>> views = augment(images, tf.constant([0, 1]))  # [B, 32, 32, C]
    """

    def __init__(
        self,
        image_size,
        *,
        crop_scale=(0.2, 1.0),
        flip=True,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        jitter_prob=0.8,
        grayscale_prob=0.2,
    ):
        super().__init__(image_size, crop_scale=crop_scale, flip=flip)
        self.brightness = check_nonnegative(brightness, "brightness")
        self.contrast = check_nonnegative(contrast, "contrast")
        self.saturation = check_nonnegative(saturation, "saturation")
        self.hue = check_nonnegative(hue, "hue", maximum=0.5)
        self.jitter_prob = check_probability(jitter_prob, "jitter_prob")
        self.grayscale_prob = check_probability(grayscale_prob, "grayscale_prob")

    def __call__(self, images, seed):
        images, (jitter_seed, gray_seed) = self._crop_and_flip(images, seed, 4)
        batch, rgb = tf.shape(images)[0], images.shape[-1] == 3
        jitter = gray = None
        if self.jitter_prob > 0.0:  # the draws of `ops.color_jitter`
            jitter = jitter_draws(
                batch, jitter_seed, brightness=self.brightness, contrast=self.contrast,
                saturation=self.saturation, hue=self.hue, p=self.jitter_prob, rgb=rgb,
            )
        if self.grayscale_prob > 0.0 and rgb:  # the draw of `ops.random_grayscale`
            gray = tf.random.stateless_uniform([batch], gray_seed) < self.grayscale_prob
        if jitter is None and gray is None:
            return images
        # Jitter and grayscale in one XLA computation, one sample at a time (`ops.color_transform`).
        return color_transform(images, jitter, gray, use_hue=rgb and self.hue > 0.0)


class NoAugment(Augmentation):
    """No augmentation: converts to float32 [0, 1] and resizes bilinearly to `image_size`.

    Args:
      image_size: output `(height, width)`, or one int for a square output.

    Call arguments:
      images: `[B, H, W, C]` uint8 in [0, 255] or float32 in [0, 1], C in {1, 3}.
      seed: ignored (accepted so that every policy has the same call signature).

    Returns:
      `[B, image_size[0], image_size[1], C]` float32 in [0, 1].
    """

    def __init__(self, image_size):
        self.image_size = as_size(image_size, "image_size")

    def __call__(self, images, seed=None):
        del seed  # Deterministic.
        return resize(images, self.image_size)
