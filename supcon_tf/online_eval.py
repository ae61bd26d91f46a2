"""Evaluation while pre-training: contrast accuracy and entropy, and the online linear classifier.

Two signals let a pre-training run show a learning curve without a separate
probe (tf-models' SimCLR logs the first two; solo-learn trains the third):

    contrast_top1     per anchor, 1 if its most similar contrast entry (itself
                      excluded) is one of its positives; the batch mean.
    contrast_entropy  per anchor, the entropy (nats) of the softmax over its
                      contrast set at the loss temperature; the batch mean.
                      log(N - 1) for a uniform distribution, 0 for a one-hot.
    online_top1       the top-1 accuracy of a linear classifier trained
                      jointly on the stop-gradient representation, with its
                      own optimizer: its gradient never reaches the encoder.

`contrast_statistics` is the maths, tested against a float64 reference;
`SupConModel(online_eval_classes=C)` uses it and owns the classifier.
"""

from __future__ import annotations

import tensorflow as tf


def contrast_statistics(features, labels=None, *, temperature, anchor_offset=0, num_anchor_samples=None):
    """Per-anchor contrast top-1 and entropy of local anchors against a (gathered) contrast set.

    Args:
      features: `[batch, views, dim]` float, L2-normalised; the contrast set
        (under a strategy: the gathered global batch).
      labels: `[batch]` int class ids, or None (positives are the other views
        of the same sample, SimCLR).
      temperature: the loss temperature (> 0).
      anchor_offset: index of the first anchor sample in `features` (a
        replica's offset in the gathered batch).
      num_anchor_samples: number of anchor samples from `anchor_offset` on
        (default: all). Every view of an anchor sample is an anchor.

    Returns:
      `(top1, entropy)`: float32 `[num_anchor_samples * views]` each, anchors
      in sample-major order.
    """
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 3:
        raise ValueError(f"`features` must be [batch, views, dim], received: shape {features.shape}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, received: temperature={temperature!r}")
    features = tf.cast(features, tf.float32)
    batch = tf.shape(features)[0]
    views = tf.shape(features)[1]
    if num_anchor_samples is None:
        num_anchor_samples = batch - anchor_offset
    contrast = tf.reshape(features, [batch * views, -1])
    anchors = tf.reshape(features[anchor_offset : anchor_offset + num_anchor_samples], [-1, tf.shape(contrast)[1]])
    logits = tf.matmul(anchors, contrast, transpose_b=True) / temperature
    # Identity of every row and column: its sample index (sample-major flattening).
    column_sample = tf.repeat(tf.range(batch), views)
    row_sample = tf.repeat(tf.range(num_anchor_samples) + anchor_offset, views)
    row_index = tf.range(num_anchor_samples * views) + anchor_offset * views
    is_self = tf.equal(row_index[:, None], tf.range(batch * views)[None, :])
    if labels is None:
        positive = tf.equal(row_sample[:, None], column_sample[None, :])
    else:
        labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
        column_label = tf.gather(labels, column_sample)
        row_label = tf.gather(labels, row_sample)
        positive = tf.equal(row_label[:, None], column_label[None, :])
    positive = tf.logical_and(positive, tf.logical_not(is_self))
    logits = tf.where(is_self, tf.constant(-1e9, logits.dtype), logits)
    nearest = tf.argmax(logits, axis=1, output_type=tf.int32)
    top1 = tf.cast(tf.gather(positive, nearest, axis=1, batch_dims=1), tf.float32)
    log_p = tf.nn.log_softmax(logits, axis=1)
    p = tf.exp(log_p)
    entropy = -tf.reduce_sum(tf.where(is_self, tf.zeros_like(p), p * log_p), axis=1)
    return top1, entropy
