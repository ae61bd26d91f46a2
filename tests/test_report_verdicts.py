"""The report's rules on hand-made results: Welch verdicts, combining, convergence, spread and every claim."""

import math

import pytest
from scipy import stats

from experiments.report import verdicts as v

BOOTSTRAP = dict(resamples=2000, level=0.95, seed=0)
RULES = dict(alpha=0.05, **BOOTSTRAP)


# ---------------------------------------------------------------------------
# Welch's test and one comparison.
# ---------------------------------------------------------------------------


def test_welch_matches_scipy():
    a, b = [0.95, 0.96, 0.97, 0.955, 0.965], [0.90, 0.93, 0.91, 0.92, 0.94]
    test = v.welch(a, b, higher_is_better=True)
    reference = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert test["t"] == pytest.approx(reference.statistic) and test["p"] == pytest.approx(reference.pvalue)
    assert test["difference"] == pytest.approx(sum(a) / 5 - sum(b) / 5)
    lower = v.welch(b, a, higher_is_better=False)  # lower is better: b is better than a
    assert lower["difference"] == pytest.approx(test["difference"]) and lower["p"] == pytest.approx(test["p"])


def test_welch_without_variance():
    assert v.welch([1.0, 1.0], [0.5, 0.5], higher_is_better=True)["p"] == 0.0
    assert v.welch([0.5, 0.5], [0.5, 0.5], higher_is_better=True)["p"] == 0.5
    with pytest.raises(ValueError, match="at least 2"):
        v.welch([1.0], [0.5, 0.6], higher_is_better=True)


def test_compare_yes_direction_no():
    # Clearly better over 5 seeds.
    assert v.compare([0.95, 0.96, 0.97, 0.96, 0.95], [0.90, 0.91, 0.92, 0.90, 0.91], higher_is_better=True, alpha=0.05)[
        "verdict"
    ] == v.YES
    # Better on average, within seed noise.
    result = v.compare([0.91, 0.97, 0.87, 0.95, 0.90], [0.90, 0.91, 0.89, 0.92, 0.90], higher_is_better=True, alpha=0.05)
    assert result["verdict"] == v.DIRECTION and result["p"] >= 0.05
    # Worse on average, not significantly.
    result = v.compare([0.90, 0.92, 0.88], [0.91, 0.93, 0.89], higher_is_better=True, alpha=0.05)
    assert result["verdict"] == v.NO and "significantly" not in result["detail"]
    # Significantly worse: still "no", and the detail says so.
    result = v.compare([0.80, 0.81, 0.79], [0.95, 0.96, 0.94], higher_is_better=True, alpha=0.05)
    assert result["verdict"] == v.NO and "CE significantly better" in result["detail"]
    # Lower is better (mCE, ECE).
    assert v.compare([0.80, 0.81, 0.79], [1.0, 1.01, 0.99], higher_is_better=False, alpha=0.05)["verdict"] == v.YES
    # Too few seeds.
    assert v.compare([0.8], [1.0, 0.9], higher_is_better=False, alpha=0.05)["verdict"] == v.NOT_MEASURED
    assert v.compare([0.8, None, float("nan")], [1.0, 0.9], higher_is_better=False, alpha=0.05)["verdict"] == v.NOT_MEASURED


def test_alpha_decides_between_yes_and_direction_only():
    a, b = [0.93, 0.95, 0.94], [0.92, 0.93, 0.925]
    p = v.welch(a, b, higher_is_better=True)["p"]
    assert v.compare(a, b, higher_is_better=True, alpha=p * 1.01)["verdict"] == v.YES
    assert v.compare(a, b, higher_is_better=True, alpha=p * 0.99)["verdict"] == v.DIRECTION
    with pytest.raises(ValueError, match="alpha"):
        v.compare(a, b, higher_is_better=True, alpha=1.5)


@pytest.mark.parametrize(
    "inputs, expected",
    [
        ([v.YES, v.YES], v.YES),
        ([v.NO, v.NO, v.NO], v.NO),
        ([v.YES, v.DIRECTION], v.DIRECTION),
        ([v.DIRECTION, v.DIRECTION], v.DIRECTION),
        ([v.YES, v.NO], v.MIXED),
        ([v.DIRECTION, v.NO], v.MIXED),
        ([v.MIXED, v.YES], v.MIXED),
        ([v.YES, v.NOT_MEASURED], v.YES),
        ([v.NOT_MEASURED], v.NOT_MEASURED),
        ([], v.NOT_MEASURED),
    ],
)
def test_combine(inputs, expected):
    assert v.combine(inputs) == expected


def test_combine_rejects_unknown_labels():
    with pytest.raises(ValueError, match="verdicts"):
        v.combine(["maybe"])


# ---------------------------------------------------------------------------
# Convergence.
# ---------------------------------------------------------------------------


def test_convergence_flat_rising_falling_short():
    rising = [0.5 + 0.02 * i for i in range(20)]
    flat = [0.5 + 0.02 * i for i in range(16)] + [0.82, 0.83, 0.82, 0.83]
    check = v.convergence(flat, fraction=0.2, tolerance=0.01)
    assert check["converged"] is True and check["window"] == 4 and check["first_epoch"] == 17
    check = v.convergence(rising, fraction=0.2, tolerance=0.01)
    assert check["converged"] is False and check["change"] == pytest.approx(0.06)
    falling = [0.9] * 16 + [0.88, 0.86, 0.84, 0.82]
    assert v.convergence(falling, fraction=0.2, tolerance=0.01)["converged"] is False  # not flat either
    assert v.convergence([0.5, 0.6], fraction=0.2, tolerance=0.01)["converged"] is None  # too short to judge
    # At least 3 epochs in the window, and None / NaN epochs are skipped.
    assert v.convergence([0.1, 0.9, 0.9, 0.9, None], fraction=0.2, tolerance=0.01)["window"] == 3
    assert v.convergence([0.9, 0.9, float("nan"), 0.9], fraction=0.2, tolerance=0.0)["converged"] is True
    with pytest.raises(ValueError, match="fraction"):
        v.convergence(flat, fraction=0.0, tolerance=0.01)


def test_all_converged():
    assert v.all_converged([{"converged": True}, {"converged": None}]) is True
    assert v.all_converged([{"converged": True}, {"converged": False}]) is False
    assert v.all_converged([{"converged": None}]) is None


# ---------------------------------------------------------------------------
# Spread and stability.
# ---------------------------------------------------------------------------


def test_spread_and_its_bootstrap_interval():
    scores = [0.90, 0.92, 0.94, 0.91, 0.93, 0.95]
    result = v.spread(scores, resamples=500, level=0.95, seed=0)
    mean = sum(scores) / 6
    assert result["std"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in scores) / 6))
    low, high = result["std_interval"]
    assert 0.0 <= low <= result["std"] <= high and result["range"] == pytest.approx(0.05)
    assert v.spread([], resamples=10, level=0.95, seed=0)["n"] == 0


def test_stability_verdicts():
    narrow = [0.95, 0.96, 0.94, 0.955, 0.945, 0.95]
    wide = [0.30, 0.90, 0.60, 0.85, 0.20, 0.75]
    assert v.stability(narrow, wide, **BOOTSTRAP)["verdict"] == v.YES
    assert v.stability(wide, narrow, **BOOTSTRAP)["verdict"] == v.NO
    # A little less spread, well inside the bootstrap noise of 6 points.
    slightly = [0.90, 0.93, 0.91, 0.94, 0.92, 0.95]
    other = [0.90, 0.935, 0.91, 0.945, 0.915, 0.95]
    result = v.stability(slightly, other, **BOOTSTRAP)
    assert result["verdict"] == v.DIRECTION and result["interval"][0] <= 0 < result["difference"]
    assert v.stability([0.9], wide, **BOOTSTRAP)["verdict"] == v.NOT_MEASURED


# ---------------------------------------------------------------------------
# Every claim on hand-made results.
# ---------------------------------------------------------------------------

GOOD = [0.97, 0.975, 0.98, 0.972, 0.978]
BAD = [0.90, 0.91, 0.905, 0.895, 0.9]
CLOSE = [0.97, 0.90, 0.99, 0.93, 0.95]  # about GOOD's mean on average, very noisy
LOW = [0.50, 0.52, 0.51, 0.49, 0.50]
HIGH = [1.00, 1.02, 0.99, 1.01, 1.00]


def _methods(supcon, ce):
    return {"supcon": supcon, "ce": ce}


def _results(*, top1, mce, relative_mce, ece, corrupted_ece):
    """Both comparisons alike: each argument is (SupCon's, CE's) per-seed values."""
    one = _methods(*({}, {}))
    for name, (supcon, ce) in dict(
        top1=top1, mce=mce, relative_mce=relative_mce, ece=ece, corrupted_ece=corrupted_ece
    ).items():
        one["supcon"][name] = supcon
        one["ce"][name] = ce
    return {"equal_epochs": one, "equal_time": one}


def _claims(per_comparison, stability=None):
    return v.evaluate_claims(per_comparison, stability, **RULES)


def test_every_claim_yes():
    claims = _claims(
        _results(top1=(GOOD, BAD), mce=(LOW, HIGH), relative_mce=(LOW, HIGH), ece=(LOW, HIGH), corrupted_ece=(LOW, HIGH)),
        {"supcon": [0.95, 0.96, 0.94, 0.955], "ce": [0.3, 0.9, 0.6, 0.1]},
    )
    assert {claim: entry["verdict"] for claim, entry in claims.items()} == {
        "accuracy": v.YES, "robustness": v.YES, "calibration": v.YES, "stability": v.YES
    }
    assert len(claims["robustness"]["measures"]) == 4  # mCE and relative mCE, each in both comparisons


def test_every_claim_no():
    claims = _claims(
        _results(top1=(BAD, GOOD), mce=(HIGH, LOW), relative_mce=(HIGH, LOW), ece=(HIGH, LOW), corrupted_ece=(HIGH, LOW)),
        {"supcon": [0.3, 0.9, 0.6, 0.1], "ce": [0.95, 0.96, 0.94, 0.955]},
    )
    assert {claim: entry["verdict"] for claim, entry in claims.items()} == {
        "accuracy": v.NO, "robustness": v.NO, "calibration": v.NO, "stability": v.NO
    }


def test_every_claim_direction_only():
    noisy_low = [0.5, 1.2, 0.4, 1.1, 0.6]
    noisy_high = [1.1, 0.5, 1.3, 0.6, 0.9]
    claims = _claims(
        _results(
            top1=(CLOSE, [0.96, 0.90, 0.97, 0.92, 0.94]),
            mce=(noisy_low, noisy_high),
            relative_mce=(noisy_low, noisy_high),
            ece=(noisy_low, noisy_high),
            corrupted_ece=(noisy_low, noisy_high),
        ),
        {"supcon": [0.90, 0.93, 0.91, 0.94, 0.92, 0.95], "ce": [0.90, 0.935, 0.91, 0.945, 0.915, 0.95]},
    )
    assert {claim: entry["verdict"] for claim, entry in claims.items()} == {
        "accuracy": v.DIRECTION, "robustness": v.DIRECTION, "calibration": v.DIRECTION, "stability": v.DIRECTION
    }


def test_mce_and_relative_mce_disagree_gives_mixed_robustness():
    # SupCon's errors are lower overall (mCE better) but its clean error is so much lower that it
    # loses more under corruption (relative mCE worse): the two verdicts disagree.
    claims = _claims(
        _results(top1=(GOOD, BAD), mce=(LOW, HIGH), relative_mce=(HIGH, LOW), ece=(LOW, HIGH), corrupted_ece=(LOW, HIGH))
    )
    robustness = claims["robustness"]
    by_measure = {(m["measure"], m["comparison"]): m["verdict"] for m in robustness["measures"]}
    assert by_measure[("mce", "equal_epochs")] == v.YES and by_measure[("relative_mce", "equal_epochs")] == v.NO
    assert robustness["verdict"] == v.MIXED
    assert claims["accuracy"]["verdict"] == v.YES and claims["stability"]["verdict"] == v.NOT_MEASURED


def test_mixed_accuracy_and_calibration():
    per_comparison = {
        "equal_epochs": {"supcon": {"top1": GOOD, "ece": LOW, "corrupted_ece": HIGH}, "ce": {"top1": BAD, "ece": HIGH, "corrupted_ece": LOW}},
        "equal_time": {"supcon": {"top1": BAD, "ece": LOW, "corrupted_ece": HIGH}, "ce": {"top1": GOOD, "ece": HIGH, "corrupted_ece": LOW}},
    }
    claims = _claims(per_comparison)
    assert claims["accuracy"]["verdict"] == v.MIXED  # better at equal epochs, worse at equal time
    assert claims["calibration"]["verdict"] == v.MIXED  # clean ECE better, ECE under corruption worse
    assert claims["robustness"]["verdict"] == v.NOT_MEASURED  # no mCE values at all
