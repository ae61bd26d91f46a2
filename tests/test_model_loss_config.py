"""The loss options travel whole: `RunConfig.loss` (a `LossConfig`) -> `SupConModel(loss_config=...)` -> the loss.

The model's loss with each named option (Jaccard, per-label, Gaussian kernel,
class-balanced with the model's own prototypes) equals the papers' equations
(`test_loss_family.paper_reference`, float64 NumPy); models saved before
`loss_config` existed load with their options; the run configuration refuses
the options its data cannot feed, in one line.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_refused, run_binary_in_process
from loss_reference import unit
from test_loss_family import BANDWIDTH, paper_reference
from supcon_tf import encoders, layers, models
from supcon_tf.config import RunConfig
from supcon_tf.losses import LossConfig

TEMPERATURE = 0.3


def _model(loss_config, **kwargs):
    keras.utils.set_random_seed(3)
    return models.SupConModel(
        encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25), layers.ProjectionHead((), 6),
        loss_config=loss_config, **kwargs,
    )


CASES = {
    "jaccard": (dict(positive_weighting="jaccard"), "multi_hot"),
    "per_label": (dict(multi_label="per_label"), "multi_hot"),
    "gaussian": (dict(label_kernel="gaussian", kernel_bandwidth=BANDWIDTH), "values"),
    "balanced": (dict(denominator="class_balanced"), "ids"),
}


def _labels(kind, rng, batch):
    if kind == "multi_hot":
        return (rng.random((batch, 4)) < 0.4).astype(np.float32)
    if kind == "values":
        return rng.normal(size=batch).astype(np.float32)
    return rng.integers(0, 3, batch).astype(np.int32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_model_loss_with_each_named_option_is_its_papers_equation(case):
    options, kind = CASES[case]
    rng = np.random.default_rng(7)
    z = unit(rng, 6, 2, 6).astype(np.float32)
    labels = _labels(kind, rng, 6)
    model = _model(LossConfig(temperature=TEMPERATURE, **options))
    loss, global_loss = model.compute_contrastive_loss(tf.constant(z), tf.constant(labels))
    reference_labels = labels if kind == "multi_hot" else list(labels)
    _, _, expected = paper_reference(z.astype(np.float64), reference_labels, case, temperature=TEMPERATURE)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(global_loss), expected, rtol=2e-5, atol=1e-6)


def test_prototypes_are_trained_class_centres_in_every_contrast_set():
    rng = np.random.default_rng(8)
    z = unit(rng, 6, 2, 6).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 1], np.int32)
    model = _model(LossConfig(temperature=TEMPERATURE, denominator="class_balanced"), prototype_classes=3)
    assert model.prototypes.shape == (3, 6) and any(v is model.prototypes for v in model.contrastive_variables)
    centres = model.prototypes.numpy().astype(np.float64)
    centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
    with tf.GradientTape() as tape:
        loss, _ = model.compute_contrastive_loss(tf.constant(z), tf.constant(labels))
    _, _, expected = paper_reference(z.astype(np.float64), list(labels), "balanced", temperature=TEMPERATURE,
                                     prototypes=centres, prototype_labels=list(range(3)))
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=1e-6)
    gradient = tape.gradient(loss, model.prototypes)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0
    clone = models.SupConModel.from_config(model.get_config())
    assert clone.prototype_classes == 3 and clone.loss_config == model.loss_config


def test_per_label_losses_take_sample_weights_per_sample():
    rng = np.random.default_rng(9)
    z = tf.constant(unit(rng, 6, 2, 6).astype(np.float32))
    labels = tf.constant(_labels("multi_hot", rng, 6))
    model = _model(LossConfig(multi_label="per_label"))
    plain, _ = model.compute_contrastive_loss(z, labels)
    ones, _ = model.compute_contrastive_loss(z, labels, sample_weight=tf.ones([6]))
    np.testing.assert_allclose(float(ones), float(plain), rtol=1e-6)


def test_a_model_saved_before_loss_config_loads_with_its_options():
    model = _model(LossConfig(temperature=0.2, variant="in", denominator="one_positive"))
    config = model.get_config()
    options = config.pop("loss_config")  # before: six loss options as constructor arguments of their own
    legacy = dict(config, **{name: options[name] for name in (
        "temperature", "base_temperature", "contrast_mode", "variant", "denominator", "positives_cap")})
    clone = models.SupConModel.from_config(legacy)
    assert clone.loss_config == LossConfig(temperature=0.2, variant="in", denominator="one_positive")


def test_supcon_model_refuses_loose_loss_options_and_label_options_for_simclr():
    with pytest.raises(ValueError, match=r"loss_config=losses.LossConfig\(temperature=...\), received: temperature=0.2"):
        models.SupConModel(encoders.build_encoder("small_cnn", (8, 8, 1)), layers.ProjectionHead((), 4),
                           temperature=0.2)
    # The rule is LossConfig's (check_method), the one RunConfig applies to the flags.
    with pytest.raises(ValueError, match=r"`denominator`='class_balanced' shapes the supervised loss: it needs "
                                         r"method='supcon', received: method='simclr'"):
        _model(LossConfig(denominator="class_balanced"), method="simclr")
    with pytest.raises(ValueError, match="`prototype_classes` needs class-id labels: it does not combine with "
                                         "`positive_weighting`, received: positive_weighting='jaccard'"):
        _model(LossConfig(positive_weighting="jaccard"), prototype_classes=3)
    with pytest.raises(ValueError, match="`prototype_classes` does not combine with a positives cap"):
        _model(LossConfig(positives_cap=2), prototype_classes=3)


@pytest.mark.parametrize("changes, message", [
    (dict(positive_weighting="jaccard"), "reads multi-hot labels, which dataset 'digits' does not give"),
    (dict(label_kernel="gaussian", kernel_bandwidth=1.0), "reads continuous label values"),
    (dict(method="simclr", denominator="class_balanced"), "needs method='supcon'"),
    (dict(prototypes=True, dataset="folder", data_dir="images"), "`prototypes` needs the number of classes"),
    (dict(prototypes=True, positives_cap=2), "`prototypes` does not combine with a positives cap"),
    (dict(kernel_bandwidth=1.0), "`kernel_bandwidth` needs `label_kernel`"),
])
def test_run_config_refuses_loss_options_its_data_cannot_feed(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(**changes)


def test_config_json_stays_flat_and_reads_back():
    config = RunConfig.from_flat(method="supcon", temperature=0.2, denominator="class_balanced", prototypes=True)
    flat = json.loads(config.to_json())
    assert flat["temperature"] == 0.2 and flat["prototypes"] is True and "loss" not in flat
    assert RunConfig.from_dict(flat) == config
    old = {k: v for k, v in flat.items() if k not in ("positive_weighting", "label_kernel", "kernel_bandwidth",
                                                      "multi_label", "prototypes", "ce_weight", "labels_file")}
    assert RunConfig.from_dict(old).loss.temperature == 0.2  # a config.json written before these options
    assert config.setting("denominator") == "class_balanced" and config.replace(temperature=0.5).loss.temperature == 0.5


@pytest.mark.slow  # ~10 s on 2 cores
def test_pretrain_binary_trains_the_balanced_loss_with_prototypes(tmp_path):
    model_dir = tmp_path / "run"
    result = run_binary_in_process(
        "pretrain", "--preset=digits_supcon", f"--model_dir={model_dir}", "--epochs=1", "--steps_per_epoch=2",
        "--batch_size=32", "--image_size=8", "--encoder_width=0.25", "--verbose=0", "--export=false",
        "--denominator=class_balanced", "--prototypes",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = keras.saving.load_model(str(model_dir / "model.keras"), compile=False)
    assert model.prototypes.shape == (10, json.load(open(model_dir / "config.json"))["embedding_dim"])
    assert model.loss_config.denominator == "class_balanced"
    assert np.isfinite(json.load(open(model_dir / "metrics.json"))["final_train_loss"])


def test_pretrain_binary_refuses_a_kernel_without_continuous_labels(tmp_path):
    model_dir = tmp_path / "run"
    result = run_binary_in_process(
        "pretrain", "--preset=digits_supcon", f"--model_dir={model_dir}", "--label_kernel=gaussian",
        "--kernel_bandwidth=1",
    )
    assert_refused(result, model_dir, "reads continuous label values, which dataset 'digits' does not give")
