"""The report's rules: verdicts, convergence and spread, as pure functions of plain numbers (no TensorFlow).

Every verdict compares SupCon with cross-entropy (CE) on per-seed values
and says whether the paper's claim holds here:

* ``yes``: SupCon is better and a one-sided Welch t-test on the seeds gives
  p < alpha;
* ``direction only``: SupCon is better on average, p >= alpha;
* ``no``: SupCon is not better on average (the detail says when CE is
  significantly better);
* ``mixed``: the measures of one claim disagree in direction (e.g. mCE says
  better, relative mCE says worse);
* ``not measured``: fewer than two finite values on a side.

Stability compares the spread of validation scores over a hyper-parameter
grid: ``yes`` when the bootstrap interval of std(CE) - std(SupCon) lies
above 0, ``direction only`` when the point estimate does, ``no`` otherwise.

A curve has converged when it is flat over its last `fraction` of epochs:
the least-squares line through that window changes by at most `tolerance`
from the window's first to its last epoch.

`tests/test_report_verdicts.py` checks every rule on hand-made results.
"""

from __future__ import annotations

import math

from experiments import scores as scores_lib
from experiments.scores import finite, mean_std  # noqa: F401 (part of this module's API: verdicts.mean_std)

YES = "yes"
NO = "no"
DIRECTION = "direction only"
MIXED = "mixed"
NOT_MEASURED = "not measured"
VERDICTS = (YES, DIRECTION, NO, MIXED, NOT_MEASURED)

# claim -> (title, paper's statement, [(measure key, measure label, higher is better)])
CLAIMS = {
    "accuracy": (
        "Accuracy: SupCon beats CE top-1",
        "CIFAR-10 96.0 vs 95.0; CIFAR-100 76.5 vs 75.3; ImageNet 78.7 vs 78.2",
        [("top1", "test top-1", True)],
    ),
    "robustness": (
        "Robustness: SupCon degrades less under corruptions",
        "ImageNet-C mCE 67.2 vs 68.6 (CE)",
        [("mce", "mCE", False), ("relative_mce", "relative mCE", False)],
    ),
    "calibration": (
        "Calibration: SupCon is better calibrated",
        "lower ECE, also under ImageNet-C corruptions",
        [("ece", "ECE (clean)", False), ("corrupted_ece", "ECE under corruption", False)],
    ),
}
STABILITY_CLAIM = (
    "Stability: SupCon is less sensitive to hyper-parameters",
    "top-1 varies less across augmentations, optimizers, learning rates",
)


def welch(a, b, *, higher_is_better):
    """One-sided Welch t-test of "a is better than b".

    Returns:
      `{n_a, n_b, mean_a, mean_b, difference, t, df, p}`: `difference` is
      positive when a is better (mean_a - mean_b, or its negation when lower
      is better); `p` is P(T >= t) under "no difference" (small: a better);
      `p_opposite` is P(T <= t) (small: b better).
    """
    from scipy import stats

    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs at least 2 finite values per side, received: {len(a)} and {len(b)}")
    mean_a, sd_a = mean_std(a)
    mean_b, sd_b = mean_std(b)
    difference = mean_a - mean_b if higher_is_better else mean_b - mean_a
    var_a, var_b = sd_a**2 / len(a), sd_b**2 / len(b)
    se2 = var_a + var_b
    if se2 == 0.0:
        t = math.inf if difference > 0 else (-math.inf if difference < 0 else 0.0)
        df = float(len(a) + len(b) - 2)
        p = 0.0 if difference > 0 else (1.0 if difference < 0 else 0.5)
    else:
        t = difference / math.sqrt(se2)
        df = se2**2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
        p = float(stats.t.sf(t, df))
    return {
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "difference": difference,
        "t": t,
        "df": df,
        "p": p,
        "p_opposite": 1.0 - p,
    }


def compare(supcon, ce, *, higher_is_better, alpha):
    """Verdict on "SupCon is better than CE" from per-seed values (see the module docstring)."""
    _check_alpha(alpha)
    a, b = finite(supcon), finite(ce)
    if len(a) < 2 or len(b) < 2:
        return {"verdict": NOT_MEASURED, "detail": f"needs >= 2 seeds per method, have {len(a)} and {len(b)}"}
    test = welch(a, b, higher_is_better=higher_is_better)
    detail = (
        f"SupCon's advantage {test['difference']:+.4f} (Welch t = {_number(test['t'])}, df = {test['df']:.1f}, "
        f"one-sided p = {test['p']:.3g}, {test['n_a']} vs {test['n_b']} seeds)"
    )
    if test["difference"] > 0 and test["p"] < alpha:
        verdict = YES
    elif test["difference"] > 0:
        verdict = DIRECTION
    else:
        verdict = NO
        if test["p_opposite"] < alpha:
            detail += f"; CE significantly better (p = {test['p_opposite']:.3g})"
    return {"verdict": verdict, "detail": detail, **test}


def combine(verdicts):
    """One verdict from several measures: agreeing ones give their verdict, disagreeing directions give "mixed".

    "not measured" entries are ignored. All "yes" -> yes; all "no" -> no;
    only "yes" / "direction only" -> direction only; "mixed" anywhere, or
    both a positive ("yes" / "direction only") and a "no" -> mixed.
    """
    verdicts = [v for v in verdicts if v != NOT_MEASURED]
    unknown = [v for v in verdicts if v not in VERDICTS]
    if unknown:
        raise ValueError(f"`verdicts` must be from {VERDICTS}, received: {unknown}")
    if not verdicts:
        return NOT_MEASURED
    if MIXED in verdicts:
        return MIXED
    positive = [v for v in verdicts if v in (YES, DIRECTION)]
    if positive and len(positive) < len(verdicts):
        return MIXED
    if not positive:
        return NO
    return YES if all(v == YES for v in verdicts) else DIRECTION


def convergence(curve, *, fraction, tolerance, min_points=3):
    """Whether `curve` (one value per epoch) is flat over its last `fraction` of epochs.

    The window is the last max(min_points, ceil(fraction * epochs)) epochs;
    `change` is the slope of the least-squares line through them times
    (window - 1), i.e. how much the fitted line moves across the window.
    Flat: |change| <= tolerance. Too short a curve gives converged None.

    Returns:
      `{"converged": bool or None, "epochs", "window", "first_epoch", "change"}`.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1], received: fraction={fraction!r}")
    if not tolerance >= 0:
        raise ValueError(f"`tolerance` must be >= 0, received: tolerance={tolerance!r}")
    values = finite(curve)
    epochs = len(values)
    window = max(min_points, math.ceil(fraction * epochs - 1e-9))
    if epochs < window or window < 2:
        return {"converged": None, "epochs": epochs, "window": window, "first_epoch": None, "change": None}
    tail = values[-window:]
    xs = list(range(window))
    x_mean, y_mean = sum(xs) / window, sum(tail) / window
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, tail)) / sum((x - x_mean) ** 2 for x in xs)
    change = slope * (window - 1)
    return {
        "converged": abs(change) <= tolerance,
        "epochs": epochs,
        "window": window,
        "first_epoch": epochs - window + 1,
        "change": change,
    }


def all_converged(checks):
    """True when every check converged, False when one did not, None when none could be judged."""
    flags = [c["converged"] for c in checks if c["converged"] is not None]
    if not flags:
        return None
    return all(flags)


def spread(scores, *, resamples, level, seed):
    """`{n, mean, std, min, max, range, std_interval}` of grid scores; std is the population std.

    `std_interval`: the percentile bootstrap interval (`level`, e.g. 0.95) of
    the std, resampling the grid points with replacement `resamples` times.
    """
    import numpy as np

    summary = scores_lib.spread(scores)
    if not summary["n"]:
        return {**summary, "std_interval": None}
    rng = np.random.default_rng(seed)
    array = np.asarray(finite(scores))
    draws = array[rng.integers(0, len(array), size=(resamples, len(array)))].std(axis=1)
    tail = (1 - level) / 2
    return {**summary, "std_interval": [float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))]}


def stability(supcon_scores, ce_scores, *, resamples, level, seed):
    """Verdict on "SupCon's grid scores vary less than CE's" (bootstrap of the std difference)."""
    import numpy as np

    a, b = np.asarray(finite(supcon_scores)), np.asarray(finite(ce_scores))
    if len(a) < 2 or len(b) < 2:
        return {"verdict": NOT_MEASURED, "detail": f"needs >= 2 grid points per method, have {len(a)} and {len(b)}"}
    rng = np.random.default_rng(seed)
    draws_a = a[rng.integers(0, len(a), size=(resamples, len(a)))].std(axis=1)
    draws_b = b[rng.integers(0, len(b), size=(resamples, len(b)))].std(axis=1)
    differences = draws_b - draws_a
    tail = (1 - level) / 2
    low, high = float(np.quantile(differences, tail)), float(np.quantile(differences, 1 - tail))
    std_a, std_b = scores_lib.population_std(list(a)), scores_lib.population_std(list(b))
    difference = std_b - std_a
    detail = (
        f"std {std_a:.4f} (SupCon) vs {std_b:.4f} (CE): CE - SupCon = {difference:+.4f}, "
        f"{100 * level:.0f}% bootstrap interval [{low:+.4f}, {high:+.4f}] ({resamples} resamples of "
        f"{len(a)} / {len(b)} grid points); range {float(a.max() - a.min()):.4f} vs {float(b.max() - b.min()):.4f}"
    )
    if difference > 0 and low > 0:
        verdict = YES
    elif difference > 0:
        verdict = DIRECTION
    else:
        verdict = NO
    return {"verdict": verdict, "detail": detail, "difference": difference, "interval": [low, high]}


def evaluate_claims(per_comparison, stability_scores, *, alpha, resamples, level, seed):
    """Every claim's verdicts.

    Args:
      per_comparison: `{comparison: {"supcon": {measure: [per-seed values]}, "ce": {...}}}`
        with the measures of `CLAIMS` (top1, mce, relative_mce, ece, corrupted_ece).
      stability_scores: `{"supcon": [grid scores], "ce": [grid scores]}` or None.
      alpha, resamples, level, seed: the thresholds (see the module docstring).

    Returns:
      `{claim: {"title", "paper", "measures": [{"measure", "label", "comparison", "verdict", "detail", ...}],
      "verdict"}}`; the stability claim under "stability".
    """
    out = {}
    for claim, (title, paper, measures) in CLAIMS.items():
        rows = []
        for measure, label, higher in measures:
            for comparison, methods in per_comparison.items():
                result = compare(
                    methods["supcon"].get(measure, []), methods["ce"].get(measure, []), higher_is_better=higher, alpha=alpha
                )
                rows.append({"measure": measure, "label": label, "comparison": comparison, **result})
        out[claim] = {"title": title, "paper": paper, "measures": rows, "verdict": combine([r["verdict"] for r in rows])}
    title, paper = STABILITY_CLAIM
    if stability_scores is None:
        result = {"verdict": NOT_MEASURED, "detail": "the stability grid was not run"}
    else:
        result = stability(stability_scores["supcon"], stability_scores["ce"], resamples=resamples, level=level, seed=seed)
    out["stability"] = {
        "title": title,
        "paper": paper,
        "measures": [{"measure": "grid_std", "label": "std of validation top-1 over the grid", "comparison": "grid", **result}],
        "verdict": result["verdict"],
    }
    return out


def _check_alpha(alpha):
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), received: alpha={alpha!r}")


def _number(value):
    return f"{value:.2f}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")
