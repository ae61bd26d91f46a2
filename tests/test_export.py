"""SavedModel export: named signatures, float and uint8 inputs, equality with Keras, atomic chief-only writes."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import export, models
from supcon_tf.encoders import build_encoder
from supcon_tf.layers import ProjectionHead

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 3
ATOL = 1e-5
ENCODER_SIGNATURES = {"serving_default", "embed", "embed_uint8"}
CLASSIFIER_SIGNATURES = {"serving_default", "classify", "classify_uint8"}


def _encoder():
    return build_encoder("small_cnn", IMAGE_SHAPE, width=0.25)


def _randomize_batch_norm_statistics(model, seed):
    """Moving statistics far from batch statistics, so an export in training mode would not match."""
    rng = np.random.default_rng(seed)
    for variable in model.non_trainable_variables:
        if variable.name == "moving_mean":
            variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
        elif variable.name == "moving_variance":
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))


def _images(seed=0, batch=4):
    """`(float32 [0, 1], uint8, float32 equal to uint8 / 255)` image batches."""
    rng = np.random.default_rng(seed)
    as_float = rng.uniform(0.0, 1.0, (batch, *IMAGE_SHAPE)).astype("float32")
    as_uint8 = rng.integers(0, 256, (batch, *IMAGE_SHAPE), dtype=np.uint8)
    return as_float, as_uint8, as_uint8.astype("float32") / 255.0


def _numpy(outputs):
    return {key: keras.ops.convert_to_numpy(value) for key, value in outputs.items()}


def _assert_outputs_close(actual, expected):
    actual = _numpy(actual)
    assert set(actual) == set(expected), (set(actual), set(expected))
    for key in expected:
        assert actual[key].dtype == np.float32, key
        np.testing.assert_allclose(actual[key], expected[key], atol=ATOL, rtol=0, err_msg=key)


def _assert_every_route_matches(path, float_name, uint8_name, expected_fn):
    """Signatures (keyword `images`), endpoints (positional) and TFSMLayer, float and uint8, equal the model."""
    as_float, as_uint8, uint8_as_float = _images()
    expected_float, expected_uint8 = expected_fn(as_float), expected_fn(uint8_as_float)
    loaded = tf.saved_model.load(path)
    for name in ("serving_default", float_name):
        _assert_outputs_close(loaded.signatures[name](images=tf.constant(as_float)), expected_float)
    _assert_outputs_close(loaded.signatures[uint8_name](images=tf.constant(as_uint8)), expected_uint8)
    _assert_outputs_close(getattr(loaded, float_name)(as_float), expected_float)
    _assert_outputs_close(getattr(loaded, uint8_name)(as_uint8), expected_uint8)
    for endpoint in ("serving_default", float_name):
        _assert_outputs_close(keras.layers.TFSMLayer(path, call_endpoint=endpoint)(as_float), expected_float)
    _assert_outputs_close(keras.layers.TFSMLayer(path, call_endpoint=uint8_name)(as_uint8), expected_uint8)
    return expected_float


def _tf_config(monkeypatch, index):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))


@pytest.fixture(scope="module")
def supcon_model():
    model = models.SupConModel(_encoder(), ProjectionHead((8,), 4, use_batch_norm=True))
    _randomize_batch_norm_statistics(model, seed=1)
    return model


@pytest.fixture(scope="module")
def encoder_export(supcon_model, tmp_path_factory):
    return export.export_encoder(supcon_model, tmp_path_factory.mktemp("encoder") / "export")


@pytest.fixture(scope="module")
def classifier_exports(tmp_path_factory):
    """`{class name: (model, export path)}` for a LinearProbe and a CrossEntropyModel."""
    exports = {}
    for seed, model_class in enumerate((models.LinearProbe, models.CrossEntropyModel)):
        model = model_class(_encoder(), NUM_CLASSES)
        _randomize_batch_norm_statistics(model, seed=2 + seed)
        path = export.export_classifier(model, tmp_path_factory.mktemp("classifier") / "export")
        exports[model_class.__name__] = (model, path)
    return exports


def test_encoder_export_matches_the_model_in_inference_mode(supcon_model, encoder_export):
    assert os.path.isfile(os.path.join(encoder_export, "saved_model.pb"))
    expected = _assert_every_route_matches(
        encoder_export, "embed", "embed_uint8", lambda x: _numpy(supcon_model(x, training=False))
    )
    assert set(expected) == {models.EMBEDDING, models.REPRESENTATION}
    np.testing.assert_allclose(np.linalg.norm(expected[models.EMBEDDING], axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["LinearProbe", "CrossEntropyModel"])
def test_classifier_export_matches_predict_all(classifier_exports, kind):
    model, path = classifier_exports[kind]

    def expected_fn(images):
        outputs = _numpy(model.predict_all(images))
        representation = outputs[models.REPRESENTATION]
        # A classifier's "embedding" is its L2-normalised representation.
        outputs[models.EMBEDDING] = representation / np.linalg.norm(representation, axis=-1, keepdims=True)
        return outputs

    expected = _assert_every_route_matches(path, "classify", "classify_uint8", expected_fn)
    np.testing.assert_allclose(expected[models.LOGITS], keras.ops.convert_to_numpy(model(_images()[0])), atol=ATOL)
    np.testing.assert_allclose(expected[models.PROBABILITIES].sum(-1), 1.0, atol=1e-5)


def test_bare_encoder_exports_the_representation_only(tmp_path):
    encoder = _encoder()
    _randomize_batch_norm_statistics(encoder, seed=3)
    path = export.export_encoder(encoder, tmp_path / "bare", image_shape=IMAGE_SHAPE)
    _assert_every_route_matches(
        path, "embed", "embed_uint8", lambda x: {models.REPRESENTATION: _numpy({"r": encoder(x, training=False)})["r"]}
    )


def test_subclassed_encoder_needs_image_shape(tmp_path):
    class Pooling(keras.Model):  # no symbolic inputs: the export cannot know the image size
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(5)

        def build(self, input_shape):
            self.dense.build((None, input_shape[-1]))

        def call(self, images, training=False):
            return self.dense(keras.ops.mean(images, axis=(1, 2)))

    encoder = Pooling()
    encoder.build((None, *IMAGE_SHAPE))
    with pytest.raises(ValueError, match="image_shape"):
        export.export_encoder(encoder, tmp_path / "x")
    assert os.listdir(tmp_path) == []
    path = export.export_encoder(encoder, tmp_path / "x", image_shape=IMAGE_SHAPE)
    assert export.saved_model_signatures(path)["embed"]["inputs"]["images"]["shape"] == (None, *IMAGE_SHAPE)


def test_saved_model_signatures_lists_names_inputs_and_outputs(encoder_export, classifier_exports):
    def spec(dtype, *shape):
        return {"dtype": dtype, "shape": (None, *shape)}

    signatures = export.saved_model_signatures(encoder_export)
    assert set(signatures) == ENCODER_SIGNATURES
    for name, dtype in (("serving_default", "float32"), ("embed", "float32"), ("embed_uint8", "uint8")):
        assert signatures[name] == {
            "inputs": {"images": spec(dtype, *IMAGE_SHAPE)},
            "outputs": {"embedding": spec("float32", 4), "representation": spec("float32", 32)},
        }
    for _, path in classifier_exports.values():
        signatures = export.saved_model_signatures(path)
        assert set(signatures) == CLASSIFIER_SIGNATURES
        for name, dtype in (("serving_default", "float32"), ("classify", "float32"), ("classify_uint8", "uint8")):
            assert signatures[name] == {
                "inputs": {"images": spec(dtype, *IMAGE_SHAPE)},
                "outputs": {
                    "embedding": spec("float32", 32),
                    "logits": spec("float32", NUM_CLASSES),
                    "probabilities": spec("float32", NUM_CLASSES),
                    "representation": spec("float32", 32),
                },
            }


# Slow (pyproject marker): each saved_model_cli run spends several seconds importing TensorFlow.
@pytest.mark.slow
def test_saved_model_cli_shows_the_signatures(encoder_export, classifier_exports):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        cli = shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli is not installed next to this Python nor on PATH")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    classifier_export = classifier_exports["LinearProbe"][1]
    runs = {
        path: subprocess.Popen(
            [cli, "show", "--dir", str(path), "--all"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for path in (encoder_export, classifier_export)
    }  # both at once: each run spends seconds importing TensorFlow
    for path, names in ((encoder_export, ENCODER_SIGNATURES), (classifier_export, CLASSIFIER_SIGNATURES)):
        stdout, stderr = runs[path].communicate(timeout=120)
        assert runs[path].returncode == 0, stderr[-2000:]
        for name in names:
            assert f"signature_def['{name}']" in stdout, stdout
        assert stdout.count("inputs['images'] tensor_info:") == 3, stdout
        assert "dtype: DT_UINT8" in stdout and "shape: (-1, 8, 8, 1)" in stdout, stdout


def test_a_failed_export_leaves_no_folder_and_no_temporary_files(supcon_model, tmp_path, monkeypatch):
    archive_class = type(keras.export.ExportArchive())
    write_out = archive_class.write_out

    def write_then_crash(self, filepath, *args, **kwargs):
        write_out(self, filepath, *args, **kwargs)
        assert os.path.isfile(os.path.join(filepath, "saved_model.pb"))  # it got far: a full SavedModel on disk
        raise RuntimeError("crash before the rename")

    monkeypatch.setattr(archive_class, "write_out", write_then_crash)
    with pytest.raises(RuntimeError, match="crash"):
        export.export_encoder(supcon_model, tmp_path / "export")
    assert os.listdir(tmp_path) == []

    # Over an existing export: the old one stays, whole.
    monkeypatch.setattr(archive_class, "write_out", write_out)
    path = export.export_encoder(supcon_model.encoder, tmp_path / "export")
    before = export.saved_model_signatures(path)
    monkeypatch.setattr(archive_class, "write_out", write_then_crash)
    with pytest.raises(RuntimeError, match="crash"):
        export.export_encoder(supcon_model, path, overwrite=True)
    assert os.listdir(tmp_path) == ["export"]
    assert export.saved_model_signatures(path) == before


def test_an_existing_export_is_replaced_only_with_overwrite(tmp_path):
    first, second = _encoder(), _encoder()
    path = export.export_encoder(first, tmp_path / "export")
    with pytest.raises(FileExistsError, match=str(path)):
        export.export_encoder(second, path)
    images = _images()[0]
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.embed(images)["representation"], first(images, training=False), atol=ATOL)

    assert export.export_encoder(second, path, overwrite=True) == path
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.embed(images)["representation"], second(images, training=False), atol=ATOL)
    assert os.listdir(tmp_path) == ["export"]

    # overwrite=True still never replaces something that is not an export.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        export.export_encoder(second, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_only_the_chief_exports(supcon_model, monkeypatch, tmp_path):
    probe = models.LinearProbe(_encoder(), NUM_CLASSES)
    _tf_config(monkeypatch, index=1)
    assert export.export_encoder(supcon_model, tmp_path / "encoder") is None
    assert export.export_classifier(probe, tmp_path / "classifier") is None
    assert os.listdir(tmp_path) == []
    # Arguments are still checked on every worker.
    with pytest.raises(ValueError, match="path"):
        export.export_encoder(supcon_model, "")
    _tf_config(monkeypatch, index=0)
    assert export.export_classifier(probe, tmp_path / "classifier") == str(tmp_path / "classifier")
    assert os.listdir(tmp_path) == ["classifier"]


def test_bad_arguments_raise(supcon_model, tmp_path):
    probe = models.LinearProbe(_encoder(), NUM_CLASSES)
    target = tmp_path / "x"
    cases = [
        (lambda: export.export_encoder(probe, target), "export_classifier"),
        (lambda: export.export_encoder("model", target), "received: model='model'"),
        (lambda: export.export_encoder(ProjectionHead((), 4), target), "model="),
        (lambda: export.export_classifier(supcon_model, target), "LinearProbe or CrossEntropyModel"),
        (lambda: export.export_classifier(supcon_model.encoder, target), "export_encoder"),
        (lambda: export.export_encoder(supcon_model, ""), "path=''"),
        (lambda: export.export_encoder(supcon_model, None), "path=None"),
        (lambda: export.export_classifier(probe, 3), "path=3"),
        (lambda: export.export_encoder(supcon_model, target, overwrite="yes"), "overwrite='yes'"),
        (lambda: export.export_classifier(probe, target, overwrite=1), "overwrite=1"),
        (lambda: export.export_encoder(supcon_model, target, image_shape=(16, 16, 1)), r"image_shape=\(16, 16, 1\)"),
        (lambda: export.export_encoder(supcon_model, target, image_shape=(8, 8)), r"image_shape=\(8, 8\)"),
        (lambda: export.export_encoder(supcon_model, target, image_shape=(8, 8, 0)), "image_shape"),
        (lambda: export.saved_model_signatures(tmp_path), "SavedModel folder"),
        (lambda: export.saved_model_signatures(""), "path=''"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()

    unbuilt = models.SupConModel(keras.Sequential([keras.layers.GlobalAveragePooling2D()]), ProjectionHead((), 4))
    with pytest.raises(ValueError, match="built"):
        export.export_encoder(unbuilt, target)

    inputs = keras.Input(IMAGE_SHAPE)
    two_outputs = keras.Model(inputs, {"a": keras.layers.GlobalAveragePooling2D()(inputs)})
    with pytest.raises(ValueError, match=r"\[batch, rep_dim\]"):
        export.export_encoder(two_outputs, target)
    assert os.listdir(tmp_path) == []
