"""Labels are names: image-folder splits share the training split's ids, and classifier exports carry the names."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from supcon_tf import data, export, models
from supcon_tf.encoders import build_encoder
from helpers import run_binary_in_process

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("class_names")

IMAGE_SHAPE = (8, 8, 1)
# Not in sorted order, and not ASCII: ids are positions in this list, names travel as UTF-8.
NAMES = ["zebra", "cat", "dög"]
CLASSIFIER_SIGNATURES = ("serving_default", "classify", "classify_uint8", "classify_encoded")


# ---------------------------------------------------------------------------
# load_image_folder(..., class_names=...)
# ---------------------------------------------------------------------------

# Each class's images are filled with its own gray level, so an image's pixels say which folder it came from.
GRAY = {"a": 10, "b": 120, "c": 250, "d": 60}


def _write_split(root, classes, per_class=2):
    for class_name in classes:
        os.makedirs(root / class_name)
        for index in range(per_class):
            pixels = np.full((4, 3, 3), GRAY[class_name], np.uint8)
            pixels[0, 0, 0] = index  # distinct files
            Image.fromarray(pixels).save(root / class_name / f"{index}.png")


def _folder_of_each_example(dataset):
    """`[(folder name read back from the pixels, label)]` in dataset order."""
    by_gray = {gray: name for name, gray in GRAY.items()}
    return [(by_gray[int(image[1, 1, 0])], int(label)) for image, label in dataset.as_numpy_iterator()]


@pytest.fixture
def splits(tmp_path):
    _write_split(tmp_path / "train", ["a", "b", "c"])
    _write_split(tmp_path / "test", ["a", "c"])
    return tmp_path


def test_a_split_missing_a_class_keeps_the_training_ids(splits):
    _, train_names = data.load_image_folder(splits / "train")
    assert train_names == ["a", "b", "c"]
    # The bug this guards against: on its own, test/ numbers c as 1 (train has it as 2).
    alone, alone_names = data.load_image_folder(splits / "test")
    assert alone_names == ["a", "c"] and sorted({label for _, label in _folder_of_each_example(alone)}) == [0, 1]

    dataset, names = data.load_image_folder(splits / "test", class_names=train_names)
    assert names == ["a", "b", "c"] and names is not train_names
    assert _folder_of_each_example(dataset) == [("a", 0), ("a", 0), ("c", 2), ("c", 2)]
    assert dataset.element_spec[1].dtype == tf.int32


def test_labels_follow_the_given_order_not_the_sorted_one(splits):
    dataset, names = data.load_image_folder(splits / "train", class_names=("c", "a", "b", "e"))
    assert names == ["c", "a", "b", "e"]  # "e": a class this folder lacks, still counted
    # Class (id) then file order.
    assert _folder_of_each_example(dataset) == [("c", 0), ("c", 0), ("a", 1), ("a", 1), ("b", 2), ("b", 2)]


def test_the_same_names_give_the_same_result_as_the_default(splits):
    default, names = data.load_image_folder(splits / "train")
    given, _ = data.load_image_folder(splits / "train", class_names=names)
    for (image, label), (image2, label2) in zip(default.as_numpy_iterator(), given.as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(image, image2)
        assert label == label2


def test_a_class_folder_the_training_split_lacks_is_an_error(splits):
    _write_split(splits / "test", ["d"])
    os.makedirs(splits / "test" / ".cache")  # hidden folders are not classes, as without class_names
    with pytest.raises(ValueError) as error:
        data.load_image_folder(splits / "test", class_names=["a", "b", "c"])
    message = str(error.value)
    assert f"image folder {str(splits / 'test')!r} has class folder 'd' that the training split does not have" in message
    assert "(training classes: a, b, c)" in message and ".cache" not in message

    _write_split(splits / "test", ["b"])
    with pytest.raises(ValueError, match="class folders 'b', 'd'"):
        data.load_image_folder(splits / "test", class_names=["a", "c"])


@pytest.mark.parametrize(
    "class_names, message",
    [
        ("abc", "class_names='abc'"),
        ([], r"class_names=\[\]"),
        ({"a": 0}, "class_names="),
        (["a", "b", "a"], "repeated: 'a'"),
        (["a", ""], "not a non-empty str: ''"),
        (["a", 3], "not a non-empty str: 3"),
        ([b"a"], "non-empty str"),
    ],
)
def test_bad_class_names_raise(splits, class_names, message):
    with pytest.raises(ValueError, match="`class_names`") as error:
        data.load_image_folder(splits / "train", class_names=class_names)
    assert error.match(message)


# ---------------------------------------------------------------------------
# export_classifier(..., class_names=...)
# ---------------------------------------------------------------------------


def _probe():
    model = models.LinearProbe(build_encoder("small_cnn", IMAGE_SHAPE, width=0.25), len(NAMES))
    # Random classifier weights on centred representations: the argmax differs between the test images,
    # so a wrong lookup shows.
    kernel, _ = model.classifier.get_weights()
    kernel = np.random.default_rng(0).normal(0.0, 1.0, kernel.shape).astype("float32")
    representations = keras.ops.convert_to_numpy(model.encoder(_uint8_images() / np.float32(255), training=False))
    model.classifier.set_weights([kernel, -representations.mean(axis=0) @ kernel])
    return model


@pytest.fixture(scope="module")
def named_export(tmp_path_factory):
    model = _probe()
    path = export.export_classifier(model, tmp_path_factory.mktemp("named") / "export", class_names=NAMES)
    return model, path


def _uint8_images(count=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)


def _decode(names):
    return [name.decode("utf-8") for name in np.asarray(names).tolist()]


def test_every_signature_returns_the_name_of_the_argmax_class(named_export):
    model, path = named_export
    images = _uint8_images()
    as_float = images.astype("float32") / 255.0
    png = [tf.io.encode_png(image).numpy() for image in images]
    inputs = {
        "serving_default": tf.constant(as_float),
        "classify": tf.constant(as_float),
        "classify_uint8": tf.constant(images),
        "classify_encoded": tf.constant(png),
    }
    # Independent of the export: the model's own logits on the same pixels (uint8 / 255 at the trained size).
    expected = [NAMES[i] for i in np.argmax(keras.ops.convert_to_numpy(model(as_float, training=False)), axis=-1)]
    assert len(set(expected)) == len(NAMES), expected  # every class appears: the test can see a mix-up

    loaded = tf.saved_model.load(path)
    for name in CLASSIFIER_SIGNATURES:
        outputs = loaded.signatures[name](images=inputs[name])
        assert outputs["class_name"].dtype == tf.string and outputs["class_name"].shape == (len(images),)
        got = _decode(outputs["class_name"])
        assert got == [NAMES[i] for i in np.argmax(outputs["logits"].numpy(), axis=-1)], name
        assert got == expected, name
        assert outputs["logits"].dtype == tf.float32 and outputs["probabilities"].dtype == tf.float32
    # Endpoints (positional) and TFSMLayer too.
    assert _decode(loaded.classify_uint8(images)["class_name"]) == expected
    layer = keras.layers.TFSMLayer(path, call_endpoint="classify_encoded")
    assert _decode(layer(tf.constant(png))["class_name"]) == expected


def test_the_names_are_readable_without_running_the_model(named_export, monkeypatch):
    _, path = named_export
    loaded = tf.saved_model.load(path)
    assert _decode(loaded.class_names[0].numpy()) == NAMES
    assert len(loaded.variables) == len(named_export[0].variables)  # not among the model's variables

    def no_loading(*args, **kwargs):
        raise AssertionError("saved_model_class_names must not load the graph")

    monkeypatch.setattr(tf.saved_model, "load", no_loading)
    assert export.saved_model_class_names(path) == NAMES


def test_signatures_list_the_class_name_output(named_export, tmp_path):
    model, path = named_export
    signatures = export.saved_model_signatures(path)
    assert set(signatures) == set(CLASSIFIER_SIGNATURES)
    for name in CLASSIFIER_SIGNATURES:
        outputs = signatures[name]["outputs"]
        assert outputs["class_name"] == {"dtype": "string", "shape": (None,)}
        assert outputs["logits"] == {"dtype": "float32", "shape": (None, len(NAMES))}
        assert set(outputs) == {"class_name", "logits", "probabilities", "representation", "embedding"}

    # Without class_names: the ids are the only output, and no names are stored.
    unnamed = export.export_classifier(model, tmp_path / "unnamed")
    for spec in export.saved_model_signatures(unnamed).values():
        assert "class_name" not in spec["outputs"]
    assert export.saved_model_class_names(unnamed) is None
    assert not hasattr(tf.saved_model.load(unnamed), "class_names")
    encoder = export.export_encoder(model.encoder, tmp_path / "encoder")
    assert export.saved_model_class_names(encoder) is None


def test_bad_class_names_for_export_raise_and_write_nothing(named_export, tmp_path):
    model, _ = named_export
    target = tmp_path / "x"
    cases = [
        (["a", "b"], r"must have 3 names, one per output of the classifier, received: 2 names"),
        (["a", "b", "c", "d"], "must have 3 names.*received: 4 names"),
        ("abc", "class_names='abc'"),
        (["a", "a", "b"], "repeated: 'a'"),
        (["a", "", "b"], "non-empty str"),
    ]
    for class_names, message in cases:
        with pytest.raises(ValueError, match="`class_names`") as error:
            export.export_classifier(model, target, class_names=class_names)
        assert error.match(message)
    for call in (lambda: export.saved_model_class_names(tmp_path), lambda: export.saved_model_class_names("")):
        with pytest.raises(ValueError, match="path"):
            call()
    assert os.listdir(tmp_path) == []


def test_read_classes_json(tmp_path):
    good = tmp_path / "classes.json"
    good.write_text(json.dumps({"class_names": NAMES, "source": "train/ sub-folders"}), encoding="utf-8")
    assert export.read_classes_json(good) == NAMES
    cases = [
        ("[1, 2]", "JSON object"),
        ('{"names": ["a"]}', "JSON object"),
        ("{not json", "not a JSON file"),
        ('{"class_names": ["a", "a"]}', "repeated: 'a'"),
        ('{"class_names": "ab"}', "class_names='ab'"),
    ]
    for content, message in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(ValueError, match=message) as error:
            export.read_classes_json(bad)
        assert str(bad) in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        export.read_classes_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="path=3"):
        export.read_classes_json(3)


def test_export_binary_reads_classes_json_next_to_the_model(tmp_path):
    model = _probe()
    run_ok, run_bad = tmp_path / "run_ok", tmp_path / "run_bad"
    for run, names in ((run_ok, NAMES), (run_bad, NAMES[:2])):
        run.mkdir()
        model.save(run / "model.keras")
        (run / "classes.json").write_text(json.dumps({"class_names": names, "source": "test"}), encoding="utf-8")
    results = {
        run: run_binary_in_process("export_model", f"--model={run / 'model.keras'}", f"--output={run / 'export'}")
        for run in (run_ok, run_bad)
    }

    returncode, stdout, stderr = results[run_ok].returncode, results[run_ok].stdout, results[run_ok].stderr
    assert returncode == 0, stderr[-3000:]
    classes_json = os.path.join(run_ok, "classes.json")
    assert f"it returns the class names of {classes_json} (3 classes, ids in this order): zebra, cat, dög" in stdout
    assert export.saved_model_class_names(run_ok / "export") == NAMES
    loaded = tf.saved_model.load(str(run_ok / "export"))  # kept: its functions need its variables alive
    outputs = loaded.classify_uint8(_uint8_images(4))
    assert _decode(outputs["class_name"]) == [NAMES[i] for i in np.argmax(outputs["logits"].numpy(), axis=-1)]

    returncode, stderr = results[run_bad].returncode, results[run_bad].stderr
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "names 2 classes but the model" in stderr and "has 3 outputs" in stderr and "classes.json" in stderr
    assert not os.path.exists(run_bad / "export")


# ---------------------------------------------------------------------------
# Through the training binary: the run folder records the mapping, the test split and the export use it.
# ---------------------------------------------------------------------------


def _train_ce(data_dir, model_dir):
    """`python -m experiments.train_ce` on an image folder, through its entry in this process."""
    return run_binary_in_process(
        "train_ce", "--dataset=folder", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
        "--image_size=8", "--epochs=1", "--batch_size=4", "--encoder_width=0.25", "--verbose=0",
    )


def test_a_run_records_its_class_names_and_exports_them(tmp_path):
    _write_split(tmp_path / "data" / "train", ["a", "b", "c"], per_class=3)
    _write_split(tmp_path / "data" / "test", ["a", "c"], per_class=3)
    result = _train_ce(tmp_path / "data", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "classes.json") as f:
        assert json.load(f)["class_names"] == ["a", "b", "c"]
    assert export.saved_model_class_names(str(tmp_path / "run" / "saved_model")) == ["a", "b", "c"]
    # The test split's labels are the training ids: c is 2 (a per-split mapping made it 1).
    dataset, _ = data.load_image_folder(str(tmp_path / "data" / "test"), class_names=["a", "b", "c"])
    assert sorted({int(label) for _, label in dataset.as_numpy_iterator()}) == [0, 2]


def test_a_test_class_training_never_saw_stops_the_run_before_it_writes(tmp_path):
    _write_split(tmp_path / "data" / "train", ["a", "b"], per_class=3)
    _write_split(tmp_path / "data" / "test", ["a", "d"], per_class=3)
    result = _train_ce(tmp_path / "data", tmp_path / "run")
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "has class folder 'd' that the training split does not have (training classes: a, b)" in last
    assert not os.path.exists(tmp_path / "run")
