"""SavedModel export with named serving signatures: embeddings from encoders, class scores from classifiers.

An exported folder is a plain TensorFlow SavedModel, for TF Serving,
`tf.saved_model.load` or `keras.layers.TFSMLayer`; it needs neither
`supcon_tf` nor the model's Python code to run. Every signature has a single
named input, `"images"`, `[batch, H, W, C]`, and returns a dict of named
float32 outputs. Two signatures per export differ only in the input dtype:

    export_encoder (SupConModel or a bare encoder)
      "serving_default", "embed":  images float32 in [0, 1]
      "embed_uint8":               images uint8 in [0, 255]
      outputs: "embedding"       [batch, dim]      L2-normalised z (projection head output;
                                                   only when the model has a head)
               "representation"  [batch, rep_dim]  encoder output r

    export_classifier (LinearProbe or CrossEntropyModel)
      "serving_default", "classify":  images float32 in [0, 1]
      "classify_uint8":               images uint8 in [0, 255]
      outputs: "logits"          [batch, num_classes]
               "probabilities"   [batch, num_classes]  softmax of the logits
               "representation"  [batch, rep_dim]      encoder output r
               "embedding"       [batch, rep_dim]      r / ||r||_2 (a classifier has no
                                                       projection head: its embedding is its
                                                       L2-normalised representation, ready for
                                                       cosine similarity / kNN)

The preprocessing is inside the graph: uint8 images are cast to float32 and
divided by 255 (exactly `tf.cast(x, tf.float32) / 255`); float images are
passed as they are (the range [0, 1] is the caller's contract, not checked).
The graph does not resize: images must already have the encoder's input
size (H, W, C), which the signature's static shape enforces. Everything runs
in inference mode (`training=False`: batch normalisation uses its moving
statistics). Outputs are cast to float32 (they can be float16 under mixed
precision).

Besides the signatures, the endpoints (all names but "serving_default") are
methods of the loaded object, called with a positional argument:
`tf.saved_model.load(path).embed(images)`; a signature takes keyword
arguments only: `tf.saved_model.load(path).signatures["embed"](images=images)`.
`keras.layers.TFSMLayer(path, call_endpoint=name)` accepts every name above.
`saved_model_signatures(path)` lists what `saved_model_cli show --dir PATH
--all` shows.

Writes happen on the chief only (`checkpointing.is_chief()`) and atomically
(`checkpointing.atomic_path`): a reader never sees a half-written export, and
a failed export leaves no folder and no temporary files behind.

Example:

>>> export_encoder(pretrained, "run/export/encoder")      # SupConModel
>>> export_classifier(probe, "run/export/classifier")     # LinearProbe
>>> served = tf.saved_model.load("run/export/classifier")
>>> served.signatures["classify_uint8"](images=uint8_batch)["probabilities"]
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from supcon_tf import checkpointing
from supcon_tf import layers as layers_lib
from supcon_tf import models

# Name of the one input of every signature.
INPUT_NAME = "images"
# Signature (and endpoint) names. The first endpoint of an export (float
# input) is also "serving_default", which TF Serving calls by default.
SERVING_DEFAULT = "serving_default"
EMBED = "embed"
EMBED_UINT8 = "embed_uint8"
CLASSIFY = "classify"
CLASSIFY_UINT8 = "classify_uint8"
# The file that marks a folder as a SavedModel.
_SAVED_MODEL_FILE = "saved_model.pb"

_CLASSIFIER_TYPES = (models.LinearProbe, models.CrossEntropyModel)


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"`path` must be a non-empty str or os.PathLike, received: path={path!r}")
    return os.path.abspath(os.fspath(path))


def _check_bool(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool, received: {name}={value!r}")


def _check_built(model):
    if not model.built:
        raise ValueError(
            f"`model` must be built (called once, or built from a built encoder) before export, "
            f"received: an unbuilt {type(model).__name__}"
        )


def _static_image_shape(encoder):
    """`(H, W, C)` of a functional encoder's single input (entries may be None), or None if unknown."""
    try:
        inputs = encoder.inputs
    except AttributeError:  # subclassed models have no symbolic inputs
        return None
    if not isinstance(inputs, list) or len(inputs) != 1 or len(inputs[0].shape) != 4:
        return None
    return tuple(None if d is None else int(d) for d in inputs[0].shape[1:])


def _resolve_image_shape(encoder, image_shape):
    """The `(H, W, C)` of the exported signatures: the encoder's input size, or `image_shape`.

    `image_shape` may only fill in what the encoder leaves unknown; it must
    agree with every size the encoder fixes (the graph does not resize).
    """
    static = _static_image_shape(encoder)
    if image_shape is None:
        if static is None:
            raise ValueError(
                "The encoder has no static input shape (e.g. a subclassed model): pass `image_shape` "
                "(height, width, channels). Received: image_shape=None"
            )
        return static
    if (
        not isinstance(image_shape, (list, tuple))
        or len(image_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in image_shape)
    ):
        raise ValueError(
            f"`image_shape` must be a tuple of 3 positive ints (height, width, channels), "
            f"received: image_shape={image_shape!r}"
        )
    image_shape = tuple(image_shape)
    if static is not None and any(s is not None and s != d for s, d in zip(static, image_shape)):
        raise ValueError(
            f"`image_shape` must match the encoder's input size {static} (the export does not resize), "
            f"received: image_shape={image_shape!r}"
        )
    return image_shape


def _as_float32(outputs):
    return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}


def _from_uint8(images):
    """uint8 `[0, 255]` -> float32 `[0, 1]`: `cast / 255`."""
    return tf.cast(images, tf.float32) / 255.0


def _check_destination(path, overwrite):
    """Refuses to replace an existing path, unless `overwrite` and it is a SavedModel (or empty) folder."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(f"An export already exists at {path}; pass overwrite=True to replace it.")
    if not os.path.isdir(path) or (os.listdir(path) and not os.path.isfile(os.path.join(path, _SAVED_MODEL_FILE))):
        raise FileExistsError(
            f"{path} exists and is not a SavedModel folder; refusing to replace it, even with overwrite=True."
        )


def _write(path, forward, image_shape, float_name, uint8_name, tracked, overwrite):
    """Builds the two endpoints around `forward` and writes the archive to `path` atomically.

    `forward` maps float32 `[batch, H, W, C]` images in [0, 1] to a dict of
    output tensors. Both functions are traced before anything touches the
    disk, so an error in the model leaves the destination alone.
    """
    _check_destination(path, overwrite)
    archive = keras.export.ExportArchive()
    for layer in tracked:
        archive.track(layer)
    shape = (None, *image_shape)

    def serve_float(images):
        return _as_float32(forward(images))

    def serve_uint8(images):
        return _as_float32(forward(_from_uint8(images)))

    # The float endpoint goes first: write_out also registers the first
    # endpoint as "serving_default".
    endpoints = [
        archive.add_endpoint(float_name, serve_float, [tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)]),
        archive.add_endpoint(uint8_name, serve_uint8, [tf.TensorSpec(shape, tf.uint8, name=INPUT_NAME)]),
    ]
    for endpoint in endpoints:
        endpoint.get_concrete_function()
    with checkpointing.atomic_path(path, fault_point="saved_model_export") as temporary:
        archive.write_out(temporary, verbose=False)
    return path


def export_encoder(model, path, *, image_shape=None, overwrite=False):
    """Exports a pre-trained encoder as a SavedModel with "serving_default"/"embed" and "embed_uint8".

    Args:
      model: a built `models.SupConModel` (exports the projection head's
        L2-normalised embedding z and the representation r), or a bare
        encoder, a built `keras.Model` from images to `[batch, rep_dim]`
        (exports the representation only: there is no head, hence no
        "embedding" output). Classifiers go to `export_classifier`.
      path: destination folder (str or os.PathLike), created with its parents.
      image_shape: optional `(height, width, channels)` of the served images.
        Defaults to the encoder's input size; needed only when the encoder
        has none (a subclassed model), and otherwise must equal it: the graph
        does not resize.
      overwrite: replace an existing export at `path` (default False).

    Returns:
      The absolute path written, on the chief; None on other workers, which
      write nothing.

    Signatures (input `"images"` `[batch, H, W, C]`):
      "serving_default", "embed": float32 in [0, 1];
      "embed_uint8": uint8 in [0, 255], converted in the graph (`/ 255`).
      Outputs: `{"embedding": [batch, dim], "representation": [batch, rep_dim]}`
      float32 (no "embedding" for a bare encoder), computed with `training=False`.

    Raises:
      ValueError: `model` is not a SupConModel or a bare encoder, is unbuilt,
        or returns something else than one `[batch, rep_dim]` tensor (bare
        encoder); bad `path`, `image_shape` or `overwrite`.
      FileExistsError: `path` exists and `overwrite` is False (or it is not a
        SavedModel folder).
    """
    if isinstance(model, _CLASSIFIER_TYPES):
        raise ValueError(
            "`model` must be a SupConModel or a bare encoder; for a classifier use export_classifier(), "
            f"or pass its `.encoder`. Received: model={model!r}"
        )
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a SupConModel or a bare encoder (keras.Model), received: model={model!r}"
        )
    path = _check_path(path)
    _check_bool(overwrite, "overwrite")
    _check_built(model)
    if isinstance(model, models.SupConModel):
        encoder = model.encoder
        tracked = [model.encoder, model.head]

        def forward(images):
            outputs = model(images, training=False)
            return {models.EMBEDDING: outputs[models.EMBEDDING], models.REPRESENTATION: outputs[models.REPRESENTATION]}

    else:
        encoder = model
        tracked = [model]

        def forward(images):
            representation = model(images, training=False)
            if not tf.is_tensor(representation) or representation.shape.rank != 2:
                raise ValueError(
                    "A bare encoder must map images to one [batch, rep_dim] tensor, received: an encoder "
                    f"returning {representation!r}"
                )
            return {models.REPRESENTATION: representation}

    image_shape = _resolve_image_shape(encoder, image_shape)
    if not checkpointing.is_chief():
        return None
    return _write(path, forward, image_shape, EMBED, EMBED_UINT8, tracked, overwrite)


def export_classifier(model, path, *, image_shape=None, overwrite=False):
    """Exports a classifier as a SavedModel with "serving_default"/"classify" and "classify_uint8".

    Args:
      model: a built `models.LinearProbe` or `models.CrossEntropyModel`.
      path: destination folder (str or os.PathLike), created with its parents.
      image_shape: optional `(height, width, channels)`; as in `export_encoder`.
      overwrite: replace an existing export at `path` (default False).

    Returns:
      The absolute path written, on the chief; None on other workers, which
      write nothing.

    Signatures (input `"images"` `[batch, H, W, C]`):
      "serving_default", "classify": float32 in [0, 1];
      "classify_uint8": uint8 in [0, 255], converted in the graph (`/ 255`).
      Outputs (float32, `training=False`, as `model.predict_all`):
      `{"logits": [batch, num_classes], "probabilities": [batch, num_classes],
      "representation": [batch, rep_dim], "embedding": [batch, rep_dim]}`.
      A classifier has no projection head, so its "embedding" is its
      representation L2-normalised (`layers.L2Normalize`, as the head's last
      step), not a SupCon z.

    Raises:
      ValueError: `model` is not a LinearProbe or CrossEntropyModel, or is
        unbuilt; bad `path`, `image_shape` or `overwrite`.
      FileExistsError: `path` exists and `overwrite` is False (or it is not a
        SavedModel folder).
    """
    if not isinstance(model, _CLASSIFIER_TYPES):
        raise ValueError(
            "`model` must be a LinearProbe or CrossEntropyModel (for an encoder use export_encoder()), "
            f"received: model={model!r}"
        )
    path = _check_path(path)
    _check_bool(overwrite, "overwrite")
    _check_built(model)
    normalize = layers_lib.L2Normalize()

    def forward(images):
        outputs = dict(model.predict_all(images))
        outputs[models.EMBEDDING] = normalize(tf.cast(outputs[models.REPRESENTATION], tf.float32))
        return outputs

    image_shape = _resolve_image_shape(model.encoder, image_shape)
    if not checkpointing.is_chief():
        return None
    return _write(path, forward, image_shape, CLASSIFY, CLASSIFY_UINT8, [model.encoder, model.classifier], overwrite)


def _describe(tensor):
    shape = None if tensor.shape.rank is None else tuple(tensor.shape.as_list())
    return {"dtype": tensor.dtype.name, "shape": shape}


def saved_model_signatures(path):
    """The serving signatures of a SavedModel: what `saved_model_cli show --dir PATH --all` lists.

    Args:
      path: a SavedModel folder.

    Returns:
      `{signature_name: {"inputs": {name: spec}, "outputs": {name: spec}}}`
      with `spec = {"dtype": str, "shape": tuple with None for unknown sizes}`,
      e.g. `{"embed": {"inputs": {"images": {"dtype": "float32", "shape":
      (None, 8, 8, 1)}}, "outputs": {"embedding": {...}, ...}}, ...}`.

    Raises:
      ValueError: `path` is not a path to a SavedModel folder.
    """
    path = _check_path(path)
    if not os.path.isfile(os.path.join(path, _SAVED_MODEL_FILE)):
        raise ValueError(f"`path` must be a SavedModel folder (with {_SAVED_MODEL_FILE}), received: path={path!r}")
    loaded = tf.saved_model.load(path)
    signatures = {}
    for name in sorted(loaded.signatures.keys()):
        function = loaded.signatures[name]
        _, keyword_inputs = function.structured_input_signature
        signatures[name] = {
            "inputs": {key: _describe(spec) for key, spec in sorted(keyword_inputs.items())},
            "outputs": {key: _describe(tensor) for key, tensor in sorted(function.structured_outputs.items())},
        }
    return signatures
