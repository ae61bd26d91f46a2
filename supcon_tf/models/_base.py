"""What the models of the package share: output keys, argument checks, building, optimizer state, device views."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from supcon_tf import data as data_lib
from supcon_tf import distribute

# Output keys of SupConModel.call; REPRESENTATION also names cached features fed to LinearProbe.
REPRESENTATION = "representation"
EMBEDDING = "embedding"
# Output keys of the classifiers' `predict_all`.
LOGITS = "logits"
PROBABILITIES = "probabilities"


def check_model(name, value):
    if not isinstance(value, keras.layers.Layer):
        raise ValueError(f"`{name}` must be a Keras layer or model, received: {name}={value!r}")


def check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, received: num_classes={num_classes!r}")


def check_compile_kwargs(model_name, kwargs, forbidden):
    for key in forbidden:
        if key in kwargs:
            raise ValueError(
                f"{model_name}.compile() computes its own {key}; do not pass it. "
                f"Received: {key}={kwargs[key]!r}"
            )


def encoder_output_dim(encoder):
    shape = encoder.output_shape
    if isinstance(shape, list) or len(shape) != 2:
        raise ValueError(
            f"`encoder` must map images to a [batch, dim] representation, received: an encoder with output shape {shape}"
        )
    return int(shape[-1])


def build_optimizer_state(model):
    """Creates the optimizer variables of a built, compiled model, so that saved optimizer state can load.

    Each optimizer is built for exactly the variables it updates: a
    SupConModel's main optimizer for encoder + head, its online optimizer
    (if any) for the online classifier; any other model's for all its
    trainable variables.
    """
    if model.optimizer is None or not model.built:
        return
    variables = getattr(model, "contrastive_variables", None)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables if variables is None else variables)
    online = getattr(model, "online_optimizer", None)
    if online is not None and not online.built:
        online.build(model.online_classifier.trainable_variables)


def compile_and_build_optimizer(model, config):
    """`model.compile(**config)`, then creates the optimizer variables so saved optimizer state can load."""
    model.compile(**config)
    build_optimizer_state(model)


def build_from_encoder(model):
    """Builds `model` at construction when its encoder is a built functional model.

    A built model never needs Keras to trace it on a data batch to create
    its state (which would pass `[batch, views, ...]` training data to
    `call`, and which under multi-worker training goes through
    `MultiWorkerFitMixin`).
    """
    encoder = model.encoder
    if encoder.built and isinstance(getattr(encoder, "inputs", None), list) and len(encoder.inputs) == 1:
        model.build(tuple(encoder.inputs[0].shape))


def check_view_augmentation(augment):
    """`augment` for `ViewAugmentationMixin.set_view_augmentation`: None or a plain `(images, seed)` callable."""
    if augment is None:
        return None
    if not callable(augment):
        raise ValueError(
            f"`augment` must be a callable (images, seed) -> images or None, received: augment={augment!r}"
        )
    if isinstance(augment, keras.layers.Layer):  # Keras would save it (and its weights) with the model
        raise ValueError(
            "`augment` must not be a Keras layer or model (it would be saved with the model; wrap it in a function), "
            f"received: augment of type {type(augment).__name__}"
        )
    return augment


def is_device_batch(inputs):
    """True for the inputs of an `augment_on="device"` batch: the pair `(images, view_seeds)`."""
    return isinstance(inputs, (tuple, list)) and len(inputs) == 2


class ViewAugmentationMixin:
    """Makes a model's training views in its train step: `augment_on="device"` (`data.make_multiview_dataset`).

    Such a batch carries `(images [B, H, W, C], view_seeds int [B, V, 2])`
    instead of the views; with a policy set (`set_view_augmentation`), the
    train step (and the test step of `SupConModel`) turns it into views
    `[B, V, H', W', C]` on the replica's device (`device_views`) before the
    forward pass. A batch of finished views is used as it is, with or
    without a policy, so the same model trains on either kind of stream.

    The policy is a training input, like the dataset: it is not part of the
    model's config, weights, `.keras` file or exports (set it again after
    loading a model to train it on device-augmented batches).
    """

    @property
    def view_augmentation(self):
        """The policy `(images, seed) -> images` the train step applies to `(images, view_seeds)` batches, or None."""
        return self.__dict__.get("_view_augmentation")

    def set_view_augmentation(self, augment):
        """Sets the policy that makes the views of `(images, view_seeds)` batches inside the train step (None: unset).

        XLA cannot compile the policies' image ops (`tf.image.crop_and_resize`,
        the antialiased resize), and Keras compiles the whole train step: a
        model compiled with `jit_compile=True` is refused; `compile` after this
        resolves `jit_compile="auto"` to False and refuses True.

        Args:
          augment: a callable `(images [B, H, W, C], seed int64 [2]) -> [B, H',
            W', C]` float in [0, 1], pure in `(images, seed)` (e.g.
            `augment.SimCLRAugment(32)`: the one the stream would have used on
            the host), not a Keras layer; or None.
        """
        augment = check_view_augmentation(augment)
        if augment is not None and getattr(self, "compiled", False) and self.jit_compile is True:
            raise ValueError(
                "`augment` cannot run in a train step compiled with jit_compile=True (XLA has no kernels for the "
                "augmentation's image ops): compile with jit_compile=False, received: a model compiled with XLA"
            )
        # Outside Keras' and TensorFlow's tracking: the policy is no state of the model.
        object.__setattr__(self, "_view_augmentation", augment)
        self.train_function = self.test_function = None  # a step traced with the earlier policy is traced again

    def _view_compile_kwargs(self, kwargs):
        """`compile` keyword arguments with `jit_compile` resolved for the policy (XLA cannot compile it)."""
        if self.view_augmentation is None:
            return kwargs
        if kwargs.get("jit_compile", "auto") is True:
            raise ValueError(
                "`jit_compile` must be False (or 'auto') for a model with a view augmentation (XLA has no kernels "
                "for the augmentation's image ops), received: jit_compile=True"
            )
        return dict(kwargs, jit_compile=False)

    def device_views(self, images, view_seeds):
        """The views of an `augment_on="device"` batch, made on this replica: `[b, V, H', W', C]` float32.

        View `v` is `augment(images, seed_v)` with `seed_v = view_seeds[0, v]`
        (the rows of `view_seeds` are equal: the stream's seeds for the batch,
        `data.batch_view_seeds`), the same call as in the host pipeline
        (`data.augment_views`). With one replica in sync the views are
        therefore the host pipeline's (on CPU to the bit). With R > 1 replicas
        each replica augments only its slice of the batch, and the policies
        draw per-sample parameters by position in the slice: so that replica r
        does not repeat replica 0's draws, the (global) replica id is folded
        into every view seed, `fold_in(seed_v, r)`. The views then differ from
        the host pipeline's, with the same distribution.

        Args:
          images: `[b, H, W, C]` uint8 (or float in [0, 1]), this replica's slice.
          view_seeds: int `[b, V, 2]` with equal rows, V known statically.

        Returns:
          float32 `[b, V, H', W', C]`.
        """
        augment = self.view_augmentation
        if augment is None:
            raise ValueError(
                f"{type(self).__name__} received (images, view_seeds) batches (augment_on='device') but has no view "
                "augmentation: call model.set_view_augmentation(policy) first"
            )
        images, view_seeds = tf.convert_to_tensor(images), tf.convert_to_tensor(view_seeds)
        if images.shape.rank != 4:
            raise ValueError(f"`images` must be [batch, H, W, C], received: images with shape {images.shape}")
        if view_seeds.shape.rank != 3 or view_seeds.shape[1] is None or view_seeds.shape[2] != 2 or not (
            view_seeds.dtype.is_integer
        ):
            raise ValueError(
                "`view_seeds` must be int [batch, views, 2] with views known statically, received: view_seeds with "
                f"shape {view_seeds.shape} and dtype {view_seeds.dtype.name}"
            )
        seeds = tf.cast(view_seeds[0], tf.int64)  # [V, 2]
        if distribute.num_replicas_in_sync() > 1:
            context = tf.distribute.get_replica_context()
            if context is None:
                raise ValueError(
                    "`device_views` must be called in a replica context under several replicas (e.g. inside "
                    "train_step), received: a call in the cross-replica context"
                )
            replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
            seeds = tf.stack(
                [tf.random.experimental.stateless_fold_in(seeds[v], replica) for v in range(seeds.shape[0])]
            )
        return data_lib.augment_views(images, seeds, augment)

    def _views_of(self, inputs):
        """`inputs` as training views: an `(images, view_seeds)` pair through `device_views`, anything else as is."""
        return self.device_views(*inputs) if is_device_batch(inputs) else inputs

    def _symbolic_batch(self, data_batch):
        """The batch (specs) Keras builds the model's state from: an `(images, view_seeds)` pair's views' spec.

        Keras builds a compiled loss and metrics by running the model on the
        first batch's spec (`MultiWorkerFitMixin._maybe_symbolic_build`); a
        device batch gives it the spec of the views the train step makes.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data_batch)
        if not is_device_batch(x) or self.view_augmentation is None:
            return data_batch
        images, view_seeds = x
        augment = self.view_augmentation
        views = tf.function(lambda images, seeds: data_lib.augment_views(images, seeds, augment), autograph=False)
        views = views.get_concrete_function(
            tf.TensorSpec(images.shape, images.dtype), tf.TensorSpec([view_seeds.shape[1], 2], tf.int64)
        ).structured_outputs
        x = tf.TensorSpec(views.shape, views.dtype)
        return keras.utils.pack_x_y_sample_weight(self._call_inputs(x), y, sample_weight)

    def _call_inputs(self, views):
        """What the model is called on for views `[B, V, ...]` (a tensor or its spec): the views themselves here
        (SupConModel embeds every view); the classifiers override it."""
        return views
