"""The float64 NumPy reference of the SupCon loss family that the loss tests check against.

Written from the definitions in `supcon_tf/losses/__init__.py` (Khosla et al.
2020, eq. 2 and 3, and the denominators of docs/losses.md) with plain loops
over anchors and the entries they contrast with, so that it can be read
against the formulas; no vectorisation, no shared code with the library.
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
