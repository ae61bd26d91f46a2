"""Evaluation while pre-training: contrast statistics against a float64 reference, the online classifier."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import encoders, layers, models
from supcon_tf.online_eval import contrast_statistics


def _reference(features, labels, temperature, offset, num_anchor):
    """Looped float64 version of the definitions in supcon_tf/online_eval.py."""
    batch, views, _ = features.shape
    flat = features.reshape(batch * views, -1).astype(np.float64)
    top1, entropy = [], []
    for sample in range(offset, offset + num_anchor):
        for view in range(views):
            i = sample * views + view
            others = [a for a in range(batch * views) if a != i]
            logits = np.array([flat[i] @ flat[a] / temperature for a in others])
            p = np.exp(logits - logits.max())
            p /= p.sum()
            entropy.append(-np.sum(p * np.log(p)))
            nearest = others[int(np.argmax(logits))]
            same = (labels[nearest // views] == labels[sample]) if labels is not None else nearest // views == sample
            top1.append(float(same))
    return np.array(top1), np.array(entropy)


@pytest.mark.parametrize("use_labels", [True, False])
@pytest.mark.parametrize("offset, num_anchor", [(0, None), (2, 3)])
def test_contrast_statistics_match_the_reference(use_labels, offset, num_anchor):
    rng = np.random.default_rng(7)
    features = rng.normal(size=(6, 2, 5))
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    labels = np.array([0, 1, 0, 2, 1, 2]) if use_labels else None
    top1, entropy = contrast_statistics(
        features.astype(np.float32), labels, temperature=0.2, anchor_offset=offset, num_anchor_samples=num_anchor
    )
    expected_top1, expected_entropy = _reference(features, labels, 0.2, offset, num_anchor or 6 - offset)
    np.testing.assert_array_equal(top1.numpy(), expected_top1)
    np.testing.assert_allclose(entropy.numpy(), expected_entropy, rtol=1e-5)


def test_contrast_statistics_exact_geometry():
    # Two samples, two identical views each, orthogonal between samples: every anchor's nearest entry is its
    # own other view (top-1 = 1); with tau = 1 its softmax is e / (e + 2) on that view and 1 / (e + 2) on each of
    # the other sample's views.
    features = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]], np.float32)
    top1, entropy = contrast_statistics(features, None, temperature=1.0)
    e = np.e
    p = np.array([e, 1.0, 1.0]) / (e + 2)
    np.testing.assert_array_equal(top1.numpy(), [1, 1, 1, 1])
    np.testing.assert_allclose(entropy.numpy(), -np.sum(p * np.log(p)), rtol=1e-6)


def test_contrast_statistics_reject_bad_input():
    with pytest.raises(ValueError, match="features"):
        contrast_statistics(np.zeros((4, 8), np.float32), temperature=0.1)
    with pytest.raises(ValueError, match="temperature"):
        contrast_statistics(np.zeros((4, 2, 8), np.float32), temperature=0.0)


def _model(online):
    keras.utils.set_random_seed(3)
    model = models.SupConModel(
        encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25),
        layers.ProjectionHead((16,), 8),
        online_eval_classes=3 if online else None,
        contrast_metrics=online,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), online_optimizer=keras.optimizers.Adam(0.05)
                  if online else None)
    return model


def _batch():
    rng = np.random.default_rng(0)
    return rng.random((12, 2, 8, 8, 1)).astype(np.float32), (np.arange(12) % 3).astype(np.int32)


def test_the_online_head_never_reaches_the_encoder():
    views, labels = _batch()
    weights = {}
    for online in (False, True):
        model = _model(online)
        for _ in range(3):
            model.train_on_batch(views, labels)
        weights[online] = [w.copy() for w in model.encoder.get_weights() + model.head.get_weights()]
    for a, b in zip(weights[False], weights[True]):
        np.testing.assert_array_equal(a, b)


def test_online_top1_equals_a_separately_computed_accuracy():
    views, labels = _batch()
    model = _model(True)
    model.train_on_batch(views, labels)  # the classifier moves
    model.reset_metrics()
    logs = model.test_on_batch(views, labels, return_dict=True)
    flat = views.reshape(-1, 8, 8, 1)
    logits = model.online_classifier(model.encoder(flat, training=False)).numpy()
    expected = np.mean(np.argmax(logits, axis=1) == np.repeat(labels, 2))
    assert logs["online_top1"] == pytest.approx(expected)
    embeddings = model.embed_views(views).numpy()
    top1, entropy = contrast_statistics(embeddings, labels, temperature=model.loss_config.temperature)
    assert logs["contrast_top1"] == pytest.approx(float(np.mean(top1)), abs=1e-6)
    assert logs["contrast_entropy"] == pytest.approx(float(np.mean(entropy)), rel=1e-5)


def test_fit_logs_validation_metrics_and_the_head_learns():
    views, labels = _batch()
    model = _model(True)
    data = tf.data.Dataset.from_tensors((views, labels)).repeat()
    history = model.fit(data, steps_per_epoch=5, epochs=4, verbose=0,
                        validation_data=tf.data.Dataset.from_tensors((views, labels)))
    for name in ("loss", "online_top1", "online_loss", "contrast_top1", "contrast_entropy"):
        assert name in history.history and "val_" + name in history.history
    assert history.history["online_loss"][-1] < history.history["online_loss"][0]


def test_online_eval_needs_labels_and_valid_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        models.SupConModel(encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25), layers.ProjectionHead((), 4),
                           online_eval_classes=1)
    with pytest.raises(ValueError, match="online_optimizer"):
        _model(False).compile(optimizer="sgd", online_optimizer="adam")
    model = models.SupConModel(encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25),
                               layers.ProjectionHead((), 4), method="simclr", online_eval_classes=3)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="needs labels"):
        model.train_on_batch(_batch()[0])


def test_online_model_round_trips_through_keras_saving(tmp_path):
    views, labels = _batch()
    model = _model(True)
    model.train_on_batch(views, labels)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.online_eval_classes == 3 and loaded.contrast_metrics
    flat = views.reshape(-1, 8, 8, 1)
    np.testing.assert_allclose(
        loaded.online_classifier(loaded.encoder(flat)).numpy(), model.online_classifier(model.encoder(flat)).numpy(),
        atol=1e-6,
    )
