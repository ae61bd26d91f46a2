"""supcon_tf: Supervised Contrastive Learning (Khosla et al., NeurIPS 2020) for TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"

# Importing the package registers every serialisable supcon_tf class with
# Keras, so `keras.saving.load_model` works after a plain `import supcon_tf`.
from supcon_tf import layers, losses, models, optimizers  # noqa: E402,F401
