r"""The main job (`make demo`): SupCon, SimCLR and cross-entropy end to end on the bundled digits.

Pre-trains SupCon and SimCLR (small CNN + projection head), trains a linear
probe on each frozen encoder, trains the cross-entropy baseline on the same
encoder architecture, evaluates all three on the held-out test split, prints
a table (method, test top-1, train time) and writes under `--output_dir`:

    metrics.json                      the table, plus the demo's config
    config.json                       the demo's config
    supcon/, simclr/                  pre-training run folders (model.keras = encoder + head, ...)
    supcon/linear/, simclr/linear/    linear-probe run folders (model.keras = frozen encoder + classifier)
    ce/                               cross-entropy run folder (model.keras = encoder + classifier)

Every stage is one `supcon_tf.runner.run` of a `digits_*` preset (the same
code as the training binaries), so each run folder also holds config.json,
checkpoints/, logs/, training_log.csv and metrics.json.

Usage:

    python -m experiments.demo --output_dir runs/demo [--epochs 60] [--seed 0]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Defines the demo's flags (only when run as a program, so importing the module defines none)."""
    flags.DEFINE_string("output_dir", "runs/demo", "Where metrics, config and models are written.")
    flags.DEFINE_integer("epochs", 60, "Pre-training epochs for SupCon / SimCLR and training epochs for CE.")
    flags.DEFINE_integer("probe_epochs", 100, "Linear-probe epochs (on cached features).")
    flags.DEFINE_integer("batch_size", 128, "Training batch size (samples; each gives `views` images).")
    flags.DEFINE_integer("image_size", 16, "Digits (8x8) are resized to this size.")
    flags.DEFINE_integer("seed", 0, "Random seed (data order, augmentation, initialisation).")
    flags.DEFINE_list("methods", ["supcon", "simclr", "ce"], "Which methods to run.")
    flags.DEFINE_integer("verbose", 2, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")

@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Resolved, validated settings of one demo run (the recipes are the `digits_*` presets)."""

    output_dir: str
    epochs: int = 60
    probe_epochs: int = 100
    batch_size: int = 128
    image_size: int = 16
    seed: int = 0
    methods: tuple = ("supcon", "simclr", "ce")
    verbose: int = 2

    def __post_init__(self):
        for name in ("epochs", "probe_epochs", "batch_size", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, received: {name}={value!r}")
        if self.image_size < 8:
            raise ValueError(f"`image_size` must be >= 8, received: image_size={self.image_size}")
        unknown = set(self.methods) - {"supcon", "simclr", "ce"}
        if unknown or not self.methods:
            raise ValueError(
                f"`methods` must be a non-empty subset of supcon, simclr, ce; received: methods={list(self.methods)}"
            )
        if not self.output_dir:
            raise ValueError("`output_dir` must be a non-empty path, received: output_dir=''")

    def run_config(self, preset, model_dir, **overrides):
        """The `RunConfig` of one stage: the digits preset with this demo's settings."""
        from experiments import presets
        from supcon_tf.config import RunConfig

        values = presets.get_preset(preset)
        values.update(
            model_dir=model_dir,
            image_size=self.image_size,
            seed=self.seed,
            verbose=self.verbose,
            export=False,
        )
        if values["method"] != "linear":
            values.update(epochs=self.epochs, batch_size=self.batch_size)
        values.update(overrides)
        return RunConfig.from_dict(values)


def config_from_flags() -> DemoConfig:
    """The one place where flags become a config."""
    return DemoConfig(
        output_dir=FLAGS.output_dir,
        epochs=FLAGS.epochs,
        probe_epochs=FLAGS.probe_epochs,
        batch_size=FLAGS.batch_size,
        image_size=FLAGS.image_size,
        seed=FLAGS.seed,
        methods=tuple(FLAGS.methods),
        verbose=FLAGS.verbose,
    )


def _log(message):
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(config: DemoConfig):
    """Runs every method in `config.methods` through `supcon_tf.runner`; returns the result rows."""
    from supcon_tf import runner

    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)

    rows = []
    for method in config.methods:
        method_dir = os.path.join(config.output_dir, method)
        if method == "ce":
            _log(f"ce: training {config.epochs} epochs end to end")
            metrics = runner.run(config.run_config("digits_ce", method_dir))
            train_seconds = metrics["train_seconds"]
        else:
            _log(f"{method}: pre-training {config.epochs} epochs")
            pretrain = runner.run(config.run_config(f"digits_{method}", method_dir))
            _log(f"{method}: linear probe {config.probe_epochs} epochs on cached features")
            metrics = runner.run(
                config.run_config(
                    "digits_linear",
                    os.path.join(method_dir, "linear"),
                    pretrained=os.path.join(method_dir, "model.keras"),
                    epochs=config.probe_epochs,
                    verbose=0,
                )
            )
            train_seconds = pretrain["train_seconds"] + metrics["train_seconds"]
        row = {"method": method, "test_top1": metrics["test_top1"], "train_seconds": round(train_seconds, 1)}
        _log(f"{method}: test top-1 {row['test_top1']:.4f}, train time {train_seconds:.0f} s")
        rows.append(row)

    with open(os.path.join(config.output_dir, "metrics.json"), "w") as f:
        json.dump({"results": rows, "config": dataclasses.asdict(config)}, f, indent=2)
    return rows


def format_table(rows):
    lines = ["| method | test top-1 | train time (s) |", "|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['test_top1']:.4f} | {row['train_seconds']:.1f} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags()
    except ValueError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    start = time.time()
    rows = run(config)
    print()
    print(format_table(rows))
    print(f"\nTotal wall time: {time.time() - start:.0f} s. Outputs in {config.output_dir}/")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
