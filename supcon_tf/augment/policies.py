"""The registry of named augmentation policies: `AUGMENTATIONS` and `get_augmentation`."""

import inspect

from supcon_tf.augment.autoaugment import AutoAugmentPolicy
from supcon_tf.augment.randaugment import RandAugmentPolicy, StackedRandAugmentPolicy
from supcon_tf.augment.simclr import NoAugment, SimCLRAugment

__all__ = ["AUGMENTATIONS", "get_augmentation"]

# Named policies; add a class here to make `get_augmentation` know it.
# A policy is constructed as `cls(image_size, **kwargs)` and called as `policy(images, seed)`.
AUGMENTATIONS = {
    "simclr": SimCLRAugment,
    "autoaugment": AutoAugmentPolicy,
    "randaugment": RandAugmentPolicy,
    "stacked_randaugment": StackedRandAugmentPolicy,
    "none": NoAugment,
}


def get_augmentation(name, image_size, **kwargs):
    """Builds the augmentation policy registered under `name`.

    Args:
      name: a key of `AUGMENTATIONS` ("simclr", "autoaugment", "randaugment",
        "stacked_randaugment", "none").
      image_size: output `(height, width)`, or one int for a square output.
      **kwargs: the policy's other constructor arguments.

    Returns:
      A callable `(images [B, H, W, C], seed [2]) -> [B, image_size..., C]` float32.

    Raises:
      ValueError: for an unknown name, or keyword arguments the policy does not take.
    """
    if not isinstance(name, str) or name not in AUGMENTATIONS:
        raise ValueError(
            f"`name` must be one of {sorted(AUGMENTATIONS)}, received: name={name!r}"
        )
    cls = AUGMENTATIONS[name]
    try:
        inspect.signature(cls).bind(image_size, **kwargs)
    except TypeError as error:
        accepted = [k for k in inspect.signature(cls).parameters if k != "image_size"]
        unexpected = ", ".join(f"`{k}`" for k in kwargs if k not in accepted) or "(none)"
        received = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ValueError(
            f"Augmentation {name!r} ({cls.__name__}) takes the keyword arguments {accepted}; "
            f"unexpected: {unexpected}; received: {received} ({error})"
        ) from error
    return cls(image_size, **kwargs)
