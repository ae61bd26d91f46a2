"""The digits report: verdict logic, plots, the report writer on synthetic results, flags, and a tiny real run (slow)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import digits_report as report
from supcon_tf import corruptions, evaluation, plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


# ---------------------------------------------------------------------------
# Statistics and verdicts.
# ---------------------------------------------------------------------------


def test_mean_std_and_format():
    assert report.mean_std([0.9, 0.92, 0.94]) == pytest.approx((0.92, 0.02))
    assert report.mean_std([0.5]) == (0.5, 0.0)
    assert report.fmt([0.9, 0.92, 0.94]) == "92.0 ± 2.0"
    assert report.fmt([float("nan")]) == "n/a"


def test_compare_verdicts():
    # Clearly better: difference 0.05, standard error sqrt(2 * 1e-4 / 3) = 0.0082 -> t = 6.1.
    verdict, detail = report.compare([0.95, 0.96, 0.97], [0.90, 0.91, 0.92], higher_is_better=True)
    assert verdict == "yes" and "t = 6.1" in detail
    # Better on average but within the noise.
    assert report.compare([0.91, 0.95, 0.87], [0.90, 0.91, 0.89], higher_is_better=True)[0].startswith("direction only")
    assert report.compare([0.90, 0.91], [0.95, 0.96], higher_is_better=True)[0] == "no"
    # Lower is better (mCE, ECE).
    assert report.compare([0.80, 0.81, 0.79], [1.0, 1.01, 0.99], higher_is_better=False)[0] == "yes"
    assert report.compare([0.8], [1.0], higher_is_better=False)[0] == "direction only (one seed)"
    assert report.compare([], [1.0], higher_is_better=False)[0] == "not measured"


def test_compare_stability():
    narrow = {"n": 6, "std": 0.01, "range": 0.03}
    wide = {"n": 6, "std": 0.10, "range": 0.30}
    assert report.compare_stability(narrow, wide)[0] == "yes"
    assert report.compare_stability(wide, narrow)[0] == "no"
    assert report.compare_stability({"n": 6, "std": 0.01, "range": 0.5}, wide)[0] == "mixed"
    assert report.compare_stability({"n": 0}, wide)[0] == "not measured"


# ---------------------------------------------------------------------------
# Synthetic results: plots, aggregation and the written report.
# ---------------------------------------------------------------------------

NAMES = corruptions.CORRUPTION_NAMES


def _result(clean_error, slope, rng):
    errors = {c: np.clip(clean_error + slope * np.arange(1, 6) + 0.01 * rng.uniform(size=5), 0, 1) for c in NAMES}
    eces = {c: 0.02 + 0.01 * np.arange(1, 6) * slope * 10 for c in NAMES}
    return evaluation.CorruptionResult(clean_error, 0.02, errors, eces)


def _probabilities(accuracy, rng, n=60):
    labels = rng.integers(0, 10, n)
    probabilities = np.full((n, 10), 0.02)
    predicted = np.where(rng.uniform(size=n) < accuracy, labels, (labels + 1) % 10)
    probabilities[np.arange(n), predicted] = 0.82
    return probabilities, labels


def _synthetic_evaluated(seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    quality = {"supcon": (0.02, 0.02), "simclr": (0.04, 0.03), "ce": (0.06, 0.04)}
    per_seed, corruption, probabilities = {}, {}, {}
    for method, (clean, slope) in quality.items():
        per_seed[method] = [
            {
                "seed": s,
                "test_top1": 1 - clean - 0.005 * s,
                "runner_test_top1": 1 - clean - 0.005 * s,
                "ece": clean / 2 + 0.001 * s,
                "confidence": 0.8,
                "knn_top1": 1 - clean,
                "train_seconds": 10.0,
            }
            for s in seeds
        ]
        corruption[method] = [_result(clean, slope, rng) for _ in seeds]
        probabilities[method] = [_probabilities(1 - clean, rng) for _ in seeds]
    embeddings = {report.LABELS[m]: (rng.normal(size=(40, 6)), rng.integers(0, 10, 40)) for m in report.METHODS}
    return report.aggregate(per_seed, corruption, probabilities, embeddings)


def test_aggregate_uses_the_mean_ce_model_as_baseline():
    evaluated = _synthetic_evaluated()
    baseline = evaluated["baseline"]["errors"]
    ce_runs = evaluated["corruption"]["ce"]
    np.testing.assert_allclose(baseline["contrast"], np.mean([r.errors["contrast"] for r in ce_runs], axis=0))
    ce_mces = [e["mce"] for e in evaluated["per_seed"]["ce"]]
    assert np.mean(ce_mces) == pytest.approx(1.0, abs=1e-9)  # the mean CE model is the baseline
    supcon = evaluated["per_seed"]["supcon"][0]
    expected = evaluation.mean_corruption_error(evaluated["corruption"]["supcon"][0].errors, baseline)
    assert supcon["mce"] == pytest.approx(expected) and supcon["mce"] < 1.0
    assert set(supcon["corruption_errors"]) == set(NAMES)
    assert evaluated["bins"]["SupCon"].count.sum() == 3 * 60  # pooled over seeds


def test_plots_write_pngs(tmp_path):
    evaluated = _synthetic_evaluated()
    by_label = {report.LABELS[m]: evaluated["corruption"][m] for m in report.METHODS}
    paths = [
        plots.plot_training_curves(
            {"SupCon loss": {"SupCon": [[5.0, 4.0, 3.5], [5.1, 4.2, 3.4]]}, "CE accuracy": {"CE": [0.5, 0.8, 0.9]}},
            tmp_path / "curves.png",
        ),
        plots.plot_tsne(evaluated["embeddings"], tmp_path / "nested" / "tsne.png", perplexity=5),
        plots.plot_reliability_diagrams(evaluated["bins"], tmp_path / "reliability.png"),
        plots.plot_corruption_severity(by_label, tmp_path / "accuracy.png"),
        plots.plot_corruption_severity(by_label, tmp_path / "ece.png", metric="ece"),
        plots.plot_sweep_spread({"CE": [0.5, 0.9, 0.7], "SupCon": [0.9, 0.92]}, tmp_path / "spread.png"),
    ]
    for path in paths:
        assert _is_png(path) and os.path.getsize(path) > 5000, path
    with pytest.raises(ValueError, match=".png"):
        plots.plot_sweep_spread({"CE": [0.5]}, tmp_path / "spread.jpg")
    with pytest.raises(ValueError, match="metric"):
        plots.plot_corruption_severity(by_label, tmp_path / "x.png", metric="loss")
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.plot_reliability_diagrams({}, tmp_path / "x.png")


def _stability_rows(scores):
    rows = [
        {"trial": str(i), "learning_rate": lr, "batch_size": 64, "augmentation": "simclr", "epochs": 2, "val_accuracy": s, "status": "COMPLETED"}
        for i, (lr, s) in enumerate(zip((0.01, 0.05, 0.25), scores))
    ]
    from experiments import sweep

    return rows, {"spread": sweep.spread(scores)}


def test_write_report_states_every_claim(tmp_path):
    config = report.ReportConfig(output_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"), tsne=False)
    evaluated = _synthetic_evaluated()
    evaluated["stability"] = {"ce": _stability_rows([0.6, 0.9, 0.8]), "supcon": _stability_rows([0.95, 0.96, 0.94])}
    curves = {"CE loss": {"CE": [[2.0, 1.0], [2.1, 1.1]]}}
    plot_files = report.make_plots(config, evaluated, curves)
    assert "tsne" not in plot_files and set(plot_files) >= {"reliability", "corruption_accuracy", "stability"}
    summary = report.summarize(config, evaluated)
    assert summary["claims"]["accuracy"][0] == "yes"
    assert summary["claims"]["robustness"][0] == "yes"
    assert summary["claims"]["stability"][0] == "yes"
    path = report.write_report(
        config, evaluated, summary, plot_files, command="python -m experiments.digits_report", wall_seconds=600.0,
        stage_seconds={"training": 500.0},
    )
    text = open(path).read()
    for needle in (
        "Command: `python -m experiments.digits_report`",
        "Wall time: 10.0 min",
        "| Accuracy: SupCon beats CE top-1 |",
        "| Robustness: lower mCE on corrupted images |",
        "| Calibration: lower ECE |",
        "| Stability: less sensitive to hyper-parameters |",
        "Reduced budget",
        "| SupCon | 97.5 ± 0.5 |",
        "SupCon under-confident (80.0 vs 97.5)",
    ):
        assert needle in text, needle
    for name in plot_files.values():
        assert f"]({name})" in text and _is_png(tmp_path / "out" / name)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["summary"]["claims"]["accuracy"][0] == "yes" and results["wall_seconds"] == 600.0
    assert len(results["corruption"]["ce"]) == 3 and math.isclose(results["baseline"]["clean_error"], 0.06)


# ---------------------------------------------------------------------------
# Config, flags, and a tiny real run.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(seeds=()), "seeds"),
        (dict(seeds=(0, 0)), "seeds"),
        (dict(epochs=0), "epochs"),
        (dict(image_size=4), "image_size"),
        (dict(grid_learning_rates=()), "grid_learning_rates"),
        (dict(knn_temperature=0.0), "knn_temperature"),
    ],
)
def test_report_config_rejects(changes, message):
    with pytest.raises(ValueError, match=message):
        report.ReportConfig(**changes)


def _run(*flags, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "experiments.digits_report", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_flag_lists_are_parsed_with_named_errors():
    assert report._numbers("seeds", ["0", "1"], int) == (0, 1)
    with pytest.raises(ValueError, match="`--grid_batch_sizes` must be a comma-separated list of ints"):
        report._numbers("grid_batch_sizes", ["64", "x"], int)


def test_importing_defines_no_flags():
    from absl import flags

    assert "grid_epochs" not in flags.FLAGS  # flags are defined by entry() only: no clash with other binaries


def test_binary_bad_flag_one_line(tmp_path):
    flag, message = "--seeds=a", "seeds"
    result = _run(flag, f"--output_dir={tmp_path}/o", f"--work_dir={tmp_path}/w")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]


@pytest.mark.slow
def test_tiny_report_end_to_end(tmp_path):
    result = _run(
        "--seeds=0,1",
        "--epochs=1",
        "--probe_epochs=2",
        "--grid_epochs=1",
        "--grid_learning_rates=0.01,0.1",
        "--grid_batch_sizes=128",
        "--notsne",
        f"--output_dir={tmp_path}/report",
        f"--work_dir={tmp_path}/work",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "report"
    text = (out / "REPORT.md").read_text()
    assert "## Claims" in text and "| Stability: less sensitive to hyper-parameters |" in text
    for name in ("training_curves.png", "reliability.png", "corruption_accuracy.png", "corruption_ece.png", "stability.png"):
        assert _is_png(out / name), name
    results = json.loads((out / "results.json").read_text())
    assert [e["seed"] for e in results["per_seed"]["supcon"]] == [0, 1]
    for entry in results["per_seed"]["ce"]:
        # The report's own evaluation agrees with the runner's test metric.
        assert entry["test_top1"] == pytest.approx(entry["runner_test_top1"], abs=1e-6)
    assert results["stability"]["supcon"]["summary"]["spread"]["n"] == 2
    assert "accuracy:" in result.stdout and "stability:" in result.stdout
