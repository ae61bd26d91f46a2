"""A run's data, from its config: the source of each split, the class names, and the validation split.

These read the data settings of a `RunConfig` (`config.data`: `dataset`,
`data_dir`, `labels_file`, `image_size`, `channels`, `num_classes`; the
`method`; the loss options that read a labels file) and give sources in the
form of `sources` (`(image uint8 [H, W, C], label)` datasets: int32 class
ids, or a labels file's float32 multi-hot or continuous rows):
`load_source(config, split)`, `class_names(config)` (from the training
split: every other split, the probe and the exports use them) and
`split_train_validation(config, fraction, seed)` (a validation split carved
from the TRAIN split; the test split is never read). Each calls the loaders
through the `sources` module, so a test that patches `sources.load_digits`
sees every read.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import tensorflow as tf

from supcon_tf._checks import seed as _check_seed
from supcon_tf.config import TFDS_DATASETS, RunConfig
from supcon_tf.data import labels_file, sources

__all__ = ["VALIDATION_SALT", "TrainValidationSplit", "class_names", "load_source", "split_train_validation"]

# The second word of the stateless seed `[seed, VALIDATION_SALT]` of an image folder's validation draws: a fixed
# constant of its own, so those draws differ from the other uses of the run's seed (weights, augmentation), and
# the same `seed` gives the same split in every version (it was the literal 0x5A11 in runner.py).
VALIDATION_SALT = 0x5A11


def _check_config(config):
    if not isinstance(config, RunConfig):
        raise ValueError(f"`config` must be a RunConfig, received: {type(config).__name__}")


def _check_labels_kind(config, kind):
    """A labels file's kind ("labels": multi-hot, "value": continuous) against the loss options that read it."""
    path, loss = config.data.labels_file, config.loss
    if kind == "value" and loss.label_kernel is None:  # float ids would make positives of equal values only
        raise ValueError(
            f"`labels_file` {path} holds continuous values, which need a label kernel: add --label_kernel gaussian "
            "--kernel_bandwidth B (B in label units), received: label_kernel=None"
        )
    if kind == "labels" and loss.label_kernel is not None:
        raise ValueError(
            f"`label_kernel`={loss.label_kernel!r} reads continuous values, but `labels_file` {path} holds class names "
            "(multi-hot): use --positive_weighting jaccard or --multi_label per_label, or a path,value file"
        )
    named = loss.positive_weighting or loss.multi_label
    if kind == "value" and named:
        raise ValueError(
            f"positive_weighting / multi_label read multi-hot labels, but `labels_file` {path} holds continuous "
            f"values, received: positive_weighting={loss.positive_weighting!r}, multi_label={loss.multi_label!r}"
        )


def load_source(config, split):
    """`(dataset of (uint8 [H, W, C], int32 label), num_examples or None, num_classes)` for `split`.

    Image folders: the classes are the sub-folders of `<data_dir>/<split>`;
    an empty class folder, or fewer than two classes for a method that needs
    labels (supcon, ce, linear), is a ValueError naming the folder. With
    `labels_file`, the split's images are the file's rows under `<split>/`,
    with float32 multi-hot or continuous labels (`labels_file.load_labelled_images`).
    """
    _check_config(config)
    if split not in sources.SPLITS:
        raise ValueError(f"`split` must be one of {sources.SPLITS}, received: split={split!r}")
    if config.data.dataset == "digits":
        images, labels = sources.load_digits(split)
        return sources.from_arrays(images, labels), len(images), sources.DIGITS_NUM_CLASSES
    if config.data.dataset in TFDS_DATASETS:
        tfds_split = {"train": "train", "test": "test" if config.data.dataset != "imagenet2012" else "validation"}[split]
        dataset, info = sources.load_tfds(config.data.dataset, tfds_split, data_dir=config.data.data_dir)
        size = config.data.image_size
        dataset = dataset.map(
            lambda image, label: (
                tf.cast(tf.clip_by_value(tf.image.resize(image, (size, size)), 0, 255), tf.uint8),
                label,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return dataset, info.splits[tfds_split].num_examples, info.features["label"].num_classes
    if config.data.labels_file:  # the images a labels file lists, with its multi-hot or continuous labels
        labelled = labels_file.load_labelled_images(
            config.data.data_dir, config.data.labels_file, split, image_size=config.data.image_size, channels=config.data.channels or 3
        )
        _check_labels_kind(config, labelled.kind)
        classes = None if labelled.class_names is None else len(labelled.class_names)
        return labelled.dataset, labelled.num_examples, config.data.num_classes or classes
    # Image folder: <data_dir>/<train|test>/<class>/*.png|jpg; every split takes the training split's class ids.
    root = os.path.join(config.data.data_dir, split)
    _check_folder_layout(config.data.data_dir, split)
    training_names = None if split == "train" else class_names(config)
    dataset, class_names_found = sources.load_image_folder(
        root, image_size=config.data.image_size, channels=config.data.channels or 3, class_names=training_names
    )
    class_names_found = list(class_names_found)
    if len(class_names_found) < 2 and config.method != "simclr":
        remedy = (
            "use --method simclr for unlabelled images" if config.method == "supcon"
            else "a classifier needs images of at least 2 classes"
        )
        raise ValueError(
            f"image folder {root!r} has {len(class_names_found)} class folder ({', '.join(class_names_found)}): "
            f"method {config.method!r} needs at least 2 classes (one sub-folder per class); {remedy}"
        )
    return dataset, int(dataset.cardinality().numpy()), config.data.num_classes or len(class_names_found)


FOLDER_LAYOUT = "DATA_DIR/train/<class>/*.png|jpg (and DATA_DIR/test/<class>/ for a classifier's test evaluation)"


def _check_folder_layout(data_dir, split):
    """A missing `data_dir`, one without its `split` folder: distinct FileNotFoundErrors with the expected layout."""
    if not os.path.isdir(data_dir):
        what = "is a file, not a folder" if os.path.exists(data_dir) else "does not exist"
        raise FileNotFoundError(f"`data_dir` {data_dir} {what}; an image folder dataset is laid out as {FOLDER_LAYOUT}")
    if not os.path.isdir(os.path.join(data_dir, split)):
        entries = sorted(os.listdir(data_dir))
        holds = "is empty" if not entries else f"holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}"
        raise FileNotFoundError(
            f"`data_dir` {data_dir} has no {split}/ folder (it {holds}); an image folder dataset is laid out as "
            f"{FOLDER_LAYOUT}"
        )


def class_names(config):
    """The class names in id order, from the TRAINING split: every other split, the probe and exports use them.

    Digits: "0" ... "9". TFDS: the label feature's names. Image folders: the
    sorted class sub-folders of `<data_dir>/train`; with a labels file, the
    classes its train rows name (none for continuous labels).
    """
    _check_config(config)
    if config.data.dataset == "digits":
        return [str(label) for label in range(sources.DIGITS_NUM_CLASSES)]
    if config.data.dataset in TFDS_DATASETS:
        _, info = sources.load_tfds(config.data.dataset, "train", data_dir=config.data.data_dir)
        return [str(name) for name in info.features["label"].names]
    if config.data.labels_file:  # multi-hot: the classes the training rows use; continuous labels have none
        labelled = labels_file.load_labelled_images(
            config.data.data_dir, config.data.labels_file, "train", image_size=config.data.image_size, channels=config.data.channels or 3
        )
        return list(labelled.class_names or [])
    root = os.path.join(config.data.data_dir, "train")
    return list(sources.load_image_folder(root, image_size=config.data.image_size, channels=config.data.channels or 3)[1])


class TrainValidationSplit(NamedTuple):
    """Sources `(image uint8, label)` carved from the training split, with their sizes."""

    train: object
    validation: object
    num_train: int
    num_validation: int
    num_classes: int


def split_train_validation(config, fraction, seed):
    """Carves a validation split out of the dataset's TRAIN split (the test split is never read).

    Digits: a stratified split (`sklearn.model_selection.train_test_split`
    with `random_state=seed`) of `load_digits("train")`. TFDS: the first
    `fraction` of the training source (TFDS stores training files
    shuffled). Image folders (stored in class order): each image goes to the
    validation split when a stateless uniform draw seeded by `(seed, its
    index)` falls below `fraction`.
    """
    _check_config(config)
    seed = _check_seed(seed)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`validation_fraction` must be in (0, 1), received: validation_fraction={fraction!r}")
    if config.data.dataset == "digits":
        from sklearn.model_selection import train_test_split

        images, labels = sources.load_digits("train")
        train_index, val_index = train_test_split(
            range(len(labels)), test_size=fraction, random_state=seed, stratify=labels
        )
        train_index, val_index = sorted(train_index), sorted(val_index)
        return TrainValidationSplit(
            sources.from_arrays(images[train_index], labels[train_index]),
            sources.from_arrays(images[val_index], labels[val_index]),
            len(train_index),
            len(val_index),
            sources.DIGITS_NUM_CLASSES,
        )
    source, size, num_classes = load_source(config, "train")
    if not size:
        raise ValueError(f"the training split of {config.data.dataset!r} has unknown size; cannot carve a validation split")
    if config.data.dataset in TFDS_DATASETS:
        num_validation = max(1, int(round(fraction * size)))
        return TrainValidationSplit(
            source.skip(num_validation), source.take(num_validation), size - num_validation, num_validation, num_classes
        )
    draws = tf.random.stateless_uniform([size], seed=[seed, VALIDATION_SALT])
    is_validation = draws < fraction
    flags = tf.data.Dataset.from_tensor_slices(is_validation)

    num_validation = int(tf.reduce_sum(tf.cast(is_validation, tf.int32)))
    if not 0 < num_validation < size:
        raise ValueError(
            f"`validation_fraction` {fraction} leaves an empty split of the {size} training images; choose another"
        )

    def pick(want, count):
        kept = tf.data.Dataset.zip((source, flags)).filter(lambda item, in_validation: tf.equal(in_validation, want))
        # A filter's size is unknown to tf.data; stated, Keras knows where an evaluation ends (without it, it
        # warns "Your input ran out of data" at the end of the first validation).
        return kept.map(lambda item, in_validation: item).apply(tf.data.experimental.assert_cardinality(count))

    return TrainValidationSplit(
        pick(False, size - num_validation), pick(True, num_validation), size - num_validation, num_validation,
        num_classes,
    )
