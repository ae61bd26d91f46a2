"""The classifiers of the protocol: `LinearProbe` (stage 2) and `CrossEntropyModel` (the baseline)."""

from __future__ import annotations

import copy

import keras
import numpy as np
import tensorflow as tf

from supcon_tf import _checks
from supcon_tf import data as data_lib
from supcon_tf import _keras_compat
from supcon_tf.models._base import (
    LOGITS,
    PROBABILITIES,
    REPRESENTATION,
    ViewAugmentationMixin,
    build_from_encoder,
    is_device_batch,
    check_model,
    check_num_classes,
    compile_and_build_optimizer,
    encoder_output_dim,
)


class _Classifier(ViewAugmentationMixin, _keras_compat.MultiWorkerFitMixin, keras.Model):
    """Shared parts of the two classifiers: an encoder and a linear `Dense` head giving logits.

    Training data: `(images [B, H, W, C], labels)`, or with a policy set
    (`set_view_augmentation`) `((images, view_seeds [B, 1, 2]), labels)` from
    `data.make_multiview_dataset(..., num_views=1, augment_on="device")`,
    whose one view `train_step` makes on the replica's device before the
    forward pass (`device_views`). Evaluation data are plain images.
    """

    def __init__(self, encoder, num_classes, **kwargs):
        super().__init__(**kwargs)
        check_model("encoder", encoder)
        check_num_classes(num_classes)
        encoder_output_dim(encoder)
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier", dtype="float32")
        build_from_encoder(self)

    def compile(self, optimizer="sgd", loss=None, metrics=None, **kwargs):
        """Cross-entropy on logits and accuracy by default.

        Args:
          optimizer: a Keras optimizer or its name.
          loss: default `SparseCategoricalCrossentropy(from_logits=True)`.
          metrics: default `["accuracy"]`.
          **kwargs: forwarded to `keras.Model.compile`.
        """
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics is None:
            metrics = ["accuracy"]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **self._view_compile_kwargs(kwargs))

    def train_step(self, data):
        """Keras' step on the images, made first from an `(images, view_seeds)` batch (one view) when it is one."""
        inputs, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if is_device_batch(inputs):
            inputs = self._call_inputs(self.device_views(*inputs))
        return super().train_step(keras.utils.pack_x_y_sample_weight(inputs, labels, sample_weight))

    def _call_inputs(self, views):
        """A classifier is called on the single view `[B, H, W, C]` of `[B, 1, H, W, C]` views (or their spec)."""
        if views.shape.rank != 5 or views.shape[1] != 1:
            raise ValueError(
                f"{type(self).__name__} trains on one view per image (num_views=1), received: views with shape "
                f"{views.shape}"
            )
        if isinstance(views, tf.TensorSpec):
            return tf.TensorSpec([views.shape[0], *views.shape[2:]], views.dtype)
        return views[:, 0]

    def compile_from_config(self, config):
        """Re-compiles a loaded model (optimizer, loss, metrics) from its saved compile config."""
        compile_and_build_optimizer(self, keras.saving.deserialize_keras_object(config))

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        if not self.classifier.built:
            self.classifier.build((None, encoder_output_dim(self.encoder)))
        self.built = True

    def predict_all(self, images):
        """Returns `{LOGITS, PROBABILITIES, REPRESENTATION}` for `[batch, H, W, C]` images (inference mode)."""
        representation = self.encoder(images, training=False)
        logits = self.classifier(representation)
        return {LOGITS: logits, PROBABILITIES: tf.nn.softmax(logits), REPRESENTATION: representation}

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder), num_classes=self.num_classes)
        return config

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # deserialisation consumes nested dicts
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="supcon_tf")
class LinearProbe(_Classifier):
    """Linear evaluation: a frozen encoder (called with `training=False`) and a trainable `Dense` classifier.

    The probe is its own model, so nothing of it leaks into pre-training.
    Constructing it sets `encoder.trainable = False`: from this
    point the encoder is an evaluation-only feature extractor (also for any
    other model that shares it).

    Args:
      encoder: a built Keras model from images to `[batch, rep_dim]`.
      num_classes: int >= 2.
      **kwargs: forwarded to `keras.Model`.

    Call arguments:
      inputs: `[batch, H, W, C]` float images, or `{REPRESENTATION: [batch,
        rep_dim]}`: features the frozen encoder computed earlier
        (`extract_features`), which skip the encoder. Both are the same
        model: training on cached features trains this probe's classifier.
      training: bool; only affects the classifier (the encoder always runs
        in inference mode).
    Returns logits `[batch, num_classes]` float32.

    Example:

    >>> probe = LinearProbe(pretrained.encoder, num_classes=10)
    >>> probe.compile(keras.optimizers.Adam(1e-2))
    >>> probe.fit_cached(train_images_dataset, epochs=50)  # features computed once
    >>> probe.evaluate(test_images_dataset)
    """

    def __init__(self, encoder, num_classes, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.encoder.trainable = False

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):  # cached features
            if set(inputs) != {REPRESENTATION}:
                raise ValueError(
                    f"LinearProbe takes images or {{{REPRESENTATION!r}: features}}, received: a dict with keys "
                    f"{sorted(inputs)}"
                )
            representation = inputs[REPRESENTATION]
        else:
            representation = self.encoder(inputs, training=False)
        return self.classifier(tf.stop_gradient(representation), training=training)

    def extract_features(self, dataset):
        """Runs the frozen encoder once over `(images, labels)` batches.

        Args:
          dataset: a `tf.data.Dataset` of `(images [B, H, W, C], labels [B])`.

        Returns:
          `(features [N, rep_dim] float32 NumPy, labels [N] NumPy)`.
        """
        if getattr(self, "_encode_fn", None) is None:  # one traced function per probe, not one per call
            self._encode_fn = tf.function(  # a plain call: nothing for AutoGraph to convert
                lambda images: self.encoder(images, training=False), reduce_retracing=True, autograph=False
            )
        return data_lib.collect(self._encode_fn, dataset, np.float32)

    @staticmethod
    def feature_inputs(dataset):
        """Maps `(features, labels)` batches to `({REPRESENTATION: features}, labels)`, the probe's cached input."""
        return dataset.map(lambda features, labels: ({REPRESENTATION: features}, labels))

    def fit_cached(self, dataset, *, epochs, batch_size=256, validation_data=None, shuffle_seed=0, **fit_kwargs):
        """`fit` on features computed once (for un-augmented training data).

        The encoder is frozen and deterministic at inference, so with
        augmentation off the features of every epoch are the same: computing
        them once makes the probe orders of magnitude cheaper. This is the
        probe's own `fit`, fed `{REPRESENTATION: features}` batches, with the
        optimizer, loss and metrics given to `compile`.

        Args:
          dataset: `tf.data.Dataset` of `(images, labels)` batches.
          epochs: positive int.
          batch_size: classifier batch size over the cached features.
          validation_data: optional dataset like `dataset`.
          shuffle_seed: seed of the per-epoch shuffling of the cached features.
          **fit_kwargs: forwarded to `keras.Model.fit` (callbacks, verbose).

        Returns:
          The `keras.callbacks.History` of the training.
        """
        if not self.compiled:
            raise ValueError("Call `compile()` before `fit_cached()`. Received: an uncompiled LinearProbe")
        _checks.positive_int(epochs, "epochs")
        batch_size = _checks.positive_int(batch_size, "batch_size")
        features, labels = self.extract_features(dataset)
        validation = None
        if validation_data is not None:
            val_features, val_labels = self.extract_features(validation_data)
            validation = ({REPRESENTATION: val_features}, val_labels)
        train = data_lib.make_feature_batches(features, labels, batch_size=batch_size, seed=shuffle_seed)
        fit_kwargs.setdefault("shuffle", False)  # `train` shuffles itself
        return self.fit(
            self.feature_inputs(train),
            epochs=epochs,
            steps_per_epoch=-(-len(labels) // batch_size),
            validation_data=validation,
            **fit_kwargs,
        )


@keras.saving.register_keras_serializable(package="supcon_tf")
class CrossEntropyModel(_Classifier):
    """The cross-entropy baseline: encoder + linear classifier, trained end to end.

    Args:
      encoder: a Keras model from images to `[batch, rep_dim]`.
      num_classes: int >= 2.
      **kwargs: forwarded to `keras.Model`.

    Call arguments:
      images: `[batch, H, W, C]` float images.
      training: bool.
    Returns logits `[batch, num_classes]` float32.

    Example:

    >>> model = CrossEntropyModel(encoders.build_encoder("small_cnn", (8, 8, 1)), 10)
    >>> model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    >>> model.fit(train_images_dataset, epochs=30)
    """

    def call(self, images, training=False):
        return self.classifier(self.encoder(images, training=training), training=training)

