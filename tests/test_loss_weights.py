"""Positives with real weights (`mask`, `pair_weights`), and the named denominators built on them.

The loss of anchor i is L(i) = -sum_p w_ip log p_ip / sum_p w_ip ("out";
"in": -log(sum_p w_ip p_ip / sum_p w_ip)), the negatives being the entries of
weight 0. The float64 NumPy reference is `tests/loss_reference.weighted_reference`,
each denominator written from its paper's equation:

* "all": SupCon, Khosla et al. 2020, eq. 2 / eq. 3: p_ip = softmax over
  every entry but the anchor (and the capped-out ones);
* "one_positive": SINCERE, Feeney & Hughes, eq. of L_SINCERE:
  p_ip = e^{s_ip} / (e^{s_ip} + sum_{n in N(i)} e^{s_in});
* "only_negatives": the decoupled contrastive loss, Yeh et al. 2021, eq. 6
  (with labels: its supervised form): p_ip = e^{s_ip} / sum_{n in N(i)} e^{s_in}.

It runs on complex features too: `_complex_step_gradient` differentiates
the mean loss by the complex step, Im L(z + i h e_k) / h, exact to float64
rounding. The case grid is the existing one (views 1-3, both contrast modes,
both variants, temperatures 0.005-1, replica offsets, queues, caps) over
explicit weights (`mask`, with queue columns), rules on label rows
(`pair_weights`: Jaccard overlap of multi-hot rows, a truncated Gaussian
kernel of continuous labels) and 0/1 weights from integer labels, each in the
dense and the blockwise form. Then: 0/1 weights give today's values exactly;
the weights across replicas and under XLA; the blockwise memory; the values
of the SINCERE authors' code (tufts-ml/SupContrast `revised_losses.py`) and
of HobbitLong's and pytorch-metric-learning's SupConLoss, re-derived from
their formulas (lightly's DCLLoss too, which differs); the examples of
docs/losses.md as doctests; argument validation.
"""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import distribute
from supcon_tf.losses import SupConLoss, label_match_weights, supcon_loss, supcon_per_anchor_loss
from helpers import ROOT
from loss_reference import reference_loss, weighted_reference

DENOMINATORS = ("all", "one_positive", "only_negatives")
TEMPERATURES = (0.005, 0.01, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0)
KERNEL_WIDTH, KERNEL_RADIUS = 0.6, 1.0


# ------------------------------------------------------------------------------------ float64 references


def _complex_step_gradient(z, *args, **kwargs):
    """d(mean loss)/dz of `weighted_reference` by the complex step."""
    step, grad = 1e-30, np.zeros(z.size)
    for k in range(z.size):
        perturbed = z.astype(np.complex128)
        perturbed.flat[k] += 1j * step
        grad[k] = weighted_reference(perturbed, *args, **kwargs)[2].imag / step
    return grad.reshape(z.shape)


# ------------------------------------------------------------------------------------ weight rules (TF and NumPy)


def jaccard_rule(anchor_labels, contrast_labels):
    """TF: |a & c| / |a | c| of multi-hot rows (0 for two empty rows)."""
    a, c = tf.cast(anchor_labels, tf.float64), tf.cast(contrast_labels, tf.float64)
    shared = tf.matmul(a, c, transpose_b=True)
    union = tf.reduce_sum(a, axis=1)[:, None] + tf.reduce_sum(c, axis=1)[None, :] - shared
    return tf.where(union > 0, shared / tf.maximum(union, 1.0), tf.zeros_like(shared))


def kernel_rule(anchor_labels, contrast_labels):
    """TF: exp(-d^2 / (2 width^2)) of the label distance d, 0 from d >= radius on (so there are negatives)."""
    d = tf.cast(anchor_labels, tf.float64)[:, None] - tf.cast(contrast_labels, tf.float64)[None, :]
    return tf.where(tf.abs(d) < KERNEL_RADIUS, tf.exp(-tf.square(d) / (2 * KERNEL_WIDTH**2)), tf.zeros_like(d))


def equality_rule(anchor_labels, contrast_labels):
    """TF: 1 for equal ids, as a caller's rule (it takes the weighted path, not the key path)."""
    return tf.cast(tf.equal(anchor_labels[:, None], contrast_labels[None, :]), tf.float32)


def _numpy_weights(kind, labels, other):
    """The NumPy weights `[len(labels), len(other)]` of a rule, written independently of the TF rules."""
    labels, other = np.asarray(labels, np.float64), np.asarray(other, np.float64)
    if kind == "jaccard":
        weights = np.zeros((len(labels), len(other)))
        for i, j in itertools.product(range(len(labels)), range(len(other))):
            union = np.sum(np.maximum(labels[i], other[j]))
            weights[i, j] = np.sum(np.minimum(labels[i], other[j])) / union if union else 0.0
        return weights
    if kind == "kernel":
        d = labels[:, None] - other[None, :]
        return np.where(np.abs(d) < KERNEL_RADIUS, np.exp(-d**2 / (2 * KERNEL_WIDTH**2)), 0.0)
    if kind == "labels":
        if labels.ndim == 1:
            return (labels[:, None] == other[None, :]).astype(np.float64)
        return (labels @ other.T > 0).astype(np.float64)
    raise AssertionError(kind)


# ------------------------------------------------------------------------------------ the case grid


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


_KINDS = ("labels", "mask", "jaccard", "kernel")
_CASES = [(kind, views, queue) for kind in _KINDS for views in (1, 2, 3) for queue in (False, True)]


def _case(case_id):
    """`(z, api arguments, reference weights, reference kwargs, variant/mode pairs)` of grid case `case_id`."""
    kind, views, with_queue = _CASES[case_id]
    rng = np.random.default_rng([case_id, 22])
    batch, dim, num_queue = 7, 4, 5 if with_queue else 0
    z = _unit(rng, batch, views, dim)
    if case_id % 3 == 0:
        z[2] = z[1]  # duplicate vectors: ties in the logits
    queue = _unit(rng, num_queue, dim) if with_queue else None
    args = dict(labels=None, mask=None, pair_weights=None, queue_labels=None)
    if kind == "labels":
        labels = rng.integers(0, 3, size=batch) * 10
        labels[0] = 99  # a class that appears once
        queue_labels = rng.integers(0, 3, size=num_queue) * 10
        args.update(labels=labels, queue_labels=queue_labels if with_queue else None)
        weights = _numpy_weights("labels", labels, labels)
        queue_weights = _numpy_weights("labels", labels, queue_labels)
    elif kind == "mask":
        weights = rng.uniform(0.1, 3.0, size=(batch, batch)) * (rng.random((batch, batch)) < 0.45)
        weights[3, 3] = 0.0  # sample 3 is not its own positive
        queue_weights = rng.uniform(0.1, 3.0, size=(batch, num_queue)) * (rng.random((batch, num_queue)) < 0.45)
        args["mask"] = np.concatenate([weights, queue_weights], axis=1)
    elif kind == "jaccard":
        labels = (rng.random((batch, 4)) < 0.4).astype(np.float64)
        labels[1] = 0.0  # an empty row: weight 0 with everything, no positive at all
        queue_labels = (rng.random((num_queue, 4)) < 0.4).astype(np.float64)
        args.update(labels=labels, pair_weights=jaccard_rule, queue_labels=queue_labels if with_queue else None)
        weights = _numpy_weights("jaccard", labels, labels)
        queue_weights = _numpy_weights("jaccard", labels, queue_labels)
    else:
        labels = rng.uniform(0.0, 4.0, size=batch)
        queue_labels = rng.uniform(0.0, 4.0, size=num_queue)
        args.update(labels=labels, pair_weights=kernel_rule, queue_labels=queue_labels if with_queue else None)
        weights = _numpy_weights("kernel", labels, labels)
        queue_weights = _numpy_weights("kernel", labels, queue_labels)
    options = dict(temperature=TEMPERATURES[case_id % len(TEMPERATURES)])
    if case_id % 2:
        options.update(anchor_offset=2, num_anchor_samples=3)  # a replica's anchors against the global batch
    if case_id % 3 == 0:
        options["positives_cap"] = views  # one other positive sample
    if case_id % 4 == 1:
        options["base_temperature"] = 0.07
    if with_queue:
        args["queue_features"] = queue
    # Both variants in both contrast modes across neighbouring cases.
    pairs = [("out", "all"), ("in", "one")] if case_id % 2 == 0 else [("in", "all"), ("out", "one")]
    return z, args, (weights, queue, queue_weights if with_queue else None), options, pairs


def _tf_loss(z, args, implementation, dtype=np.float64, gradient=True, **options):
    """Per-anchor loss, mean loss and its gradient (None with `gradient=False`: the forward only), by
    `supcon_per_anchor_loss` (block size 3: padded blocks)."""
    x = tf.constant(z.astype(dtype))
    with tf.GradientTape() as tape:
        tape.watch(x)
        per_anchor = supcon_per_anchor_loss(x, implementation=implementation, block_size=3, **args, **options)
        count = tf.reduce_sum(tf.cast(per_anchor.has_positive, per_anchor.loss.dtype))
        loss = tf.math.divide_no_nan(tf.reduce_sum(per_anchor.loss), count)
    return per_anchor, loss.numpy(), tape.gradient(loss, x).numpy() if gradient else None


@pytest.mark.parametrize("case_id", range(len(_CASES)), ids=lambda i: "-".join(map(str, _CASES[i])))
def test_every_denominator_matches_its_papers_equation_with_weights(case_id):
    z, args, (weights, queue, queue_weights), options, pairs = _case(case_id)
    temperature = options["temperature"]
    for denominator, (variant, mode) in itertools.product(DENOMINATORS, pairs):
        kwargs = dict(options, denominator=denominator, variant=variant, contrast_mode=mode)
        ref_losses, ref_counts, ref_mean = weighted_reference(z, weights, queue, queue_weights, **kwargs)
        ref_grad = _complex_step_gradient(z, weights, queue, queue_weights, **kwargs)
        for implementation in ("dense", "blockwise"):
            where = f"{denominator} {variant}/{mode} {implementation}"
            per_anchor, loss, grad = _tf_loss(z, args, implementation, **kwargs)
            np.testing.assert_array_equal(per_anchor.has_positive.numpy(), ref_counts, err_msg=where)
            np.testing.assert_allclose(per_anchor.loss.numpy(), ref_losses, rtol=1e-9, atol=1e-10, err_msg=where)
            np.testing.assert_allclose(loss, ref_mean, rtol=1e-9, atol=1e-10, err_msg=where)
            scale = max(1.0, float(np.abs(ref_grad).max()))
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-7, atol=1e-9 * scale, err_msg=where)
            # float32: what float32 logits at tau = 0.005 (|s| up to 200) allow.
            tol = 2e-5 * max(1.0, 1.0 / temperature)
            per_anchor32, _, _ = _tf_loss(z, args, implementation, np.float32, gradient=False, **kwargs)
            np.testing.assert_allclose(per_anchor32.loss.numpy(), ref_losses, rtol=1e-4, atol=tol, err_msg=where)


def test_the_references_agree_with_the_looped_reference_of_the_options_tests():
    # The looped, plain-math form of tests/loss_reference.py (weighted mask, cap, offsets) on the same case.

    z, args, (weights, _, _), options, _ = _case(3)  # mask, views 2, no queue, capped
    for denominator, variant in itertools.product(DENOMINATORS, ("out", "in")):
        kwargs = dict(options, denominator=denominator, variant=variant)
        mine = weighted_reference(z, weights, **kwargs)
        looped = reference_loss(z, mask=weights, **kwargs)
        np.testing.assert_array_equal(mine[1], looped[1])
        np.testing.assert_allclose(mine[0], looped[0], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------ 0/1 weights are today's loss


_TODAY = [(kind, views, queue) for kind in ("ids", "multi_hot") for views in (1, 2, 3) for queue in (False, True)]


@pytest.mark.parametrize("case_id", range(len(_TODAY)), ids=lambda i: "-".join(map(str, _TODAY[i])))
def test_zero_one_weights_from_labels_give_todays_values(case_id):
    """A caller's 0/1 rule and the 0/1 mask the labels induce take the weighted path; integer/multi-hot labels
    take today's (unchanged: bitwise the outputs before the weights, checked on 1,248 cases when they came in).
    Dense: bitwise equal. Blockwise: bitwise equal on the general path; the default options with ids take the
    key path (`blockwise_out`) for labels and the general path for weights: float rounding apart."""
    kind, views, with_queue = _TODAY[case_id]
    offset, cap = 2 * ((case_id // 2) % 2), views if case_id % 3 == 0 else -1
    pairs = [("out", "all"), ("in", "one")] if case_id % 2 == 0 else [("in", "all"), ("out", "one")]
    rng = np.random.default_rng([case_id, 7])
    batch, dim = 7, 5
    z = _unit(rng, batch, views, dim).astype(np.float32)
    if kind == "ids":
        labels, queue_labels = rng.integers(0, 3, size=batch), rng.integers(0, 3, size=4)
        rule = equality_rule
    else:
        labels = (rng.random((batch, 3)) < 0.4).astype(np.float32)
        queue_labels = (rng.random((4, 3)) < 0.4).astype(np.float32)
        rule = lambda a, c: label_match_weights(a, c) * 1.0  # noqa: E731  (a caller's rule: not the default object)
    queue = _unit(rng, 4, dim).astype(np.float32) if with_queue else None
    mask = _numpy_weights("labels", labels, np.concatenate([labels, queue_labels]) if with_queue else labels)
    common = dict(queue_features=queue)
    if offset:
        common.update(anchor_offset=offset, num_anchor_samples=4)
    for dtype, denominator, (variant, mode) in itertools.product((np.float32, np.float64), DENOMINATORS, pairs):
        if dtype == np.float64 and (denominator, variant, mode) != ("all", "out", "all"):
            continue  # float64: the key path against the weighted path, to float64 rounding
        options = dict(common, temperature=TEMPERATURES[case_id % 8], denominator=denominator, positives_cap=cap,
                       variant=variant, contrast_mode=mode)
        x = z.astype(dtype)
        today = {}
        for implementation in ("dense", "blockwise"):
            today[implementation] = _tf_loss(x, dict(labels=labels, queue_labels=queue_labels if with_queue else None),
                                             implementation, dtype, **options)
            for name, args in (("rule", dict(labels=labels, pair_weights=rule,
                                             queue_labels=queue_labels if with_queue else None)),
                               ("mask", dict(mask=mask.astype(dtype)))):
                where = f"{name} {implementation} {np.dtype(dtype).name} {denominator} cap={cap} {variant}/{mode}"
                per_anchor, loss, grad = _tf_loss(x, args, implementation, dtype, **options)
                ref_anchor, ref_loss, ref_grad = today[implementation]
                np.testing.assert_array_equal(per_anchor.has_positive.numpy(), ref_anchor.has_positive.numpy(), where)
                key_path = (implementation == "blockwise" and kind == "ids" and (denominator, variant, cap)
                            == ("all", "out", -1))
                if not key_path:
                    np.testing.assert_array_equal(per_anchor.loss.numpy(), ref_anchor.loss.numpy(), err_msg=where)
                    np.testing.assert_array_equal(grad, ref_grad, err_msg=where)
                elif dtype == np.float64:
                    np.testing.assert_allclose(per_anchor.loss.numpy(), ref_anchor.loss.numpy(), rtol=1e-12,
                                               atol=1e-12, err_msg=where)
                    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12, err_msg=where)
                else:  # float32 logits at tau = 0.005 reach |200|: test_losses.py's blockwise tolerances
                    tol = 2e-5 * max(1.0, 1.0 / options["temperature"])
                    np.testing.assert_allclose(per_anchor.loss.numpy(), ref_anchor.loss.numpy(), rtol=1e-4,
                                               atol=tol, err_msg=where)
                    scale = max(1.0, float(np.abs(ref_grad).max()))
                    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * scale, err_msg=where)


# ------------------------------------------------------------------------------------ across replicas, XLA, memory


def _two_cpu_strategy():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest.py)")
    return distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]])


@pytest.mark.parametrize("denominator", DENOMINATORS)
def test_weights_from_gathered_labels_across_two_replicas_equal_one_device(denominator):
    # Each replica gathers its continuous labels with the features (distribute.gather_global); its anchors
    # are its local samples against the global batch and a queue; the replicas' gradients sum to the
    # one-device gradient.
    strategy = _two_cpu_strategy()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 2, 5)).astype(np.float32)
    ages = rng.uniform(0.0, 4.0, size=8)
    queue, queue_ages = _unit(rng, 3, 4).astype(np.float32), rng.uniform(0.0, 4.0, size=3)
    initial = rng.normal(size=(5, 4)).astype(np.float32)
    options = dict(temperature=0.2, denominator=denominator, variant="out", pair_weights=kernel_rule,
                   queue_features=queue, queue_labels=queue_ages, implementation="blockwise", block_size=3)

    def embed(inputs, weights):
        return tf.math.l2_normalize(tf.einsum("bvi,io->bvo", inputs, weights), axis=-1)

    with strategy.scope():
        weights = tf.Variable(initial)

    @tf.function
    def step():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            local = tf.gather(tf.reshape(x, (2, 4, 2, 5)), replica)
            local_ages = tf.gather(tf.reshape(ages, (2, 4)), replica)
            with tf.GradientTape() as tape:
                gathered = distribute.gather_global(embed(local, weights), local_ages)
                per_anchor = supcon_per_anchor_loss(
                    gathered.features, gathered.labels, anchor_offset=gathered.offset,
                    num_anchor_samples=gathered.num_local, **options,
                )
                count = tf.reduce_sum(tf.cast(per_anchor.has_positive, tf.float32))
                share, global_loss = distribute.cross_replica_mean(tf.reduce_sum(per_anchor.loss), count)
            return tape.gradient(share, weights), global_loss

        return strategy.run(replica_fn)

    gradients, global_losses = ([t.numpy() for t in strategy.experimental_local_results(r)] for r in step())
    one_device = tf.Variable(initial)
    with tf.GradientTape() as tape:
        expected = supcon_loss(embed(x, one_device), ages, **options)
    expected_gradient = tape.gradient(expected, one_device).numpy()
    for global_loss in global_losses:
        np.testing.assert_allclose(global_loss, expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(gradients[0] + gradients[1], expected_gradient, atol=1e-5)


def test_weighted_blockwise_under_tf_function_and_xla_matches_eager_dense():
    z, args, _, options, _ = _case(23)  # kernel rule, 3 views, queue
    z = z.astype(np.float32)
    args = dict(args, queue_features=args["queue_features"].astype(np.float32))
    combos = [("one_positive", "in", "all"), ("only_negatives", "out", "one"), ("all", "in", "all")]

    # The eager dense loss and gradient of each combination: the reference of both runs below.
    expected = []
    for denominator, variant, mode in combos:
        x = tf.constant(z)
        with tf.GradientTape() as tape:
            tape.watch(x)
            dense = supcon_per_anchor_loss(x, implementation="dense", denominator=denominator, variant=variant,
                                           contrast_mode=mode, **args, **options).loss
            total = tf.reduce_sum(dense)
        expected.append((dense.numpy(), tape.gradient(total, x).numpy()))

    for jit in (False, True):  # without jit_compile the blockwise passes are XLA-compiled on their own

        @tf.function(jit_compile=jit)
        def run(x):
            results = []
            for denominator, variant, mode in combos:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = supcon_per_anchor_loss(x, implementation="blockwise", block_size=4, denominator=denominator,
                                                  variant=variant, contrast_mode=mode, **args, **options).loss
                    total = tf.reduce_sum(loss)
                results.append((loss, tape.gradient(total, x)))
            return results

        for (denominator, variant, mode), (loss, grad), (dense, dense_grad) in zip(combos, run(tf.constant(z)),
                                                                                 expected):
            where = f"jit={jit} {denominator} {variant}/{mode}"
            tol = 2e-5 * max(1.0, 1.0 / options["temperature"])
            np.testing.assert_allclose(loss.numpy(), dense, rtol=1e-5, atol=tol, err_msg=where)
            np.testing.assert_allclose(grad.numpy(), dense_grad, rtol=1e-4, atol=tol, err_msg=where)


def _blockwise_tensor_peak_mib(batch, labels_kind, **options):
    """TensorFlow's CPU allocator peak (MiB) of one blockwise forward + backward of `batch` x 2 views, dim 32."""
    rng = np.random.default_rng(3)
    x = tf.constant(_unit(rng, batch, 2, 32).astype(np.float32))
    labels = tf.constant(rng.uniform(0.0, 40.0, size=batch) if labels_kind == "ages" else rng.integers(0, 10, batch))

    @tf.function
    def step(features, labels):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = supcon_loss(features, labels, implementation="blockwise", **options)
        return loss, tape.gradient(loss, features)

    step.get_concrete_function(x, labels)
    peaks = []
    for _ in range(3):  # the least of three: the allocator is the process's, and other threads may hold buffers
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        loss, grad = step(x, labels)
        assert np.isfinite(loss.numpy()) and np.all(np.isfinite(grad.numpy()))
        peaks.append((tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20)
        del loss, grad
    return min(peaks)


def test_weights_from_labels_stay_blockwise_in_memory():
    # Weights from a rule on label rows, built block by block: the tensor peak is the general blockwise form's
    # own (a few [rows, block] buffers, measured 8 of 4 MiB at 4096 rows, block 256; the [rows, rows] float32
    # logits alone would be 64 MiB) and grows linearly with the rows, not quadratically.
    small = _blockwise_tensor_peak_mib(1024, "ages", pair_weights=kernel_rule)
    large = _blockwise_tensor_peak_mib(2048, "ages", pair_weights=kernel_rule)
    plain = _blockwise_tensor_peak_mib(2048, "ids", variant="in")  # the general form, 0/1 weights from ids
    assert large <= 1.1 * plain, (large, plain)
    assert large < 2.5 * small, (small, large)
    assert large < 0.6 * 4096 * 4096 * 4 / 2**20, large  # the [4096, 4096] float32 logits alone: 64 MiB


# ------------------------------------------------------------------------------------ other code, re-derived


_GOOGLE_FEATURES = np.array([  # google-research supcon/losses_test.py's features, L2-normalised here
    [[0.01, 0.02, 0.14], [0.38, 0.61, 0.50]],
    [[0.86, 0.97, 0.33], [0.26, 0.68, 0.45]],
    [[0.32, 0.64, 0.28], [0.45, 0.74, 0.73]],
])
_GOOGLE_FEATURES = _GOOGLE_FEATURES / np.linalg.norm(_GOOGLE_FEATURES, axis=-1, keepdims=True)


def _tufts_ml(embeddings, labels, temperature, kind):
    """The formula of tufts-ml/SupContrast `revised_losses.py` (commit 0288eb2), `SINCERELoss` and `DCLLoss`, in NumPy.

    Logits e e^T / tau of the flat `[n, dim]` embeddings; negatives: the
    other labels; per pair (i, j) of the same label, i != j: the cross
    entropy -(s_ij - log(e^{s_ij} + sum_neg e^{s_in})) (SINCERE) or
    -(s_ij - log sum_neg e^{s_in}) (DCL); each divided by the number of j's
    partners, summed and divided by n. Their `Multiview*` classes flatten
    `[batch, views, dim]` sample-major and repeat the labels per view.
    """
    logits = embeddings @ embeddings.T / temperature
    same = labels[:, None] == labels[None, :]
    negatives = np.log(np.sum(np.where(same, 0.0, np.exp(logits)), axis=0))  # per column; logits are symmetric
    partner = same & ~np.eye(len(labels), dtype=bool)
    count = partner.sum(axis=0)
    log_denominator = np.logaddexp(logits, negatives[:, None]) if kind == "sincere" else negatives[:, None]
    cross_entropy = np.where(partner, -(logits - log_denominator), 0.0)
    return np.sum(cross_entropy / count) / len(labels)


# (features, labels, temperature, their class, value of their formula (`_tufts_ml`), our denominator)
_TUFTS_CASES = [
    ("multiview", (0, 0, 1), 0.07, "sincere", 2.517882431131892, "one_positive"),
    ("multiview", (0, 0, 1), 0.07, "dcl", 2.3156236969910977, "only_negatives"),
    ("multiview", (0, 0, 1), 0.5, "sincere", 1.3698082874280795, "one_positive"),
    ("multiview", (0, 0, 1), 0.5, "dcl", 1.0626969047354187, "only_negatives"),
    ("single_view", (0, 0, 1, 1, 2, 2), 0.2, "sincere", 1.7450886068234734, "one_positive"),
    ("single_view", (0, 0, 1, 1, 2, 2), 0.2, "dcl", 1.5283926506112415, "only_negatives"),
]


@pytest.mark.parametrize("layout, labels, temperature, kind, value, denominator", _TUFTS_CASES)
def test_sincere_and_supervised_dcl_equal_the_sincere_authors_code(layout, labels, temperature, kind, value,
                                                                    denominator):
    labels = np.array(labels)
    z = _GOOGLE_FEATURES if layout == "multiview" else _GOOGLE_FEATURES.reshape(6, 1, 3)
    flat_labels = np.repeat(labels, z.shape[1])
    assert _tufts_ml(z.reshape(-1, 3), flat_labels, temperature, kind) == pytest.approx(value, rel=1e-12)
    for implementation in ("dense", "blockwise"):
        got = supcon_loss(z, labels, temperature=temperature, denominator=denominator, implementation=implementation,
                          block_size=4)
        assert got.numpy() == pytest.approx(value, rel=1e-12), implementation
        got = supcon_loss(z.astype(np.float32), labels, temperature=temperature, denominator=denominator,
                          implementation=implementation, block_size=4)
        assert got.numpy() == pytest.approx(value, rel=1e-5), implementation


def _decoupled_paper(z, temperature):
    """Yeh et al. 2021, eq. 6 (two views, no labels): sum over views k and samples i of
    -s(z_i^k, z_i^{3-k}) + log sum_{l in views, j != i} exp s(z_i^k, z_j^l), averaged over the 2n anchors."""
    n, total = len(z), 0.0
    for k, i in itertools.product(range(2), range(n)):
        anchor = z[i, k]
        negatives = [np.dot(anchor, z[j, v]) / temperature for v in range(2) for j in range(n) if j != i]
        total += -np.dot(anchor, z[i, 1 - k]) / temperature + np.log(np.sum(np.exp(negatives)))
    return total / (2 * n)


def _lightly_dcl(z, temperature):
    """lightly `DCLLoss` (lightly/loss/dcl_loss.py, commit 30b2e45) without weight_fn, in NumPy: per anchor view,
    -s(positive) + logsumexp(same view, other samples) + logsumexp(other view, other samples), averaged."""
    n, total = len(z), 0.0
    for k, i in itertools.product(range(2), range(n)):
        anchor = z[i, k]
        same = [np.dot(anchor, z[j, k]) / temperature for j in range(n) if j != i]
        other = [np.dot(anchor, z[j, 1 - k]) / temperature for j in range(n) if j != i]
        total += -np.dot(anchor, z[i, 1 - k]) / temperature + np.log(np.sum(np.exp(same))) + np.log(
            np.sum(np.exp(other)))
    return total / (2 * n)


def test_only_negatives_without_labels_is_the_decoupled_papers_equation():
    z = _unit(np.random.default_rng(6), 5, 2, 4)
    for implementation in ("dense", "blockwise"):
        got = supcon_loss(z, temperature=0.3, denominator="only_negatives", implementation=implementation)
        assert got.numpy() == pytest.approx(_decoupled_paper(z, 0.3), rel=1e-12)
    # lightly's DCLLoss splits the log-sum-exp in two: not this loss (docs/losses.md says so).
    assert abs(_lightly_dcl(z, 0.3) - _decoupled_paper(z, 0.3)) > 0.1


def test_docs_losses_examples_run_as_doctests():
    import doctest
    import os

    path = os.path.join(ROOT, "docs", "losses.md")
    result = doctest.testfile(path, module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0, result


def _hobbitlong(features, labels=None, mask=None, temperature=0.07, contrast_mode="all", base_temperature=0.07):
    """HobbitLong/SupContrast `losses.py` `SupConLoss.forward` (commit 02f458c), its formula in NumPy.

    Mask from labels (eq) or given (any real values), tiled over views; the
    self-contrast entries removed; log_prob = logits - log(sum exp + 1e-9)
    with the logits shifted by their row maximum; per anchor the
    mask-weighted mean of log_prob over mask.sum(1) (NaN without a
    positive), times -(temperature / base_temperature), then the mean over
    every anchor.
    """
    batch, views, _ = features.shape
    if mask is None:
        mask = np.eye(batch) if labels is None else (labels[:, None] == labels[None, :]).astype(np.float64)
    contrast = np.concatenate([features[:, v] for v in range(views)])
    anchors, anchor_count = (features[:, 0], 1) if contrast_mode == "one" else (contrast, views)
    logits = anchors @ contrast.T / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    mask = np.tile(mask, (anchor_count, views))
    logits_mask = np.ones_like(mask)
    logits_mask[np.arange(batch * anchor_count), np.arange(batch * anchor_count)] = 0
    mask = mask * logits_mask
    log_prob = logits - np.log((np.exp(logits) * logits_mask).sum(axis=1, keepdims=True) + 1e-9)
    mean_log_prob_pos = (mask * log_prob).sum(axis=1) / mask.sum(axis=1)
    return np.mean(-(temperature / base_temperature) * mean_log_prob_pos)


def _pytorch_metric_learning(embeddings, labels, temperature=0.1):
    """pytorch-metric-learning `SupConLoss` (src/pytorch_metric_learning/losses/supcon_loss.py, commit ab8fcff) with
    its defaults (CosineSimilarity, AvgNonZeroReducer), in NumPy: per anchor of the flat batch, -(mean over the
    positives of log softmax over every other entry); the sum over anchors divided by the number of losses > 0;
    0 when the batch has no positive or no negative pair."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    mat = e @ e.T / temperature
    mat = mat - mat.max(axis=1, keepdims=True)
    same, eye = labels[:, None] == labels[None, :], np.eye(len(labels), dtype=bool)
    positive, negative = same & ~eye, ~same
    if not positive.any() or not negative.any():
        return 0.0
    log_prob = mat - np.log(np.sum(np.where(positive | negative, np.exp(mat), 0.0), axis=1, keepdims=True))
    losses = -np.sum(positive * log_prob, axis=1) / (positive.sum(axis=1) + np.finfo(np.float64).tiny)
    return np.sum(losses) / max(int(np.sum(losses > 0)), 1)


def test_hobbitlong_and_pytorch_metric_learning_formulas_are_ours():
    rng = np.random.default_rng(8)
    z = _unit(rng, 6, 2, 5)
    labels = np.array([0, 1, 0, 2, 1, 0])
    weights = rng.uniform(0.0, 2.0, size=(6, 6)) * (rng.random((6, 6)) < 0.6)
    np.fill_diagonal(weights, 1.0)  # every anchor keeps a positive (HobbitLong's code gives NaN without one)
    for mode in ("all", "one"):
        # base_temperature 0.07 and temperature 0.5: tau / base_tau = 7.1 scales the loss.
        ours = supcon_loss(z, labels, temperature=0.5, base_temperature=0.07, contrast_mode=mode).numpy()
        theirs = _hobbitlong(z, labels, temperature=0.5, base_temperature=0.07, contrast_mode=mode)
        assert ours == pytest.approx(theirs, rel=1e-7), mode  # their + 1e-9 inside the log
        ours = supcon_loss(z, mask=weights, temperature=0.5, contrast_mode=mode, implementation="blockwise").numpy()
        theirs = _hobbitlong(z, mask=weights, temperature=0.5, base_temperature=0.5, contrast_mode=mode)
        assert ours == pytest.approx(theirs, rel=1e-7), mode
    # pytorch-metric-learning: the views flattened into its batch, labels repeated; it normalises the embeddings.
    raw = rng.normal(size=(6, 2, 5)) * 3.0
    one_view = np.array([0, 1, 0, 2, 1, 3])  # one view: samples 3 and 5 have no positive
    for features, ids in ((raw, labels), (raw[:, :1], one_view)):
        flat = np.concatenate([features[:, v] for v in range(features.shape[1])])
        theirs = _pytorch_metric_learning(flat, np.tile(ids, features.shape[1]), temperature=0.1)
        ours = supcon_loss(features, ids, temperature=0.1, normalize=True).numpy()
        assert ours == pytest.approx(theirs, rel=1e-9)


# ------------------------------------------------------------------------------------ validation


def _z():
    return np.ones((4, 2, 8), np.float32) / math.sqrt(8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=[0, 1, 0, 1], pair_weights="jaccard"), r"`pair_weights` must be None or a callable .* "
                                                            r"received: pair_weights='jaccard'"),
        (dict(pair_weights=kernel_rule), r"`pair_weights` .* needs `labels`, received: labels=None"),
        (dict(mask=np.eye(4), pair_weights=kernel_rule), r"at most one of `mask` .* and `pair_weights`"),
        (dict(labels=[0, 1, 0, 1], pair_weights=lambda a, c: -tf.ones([tf.shape(a)[0], tf.shape(c)[0]])),
         r"`pair_weights` must hold finite weights >= 0, received: pair_weights with a negative entry \(-1.0\)"),
        (dict(labels=[0, 1, 0, 1], pair_weights=lambda a, c: tf.fill([tf.shape(a)[0], tf.shape(c)[0]], np.nan)),
         r"`pair_weights` must hold finite weights >= 0, received: pair_weights with NaN or Inf entries"),
        (dict(labels=[0, 1, 0, 1], pair_weights=lambda a, c: tf.ones([3])),
         r"`pair_weights` must return \[rows, columns\] = \[\d+, \d+\] weights .* received: weights with shape \(3,\)"),
        (dict(labels=[0, 1, 0, 1], pair_weights=lambda a, c: tf.ones([2, 2])),
         r"`pair_weights` must return .* received: weights with shape \(2, 2\)"),
        (dict(labels=[0, 1, 0, 1],
              pair_weights=lambda a, c: tf.strings.as_string(tf.ones([tf.shape(a)[0], tf.shape(c)[0]]))),
         r"`pair_weights` must return real weights, received: weights with dtype string"),
        (dict(mask=-np.eye(4)), r"`mask` must hold finite weights >= 0, received: mask with a negative entry \(-1.0\)"),
        (dict(mask=np.full((4, 4), np.inf)), r"`mask` .* received: mask with NaN or Inf entries"),
        (dict(mask=np.eye(4)[:3]), r"`mask` must have one row per sample of `features` \(4\), received: mask with "
                                   r"shape \(3, 4\)"),
        (dict(mask=np.eye(4)[:, :3]),
         r"`mask` must be \[batch, batch\] = \[4, 4\], received: mask with shape \(4, 3\)"),
        (dict(mask=np.ones(4)), r"`mask` must be \[batch, batch\] \(or \[batch, batch \+ queue_size\] with a queue\)"),
        (dict(mask=np.full((4, 4), "a")), r"`mask` must hold real weights, received: mask with dtype string"),
        (dict(mask=np.eye(4), queue_features=np.ones((3, 8), np.float32)),
         r"`mask` must be \[batch, batch \+ queue_size\] = \[4, 7\], received: mask with shape \(4, 4\)"),
        (dict(mask=np.ones((4, 7)), queue_features=np.ones((3, 8), np.float32), queue_labels=[0, 1, 2]),
         r"With a `mask`, its last queue_size columns weigh the queue entries: give no `queue_labels`"),
        (dict(normalize="yes"), r"`normalize` must be a bool, received: normalize='yes'"),
        (dict(denominator="sincere"), r"`denominator` must be one of all, one_positive, only_negatives, class_balanced; "
                                      r"received: denominator='sincere'"),
        (dict(implementation="sparse"), r"`implementation` must be one of .*; received: implementation='sparse'"),
        (dict(block_size=0), r"`block_size` must be an int >= 1, received: block_size=0"),
    ],
)
@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
def test_bad_arguments_raise_one_line_naming_the_argument_and_value(kwargs, message, implementation):
    kwargs = dict(dict(implementation=implementation), **kwargs)
    with pytest.raises(ValueError, match=message) as raised:
        supcon_per_anchor_loss(_z(), **kwargs)
    assert "\n" not in str(raised.value)


def test_keras_wrapper_checks_its_switches():
    with pytest.raises(ValueError, match=r"`normalize` must be a bool, received: normalize=1"):
        SupConLoss(normalize=1)
    with pytest.raises(ValueError, match=r"`use_labels` must be a bool, received: use_labels='no'"):
        SupConLoss(use_labels="no")
    assert keras.losses.deserialize(keras.losses.serialize(SupConLoss(normalize=True))).normalize is True
