"""An image folder's labels file (CSV / JSON lines): multi-hot and continuous labels read back, every bad row
refused with its file:line, the RunConfig field's refusals, and a pre-training run through the binary."""

import json
import os

import keras
import numpy as np
import pytest

from helpers import assert_refused, run_binary_in_process
from supcon_tf import data
from supcon_tf.config import RunConfig


def _folder(root, count=4):
    """`<root>/{train,test}/img_<i>.png`, 8x8 RGB, flat (no class sub-folders); returns root."""
    for split in ("train", "test"):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(count):
            keras.utils.save_img(os.path.join(root, split, f"img_{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8),
                                 scale=False)
    return str(root)


def _write(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


MULTI_HOT_CSV = "path,labels\ntrain/img_0.png,cat;dog\ntrain/img_1.png,dog\ntrain/img_2.png,\ntrain/img_3.png,10;2\n" \
                "test/img_0.png,cat\n"


def _labels_of(labelled):
    return np.stack([label for _, label in labelled.dataset.as_numpy_iterator()])


def test_csv_multi_hot_rows_become_float_rows_over_the_training_classes(tmp_path):
    root = _folder(tmp_path / "images")
    labels_file = _write(tmp_path / "labels.csv", MULTI_HOT_CSV)
    train = data.load_labelled_images(root, labels_file, "train")
    assert train.class_names == ["2", "10", "cat", "dog"]  # digit names by number, then the others
    assert train.kind == "labels" and train.num_examples == 4 and train.label_shape == (4,)
    np.testing.assert_array_equal(_labels_of(train), [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    images = np.stack([image for image, _ in train.dataset.as_numpy_iterator()])
    np.testing.assert_array_equal(images[:, 0, 0, 0], [0, 40, 80, 120])  # file order
    test = data.load_labelled_images(root, labels_file, "test")
    assert test.class_names == train.class_names
    np.testing.assert_array_equal(_labels_of(test), [[0, 0, 1, 0]])


def test_jsonl_continuous_values_and_vectors(tmp_path):
    root = _folder(tmp_path / "images")
    rows = [{"path": f"train/img_{i}.png", "value": 0.5 * i} for i in range(4)] + [
        {"path": "test/img_1.png", "value": 7}
    ]
    labels_file = _write(tmp_path / "values.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    train = data.load_labelled_images(root, labels_file, "train", image_size=4, channels=1)
    assert train.class_names is None and train.label_shape == ()
    np.testing.assert_array_equal(_labels_of(train), [0.0, 0.5, 1.0, 1.5])
    assert next(train.dataset.as_numpy_iterator())[0].shape == (4, 4, 1)
    vectors = _write(tmp_path / "vectors.csv", "path,value\ntrain/img_0.png,1;2\ntrain/img_1.png,3;-4.5\n")
    np.testing.assert_array_equal(_labels_of(data.load_labelled_images(root, vectors, "train")), [[1, 2], [3, -4.5]])


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("l.csv", "path,classes\ntrain/img_0.png,a\n", "l.csv:1: the header"),
        ("l.csv", "path,labels\ntrain/img_0.png,a\ntrain/missing.png,a\n", "l.csv:3: path 'train/missing.png'"),
        ("l.csv", "path,labels\n../outside.png,a\n", "l.csv:2: path '../outside.png' is outside"),
        ("l.csv", "path,labels\ntrain/img_0.png,a\ntrain/img_0.png,b\n", "l.csv:3: path 'train/img_0.png' is listed twice"),
        ("l.csv", "path,value\ntrain/img_0.png,1.5\ntrain/img_1.png,high\n", "l.csv:3: value 'high' is not a number"),
        ("l.csv", "path,value\ntrain/img_0.png,nan\n", "l.csv:2: value 'nan' is not a finite number"),
        ("l.csv", "path,value\ntrain/img_0.png,1\ntrain/img_1.png,1;2\n", "l.csv:3: every value must have"),
        ("l.csv", "path,labels\ntrain/img_0.png,a;;b\n", "l.csv:2: labels 'a;;b' has an empty class name"),
        ("l.csv", "path,labels\ntrain/img_0.png,a,b\n", "l.csv:2: a row must be"),
        ("l.jsonl", '{"path": "train/img_0.png", "labels": ["a"]}\n{"path": "train/img_1.png", "value": 1}\n',
         "l.jsonl:2: every row must carry 'labels'"),
        ("l.jsonl", '{"path": "train/img_0.png", "labels": ["a"]}\nnot json\n', "l.jsonl:2: not a JSON object"),
        ("l.jsonl", '{"path": "train/img_0.png", "labels": "a"}\n', "l.jsonl:1: \"labels\" must be a list"),
        ("l.jsonl", '{"path": "train/img_0.png", "value": true}\n', "l.jsonl:1: value True is not a finite number"),
        ("l.jsonl", '{"path": "train/img_0.png"}\n', "l.jsonl:1: a row must have"),
        ("l.csv", "path,labels\ntrain/img_0.png,a\ntest/img_0.png,zebra\n", "l.csv:3: class 'zebra' is not a class"),
        ("l.csv", "path,labels\n", "no rows"),
        ("l.txt", "path,labels\n", "must be a .csv or .jsonl"),
    ],
)
def test_bad_rows_are_refused_with_their_file_and_line(tmp_path, name, text, message):
    root = _folder(tmp_path / "images")
    labels_file = _write(tmp_path / name, text)
    with pytest.raises(ValueError) as error:
        for split in ("train", "test"):
            data.load_labelled_images(root, labels_file, split)
    assert message in str(error.value), str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_a_split_without_rows_and_a_missing_file_are_refused(tmp_path):
    root = _folder(tmp_path / "images")
    labels_file = _write(tmp_path / "l.csv", "path,labels\ntrain/img_0.png,a\n")
    with pytest.raises(ValueError, match="no rows for the test split"):
        data.load_labelled_images(root, labels_file, "test")
    with pytest.raises(FileNotFoundError, match="labels_file"):
        data.load_labelled_images(root, str(tmp_path / "none.csv"), "train")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(dataset="digits"), "dataset='digits'"),
        (dict(method="ce"), "method='ce'"),
        (dict(online_eval=True), "online_eval"),
        (dict(ce_weight=0.5), "ce_weight"),
        (dict(sampler="class_balanced", samples_per_class=2, batch_size=4), "sampler"),
        (dict(prototypes=True, num_classes=4), "prototypes"),
        (dict(labels_file="{tmp}/none.csv"), "does not exist"),
        (dict(labels_file="{tmp}/labels.txt"), ".csv or .jsonl"),
    ],
)
def test_run_config_refuses_what_a_labels_file_cannot_feed(tmp_path, changes, message):
    labels_file = _write(tmp_path / "labels.csv", MULTI_HOT_CSV)
    values = dict(dataset="folder", data_dir=str(tmp_path), labels_file=labels_file)
    values.update({k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in changes.items()})
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(**values)


def test_pretrain_binary_refuses_a_bad_row_in_one_line(tmp_path):
    root = _folder(tmp_path / "images")
    labels_file = _write(tmp_path / "labels.csv", "path,labels\ntrain/img_0.png,a\ntrain/img_9.png,b\n")
    model_dir = tmp_path / "run"
    result = run_binary_in_process(
        "pretrain", "--dataset=folder", f"--data_dir={root}", f"--labels_file={labels_file}",
        f"--model_dir={model_dir}", "--batch_size=2", "--image_size=8",
    )
    assert_refused(result, model_dir, "labels.csv:3: path 'train/img_9.png'")


def _pretrain_on_labels_file(tmp_path, labels_text, name, *flags):
    root = _folder(tmp_path / "images")
    labels_file = _write(tmp_path / name, labels_text)
    model_dir = tmp_path / "run"
    result = run_binary_in_process(
        "pretrain", "--dataset=folder", f"--data_dir={root}", f"--labels_file={labels_file}", f"--model_dir={model_dir}",
        "--batch_size=4", "--image_size=8", "--epochs=1", "--steps_per_epoch=2", "--encoder_width=0.25",
        "--head_hidden=0", "--embedding_dim=8", "--verbose=0", "--evaluate_test=false", "--export=false", *flags,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(model_dir / "metrics.json"))
    assert np.isfinite(metrics["final_train_loss"])
    return model_dir, metrics


@pytest.mark.slow  # ~11 s on 2 cores
def test_pretrain_on_a_multi_hot_labels_file(tmp_path):
    model_dir, _ = _pretrain_on_labels_file(tmp_path, MULTI_HOT_CSV, "labels.csv")
    assert json.load(open(model_dir / "classes.json"))["class_names"] == ["2", "10", "cat", "dog"]
    assert json.load(open(model_dir / "config.json"))["labels_file"].endswith("labels.csv")


VALUES_CSV = "path,value\n" + "".join(f"{split}/img_{i}.png,{1.5 * i}\n" for split in ("train", "test") for i in range(4))


@pytest.mark.parametrize("labels_text, name, flags, match", [
    (VALUES_CSV, "values.csv", (), "holds continuous values, which need a label kernel: add --label_kernel gaussian"),
    (MULTI_HOT_CSV, "labels.csv", ("--label_kernel=gaussian", "--kernel_bandwidth=1"), "holds class names"),
    (VALUES_CSV, "values.csv", ("--label_kernel=gaussian", "--kernel_bandwidth=1", "--positive_weighting=jaccard"),
     "Give at most one of"),
])
def test_pretrain_refuses_a_labels_file_the_loss_options_cannot_read(tmp_path, labels_text, name, flags, match):
    root = _folder(tmp_path / "images")
    labels_file = _write(tmp_path / name, labels_text)
    model_dir = tmp_path / "run"
    result = run_binary_in_process(
        "pretrain", "--dataset=folder", f"--data_dir={root}", f"--labels_file={labels_file}",
        f"--model_dir={model_dir}", "--batch_size=2", "--image_size=8", *flags,
    )
    assert_refused(result, model_dir, match)


@pytest.mark.slow  # ~11 s each on 2 cores
@pytest.mark.parametrize("labels_text, name, flags", [
    (MULTI_HOT_CSV, "labels.csv", ("--positive_weighting=jaccard",)),
    (MULTI_HOT_CSV, "labels.csv", ("--multi_label=per_label",)),
    (VALUES_CSV, "values.csv", ("--label_kernel=gaussian", "--kernel_bandwidth=2.5")),
    (VALUES_CSV, "values.csv", ("--label_kernel=gaussian", "--kernel_bandwidth=2.5", "--queue_size=8")),
], ids=["jaccard", "per_label", "gaussian", "gaussian_queue"])
def test_pretrain_on_a_labels_file_with_each_named_loss(tmp_path, labels_text, name, flags):
    model_dir, _ = _pretrain_on_labels_file(tmp_path, labels_text, name, *flags)
    config = json.load(open(model_dir / "config.json"))
    for flag in flags:
        key, value = flag[2:].split("=")
        assert str(config[key]) == value or config[key] == float(value)
    if config["queue_size"]:  # the queue keeps the continuous values as float rows
        model = keras.saving.load_model(str(model_dir / "model.keras"), compile=False)
        assert model.memory.label_dtype == "float32" and int(model.memory.filled.numpy()) == 8
