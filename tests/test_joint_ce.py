"""The joint objective supcon + ce_weight x CE (`SupConModel(ce_weight=w)`): its value against a float64 reference,
its gradient into the encoder, its saving, its refusals, and a run through the pretrain binary that exports a
classifier."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_refused, run_binary_in_process
from loss_reference import reference_loss
from supcon_tf import encoders, export, layers, models
from supcon_tf.config import RunConfig


def _model(ce_weight=0.5, ce_classes=3, **kwargs):
    keras.utils.set_random_seed(5)
    model = models.SupConModel(
        encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25), layers.ProjectionHead((16,), 8),
        ce_weight=ce_weight, ce_classes=ce_classes, **kwargs,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def _batch():
    rng = np.random.default_rng(11)
    return rng.random((9, 2, 8, 8, 1)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2, 0, 0, 1], np.int32)


def _ce_reference(representation, kernel, bias, targets, weights):
    """Mean softmax cross-entropy of the logits r W + b in float64: -log softmax(logits)[target], weighted."""
    logits = np.asarray(representation, np.float64) @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    per_view = -log_softmax[np.arange(len(targets)), targets]
    return float(np.sum(weights * per_view) / np.sum(weights)), float(np.mean(np.argmax(logits, axis=1) == targets))


@pytest.mark.parametrize("weighted", [False, True])
def test_logged_total_is_supcon_plus_weight_times_ce(weighted):
    views, labels = _batch()
    model = _model(ce_weight=0.7)
    sample_weight = np.linspace(0.5, 2.0, len(labels)).astype(np.float32) if weighted else None
    logs = model.test_on_batch(views, labels, sample_weight=sample_weight, return_dict=True)
    embeddings, representation = model.embed_views(views, return_representation=True)
    per_anchor, has_positive, _ = reference_loss(embeddings.numpy(), labels, temperature=model.loss_config.temperature)
    anchor_weight = np.ones(len(labels)) if sample_weight is None else sample_weight.astype(np.float64)
    anchor_weight = np.repeat(anchor_weight[:, None], views.shape[1], axis=1) * has_positive
    supcon = float(np.sum(per_anchor * anchor_weight) / np.sum(anchor_weight))
    view_weight = np.repeat(np.ones(len(labels)) if sample_weight is None else sample_weight, views.shape[1])
    kernel, bias = model.ce_head.get_weights()
    ce, top1 = _ce_reference(representation.numpy(), kernel, bias, np.repeat(labels, views.shape[1]), view_weight)
    assert logs["ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert logs["ce_top1"] == pytest.approx(top1)
    assert logs["loss"] == pytest.approx(supcon + 0.7 * ce, rel=1e-5)


def test_the_ce_gradient_reaches_the_encoder_and_the_head_trains():
    views, labels = _batch()
    model = _model()
    with tf.GradientTape() as tape:
        _, representation = model.embed_views(views, training=True, return_representation=True)
        ce_share, _ = model.compute_ce_loss(representation, labels)
    gradients = tape.gradient(ce_share, model.encoder.trainable_variables + model.ce_head.trainable_variables)
    assert all(g is not None for g in gradients)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in gradients[: len(model.encoder.trainable_variables)]) > 0
    # One step with w > 0 moves the encoder differently from the same step without the CE term, and the head moves.
    plain = _model(ce_weight=0.0, ce_classes=None)
    joint = _model()
    head_before = joint.ce_head.get_weights()[0].copy()
    plain.train_on_batch(views, labels)
    joint.train_on_batch(views, labels)
    assert any(not np.allclose(a, b) for a, b in zip(plain.encoder.get_weights(), joint.encoder.get_weights()))
    assert not np.allclose(head_before, joint.ce_head.get_weights()[0])
    assert set(map(id, joint.ce_head.trainable_variables)) <= set(map(id, joint.contrastive_variables))


@pytest.mark.slow  # ~18 s on 2 shared cores
def test_two_replicas_give_the_one_device_joint_loss_and_step():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest.py)")
    from supcon_tf import distribute

    rng = np.random.default_rng(3)
    views = rng.random((16, 2, 8, 8, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 0, 1, 2], np.int32)
    weights = np.linspace(0.5, 1.5, 16).astype(np.float32)  # unequal sums per replica: the global mean is exact

    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(5)
            model = models.SupConModel(
                encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25, synchronized_bn=True),
                layers.ProjectionHead((16,), 8), ce_weight=0.5, ce_classes=3,
            )
            model.compile(optimizer=keras.optimizers.SGD(0.5))
        dataset = tf.data.Dataset.from_tensor_slices((views, labels, weights)).batch(8, drop_remainder=True)
        history = model.fit(dataset, epochs=1, shuffle=False, verbose=0).history
        return model, history

    single, single_logs = run(tf.distribute.get_strategy())
    mirrored, mirrored_logs = run(distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]]))
    for name in ("loss", "ce_loss", "ce_top1"):
        np.testing.assert_allclose(mirrored_logs[name], single_logs[name], rtol=1e-5, err_msg=name)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_joint_model_saves_and_serves_its_head_as_a_classifier(tmp_path):
    views, labels = _batch()
    model = _model()
    model.train_on_batch(views, labels)
    path = str(tmp_path / "joint.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.ce_weight == 0.5 and loaded.ce_classes == 3
    images = views[:, 0]
    expected = model.ce_head(model.encoder(images, training=False)).numpy()
    np.testing.assert_allclose(loaded.ce_head(loaded.encoder(images, training=False)).numpy(), expected, atol=1e-6)
    classifier = loaded.joint_classifier()
    assert isinstance(classifier, models.CrossEntropyModel) and classifier.encoder is loaded.encoder
    np.testing.assert_allclose(classifier(images).numpy(), expected, atol=1e-6)
    assert export.served_classifier(loaded) is not None and export.served_classifier(_model(0.0, None)) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ce_weight=-0.1), "ce_weight"),
        (dict(ce_weight=math.nan), "ce_weight"),
        (dict(ce_weight=True), "ce_weight"),
        (dict(ce_weight=1.0, method="simclr"), "method='simclr'"),
        (dict(ce_weight=1.0, ce_classes=None), "ce_classes"),
        (dict(ce_weight=1.0, ce_classes=1), "num_classes"),
        (dict(ce_weight=0.0, ce_classes=3), "ce_classes"),
    ],
)
def test_bad_joint_arguments_are_refused(kwargs, message):
    kwargs = dict(dict(ce_classes=3), **kwargs)
    with pytest.raises(ValueError, match=message):
        models.SupConModel(encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25), layers.ProjectionHead((), 4),
                           **kwargs)


def test_joint_head_needs_class_ids():
    views, _ = _batch()
    model = _model()
    with pytest.raises(ValueError, match="integer class ids"):
        model.test_on_batch(views, np.eye(3, dtype=np.float32)[np.arange(9) % 3])


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(ce_weight=-1.0), "ce_weight=-1.0"),
        (dict(ce_weight=math.nan), "ce_weight=nan"),
        (dict(ce_weight=0.5, method="simclr"), "method='simclr'"),
        (dict(ce_weight=0.5, method="ce"), "method='ce'"),
    ],
)
def test_config_refuses_bad_ce_weight(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(**values)


@pytest.mark.parametrize(
    "flags, message", [(["--ce_weight=-1"], "ce_weight=-1.0"), (["--method=simclr", "--ce_weight=1"], "simclr")]
)
def test_pretrain_binary_refuses_bad_ce_weight(tmp_path, flags, message):
    model_dir = tmp_path / "run"
    assert_refused(run_binary_in_process("pretrain", f"--model_dir={model_dir}", *flags), model_dir, message)


@pytest.mark.slow  # ~10 s on 2 cores
def test_pretrain_with_ce_weight_exports_a_classifier(tmp_path):
    model_dir = tmp_path / "joint"
    result = run_binary_in_process(
        "pretrain", "--preset=digits_supcon", f"--model_dir={model_dir}", "--ce_weight=0.5", "--epochs=1",
        "--steps_per_epoch=2", "--batch_size=32", "--verbose=0", "--encoder_width=0.25", "--image_size=8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final_logs = json.load(open(model_dir / "metrics.json"))["final_logs"]
    assert {"ce_loss", "ce_top1"} <= set(final_logs) and np.isfinite(final_logs["ce_loss"])
    saved = tf.saved_model.load(str(model_dir / "saved_model"))
    assert "classify" in saved.signatures
    from supcon_tf import data

    images, labels = data.load_digits("test")
    images = images[:16].astype(np.float32) / 255.0
    outputs = saved.signatures["classify"](images=tf.constant(images))
    assert outputs["probabilities"].shape == (16, 10)
    np.testing.assert_allclose(tf.reduce_sum(outputs["probabilities"], axis=1).numpy(), 1.0, atol=1e-5)
    names = json.load(open(model_dir / "classes.json"))["class_names"]
    predicted = np.argmax(outputs["logits"].numpy(), axis=1)
    assert [name.decode() for name in outputs["class_name"].numpy()] == [names[i] for i in predicted]
    # The model file is the same classifier for supcon-export (which exports through export_model, as here).
    loaded = keras.saving.load_model(str(model_dir / "model.keras"))
    export.export_model(loaded, str(tmp_path / "exported"), class_names=export.read_classes_json(model_dir / "classes.json"))
    assert export.saved_model_class_names(str(tmp_path / "exported")) == names
