"""SavedModel export with named serving signatures: embeddings from encoders, class scores from classifiers.

An exported folder is a plain TensorFlow SavedModel, for TF Serving,
`tf.saved_model.load` or `keras.layers.TFSMLayer`; it needs neither
`supcon_tf` nor the model's Python code to run. Every signature has a single
named input, `"images"`, and returns a dict of named float32 outputs (plus
one string output, "class_name", from a classifier exported with its class
names). Three signatures per export differ only in their input:

    export_encoder (SupConModel or a bare encoder)
      "serving_default", "embed":  images float32 [batch, H, W, C] in [0, 1], the trained size
      "embed_uint8":               images uint8 [batch, height, width, 1 or 3], any size
      "embed_encoded":             images string [batch], JPEG or PNG bytes, any size
      outputs: "embedding"       [batch, dim]      L2-normalised z (projection head output;
                                                   only when the model has a head)
               "representation"  [batch, rep_dim]  encoder output r

    export_classifier (LinearProbe or CrossEntropyModel)
      "serving_default", "classify":  images float32 [batch, H, W, C] in [0, 1], the trained size
      "classify_uint8":               images uint8 [batch, height, width, 1 or 3], any size
      "classify_encoded":             images string [batch], JPEG or PNG bytes, any size
      outputs: "logits"          [batch, num_classes]
               "probabilities"   [batch, num_classes]  softmax of the logits
               "representation"  [batch, rep_dim]      encoder output r
               "embedding"       [batch, rep_dim]      r / ||r||_2 (a classifier has no
                                                       projection head: its embedding is its
                                                       L2-normalised representation, ready for
                                                       cosine similarity / kNN)
               "class_name"      [batch] string        the name of the argmax class (UTF-8);
                                                       only with `class_names=`

Class ids are the indices of the logits. A classifier exported with
`class_names` (the training split's names in id order, e.g. a run folder's
classes.json) also returns "class_name" from every signature, and keeps the
names in the SavedModel as a string variable, the variable collection
"class_names" (`tf.saved_model.load(path).class_names[0]`), which
`saved_model_class_names(path)` reads from the checkpoint without loading
the graph. Without `class_names` the class ids are the only output, and
`saved_model_class_names` returns None. `read_classes_json(path)` reads the
names from a run folder's classes.json (`{"class_names": [...], ...}`), as
`supcon-export` does for the model.keras next to it.

`(H, W, C)` is the encoder's input size (C is 1 or 3). The preprocessing is
inside the graph and is the evaluation pipeline's (`data.make_eval_dataset`,
`augment.NoAugment`), so a served image gets exactly the pixels the model
was evaluated on:

* float32 ("embed", "classify"): passed as they are, at the trained size
  only (the range [0, 1] is the caller's contract, not checked).
* uint8: channels converted to C first, in uint8 (1 -> 3 repeats the gray
  channel, `tf.image.grayscale_to_rgb`; 3 -> 1 is `tf.image.rgb_to_grayscale`),
  then `augment.NoAugment((H, W))`, the evaluation pipeline's own function:
  uint8 -> float32 [0, 1] (`tf.image.convert_image_dtype`, i.e. x * (1/255)),
  then, when the size differs from (H, W), a bilinear antialiased resize
  clipped to [0, 1]; at the trained size there is no resize, as in
  evaluation.
* encoded: each element decoded with `tf.io.decode_image(channels=C,
  expand_animations=False)` to uint8 (the decoder converts the channels),
  then `augment.NoAugment((H, W))` per image, so one batch may mix sizes and
  formats.

Bad inputs raise with a message naming what the signature expects. TF
itself checks the dtype of a signature's input (InvalidArgumentError "...
embed_uint8 ... was expected to be a uint8 tensor"), and for an endpoint
method, or a NumPy input, also its rank (TypeError showing the expected
`TensorSpec`). A tensor of the right dtype reaches the graph whatever its
shape, and the graph checks it (`tf.errors.InvalidArgumentError` with the
received shape): "embed_uint8 expects images uint8 [batch, height, width,
1 or 3] (height, width >= 1)", "serving_default/embed expects images
float32 [batch, H, W, C] in [0, 1]" or "embed_encoded expects images
string [batch] of JPEG or PNG bytes" (also for elements that are not JPEG
or PNG: their indices follow). Corrupt JPEG/PNG data gets the decoder's
error. NumPy arrays are converted to the input's dtype by TF without a
check: a float array sent to a uint8 input is cast (wrapping modulo 256),
so send uint8 to the uint8 signatures. Everything runs in
inference mode (`training=False`: batch normalisation uses its moving
statistics). Numeric outputs are cast to float32 (they can be float16 under
mixed precision).

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
>>> jpeg_bytes = [open(name, "rb").read() for name in ("a.jpg", "b.png")]
>>> served.signatures["classify_encoded"](images=tf.constant(jpeg_bytes))["logits"]
>>> export_classifier(probe, "run/export/named", class_names=["cat", "dog"])
>>> tf.saved_model.load("run/export/named").classify_uint8(uint8_batch)["class_name"]  # [b"dog", ...]
>>> saved_model_class_names("run/export/named")  # ["cat", "dog"]
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from supcon_tf import augment
from supcon_tf import checkpointing
from supcon_tf import layers as layers_lib
from supcon_tf import models
from supcon_tf._checks import boolean as _check_bool
from supcon_tf.data.sources import _check_class_names

# Name of the one input of every signature.
INPUT_NAME = "images"
# Signature (and endpoint) names. The first endpoint of an export (float
# input) is also "serving_default", which TF Serving calls by default.
SERVING_DEFAULT = "serving_default"
EMBED = "embed"
EMBED_UINT8 = "embed_uint8"
EMBED_ENCODED = "embed_encoded"
CLASSIFY = "classify"
CLASSIFY_UINT8 = "classify_uint8"
CLASSIFY_ENCODED = "classify_encoded"
# The string output of a classifier exported with class names: the argmax class's name.
CLASS_NAME = "class_name"
# The variable collection (a list of one string variable [num_classes]) that
# holds the class names, and that variable's key in the SavedModel's checkpoint.
CLASS_NAMES = "class_names"
_CLASS_NAMES_KEY = f"{CLASS_NAMES}/0/.ATTRIBUTES/VARIABLE_VALUE"
# The file that marks a folder as a SavedModel.
_SAVED_MODEL_FILE = "saved_model.pb"
# Leading bytes of the encoded formats the "*_encoded" signatures accept
# (tf.io.decode_image also reads GIF and BMP, but not as 1-channel images).
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG

_CLASSIFIER_TYPES = (models.LinearProbe, models.CrossEntropyModel)


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"`path` must be a non-empty str or os.PathLike, received: path={path!r}")
    return os.path.abspath(os.fspath(path))




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
    agree with every size the encoder fixes (the float signatures feed it
    as it is). The result is fully known, with C in {1, 3}: the uint8 and
    encoded signatures resize to (H, W) and convert to C channels.
    """
    static = _static_image_shape(encoder)
    if image_shape is None:
        if static is None:
            raise ValueError(
                "The encoder has no static input shape (e.g. a subclassed model): pass `image_shape` "
                "(height, width, channels). Received: image_shape=None"
            )
        if None in static:
            raise ValueError(
                f"The encoder's input size {static} is not fully known: pass `image_shape` (height, width, "
                "channels), the size the uint8 and encoded signatures resize images to. Received: image_shape=None"
            )
        image_shape = static
    elif (
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
            f"`image_shape` must match the encoder's input size {static} (the float signatures feed images "
            f"to the encoder as they are), received: image_shape={image_shape!r}"
        )
    if image_shape[-1] not in (1, 3):
        raise ValueError(
            f"The served images must have 1 or 3 channels (the encoder's input size is {image_shape}); "
            f"received: image_shape={image_shape!r}"
        )
    return image_shape


def _as_float32(outputs):
    """Numeric outputs cast to float32 (float16 under mixed precision); string outputs as they are."""
    return {key: value if value.dtype == tf.string else tf.cast(value, tf.float32) for key, value in outputs.items()}


def _runtime_shape(tensor):
    """The shape `tensor` has when the graph runs: int32 `[rank]`, its length unknown to the graph.

    A signature does not check the shape of what it is fed, only its dtype,
    and Grappler replaces `tf.rank(x)` (or the size of `tf.shape(x)`) by the
    declared rank; the serialize/parse round trip of the (small) shape
    vector hides that rank, so a check on it really runs.
    """
    return tf.io.parse_tensor(tf.io.serialize_tensor(tf.shape(tensor, out_type=tf.int32)), tf.int32)


def _checked(tensor, rank, dims_ok, message):
    """`(tensor, shape)` after an in-graph check that `tensor` has rank `rank` and `dims_ok(shape)`.

    Raises `tf.errors.InvalidArgumentError` with `message` and the received
    shape when the check fails. Everything computed from the returned
    tensors runs after the check, so its message is the one a caller sees.
    """
    shape = _runtime_shape(tensor)
    good = tf.cond(
        tf.equal(tf.size(shape), rank),
        lambda: tf.reduce_all(dims_ok(tf.reshape(shape, [rank]))),
        lambda: tf.constant(False),
    )
    check = tf.debugging.Assert(good, [message + "; received images of shape", shape], summarize=16)
    with tf.control_dependencies([check]):
        return tf.identity(tensor), tf.reshape(tf.identity(shape), [rank])


def _assume_shape(tensor, shape):
    """`tensor` with the static shape `shape`, which the caller has checked in the graph.

    Only the static shape changes: no op checks it when the graph runs (an
    `EnsureShape` in a `tf.cond` branch inside `tf.map_fn` can run on
    tensors of the branch not taken).
    """
    tensor = tf.identity(tensor)
    tensor.set_shape(shape)
    return tensor


def _eval_preprocess(images, image_shape):
    """uint8 `[batch, h, w, C]` (C static) -> float32 `[batch, H, W, C]`, by the evaluation pipeline's function.

    `augment.NoAugment((H, W))` is what `data.make_eval_dataset` maps over
    its batches: convert to float32 [0, 1], then resize unless the size is
    already (H, W). Here the size is only known when the graph runs, so a
    `tf.cond` gives the trained-size branch its static size, and with it
    evaluation's no-resize path.
    """
    height, width, channels = image_shape
    preprocess = augment.NoAugment((height, width))
    same_size = tf.reduce_all(tf.equal(tf.shape(images)[1:3], [height, width]))
    return tf.cond(
        same_size,
        lambda: preprocess(_assume_shape(images, [None, height, width, channels])),
        lambda: preprocess(images),
    )


def _uint8_pixels(images, image_shape, name):
    """Checked uint8 `[batch, height, width, 1 or 3]` -> the encoder's float32 `[batch, H, W, C]` input."""
    channels = image_shape[-1]
    images, shape = _checked(
        images,
        4,
        lambda s: [tf.logical_or(tf.equal(s[3], 1), tf.equal(s[3], 3)), s[1] >= 1, s[2] >= 1],
        f"{name} expects images uint8 [batch, height, width, 1 or 3] (height, width >= 1)",
    )
    if channels == 3:
        images = tf.cond(
            tf.equal(shape[3], 1),
            lambda: tf.image.grayscale_to_rgb(_assume_shape(images, [None, None, None, 1])),
            lambda: _assume_shape(images, [None, None, None, 3]),
        )
    else:
        images = tf.cond(
            tf.equal(shape[3], 3),
            lambda: tf.image.rgb_to_grayscale(_assume_shape(images, [None, None, None, 3])),
            lambda: _assume_shape(images, [None, None, None, 1]),
        )
    return _eval_preprocess(images, image_shape)


def _encoded_pixels(images, image_shape, name):
    """Checked string `[batch]` of JPEG/PNG bytes -> the encoder's float32 `[batch, H, W, C]` input."""
    height, width, channels = image_shape
    message = f"{name} expects images string [batch] of JPEG or PNG bytes"
    images, _ = _checked(images, 1, lambda s: [True], message)
    is_image = tf.zeros_like(images, tf.bool)
    for magic in _IMAGE_MAGIC:
        is_image = tf.logical_or(is_image, tf.equal(tf.strings.substr(images, 0, len(magic)), magic))
    check = tf.debugging.Assert(
        tf.reduce_all(is_image),
        [message + "; not JPEG or PNG: elements", tf.where(tf.logical_not(is_image))[:, 0]],
        summarize=16,
    )
    with tf.control_dependencies([check]):
        images = tf.identity(images)

    def one(contents):
        image = tf.io.decode_image(contents, channels=channels, dtype=tf.uint8, expand_animations=False)
        image = _assume_shape(image, [None, None, channels])
        return _eval_preprocess(image[tf.newaxis], image_shape)[0]

    return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))


def _check_destination(path, overwrite):
    """Refuses to replace an existing path, unless `overwrite` and it is a SavedModel (or empty) folder."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(f"An export already exists at {path}; pass overwrite=True to replace it.")
    if not os.path.isdir(path) or (os.listdir(path) and not os.path.isfile(os.path.join(path, _SAVED_MODEL_FILE))):
        raise FileExistsError(
            f"{path} exists and is not a SavedModel folder; refusing to replace it, even to overwrite it."
        )


def _write(path, forward, image_shape, names, tracked, overwrite, collections=None):
    """Builds the three endpoints around `forward` and writes the archive to `path` atomically.

    `forward` maps float32 `[batch, H, W, C]` images in [0, 1] to a dict of
    output tensors; `names` is `(float name, uint8 name, encoded name)`;
    `collections` maps names to lists of variables saved with the archive
    (`ExportArchive.add_variable_collection`). Every function is traced
    before anything touches the disk, so an error in the model leaves the
    destination alone.
    """
    float_name, uint8_name, encoded_name = names
    _check_destination(path, overwrite)
    archive = keras.export.ExportArchive()
    for layer in tracked:
        archive.track(layer)
    for name, variables in (collections or {}).items():
        archive.add_variable_collection(name, variables)
    height, width, channels = image_shape
    float_message = (
        f"{SERVING_DEFAULT}/{float_name} expects images float32 [batch, {height}, {width}, {channels}] in [0, 1]"
    )

    def serve_float(images):
        images, _ = _checked(
            images, 4, lambda s: tf.equal(s[1:], [height, width, channels]), float_message
        )
        return _as_float32(forward(images))

    def serve_uint8(images):
        return _as_float32(forward(_uint8_pixels(images, image_shape, uint8_name)))

    def serve_encoded(images):
        return _as_float32(forward(_encoded_pixels(images, image_shape, encoded_name)))

    # Named after their endpoints, so that TF's own errors (e.g. "cannot
    # compute ..._embed_uint8 as input #0 was expected to be a uint8 tensor")
    # name the signature.
    serve_float.__name__, serve_uint8.__name__, serve_encoded.__name__ = names
    # The float endpoint goes first: write_out also registers the first
    # endpoint as "serving_default".
    any_size = tf.TensorSpec([None, None, None, None], tf.uint8, name=INPUT_NAME)
    endpoints = [
        archive.add_endpoint(
            float_name, serve_float, [tf.TensorSpec((None, *image_shape), tf.float32, name=INPUT_NAME)]
        ),
        archive.add_endpoint(uint8_name, serve_uint8, [any_size]),
        archive.add_endpoint(encoded_name, serve_encoded, [tf.TensorSpec([None], tf.string, name=INPUT_NAME)]),
    ]
    for endpoint in endpoints:
        endpoint.get_concrete_function()
    with checkpointing.atomic_path(path) as temporary:
        archive.write_out(temporary, verbose=False)
    return path


def export_encoder(model, path, *, image_shape=None, overwrite=False):
    """Exports a pre-trained encoder as a SavedModel: "serving_default"/"embed", "embed_uint8", "embed_encoded".

    Args:
      model: a built `models.SupConModel` (exports the projection head's
        L2-normalised embedding z and the representation r), or a bare
        encoder, a built `keras.Model` from images to `[batch, rep_dim]`
        (exports the representation only: there is no head, hence no
        "embedding" output). Classifiers go to `export_classifier`.
      path: destination folder (str or os.PathLike), created with its parents.
      image_shape: optional `(height, width, channels)`, the encoder's input
        size: that of the float signatures, and what the uint8 and encoded
        signatures resize to. Defaults to the encoder's input size; needed
        only when the encoder has none (a subclassed model) or leaves part of
        it unknown, and otherwise must equal it. Channels must be 1 or 3.
      overwrite: replace an existing export at `path` (default False).

    Returns:
      The absolute path written, on the chief; None on other workers, which
      write nothing.

    Signatures (input `"images"`; preprocessing as in the module docstring):
      "serving_default", "embed": float32 `[batch, H, W, C]` in [0, 1];
      "embed_uint8": uint8 `[batch, height, width, 1 or 3]`, any size;
      "embed_encoded": string `[batch]` of JPEG or PNG bytes, any size.
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
    return _write(path, forward, image_shape, (EMBED, EMBED_UINT8, EMBED_ENCODED), tracked, overwrite)


def export_classifier(model, path, *, image_shape=None, overwrite=False, class_names=None):
    """Exports a classifier as a SavedModel: "serving_default"/"classify", "classify_uint8", "classify_encoded".

    Args:
      model: a built `models.LinearProbe` or `models.CrossEntropyModel`.
      path: destination folder (str or os.PathLike), created with its parents.
      image_shape: optional `(height, width, channels)`; as in `export_encoder`.
      overwrite: replace an existing export at `path` (default False).
      class_names: None (the default: the class ids, the logits' indices, are
        the only output), or the name of each class in id order, a list or
        tuple of `model.num_classes` distinct non-empty str (the training
        split's: a run folder's classes.json). Every signature then also
        returns "class_name", and the SavedModel keeps the names (the string
        variable collection "class_names", read by `saved_model_class_names`).

    Returns: as `export_encoder`.

    Signatures (input `"images"`, preprocessed as the module docstring says):
      "serving_default", "classify": float32 `[batch, H, W, C]` in [0, 1];
      "classify_uint8": uint8 `[batch, height, width, 1 or 3]`, any size;
      "classify_encoded": string `[batch]` of JPEG or PNG bytes, any size.
      Outputs (float32, `training=False`, as `model.predict_all`):
      `{"logits": [batch, num_classes], "probabilities": [batch, num_classes],
      "representation": [batch, rep_dim], "embedding": [batch, rep_dim]}`.
      A classifier has no projection head, so its "embedding" is its
      representation L2-normalised (`layers.L2Normalize`, as the head's last
      step), not a SupCon z. With `class_names`, also `"class_name"`: string
      `[batch]`, `class_names[argmax(logits)]` (UTF-8 bytes).

    Raises:
      ValueError: `model` is not a LinearProbe or CrossEntropyModel, or is
        unbuilt; bad `path`, `image_shape`, `overwrite` or `class_names`
        (e.g. not `model.num_classes` names).
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
    if class_names is not None:
        class_names = _check_class_names(class_names)
        if len(class_names) != model.num_classes:
            raise ValueError(
                f"`class_names` must have {model.num_classes} names, one per output of the classifier, "
                f"received: {len(class_names)} names, class_names={class_names!r}"
            )
    _check_built(model)
    normalize = layers_lib.L2Normalize()

    def forward(images):
        outputs = dict(model.predict_all(images))
        outputs[models.EMBEDDING] = normalize(tf.cast(outputs[models.REPRESENTATION], tf.float32))
        if class_names is not None:
            # A constant in the graph: the lookup needs no variable, table or asset.
            ids = tf.argmax(tf.cast(outputs[models.LOGITS], tf.float32), axis=-1)
            outputs[CLASS_NAME] = tf.gather(tf.constant(class_names, tf.string), ids)
        return outputs

    image_shape = _resolve_image_shape(model.encoder, image_shape)
    if not checkpointing.is_chief():
        return None
    collections = None
    if class_names is not None:
        with tf.init_scope():  # eager, outside any tf.function or distribution strategy
            names_variable = tf.Variable(class_names, dtype=tf.string, trainable=False, name=CLASS_NAMES)
        collections = {CLASS_NAMES: [names_variable]}
    names = (CLASSIFY, CLASSIFY_UINT8, CLASSIFY_ENCODED)
    return _write(path, forward, image_shape, names, [model.encoder, model.classifier], overwrite, collections)


def served_classifier(model):
    """The classifier `export_model` exports for `model`, or None when it exports an encoder.

    A LinearProbe or CrossEntropyModel is its own classifier; a SupConModel with the joint CE head
    (`ce_weight > 0`) serves `model.joint_classifier()`; any other model is an encoder.
    """
    if isinstance(model, _CLASSIFIER_TYPES):
        return model
    if isinstance(model, models.SupConModel) and model.ce_head is not None:
        return model.joint_classifier()
    return None


def export_model(model, path, *, image_shape=None, overwrite=False, class_names=None):
    """Exports what `model` serves: a classifier's classes (`export_classifier`), else an encoder's features.

    The one place that picks between the two exports: a `models.LinearProbe` or
    `models.CrossEntropyModel` is exported with `export_classifier` (with
    `class_names`), and so is a `models.SupConModel` trained with the joint CE
    head (`ce_weight > 0`): its `joint_classifier()`, encoder + CE head, is the
    final classifier. Anything else goes to `export_encoder` (`class_names`
    must be None: an encoder has no classes).

    Returns:
      The SavedModel folder's path, as the chosen export returns it.
    """
    classifier = served_classifier(model)
    if classifier is not None:
        return export_classifier(
            classifier, path, image_shape=image_shape, overwrite=overwrite, class_names=class_names
        )
    if class_names is not None:
        raise ValueError(
            f"`class_names` is for classifiers; {type(model).__name__} exports an encoder, received: "
            f"class_names={class_names!r}"
        )
    return export_encoder(model, path, image_shape=image_shape, overwrite=overwrite)


def saved_model_class_names(path):
    """The class names a classifier export keeps (`export_classifier(..., class_names=...)`), or None.

    Reads the "class_names" variable from the SavedModel's checkpoint
    (`variables/`) without loading the graph or running a signature.

    Args:
      path: a SavedModel folder.

    Returns:
      The list of class names (str) in id order, or None when the export has
      none (an encoder, or a classifier exported without `class_names`).

    Raises:
      ValueError: `path` is not a path to a SavedModel folder.
    """
    path = _check_saved_model(path)
    prefix = os.path.join(path, "variables", "variables")
    try:
        keys = {key for key, _ in tf.train.list_variables(prefix)}
    except (tf.errors.NotFoundError, ValueError):  # no variables at all
        return None
    if _CLASS_NAMES_KEY not in keys:
        return None
    return [name.decode("utf-8") for name in tf.train.load_variable(prefix, _CLASS_NAMES_KEY).tolist()]


def read_classes_json(path):
    """The class names in a run folder's classes.json: `{"class_names": [names in id order], ...}`.

    Other keys (e.g. "source", where the names came from) are ignored.

    Args:
      path: the classes.json file (str or os.PathLike).

    Returns:
      The list of class names (str), in id order.

    Raises:
      FileNotFoundError: `path` is not a file.
      ValueError: bad `path`; the file is not JSON, not an object, or its
        "class_names" is missing or not a non-empty list of distinct
        non-empty strings.
    """
    path = _check_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`path` is not a file, received: path={path!r}")
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a JSON file ({error}), received: path={path!r}") from error
    if not isinstance(content, dict) or "class_names" not in content:
        raise ValueError(
            f'{path} must hold a JSON object {{"class_names": [names in id order], ...}}, '
            f"received: {str(content)[:200]}"
        )
    try:
        return _check_class_names(content["class_names"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _check_saved_model(path):
    path = _check_path(path)
    if not os.path.isfile(os.path.join(path, _SAVED_MODEL_FILE)):
        raise ValueError(f"`path` must be a SavedModel folder (with {_SAVED_MODEL_FILE}), received: path={path!r}")
    return path


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
    path = _check_saved_model(path)
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
