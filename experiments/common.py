"""Flags of the training binaries, and the one place where flags (and a preset) become a `RunConfig`.

Resolution order: `RunConfig` defaults < `--preset` < explicit flags. Every
`RunConfig` field has a flag of the same name, generated with its help text by
`experiments/flagging.py` (the one flag mechanism of every binary); a flag left
unset does not override the preset. Bad values end the program with one line
on stderr and exit status 2, never a traceback; other errors end it with one
line and the status of their kind (`supcon_tf/errors.py`), the traceback
appended to `<model_dir>/error.log` (`flagging.set_run_folder`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from experiments import flagging, presets
from experiments.flagging import FLAGS, option, run_binary  # noqa: F401  (run_binary: the binaries' runner)
from supcon_tf.config import RunConfig


@dataclasses.dataclass(frozen=True)
class StageOptions:
    """The training binaries' flags that are not `RunConfig` fields."""

    preset: str | None = option(
        None, f"Named recipe; explicit flags override it. One of: {', '.join(presets.PRESETS)}."
    )
    overwrite: bool = option(
        False,
        "Start afresh in a --model_dir that holds a finished (or unfinished) run; without it a finished run is left "
        "unchanged and an unfinished one is resumed.",
    )


flagging.define(StageOptions)
flagging.define(RunConfig, unset=True)  # unset flags do not override --preset; the help states each default


# What a linear evaluation takes from the pre-training run it evaluates (RUN/config.json), unless a flag sets it.
INHERITED_FROM_PRETRAINED = ("dataset", "data_dir", "image_size", "channels")


def _pretrained_run_config(pretrained):
    """The config.json next to a `--pretrained` model file, or {}."""
    path = os.path.join(os.path.dirname(os.path.abspath(pretrained)), "config.json")
    if not os.path.isfile(pretrained) or not os.path.exists(path):  # a folder or a missing file: the loader says so
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        raise ValueError(f"`pretrained` run's config.json is not valid JSON: {path}") from None


def config_from_flags(**fixed) -> RunConfig:
    """Defaults < preset < (linear: the pre-training run's data settings) < explicit flags < `fixed`.

    `fixed` is what the binary itself decides, e.g. method.
    """
    preset = flagging.from_flags(StageOptions).preset
    values = presets.get_preset(preset) if preset else {}
    if "batch_size" in values:  # a recipe's learning rate is given for its own batch
        values.setdefault("reference_batch_size", values["batch_size"])
    explicit = flagging.values(RunConfig, unset=True)
    pretrained = explicit.get("pretrained", values.get("pretrained"))
    if fixed.get("method") == "linear" and pretrained:
        run_config = _pretrained_run_config(pretrained)
        for name in INHERITED_FROM_PRETRAINED:
            if name in run_config:
                values[name] = run_config[name]
    values.update(explicit)
    for name, value in fixed.items():
        if values.get(name, value) != value:
            raise ValueError(
                f"`{name}` is fixed to {value!r} by this binary, received: {name}={values[name]!r} "
                f"(from {'--' + name if name in explicit else '--preset ' + str(preset)})"
            )
        values[name] = value
    return RunConfig.from_dict(values)


def run_stage(config):
    """Runs `config` through `supcon_tf.runner.run` with `--overwrite`; returns its metrics, or None if it was finished.

    Prints one line when the folder was already finished (nothing changed).
    """
    from supcon_tf import runner

    metrics = runner.run(config, overwrite=flagging.from_flags(StageOptions).overwrite)
    if metrics.get("already_finished"):
        print(f"{config.model_dir} is already finished; nothing changed (pass --overwrite to start afresh)")
        return None
    return metrics


def stage_entry(*, methods, summary):
    """The console-script entry of a training binary: flags -> RunConfig -> `runner.run` -> one summary line.

    Args:
      methods: the methods this binary trains; with one, it is fixed (a
        different --method or preset method is an error).
      summary: `(metrics) -> str`, the line printed after a finished run.
    """

    def main():
        config = config_from_flags(**({"method": methods[0]} if len(methods) == 1 else {}))
        flagging.set_run_folder(config.model_dir)  # a top-level error's traceback goes to its error.log
        if config.method not in methods:
            raise ValueError(f"`method` must be one of {', '.join(methods)} here, received: method={config.method!r}")
        metrics = run_stage(config)
        if metrics is not None:
            print(f"{summary(metrics)}; outputs in {config.model_dir}")
            if config.runtime.export and (config.method in ("ce", "linear") or config.model.ce_weight > 0):
                print(_classifier_export_summary(config.model_dir))
        return 0

    return lambda: run_binary(main)


def _classifier_export_summary(model_dir):
    """`export_model.summary` of the classifier SavedModel a training run wrote, with its run's class names."""
    from experiments import export_model
    from supcon_tf import export

    classes_path = os.path.join(model_dir, export_model.CLASSES_FILE)
    class_names = export.read_classes_json(classes_path) if os.path.exists(classes_path) else None
    return export_model.summary(os.path.join(model_dir, "saved_model"), class_names, classes_path)


def top1_summary(label):
    """`summary` for stages that end with a test evaluation."""
    return lambda metrics: f"{label}: " + (
        f"test top-1 {metrics['test_top1']:.4f}" if "test_top1" in metrics else "test split not evaluated"
    )

