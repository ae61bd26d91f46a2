r"""Exports a trained model (.keras) as a SavedModel with named serving signatures.

    supcon-export --model runs/digits_supcon/model.keras --output exported/digits_encoder
    saved_model_cli show --dir exported/digits_encoder --all

A SupConModel (or a bare encoder) gives the encoder signatures (embedding,
representation); a LinearProbe / CrossEntropyModel gives the classifier
signatures (logits, probabilities, embedding).
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from experiments import flagging  # noqa: E402
from experiments.flagging import option  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to export where; validated at construction (before TensorFlow loads)."""

    model: str | None = option(
        None, "Trained model file (.keras): SupConModel, encoder, LinearProbe or CrossEntropyModel."
    )
    output: str | None = option(None, "SavedModel folder to write.")
    overwrite: bool = option(False, "Replace an existing export at --output, atomically.")

    def __post_init__(self):
        if not self.model:
            raise ValueError("`model` must name a .keras file, received: --model unset")
        if not self.output:
            raise ValueError("`output` must name the SavedModel folder, received: --output unset")
        if not os.path.exists(self.model):
            raise FileNotFoundError(f"`model` does not exist: {self.model}")


def main():
    config = flagging.from_flags(ExportConfig)
    import keras

    import supcon_tf  # noqa: F401  (registers the model classes)
    from supcon_tf import export, models

    model = keras.saving.load_model(config.model, compile=False)
    if isinstance(model, (models.LinearProbe, models.CrossEntropyModel)):
        path = export.export_classifier(model, config.output, overwrite=config.overwrite)
    else:
        path = export.export_encoder(model, config.output, overwrite=config.overwrite)
    print(f"exported {type(model).__name__} to {path}; inspect with: saved_model_cli show --dir {path} --all")
    return 0


def entry():
    flagging.define(ExportConfig)
    flagging.run_binary(main)


if __name__ == "__main__":
    sys.exit(entry())
