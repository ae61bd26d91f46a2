r"""Exports a trained model (.keras) as a SavedModel with named serving signatures.

    supcon-export --model runs/digits_supcon/model.keras --output exported/digits_encoder
    saved_model_cli show --dir exported/digits_encoder --all

A SupConModel (or a bare encoder) gives the encoder signatures (embedding,
representation); a LinearProbe / CrossEntropyModel, or a SupConModel trained
with the joint CE head (--ce_weight), gives the classifier signatures
(logits, probabilities, embedding). When a classifier's model file
has a classes.json next to it (a run folder's: `{"class_names": [names in id
order], ...}`), the export also returns each image's "class_name" and keeps
the names (`supcon_tf.export.saved_model_class_names`); a classes.json whose
number of names is not the model's number of classes is an error.
"""

import dataclasses
import os
import sys

from experiments import flagging
from experiments.flagging import option

# A run folder's class names, next to its model.keras.
CLASSES_FILE = "classes.json"


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
        if os.path.lexists(self.output) and not self.overwrite:
            raise FileExistsError(
                f"`output` {self.output} exists: pass --overwrite to replace it (only a SavedModel folder is replaced)"
            )


def main():
    config = flagging.from_flags(ExportConfig)
    import keras

    import supcon_tf  # noqa: F401  (registers the model classes)
    from supcon_tf import export

    model = keras.saving.load_model(config.model, compile=False)
    class_names = None
    classifier = export.served_classifier(model)  # also a SupConModel's joint CE head (--ce_weight)
    if classifier is not None:
        class_names = _class_names_next_to(config.model, classifier.num_classes, export)
    path = export.export_model(model, config.output, overwrite=config.overwrite, class_names=class_names)
    print(f"exported {type(model).__name__} from {config.model}")
    print(summary(path, class_names, _classes_json(config.model)))
    return 0


def summary(path, class_names, classes_source):
    """What an export wrote and what it returns: its signatures and outputs, and the class names (or ids only).

    Lines for the console (the export binary, and the training binaries that
    export a classifier); `classes_source` names where the names came from.
    """
    from supcon_tf import export

    signatures = export.saved_model_signatures(path)
    outputs = sorted({name for signature in signatures.values() for name in signature["outputs"]})
    lines = [
        f"wrote the SavedModel {path}: signatures {', '.join(sorted(signatures))}; outputs {', '.join(outputs)}"
    ]
    if export.CLASS_NAME in outputs and class_names:
        shown = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")
        lines.append(
            f"it returns the class names of {classes_source} ({len(class_names)} classes, ids in this order): {shown}"
        )
    elif any(name.startswith(export.CLASSIFY) for name in signatures):
        lines.append(f"it returns class ids only (no class names: {classes_source} is missing)")
    lines.append(f"inspect with: saved_model_cli show --dir {path} --all")
    return "\n".join(lines)


def _classes_json(model_path):
    """The classes.json next to a model file (a run folder's)."""
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), CLASSES_FILE)


def _class_names_next_to(model_path, num_classes, export):
    """The class names of the classes.json next to `model_path`, checked against `num_classes`; None if absent."""
    classes_path = _classes_json(model_path)
    if not os.path.exists(classes_path):
        return None
    class_names = export.read_classes_json(classes_path)
    if len(class_names) != num_classes:
        raise ValueError(
            f"{classes_path} names {len(class_names)} classes but the model {model_path} has {num_classes} "
            "outputs: they are not from the same run"
        )
    return class_names


def entry():
    flagging.define(ExportConfig)
    flagging.run_binary(main)


if __name__ == "__main__":
    sys.exit(entry())
