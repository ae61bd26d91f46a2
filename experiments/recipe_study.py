r"""How the digits presets' warm-up (and temperature) were chosen: a grid on the VALIDATION split, several seeds.

For each digits method (supcon, simclr, ce) and each seed, a keras-tuner grid
search (`experiments.sweep`, the one search machinery) trains the method's
preset at its own epochs (`make demo`'s budget) over warm-up epochs, and over
temperatures for the contrastive methods, and scores every point on a
validation split carved from TRAIN (the probe's top-1 for SupCon / SimCLR,
the classifier's for CE; the test split is never read). The choice rule,
stated before the study runs:

    the (warm-up, temperature) with the highest mean validation top-1 over
    the seeds; a tie (equal means to 4 decimals) goes to fewer warm-up epochs,
    then to the preset's current temperature.

Every trial's collapse flag (`metrics.json` "collapsed", the collapse
monitor of pre-training) is counted per point.

    python -m experiments.recipe_study                       # reports/recipes/results.json + results.md
    python -m experiments.recipe_study --render reports/recipes/results.json

Finished trials under `--work_dir` are reused; an interrupted search resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

from experiments import flagging
from experiments.flagging import option

METHODS = ("supcon", "simclr", "ce")
RULE = (
    "highest mean validation top-1 over the seeds; a tie (equal means to 4 decimals) goes to fewer warm-up epochs, "
    "then to the preset's temperature"
)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The grid, the seeds and the files."""

    methods: tuple[str, ...] = option(METHODS, "Digits methods to study.")
    warmup_epochs: tuple[int, ...] = option((0, 1, 2, 4), "Warm-up epochs to try (each <= the preset's epochs).")
    supcon_temperatures: tuple[float, ...] = option((0.05, 0.1), "SupCon temperatures to try.")
    simclr_temperatures: tuple[float, ...] = option((0.2, 0.5), "SimCLR temperatures to try.")
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "Seeds; every point runs once per seed.")
    validation_fraction: float = option(0.2, "The validation split carved from TRAIN.")
    work_dir: str = option("runs/recipe_study", "Where the trials go.")
    output_dir: str = option("reports/recipes", "Where results.json and results.md go.")
    render: str | None = option(None, "Only print the Markdown table from this results file.")

    def __post_init__(self):
        if self.render:
            return
        for name in ("methods", "warmup_epochs", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"`--{name}` must be a non-empty list, received: --{name}=")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"`--methods` must be among {', '.join(METHODS)}, received: {','.join(unknown)}")
        for method in self.methods:
            self.sweeps(method)  # each SweepConfig validates its grids against the preset

    def temperatures(self, method):
        return {"supcon": self.supcon_temperatures, "simclr": self.simclr_temperatures}.get(method, ())

    def sweeps(self, method):
        """One grid `SweepConfig` per seed for `method` (the preset, on a validation split)."""
        from experiments import presets, tuning
        from supcon_tf.config import RunConfig

        out = []
        for seed in self.seeds:
            values = dict(presets.get_preset(f"digits_{method}"), seed=seed, verbose=0, export=False,
                          validation_fraction=self.validation_fraction, evaluate_test=False,
                          model_dir=os.path.join(self.work_dir, method, f"seed_{seed}"))
            base = RunConfig.from_dict(values)
            grid = dict(warmup_epochs=tuple(self.warmup_epochs), temperatures=tuple(self.temperatures(method)))
            size = len(self.warmup_epochs) * max(1, len(grid["temperatures"]))
            out.append(tuning.SweepConfig(base=base, tuner="grid", max_trials=size, probe_ce=False, **grid))
        return out


def choose(points, preset_temperature):
    """The chosen point of `points` (dicts with warmup_epochs, temperature, mean) by the stated rule (`RULE`)."""
    return min(
        points,
        key=lambda p: (
            -round(p["mean"], 4),
            p["warmup_epochs"],
            0 if p["temperature"] in (None, preset_temperature) else 1,
        ),
    )


def _collapsed(model_dir):
    try:
        with open(os.path.join(model_dir, "metrics.json")) as f:
            return bool(json.load(f).get("collapsed"))
    except (OSError, ValueError):
        return None


def study_method(config, method):
    """Runs the method's sweeps; returns its points (mean / std / per seed / collapses) and the choice."""
    from experiments import presets, training, tuning

    points = {}
    for search in config.sweeps(method):
        rows, _ = tuning.run_sweep(search, overwrite=False)
        for row in rows:
            key = (int(row["warmup_epochs"]), row.get("temperature"))
            point = points.setdefault(key, {"warmup_epochs": key[0], "temperature": key[1], "per_seed": {},
                                            "collapsed": 0})
            point["per_seed"][search.base.runtime.seed] = row[training.OBJECTIVE]
            point["collapsed"] += bool(_collapsed(row["model_dir"]))
    for point in points.values():
        scores = [s for s in point["per_seed"].values() if s is not None]
        point["mean"] = statistics.mean(scores) if scores else 0.0
        point["std"] = statistics.pstdev(scores) if len(scores) > 1 else 0.0
        point["failed"] = len(point["per_seed"]) - len(scores)
    ordered = sorted(points.values(), key=lambda p: (p["warmup_epochs"], p["temperature"] or 0.0))
    preset = presets.get_preset(f"digits_{method}")
    chosen = choose(ordered, preset.get("temperature"))
    return {"points": ordered, "chosen": chosen, "preset_epochs": preset["epochs"],
            "preset_warmup_epochs": preset.get("warmup_epochs", 0), "preset_temperature": preset.get("temperature")}


def run(config):
    from supcon_tf import ownership
    from supcon_tf.checkpointing import write_json_atomically

    ownership.claim(config.output_dir, kind="recipe_study", own_entries={"results.json", "results.md"},
                    core=("results.json",), name="output_dir")
    start = time.time()
    results = {"rule": RULE, "config": dataclasses.asdict(config), "methods": {}}
    for method in config.methods:
        results["methods"][method] = study_method(config, method)
    results["wall_seconds"] = round(time.time() - start, 1)
    results["cpu_count"] = os.cpu_count()
    write_json_atomically(os.path.join(config.output_dir, "results.json"), results, indent=2)
    with open(os.path.join(config.output_dir, "results.md"), "w") as f:
        f.write(render(results))
    return results


def render(results):
    """The Markdown table of a results dict: every point, the chosen one marked."""
    lines = [
        "Validation top-1 (mean +- std over seeds; the test split is not read), collapsed runs, per digits preset "
        f"at its own epochs. Rule: {results['rule']}.",
        "",
        "| method | warm-up epochs | temperature | val top-1 | per seed | collapsed | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, study in results["methods"].items():
        for p in study["points"]:
            seeds = ", ".join("-" if v is None else f"{v:.3f}" for _, v in sorted(p["per_seed"].items(), key=lambda kv: int(kv[0])))
            chosen = p["warmup_epochs"] == study["chosen"]["warmup_epochs"] and p["temperature"] == study["chosen"]["temperature"]
            temperature = "-" if p["temperature"] is None else f"{p['temperature']:g}"
            lines.append(
                f"| {method} | {p['warmup_epochs']} | {temperature} | {p['mean']:.4f} +- {p['std']:.4f} | {seeds} | "
                f"{p['collapsed']} | {'yes' if chosen else ''} |"
            )
    lines.append("")
    lines.append(f"Wall time {results['wall_seconds'] / 60:.1f} min on {results['cpu_count']} CPU cores.")
    return "\n".join(lines) + "\n"


def main():
    config = flagging.from_flags(StudyConfig)
    if config.render:
        with open(config.render) as f:
            print(render(json.load(f)), end="")
        return 0
    results = run(config)
    print(render(results), end="")
    return 0


def entry():
    flagging.define(StudyConfig)
    flagging.run_binary(main)


if __name__ == "__main__":
    entry()
