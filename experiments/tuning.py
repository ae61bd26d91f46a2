"""keras-tuner sweeps of `RunConfig` stages: `SweepConfig`, the tuner, the trial table and `run_sweep`.

The machinery of `python -m experiments.sweep` (the binary, `experiments/sweep.py`: its flags and its
entry), also used by the report (`experiments/report`) to tune its methods and run its stability grid, and
by the recipe study. Every trial trains through `experiments.training.train_and_score` (the one training
path, `supcon_tf.runner.run`), on the part of the TRAINING split left after carving a validation split; the
test split is never read. The binary's docstring says what a sweep writes.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import time

from experiments import scores as scores_lib
from experiments.flagging import option
from experiments.training import OBJECTIVE, default_probe, train_and_score
from supcon_tf import checkpointing
from supcon_tf.config import AUGMENTATIONS, RunConfig

TUNERS = ("random", "hyperband", "grid")
SWEPT_FIELDS = ("temperature", "learning_rate", "batch_size", "augmentation", "epochs", "warmup_epochs")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: the stage to tune (`base`), the linear stage that scores it (`probe`), the grids, the tuner.

    `base.model_dir` is the sweep's output folder, `base.evaluation.validation_fraction`
    the validation split (carved from TRAIN with `base.runtime.seed`), `base.runtime.seed` also
    seeds the tuner. `probe` is a `RunConfig` of method "linear" (its
    model_dir and pretrained are set per trial; default `default_probe(base)`).
    Empty grids keep the base value (not searched). The fields with a help
    text are the sweep binary's flags (the grids: `--<field>_grid`).
    """

    base: RunConfig
    probe: RunConfig | None = None
    tuner: str = option("random", f"keras-tuner search: {' | '.join(TUNERS)}.")
    max_trials: int = option(10, "Trials for random / grid search (hyperband sizes itself from --epochs).")
    temperatures: tuple[float, ...] = option(
        (), "Temperatures to search (empty: --temperature; not for ce).", flag="temperature_grid"
    )
    learning_rates: tuple[float, ...] = option(
        (), "Learning rates to search (empty: --learning_rate).", flag="learning_rate_grid"
    )
    batch_sizes: tuple[int, ...] = option((), "Batch sizes to search (empty: --batch_size).", flag="batch_size_grid")
    augmentations: tuple[str, ...] = option(
        (), f"Augmentation policies to search, of {', '.join(AUGMENTATIONS)}.", flag="augmentation_grid"
    )
    epochs: tuple[int, ...] = option((), "Epochs to search (empty: --epochs; not with hyperband).", flag="epochs_grid")
    warmup_epochs: tuple[int, ...] = option(
        (), "Warm-up epochs to search (empty: --warmup_epochs; each at most the trial's epochs).",
        flag="warmup_epochs_grid",
    )
    hyperband_factor: int = option(3, "Hyperband's reduction factor.")
    probe_ce: bool = option(False, "Score CE by a linear probe on its frozen encoder too.")

    def __post_init__(self):
        if not isinstance(self.base, RunConfig):
            raise ValueError(f"`base` must be a RunConfig, received: {type(self.base).__name__}")
        if self.base.method not in ("supcon", "simclr", "ce"):
            raise ValueError(f"`method` must be supcon, simclr or ce for a sweep, received: method={self.base.method!r}")
        if not 0.0 < self.base.evaluation.validation_fraction < 0.5:
            raise ValueError(
                "`validation_fraction` must be in (0, 0.5) for a sweep (trials are scored on it), received: "
                f"validation_fraction={self.base.evaluation.validation_fraction!r}"
            )
        if self.base.evaluation.evaluate_test:
            object.__setattr__(self, "base", self.base.replace(evaluate_test=False))  # a sweep never reads the test split
        if self.probe is None:
            object.__setattr__(self, "probe", default_probe(self.base))
        if not isinstance(self.probe, RunConfig) or self.probe.method != "linear":
            raise ValueError(f"`probe` must be a RunConfig with method='linear', received: {self.probe!r}")
        if self.tuner not in TUNERS:
            raise ValueError(f"`tuner` must be one of {', '.join(TUNERS)}; received: tuner={self.tuner!r}")
        if isinstance(self.max_trials, bool) or not isinstance(self.max_trials, int) or self.max_trials < 1:
            raise ValueError(f"`max_trials` must be a positive int, received: max_trials={self.max_trials!r}")
        if isinstance(self.hyperband_factor, bool) or not isinstance(self.hyperband_factor, int) or self.hyperband_factor < 2:
            raise ValueError(f"`hyperband_factor` must be an int >= 2, received: hyperband_factor={self.hyperband_factor!r}")
        if not isinstance(self.probe_ce, bool):
            raise ValueError(f"`probe_ce` must be a bool, received: probe_ce={self.probe_ce!r}")
        if self.base.method == "ce" and self.temperatures:
            raise ValueError(f"the temperature grid does not apply to method='ce', received: temperatures={self.temperatures!r}")
        for field, values in zip(SWEPT_FIELDS, self._grid_values()):
            if not isinstance(values, tuple) or len(set(values)) != len(values):
                raise ValueError(f"the {field} grid must be a tuple of distinct values, received: {values!r}")
            for value in values:  # RunConfig validates each value with its own message
                self.base.replace(**{field: value})
        if self.tuner == "hyperband":
            if self.epochs:
                raise ValueError("hyperband chooses the epochs itself: leave the epochs grid empty")
            if self.warmup_epochs:
                raise ValueError("hyperband trains in rounds of its own length: leave the warm-up grid empty")
            if self.base.optim.epochs < self.hyperband_factor:
                raise ValueError(
                    f"`epochs` must be >= hyperband_factor ({self.hyperband_factor}) for hyperband, "
                    f"received: epochs={self.base.optim.epochs}"
                )

    def _grid_values(self):
        return (self.temperatures, self.learning_rates, self.batch_sizes, self.augmentations, self.epochs, self.warmup_epochs)

    @property
    def output_dir(self):
        return self.base.model_dir

    def grids(self):
        """`{field: values}` of the searched fields (one value: the base value)."""
        values = {
            field: grid or (self.base.setting(field),) for field, grid in zip(SWEPT_FIELDS, self._grid_values())
        }
        if self.base.method == "ce":
            del values["temperature"]  # CE has no temperature
        if self.tuner == "hyperband":
            del values["epochs"]  # hyperband's own tuner/epochs
        return values

    def trial_dir(self, trial_id):
        return os.path.join(self.output_dir, "trials", str(trial_id))

    def to_dict(self):
        return {
            "base": self.base.to_dict(),
            "probe": self.probe.to_dict(),
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("base", "probe")},
        }


def trial_stage(sweep, trial_id, values):
    """The stage `RunConfig` of one trial from its hyper-parameter `values` (keras-tuner's `hp.values`)."""
    changes = {field: values[field] for field in sweep.grids() if field in values}
    if "tuner/epochs" in values:  # hyperband: train the epochs this round adds, warm-started from the trial it continues
        epochs = max(1, int(values["tuner/epochs"]) - int(values.get("tuner/initial_epoch", 0)))
        changes.update(epochs=epochs, warmup_epochs=min(sweep.base.optim.warmup_epochs, epochs))
        previous = values.get("tuner/trial_id")
        if previous is not None:
            changes["encoder_weights"] = os.path.join(sweep.trial_dir(previous), "model.keras")
    return sweep.base.replace(model_dir=sweep.trial_dir(trial_id), **changes)


_TUNER_CLASS = None


def _tuner_class():
    """`RunnerTuner`, a `keras_tuner.Tuner` whose `run_trial` trains through `runner.run` (built once, lazily)."""
    global _TUNER_CLASS
    if _TUNER_CLASS is not None:
        return _TUNER_CLASS
    import keras
    import keras_tuner

    from supcon_tf import resilience

    class RunnerTuner(keras_tuner.Tuner):
        """Runs each trial's stages with `runner.run` and returns its validation scores to the oracle."""

        def __init__(self, sweep, oracle, callbacks=None, **kwargs):
            super().__init__(oracle=oracle, **kwargs)
            self.sweep = sweep
            self.callback_factory = callbacks
            self.stopped = None  # an error that must end the search, re-raised by run_sweep

        def run_trial(self, trial, *args, **kwargs):
            sweep = self.sweep
            stage = trial_stage(sweep, trial.trial_id, trial.hyperparameters.values)
            callbacks = self.callback_factory(stage) if self.callback_factory else ()
            try:
                result = train_and_score(stage, sweep.probe, probe_ce=sweep.probe_ce, callbacks=callbacks)
            except resilience.Diverged as error:  # a legitimate outcome of a hyper-parameter choice
                raise keras_tuner.errors.FailedTrialError(f"diverged: {error}") from None
            except resilience.Collapsed as error:  # stop_on_collapse: so is a collapse
                raise keras_tuner.errors.FailedTrialError(f"collapsed: {error}") from None
            except BaseException as error:  # anything else ends the search, with its own type
                self.stopped = error
                raise keras_tuner.errors.FatalError(str(error)) from error
            finally:
                keras.backend.clear_session()  # the trial's models are saved; free their graphs
            scores = {OBJECTIVE: result[OBJECTIVE]}
            if "classifier_val_accuracy" in result:
                scores["classifier_val_accuracy"] = result["classifier_val_accuracy"]
            return scores

    _TUNER_CLASS = RunnerTuner
    return RunnerTuner


def declare_search_space(sweep, hp):
    """Declares one `hp.Choice` per searched field (idempotent: returns the current values)."""
    for field, values in sweep.grids().items():
        hp.Choice(field, list(values), ordered=field != "augmentation")
    return hp


def make_tuner(sweep, *, callbacks=None, overwrite=True):
    """The `RunnerTuner` of `sweep` with its oracle; `overwrite=False` reloads an interrupted search."""
    import keras_tuner

    hp = declare_search_space(sweep, keras_tuner.HyperParameters())
    objective = keras_tuner.Objective(OBJECTIVE, direction="max")
    common = dict(objective=objective, hyperparameters=hp, seed=sweep.base.runtime.seed, max_consecutive_failed_trials=10**6)
    if sweep.tuner == "random":
        oracle = keras_tuner.oracles.RandomSearchOracle(max_trials=sweep.max_trials, **common)
    elif sweep.tuner == "grid":
        oracle = keras_tuner.oracles.GridSearchOracle(max_trials=sweep.max_trials, **common)
    else:
        oracle = keras_tuner.oracles.HyperbandOracle(
            max_epochs=sweep.base.optim.epochs, factor=sweep.hyperband_factor, hyperband_iterations=1, **common
        )
    return _tuner_class()(
        sweep, oracle, callbacks=callbacks, directory=sweep.output_dir, project_name="tuner", overwrite=overwrite
    )


# ---------------------------------------------------------------------------
# The sweep and its tables.
# ---------------------------------------------------------------------------


def trial_rows(tuner, sweep):
    """One dict per trial: trial id, the searched values, epochs, score(s), status, run folder; best first."""
    rows = []
    for trial in tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        row = {"trial": trial.trial_id}
        for field in sweep.grids():
            if field != "epochs":
                row[field] = values.get(field)
        row["epochs"] = values.get("tuner/epochs", values.get("epochs", sweep.base.optim.epochs))
        row[OBJECTIVE] = None if trial.score is None else float(trial.score)
        if sweep.base.method == "ce" and sweep.probe_ce:
            metric = trial.metrics.get_last_value("classifier_val_accuracy") if trial.metrics.exists(
                "classifier_val_accuracy"
            ) else None
            row["classifier_val_accuracy"] = None if metric is None else float(metric)
        row["status"] = str(trial.status)
        row["model_dir"] = sweep.trial_dir(trial.trial_id)
        rows.append(row)
    rows.sort(key=lambda r: (r[OBJECTIVE] is None, -(r[OBJECTIVE] or 0.0), r["trial"]))
    return rows


def format_markdown(rows):
    if not rows:
        return "(no trials)\n"
    columns = [c for c in rows[0] if c != "model_dir"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row[column]
            cells.append(f"{value:.4f}" if isinstance(value, float) and column.endswith(OBJECTIVE) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(rows, sweep, output_dir, seconds):
    os.makedirs(output_dir, exist_ok=True)
    if rows:
        with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(f"# Sweep: {sweep.base.method}, {sweep.tuner} search, objective {OBJECTIVE} (validation split of train)\n\n")
        f.write(format_markdown(rows))
    summary = {
        "sweep": sweep.to_dict(),
        "best": rows[0] if rows and rows[0][OBJECTIVE] is not None else None,
        "spread": scores_lib.spread([r[OBJECTIVE] for r in rows]),
        "seconds": round(seconds, 1),
    }
    checkpointing.write_json_atomically(os.path.join(output_dir, "summary.json"), summary, indent=2)
    return summary


def run_sweep(sweep, *, callbacks=None, overwrite=True, verbose=0):
    """Runs the sweep; writes results.csv / results.md / summary.json; returns `(rows, summary)`.

    Args:
      sweep: a `SweepConfig`.
      callbacks: None, or `stage_config -> [keras callbacks]`, called for
        each trial's training stage (not its probe).
      overwrite: start afresh (the default: removes `trials/` and keras-tuner's
        state); False reloads an interrupted sweep: finished trials are kept
        and an unfinished trial's run folder resumes.
    """
    import keras_tuner

    if not isinstance(sweep, SweepConfig):
        raise ValueError(f"`sweep` must be a SweepConfig, received: {type(sweep).__name__}")
    from supcon_tf import ownership

    start = time.time()
    # The sweep's folder is its own (supcon_tf.ownership): a folder supcon_tf did not create is refused.
    ownership.claim(sweep.output_dir, kind="sweep", own_entries=None, core=("summary.json", "tuner", "trials"),
                    name="output_dir")
    if overwrite:
        shutil.rmtree(os.path.join(sweep.output_dir, "trials"), ignore_errors=True)
    tuner = make_tuner(sweep, callbacks=callbacks, overwrite=overwrite)
    try:
        tuner.search(verbose=verbose)
    except keras_tuner.errors.FatalError:
        if tuner.stopped is not None:
            raise tuner.stopped
        raise
    rows = trial_rows(tuner, sweep)
    summary = write_results(rows, sweep, sweep.output_dir, time.time() - start)
    return rows, summary


# ---------------------------------------------------------------------------
# The binary.
# ---------------------------------------------------------------------------
