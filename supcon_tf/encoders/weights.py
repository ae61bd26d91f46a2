"""Initialising an encoder in place from a ``.weights.h5`` file or from the encoder of a saved ``.keras`` model,
and loading the encoder of a pre-trained model (``load_pretrained_encoder``), checked before any training."""

import os
import warnings
import zipfile

import numpy as np

import keras

from supcon_tf.encoders._common import encoder_of, one_line
from supcon_tf.errors import BadInputFile


def _weights_file_shapes(path):
    """The shapes of the variables stored in a Keras `.weights.h5` file, in file order."""
    import h5py

    shapes = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, item: shapes.append(tuple(item.shape)) if isinstance(item, h5py.Dataset) else None)
    return shapes


def _shape_mismatch(expected, found):
    """A short description of where two lists of variable shapes differ, or None if equal."""
    if len(expected) != len(found):
        return f"the file holds {len(found)} variables, the encoder has {len(expected)}"
    if sorted(expected) != sorted(found):
        for i, (a, b) in enumerate(zip(sorted(expected), sorted(found))):
            if a != b:
                return f"variable shapes differ, e.g. the encoder has {a} where the file has {b}"
    return None


def load_encoder_weights(encoder, path):
    """Initialises `encoder` in place from a weights file or from the encoder of a saved model.

    Args:
        encoder: a built ``keras.Model`` (``build_encoder``).
        path: a ``.weights.h5`` file written by ``encoder.save_weights`` of the
            same architecture, or a ``.keras`` file of a SupConModel, a
            classifier (its ``.encoder`` is taken) or a bare encoder.

    Returns:
        `encoder`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: another extension, an unreadable file, or variables whose
            number or shapes differ from `encoder`'s (nothing is assigned).
    """
    if not isinstance(encoder, keras.Model) or not encoder.built:
        raise ValueError(f"`encoder` must be a built keras.Model, received: encoder={encoder!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"`path` must be a file path, received: path={path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    expected = [tuple(w.shape) for w in encoder.weights]
    hint = "save the weights of an encoder built with the same --encoder and image shape (encoder.save_weights)"
    if path.endswith(".weights.h5"):
        try:
            found = _weights_file_shapes(path)
        except OSError as error:
            raise ValueError(f"weights file {path!r} is not a readable .weights.h5 file: {one_line(error)}") from None
        mismatch = _shape_mismatch(expected, found)
        if mismatch:
            raise ValueError(f"weights file {path!r} does not fit encoder {encoder.name!r}: {mismatch}; {hint}")
        before = encoder.get_weights()
        problem = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                encoder.load_weights(path)
            except ValueError as error:
                problem = one_line(error)[:300]
        # Keras only warns (and keeps the fresh values) for parts of the model it finds no group for.
        skipped = [w for w in caught if issubclass(w.category, UserWarning) and "skipping" in str(w.message).lower()]
        if problem is None and skipped:
            problem = " ".join(str(skipped[0].message).split())[:300]
        if problem is not None:
            encoder.set_weights(before)
            raise ValueError(f"weights file {path!r} does not fit encoder {encoder.name!r}: {problem}; {hint}")
        for w in caught:  # anything else is passed on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return encoder
    if path.endswith(".keras"):
        try:
            loaded = keras.saving.load_model(path, compile=False)
        except Exception as error:
            raise ValueError(f"model file {path!r} does not load: {one_line(error)[:300]}") from error
        source = encoder_of(loaded)
        if not isinstance(source, keras.Model):
            raise ValueError(f"model file {path!r} holds no encoder (a {type(loaded).__name__})")
        values = source.get_weights()
        found = [tuple(v.shape) for v in values]
        if found != expected:
            mismatch = _shape_mismatch(expected, found) or "the variables come in another order"
            raise ValueError(
                f"the encoder in {path!r} ({source.name!r}) does not fit encoder {encoder.name!r}: {mismatch}"
            )
        encoder.set_weights(values)
        return encoder
    raise ValueError(f"weights file {path!r} must end in .weights.h5 (encoder.save_weights) or .keras (a saved model)")


# The members every `.keras` file (a zip archive) holds.
_KERAS_ARCHIVE_MEMBERS = ("config.json", "model.weights.h5")


def _check_keras_archive(path, what):
    """Raises BadInputFile unless `path` is a complete `.keras` zip archive whose members read back intact."""
    size = os.path.getsize(path)
    if size == 0:
        raise BadInputFile(f"{what} {path} is empty (0 bytes): not a Keras model file", path=path)
    with open(path, "rb") as f:
        head = f.read(8)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            cause = f"a zip archive without its end ({size} bytes): truncated (an interrupted copy or download?)"
        elif head.startswith(b"\x89HDF"):
            cause = "an HDF5 file (.h5 / .weights.h5), not a .keras model"
        else:
            cause = "not a zip archive (e.g. a text file)"
        raise BadInputFile(f"{what} {path} is not a Keras model file (.keras): {cause}", path=path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in _KERAS_ARCHIVE_MEMBERS if name not in names]
            if missing:
                raise BadInputFile(
                    f"{what} {path} is a zip archive but not a Keras model file: it has no {', '.join(missing)}",
                    path=path,
                )
            bad = archive.testzip()  # reads every member: a CRC error means corrupt bytes
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as error:
        if isinstance(error, BadInputFile):
            raise
        raise BadInputFile(f"{what} {path} is a corrupt Keras model file: {one_line(error)[:300]}", path=path) from None
    if bad is not None:
        raise BadInputFile(
            f"{what} {path} is a corrupt Keras model file: member {bad!r} fails its CRC check", path=path
        )


def _diverged_hint(path):
    """Where an earlier, finite model of the run that wrote `path` may be."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == "checkpoints":
        return "use an earlier checkpoint or retrain"
    return f"use an earlier checkpoint, e.g. {os.path.join(folder, 'checkpoints', 'latest.keras')}, or retrain"


def load_pretrained_encoder(path, image_shape=None):
    """The encoder of the model saved at `path` (a SupConModel, a classifier or a bare encoder), checked.

    Everything is checked here, before any training starts: the path, the
    file (a complete `.keras` archive that loads), the kind of model, the
    image shape, and that every encoder weight is finite.

    Args:
      path: the `.keras` file (the `--pretrained` flag).
      image_shape: `(height, width, channels)` the encoder must take, or None.

    Returns:
      The encoder, a `keras.Model`.

    Raises:
      FileNotFoundError: `path` does not exist.
      BadInputFile (a ValueError): `path` is a folder (with "did you mean
        <path>/model.keras?" when that file exists), is not a Keras model
        file, is truncated or corrupt, does not load, holds no encoder, or
        its encoder has non-finite weights (it came from a diverged run).
      ValueError: `path` is not a path, or the encoder takes images of another
        shape than `image_shape`.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"`pretrained` must be the path of a .keras file, received: pretrained={path!r}")
    path = os.fspath(path)
    what = "`pretrained`"
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.keras")
        hint = (
            f"did you mean {candidate}?" if os.path.isfile(candidate)
            else "give the .keras file of a run, e.g. RUN/model.keras or RUN/checkpoints/latest.keras"
        )
        raise BadInputFile(f"{what} {path} is a folder, not a model file: {hint}", path=path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} does not exist: {path}")
    if not os.path.isfile(path):
        raise BadInputFile(f"{what} {path} is not a regular file", path=path)
    _check_keras_archive(path, what)
    from supcon_tf import models  # noqa: F401  (registers the model classes; imported here: supcon_tf imports this)

    try:
        loaded = keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds for a bad file
        if isinstance(error, OSError) and error.errno is not None:  # the storage, not the file (e.g. no space)
            raise
        cause = one_line(error)[:300]
        raise BadInputFile(f"{what} {path} does not load as a Keras model: {cause}", path=path) from None
    encoder = encoder_of(loaded)
    if not isinstance(encoder, keras.Model):
        raise BadInputFile(
            f"{what} {path} must hold a SupConModel, classifier or encoder, received: {type(loaded).__name__}",
            path=path,
        )
    expected = tuple(encoder.inputs[0].shape[1:]) if getattr(encoder, "inputs", None) else None
    if image_shape is not None and expected is not None and None not in expected and expected != tuple(image_shape):
        raise ValueError(
            f"`image_size` / `channels` give images {tuple(image_shape)}, but the pretrained encoder in {path} takes "
            f"{expected}: leave --image_size and --channels unset to take them from the pre-training run"
        )
    values = encoder.get_weights()
    bad = sum(1 for value in values if not np.all(np.isfinite(value)))
    if bad:
        raise BadInputFile(
            f"the pretrained encoder in {path} has non-finite weights ({bad} of {len(values)} tensors): it came from "
            f"a diverged run; {_diverged_hint(path)}",
            path=path,
        )
    return encoder
