"""The public SupCon losses: `supcon_per_anchor_loss`, `reduce_per_anchor`, `supcon_loss` and `SupConLoss`.

`supcon_per_anchor_loss` checks its arguments, lays out anchors and contrast
set (view-major) and picks the dense or blockwise form; the formulas are in
the `supcon_tf.losses` package docstring.
"""

import keras
import tensorflow as tf

from supcon_tf import _checks
from supcon_tf.losses._inputs import (
    BLOCKWISE_THRESHOLD,
    DEFAULT_BLOCK_SIZE,
    IMPLEMENTATIONS,
    PerAnchorLoss,
    _check_cap_against_views,
    _compute_dtype,
    _flatten_trailing,
    _validate_family_inputs,
    _validate_inputs,
    _validate_pair_weights,
    _validate_queue,
)
from supcon_tf.losses.config import LossConfig
from supcon_tf.losses.blockwise import _blockwise_cap_bounds, _blockwise_core
from supcon_tf.losses.dense import _dense_core
from supcon_tf.losses.weights import class_counts, named_rule, pair_weighting, per_label_keys, tiled_keys


def _anchor_layout(features, contrast_mode, anchor_offset, num_anchor_samples):
    """Anchors and contrast set of `features` `[N, V, dim]`, view-major, and each anchor's own contrast row.

    Returns `(anchors, contrast, self_index, num_samples, num_views,
    num_anchor, anchor_views)`: contrast `[V * N, dim]`, row v * N + s;
    anchors `[anchor_views * b, dim]` over the b = `num_anchor` anchor
    samples from `anchor_offset`, row v * b + s_local; `self_index`
    `[anchors]` int32, the row of anchor i in the contrast set (to remove it
    from A(i) and P(i)); the sizes are scalar int32 tensors, `anchor_views`
    1 for contrast_mode "one".
    """
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

    # Index of each anchor in the contrast set, to remove it from A(i) and P(i).
    view_ids = tf.repeat(tf.range(anchor_views), num_anchor)
    sample_ids = tf.tile(tf.range(num_anchor), [anchor_views]) + anchor_offset
    self_index = view_ids * num_samples + sample_ids
    return anchors, contrast, self_index, num_samples, num_views, num_anchor, anchor_views


def _uses_blockwise(implementation, features, queue):
    """Whether `supcon_per_anchor_loss` takes the blockwise form (see its `implementation` argument)."""
    if implementation == "auto":
        contrast_rows = features.shape[0] * features.shape[1] if features.shape.is_fully_defined() else None
        if queue is not None and contrast_rows is not None:
            contrast_rows = None if queue.shape[0] is None else contrast_rows + queue.shape[0]
        return contrast_rows is not None and contrast_rows >= BLOCKWISE_THRESHOLD
    return implementation == "blockwise"


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
    implementation="auto",
    block_size=DEFAULT_BLOCK_SIZE,
    denominator="all",
    positives_cap=-1,
    pair_weights=None,
    positive_weighting=None,
    label_kernel=None,
    kernel_bandwidth=None,
    multi_label=None,
    prototypes=None,
    prototype_labels=None,
):
    """SupCon loss of every anchor, and which anchors have a positive.

    Args:
      features: `[batch, views, dim]` float (any float dtype; computed in
        float32, or float64 for float64 input). The projected embeddings;
        expected L2-normalised unless `normalize=True`. Features of rank > 3,
        `[batch, views, ...]`, are flattened per view to `[batch, views, -1]`
        first (and `normalize` then normalises the flattened vectors).
      labels: optional `[batch]` integer class ids (any values; equality
        defines positives, weight 1) or `[batch, classes]` multi-hot matrix
        (positives share at least one class, weight 1); with `pair_weights`,
        any `[batch]` or `[batch, k]` per-sample data that rule reads
        (ids, multi-hot rows, continuous values).
      mask: optional explicit weights: `[batch, batch]` finite, >= 0;
        `mask[i, j]` is the weight w of every view of sample j as a positive
        of every view of sample i (0: a negative; the anchor itself is
        always excluded). With a memory queue, `[batch, batch + queue_size]`:
        the last columns weigh the queue entries (no `queue_labels`). An
        `[N, N]` matrix: for batches where that fits; `pair_weights` builds
        the weights from labels instead, block by block. Give at most one of
        `labels` and `mask`; with neither, positives are the other views of
        the same sample (SimCLR).
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
        Normalised like `features` when `normalize=True`. `[K, ...]` is
        flattened to `[K, -1]` like `features`.
      queue_labels: `[K]` ids or `[K, classes]` multi-hot (or, with
        `pair_weights`, `[K, ...]` data for the rule), in the same form as
        `labels`; required when `labels` is given. Without `labels`
        (SimCLR) every queue entry is a negative. With a `mask`, its last K
        columns weigh the queue: no `queue_labels`.
      implementation: "dense" materialises the [anchors, contrast] logit
        matrix; "blockwise" streams over blocks of `block_size` contrast
        columns with an online log-sum-exp and recomputes the blocks in a
        custom backward pass, so memory grows like anchors x block_size;
        "auto" (default) picks blockwise when the contrast set has at least
        `BLOCKWISE_THRESHOLD` rows. Both take every option and give the same
        values and gradients to float32 precision.
      block_size: contrast columns per block for "blockwise".
      denominator: which contrast entries form the softmax denominator of
        positive p (google-research's `denominator_mode`; see the
        `supcon_tf.losses` docstring for the formulas). The negatives N(i)
        are the entries of weight 0 (every entry of weight > 0 is a
        positive, however small its weight). `"all"` (default): P(i) and
        N(i), i.e. every entry but the anchor (and the capped-out ones),
        eq. 2 / eq. 3.
        `"one_positive"`: p itself plus N(i), so each positive competes only
        with the negatives, never with the other positives (the own other
        views included): SINCERE (Feeney & Hughes) with "out".
        `"only_negatives"`: N(i) only, not even p: the decoupled
        contrastive loss (Yeh et al. 2021; supervised with labels) with
        "out"; an anchor without a negative is then excluded like one
        without a positive. The variants keep their form: "out" averages
        the log-probabilities l(i, p) over P(i), weighted by w_ip, "in"
        takes the log of the w_ip-weighted mean of exp l(i, p).
      positives_cap: int; -1 (default): no cap. c >= 0 must be a multiple of
        the number of views V: per anchor sample, only the first c / V
        positive samples other than its own (lowest index in `features`,
        i.e. the gathered global batch with `anchor_offset`) stay positives,
        with all their views; then the first c - V * (samples kept) matching
        queue entries, in queue order (queue entries rank after every batch
        sample and count one positive each). The other positives of the
        anchor are capped out: neither positives nor negatives, in no
        denominator. The other views of the anchor's own sample do not count
        and always stay positive (if its own sample is positive at all).
        With multi-hot `labels`, the candidates are the samples sharing a
        class; with a `mask`, the samples with `mask > 0`, ranked by index
        whatever their weight, the kept ones keeping their weight (so with
        `pair_weights`, the samples of weight > 0). Without labels or mask
        (SimCLR) there is nothing to cap.
      pair_weights: optional rule `(anchor_labels [r, ...], contrast_labels
        [c, ...]) -> [r, c]` weights w >= 0 (finite) of each pair, from rows
        of `labels` (and `queue_labels`): the anchors' and the contrast
        entries' (a sample's label row once per view). The loss of anchor i
        is then -sum_p w_ip l(i, p) / sum_p w_ip ("out"); w = 0 makes a
        negative; anchors whose weights sum to 0 count like anchors without
        positives. The blockwise form calls it on one block of contrast
        columns at a time inside its loop (under XLA in a graph: it must be
        a pure TensorFlow function of its arguments; padded columns repeat
        a real label row and are ignored); the dense form once on the whole
        batch. Its weights carry no gradient; eagerly, a wrong shape,
        negative or non-finite weights raise a ValueError.
        `losses.label_match_weights` (the default: 1 for equal ids or a
        shared class) gives today's loss. Needs `labels`; not with `mask`.
        `denominator="class_balanced"` (Balanced Contrastive Learning, Zhu
        et al. 2022): "all" with each contrast entry's term in the
        denominator divided by the number of entries of its class in A(i),
        i.e. Z(i) = sum_c 1/|A_c(i)| sum_{a in A_c(i)} exp(s_ia); needs
        `[batch]` class ids; no `positives_cap`.
      positive_weighting: None, or `"jaccard"`: multi-hot `labels` (0/1)
        weigh a pair by |y_i & y_j| / |y_i | y_j| (docs/losses.md).
      label_kernel: None, or `"gaussian"` (y-Aware, Dufumier et al. 2021):
        continuous float `labels` `[batch]` or `[batch, k]` weigh a pair by
        exp(-|y_i - y_j|^2 / (2 kernel_bandwidth^2)), normalised per anchor
        by the loss; a weight that underflows to 0 makes a negative.
      kernel_bandwidth: sigma > 0 of `label_kernel` (required with it).
      multi_label: None, or `"per_label"` (MulSupCon, Zhang & Wu 2024):
        each (anchor, label of the anchor) pair is an anchor of its own,
        whose positives are the entries carrying that label; multi-hot 0/1
        `labels`; no `positives_cap`. The result then has a trailing label
        axis (below), and `reduce_per_anchor` averages over every (anchor,
        label) pair that has a positive. Cost: classes x the anchor rows.
      prototypes: optional `[classes, dim]` class centres (BCL's class
        complement) added to every anchor's contrast set, with gradient
        (unlike the queue), positives of the anchors of their class; they
        are never anchors. Normalised with `normalize=True`. Need `[batch]`
        class ids as `labels` and `prototype_labels`; no `positives_cap`.
      prototype_labels: `[classes]` the prototypes' class ids.

      The named options (`positive_weighting`, `label_kernel`,
      `multi_label`, `denominator="class_balanced"`) are exclusive of each
      other, of `mask` and of `pair_weights`.

    Returns:
      `PerAnchorLoss(loss, has_positive)`, both
      `[num_anchor_samples, anchor_views]` (anchor_views is `views` for
      `"all"` and 1 for `"one"`), `[num_anchor_samples, anchor_views,
      classes]` with `multi_label="per_label"`. `has_positive` says which anchors count
      in the mean: sum_p w_ip > 0 (|P(i)| > 0 with 0/1 weights), and, for
      `denominator="only_negatives"`, |N(i)| > 0.

    Raises:
      ValueError: for a rank < 3 or a non-float dtype, both `labels` and
        `mask`, a batch mismatch, a mask of the wrong shape, a non-positive
        temperature, non-finite features or negative / non-finite weights
        (checked when running eagerly), an unknown `contrast_mode`,
        `variant`, `denominator` or `implementation`, a `positives_cap`
        that is not -1 or a non-negative multiple of the number of views, a
        `pair_weights` that is not callable or without `labels`, a
        `normalize` that is not a bool.
    """
    options = LossConfig(
        temperature=temperature, base_temperature=base_temperature, contrast_mode=contrast_mode, variant=variant,
        denominator=denominator, positives_cap=positives_cap, positive_weighting=positive_weighting,
        label_kernel=label_kernel, kernel_bandwidth=kernel_bandwidth, multi_label=multi_label,
    )  # the one check of the options (ValueError naming the option)
    temperature, positives_cap, kernel_bandwidth = options.temperature, options.positives_cap, options.kernel_bandwidth
    _checks.choice(implementation, "implementation", IMPLEMENTATIONS)
    _checks.positive_int(block_size, "block_size")
    _checks.boolean(normalize, "normalize")
    features = _flatten_trailing(tf.convert_to_tensor(features), 2)
    labels = None if labels is None else tf.convert_to_tensor(labels)
    mask = None if mask is None else tf.convert_to_tensor(mask)
    _validate_inputs(features, labels, mask, anchor_offset, num_anchor_samples)
    _validate_pair_weights(pair_weights, labels, mask)
    _check_cap_against_views(positives_cap, features)
    queue_features, queue_labels = _validate_queue(features, labels, mask, queue_features, queue_labels)
    prototypes, prototype_labels = _validate_family_inputs(
        labels, mask, pair_weights, positive_weighting, label_kernel, multi_label, denominator, queue_labels,
        prototypes, prototype_labels, positives_cap, features,
    )

    dtype = _compute_dtype(features)
    features = tf.cast(features, dtype)
    if normalize:
        features = tf.math.l2_normalize(features, axis=-1, epsilon=1e-12)

    anchors, contrast, self_index, num_samples, num_views, num_anchor, anchor_views = _anchor_layout(
        features, contrast_mode, anchor_offset, num_anchor_samples
    )

    queue = None
    if queue_features is not None:
        queue = tf.stop_gradient(tf.cast(queue_features, dtype))
        if normalize:
            queue = tf.math.l2_normalize(queue, axis=-1, epsilon=1e-12)

    if prototypes is not None:
        # Class centres join the contrast set after the queue, like queue entries but with their gradient.
        centres = tf.cast(prototypes, dtype)
        if normalize:
            centres = tf.math.l2_normalize(centres, axis=-1, epsilon=1e-12)
        centre_labels = tf.cast(prototype_labels, labels.dtype)
        queue = centres if queue is None else tf.concat([queue, centres], axis=0)
        queue_labels = centre_labels if queue_labels is None else tf.concat(
            [tf.cast(queue_labels, labels.dtype), centre_labels], axis=0
        )

    weighting = pair_weighting(
        labels, mask, queue_labels, queue, pair_weights, num_samples, anchor_offset, num_anchor, dtype,
        named=named_rule(positive_weighting, label_kernel, kernel_bandwidth, dtype),
    )
    row_samples = num_anchor  # anchor samples, or (label, anchor sample) pairs with multi_label
    num_labels = None
    if multi_label == "per_label":
        # Each anchor row once per label, label-major inside each view: row (v, j, s) = v * L * b + j * b + s.
        num_labels = labels.shape[1]
        dim = tf.shape(anchors)[-1]
        anchors = tf.reshape(
            tf.tile(tf.reshape(anchors, [anchor_views, 1, num_anchor, dim]), [1, num_labels, 1, 1]), [-1, dim]
        )
        self_index = tf.reshape(tf.tile(tf.reshape(self_index, [anchor_views, 1, num_anchor]), [1, num_labels, 1]), [-1])
        weighting = weighting._replace(anchor_keys=per_label_keys(weighting.anchor_keys))
        row_samples = num_labels * num_anchor
    column_counts = None
    if denominator == "class_balanced":
        _, all_keys = tiled_keys(weighting, num_views, anchor_views)
        column_counts = class_counts(all_keys, block_size)

    if _uses_blockwise(implementation, features, queue):
        row_keys, column_keys = tiled_keys(weighting, num_views, anchor_views)
        cap_bounds = None
        if positives_cap >= 0 and weighting.weighted:  # SimCLR has nothing to cap
            cap_bounds = _blockwise_cap_bounds(
                weighting, num_samples, num_views, anchor_offset, num_anchor, anchor_views, positives_cap, block_size
            )
        if queue is not None:
            contrast = tf.concat([contrast, queue], axis=0)
        neg_mean_log_prob, counts = _blockwise_core(
            anchors, contrast, row_keys, column_keys, self_index, temperature, variant, block_size, weighting.weigh,
            denominator=denominator, cap_bounds=cap_bounds, by_equality=weighting.by_equality,
            column_counts=column_counts,
        )
        has_positive = counts > 0
    else:
        neg_mean_log_prob, has_positive = _dense_core(
            anchors, contrast, queue, weighting, self_index, num_samples, num_views,
            anchor_offset, row_samples, anchor_views, temperature, variant, dtype,
            denominator=denominator, positives_cap=positives_cap, column_counts=column_counts,
        )
    loss = options.scale * neg_mean_log_prob
    loss = tf.where(has_positive, loss, tf.zeros_like(loss))

    if num_labels is not None:  # [Va * L * b] -> [b, Va, L]
        to_sample_major = lambda t: tf.transpose(tf.reshape(t, [anchor_views, num_labels, num_anchor]), [2, 0, 1])  # noqa: E731
    else:
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


def supcon_loss(features, labels=None, mask=None, **options):
    """Scalar SupCon batch loss: mean of L(i) over anchors with a positive.

    `labels=None, mask=None` is SimCLR's NT-Xent; integer or multi-hot
    `labels` is SupCon; `labels` with a `pair_weights` rule, or explicit
    `[batch, batch]` weights in `mask`, weigh the positives. See
    `supcon_per_anchor_loss` for the arguments.

    Args:
      features: `[batch, views, dim]` float embeddings (`[batch, views, ...]`
        is flattened per view).
      labels: optional `[batch]` int or `[batch, classes]` multi-hot (or
        data for `pair_weights`).
      mask: optional `[batch, batch]` (`[batch, batch + K]` with a queue)
        positive weights.
      **options: the keyword arguments of `supcon_per_anchor_loss`: the
        loss options (`temperature`, `base_temperature`, `contrast_mode`,
        `variant`, `denominator`, `positives_cap`, `positive_weighting`,
        `label_kernel`, `kernel_bandwidth`, `multi_label`: a
        `LossConfig(...).kwargs()`), `normalize`, `queue_features`,
        `queue_labels`, `implementation`, `block_size`, `pair_weights`,
        `prototypes`, `prototype_labels`, `anchor_offset`,
        `num_anchor_samples`.

    Returns:
      Scalar float32 (float64 for float64 features) loss; 0 with zero
      gradients when no anchor has a positive.

    Example:

    >>> z = tf.math.l2_normalize(tf.random.normal([8, 2, 16]), axis=-1)
    >>> loss = supcon_loss(z, labels=tf.constant([0, 1, 0, 1, 2, 2, 3, 3]))
    >>> ages = tf.constant([30.0, 31.0, 50.0, 52.0, 70.0, 29.0, 51.0, 71.0])
    >>> close = lambda a, c: tf.exp(-tf.square(a[:, None] - c[None, :]) / 50.0)  # y-Aware-like kernel weights
    >>> loss = supcon_loss(z, ages, pair_weights=close, implementation="blockwise")
    """
    return reduce_per_anchor(supcon_per_anchor_loss(features, labels, mask, **options))


@keras.saving.register_keras_serializable(package="supcon_tf")
class SupConLoss(keras.losses.Loss):
    """Keras `Loss` wrapper of `supcon_loss`: `y_true` = labels, `y_pred` = features.

    Args:
      normalize: L2-normalise `y_pred` first. Default False.
      use_labels: if False, `y_true` is ignored and the loss is SimCLR's
        NT-Xent. Default True.
      name: loss name.
      **kwargs: `reduction` and `dtype` go to `keras.losses.Loss`; the rest
        are the loss options, the fields of `LossConfig` (`temperature`,
        default 0.1, the paper's SupCon value; `base_temperature`,
        `contrast_mode`, `variant`, `denominator`, `positives_cap`,
        `positive_weighting` ("jaccard": `y_true` multi-hot),
        `label_kernel` ("gaussian": `y_true` continuous values `[batch]`,
        `[batch, 1]` or `[batch, k]`) with `kernel_bandwidth`,
        `multi_label` ("per_label": `y_true` multi-hot)); see
        `supcon_per_anchor_loss`. `positives_cap` is checked against
        `y_pred` at call time. `self.options` holds them.

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

    def __init__(self, normalize=False, use_labels=True, name="supcon_loss", **kwargs):
        keras_kwargs = {key: kwargs.pop(key) for key in ("reduction", "dtype") if key in kwargs}
        keras_kwargs.setdefault("reduction", "sum_over_batch_size")
        super().__init__(name=name, **keras_kwargs)
        self.options = LossConfig(**kwargs)  # the loss options, checked (TypeError names an unknown one)
        self.normalize = _checks.boolean(normalize, "normalize")
        self.use_labels = _checks.boolean(use_labels, "use_labels")
        if not self.use_labels and self.options.reads_labels:
            raise ValueError("The named weightings read `y_true`: they need use_labels=True, received: use_labels=False")

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
        return supcon_loss(y_pred, labels, normalize=self.normalize, **self.options.kwargs())

    def get_config(self):
        config = super().get_config()
        config.update(normalize=self.normalize, use_labels=self.use_labels, **self.options.kwargs())
        return config
