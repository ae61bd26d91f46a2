"""The dense form of the SupCon loss: the whole [anchors, contrast] logit matrix at once, autodiff gradients.

`_dense_core` builds the positive weights, capped-out and negative masks of
every anchor against every contrast entry (queue entries included), from the
`weights.PairWeighting` rule called once on [anchor samples, batch] and
[anchor samples, queue], and takes the row-wise log-sum-exp over the
denominator set; it serves every option. Memory grows like anchors x
contrast rows; the blockwise forms (`supcon_tf.losses.blockwise`) stream over
column blocks instead.
"""

import tensorflow as tf

from supcon_tf.losses._inputs import _MASKED_LOGIT


def _weighted_log_mean_exp(values, weight, safe_total):
    """`log(sum_j weight_j exp(values_j) / safe_total)` per row, never taking log 0 on a selected entry."""
    safe_weight = tf.where(weight > 0, weight, tf.ones_like(weight))
    selected = tf.where(weight > 0, values + tf.math.log(safe_weight), tf.constant(_MASKED_LOGIT, values.dtype))
    return tf.reduce_logsumexp(selected, axis=1) - tf.math.log(safe_total)


def _dense_core(
    anchors, contrast, queue, weighting, self_index, num_samples, num_views,
    anchor_offset, num_anchor, anchor_views, temperature, variant, dtype, denominator="all", positives_cap=-1,
    column_counts=None,
):
    """Dense form: `(-(weighted mean log-probability of the positives) [A], anchor counts [A])`.

    `weighting` is the `weights.PairWeighting`. An anchor counts when the
    weights of its positives sum to > 0 (and, for "only_negatives", it has
    a negative); the value of one that does not is meaningless (finite).
    """
    sample_mask = weighting.weigh(weighting.anchor_keys, weighting.sample_keys)  # [b, N], weights
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
    same_class = tf.tile(candidate, [anchor_views, num_views])
    if queue is not None:
        queue_weight = weighting.weigh(weighting.anchor_keys, weighting.queue_keys)  # [b, K]
        queue_candidate = queue_weight > 0
        queue_dropped = tf.zeros_like(queue_candidate)
        if positives_cap >= 0:
            # Queue entries rank after every batch sample, in queue order, one positive each.
            budget = positives_cap - num_views * kept_samples
            queue_rank = tf.cumsum(tf.cast(queue_candidate, tf.int32), axis=1)
            queue_dropped = queue_candidate & (queue_rank > budget[:, None])
        queue_positive = tf.where(queue_candidate & ~queue_dropped, queue_weight, tf.zeros_like(queue_weight))
        contrast = tf.concat([contrast, queue], axis=0)
        positive = tf.concat([positive, tf.tile(queue_positive, [anchor_views, 1])], axis=1)
        excluded = tf.concat([excluded, tf.tile(queue_dropped, [anchor_views, 1])], axis=1)
        negative = tf.concat([negative, tf.tile(~queue_candidate, [anchor_views, 1])], axis=1)
        same_class = tf.concat([same_class, tf.tile(queue_candidate, [anchor_views, 1])], axis=1)

    logits = tf.matmul(anchors, contrast, transpose_b=True) / tf.constant(temperature, dtype)
    in_denominator = ~excluded if denominator in ("all", "class_balanced") else negative
    denominator_logits = logits
    if denominator == "class_balanced":  # each class's terms averaged by its count in A(i)
        class_count = tf.cast(column_counts, dtype)[None, :] - tf.cast(same_class, dtype)
        denominator_logits = logits - tf.math.log(tf.maximum(class_count, 1.0))
    masked_logits = tf.where(in_denominator, denominator_logits, tf.constant(_MASKED_LOGIT, dtype))
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
