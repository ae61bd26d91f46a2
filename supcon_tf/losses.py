"""The SupCon loss family: pure per-anchor loss functions and a thin, serialisable Keras `Loss` wrapper.

Notation (Khosla et al., 2020, arXiv 2004.11362, and ../shared/DESIGN.md):
a batch of B samples is seen in V views; the embeddings are `features`
`[B, V, D]`. Every embedding of the contrast set (all B*V of them) is indexed
view-major, row `v * B + b`. For anchor i, A(i) is the contrast set without i
itself and P(i) the members of A(i) that are positives of i: same label
(integer `labels`), a shared class (multi-hot `labels`), whatever `mask` says,
or, with neither, only the other views of the same sample (SimCLR's NT-Xent).

    L_out(i) = -(tau / base_tau) / |P(i)| * sum_{p in P(i)} log softmax_{a in A(i)}(z_i.z_a / tau)[p]   (eq. 2)
    L_in(i)  = -(tau / base_tau) * log( 1/|P(i)| * sum_{p in P(i)} softmax_{a in A(i)}(z_i.z_a / tau)[p] )  (eq. 3)

The batch loss is the mean of L(i) over anchors with |P(i)| > 0. Anchors
without positives are excluded (and reported by the per-anchor form); a batch
where no anchor has a positive gives 0 with zero gradients. The
self-similarity is masked with a large finite negative number *before* a
row-wise log-sum-exp, so nothing overflows down to tau = 0.005 in float32 and
no inf/NaN ever reaches a gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

CONTRAST_MODES = ("all", "one")
VARIANTS = ("out", "in")

# Added to logits that are not in A(i). Finite on purpose: -inf would give
# inf - inf = NaN for a row with nothing to contrast, and NaN in the unused
# branch of a tf.where still poisons gradients.
_MASKED_LOGIT = -1e9


class PerAnchorLoss(NamedTuple):
    """Per-anchor SupCon losses.

    Attributes:
      loss: `[num_anchor_samples, anchor_views]` float, L(i) for each anchor;
        0 where the anchor has no positive.
      has_positive: `[num_anchor_samples, anchor_views]` bool, |P(i)| > 0.
    """

    loss: tf.Tensor
    has_positive: tf.Tensor


def _check_positive_number(name, value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, received: {name}={value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, received: {name}={value!r}")
    return number


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, received: {name}={value!r}")
    return value


def _static_dim(tensor, axis):
    return tensor.shape[axis] if tensor.shape.rank is not None else None


def _compute_dtype(features):
    return tf.float64 if features.dtype == tf.float64 else tf.float32


def _sample_positive_mask(labels, mask, num_samples, dtype):
    """Returns the sample-level positive mask `[N, N]` (diagonal included).

    The diagonal says whether the *other views* of a sample are its positives;
    the anchor itself is removed later by the self-mask.
    """
    if mask is not None:
        return tf.cast(mask, dtype)
    if labels is None:
        return tf.eye(num_samples, dtype=dtype)
    if labels.shape.rank == 1:
        return tf.cast(tf.equal(labels[:, None], labels[None, :]), dtype)
    # Multi-hot [N, C]: positives share at least one class.
    multi_hot = tf.cast(labels, dtype)
    return tf.cast(tf.matmul(multi_hot, multi_hot, transpose_b=True) > 0, dtype)


def _cross_positive_mask(row_labels, column_labels, dtype):
    """`[rows, columns]` 1 where a row's label matches a column's (shared class for multi-hot)."""
    if row_labels.shape.rank == 1:
        return tf.cast(tf.equal(row_labels[:, None], tf.cast(column_labels, row_labels.dtype)[None, :]), dtype)
    product = tf.matmul(tf.cast(row_labels, dtype), tf.cast(column_labels, dtype), transpose_b=True)
    return tf.cast(product > 0, dtype)


def _validate_queue(features, labels, mask, queue_features, queue_labels):
    if queue_features is None:
        if queue_labels is not None:
            raise ValueError("`queue_labels` needs `queue_features`, received: queue_features=None")
        return None, None
    queue_features = tf.convert_to_tensor(queue_features)
    if queue_features.shape.rank != 2 or (
        features.shape[-1] is not None and queue_features.shape[-1] not in (None, features.shape[-1])
    ):
        raise ValueError(
            f"`queue_features` must be [queue_size, dim] with dim={features.shape[-1]}, "
            f"received: queue_features with shape {queue_features.shape}"
        )
    if mask is not None:
        raise ValueError("A memory queue needs `labels` (or none), not a `mask`; received: mask and queue_features")
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


def _validate_inputs(features, labels, mask, anchor_offset, num_anchor_samples):
    if features.shape.rank != 3:
        raise ValueError(
            "`features` must have rank 3, [batch, views, dim], received: "
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
            raise ValueError(f"`mask` must be [batch, batch], received: mask with shape {mask.shape}")
        if batch is not None and any(d is not None and d != batch for d in mask.shape):
            raise ValueError(
                f"`mask` must be [batch, batch] with batch={batch}, received: mask with shape {mask.shape}"
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
        if mask is not None and bool(tf.reduce_any(tf.cast(mask, tf.float32) < 0)):
            raise ValueError("`mask` must be non-negative, received: a mask with negative entries")


def supcon_per_anchor_loss(
    features,
    labels=None,
    mask=None,
    *,
    temperature=0.1,
    base_temperature=None,
    contrast_mode="all",
    variant="out",
    normalize=False,
    anchor_offset=0,
    num_anchor_samples=None,
    queue_features=None,
    queue_labels=None,
):
    """SupCon loss of every anchor, and which anchors have a positive.

    Args:
      features: `[batch, views, dim]` float (any float dtype; computed in
        float32, or float64 for float64 input). The projected embeddings;
        expected L2-normalised unless `normalize=True`.
      labels: optional `[batch]` integer class ids (any values; equality
        defines positives) or `[batch, classes]` multi-hot matrix (positives
        share at least one class).
      mask: optional `[batch, batch]` non-negative sample-level positive mask;
        `mask[i, j] > 0` makes every view of sample j a positive of every view
        of sample i (the anchor itself is always excluded). Entries act as
        weights in both variants. Give at most one of `labels` and `mask`; with
        neither, positives are the other views of the same sample (SimCLR).
      temperature: tau > 0.
      base_temperature: the loss is multiplied by `temperature /
        base_temperature`. Default `None` means equal to `temperature`, i.e.
        eq. 2 / eq. 3 of the paper exactly, unscaled. (The PyTorch reference
        uses 0.07/0.07, the same thing; a different value only rescales the
        gradients, like a learning-rate change.)
      contrast_mode: `"all"`: every view is an anchor; `"one"`: only view 0.
      variant: `"out"` (eq. 2, summation outside the log; the paper's loss)
        or `"in"` (eq. 3).
      normalize: L2-normalise `features` along `dim` first.
      anchor_offset: the anchors are the samples
        `[anchor_offset, anchor_offset + num_anchor_samples)` of `features`;
        the contrast set is always all of `features`. Used for cross-replica
        training, where `features` is the gathered global batch.
      num_anchor_samples: number of anchor samples; default: all of them.
      queue_features: optional `[K, dim]` extra contrast entries (a memory
        queue of earlier embeddings). They join A(i) for every anchor, carry
        no gradient (`stop_gradient`), and are positives by `queue_labels`.
        Normalised like `features` when `normalize=True`.
      queue_labels: `[K]` ids or `[K, classes]` multi-hot, in the same form
        as `labels`; required when `labels` is given. Without `labels`
        (SimCLR) every queue entry is a negative. Not supported with `mask`.

    Returns:
      `PerAnchorLoss(loss, has_positive)`, both
      `[num_anchor_samples, anchor_views]` (anchor_views is `views` for
      `"all"` and 1 for `"one"`).

    Raises:
      ValueError: for a wrong rank or dtype, both `labels` and `mask`, a batch
        mismatch, a non-positive temperature, non-finite features (checked
        when running eagerly), an unknown `contrast_mode` or `variant`.
    """
    temperature = _check_positive_number("temperature", temperature)
    base_temperature = (
        temperature if base_temperature is None else _check_positive_number("base_temperature", base_temperature)
    )
    _check_choice("contrast_mode", contrast_mode, CONTRAST_MODES)
    _check_choice("variant", variant, VARIANTS)
    features = tf.convert_to_tensor(features)
    labels = None if labels is None else tf.convert_to_tensor(labels)
    mask = None if mask is None else tf.convert_to_tensor(mask)
    _validate_inputs(features, labels, mask, anchor_offset, num_anchor_samples)
    queue_features, queue_labels = _validate_queue(features, labels, mask, queue_features, queue_labels)

    dtype = _compute_dtype(features)
    features = tf.cast(features, dtype)
    if normalize:
        features = tf.math.l2_normalize(features, axis=-1, epsilon=1e-12)

    shape = tf.shape(features)
    num_samples, num_views, dim = shape[0], shape[1], shape[2]
    if num_anchor_samples is None:
        num_anchor = num_samples - anchor_offset
    else:
        num_anchor = tf.cast(num_anchor_samples, tf.int32)
    anchor_views = 1 if contrast_mode == "one" else num_views

    # Contrast set, view-major: row v * N + s.
    contrast = tf.reshape(tf.transpose(features, [1, 0, 2]), [-1, dim])
    # Anchors, view-major over the anchor samples: row v * b + s_local.
    anchor_block = features[anchor_offset : anchor_offset + num_anchor, :anchor_views]
    anchors = tf.reshape(tf.transpose(anchor_block, [1, 0, 2]), [-1, dim])

    sample_mask = _sample_positive_mask(labels, mask, num_samples, dtype)
    sample_mask = sample_mask[anchor_offset : anchor_offset + num_anchor]  # [b, N]
    positive = tf.tile(sample_mask, [anchor_views, num_views])  # [Va*b, V*N]

    # Index of each anchor in the contrast set, to remove it from A(i) and P(i).
    view_ids = tf.repeat(tf.range(anchor_views), num_anchor)
    sample_ids = tf.tile(tf.range(num_anchor), [anchor_views]) + anchor_offset
    self_index = view_ids * num_samples + sample_ids
    not_self = 1.0 - tf.one_hot(self_index, num_views * num_samples, dtype=dtype)
    positive = positive * not_self

    if queue_features is not None:
        queue = tf.stop_gradient(tf.cast(queue_features, dtype))
        if normalize:
            queue = tf.math.l2_normalize(queue, axis=-1, epsilon=1e-12)
        if labels is None:
            queue_positive = tf.zeros([tf.shape(anchors)[0], tf.shape(queue)[0]], dtype)
        else:
            anchor_labels = labels[anchor_offset : anchor_offset + num_anchor]
            queue_positive = tf.tile(_cross_positive_mask(anchor_labels, queue_labels, dtype), [anchor_views, 1])
        contrast = tf.concat([contrast, queue], axis=0)
        positive = tf.concat([positive, queue_positive], axis=1)
        not_self = tf.concat([not_self, tf.ones_like(queue_positive)], axis=1)

    logits = tf.matmul(anchors, contrast, transpose_b=True) / tf.constant(temperature, dtype)
    masked_logits = tf.where(not_self > 0, logits, tf.constant(_MASKED_LOGIT, dtype))
    log_normaliser = tf.reduce_logsumexp(masked_logits, axis=1)  # log sum_{a in A(i)} exp

    num_positive = tf.reduce_sum(positive, axis=1)
    has_positive = num_positive > 0
    safe_num_positive = tf.where(has_positive, num_positive, tf.ones_like(num_positive))
    if variant == "out":
        mean_log_prob = tf.reduce_sum(positive * logits, axis=1) / safe_num_positive - log_normaliser
    else:
        # log sum_p w_p exp(logit_p), without ever taking log 0 on a selected entry.
        safe_weight = tf.where(positive > 0, positive, tf.ones_like(positive))
        positive_logits = tf.where(positive > 0, logits + tf.math.log(safe_weight), tf.constant(_MASKED_LOGIT, dtype))
        mean_log_prob = (
            tf.reduce_logsumexp(positive_logits, axis=1) - tf.math.log(safe_num_positive) - log_normaliser
        )
    loss = -(temperature / base_temperature) * mean_log_prob
    loss = tf.where(has_positive, loss, tf.zeros_like(loss))

    to_sample_major = lambda t: tf.transpose(tf.reshape(t, [anchor_views, num_anchor]))  # noqa: E731
    return PerAnchorLoss(loss=to_sample_major(loss), has_positive=to_sample_major(has_positive))


def reduce_per_anchor(per_anchor):
    """Mean of `per_anchor.loss` over anchors with a positive; 0 when there are none.

    Args:
      per_anchor: a `PerAnchorLoss`.

    Returns:
      Scalar float tensor.
    """
    if not isinstance(per_anchor, PerAnchorLoss):
        raise ValueError(f"`per_anchor` must be a PerAnchorLoss, received: {type(per_anchor).__name__}")
    count = tf.reduce_sum(tf.cast(per_anchor.has_positive, per_anchor.loss.dtype))
    return tf.math.divide_no_nan(tf.reduce_sum(per_anchor.loss), count)


def supcon_loss(
    features,
    labels=None,
    mask=None,
    *,
    temperature=0.1,
    base_temperature=None,
    contrast_mode="all",
    variant="out",
    normalize=False,
    queue_features=None,
    queue_labels=None,
):
    """Scalar SupCon batch loss: mean of L(i) over anchors with a positive.

    `labels=None, mask=None` is SimCLR's NT-Xent; integer or multi-hot
    `labels` is SupCon; a `[batch, batch]` `mask` is anything else. See
    `supcon_per_anchor_loss` for the arguments.

    Args:
      features: `[batch, views, dim]` float embeddings.
      labels: optional `[batch]` int or `[batch, classes]` multi-hot.
      mask: optional `[batch, batch]` positive mask.
      temperature: tau > 0 (paper: 0.1 for SupCon).
      base_temperature: scale is `temperature / base_temperature`; default
        `None` = unscaled.
      contrast_mode: "all" or "one".
      variant: "out" (eq. 2) or "in" (eq. 3).
      normalize: L2-normalise `features` first.
      queue_features: optional `[K, dim]` memory-queue entries (constants).
      queue_labels: their labels (with `labels`).

    Returns:
      Scalar float32 (float64 for float64 features) loss; 0 with zero
      gradients when no anchor has a positive.

    Example:

    >>> z = tf.math.l2_normalize(tf.random.normal([8, 2, 16]), axis=-1)
    >>> loss = supcon_loss(z, labels=tf.constant([0, 1, 0, 1, 2, 2, 3, 3]))
    """
    return reduce_per_anchor(
        supcon_per_anchor_loss(
            features,
            labels,
            mask,
            temperature=temperature,
            base_temperature=base_temperature,
            contrast_mode=contrast_mode,
            variant=variant,
            normalize=normalize,
            queue_features=queue_features,
            queue_labels=queue_labels,
        )
    )


@keras.saving.register_keras_serializable(package="supcon_tf")
class SupConLoss(keras.losses.Loss):
    """Keras `Loss` wrapper of `supcon_loss`: `y_true` = labels, `y_pred` = features.

    Args:
      temperature: tau > 0. Default 0.1 (the paper's SupCon value).
      base_temperature: loss scale is `temperature / base_temperature`;
        `None` (default) means unscaled eq. 2 / eq. 3.
      contrast_mode: "all" (default) or "one".
      variant: "out" (eq. 2, default) or "in" (eq. 3).
      normalize: L2-normalise `y_pred` first. Default False.
      use_labels: if False, `y_true` is ignored and the loss is SimCLR's
        NT-Xent. Default True.
      name: loss name.
      **kwargs: forwarded to `keras.losses.Loss` (e.g. `dtype`).

    Call arguments:
      y_true: `[batch]` or `[batch, 1]` class ids (Keras casts them to the
        loss dtype; ids compare exactly below 2**24) or `[batch, classes]`
        multi-hot with classes > 1.
      y_pred: `[batch, views, dim]` float embeddings.

    Example:

    >>> loss_fn = SupConLoss(temperature=0.1)
    >>> z = tf.math.l2_normalize(tf.random.normal([4, 2, 8]), axis=-1)
    >>> value = loss_fn(tf.constant([0, 0, 1, 1]), z)

    Reference:
      Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
    """

    def __init__(
        self,
        temperature=0.1,
        base_temperature=None,
        contrast_mode="all",
        variant="out",
        normalize=False,
        use_labels=True,
        name="supcon_loss",
        **kwargs,
    ):
        kwargs.setdefault("reduction", "sum_over_batch_size")
        super().__init__(name=name, **kwargs)
        _check_positive_number("temperature", temperature)
        if base_temperature is not None:
            _check_positive_number("base_temperature", base_temperature)
        _check_choice("contrast_mode", contrast_mode, CONTRAST_MODES)
        _check_choice("variant", variant, VARIANTS)
        self.temperature = float(temperature)
        self.base_temperature = None if base_temperature is None else float(base_temperature)
        self.contrast_mode = contrast_mode
        self.variant = variant
        self.normalize = bool(normalize)
        self.use_labels = bool(use_labels)

    def call(self, y_true, y_pred):
        labels = None
        if self.use_labels:
            labels = tf.convert_to_tensor(y_true)
            # Keras hands `y_true` over as [batch, 1] (and cast to the loss
            # dtype); a one-column multi-hot matrix would be meaningless, so a
            # [batch, 1] tensor is always read as class ids. Float ids compare
            # exactly up to 2**24.
            if labels.shape.rank == 2 and labels.shape[-1] == 1:
                labels = tf.squeeze(labels, axis=-1)
        return supcon_loss(
            y_pred,
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            variant=self.variant,
            normalize=self.normalize,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            variant=self.variant,
            normalize=self.normalize,
            use_labels=self.use_labels,
        )
        return config
