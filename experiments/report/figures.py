"""The report's PNG plots, drawn from results.json only (`render.render` calls this)."""

from __future__ import annotations

import os

from experiments.report.config import LABELS, METHODS, PLOTS


def make_plots(results, output_dir):
    """The PNGs REPORT.md links, drawn from results.json."""
    import numpy as np

    from experiments.report import plots
    from supcon_tf import evaluation

    panels = {}
    for method in METHODS:
        runs = results["comparisons"]["equal_epochs"]["runs"][method]
        panels[f"{LABELS[method]}: kNN val top-1"] = {LABELS[method]: [r["curves"]["knn_top1"] for r in runs]}
        if method == "ce":
            panels["CE: classifier val top-1"] = {"CE": [r["curves"]["val_accuracy"] for r in runs]}
    paths = [plots.plot_training_curves(panels, os.path.join(output_dir, PLOTS["convergence"]),
                                        title="Validation curves, equal epochs (mean ± std over seeds)")]
    entries = results["test"]["comparisons"]["equal_epochs"]
    by_label = {
        LABELS[m]: [
            evaluation.CorruptionResult(
                e["corruption"]["clean_error"], e["corruption"]["clean_ece"],
                {c: np.asarray(v) for c, v in e["corruption"]["errors"].items()},
                {c: np.asarray(v) for c, v in e["corruption"]["eces"].items()},
                tuple(e["corruption"]["severities"]),
            )
            for e in entries[m]
        ]
        for m in METHODS
    }
    for metric in ("accuracy", "ece"):
        paths.append(plots.plot_corruption_severity(by_label, os.path.join(output_dir, PLOTS[f"corruption_{metric}"]), metric=metric))
    bins = {}
    for method in METHODS:
        b = results["test"]["bins"]["equal_epochs"][method]
        bins[LABELS[method]] = evaluation.CalibrationBins(
            *[np.asarray([np.nan if v is None else v for v in b[key]], np.float64) for key in ("lower", "upper")],
            np.asarray(b["count"], np.int64),
            *[np.asarray([np.nan if v is None else v for v in b[key]], np.float64) for key in ("accuracy", "confidence")],
        )
    paths.append(plots.plot_reliability_diagrams(bins, os.path.join(output_dir, PLOTS["reliability"])))
    if results["stability"]:
        scores = {LABELS[m]: [p["score"] for p in results["stability"]["methods"][m]["points"]] for m in METHODS}
        paths.append(plots.plot_sweep_spread(scores, os.path.join(output_dir, PLOTS["stability"]),
                                             title="Probe validation top-1 over the same grid"))
    if results.get("hardness"):
        from experiments.report import hardness

        paths.append(hardness.figure(results["hardness"]["methods"], os.path.join(output_dir, PLOTS["hardness"])))
    return paths
