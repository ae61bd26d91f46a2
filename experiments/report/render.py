"""REPORT.md, its plots and README.md's tables, from results.json only (no training, no data).

    python -m experiments.report --render_only   # REPORT.md + PNGs from reports/digits/results.json
    python -m experiments.report --readme        # the README tables, printed

The protocol section is written from the registration record
(`results["protocol"]`), which compute.py stores before anything trains.
`tests/test_report.py` renders a fixed results.json against a golden file.
"""

from __future__ import annotations

import json
import math
import os

from experiments.report.config import LABELS, METHODS, PLOTS
from experiments.scores import mean_std

REPORT_FILE = "REPORT.md"
OUTLIER_POINTS = 10  # a caveat names a seed this many points of test top-1 below its method's median
COMPARISONS = {"equal_epochs": "equal epochs", "equal_time": "equal time"}


def load(path):
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------
# Formatting.
# ---------------------------------------------------------------------------


def pm(values, scale=100.0, digits=1):
    """'mean ± std' of `values` x `scale` (sample std over seeds)."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def num(value, scale=100.0, digits=1):
    return "n/a" if value is None else f"{scale * value:.{digits}f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _minutes(seconds):
    return f"{seconds / 60:.1f} min"


def _methods(results, comparison):
    present = results["test"]["comparisons"][comparison]
    return [m for m in (*METHODS, "ce_probe") if m in present]


# ---------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------


def _header(results):
    protocol, timing = results["protocol"], results["timing"]
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timing["phases"].items())
    return [
        f"# SupCon on {results['facts']['data']['dataset']}: a reproduction report",
        "",
        "Rendered from [results.json](results.json) by `python -m experiments.report --render_only`; every number "
        "and fact below is read from that file.",
        "",
        f"- Produced by `{protocol['command']}` ({protocol['config']['mode']} mode), started {timing['started_at']}.",
        f"- **Wall time: {_minutes(timing['wall_seconds'])}** ({phases})"
        + (
            "; this invocation resumed an interrupted run, whose earlier time is not included."
            if timing.get("resumed")
            else "."
        ),
        "",
    ]


def _stage_rows(stages):
    fields = [
        ("encoder", "encoder"), ("encoder_width", "width"), ("image_size", "image size"), ("batch_size", "batch"),
        ("optimizer", "optimizer"), ("momentum", "momentum"), ("weight_decay", "weight decay"),
        ("augmentation", "augmentation"), ("crop_scale_min", "crop scale min"), ("flip", "flip"),
        ("num_views", "views"), ("head_hidden", "head hidden"), ("embedding_dim", "embedding"),
    ]
    rows = []
    for name in (*METHODS, "linear"):
        stage = stages[name]
        label = LABELS.get(name, "linear probe")
        unused = {"encoder_width", "momentum", "crop_scale_min", "flip", "num_views", "head_hidden", "embedding_dim"}
        rows.append((label, *["-" if name == "linear" and key in unused else stage[key] for key, _ in fields]))
    return ["stage", *[title for _, title in fields]], rows


def _protocol(results):
    protocol = results["protocol"]
    config = protocol["config"]
    rules = config["rules"]
    stages = config["stages"]
    data = results["facts"]["data"]
    linear = stages["linear"]
    lines = [
        "## Pre-registered protocol",
        "",
        f"Registered at {protocol['registered_at']}, before the first training step (the registration record is "
        "`protocol` in results.json; this section is rendered from it).",
        "",
        *_amendments(protocol),
        f"1. **Data.** The {data['dataset']} training split only, until the end: each run carves a stratified "
        f"{100 * data['validation_fraction']:.0f}% validation split from it, seeded by the run's seed, and trains on "
        "the rest. The test split is read once, after all training, by the final evaluation.",
        "2. **Methods.** CE (encoder + linear classifier, end to end, scored by its own classifier), SupCon and "
        "SimCLR (pre-training, then a linear probe on the frozen encoder). Every stage is one "
        "`supcon_tf.runner.run` of a digits preset with these settings:",
        "",
        table(*_stage_rows(stages)),
        "",
        f"   The linear probe: {linear['optimizer']} learning rate {linear['learning_rate']}, {linear['epochs']} "
        f"epochs, batch {linear['batch_size']}, on features computed once without augmentation. Learning rates are "
        f"used as given at every batch size (`learning_rate_scaling={stages['ce']['learning_rate_scaling']}`); "
        + ("linear warm-up as searched, then cosine decay over each run (a run shorter than the tuned one warms up "
           "for at most half its epochs)." if _searches_warmup(config) else "cosine decay over each run, no warm-up."),
        f"3. **Hyper-parameters per method** from a keras-tuner search (`experiments/sweep.py`) on the validation "
        f"split of seed {config['tuning_seed']}: learning rate, temperature (SupCon, SimCLR), epochs"
        + (" and warm-up epochs" if _searches_warmup(config) else "") + ". Objective: "
        "validation top-1 (CE: its classifier; SupCon / SimCLR: the linear probe). Selected: the best trial whose "
        "validation curves all meet the convergence rule (if none does, the best trial, marked).",
        "",
        table(
            ["method", "tuner", "trials", "learning rates", "temperatures", "epochs", "warm-up epochs"],
            [
                (
                    LABELS[m], config["search"][m]["tuner"],
                    f"{min(config['search'][m]['max_trials'], _space_size(config['search'][m]))} of {_space_size(config['search'][m])}",
                    _list(config["search"][m]["learning_rates"]), _list(config["search"][m]["temperatures"]) or "-",
                    _list(config["search"][m]["epochs"]),
                    _list(config["search"][m].get("warmup_epochs", ())) or str(stages[m].get("warmup_epochs", 0)),
                )
                for m in METHODS
            ],
        ),
        "",
        f"4. **Convergence rule.** Every run records, after each epoch, the kNN top-1 (k = {rules['knn_k']}, "
        f"T = {rules['knn_temperature']}) of its encoder on its validation split, with its training part as memory "
        "(CE also its classifier's validation accuracy; probes their validation accuracy). A curve has converged "
        f"when it is flat over the last {100 * rules['convergence_fraction']:.0f}% of epochs (at least 3): the "
        f"least-squares line through them moves by at most {100 * rules['convergence_tolerance']:.1f} points.",
        f"5. **Two comparisons, {len(config['seeds'])} seeds** ({_list(config['seeds'])}), each method with its "
        "selected hyper-parameters: *equal epochs*, every method at the largest selected epoch count; *equal "
        "time*, every method for the training seconds of the slowest method's equal-epoch run (pre-training + "
        "probe; CE: training), epochs from each method's measured seconds per epoch; a method within "
        f"{100 * rules['equal_time_tolerance']:.0f}% of its equal-epoch count keeps those runs.",
        "6. **Final evaluation** (test split): top-1; kNN top-1 of the encoder; ECE with "
        + (f"{rules['ece_bins']} equal-width bins" if "ece_bins" in rules else "the library's equal-width bins "
           "(`supcon_tf.evaluation.ECE_BINS`; this run's registration predates the setting)")
        + "; "
        f"top-1 error and ECE under {len(data['corruptions'])} corruptions x {len(data['severities'])} severities "
        f"(seed {rules['corruption_seed']}); mCE and relative mCE against the comparison's CE classifier averaged "
        "over seeds (CE = 100 by construction).",
    ]
    if config["stability"]:
        grid = config["stability"]
        lines.append(
            f"7. **Stability grid**, the same for every method: learning rate {_list(grid['learning_rates'])} x batch "
            f"{_list(grid['batch_sizes'])} x warm-up epochs {_list(grid.get('warmup_epochs', (0,)))}, every point "
            f"{grid['steps_per_epoch'] * grid['epochs']} optimizer steps "
            f"({grid['epochs']} epochs of {grid['steps_per_epoch']} steps, the convergence rule checked on them), "
            f"seed {config['tuning_seed']}, each method's selected temperature; every point scored by the linear "
            "probe on the frozen encoder (CE's own classifier reported alongside); a failed point scores chance."
        )
    lines += [
        "",
        "**Verdict rules** (SupCon against CE; `experiments/report/verdicts.py`):",
        "",
        f"- *yes*: SupCon better and one-sided Welch t-test over seeds p < {rules['alpha']}; *direction only*: "
        "better on average, p >= that; *no*: not better on average (the detail says when CE is significantly "
        "better); *not measured*: fewer than 2 seeds.",
        "- A claim's verdict combines its measures in both comparisons: all *yes* -> yes; all *no* -> no; only "
        "*yes* / *direction only* -> direction only; positives and *no* together -> **mixed**.",
        "- Accuracy: test top-1. Robustness: mCE and relative mCE, each with its own verdict. Calibration: ECE on "
        "clean test images and the mean ECE under corruption.",
        f"- Stability: *yes* when the {100 * rules['bootstrap_level']:.0f}% percentile-bootstrap interval "
        f"({rules['bootstrap_resamples']} resamples of the grid points, seed {rules['bootstrap_seed']}) of "
        "std(CE) - std(SupCon) of the probe's validation top-1 lies above 0; *direction only* when only the point "
        "estimate does; *no* otherwise.",
        "",
    ]
    return lines


def _space_size(space):
    return (
        len(space["learning_rates"]) * len(space["epochs"]) * max(1, len(space["temperatures"]))
        * max(1, len(space.get("warmup_epochs", ())))
    )


def _searches_warmup(config):
    return any(config["search"][m].get("warmup_epochs") for m in METHODS)


def _amendments(protocol):
    """The amendments of the protocol and the registrations before them (empty for an unamended protocol)."""
    amendments = protocol["config"].get("amendments") or []
    if not amendments:
        return []
    lines = []
    for earlier in protocol.get("earlier_registrations", []):
        lines.append(
            f"**Earlier registration** at {earlier.get('registered_at', '?')} (`{earlier.get('command', '?')}`); its "
            "full record is `protocol.earlier_registrations` in results.json."
        )
        lines.append("")
    for number, amendment in enumerate(amendments, 1):
        lines += [
            f"**Amendment {number}** ({amendment['date']}, registered with this run before its first training step). "
            f"Why: {amendment['reason']} What changed: {amendment['changes']}.",
            "",
        ]
    return lines


def _collapsed(flag):
    return "n/a" if flag is None else ("**yes**" if flag else "no")


def _list(values):
    return ", ".join(str(v) for v in values)


def _facts(results):
    facts = results["facts"]
    machine, data, load = facts["machine"], facts["data"], facts["load_average"]
    gpus = ", ".join(machine["gpus"]) if machine["gpus"] else "none"
    return [
        "## Machine and data (measured during the run)",
        "",
        f"- Machine: {machine['cpu_count']} CPU cores ({machine['usable_cpus']} usable"
        + (f", {machine['cpu_model']}" if machine.get("cpu_model") else "")
        + f"), GPUs: {gpus}; {machine['system']} {machine['machine']}, Python {machine['python']}, TensorFlow "
        f"{machine['tensorflow']}, Keras {machine['keras']}.",
        f"- Load average during the run (1 minute, sampled every {load['interval_seconds']:.0f} s, {load['samples']} "
        f"samples): mean {load['mean']:.1f}, min {load['min']:.1f}, max {load['max']:.1f}. A load above the core "
        "count means other jobs shared the machine, which slows every run and makes the equal-time budget noisy.",
        f"- Data: {data['dataset']}, {data['num_classes']} classes, images {'x'.join(map(str, data['raw_image_shape']))} "
        f"used at {data['image_size']}x{data['image_size']}; train split {data['train']} images (training part "
        f"{data['train_part']}, validation {data['validation']} at seed 0's split), test split {data['test']} images "
        f"(one image = {100 / data['test']:.2f} points of accuracy).",
        f"- Corruptions: {len(data['corruptions'])} ({', '.join(data['corruptions'])}) x severities "
        f"{_list(data['severities'])} = {len(data['corruptions']) * len(data['severities'])} corrupted copies of the "
        "test split.",
        "",
    ]


def _claims(results):
    lines = ["## Claims", ""]
    rows = []
    for claim, entry in results["verdicts"].items():
        by_measure = {}
        for measure in entry["measures"]:
            by_measure.setdefault(measure["label"], {})[measure["comparison"]] = measure["verdict"]
        for index, (label, verdicts) in enumerate(by_measure.items()):
            if claim == "stability":
                cells = (verdicts.get("grid", "n/a"), "(one grid)")
            else:
                cells = tuple(verdicts.get(c, "n/a") for c in COMPARISONS)
            rows.append(
                (
                    entry["title"] if index == 0 else "",
                    entry["paper"] if index == 0 else "",
                    label,
                    *cells,
                    f"**{entry['verdict']}**" if index == 0 else "",
                )
            )
    lines.append(table(["claim", "paper", "measure", "equal epochs", "equal time", "verdict here"], rows))
    lines += ["", "Details (SupCon against CE):", ""]
    for entry in results["verdicts"].values():
        for measure in entry["measures"]:
            comparison = COMPARISONS.get(measure["comparison"], measure["comparison"])
            lines.append(f"- {measure['label']}, {comparison}: {measure['verdict']}: {measure['detail']}")
    lines.append("")
    return lines


def _tuning(results):
    lines = ["## Hyper-parameter search (validation split of TRAIN)", ""]
    for method in METHODS:
        entry = results["tuning"][method]
        selected = entry["selected"]
        rows = []
        for trial in entry["trials"]:
            mark = " (selected)" if trial["trial"] == selected["trial"] else ""
            rows.append(
                (
                    f"{trial['trial']}{mark}", trial["learning_rate"], trial.get("temperature", "-") or "-",
                    trial["epochs"], trial.get("warmup_epochs", 0), num(trial["val_accuracy"]),
                    _converged(trial.get("converged")), _collapsed(trial.get("collapsed")), trial["status"],
                )
            )
        lines += [f"{LABELS[method]} ({entry['seconds']:.0f} s; selected from {selected['selected_from']}):", ""]
        lines.append(
            table(
                ["trial", "learning rate", "temperature", "epochs", "warm-up", "val top-1", "curves flat", "collapsed",
                 "status"],
                rows,
            )
        )
        lines.append("")
    return lines


def _converged(flag):
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def _convergence(results):
    rules = results["protocol"]["config"]["rules"]
    lines = [
        "## Training to convergence",
        "",
        f"Final runs per comparison: epochs, how many runs meet the convergence rule on every curve, and the mean "
        f"change of the fitted line over the last {100 * rules['convergence_fraction']:.0f}% of epochs (points).",
        "",
    ]
    rows = []
    for comparison, title in COMPARISONS.items():
        block = results["comparisons"][comparison]
        for method in METHODS:
            runs = block["runs"][method]
            reused = comparison == "equal_time" and block["plan"][method]["reused"]
            changes = {}
            for run in runs:
                for curve, check in run["convergence"].items():
                    if check["change"] is not None:
                        changes.setdefault(curve, []).append(check["change"])
            detail = "; ".join(f"{name} {100 * sum(v) / len(v):+.2f}" for name, v in changes.items())
            flags = [r["converged"] for r in runs]
            rows.append(
                (
                    title, LABELS[method], block["epochs"][method], f"{sum(1 for f in flags if f)} / {len(flags)}",
                    detail, pm([r["train_seconds"] for r in runs], scale=1.0, digits=0)
                    + (" (equal-epoch runs)" if reused else ""),
                )
            )
    lines.append(
        table(["comparison", "method", "epochs", "runs converged", "mean change over the window", "train seconds"], rows)
    )
    plan = results["comparisons"]["equal_time"]
    lines += [
        "",
        f"Equal time: budget {plan['budget_seconds']:.0f} s per run ("
        + "; ".join(
            f"{LABELS[m]} {p['seconds_per_epoch']:.2f} s/epoch + {p['fixed_seconds']:.0f} s probe -> {p['epochs']} epochs"
            for m, p in plan["plan"].items()
        )
        + "). Train seconds exclude the monitor's kNN time.",
        "",
        f"![validation curves of the equal-epoch runs]({PLOTS['convergence']})",
        "",
    ]
    return lines


def _test_tables(results):
    lines = ["## Test results", ""]
    rules = results["protocol"]["config"]["rules"]
    for comparison, title in COMPARISONS.items():
        entries = results["test"]["comparisons"][comparison]
        rows = []
        for method in _methods(results, comparison):
            e = entries[method]
            runs = results["comparisons"][comparison]["runs"].get(method.replace("_probe", ""), [])
            flags = [r.get("collapsed") for r in runs]
            collapsed_runs = "n/a" if all(f is None for f in flags) else f"{sum(bool(f) for f in flags)} of {len(flags)}"
            rows.append(
                (
                    LABELS[method], collapsed_runs, pm([x["top1"] for x in e]), ", ".join(f"{100 * x['top1']:.1f}" for x in e),
                    pm([x["knn_top1"] for x in e]),
                    pm([x["ece"] for x in e], digits=2), pm([x["confidence"] for x in e]),
                    pm([x["corrupted_top1"] for x in e]), pm([x["corrupted_ece"] for x in e], digits=2),
                    pm([x["mce"] for x in e]), pm([x["relative_mce"] for x in e]),
                )
            )
        lines += [f"### {title.capitalize()} (mean ± sample std over seeds, percent)", ""]
        lines.append(
            table(
                [
                    "method", "collapsed runs", "test top-1", "per seed", f"kNN top-1 (k={rules['knn_k']})", "ECE",
                    "mean confidence",
                    "top-1 under corruption", "ECE under corruption", "mCE", "relative mCE",
                ],
                rows,
            )
        )
        lines.append("")
    entries = results["test"]["comparisons"]["equal_epochs"]
    names = list(entries["ce"][0]["corruption_errors"])
    methods = _methods(results, "equal_epochs")
    lines += ["### Corruption error CE_c per corruption, equal epochs (CE = 100)", ""]
    lines.append(
        table(
            ["corruption", *[LABELS[m] for m in methods]],
            [(name, *[pm([x["corruption_errors"][name] for x in entries[m]]) for m in methods]) for name in names],
        )
    )
    for key, title, digits in (("accuracy_by_severity", "Top-1", 1), ("ece_by_severity", "ECE", 2)):
        lines += ["", f"### {title} by severity, equal epochs (mean over corruptions; 0 = clean)", ""]
        width = len(entries["ce"][0][key])
        lines.append(
            table(
                ["method", *[str(s) for s in range(width)]],
                [(LABELS[m], *[pm([x[key][s] for x in entries[m]], digits=digits) for s in range(width)]) for m in methods],
            )
        )
    lines += [
        "",
        f"![accuracy against corruption severity]({PLOTS['corruption_accuracy']})",
        "",
        f"![ECE against corruption severity]({PLOTS['corruption_ece']})",
        "",
        f"![reliability diagrams, equal epochs, all seeds pooled]({PLOTS['reliability']})",
        "",
    ]
    return lines


def _stability(results):
    stability = results["stability"]
    if not stability:
        return ["## Hyper-parameter stability", "", "Not run.", ""]
    lines = [
        "## Hyper-parameter stability",
        "",
        "Validation top-1 of the linear probe at every grid point (CE's own classifier alongside); std over the "
        "grid with its bootstrap interval.",
        "",
    ]
    rows = []
    for method in METHODS:
        entry = stability["methods"][method]
        for name, spread in (("linear probe", entry["spread"]), ("own classifier", entry.get("classifier_spread"))):
            if spread is None:
                continue
            interval = spread["std_interval"]
            rows.append(
                (
                    LABELS[method], name, spread["n"], num(spread["mean"]), num(spread["std"]),
                    f"[{num(interval[0])}, {num(interval[1])}]", num(spread["min"]), num(spread["max"]),
                    num(spread["range"]),
                )
            )
    lines.append(
        table(["method", "scored by", "points", "mean", "std", "std interval", "min", "max", "max - min"], rows)
    )
    lines.append("")
    for method in METHODS:
        points = stability["methods"][method]["points"]
        rows = [
            (
                p["learning_rate"], p["batch_size"], p.get("warmup_epochs", 0), num(p["val_accuracy"]),
                num(p["classifier_val_accuracy"]) if method == "ce" else "-", _converged(p.get("converged")),
                _collapsed(p.get("collapsed")), p["status"],
            )
            for p in points
        ]
        lines += [f"{LABELS[method]}:", ""]
        lines.append(
            table(
                ["learning rate", "batch", "warm-up", "probe val top-1", "classifier val top-1", "curves flat",
                 "collapsed", "status"],
                rows,
            )
        )
        lines.append("")
    lines += [f"![stability]({PLOTS['stability']})", ""]
    return lines


def _hardness(results):
    """The implicit-hard-mining section (absent from results of the first registration)."""
    entry = results.get("hardness")
    if not entry:
        return []
    lines = [
        "## Implicit hard mining (paper Sec. 3.2.3)",
        "",
        "For L2-normalised embeddings the gradient of anchor i's loss with respect to z_i is a sum over the other "
        "embeddings j of terms c_ij z_j, c_ij = (P_ij - 1[j positive] / |P(i)|) / tau_b (checked against "
        "TensorFlow's autodiff of our loss to 1e-14 in float64, `tests/test_hardness.py`); projected on the sphere, "
        "pair j's term has norm |c_ij| sqrt(1 - cos^2(z_i, z_j)) (" + entry["norm_convention"] + "). The paper's "
        "claim: easy positives (cos near 1) and easy negatives (P_ij near 0) contribute little, hard ones much. "
        f"Rule: {entry['rule']}. Measured on each method's first-seed equal-epoch encoder, on training images in "
        "two augmented views.",
        "",
    ]
    rows = []
    for method, result in entry["methods"].items():
        verdict = result["verdict"]
        cells = []
        for group in ("positives", "negatives"):
            g = verdict[group]
            interval = g["interval"]
            cells.append(
                "n/a" if g["rho"] is None else f"{g['rho']:+.2f}"
                + ("" if interval is None else f" [{interval[0]:+.2f}, {interval[1]:+.2f}]")
            )
        rows.append((LABELS[method], result["num_samples"], *cells, f"**{verdict['verdict']}**"))
    level = next(iter(entry["methods"].values()))["verdict"]["level"]
    lines.append(
        table(["method", "samples", f"Spearman rho, positives [{100 * level:.0f}% interval]",
               f"Spearman rho, negatives [{100 * level:.0f}% interval]", "verdict"], rows)
    )
    lines += ["", f"![gradient norm per pair against cosine, with the analytic form]({PLOTS['hardness']})", ""]
    return lines


def _caveats(results):
    data = results["facts"]["data"]
    load = results["facts"]["load_average"]
    machine = results["facts"]["machine"]
    equal = results["test"]["comparisons"]["equal_epochs"]
    lines = ["## Caveats (computed from the results)", ""]
    for comparison, title in COMPARISONS.items():
        for method in METHODS:
            runs = results["comparisons"][comparison]["runs"][method]
            bad = [r["seed"] for r in runs if r["converged"] is False]
            if bad:
                lines.append(
                    f"- {title}: {LABELS[method]} {'runs of seeds' if len(bad) > 1 else 'run of seed'} {_list(bad)} "
                    f"{'do' if len(bad) > 1 else 'does'} not meet the convergence rule."
                )
            collapsed = [r["seed"] for r in runs if r.get("collapsed")]
            if collapsed:
                lines.append(
                    f"- {title}: {LABELS[method]} {'runs of seeds' if len(collapsed) > 1 else 'run of seed'} "
                    f"{_list(collapsed)} collapsed (the collapse monitor's flag: mean embedding cosine above its "
                    "threshold for its span); they stay in the statistics."
                )
    for comparison, title in COMPARISONS.items():
        for method in _methods(results, comparison):
            entries = results["test"]["comparisons"][comparison][method]
            scores = sorted(e["top1"] for e in entries)
            median = scores[len(scores) // 2] if len(scores) % 2 else sum(scores[len(scores) // 2 - 1 : len(scores) // 2 + 1]) / 2
            for entry in entries:
                if entry["top1"] < median - OUTLIER_POINTS / 100:
                    lines.append(
                        f"- {title}: {LABELS[method]} seed {entry['seed']} scores {100 * entry['top1']:.1f}, more than "
                        f"{OUTLIER_POINTS} points below the median of its seeds ({100 * median:.1f}): a failed run. It "
                        "stays in the statistics (the protocol has no exclusion rule)."
                    )
    search = results["protocol"]["config"]["search"]
    for method in METHODS:
        selected = results["tuning"][method]["selected"]
        for field, key in (
            ("learning_rate", "learning_rates"), ("temperature", "temperatures"), ("epochs", "epochs"),
            ("warmup_epochs", "warmup_epochs"),
        ):
            values = sorted(search[method].get(key, ()))
            if len(values) > 1 and selected.get(field) in (values[0], values[-1]):
                side = "smallest" if selected[field] == values[0] else "largest"
                lines.append(
                    f"- {LABELS[method]}'s selected {field.replace('_', ' ')} ({selected[field]}) is the {side} searched: "
                    "its optimum may lie outside the search space."
                )
    ce_knn, _ = mean_std([e["knn_top1"] for e in equal["ce"]])
    ce_top1, _ = mean_std([e["top1"] for e in equal["ce"]])
    if ce_knn > ce_top1:  # False when either is NaN (no runs)
        lines.append(
            f"- A kNN on CE's encoder ({100 * ce_knn:.1f}) beats CE's own classifier ({100 * ce_top1:.1f}) at equal "
            "epochs: CE's classifier lags its representation."
        )
    if load["mean"] > machine["usable_cpus"]:
        lines.append(
            f"- The machine was shared: mean load {load['mean']:.1f} on {machine['usable_cpus']} usable cores. "
            "Seconds (and so the equal-time budget) carry that noise."
        )
    if results["stability"]:
        failed = sum(p["status"] != "COMPLETED" for m in results["stability"]["methods"].values() for p in m["points"])
        if failed:
            lines.append(f"- {failed} stability grid point(s) failed (diverged) and score chance.")
        lines.append(
            f"- The stability grid is one seed per point, {results['stability']['methods']['ce']['spread']['n']} "
            "points per method: its spread includes seed noise, and the bootstrap interval over so few points is rough."
        )
    lines += [
        f"- The test split has {data['test']} images: one image is {100 / data['test']:.2f} points; digits is small "
        "and easy, the encoder is a small CNN, and training is short. The paper's claims are about ResNets on "
        "CIFAR / ImageNet trained for hundreds of epochs.",
        f"- The corruptions use CIFAR-10-C parameters in pixels; at {data['image_size']}x{data['image_size']} the "
        "blurs and pixelation are relatively stronger than at 32x32. mCE here is relative to our CE model, not AlexNet.",
        "",
    ]
    return lines


def report_markdown(results):
    """REPORT.md's text."""
    sections = [
        _header(results), _protocol(results), _facts(results), _claims(results), _tuning(results),
        _convergence(results), _test_tables(results), _stability(results), _hardness(results), _caveats(results),
    ]
    return "\n".join(line for section in sections for line in section)


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def render(results, output_dir, *, plots=True):
    """Writes REPORT.md (and the plots) into `output_dir`; returns REPORT.md's path."""
    os.makedirs(output_dir, exist_ok=True)
    if plots:
        from experiments.report import figures

        figures.make_plots(results, output_dir)
    path = os.path.join(output_dir, REPORT_FILE)
    with open(path, "w") as f:
        f.write(report_markdown(results))
    return path
