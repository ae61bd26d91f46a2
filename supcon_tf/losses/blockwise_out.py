"""The blockwise form of the default SupCon loss (`[rows]` keys, `variant="out"`, `denominator="all"`, no cap).

`_blockwise_out_core` (its docstring has the method) needs the blocks only
for the softmax denominator, the positives coming from per-key sums; when the
anchors are the contrast set it visits each pair of blocks once.
`supcon_tf.losses.blockwise._blockwise_core` hands it the default options and
keeps the general form for every other one.

The pieces, in the order they run: `_out_blocks` (sizes and constants) and
`_slabs` (the paired layout); `_key_groups` and `_positive_sums` (P(i) by
key); `_out_log_normaliser`, the forward pass (`_out_forward` over column
blocks, or `_paired_forward` over slabs); `_gradient_weights`, then
`_paired_gradient` or `_rectangular_gradient`, the backward pass
(`_paired_backward` or `_out_backward`, then the positives' part). A block's
logits are `_masked_logits` of `_augment`ed rows and `_columns_of` block k;
a slab's are `_paired_logits` of `_paired_operands`.
"""

from typing import NamedTuple, Union

import numpy as np
import tensorflow as tf

from supcon_tf.losses._inputs import _MASKED_LOGIT

_Size = Union[int, tf.Tensor]  # a Python int when the shapes are static, else a scalar int32 tensor


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


class _OutBlocks(NamedTuple):
    """Sizes and constants every pass of `_blockwise_out_core` shares.

    Rows i are the anchors, padded to `num_row_blocks * block_size`; columns
    j the contrast rows, visited in `num_blocks` blocks of `block_size`
    (`column_padding` padded columns at the end). `column_bias` is b_j
    `[padded columns]`: 0, or the masking value on a padded column;
    `term_column` `[1, dim + 2]` marks where t_i sits in the augmented rows
    [a_i / tau, t_i, 1]; `ones` is `[block_size, 1]`.
    """

    dtype: tf.DType
    num_rows: _Size
    dim: _Size
    num_columns: _Size
    num_blocks: _Size
    num_row_blocks: _Size
    block_size: int
    column_padding: _Size
    row_padding: _Size
    no_row_padding: bool
    inverse_temperature: tf.Tensor
    masked: tf.Tensor
    tiny: tf.Tensor
    column_bias: tf.Tensor
    ones: tf.Tensor
    term_column: tf.Tensor


def _out_blocks(anchors, contrast, temperature, block_size):
    """The `_OutBlocks` of anchors `[rows, dim]` against contrast `[columns, dim]` (static sizes where known)."""
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
    inverse_temperature = tf.constant(1.0 / temperature, dtype)
    masked = tf.constant(_MASKED_LOGIT, dtype)
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).tiny, dtype)
    return _OutBlocks(
        dtype=dtype,
        num_rows=num_rows,
        dim=dim,
        num_columns=num_columns,
        num_blocks=num_blocks,
        num_row_blocks=num_row_blocks,
        block_size=block_size,
        column_padding=column_padding,
        row_padding=row_padding,
        no_row_padding=isinstance(row_padding, int) and row_padding == 0,
        inverse_temperature=inverse_temperature,
        masked=masked,
        tiny=tiny,
        column_bias=tf.concat([tf.zeros([num_columns], dtype), tf.fill([column_padding], masked)], axis=0),
        ones=tf.ones([block_size, 1], dtype),
        term_column=tf.one_hot(dim, dim + 2, dtype=dtype)[None, :],
    )


def _pad_rows(blocks, tensor):
    """`tensor` `[rows, ...]` zero-padded to the padded rows."""
    if blocks.no_row_padding:
        return tensor
    return tf.pad(tensor, [[0, blocks.row_padding]] + [[0, 0]] * (tensor.shape.rank - 1))


def _augment(blocks, anchor_matrix, term):
    """`[padded rows, dim + 2]`: [a_i / tau, t_i, 1], zero rows for the padding."""
    term = term[:, None]
    return _pad_rows(blocks, tf.concat([anchor_matrix * blocks.inverse_temperature, term, tf.ones_like(term)], axis=1))


def _columns_of(blocks, contrast_matrix, order, k):
    """Block k's contrast rows `[block, dim]` (padding: any row, masked by b_j) and their augmented form."""
    start = k * blocks.block_size
    columns = tf.gather(contrast_matrix, tf.slice(order, [start], [blocks.block_size]))
    bias = tf.slice(blocks.column_bias, [start], [blocks.block_size])[:, None]
    return columns, tf.concat([columns, blocks.ones, bias], axis=1)


def _masked_logits(blocks, augmented_anchors, augmented_columns, k):
    """s_ij + t_i + b_j over block k, the anchors' own entries set to the masking value (in place)."""
    logits = tf.matmul(augmented_anchors, augmented_columns, transpose_b=True)
    square = tf.reshape(logits, [blocks.num_row_blocks, blocks.block_size, blocks.block_size])
    own = tf.equal(tf.range(blocks.num_row_blocks), k)[:, None]
    diagonal = tf.where(own, blocks.masked, tf.linalg.diag_part(square))
    return tf.reshape(tf.linalg.set_diag(square, diagonal), [-1, blocks.block_size])


def _out_forward(blocks, augmented_anchors, contrast_matrix, order):
    """`[rows]`: log Z_i = log sum_{j != i} exp(s_ij), one pass over the column blocks (online log-sum-exp).

    `augmented_anchors` carries t_i = -(mean positive logit); a block whose
    row sum overflows is redone with t_i raised by its row maxima.
    """
    tiny = blocks.tiny

    def body(k, augmented_anchors, row_sum):
        _, augmented_columns = _columns_of(blocks, contrast_matrix, order, k)
        total = row_sum + tf.reduce_sum(tf.exp(_masked_logits(blocks, augmented_anchors, augmented_columns, k)), axis=1)

        def rescaled():  # a row overflowed: raise every t_i by its block maximum (and its sum so far)
            # Recomputed: the exp above is in place.
            logits = _masked_logits(blocks, augmented_anchors, augmented_columns, k)
            raise_by = tf.maximum(tf.reduce_max(logits, axis=1), tf.math.log(tf.maximum(row_sum, tiny)))
            raise_by = tf.maximum(raise_by, tf.zeros_like(raise_by))
            block_sum = tf.reduce_sum(tf.exp(logits - raise_by[:, None]), axis=1)
            return augmented_anchors - raise_by[:, None] * blocks.term_column, row_sum * tf.exp(-raise_by) + block_sum

        augmented_anchors, row_sum = tf.cond(
            tf.reduce_all(tf.math.is_finite(total)), lambda: (augmented_anchors, total), rescaled
        )
        return [k + 1, augmented_anchors, row_sum]

    _, augmented_anchors, row_sum = tf.while_loop(
        lambda k, *_: k < blocks.num_blocks, body,
        [tf.constant(0), augmented_anchors, tf.zeros([blocks.num_row_blocks * blocks.block_size], blocks.dtype)],
        maximum_iterations=blocks.num_blocks, parallel_iterations=1,  # one block in flight
    )
    num_rows = blocks.num_rows
    return -augmented_anchors[:num_rows, blocks.dim] + tf.math.log(tf.maximum(row_sum[:num_rows], tiny))


def _out_backward(blocks, augmented_anchors, signed_anchors, contrast_matrix, order):
    """The softmax part of the gradient, over the column blocks: `(anchors [rows, dim], contrast [padded, dim])`.

    `augmented_anchors` carries t_i = log|w_i| - log Z_i (the masking value
    where w_i = 0), so a block's exp is |w_i| softmax_ij; `signed_anchors` is
    it times sign(w_i) (or it, when no w_i < 0). Returns
    sum_j |w_i| softmax_ij c_j and sum_i w_i softmax_ij a_i / tau, the
    latter in `order` (padded columns included).
    """
    dim = blocks.dim

    def body(k, anchor_grad, contrast_grads):
        columns, augmented_columns = _columns_of(blocks, contrast_matrix, order, k)
        weighted = tf.exp(_masked_logits(blocks, augmented_anchors, augmented_columns, k))  # |w_i| softmax_ij
        anchor_grad += tf.matmul(weighted, columns)
        contrast_block = tf.matmul(weighted, signed_anchors, transpose_a=True)[:, :dim]
        return [k + 1, anchor_grad, contrast_grads.write(k, contrast_block)]

    grads = tf.TensorArray(
        blocks.dtype, size=blocks.num_blocks, element_shape=tf.TensorShape([blocks.block_size, None])
    )
    _, anchor_grad, grads = tf.while_loop(
        lambda k, *_: k < blocks.num_blocks, body,
        [tf.constant(0), tf.zeros([blocks.num_row_blocks * blocks.block_size, dim], blocks.dtype), grads],
        maximum_iterations=blocks.num_blocks, parallel_iterations=1,
    )
    return anchor_grad[:blocks.num_rows], grads.concat()  # [padded columns, dim], in `order`


class _Slabs(NamedTuple):
    """The paired layout: slab k is the `half + 1` row blocks k, k+1, ..., k+half (cyclically), `slab` rows.

    `reverse_mask` `[slab]` masks the transposed direction of the slab's
    first tile (k, k) and, with an even number of blocks, of its last;
    `first_tile` `[half + 1, 1]` bool marks the tile holding the anchors'
    own entries.
    """

    half: int
    slab: int
    reverse_mask: tf.Tensor
    first_tile: tf.Tensor


def _slabs(blocks):
    """The `_Slabs` when anchors == contrast (static shapes, as many rows as columns), else None.

    That is contrast_mode "all", every sample an anchor, no queue; then
    self_index is 0..rows-1 and s is symmetric, so block pairs are visited
    once. Slab k = the row blocks k, k+1, ..., k+half (cyclically) against
    column block k: its logits serve row i (its sum over block k) and,
    transposed, the rows of block k (their sums over the slab), so each
    unordered pair of blocks costs one matmul instead of two. The slab's
    first tile (k, k) holds both orders itself, and with an even number of
    blocks the last tile (distance nb / 2) is met from both of its ends:
    their transposed direction is masked (`reverse_mask`).
    """
    num_rows, num_columns, block_size, masked = blocks.num_rows, blocks.num_columns, blocks.block_size, blocks.masked
    if not (isinstance(num_rows, int) and isinstance(num_columns, int) and num_rows == num_columns):
        return None
    half = blocks.num_blocks // 2
    pieces = [tf.fill([block_size], masked)]
    if half > 0:
        last = tf.fill([block_size], masked) if blocks.num_blocks % 2 == 0 else tf.zeros([block_size], blocks.dtype)
        pieces += [tf.zeros([(half - 1) * block_size], blocks.dtype), last]
    reverse_mask = tf.concat(pieces, axis=0)
    first_tile = tf.equal(tf.range(half + 1), 0)[:, None]
    return _Slabs(half=half, slab=(half + 1) * block_size, reverse_mask=reverse_mask, first_tile=first_tile)


def _extend(blocks, slabs, tensor):
    """`tensor` `[padded rows, ...]` cyclically extended by `half` blocks (what the last slabs reach)."""
    return tf.concat([tensor, tensor[: slabs.half * blocks.block_size]], axis=0)


def _paired_operands(blocks, slabs, features, term):
    """Rows [f_i, t_i + b_i, 1] (cyclically extended), columns [f_j / tau, 1, b_j], -t_i (extended), t_j."""
    padded, term = _pad_rows(blocks, features), _pad_rows(blocks, term)
    ones_column = tf.ones_like(term)[:, None]
    rows = _extend(blocks, slabs, tf.concat([padded, (term + blocks.column_bias)[:, None], ones_column], axis=1))
    columns = tf.concat([padded * blocks.inverse_temperature, ones_column, blocks.column_bias[:, None]], axis=1)
    return rows, columns, _extend(blocks, slabs, -term), term


def _paired_logits(blocks, slabs, rows, columns, negative_term, term, k):
    """Slab k: `[slab, dim + 2]` rows, s_ij + t_i (+ masks) and s_ij + t_j (+ masks), `[slab, block]` each."""
    block_size, slab = blocks.block_size, slabs.slab
    start = k * block_size
    slab_rows = tf.slice(rows, [start, 0], [slab, -1])
    logits = tf.matmul(slab_rows, tf.slice(columns, [start, 0], [block_size, -1]), transpose_b=True)
    square = tf.reshape(logits, [slabs.half + 1, block_size, block_size])
    diagonal = tf.where(slabs.first_tile, blocks.masked, tf.linalg.diag_part(square))  # the anchors' own entries
    logits = tf.reshape(tf.linalg.set_diag(square, diagonal), [slab, block_size])
    back = tf.slice(negative_term, [start], [slab]) + slabs.reverse_mask
    reverse = logits + back[:, None] + tf.slice(term, [start], [block_size])[None, :]
    return slab_rows, logits, reverse


def _shift_window(blocks, window):
    """The running window `[slab, ...]` moved on by one block (block k done), zeros entering at the end."""
    return tf.concat([window[blocks.block_size:], tf.zeros_like(window[:blocks.block_size])], axis=0)


def _unwrap(blocks, slabs, finished, window):
    """`[rows, ...]`: the finished blocks, plus what the last slabs put past the end (blocks 0..half-1)."""
    if slabs.half > 0:
        wrapped = window[: slabs.half * blocks.block_size]
        padding = [[0, (blocks.num_blocks - slabs.half) * blocks.block_size]] + [[0, 0]] * (wrapped.shape.rank - 1)
        finished += tf.pad(wrapped, padding)
    return finished[:blocks.num_rows]


def _paired_forward(blocks, slabs, features, term):
    """`[rows]`: sum_{j != i} exp(s_ij + t_i), one pass over the slabs."""
    rows, columns, negative_term, padded_term = _paired_operands(blocks, slabs, features, term)

    def body(k, window, sums):
        _, logits, reverse = _paired_logits(blocks, slabs, rows, columns, negative_term, padded_term, k)
        with tf.control_dependencies([reverse]):  # then the exp can reuse the logits' buffer
            window += tf.reduce_sum(tf.exp(logits), axis=1)
        done = window[:blocks.block_size] + tf.reduce_sum(tf.exp(reverse), axis=0)
        return [k + 1, _shift_window(blocks, window), sums.write(k, done)]

    sums = tf.TensorArray(blocks.dtype, size=blocks.num_blocks, element_shape=tf.TensorShape([blocks.block_size]))
    _, window, sums = tf.while_loop(
        lambda k, *_: k < blocks.num_blocks, body, [tf.constant(0), tf.zeros([slabs.slab], blocks.dtype), sums],
        maximum_iterations=blocks.num_blocks, parallel_iterations=1,
    )
    return _unwrap(blocks, slabs, sums.concat(), window)


def _paired_backward(blocks, slabs, features, term, sign, positive):
    """`[rows, dim]`: sum_j (G_ij + G_ji) f_j / tau, G_ij = sign_i exp(s_ij + t_i) (the softmax part).

    `term` t_i must be finite (`_gradient_weights`): the transposed direction
    subtracts it again. `positive` (scalar bool): every sign_i is 1, so the
    signs are skipped; else both directions are multiplied by them, which
    zeroes the anchors of weight 0 (sign 0) in either order.
    """
    block_size, slab, dim, inverse_temperature = blocks.block_size, slabs.slab, blocks.dim, blocks.inverse_temperature
    rows, columns, negative_term, padded_term = _paired_operands(blocks, slabs, features, term)
    signs = _pad_rows(blocks, sign)
    extended_signs = _extend(blocks, slabs, signs)

    def body(k, window, grads):
        start = k * block_size
        slab_rows, logits, reverse = _paired_logits(blocks, slabs, rows, columns, negative_term, padded_term, k)
        with tf.control_dependencies([reverse]):
            weighted = tf.exp(logits)  # |w_i| softmax_ij, rows i of the slab
        weighted_reverse = tf.exp(reverse)  # |w_j| softmax_ji, j in block k

        def signed():
            row_sign = tf.slice(extended_signs, [start], [slab])[:, None]
            return weighted * row_sign + weighted_reverse * tf.slice(signs, [start], [block_size])[None, :]

        both = tf.cond(positive, lambda: weighted + weighted_reverse, signed)  # G_ij + G_ji
        window += tf.matmul(both, tf.slice(columns, [start, 0], [block_size, dim]))
        done = window[:block_size] + tf.matmul(both, slab_rows, transpose_a=True)[:, :dim] * inverse_temperature
        return [k + 1, _shift_window(blocks, window), grads.write(k, done)]

    grads = tf.TensorArray(blocks.dtype, size=blocks.num_blocks, element_shape=tf.TensorShape([block_size, None]))
    _, window, grads = tf.while_loop(
        lambda k, *_: k < blocks.num_blocks, body, [tf.constant(0), tf.zeros([slab, dim], blocks.dtype), grads],
        maximum_iterations=blocks.num_blocks, parallel_iterations=1,
    )
    return _unwrap(blocks, slabs, grads.concat(), window)


class _KeyGroups(NamedTuple):
    """P(i) by key: anchor i's positives are the columns in its key's segment but its own (`self_index[i]`).

    `column_segment` `[columns]` and `anchor_segment` `[rows]` are the key
    segments (`_key_segments`); `order` is `_self_first_order`, and
    `padded_order` it padded to the padded columns; `counts` `[rows]` bool
    is |P(i)| > 0, `safe_count` |P(i)| (1 where it is 0).
    """

    self_index: tf.Tensor
    column_segment: tf.Tensor
    anchor_segment: tf.Tensor
    order: tf.Tensor
    padded_order: tf.Tensor
    counts: tf.Tensor
    safe_count: tf.Tensor


def _key_groups(blocks, column_keys, self_index):
    """The `_KeyGroups` of columns keyed `column_keys` `[columns]`, anchor i being column `self_index[i]`."""
    num_columns = blocks.num_columns
    column_segment = _key_segments(column_keys, num_columns)
    anchor_segment = tf.gather(column_segment, self_index)
    order = _self_first_order(self_index, num_columns)
    padded_order = tf.pad(order, [[0, blocks.column_padding]])
    key_count = tf.math.unsorted_segment_sum(tf.ones([num_columns], blocks.dtype), column_segment, num_columns)
    pos_count = tf.gather(key_count, anchor_segment) - 1
    counts = pos_count > 0
    safe_count = tf.where(counts, pos_count, tf.ones_like(pos_count))
    return _KeyGroups(self_index, column_segment, anchor_segment, order, padded_order, counts, safe_count)


def _positive_sums(blocks, groups, contrast_matrix):
    """`[rows, dim]`: K(i) - c_self(i), the sum of the contrast rows in P(i)."""
    key_sum = tf.math.unsorted_segment_sum(contrast_matrix, groups.column_segment, blocks.num_columns)
    return tf.gather(key_sum, groups.anchor_segment) - tf.gather(contrast_matrix, groups.self_index)


def _out_log_normaliser(blocks, slabs, anchor_matrix, contrast_matrix, positive_mean, padded_order):
    """`[rows]`: log Z_i, by slabs when paired (falling back to `_out_forward` on overflow), else by blocks."""
    robust = lambda: _out_forward(  # noqa: E731
        blocks, _augment(blocks, anchor_matrix, -positive_mean), contrast_matrix, padded_order
    )
    if slabs is None:
        return robust()
    # t_i = -(mean positive logit) without the per-block overflow check: a row sum that overflows
    # sends the whole pass to the checked form (tau far below 0.1 with normalised features).
    sums = _paired_forward(blocks, slabs, anchor_matrix, -positive_mean)
    return tf.cond(
        tf.reduce_all(tf.math.is_finite(sums)),
        lambda: positive_mean + tf.math.log(tf.maximum(sums, blocks.tiny)),
        robust,
    )


def _gradient_weights(blocks, groups, upstream):
    """From the upstream gradient of the losses: w_i (0 without positives), log|w_i|, sign(w_i), w_i / |P(i)|.

    A zero weight (an anchor without positives, a zero sample weight, every
    other row of a Jacobian) gets log|w_i| = 0, as if |w_i| = 1, and
    sign 0: its rows of the softmax part are zeroed by the sign, never by
    a masking value in t_i = log|w_i| - log Z_i. The paired form needs t_i
    finite: it recovers s_ij + t_j from s_ij + t_i by subtracting t_i
    (`_paired_logits`), and a masking t_i (-1e9, float32 ulp 64) would leave
    that exponent off by tens. The rectangular form masks with t_i instead
    (`_rectangular_gradient`), which is exact there.
    """
    weight = tf.where(groups.counts, upstream, tf.zeros_like(upstream))
    nonzero = tf.not_equal(weight, 0)
    log_weight = tf.math.log(tf.where(nonzero, tf.abs(weight), tf.ones_like(weight)))
    sign = tf.sign(weight)  # -1, 0 or 1
    per_positive = (weight / groups.safe_count)[:, None]
    return weight, log_weight, sign, per_positive


def _paired_gradient(blocks, slabs, groups, anchor_matrix, contrast_matrix, log_normaliser, upstream):
    """Anchors == contrast: d(sum_i w_i L(i)) `[rows, dim]`, through the anchors only (the contrast rows are them).

    The softmax part by slabs (`_paired_backward`), then the positives' part
    from per-key sums, each after the other (control dependencies).
    """
    weight, log_weight, sign, per_positive = _gradient_weights(blocks, groups, upstream)
    inverse_temperature = blocks.inverse_temperature
    positive = tf.reduce_all(weight > 0)  # else the signs, zeros included, weigh both orders of each slab
    total = _paired_backward(blocks, slabs, anchor_matrix, log_weight - log_normaliser, sign, positive)
    with tf.control_dependencies([total]):  # the positives' part after the loop (see `_rectangular_gradient`)
        weighted = per_positive * anchor_matrix * inverse_temperature
        total += weighted - per_positive * _positive_sums(blocks, groups, contrast_matrix) * inverse_temperature
    with tf.control_dependencies([total]):
        key_grad = tf.math.unsorted_segment_sum(weighted, groups.anchor_segment, blocks.num_columns)
        total -= tf.gather(key_grad, groups.column_segment)
    return total


def _rectangular_gradient(blocks, groups, anchor_matrix, contrast_matrix, log_normaliser, upstream):
    """d(sum_i w_i L(i)) `(d anchors [rows, dim], d contrast [columns, dim])`, w_i the upstream gradient.

    The softmax part by column blocks (`_out_backward`), then the positives'
    part from per-key sums.
    """
    weight, log_weight, sign, per_positive = _gradient_weights(blocks, groups, upstream)
    inverse_temperature = blocks.inverse_temperature
    # A zero weight is masked through t_i here: t_i only meets row i's own entries, whose exp is then
    # exactly 0, and nothing is recovered from them (unlike the paired form, `_gradient_weights`). So no
    # [rows, dim] copy to zero those rows when the weights are >= 0.
    term = tf.where(tf.not_equal(sign, 0), log_weight - log_normaliser, tf.fill(tf.shape(sign), blocks.masked))
    augmented_anchors = _augment(blocks, anchor_matrix, term)
    signed_anchors = tf.cond(  # the contrast product needs w_i's sign back (a copy only if one is < 0)
        tf.reduce_all(weight >= 0),
        lambda: augmented_anchors,
        lambda: augmented_anchors * _pad_rows(blocks, sign)[:, None],
    )
    anchor_grad, ordered_contrast_grad = _out_backward(
        blocks, augmented_anchors, signed_anchors, contrast_matrix, groups.padded_order
    )
    # The positives' part after the loop (control dependencies), anchors then contrast, so that
    # its [rows, dim] temporaries never sit alongside the blocks or each other.
    with tf.control_dependencies([anchor_grad, ordered_contrast_grad]):
        anchor_grad = sign[:, None] * anchor_grad - per_positive * _positive_sums(blocks, groups, contrast_matrix)
        anchor_grad *= inverse_temperature
    with tf.control_dependencies([anchor_grad]):
        # Back to the contrast order (the padded columns' rows are never gathered).
        contrast_grad = tf.gather(ordered_contrast_grad, tf.math.invert_permutation(groups.order))
        weighted = per_positive * anchor_matrix * inverse_temperature
        key_grad = tf.math.unsorted_segment_sum(weighted, groups.anchor_segment, blocks.num_columns)
        contrast_grad = tf.tensor_scatter_nd_add(contrast_grad, groups.self_index[:, None], weighted)
    return anchor_grad, contrast_grad - tf.gather(key_grad, groups.column_segment)


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
      softmax and goes straight into the two gradient products. An anchor
      of weight w_i = 0 is zeroed by its sign (0), its t_i kept finite, in
      the paired form (which subtracts t_i again for the other order); the
      rectangular form masks it through t_i (`_gradient_weights`).
    - The anchors' own entries: the columns are visited in an order that puts
      row r's own column at position r, so in block k they are the diagonal
      of the k-th [block, block] row block, set in place (`set_diag`).
    - Anchors == contrast ("paired", `_slabs`): the logits are symmetric, and
      each pair of blocks is visited once, serving both of its orders.
    Every op on a block reuses its buffer; the passes run as plain
    TensorFlow ops (XLA compiles them too when the caller's function is
    jit-compiled).
    """
    blocks = _out_blocks(anchors, contrast, temperature, block_size)
    slabs = _slabs(blocks)
    column_keys = tf.stop_gradient(column_keys)

    @tf.custom_gradient
    def core(anchor_matrix, contrast_matrix):
        anchor_matrix, contrast_matrix = tf.stop_gradient(anchor_matrix), tf.stop_gradient(contrast_matrix)
        groups = _key_groups(blocks, column_keys, self_index)
        positive_dot = tf.reduce_sum(anchor_matrix * _positive_sums(blocks, groups, contrast_matrix), axis=1)
        positive_mean = positive_dot * blocks.inverse_temperature / groups.safe_count
        log_normaliser = _out_log_normaliser(
            blocks, slabs, anchor_matrix, contrast_matrix, positive_mean, groups.padded_order
        )
        neg = tf.where(groups.counts, log_normaliser - positive_mean, tf.zeros_like(positive_mean))

        def grad(upstream, _unused):
            if slabs is None:
                return _rectangular_gradient(blocks, groups, anchor_matrix, contrast_matrix, log_normaliser, upstream)
            gradient = _paired_gradient(blocks, slabs, groups, anchor_matrix, contrast_matrix, log_normaliser, upstream)
            return gradient, None

        return (neg, tf.cast(groups.counts, blocks.dtype)), grad

    return core(anchors, contrast)
