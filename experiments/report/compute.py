"""Computes the digits report: registers the protocol, tunes, trains, runs the stability grid, evaluates, writes results.json.

Every stage trains through `supcon_tf.runner.run` (the searches through
`experiments.sweep`, whose trials are `runner.run` stages too). Nothing here
reads the test split: `evaluate.evaluate_on_test`, called once after all
training, is the only reader. `render` turns the results.json written here
into REPORT.md.

Phases (each a folder under `work_dir`):

1. registration: the config and the rules go to `work_dir/protocol.json`
   before anything trains (a resumed run keeps the first registration);
2. tuning/: a keras-tuner search per method on a validation split carved
   from TRAIN (seed `tuning_seed`); the best trial whose validation curves
   are flat is selected (if none is, the best one, marked);
3. equal_epochs/: every method for every seed at the largest selected epoch
   count, with its own selected learning rate (and temperature); CE is also
   probed linearly. Where the selected tuning trial is that very run (the
   tuning seed, the same settings: `_tuning_trial_of`), it is used as it is
   instead of being trained again (CE's trial gets its linear probe);
4. equal_time/: every method trained for the same training seconds as the
   slowest method's equal-epoch run (epochs from the measured cost per
   epoch); runs within `equal_time_tolerance` of the equal-epoch count are
   reused;
5. stability/: the same learning-rate x batch grid for every method, the
   same optimizer steps per point, each scored by a linear probe;
6. the final evaluation on the test split (`evaluate.py`), verdicts, results.json.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import statistics
import threading
import time

from experiments.report import monitor, verdicts
from experiments.report.config import METHODS

RESULTS_FILE = "results.json"
SCHEMA = 1


def log(message):
    print(f"[report {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------
# Registration, machine facts, load.
# ---------------------------------------------------------------------------


WORK_DIR = dict(kind="report", own_entries=None, core=("report_config.json", "protocol.json"), name="work_dir")


def prepare_work_dir(config, overwrite=False):
    """Checks that `work_dir` belongs to this config (or, with `overwrite`, sets it aside); writes its config.

    The work folder is the report's own (`supcon_tf.ownership`): a folder
    that supcon_tf did not create is refused. `overwrite` renames an old one
    to `<work_dir>.previous-<id>`, deleted when the new report finishes.
    """
    from supcon_tf import ownership

    path = os.path.join(config.work_dir, "report_config.json")
    payload = config.to_dict()
    ownership.check_claimable(config.work_dir, **WORK_DIR)
    if overwrite:
        ownership.check_replaceable(config.work_dir, **WORK_DIR)
        ownership.replace(config.work_dir, **WORK_DIR)
    ownership.claim(config.work_dir, **WORK_DIR)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != json.loads(json.dumps(payload)):
            raise ValueError(
                f"`work_dir` {config.work_dir} holds runs of a different report config: pass --overwrite to start "
                "afresh there, or choose another --work_dir"
            )
    os.makedirs(config.work_dir, exist_ok=True)
    _write_json(path, payload)


def register(config, command):
    """The protocol record, written before any training; a resumed run keeps the original registration time.

    An amended protocol (`config.amendments`) keeps the registrations before
    it visible: the record of the results.json already in `output_dir` (and
    the ones that record kept) goes to `earlier_registrations`.
    """
    path = os.path.join(config.work_dir, "protocol.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    protocol = {
        "registered_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "config": config.to_dict(),
        "verdict_rules": verdicts.__doc__.strip(),
    }
    if config.amendments:
        protocol["earlier_registrations"] = earlier_registrations(os.path.join(config.output_dir, RESULTS_FILE))
    _write_json(path, protocol)
    return protocol


def earlier_registrations(results_path):
    """The registration records of the results file at `results_path` and of those it kept, oldest first."""
    if not os.path.exists(results_path):
        return []
    with open(results_path) as f:
        previous = json.load(f).get("protocol") or {}
    kept = list(previous.get("earlier_registrations", []))
    record = {key: previous[key] for key in ("registered_at", "command", "config") if key in previous}
    return kept + ([record] if record else [])


def machine_facts():
    """Cores, accelerators, CPU model and software versions, measured now."""
    import keras
    import tensorflow as tf

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": cpu_model,
        "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


class LoadSampler:
    """Samples the 1-minute load average every `interval` seconds in a background thread."""

    def __init__(self, interval=15.0):
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self):
        values = self.samples or [os.getloadavg()[0]]
        return {
            "interval_seconds": self.interval,
            "samples": len(values),
            "min": min(values),
            "mean": statistics.mean(values),
            "max": max(values),
        }


def data_facts(config):
    """The training data as the report uses it (the test split's size is added by the final evaluation)."""
    from supcon_tf import corruptions, data

    stage = config.stage("ce", seed=config.tuning_seed)
    source, size, num_classes = data.load_source(stage, "train")
    first_image = next(iter(source))[0]
    split = data.split_train_validation(stage, stage.evaluation.validation_fraction, stage.runtime.seed)
    return {
        "dataset": stage.data.dataset,
        "raw_image_shape": list(first_image.shape),
        "image_size": stage.data.image_size,
        "num_classes": int(num_classes),
        "train": int(size),
        "validation_fraction": stage.evaluation.validation_fraction,
        "train_part": split.num_train,
        "validation": split.num_validation,
        "corruptions": list(corruptions.CORRUPTION_NAMES),
        "severities": list(corruptions.SEVERITIES),
    }


# ---------------------------------------------------------------------------
# One run and what it records.
# ---------------------------------------------------------------------------


def _callbacks(config):
    rules = config.rules
    return lambda stage: [monitor.make_callback(stage, k=rules.knn_k, temperature=rules.knn_temperature)]


def _convergence(values, rules):
    return verdicts.convergence(values, fraction=rules.convergence_fraction, tolerance=rules.convergence_tolerance)


def curves_of(model_dir, method, rules, probed):
    """The validation curves of one run folder and their convergence checks."""
    records = monitor.read_curve(model_dir)
    curves = {"knn_top1": [r["knn_top1"] for r in records]}
    if method == "ce":
        curves["val_accuracy"] = [r.get("val_accuracy") for r in records]
    if probed:
        curves["probe_val_accuracy"] = monitor.read_log_column(os.path.join(model_dir, "linear"))
    checks = {name: _convergence(values, rules) for name, values in curves.items()}
    return {
        "curves": curves,
        "convergence": checks,
        "converged": verdicts.all_converged(checks.values()),
        "monitor_seconds": round(sum(r.get("seconds", 0.0) for r in records), 2),
    }


def train_one(config, stage, *, probe_ce=False):
    """Trains `stage` (and its probe) through `experiments.training.train_and_score`; returns the run's record."""
    import keras

    from experiments import training

    result = training.train_and_score(stage, config.stages["linear"], probe_ce=probe_ce, callbacks=_callbacks(config)(stage))
    probed = result["probe"] is not None
    record = {
        "seed": stage.runtime.seed,
        "epochs": stage.optim.epochs,
        "learning_rate": stage.optim.learning_rate,
        "temperature": stage.loss.temperature if stage.method != "ce" else None,
        "warmup_epochs": stage.optim.warmup_epochs,
        "collapsed": collapsed(stage.model_dir),
        "model_dir": stage.model_dir,
        "stage_seconds": result["stage"]["train_seconds"],
        "probe_seconds": result["probe"]["train_seconds"] if probed else 0.0,
        # The score the method is judged by: CE's own classifier, SupCon / SimCLR's probe.
        "val_accuracy": result.get("classifier_val_accuracy", result["val_accuracy"]),
        "probe_val_accuracy": result["val_accuracy"] if probed else None,
        **curves_of(stage.model_dir, stage.method, config.rules, probed),
    }
    own = record["stage_seconds"] - record["monitor_seconds"]
    record["train_seconds"] = round(own + (record["probe_seconds"] if stage.method != "ce" else 0.0), 2)
    record["classifier"] = os.path.join(stage.model_dir, "model.keras" if stage.method == "ce" else "linear/model.keras")
    if stage.method == "ce" and probed:
        record["probe_classifier"] = os.path.join(stage.model_dir, "linear", "model.keras")
    keras.backend.clear_session()
    gc.collect()
    return record


# ---------------------------------------------------------------------------
# Phases.
# ---------------------------------------------------------------------------


def tune(config):
    """A keras-tuner search per method; returns `{method: {"trials": [...], "selected": {...}, "seconds"}}`."""
    from experiments import tuning as tuning_lib

    out = {}
    for method in METHODS:
        space = config.search[method]
        start = time.time()
        log(f"tuning {method}: {space.tuner} search, {space.max_trials} of {space.size} combinations")
        search = tuning_lib.SweepConfig(
            base=config.stage(method, seed=config.tuning_seed, model_dir=os.path.join(config.work_dir, "tuning", method)),
            probe=config.stages["linear"],
            tuner=space.tuner,
            max_trials=min(space.max_trials, space.size),
            learning_rates=tuple(space.learning_rates),
            temperatures=tuple(space.temperatures),
            epochs=tuple(space.epochs),
            warmup_epochs=tuple(space.warmup_epochs),
        )
        rows, _ = tuning_lib.run_sweep(search, callbacks=_callbacks(config), overwrite=False)
        trials = []
        for row in rows:
            trial = {k: v for k, v in row.items() if k not in ("augmentation", "batch_size")}
            if row["status"] == "COMPLETED":
                trial.update(curves_of(row["model_dir"], method, config.rules, probed=method != "ce"))
            trial["warmup_epochs"] = int(row.get("warmup_epochs", config.stages[method].optim.warmup_epochs))
            trial["collapsed"] = collapsed(row["model_dir"])
            trials.append(trial)
        scored = [t for t in trials if t["val_accuracy"] is not None]
        converged = [t for t in scored if t.get("converged")]
        if not scored:
            raise RuntimeError(f"every tuning trial of {method} failed; see {search.output_dir}")
        selected = dict((converged or scored)[0], selected_from="converged trials" if converged else "all trials (none converged)")
        out[method] = {"trials": trials, "selected": selected, "seconds": round(time.time() - start, 1)}
        log(
            f"tuning {method}: selected lr {selected['learning_rate']}, epochs {selected['epochs']}, warm-up "
            f"{selected['warmup_epochs']}"
            + (f", tau {selected['temperature']}" if method != "ce" else "")
            + f" (val top-1 {selected['val_accuracy']:.4f})"
        )
    return out


def collapsed(model_dir):
    """The collapse monitor's flag in a run folder's metrics.json (None where it has none)."""
    try:
        with open(os.path.join(model_dir, "metrics.json")) as f:
            value = json.load(f).get("collapsed")
    except (OSError, ValueError):
        return None
    return None if value is None else bool(value)


def _selected_stage(config, method, selected, **changes):
    """The `method` stage with its selected hyper-parameters, then `changes`.

    The selected warm-up is kept in epochs; a run shorter than the tuned one
    (e.g. at equal time) warms up for at most half of its epochs, so that it
    still decays.
    """
    hyper = {"learning_rate": selected["learning_rate"]}
    if method != "ce":
        hyper["temperature"] = selected["temperature"]
    hyper.update(changes)
    if "warmup_epochs" in selected and "warmup_epochs" not in changes:
        epochs = hyper.get("epochs", config.stages[method].optim.epochs)
        warmup = int(selected["warmup_epochs"])
        hyper["warmup_epochs"] = warmup if epochs >= int(selected.get("epochs", 0)) else min(warmup, epochs // 2)
    return config.stage(method, **hyper)


def _tuning_trial_of(stage, selected):
    """The selected tuning trial's run folder when that trial trained exactly `stage` (its recorded config.json
    equals `stage`'s, the folder aside) and finished, else None."""
    from supcon_tf.run_folder import RunFolder

    folder = selected.get("model_dir")
    if not folder or selected.get("status") != "COMPLETED":
        return None
    run = RunFolder(folder)
    if run.phase() != "finished":
        return None
    try:
        recorded = run.recorded_config()
    except ValueError:  # nothing records its settings: not known to be the same run
        return None
    return folder if recorded == stage.replace(model_dir=folder).to_dict() else None


def train_equal_epochs(config, tuning):
    """Every method, every seed, at the largest selected epoch count; returns the comparison's record.

    A run that its method's selected tuning trial already is (`_tuning_trial_of`) is read from the trial's folder
    instead of being trained a second time.
    """
    epochs = max(int(tuning[m]["selected"]["epochs"]) for m in METHODS)
    runs = {m: [] for m in METHODS}
    for seed in config.seeds:
        for method in METHODS:
            folder = os.path.join(config.work_dir, "equal_epochs", method, f"seed_{seed}")
            stage = _selected_stage(config, method, tuning[method]["selected"], seed=seed, epochs=epochs, model_dir=folder)
            trial = _tuning_trial_of(stage, tuning[method]["selected"])
            if trial is not None:
                stage = stage.replace(model_dir=trial)
            runs[method].append(train_one(config, stage, probe_ce=method == "ce"))
            log(
                f"equal epochs: {method} seed {seed}: val top-1 {runs[method][-1]['val_accuracy']:.4f}"
                + (" (the selected tuning trial, the same run)" if trial is not None else "")
            )
    return {"epochs": {m: epochs for m in METHODS}, "runs": runs}


def equal_time_plan(equal_epochs, tolerance):
    """Epochs per method for equal training seconds, from the equal-epoch runs' measured cost.

    The budget is the largest mean training time of a method (pre-training +
    probe for SupCon / SimCLR, training for CE, monitor time excluded); a
    method gets round((budget - its probe seconds) / its seconds per epoch)
    epochs, and keeps its equal-epoch runs when that is within `tolerance`.
    """
    totals, plan = {}, {}
    for method, runs in equal_epochs["runs"].items():
        totals[method] = statistics.mean(r["train_seconds"] for r in runs)
    budget = max(totals.values())
    for method, runs in equal_epochs["runs"].items():
        epochs = equal_epochs["epochs"][method]
        per_epoch = statistics.mean(r["stage_seconds"] - r["monitor_seconds"] for r in runs) / epochs
        fixed = statistics.mean(r["probe_seconds"] for r in runs) if method != "ce" else 0.0
        wanted = max(1, round((budget - fixed) / max(per_epoch, 1e-9)))
        reuse = abs(wanted - epochs) <= tolerance * epochs
        plan[method] = {
            "epochs": epochs if reuse else wanted,
            "reused": reuse,
            "seconds_per_epoch": per_epoch,
            "fixed_seconds": fixed,
            "equal_epoch_seconds": totals[method],
        }
    return budget, plan


def train_equal_time(config, tuning, equal_epochs):
    budget, plan = equal_time_plan(equal_epochs, config.rules.equal_time_tolerance)
    runs = {}
    for method in METHODS:
        if plan[method]["reused"]:
            runs[method] = equal_epochs["runs"][method]
            continue
        runs[method] = []
        log(f"equal time: {method} gets {plan[method]['epochs']} epochs for a {budget:.0f} s budget")
        for seed in config.seeds:
            folder = os.path.join(config.work_dir, "equal_time", method, f"seed_{seed}")
            stage = _selected_stage(
                config, method, tuning[method]["selected"], seed=seed, epochs=plan[method]["epochs"], model_dir=folder
            )
            runs[method].append(train_one(config, stage))
    return {"budget_seconds": budget, "plan": plan, "epochs": {m: plan[m]["epochs"] for m in METHODS}, "runs": runs}


def stability_grid(config, tuning):
    """The same grid for every method through `experiments.tuning` (GridSearch), every point probed linearly."""
    from experiments import tuning as tuning_lib

    grid = config.stability
    chance = 1.0 / data_facts_cache(config)["num_classes"]
    out = {"chance": chance, "methods": {}}
    for method in METHODS:
        selected = tuning[method]["selected"]
        base = _selected_stage(
            config, method, selected, seed=config.tuning_seed, epochs=grid.epochs, steps_per_epoch=grid.steps_per_epoch,
            warmup_epochs=0, model_dir=os.path.join(config.work_dir, "stability", method),
        )  # warm-up 0 here: the grid's own warm-up values replace it
        log(f"stability: {method}, {grid.size} points of {grid.steps} steps")
        search = tuning_lib.SweepConfig(
            base=base,
            probe=config.stages["linear"],
            tuner="grid",
            max_trials=grid.size,
            learning_rates=tuple(grid.learning_rates),
            batch_sizes=tuple(grid.batch_sizes),
            warmup_epochs=tuple(getattr(grid, "warmup_epochs", (0,))),
            probe_ce=True,
        )
        rows, _ = tuning_lib.run_sweep(search, callbacks=_callbacks(config), overwrite=False)
        points = []
        for row in rows:
            point = {
                "learning_rate": row["learning_rate"],
                "batch_size": row["batch_size"],
                "warmup_epochs": int(row.get("warmup_epochs", 0)),
                "collapsed": collapsed(row["model_dir"]),
                "status": row["status"],
                "val_accuracy": row["val_accuracy"],
                "classifier_val_accuracy": row.get("classifier_val_accuracy"),
            }
            point["score"] = chance if row["val_accuracy"] is None else row["val_accuracy"]
            if row["status"] == "COMPLETED":
                point.update(curves_of(row["model_dir"], method, config.rules, probed=True))
            points.append(point)
        points.sort(key=lambda p: (p["batch_size"], p["learning_rate"], p["warmup_epochs"]))
        rules = config.rules
        spread_args = dict(resamples=rules.bootstrap_resamples, level=rules.bootstrap_level, seed=rules.bootstrap_seed)
        out["methods"][method] = {
            "points": points,
            "spread": verdicts.spread([p["score"] for p in points], **spread_args),
        }
        if method == "ce":
            out["methods"][method]["classifier_spread"] = verdicts.spread(
                [chance if p["classifier_val_accuracy"] is None else p["classifier_val_accuracy"] for p in points],
                **spread_args,
            )
    return out


def hardness_analysis(config, equal_epochs):
    """The implicit-hard-mining check (`experiments/report/hardness.py`) on each contrastive method's first-seed
    equal-epoch encoder, on its training part (the test split is not read)."""
    from experiments.report import hardness
    from supcon_tf import runner

    rules, seed = config.rules, config.seeds[0]
    images, labels, _, _ = monitor.split_arrays(config.stage("ce", seed=seed))
    out = {"rule": hardness.HARDNESS_RULE, "norm_convention": hardness.NORM_CONVENTION, "methods": {}}
    for method in ("supcon", "simclr"):
        run = next(r for r in equal_epochs["runs"][method] if r["seed"] == seed)
        stage = config.stage(method, seed=seed)
        log(f"hardness: {method} seed {seed}, per-pair gradient terms on 256 training images")
        out["methods"][method] = hardness.analyse_encoder(
            os.path.join(run["model_dir"], "model.keras"), images, labels, method=method,
            temperature=run["temperature"], num_views=stage.data.num_views, augment=runner.augmentation(stage),
            seed=rules.bootstrap_seed, max_samples=256, bins=20, resamples=rules.bootstrap_resamples,
            level=rules.bootstrap_level,
        )
        out["methods"][method]["model_path"] = os.path.relpath(out["methods"][method]["model_path"], config.work_dir)
    return out


_DATA_FACTS = {}


def data_facts_cache(config):
    key = config.work_dir
    if key not in _DATA_FACTS:
        _DATA_FACTS[key] = data_facts(config)
    return _DATA_FACTS[key]


# ---------------------------------------------------------------------------
# Verdicts and the whole run.
# ---------------------------------------------------------------------------


def claim_inputs(test):
    """`{comparison: {method: {measure: [per-seed values]}}}` for `verdicts.evaluate_claims`."""
    measures = ("top1", "mce", "relative_mce", "ece", "corrupted_ece")
    return {
        comparison: {
            method: {m: [entry[m] for entry in methods[method]] for m in measures} for method in ("supcon", "ce")
        }
        for comparison, methods in test["comparisons"].items()
    }


def compute_verdicts(config, test, stability):
    rules = config.rules
    scores = None
    if stability is not None:
        scores = {m: [p["score"] for p in stability["methods"][m]["points"]] for m in ("supcon", "ce")}
    return verdicts.evaluate_claims(
        claim_inputs(test),
        scores,
        alpha=rules.alpha,
        resamples=rules.bootstrap_resamples,
        level=rules.bootstrap_level,
        seed=rules.bootstrap_seed,
    )


def run(config, *, command, overwrite=False):
    """Runs every phase; writes `output_dir/results.json`; returns the results dict."""
    from experiments.report import evaluate

    start = time.time()
    prepare_work_dir(config, overwrite=overwrite)
    resumed = os.path.exists(os.path.join(config.work_dir, "protocol.json"))
    protocol = register(config, command)
    log(f"protocol registered at {protocol['registered_at']} ({config.mode} mode); work folder {config.work_dir}")
    phases = {}
    with LoadSampler() as load:
        facts = {"machine": machine_facts(), "data": dict(data_facts_cache(config))}
        mark = time.time()
        tuning = tune(config)
        phases["tuning"] = time.time() - mark
        mark = time.time()
        equal_epochs = train_equal_epochs(config, tuning)
        phases["equal epochs"] = time.time() - mark
        mark = time.time()
        equal_time = train_equal_time(config, tuning, equal_epochs)
        phases["equal time"] = time.time() - mark
        stability = None
        if config.stability is not None:
            mark = time.time()
            stability = stability_grid(config, tuning)
            phases["stability grid"] = time.time() - mark
        mark = time.time()
        hardness_results = hardness_analysis(config, equal_epochs)
        phases["hardness"] = time.time() - mark
        mark = time.time()
        log("final evaluation: the test split is read now, once")
        test = evaluate.evaluate_on_test(config, {"equal_epochs": equal_epochs, "equal_time": equal_time})
        phases["test evaluation"] = time.time() - mark
    facts["data"]["test"] = test.pop("test_size")
    facts["load_average"] = load.summary()
    results = {
        "schema": SCHEMA,
        "protocol": protocol,
        "facts": facts,
        "timing": {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(start)),
            "wall_seconds": round(time.time() - start, 1),
            "resumed": resumed,  # True: earlier invocations trained part of it (their time is not included)
            "phases": {name: round(seconds, 1) for name, seconds in phases.items()},
        },
        "tuning": tuning,
        "comparisons": {"equal_epochs": equal_epochs, "equal_time": equal_time},
        "stability": stability,
        "hardness": hardness_results,
        "test": test,
    }
    results["verdicts"] = compute_verdicts(config, test, stability)
    os.makedirs(config.output_dir, exist_ok=True)
    _write_json(os.path.join(config.output_dir, RESULTS_FILE), results)
    log(f"results: {os.path.join(config.output_dir, RESULTS_FILE)} ({results['timing']['wall_seconds'] / 60:.1f} min)")
    from supcon_tf import ownership

    ownership.discard_replaced(config.work_dir, kind=WORK_DIR["kind"])  # an --overwrite's old work folder
    return results


def clean(value):
    """`value` with NumPy scalars / arrays as Python values and non-finite floats as None (strict JSON)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path, payload):
    from supcon_tf import checkpointing

    checkpointing.write_json_atomically(
        path, clean(payload), newline=True, indent=1, default=_json_default, allow_nan=False
    )


def _json_default(value):
    import numpy as np

    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
