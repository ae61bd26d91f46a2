"""The float64 NumPy reference of the SupCon loss family that the loss tests check against.

Written from the definitions in `supcon_tf/losses/__init__.py` (Khosla et al.
2020, eq. 2 and 3, and the denominators of docs/losses.md), sharing no code
with the library, in two forms of the same definition:

* `reference_loss`: plain loops over anchors and the entries they contrast
  with, so that it can be read against the formulas; the arguments of
  `supcon_tf.losses.supcon_per_anchor_loss` (labels, multi-hot labels, a
  weighted mask, a queue, normalize, denominators, caps, offsets).
* `weighted_reference`: the same per-anchor losses from an explicit weight
  matrix (`label_weights` gives the 0/1 one of labels), vectorised, and
  complex-safe, so that the tests differentiate it by the complex step
  Im L(z + i h e_k) / h (exact to float64 rounding), which the loops would
  make too slow. `tests/test_loss_weights.py` checks that the two agree.
"""

import math

import numpy as np


def reference_loss(
    features,
    labels=None,
    mask=None,
    *,
    temperature,
    base_temperature=None,
    contrast_mode="all",
    variant="out",
    denominator="all",
    positives_cap=-1,
    anchor_offset=0,
    num_anchor_samples=None,
    queue_features=None,
    queue_labels=None,
    normalize=False,
):
    """Per-anchor losses `[anchor samples, anchor views]`, which anchors count, and their mean; plain loops, float64.

    The arguments are those of `supcon_tf.losses.supcon_per_anchor_loss`.
    Features of rank > 3 are flattened to `[batch, views, -1]`; `normalize`
    scales each (flattened) feature and queue row to unit length first.

    For anchor (s, v) every other entry is a positive (weight w > 0: `mask[s][t]`,
    else 1 for equal labels or multi-hot rows that share a class, else 1 for
    the anchor's own sample only; kept by the cap), capped out, or a negative
    (w == 0). A memory queue adds entries that are never the anchor, positive
    when their label matches (always negative without labels). The cap keeps
    the first `positives_cap // V` other positive samples by index, then the
    first `positives_cap - V * kept` positive queue entries in queue order.

    Denominators: "all" (SupCon: every entry but the anchor and the capped-out
    ones), "one_positive" (SINCERE: the positive itself and the negatives),
    "only_negatives" (decoupled: the negatives only; an anchor without
    negatives does not count).
    """
    z = np.asarray(features, np.float64)
    z = z.reshape(z.shape[0], z.shape[1], -1)
    q = None if queue_features is None else np.asarray(queue_features, np.float64).reshape(len(queue_features), -1)
    if normalize:
        z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        if q is not None:
            q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    labels = None if labels is None else np.asarray(labels)
    queue_labels = None if queue_labels is None else np.asarray(queue_labels)
    batch, views, _ = z.shape
    num_queue = 0 if q is None else len(q)
    base_temperature = temperature if base_temperature is None else base_temperature
    num_anchor_samples = batch - anchor_offset if num_anchor_samples is None else num_anchor_samples

    def shared(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return float(a == b) if a.ndim == 0 else float(np.dot(a, b) > 0)

    def sample_weight(s, t):
        if mask is not None:
            return float(mask[s][t])
        if labels is None:
            return float(s == t)
        return shared(labels[s], labels[t])

    def queue_weight(s, k):
        return 0.0 if labels is None else shared(labels[s], queue_labels[k])

    anchor_views = 1 if contrast_mode == "one" else views
    losses = np.zeros((num_anchor_samples, anchor_views))
    counts = np.zeros((num_anchor_samples, anchor_views), bool)
    for local in range(num_anchor_samples):
        s = anchor_offset + local
        others = [t for t in range(batch) if t != s and sample_weight(s, t) > 0]
        queue_candidates = [k for k in range(num_queue) if queue_weight(s, k) > 0]
        if positives_cap >= 0:
            others = others[: positives_cap // views]
            queue_candidates = queue_candidates[: positives_cap - views * len(others)]
        for v in range(anchor_views):
            positives, negatives = [], []  # (logit, weight), logit
            entries = [(z[t, u], sample_weight(s, t), t == s or t in others) for u in range(views)
                       for t in range(batch) if (u, t) != (v, s)]
            entries += [(q[k], queue_weight(s, k), k in queue_candidates) for k in range(num_queue)]
            for vector, weight, kept in entries:
                logit = float(np.dot(z[s, v], vector)) / temperature
                if weight <= 0:
                    negatives.append(logit)
                elif kept:
                    positives.append((logit, weight))
            if not positives or (denominator == "only_negatives" and not negatives):
                continue
            counts[local, v] = True
            negative_sum = sum(math.exp(x) for x in negatives)
            total_weight = sum(w for _, w in positives)
            log_probs = []
            for logit, _ in positives:
                if denominator == "all":
                    normaliser = negative_sum + sum(math.exp(x) for x, _ in positives)
                elif denominator == "one_positive":
                    normaliser = math.exp(logit) + negative_sum
                else:
                    normaliser = negative_sum
                log_probs.append(logit - math.log(normaliser))
            if variant == "out":
                value = -sum(w * lp for (_, w), lp in zip(positives, log_probs)) / total_weight
            else:
                value = -math.log(sum(w * math.exp(lp) for (_, w), lp in zip(positives, log_probs)) / total_weight)
            losses[local, v] = (temperature / base_temperature) * value
    mean = losses[counts].mean() if counts.any() else 0.0
    return losses, counts, mean


def label_weights(labels, queue_labels, num_samples, num_queue):
    """The 0/1 weights `[N, N]` and queue weights `[N, K]` that labels induce: equal ids, multi-hot rows sharing a
    class; without labels, each sample's own views only (and no queue positive)."""
    if labels is None:
        return np.eye(num_samples), np.zeros((num_samples, num_queue))
    labels = np.asarray(labels)
    queue_labels = np.zeros((0,) + labels.shape[1:]) if queue_labels is None else np.asarray(queue_labels)
    if labels.ndim == 1:
        related, queue_related = labels[:, None] == labels[None, :], labels[:, None] == queue_labels[None, :]
    else:
        labels, queue_labels = labels.astype(np.float64), queue_labels.astype(np.float64)
        related, queue_related = labels @ labels.T > 0, labels @ queue_labels.T > 0
    return related.astype(np.float64), queue_related.astype(np.float64)


def _lse(x, selected):
    """Row-wise log sum_{selected} exp(x) (complex-safe: shifted by the real row maximum); -inf on an empty row."""
    shift = np.max(np.where(selected, x.real, -np.inf), axis=1, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    total = np.sum(np.where(selected, np.exp(np.where(selected, x, shift) - shift), 0.0), axis=1)
    empty = ~np.any(selected, axis=1)
    return np.where(empty, -np.inf, np.log(np.where(empty, 1.0, total)) + shift[:, 0])


def _log_prob(denominator, logits, candidate, capped, not_self):
    """log p_ip for every entry `[rows, columns]`, by the denominator's equation: "all" Khosla et al. 2020 eq. 2,
    "one_positive" SINCERE (Feeney & Hughes), "only_negatives" the decoupled loss (Yeh et al. 2021, eq. 6)."""
    negative = ~candidate & not_self
    if denominator == "all":  # Khosla et al. eq. 2: every entry but the anchor itself (and the capped out)
        return logits - _lse(logits, not_self & ~capped)[:, None]
    negatives = _lse(logits, negative)[:, None]
    if denominator == "one_positive":  # SINCERE: the positive itself and the negatives
        shift = np.maximum(logits.real, np.where(np.isfinite(negatives.real), negatives.real, -np.inf))
        exp_negatives = np.where(np.isfinite(negatives.real), np.exp(negatives - shift), 0.0)
        return logits - (np.log(np.exp(logits - shift) + exp_negatives) + shift)
    return logits - negatives  # decoupled: the negatives only


@np.errstate(invalid="ignore", divide="ignore")  # the rows that do not count hold inf / NaN, then 0
def weighted_reference(z, weights, queue=None, queue_weights=None, *, temperature, base_temperature=None, contrast_mode="all",
              variant="out", denominator="all", positives_cap=-1, anchor_offset=0, num_anchor_samples=None):
    """Per-anchor losses `[anchor samples, anchor views]`, which anchors count, and their mean.

    `weights[s, t]` is the weight of every view of sample t as a positive of
    every view of sample s (0: a negative), `queue_weights[s, k]` that of
    queue entry k. The cap keeps the first cap / V samples t != s of weight
    > 0, then the first cap - V * kept queue entries of weight > 0.
    """
    batch, views, dim = z.shape
    queue = np.zeros((0, dim)) if queue is None else np.asarray(queue, np.float64)
    weights = np.asarray(weights, np.float64)
    queue_weights = np.zeros((batch, 0)) if queue_weights is None else np.asarray(queue_weights, np.float64)
    count = batch - anchor_offset if num_anchor_samples is None else num_anchor_samples
    anchor_views = 1 if contrast_mode == "one" else views
    kept, queue_kept = weights > 0, queue_weights > 0
    if positives_cap >= 0:
        for s in range(batch):
            others = [t for t in np.flatnonzero(weights[s] > 0) if t != s][positives_cap // views:]
            kept[s, others] = False
            budget = positives_cap - views * min(int(np.sum(weights[s] > 0)) - int(weights[s, s] > 0),
                                                 positives_cap // views)
            queue_kept[s, np.flatnonzero(queue_weights[s] > 0)[budget:]] = False
    rows = [(anchor_offset + local, v) for v in range(anchor_views) for local in range(count)]
    samples = np.array([s for s, _ in rows])
    contrast = np.concatenate([np.concatenate([z[:, u] for u in range(views)]), queue.astype(z.dtype)])
    logits = np.stack([z[s, v] for s, v in rows]) @ contrast.T / temperature
    not_self = np.ones(logits.shape, bool)
    not_self[np.arange(len(rows)), [v * batch + s for s, v in rows]] = False
    w = np.concatenate([np.tile(weights[samples], (1, views)), queue_weights[samples]], axis=1)
    keep = np.concatenate([np.tile(kept[samples], (1, views)), queue_kept[samples]], axis=1)
    candidate = w > 0
    positive = np.where(candidate & keep & not_self, w, 0.0)
    total = positive.sum(axis=1)
    counts = total > 0
    if denominator == "only_negatives":
        counts &= np.any(~candidate & not_self, axis=1)
    log_prob = _log_prob(denominator, logits, candidate, candidate & ~keep, not_self)
    safe_total = np.where(counts, total, 1.0)
    if variant == "out":
        loss = -np.sum(np.where(positive > 0, positive * log_prob, 0.0), axis=1) / safe_total
    else:
        weighted = np.where(positive > 0, log_prob + np.log(np.where(positive > 0, positive, 1.0)), -np.inf)
        loss = -(_lse(weighted, positive > 0) - np.log(safe_total))
    scale = 1.0 if base_temperature is None else temperature / base_temperature
    loss = np.where(counts, scale * loss, 0.0)
    losses = loss.reshape(anchor_views, count).T
    counts = counts.reshape(anchor_views, count).T
    return losses, counts, (losses[counts].mean() if counts.any() else 0.0)


def unit(rng, *shape):
    """Random float64 vectors of shape `shape`, L2-normalised along the last axis."""
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def jaccard_weight(a, b):
    """|A & B| / |A | B| of the label sets of two multi-hot rows (0 for two empty sets)."""
    set_a, set_b = set(np.flatnonzero(a)), set(np.flatnonzero(b))
    return len(set_a & set_b) / len(set_a | set_b) if set_a | set_b else 0.0


def gaussian_weight(a, b, bandwidth):
    """exp(-|a - b|^2 / (2 bandwidth^2)) of two continuous labels (scalars or vectors)."""
    return float(np.exp(-np.sum((np.atleast_1d(a) - np.atleast_1d(b)) ** 2) / (2 * bandwidth**2)))
