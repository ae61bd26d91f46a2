"""The report's settings: the stages (`RunConfig`s composed from the digits presets), search spaces, grid and rules.

`ReportConfig.full()` is the committed report, `ReportConfig.quick()` the
few-minute version that the end-to-end test runs. Both are registered (written
to the work folder and into results.json) before anything trains.
"""

from __future__ import annotations

import dataclasses
import math

from supcon_tf.config import RunConfig

METHODS = ("ce", "supcon", "simclr")
LABELS = {"ce": "CE", "supcon": "SupCon", "simclr": "SimCLR", "ce_probe": "CE (linear probe)"}
TUNERS = ("random", "grid")

# What every stage of the report shares, on top of its digits_* preset.
SHARED = dict(
    image_size=8,  # the digits' own 8x8 resolution: no upsampling
    verbose=0,
    export=False,
    checkpoint_every=10**6,  # only the final model.keras is used
    validation_fraction=0.2,  # carved from TRAIN, stratified, seeded by the run's seed
    evaluate_test=False,  # the test split is read once, by the final evaluation
    learning_rate_scaling="none",  # learning rates are used as given, at every batch size
)


def stage_configs(shared=None, linear=None):
    """`{method: RunConfig}` for ce / supcon / simclr and the linear probe ("linear"), from the digits presets."""
    from experiments import presets

    shared = dict(SHARED, **(shared or {}))
    stages = {}
    for method in METHODS:
        values = {**presets.get_preset(f"digits_{method}"), **shared}
        stages[method] = RunConfig.from_dict(dict(values, model_dir=f"runs/report/{method}"))
    values = {**presets.get_preset("digits_linear"), **shared, **(linear or {})}
    stages["linear"] = RunConfig.from_dict(dict(values, model_dir="runs/report/linear", pretrained="unset.keras"))
    return stages


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """One method's keras-tuner search: the values of each searched field and the trial budget."""

    learning_rates: tuple
    epochs: tuple
    temperatures: tuple = ()
    tuner: str = "random"
    max_trials: int = 5

    def __post_init__(self):
        if self.tuner not in TUNERS:
            raise ValueError(f"`tuner` must be one of {', '.join(TUNERS)}, received: tuner={self.tuner!r}")
        if not self.learning_rates or not self.epochs:
            raise ValueError("a search space needs at least one learning rate and one epoch count")
        if isinstance(self.max_trials, bool) or not isinstance(self.max_trials, int) or self.max_trials < 1:
            raise ValueError(f"`max_trials` must be a positive int, received: max_trials={self.max_trials!r}")

    @property
    def size(self):
        return len(self.learning_rates) * len(self.epochs) * max(1, len(self.temperatures))


@dataclasses.dataclass(frozen=True)
class StabilityGrid:
    """The same grid for every method; every point trains `steps_per_epoch * epochs` optimizer steps."""

    learning_rates: tuple
    batch_sizes: tuple
    steps_per_epoch: int
    epochs: int

    @property
    def size(self):
        return len(self.learning_rates) * len(self.batch_sizes)

    @property
    def steps(self):
        return self.steps_per_epoch * self.epochs


@dataclasses.dataclass(frozen=True)
class Rules:
    """Every threshold the report uses (stated in the report)."""

    alpha: float = 0.05  # one-sided Welch t-test level of a "yes"
    convergence_fraction: float = 0.2  # the last 20% of epochs ...
    convergence_tolerance: float = 0.01  # ... move by at most 1 point (least-squares line)
    bootstrap_resamples: int = 2000
    bootstrap_level: float = 0.95
    bootstrap_seed: int = 0
    equal_time_tolerance: float = 0.1  # epochs within 10% of the equal-epoch run reuse it
    knn_k: int = 200
    knn_temperature: float = 0.1
    corruption_seed: int = 0
    ece_bins: int = 15  # equal-width confidence bins of the ECE (Guo et al. 2017)

    def __post_init__(self):
        for name in ("alpha", "convergence_fraction", "bootstrap_level"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"`{name}` must be in (0, 1), received: {name}={value!r}")
        if not (math.isfinite(self.convergence_tolerance) and self.convergence_tolerance >= 0):
            raise ValueError(f"`convergence_tolerance` must be >= 0, received: {self.convergence_tolerance!r}")
        for name in ("bootstrap_resamples", "knn_k", "ece_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Resolved, validated settings of one report run."""

    mode: str
    stages: dict  # method -> RunConfig (ce, supcon, simclr, linear)
    search: dict  # method -> SearchSpace
    seeds: tuple
    stability: StabilityGrid | None
    rules: Rules = Rules()
    tuning_seed: int = 0
    output_dir: str = "reports/digits"
    work_dir: str = "runs/digits_report"

    def __post_init__(self):
        if set(self.stages) != set(METHODS) | {"linear"}:
            raise ValueError(f"`stages` must hold {', '.join(METHODS)} and linear, received: {sorted(self.stages)}")
        if set(self.search) != set(METHODS):
            raise ValueError(f"`search` must hold {', '.join(METHODS)}, received: {sorted(self.search)}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds
        ):
            raise ValueError(f"`seeds` must be at least 2 distinct non-negative ints, received: {list(self.seeds)}")
        for method in ("ce",):
            if self.search[method].temperatures:
                raise ValueError("CE has no temperature: its search space must not list temperatures")
        for method, space in self.search.items():
            for rate in space.learning_rates:
                self.stages[method].replace(learning_rate=rate)
            for value in space.temperatures:
                self.stages[method].replace(temperature=value)
            for value in space.epochs:
                self.stages[method].replace(epochs=value)
        if not self.output_dir or not self.work_dir:
            raise ValueError("`output_dir` and `work_dir` must be non-empty paths")

    def stage(self, method, **changes):
        """A copy of the `method` stage with `changes` (validated)."""
        return self.stages[method].replace(**changes)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return {
            "mode": self.mode,
            "stages": {name: config.to_dict() for name, config in self.stages.items()},
            "search": {name: dataclasses.asdict(space) for name, space in self.search.items()},
            "seeds": list(self.seeds),
            "stability": None if self.stability is None else dataclasses.asdict(self.stability),
            "rules": dataclasses.asdict(self.rules),
            "tuning_seed": self.tuning_seed,
            "output_dir": self.output_dir,
            "work_dir": self.work_dir,
        }

    @classmethod
    def full(cls, **changes):
        """The committed report: 5 seeds, a 5-trial random search per method, a 6-point stability grid."""
        rates = (0.05, 0.1, 0.2, 0.4)
        epochs = (15, 30)
        values = dict(
            mode="full",
            stages=stage_configs(linear=dict(epochs=20, learning_rate=0.02, batch_size=128)),
            search={
                "ce": SearchSpace(learning_rates=rates, epochs=epochs, max_trials=5),
                "supcon": SearchSpace(learning_rates=rates, epochs=epochs, temperatures=(0.05, 0.1, 0.2), max_trials=5),
                "simclr": SearchSpace(learning_rates=rates, epochs=epochs, temperatures=(0.1, 0.2, 0.5), max_trials=5),
            },
            seeds=(0, 1, 2, 3, 4),
            stability=StabilityGrid(learning_rates=(0.02, 0.1, 0.5), batch_sizes=(32, 128), steps_per_epoch=20, epochs=6),
        )
        values.update(changes)
        return cls(**values)

    @classmethod
    def quick(cls, **changes):
        """A few minutes: 2 seeds, one trial per method, 3-epoch runs, a 2-point grid (feeds the end-to-end test)."""
        values = dict(
            mode="quick",
            stages=stage_configs(
                shared=dict(encoder_width=0.5, batch_size=128), linear=dict(epochs=4, learning_rate=0.05, batch_size=256)
            ),
            search={
                "ce": SearchSpace(learning_rates=(0.2,), epochs=(3,), tuner="grid", max_trials=1),
                "supcon": SearchSpace(learning_rates=(0.2,), epochs=(3,), temperatures=(0.1,), tuner="grid", max_trials=1),
                "simclr": SearchSpace(learning_rates=(0.2,), epochs=(3,), temperatures=(0.2,), tuner="grid", max_trials=1),
            },
            seeds=(0, 1),
            stability=StabilityGrid(learning_rates=(0.05, 0.2), batch_sizes=(64,), steps_per_epoch=3, epochs=3),
            rules=Rules(bootstrap_resamples=200),
            output_dir="runs/digits_report_quick/report",
            work_dir="runs/digits_report_quick/work",
        )
        values.update(changes)
        return cls(**values)
