"""Dataset sources (bundled digits, TFDS, image folders, arrays) and the n-view input pipeline.

Source convention: a source is a `tf.data.Dataset` of `(image, label)` pairs,
`image` uint8 `[H, W, C]` (C in {1, 3}) and `label` int32 scalar, together
with its number of classes and image shape (module constants for digits,
`info` for TFDS, the class-name list for image folders).

Pipelines turn a source into batches:

* `make_multiview_dataset`: training batches `(views [B, V, H', W', C]
  float32 in [0, 1], labels [B] int32)`, V independently augmented views per
  sample (Khosla et al. 2020, Sec. 3.1: "multiviewed batch");
* `make_class_balanced_dataset`: the same batches drawn P classes x K
  samples per class (`class_balanced_indices`), for small batches;
* `make_eval_dataset`: evaluation batches `(images [B, H', W', C] float32 in
  [0, 1], labels [B] int32)`, resized only.
"""

import functools
import numbers
import os

import numpy as np
import tensorflow as tf

from supcon_tf._checks import as_size as _as_size
from supcon_tf._checks import boolean as _check_bool
from supcon_tf._checks import is_int as _is_int
from supcon_tf._checks import non_negative_int as _check_non_negative_int
from supcon_tf._checks import positive_int as _check_positive_int
from supcon_tf._checks import seed as _check_seed

from supcon_tf import augment as augment_lib

DIGITS_NUM_CLASSES = 10
DIGITS_IMAGE_SHAPE = (8, 8, 1)
DIGITS_NUM_IMAGES = 1797

# File suffixes (lower case) that `load_image_folder` reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

SPLITS = ("train", "test")

# Second word of the pipeline's base seed, so that its stateless draws do not
# coincide with those of a caller who seeds augmentations with `[seed, 0]`.
_PIPELINE_SEED_SALT = 0x5C0


# ---------------------------------------------------------------------------
# Argument validation (private).
# ---------------------------------------------------------------------------





def _check_augment(augment):
    if not callable(augment):
        raise ValueError(
            "`augment` must be a callable (images, seed) -> images, "
            f"received: augment={augment!r}"
        )










def _check_source(dataset, name="dataset"):
    """Checks that `dataset` follows the source convention (image [H, W, C], integer label [])."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"`{name}` must be a tf.data.Dataset of (image, label) pairs, "
            f"received: {name} of type {type(dataset).__name__}"
        )
    spec = dataset.element_spec
    ok = (
        isinstance(spec, tuple)
        and len(spec) == 2
        and all(isinstance(s, tf.TensorSpec) for s in spec)
    )
    if ok:
        image_spec, label_spec = spec
        ok = (
            image_spec.shape.rank == 3
            and image_spec.shape[-1] in (1, 3)
            and (image_spec.dtype == tf.uint8 or image_spec.dtype.is_floating)
            and label_spec.shape.rank == 0
            and label_spec.dtype.is_integer
        )
    if not ok:
        raise ValueError(
            f"`{name}` must yield (image uint8 [H, W, C] with C in {{1, 3}}, label int scalar) "
            f"pairs, received: {name} with element_spec={spec!r}"
        )


# ---------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------


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
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, received: name={name!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a non-empty string, received: split={split!r}")
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


def load_image_folder(root, *, image_size=None, channels=3):
    """Reads a `root/<class>/<image>` folder tree as a source.

    Class ids are the indices of the sorted class directory names (hidden
    directories skipped); a class directory's images are the files (searched
    recursively) ending in .png, .jpg or .jpeg (any case), in sorted order.
    Every image is decoded once here, so that a corrupt file fails now, with
    its path, rather than mid-training; the dataset decodes again lazily.

    Args:
      root: path of the folder tree.
      image_size: None to keep the images' size (they must then all have the
        same size), or `(height, width)` / one int to resize (bilinear,
        antialiased, rounded back to uint8).
      channels: 1 or 3, the channels to decode to (grayscale/RGB conversion
        as TF's decoders do it).

    Returns:
      `(dataset, class_names)`: a `tf.data.Dataset` of `(image uint8 [H, W,
      channels], label int32 [])` in class then file order, and the sorted
      list of class names (its length is the number of classes).

    Raises:
      FileNotFoundError: `root` is not a directory.
      ValueError: no class directories, a class directory without images
        (it would silently become a class no sample has), a file that does not
        decode, or images of different sizes with `image_size=None`.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"`root` must be a path, received: root={root!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"`channels` must be 1 or 3, received: channels={channels!r}")
    if image_size is not None:
        image_size = _as_size(image_size, "image_size")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"`root` is not a directory, received: root={root!r}")

    class_names = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_names:
        raise ValueError(
            f"`root` must contain one sub-directory per class, received: root={root!r} "
            "with no sub-directories"
        )
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
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

    dataset = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset, class_names


# ---------------------------------------------------------------------------
# Pipelines.
# ---------------------------------------------------------------------------


def make_multiview_dataset(
    dataset,
    *,
    batch_size,
    num_views=2,
    augment,
    seed=0,
    shuffle=True,
    shuffle_buffer=10000,
    drop_remainder=True,
    repeat=False,
    start_batch=0,
):
    """Builds the training pipeline: shuffle -> batch -> (repeat) -> V augmented views per sample.

    Each batch `i` (counted from 0 over the whole, possibly repeated, stream)
    gets the stateless seed `fold_in([seed, salt], i)`, split into one
    sub-seed per view; `augment` is called once per view on the whole batch,
    so the views are independent and the work is vectorised. The same
    arguments give exactly the same batches, every run: the shuffle is seeded
    with `seed` too (tf.data combines it with TF's global seed, so keep that
    fixed as well, e.g. with `keras.utils.set_random_seed`). With `repeat`,
    every pass over the data is reshuffled: the order of pass `p` is a pure
    function of `(seed, p)` (stateless permutations, `_shuffle_pass`), so any batch of the stream can be rebuilt
    without replaying the ones before it.

    `start_batch` resumes the stream: the result equals the full stream with
    its first `start_batch` batches dropped (same images, same augmentation
    seeds). Only the passes from `start_batch // batches_per_pass` on are
    built, and at most one pass's worth of un-augmented batches is skipped,
    so resuming a long run costs at most one pass of reading, never
    augmentation.

    Args:
      dataset: a source: `(image [H, W, C] uint8 (or float in [0, 1]), label
        int [])`; all images must have the same size (resize in the source).
      batch_size: int >= 1, samples per batch (B).
      num_views: int >= 1, augmented views per sample (V; SupCon uses 2).
      augment: callable `(images [B, H, W, C], seed int64 [2]) -> [B, H', W',
        C]` float in [0, 1], e.g. `augment.SimCLRAugment(32)`.
      seed: int in [0, 2**31), seeds the shuffle and the augmentations.
      shuffle: whether to shuffle the samples before batching.
      shuffle_buffer: int >= 1, the shuffle window (>= dataset size for a
        uniform shuffle; see `_shuffle_pass`).
      drop_remainder: drop a last, smaller batch (keep True for training, and
        always under a distribution strategy, where batches must be equal).
      repeat: repeat the (reshuffled) passes forever.
      start_batch: int >= 0, the index of the first batch to produce (0:
        the start of the stream); used to resume training at a step.

    Returns:
      A `tf.data.Dataset` of `(views float32 [B, V, H', W', C], labels int32
      [B])`, prefetched.
    """
    _check_source(dataset)
    batch_size = _check_positive_int(batch_size, "batch_size")
    num_views = _check_positive_int(num_views, "num_views")
    shuffle_buffer = _check_positive_int(shuffle_buffer, "shuffle_buffer")
    _check_augment(augment)
    seed = _check_seed(seed)
    shuffle = _check_bool(shuffle, "shuffle")
    drop_remainder = _check_bool(drop_remainder, "drop_remainder")
    repeat = _check_bool(repeat, "repeat")
    start_batch = _check_non_negative_int(start_batch, "start_batch")

    def one_pass(pass_index):
        source = _shuffle_pass(dataset, shuffle_buffer, seed, pass_index) if shuffle else dataset
        return source.batch(batch_size, drop_remainder=drop_remainder)

    first_pass, skip = 0, start_batch
    if repeat:
        if start_batch:
            per_pass = _batches_per_pass(dataset, batch_size, drop_remainder)
            first_pass, skip = divmod(start_batch, per_pass)
        batches = tf.data.Dataset.range(first_pass, _MAX_PASSES).flat_map(one_pass)
    else:
        batches = one_pass(0)
    if skip:
        batches = batches.skip(skip)
    return _add_views(batches, num_views=num_views, augment=augment, seed=seed, start_batch=start_batch)


_MAX_PASSES = 2**62  # "forever" for Dataset.range
_SHUFFLE_SEED_SALT = 0x5EED


def _shuffle_pass(dataset, window, seed, pass_index):
    """Pass `pass_index` of `dataset`, shuffled as a pure function of `(seed, pass_index)`.

    The source is cut into consecutive windows of `window` elements, and
    each window is permuted with a stateless seed folded from `(seed,
    pass_index, window index)`. With `window` >= the data set size this is a
    uniform shuffle; otherwise, like a shuffle buffer of that size, it mixes
    locally (keep the source's own order random, as TFDS' shards are). A
    stateless permutation (rather than `Dataset.shuffle`, whose seed state
    advances with each pass) is what lets a resumed run rebuild pass `p`
    without replaying passes 0..p-1.
    """
    base = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, _SHUFFLE_SEED_SALT], tf.int64), tf.cast(pass_index, tf.int64)
    )

    def permute(window_index, elements):
        window_seed = tf.random.experimental.stateless_fold_in(base, window_index)
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(elements[1])[0]), seed=window_seed)
        return tuple(tf.gather(part, order) for part in elements)

    return dataset.batch(window).enumerate().map(permute).unbatch()


def _batches_per_pass(dataset, batch_size, drop_remainder):
    """Batches in one pass over `dataset` (counted once when its cardinality is unknown)."""
    size = int(dataset.cardinality().numpy())
    if size == tf.data.INFINITE_CARDINALITY:
        raise ValueError("`dataset` must be finite to resume a repeated stream, received: an infinite dataset")
    if size < 0:  # unknown: count it (reads the source once)
        size = int(dataset.reduce(np.int64(0), lambda count, _: count + 1).numpy())
    batches = size // batch_size if drop_remainder else -(-size // batch_size)
    if batches < 1:
        raise ValueError(
            f"`batch_size` must be at most the dataset size ({size}) with drop_remainder=True, "
            f"received: batch_size={batch_size}"
        )
    return batches


def _add_views(batches, *, num_views, augment, seed, start_batch=0):
    """`(images [B, ...], labels [B])` batches -> `(views float32 [B, V, ...], labels int32 [B])`, prefetched.

    Batch `i` of the stream gets the stateless seed `fold_in([seed, salt], i)`,
    split into one sub-seed per view; `batches` starts at batch `start_batch`.
    """
    base_seed = tf.constant([seed, _PIPELINE_SEED_SALT], tf.int64)

    def make_views(index, batch):
        images, labels = batch
        batch_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
        view_seeds = tf.random.experimental.stateless_split(batch_seed, num_views)
        views = []
        for view in range(num_views):
            out = tf.convert_to_tensor(augment(images, view_seeds[view]))
            if out.shape.rank != 4:
                raise ValueError(
                    "`augment` must return images [B, H', W', C], received: augment="
                    f"{augment!r} returning shape {out.shape}"
                )
            views.append(tf.cast(out, tf.float32))
        return tf.stack(views, axis=1), tf.cast(labels, tf.int32)

    batches = batches.enumerate(start=start_batch).map(
        make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def class_balanced_indices(labels, *, classes_per_batch, samples_per_class, seed=0, epoch=0):
    """One epoch of P x K batches: sample indices, P distinct classes with K samples each per batch.

    Every sample appears at least once per epoch. Per class, the samples are
    shuffled and cut into chunks of K; a class whose count is not a multiple
    of K tops its last chunk up with other samples of the same class (with
    repetition only when the class has fewer than K samples). With M =
    max(ceil(chunks / P), largest class's chunks) batches, the epoch is
    topped up with random extra chunks (at most M per class) to M * P chunks,
    which are then dealt out so that no batch holds a class twice: chunks
    listed class by class are striped over the batches (chunk j goes to
    batch j mod M). Finally the batches, and the samples inside each batch,
    are shuffled, so a per-replica slice of a batch mixes classes.

    Args:
      labels: `[N]` integer class ids (any values).
      classes_per_batch: P, int >= 1, at most the number of distinct labels.
      samples_per_class: K, int >= 1.
      seed: int in [0, 2**31).
      epoch: int >= 0; the epoch's shuffle is drawn from `(seed, epoch)`.

    Returns:
      int64 `[num_batches, P * K]` indices into `labels`; in each row P
      classes appear exactly K times each.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] < 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be a non-empty [N] integer array, received: labels with shape {labels.shape} "
            f"and dtype {labels.dtype}"
        )
    classes_per_batch = _check_positive_int(classes_per_batch, "classes_per_batch")
    samples_per_class = _check_positive_int(samples_per_class, "samples_per_class")
    seed = _check_seed(seed)
    if not _is_int(epoch) or epoch < 0:
        raise ValueError(f"`epoch` must be an int >= 0, received: epoch={epoch!r}")
    classes = np.unique(labels)
    if len(classes) < classes_per_batch:
        raise ValueError(
            f"`classes_per_batch` must be at most the number of classes in the data ({len(classes)}), "
            f"received: classes_per_batch={classes_per_batch}"
        )
    rng = np.random.default_rng([seed, int(epoch), _PIPELINE_SEED_SALT])
    k = samples_per_class
    members = {c: np.flatnonzero(labels == c) for c in classes}

    def random_chunk(c):
        return rng.choice(members[c], k, replace=len(members[c]) < k)

    chunks = {}
    for c in classes:
        order = rng.permutation(members[c])
        full, rest = divmod(len(order), k)
        class_chunks = [order[i * k : (i + 1) * k] for i in range(full)]
        if rest:
            last = order[full * k :]
            others = order[: full * k]
            fill = rng.choice(others, k - rest, replace=False) if len(others) >= k - rest else (
                rng.choice(order, k - rest, replace=True)
            )
            class_chunks.append(np.concatenate([last, fill]))
        chunks[c] = class_chunks
    num_batches = max(
        -(-sum(len(v) for v in chunks.values()) // classes_per_batch), max(len(v) for v in chunks.values())
    )
    missing = num_batches * classes_per_batch - sum(len(v) for v in chunks.values())
    if missing:
        # Extra chunks from classes with room (fewer than num_batches chunks), drawn uniformly over that room.
        room = np.concatenate([np.full(num_batches - len(chunks[c]), i) for i, c in enumerate(classes)])
        for i in rng.choice(room, missing, replace=False):
            chunks[classes[i]].append(random_chunk(classes[i]))
    ordered = [chunk for i in rng.permutation(len(classes)) for chunk in chunks[classes[i]]]
    # Chunk j -> batch j mod M: a class's (at most M, contiguous) chunks land in distinct batches.
    batches = np.stack(
        [np.concatenate(ordered[b::num_batches]) for b in range(num_batches)]
    ).astype(np.int64)
    batches = batches[rng.permutation(num_batches)]
    return np.stack([row[rng.permutation(len(row))] for row in batches])


def _materialize(dataset):
    """Reads a source once into NumPy `(images [N, H, W, C], labels [N])`."""
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(4096).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise ValueError("`dataset` must not be empty, received: a dataset with no elements")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def make_class_balanced_dataset(
    dataset,
    *,
    classes_per_batch,
    samples_per_class,
    num_views=2,
    augment,
    seed=0,
    repeat=False,
    start_batch=0,
):
    """Builds P x K training batches: P classes, K samples of each, V augmented views per sample.

    A class-balanced sampler gives every anchor K - 1 other samples (times V
    views) of its class in the batch, so small batches never leave an anchor
    without positives. Batches follow `class_balanced_indices` (every sample
    at least once per epoch; epochs reshuffled with `(seed, epoch)`), and
    the views are made exactly as in `make_multiview_dataset` (stateless
    per-batch seeds), so the same arguments give the same batches.

    The source is read into memory once (fine for digits and CIFAR; not for
    ImageNet-sized data), and the index stream is drawn in Python
    (`tf.data.Dataset.from_generator`), so the dataset cannot be serialised
    (e.g. for the tf.data service).

    Distribution strategies: the global batch is P * K samples (make it
    divisible by the number of replicas). Keras splits each batch into
    consecutive slices, one per replica; the samples inside a batch are in
    random order, so each replica gets a mix of classes, and with
    `SupConModel(cross_replica=True)` every anchor still sees all its
    positives in the gathered global batch. Under multi-worker training
    every worker draws the same batches (same seed) and keeps its slice
    (`distribute.shard_by_data`).

    Args:
      dataset: a source: `(image [H, W, C] uint8 (or float), label int [])`.
      classes_per_batch: P, int >= 1, at most the number of classes.
      samples_per_class: K, int >= 1.
      num_views: int >= 1, views per sample.
      augment: callable `(images [B, H, W, C], seed int64 [2]) -> [B, H', W', C]`.
      seed: int in [0, 2**31), seeds the sampler and the augmentations.
      repeat: draw epochs forever (each reshuffled); else one epoch.
      start_batch: int >= 0, the first batch to produce; the result equals
        the full stream without its first `start_batch` batches (resume).

    Returns:
      A `tf.data.Dataset` of `(views float32 [P*K, V, H', W', C], labels
      int32 [P*K])`, prefetched.
    """
    _check_source(dataset)
    classes_per_batch = _check_positive_int(classes_per_batch, "classes_per_batch")
    samples_per_class = _check_positive_int(samples_per_class, "samples_per_class")
    num_views = _check_positive_int(num_views, "num_views")
    _check_augment(augment)
    seed = _check_seed(seed)
    repeat = _check_bool(repeat, "repeat")
    start_batch = _check_non_negative_int(start_batch, "start_batch")
    images, labels = _materialize(dataset)
    # Fails now (not inside the generator) on too few classes.
    per_epoch = len(
        class_balanced_indices(labels, classes_per_batch=classes_per_batch, samples_per_class=samples_per_class, seed=seed)
    )
    batch_size = classes_per_batch * samples_per_class
    first_epoch, skip = divmod(start_batch, per_epoch) if repeat else (0, start_batch)

    def index_batches():
        epoch, to_skip = first_epoch, skip
        while True:
            batches = class_balanced_indices(
                labels,
                classes_per_batch=classes_per_batch,
                samples_per_class=samples_per_class,
                seed=seed,
                epoch=epoch,
            )
            yield from batches[to_skip:]
            if not repeat:
                return
            epoch, to_skip = epoch + 1, 0

    images = tf.convert_to_tensor(images)
    labels_tensor = tf.convert_to_tensor(labels.astype(np.int32))
    batches = tf.data.Dataset.from_generator(
        index_batches, output_signature=tf.TensorSpec([batch_size], tf.int64)
    ).map(
        lambda index: (tf.gather(images, index), tf.gather(labels_tensor, index)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return _add_views(batches, num_views=num_views, augment=augment, seed=seed, start_batch=start_batch)


def make_eval_dataset(dataset, *, batch_size, image_size):
    """Builds the evaluation pipeline: batch (keeping the remainder) -> deterministic resize.

    Args:
      dataset: a source: `(image [H, W, C] uint8 (or float in [0, 1]), label
        int [])`; all images must have the same size.
      batch_size: int >= 1.
      image_size: output `(height, width)`, or one int for a square output.

    Returns:
      A `tf.data.Dataset` of `(images float32 [B, H', W', C] in [0, 1],
      labels int32 [B])` in the source's order (the last batch may be
      smaller), prefetched.
    """
    _check_source(dataset)
    batch_size = _check_positive_int(batch_size, "batch_size")
    resize = augment_lib.NoAugment(image_size)
    dataset = dataset.batch(batch_size, drop_remainder=False)
    dataset = dataset.map(
        lambda images, labels: (resize(images), tf.cast(labels, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_feature_batches(features, labels, *, batch_size, seed=0, start_batch=0):
    """An endless stream of shuffled batches of in-memory `(features, labels)`, for the cached linear probe.

    Pass `p` over the data is a permutation that is a pure function of
    `(seed, p)`; each pass ends with a smaller batch when `batch_size` does
    not divide N, so one pass is `ceil(N / batch_size)` batches.
    `start_batch` drops the first batches of the stream (resume).

    Args:
      features: `[N, D]` float array.
      labels: `[N]` int array.
      batch_size: int >= 1.
      seed: int in [0, 2**31).
      start_batch: int >= 0.

    Returns:
      A `tf.data.Dataset` of `(features float32 [b, D], labels int32 [b])`.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1] or not len(labels):
        raise ValueError(
            "`features` must be [N, D] and `labels` [N] with N >= 1, received: "
            f"features shape {features.shape}, labels shape {labels.shape}"
        )
    batch_size = _check_positive_int(batch_size, "batch_size")
    seed = _check_seed(seed)
    start_batch = _check_non_negative_int(start_batch, "start_batch")
    count = len(labels)
    per_pass = -(-count // batch_size)
    first_pass, skip = divmod(start_batch, per_pass)
    features_tensor = tf.constant(features)
    labels_tensor = tf.constant(labels.astype(np.int32))
    base = tf.constant([seed, _SHUFFLE_SEED_SALT], tf.int64)

    def one_pass(pass_index):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.random.experimental.stateless_fold_in(base, pass_index)
        )
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    stream = tf.data.Dataset.range(first_pass, _MAX_PASSES).flat_map(one_pass).skip(skip)
    return stream.map(lambda index: (tf.gather(features_tensor, index), tf.gather(labels_tensor, index)))


def collect(forward, dataset, dtype=np.float32):
    """Runs `forward(images)` over `(images, labels)` batches; the outputs and labels as NumPy arrays.

    The one loop behind every "compute features / probabilities once"
    (`evaluation.extract_features`, `evaluation.predict_probabilities`,
    `models.LinearProbe.extract_features`).

    Args:
      forward: callable `images [B, ...] -> [B, ...]` (e.g. a `tf.function`).
      dataset: a `tf.data.Dataset` of `(images, labels)` batches.
      dtype: NumPy dtype of the returned outputs.

    Returns:
      `(outputs [N, ...] dtype, labels [N])`.
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"`dataset` must be a tf.data.Dataset, received: dataset={dataset!r}")
    outputs, labels = [], []
    for images, batch_labels in dataset:
        outputs.append(np.asarray(forward(images), dtype))
        labels.append(np.asarray(batch_labels))
    if not outputs:
        raise ValueError("`dataset` must not be empty, received: a dataset with no batches")
    return np.concatenate(outputs), np.concatenate(labels)
