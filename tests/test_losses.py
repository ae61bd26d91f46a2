"""Tests of the SupCon loss family against the looped float64 NumPy reference written from the formula
(`tests/loss_reference.py`)."""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.losses import (
    PerAnchorLoss,
    SupConLoss,
    reduce_per_anchor,
    supcon_loss,
    supcon_per_anchor_loss,
)
from loss_reference import reference_loss


def _random_case(rng, batch, views, dim, num_classes, kind):
    z = rng.normal(size=(batch, views, dim))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    labels = mask = None
    if kind == "labels":
        labels = rng.integers(0, num_classes, size=batch)
    elif kind == "multi_hot":
        labels = (rng.random((batch, num_classes)) < 0.35).astype(np.float32)
    elif kind == "mask":
        m = (rng.random((batch, batch)) < 0.3).astype(np.float32)
        mask = np.maximum(m, m.T)
        np.fill_diagonal(mask, 1.0)
    return z.astype(np.float32), labels, mask


# 24 randomised cases: every kind x views 1/2/3 x mode x variant is covered
# across the grid, temperatures spread from 0.005 to 1.0.
_KINDS = ("labels", "none", "mask", "multi_hot")
_CASES = [
    (kind, views, mode, variant)
    for kind, views, (mode, variant) in itertools.product(
        _KINDS, (1, 2, 3), [("all", "out"), ("one", "in")]
    )
]
_TEMPERATURES = (0.005, 0.01, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0)


@pytest.mark.parametrize("case_id", range(len(_CASES)))
def test_matches_reference_on_random_cases(case_id):
    kind, views, mode, variant = _CASES[case_id]
    # Flip mode/variant pairing for odd ids so "all"+"in" and "one"+"out" are covered too.
    if case_id % 4 == 1:
        mode = "one" if mode == "all" else "all"
    rng = np.random.default_rng(case_id)
    temperature = _TEMPERATURES[case_id % len(_TEMPERATURES)]
    z, labels, mask = _random_case(rng, batch=7, views=views, dim=5, num_classes=3, kind=kind)
    if kind == "labels":
        labels[0] = 99  # a class that appears once
        labels = labels * 10  # ids need not be contiguous
    if case_id % 3 == 0:
        z[2] = z[1]  # duplicate vectors, possibly with different labels
        if labels is not None and labels.ndim == 1:
            labels[2] = labels[1] + 1
    base = None if case_id % 2 else 0.07
    ref_losses, ref_has_pos, ref_mean = reference_loss(
        z, labels, mask, temperature=temperature, base_temperature=base, contrast_mode=mode, variant=variant
    )
    per_anchor = supcon_per_anchor_loss(
        z, labels, mask, temperature=temperature, base_temperature=base, contrast_mode=mode, variant=variant
    )
    np.testing.assert_array_equal(per_anchor.has_positive.numpy(), ref_has_pos)
    # float32 logits at tau=0.005 reach |200|: relative precision is what float32 gives.
    tol = 2e-5 * max(1.0, 1.0 / temperature)
    np.testing.assert_allclose(per_anchor.loss.numpy(), ref_losses, rtol=1e-4, atol=tol)
    loss = supcon_loss(z, labels, mask, temperature=temperature, base_temperature=base, contrast_mode=mode, variant=variant)
    np.testing.assert_allclose(loss.numpy(), ref_mean, rtol=1e-4, atol=tol)
    assert np.isfinite(loss.numpy())


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("mode", ["all", "one"])
def test_float64_matches_reference_tightly(mode, variant):
    rng = np.random.default_rng(7)
    z, labels, _ = _random_case(rng, batch=6, views=2, dim=4, num_classes=2, kind="labels")
    z = z.astype(np.float64)
    _, _, ref = reference_loss(z, labels, temperature=0.3, contrast_mode=mode, variant=variant)
    got = supcon_loss(tf.constant(z), labels, temperature=0.3, contrast_mode=mode, variant=variant)
    assert got.dtype == tf.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


def test_normalize_option_matches_reference():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 2, 4)).astype(np.float32) * 3.0
    labels = np.array([0, 1, 0, 1, 1])
    _, _, ref = reference_loss(z, labels, temperature=0.2, normalize=True)
    got = supcon_loss(z, labels, temperature=0.2, normalize=True)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)


# ---------------------------------------------------------------- exact geometry


def test_orthogonal_simclr_pairs_give_log_of_contrast_size():
    # 2 samples x 2 views; both views of a sample identical, samples orthogonal, tau=1:
    # each anchor has 3 others with logits 1 (positive), 0, 0 -> -log(e / (e + 2)).
    z = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]], np.float32)
    got = supcon_loss(z, temperature=1.0)
    np.testing.assert_allclose(got.numpy(), -math.log(math.e / (math.e + 2)), rtol=1e-6)


def test_all_equal_embeddings_give_log_of_contrast_size_minus_one():
    # Every embedding identical: softmax is uniform over the 2n-1 others (n = 4 samples, V = 2):
    # L = -log(1 / (2n - 1)) = log 7 whatever the labels or temperature.
    z = np.ones((4, 2, 3), np.float32) / math.sqrt(3.0)
    for labels in (None, [0, 0, 1, 1], [0, 1, 2, 3]):
        for variant in ("out", "in"):
            got = supcon_loss(z, labels, temperature=0.05, variant=variant)
            np.testing.assert_allclose(got.numpy(), math.log(7.0), rtol=1e-5)


def test_in_and_out_differ_and_out_is_upper_bound():
    # Jensen: L_in <= L_out, with equality only if all positives have equal probability.
    rng = np.random.default_rng(0)
    z, labels, _ = _random_case(rng, batch=8, views=2, dim=6, num_classes=2, kind="labels")
    out_loss = supcon_loss(z, labels, variant="out").numpy()
    in_loss = supcon_loss(z, labels, variant="in").numpy()
    assert in_loss < out_loss - 1e-3


def test_identity_labels_equal_no_labels():
    rng = np.random.default_rng(1)
    z, _, _ = _random_case(rng, batch=6, views=3, dim=8, num_classes=1, kind="none")
    for mode, variant in itertools.product(("all", "one"), ("out", "in")):
        a = supcon_loss(z, None, contrast_mode=mode, variant=variant)
        b = supcon_loss(z, np.arange(6), contrast_mode=mode, variant=variant)
        c = supcon_loss(z, mask=np.eye(6, dtype=np.float32), contrast_mode=mode, variant=variant)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-6)


def test_labels_equal_the_mask_they_induce_and_one_hot():
    rng = np.random.default_rng(2)
    z, labels, _ = _random_case(rng, batch=8, views=2, dim=4, num_classes=3, kind="labels")
    mask = (labels[:, None] == labels[None, :]).astype(np.float32)
    one_hot = np.eye(3, dtype=np.float32)[labels]
    a = supcon_loss(z, labels).numpy()
    np.testing.assert_allclose(supcon_loss(z, mask=mask).numpy(), a, rtol=1e-6)
    np.testing.assert_allclose(supcon_loss(z, one_hot).numpy(), a, rtol=1e-6)


# ---------------------------------------------------------------- edge cases


def test_no_positive_anchor_gives_zero_loss_and_zero_gradients():
    z = tf.Variable(tf.math.l2_normalize(tf.random.normal([4, 1, 3]), axis=-1))
    with tf.GradientTape() as tape:
        loss = supcon_loss(z, labels=[0, 1, 2, 3])
    grad = tape.gradient(loss, z)
    assert loss.numpy() == 0.0
    np.testing.assert_array_equal(grad.numpy(), np.zeros((4, 1, 3)))


def test_single_view_simclr_has_no_positives():
    per_anchor = supcon_per_anchor_loss(tf.math.l2_normalize(tf.ones([3, 1, 2]), -1))
    assert not per_anchor.has_positive.numpy().any()


def test_anchors_without_positive_are_excluded_not_averaged_in():
    rng = np.random.default_rng(4)
    z, _, _ = _random_case(rng, batch=5, views=1, dim=4, num_classes=1, kind="none")
    labels = np.array([0, 0, 1, 1, 2])  # sample 4 has no positive with one view
    per_anchor = supcon_per_anchor_loss(z, labels)
    assert per_anchor.has_positive.numpy().ravel().tolist() == [True, True, True, True, False]
    assert per_anchor.loss.numpy()[4, 0] == 0.0
    np.testing.assert_allclose(
        supcon_loss(z, labels).numpy(), per_anchor.loss.numpy()[:4].mean(), rtol=1e-6
    )


@pytest.mark.parametrize("variant", ["out", "in"])
def test_tiny_temperature_is_finite_in_float32(variant):
    rng = np.random.default_rng(5)
    z, labels, _ = _random_case(rng, batch=16, views=2, dim=8, num_classes=4, kind="labels")
    z = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = supcon_loss(z, labels, temperature=0.005, variant=variant)
    grad = tape.gradient(loss, z)
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(grad.numpy()))


def test_half_precision_features_are_computed_in_float32():
    rng = np.random.default_rng(6)
    z, labels, _ = _random_case(rng, batch=6, views=2, dim=4, num_classes=2, kind="labels")
    got16 = supcon_loss(tf.constant(z, tf.float16), labels)
    got32 = supcon_loss(tf.constant(z.astype(np.float16).astype(np.float32)), labels)
    assert got16.dtype == tf.float32
    np.testing.assert_allclose(got16.numpy(), got32.numpy(), rtol=1e-6)


def test_anchor_offset_selects_anchor_rows_of_the_full_contrast_set():
    rng = np.random.default_rng(8)
    z, labels, _ = _random_case(rng, batch=6, views=2, dim=4, num_classes=2, kind="labels")
    full = supcon_per_anchor_loss(z, labels)
    part = supcon_per_anchor_loss(z, labels, anchor_offset=2, num_anchor_samples=3)
    np.testing.assert_allclose(part.loss.numpy(), full.loss.numpy()[2:5], rtol=1e-6)
    np.testing.assert_array_equal(part.has_positive.numpy(), full.has_positive.numpy()[2:5])


def test_works_under_tf_function_with_unknown_batch():
    fn = tf.function(
        lambda z, y: supcon_loss(z, y),
        input_signature=[tf.TensorSpec([None, 2, 4], tf.float32), tf.TensorSpec([None], tf.int32)],
    )
    rng = np.random.default_rng(9)
    z, labels, _ = _random_case(rng, batch=5, views=2, dim=4, num_classes=2, kind="labels")
    np.testing.assert_allclose(
        fn(z, labels.astype(np.int32)).numpy(), reference_loss(z, labels, temperature=0.1)[2], rtol=1e-5
    )


# ---------------------------------------------------------------- gradients


def _assert_gradient_matches_finite_differences(f, z64, eps=1e-6):
    """Autodiff gradient of scalar `f` at float64 `z64` against central differences."""
    x = tf.Variable(z64)
    with tf.GradientTape() as tape:
        value = f(x)
    analytic = tape.gradient(value, x).numpy()
    numeric = np.zeros_like(z64)
    for idx in np.ndindex(*z64.shape):
        plus, minus = z64.copy(), z64.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (f(tf.constant(plus)).numpy() - f(tf.constant(minus)).numpy()) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("kind", ["labels", "none"])
def test_gradients_match_finite_differences(variant, kind):
    rng = np.random.default_rng(10)
    z, labels, _ = _random_case(rng, batch=4, views=2, dim=3, num_classes=2, kind=kind)
    z64 = z.astype(np.float64)

    def f(x):
        return supcon_loss(x, labels, temperature=0.5, variant=variant, normalize=True)

    _assert_gradient_matches_finite_differences(f, z64)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(features=np.zeros((4, 8), np.float32)), "features"),
        (dict(features=np.zeros((4, 2, 8), np.int32)), "features"),
        (dict(labels=[0, 1, 0, 1], mask=np.eye(4)), "labels"),
        (dict(labels=[0, 1, 0]), "labels"),
        (dict(labels=np.zeros((4, 2, 2))), "labels"),
        (dict(mask=np.eye(3)), "mask"),
        (dict(mask=np.ones(4)), "mask"),
        (dict(mask=-np.eye(4)), "mask"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(base_temperature=0.0), "base_temperature"),
        (dict(contrast_mode="some"), "contrast_mode"),
        (dict(variant="middle"), "variant"),
        (dict(features=np.full((4, 2, 8), np.nan, np.float32)), "features"),
        (dict(features=np.full((4, 2, 8), np.inf, np.float32)), "features"),
        (dict(anchor_offset=-1), "anchor_offset"),
        (dict(anchor_offset=3, num_anchor_samples=2), "num_anchor_samples"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, message):
    args = dict(features=np.ones((4, 2, 8), np.float32) / math.sqrt(8))
    args.update(kwargs)
    features = args.pop("features")
    with pytest.raises(ValueError, match=message):
        supcon_per_anchor_loss(features, **args)


def test_reduce_rejects_non_per_anchor_input():
    with pytest.raises(ValueError, match="per_anchor"):
        reduce_per_anchor(tf.ones([3]))
    assert float(reduce_per_anchor(PerAnchorLoss(tf.zeros([2, 1]), tf.zeros([2, 1], bool)))) == 0.0


# ---------------------------------------------------------------- Keras wrapper


def test_keras_loss_wrapper_matches_function_and_round_trips():
    rng = np.random.default_rng(11)
    z, labels, _ = _random_case(rng, batch=6, views=2, dim=4, num_classes=3, kind="labels")
    loss_fn = SupConLoss(temperature=0.2, variant="in", contrast_mode="one")
    expected = supcon_loss(z, labels, temperature=0.2, variant="in", contrast_mode="one").numpy()
    np.testing.assert_allclose(loss_fn(labels, z).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(loss_fn(labels[:, None], z).numpy(), expected, rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss_fn))
    assert isinstance(restored, SupConLoss)
    assert restored.get_config() == loss_fn.get_config()
    np.testing.assert_allclose(restored(labels, z).numpy(), expected, rtol=1e-6)


def test_keras_loss_wrapper_without_labels_is_simclr():
    rng = np.random.default_rng(12)
    z, labels, _ = _random_case(rng, batch=6, views=2, dim=4, num_classes=3, kind="labels")
    simclr = SupConLoss(temperature=0.5, use_labels=False)
    np.testing.assert_allclose(
        simclr(labels, z).numpy(), supcon_loss(z, temperature=0.5).numpy(), rtol=1e-6
    )


def test_keras_loss_wrapper_validates_arguments():
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0)
    with pytest.raises(ValueError, match="variant"):
        SupConLoss(variant="both")


# ---------------------------------------------------------------- memory queue


@pytest.mark.parametrize("kind", ["labels", "multi_hot", "none"])
@pytest.mark.parametrize("variant, mode", [("out", "all"), ("in", "one")])
def test_queue_matches_reference_with_queue_entries_as_extra_contrast(kind, variant, mode):
    rng = np.random.default_rng(20)
    z, labels, _ = _random_case(rng, batch=6, views=2, dim=5, num_classes=3, kind=kind)
    queue = rng.normal(size=(9, 5)).astype(np.float32)
    queue /= np.linalg.norm(queue, axis=-1, keepdims=True)
    if kind == "labels":
        queue_labels = rng.integers(0, 3, size=9)
    elif kind == "multi_hot":
        queue_labels = (rng.random((9, 3)) < 0.35).astype(np.float32)
    else:
        queue_labels = None
    ref_losses, ref_has, ref_mean = reference_loss(
        z, labels, temperature=0.2, contrast_mode=mode, variant=variant, queue_features=queue, queue_labels=queue_labels
    )
    per_anchor = supcon_per_anchor_loss(
        z, labels, temperature=0.2, contrast_mode=mode, variant=variant, queue_features=queue, queue_labels=queue_labels
    )
    np.testing.assert_array_equal(per_anchor.has_positive.numpy(), ref_has)
    np.testing.assert_allclose(per_anchor.loss.numpy(), ref_losses, rtol=1e-4, atol=1e-5)
    got = supcon_loss(z, labels, temperature=0.2, contrast_mode=mode, variant=variant,
                      queue_features=queue, queue_labels=queue_labels)
    np.testing.assert_allclose(got.numpy(), ref_mean, rtol=1e-4, atol=1e-5)


def test_queue_gets_no_gradient_and_empty_queue_equals_no_queue():
    rng = np.random.default_rng(21)
    z, labels, _ = _random_case(rng, batch=6, views=2, dim=4, num_classes=2, kind="labels")
    queue = tf.Variable(rng.normal(size=(5, 4)).astype(np.float32))
    features = tf.Variable(z)
    with tf.GradientTape(persistent=True) as tape:
        loss = supcon_loss(features, labels, queue_features=queue, queue_labels=np.arange(5) % 2)
    assert tape.gradient(loss, queue) is None
    assert np.all(np.isfinite(tape.gradient(loss, features).numpy()))
    empty = supcon_loss(z, labels, queue_features=np.zeros((0, 4), np.float32), queue_labels=np.zeros(0, np.int64))
    np.testing.assert_allclose(empty.numpy(), supcon_loss(z, labels).numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(queue_labels=[0, 1]), "queue_features"),
        (dict(queue_features=np.zeros((3, 5), np.float32), queue_labels=[0, 1, 0]), "queue_features"),
        (dict(queue_features=np.zeros((3, 8), np.float32)), "queue_labels"),
        (dict(queue_features=np.zeros((3, 8), np.float32), queue_labels=[0, 1]), "queue_labels"),
    ],
)
def test_queue_bad_input(kwargs, match):
    z = np.ones((4, 2, 8), np.float32) / math.sqrt(8)
    with pytest.raises(ValueError, match=match):
        supcon_per_anchor_loss(z, [0, 1, 0, 1], **kwargs)
    with pytest.raises(ValueError, match="mask"):
        supcon_per_anchor_loss(z, mask=np.eye(4), queue_features=np.zeros((3, 8), np.float32))


# ---------------------------------------------------------------- blockwise form


@pytest.mark.parametrize("case_id", range(len(_CASES)))
def test_blockwise_matches_reference_and_dense_gradients(case_id):
    kind, views, mode, variant = _CASES[case_id]
    if case_id % 4 == 1:
        mode = "one" if mode == "all" else "all"
    rng = np.random.default_rng(100 + case_id)
    temperature = _TEMPERATURES[case_id % len(_TEMPERATURES)]
    z, labels, mask = _random_case(rng, batch=7, views=views, dim=5, num_classes=3, kind=kind)
    if case_id % 3 == 0:
        z[2] = z[1]
    kwargs = dict(temperature=temperature, contrast_mode=mode, variant=variant)
    ref_losses, ref_has_pos, ref_mean = reference_loss(z, labels, mask, **kwargs)
    # block_size 3 over 7 * views columns: several blocks and a padded last one.
    per_anchor = supcon_per_anchor_loss(z, labels, mask, implementation="blockwise", block_size=3, **kwargs)
    np.testing.assert_array_equal(per_anchor.has_positive.numpy(), ref_has_pos)
    tol = 2e-5 * max(1.0, 1.0 / temperature)
    np.testing.assert_allclose(per_anchor.loss.numpy(), ref_losses, rtol=1e-4, atol=tol)

    def grad(implementation):
        x = tf.Variable(z)
        with tf.GradientTape() as tape:
            loss = supcon_loss(x, labels, mask, implementation=implementation, block_size=3, normalize=True, **kwargs)
        return loss.numpy(), tape.gradient(loss, x).numpy()

    dense_loss, dense_grad = grad("dense")
    block_loss, block_grad = grad("blockwise")
    np.testing.assert_allclose(block_loss, dense_loss, rtol=1e-5, atol=tol)
    scale = max(1.0, float(np.abs(dense_grad).max()))
    np.testing.assert_allclose(block_grad, dense_grad, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_blockwise_float64_gradients_match_finite_differences(variant):
    rng = np.random.default_rng(30)
    z, labels, _ = _random_case(rng, batch=4, views=2, dim=3, num_classes=2, kind="labels")
    z64 = z.astype(np.float64)

    def f(x):
        return supcon_loss(x, labels, temperature=0.5, variant=variant, normalize=True,
                           implementation="blockwise", block_size=3)

    _assert_gradient_matches_finite_differences(f, z64)


@pytest.mark.parametrize("jit", [False, True])
def test_blockwise_with_queue_offset_under_tf_function_and_xla(jit):
    rng = np.random.default_rng(31)
    z, labels, _ = _random_case(rng, batch=8, views=2, dim=4, num_classes=3, kind="labels")
    queue = rng.normal(size=(5, 4)).astype(np.float32)
    queue_labels = rng.integers(0, 3, size=5)
    kwargs = dict(anchor_offset=2, num_anchor_samples=4, queue_features=queue, queue_labels=queue_labels)

    @tf.function(jit_compile=jit)
    def both(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            dense = supcon_per_anchor_loss(x, labels, implementation="dense", **kwargs).loss
            block = supcon_per_anchor_loss(x, labels, implementation="blockwise", block_size=4, **kwargs).loss
            dense_sum, block_sum = tf.reduce_sum(dense), tf.reduce_sum(block)
        return dense, block, tape.gradient(dense_sum, x), tape.gradient(block_sum, x)

    dense, block, dense_grad, block_grad = both(tf.constant(z))
    np.testing.assert_allclose(block.numpy(), dense.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block_grad.numpy(), dense_grad.numpy(), rtol=1e-4, atol=1e-5)


def test_auto_picks_blockwise_above_the_threshold_and_rejects_bad_choices():
    from supcon_tf import losses

    rng = np.random.default_rng(32)
    z = rng.normal(size=(losses.BLOCKWISE_THRESHOLD // 2, 2, 8)).astype(np.float32)
    labels = rng.integers(0, 10, size=len(z))
    auto = supcon_loss(z, labels, normalize=True)
    dense = supcon_loss(z, labels, normalize=True, implementation="dense")
    blockwise = supcon_loss(z, labels, normalize=True, implementation="blockwise")
    np.testing.assert_allclose(auto.numpy(), blockwise.numpy(), rtol=1e-6)
    np.testing.assert_allclose(blockwise.numpy(), dense.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="implementation"):
        supcon_loss(z[:4], labels[:4], implementation="sparse")
    with pytest.raises(ValueError, match="block_size"):
        supcon_loss(z[:4], labels[:4], block_size=0)
