"""The validation curve every report run records: kNN top-1 of its encoder on the validation split, per epoch.

`ValidationCurve` is a Keras callback handed to `runner.run(callbacks=...)`.
After each epoch it embeds the run's training part (the memory) and its
validation split (both carved from the TRAIN split by
`supcon_tf.data.split_train_validation` with the run's seed) with the encoder in
inference mode, classifies the validation images by weighted kNN
(`supcon_tf.evaluation.knn_top1`) and writes `validation_curve.json` into the run
folder: one record per epoch with `knn_top1`, the epoch's `val_accuracy`
when the stage logs one (CE), and the seconds the monitor itself took
(subtracted from training time in the equal-time comparison). A resumed run
keeps the records of the epochs it does not repeat.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

CURVE_FILE = "validation_curve.json"

_SPLITS = {}


def split_arrays(stage):
    """`(train images, train labels, validation images, validation labels)` of `stage`'s split, as model inputs.

    Cached per (dataset, image size, fraction, seed); never reads the test split.
    """
    from supcon_tf import data, runner

    key = (stage.data.dataset, stage.data.image_size, stage.evaluation.validation_fraction, stage.runtime.seed)
    if key not in _SPLITS:
        split = data.split_train_validation(stage, stage.evaluation.validation_fraction, stage.runtime.seed)
        arrays = []
        for source, size in ((split.train, split.num_train), (split.validation, split.num_validation)):
            images, labels = next(iter(runner.eval_dataset(stage, source, batch_size=size)))
            arrays += [np.asarray(images), np.asarray(labels)]
        _SPLITS[key] = tuple(arrays)
    return _SPLITS[key]


def read_curve(model_dir):
    """The records of `model_dir/validation_curve.json` in epoch order (empty if absent)."""
    path = os.path.join(model_dir, CURVE_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = json.load(f)
    return [records[key] for key in sorted(records, key=int)]


def read_log_column(model_dir, column="val_accuracy"):
    """One column of a run folder's training_log.csv as floats (empty if absent)."""
    import csv

    path = os.path.join(model_dir, "training_log.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column) not in (None, "", "NA")]


def make_callback(stage, *, k, temperature):
    """A `ValidationCurve` for the run `stage` describes."""
    import keras
    import tensorflow as tf

    from supcon_tf import evaluation

    class ValidationCurve(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.path = os.path.join(stage.model_dir, CURVE_FILE)
            self.arrays = split_arrays(stage)
            self.records = {}
            self._forward = None

        def on_train_begin(self, logs=None):
            encoder = self.model.encoder
            self._forward = tf.function(lambda images: encoder(images, training=False))
            if os.path.exists(self.path):
                with open(self.path) as f:
                    self.records = json.load(f)

        def on_epoch_end(self, epoch, logs=None):
            start = time.time()
            train_images, train_labels, val_images, val_labels = self.arrays
            train_features = np.asarray(self._forward(tf.constant(train_images)), np.float32)
            val_features = np.asarray(self._forward(tf.constant(val_images)), np.float32)
            num_classes = int(max(train_labels.max(), val_labels.max())) + 1
            top1 = evaluation.knn_top1(
                train_features, train_labels, val_features, val_labels, k=k, temperature=temperature,
                num_classes=num_classes,
            )
            record = {"knn_top1": top1, "seconds": round(time.time() - start, 4)}
            if logs and "val_accuracy" in logs:
                record["val_accuracy"] = float(logs["val_accuracy"])
            self.records[str(epoch + 1)] = record
            from supcon_tf import checkpointing

            checkpointing.write_json_atomically(self.path, self.records)

    return ValidationCurve()
