"""Tests for supcon_tf.data: digits, array/folder/TFDS sources, multiview and eval pipelines."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import augment, data

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("data")


@pytest.fixture(scope="module")
def digits_train():
    return data.load_digits("train")


def _source(digits_train, n=20):
    images, labels = digits_train
    return data.from_arrays(images[:n], labels[:n])


def _multiview(source, **kwargs):
    options = dict(batch_size=8, num_views=2, augment=augment.SimCLRAugment(8), seed=0)
    options.update(kwargs)
    return data.make_multiview_dataset(source, **options)


def _first_batch(dataset):
    views, labels = next(iter(dataset))
    return views.numpy(), labels.numpy()


# ---------------------------------------------------------------------------
# Digits.
# ---------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_split_sizes():
    train_images, train_labels = data.load_digits("train")
    test_images, test_labels = data.load_digits("test")
    assert train_images.shape == (1437, *data.DIGITS_IMAGE_SHAPE)
    assert test_images.shape == (360, *data.DIGITS_IMAGE_SHAPE)
    assert train_images.dtype == np.uint8 and test_images.dtype == np.uint8
    assert train_labels.shape == (1437,) and test_labels.shape == (360,)
    assert train_labels.dtype == np.int32 and test_labels.dtype == np.int32
    assert train_images.max() == 255 and train_images.min() == 0


def test_digits_pixels_are_sklearn_values_scaled_to_255():
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits()
    images, labels = data._digits_arrays()
    np.testing.assert_array_equal(images[..., 0], np.round(raw.images * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(labels, raw.target)


def _as_records(images, labels):
    return sorted(image.tobytes() + bytes([label]) for image, label in zip(images, labels))


def test_digits_split_is_a_stratified_partition():
    train_images, train_labels = data.load_digits("train")
    test_images, test_labels = data.load_digits("test")
    all_images, all_labels = data._digits_arrays()
    # Train + test is the whole set, each image exactly once (as a multiset of records).
    assert len(train_labels) + len(test_labels) == 1797
    assert _as_records(
        np.concatenate([train_images, test_images]), np.concatenate([train_labels, test_labels])
    ) == _as_records(all_images, all_labels)
    # Every class in both splits, in proportion (stratified: within one image of 20 %).
    train_counts = np.bincount(train_labels, minlength=10)
    test_counts = np.bincount(test_labels, minlength=10)
    assert np.all(train_counts > 0) and np.all(test_counts > 0)
    expected = 0.2 * (train_counts + test_counts)
    assert np.all(np.abs(test_counts - expected) <= 1.0)


def test_digits_split_is_fixed_by_seed():
    first = data.load_digits("test", seed=0)
    again = data.load_digits("test", seed=0)
    other = data.load_digits("test", seed=1)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert len(data.load_digits("test", test_fraction=0.5)[1]) == 899


# ---------------------------------------------------------------------------
# from_arrays.
# ---------------------------------------------------------------------------


def test_from_arrays_gives_the_source_convention(digits_train):
    images, labels = digits_train
    dataset = data.from_arrays(images[:5], labels[:5].astype(np.int64))
    image_spec, label_spec = dataset.element_spec
    assert image_spec.shape == (8, 8, 1) and image_spec.dtype == tf.uint8
    assert label_spec.shape == () and label_spec.dtype == tf.int32
    got = list(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([g[0] for g in got]), images[:5])
    np.testing.assert_array_equal([g[1] for g in got], labels[:5])


# ---------------------------------------------------------------------------
# Multiview and eval pipelines.
# ---------------------------------------------------------------------------


def test_multiview_shapes_and_dtypes(digits_train):
    dataset = _multiview(_source(digits_train), num_views=3, augment=augment.SimCLRAugment(6))
    views_spec, labels_spec = dataset.element_spec
    assert views_spec.shape.as_list() == [8, 3, 6, 6, 1] and views_spec.dtype == tf.float32
    assert labels_spec.shape.as_list() == [8] and labels_spec.dtype == tf.int32
    views, labels = _first_batch(dataset)
    assert views.shape == (8, 3, 6, 6, 1) and views.dtype == np.float32
    assert views.min() >= 0.0 and views.max() <= 1.0
    assert labels.dtype == np.int32


def test_views_of_a_sample_differ(digits_train):
    views, _ = _first_batch(_multiview(_source(digits_train), num_views=3))
    for sample in views:
        for a in range(3):
            for b in range(a + 1, 3):
                assert not np.allclose(sample[a], sample[b])


def test_same_seed_same_batches_different_seed_different(digits_train):
    source = _source(digits_train)
    first = [_first_batch(_multiview(source, seed=5)) for _ in range(2)]
    np.testing.assert_array_equal(first[0][0], first[1][0])
    np.testing.assert_array_equal(first[0][1], first[1][1])
    other = _first_batch(_multiview(source, seed=6))
    assert not np.array_equal(first[0][0], other[0])


def test_batches_get_different_augmentation_seeds(digits_train):
    # Two identical batches (no shuffle, the same 8 samples twice) get different augmentations.
    images, labels = digits_train
    source = data.from_arrays(np.concatenate([images[:8]] * 2), np.concatenate([labels[:8]] * 2))
    batches = list(_multiview(source, shuffle=False).as_numpy_iterator())
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[0][1], batches[1][1])
    assert not np.allclose(batches[0][0], batches[1][0])


def test_drop_remainder_gives_only_full_batches(digits_train):
    source = _source(digits_train, n=20)
    full = [labels for _, labels in _multiview(source).as_numpy_iterator()]
    assert [len(labels) for labels in full] == [8, 8]
    kept = [labels for _, labels in _multiview(source, drop_remainder=False).as_numpy_iterator()]
    assert [len(labels) for labels in kept] == [8, 8, 4]
    # Shuffled, but every sample exactly once per epoch.
    np.testing.assert_array_equal(np.sort(np.concatenate(kept)), np.sort(digits_train[1][:20]))


def test_repeat_reshuffles_each_epoch(digits_train):
    source = _source(digits_train, n=16)
    epochs = [
        labels
        for _, labels in _multiview(source, repeat=True, augment=augment.NoAugment(8))
        .take(4)
        .as_numpy_iterator()
    ]
    first_epoch, second_epoch = np.concatenate(epochs[:2]), np.concatenate(epochs[2:])
    np.testing.assert_array_equal(np.sort(first_epoch), np.sort(second_epoch))
    assert not np.array_equal(first_epoch, second_epoch)


def test_eval_dataset_keeps_order_and_remainder(digits_train):
    images, labels = digits_train
    dataset = data.make_eval_dataset(_source(digits_train, n=10), batch_size=4, image_size=8)
    batches = list(dataset.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, 8, 8, 1), (4, 8, 8, 1), (2, 8, 8, 1)]
    assert all(b[0].dtype == np.float32 and b[1].dtype == np.int32 for b in batches)
    all_images = np.concatenate([b[0] for b in batches])
    np.testing.assert_allclose(all_images, images[:10] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[:10])
    resized_dataset = data.make_eval_dataset(_source(digits_train), batch_size=4, image_size=(5, 6))
    resized = next(iter(resized_dataset))
    assert tuple(resized[0].shape) == (4, 5, 6, 1)


# ---------------------------------------------------------------------------
# Image folders.
# ---------------------------------------------------------------------------


def _write_png(path, image):
    tf.io.write_file(str(path), tf.io.encode_png(image))


def _write_folder(root, shape=(5, 4, 3)):
    """Writes root/{cat,dog}/{0,1,2}.png; returns {(class, index): image}."""
    rng = np.random.default_rng(0)
    written = {}
    for class_name in ("dog", "cat"):  # Not in sorted order on purpose.
        os.makedirs(root / class_name)
        for index in range(3):
            image = rng.integers(0, 256, size=shape, dtype=np.uint8)
            _write_png(root / class_name / f"{index}.png", image)
            written[(class_name, index)] = image
    return written


def test_image_folder_reads_back_images_and_labels(tmp_path):
    written = _write_folder(tmp_path)
    dataset, class_names = data.load_image_folder(tmp_path)
    assert class_names == ["cat", "dog"]
    image_spec, label_spec = dataset.element_spec
    assert image_spec.shape == (5, 4, 3) and image_spec.dtype == tf.uint8
    assert label_spec.dtype == tf.int32
    got = list(dataset.as_numpy_iterator())
    assert [int(label) for _, label in got] == [0, 0, 0, 1, 1, 1]
    expected = [written[(c, i)] for c in ("cat", "dog") for i in range(3)]
    for (image, _), want in zip(got, expected):
        np.testing.assert_array_equal(image, want)


def test_image_folder_resizes_and_converts_channels(tmp_path):
    _write_folder(tmp_path)
    dataset, _ = data.load_image_folder(tmp_path, image_size=(3, 2), channels=1)
    images = np.stack([image for image, _ in dataset.as_numpy_iterator()])
    assert images.shape == (6, 3, 2, 1) and images.dtype == np.uint8


def test_image_folder_with_mixed_sizes_needs_image_size(tmp_path):
    _write_folder(tmp_path)
    _write_png(tmp_path / "cat" / "big.png", np.zeros((7, 7, 3), np.uint8))
    with pytest.raises(ValueError, match="image_size"):
        data.load_image_folder(tmp_path)
    dataset, _ = data.load_image_folder(tmp_path, image_size=4)
    assert len(list(dataset)) == 7


def test_image_folder_corrupt_file_names_the_file(tmp_path):
    _write_folder(tmp_path)
    corrupt = tmp_path / "dog" / "broken.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="broken.png") as error:
        data.load_image_folder(tmp_path)
    assert str(corrupt) in str(error.value)


def test_image_folder_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        data.load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="sub-directory"):
        data.load_image_folder(tmp_path)
    os.makedirs(tmp_path / "cat")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no image files"):
        data.load_image_folder(tmp_path)


# ---------------------------------------------------------------------------
# TFDS.
# ---------------------------------------------------------------------------


def test_tfds_missing_data_fails_fast_with_a_preparation_hint(tmp_path):
    data_dir = tmp_path / "no_tfds_here"
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as error:
        data.load_tfds("cifar10", "train", data_dir=data_dir)
    assert time.monotonic() - start < 10.0
    message = str(error.value)
    assert "'cifar10'" in message and str(data_dir) in message
    assert "download_and_prepare()" in message
    assert not data_dir.exists()  # Nothing was created (or downloaded).


def test_tfds_unknown_dataset_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="`name`"):
        data.load_tfds("no_such_dataset_xyz", "train", data_dir=tmp_path)


def test_tfds_prepared_dataset_loads_as_a_source(tmp_path):
    import tensorflow_datasets as tfds

    class SupconTinyFakeImages(tfds.core.GeneratorBasedBuilder):
        """Six 4x4 RGB images of 3 classes, prepared locally (no download)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(4, 4, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            )
            return tfds.core.DatasetInfo(
                builder=self, features=features, supervised_keys=("image", "label")
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((4, 4, 3), 10 * i, np.uint8), "label": i % 3}

    tfds.disable_progress_bar()
    SupconTinyFakeImages(data_dir=str(tmp_path)).download_and_prepare()
    dataset, info = data.load_tfds("supcon_tiny_fake_images", "train", data_dir=tmp_path)
    assert info.features["label"].num_classes == 3
    image_spec, label_spec = dataset.element_spec
    assert image_spec.shape == (4, 4, 3) and image_spec.dtype == tf.uint8
    assert label_spec.shape == () and label_spec.dtype == tf.int32
    examples = list(dataset.as_numpy_iterator())
    assert sorted(int(image[0, 0, 0]) // 10 for image, _ in examples) == list(range(6))
    assert all(label == (image[0, 0, 0] // 10) % 3 for image, label in examples)
    with pytest.raises(ValueError, match="`split`"):
        data.load_tfds("supcon_tiny_fake_images", "validation", data_dir=tmp_path)


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------


def _tiny_source():
    return data.from_arrays(np.zeros((4, 8, 8, 1), np.uint8), np.arange(4))


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: data.load_digits("validation"), "split"),
        (lambda: data.load_digits("train", test_fraction=0.0), "test_fraction"),
        (lambda: data.load_digits("train", test_fraction=1.2), "test_fraction"),
        (lambda: data.load_digits("train", test_fraction=0.001), "test_fraction"),
        (lambda: data.load_digits("train", seed=-1), "seed"),
        (lambda: data.from_arrays(np.zeros((4, 8, 8), np.uint8), np.arange(4)), "images"),
        (lambda: data.from_arrays(np.zeros((4, 8, 8, 1), np.float32), np.arange(4)), "images"),
        (lambda: data.from_arrays(np.zeros((4, 8, 8, 2), np.uint8), np.arange(4)), "images"),
        (lambda: data.from_arrays(np.zeros((4, 8, 8, 1), np.uint8), np.arange(3)), "labels"),
        (lambda: data.from_arrays(np.zeros((4, 8, 8, 1), np.uint8), np.ones(4) * 0.5), "labels"),
        (lambda: data.from_arrays(np.zeros((4, 8, 8, 1), np.uint8), -np.arange(4)), "labels"),
        (lambda: data.load_tfds("", "train"), "name"),
        (lambda: data.load_tfds("cifar10", None), "split"),
        (lambda: data.load_tfds("cifar10", "train", download="no"), "download"),
        (lambda: data.load_image_folder(42), "root"),
        (lambda: data.load_image_folder(".", channels=4), "channels"),
        (lambda: data.load_image_folder(".", image_size=(0, 3)), "image_size"),
        (lambda: _multiview(_tiny_source(), batch_size=0), "batch_size"),
        (lambda: _multiview(_tiny_source(), num_views=0), "num_views"),
        (lambda: _multiview(_tiny_source(), shuffle_buffer=0), "shuffle_buffer"),
        (lambda: _multiview(_tiny_source(), augment="simclr"), "augment"),
        (lambda: _multiview(_tiny_source(), seed=1.5), "seed"),
        (lambda: _multiview(_tiny_source(), drop_remainder=1), "drop_remainder"),
        (lambda: _multiview(np.zeros((4, 8, 8, 1)), batch_size=2), "dataset"),
        (lambda: _multiview(tf.data.Dataset.range(4)), "dataset"),
        (lambda: data.make_eval_dataset(_tiny_source(), batch_size=0, image_size=8), "batch_size"),
        (lambda: data.make_eval_dataset(_tiny_source(), batch_size=2, image_size=-8), "image_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


def test_a_shard_keeps_every_nth_batch_of_the_stream_and_bad_shards_are_refused():
    images = np.arange(12 * 4 * 4 * 1, dtype=np.uint8).reshape(12, 4, 4, 1)
    source = data.from_arrays(images, np.arange(12) % 3)
    options = dict(batch_size=2, augment=augment.SimCLRAugment(4), seed=3, repeat=True, start_batch=1)
    full = [v.numpy() for v, _ in data.make_multiview_dataset(source, **options).take(6)]
    shard = list(data.make_multiview_dataset(source, shard=(3, 1), with_index=True, **options).take(2))
    assert [int(index) for index, _, _ in shard] == [2, 5]  # batches k with (k - start_batch) % 3 == 1
    for (index, views, _), expected in zip(shard, (full[1], full[4])):
        np.testing.assert_array_equal(views.numpy(), expected)
    for bad in [(2, 2), (0, 0), (2,), "2,1", (2.0, 1)]:
        with pytest.raises(ValueError, match="`shard` must be None or"):
            data.make_multiview_dataset(source, shard=bad, **options)


# ---------------------------------------------------------------------------
# A run's data from its config (`data.splits`): the validation split is pinned to the formula it always had.
# ---------------------------------------------------------------------------


def _pairs(dataset):
    return [(bytes(np.asarray(image)), int(label)) for image, label in dataset]


def test_digits_validation_split_is_sklearns_stratified_split_with_the_seed():
    from sklearn.model_selection import train_test_split

    from supcon_tf.config import RunConfig

    images, labels = data.load_digits("train")
    for seed, fraction in ((0, 0.2), (7, 0.1)):
        split = data.split_train_validation(RunConfig(), fraction, seed)
        train_index, val_index = train_test_split(
            np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels
        )
        expected_train = [(bytes(images[i]), int(labels[i])) for i in sorted(train_index)]
        expected_validation = [(bytes(images[i]), int(labels[i])) for i in sorted(val_index)]
        assert _pairs(split.train) == expected_train and _pairs(split.validation) == expected_validation
        assert (split.num_train, split.num_validation) == (len(expected_train), len(expected_validation))


def test_image_folder_validation_split_is_the_salted_stateless_draw(tmp_path):
    """Image i (in the folder's class order) is a validation image when the stateless uniform draw i of the seed
    `[seed, 0x5A11]` (the salt, now `data.VALIDATION_SALT`) falls below the fraction: the split of every version."""
    from helpers import image_folder

    from supcon_tf.config import RunConfig

    assert data.VALIDATION_SALT == 0x5A11
    config = RunConfig.from_flat(dataset="folder", data_dir=image_folder(tmp_path, {"a": 7, "b": 6}), image_size=8)
    source, size, num_classes = data.load_source(config, "train")
    everything = _pairs(source)
    assert (size, num_classes, len(everything)) == (13, 2, 13)
    for seed, fraction in ((0, 0.3), (5, 0.5)):
        draws = tf.random.stateless_uniform([size], seed=[seed, 0x5A11]).numpy()
        split = data.split_train_validation(config, fraction, seed)
        assert _pairs(split.validation) == [p for p, d in zip(everything, draws) if d < fraction]
        assert _pairs(split.train) == [p for p, d in zip(everything, draws) if not d < fraction]
        assert split.num_validation == int(np.sum(draws < fraction)) and split.num_classes == 2


def test_run_data_functions_refuse_bad_input():
    from supcon_tf.config import RunConfig

    with pytest.raises(ValueError, match="`config` must be a RunConfig, received: dict"):
        data.load_source({"dataset": "digits"}, "train")
    with pytest.raises(ValueError, match=r"`split` must be one of \('train', 'test'\), received: split='validation'"):
        data.load_source(RunConfig(), "validation")
    with pytest.raises(ValueError, match="`config` must be a RunConfig"):
        data.class_names("digits")
    with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*31\), received: seed=-1"):
        data.split_train_validation(RunConfig(), 0.2, -1)
    with pytest.raises(ValueError, match="`validation_fraction` must be in"):
        data.split_train_validation(RunConfig(), 1.5, 0)
