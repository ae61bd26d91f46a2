r"""Exports a trained model (.keras) as a SavedModel with named serving signatures.

    supcon-export --model runs/digits_supcon/model.keras --output exported/digits_encoder
    saved_model_cli show --dir exported/digits_encoder --all

A SupConModel (or a bare encoder) gives the encoder signatures (embedding,
representation); a LinearProbe / CrossEntropyModel gives the classifier
signatures (logits, probabilities, embedding).
"""

import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from experiments import common  # noqa: E402

flags.DEFINE_string("model", None, "Trained model file (.keras): SupConModel, encoder, LinearProbe or CrossEntropyModel.")
flags.DEFINE_string("output", None, "SavedModel folder to write.")
# --overwrite (defined in experiments.common) replaces an existing export, atomically.
FLAGS = flags.FLAGS


def main():
    if not FLAGS.model:
        raise ValueError("`model` must name a .keras file, received: --model unset")
    if not FLAGS.output:
        raise ValueError("`output` must name the SavedModel folder, received: --output unset")
    if not os.path.exists(FLAGS.model):
        raise FileNotFoundError(f"`model` does not exist: {FLAGS.model}")
    import keras

    import supcon_tf  # noqa: F401  (registers the model classes)
    from supcon_tf import export, models

    model = keras.saving.load_model(FLAGS.model, compile=False)
    if isinstance(model, (models.LinearProbe, models.CrossEntropyModel)):
        path = export.export_classifier(model, FLAGS.output, overwrite=FLAGS.overwrite)
    else:
        path = export.export_encoder(model, FLAGS.output, overwrite=FLAGS.overwrite)
    print(f"exported {type(model).__name__} to {path}; inspect with: saved_model_cli show --dir {path} --all")
    return 0


def entry():
    common.run_binary(main)


if __name__ == "__main__":
    sys.exit(entry())
