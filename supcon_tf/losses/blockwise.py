"""The general blockwise form of the SupCon loss: streams over contrast-column blocks, custom gradient.

`_blockwise_core` serves every option: an online log-sum-exp over blocks of
`block_size` columns forward, the blocks recomputed in a custom backward
pass, so memory grows like anchors x block_size. Each block's positive
weights come from the row keys and the block's column keys through the
`weights.PairWeighting` rule `weigh`, inside the loop: weights from labels
never exist as an [N, N] matrix. `positives_cap` is applied through per-row
bounds streamed over key blocks (`_blockwise_cap_bounds`,
`_first_matches_bound`). The default loss with keys compared by equality
goes to the leaner `supcon_tf.losses.blockwise_out._blockwise_out_core`.

The general form's pieces: `_blocks` (sizes, keys, constants), `_block`
(one block's logits, denominator set and positives, with `_cap_kept`),
`_general_forward` (`_first_pass`, then `_one_positive_pass` for
"one_positive", both by `_online_log_sum_exp`), `_mean_log_prob`, and
`_general_backward` (`_logit_gradient`: G = dL/d logits of a block).
"""

from typing import Callable, NamedTuple, Optional, Union

import numpy as np
import tensorflow as tf

from supcon_tf.losses._inputs import _MASKED_LOGIT
from supcon_tf.losses.blockwise_out import _blockwise_out_core


def _blockwise_cap_bounds(
    weighting, num_samples, num_views, anchor_offset, num_anchor, anchor_views, positives_cap, block_size,
):
    """`cap_bounds` of `_blockwise_core` for `positives_cap` >= 0, streamed over key blocks (no [b, N] matrix)."""
    anchor_samples = tf.range(num_anchor) + anchor_offset
    per_sample_cap = positives_cap // num_views
    batch_count, batch_bound = _first_matches_bound(
        weighting.weigh, weighting.anchor_keys, anchor_samples, weighting.sample_keys, per_sample_cap, block_size
    )
    queue_bound = tf.zeros_like(batch_bound)
    if weighting.queue_keys is not None:
        # Queue entries rank after every batch sample, in queue order, one positive each.
        budget = positives_cap - num_views * tf.minimum(batch_count, per_sample_cap)
        _, queue_bound = _first_matches_bound(
            weighting.weigh, weighting.anchor_keys, -tf.ones_like(anchor_samples), weighting.queue_keys, budget,
            block_size,
        )
    tile = lambda t: tf.tile(t, [anchor_views])  # noqa: E731  (rows are view-major: v * b + s)
    return tile(anchor_samples), tile(batch_bound), tile(queue_bound), num_samples, num_views * num_samples


def _pad_keys(keys, num_columns, padded_columns):
    """`keys` `[columns, ...]` padded to `padded_columns` rows by repeating the last one.

    The padded columns are never selected; repeating a real key keeps a
    caller's weight rule on real label rows (an all-zero row could make it
    divide by zero).
    """
    index = tf.minimum(tf.range(padded_columns), tf.maximum(num_columns - 1, 0))
    return tf.gather(keys, index)


def _first_matches_bound(weigh, row_keys, row_ids, column_keys, limit, block_size):
    """Streams over column blocks: how many columns match each row, and where its first `limit` matches end.

    A column matches a row when `weigh` gives the pair a weight > 0 and its
    index is not the row's `row_ids` entry (-1: none excluded). Returns
    `(count, bound)`, `[rows]` int32: `count` is the number of matching
    columns; the first `limit` of them (by index) are exactly the matching
    columns with index < `bound` (0 when `limit` <= 0, the number of columns
    when fewer match). Memory: rows x block_size.
    """
    num_rows = tf.shape(row_keys)[0]
    if column_keys.shape[0] is not None:
        num_columns = column_keys.shape[0]
        num_blocks = max(1, -(-num_columns // block_size))
    else:
        num_columns = tf.shape(column_keys)[0]
        num_blocks = tf.maximum(1, (num_columns + block_size - 1) // block_size)
    tail = [0] * (column_keys.shape.rank - 1)
    keys_padded = _pad_keys(column_keys, num_columns, num_blocks * block_size)
    limit = tf.broadcast_to(tf.cast(limit, tf.int32), [num_rows])

    def body(k, count, bound):
        start = k * block_size
        keys = tf.slice(keys_padded, [start] + tail, [block_size] + [-1] * len(tail))
        index = start + tf.range(block_size)
        match = weigh(row_keys, keys) > 0
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


class _Blocks(NamedTuple):
    """What every pass of `_blockwise_core` shares: the options, the sizes, the keys and three constants.

    Rows i are the anchors (`num_rows`, a scalar tensor), columns j the
    contrast rows, visited in `num_blocks` blocks of `block_size`
    (`padding` padded columns at the end; sizes are Python ints when static).
    `keys_padded` holds the column keys, padded like the columns; `weigh`
    gives a block's positive weights from the row and column keys (the
    `weights.PairWeighting` rule); row i is column `self_index[i]`;
    `cap_bounds` is `_blockwise_core`'s.
    """

    dtype: tf.DType
    variant: str
    denominator: str
    weigh: Callable
    block_size: int
    num_rows: tf.Tensor
    num_columns: Union[int, tf.Tensor]
    num_blocks: Union[int, tf.Tensor]
    padding: Union[int, tf.Tensor]
    key_tail: int  # the keys' rank - 1: e.g. 1 for multi-hot keys, 0 for ids
    keys_padded: tf.Tensor
    anchor_keys: tf.Tensor
    self_index: tf.Tensor
    cap_bounds: Optional[tuple]
    inverse_temperature: tf.Tensor
    masked: tf.Tensor
    tiny: tf.Tensor
    counts_padded: Optional[tf.Tensor] = None  # "class_balanced": each column's class count, padded like the keys


def _blocks(
    anchors, contrast, anchor_keys, column_keys, self_index, temperature, variant, block_size, denominator, cap_bounds,
    weigh, column_counts=None,
):
    """The `_Blocks` of `_blockwise_core`'s arguments (static sizes where the contrast rows are known)."""
    dtype = anchors.dtype
    num_rows = tf.shape(anchors)[0]
    if contrast.shape[0] is not None:  # static sizes: what XLA needs (fixed trip count and TensorArray size)
        num_columns = contrast.shape[0]
        num_blocks = max(1, -(-num_columns // block_size))
    else:
        num_columns = tf.shape(contrast)[0]
        num_blocks = tf.maximum(1, (num_columns + block_size - 1) // block_size)
    padding = num_blocks * block_size - num_columns
    keys_padded = _pad_keys(column_keys, num_columns, num_blocks * block_size)
    inverse_temperature = tf.constant(1.0 / temperature, dtype)
    masked = tf.constant(_MASKED_LOGIT, dtype)
    anchor_keys = tf.stop_gradient(anchor_keys)
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).tiny, dtype)
    counts_padded = None
    if column_counts is not None:
        counts_padded = _pad_keys(tf.cast(column_counts, dtype), num_columns, num_blocks * block_size)
    return _Blocks(
        dtype=dtype, variant=variant, denominator=denominator, weigh=weigh, block_size=block_size,
        num_rows=num_rows, num_columns=num_columns, num_blocks=num_blocks, padding=padding,
        key_tail=column_keys.shape.rank - 1, keys_padded=keys_padded, anchor_keys=anchor_keys, self_index=self_index,
        cap_bounds=cap_bounds, inverse_temperature=inverse_temperature, masked=masked, tiny=tiny,
        counts_padded=counts_padded,
    )


def _cap_kept(cap_bounds, column_index):
    """`[rows, block]` bool: which columns `column_index` `[block]` the cap leaves positive, if they match."""
    row_sample, batch_bound, queue_bound, num_samples, num_batch_columns = cap_bounds
    column_sample = tf.math.floormod(column_index, num_samples)[None, :]
    in_queue = (column_index >= num_batch_columns)[None, :]
    return tf.where(
        in_queue,
        (column_index - num_batch_columns)[None, :] < queue_bound[:, None],
        tf.equal(column_sample, row_sample[:, None]) | (column_sample < batch_bound[:, None]),
    )


def _block(blocks, anchor_matrix, contrast_padded, k):
    """Block k: its columns `[block, dim]`, s_ij `[rows, block]`, the denominator set (bool), P(i)'s weights
    and the denominator's weights.

    The denominator set is A(i) without the capped out X(i) ("all",
    "class_balanced") or N(i), the entries of weight 0 (the other
    denominators); the padded columns are in neither. The weights are w_ij
    on P(i), 0 elsewhere; the denominator's are 1 on its set, 0 elsewhere,
    except for "class_balanced": 1 / (the count of j's class in A(i)).
    """
    block_size, tail = blocks.block_size, blocks.key_tail
    start = k * block_size
    columns = tf.slice(contrast_padded, [start, 0], [block_size, -1])
    keys = tf.slice(blocks.keys_padded, [start] + [0] * tail, [block_size] + [-1] * tail)
    logits = tf.matmul(anchor_matrix, columns, transpose_b=True) * blocks.inverse_temperature
    column_index = start + tf.range(block_size)
    valid = (column_index[None, :] < blocks.num_columns) & (column_index[None, :] != blocks.self_index[:, None])
    weight = blocks.weigh(blocks.anchor_keys, keys)
    match = (weight > 0) & valid
    if blocks.cap_bounds is None:
        kept = match
    else:
        kept = match & _cap_kept(blocks.cap_bounds, column_index)
    if blocks.denominator in ("all", "class_balanced"):
        in_denominator = valid & ~(match & ~kept)  # everything but the anchor and the capped out
    else:
        in_denominator = valid & ~match  # the negatives
    denominator_weight = tf.cast(in_denominator, blocks.dtype)
    if blocks.counts_padded is not None:
        counts = tf.slice(blocks.counts_padded, [start], [block_size])[None, :] - tf.cast(match, blocks.dtype)
        denominator_weight = denominator_weight / tf.maximum(counts, 1.0)
    return columns, logits, in_denominator, tf.where(kept, weight, tf.zeros_like(weight)), denominator_weight


def _online_log_sum_exp(blocks, old_max, old_sum, values, weight, factor=None):
    """One block of an online weighted log-sum-exp over `values` (optionally a second sum, with factors).

    Per row, over the j of weight w_j > 0: the new maximum m' and sum
    S' = S exp(m - m') + sum_j w_j exp(v_j - m'); with `factor` f_j, also
    exp(m - m') and sum_j w_j f_j exp(v_j - m'), to rescale and extend a
    second sum alike.
    """
    values = tf.where(weight > 0, values, blocks.masked)
    new_max = tf.maximum(old_max, tf.reduce_max(values, axis=1))
    scaled = tf.exp(values - new_max[:, None]) * weight
    rescale = tf.exp(old_max - new_max)
    new_sum = old_sum * rescale + tf.reduce_sum(scaled, axis=1)
    if factor is None:
        return new_max, new_sum
    return new_max, new_sum, rescale, tf.reduce_sum(scaled * factor, axis=1)


def _first_pass(blocks, anchor_matrix, contrast_padded, lowest, zeros):
    """The forward pass over the column blocks, per anchor `[rows]` each (`lowest`, `zeros`: the starting rows).

    Returns the online log-sum-exp over the denominator set (max, sum), the
    weighted sum of the positive logits and the sum of the weights
    sum_p w_ip, the online weighted log-sum-exp over P(i) (max, sum) and,
    for "only_negatives", |N(i)| (else zeros).
    """

    def body(k, row_max, row_sum, pos_sum, pos_count, pos_max, pos_exp_sum, den_count):
        _, logits, in_denominator, positive, denominator_weight = _block(blocks, anchor_matrix, contrast_padded, k)
        new_max, row_sum = _online_log_sum_exp(blocks, row_max, row_sum, logits, denominator_weight)
        new_pos_max, pos_exp_sum = _online_log_sum_exp(blocks, pos_max, pos_exp_sum, logits, positive)
        pos_sum += tf.reduce_sum(positive * logits, axis=1)
        pos_count += tf.reduce_sum(positive, axis=1)
        if blocks.denominator == "only_negatives":  # an anchor needs a negative to count
            den_count += tf.reduce_sum(tf.cast(in_denominator, blocks.dtype), axis=1)
        return [k + 1, new_max, row_sum, pos_sum, pos_count, new_pos_max, pos_exp_sum, den_count]

    start = [lowest, zeros, zeros, zeros, lowest, zeros, zeros]  # row max/sum, pos sum/count, pos max/sum, den count
    _, row_max, row_sum, pos_sum, pos_count, pos_max, pos_exp_sum, den_count = tf.while_loop(
        lambda k, *_: k < blocks.num_blocks, body, [tf.constant(0)] + start, maximum_iterations=blocks.num_blocks,
        parallel_iterations=1,  # one block in flight: memory stays ~ anchors x block_size
    )
    return row_max, row_sum, pos_sum, pos_count, pos_max, pos_exp_sum, den_count


def _one_positive_pass(blocks, anchor_matrix, contrast_padded, log_normaliser, lowest, zeros):
    """"one_positive"'s second pass over the column blocks, once n_i = `log_normaliser` is known.

    With l(i, p) = -softplus(n_i - s_ip) and 1 - sigma_ip = sigmoid(n_i - s_ip),
    returns per anchor `[rows]`: "out": sum_p w_ip l(i, p) and
    sum_p w_ip (1 - sigma_ip) (the max and sum slots stay `lowest`, `zeros`);
    "in": the online weighted log-sum-exp of l(i, p) over P(i) (max, sum)
    and sum_p w_ip exp(l(i, p) - max) (1 - sigma_ip).
    """

    def second(k, lp_sum, lp_max, lp_exp_sum, miss_sum):
        _, logits, _, positive, _ = _block(blocks, anchor_matrix, contrast_padded, k)
        gap = log_normaliser[:, None] - logits
        log_prob, miss = -tf.nn.softplus(gap), tf.sigmoid(gap)
        if blocks.variant == "out":
            return [k + 1, lp_sum + tf.reduce_sum(positive * log_prob, axis=1), lp_max, lp_exp_sum,
                    miss_sum + tf.reduce_sum(positive * miss, axis=1)]
        new_max, lp_exp_sum, rescale, block_miss = _online_log_sum_exp(
            blocks, lp_max, lp_exp_sum, log_prob, positive, factor=miss
        )
        return [k + 1, lp_sum, new_max, lp_exp_sum, miss_sum * rescale + block_miss]

    _, lp_sum, lp_max, lp_exp_sum, miss_sum = tf.while_loop(
        lambda k, *_: k < blocks.num_blocks, second, [tf.constant(0), zeros, lowest, zeros, zeros],
        maximum_iterations=blocks.num_blocks, parallel_iterations=1,
    )
    return lp_sum, lp_max, lp_exp_sum, miss_sum


def _general_forward(blocks, anchor_matrix, contrast_padded):
    """The forward passes: `(log_normaliser, log_positive, pos_sum, pos_count, den_count, negative_weight)`, `[rows]`.

    log_normaliser = log-sum-exp over the denominator set, log_positive =
    the w_ip-weighted log-sum-exp over P(i) ("one_positive", "in": of
    l(i, p)), pos_sum = the weighted sum of the positive logits
    ("one_positive", "out": of l(i, p)), pos_count = W_i = sum_p w_ip,
    den_count = |N(i)| ("only_negatives"), and
    negative_weight = c_i, the negatives' weight in the gradient
    ("one_positive"; else 0).
    """
    tiny = blocks.tiny
    lowest, zeros = tf.fill([blocks.num_rows], blocks.masked), tf.zeros([blocks.num_rows], blocks.dtype)
    row_max, row_sum, pos_sum, pos_count, pos_max, pos_exp_sum, den_count = _first_pass(
        blocks, anchor_matrix, contrast_padded, lowest, zeros
    )
    log_normaliser = row_max + tf.math.log(tf.maximum(row_sum, tiny))
    log_positive = pos_max + tf.math.log(tf.maximum(pos_exp_sum, tiny))
    negative_weight = zeros
    if blocks.denominator == "one_positive":
        lp_sum, lp_max, lp_exp_sum, miss_sum = _one_positive_pass(
            blocks, anchor_matrix, contrast_padded, log_normaliser, lowest, zeros
        )
        safe_count = tf.where(pos_count > 0, pos_count, tf.ones_like(pos_count))
        if blocks.variant == "out":
            pos_sum = lp_sum  # sum_p l(i, p)
            negative_weight = miss_sum / safe_count
        else:
            log_positive = lp_max + tf.math.log(tf.maximum(lp_exp_sum, tiny))  # log sum_p exp l(i, p)
            negative_weight = miss_sum / tf.maximum(lp_exp_sum, tiny)
    return log_normaliser, log_positive, pos_sum, pos_count, den_count, negative_weight


def _logit_gradient(
    blocks, logits, in_denominator, positive, weight, log_normaliser, log_positive, safe_count, negative_weight,
    denominator_weight,
):
    """G = dL/d logits over one block `[rows, block]`, times `weight` (w_i / tau; see `_blockwise_core`)."""
    masked = blocks.masked
    probability = tf.exp(tf.where(in_denominator, logits, masked) - log_normaliser[:, None]) * denominator_weight
    if blocks.denominator == "one_positive":
        gap = log_normaliser[:, None] - logits
        miss = tf.sigmoid(gap)
        if blocks.variant == "out":
            target = positive * miss / safe_count[:, None]
        else:
            log_prob = tf.where(positive > 0, -tf.nn.softplus(gap), masked)
            target = positive * tf.exp(log_prob - log_positive[:, None]) * miss
        return (negative_weight[:, None] * probability - target) * weight[:, None]
    if blocks.variant == "out":
        target = positive / safe_count[:, None]
    else:
        target = positive * tf.exp(tf.where(positive > 0, logits, masked) - log_positive[:, None])
    return (probability - target) * weight[:, None]


def _general_backward(
    blocks, anchor_matrix, contrast_padded, weight, log_normaliser, log_positive, safe_count, negative_weight,
):
    """The backward pass over the column blocks: `(G C / tau [rows, dim], G^T A / tau [columns, dim])`.

    `weight` is w_i / tau, w_i the upstream gradient (0 for the anchors
    that do not count); the other arguments are `_general_forward`'s.
    """

    def body(k, anchor_grad, contrast_grads):
        columns, logits, in_denominator, positive, denominator_weight = _block(
            blocks, anchor_matrix, contrast_padded, k
        )
        g = _logit_gradient(
            blocks, logits, in_denominator, positive, weight, log_normaliser, log_positive, safe_count,
            negative_weight, denominator_weight,
        )
        anchor_grad += tf.matmul(g, columns)
        contrast_grads = contrast_grads.write(k, tf.matmul(g, anchor_matrix, transpose_a=True))
        return [k + 1, anchor_grad, contrast_grads]

    grads = tf.TensorArray(
        blocks.dtype, size=blocks.num_blocks, element_shape=tf.TensorShape([blocks.block_size, None])
    )
    _, anchor_grad, grads = tf.while_loop(
        lambda k, *_: k < blocks.num_blocks,
        body,
        [tf.constant(0), tf.zeros_like(anchor_matrix), grads],
        maximum_iterations=blocks.num_blocks,
        parallel_iterations=1,
    )
    return anchor_grad, grads.concat()[:blocks.num_columns]


def _mean_log_prob(blocks, log_normaliser, log_positive, pos_sum, safe_count):
    """`[rows]`: "out": (1/W_i) sum_p w_ip l(i, p); "in": log((1/W_i) sum_p w_ip exp l(i, p)), from the forward sums."""
    if blocks.denominator == "one_positive":
        return pos_sum / safe_count if blocks.variant == "out" else log_positive - tf.math.log(safe_count)
    if blocks.variant == "out":
        return pos_sum / safe_count - log_normaliser
    return log_positive - tf.math.log(safe_count) - log_normaliser


def _blockwise_core(
    anchors, contrast, anchor_keys, column_keys, self_index, temperature, variant, block_size, weigh,
    denominator="all", cap_bounds=None, by_equality=False, column_counts=None,
):
    """Streaming form: `(-(weighted mean log-probability of the positives) [A], anchor counts [A] float)`.

    Row i and column j have the weight w_ij = `weigh`(row keys, column
    keys) (`weights.PairWeighting`), computed per block: j is a positive of
    i when w_ij > 0 (and the cap keeps it), a negative when w_ij = 0.
    Forward: one pass over column blocks keeps, per anchor, an online
    log-sum-exp over the denominator set, the weighted sum of positive
    logits and W_i = sum_p w_ip, and (for "in") an online weighted
    log-sum-exp over P(i); "one_positive"
    needs a second pass, once the negatives' log-sum-exp n_i is known, for
    sum_p l(i, p) (or its log-sum-exp) and the weight c_i of the negatives
    in the gradient. Backward: a second pass recomputes each block's logits
    and probabilities and accumulates dL/d anchors = G C / tau and
    dL/d contrast = G^T A / tau, with G = dL/d logits:
    "all"/"only_negatives": p - w/W ("out") or p - q ("in"), p the
    softmax over the denominator set, q_ip = w_ip exp(s_ip) / sum_p' w_ip' exp(s_ip');
    "one_positive": c_i * softmax_N on the negatives and
    -w_ip (1 - sigma_ip)/W_i ("out") or -r_ip (1 - sigma_ip) ("in") on the
    positives, with sigma_ip = exp(l(i, p)), r_ip the w-weighted softmax of
    l(i, .) over P(i), c_i = sum_p of the positives' factors.
    Peak memory is a few [anchors, block_size] matrices.
    "class_balanced" (BCL) is "all" with the denominator's terms weighted by
    1 / (their class's count in A(i)), from `column_counts` (each column's
    class count in the contrast set): the same online weighted log-sum-exp,
    and the same weights on the softmax in G.

    `cap_bounds`: None, or `(row_sample, batch_bound, queue_bound,
    num_samples, num_batch_columns)` from `positives_cap`: a matching batch
    column of sample t stays positive for row r when t is the row's own
    sample or t < batch_bound[r]; a matching queue column q when
    q < queue_bound[r]; the other matching columns are capped out.

    The default loss with 0/1 weights by key equality (`by_equality`:
    `[rows]` keys; "out", "all", no cap) goes to `_blockwise_out_core`,
    which needs no positives in the blocks, keeps one or two blocks alive
    and compiles nothing; what follows is the general form, for every other
    option and every other weighting.
    """
    if denominator == "all" and variant == "out" and cap_bounds is None and by_equality:
        return _blockwise_out_core(anchors, contrast, column_keys, self_index, temperature, block_size)
    blocks = _blocks(
        anchors, contrast, anchor_keys, column_keys, self_index, temperature, variant, block_size, denominator,
        cap_bounds, weigh, column_counts=column_counts,
    )

    def forward(anchor_matrix, contrast_padded):
        return _general_forward(blocks, anchor_matrix, contrast_padded)

    def backward(anchor_matrix, contrast_padded, weight, log_normaliser, log_positive, safe_count, negative_weight):
        return _general_backward(
            blocks, anchor_matrix, contrast_padded, weight, log_normaliser, log_positive, safe_count, negative_weight
        )

    # Inside a graph with static sizes, each pass is compiled with XLA: the
    # loop then fuses the per-block exp/compare/reduce work and keeps one block
    # of temporaries alive (measured: benchmarks/RESULTS.md). Eagerly, or with
    # dynamic sizes, the passes run as plain TensorFlow ops.
    if isinstance(blocks.num_blocks, int) and tf.inside_function():
        forward = tf.function(forward, jit_compile=True, autograph=False)
        backward = tf.function(backward, jit_compile=True, autograph=False)

    @tf.custom_gradient
    def core(anchor_matrix, contrast_matrix):
        contrast_padded = tf.pad(contrast_matrix, [[0, blocks.padding], [0, 0]])
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
        mean_log_prob = _mean_log_prob(blocks, log_normaliser, log_positive, pos_sum, safe_count)
        neg = tf.where(counts, -mean_log_prob, tf.zeros_like(mean_log_prob))

        def grad(upstream):
            weight = tf.where(counts, upstream, tf.zeros_like(upstream)) * blocks.inverse_temperature
            inputs = (anchor_matrix, contrast_padded, weight, log_normaliser, log_positive, safe_count, negative_weight)
            return backward(*[tf.stop_gradient(t) for t in inputs])

        return (neg, tf.stop_gradient(tf.cast(counts, blocks.dtype))), lambda upstream, _unused: grad(upstream)

    return core(anchors, contrast)
