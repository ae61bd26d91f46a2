"""What the models of the package share: output keys, argument checks, building, optimizer state."""

from __future__ import annotations

import keras
import numpy as np

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

