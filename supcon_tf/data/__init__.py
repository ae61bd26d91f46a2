"""Dataset sources (bundled digits, TFDS, image folders, arrays) and the n-view input pipelines.

One module per side:

* `sources`: the sources. A source is a `tf.data.Dataset` of `(image, label)`
  pairs, `image` uint8 `[H, W, C]` (C in {1, 3}) and `label` int32 scalar,
  together with its number of classes and image shape (module constants for
  digits, `info` for TFDS, the class-name list for image folders):
  `load_digits`, `from_arrays`, `load_tfds`, `load_image_folder`;
* `pipelines`: sources into batches: `make_multiview_dataset` (training
  batches `(views [B, V, H', W', C] float32 in [0, 1], labels [B] int32)`, V
  independently augmented views per sample; Khosla et al. 2020, Sec. 3.1:
  "multiviewed batch"), `make_class_balanced_dataset` (the same batches drawn
  P classes x K samples per class, `class_balanced_indices`, for small
  batches), `make_eval_dataset` (`(images [B, H', W', C] float32 in [0, 1],
  labels [B] int32)`, resized only), `make_feature_batches` (the cached linear
  probe) and `collect`; the training streams' `augment_on="device"` yields
  `((images, view_seeds [B, V, 2]), labels)` for a model that augments in
  its train step, with the views' seeds (`batch_view_seeds`) and the views
  they give (`augment_views`) shared by both places;
* `splits`: a run's data from its `RunConfig`: `load_source(config, split)`,
  `class_names(config)` (from the training split) and
  `split_train_validation(config, fraction, seed)` (a validation split
  carved from the TRAIN split, `TrainValidationSplit`);
* `_checks`: the data-specific argument checks.

Every public name is re-exported here (`data.load_digits("train")`,
`data.make_multiview_dataset(...)`); `supcon_tf.data_service` builds on
those public functions only (its shards are `make_multiview_dataset(...,
shard=...)`), and `_digits_arrays` stays re-exported for the tests that
check the bundled copy against scikit-learn's. The pipelines call
their helpers inside `pipelines`, and `splits` calls the loaders inside
`sources`, so patch those there (a test that patches `data.load_digits`
affects only callers that go through this package).
"""

from supcon_tf.data import labels_file, pipelines, sources, splits
from supcon_tf.data.labels_file import LABELS_FILE_SUFFIXES, LabelledImages, load_labelled_images, read_labels_file
from supcon_tf.data.pipelines import (
    AUGMENT_ON,
    augment_views,
    batch_view_seeds,
    class_balanced_indices,
    collect,
    make_class_balanced_dataset,
    make_eval_dataset,
    make_feature_batches,
    make_multiview_dataset,
)
from supcon_tf.data.sources import (
    DIGITS_IMAGE_SHAPE,
    DIGITS_NUM_CLASSES,
    DIGITS_NUM_IMAGES,
    IMAGE_EXTENSIONS,
    SPLITS,
    _digits_arrays,
    from_arrays,
    load_digits,
    load_image_folder,
    load_tfds,
)

from supcon_tf.data.splits import (
    VALIDATION_SALT,
    TrainValidationSplit,
    class_names,
    load_source,
    split_train_validation,
)

__all__ = [*sources.__all__, *labels_file.__all__, *pipelines.__all__, *splits.__all__]
