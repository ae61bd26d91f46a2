"""Tests of SupConModel, LinearProbe and CrossEntropyModel: train_step maths, fit/evaluate, freezing, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.encoders import build_encoder
from supcon_tf.layers import ProjectionHead
from supcon_tf.losses import supcon_loss
from supcon_tf.models import (
    EMBEDDING,
    LOGITS,
    PROBABILITIES,
    REPRESENTATION,
    CrossEntropyModel,
    LinearProbe,
    SupConModel,
)
from helpers import assert_serialization_roundtrip, with_loss_config

IMAGE_SHAPE = (8, 8, 1)


def _supcon_model(method="supcon", **kwargs):
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, width=0.25)
    model = SupConModel(encoder, ProjectionHead(hidden_dims=(16,), output_dim=8), method=method, **with_loss_config(kwargs))
    model.build((None,) + IMAGE_SHAPE)
    return model


def _views_batch(batch=8, views=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, views) + IMAGE_SHAPE).astype(np.float32)
    y = np.arange(batch, dtype=np.int32) % 3
    return x, y


def test_call_returns_named_outputs():
    model = _supcon_model()
    out = model(np.random.rand(2, *IMAGE_SHAPE).astype(np.float32))
    assert set(out) == {REPRESENTATION, EMBEDDING}
    assert out[EMBEDDING].shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(out[EMBEDDING].numpy(), axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method, temperature", [("supcon", 0.1), ("simclr", 0.5)])
def test_logged_loss_is_the_supcon_loss_of_the_embeddings(method, temperature):
    model = _supcon_model(method, temperature=temperature)
    x, y = _views_batch()
    # BatchNorm in training mode uses batch statistics: the forward pass is the
    # same one train_step does.
    z = model.embed_views(x, training=True)
    expected = supcon_loss(z, y if method == "supcon" else None, temperature=temperature)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], expected.numpy(), rtol=1e-5)


def test_one_sgd_step_applies_the_gradient_of_the_supcon_loss():
    model = _supcon_model(temperature=0.2)
    x, y = _views_batch()
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = supcon_loss(model.embed_views(x, training=True), y, temperature=0.2)
    grads = tape.gradient(loss, model.trainable_variables)
    lr = 0.1
    model.compile(optimizer=keras.optimizers.SGD(lr))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for var, old, grad in zip(model.trainable_variables, before, grads):
        np.testing.assert_allclose(var.numpy(), old - lr * grad.numpy(), atol=1e-6, err_msg=var.path)


def test_simclr_ignores_labels_and_supcon_uses_them():
    x, y = _views_batch()
    other = (y + 1) % 2

    def first_step_loss(method, labels):
        keras.utils.set_random_seed(0)
        model = _supcon_model(method)
        model.compile(optimizer=keras.optimizers.SGD(0.0))
        return model.fit(x, labels, batch_size=8, epochs=1, shuffle=False, verbose=0).history["loss"][0]

    assert first_step_loss("simclr", y) == pytest.approx(first_step_loss("simclr", other), rel=1e-6)
    assert first_step_loss("supcon", y) != pytest.approx(first_step_loss("supcon", other), rel=1e-3)


def test_fit_with_dataset_validation_and_callbacks_three_views():
    model = _supcon_model(contrast_mode="one", variant="in")
    x, y = _views_batch(batch=16, views=3)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)
    seen = []
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(
        ds,
        validation_data=ds,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(dict(logs)))],
    )
    assert len(seen) == 2 and {"loss", "val_loss"} <= set(seen[0])
    assert all(np.isfinite(v) for v in history.history["val_loss"])


def test_compile_rejects_a_loss_and_supcon_requires_labels():
    model = _supcon_model()
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="sgd", loss="mse")
    model.compile(optimizer="sgd")
    x, _ = _views_batch()
    with pytest.raises(ValueError, match="labels"):
        model.fit(x, batch_size=8, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="moco"), "method"),
        (dict(loss_config=dict(temperature=0.0)), "temperature"),
        (dict(temperature=0.1), "loss_config=losses.LossConfig"),
        (dict(loss_config=dict(contrast_mode="none")), "contrast_mode"),
        (dict(loss_config=dict(variant="mid")), "variant"),
        (dict(encoder="resnet"), "encoder"),
        (dict(head=None), "head"),
    ],
)
def test_supcon_model_rejects_bad_arguments(kwargs, match):
    args = dict(encoder=build_encoder("small_cnn", IMAGE_SHAPE, width=0.25), head=ProjectionHead((8,), 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SupConModel(**args)


def test_embed_views_rejects_wrong_rank():
    with pytest.raises(ValueError, match="views"):
        _supcon_model().embed_views(np.zeros((2,) + IMAGE_SHAPE, np.float32))


def test_supcon_model_serialization_roundtrip():
    model = _supcon_model(method="simclr", temperature=0.5, variant="in")
    clone = assert_serialization_roundtrip(model, np.random.rand(2, *IMAGE_SHAPE).astype(np.float32))
    assert clone.method == "simclr" and clone.loss_config.temperature == 0.5 and clone.loss_config.variant == "in"


def _separable_images(n=64, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.random((n,) + IMAGE_SHAPE).astype(np.float32) * 0.3
    x[y == 1, :4] += 0.7  # class 1 is bright in the top half
    return x, y.astype(np.int32)


def test_linear_probe_freezes_encoder_and_its_batchnorm_statistics():
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, width=0.25)
    encoder_before = [w.copy() for w in encoder.get_weights()]  # includes BN moving statistics
    probe = LinearProbe(encoder, num_classes=2)
    probe.compile(optimizer=keras.optimizers.Adam(0.05))
    x, y = _separable_images()
    probe.fit(x, y, batch_size=16, epochs=3, verbose=0)
    for before, after in zip(encoder_before, encoder.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert len(probe.trainable_variables) == 2  # classifier kernel and bias only
    assert probe.evaluate(x, y, verbose=0)[1] > 0.9


def test_linear_probe_fit_cached_trains_the_probe_classifier():
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, width=0.25)
    probe = LinearProbe(encoder, num_classes=2)
    probe.compile(optimizer=keras.optimizers.Adam(0.05))
    x, y = _separable_images()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    kernel_before = None
    probe.build((None,) + IMAGE_SHAPE)
    kernel_before = probe.classifier.kernel.numpy().copy()
    history = probe.fit_cached(ds, epochs=20, batch_size=16, validation_data=ds, verbose=0)
    assert "val_accuracy" in history.history
    assert not np.allclose(kernel_before, probe.classifier.kernel.numpy())
    # The trained classifier is the probe's own: evaluating the probe on images agrees.
    _, accuracy = probe.evaluate(ds, verbose=0)
    assert accuracy == pytest.approx(history.history["accuracy"][-1], abs=0.1)
    assert accuracy > 0.9
    features, labels = probe.extract_features(ds)
    assert features.shape == (64, encoder.output_shape[-1]) and labels.shape == (64,)


def test_linear_probe_fit_cached_validates_arguments():
    probe = LinearProbe(build_encoder("small_cnn", IMAGE_SHAPE, width=0.25), num_classes=2)
    ds = tf.data.Dataset.from_tensor_slices(_separable_images()).batch(16)
    with pytest.raises(ValueError, match="compile"):
        probe.fit_cached(ds, epochs=1)
    probe.compile(optimizer="adam")
    with pytest.raises(ValueError, match="epochs"):
        probe.fit_cached(ds, epochs=0)
    with pytest.raises(ValueError, match="dataset"):
        probe.fit_cached(np.zeros((2, 8, 8, 1)), epochs=1)


def test_cross_entropy_model_trains_encoder_end_to_end_and_predicts_all():
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, width=0.25)
    model = CrossEntropyModel(encoder, num_classes=2)
    model.build((None,) + IMAGE_SHAPE)
    before = [v.numpy().copy() for v in encoder.trainable_variables]
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    x, y = _separable_images()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, encoder.trainable_variables))
    out = model.predict_all(x[:4])
    assert set(out) == {LOGITS, PROBABILITIES, REPRESENTATION}
    np.testing.assert_allclose(out[PROBABILITIES].numpy().sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("cls", [LinearProbe, CrossEntropyModel])
def test_classifiers_round_trip_and_reject_bad_arguments(cls):
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, width=0.25)
    with pytest.raises(ValueError, match="num_classes"):
        cls(encoder, num_classes=1)
    with pytest.raises(ValueError, match="encoder"):
        cls("small_cnn", num_classes=3)
    model = cls(encoder, num_classes=3)
    model.build((None,) + IMAGE_SHAPE)
    assert_serialization_roundtrip(model, np.random.rand(2, *IMAGE_SHAPE).astype(np.float32))
