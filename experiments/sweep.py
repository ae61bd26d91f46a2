r"""keras-tuner sweeps (random, hyperband, grid) over temperature, learning rate, batch size and augmentation.

Every trial trains one method (SupCon / SimCLR pre-training + a linear probe
on cached features, or the cross-entropy baseline) and is scored by its
top-1 accuracy on a **validation split carved from the training split**
(stratified for digits). The test split is never loaded.

    python -m experiments.sweep --preset digits_supcon --tuner random --max_trials 8 \
        --epochs 15 --learning_rate_grid 0.01,0.05,0.2 --batch_size_grid 64,128 \
        --temperature_grid 0.05,0.1,0.5 --augmentation_grid simclr,randaugment --model_dir runs/sweep_supcon
    python -m experiments.sweep --preset digits_ce --tuner hyperband --epochs 27 --model_dir runs/sweep_ce

The base recipe comes from the training flags (`--preset` and every
`RunConfig` flag, as in `experiments/common.py`); each `--*_grid` flag lists
the values to search for one field (empty: the base value, not searched;
`temperature` is not searched for `ce`). `--epochs` is each trial's epochs
(Hyperband: the largest budget). Writes into `--model_dir`:

    results.csv, results.md   one row per trial: hyper-parameters, validation top-1, status (best first)
    summary.json              the sweep config, the best trial, and the spread (mean, std, min, max) of the scores
    tuner/                    keras-tuner's own state (trial folders, weights)

The same code runs the hyper-parameter stability study of
`experiments/digits_report.py` (a grid search per method).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from supcon_tf.config import AUGMENTATIONS, RunConfig  # noqa: E402  (pure Python)

TUNERS = ("random", "hyperband", "grid")
OBJECTIVE = "val_accuracy"
SWEPT_FIELDS = ("temperature", "learning_rate", "batch_size", "augmentation")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: the base `RunConfig`, the grids, the tuner, the validation split and the probe.

    `base.model_dir` is the sweep's output folder. Empty grids keep the base
    value (not searched). The probe (contrastive methods only) trains a
    linear classifier with Adam on features of the frozen encoder.
    """

    base: RunConfig
    tuner: str = "random"
    max_trials: int = 10  # random / grid (grid: at most this many points); hyperband sizes itself
    temperatures: tuple = ()
    learning_rates: tuple = ()
    batch_sizes: tuple = ()
    augmentations: tuple = ()
    validation_fraction: float = 0.2
    split_seed: int = 0
    hyperband_factor: int = 3
    probe_epochs: int = 100
    probe_learning_rate: float = 0.01
    probe_batch_size: int = 256

    def __post_init__(self):
        if not isinstance(self.base, RunConfig):
            raise ValueError(f"`base` must be a RunConfig, received: {type(self.base).__name__}")
        if self.base.method not in ("supcon", "simclr", "ce"):
            raise ValueError(f"`method` must be supcon, simclr or ce for a sweep, received: method={self.base.method!r}")
        if self.tuner not in TUNERS:
            raise ValueError(f"`tuner` must be one of {', '.join(TUNERS)}; received: tuner={self.tuner!r}")
        for name in ("max_trials", "probe_epochs", "probe_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, received: {name}={value!r}")
        if isinstance(self.hyperband_factor, bool) or not isinstance(self.hyperband_factor, int) or self.hyperband_factor < 2:
            raise ValueError(f"`hyperband_factor` must be an int >= 2, received: hyperband_factor={self.hyperband_factor!r}")
        if not (isinstance(self.validation_fraction, float) and 0.0 < self.validation_fraction < 0.5):
            raise ValueError(
                f"`validation_fraction` must be a float in (0, 0.5), received: validation_fraction={self.validation_fraction!r}"
            )
        if not isinstance(self.split_seed, int) or not 0 <= self.split_seed < 2**31:
            raise ValueError(f"`split_seed` must be an int in [0, 2**31), received: split_seed={self.split_seed!r}")
        if not (isinstance(self.probe_learning_rate, float) and math.isfinite(self.probe_learning_rate) and self.probe_learning_rate > 0):
            raise ValueError(f"`probe_learning_rate` must be a positive float, received: {self.probe_learning_rate!r}")
        for field, values in zip(SWEPT_FIELDS, (self.temperatures, self.learning_rates, self.batch_sizes, self.augmentations)):
            if not isinstance(values, tuple) or len(set(values)) != len(values):
                raise ValueError(f"the {field} grid must be a tuple of distinct values, received: {values!r}")
            for value in values:  # RunConfig validates each value with its own message
                self.base.replace(**{field: value})
        if self.tuner == "hyperband" and self.base.epochs < self.hyperband_factor:
            raise ValueError(
                f"`epochs` must be >= hyperband_factor ({self.hyperband_factor}) for hyperband, "
                f"received: epochs={self.base.epochs}"
            )

    @property
    def output_dir(self):
        return self.base.model_dir

    def grids(self):
        """`{field: values}` of the searched fields (one value: the base value)."""
        values = dict(
            temperature=self.temperatures or (self.base.temperature,),
            learning_rate=self.learning_rates or (self.base.learning_rate,),
            batch_size=self.batch_sizes or (self.base.batch_size,),
            augmentation=self.augmentations or (self.base.augmentation,),
        )
        if self.base.method == "ce":
            del values["temperature"]  # CE has no temperature
        return values

    def to_dict(self):
        payload = dataclasses.asdict(self)
        payload["base"] = self.base.to_dict()
        return payload


# ---------------------------------------------------------------------------
# Data: train / validation from the TRAIN split only.
# ---------------------------------------------------------------------------


# The split itself lives in the library (one function for the sweep and the binaries' --validation_fraction).
def split_train_validation(base, fraction, seed):
    """`runner.split_train_validation`: a validation split carved from the TRAIN split (the test split is never read)."""
    from supcon_tf import runner

    return runner.split_train_validation(base, fraction, seed)


# ---------------------------------------------------------------------------
# One trial.
# ---------------------------------------------------------------------------


def build_model(config, image_shape, num_classes, steps_per_epoch):
    """A compiled SupConModel (supcon / simclr) or CrossEntropyModel (ce), built as `runner.run` builds them.

    The learning-rate schedule spans `config.epochs` epochs.
    """
    from supcon_tf import runner

    return runner.build_model(config, image_shape, num_classes, steps_per_epoch)


def _steps_per_epoch(config, split):
    return config.steps_per_epoch or max(1, split.num_train // config.batch_size)


def _image_shape(config, split):
    from supcon_tf import runner

    return tuple(next(iter(runner.eval_dataset(config, split.validation, batch_size=1)))[0].shape[1:])


def train_and_score(config, split, sweep, *, model=None, epochs=None, initial_epoch=0, callbacks=(), verbose=0):
    """Trains `config` on `split.train` and returns `{"val_accuracy", "final_train_loss"}` on `split.validation`.

    CE: the classifier's own validation accuracy. SupCon / SimCLR: a linear
    probe (Adam, `sweep.probe_*`) on the frozen encoder's features of the
    un-augmented training images, then its validation accuracy.
    """
    import keras

    from supcon_tf import models, runner

    epochs = config.epochs if epochs is None else epochs
    steps = _steps_per_epoch(config, split)
    if model is None:
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, _image_shape(config, split), split.num_classes, steps)
    history = model.fit(
        runner.train_dataset(config, split.train),
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        callbacks=list(callbacks),
        shuffle=False,
        verbose=verbose,
    )
    validation = runner.eval_dataset(config, split.validation)
    if config.method == "ce":
        _, accuracy = model.evaluate(validation, verbose=0)
    else:
        probe = models.LinearProbe(model.encoder, split.num_classes)
        probe.compile(optimizer=keras.optimizers.Adam(sweep.probe_learning_rate))
        probe.fit_cached(
            runner.eval_dataset(config, split.train), epochs=sweep.probe_epochs, batch_size=sweep.probe_batch_size, verbose=0
        )
        _, accuracy = probe.evaluate(validation, verbose=0)
    losses = history.history.get("loss") or [float("nan")]
    return {OBJECTIVE: float(accuracy), "final_train_loss": float(losses[-1])}


def _trial_config(sweep, hp):
    values = {field: hp.get(field) for field in sweep.grids()}
    return sweep.base.replace(**values)


def declare_search_space(sweep, hp):
    """Declares one `hp.Choice` per searched field (idempotent: returns the current values)."""
    for field, values in sweep.grids().items():
        hp.Choice(field, list(values), ordered=field != "augmentation")
    return hp


def make_hypermodel(sweep, split):
    """A `keras_tuner.HyperModel` whose `fit` trains one trial and returns its validation score."""
    import keras_tuner

    class SweepHyperModel(keras_tuner.HyperModel):
        def build(self, hp):
            import keras

            declare_search_space(sweep, hp)
            config = _trial_config(sweep, hp)
            # Hyperband resumes a trial for (tuner/epochs - tuner/initial_epoch) more epochs:
            # each stage gets a full warm-up + cosine cycle over the epochs it runs.
            epochs = hp.values.get("tuner/epochs", config.epochs) - hp.values.get("tuner/initial_epoch", 0)
            keras.utils.set_random_seed(config.seed)
            return build_model(
                config.replace(epochs=max(1, epochs), warmup_epochs=min(config.warmup_epochs, max(1, epochs))),
                _image_shape(config, split),
                split.num_classes,
                _steps_per_epoch(config, split),
            )

        def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=None, verbose=0, **kwargs):
            config = _trial_config(sweep, hp)
            return train_and_score(
                config,
                split,
                sweep,
                model=model,
                epochs=epochs or config.epochs,
                initial_epoch=initial_epoch,
                callbacks=callbacks or (),
                verbose=verbose,
            )

    return SweepHyperModel(name=f"sweep_{sweep.base.method}")


def make_tuner(sweep, hypermodel):
    import keras_tuner

    hp = declare_search_space(sweep, keras_tuner.HyperParameters())
    common = dict(
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        hyperparameters=hp,
        directory=sweep.output_dir,
        project_name="tuner",
        overwrite=True,
        seed=sweep.split_seed,
    )
    if sweep.tuner == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=sweep.max_trials, **common)
    if sweep.tuner == "grid":
        return keras_tuner.GridSearch(hypermodel, max_trials=sweep.max_trials, **common)
    return keras_tuner.Hyperband(
        hypermodel, max_epochs=sweep.base.epochs, factor=sweep.hyperband_factor, hyperband_iterations=1, **common
    )


# ---------------------------------------------------------------------------
# The sweep and its tables.
# ---------------------------------------------------------------------------


def trial_rows(tuner, sweep):
    """One dict per trial: trial id, the searched values (and Hyperband's epochs), score, status; best first."""
    rows = []
    for trial in tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        row = {"trial": trial.trial_id}
        for field in sweep.grids():
            row[field] = values.get(field)
        row["epochs"] = values.get("tuner/epochs", sweep.base.epochs)
        row[OBJECTIVE] = None if trial.score is None else float(trial.score)
        row["status"] = str(trial.status)
        rows.append(row)
    rows.sort(key=lambda r: (r[OBJECTIVE] is None, -(r[OBJECTIVE] or 0.0), r["trial"]))
    return rows


def spread(scores):
    """`{n, mean, std, min, max, range}` of a list of scores (population std)."""
    import numpy as np

    scores = np.asarray([s for s in scores if s is not None and math.isfinite(s)], np.float64)
    if scores.size == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "range": None}
    return {
        "n": int(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "min": float(scores.min()),
        "max": float(scores.max()),
        "range": float(scores.max() - scores.min()),
    }


def format_markdown(rows):
    if not rows:
        return "(no trials)\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row[column]
            cells.append(f"{value:.4f}" if isinstance(value, float) and column == OBJECTIVE else str(value))
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
        "spread": spread([r[OBJECTIVE] for r in rows]),
        "seconds": round(seconds, 1),
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def run_sweep(sweep, verbose=0):
    """Runs the sweep; writes results.csv / results.md / summary.json; returns `(rows, summary)`."""
    if not isinstance(sweep, SweepConfig):
        raise ValueError(f"`sweep` must be a SweepConfig, received: {type(sweep).__name__}")
    start = time.time()
    split = split_train_validation(sweep.base, sweep.validation_fraction, sweep.split_seed)
    tuner = make_tuner(sweep, make_hypermodel(sweep, split))
    tuner.search(epochs=sweep.base.epochs, verbose=verbose)
    rows = trial_rows(tuner, sweep)
    summary = write_results(rows, sweep, sweep.output_dir, time.time() - start)
    return rows, summary


# ---------------------------------------------------------------------------
# The binary.
# ---------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags():
    """Defines the training flags (experiments/common.py) and the sweep's own; only when run as a binary."""
    from experiments import common  # noqa: F401  (defines --preset and every RunConfig flag)

    flags.DEFINE_enum("tuner", "random", list(TUNERS), "keras-tuner search: random | hyperband | grid.")
    flags.DEFINE_integer("max_trials", 10, "Trials for random / grid search (hyperband sizes itself from --epochs).")
    flags.DEFINE_list("temperature_grid", [], "Temperatures to search (empty: --temperature; not for ce).")
    flags.DEFINE_list("learning_rate_grid", [], "Learning rates to search (empty: --learning_rate).")
    flags.DEFINE_list("batch_size_grid", [], "Batch sizes to search (empty: --batch_size).")
    flags.DEFINE_list("augmentation_grid", [], f"Augmentation policies to search, of {', '.join(AUGMENTATIONS)}.")
    # --validation_fraction is the training binaries' flag (experiments.common); the sweep defaults it to 0.2.
    flags.DEFINE_integer("split_seed", 0, "Seed of the train/validation split and of the tuner.")
    flags.DEFINE_integer("hyperband_factor", 3, "Hyperband's reduction factor.")
    flags.DEFINE_integer("probe_epochs", 100, "Linear-probe epochs (contrastive methods).")


def _parse_list(name, values, kind):
    try:
        return tuple(kind(v) for v in values)
    except ValueError:
        raise ValueError(f"`--{name}` must be a comma-separated list of {kind.__name__}s, received: {','.join(values)!r}")


def config_from_flags():
    """The one place where the sweep's flags become a `SweepConfig`."""
    from experiments import common

    base = common.config_from_flags()
    if FLAGS["model_dir"].value is None:
        base = base.replace(model_dir=os.path.join("runs", f"sweep_{base.method}_{FLAGS.tuner}"))
    return SweepConfig(
        base=base,
        tuner=FLAGS.tuner,
        max_trials=FLAGS.max_trials,
        temperatures=_parse_list("temperature_grid", FLAGS.temperature_grid, float),
        learning_rates=_parse_list("learning_rate_grid", FLAGS.learning_rate_grid, float),
        batch_sizes=_parse_list("batch_size_grid", FLAGS.batch_size_grid, int),
        augmentations=tuple(FLAGS.augmentation_grid),
        validation_fraction=0.2 if FLAGS.validation_fraction is None else FLAGS.validation_fraction,
        split_seed=FLAGS.split_seed,
        hyperband_factor=FLAGS.hyperband_factor,
        probe_epochs=FLAGS.probe_epochs,
    )


def main():
    sweep = config_from_flags()
    if sweep.base.method == "ce" and sweep.temperatures:
        raise ValueError("`--temperature_grid` does not apply to method='ce' (no temperature), received: a temperature grid")
    rows, summary = run_sweep(sweep, verbose=sweep.base.verbose)
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
    from experiments import common

    common.run_binary(main)


if __name__ == "__main__":
    entry()
