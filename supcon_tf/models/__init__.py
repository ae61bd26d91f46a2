"""Keras models of the two-stage protocol: SupConModel (pre-training), LinearProbe and CrossEntropyModel.

Stage 1, `SupConModel` (`models/supcon.py`): encoder + projection head
trained with the SupCon (or SimCLR) loss by a custom `train_step`, so plain
`model.fit` works.
Stage 2, `LinearProbe` (`models/classifiers.py`): the head is dropped, the
encoder frozen and called with `training=False`, and a linear classifier is
trained with cross-entropy, on images or on features cached once.
Baseline, `CrossEntropyModel` (`models/classifiers.py`): the same encoder + a
linear classifier trained end to end with cross-entropy.
"""

from supcon_tf.models._base import EMBEDDING, LOGITS, PROBABILITIES, REPRESENTATION, build_optimizer_state
from supcon_tf.models.classifiers import CrossEntropyModel, LinearProbe
from supcon_tf.models.supcon import METHODS, SupConModel

__all__ = [
    "EMBEDDING",
    "LOGITS",
    "METHODS",
    "PROBABILITIES",
    "REPRESENTATION",
    "CrossEntropyModel",
    "LinearProbe",
    "SupConModel",
    "build_optimizer_state",
]
