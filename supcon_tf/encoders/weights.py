"""Initialising an encoder in place from a ``.weights.h5`` file or from the encoder of a saved ``.keras`` model."""

import os
import warnings

import keras

from supcon_tf.encoders._common import one_line


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
        source = getattr(loaded, "encoder", loaded)
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
