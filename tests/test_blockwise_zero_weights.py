"""Blockwise gradients when some anchors get an upstream gradient of 0.

Zero upstream weights come from anchors without positives (one view with
unique labels, an empty multi-hot row), per-anchor losses weighted by a 0/1
mask, `sample_weight = 0` in `SupConModel`, and every row of a Jacobian. The
blockwise custom gradients (`losses.blockwise_out`: paired and rectangular
layouts; `losses.blockwise`: every other option) are checked against the
dense form and against float64 NumPy references written from the formulas
in `supcon_tf/losses/__init__.py`:

* `_reference_per_anchor`: the per-anchor losses of the shared vectorised
  reference (`tests/loss_reference.weighted_reference` on the labels' 0/1
  weights), for any option the blockwise forms take (labels, multi-hot,
  none; queue; offsets; contrast modes; variants; denominators; caps). It also runs on complex
  features, so `_complex_step_jacobian` differentiates it by the complex
  step, Im L(z + i h e_k) / h: the Jacobian d L(i) / d z to float64
  rounding (no cancellation, unlike finite differences).
* `_analytic_gradient`: for the default loss (eq. 2, "all", no cap), the
  gradient derived by hand: with s_ij = a_i . c_j / tau, p_ij the softmax
  over A(i) and G_ij = w_i (p_ij - [j in P(i)] / |P(i)|) / tau,
  d/d a_i = sum_j G_ij c_j and d/d c_j = sum_i G_ij a_i, summed back onto
  the features (queue rows dropped). It checks the complex step.

Tolerances: the error's norm within 1e-4 (float32) or 1e-10 (float64) of
the reference gradient's norm.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import losses as losses_lib
from supcon_tf.losses import supcon_loss, supcon_per_anchor_loss
from loss_reference import label_weights, weighted_reference

TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}
DIM = 6
TEMPERATURE = 0.2


# ----------------------------------------------------------------------------------------------- references


def _relations(labels, queue_labels, num_samples, num_queue):
    """Sample-level candidate positives `[N, N]` and queue ones `[N, K]` (bool), before the cap."""
    related, queue_related = label_weights(labels, queue_labels, num_samples, num_queue)
    return related > 0, queue_related > 0


def _layout(num_samples, views, num_queue, contrast_mode, anchor_offset, num_anchor_samples):
    """Anchor rows (sample, view) in the API's view-major order, and each one's own contrast row."""
    anchor_views = 1 if contrast_mode == "one" else views
    count = num_samples - anchor_offset if num_anchor_samples is None else num_anchor_samples
    rows = [(anchor_offset + local, v) for v in range(anchor_views) for local in range(count)]
    return rows, count, anchor_views


def _reference_per_anchor(
    z, labels=None, *, queue=None, queue_labels=None, temperature=TEMPERATURE, contrast_mode="all", variant="out",
    denominator="all", positives_cap=-1, anchor_offset=0, num_anchor_samples=None,
):
    """`(losses, counts)`, `[anchor samples, anchor views]` like `supcon_per_anchor_loss`; z may be complex.

    `tests/loss_reference.weighted_reference` on the 0/1 weights of the labels.
    """
    num_queue = 0 if queue is None else len(queue)
    weights, queue_weights = label_weights(labels, queue_labels, z.shape[0], num_queue)
    losses, counts, _ = weighted_reference(
        z, weights, queue, queue_weights, temperature=temperature, contrast_mode=contrast_mode, variant=variant,
        denominator=denominator, positives_cap=positives_cap, anchor_offset=anchor_offset,
        num_anchor_samples=num_anchor_samples,
    )
    return losses, counts


def _complex_step_jacobian(z, **kwargs):
    """`[anchor samples, anchor views, *z.shape]`: d L(i) / d z of `_reference_per_anchor`, by the complex step."""
    step = 1e-30
    shape = _reference_per_anchor(z, **kwargs)[0].shape
    jacobian = np.zeros(shape + (z.size,))
    for k in range(z.size):
        perturbed = z.astype(np.complex128)
        perturbed.flat[k] += 1j * step
        jacobian[..., k] = _reference_per_anchor(perturbed, **kwargs)[0].imag / step
    return jacobian.reshape(shape + z.shape)


def _analytic_gradient(z, weights, labels=None, *, queue=None, queue_labels=None, contrast_mode="all",
                       anchor_offset=0, num_anchor_samples=None, temperature=TEMPERATURE):
    """d(sum_i w_i L_out(i)) / dz for the default loss ("out", "all", no cap), from the formula above."""
    num_samples, views, dim = z.shape
    q = np.zeros((0, dim)) if queue is None else np.asarray(queue, np.float64)
    related, queue_related = _relations(labels, queue_labels, num_samples, len(q))
    rows, count, anchor_views = _layout(num_samples, views, len(q), contrast_mode, anchor_offset, num_anchor_samples)
    samples = np.array([s for s, _ in rows])
    contrast = np.concatenate([np.concatenate([z[:, u] for u in range(views)]), q])
    anchors = np.stack([z[s, v] for s, v in rows])
    logits = anchors @ contrast.T / temperature
    own = np.array([v * num_samples + s for s, v in rows])
    not_self = np.ones(logits.shape, bool)
    not_self[np.arange(len(rows)), own] = False
    positive = np.concatenate([np.tile(related[samples], (1, views)), queue_related[samples]], axis=1) & not_self
    num_positive = positive.sum(axis=1)
    w = np.asarray(weights, np.float64).T.reshape(-1)  # [anchor samples, views] -> view-major rows
    w = np.where(num_positive > 0, w, 0.0)
    shifted = np.where(not_self, logits - logits.max(axis=1, keepdims=True), -np.inf)
    softmax = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    g = w[:, None] * (softmax - positive / np.maximum(num_positive, 1)[:, None]) / temperature
    anchor_grad, contrast_grad = g @ contrast, g.T @ anchors
    grad = np.zeros_like(z)
    for r, (s, v) in enumerate(rows):
        grad[s, v] += anchor_grad[r]
    for u in range(views):
        grad[:, u] += contrast_grad[u * num_samples:(u + 1) * num_samples]
    return grad


# ------------------------------------------------------------------------------------------------- cases


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# name: (batch, views, block_size, options). "paired": anchors == contrast (blockwise_out's slabs); the others
# are rectangular. Block sizes that divide the rows and ones that do not, odd and even block counts.
LAYOUTS = {
    "paired_v1_divides": (12, 1, 4, {}),
    "paired_v1_padded": (12, 1, 5, {}),
    "paired_v2_odd_padded": (7, 2, 3, {}),
    "paired_v2_even": (7, 2, 7, {}),
    "paired_v3_even_padded": (5, 3, 4, {}),
    "paired_block_1": (6, 2, 1, {}),
    "paired_one_block": (5, 2, 64, {}),
    "rect_one": (8, 3, 5, dict(contrast_mode="one")),
    "rect_offset": (9, 2, 4, dict(anchor_offset=2, num_anchor_samples=5)),
    "rect_queue": (7, 2, 4, dict(queue=5)),
    "rect_queue_v1": (8, 1, 3, dict(queue=6)),
}


def _case(layout, seed, labels_kind="int", dtype=np.float64):
    """Features, labels and API kwargs of a layout; one view leaves some anchors without positives."""
    batch, views, block_size, options = LAYOUTS[layout]
    rng = np.random.default_rng([seed, sum(map(ord, layout)), sum(map(ord, labels_kind))])
    z = _unit(rng, batch, views, DIM).astype(dtype)
    options = dict(options)
    num_queue = options.pop("queue", 0)
    num_classes = max(2, batch // 3)
    if labels_kind == "int":
        labels = rng.integers(0, num_classes, size=batch)
        labels[::4] = 100 + np.arange(len(labels[::4]))  # unique: no positive with one view
        queue_labels = rng.integers(0, num_classes, size=num_queue)
    elif labels_kind == "multi_hot":
        labels = (rng.random((batch, 4)) < 0.35).astype(np.float32)
        labels[1] = 0  # an empty row: no positive, whatever the views
        queue_labels = (rng.random((num_queue, 4)) < 0.35).astype(np.float32)
    else:
        labels = queue_labels = None
    kwargs = dict(options, temperature=TEMPERATURE, block_size=block_size)
    if num_queue:
        kwargs.update(queue_features=_unit(rng, num_queue, DIM).astype(dtype), queue_labels=queue_labels)
    return z, labels, kwargs


def _reference_kwargs(labels, kwargs):
    out = {k: v for k, v in kwargs.items() if k not in ("block_size", "queue_features")}
    out.update(labels=labels, queue=kwargs.get("queue_features"))
    if "queue_labels" not in out:
        out["queue_labels"] = None
    return out


def _weights(kind, counts, rng):
    """Upstream weights `[anchor samples, anchor views]`, zeros included (see the module docstring)."""
    shape, flat = counts.shape, np.arange(counts.size).reshape(counts.shape)
    if kind == "every_third_zero":  # a 0/1 mask on the per-anchor losses
        return (flat % 3 != 0).astype(np.float64)
    if kind == "signed_with_zeros":  # both signs and zeros: the signed path
        return np.where(flat % 3 == 1, 0.0, rng.normal(size=shape))
    if kind == "one_hot":  # a Jacobian row: one anchor that counts
        weights = np.zeros(shape)
        weights.flat[np.flatnonzero(counts)[len(np.flatnonzero(counts)) // 2]] = 1.0
        return weights
    if kind == "mean":  # supcon_loss: 1 / count on the anchors that count; the others get 0 in the core
        return np.full(shape, 1.0 / max(int(counts.sum()), 1))
    raise ValueError(kind)


def _blockwise_and_dense(z, labels, weight_sets, kwargs, mode="eager"):
    """`{implementation: (per-anchor losses, [gradient of sum(weights * loss) per weight set])}`, blockwise and dense.

    One forward per implementation on a persistent tape; the gradient of sum(weights * loss) is the loss's
    gradient with upstream `weights` (`output_gradients`: what reduce_sum(loss * weights) sends back), once
    per weight set. In "function" mode the forward and the gradients are one `tf.function`, the weights its
    inputs.
    """
    results = {}
    for implementation in ("blockwise", "dense"):
        options = dict(kwargs, implementation=implementation)

        def run(x, weight_sets, options=options):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                loss = supcon_per_anchor_loss(x, labels, **options).loss
            return loss, [tape.gradient(loss, x, output_gradients=weights) for weights in weight_sets]

        if mode == "function":
            run = tf.function(run)
        loss, grads = run(tf.constant(z), [tf.constant(weights, z.dtype) for weights in weight_sets])
        results[implementation] = (loss.numpy(), [grad.numpy() for grad in grads])
    return results


def _assert_close(actual, expected, dtype, what):
    scale = float(np.linalg.norm(expected))
    error = float(np.linalg.norm(np.asarray(actual, np.float64) - expected))
    assert scale > 0, what
    assert error <= TOLERANCE[dtype] * scale, f"{what}: relative error {error / scale:.3g}"


def _check(z, labels, kwargs, weight_kinds, dtype, seed, mode="eager"):
    reference = _reference_kwargs(labels, kwargs)
    expected_loss, counts = _reference_per_anchor(z.astype(np.float64), **reference)
    jacobian = _complex_step_jacobian(z.astype(np.float64), **reference)
    rng = np.random.default_rng(seed)
    weight_sets = [_weights(kind, counts, rng) for kind in weight_kinds]
    results = _blockwise_and_dense(z, labels, weight_sets, kwargs, mode)
    for implementation, (loss, _) in results.items():
        _assert_close(loss, expected_loss, dtype, f"{implementation} loss")
    for index, (kind, weights) in enumerate(zip(weight_kinds, weight_sets)):
        expected = np.tensordot(weights, jacobian, axes=2)
        for implementation, (_, grads) in results.items():
            _assert_close(grads[index], expected, dtype, f"{implementation} gradient vs reference ({kind})")
        _assert_close(results["blockwise"][1][index], results["dense"][1][index].astype(np.float64), dtype,
                      f"blockwise vs dense gradient ({kind})")


# ----------------------------------------------------------------------------------------------- tests


def test_references_agree():
    # The complex-step Jacobian of the per-anchor reference against the hand-derived gradient (default loss).
    for layout in ("paired_v1_padded", "rect_one", "rect_offset", "rect_queue"):
        z, labels, kwargs = _case(layout, 0)
        reference = _reference_kwargs(labels, kwargs)
        _, counts = _reference_per_anchor(z, **reference)
        weights = np.random.default_rng(1).normal(size=counts.shape)
        weights.flat[::3] = 0.0
        from_jacobian = np.tensordot(weights, _complex_step_jacobian(z, **reference), axes=2)
        analytic = _analytic_gradient(z, weights, **{k: v for k, v in reference.items()
                                                     if k not in ("variant", "denominator", "positives_cap")})
        np.testing.assert_allclose(from_jacobian, analytic, rtol=0, atol=1e-12 * np.abs(analytic).max())


def test_the_reported_case():
    # [12, 1, 6], labels [0, 1, 0, 2, ..., 10], block 4, float32: only anchors 0 and 2 have a positive.
    rng = np.random.default_rng(0)
    z = _unit(rng, 12, 1, 6).astype(np.float32)
    labels = np.array([0, 1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    x = tf.constant(z)
    grads = {}
    for implementation in ("blockwise", "dense"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = supcon_loss(x, labels, implementation=implementation, block_size=4)
        grads[implementation] = tape.gradient(loss, x).numpy()
    expected = np.tensordot(np.full((12, 1), 0.5), _complex_step_jacobian(
        z.astype(np.float64), labels=labels, temperature=0.1), axes=2)
    _assert_close(grads["dense"], expected, np.float32, "dense")
    _assert_close(grads["blockwise"], expected, np.float32, "blockwise")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_default_loss_with_zero_weights(layout, dtype, seed):
    # blockwise_out: "out", "all", no cap, [batch] labels (or none).
    z, labels, kwargs = _case(layout, seed, "int", dtype)
    _check(z, labels, kwargs, ("every_third_zero", "signed_with_zeros", "one_hot", "mean"), dtype, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["paired_v2_odd_padded", "paired_v3_even_padded", "rect_one", "rect_queue"])
def test_default_loss_without_labels_with_zero_weights(layout, dtype):
    z, labels, kwargs = _case(layout, 3, "none", dtype)
    _check(z, labels, kwargs, ("every_third_zero", "signed_with_zeros", "one_hot"), dtype, 3)


# (variant, denominator, positives_cap in views, labels): the general form (losses.blockwise).
GENERAL_OPTIONS = [
    ("out", "all", -1, "multi_hot"),
    ("in", "all", -1, "int"),
    ("in", "all", -1, "multi_hot"),
    ("out", "all", 1, "int"),
    ("in", "all", 1, "multi_hot"),
    ("out", "one_positive", -1, "int"),
    ("in", "one_positive", 1, "int"),
    ("out", "one_positive", 1, "multi_hot"),
    ("out", "only_negatives", -1, "int"),
    ("in", "only_negatives", -1, "multi_hot"),
    ("out", "only_negatives", 1, "int"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["paired_v1_padded", "paired_v2_odd_padded", "rect_one", "rect_queue"])
@pytest.mark.parametrize("options", GENERAL_OPTIONS, ids=["-".join(map(str, o)) for o in GENERAL_OPTIONS])
def test_general_form_with_zero_weights(options, layout, dtype):
    variant, denominator, cap_views, labels_kind = options
    z, labels, kwargs = _case(layout, 5, labels_kind, dtype)
    kwargs.update(variant=variant, denominator=denominator)
    if cap_views > 0:
        kwargs["positives_cap"] = cap_views * z.shape[1]
    _check(z, labels, kwargs, ("every_third_zero", "signed_with_zeros", "one_hot"), dtype, 5)


@pytest.mark.parametrize("layout", ["paired_v1_padded", "paired_v3_even_padded", "rect_offset"])
def test_zero_weights_in_a_tf_function(layout):
    z, labels, kwargs = _case(layout, 2, "int", np.float32)
    _check(z, labels, kwargs, ("every_third_zero", "signed_with_zeros"), np.float32, 2, mode="function")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["paired_v1_divides", "paired_v2_odd_padded", "rect_queue"])
def test_jacobian_rows(layout, dtype):
    # Row i of the Jacobian is the gradient with upstream one-hot(i): every other anchor weighs 0.
    z, labels, kwargs = _case(layout, 4, "int", dtype)
    expected = _complex_step_jacobian(z.astype(np.float64), **_reference_kwargs(labels, kwargs))
    x = tf.constant(z)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = supcon_per_anchor_loss(x, labels, implementation="blockwise", **kwargs).loss
    for index in np.ndindex(*loss.shape):
        one_hot = np.zeros(loss.shape)
        one_hot[index] = 1.0
        row = tape.gradient(loss, x, output_gradients=tf.constant(one_hot, x.dtype))
        if np.linalg.norm(expected[index]) == 0:  # an anchor without a positive: no gradient at all
            assert np.all(row.numpy() == 0), index
        else:
            _assert_close(row.numpy(), expected[index], dtype, f"Jacobian row {index}")


@pytest.mark.parametrize("layout", ["paired_v1_padded", "paired_v2_odd_padded"])
def test_sample_weight_zero_through_supcon_model(layout, monkeypatch):
    # SupConModel weights each sample's anchors by sample_weight; on one replica its anchors are the whole
    # (gathered) batch: the paired layout. The model picks "auto" (blockwise from 4096 rows): force blockwise.
    from supcon_tf.encoders import build_encoder
    from supcon_tf.layers import ProjectionHead
    from supcon_tf.models import SupConModel

    z, labels, kwargs = _case(layout, 6, "int", np.float32)
    monkeypatch.setattr(losses_lib, "supcon_per_anchor_loss", functools.partial(
        supcon_per_anchor_loss, implementation="blockwise", block_size=kwargs["block_size"]))
    model = SupConModel(build_encoder("small_cnn", (8, 8, 1), width=0.25), ProjectionHead((16,), DIM),
                        loss_config=losses_lib.LossConfig(temperature=TEMPERATURE))
    sample_weight = np.array([0.0 if s % 3 == 0 else 1.0 + s for s in range(z.shape[0])], np.float32)
    x = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss, _ = model.compute_contrastive_loss(x, tf.constant(labels), sample_weight=tf.constant(sample_weight))
    grad = tape.gradient(loss, x).numpy()
    _, counts = _reference_per_anchor(z.astype(np.float64), labels=labels)
    weights = np.broadcast_to(sample_weight[:, None].astype(np.float64), counts.shape)
    expected = np.tensordot(weights / np.sum(weights * counts), _complex_step_jacobian(
        z.astype(np.float64), labels=labels), axes=2)
    _assert_close(grad, expected, np.float32, "SupConModel gradient")
