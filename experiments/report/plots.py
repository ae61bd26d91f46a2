"""The report's PNG plots: training curves, reliability diagrams, accuracy/ECE against corruption severity, sweep spreads.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg
canvas: no pyplot, no global backend switch, no display needed. Every
function writes one PNG to `path` (parent folders created) and returns `path`.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 110


def _figure(rows, cols, width=4.0, height=3.2):
    figure = Figure(figsize=(width * cols, height * rows), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def save_figure(figure, path):
    """Writes a matplotlib figure to `path` (.png; its folder created), laid out tight; returns the path."""
    path = os.fspath(path)
    if not path.endswith(".png"):
        raise ValueError(f"`path` must end with .png, received: path={path!r}")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _curve_band(values):
    """Per-epoch mean and std band of `values` [epochs] or [runs, epochs] (runs may differ in length: truncated to the shortest)."""
    if len(values) and np.ndim(values[0]) > 0:
        length = min(len(v) for v in values)
        stacked = np.asarray([np.asarray(v[:length], np.float64) for v in values])
        return stacked.mean(axis=0), stacked.std(axis=0)
    values = np.asarray(values, np.float64)
    return values, np.zeros_like(values)


def _check_mapping(value, name):
    if not isinstance(value, dict) or not value:
        raise ValueError(f"`{name}` must be a non-empty dict keyed by method label, received: {name}={value!r}")


def plot_training_curves(panels, path, *, title=None):
    """One panel per entry (e.g. a method's loss), one line per label (mean and +-1 std band over runs).

    Args:
      panels: `{panel title: {label: values}}` with values `[epochs]` or a
        list of per-run `[epochs]` arrays (e.g. one per seed).
      path: output .png.
    """
    _check_mapping(panels, "panels")
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    figure, axes = _figure(rows, cols, width=3.6, height=2.8)
    for index, (panel, lines) in enumerate(panels.items()):
        axis = axes[index // cols][index % cols]
        _check_mapping(lines, f"panels[{panel!r}]")
        for label, values in lines.items():
            mean, std = _curve_band(values)
            epochs = np.arange(1, len(mean) + 1)
            axis.plot(epochs, mean, label=label, marker="o" if len(mean) < 3 else None)
            axis.fill_between(epochs, mean - std, mean + std, alpha=0.2)
        axis.set_xlabel("epoch")
        axis.set_title(panel, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for index in range(len(panels), rows * cols):
        axes[index // cols][index % cols].axis("off")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def plot_reliability_diagrams(bins, path, *, title=None):
    """Reliability diagram per method: accuracy per confidence bin against the diagonal, with the ECE.

    Args:
      bins: `{label: evaluation.CalibrationBins}`.
      path: output .png.
    """
    _check_mapping(bins, "bins")
    figure, axes = _figure(1, len(bins), width=3.6, height=3.6)
    for axis, (label, calibration) in zip(axes[0], bins.items()):
        width = calibration.upper - calibration.lower
        centres = calibration.lower + width / 2
        filled = calibration.count > 0
        accuracy = np.where(filled, calibration.accuracy, 0.0)
        confidence = np.where(filled, calibration.confidence, 0.0)
        axis.bar(centres, accuracy, width=width, color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
        # The gap between accuracy and mean confidence, hatched (above the bar: over-confident; inside it: under-).
        axis.bar(
            centres[filled],
            (confidence - accuracy)[filled],
            bottom=accuracy[filled],
            width=width[filled],
            fill=False,
            hatch="///",
            edgecolor="tab:red",
            linewidth=0.5,
            label="gap to confidence",
        )
        axis.plot([0, 1], [0, 1], "k--", linewidth=1)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{label}: ECE {100 * calibration.ece:.2f}%")
        axis.legend(loc="upper left", fontsize=8)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def plot_corruption_severity(results, path, *, metric="accuracy", title=None):
    """Accuracy (or ECE) against corruption severity: one panel per corruption plus their mean.

    Args:
      results: `{label: [evaluation.CorruptionResult, ...]}` (one per run;
        lines are the mean over runs, bands +-1 std).
      path: output .png.
      metric: `"accuracy"` or `"ece"`.
    """
    _check_mapping(results, "results")
    if metric not in ("accuracy", "ece"):
        raise ValueError(f"`metric` must be 'accuracy' or 'ece', received: metric={metric!r}")
    first = next(iter(results.values()))[0]
    names = list(first.errors)
    severities = np.arange(0, len(first.severities) + 1)
    panels = ["mean over corruptions"] + names
    cols = 5
    rows = int(np.ceil(len(panels) / cols))
    figure, axes = _figure(rows, cols, width=3.0, height=2.6)
    for index, panel in enumerate(panels):
        axis = axes[index // cols][index % cols]
        for label, runs in results.items():
            curves = []
            for result in runs:
                if panel == "mean over corruptions":
                    curve = result.accuracy_by_severity() if metric == "accuracy" else result.ece_by_severity()
                elif metric == "accuracy":
                    curve = np.concatenate([[1 - result.clean_error], 1 - np.asarray(result.errors[panel])])
                else:
                    curve = np.concatenate([[result.clean_ece], np.asarray(result.eces[panel])])
                curves.append(curve)
            mean, std = _curve_band(curves)
            axis.plot(severities, mean, marker="o", markersize=3, label=label)
            axis.fill_between(severities, mean - std, mean + std, alpha=0.2)
        axis.set_title(panel, fontsize=9)
        axis.set_xticks(severities)
        axis.grid(alpha=0.3)
        if index % cols == 0:
            axis.set_ylabel("top-1 accuracy" if metric == "accuracy" else "ECE")
        if index == 0:
            axis.legend(fontsize=7)
    for index in range(len(panels), rows * cols):
        axes[index // cols][index % cols].axis("off")
    figure.supxlabel("severity (0 = clean)")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def plot_sweep_spread(scores, path, *, ylabel="validation accuracy", title=None):
    """Each method's scores over a hyper-parameter grid as points plus a box (the stability study).

    Args:
      scores: `{label: [score per grid point]}`.
      path: output .png.
    """
    _check_mapping(scores, "scores")
    figure, axes = _figure(1, 1, width=max(4.8, 1.6 * len(scores)), height=3.8)
    axis = axes[0][0]
    labels = list(scores)
    values = [np.asarray(scores[label], np.float64) for label in labels]
    axis.boxplot(values, showfliers=False)
    axis.set_xticks(np.arange(1, len(labels) + 1), labels)
    rng = np.random.default_rng(0)
    for position, points in enumerate(values, start=1):
        axis.scatter(position + rng.uniform(-0.08, 0.08, len(points)), points, s=14, alpha=0.8, zorder=3)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3, axis="y")
    if title:
        axis.set_title(title, fontsize=10)
    return save_figure(figure, path)
