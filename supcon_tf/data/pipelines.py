"""Input pipelines: a source (`supcon_tf.data.sources`) in, batches out.

* `make_multiview_dataset`: training batches `(views [B, V, H', W', C]
  float32 in [0, 1], labels [B] int32)`, V independently augmented views per
  sample (Khosla et al. 2020, Sec. 3.1: "multiviewed batch"); with
  `augment_on="device"`, `((images [B, H, W, C], view_seeds int64 [B, V, 2]),
  labels)` instead, for a model that augments inside its train step
  (`augment_views`, `batch_view_seeds`);
* `make_class_balanced_dataset`: the same batches drawn P classes x K
  samples per class (`class_balanced_indices`), for small batches;
* `make_eval_dataset`: evaluation batches `(images [B, H', W', C] float32 in
  [0, 1], labels [B] int32)`, resized only;
* `make_feature_batches`: shuffled batches of in-memory features (the cached
  linear probe);
* `collect`: runs a forward function over a dataset of batches;
* `batch_view_seeds` and `augment_views`: the per-view seeds of a batch and
  the views they give, shared by the host pipeline and the device train step.

The training streams are resumable: batch `k` is a pure function of
`(seed, k)` (stateless per-pass shuffles, `_shuffle_pass`, and stateless
per-batch augmentation seeds, `_add_views`), so `start_batch` rebuilds the
stream from any batch without replaying the ones before it.
"""

import numpy as np
import tensorflow as tf

from supcon_tf._checks import boolean as _check_bool
from supcon_tf._checks import is_int as _is_int
from supcon_tf._checks import choice as _check_choice
from supcon_tf._checks import non_negative_int as _check_non_negative_int
from supcon_tf._checks import positive_int as _check_positive_int
from supcon_tf._checks import seed as _check_seed
from supcon_tf.data._checks import AUGMENT_ON
from supcon_tf.data._checks import check_source as _check_source
from supcon_tf.data._checks import check_view_stream as _check_view_stream

from supcon_tf import augment as augment_lib

__all__ = [
    "AUGMENT_ON",
    "augment_views",
    "batch_view_seeds",
    "make_multiview_dataset",
    "class_balanced_indices",
    "make_class_balanced_dataset",
    "make_eval_dataset",
    "make_feature_batches",
    "collect",
]

# Second word of the pipeline's base seed, so that its stateless draws do not
# coincide with those of a caller who seeds augmentations with `[seed, 0]`.
_PIPELINE_SEED_SALT = 0x5C0

_MAX_PASSES = 2**62  # "forever" for Dataset.range
_SHUFFLE_SEED_SALT = 0x5EED


def batch_view_seeds(seed, batch_index, num_views):
    """The stateless seeds of the `num_views` views of batch `batch_index` of a training stream seeded `seed`.

    Batch `i` gets `fold_in([seed, salt], i)`, split into one sub-seed per
    view (`stateless_split`): every training stream (host or device
    augmentation, local or through the tf.data service) draws its views
    from these seeds.

    Args:
      seed: int in [0, 2**31), the stream's seed.
      batch_index: int64 scalar (tensor or int), the batch's index in the stream.
      num_views: int >= 1.

    Returns:
      int64 `[num_views, 2]`.
    """
    base_seed = tf.constant([seed, _PIPELINE_SEED_SALT], tf.int64)
    batch_seed = tf.random.experimental.stateless_fold_in(base_seed, tf.cast(batch_index, tf.int64))
    return tf.random.experimental.stateless_split(batch_seed, num_views)


def augment_views(images, view_seeds, augment):
    """`augment` called once per view on the whole batch: `[B, H, W, C]` -> views float32 `[B, V, H', W', C]`.

    View `v` is `augment(images, view_seeds[v])` (a pure function of the
    images and the seed). The host pipeline calls this in `tf.data`, the
    models (`augment_on="device"`) in their train step.

    Args:
      images: `[B, H, W, C]` uint8 (or float in [0, 1]).
      view_seeds: int `[V, 2]`, one stateless seed per view (`batch_view_seeds`).
      augment: callable `(images, seed [2]) -> [B, H', W', C]` float in [0, 1].

    Returns:
      float32 `[B, V, H', W', C]`.
    """
    view_seeds = tf.convert_to_tensor(view_seeds)
    if view_seeds.shape.rank != 2 or view_seeds.shape[0] is None or view_seeds.shape[1] != 2:
        raise ValueError(
            f"`view_seeds` must be [V, 2] with V known statically, received: view_seeds with shape {view_seeds.shape}"
        )
    views = []
    for view in range(view_seeds.shape[0]):
        out = tf.convert_to_tensor(augment(images, view_seeds[view]))
        if out.shape.rank != 4:
            raise ValueError(
                f"`augment` must return images [B, H', W', C], received: augment={augment!r} returning shape "
                f"{out.shape}"
            )
        views.append(tf.cast(out, tf.float32))
    return tf.stack(views, axis=1)


def _device_images(images):
    """`images` with their height and width left out of the static shape (`[B, None, None, C]`), values unchanged.

    Why: TensorFlow optimises a train step's graph with Grappler, but not a
    tf.data map function. With a static image size, Grappler's constant
    folding precomputes the size-derived part of the crop geometry, and the
    results differ in the last bits (measured on CPU: SimCLR views up to 4e-6
    away from the host pipeline's; equal with constant folding switched off).
    Left dynamic, the size is read at run time, as in the pipeline, and the
    SimCLR and NoAugment views are the host's to the bit. Grappler may still
    fold a policy's own constants: AutoAugment's and Stacked RandAugment's
    views differed by up to 1e-6, and RandAugment's, where such a difference
    can cross a posterize or solarize threshold, by up to 6/255 in a few
    pixels (same draws, same distribution).
    """
    shape = images.shape
    return tf.compat.v1.placeholder_with_default(images, [shape[0], None, None, shape[-1]])


def _batch_element(index, images, labels, *, num_views, augment, seed, augment_on):
    """Batch `index` of a training stream: `(views, labels)` ("host") or `((images, view_seeds), labels)` ("device").

    `view_seeds` is int64 `[B, V, 2]`, every row the batch's `batch_view_seeds`:
    a tf.distribute strategy splits every tensor of a batch along axis 0, so
    each replica receives the seeds with its rows.
    """
    view_seeds = batch_view_seeds(seed, index, num_views)
    labels = tf.cast(labels, tf.int32 if labels.dtype.is_integer else tf.float32)  # float: a labels file's rows
    if augment_on == "host":
        return augment_views(images, view_seeds, augment), labels
    rows = tf.tile(view_seeds[tf.newaxis], [tf.shape(images)[0], 1, 1])
    return (_device_images(images), rows), labels


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
    augment_on="host",
    shard=None,
    with_index=False,
):
    """Builds the training pipeline: shuffle -> batch -> (repeat) -> V augmented views per sample.

    Each batch `i` (counted from 0 over the whole, possibly repeated, stream)
    gets the stateless seed `fold_in([seed, salt], i)`, split into one
    sub-seed per view; `augment` is called once per view on the whole batch,
    so the views are independent and the work is vectorised. The same
    arguments give exactly the same batches, every run, whatever TF's global
    seed: the shuffle is a stateless permutation seeded with `seed`. With
    `repeat`, every pass over the data is reshuffled: the order of pass `p`
    is a pure function of `(seed, p)` (`_shuffle_pass`), so any batch of the
    stream can be rebuilt without replaying the ones before it.

    `start_batch` resumes the stream: the result equals the full stream with
    its first `start_batch` batches dropped (same images, same augmentation
    seeds). Only the passes from `start_batch // batches_per_pass` on are
    built, and at most one pass's worth of un-augmented batches is skipped,
    so resuming a long run costs at most one pass of reading, never
    augmentation.

    `augment_on="device"` leaves the augmentation to the model's train step
    (`models.SupConModel`, `models.CrossEntropyModel` and `models.LinearProbe`
    with `set_view_augmentation(augment)`): each batch carries the images as
    the source gives them (uint8 for every bundled source: a quarter of the
    bytes of one float32 view) and the seeds of its views, exactly those the
    host pipeline uses for that batch, so the same model on one device sees
    the same views either way.

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
      augment_on: "host" (the views are made here) or "device" (the batches
        carry images and view seeds; the model makes the views).
      shard: None, or `(num_shards, shard_index)`: keep only the batches `k`
        with `(k - start_batch) % num_shards == shard_index`, dropped before
        they are augmented (the tf.data service's static sharding by batch;
        `tf.data.experimental.SHARD_HINT` for both lets the service fill them
        in on each worker).
      with_index: also yield the batch index `k` first, `(k, ...)`.

    Returns:
      A `tf.data.Dataset` of `(views float32 [B, V, H', W', C], labels int32
      [B])` ("host") or `((images [B, H, W, C], view_seeds int64 [B, V, 2]),
      labels int32 [B])` ("device"; every row of `view_seeds` is the batch's
      `batch_view_seeds`, and the images keep the source's dtype with their
      height and width left out of the static shape, see `_device_images`),
      prefetched.
    """
    num_views, seed, repeat, start_batch, augment_on = _check_view_stream(
        dataset, num_views=num_views, augment=augment, seed=seed, repeat=repeat, start_batch=start_batch,
        augment_on=augment_on,
    )
    batch_size = _check_positive_int(batch_size, "batch_size")
    shuffle_buffer = _check_positive_int(shuffle_buffer, "shuffle_buffer")
    shuffle = _check_bool(shuffle, "shuffle")
    drop_remainder = _check_bool(drop_remainder, "drop_remainder")

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
    return _add_views(
        batches, num_views=num_views, augment=augment, seed=seed, start_batch=start_batch, augment_on=augment_on,
        shard=_check_shard(shard), with_index=_check_bool(with_index, "with_index"),
    )


def _check_shard(shard):
    """None, or `(num_shards, shard_index)`: ints with 0 <= index < num_shards, or both `SHARD_HINT`."""
    if shard is None:
        return None
    hint = tf.data.experimental.SHARD_HINT
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and all(_is_int(v) for v in shard)
    if ok and tuple(shard) != (hint, hint):
        ok = 0 <= shard[1] < shard[0]
    if not ok:
        raise ValueError(
            "`shard` must be None or (num_shards, shard_index) with 0 <= shard_index < num_shards (or both "
            f"tf.data.experimental.SHARD_HINT), received: shard={shard!r}"
        )
    return int(shard[0]), int(shard[1])


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


def _add_views(batches, *, num_views, augment, seed, start_batch=0, augment_on="host", shard=None, with_index=False):
    """`(images [B, ...], labels [B])` batches -> the stream's elements (`_batch_element`), prefetched.

    Batch `i` of the stream gets the seeds `batch_view_seeds(seed, i,
    num_views)`; `batches` starts at batch `start_batch`. "host": `(views
    float32 [B, V, ...], labels int32 [B])`; "device": `((images, view_seeds
    [B, V, 2]), labels)`.
    """
    _check_choice(augment_on, "augment_on", AUGMENT_ON)

    def make_element(index, batch):
        images, labels = batch
        element = _batch_element(
            index, images, labels, num_views=num_views, augment=augment, seed=seed, augment_on=augment_on
        )
        return (index, *element) if with_index else element

    batches = batches.enumerate(start=start_batch)
    if shard is not None:  # before the views: a shard augments only its own batches
        batches = batches.shard(*shard)
    batches = batches.map(make_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
    epoch = _check_non_negative_int(epoch, "epoch")
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
    augment_on="host",
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
      augment: callable `(images [B, H, W, C], seed int64 [2]) -> [B, H', W', C]`
        (not called, and may be None, with `augment_on="device"`).
      seed: int in [0, 2**31), seeds the sampler and the augmentations.
      repeat: draw epochs forever (each reshuffled); else one epoch.
      start_batch: int >= 0, the first batch to produce; the result equals
        the full stream without its first `start_batch` batches (resume).
      augment_on: "host" or "device", as in `make_multiview_dataset`.

    Returns:
      A `tf.data.Dataset` of `(views float32 [P*K, V, H', W', C], labels
      int32 [P*K])`, or with `augment_on="device"` `((images [P*K, H, W, C],
      view_seeds int64 [P*K, V, 2]), labels int32 [P*K])`, prefetched.
    """
    num_views, seed, repeat, start_batch, augment_on = _check_view_stream(
        dataset, num_views=num_views, augment=augment, seed=seed, repeat=repeat, start_batch=start_batch,
        augment_on=augment_on,
    )
    classes_per_batch = _check_positive_int(classes_per_batch, "classes_per_batch")
    samples_per_class = _check_positive_int(samples_per_class, "samples_per_class")
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
    return _add_views(
        batches, num_views=num_views, augment=augment, seed=seed, start_batch=start_batch, augment_on=augment_on
    )


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
