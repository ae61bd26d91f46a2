"""The named members of the loss family: Jaccard and Gaussian-kernel positives, MulSupCon, BCL.

Each is checked against a float64 NumPy reference written from its paper's
equation, looped over anchors (complex-safe, so the gradient comes from the
complex step, exact to float64 rounding):

* `positive_weighting="jaccard"`: w_ij = |y_i & y_j| / |y_i | y_j| (multi-hot
  rows as label sets), in the weighted loss
  L(i) = -sum_p w_ip log p_ip / sum_p w_ip;
* `label_kernel="gaussian"`: y-Aware (Dufumier et al., MICCAI 2021, eq. 3):
  L(i) = -sum_k [K(y_i - y_k) / sum_j K(y_i - y_j)] log p_ik, K the Gaussian
  kernel exp(-d^2 / (2 sigma^2)), j and k over the anchor's contrast set;
* `multi_label="per_label"`: MulSupCon (Zhang & Wu, AAAI 2024): one anchor per
  (sample view, label of the sample); its positives the entries carrying the
  label; the mean over every such pair (the authors' code's default weighting);
* `denominator="class_balanced"` (+ `prototypes`): BCL (Zhu et al., CVPR
  2022): Z(i) = sum_c 1/|A_c(i)| sum_{a in A_c(i)} exp(s_ia), the class
  centres in A(i) (and positives of their class).

The case grid is test_loss_weights.py's (views 1-3, both contrast modes, both
variants, temperatures 0.005-1, replica offsets, queues), dense and
blockwise, gradients included; then the named rules against the general
weighted reference for every denominator, the authors' code re-derived
(BalSCL; y-Aware's GeneralizedSupervisedNTXenLoss, which differs), the Keras
config round trip, and validation.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.losses import SupConLoss, supcon_loss, supcon_per_anchor_loss
from loss_reference import gaussian_weight, jaccard_weight, unit, weighted_reference

TEMPERATURES = (0.005, 0.01, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0)
BANDWIDTH = 0.8


# ------------------------------------------------------------------------------------ paper references (looped)


def _weights_gaussian(a, b):
    return gaussian_weight(a, b, BANDWIDTH)


def _rows(z, contrast_mode, anchor_offset, num_anchor_samples):
    batch, views, _ = z.shape
    count = batch - anchor_offset if num_anchor_samples is None else num_anchor_samples
    anchor_views = 1 if contrast_mode == "one" else views
    return [(anchor_offset + local, v) for v in range(anchor_views) for local in range(count)], count, anchor_views


def _entries(z, labels, queue, queue_labels, prototypes, prototype_labels):
    """The contrast set as (vector, label, batch sample or None), view-major, then queue, then prototypes."""
    batch, views, _ = z.shape
    entries = [(z[t, u], labels[t], (t, u)) for u in range(views) for t in range(batch)]
    if queue is not None:
        entries += [(queue[k], queue_labels[k], None) for k in range(len(queue))]
    if prototypes is not None:
        entries += [(prototypes[c], prototype_labels[c], None) for c in range(len(prototypes))]
    return entries


def paper_reference(z, labels, kind, *, temperature, contrast_mode="all", variant="out", anchor_offset=0,
                    num_anchor_samples=None, queue=None, queue_labels=None, prototypes=None, prototype_labels=None,
                    base_temperature=None):
    """`(losses, counts, mean)`: per anchor `[b, Va]` (`[b, Va, L]` for "per_label") from the papers' equations.

    `z`, `queue` and `prototypes` may be complex (complex-step gradients).
    Denominator: A(i) = every entry but the anchor ("jaccard", "gaussian",
    "per_label"); "balanced": each entry's exp divided by its class's count in A(i).
    """
    rows, count, anchor_views = _rows(z, contrast_mode, anchor_offset, num_anchor_samples)
    entries = _entries(z, labels, queue, queue_labels, prototypes, prototype_labels)
    scale = 1.0 if base_temperature is None else temperature / base_temperature
    num_labels = np.asarray(labels).shape[1] if kind == "per_label" else 1
    complex_input = any(np.iscomplexobj(t) for t in (z, queue, prototypes) if t is not None)
    losses = np.zeros((count, anchor_views, num_labels), dtype=np.complex128 if complex_input else np.float64)
    counts = np.zeros((count, anchor_views, num_labels), bool)
    for s, v in rows:
        others = [e for e in entries if e[2] != (s, v)]
        logits = np.array([z[s, v] @ vector / temperature for vector, _, _ in others])
        if kind == "balanced":
            same = [sum(1 for _, other, _ in others if other == label) for _, label, _ in others]
            log_z = np.log(np.sum(np.exp(logits) / np.array(same)))
        else:
            log_z = np.log(np.sum(np.exp(logits)))
        log_prob = logits - log_z
        if kind == "per_label":
            weight_sets = [np.array([float(labels[s][j] == 1 and other[j] == 1) for _, other, _ in others])
                           for j in range(num_labels)]
        elif kind == "jaccard":
            weight_sets = [np.array([jaccard_weight(labels[s], other) for _, other, _ in others])]
        elif kind == "gaussian":
            weight_sets = [np.array([_weights_gaussian(labels[s], other) for _, other, _ in others])]
        else:  # balanced: the entries of the anchor's class
            weight_sets = [np.array([float(other == labels[s]) for _, other, _ in others])]
        for j, w in enumerate(weight_sets):
            total = w.sum()
            if total <= 0:
                continue
            if variant == "out":  # y-Aware eq. 3: the kernel weights normalised by their sum over A(i)
                value = -np.sum(w * log_prob) / total
            else:
                value = -np.log(np.sum(w * np.exp(log_prob)) / total)
            losses[s - anchor_offset, v, j] = scale * value
            counts[s - anchor_offset, v, j] = True
    if kind != "per_label":
        losses, counts = losses[..., 0], counts[..., 0]
    return losses, counts, (losses[counts].mean() if counts.any() else 0.0)


def _complex_step(function, x, step=1e-30):
    grad = np.zeros(x.size)
    for k in range(x.size):
        perturbed = x.astype(np.complex128)
        perturbed.flat[k] += 1j * step
        grad[k] = function(perturbed).imag / step
    return grad.reshape(x.shape)


# ------------------------------------------------------------------------------------ the case grid


_KINDS = ("jaccard", "gaussian", "per_label", "balanced", "prototypes")
_CASES = [(kind, views, queue) for kind in _KINDS for views in (1, 2, 3) for queue in (False, True)]


def _case(case_id):
    kind, views, with_queue = _CASES[case_id]
    rng = np.random.default_rng([case_id, 2022])
    batch, dim, num_queue = 6, 3, 4
    z = unit(rng, batch, views, dim)
    if case_id % 3 == 0:
        z[2] = z[1]  # ties
    labels = queue_labels = None
    if kind in ("jaccard", "per_label"):
        labels = (rng.random((batch, 3)) < 0.5).astype(np.float64)
        labels[1] = 0.0  # no label: no positive
        labels[0] = [1.0, 0.0, 0.0]
        queue_labels = (rng.random((num_queue, 3)) < 0.5).astype(np.float64)
        named = dict(positive_weighting="jaccard") if kind == "jaccard" else dict(multi_label="per_label")
    elif kind == "gaussian":
        labels = rng.uniform(0.0, 3.0, size=batch if case_id % 2 else (batch, 2))  # values or vectors
        queue_labels = rng.uniform(0.0, 3.0, size=(num_queue,) + labels.shape[1:])
        named = dict(label_kernel="gaussian", kernel_bandwidth=BANDWIDTH)
    else:
        labels = rng.integers(0, 3, size=batch) * 7
        labels[0] = 99  # a class that appears once: a positive only through the other views / its centre
        queue_labels = rng.integers(0, 3, size=num_queue) * 7
        named = dict(denominator="class_balanced") if kind == "balanced" or case_id % 2 else {}
    options = dict(temperature=TEMPERATURES[case_id % len(TEMPERATURES)])
    if case_id % 2:
        options.update(anchor_offset=2, num_anchor_samples=3)
    if case_id % 4 == 1:
        options["base_temperature"] = 0.07
    extra = {}
    if with_queue:
        extra.update(queue=unit(rng, num_queue, dim), queue_labels=queue_labels)
    if kind == "prototypes":
        extra.update(prototypes=unit(rng, 4, dim), prototype_labels=np.array([0, 7, 14, 99]))
    pairs = [("out", "all"), ("in", "one")] if case_id % 2 == 0 else [("in", "all"), ("out", "one")]
    return z, labels, named, options, extra, pairs


def _api_args(labels, named, extra, dtype):
    args = dict(named)
    if "queue" in extra:
        args.update(queue_features=extra["queue"].astype(dtype), queue_labels=extra["queue_labels"])
    if "prototypes" in extra:
        args.update(prototypes=tf.constant(extra["prototypes"].astype(dtype)), prototype_labels=extra["prototype_labels"])
    return args


def _tf_run(z, labels, named, extra, implementation, dtype=np.float64, gradient=True, **options):
    """Per-anchor loss, mean loss and the gradients of the mean (features, prototypes; None with
    `gradient=False`: the forward only)."""
    x = tf.constant(z.astype(dtype))
    args = _api_args(labels, named, extra, dtype)
    watched = [x] + ([args["prototypes"]] if "prototypes" in args else [])
    with tf.GradientTape() as tape:
        for t in watched:
            tape.watch(t)
        per_anchor = supcon_per_anchor_loss(x, labels, implementation=implementation, block_size=4, **args, **options)
        count = tf.reduce_sum(tf.cast(per_anchor.has_positive, per_anchor.loss.dtype))
        loss = tf.math.divide_no_nan(tf.reduce_sum(per_anchor.loss), count)
    return per_anchor, loss.numpy(), [g.numpy() for g in tape.gradient(loss, watched)] if gradient else None


@pytest.mark.parametrize("case_id", range(len(_CASES)), ids=lambda i: "-".join(map(str, _CASES[i])))
def test_each_named_option_matches_its_papers_equation(case_id):
    kind, _, _ = _CASES[case_id]
    z, labels, named, options, extra, pairs = _case(case_id)
    ref_kind = "balanced" if named.get("denominator") == "class_balanced" else (
        "labels" if kind == "prototypes" else kind)
    for variant, mode in pairs:
        kwargs = dict(options, variant=variant, contrast_mode=mode)
        ref_extra = dict(extra)
        if ref_kind == "labels":  # prototypes with the default denominator: the 0/1 weights of equal ids
            ref_losses, ref_counts, ref_mean = _labels_reference(z, labels, extra, **kwargs)
            ref_grads = None
        else:
            run = lambda zz, pp=None: paper_reference(  # noqa: E731
                zz, labels, ref_kind, **kwargs, **dict(ref_extra, **({} if pp is None else {"prototypes": pp})))
            ref_losses, ref_counts, ref_mean = run(z)
            ref_grads = [_complex_step(lambda zz: run(zz)[2], z)]
            if "prototypes" in extra:
                ref_grads.append(_complex_step(lambda pp: run(z, pp)[2], extra["prototypes"]))
        for implementation in ("dense", "blockwise"):
            where = f"{kind} {named} {variant}/{mode} {implementation}"
            # The gradients only where a reference gradient checks them (not for the prototypes' labels reference).
            per_anchor, loss, grads = _tf_run(z, labels, named, extra, implementation, gradient=ref_grads is not None,
                                              **kwargs)
            np.testing.assert_array_equal(per_anchor.has_positive.numpy(), ref_counts, err_msg=where)
            np.testing.assert_allclose(per_anchor.loss.numpy(), ref_losses, rtol=1e-9, atol=1e-10, err_msg=where)
            np.testing.assert_allclose(loss, ref_mean, rtol=1e-9, atol=1e-10, err_msg=where)
            if ref_grads is not None:
                for got, expected in zip(grads, ref_grads):
                    scale = max(1.0, float(np.abs(expected).max()))
                    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9 * scale, err_msg=where)
            tol = 2e-5 * max(1.0, 1.0 / options["temperature"])
            per_anchor32, _, _ = _tf_run(z, labels, named, extra, implementation, np.float32, gradient=False, **kwargs)
            np.testing.assert_allclose(per_anchor32.loss.numpy(), ref_losses, rtol=1e-4, atol=tol, err_msg=where)


def _labels_reference(z, labels, extra, **kwargs):
    """Prototypes with the default denominator: test_loss_weights' weighted reference, the centres as a queue."""
    queue = [q for q in (extra.get("queue"), extra["prototypes"]) if q is not None]
    queue_labels = np.concatenate([ql for ql in (extra.get("queue_labels"), extra["prototype_labels"]) if ql is not None])
    weights = (labels[:, None] == labels[None, :]).astype(np.float64)
    return weighted_reference(z, weights, np.concatenate(queue), (labels[:, None] == queue_labels[None, :]) * 1.0,
                              **kwargs)


# ------------------------------------------------------------------------------------ the other denominators


@pytest.mark.parametrize("kind", ["jaccard", "gaussian", "per_label"])
def test_named_rules_with_every_denominator_equal_the_general_weighted_reference(kind):
    # The named rule's weights (written here from its definition) through test_loss_weights' reference.
    z, labels, named, options, extra, _ = _case(_CASES.index((kind, 2, True)))
    queue, queue_labels = extra["queue"], extra["queue_labels"]
    if kind == "per_label":
        weight_sets = [(np.outer(labels[:, j], labels[:, j]), np.outer(labels[:, j], queue_labels[:, j]))
                       for j in range(labels.shape[1])]
    else:
        rule = jaccard_weight if kind == "jaccard" else _weights_gaussian
        weight_sets = [(np.array([[rule(a, b) for b in labels] for a in labels]),
                        np.array([[rule(a, b) for b in queue_labels] for a in labels]))]
    for denominator, variant, mode in itertools.product(("all", "one_positive", "only_negatives"), ("out", "in"),
                                                        ("all", "one")):
        kwargs = dict(options, denominator=denominator, variant=variant, contrast_mode=mode)
        # The references do not depend on the implementation: computed once for both.
        references = [weighted_reference(z, weights, queue, queue_weights, **kwargs)[:2]
                      for weights, queue_weights in weight_sets]
        for implementation in ("dense", "blockwise"):
            per_anchor, _, _ = _tf_run(z, labels, named, extra, implementation, gradient=False, **kwargs)
            loss, counts = per_anchor.loss.numpy(), per_anchor.has_positive.numpy()
            if kind != "per_label":
                loss, counts = loss[..., None], counts[..., None]
            for j, (ref_losses, ref_counts) in enumerate(references):
                where = f"{kind} label {j} {denominator} {variant}/{mode} {implementation}"
                np.testing.assert_array_equal(counts[..., j], ref_counts, err_msg=where)
                np.testing.assert_allclose(loss[..., j], ref_losses, rtol=1e-9, atol=1e-10, err_msg=where)


# ------------------------------------------------------------------------------------ the authors' code, re-derived


def _balscl(centres, features, targets, num_classes, temperature):
    """FlamieZhu/Balanced-Contrastive-Learning `loss/contrastive.py` `BalSCL.forward` (8fb4289), its formula in NumPy.

    Two views; anchors the 2B view embeddings; contrast: the 2B embeddings and
    the C centres; each column's exp divided by its class's count among the
    2B + C entries, minus 1 on the anchor's class (the anchor itself); the
    positives averaged; the mean over the 2B anchors.
    """
    batch = features.shape[0]
    all_targets = np.concatenate([np.tile(targets, 2), np.arange(num_classes)])
    class_count = np.array([np.sum(all_targets == c) for c in range(num_classes)])
    mask = (all_targets[: 2 * batch, None] == all_targets[None, :]).astype(np.float64)
    logits_mask = np.ones_like(mask)
    logits_mask[np.arange(2 * batch), np.arange(2 * batch)] = 0.0
    mask *= logits_mask
    rows = np.concatenate([features[:, 0], features[:, 1], centres])
    logits = rows[: 2 * batch] @ rows.T / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    per_ins_weight = class_count[all_targets][None, :] - mask
    exp_sum = np.sum(np.exp(logits) * logits_mask / per_ins_weight, axis=1, keepdims=True)
    log_prob = logits - np.log(exp_sum)
    return float(np.mean(-(mask * log_prob).sum(1) / mask.sum(1)))


def test_class_balanced_with_prototypes_equals_the_bcl_authors_formula():
    rng = np.random.default_rng(11)
    features, centres = unit(rng, 8, 2, 5), unit(rng, 4, 5)
    targets = np.array([0, 0, 0, 0, 0, 1, 1, 2])  # long-tailed; class 3 only as a centre
    for temperature in (0.07, 0.1, 0.5):
        expected = _balscl(centres, features, targets, 4, temperature)
        for implementation in ("dense", "blockwise"):
            got = supcon_loss(features, targets, temperature=temperature, denominator="class_balanced",
                              prototypes=centres, prototype_labels=np.arange(4), implementation=implementation,
                              block_size=5)
            assert float(got) == pytest.approx(expected, rel=1e-12)


def _y_aware_code(z_i, z_j, labels, temperature, sigma, row_normalised):
    """Duplums/yAwareContrastiveLearning `losses.py` `GeneralizedSupervisedNTXenLoss.forward` (9a4f3d0) in NumPy.

    Its `weights /= weights.sum(axis=1)` broadcasts the 1-D row sums over the
    columns: w_ij / sum_k w_jk. `row_normalised=True` divides by the anchor's
    own row sum instead (the paper's eq. 3). The loss is -1/N times the sum
    over the 2N anchors.
    """
    n = len(z_i)
    all_labels = np.tile(labels, 2)
    weights = np.exp(-(all_labels[:, None] - all_labels[None, :]) ** 2 / (2 * sigma**2)) * (1 - np.eye(2 * n))
    sums = weights.sum(axis=1)
    weights = weights / (sums[:, None] if row_normalised else sums)
    rows = np.concatenate([z_i, z_j])
    sim = rows @ rows.T / temperature - 1e8 * np.eye(2 * n)
    log_softmax = sim - np.log(np.exp(sim - sim.max(1, keepdims=True)).sum(1, keepdims=True)) - sim.max(1, keepdims=True)
    return float(-(weights * log_softmax).sum() / n)


def test_gaussian_kernel_is_y_aware_eq3_and_twice_less_than_the_authors_code_sum():
    rng = np.random.default_rng(3)
    z = unit(rng, 6, 2, 4)
    ages = rng.uniform(20.0, 80.0, size=6)
    ours = float(supcon_loss(z, ages, temperature=0.1, label_kernel="gaussian", kernel_bandwidth=5.0))
    # The paper's equation, per-anchor normalisation: their code's scale is the sum over 2N anchors / N = 2 x mean.
    assert 2 * ours == pytest.approx(_y_aware_code(z[:, 0], z[:, 1], ages, 0.1, 5.0, row_normalised=True), rel=1e-10)
    # Their code's broadcast normalises by the contrast entry's row sum: a different number unless the sums are equal.
    assert abs(2 * ours - _y_aware_code(z[:, 0], z[:, 1], ages, 0.1, 5.0, row_normalised=False)) > 1e-3


def _mulsupcon_code(query, keys, key_labels, query_labels, temperature):
    """williamzhangsjtu/MulSupCon (808479c) in NumPy: `codes/losses.py` `WeightedSupCon` on the rows that
    `codes/models.py` builds, with its default `with_weight: False`.

    One row per label j of the query: the scores q . k / tau over the keys
    (the query's own key first, then the queue), the mask the keys that carry
    label j; each row's loss is -sum(mask * log softmax(scores)) / sum(mask),
    and the rows are averaged (weight 1 / number of rows).
    """
    scores = keys @ query / temperature
    log_softmax = scores - scores.max() - np.log(np.exp(scores - scores.max()).sum())
    rows = [-(key_labels[:, j] * log_softmax).sum() / key_labels[:, j].sum() for j in np.flatnonzero(query_labels)]
    return float(np.mean(rows))


def test_per_label_matches_the_mulsupcon_authors_code_where_the_contrast_sets_agree():
    # The authors contrast a query with its own key and a queue of keys; SupCon's contrast set is every view of the
    # batch. They are the same set for one sample in two views (query, key), contrast_mode "one", and a queue.
    rng = np.random.default_rng(12)
    for _ in range(4):
        z = unit(rng, 1, 2, 6)
        queue = unit(rng, 7, 6)
        labels = np.array([[1, 0, 1, 1]], np.float64)
        queue_labels = (rng.random((7, 4)) < 0.5).astype(np.float64)
        ours = float(supcon_loss(z, labels, temperature=0.2, contrast_mode="one", multi_label="per_label",
                                 queue_features=queue, queue_labels=queue_labels))
        keys = np.concatenate([z[:, 1], queue])
        expected = _mulsupcon_code(z[0, 0], keys, np.concatenate([labels, queue_labels]), labels[0], 0.2)
        assert ours == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------------ Keras, XLA, validation


@pytest.mark.parametrize("options", [
    dict(positive_weighting="jaccard"),
    dict(label_kernel="gaussian", kernel_bandwidth=0.5),
    dict(multi_label="per_label", variant="in"),
    dict(denominator="class_balanced", contrast_mode="one"),
])
def test_supcon_loss_class_serialises_the_named_options(options):
    rng = np.random.default_rng(1)
    z = unit(rng, 6, 2, 4).astype(np.float32)
    if "label_kernel" in options:
        y = rng.uniform(0, 2, size=(6, 1)).astype(np.float32)
    elif "denominator" in options:
        y = np.array([[0], [1], [0], [2], [1], [0]], np.float32)
    else:
        y = (rng.random((6, 3)) < 0.5).astype(np.float32)
    loss = SupConLoss(temperature=0.2, **options)
    config = loss.get_config()
    for key, value in options.items():
        assert config[key] == value
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is SupConLoss and restored.get_config() == config
    labels = y[:, 0] if y.shape[1] == 1 else y
    fn_options = {k: v for k, v in options.items()}
    expected = supcon_loss(z, labels, temperature=0.2, **fn_options)
    assert float(restored(y, z)) == pytest.approx(float(expected), rel=1e-6)


def test_named_options_under_xla_match_eager():
    rng = np.random.default_rng(4)
    z = tf.constant(unit(rng, 8, 2, 4).astype(np.float32))
    ids = tf.constant([0, 1, 0, 2, 1, 0, 3, 3])
    multi_hot = tf.constant((rng.random((8, 3)) < 0.5).astype(np.float32))
    centres = tf.constant(unit(rng, 4, 4).astype(np.float32))

    def losses(x):
        out = []
        for implementation in ("dense", "blockwise"):
            common = dict(implementation=implementation, block_size=5)
            out += [supcon_loss(x, ids, denominator="class_balanced", prototypes=centres,
                                prototype_labels=tf.range(4), **common),
                    supcon_loss(x, multi_hot, multi_label="per_label", **common),
                    supcon_loss(x, multi_hot, positive_weighting="jaccard", **common)]
        return tf.stack(out)

    eager = losses(z).numpy()
    compiled = tf.function(losses, jit_compile=True)(z).numpy()
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)


_LABELS = np.array([0, 1, 0, 1])
_MULTI = np.array([[1, 0], [0, 1], [1, 1], [0, 1]], np.float32)
_AGES = np.array([1.0, 2.0, 3.0, 4.0], np.float32)


@pytest.mark.parametrize("kwargs, labels, message", [
    (dict(label_kernel="gaussian", kernel_bandwidth=1.0), _LABELS, "label_kernel='gaussian' weighs continuous labels"),
    (dict(label_kernel="gaussian", kernel_bandwidth=0.0), _AGES, "`kernel_bandwidth` must be a positive number, received: kernel_bandwidth=0.0"),
    (dict(label_kernel="gaussian", kernel_bandwidth=-2), _AGES, "kernel_bandwidth=-2"),
    (dict(label_kernel="gaussian"), _AGES, "needs `kernel_bandwidth` > 0, received: kernel_bandwidth=None"),
    (dict(kernel_bandwidth=1.0), _AGES, "`kernel_bandwidth` needs `label_kernel`"),
    (dict(label_kernel="rbf", kernel_bandwidth=1.0), _AGES, "`label_kernel` must be one of None, gaussian; received: label_kernel='rbf'"),
    (dict(positive_weighting="jaccard"), _MULTI * 2, "needs multi-hot `labels` of 0 and 1, received: labels with an entry 2.0"),
    (dict(positive_weighting="jaccard"), _LABELS, "needs [batch, classes] multi-hot `labels`"),
    (dict(positive_weighting="cosine"), _MULTI, "received: positive_weighting='cosine'"),
    (dict(multi_label="per_label"), _MULTI - 0.5, "received: labels with an entry 0.5"),
    (dict(multi_label="per_label", positives_cap=2), _MULTI, "`positives_cap` does not combine with multi_label"),
    (dict(multi_label="per_label", positive_weighting="jaccard"), _MULTI, "Give at most one of"),
    (dict(denominator="class_balanced"), _MULTI, "needs [batch] class ids as `labels`"),
    (dict(denominator="class_balanced"), None, 'denominator="class_balanced" needs `labels`'),
    (dict(denominator="class_balanced", positives_cap=2), _LABELS, "`positives_cap` does not combine with denominator"),
    (dict(positive_weighting="jaccard", pair_weights=lambda a, c: a @ tf.transpose(c)), _MULTI, "give no `pair_weights`"),
    (dict(prototypes=np.eye(2, 3)), _LABELS, "`prototypes` need `prototype_labels`"),
    (dict(prototypes=np.eye(2, 3), prototype_labels=[0, 1]), _MULTI, "`prototypes` are class centres"),
    (dict(prototypes=np.eye(2, 4), prototype_labels=[0, 1]), _LABELS, "`prototypes` must be [classes, dim] with dim=3"),
    (dict(prototypes=np.eye(2, 3), prototype_labels=[0, 1, 2]), _LABELS, "`prototype_labels` must be [classes] = [2]"),
    (dict(prototype_labels=[0, 1]), _LABELS, "`prototype_labels` needs `prototypes`"),
])
def test_validation_names_the_argument_and_value(kwargs, labels, message):
    z = unit(np.random.default_rng(0), 4, 2, 3)
    with pytest.raises(ValueError) as error:
        supcon_loss(z, labels, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_keras_loss_refuses_bad_named_options_at_construction():
    with pytest.raises(ValueError, match="kernel_bandwidth=0"):
        SupConLoss(label_kernel="gaussian", kernel_bandwidth=0)
    with pytest.raises(ValueError, match="use_labels=False"):
        SupConLoss(multi_label="per_label", use_labels=False)
    with pytest.raises(ValueError, match="denominator"):
        SupConLoss(denominator="balanced")


def test_weights_module_examples_run_as_doctests():
    import doctest

    from supcon_tf.losses import weights

    result = doctest.testmod(weights)
    assert result.attempted >= 3 and result.failed == 0, result
