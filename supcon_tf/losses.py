"""The SupCon loss family: pure per-anchor loss functions and a thin, serialisable Keras `Loss` wrapper.

Notation (Khosla et al., 2020, arXiv 2004.11362; docs/architecture.md):
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

Options of google-research's `supcon/losses.py` (`denominator_mode`,
`positives_cap`), in our notation. For anchor i (sample s, view v) every
contrast entry other than i itself is exactly one of:

  P(i)  positives: the other views of s (when s is its own positive: always
        with integer labels or none, `mask[s, s] > 0`, or a multi-hot row
        with a class), every view of the other samples that are positives of
        s and survive the cap, and the matching queue entries that survive it;
  X(i)  capped out: positives of s removed by `positives_cap` (neither
        positives nor negatives: they appear in no numerator or denominator);
  N(i)  negatives: everything else.

With s_ia = z_i.z_a / tau, the log-probability of positive p is
l(i, p) = s_ip - log Z(i, p), with, by `denominator`:

  "all"            Z(i)    = sum_{a in P(i) u N(i)} exp(s_ia)    (= A(i) without a cap; the paper)
  "one_positive"   Z(i, p) = exp(s_ip) + sum_{n in N(i)} exp(s_in)
                   (each positive against the negatives only: N-pair-like;
                   l(i, p) = -softplus(log sum_N exp - s_ip) <= 0)
  "only_negatives" Z(i)    = sum_{n in N(i)} exp(s_in)
                   (not even p itself: l(i, p) may be > 0, so L may be < 0;
                   an anchor with N(i) empty has no defined loss and is
                   excluded like an anchor without positives)

and L_out(i) = -(tau / base_tau) / |P(i)| * sum_p l(i, p),
L_in(i) = -(tau / base_tau) * log(1/|P(i)| * sum_p exp(l(i, p))) (with mask
weights w_p: weighted sums and |P(i)| = sum_p w_p). "all" without a cap is
eq. 2 / eq. 3 above. `positives_cap = c >= 0` (a multiple of the number of
views V) keeps, per anchor sample s, only the first c / V positive samples
other than s (lowest index in the (gathered) batch, all V views each), then,
in queue order, the first c - V * (batch samples kept) matching queue
entries, so i never has more than c positives besides the other views of s.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

CONTRAST_MODES = ("all", "one")
VARIANTS = ("out", "in")
IMPLEMENTATIONS = ("auto", "dense", "blockwise")
DENOMINATORS = ("all", "one_positive", "only_negatives")
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


def _check_positives_cap(positives_cap):
    if isinstance(positives_cap, bool) or not isinstance(positives_cap, (int, np.integer)) or positives_cap < -1:
        raise ValueError(
            f"`positives_cap` must be an int >= -1 (-1: no cap), received: positives_cap={positives_cap!r}"
        )
    return int(positives_cap)


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
    queue_features = _flatten_trailing(tf.convert_to_tensor(queue_features), 1)
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


def _weighted_log_mean_exp(values, weight, safe_total):
    """`log(sum_j weight_j exp(values_j) / safe_total)` per row, never taking log 0 on a selected entry."""
    safe_weight = tf.where(weight > 0, weight, tf.ones_like(weight))
    selected = tf.where(weight > 0, values + tf.math.log(safe_weight), tf.constant(_MASKED_LOGIT, values.dtype))
    return tf.reduce_logsumexp(selected, axis=1) - tf.math.log(safe_total)


def _dense_core(
    anchors, contrast, queue, labels, mask, queue_labels, self_index, num_samples, num_views,
    anchor_offset, num_anchor, anchor_views, temperature, variant, dtype, denominator="all", positives_cap=-1,
):
    """Dense form: `(-(mean log-probability of the positives) [A], anchor counts [A])`.

    An anchor counts when it has a positive (and, for "only_negatives", a
    negative); the value of one that does not is meaningless (finite).
    """
    sample_mask = _sample_positive_mask(labels, mask, num_samples, dtype)
    sample_mask = sample_mask[anchor_offset : anchor_offset + num_anchor]  # [b, N], weights
    candidate = sample_mask > 0  # positive samples before the cap (own sample included)
    dropped = tf.zeros_like(candidate)  # capped out
    if positives_cap >= 0:
        anchor_ids = tf.range(num_anchor) + anchor_offset
        own = tf.equal(anchor_ids[:, None], tf.range(num_samples)[None, :])
        others = candidate & ~own
        per_sample_cap = positives_cap // num_views
        # Inclusive rank of each positive sample among the anchor's others, by sample index.
        rank = tf.cumsum(tf.cast(others, tf.int32), axis=1)
        dropped = others & (rank > per_sample_cap)
        sample_mask = tf.where(dropped, tf.zeros_like(sample_mask), sample_mask)
        kept_samples = tf.minimum(tf.reduce_sum(tf.cast(others, tf.int32), axis=1), per_sample_cap)  # [b]
    positive = tf.tile(sample_mask, [anchor_views, num_views])  # [Va*b, V*N]
    not_self = 1.0 - tf.one_hot(self_index, num_views * num_samples, dtype=dtype)
    positive = positive * not_self
    is_self = tf.equal(not_self, 0)
    excluded = tf.tile(dropped, [anchor_views, num_views]) | is_self
    negative = tf.tile(~candidate, [anchor_views, num_views]) & ~is_self
    if queue is not None:
        if labels is None:
            queue_candidate = tf.zeros([num_anchor, tf.shape(queue)[0]], tf.bool)
        else:
            anchor_labels = labels[anchor_offset : anchor_offset + num_anchor]
            queue_candidate = _cross_positive_mask(anchor_labels, queue_labels, dtype) > 0  # [b, K]
        queue_dropped = tf.zeros_like(queue_candidate)
        if positives_cap >= 0:
            # Queue entries rank after every batch sample, in queue order, one positive each.
            budget = positives_cap - num_views * kept_samples
            queue_rank = tf.cumsum(tf.cast(queue_candidate, tf.int32), axis=1)
            queue_dropped = queue_candidate & (queue_rank > budget[:, None])
        queue_positive = tf.cast(queue_candidate & ~queue_dropped, dtype)
        contrast = tf.concat([contrast, queue], axis=0)
        positive = tf.concat([positive, tf.tile(queue_positive, [anchor_views, 1])], axis=1)
        excluded = tf.concat([excluded, tf.tile(queue_dropped, [anchor_views, 1])], axis=1)
        negative = tf.concat([negative, tf.tile(~queue_candidate, [anchor_views, 1])], axis=1)

    logits = tf.matmul(anchors, contrast, transpose_b=True) / tf.constant(temperature, dtype)
    in_denominator = ~excluded if denominator == "all" else negative
    masked_logits = tf.where(in_denominator, logits, tf.constant(_MASKED_LOGIT, dtype))
    log_normaliser = tf.reduce_logsumexp(masked_logits, axis=1)  # log sum over the denominator set

    num_positive = tf.reduce_sum(positive, axis=1)
    counts = num_positive > 0
    if denominator == "only_negatives":
        counts = counts & tf.reduce_any(negative, axis=1)
    safe_num_positive = tf.where(num_positive > 0, num_positive, tf.ones_like(num_positive))
    if denominator == "one_positive":
        # l(i, p) = s_ip - log(exp(s_ip) + sum_N exp) = -softplus(log sum_N exp - s_ip).
        log_prob = -tf.nn.softplus(log_normaliser[:, None] - logits)
        if variant == "out":
            mean_log_prob = tf.reduce_sum(positive * log_prob, axis=1) / safe_num_positive
        else:
            mean_log_prob = _weighted_log_mean_exp(log_prob, positive, safe_num_positive)
    elif variant == "out":
        mean_log_prob = tf.reduce_sum(positive * logits, axis=1) / safe_num_positive - log_normaliser
    else:
        # log sum_p w_p exp(logit_p), without ever taking log 0 on a selected entry.
        mean_log_prob = _weighted_log_mean_exp(logits, positive, safe_num_positive) - log_normaliser
    return -mean_log_prob, counts


def _blockwise_ids(labels, queue_labels, queue, num_samples, num_views, anchor_offset, num_anchor, anchor_views):
    """Per-row and per-column keys: rows i and columns j are positives when their keys match.

    Integer labels (and SimCLR's sample indices) are compared for equality;
    multi-hot labels are positives when they share a class. Queue columns
    without labels get the key -1, which no anchor has.
    """
    if labels is None:
        sample_keys = tf.range(num_samples)
        queue_keys = None if queue is None else -tf.ones([tf.shape(queue)[0]], tf.int32)
    else:
        sample_keys = labels
        queue_keys = None if queue is None else tf.cast(queue_labels, labels.dtype)
    anchor_keys = sample_keys[anchor_offset : anchor_offset + num_anchor]
    multiples = [anchor_views] + [1] * (sample_keys.shape.rank - 1)
    anchor_keys = tf.tile(anchor_keys, multiples)
    column_keys = tf.tile(sample_keys, [num_views] + [1] * (sample_keys.shape.rank - 1))
    if queue_keys is not None:
        column_keys = tf.concat([column_keys, queue_keys], axis=0)
    return anchor_keys, column_keys


def _blockwise_cap_bounds(
    labels, queue_labels, queue, num_samples, num_views, anchor_offset, num_anchor, anchor_views, positives_cap,
    block_size,
):
    """`cap_bounds` of `_blockwise_core` for `positives_cap` >= 0, streamed over key blocks (no [b, N] matrix)."""
    sample_keys = tf.range(num_samples) if labels is None else labels
    anchor_samples = tf.range(num_anchor) + anchor_offset
    anchor_keys = sample_keys[anchor_offset : anchor_offset + num_anchor]
    per_sample_cap = positives_cap // num_views
    batch_count, batch_bound = _first_matches_bound(anchor_keys, anchor_samples, sample_keys, per_sample_cap, block_size)
    queue_bound = tf.zeros_like(batch_bound)
    if queue is not None and labels is not None:
        # Queue entries rank after every batch sample, in queue order, one positive each.
        budget = positives_cap - num_views * tf.minimum(batch_count, per_sample_cap)
        _, queue_bound = _first_matches_bound(
            anchor_keys, -tf.ones_like(anchor_samples), tf.cast(queue_labels, labels.dtype), budget, block_size
        )
    tile = lambda t: tf.tile(t, [anchor_views])  # noqa: E731  (rows are view-major: v * b + s)
    return tile(anchor_samples), tile(batch_bound), tile(queue_bound), num_samples, num_views * num_samples


def _first_matches_bound(row_keys, row_ids, column_keys, limit, block_size):
    """Streams over column blocks: how many columns match each row, and where its first `limit` matches end.

    A column matches a row when their keys match (equal ids; multi-hot:
    a shared class) and its index is not the row's `row_ids` entry (-1:
    none excluded). Returns `(count, bound)`, `[rows]` int32: `count` is the
    number of matching columns; the first `limit` of them (by index) are
    exactly the matching columns with index < `bound` (0 when `limit` <= 0,
    the number of columns when fewer match). Memory: rows x block_size.
    """
    multi_hot = row_keys.shape.rank == 2
    num_rows = tf.shape(row_keys)[0]
    if column_keys.shape[0] is not None:
        num_columns = column_keys.shape[0]
        num_blocks = max(1, -(-num_columns // block_size))
    else:
        num_columns = tf.shape(column_keys)[0]
        num_blocks = tf.maximum(1, (num_columns + block_size - 1) // block_size)
    tail = [0] * (column_keys.shape.rank - 1)
    keys_padded = tf.pad(column_keys, [[0, num_blocks * block_size - num_columns]] + [[0, 0]] * len(tail))
    limit = tf.broadcast_to(tf.cast(limit, tf.int32), [num_rows])
    row_float = tf.cast(row_keys, tf.float32) if multi_hot else None

    def body(k, count, bound):
        start = k * block_size
        keys = tf.slice(keys_padded, [start] + tail, [block_size] + [-1] * len(tail))
        index = start + tf.range(block_size)
        if multi_hot:
            match = tf.matmul(row_float, tf.cast(keys, tf.float32), transpose_b=True) > 0
        else:
            match = tf.equal(row_keys[:, None], keys[None, :])
        match = match & (index[None, :] < num_columns) & (index[None, :] != row_ids[:, None])
        match_int = tf.cast(match, tf.int32)
        running = tf.cumsum(match_int, axis=1) + count[:, None]
        ends_here = match & tf.equal(running, limit[:, None])
        block_bound = tf.reduce_min(tf.where(ends_here, index[None, :] + 1, num_columns), axis=1)
        return [k + 1, count + tf.reduce_sum(match_int, axis=1), tf.minimum(bound, block_bound)]

    _, count, bound = tf.while_loop(
        lambda k, *_: k < num_blocks,
        body,
        [tf.constant(0), tf.zeros([num_rows], tf.int32), tf.fill([num_rows], tf.cast(num_columns, tf.int32))],
        maximum_iterations=num_blocks,
        parallel_iterations=1,
    )
    return count, tf.where(limit > 0, bound, tf.zeros_like(bound))


def _key_segments(column_keys, num_columns):
    """Segment ids `[columns]` int32 (< columns), equal exactly for equal keys (sort-based: XLA compiles it)."""
    order = tf.argsort(column_keys)
    ordered = tf.gather(column_keys, order)
    starts = tf.cast(tf.not_equal(ordered[1:], ordered[:-1]), tf.int32)
    ordered_segment = tf.cumsum(tf.concat([tf.zeros([1], tf.int32), starts], axis=0))
    return tf.scatter_nd(order[:, None], ordered_segment, [num_columns])


def _self_first_order(self_index, num_columns):
    """A column order putting row r's own column (`self_index[r]`) at position r, the others after, by index."""
    num_rows = tf.shape(self_index)[0]
    rank = tf.tensor_scatter_nd_update(num_rows + tf.range(num_columns), self_index[:, None], tf.range(num_rows))
    return tf.argsort(rank)


def _blockwise_out_core(anchors, contrast, column_keys, self_index, temperature, block_size):
    """`_blockwise_core` for `[rows]` keys, `variant="out"`, `denominator="all"`, no cap: the default loss.

    Same results as the general form, with one or two [anchors, block_size]
    buffers alive instead of ~5, no XLA compilation, and, when the anchors
    are the contrast set, half the matrix products (benchmarks/RESULTS.md):

    - Positives without blocks. P(i) is "same key, not i itself", so
      sum_{p in P(i)} s_ip = a_i . (K(i) - c_self(i)) / tau, with K(i) the
      sum of the contrast rows with i's key (the anchor's own column
      `self_index[i]` carries its key), and |P(i)| = their count - 1; the
      positives' part of the gradient is per-key sums too: O(rows x dim).
    - Only the softmax denominator needs blocks. Each logit block is one
      matmul of augmented rows [a_i / tau, t_i, 1] with [c_j, 1, b_j] (b_j:
      the masking value on padded columns), so a per-row term t_i costs no
      pass over the block: forward, t_i = -(mean positive logit) (<= the row
      maximum, so the largest term is >= 1 and nothing that matters
      underflows), then exp and a row sum; a block that overflows is redone
      with its row maxima (online log-sum-exp), raising t_i. Backward,
      t_i = log|w_i| - log Z_i: the block's exp is the row weight times the
      softmax and goes straight into the two gradient products.
    - The anchors' own entries: the columns are visited in an order that puts
      row r's own column at position r, so in block k they are the diagonal
      of the k-th [block, block] row block, set in place (`set_diag`).
    - Anchors == contrast ("paired", below): the logits are symmetric, and
      each pair of blocks is visited once, serving both of its orders.
    Every op on a block reuses its buffer; the passes run as plain
    TensorFlow ops (XLA compiles them too when the caller's function is
    jit-compiled).
    """
    dtype = anchors.dtype
    num_rows = anchors.shape[0] if anchors.shape[0] is not None else tf.shape(anchors)[0]
    dim = anchors.shape[1] if anchors.shape[1] is not None else tf.shape(anchors)[1]
    if contrast.shape[0] is not None and isinstance(num_rows, int):
        num_columns = contrast.shape[0]
        num_blocks = max(1, -(-num_columns // block_size))
        num_row_blocks = max(1, -(-num_rows // block_size))
    else:
        num_columns = tf.shape(contrast)[0]
        num_blocks = tf.maximum(1, (num_columns + block_size - 1) // block_size)
        num_row_blocks = tf.maximum(1, (num_rows + block_size - 1) // block_size)
    column_padding = num_blocks * block_size - num_columns
    row_padding = num_row_blocks * block_size - num_rows
    no_row_padding = isinstance(row_padding, int) and row_padding == 0
    inverse_temperature = tf.constant(1.0 / temperature, dtype)
    masked = tf.constant(_MASKED_LOGIT, dtype)
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).tiny, dtype)
    column_bias = tf.concat([tf.zeros([num_columns], dtype), tf.fill([column_padding], masked)], axis=0)
    ones = tf.ones([block_size, 1], dtype)
    term_column = tf.one_hot(dim, dim + 2, dtype=dtype)[None, :]  # where t_i sits in the augmented rows

    def pad_rows(tensor):
        return tensor if no_row_padding else tf.pad(tensor, [[0, row_padding]] + [[0, 0]] * (tensor.shape.rank - 1))

    def augment(anchor_matrix, term):
        """`[padded rows, dim + 2]`: [a_i / tau, t_i, 1], zero rows for the padding."""
        term = term[:, None]
        return pad_rows(tf.concat([anchor_matrix * inverse_temperature, term, tf.ones_like(term)], axis=1))

    def columns_of(contrast_matrix, order, k):
        """Block k's contrast rows `[block, dim]` (padding: any row, masked by b_j) and their augmented form."""
        start = k * block_size
        columns = tf.gather(contrast_matrix, tf.slice(order, [start], [block_size]))
        bias = tf.slice(column_bias, [start], [block_size])[:, None]
        return columns, tf.concat([columns, ones, bias], axis=1)

    def masked_logits(augmented_anchors, augmented_columns, k):
        """s_ij + t_i + b_j over block k, the anchors' own entries set to the masking value (in place)."""
        logits = tf.matmul(augmented_anchors, augmented_columns, transpose_b=True)
        square = tf.reshape(logits, [num_row_blocks, block_size, block_size])
        own = tf.equal(tf.range(num_row_blocks), k)[:, None]
        diagonal = tf.where(own, masked, tf.linalg.diag_part(square))
        return tf.reshape(tf.linalg.set_diag(square, diagonal), [-1, block_size])

    def forward(augmented_anchors, contrast_matrix, order):
        def body(k, augmented_anchors, row_sum):
            _, augmented_columns = columns_of(contrast_matrix, order, k)
            total = row_sum + tf.reduce_sum(tf.exp(masked_logits(augmented_anchors, augmented_columns, k)), axis=1)

            def rescaled():  # a row overflowed: raise every t_i by its block maximum (and its sum so far)
                logits = masked_logits(augmented_anchors, augmented_columns, k)  # recomputed: the exp above is in place
                raise_by = tf.maximum(tf.reduce_max(logits, axis=1), tf.math.log(tf.maximum(row_sum, tiny)))
                raise_by = tf.maximum(raise_by, tf.zeros_like(raise_by))
                block_sum = tf.reduce_sum(tf.exp(logits - raise_by[:, None]), axis=1)
                return augmented_anchors - raise_by[:, None] * term_column, row_sum * tf.exp(-raise_by) + block_sum

            augmented_anchors, row_sum = tf.cond(
                tf.reduce_all(tf.math.is_finite(total)), lambda: (augmented_anchors, total), rescaled
            )
            return [k + 1, augmented_anchors, row_sum]

        _, augmented_anchors, row_sum = tf.while_loop(
            lambda k, *_: k < num_blocks, body,
            [tf.constant(0), augmented_anchors, tf.zeros([num_row_blocks * block_size], dtype)],
            maximum_iterations=num_blocks, parallel_iterations=1,  # one block in flight
        )
        return -augmented_anchors[:num_rows, dim] + tf.math.log(tf.maximum(row_sum[:num_rows], tiny))

    def backward(augmented_anchors, signed_anchors, contrast_matrix, order):
        def body(k, anchor_grad, contrast_grads):
            columns, augmented_columns = columns_of(contrast_matrix, order, k)
            weighted = tf.exp(masked_logits(augmented_anchors, augmented_columns, k))  # |w_i| softmax_ij
            anchor_grad += tf.matmul(weighted, columns)
            contrast_block = tf.matmul(weighted, signed_anchors, transpose_a=True)[:, :dim]
            return [k + 1, anchor_grad, contrast_grads.write(k, contrast_block)]

        grads = tf.TensorArray(dtype, size=num_blocks, element_shape=tf.TensorShape([block_size, None]))
        _, anchor_grad, grads = tf.while_loop(
            lambda k, *_: k < num_blocks, body,
            [tf.constant(0), tf.zeros([num_row_blocks * block_size, dim], dtype), grads],
            maximum_iterations=num_blocks, parallel_iterations=1,
        )
        return anchor_grad[:num_rows], grads.concat()  # [padded columns, dim], in `order`

    # Anchors == contrast (static shapes, as many rows as columns: contrast_mode "all", every sample an
    # anchor, no queue; then self_index is 0..rows-1): s is symmetric, so block pairs are visited once.
    # Slab k = the row blocks k, k+1, ..., k+half (cyclically) against column block k: its logits serve
    # row i (its sum over block k) and, transposed, the rows of block k (their sums over the slab), so
    # each unordered pair of blocks costs one matmul instead of two. The slab's first tile (k, k) holds
    # both orders itself, and with an even number of blocks the last tile (distance nb / 2) is met from
    # both of its ends: their transposed direction is masked (`reverse_mask`).
    paired = isinstance(num_rows, int) and isinstance(num_columns, int) and num_rows == num_columns
    if paired:
        half = num_blocks // 2
        slab = (half + 1) * block_size
        pieces = [tf.fill([block_size], masked)]
        if half > 0:
            last = tf.fill([block_size], masked) if num_blocks % 2 == 0 else tf.zeros([block_size], dtype)
            pieces += [tf.zeros([(half - 1) * block_size], dtype), last]
        reverse_mask = tf.concat(pieces, axis=0)
        first_tile = tf.equal(tf.range(half + 1), 0)[:, None]
        extend = lambda t: tf.concat([t, t[: half * block_size]], axis=0)  # noqa: E731  (cyclic: + half blocks)

    def paired_operands(features, term):
        """Rows [f_i, t_i + b_i, 1] (cyclically extended), columns [f_j / tau, 1, b_j], -t_i (extended), t_j."""
        padded, term = pad_rows(features), pad_rows(term)
        ones_column = tf.ones_like(term)[:, None]
        rows = extend(tf.concat([padded, (term + column_bias)[:, None], ones_column], axis=1))
        columns = tf.concat([padded * inverse_temperature, ones_column, column_bias[:, None]], axis=1)
        return rows, columns, extend(-term), term

    def paired_logits(rows, columns, negative_term, term, k):
        """Slab k: `[slab, dim + 2]` rows, s_ij + t_i (+ masks) and s_ij + t_j (+ masks), `[slab, block]` each."""
        start = k * block_size
        slab_rows = tf.slice(rows, [start, 0], [slab, -1])
        logits = tf.matmul(slab_rows, tf.slice(columns, [start, 0], [block_size, -1]), transpose_b=True)
        square = tf.reshape(logits, [half + 1, block_size, block_size])
        diagonal = tf.where(first_tile, masked, tf.linalg.diag_part(square))  # the anchors' own entries
        logits = tf.reshape(tf.linalg.set_diag(square, diagonal), [slab, block_size])
        back = tf.slice(negative_term, [start], [slab]) + reverse_mask
        reverse = logits + back[:, None] + tf.slice(term, [start], [block_size])[None, :]
        return slab_rows, logits, reverse

    def shift_window(window):
        return tf.concat([window[block_size:], tf.zeros_like(window[:block_size])], axis=0)

    def unwrap(blocks, window):
        """`[rows, ...]`: the finished blocks, plus what the last slabs put past the end (blocks 0..half-1)."""
        if half > 0:
            wrapped = window[: half * block_size]
            padding = [[0, (num_blocks - half) * block_size]] + [[0, 0]] * (wrapped.shape.rank - 1)
            blocks += tf.pad(wrapped, padding)
        return blocks[:num_rows]

    def paired_forward(features, term):
        """`[rows]`: sum_{j != i} exp(s_ij + t_i)."""
        rows, columns, negative_term, padded_term = paired_operands(features, term)

        def body(k, window, sums):
            _, logits, reverse = paired_logits(rows, columns, negative_term, padded_term, k)
            with tf.control_dependencies([reverse]):  # then the exp can reuse the logits' buffer
                window += tf.reduce_sum(tf.exp(logits), axis=1)
            done = window[:block_size] + tf.reduce_sum(tf.exp(reverse), axis=0)
            return [k + 1, shift_window(window), sums.write(k, done)]

        sums = tf.TensorArray(dtype, size=num_blocks, element_shape=tf.TensorShape([block_size]))
        _, window, sums = tf.while_loop(
            lambda k, *_: k < num_blocks, body, [tf.constant(0), tf.zeros([slab], dtype), sums],
            maximum_iterations=num_blocks, parallel_iterations=1,
        )
        return unwrap(sums.concat(), window)

    def paired_backward(features, term, sign, nonnegative):
        """`[rows, dim]`: sum_j (G_ij + G_ji) f_j / tau, G_ij = sign_i exp(s_ij + t_i) (the softmax part)."""
        rows, columns, negative_term, padded_term = paired_operands(features, term)
        signs = pad_rows(sign)
        extended_signs = extend(signs)

        def body(k, window, grads):
            start = k * block_size
            slab_rows, logits, reverse = paired_logits(rows, columns, negative_term, padded_term, k)
            with tf.control_dependencies([reverse]):
                weighted = tf.exp(logits)  # |w_i| softmax_ij, rows i of the slab
            weighted_reverse = tf.exp(reverse)  # |w_j| softmax_ji, j in block k

            def signed():
                row_sign = tf.slice(extended_signs, [start], [slab])[:, None]
                return weighted * row_sign + weighted_reverse * tf.slice(signs, [start], [block_size])[None, :]

            both = tf.cond(nonnegative, lambda: weighted + weighted_reverse, signed)  # G_ij + G_ji
            window += tf.matmul(both, tf.slice(columns, [start, 0], [block_size, dim]))
            done = window[:block_size] + tf.matmul(both, slab_rows, transpose_a=True)[:, :dim] * inverse_temperature
            return [k + 1, shift_window(window), grads.write(k, done)]

        grads = tf.TensorArray(dtype, size=num_blocks, element_shape=tf.TensorShape([block_size, None]))
        _, window, grads = tf.while_loop(
            lambda k, *_: k < num_blocks, body, [tf.constant(0), tf.zeros([slab, dim], dtype), grads],
            maximum_iterations=num_blocks, parallel_iterations=1,
        )
        return unwrap(grads.concat(), window)

    column_keys = tf.stop_gradient(column_keys)

    @tf.custom_gradient
    def core(anchor_matrix, contrast_matrix):
        anchor_matrix, contrast_matrix = tf.stop_gradient(anchor_matrix), tf.stop_gradient(contrast_matrix)
        column_segment = _key_segments(column_keys, num_columns)
        anchor_segment = tf.gather(column_segment, self_index)
        order = _self_first_order(self_index, num_columns)
        padded_order = tf.pad(order, [[0, column_padding]])

        def positive_sums():  # [rows, dim]: sum of the contrast rows in P(i)
            key_sum = tf.math.unsorted_segment_sum(contrast_matrix, column_segment, num_columns)
            return tf.gather(key_sum, anchor_segment) - tf.gather(contrast_matrix, self_index)

        key_count = tf.math.unsorted_segment_sum(tf.ones([num_columns], dtype), column_segment, num_columns)
        pos_count = tf.gather(key_count, anchor_segment) - 1
        counts = pos_count > 0
        safe_count = tf.where(counts, pos_count, tf.ones_like(pos_count))
        positive_mean = tf.reduce_sum(anchor_matrix * positive_sums(), axis=1) * inverse_temperature / safe_count
        robust = lambda: forward(augment(anchor_matrix, -positive_mean), contrast_matrix, padded_order)  # noqa: E731
        if paired:
            # t_i = -(mean positive logit) without the per-block overflow check: a row sum that overflows
            # sends the whole pass to the checked form (tau far below 0.1 with normalised features).
            sums = paired_forward(anchor_matrix, -positive_mean)
            log_normaliser = tf.cond(
                tf.reduce_all(tf.math.is_finite(sums)),
                lambda: positive_mean + tf.math.log(tf.maximum(sums, tiny)),
                robust,
            )
        else:
            log_normaliser = robust()
        neg = tf.where(counts, log_normaliser - positive_mean, tf.zeros_like(positive_mean))

        def grad(upstream, _unused):
            weight = tf.where(counts, upstream, tf.zeros_like(upstream))
            log_weight = tf.where(tf.not_equal(weight, 0), tf.math.log(tf.abs(weight)), masked)
            sign = tf.where(weight < 0, -tf.ones_like(weight), tf.ones_like(weight))
            per_positive = (weight / safe_count)[:, None]
            if paired:  # one gradient, through the anchors (the contrast rows are the same rows)
                nonnegative = tf.reduce_all(weight >= 0)
                total = paired_backward(anchor_matrix, log_weight - log_normaliser, sign, nonnegative)
                with tf.control_dependencies([total]):  # the positives' part after the loop (see below)
                    weighted = per_positive * anchor_matrix * inverse_temperature
                    total += weighted - per_positive * positive_sums() * inverse_temperature
                with tf.control_dependencies([total]):
                    key_grad = tf.math.unsorted_segment_sum(weighted, anchor_segment, num_columns)
                    total -= tf.gather(key_grad, column_segment)
                return total, None
            augmented_anchors = augment(anchor_matrix, log_weight - log_normaliser)
            signed_anchors = tf.cond(  # the contrast product needs w_i's sign back (a copy only if one is < 0)
                tf.reduce_all(weight >= 0),
                lambda: augmented_anchors,
                lambda: augmented_anchors * pad_rows(sign)[:, None],
            )
            anchor_grad, ordered_contrast_grad = backward(
                augmented_anchors, signed_anchors, contrast_matrix, padded_order
            )
            # The positives' part after the loop (control dependencies), anchors then contrast, so that
            # its [rows, dim] temporaries never sit alongside the blocks or each other.
            with tf.control_dependencies([anchor_grad, ordered_contrast_grad]):
                anchor_grad = (sign[:, None] * anchor_grad - per_positive * positive_sums()) * inverse_temperature
            with tf.control_dependencies([anchor_grad]):
                # Back to the contrast order (the padded columns' rows are never gathered).
                contrast_grad = tf.gather(ordered_contrast_grad, tf.math.invert_permutation(order))
                weighted = per_positive * anchor_matrix * inverse_temperature
                key_grad = tf.math.unsorted_segment_sum(weighted, anchor_segment, num_columns)
                contrast_grad = tf.tensor_scatter_nd_add(contrast_grad, self_index[:, None], weighted)
            return anchor_grad, contrast_grad - tf.gather(key_grad, column_segment)

        return (neg, tf.cast(counts, dtype)), grad

    return core(anchors, contrast)


def _blockwise_core(
    anchors, contrast, anchor_keys, column_keys, self_index, temperature, variant, block_size,
    denominator="all", cap_bounds=None,
):
    """Streaming form: `(-(mean log-probability of the positives) [A], anchor counts [A] float)`.

    Forward: one pass over column blocks keeps, per anchor, an online
    log-sum-exp over the denominator set, the sum and count of positive
    logits, and (for "in") an online log-sum-exp over P(i); "one_positive"
    needs a second pass, once the negatives' log-sum-exp n_i is known, for
    sum_p l(i, p) (or its log-sum-exp) and the weight c_i of the negatives
    in the gradient. Backward: a second pass recomputes each block's logits
    and probabilities and accumulates dL/d anchors = G C / tau and
    dL/d contrast = G^T A / tau, with G = dL/d logits:
    "all"/"only_negatives": p - pos/|P| ("out") or p - q ("in"), p the
    softmax over the denominator set; "one_positive": c_i * softmax_N on
    the negatives and -(1 - sigma_ip)/|P| ("out") or -r_ip (1 - sigma_ip)
    ("in") on the positives, with sigma_ip = exp(l(i, p)),
    r_ip = softmax_P(l(i, .)), c_i = sum_p of the positives' factors.
    Peak memory is a few [anchors, block_size] matrices.

    `cap_bounds`: None, or `(row_sample, batch_bound, queue_bound,
    num_samples, num_batch_columns)` from `positives_cap`: a matching batch
    column of sample t stays positive for row r when t is the row's own
    sample or t < batch_bound[r]; a matching queue column q when
    q < queue_bound[r]; the other matching columns are capped out.

    The default loss (`[rows]` keys, "out", "all", no cap) goes to
    `_blockwise_out_core`, which needs no positives in the blocks, keeps one
    or two blocks alive and compiles nothing; what follows is the general
    form, for every other option.
    """
    if denominator == "all" and variant == "out" and cap_bounds is None and anchor_keys.shape.rank == 1:
        return _blockwise_out_core(anchors, contrast, column_keys, self_index, temperature, block_size)
    dtype = anchors.dtype
    multi_hot = anchor_keys.shape.rank == 2
    num_rows = tf.shape(anchors)[0]
    if contrast.shape[0] is not None:  # static sizes: what XLA needs (fixed trip count and TensorArray size)
        num_columns = contrast.shape[0]
        num_blocks = max(1, -(-num_columns // block_size))
    else:
        num_columns = tf.shape(contrast)[0]
        num_blocks = tf.maximum(1, (num_columns + block_size - 1) // block_size)
    padding = num_blocks * block_size - num_columns
    key_padding = [[0, padding]] + [[0, 0]] * (column_keys.shape.rank - 1)
    keys_padded = tf.pad(column_keys, key_padding)
    inverse_temperature = tf.constant(1.0 / temperature, dtype)
    masked = tf.constant(_MASKED_LOGIT, dtype)
    anchor_keys = tf.stop_gradient(anchor_keys)
    one_positive = denominator == "one_positive"

    def block(anchor_matrix, contrast_padded, k):
        """Columns, logits, the denominator set (bool) and the positives (0/1) of block k."""
        start = k * block_size
        columns = tf.slice(contrast_padded, [start, 0], [block_size, -1])
        keys = tf.slice(keys_padded, [start] + [0] * (column_keys.shape.rank - 1), [block_size] + [-1] * (column_keys.shape.rank - 1))
        logits = tf.matmul(anchor_matrix, columns, transpose_b=True) * inverse_temperature
        column_index = start + tf.range(block_size)
        valid = (column_index[None, :] < num_columns) & (column_index[None, :] != self_index[:, None])
        if multi_hot:
            match = tf.matmul(tf.cast(anchor_keys, dtype), tf.cast(keys, dtype), transpose_b=True) > 0
        else:
            match = tf.equal(anchor_keys[:, None], keys[None, :])
        match = match & valid
        if cap_bounds is None:
            kept = match
        else:
            row_sample, batch_bound, queue_bound, num_samples, num_batch_columns = cap_bounds
            column_sample = tf.math.floormod(column_index, num_samples)[None, :]
            in_queue = (column_index >= num_batch_columns)[None, :]
            keep = tf.where(
                in_queue,
                (column_index - num_batch_columns)[None, :] < queue_bound[:, None],
                tf.equal(column_sample, row_sample[:, None]) | (column_sample < batch_bound[:, None]),
            )
            kept = match & keep
        if denominator == "all":
            in_denominator = valid & ~(match & ~kept)  # everything but the anchor and the capped out
        else:
            in_denominator = valid & ~match  # the negatives
        return columns, logits, in_denominator, tf.cast(kept, dtype)

    def online_log_sum_exp(old_max, old_sum, values, selected, factor=None):
        """One block of an online log-sum-exp over `values` where `selected` (optionally a weighted second sum)."""
        values = tf.where(selected, values, masked)
        new_max = tf.maximum(old_max, tf.reduce_max(values, axis=1))
        scaled = tf.exp(values - new_max[:, None]) * tf.cast(selected, dtype)
        rescale = tf.exp(old_max - new_max)
        new_sum = old_sum * rescale + tf.reduce_sum(scaled, axis=1)
        if factor is None:
            return new_max, new_sum
        return new_max, new_sum, rescale, tf.reduce_sum(scaled * factor, axis=1)

    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).tiny, dtype)

    def forward(anchor_matrix, contrast_padded):
        def body(k, row_max, row_sum, pos_sum, pos_count, pos_max, pos_exp_sum, den_count):
            _, logits, in_denominator, positive = block(anchor_matrix, contrast_padded, k)
            new_max, row_sum = online_log_sum_exp(row_max, row_sum, logits, in_denominator)
            new_pos_max, pos_exp_sum = online_log_sum_exp(pos_max, pos_exp_sum, logits, positive > 0)
            pos_sum += tf.reduce_sum(positive * logits, axis=1)
            pos_count += tf.reduce_sum(positive, axis=1)
            if denominator == "only_negatives":  # an anchor needs a negative to count
                den_count += tf.reduce_sum(tf.cast(in_denominator, dtype), axis=1)
            return [k + 1, new_max, row_sum, pos_sum, pos_count, new_pos_max, pos_exp_sum, den_count]

        lowest, zeros = tf.fill([num_rows], masked), tf.zeros([num_rows], dtype)
        start = [lowest, zeros, zeros, zeros, lowest, zeros, zeros]  # row max/sum, pos sum/count, pos max/sum, den count
        _, row_max, row_sum, pos_sum, pos_count, pos_max, pos_exp_sum, den_count = tf.while_loop(
            lambda k, *_: k < num_blocks, body, [tf.constant(0)] + start, maximum_iterations=num_blocks,
            parallel_iterations=1,  # one block in flight: memory stays ~ anchors x block_size
        )
        log_normaliser = row_max + tf.math.log(tf.maximum(row_sum, tiny))
        log_positive = pos_max + tf.math.log(tf.maximum(pos_exp_sum, tiny))
        negative_weight = zeros
        if one_positive:
            # Second pass: l(i, p) = -softplus(n_i - s_ip) and 1 - sigma_ip = sigmoid(n_i - s_ip).
            def second(k, lp_sum, lp_max, lp_exp_sum, miss_sum):
                _, logits, _, positive = block(anchor_matrix, contrast_padded, k)
                gap = log_normaliser[:, None] - logits
                log_prob, miss = -tf.nn.softplus(gap), tf.sigmoid(gap)
                if variant == "out":
                    return [k + 1, lp_sum + tf.reduce_sum(positive * log_prob, axis=1), lp_max, lp_exp_sum,
                            miss_sum + tf.reduce_sum(positive * miss, axis=1)]
                new_max, lp_exp_sum, rescale, block_miss = online_log_sum_exp(
                    lp_max, lp_exp_sum, log_prob, positive > 0, factor=miss
                )
                return [k + 1, lp_sum, new_max, lp_exp_sum, miss_sum * rescale + block_miss]

            _, lp_sum, lp_max, lp_exp_sum, miss_sum = tf.while_loop(
                lambda k, *_: k < num_blocks, second, [tf.constant(0), zeros, lowest, zeros, zeros],
                maximum_iterations=num_blocks, parallel_iterations=1,
            )
            safe_count = tf.where(pos_count > 0, pos_count, tf.ones_like(pos_count))
            if variant == "out":
                pos_sum = lp_sum  # sum_p l(i, p)
                negative_weight = miss_sum / safe_count
            else:
                log_positive = lp_max + tf.math.log(tf.maximum(lp_exp_sum, tiny))  # log sum_p exp l(i, p)
                negative_weight = miss_sum / tf.maximum(lp_exp_sum, tiny)
        return log_normaliser, log_positive, pos_sum, pos_count, den_count, negative_weight

    def backward(anchor_matrix, contrast_padded, weight, log_normaliser, log_positive, safe_count, negative_weight):
        def body(k, anchor_grad, contrast_grads):
            columns, logits, in_denominator, positive = block(anchor_matrix, contrast_padded, k)
            probability = tf.exp(tf.where(in_denominator, logits, masked) - log_normaliser[:, None]) * tf.cast(
                in_denominator, dtype
            )
            if one_positive:
                gap = log_normaliser[:, None] - logits
                miss = tf.sigmoid(gap)
                if variant == "out":
                    target = positive * miss / safe_count[:, None]
                else:
                    log_prob = tf.where(positive > 0, -tf.nn.softplus(gap), masked)
                    target = positive * tf.exp(log_prob - log_positive[:, None]) * miss
                g = (negative_weight[:, None] * probability - target) * weight[:, None]
            else:
                if variant == "out":
                    target = positive / safe_count[:, None]
                else:
                    target = positive * tf.exp(tf.where(positive > 0, logits, masked) - log_positive[:, None])
                g = (probability - target) * weight[:, None]
            anchor_grad += tf.matmul(g, columns)
            contrast_grads = contrast_grads.write(k, tf.matmul(g, anchor_matrix, transpose_a=True))
            return [k + 1, anchor_grad, contrast_grads]

        grads = tf.TensorArray(dtype, size=num_blocks, element_shape=tf.TensorShape([block_size, None]))
        _, anchor_grad, grads = tf.while_loop(
            lambda k, *_: k < num_blocks,
            body,
            [tf.constant(0), tf.zeros_like(anchor_matrix), grads],
            maximum_iterations=num_blocks,
            parallel_iterations=1,
        )
        return anchor_grad, grads.concat()[:num_columns]

    # Inside a graph with static sizes, each pass is compiled with XLA: the
    # loop then fuses the per-block exp/compare/reduce work and keeps one block
    # of temporaries alive (measured: benchmarks/RESULTS.md). Eagerly, or with
    # dynamic sizes, the passes run as plain TensorFlow ops.
    if isinstance(num_blocks, int) and tf.inside_function():
        forward = tf.function(forward, jit_compile=True, autograph=False)
        backward = tf.function(backward, jit_compile=True, autograph=False)

    @tf.custom_gradient
    def core(anchor_matrix, contrast_matrix):
        contrast_padded = tf.pad(contrast_matrix, [[0, padding], [0, 0]])
        # The passes are never differentiated by autodiff (the custom gradient
        # below is the derivative); cutting their inputs keeps tapes from
        # asking for while-loop gradients of an XLA function.
        log_normaliser, log_positive, pos_sum, pos_count, den_count, negative_weight = forward(
            tf.stop_gradient(anchor_matrix), tf.stop_gradient(contrast_padded)
        )
        counts = pos_count > 0
        if denominator == "only_negatives":
            counts = counts & (den_count > 0)
        safe_count = tf.where(pos_count > 0, pos_count, tf.ones_like(pos_count))
        if one_positive:
            mean_log_prob = pos_sum / safe_count if variant == "out" else log_positive - tf.math.log(safe_count)
        elif variant == "out":
            mean_log_prob = pos_sum / safe_count - log_normaliser
        else:
            mean_log_prob = log_positive - tf.math.log(safe_count) - log_normaliser
        neg = tf.where(counts, -mean_log_prob, tf.zeros_like(mean_log_prob))

        def grad(upstream):
            weight = tf.where(counts, upstream, tf.zeros_like(upstream)) * inverse_temperature
            inputs = (anchor_matrix, contrast_padded, weight, log_normaliser, log_positive, safe_count, negative_weight)
            return backward(*[tf.stop_gradient(t) for t in inputs])

        return (neg, tf.stop_gradient(tf.cast(counts, dtype))), lambda upstream, _unused: grad(upstream)

    return core(anchors, contrast)


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
):
    """SupCon loss of every anchor, and which anchors have a positive.

    Args:
      features: `[batch, views, dim]` float (any float dtype; computed in
        float32, or float64 for float64 input). The projected embeddings;
        expected L2-normalised unless `normalize=True`. Features of rank > 3,
        `[batch, views, ...]`, are flattened per view to `[batch, views, -1]`
        first (and `normalize` then normalises the flattened vectors).
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
        Normalised like `features` when `normalize=True`. `[K, ...]` is
        flattened to `[K, -1]` like `features`.
      queue_labels: `[K]` ids or `[K, classes]` multi-hot, in the same form
        as `labels`; required when `labels` is given. Without `labels`
        (SimCLR) every queue entry is a negative. Not supported with `mask`.
      implementation: "dense" materialises the [anchors, contrast] logit
        matrix; "blockwise" streams over blocks of `block_size` contrast
        columns with an online log-sum-exp and recomputes the blocks in a
        custom backward pass, so memory grows like anchors x block_size;
        "auto" (default) picks blockwise when the contrast set has at least
        `BLOCKWISE_THRESHOLD` rows and no `mask` is given (a mask is always
        dense). Both give the same values and gradients to float32 precision.
      block_size: contrast columns per block for "blockwise".
      denominator: which contrast entries form the softmax denominator of
        positive p (google-research's `denominator_mode`; see the module
        docstring for the formulas). `"all"` (default): P(i) and N(i), i.e.
        every entry but the anchor (and the capped-out ones), eq. 2 / eq. 3.
        `"one_positive"`: p itself plus N(i), so each positive competes only
        with the negatives, never with the other positives (the own other
        views included). `"only_negatives"`: N(i) only, not even p; an anchor
        without a negative is then excluded like one without a positive. The
        variants keep their form: "out" averages the log-probabilities
        l(i, p) over P(i), "in" takes the log of the mean of exp l(i, p).
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
        whatever their weight, the kept ones keeping their weight. Without
        labels or mask (SimCLR) there is nothing to cap.

    Returns:
      `PerAnchorLoss(loss, has_positive)`, both
      `[num_anchor_samples, anchor_views]` (anchor_views is `views` for
      `"all"` and 1 for `"one"`). `has_positive` says which anchors count
      in the mean: |P(i)| > 0, and, for `denominator="only_negatives"`,
      |N(i)| > 0.

    Raises:
      ValueError: for a rank < 3 or a non-float dtype, both `labels` and
        `mask`, a batch mismatch, a non-positive temperature, non-finite
        features (checked when running eagerly), an unknown `contrast_mode`,
        `variant` or `denominator`, a `positives_cap` that is not -1 or a
        non-negative multiple of the number of views.
    """
    temperature = _check_positive_number("temperature", temperature)
    base_temperature = (
        temperature if base_temperature is None else _check_positive_number("base_temperature", base_temperature)
    )
    _check_choice("contrast_mode", contrast_mode, CONTRAST_MODES)
    _check_choice("variant", variant, VARIANTS)
    _check_choice("implementation", implementation, IMPLEMENTATIONS)
    _check_choice("denominator", denominator, DENOMINATORS)
    positives_cap = _check_positives_cap(positives_cap)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"`block_size` must be a positive int, received: block_size={block_size!r}")
    features = _flatten_trailing(tf.convert_to_tensor(features), 2)
    labels = None if labels is None else tf.convert_to_tensor(labels)
    mask = None if mask is None else tf.convert_to_tensor(mask)
    _validate_inputs(features, labels, mask, anchor_offset, num_anchor_samples)
    _check_cap_against_views(positives_cap, features)
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

    # Index of each anchor in the contrast set, to remove it from A(i) and P(i).
    view_ids = tf.repeat(tf.range(anchor_views), num_anchor)
    sample_ids = tf.tile(tf.range(num_anchor), [anchor_views]) + anchor_offset
    self_index = view_ids * num_samples + sample_ids

    queue = None
    if queue_features is not None:
        queue = tf.stop_gradient(tf.cast(queue_features, dtype))
        if normalize:
            queue = tf.math.l2_normalize(queue, axis=-1, epsilon=1e-12)

    if implementation == "auto":
        contrast_rows = features.shape[0] * features.shape[1] if features.shape.is_fully_defined() else None
        if queue is not None and contrast_rows is not None:
            contrast_rows = None if queue.shape[0] is None else contrast_rows + queue.shape[0]
        use_blockwise = mask is None and contrast_rows is not None and contrast_rows >= BLOCKWISE_THRESHOLD
    else:
        use_blockwise = implementation == "blockwise"
        if use_blockwise and mask is not None:
            raise ValueError("implementation='blockwise' does not take a `mask`; use 'dense' or 'auto'")

    if use_blockwise:
        anchor_ids, column_ids = _blockwise_ids(
            labels, queue_labels, queue, num_samples, num_views, anchor_offset, num_anchor, anchor_views
        )
        cap_bounds = None
        if positives_cap >= 0 and labels is not None:  # without labels there is nothing to cap
            cap_bounds = _blockwise_cap_bounds(
                labels, queue_labels, queue, num_samples, num_views, anchor_offset, num_anchor, anchor_views,
                positives_cap, block_size,
            )
        if queue is not None:
            contrast = tf.concat([contrast, queue], axis=0)
        neg_mean_log_prob, counts = _blockwise_core(
            anchors, contrast, anchor_ids, column_ids, self_index, temperature, variant, block_size,
            denominator=denominator, cap_bounds=cap_bounds,
        )
        has_positive = counts > 0
    else:
        neg_mean_log_prob, has_positive = _dense_core(
            anchors, contrast, queue, labels, mask, queue_labels, self_index, num_samples, num_views,
            anchor_offset, num_anchor, anchor_views, temperature, variant, dtype,
            denominator=denominator, positives_cap=positives_cap,
        )
    loss = (temperature / base_temperature) * neg_mean_log_prob
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
    implementation="auto",
    block_size=DEFAULT_BLOCK_SIZE,
    denominator="all",
    positives_cap=-1,
):
    """Scalar SupCon batch loss: mean of L(i) over anchors with a positive.

    `labels=None, mask=None` is SimCLR's NT-Xent; integer or multi-hot
    `labels` is SupCon; a `[batch, batch]` `mask` is anything else. See
    `supcon_per_anchor_loss` for the arguments.

    Args:
      features: `[batch, views, dim]` float embeddings (`[batch, views, ...]`
        is flattened per view).
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
      implementation: "auto" (default), "dense" or "blockwise".
      block_size: contrast columns per block for the blockwise form.
      denominator: "all" (default), "one_positive" or "only_negatives".
      positives_cap: -1 (default, no cap) or a multiple of the views.

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
            implementation=implementation,
            block_size=block_size,
            denominator=denominator,
            positives_cap=positives_cap,
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
      denominator: "all" (default), "one_positive" or "only_negatives"
        (see `supcon_per_anchor_loss`).
      positives_cap: -1 (default, no cap) or a non-negative multiple of the
        number of views (checked against `y_pred` at call time).
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
        denominator="all",
        positives_cap=-1,
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
        _check_choice("denominator", denominator, DENOMINATORS)
        self.temperature = float(temperature)
        self.base_temperature = None if base_temperature is None else float(base_temperature)
        self.contrast_mode = contrast_mode
        self.variant = variant
        self.normalize = bool(normalize)
        self.use_labels = bool(use_labels)
        self.denominator = denominator
        self.positives_cap = _check_positives_cap(positives_cap)

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
            denominator=self.denominator,
            positives_cap=self.positives_cap,
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
            denominator=self.denominator,
            positives_cap=self.positives_cap,
        )
        return config
