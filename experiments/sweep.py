r"""keras-tuner sweeps (random, hyperband, grid) over temperature, learning rate, batch size, augmentation and epochs.

Every trial trains through `supcon_tf.runner.run`, the one training path,
on the part of the TRAINING split that is left after carving a validation
split (`RunConfig.validation_fraction`, seeded by the run's `seed`); the
test split is never read (`evaluate_test=False`):

The stages of a trial are `experiments.training.train_and_score`:

* CE: one `runner.run` of the ce stage, scored by its `final_logs["val_accuracy"]`;
* SupCon / SimCLR: a `runner.run` pre-training stage, then a `runner.run`
  linear stage (`SweepConfig.probe`) on its frozen encoder, scored by the
  probe's `final_logs["val_accuracy"]`; with `probe_ce=True` CE is scored
  the same way (its own classifier's score is kept as
  `classifier_val_accuracy`).

The tuner is a `keras_tuner.Tuner` subclass whose `run_trial` runs those
stages and returns the objective (keras-tuner's documented way to tune a
custom training process). Hyperband's promoted trials start from the encoder
of the trial they continue (`encoder_weights`) and train the epochs it adds,
with a fresh schedule.

    python -m experiments.sweep --preset digits_supcon --tuner random --max_trials 8 \
        --epochs 15 --learning_rate_grid 0.01,0.05,0.2 --temperature_grid 0.05,0.1,0.5 --model_dir runs/sweep_supcon
    python -m experiments.sweep --preset digits_ce --tuner hyperband --epochs 27 --model_dir runs/sweep_ce

The base recipe comes from the training flags (`--preset` and every
`RunConfig` flag, as in `experiments/common.py`); each `--*_grid` flag lists
the values to search for one field (empty: the base value, not searched;
`temperature` is not searched for `ce`). Writes into `--model_dir`:

    results.csv, results.md   one row per trial: hyper-parameters, validation top-1, status (best first)
    summary.json              the sweep config, the best trial, and the spread (mean, std, min, max) of the scores
    trials/<id>/              each trial's run folder (and linear/ for the probe)
    tuner/                    keras-tuner's own state

The machinery (`SweepConfig`, the tuner, `run_sweep`) is `experiments/tuning.py`, which the report
(`experiments/report`) and the recipe study use too; this module is the binary: its flags and its entry.
"""

from __future__ import annotations

import dataclasses
import os

from experiments import flagging
from experiments.flagging import option
from experiments.training import OBJECTIVE, default_probe
from experiments.tuning import SweepConfig, format_markdown, run_sweep
from supcon_tf.config import RunConfig


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """The sweep binary's linear stage: `default_probe(base, epochs=probe_epochs)`."""

    probe_epochs: int = option(100, "Linear-probe epochs (contrastive methods; the digits_linear recipe).")


def _define_flags():
    """Defines the training flags (experiments/common.py) and the sweep's own; only when run as a binary."""
    from experiments import common  # noqa: F401  (defines --preset and every RunConfig flag)

    flagging.define(SweepConfig)
    flagging.define(ProbeOptions)
    # --validation_fraction is the training binaries' flag (experiments.common); the sweep defaults it to 0.2.


_parse_list = flagging.parse_list


def config_from_flags():
    """The one place where the sweep's flags become a `SweepConfig`."""
    from experiments import common

    base = common.config_from_flags()
    given = flagging.values(RunConfig, names=("model_dir", "validation_fraction"), unset=True)
    values = flagging.values(SweepConfig)
    if "model_dir" not in given:
        base = base.replace(model_dir=os.path.join("runs", f"sweep_{base.method}_{values['tuner']}"))
    if "validation_fraction" not in given:
        base = base.replace(validation_fraction=0.2)
    probe = default_probe(base, epochs=flagging.from_flags(ProbeOptions).probe_epochs)
    return SweepConfig(base=base.replace(evaluate_test=False), probe=probe, **values)


def main():
    sweep = config_from_flags()
    rows, summary = run_sweep(sweep, verbose=sweep.base.runtime.verbose)
    print(format_markdown(rows))
    s = summary["spread"]
    if s["n"]:
        print(
            f"{s['n']} trials: {OBJECTIVE} mean {s['mean']:.4f}, std {s['std']:.4f}, min {s['min']:.4f}, "
            f"max {s['max']:.4f}. Tables in {sweep.output_dir}/results.md, results.csv; {summary['seconds']:.0f} s."
        )
    return 0


def entry():
    _define_flags()
    flagging.run_binary(main)


if __name__ == "__main__":
    entry()
