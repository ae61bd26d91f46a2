"""`denominator` and `positives_cap` of the SupCon loss (google-research parity), and features of rank > 3.

Dense and blockwise forms are checked against the looped float64 NumPy
reference of `tests/loss_reference.py`, written from the definitions in `supcon_tf/losses/__init__.py` (values and
directional derivatives), on every combination of denominator, cap, variant
and contrast mode over labels, multi-hot labels, no labels and a weighted mask,
with anchor offsets and memory queues; under `tf.function` and XLA for a
subset; and against the expected values published in google-research's
`supcon/losses_test.py`.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.losses import LossConfig, SupConLoss, supcon_loss, supcon_per_anchor_loss
from loss_reference import reference_loss

DENOMINATORS = ("all", "one_positive", "only_negatives")
VARIANT_MODES = (("out", "all"), ("in", "all"), ("out", "one"), ("in", "one"))


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _setup(name):
    """Small float64 cases; labels are chosen so that the cap removes positives."""
    rng = np.random.default_rng(sum(map(ord, name)))
    case = dict(labels=None, mask=None, kwargs={})
    if name == "labels":
        case.update(z=_unit(rng, 6, 2, 4), labels=np.array([0, 1, 0, 0, 1, 0]))
    elif name == "labels_offset_queue":
        case.update(z=_unit(rng, 6, 2, 4), labels=np.array([5, 1, 5, 5, 1, 5]))
        case["kwargs"] = dict(
            anchor_offset=2, num_anchor_samples=3, queue_features=_unit(rng, 5, 4),
            queue_labels=np.array([5, 1, 5, 2, 5]),
        )
    elif name == "multi_hot_queue":  # 3 views; the last sample has no class: no positive at all
        labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]], np.float32)
        case.update(z=_unit(rng, 5, 3, 4), labels=labels)
        case["kwargs"] = dict(
            queue_features=_unit(rng, 4, 4),
            queue_labels=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32),
        )
    elif name == "none_offset_queue":  # SimCLR: queue entries are negatives, nothing to cap
        case.update(z=_unit(rng, 5, 2, 4))
        case["kwargs"] = dict(anchor_offset=1, num_anchor_samples=3, queue_features=_unit(rng, 3, 4))
    elif name == "mask_offset":  # weighted mask; sample 3 is not its own positive
        mask = np.array([
            [1.0, 0.5, 0.0, 2.0, 1.0, 0.0],
            [0.5, 1.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 1.0, 0.0, 0.5, 1.0],
            [2.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, 0.5, 1.0, 1.0, 2.0],
            [0.0, 0.0, 1.0, 0.0, 2.0, 1.0],
        ])
        case.update(z=_unit(rng, 6, 2, 4), mask=mask)
        case["kwargs"] = dict(anchor_offset=1, num_anchor_samples=4)
    else:
        raise AssertionError(name)
    return case


def _loss_and_gradient(z, labels, mask, implementation, **kwargs):
    x = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(x)
        per_anchor = supcon_per_anchor_loss(x, labels, mask, implementation=implementation, block_size=3, **kwargs)
        count = tf.reduce_sum(tf.cast(per_anchor.has_positive, per_anchor.loss.dtype))
        loss = tf.math.divide_no_nan(tf.reduce_sum(per_anchor.loss), count)
    return per_anchor, loss, tape.gradient(loss, x)


_SETUPS = ("labels", "labels_offset_queue", "multi_hot_queue", "none_offset_queue", "mask_offset")


@pytest.mark.parametrize("cap_views", [-1, 0, 1, 2], ids=lambda c: f"cap{c}xV" if c >= 0 else "nocap")
@pytest.mark.parametrize("denominator", DENOMINATORS)
@pytest.mark.parametrize("setup", _SETUPS)
def test_dense_and_blockwise_match_the_reference_values_and_gradients(setup, denominator, cap_views):
    case = _setup(setup)
    z, labels, mask = case["z"], case["labels"], case["mask"]
    views = z.shape[1]
    cap = -1 if cap_views < 0 else cap_views * views
    implementations = ("dense", "blockwise")
    rng = np.random.default_rng(7)
    direction = rng.normal(size=z.shape)
    eps = 1e-6
    for variant, mode in VARIANT_MODES:
        kwargs = dict(case["kwargs"], temperature=0.5, variant=variant, contrast_mode=mode,
                      denominator=denominator, positives_cap=cap)
        # The reference does not depend on the implementation: computed once for both.
        ref_losses, ref_counts, ref_mean = reference_loss(z, labels, mask, **kwargs)
        # Directional derivative of the reference's mean loss by central differences.
        plus = reference_loss(z + eps * direction, labels, mask, **kwargs)[2]
        minus = reference_loss(z - eps * direction, labels, mask, **kwargs)[2]
        for implementation in implementations:
            per_anchor, loss, grad = _loss_and_gradient(z, labels, mask, implementation, **kwargs)
            where = f"{implementation} {variant}/{mode}"
            np.testing.assert_array_equal(per_anchor.has_positive.numpy(), ref_counts, err_msg=where)
            np.testing.assert_allclose(per_anchor.loss.numpy(), ref_losses, rtol=1e-9, atol=1e-12, err_msg=where)
            np.testing.assert_allclose(loss.numpy(), ref_mean, rtol=1e-9, atol=1e-12, err_msg=where)
            np.testing.assert_allclose(
                np.sum(grad.numpy() * direction), (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8, err_msg=where
            )
            if implementation == "dense":
                dense_grad = grad.numpy()
            else:
                np.testing.assert_allclose(grad.numpy(), dense_grad, rtol=1e-9, atol=1e-12, err_msg=where)


def test_options_change_the_loss_where_they_should():
    case = _setup("labels")
    z, labels = case["z"], case["labels"]
    values = {
        (d, c): supcon_loss(z, labels, temperature=0.5, denominator=d, positives_cap=c).numpy()
        for d in DENOMINATORS
        for c in (-1, 0, 2, 4, 6)
    }
    assert len({round(float(v), 9) for v in values.values()}) > 10
    # Class 0 has 4 samples (3 others per anchor): a cap of 3 others (6) or more changes nothing.
    for d in DENOMINATORS:
        assert values[(d, 6)] == pytest.approx(values[(d, -1)], rel=1e-6)
    # Defaults are today's loss.
    np.testing.assert_allclose(values[("all", -1)], supcon_loss(z, labels, temperature=0.5).numpy(), rtol=1e-12)


def test_full_gradient_matches_reference_finite_differences_with_cap_and_queue():
    case = _setup("labels_offset_queue")
    z, labels = case["z"], case["labels"]
    for denominator, variant, implementation in [
        ("one_positive", "in", "blockwise"), ("only_negatives", "out", "dense"), ("all", "in", "blockwise"),
    ]:
        kwargs = dict(case["kwargs"], temperature=0.3, variant=variant, denominator=denominator, positives_cap=2)
        _, _, grad = _loss_and_gradient(z, labels, None, implementation, **kwargs)
        numeric = np.zeros_like(z)
        for idx in np.ndindex(*z.shape):
            plus, minus = z.copy(), z.copy()
            plus[idx] += 1e-6
            minus[idx] -= 1e-6
            numeric[idx] = (reference_loss(plus, labels, **kwargs)[2] - reference_loss(minus, labels, **kwargs)[2]) / 2e-6
        np.testing.assert_allclose(grad.numpy(), numeric, rtol=1e-6, atol=1e-8, err_msg=f"{denominator} {variant}")


def test_only_negatives_excludes_anchors_without_negatives():
    z = _unit(np.random.default_rng(3), 4, 2, 4)
    labels = np.array([0, 0, 0, 1])  # sample 3's only positive is its own other view
    for implementation in ("dense", "blockwise"):
        per_anchor = supcon_per_anchor_loss(z, np.zeros(4, np.int64), implementation=implementation,
                                            denominator="only_negatives")
        assert not per_anchor.has_positive.numpy().any()
        x = tf.Variable(z)
        with tf.GradientTape() as tape:
            loss = supcon_loss(x, np.zeros(4, np.int64), implementation=implementation, denominator="only_negatives")
        assert loss.numpy() == 0.0
        np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), np.zeros_like(z))
        # One negative queue entry is enough.
        per_anchor = supcon_per_anchor_loss(
            z, np.zeros(4, np.int64), implementation=implementation, denominator="only_negatives",
            queue_features=z[:1, 0], queue_labels=np.array([1]),
        )
        assert per_anchor.has_positive.numpy().all()
        got = supcon_per_anchor_loss(z, labels, implementation=implementation, denominator="only_negatives")
        ref_losses, ref_counts, _ = reference_loss(z, labels, temperature=0.1, denominator="only_negatives")
        np.testing.assert_array_equal(got.has_positive.numpy(), ref_counts)
        np.testing.assert_allclose(got.loss.numpy(), ref_losses, rtol=1e-9)


@pytest.mark.parametrize("jit", [False, True], ids=["tf_function", "xla"])
def test_options_under_tf_function_and_xla(jit):
    case = _setup("labels_offset_queue")
    z, labels = case["z"].astype(np.float32), case["labels"]
    # Every denominator and both variants across the two runs. Without `jit_compile` each blockwise
    # call compiles its own XLA passes (the costly part), so that run takes one combination.
    if jit:
        combos = [("one_positive", 2, "in", "all"), ("only_negatives", 0, "out", "all"), ("all", 2, "in", "one")]
    else:
        combos = [("one_positive", 2, "out", "one")]

    @tf.function(jit_compile=jit)
    def run(x):
        results = []
        for denominator, cap, variant, mode in combos:
            kwargs = dict(case["kwargs"], temperature=0.5, denominator=denominator, positives_cap=cap,
                          variant=variant, contrast_mode=mode)
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                dense = supcon_per_anchor_loss(x, labels, implementation="dense", **kwargs).loss
                block = supcon_per_anchor_loss(x, labels, implementation="blockwise", block_size=4, **kwargs).loss
                dense_sum, block_sum = tf.reduce_sum(dense), tf.reduce_sum(block)
            results.append((dense, block, tape.gradient(dense_sum, x), tape.gradient(block_sum, x)))
        return results

    for (denominator, cap, variant, mode), (dense, block, dense_grad, block_grad) in zip(combos, run(tf.constant(z))):
        kwargs = dict(case["kwargs"], temperature=0.5, denominator=denominator, positives_cap=cap,
                      variant=variant, contrast_mode=mode)
        ref_losses, ref_counts, _ = reference_loss(z, labels, **kwargs)
        _, _, eager_grad = _loss_and_gradient(z.astype(np.float64), labels, None, "dense", **kwargs)
        # The per-anchor sum's gradient, eagerly in float64, rescaled from the mean's.
        count = float(ref_counts.sum())
        where = f"{denominator} cap={cap} {variant}/{mode}"
        np.testing.assert_allclose(dense.numpy(), ref_losses, rtol=1e-5, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(block.numpy(), ref_losses, rtol=1e-5, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(dense_grad.numpy(), eager_grad.numpy() * count, rtol=1e-4, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(block_grad.numpy(), eager_grad.numpy() * count, rtol=1e-4, atol=1e-5, err_msg=where)


def test_cap_with_unknown_batch_and_queue_length_in_tf_function():
    case = _setup("labels_offset_queue")
    z, labels = case["z"].astype(np.float32), case["labels"].astype(np.int32)
    queue, queue_labels = case["kwargs"]["queue_features"].astype(np.float32), case["kwargs"]["queue_labels"]
    kwargs = dict(temperature=0.5, denominator="one_positive", positives_cap=2)

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 4], tf.float32), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)])
    def both(x, y, q, qy):
        return [supcon_loss(x, y, queue_features=q, queue_labels=qy, implementation=impl, block_size=3, **kwargs)
                for impl in ("dense", "blockwise")]

    expected = reference_loss(z, labels, queue_features=queue, queue_labels=queue_labels, **kwargs)[2]
    for got in both(z, labels, queue, queue_labels.astype(np.int32)):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------------- cap semantics, spelled out


def test_cap_keeps_the_lowest_indices_and_the_own_views():
    # Anchor sample 3 of class 0 = {0, 2, 3, 5}; cap 2 (V = 2): only sample 0 stays a positive,
    # samples 2 and 5 leave the loss: the result equals a loss where they do not exist for anchor 3.
    z = _unit(np.random.default_rng(4), 6, 2, 4)
    labels = np.array([0, 1, 0, 0, 1, 0])
    for implementation in ("dense", "blockwise"):
        capped = supcon_per_anchor_loss(z, labels, temperature=0.5, positives_cap=2, implementation=implementation)
        keep = [0, 1, 3, 4]
        sub = supcon_per_anchor_loss(z[keep], labels[keep], temperature=0.5, implementation=implementation)
        np.testing.assert_allclose(capped.loss.numpy()[3], sub.loss.numpy()[2], rtol=1e-6)
        # Cap 0: only the own other view is positive, and same-class samples are not negatives either.
        zero = supcon_per_anchor_loss(z, labels, temperature=0.5, positives_cap=0, implementation=implementation)
        keep = [1, 3, 4]
        sub = supcon_per_anchor_loss(z[keep], labels[keep], temperature=0.5, implementation=implementation)
        np.testing.assert_allclose(zero.loss.numpy()[3], sub.loss.numpy()[1], rtol=1e-6)


def test_cap_ranks_queue_entries_after_the_batch_one_positive_each():
    z = _unit(np.random.default_rng(5), 4, 2, 4)
    labels = np.array([0, 1, 0, 1])
    queue = _unit(np.random.default_rng(6), 5, 4)
    queue_labels = np.array([0, 0, 1, 0, 0])
    # Anchor 0: one other batch positive (sample 2, 2 positives); cap 6 leaves 6 - 2 = 4 for the queue:
    # queue entries 0, 1, 3, 4 (all of class 0). Cap 4 leaves 2: entries 0 and 1; entries 3 and 4 are capped out.
    for implementation in ("dense", "blockwise"):
        got = supcon_per_anchor_loss(z, labels, temperature=0.5, positives_cap=4, queue_features=queue,
                                     queue_labels=queue_labels, implementation=implementation).loss.numpy()
        same = supcon_per_anchor_loss(z, labels, temperature=0.5, queue_features=queue[:3],
                                      queue_labels=queue_labels[:3], implementation=implementation).loss.numpy()
        np.testing.assert_allclose(got[0], same[0], rtol=1e-6)
        everything = supcon_per_anchor_loss(z, labels, temperature=0.5, positives_cap=6, queue_features=queue,
                                            queue_labels=queue_labels, implementation=implementation).loss.numpy()
        uncapped = supcon_per_anchor_loss(z, labels, temperature=0.5, queue_features=queue,
                                          queue_labels=queue_labels, implementation=implementation).loss.numpy()
        np.testing.assert_allclose(everything[0], uncapped[0], rtol=1e-6)


# ---------------------------------------------------------------- features of rank > 3


@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
def test_features_of_rank_above_three_are_flattened_per_view(implementation):
    rng = np.random.default_rng(8)
    z = rng.normal(size=(5, 2, 2, 3)).astype(np.float32)
    labels = np.array([0, 1, 0, 1, 1])
    queue = rng.normal(size=(3, 2, 3)).astype(np.float32)
    kwargs = dict(normalize=True, denominator="one_positive", positives_cap=2, implementation=implementation,
                  queue_labels=np.array([0, 1, 1]))
    got = supcon_loss(z, labels, queue_features=queue, **kwargs)
    flat = supcon_loss(z.reshape(5, 2, 6), labels, queue_features=queue.reshape(3, 6), **kwargs)
    np.testing.assert_allclose(got.numpy(), flat.numpy(), rtol=1e-6)
    fn = tf.function(lambda x: supcon_loss(x, labels[:5], normalize=True, implementation=implementation),
                     input_signature=[tf.TensorSpec([None, 2, 2, 3], tf.float32)])
    np.testing.assert_allclose(
        fn(z).numpy(), supcon_loss(z.reshape(5, 2, 6), labels, normalize=True).numpy(), rtol=1e-5
    )
    with pytest.raises(ValueError, match="features"):
        supcon_loss(z[:, 0, 0], labels)


# ---------------------------------------------------------------- google-research's published values

# supcon/losses_test.py, testLossForSummationLocationsAndDenominatorModes: features below, one-hot
# labels (0, 0, 1) unless given, temperature 1.0, per-sample loss = mean over the 2 views.
_GOOGLE_FEATURES = np.array([
    [[0.01, 0.02, 0.14], [0.38, 0.61, 0.50]],
    [[0.86, 0.97, 0.33], [0.26, 0.68, 0.45]],
    [[0.32, 0.64, 0.28], [0.45, 0.74, 0.73]],
])
_GOOGLE_CASES = [
    ("out", "all", -1, [1.6755852, 1.7973773, 1.58471], (0, 0, 1)),
    ("out", "one_positive", -1, [1.1782627, 1.3435497, 1.58471], (0, 0, 1)),
    ("out", "only_negatives", -1, [0.79652834, 1.0154991, 1.3529458], (0, 0, 1)),
    ("out", "all", 4, [1.6755852, 1.7973773, 1.58471], (0, 0, 1)),
    ("out", "all", 2, [1.1385298, 1.1824025, 1.1557417], (0, 0, 0)),
    ("out", "all", 0, [1.3769293, 1.0785717, 1.58471], (0, 0, 1)),
    ("in", "all", -1, [1.6356678, 1.7135872, 1.58471], (0, 0, 1)),
    ("in", "one_positive", -1, [1.1571673, 1.2941568, 1.58471], (0, 0, 1)),
    ("in", "only_negatives", -1, [0.756611, 0.93170905, 1.3529458], (0, 0, 1)),
    ("in", "all", 4, [1.6356678, 1.7135872, 1.58471], (0, 0, 1)),
    ("in", "all", 2, [1.0986123, 1.0986123, 1.0986123], (0, 0, 0)),
    ("in", "all", 0, [1.3769293, 1.0785717, 1.58471], (0, 0, 1)),
]


@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
@pytest.mark.parametrize("variant, denominator, cap, expected, labels", _GOOGLE_CASES)
def test_google_research_denominator_and_cap_values(variant, denominator, cap, expected, labels, implementation):
    one_hot = np.eye(2, dtype=np.float32)[list(labels)]
    for given in (one_hot, np.array(labels)):  # multi-hot (their one-hot form) and class ids agree
        per_anchor = supcon_per_anchor_loss(
            _GOOGLE_FEATURES.astype(np.float32), given, temperature=1.0, variant=variant, denominator=denominator,
            positives_cap=cap, implementation=implementation, block_size=4,
        )
        np.testing.assert_allclose(per_anchor.loss.numpy().mean(axis=1), expected, rtol=0, atol=5e-6)
    ref = reference_loss(_GOOGLE_FEATURES, np.array(labels), temperature=1.0, variant=variant,
                         denominator=denominator, positives_cap=cap)[0]
    np.testing.assert_allclose(ref.mean(axis=1), expected, rtol=0, atol=5e-6)


_TETRAHEDRON = np.array([
    [[0, 0, 1], [0, 2 * math.sqrt(2) / 3, -1 / 3]],
    [[math.sqrt(6) / 3, -math.sqrt(2) / 3, -1 / 3], [-math.sqrt(6) / 3, -math.sqrt(2) / 3, -1 / 3]],
], np.float32)


@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
def test_google_research_other_published_values(implementation):
    kw = dict(implementation=implementation, block_size=4)
    # testLossValue / testLossValueWithLabels: 4 tetrahedron vertices, mean loss log 3 = 1.098612.
    assert supcon_loss(_TETRAHEDRON, temperature=1.0, **kw).numpy() == pytest.approx(1.098612, abs=1e-6)
    eye = np.eye(2, dtype=np.float32)
    assert supcon_loss(_TETRAHEDRON, eye, temperature=1.0, **kw).numpy() == pytest.approx(1.098612, abs=1e-6)
    # testLossValueWithTemp (scaled by temperature: base_temperature 1) and ...NoScaleByTemp.
    got = supcon_loss(_TETRAHEDRON, temperature=0.1, base_temperature=1.0, **kw).numpy()
    assert got == pytest.approx(0.1098612, abs=1e-5)
    assert supcon_loss(_TETRAHEDRON, temperature=0.1, **kw).numpy() == pytest.approx(1.098612, abs=1e-5)
    # testLossValueWithLabelsAndPositives: 3 axis-aligned samples, samples 0 and 1 share a class.
    axes = np.repeat(np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)[:, None], 2, axis=1)
    per_sample = supcon_per_anchor_loss(axes, np.array([0, 0, 2]), temperature=1.0, **kw).loss.numpy().mean(axis=1)
    np.testing.assert_allclose(per_sample, [1.57149910, 1.57149910, 0.90483244], rtol=0, atol=1e-6)
    # testContrastModeOneVsAll: 2 samples, views one apart: "one" gives log 3 = 1.098612, "all" does not.
    pairs = np.array([[[0, 0, 1], [0, 1, 0]], [[1, 0, 0], [0, -1, 0]]], np.float32)
    assert supcon_loss(pairs, temperature=1.0, contrast_mode="one", **kw).numpy() == pytest.approx(1.098612, abs=1e-6)
    assert abs(supcon_loss(pairs, temperature=1.0, contrast_mode="all", **kw).numpy() - 1.098612) > 1e-3
    # testLossForOneView: one view, multi-hot labels; expected from their formula (sample 2: no positive, 0).
    one_view = _GOOGLE_FEATURES[:, :1].astype(np.float32)
    labels = np.array([[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    f = _GOOGLE_FEATURES[:, 0]
    expected = [-math.log(math.exp(f[0] @ f[1]) / (math.exp(f[0] @ f[1]) + math.exp(f[0] @ f[2]))),
                -math.log(math.exp(f[1] @ f[0]) / (math.exp(f[1] @ f[0]) + math.exp(f[1] @ f[2]))), 0.0]
    per_anchor = supcon_per_anchor_loss(one_view, labels, temperature=1.0, **kw)
    np.testing.assert_allclose(per_anchor.loss.numpy()[:, 0], expected, rtol=0, atol=1e-5)
    # testDefaultBehaviourSameAsAllLabelsDifferent and testConvFeatures (rank-5 features, normalised).
    z = np.random.default_rng(9).uniform(size=(10, 3, 3, 3, 2)).astype(np.float32)
    a = supcon_loss(z, normalize=True, **kw).numpy()
    b = supcon_loss(z, np.eye(10, dtype=np.float32), normalize=True, **kw).numpy()
    assert np.isfinite(a) and a == pytest.approx(b, rel=1e-6)


# ---------------------------------------------------------------- Keras wrapper, model, bad input


def test_keras_wrapper_takes_and_serialises_the_options():
    case = _setup("labels")
    z, labels = case["z"].astype(np.float32), case["labels"]
    loss_fn = SupConLoss(temperature=0.5, denominator="only_negatives", positives_cap=2, variant="in")
    expected = supcon_loss(z, labels, temperature=0.5, denominator="only_negatives", positives_cap=2, variant="in")
    np.testing.assert_allclose(loss_fn(labels, z).numpy(), expected.numpy(), rtol=1e-6)
    config = loss_fn.get_config()
    assert config["denominator"] == "only_negatives" and config["positives_cap"] == 2
    restored = keras.losses.deserialize(keras.losses.serialize(loss_fn))
    assert restored.get_config() == config
    np.testing.assert_allclose(restored(labels, z).numpy(), expected.numpy(), rtol=1e-6)
    assert SupConLoss().get_config()["denominator"] == "all" and SupConLoss().get_config()["positives_cap"] == -1


def test_supcon_model_passes_validates_and_serialises_the_options():
    from supcon_tf.encoders import build_encoder
    from supcon_tf.layers import ProjectionHead
    from supcon_tf.models import SupConModel

    encoder = build_encoder("small_cnn", (8, 8, 1), width=0.25)
    model = SupConModel(encoder, ProjectionHead((16,), 8), loss_config=LossConfig(temperature=0.5, denominator="one_positive", positives_cap=2))
    config = model.get_config()
    assert config["loss_config"]["denominator"] == "one_positive" and config["loss_config"]["positives_cap"] == 2
    z = _unit(np.random.default_rng(10), 6, 2, 8).astype(np.float32)
    labels = np.array([0, 1, 0, 0, 1, 0])
    loss, _ = model.compute_contrastive_loss(tf.constant(z), tf.constant(labels))
    expected = supcon_loss(z, labels, temperature=0.5, denominator="one_positive", positives_cap=2)
    np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-6)
    assert abs(expected.numpy() - supcon_loss(z, labels, temperature=0.5).numpy()) > 1e-3
    with pytest.raises(ValueError, match="denominator"):
        SupConModel(encoder, ProjectionHead((16,), 8), loss_config=dict(denominator="some"))
    with pytest.raises(ValueError, match="positives_cap"):
        SupConModel(encoder, ProjectionHead((16,), 8), loss_config=dict(positives_cap=-3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(denominator="none"), "denominator.*'none'"),
        (dict(denominator=None), "denominator.*None"),
        (dict(positives_cap=3), "positives_cap.*3"),  # not a multiple of the 2 views
        (dict(positives_cap=-2), "positives_cap.*-2"),
        (dict(positives_cap=2.0), "positives_cap.*2.0"),
        (dict(positives_cap=True), "positives_cap.*True"),
        (dict(positives_cap="2"), "positives_cap"),
    ],
)
def test_bad_options_raise_value_error_naming_the_argument(kwargs, message):
    z = np.ones((4, 2, 8), np.float32) / math.sqrt(8)
    for implementation in ("dense", "blockwise"):
        with pytest.raises(ValueError, match=message):
            supcon_per_anchor_loss(z, [0, 1, 0, 1], implementation=implementation, **kwargs)
    with pytest.raises(ValueError, match=message):
        supcon_loss(z, [0, 1, 0, 1], **kwargs)
    if "positives_cap" in kwargs and kwargs["positives_cap"] == 3:
        SupConLoss(positives_cap=3)  # a multiple of which views: known only at call time
        with pytest.raises(ValueError, match="positives_cap"):
            SupConLoss(positives_cap=3)(np.array([0, 1, 0, 1]), z)
    else:
        with pytest.raises(ValueError, match=message):
            SupConLoss(**kwargs)
