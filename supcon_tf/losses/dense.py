"""The dense form of the SupCon loss: the whole [anchors, contrast] logit matrix at once, autodiff gradients.

`_dense_core` builds the positive, capped-out and negative masks of every
anchor against every contrast entry (queue entries included) and takes the
row-wise log-sum-exp over the denominator set; it serves every option,
`mask` included. Memory grows like anchors x contrast rows; the blockwise
forms (`supcon_tf.losses.blockwise`) stream over column blocks instead.
"""

import tensorflow as tf

from supcon_tf.losses._inputs import _MASKED_LOGIT


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
