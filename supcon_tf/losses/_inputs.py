"""The SupCon losses' shared pieces: option names, `PerAnchorLoss`, argument checks and input validation.

Everything here runs before the maths: the constants that name the options,
the result type, and the checks that turn bad arguments into one-line
`ValueError`s naming the argument (the scalar checks are `supcon_tf._checks`'s).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from supcon_tf import _checks

CONTRAST_MODES = ("all", "one")
VARIANTS = ("out", "in")
IMPLEMENTATIONS = ("auto", "dense", "blockwise")
DENOMINATORS = ("all", "one_positive", "only_negatives", "class_balanced")
# The named weighting rules (module `weights`): serialisable, unlike a `pair_weights` callable.
POSITIVE_WEIGHTINGS = ("jaccard",)
LABEL_KERNELS = ("gaussian",)
MULTI_LABEL_MODES = ("per_label",)
# "auto" switches to the blockwise form from this many contrast rows (views x
# global batch + queue): below it the dense form is as fast and small enough.
# See benchmarks/RESULTS.md for the measurements behind the number.
BLOCKWISE_THRESHOLD = 4096
DEFAULT_BLOCK_SIZE = 256

# Added to logits that are not in A(i). Finite on purpose: -inf would give
# inf - inf = NaN for a row with nothing to contrast, and NaN in the unused
# branch of a tf.where still poisons gradients.
_MASKED_LOGIT = -1e9


class PerAnchorLoss(NamedTuple):
    """Per-anchor SupCon losses.

    Attributes:
      loss: `[num_anchor_samples, anchor_views]` float, L(i) for each anchor;
        0 where the anchor has no positive.
      has_positive: `[num_anchor_samples, anchor_views]` bool, |P(i)| > 0
        (and |N(i)| > 0 with `denominator="only_negatives"`): the anchors
        that count in the mean.
    """

    loss: tf.Tensor
    has_positive: tf.Tensor


def _check_positives_cap(positives_cap):
    if not _checks.is_int(positives_cap) or positives_cap < -1:
        raise ValueError(
            f"`positives_cap` must be an int >= -1 (-1: no cap), received: positives_cap={positives_cap!r}"
        )
    return int(positives_cap)


def _checked_options(temperature, base_temperature, contrast_mode, variant, denominator, positives_cap):
    """The options `supcon_per_anchor_loss` and `SupConLoss` share, checked (a ValueError naming the argument).

    Returns `(temperature, base_temperature, positives_cap)`: a float, a float
    or None (unchanged), an int.
    """
    temperature = _checks.positive_number(temperature, "temperature")
    if base_temperature is not None:
        base_temperature = _checks.positive_number(base_temperature, "base_temperature")
    _checks.choice(contrast_mode, "contrast_mode", CONTRAST_MODES)
    _checks.choice(variant, "variant", VARIANTS)
    _checks.choice(denominator, "denominator", DENOMINATORS)
    return temperature, base_temperature, _check_positives_cap(positives_cap)


def _checked_family(positive_weighting, label_kernel, kernel_bandwidth, multi_label, denominator, positives_cap):
    """The named family options, checked alone and together (one ValueError line naming the argument).

    Returns `kernel_bandwidth` as a float (or None). Shared by
    `supcon_per_anchor_loss` and `SupConLoss`; the checks that need the
    labels are `_validate_family_inputs`'s.
    """
    if positive_weighting is not None:
        _checks.choice(positive_weighting, "positive_weighting", (None,) + POSITIVE_WEIGHTINGS)
    if label_kernel is not None:
        _checks.choice(label_kernel, "label_kernel", (None,) + LABEL_KERNELS)
    if multi_label is not None:
        _checks.choice(multi_label, "multi_label", (None,) + MULTI_LABEL_MODES)
    if label_kernel is None:
        if kernel_bandwidth is not None:
            raise ValueError(
                f"`kernel_bandwidth` needs `label_kernel`, received: kernel_bandwidth={kernel_bandwidth!r} "
                "with label_kernel=None"
            )
    else:
        if kernel_bandwidth is None:
            raise ValueError(f"`label_kernel={label_kernel!r}` needs `kernel_bandwidth` > 0, received: kernel_bandwidth=None")
        kernel_bandwidth = _checks.positive_number(kernel_bandwidth, "kernel_bandwidth")
    named = [(n, v) for n, v in (("positive_weighting", positive_weighting), ("label_kernel", label_kernel),
                                 ("multi_label", multi_label)) if v is not None]
    if denominator == "class_balanced":
        named.append(("denominator", denominator))
    if len(named) > 1:
        raise ValueError(
            "Give at most one of `positive_weighting`, `label_kernel`, `multi_label` and `denominator=\"class_balanced\"`, "
            f"received: {', '.join(f'{n}={v!r}' for n, v in named)}"
        )
    if named and positives_cap >= 0 and named[0][0] in ("multi_label", "denominator"):
        raise ValueError(
            f"`positives_cap` does not combine with {named[0][0]}={named[0][1]!r}, received: positives_cap={positives_cap}"
        )
    return kernel_bandwidth


def _validate_family_inputs(labels, mask, pair_weights, positive_weighting, label_kernel, multi_label, denominator,
                            queue_labels, prototypes, prototype_labels, positives_cap, features):
    """The named options against the tensors: what labels each needs (one ValueError line naming the argument).

    Returns `(prototypes, prototype_labels)` as tensors (or None).
    """
    option = None
    for name, value in (("positive_weighting", positive_weighting), ("label_kernel", label_kernel),
                        ("multi_label", multi_label)):
        if value is not None:
            option = f"{name}={value!r}"
    if denominator == "class_balanced":
        option = 'denominator="class_balanced"'
    if option is not None:
        if mask is not None or pair_weights is not None:
            given = "mask" if mask is not None else "pair_weights"
            raise ValueError(f"`{option.split('=')[0]}` weighs pairs by name: give no `{given}` with {option}")
        if labels is None:
            raise ValueError(f"{option} needs `labels`, received: labels=None")
    multi_hot = positive_weighting is not None or multi_label is not None
    if multi_hot:
        if labels.shape.rank != 2:
            raise ValueError(f"{option} needs [batch, classes] multi-hot `labels`, received: labels with shape {labels.shape}")
        if multi_label is not None and labels.shape[1] is None:
            raise ValueError(f"{option} needs a static number of classes, received: labels with shape {labels.shape}")
        for name, value in (("labels", labels), ("queue_labels", queue_labels)):
            _check_zero_one(value, name, option)
    if label_kernel is not None:
        if not labels.dtype.is_floating:
            raise ValueError(
                f"{option} weighs continuous labels: `labels` must be float values ([batch] or [batch, k]), "
                f"received: labels with dtype {labels.dtype.name} (class ids?)"
            )
        if queue_labels is not None and not tf.convert_to_tensor(queue_labels).dtype.is_floating:
            raise ValueError(f"{option}: `queue_labels` must be float values like `labels`, received: dtype "
                             f"{tf.convert_to_tensor(queue_labels).dtype.name}")
        if tf.executing_eagerly() and not bool(tf.reduce_all(tf.math.is_finite(labels))):
            raise ValueError(f"{option}: `labels` must be finite, received: labels with NaN or Inf entries")
    if denominator == "class_balanced" and labels.shape.rank != 1:
        raise ValueError(f"{option} needs [batch] class ids as `labels`, received: labels with shape {labels.shape}")
    if prototypes is None:
        if prototype_labels is not None:
            raise ValueError("`prototype_labels` needs `prototypes`, received: prototypes=None")
        return None, None
    prototypes = _flatten_trailing(tf.convert_to_tensor(prototypes), 1)
    if labels is None or labels.shape.rank != 1 or mask is not None or pair_weights is not None or (
        option is not None and denominator != "class_balanced"
    ):
        raise ValueError(
            "`prototypes` are class centres: they need [batch] class ids as `labels` (no mask, pair_weights or named "
            f"weighting), received: labels with shape {None if labels is None else labels.shape}"
            + (f" and {option}" if option and denominator != "class_balanced" else "")
        )
    if positives_cap >= 0:
        raise ValueError(f"`positives_cap` does not combine with `prototypes`, received: positives_cap={positives_cap}")
    if prototype_labels is None:
        raise ValueError("`prototypes` need `prototype_labels` ([classes] class ids), received: prototype_labels=None")
    prototype_labels = tf.convert_to_tensor(prototype_labels)
    if prototypes.shape.rank != 2 or (
        features.shape[-1] is not None and prototypes.shape[-1] not in (None, features.shape[-1])
    ):
        raise ValueError(
            f"`prototypes` must be [classes, dim] with dim={features.shape[-1]}, received: prototypes with shape "
            f"{prototypes.shape}"
        )
    if prototype_labels.shape.rank != 1 or (
        prototypes.shape[0] is not None and prototype_labels.shape[0] not in (None, prototypes.shape[0])
    ):
        raise ValueError(
            f"`prototype_labels` must be [classes] = [{prototypes.shape[0]}] class ids, received: prototype_labels "
            f"with shape {prototype_labels.shape}"
        )
    if tf.executing_eagerly() and not bool(tf.reduce_all(tf.math.is_finite(tf.cast(prototypes, tf.float64)))):
        raise ValueError("`prototypes` must be finite, received: prototypes containing NaN or Inf")
    return prototypes, prototype_labels


def _check_zero_one(values, name, option):
    """Eagerly: multi-hot `values` hold only 0 and 1, else a ValueError naming `name` and an offending value."""
    if values is None or not tf.executing_eagerly():
        return
    values = tf.cast(tf.convert_to_tensor(values), tf.float64)
    bad = tf.boolean_mask(values, tf.logical_and(tf.not_equal(values, 0.0), tf.not_equal(values, 1.0)))
    if tf.size(bad) > 0:
        raise ValueError(f"{option} needs multi-hot `{name}` of 0 and 1, received: {name} with an entry {float(bad[0])!r}")


def _check_cap_against_views(positives_cap, features):
    """The cap counts whole samples (all their views): it must be a multiple of the number of views."""
    if positives_cap < 0:
        return
    views = _static_dim(features, 1)
    if views is not None:
        if views > 0 and positives_cap % views != 0:
            raise ValueError(
                f"`positives_cap` must be -1 or a multiple of the number of views ({views}), "
                f"received: positives_cap={positives_cap}"
            )
        return
    tf.debugging.assert_equal(
        tf.math.floormod(positives_cap, tf.maximum(tf.shape(features)[1], 1)),
        0,
        message=f"`positives_cap` must be -1 or a multiple of the number of views, received: positives_cap={positives_cap}",
    )


def _flatten_trailing(tensor, keep):
    """`[d_0, ..., d_{keep-1}, ...]` -> `[d_0, ..., d_{keep-1}, -1]`; a tensor of rank <= keep + 1 is returned as is."""
    rank = tensor.shape.rank
    if rank is None or rank <= keep + 1:
        return tensor
    dynamic = tf.shape(tensor)
    lead = [d if d is not None else dynamic[i] for i, d in enumerate(tensor.shape[:keep])]
    trailing = tensor.shape[keep:]
    return tf.reshape(tensor, lead + [trailing.num_elements() if trailing.is_fully_defined() else -1])


def _static_dim(tensor, axis):
    return tensor.shape[axis] if tensor.shape.rank is not None else None


def _compute_dtype(features):
    return tf.float64 if features.dtype == tf.float64 else tf.float32


def _check_weight_values(weights, name):
    """Eagerly: `weights` (a tensor) are finite and >= 0, else a ValueError naming `name` and the offending value."""
    if tf.size(weights) == 0:
        return
    weights = tf.cast(weights, tf.float64)
    if not bool(tf.reduce_all(tf.math.is_finite(weights))):
        raise ValueError(f"`{name}` must hold finite weights >= 0, received: {name} with NaN or Inf entries")
    smallest = float(tf.reduce_min(weights))
    if smallest < 0:
        raise ValueError(f"`{name}` must hold finite weights >= 0, received: {name} with a negative entry ({smallest})")


def _validate_pair_weights(pair_weights, labels, mask):
    """`pair_weights` is None, or a callable with `labels` to read (and no `mask`, which is weights already)."""
    if pair_weights is None:
        return
    if not callable(pair_weights):
        raise ValueError(
            "`pair_weights` must be None or a callable (anchor_labels, contrast_labels) -> [rows, columns] weights, "
            f"received: pair_weights={pair_weights!r}"
        )
    if mask is not None:
        raise ValueError("Give at most one of `mask` (explicit weights) and `pair_weights`, received both")
    if labels is None:
        raise ValueError(
            "`pair_weights` weighs pairs by their labels and needs `labels`, received: labels=None"
        )


def _validate_queue(features, labels, mask, queue_features, queue_labels):
    if queue_features is None:
        if queue_labels is not None:
            raise ValueError("`queue_labels` needs `queue_features`, received: queue_features=None")
        _validate_mask_columns(features, mask, 0)
        return None, None
    queue_features = _flatten_trailing(tf.convert_to_tensor(queue_features), 1)
    if queue_features.shape.rank != 2 or (
        features.shape[-1] is not None and queue_features.shape[-1] not in (None, features.shape[-1])
    ):
        raise ValueError(
            f"`queue_features` must be [queue_size, dim] with dim={features.shape[-1]}, "
            f"received: queue_features with shape {queue_features.shape}"
        )
    if mask is not None:
        if queue_labels is not None:
            raise ValueError(
                "With a `mask`, its last queue_size columns weigh the queue entries: give no `queue_labels`, "
                f"received: queue_labels with shape {tf.convert_to_tensor(queue_labels).shape}"
            )
        _validate_mask_columns(features, mask, queue_features.shape[0])
        return queue_features, None
    if labels is None:
        return queue_features, None
    if queue_labels is None:
        raise ValueError("`queue_labels` must be given with `labels` and `queue_features`, received: queue_labels=None")
    queue_labels = tf.convert_to_tensor(queue_labels)
    if queue_labels.shape.rank != labels.shape.rank or (
        queue_features.shape[0] is not None
        and queue_labels.shape[0] is not None
        and queue_labels.shape[0] != queue_features.shape[0]
    ):
        raise ValueError(
            f"`queue_labels` must match `labels` in form ({labels.shape.rank}-d) and `queue_features` in length "
            f"({queue_features.shape[0]}), received: queue_labels with shape {queue_labels.shape}"
        )
    return queue_features, queue_labels


def _validate_mask_columns(features, mask, queue_size):
    """A mask has one column per batch sample, then one per queue entry: `[batch, batch + queue_size]`."""
    if mask is None:
        return
    batch = _static_dim(features, 0)
    if batch is None or queue_size is None or mask.shape[1] is None:
        return
    if mask.shape[1] != batch + queue_size:
        expected = f"[batch, batch + queue_size] = [{batch}, {batch + queue_size}]" if queue_size else (
            f"[batch, batch] = [{batch}, {batch}]"
        )
        raise ValueError(f"`mask` must be {expected}, received: mask with shape {mask.shape}")


def _validate_inputs(features, labels, mask, anchor_offset, num_anchor_samples):
    if features.shape.rank != 3:  # rank > 3 was flattened per view before
        raise ValueError(
            "`features` must have rank >= 3, [batch, views, dim] or [batch, views, ...], received: "
            f"features with shape {features.shape}"
        )
    if not features.dtype.is_floating:
        raise ValueError(f"`features` must be a float tensor, received: features with dtype {features.dtype.name}")
    if labels is not None and mask is not None:
        raise ValueError(
            "Give at most one of `labels` and `mask`, received both: "
            f"labels with shape {labels.shape} and mask with shape {mask.shape}"
        )
    batch = _static_dim(features, 0)
    if labels is not None:
        if labels.shape.rank not in (1, 2):
            raise ValueError(
                "`labels` must be [batch] class ids or a [batch, classes] multi-hot matrix, "
                f"received: labels with shape {labels.shape}"
            )
        if batch is not None and labels.shape[0] is not None and labels.shape[0] != batch:
            raise ValueError(
                f"`labels` must have one entry per sample of `features` ({batch}), "
                f"received: labels with shape {labels.shape}"
            )
    if mask is not None:
        if mask.shape.rank != 2:
            raise ValueError(
                f"`mask` must be [batch, batch] (or [batch, batch + queue_size] with a queue), "
                f"received: mask with shape {mask.shape}"
            )
        if not (mask.dtype.is_floating or mask.dtype.is_integer or mask.dtype == tf.bool):
            raise ValueError(f"`mask` must hold real weights, received: mask with dtype {mask.dtype.name}")
        if batch is not None and mask.shape[0] is not None and mask.shape[0] != batch:
            raise ValueError(
                f"`mask` must have one row per sample of `features` ({batch}), received: mask with shape {mask.shape}"
            )
    if not isinstance(anchor_offset, (int, np.integer)) and not tf.is_tensor(anchor_offset):
        raise ValueError(f"`anchor_offset` must be an int, received: anchor_offset={anchor_offset!r}")
    if isinstance(anchor_offset, (int, np.integer)) and anchor_offset < 0:
        raise ValueError(f"`anchor_offset` must be >= 0, received: anchor_offset={anchor_offset}")
    if num_anchor_samples is not None and not tf.is_tensor(num_anchor_samples):
        if not isinstance(num_anchor_samples, (int, np.integer)) or num_anchor_samples < 1:
            raise ValueError(
                f"`num_anchor_samples` must be a positive int, received: num_anchor_samples={num_anchor_samples!r}"
            )
        if (
            batch is not None
            and isinstance(anchor_offset, (int, np.integer))
            and anchor_offset + num_anchor_samples > batch
        ):
            raise ValueError(
                "`anchor_offset + num_anchor_samples` must be <= batch "
                f"({batch}), received: anchor_offset={anchor_offset}, num_anchor_samples={num_anchor_samples}"
            )
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(tf.math.is_finite(features))):
            raise ValueError("`features` must be finite, received: features containing NaN or Inf")
        if mask is not None:
            _check_weight_values(mask, "mask")
