"""Dataset sources: scikit-learn's bundled digits, in-memory arrays, TFDS, image folders.

A source is a `tf.data.Dataset` of `(image, label)` pairs, `image` uint8
`[H, W, C]` (C in {1, 3}) and `label` int32 scalar, together with its number
of classes and image shape (module constants for digits, `info` for TFDS,
the class-name list for image folders). `supcon_tf.data.pipelines` turns a
source into batches.
"""

import collections
import functools
import numbers
import os

import numpy as np
import tensorflow as tf

from supcon_tf._checks import as_size as _as_size
from supcon_tf._checks import boolean as _check_bool
from supcon_tf._checks import seed as _check_seed
from supcon_tf.data._checks import check_non_empty_string as _check_non_empty_string

__all__ = [
    "DIGITS_NUM_CLASSES",
    "DIGITS_IMAGE_SHAPE",
    "DIGITS_NUM_IMAGES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "load_digits",
    "from_arrays",
    "load_tfds",
    "load_image_folder",
]

DIGITS_NUM_CLASSES = 10
DIGITS_IMAGE_SHAPE = (8, 8, 1)
DIGITS_NUM_IMAGES = 1797

# File suffixes (lower case) that `load_image_folder` reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    """All 1,797 digits as (uint8 [N, 8, 8, 1], int32 [N]); read-only, cached."""
    from sklearn import datasets

    digits = datasets.load_digits()
    # sklearn's pixels are counts 0..16; scale to 0..255.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    labels = digits.target.astype(np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits(split, *, test_fraction=0.2, seed=0):
    """Returns one split of scikit-learn's bundled handwritten digits (offline).

    The split is stratified by class and fixed by `seed`
    (`sklearn.model_selection.train_test_split(..., stratify=labels)`), so
    "train" and "test" with the same `test_fraction` and `seed` partition the
    1,797 images. Each split keeps the images' original order.

    Args:
      split: "train" or "test".
      test_fraction: fraction of the images in the test split, in (0, 1); the
        test split gets `ceil(test_fraction * 1797)` images.
      seed: int in [0, 2**31), the split's random state.

    Returns:
      `(images, labels)` NumPy arrays: images uint8 `[N, 8, 8, 1]` (sklearn's
      0..16 scaled to 0..255 and rounded), labels int32 `[N]` in [0, 10).
      With the defaults: 1,437 train and 360 test images.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}, received: split={split!r}")
    if not isinstance(test_fraction, numbers.Real) or isinstance(test_fraction, bool):
        raise ValueError(
            f"`test_fraction` must be a number in (0, 1), received: test_fraction={test_fraction!r}"
        )
    num_test = int(np.ceil(test_fraction * DIGITS_NUM_IMAGES))
    if not 0.0 < test_fraction < 1.0 or not (
        DIGITS_NUM_CLASSES <= num_test <= DIGITS_NUM_IMAGES - DIGITS_NUM_CLASSES
    ):
        raise ValueError(
            "`test_fraction` must be in (0, 1) and leave each split at least one image per "
            f"class, received: test_fraction={test_fraction!r}"
        )
    seed = _check_seed(seed)

    from sklearn.model_selection import train_test_split

    images, labels = _digits_arrays()
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    index = np.sort(train_index if split == "train" else test_index)
    return images[index], labels[index]


def from_arrays(images, labels):
    """Wraps in-memory arrays as a source dataset.

    Args:
      images: uint8 `[N, H, W, C]`, N >= 1, C in {1, 3}.
      labels: integer `[N]`, values in [0, 2**31).

    Returns:
      A `tf.data.Dataset` of `(image uint8 [H, W, C], label int32 [])`.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(
            "`images` must be an array [N, H, W, C] with N >= 1 and C in {1, 3}, "
            f"received: images with shape={images.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(f"`images` must be uint8, received: images with dtype={images.dtype}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"`labels` must be an array [N] with N = {images.shape[0]} (the number of images), "
            f"received: labels with shape={labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be integers, received: labels with dtype={labels.dtype}")
    if labels.min() < 0 or labels.max() >= 2**31:
        raise ValueError(
            "`labels` must be in [0, 2**31), received: labels with "
            f"min={labels.min()} and max={labels.max()}"
        )
    return tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))


def load_tfds(name, split, *, data_dir=None, download=False):
    """Loads a prepared TensorFlow Datasets image-classification dataset as a source.

    With `download=False` (the default) nothing touches the network: when the
    prepared data is missing, this raises `FileNotFoundError` at once, saying
    how to prepare it elsewhere (`tfds.load` would instead retry downloads for
    minutes on an offline machine).

    Args:
      name: TFDS name, optionally with config and version ("cifar10",
        "cifar100:3.0.2").
      split: TFDS split string ("train", "test", "train[:10%]", ...).
      data_dir: TFDS data directory; None for TFDS's default
        (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      download: whether to download and prepare missing data (needs internet).

    Returns:
      `(dataset, info)`: a `tf.data.Dataset` of `(image uint8 [H, W, C], label
      int32 [])` in file order (not shuffled), and the `tfds.core.DatasetInfo`
      (`info.features["label"].num_classes`, `info.features["image"].shape`).

    Raises:
      ValueError: unknown dataset, version or split; a dataset without
        (image, label) supervised keys.
      FileNotFoundError: the data is not prepared in `data_dir` and
        `download` is False.
    """
    _check_non_empty_string(name, "name")
    _check_non_empty_string(split, "split")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"`data_dir` must be None or a path, received: data_dir={data_dir!r}")
    _check_bool(download, "download")
    data_dir = None if data_dir is None else os.fspath(data_dir)

    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (ValueError, AssertionError) as error:  # DatasetNotFoundError is a ValueError.
        raise ValueError(
            f"`name` is not a known TFDS dataset (or config/version), received: name={name!r}. "
            f"TFDS says: {str(error).splitlines()[0]}"
        ) from error

    if not builder.is_prepared():
        if download:
            builder.download_and_prepare()
        else:
            raise FileNotFoundError(_tfds_missing_message(name, data_dir, builder.data_dir))

    info = builder.info
    if info.supervised_keys is None or tuple(info.supervised_keys) != ("image", "label"):
        raise ValueError(
            "`name` must be an image-classification dataset with supervised keys "
            f"('image', 'label'), received: name={name!r} with "
            f"supervised_keys={info.supervised_keys!r}"
        )
    try:
        dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"`split` is not a split of {name!r} (splits: {sorted(info.splits)}), "
            f"received: split={split!r}"
        ) from error
    dataset = dataset.map(
        lambda image, label: (tf.cast(image, tf.uint8), tf.cast(label, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset, info


def _tfds_missing_message(name, data_dir, expected_dir):
    where = f"data_dir={data_dir!r}" if data_dir is not None else "TFDS's default data_dir"
    dir_arg = f", data_dir={data_dir!r}" if data_dir is not None else ""
    found = ""
    parent = os.path.dirname(expected_dir)
    if os.path.isdir(parent):
        versions = sorted(d for d in os.listdir(parent) if not d.startswith("."))
        if versions:
            found = (
                f" Found only {versions} in {parent!r}; pass name='{name}:<version>' to use one."
            )
    return (
        f"TFDS dataset {name!r} is not prepared in {where} (looked for {expected_dir!r}).{found} "
        "load_tfds does not download by default. Prepare it on a machine with internet:\n"
        f"  python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}'{dir_arg}).download_and_prepare()\"\n"
        "then copy the data directory to this machine, or call load_tfds(..., download=True)."
    )


def _decode_image_file(path, channels):
    """Decodes one file eagerly to uint8 `[H, W, channels]`; a corrupt file raises ValueError."""
    try:
        return tf.io.decode_image(
            tf.io.read_file(path), channels=channels, dtype=tf.uint8, expand_animations=False
        )
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"Cannot decode image file {path!r}: {message}") from error


def _check_class_names(class_names):
    """`class_names` as a list: a list or tuple of distinct non-empty str (a training split's names, in id order)."""
    if not isinstance(class_names, (list, tuple)) or not class_names:
        raise ValueError(
            "`class_names` must be a non-empty list or tuple of class names (the training split's, "
            f"in id order), received: class_names={class_names!r}"
        )
    bad = [name for name in class_names if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(
            f"`class_names` must hold non-empty strings, received: class_names={class_names!r} "
            f"(not a non-empty str: {', '.join(repr(name) for name in bad)})"
        )
    duplicates = [name for name, count in collections.Counter(class_names).items() if count > 1]
    if duplicates:
        raise ValueError(
            f"`class_names` must be distinct (one id per class), received: class_names={class_names!r} "
            f"(repeated: {', '.join(repr(name) for name in duplicates)})"
        )
    return list(class_names)


def load_image_folder(root, *, image_size=None, channels=3, class_names=None):
    """Reads a `root/<class>/<image>` folder tree as a source.

    Without `class_names`, class ids are the indices of the sorted class
    directory names (hidden directories skipped). That numbering is this
    folder's own: a test split that lacks one of the training classes would
    number the others differently, so load every split but the training one
    with `class_names=<the training split's class names>`, which gives each
    class directory the id of its name in that list. A class directory's
    images are the files (searched recursively) ending in .png, .jpg or .jpeg
    (any case), in sorted order. Every image is decoded once here, so that a
    corrupt file fails now, with its path, rather than mid-training; the
    dataset decodes again lazily.

    Args:
      root: path of the folder tree.
      image_size: None to keep the images' size (they must then all have the
        same size), or `(height, width)` / one int to resize (bilinear,
        antialiased, rounded back to uint8).
      channels: 1 or 3, the channels to decode to (grayscale/RGB conversion
        as TF's decoders do it).
      class_names: None (ids from this folder's sorted class directories), or
        the training split's class names in id order (a non-empty list/tuple
        of distinct non-empty str): a class directory named
        `class_names[i]` gets label i. Every class directory must be in the
        list; `root` may lack some of the listed classes (their ids then have
        no sample here).

    Returns:
      `(dataset, class_names)`: a `tf.data.Dataset` of `(image uint8 [H, W,
      channels], label int32 [])` in class (id) then file order, and the list
      of class names in id order, whose length is the number of classes: the
      sorted class directory names, or, with `class_names`, a copy of that
      list (also the classes `root` lacks).

    Raises:
      FileNotFoundError: `root` is not a directory.
      ValueError: no class directories, a class directory without images
        (it would silently become a class no sample has), a class directory
        whose name is not in `class_names`, a file that does not decode,
        images of different sizes with `image_size=None`, or a bad argument.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"`root` must be a path, received: root={root!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"`channels` must be 1 or 3, received: channels={channels!r}")
    if image_size is not None:
        image_size = _as_size(image_size, "image_size")
    if class_names is not None:
        class_names = _check_class_names(class_names)
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"`root` is not a directory, received: root={root!r}")

    folder_names = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not folder_names:
        raise ValueError(
            f"`root` must contain one sub-directory per class, received: root={root!r} "
            "with no sub-directories"
        )
    if class_names is None:
        class_names = folder_names
    else:
        unknown = [name for name in folder_names if name not in class_names]
        if unknown:
            raise ValueError(
                f"image folder {root!r} has class folder{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(name) for name in unknown)} that the training split does not have "
                f"(training classes: {', '.join(class_names)}); every class folder must be one of "
                "`class_names`"
            )
    present = set(folder_names)
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        if class_name not in present:  # a training class this split lacks
            continue
        class_files = []
        for directory, subdirectories, files in os.walk(os.path.join(root, class_name)):
            subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
            class_files.extend(
                os.path.join(directory, f)
                for f in files
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
            )
        class_files.sort()
        if not class_files:
            raise ValueError(
                f"class folder {os.path.join(root, class_name)!r} has no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder (every sub-folder of "
                f"`root` is a class)"
            )
        paths.extend(class_files)
        labels.extend([label] * len(class_files))
    if not paths:
        raise ValueError(
            f"`root` has no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class directories "
            f"{class_names}, received: root={root!r}"
        )

    return image_files_dataset(paths, np.asarray(labels, np.int32), image_size, channels), class_names


def image_files_dataset(paths, labels, image_size, channels):
    """`(image uint8 [H, W, channels], label)` for image files `paths` and their `labels` (an array, one row each).

    Every file is decoded once here, so that a corrupt file fails now, with
    its path; the dataset decodes again lazily, and resizes to `image_size`
    (`(height, width)`, bilinear, antialiased, rounded back to uint8) when
    it is not None, else the images must all have one size (ValueError
    naming two files that differ).
    """
    first_shape = None
    for path in paths:
        shape = tuple(_decode_image_file(path, channels).shape)
        if first_shape is None:
            first_shape = (shape, path)
        elif image_size is None and shape != first_shape[0]:
            raise ValueError(
                "Images differ in size and `image_size` is None: "
                f"{first_shape[1]!r} is {first_shape[0]}, {path!r} is {shape}. "
                "Pass `image_size` to resize them, received: image_size=None"
            )
    out_shape = (*image_size, channels) if image_size is not None else first_shape[0]

    def load(path, label):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=channels, dtype=tf.uint8, expand_animations=False
        )
        if image_size is not None:
            image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return tf.ensure_shape(image, out_shape), label

    dataset = tf.data.Dataset.from_tensor_slices((list(paths), labels))
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
