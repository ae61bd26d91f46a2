"""One experiment stage and its linear probe through `supcon_tf.runner.run`, scored on the validation split.

Shared by the sweep (`experiments/sweep.py`), the report (`experiments/report`)
and the small-batch study (`experiments/small_batch.py`); a binary imports it
from here, never from another binary. A stage is scored by `OBJECTIVE` of
its `final_logs`: CE by its own classifier, SupCon / SimCLR (and CE with
`probe_ce`) by the linear probe trained on its frozen encoder (`probe_for`:
same data, seed and validation split; the test split is never read).
"""

from __future__ import annotations

import os

from supcon_tf.config import RunConfig

OBJECTIVE = "val_accuracy"
# The linear stage's optimisation recipe when none is given (the digits_linear preset's).
PROBE_FIELDS = ("augmentation", "cache_features", "optimizer", "learning_rate", "weight_decay", "epochs", "batch_size")
# What the linear stage takes from the stage it probes.
INHERITED_BY_PROBE = ("dataset", "data_dir", "num_classes", "image_size", "channels", "seed", "validation_fraction", "verbose")


def default_probe(base, **overrides):
    """The linear stage for `base`: the digits_linear recipe, the data settings of `base`, `overrides` last."""
    from experiments import presets

    recipe = presets.get_preset("digits_linear")
    values = {name: recipe[name] for name in PROBE_FIELDS}
    values.update({name: base.setting(name) for name in INHERITED_BY_PROBE})
    values.update(
        method="linear", model_dir=os.path.join(base.model_dir, "linear"), pretrained="unset.keras", evaluate_test=False,
        export=False, checkpoint_every=base.runtime.checkpoint_every,
    )
    values.update(overrides)
    return RunConfig.from_dict(values)


def train_and_score(stage, probe, *, probe_ce=False, callbacks=()):
    """Trains `stage` (and its linear probe) through `runner.run`; returns the validation scores.

    Args:
      stage: the supcon / simclr / ce `RunConfig` (with `validation_fraction`
        > 0 and `evaluate_test=False`); its `model_dir` is the trial folder.
      probe: the linear stage's `RunConfig` (model_dir, pretrained, seed and
        validation split are set here from `stage`).
      probe_ce: probe CE's frozen encoder too.
      callbacks: extra Keras callbacks for the stage's `fit` (not the probe's).

    Returns:
      `{"val_accuracy", "classifier_val_accuracy" (CE), "stage": stage metrics,
      "probe": probe metrics or None}`; `val_accuracy` is the probe's when
      there is one, else CE's own.
    """
    from supcon_tf import runner

    metrics = runner.run(stage, callbacks=callbacks)
    result = {"stage": metrics, "probe": None}
    if stage.method == "ce":
        result["classifier_val_accuracy"] = float(metrics["final_logs"][OBJECTIVE])
        result[OBJECTIVE] = result["classifier_val_accuracy"]
    if stage.method != "ce" or probe_ce:
        linear = probe_for(stage, probe)
        result["probe"] = runner.run(linear)
        result[OBJECTIVE] = float(result["probe"]["final_logs"][OBJECTIVE])
    return result


def probe_for(stage, probe):
    """The linear stage that probes the encoder `stage` trains (same data, seed and validation split)."""
    return probe.replace(
        model_dir=os.path.join(stage.model_dir, "linear"),
        pretrained=os.path.join(stage.model_dir, "model.keras"),
        seed=stage.runtime.seed,
        validation_fraction=stage.evaluation.validation_fraction,
        image_size=stage.data.image_size,
        evaluate_test=False,
    )
