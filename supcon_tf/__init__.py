"""supcon_tf: Supervised Contrastive Learning (Khosla et al., NeurIPS 2020) for TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"

# Importing the package registers every serialisable supcon_tf class with
# Keras, so `keras.saving.load_model` works after a plain `import supcon_tf`.
from supcon_tf import encoders, layers, losses, models, optimizers  # noqa: E402,F401


def load_model(path, *, compile=True, safe_mode=True):
    """Loads a `.keras` file saved by supcon_tf (a SupConModel, LinearProbe, CrossEntropyModel, encoder, ...).

    `keras.saving.load_model` alone fails on these files with "Could not
    locate class 'SupConModel'" unless `supcon_tf` has been imported: the
    import registers the package's classes with Keras. This function is that
    import made explicit; it is otherwise `keras.saving.load_model`.

    Args:
      path: a `.keras` file (str or os.PathLike).
      compile: restore the saved compile state (optimizer, loss), as in
        `keras.saving.load_model`; pass False for inference or export.
      safe_mode: as in `keras.saving.load_model` (refuses to deserialise
        lambdas).

    Returns:
      The model, a `keras.Model`.

    Raises:
      ValueError: `path` does not exist or is not a model file Keras reads.
    """
    import keras

    # The registered classes live in these modules; importing them here makes the dependency explicit.
    from supcon_tf import encoders as _encoders  # noqa: F401
    from supcon_tf import layers as _layers, losses as _losses, memory as _memory  # noqa: F401
    from supcon_tf import models as _models, optimizers as _optimizers  # noqa: F401

    return keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
