"""Summaries of score lists shared by the experiments (sweeps, the report): one definition each.

NumPy-free on purpose (the report's `--readme` and `--render_only` modes read results without TensorFlow
or NumPy); `None` and NaN scores (failed or absent runs) are dropped first.
"""

from __future__ import annotations

import math


def finite(values):
    """The finite floats of `values` (None and NaN dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values):
    """`(mean, sample std)` of the finite values; std 0 for one value; `(nan, nan)` for none."""
    values = finite(values)
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def population_std(values):
    """The population std (divided by n) of a non-empty list of floats."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def spread(scores):
    """`{n, mean, std, min, max, range}` of the finite scores, std the population std (all None for none)."""
    values = finite(scores)
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "range": None}
    return {
        "n": len(values),
        "mean": sum(values) / len(values),
        "std": population_std(values),
        "min": min(values),
        "max": max(values),
        "range": max(values) - min(values),
    }
