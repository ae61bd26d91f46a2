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

    python -m experiments.demo --output_dir runs/demo [--epochs 10] [--seed 0]
"""

from __future__ import annotations

import dataclasses
import os
import time

from experiments import flagging
from experiments.flagging import option

METHODS = ("supcon", "simclr", "ce")
# The `RunConfig` settings the demo sets on every stage, over the stage's digits_* preset, with the demo's
# defaults. Their flags are the training binaries' flags of the same names (`RunConfig`'s help and validation);
# the linear probes keep their preset's epochs and batch size (they train --probe_epochs epochs).
# 10 epochs at the digits' native 8x8: the fewest epochs at which every seed of reports/demo/budget.json ranks
# SupCon > SimCLR > CE (README: `make demo`'s budget).
STAGE_DEFAULTS = dict(epochs=10, batch_size=128, image_size=8, seed=0, verbose=2)
PROBE_KEEPS = ("epochs", "batch_size")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Resolved, validated settings of one demo run (the recipes are the `digits_*` presets).

    `stage` holds the `RunConfig` settings of every stage (`STAGE_DEFAULTS`
    for those it does not give); construction builds every stage's
    `RunConfig`, so a bad value fails before anything is written.
    """

    output_dir: str = option("runs/demo", "Where metrics, config and models are written.")
    probe_epochs: int = option(
        100, "Linear-probe epochs (on cached features); --epochs is the SupCon / SimCLR pre-training and CE epochs."
    )
    methods: tuple[str, ...] = option(METHODS, "Which methods to run.")
    stage: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError("`output_dir` must be a non-empty path, received: output_dir=''")
        if isinstance(self.probe_epochs, bool) or not isinstance(self.probe_epochs, int) or self.probe_epochs < 1:
            raise ValueError(f"`probe_epochs` must be a positive int, received: probe_epochs={self.probe_epochs!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise ValueError(
                f"`methods` must be a non-empty subset of {', '.join(METHODS)}; received: methods={list(self.methods)}"
            )
        unknown = sorted(set(self.stage) - set(STAGE_DEFAULTS))
        if unknown:
            raise ValueError(f"`stage` sets only {', '.join(STAGE_DEFAULTS)}; received: {unknown}")
        object.__setattr__(self, "stage", {**STAGE_DEFAULTS, **self.stage})
        for method in self.methods:  # every stage's RunConfig validates the stage settings now, not mid-run
            self.run_config(f"digits_{method}", "check")
        self.probe_config("check")
        if self.stage["image_size"] < 8:
            raise ValueError(
                f"`image_size` must be >= 8 (the digits are 8x8), received: image_size={self.stage['image_size']}"
            )

    def run_config(self, preset, model_dir, **overrides):
        """The `RunConfig` of one stage: the digits preset with this demo's settings, then `overrides`."""
        from experiments import presets
        from supcon_tf.config import RunConfig

        values = presets.get_preset(preset)
        linear = values["method"] == "linear"
        values.update({k: v for k, v in self.stage.items() if not (linear and k in PROBE_KEEPS)})
        values.update(model_dir=model_dir, export=False)
        values.update(overrides)
        return RunConfig.from_dict(values)

    def probe_config(self, method_dir):
        """The linear probe of the encoder pre-trained in `method_dir`: `probe_epochs` epochs, silent."""
        return self.run_config(
            "digits_linear", os.path.join(method_dir, "linear"), pretrained=os.path.join(method_dir, "model.keras"),
            epochs=self.probe_epochs, verbose=0,
        )

    def to_dict(self):
        """The demo's settings, flat: its own fields and the stage settings (config.json, metrics.json)."""
        own = {"output_dir": self.output_dir, "probe_epochs": self.probe_epochs, "methods": list(self.methods)}
        return {**own, **self.stage}


def define_flags():
    """Defines the demo's flags (only when run as a program, so importing the module defines none)."""
    from supcon_tf.config import RunConfig

    flagging.define(DemoConfig)
    flagging.define(RunConfig, names=tuple(STAGE_DEFAULTS), defaults=STAGE_DEFAULTS)


def config_from_flags() -> DemoConfig:
    """The one place where flags become a config."""
    from supcon_tf.config import RunConfig

    return flagging.from_flags(DemoConfig, stage=flagging.values(RunConfig, names=tuple(STAGE_DEFAULTS)))


def _log(message):
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(config: DemoConfig):
    """Runs every method in `config.methods` through `supcon_tf.runner`; returns the result rows."""
    from supcon_tf import ownership, runner
    from supcon_tf.checkpointing import write_json_atomically

    # The demo's folder is its own (a marker, like a run folder's): a user's folder is refused, never written into.
    ownership.claim(
        config.output_dir, kind="demo", own_entries={"config.json", "metrics.json", *METHODS},
        core=("config.json", "metrics.json"), name="output_dir",
    )
    write_json_atomically(os.path.join(config.output_dir, "config.json"), config.to_dict(), indent=2)

    rows = []
    for method in config.methods:
        method_dir = os.path.join(config.output_dir, method)
        if method == "ce":
            _log(f"ce: training {config.stage['epochs']} epochs end to end")
            metrics = runner.run(config.run_config("digits_ce", method_dir))
            train_seconds = metrics["train_seconds"]
        else:
            _log(f"{method}: pre-training {config.stage['epochs']} epochs")
            pretrain = runner.run(config.run_config(f"digits_{method}", method_dir))
            _log(f"{method}: linear probe {config.probe_epochs} epochs on cached features")
            metrics = runner.run(config.probe_config(method_dir))
            train_seconds = pretrain["train_seconds"] + metrics["train_seconds"]
        row = {"method": method, "test_top1": metrics["test_top1"], "train_seconds": round(train_seconds, 1)}
        _log(f"{method}: test top-1 {row['test_top1']:.4f}, train time {train_seconds:.0f} s")
        rows.append(row)

    write_json_atomically(
        os.path.join(config.output_dir, "metrics.json"), {"results": rows, "config": config.to_dict()}, indent=2
    )
    return rows


def format_table(rows):
    lines = ["| method | test top-1 | train time (s) |", "|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['test_top1']:.4f} | {row['train_seconds']:.1f} |")
    return "\n".join(lines)


def _main():
    config = config_from_flags()
    start = time.time()
    rows = run(config)
    print()
    print(format_table(rows))
    print(f"\nTotal wall time: {time.time() - start:.0f} s. Outputs in {config.output_dir}/")
    return 0


def entry():
    define_flags()
    flagging.run_binary(_main)


if __name__ == "__main__":
    entry()
