"""The blockwise form of the default SupCon loss (`[rows]` keys, `variant="out"`, `denominator="all"`, no cap).

`_blockwise_out_core` (its docstring has the method) needs the blocks only
for the softmax denominator, the positives coming from per-key sums; when the
anchors are the contrast set it visits each pair of blocks once.
`supcon_tf.losses.blockwise._blockwise_core` hands it the default options and
keeps the general form for every other one.
"""

import numpy as np
import tensorflow as tf

from supcon_tf.losses._inputs import _MASKED_LOGIT


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
