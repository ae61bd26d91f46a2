"""SupConModel with `sample_weight`: weighted anchors, normalised by the weights of the anchors with a positive."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import distribute
from supcon_tf.encoders import build_encoder
from supcon_tf.layers import ProjectionHead
from supcon_tf.losses import supcon_per_anchor_loss
from supcon_tf.models import SupConModel
from loss_reference import reference_loss
from helpers import with_loss_config

IMAGE_SHAPE = (8, 8, 1)


def _model(synchronized_bn=False, **kwargs):
    keras.utils.set_random_seed(0)
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, width=0.25, synchronized_bn=synchronized_bn)
    return SupConModel(encoder, ProjectionHead((16,), 8), **with_loss_config(kwargs))


def _data(batch=8, views=2, labels=(0, 1, 2, 0, 1, 2, 0, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, views) + IMAGE_SHAPE).astype(np.float32)
    weights = np.array([2.0, 0.5, 0.0, 1.0, 3.0, 1.5, 0.25, 1.0], np.float32)[:batch]
    return x, np.asarray(labels[:batch], np.int32), weights


def _weighted_reference(z, labels, weights, temperature=0.1, **kwargs):
    """Float64: sum_i w_s(i) L_i / sum_i w_s(i) [i has a positive]."""
    losses, has_positive, _ = reference_loss(z, labels, temperature=temperature, **kwargs)
    w = np.asarray(weights, np.float64)[:, None]
    return float(np.sum(w * losses) / np.sum(w * has_positive))


def _fit(model, x, y, lr=0.0, **kwargs):
    if not model.compiled:
        model.compile(optimizer=keras.optimizers.SGD(lr))
    return model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0, **kwargs).history["loss"][0]


@pytest.mark.parametrize(
    "method, views, labels",
    [
        ("supcon", 2, (0, 1, 2, 0, 1, 2, 0, 3)),
        # One view: the samples of labels 4 and 5 have no positive, so their weights must not count.
        ("supcon", 1, (0, 1, 4, 0, 1, 2, 5, 2)),
        ("simclr", 2, (0, 1, 2, 0, 1, 2, 0, 3)),
    ],
)
def test_weighted_loss_fit_and_evaluate_match_the_float64_reference(method, views, labels):
    model = _model(method=method)
    x, y, w = _data(views=views, labels=labels)
    reference_labels = y if method == "supcon" else None
    z_train = model.embed_views(x, training=True).numpy()
    expected = _weighted_reference(z_train, reference_labels, w)
    assert abs(expected - reference_loss(z_train, reference_labels, temperature=0.1)[2]) > 1e-3  # the weights matter
    replica_loss, global_loss = model.compute_contrastive_loss(tf.constant(z_train), y, sample_weight=w)
    np.testing.assert_allclose([replica_loss.numpy(), global_loss.numpy()], [expected, expected], rtol=1e-5)
    np.testing.assert_allclose(_fit(model, x, y, sample_weight=w), expected, rtol=1e-5)
    expected_eval = _weighted_reference(model.embed_views(x, training=False).numpy(), reference_labels, w)
    logs = model.evaluate(x, y, sample_weight=w, batch_size=len(x), verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected_eval, rtol=1e-5)


def test_the_step_applies_the_gradient_of_the_weighted_loss():
    model = _model(queue_size=32)  # an empty queue, written after the step
    x, y, w = _data()
    with tf.GradientTape() as tape:
        per_anchor = supcon_per_anchor_loss(model.embed_views(x, training=True), y)
        weighted = tf.reduce_sum(per_anchor.loss * w[:, None]) / tf.reduce_sum(
            tf.cast(per_anchor.has_positive, tf.float32) * w[:, None]
        )
    gradients = tape.gradient(weighted, model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    logged = _fit(model, x, y, lr=0.1, sample_weight=w)
    np.testing.assert_allclose(logged, weighted.numpy(), rtol=1e-5)
    for variable, old, gradient in zip(model.trainable_variables, before, gradients):
        np.testing.assert_allclose(variable.numpy(), old - 0.1 * gradient.numpy(), atol=1e-6, err_msg=variable.path)
    assert int(model.memory.filled.numpy()) == 16  # every sample is written, zero weight or not


def test_unit_weights_are_the_plain_step_and_class_weight_is_a_sample_weight():
    x, y, _ = _data()
    runs = {}
    class_weight = {0: 2.0, 1: 0.5, 2: 1.0, 3: 0.0}
    for name, kwargs in {
        "plain": {},
        "ones": dict(sample_weight=np.ones(len(y), np.float32)),
        "class_weight": dict(class_weight=class_weight),
        "sample_weight": dict(sample_weight=np.array([class_weight[int(c)] for c in y], np.float32)),
    }.items():
        model = _model()
        runs[name] = _fit(model, x, y, lr=0.1, **kwargs), model.get_weights()
    for a, b in (("plain", "ones"), ("sample_weight", "class_weight")):
        np.testing.assert_allclose(runs[b][0], runs[a][0], rtol=1e-6)
        for wa, wb in zip(runs[a][1], runs[b][1]):
            np.testing.assert_allclose(wb, wa, atol=1e-7)
    assert abs(runs["class_weight"][0] - runs["plain"][0]) > 1e-3


def test_two_replicas_with_unequal_weight_sums_match_one_device():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest.py)")
    x, y, w = _data()  # replica weight sums 3.5 and 5.75
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8, drop_remainder=True)

    def run(strategy):
        with strategy.scope():
            model = _model(synchronized_bn=True)
            model.compile(optimizer=keras.optimizers.SGD(0.5))
        loss = model.fit(dataset, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        return loss, model.get_weights()

    single_loss, single = run(tf.distribute.get_strategy())
    mirrored_loss, mirrored = run(distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]]))
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored)) <= 1e-5
