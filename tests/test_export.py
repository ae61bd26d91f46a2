"""SavedModel export: named signatures, float / uint8 / encoded inputs, eval preprocessing, atomic chief-only writes."""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import supcon_tf
from supcon_tf import augment, data, export, models
from supcon_tf.encoders import build_encoder
from supcon_tf.layers import ProjectionHead
from helpers import run_python, start_command

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("export")

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 3
ATOL = 1e-5
ENCODER_SIGNATURES = {"serving_default", "embed", "embed_uint8", "embed_encoded"}
CLASSIFIER_SIGNATURES = {"serving_default", "classify", "classify_uint8", "classify_encoded"}
# The uint8 and encoded inputs: any image size (and 1 or 3 channels for uint8).
INPUT_SPECS = {"float32": (None, *IMAGE_SHAPE), "uint8": (None, None, None, None), "string": (None,)}


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

    def spec_of(dtype):
        return {"dtype": dtype, "shape": INPUT_SPECS[dtype]}

    signatures = export.saved_model_signatures(encoder_export)
    assert set(signatures) == ENCODER_SIGNATURES
    names = ("serving_default", "embed", "embed_uint8", "embed_encoded")
    for name, dtype in zip(names, ("float32", "float32", "uint8", "string")):
        assert signatures[name] == {
            "inputs": {"images": spec_of(dtype)},
            "outputs": {"embedding": spec("float32", 4), "representation": spec("float32", 32)},
        }
    for _, path in classifier_exports.values():
        signatures = export.saved_model_signatures(path)
        assert set(signatures) == CLASSIFIER_SIGNATURES
        names = ("serving_default", "classify", "classify_uint8", "classify_encoded")
        for name, dtype in zip(names, ("float32", "float32", "uint8", "string")):
            assert signatures[name] == {
                "inputs": {"images": spec_of(dtype)},
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
    classifier_export = classifier_exports["LinearProbe"][1]
    runs = {
        path: start_command([cli, "show", "--dir", str(path), "--all"])
        for path in (encoder_export, classifier_export)
    }  # both at once: each run spends seconds importing TensorFlow
    for path, names in ((encoder_export, ENCODER_SIGNATURES), (classifier_export, CLASSIFIER_SIGNATURES)):
        stdout, stderr = runs[path].communicate(timeout=120)
        assert runs[path].returncode == 0, stderr[-2000:]
        for name in names:
            assert f"signature_def['{name}']" in stdout, stdout
        assert stdout.count("inputs['images'] tensor_info:") == 4, stdout
        assert "dtype: DT_FLOAT" in stdout and "shape: (-1, 8, 8, 1)" in stdout, stdout
        assert "dtype: DT_UINT8" in stdout and "shape: (-1, -1, -1, -1)" in stdout, stdout
        assert "dtype: DT_STRING" in stdout, stdout


def test_a_failed_export_leaves_no_folder_and_no_temporary_files(supcon_model, classifier_exports, tmp_path, monkeypatch):
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

    # Over an existing export (a copy of the module's LinearProbe export: other signatures than the encoder
    # export that crashes over it): the old one stays, whole.
    path = str(shutil.copytree(classifier_exports["LinearProbe"][1], tmp_path / "export"))
    before = export.saved_model_signatures(path)
    assert set(before) == CLASSIFIER_SIGNATURES
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


# ---------------------------------------------------------------------------
# Real images: any size and channel count (uint8), encoded bytes, bad inputs.
# ---------------------------------------------------------------------------

RGB_SHAPE = (16, 16, 3)


def _uint8(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _eval_pixels(images, image_shape):
    """The evaluation pipeline's input for each uint8 `[h, w, C]` image: `data.make_eval_dataset`, each run of
    consecutive images of one size as one batch (the pipeline resizes each image of a batch on its own; one
    pipeline per image would only trace its map once more per image)."""
    runs = []
    for image in images:
        image = np.asarray(image)
        if runs and runs[-1][0].shape == image.shape:
            runs[-1].append(image)
        else:
            runs.append([image])
    batches = []
    for run in runs:
        source = data.from_arrays(np.stack(run), np.zeros([len(run)], np.int32))
        batch, _ = next(iter(data.make_eval_dataset(source, batch_size=len(run), image_size=image_shape[:2])))
        assert batch.shape[0] == len(run)
        batches.append(batch.numpy())
    return np.concatenate(batches)


def _decoded(contents, channels):
    return tf.io.decode_image(contents, channels=channels, expand_animations=False).numpy()


@pytest.fixture(scope="module")
def rgb_classifier_export(tmp_path_factory):
    """A LinearProbe on 16x16 RGB images and its export."""
    model = models.LinearProbe(build_encoder("small_cnn", RGB_SHAPE, width=0.25), NUM_CLASSES)
    _randomize_batch_norm_statistics(model, seed=4)
    return model, export.export_classifier(model, tmp_path_factory.mktemp("rgb") / "export")


@pytest.fixture(scope="module")
def loaded_exports(encoder_export, rgb_classifier_export):
    """`{export path: its SavedModel loaded}` for the SupConModel's and the RGB LinearProbe's exports: loaded once
    for the tests that call them (a load per test would read the same files again), kept referenced here."""
    return {path: tf.saved_model.load(path) for path in (encoder_export, rgb_classifier_export[1])}


@pytest.fixture(scope="module")
def pixel_exports(tmp_path_factory):
    """`{(H, W, C): loaded export}` of "encoders" that flatten their input: their output is the served pixels."""
    loaded = {}
    for image_shape in ((16, 16, 1), (12, 10, 3)):
        inputs = keras.Input(image_shape)
        flatten = keras.Model(inputs, keras.layers.Flatten()(inputs))
        path = export.export_encoder(flatten, tmp_path_factory.mktemp("pixels") / "export")
        loaded[image_shape] = tf.saved_model.load(path)
    return loaded


def _served_pixels(loaded, image_shape, name, images):
    outputs = loaded.signatures[name](images=tf.constant(images))
    return outputs["representation"].numpy().reshape(-1, *image_shape)


def test_uint8_images_of_any_size_get_the_eval_pipeline_pixels_bit_for_bit(pixel_exports):
    for (height, width, channels), loaded in pixel_exports.items():
        image_shape = (height, width, channels)
        for seed, size in enumerate([(height, width), (7, 5), (40, 23), (height, 3 * width), (1, 1)]):
            images = _uint8((3, *size, channels), seed)
            served = _served_pixels(loaded, image_shape, "embed_uint8", images)
            assert served.dtype == np.float32
            np.testing.assert_array_equal(served, _eval_pixels(images, image_shape), err_msg=str(size))
    # At the trained size there is no resize: exactly uint8 * (1 / 255), as in evaluation.
    images = _uint8((2, 16, 16, 1), seed=9)
    served = _served_pixels(pixel_exports[(16, 16, 1)], (16, 16, 1), "embed_uint8", images)
    np.testing.assert_array_equal(served, images.astype(np.float32) * np.float32(1 / 255))


def test_uint8_images_of_any_size_match_the_model_on_eval_preprocessed_images(
    supcon_model, encoder_export, rgb_classifier_export, loaded_exports
):
    probe, probe_path = rgb_classifier_export
    cases = [
        (supcon_model, encoder_export, "embed_uint8", IMAGE_SHAPE),
        (probe, probe_path, "classify_uint8", RGB_SHAPE),
    ]
    for model, path, name, image_shape in cases:
        loaded = loaded_exports[path]
        layer = keras.layers.TFSMLayer(path, call_endpoint=name)  # one layer, called on every size
        for seed, size in enumerate([(13, 5), (4, 4), (33, 20)]):
            images = _uint8((3, *size, image_shape[-1]), seed)
            pixels = augment.NoAugment(image_shape[:2])(images)  # what make_eval_dataset maps over a batch
            expected = _numpy(model(pixels, training=False) if name == "embed_uint8" else model.predict_all(pixels))
            routes = (
                loaded.signatures[name](images=tf.constant(images)),
                getattr(loaded, name)(images),
                layer(images),
            )
            for outputs in routes:
                outputs = _numpy(outputs)
                for key in expected:
                    np.testing.assert_allclose(outputs[key], expected[key], atol=ATOL, rtol=0, err_msg=f"{size} {key}")


def test_uint8_channels_are_converted_to_the_encoders(
    pixel_exports, supcon_model, encoder_export, rgb_classifier_export, loaded_exports
):
    # Gray on an RGB model: the gray channel repeated; RGB on a gray model: tf.image.rgb_to_grayscale.
    gray, rgb = _uint8((2, 9, 14, 1), seed=5), _uint8((2, 9, 14, 3), seed=6)
    served = _served_pixels(pixel_exports[(12, 10, 3)], (12, 10, 3), "embed_uint8", gray)
    np.testing.assert_array_equal(served, _eval_pixels(np.repeat(gray, 3, axis=-1), (12, 10, 3)))
    served = _served_pixels(pixel_exports[(16, 16, 1)], (16, 16, 1), "embed_uint8", rgb)
    np.testing.assert_array_equal(served, _eval_pixels(tf.image.rgb_to_grayscale(rgb).numpy(), (16, 16, 1)))

    probe, probe_path = rgb_classifier_export
    expected = _numpy(probe.predict_all(augment.NoAugment(RGB_SHAPE[:2])(tf.image.grayscale_to_rgb(tf.constant(gray)))))
    loaded = loaded_exports[probe_path]  # kept referenced: its variables die with it
    outputs = _numpy(loaded.classify_uint8(gray))
    for key in expected:
        np.testing.assert_allclose(outputs[key], expected[key], atol=ATOL, rtol=0, err_msg=key)
    expected = _numpy(supcon_model(augment.NoAugment(IMAGE_SHAPE[:2])(tf.image.rgb_to_grayscale(rgb)), training=False))
    loaded = loaded_exports[encoder_export]
    outputs = _numpy(loaded.embed_uint8(rgb))
    for key in expected:
        np.testing.assert_allclose(outputs[key], expected[key], atol=ATOL, rtol=0, err_msg=key)


def _write_image_files(tmp_path):
    """Real files of several sizes and formats; returns their bytes, read back from disk."""
    paths = []
    for index, (shape, suffix) in enumerate(
        [((16, 16, 1), "png"), ((23, 9, 3), "png"), ((8, 8, 1), "jpg"), ((30, 41, 3), "jpg"), ((5, 7, 3), "png")]
    ):
        image = _uint8(shape, seed=20 + index)
        path = tmp_path / f"image{index}.{suffix}"
        if suffix == "png":
            path.write_bytes(tf.io.encode_png(image).numpy())
        else:
            keras.utils.save_img(path, image, scale=False)
        paths.append(path)
    return [path.read_bytes() for path in paths]


def test_encoded_jpeg_and_png_files_of_mixed_sizes(
    tmp_path, pixel_exports, supcon_model, encoder_export, rgb_classifier_export, loaded_exports
):
    contents = _write_image_files(tmp_path)
    assert contents[2][:3] == b"\xff\xd8\xff" and contents[0][:4] == b"\x89PNG"
    # The served pixels: decoded with the encoder's channels, then the evaluation pipeline, per image.
    for image_shape, loaded in pixel_exports.items():
        served = _served_pixels(loaded, image_shape, "embed_encoded", contents)
        expected = _eval_pixels([_decoded(c, image_shape[-1]) for c in contents], image_shape)
        np.testing.assert_array_equal(served, expected)

    probe, probe_path = rgb_classifier_export
    cases = [
        (lambda x: supcon_model(x, training=False), encoder_export, "embed_encoded", IMAGE_SHAPE),
        (probe.predict_all, probe_path, "classify_encoded", RGB_SHAPE),
    ]
    for model_fn, path, name, image_shape in cases:
        pixels = _eval_pixels([_decoded(c, image_shape[-1]) for c in contents], image_shape)
        expected = _numpy(model_fn(pixels))
        loaded = loaded_exports[path]
        routes = (
            loaded.signatures[name](images=tf.constant(contents)),
            getattr(loaded, name)(contents),
            keras.layers.TFSMLayer(path, call_endpoint=name)(tf.constant(contents)),
        )
        for outputs in routes:
            outputs = _numpy(outputs)
            for key in expected:
                assert outputs[key].shape[0] == len(contents)
                np.testing.assert_allclose(outputs[key], expected[key], atol=ATOL, rtol=0, err_msg=key)


def test_bad_inputs_raise_naming_the_expected_input(tmp_path, encoder_export, rgb_classifier_export, loaded_exports):
    encoder = loaded_exports[encoder_export]
    classifier = loaded_exports[rgb_classifier_export[1]]
    png = tf.io.encode_png(_uint8((6, 6, 3), seed=7)).numpy()
    embed_uint8 = r"embed_uint8 expects images uint8 \[batch, height, width, 1 or 3\]"
    classify_uint8 = r"classify_uint8 expects images uint8 \[batch, height, width, 1 or 3\]"
    embed_encoded = r"embed_encoded expects images string \[batch\] of JPEG or PNG bytes"
    classify_encoded = r"classify_encoded expects images string \[batch\] of JPEG or PNG bytes"
    invalid = tf.errors.InvalidArgumentError
    any_size_uint8 = r"shape=\(None, None, None, None\), dtype=tf\.uint8"
    cases = [
        # Wrong dtype: TF refuses it, naming the expected input.
        (lambda: encoder.embed_uint8(tf.zeros([1, 8, 8, 1], tf.float32)), TypeError, r"dtype=tf\.uint8, name='images'"),
        (
            lambda: encoder.signatures["embed_uint8"](images=tf.zeros([1, 8, 8, 1], tf.float32)),
            invalid,
            "embed_uint8.* expected to be a uint8 tensor",
        ),
        (
            lambda: classifier.signatures["classify"](images=tf.zeros([1, *RGB_SHAPE], tf.uint8)),
            invalid,
            "classify.* expected to be a float tensor",
        ),
        (lambda: encoder.embed_encoded(_uint8([1, 8, 8, 1], 0)), TypeError, r"dtype=tf\.string, name='images'"),
        # Wrong rank: TF for the endpoints, the graph's own check for the signatures (which do not check shapes).
        (lambda: encoder.embed_uint8(_uint8([8, 8, 1], 0)), TypeError, any_size_uint8),
        (lambda: encoder.signatures["embed_uint8"](images=_uint8([8, 8, 1], 0)), TypeError, any_size_uint8),
        (lambda: encoder.signatures["embed_uint8"](images=tf.constant(_uint8([8, 8, 1], 0))), invalid, embed_uint8),
        (lambda: encoder.signatures["embed_uint8"](images=tf.zeros([1, 1, 8, 8, 1], tf.uint8)), invalid, embed_uint8),
        (lambda: classifier.signatures["classify_uint8"](images=tf.zeros([8, 8, 3], tf.uint8)), invalid, classify_uint8),
        (lambda: encoder.signatures["embed_encoded"](images=tf.constant(png)), invalid, embed_encoded),
        (lambda: encoder.signatures["embed_encoded"](images=tf.constant([[png]])), invalid, embed_encoded),
        (
            lambda: encoder.signatures["serving_default"](images=tf.zeros([8, 8, 1])),
            invalid,
            r"serving_default/embed expects images float32 \[batch, 8, 8, 1\] in \[0, 1\]",
        ),
        (
            lambda: classifier.signatures["classify"](images=tf.zeros([1, 8, 8, 3])),
            invalid,
            r"classify expects images float32 \[batch, 16, 16, 3\].*received images of shape\] \[1 8 8 3\]",
        ),
        # 2 or 4 channels, or an empty image.
        (lambda: encoder.embed_uint8(_uint8([1, 8, 8, 2], 0)), invalid, embed_uint8 + r".*\[1 8 8 2\]"),
        (lambda: classifier.classify_uint8(_uint8([2, 5, 5, 4], 0)), invalid, classify_uint8 + r".*\[2 5 5 4\]"),
        (lambda: encoder.embed_uint8(_uint8([1, 0, 8, 1], 0)), invalid, embed_uint8),
        # Bytes that are not a JPEG or PNG image: the indices of the culprits follow the message.
        (lambda: encoder.embed_encoded([png, b"not an image", b""]), invalid, embed_encoded + r".*\] \[1 2\]"),
        (lambda: classifier.classify_encoded([b"GIF89a..."]), invalid, classify_encoded),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_export_needs_a_known_size_with_1_or_3_channels(tmp_path):
    inputs = keras.Input((None, None, 1))
    any_size = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(ValueError, match="not fully known.*image_shape=None"):
        export.export_encoder(any_size, tmp_path / "x")
    inputs = keras.Input((8, 8, 2))
    two_channels = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        export.export_encoder(two_channels, tmp_path / "x")
    assert os.listdir(tmp_path) == []
    path = export.export_encoder(any_size, tmp_path / "x", image_shape=(6, 4, 1))
    assert export.saved_model_signatures(path)["embed"]["inputs"]["images"]["shape"] == (None, 6, 4, 1)
    served = tf.saved_model.load(path).embed_uint8(_uint8([2, 9, 9, 3], seed=8))["representation"]
    assert served.shape == (2, 1)


def test_load_model_round_trip(tmp_path, supcon_model, rgb_classifier_export):
    probe = rgb_classifier_export[0]
    images = {IMAGE_SHAPE: _images()[0], RGB_SHAPE: _uint8((2, *RGB_SHAPE), 3).astype("float32") / 255}
    for model, image_shape in ((supcon_model, IMAGE_SHAPE), (probe, RGB_SHAPE), (supcon_model.encoder, IMAGE_SHAPE)):
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        loaded = supcon_tf.load_model(path)
        assert type(loaded) is type(model)
        expected = model(images[image_shape], training=False)
        actual = loaded(images[image_shape], training=False)
        for key, value in (expected.items() if isinstance(expected, dict) else [("output", expected)]):
            got = actual[key] if isinstance(actual, dict) else actual
            np.testing.assert_allclose(_numpy({"x": got})["x"], _numpy({"x": value})["x"], atol=1e-6, err_msg=key)
    # What the exporter does with a loaded file.
    reloaded = supcon_tf.load_model(tmp_path / f"{probe.name}.keras", compile=False)
    exported = export.export_classifier(reloaded, tmp_path / "e")
    assert set(export.saved_model_signatures(exported)) == CLASSIFIER_SIGNATURES
    with pytest.raises(ValueError):
        supcon_tf.load_model(tmp_path / "missing.keras")


# Slow: a fresh interpreter spends seconds importing TensorFlow.
@pytest.mark.slow
def test_keras_alone_needs_supcon_tf_imported_to_load(tmp_path, supcon_model):
    path = tmp_path / "model.keras"
    supcon_model.save(path)

    def python(program):
        return run_python("-c", program, str(path))

    run = python("import sys, keras; keras.saving.load_model(sys.argv[1])")
    assert run.returncode != 0 and "Could not locate class 'SupConModel'" in run.stderr, run.stderr[-2000:]
    run = python("import sys, supcon_tf; print(type(supcon_tf.load_model(sys.argv[1])).__name__)")
    assert run.returncode == 0 and run.stdout.strip() == "SupConModel", run.stderr[-2000:]


def test_export_model_picks_the_classifier_or_the_encoder_export(supcon_model, classifier_exports, tmp_path):
    encoder_path = export.export_model(supcon_model, tmp_path / "encoder")
    assert set(export.saved_model_signatures(encoder_path)) == ENCODER_SIGNATURES
    model, _ = classifier_exports["CrossEntropyModel"]
    names = [f"class {i}" for i in range(NUM_CLASSES)]
    classifier_path = export.export_model(model, tmp_path / "classifier", class_names=names)
    assert "classify" in export.saved_model_signatures(classifier_path)
    assert export.saved_model_class_names(classifier_path) == names
    with pytest.raises(ValueError, match="`class_names` is for classifiers; SupConModel exports an encoder"):
        export.export_model(supcon_model, tmp_path / "refused", class_names=names)
    assert not (tmp_path / "refused").exists()
