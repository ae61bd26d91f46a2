"""Data augmentation for SupCon: pure, per-sample, stateless TensorFlow image ops and policies.

One module per family:

* `ops`: the image ops (random resized crop, flip, colour jitter, grayscale, resize) and the
  conventions every op and policy follows (batched `[B, H, W, C]` float32 in [0, 1], stateless
  `[2]` seeds, per-sample parameters, no per-sample loops);
* `simclr`: `SimCLRAugment` (SupCon's CIFAR policy) and `NoAugment` (evaluation);
* `autoaugment`: AutoAugment's ops and ImageNet policy, `AutoAugmentPolicy`;
* `randaugment`: `StatelessRandAugment` (Keras 3's RandAugment ops, per sample and stateless),
  `RandAugmentPolicy` and `StackedRandAugmentPolicy` (SupCon's ResNet-200 recipe);
* `policies`: the registry of named policies, `get_augmentation`.

Every public name is re-exported here, e.g. `augment.SimCLRAugment(32)` or
`augment.get_augmentation("autoaugment", 224)`.
"""

from supcon_tf.augment import autoaugment, ops, policies, randaugment, simclr
from supcon_tf.augment.autoaugment import (
    AUTOAUGMENT_IMAGENET_POLICY,
    AUTOAUGMENT_OPS,
    AutoAugmentPolicy,
    auto_augment,
    autoaugment_op,
)
from supcon_tf.augment.ops import (
    color_jitter,
    random_flip_left_right,
    random_grayscale,
    random_resized_crop,
    resize,
    to_float_images,
)
from supcon_tf.augment.policies import AUGMENTATIONS, get_augmentation
from supcon_tf.augment.randaugment import (
    RandAugmentPolicy,
    StackedRandAugmentPolicy,
    StatelessRandAugment,
)
from supcon_tf.augment.simclr import NoAugment, SimCLRAugment

__all__ = [
    *ops.__all__,
    *simclr.__all__,
    *autoaugment.__all__,
    *randaugment.__all__,
    *policies.__all__,
]
