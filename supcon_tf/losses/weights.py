"""How the SupCon loss weighs a pair (anchor sample, contrast entry): the positives' weights w_ia.

Every form of the loss (dense, blockwise, across replicas, with a memory
queue) reads the weights through one `PairWeighting`: per-row keys (one per
anchor sample, one per batch sample, one per queue entry) and a rule
`weigh(row_keys [r, ...], column_keys [c, ...]) -> [r, c]` weights >= 0.
The dense form calls the rule once on `[anchors, batch]` and
`[anchors, queue]`; the blockwise form calls it on each block of contrast
columns inside its loop, so weights that come from labels never exist as an
`[N, N]` matrix there. The rule comes from the loss's arguments:

* integer `labels` `[batch]`: `label_match_weights`, 1 for equal ids;
* multi-hot `labels` `[batch, classes]`: `label_match_weights`, 1 for a
  shared class;
* `labels` (any `[batch, ...]` per-sample data: ids, multi-hot rows,
  continuous values) and `pair_weights`: the caller's rule on label rows;
* `mask` `[batch, batch]` (or `[batch, batch + queue]`): the keys are sample
  (and queue) indices and the rule reads the matrix: explicit weights, for
  batches where an `[N, N]` matrix is acceptable;
* nothing (SimCLR): 1 between the views of the same sample;
* a named rule (serialisable in `SupConLoss`'s config, unlike a callable):
  `positive_weighting="jaccard"` on multi-hot `labels` (`jaccard_weights`),
  `label_kernel="gaussian"` with `kernel_bandwidth` on continuous `labels`
  (`gaussian_kernel_weights`); `multi_label="per_label"` restricts each
  anchor row's multi-hot key to one of its labels (`per_label_keys`) and
  keeps the default rule.

Across replicas the loss sees the gathered batch: `distribute.gather_global`
gathers `labels` of any shape with the features, so a rule on label rows
needs nothing else; a `mask` must be the global one, the same on every
replica.
"""

from typing import Callable, NamedTuple, Optional

import tensorflow as tf

from supcon_tf.losses._inputs import _check_weight_values

# Queue entries of SimCLR (no labels) have this key, which no sample index has: never positives.
_NO_KEY = -1


def label_match_weights(anchor_labels, contrast_labels):
    """The default pair weights: 1 where the labels match, else 0, `[rows, columns]` float32.

    Args:
      anchor_labels: `[rows]` class ids, or `[rows, classes]` multi-hot rows.
      contrast_labels: `[columns]` or `[columns, classes]`, in the same form.

    Returns:
      `[rows, columns]` float32: for ids, 1 where they are equal; for
      multi-hot rows, 1 where they share a class (a positive dot product).

    Example:

    >>> label_match_weights(tf.constant([0, 1]), tf.constant([1, 1, 0])).numpy()
    array([[0., 0., 1.],
           [1., 1., 0.]], dtype=float32)
    """
    return _match(tf.convert_to_tensor(anchor_labels), tf.convert_to_tensor(contrast_labels), tf.float32)


def jaccard_weights(anchor_labels, contrast_labels):
    """Jaccard overlap of multi-hot rows, |a & c| / |a | c|, `[rows, columns]` float32 (0 for two empty rows).

    Example:

    >>> jaccard_weights(tf.constant([[1, 1, 0]]), tf.constant([[1, 0, 0], [1, 1, 0], [0, 0, 1]])).numpy()
    array([[0.5, 1. , 0. ]], dtype=float32)
    """
    return _jaccard(tf.convert_to_tensor(anchor_labels), tf.convert_to_tensor(contrast_labels), tf.float32)


def _jaccard(row_labels, column_labels, dtype):
    rows, columns = tf.cast(row_labels, dtype), tf.cast(column_labels, dtype)
    shared = tf.matmul(rows, columns, transpose_b=True)
    union = tf.reduce_sum(rows, axis=1)[:, None] + tf.reduce_sum(columns, axis=1)[None, :] - shared
    return tf.where(union > 0, shared / tf.where(union > 0, union, tf.ones_like(union)), tf.zeros_like(shared))


def gaussian_kernel_weights(anchor_labels, contrast_labels, bandwidth):
    """y-Aware's kernel of continuous labels, exp(-|y_a - y_c|^2 / (2 bandwidth^2)), `[rows, columns]` float32.

    `[rows]` / `[columns]` values, or `[rows, k]` / `[columns, k]` vectors
    (Euclidean distance). The kernel's constant factor is left out: the loss
    normalises the weights per anchor, which cancels it.

    Example:

    >>> gaussian_kernel_weights(tf.constant([0.0]), tf.constant([0.0, 1.0, 2.0]), 1.0).numpy().round(4)
    array([[1.    , 0.6065, 0.1353]], dtype=float32)
    """
    return _gaussian(tf.convert_to_tensor(anchor_labels), tf.convert_to_tensor(contrast_labels), bandwidth, tf.float32)


def _gaussian(row_labels, column_labels, bandwidth, dtype):
    rows, columns = tf.cast(row_labels, dtype), tf.cast(column_labels, dtype)
    difference = rows[:, None] - columns[None, :]
    squared = tf.square(difference) if rows.shape.rank == 1 else tf.reduce_sum(tf.square(difference), axis=-1)
    return tf.exp(-squared / tf.constant(2.0 * bandwidth * bandwidth, dtype))


def named_rule(positive_weighting, label_kernel, kernel_bandwidth, dtype):
    """The `weigh(row_keys, column_keys)` of a named rule in `dtype`, or None when none is named."""
    if positive_weighting == "jaccard":
        return lambda rows, columns: tf.stop_gradient(_jaccard(rows, columns, dtype))
    if label_kernel == "gaussian":
        return lambda rows, columns: tf.stop_gradient(_gaussian(rows, columns, kernel_bandwidth, dtype))
    return None


def per_label_keys(anchor_keys):
    """`multi_label="per_label"`'s row keys: `[classes * b, classes]`, row j * b + s = y_s restricted to label j.

    With the default rule (a shared class), row (j, s) then weighs contrast
    entry t by [y_s[j] = 1 and y_t[j] = 1]: the samples carrying label j are
    its positives, everything else its negatives.
    """
    num_classes = anchor_keys.shape[1]
    one_label = tf.eye(num_classes, dtype=anchor_keys.dtype)[:, None, :]  # [classes, 1, classes]
    return tf.reshape(anchor_keys[None, :, :] * one_label, [-1, num_classes])


def _match(row_labels, column_labels, dtype):
    """`label_match_weights` in `dtype` (multi-hot rows are multiplied in it)."""
    if row_labels.shape.rank == 1:
        return tf.cast(tf.equal(row_labels[:, None], tf.cast(column_labels, row_labels.dtype)[None, :]), dtype)
    product = tf.matmul(tf.cast(row_labels, dtype), tf.cast(column_labels, dtype), transpose_b=True)
    return tf.cast(product > 0, dtype)


class PairWeighting(NamedTuple):
    """The weights of the loss's pairs, as keys and a rule (see the module docstring).

    Attributes:
      anchor_keys: `[anchor samples, ...]` the anchor samples' keys.
      sample_keys: `[batch, ...]` every batch sample's keys (the contrast
        set's batch columns, once per view).
      queue_keys: `[queue, ...]` the queue entries' keys, or None without a
        queue.
      weigh: `(row_keys [r, ...], column_keys [c, ...]) -> [r, c]` weights
        >= 0 in the loss's compute dtype, without gradient.
      by_equality: the keys are `[n]` and the weights are exactly 1 where
        they are equal, 0 elsewhere (integer labels, SimCLR): the blockwise
        form may find the positives by key (`blockwise_out`).
      weighted: False for SimCLR: the positives are the own other views
        only, and `positives_cap` has nothing to cap.
    """

    anchor_keys: tf.Tensor
    sample_keys: tf.Tensor
    queue_keys: Optional[tf.Tensor]
    weigh: Callable
    by_equality: bool
    weighted: bool


def _label_rule(dtype):
    def weigh(row_keys, column_keys):
        return _match(row_keys, column_keys, dtype)

    return weigh


def _mask_rule(mask):
    def weigh(row_keys, column_keys):
        # The columns first: a block of columns reads [batch, block] entries, never [rows, batch].
        return tf.gather(tf.gather(mask, column_keys, axis=1), row_keys)

    return weigh


def _caller_rule(pair_weights, dtype):
    """The caller's `pair_weights`, its output checked: `[r, c]`, in `dtype`, no gradient (finite, >= 0 eagerly)."""

    def weigh(row_keys, column_keys):
        weights = tf.convert_to_tensor(pair_weights(row_keys, column_keys))
        expected = [row_keys.shape[0], column_keys.shape[0]]
        if weights.shape.rank != 2 or any(
            e is not None and d is not None and d != e for d, e in zip(weights.shape, expected)
        ):
            raise ValueError(
                f"`pair_weights` must return [rows, columns] = {expected} weights for {row_keys.shape[0]} anchor and "
                f"{column_keys.shape[0]} contrast label rows, received: weights with shape {weights.shape}"
            )
        if not (weights.dtype.is_floating or weights.dtype.is_integer or weights.dtype == tf.bool):
            raise ValueError(
                f"`pair_weights` must return real weights, received: weights with dtype {weights.dtype.name}"
            )
        weights = tf.cast(weights, dtype)
        if tf.executing_eagerly():
            _check_weight_values(weights, "pair_weights")
        return tf.stop_gradient(weights)

    return weigh


def pair_weighting(labels, mask, queue_labels, queue, pair_weights, num_samples, anchor_offset, num_anchor, dtype,
                   named=None):
    """The `PairWeighting` of the loss's (checked) arguments.

    Args:
      labels: None, or `[batch, ...]` labels.
      mask: None, or the `[batch, batch (+ queue)]` weight matrix.
      queue_labels: the queue's labels (with `labels` and a queue), or None.
      queue: the `[queue, dim]` queue entries, or None.
      pair_weights: None, or the caller's rule on label rows.
      num_samples: the batch size (scalar int32 tensor).
      anchor_offset, num_anchor: the anchor samples.
      dtype: the loss's compute dtype.
      named: None, or a named rule's `weigh` (`named_rule`), used instead
        of the default or a caller's rule.
    """
    if mask is not None:
        sample_keys = tf.range(num_samples)
        queue_keys = None if queue is None else num_samples + tf.range(tf.shape(queue)[0])
        weigh, by_equality = _mask_rule(tf.cast(mask, dtype)), False
    elif labels is None:
        sample_keys = tf.range(num_samples)
        queue_keys = None if queue is None else tf.fill([tf.shape(queue)[0]], _NO_KEY)
        weigh, by_equality = _label_rule(dtype), True
    else:
        sample_keys = labels
        queue_keys = None if queue is None else tf.cast(queue_labels, labels.dtype)
        if named is not None:
            weigh, by_equality = named, False
        elif pair_weights is None or pair_weights is label_match_weights:
            weigh, by_equality = _label_rule(dtype), labels.shape.rank == 1
        else:
            weigh, by_equality = _caller_rule(pair_weights, dtype), False
    return PairWeighting(
        anchor_keys=sample_keys[anchor_offset : anchor_offset + num_anchor], sample_keys=sample_keys,
        queue_keys=queue_keys, weigh=weigh, by_equality=by_equality,
        weighted=labels is not None or mask is not None,
    )


def tiled_keys(weighting, num_views, anchor_views):
    """`(row keys [anchor_views * b, ...], column keys [V * N (+ K), ...])`, view-major like anchors and contrast."""
    tail = [1] * (weighting.sample_keys.shape.rank - 1)
    row_keys = tf.tile(weighting.anchor_keys, [anchor_views] + tail)
    column_keys = tf.tile(weighting.sample_keys, [num_views] + tail)
    if weighting.queue_keys is not None:
        column_keys = tf.concat([column_keys, weighting.queue_keys], axis=0)
    return row_keys, column_keys


def class_counts(keys, block_size):
    """`[n]` int32: how many of `keys` `[n]` equal each key (itself included), streamed over blocks of rows.

    `denominator="class_balanced"`'s per-column class counts over the whole
    contrast set; memory n x block_size (no [n, n] matrix), no `tf.unique`
    (so it compiles under XLA).
    """
    num = tf.shape(keys)[0]
    num_blocks = tf.maximum(1, (num + block_size - 1) // block_size)
    index = tf.minimum(tf.range(num_blocks * block_size), tf.maximum(num - 1, 0))
    padded = tf.gather(keys, index)

    def body(k, counts):
        block = tf.slice(padded, [k * block_size], [block_size])
        block_counts = tf.reduce_sum(tf.cast(tf.equal(block[:, None], keys[None, :]), tf.int32), axis=1)
        return [k + 1, counts.write(k, block_counts)]

    counts = tf.TensorArray(tf.int32, size=num_blocks, element_shape=tf.TensorShape([block_size]))
    _, counts = tf.while_loop(lambda k, _: k < num_blocks, body, [tf.constant(0), counts], parallel_iterations=1)
    return counts.concat()[:num]
