"""Implicit hard mining (Khosla et al. 2020, Sec. 3.2.3 and supplement S6): the gradient of L_out, pair by pair.

Notation as in `supcon_tf.losses`: z_i = w_i / ||w_i|| the L2-normalised
embeddings, tau the temperature, tau_b the base temperature (the loss is
scaled by tau / tau_b; tau_b = tau by default), A(i) every embedding but i,
P(i) the positives of i in A(i), s_ia = z_i.z_a / tau and

    P_ij = exp(s_ij) / Z_i,   Z_i = sum_{a in A(i)} exp(s_ia)   (softmax over A(i))
    L_out(i) = -(tau / tau_b) / |P(i)| * sum_{p in P(i)} log P_ip.

Gradient of the anchor's own loss L_out(i) with respect to z_i (z_i appears
in every s_ia; the other z_a are held fixed):

    dL_out(i)/dz_i = (tau / tau_b) * sum_{a in A(i)} (P_ia - 1[a in P(i)] / |P(i)|) z_a / tau
                   = sum_{j in A(i)} c_ij z_j,    c_ij = (P_ij - 1[j in P(i)] / |P(i)|) / tau_b,

since d log P_ip / dz_i = z_p / tau - sum_a P_ia z_a / tau and sum_a P_ia = 1.
(With tau_b = tau this is the paper's (1/tau)(P_ij - 1[j in P]/|P|).)
Through the normalisation, dz_i/dw_i = (I - z_i z_i^T) / ||w_i||, so the
gradient with respect to w_i is the sum over j of the pair terms

    g_ij = c_ij (z_j - (z_i.z_j) z_i) / ||w_i||,   ||g_ij|| = |c_ij| sqrt(1 - (z_i.z_j)^2) / ||w_i||.

Everything below reports ||g_ij|| with ||w_i|| = 1, i.e. the norm of the
pair's term in the tangent space of the unit sphere at z_i (the projection
of dL_out(i)/dz_i); 1/||w_i|| is the same factor for every pair of anchor i
and does not change any comparison within an anchor.

The batch loss is the mean of L_out(i) over the M anchors with a positive,
and z_i also enters the other anchors' losses as a contrast member, so the
gradient of the batch loss with respect to z_i is
(1/M) (sum_j c_ij z_j + sum_k c_ki z_k); the paper's analysis (and ours) is
of the anchor's own part, sum_j c_ij z_j. `gradients` returns both, and
tests/test_hardness.py checks both against `tf.GradientTape` of the
project's loss (`supcon_per_anchor_loss` / `supcon_loss`), in float64.

The claim: easy positives (z_i.z_p ~ 1: sqrt(1 - cos^2) ~ 0) and easy
negatives (z_i.z_n ~ -1: P_in ~ 0) contribute little; hard positives
(cos ~ 0) and hard negatives (cos ~ 0 or above) contribute much. The rule we
test (`hardness_verdict`): hardness is 1 - cos for a positive and cos for a
negative; the claim holds ("yes") when the Spearman rank correlation between
hardness and the pair term's norm has a bootstrap interval (anchors
resampled) above 0 for positives and for negatives; "no" when either
interval lies below 0; "inconclusive" otherwise.

Only the paper's loss is analysed: variant "out", denominator "all", no
positives cap, every view an anchor (contrast_mode "all"), no memory queue.
NumPy float64 throughout (a few hundred to ~2000 embeddings).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

UNIT_NORM_TOLERANCE = 1e-3
YES, NO, INCONCLUSIVE = "yes", "no", "inconclusive"
GROUPS = ("positives", "negatives")
HARDNESS_RULE = (
    "hardness = 1 - cos(z_i, z_j) for a positive pair and cos(z_i, z_j) for a negative pair; "
    "'yes' when the percentile bootstrap interval of Spearman's rank correlation between hardness and the "
    "pair term's gradient norm |c_ij| sqrt(1 - cos^2) lies above 0 for positives and for negatives "
    "(anchors resampled with replacement, all their pairs kept), 'no' when it lies below 0 for either, "
    "'inconclusive' otherwise"
)
NORM_CONVENTION = (
    "||g_ij|| = |c_ij| sqrt(1 - cos_ij^2): the norm of pair (i, j)'s term of dL_out(i)/dz_i projected on the "
    "tangent space of the sphere at z_i, i.e. the gradient with respect to w_i taken at ||w_i|| = 1"
)
# Salt of the view seeds of `analyse_encoder` (any constant; the views are a pure function of `seed`).
_VIEW_SEED_SALT = 19


# ---------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number, received: {name}={value!r}")
    return float(value)


def _int_at_least(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}, received: {name}={value!r}")
    return int(value)


def _embeddings(z):
    array = np.asarray(z)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"`z` must be a float array [N, D] with N >= 2, received: z with shape {array.shape} and dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("`z` must be finite, received: z with non-finite entries")
    norms = np.linalg.norm(array, axis=1)
    worst = float(np.max(np.abs(norms - 1.0)))
    if worst > UNIT_NORM_TOLERANCE:
        raise ValueError(
            f"`z` must be L2-normalised (every row's norm within {UNIT_NORM_TOLERANCE} of 1), "
            f"received: z with a row of norm {norms[np.argmax(np.abs(norms - 1.0))]:.6g}"
        )
    return array / norms[:, None]  # exactly unit in float64: the formulas assume it


def _labels(labels, n):
    array = np.asarray(labels)
    if array.shape != (n,) or not (np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"`labels` must be an int array [N] with N = {n} (the rows of `z`), "
            f"received: labels with shape {array.shape} and dtype {array.dtype}"
        )
    return array


def _pair_arrays(cos, grad_norm, is_positive):
    arrays = []
    for name, value in (("cos", cos), ("grad_norm", grad_norm)):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            array = None
        if array is None or array.ndim != 1 or not np.all(np.isfinite(array)):
            raise ValueError(f"`{name}` must be a finite 1-d float array, received: {name}={_short(value)}")
        arrays.append(array)
    cos, grad_norm = arrays
    positive = np.asarray(is_positive)
    if positive.dtype != bool or positive.shape != cos.shape or grad_norm.shape != cos.shape:
        raise ValueError(
            "`cos`, `grad_norm` and `is_positive` must be 1-d arrays of one length, `is_positive` bool; received "
            f"shapes {cos.shape}, {grad_norm.shape}, {positive.shape} and is_positive dtype {positive.dtype}"
        )
    if np.any(np.abs(cos) > 1 + UNIT_NORM_TOLERANCE):
        raise ValueError(f"`cos` must lie in [-1, 1], received: cos with values up to {np.max(np.abs(cos)):.6g}")
    if np.any(grad_norm < 0):
        raise ValueError(f"`grad_norm` must be >= 0, received: grad_norm with minimum {grad_norm.min():.6g}")
    return cos, grad_norm, positive


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------
# The pair terms.
# ---------------------------------------------------------------------------


def _softmax_parts(z, labels, temperature, base_temperature):
    """cos [N, N], P [N, N] (softmax over A(i), 0 on the diagonal), positives [N, N], c [N, N], log Z [N]."""
    n = z.shape[0]
    cos = z @ z.T
    eye = np.eye(n, dtype=bool)
    logits = np.where(eye, -np.inf, cos / temperature)
    top = logits.max(axis=1, keepdims=True)
    log_partition = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    probability = np.exp(logits - log_partition[:, None])
    positive = (labels[:, None] == labels[None, :]) & ~eye
    num_positives = positive.sum(axis=1)
    has_positive = num_positives > 0
    target = np.where(has_positive[:, None], positive / np.maximum(num_positives, 1)[:, None], 0.0)
    coefficient = np.where(has_positive[:, None], (probability - target) / base_temperature, 0.0)
    return cos, probability, positive, coefficient, log_partition, num_positives


def _checked(z, labels, temperature, base_temperature):
    z = _embeddings(z)
    labels = _labels(labels, z.shape[0])
    temperature = _positive(temperature, "temperature")
    base_temperature = temperature if base_temperature is None else _positive(base_temperature, "base_temperature")
    return z, labels, temperature, base_temperature


def pair_gradients(z, labels, temperature, base_temperature=None):
    """Every pair (anchor i, other j != i): cosine, positive or not, c_ij and the pair term's gradient norm.

    Args:
      z: `[N, D]` float, L2-normalised rows (norm within 1e-3 of 1;
        renormalised in float64 here).
      labels: `[N]` int; rows with equal labels are positives of each other.
        SupCon: the sample's class for every view; SimCLR: the sample's
        index (instance id), so only the other views are positives.
      temperature: tau > 0.
      base_temperature: tau_b > 0; the loss is scaled by tau / tau_b.
        Default None: tau_b = tau (the paper's eq. 2, unscaled).

    Returns:
      A dict of float64 / int / bool NumPy arrays. Per pair, `N * (N - 1)`
      rows, anchor-major: `anchor`, `other` (row indices), `cos`
      (z_i.z_j), `is_positive`, `probability` (P_ij), `coefficient`
      (c_ij = (P_ij - 1[j in P(i)] / |P(i)|) / tau_b, 0 for every pair of an
      anchor without a positive, whose loss is 0), `grad_norm`
      (|c_ij| sqrt(max(0, 1 - cos^2)): the pair term's norm in the tangent
      space at z_i, i.e. with respect to w_i at ||w_i|| = 1). Per anchor,
      `[N]`: `log_partition` (log Z_i), `num_positives`, `has_positive`,
      `loss` (L_out(i), 0 without a positive).

    Raises:
      ValueError: `z` not a finite float `[N, D]` with unit rows, `labels`
        not int `[N]`, a temperature that is not a positive number.
    """
    z, labels, temperature, base_temperature = _checked(z, labels, temperature, base_temperature)
    cos, probability, positive, coefficient, log_partition, num_positives = _softmax_parts(
        z, labels, temperature, base_temperature
    )
    n = z.shape[0]
    off = ~np.eye(n, dtype=bool)
    anchor, other = np.nonzero(off)  # row-major: anchor-major, others in increasing order
    pair_cos = cos[off]
    grad_norm = np.abs(coefficient[off]) * np.sqrt(np.maximum(0.0, 1.0 - pair_cos**2))
    has_positive = num_positives > 0
    with np.errstate(divide="ignore"):
        log_probability = np.where(off, np.log(np.where(off, probability, 1.0)), 0.0)
    loss = np.where(
        has_positive,
        -(temperature / base_temperature) * (log_probability * positive).sum(axis=1) / np.maximum(num_positives, 1),
        0.0,
    )
    return {
        "anchor": anchor,
        "other": other,
        "cos": pair_cos,
        "is_positive": positive[off],
        "probability": probability[off],
        "coefficient": coefficient[off],
        "grad_norm": grad_norm,
        "log_partition": log_partition,
        "num_positives": num_positives,
        "has_positive": has_positive,
        "loss": loss,
    }


def gradients(z, labels, temperature, base_temperature=None):
    """The gradients the pair terms add up to, `[N, D]` float64 each (the decomposition `tests/` checks).

    Returns:
      `{"anchor": sum_j c_ij z_j` (dL_out(i)/dz_i, the anchor's own loss),
      `"anchor_tangent": (I - z_i z_i^T) sum_j c_ij z_j` (dL_out(i)/dw_i at
      ||w_i|| = 1, = sum_j c_ij (z_j - cos_ij z_i)), `"batch"`: the gradient
      of the batch loss (mean of L_out over the M anchors with a positive)
      with respect to z_i, `(1/M) (sum_j c_ij z_j + sum_k c_ki z_k)`, zeros
      when M = 0}.
    """
    z, labels, temperature, base_temperature = _checked(z, labels, temperature, base_temperature)
    _, _, _, coefficient, _, num_positives = _softmax_parts(z, labels, temperature, base_temperature)
    anchor = coefficient @ z
    tangent = anchor - np.sum(anchor * z, axis=1, keepdims=True) * z
    count = int(np.sum(num_positives > 0))
    batch = (anchor + coefficient.T @ z) / count if count else np.zeros_like(z)
    return {"anchor": anchor, "anchor_tangent": tangent, "batch": batch}


# ---------------------------------------------------------------------------
# Gradient norm by cosine.
# ---------------------------------------------------------------------------


def _edges(bins):
    if isinstance(bins, numbers.Integral) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"`bins` must be an int >= 1 or increasing edges, received: bins={bins!r}")
        return np.linspace(-1.0, 1.0, int(bins) + 1)
    try:
        edges = np.asarray(bins, dtype=np.float64)
    except (TypeError, ValueError):
        edges = None
    if edges is None or edges.ndim != 1 or len(edges) < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"`bins` must be an int >= 1 or increasing finite edges, received: bins={_short(bins)}")
    return edges


def binned(cos, grad_norm, is_positive, bins, *, coefficient=None, temperature=None, base_temperature=None,
           log_partition=None, curve_points=101):
    """Gradient norm by cosine bin, positives and negatives apart, with the paper's analytic form beside it.

    Bin k holds the pairs with edges[k] <= cos < edges[k + 1] (the last bin
    includes its upper edge); cosines outside the edges are left out.

    The analytic form (what the paper's argument says the norm depends on):

    * positives: |c| held at its observed mean over all positive pairs,
      times sqrt(1 - cos^2), i.e. `mean|c_ip| * sqrt(1 - cos^2)`;
    * negatives: P_in written as a function of the cosine alone, with one
      typical partition function, times sqrt(1 - cos^2):
      `exp(cos / tau - log_Z) / tau_b * sqrt(1 - cos^2)`, log_Z = the given
      `log_partition` (e.g. the mean of log Z_i over the anchors).

    Each bin's `analytic` value is that form averaged over the bin's pairs;
    `curve` evaluates it on `curve_points` cosines spanning the edges. (With
    each pair's own |c_ij| or P_ij the form would equal the observation
    exactly; holding |c| or Z fixed is what makes it a prediction.) The
    positives' form needs `coefficient`, the negatives' `temperature` and
    `log_partition`; without them it is None.

    Args:
      cos, grad_norm: `[pairs]` float (e.g. `pair_gradients`' arrays).
      is_positive: `[pairs]` bool.
      bins: number of equal-width bins over [-1, 1], or increasing edges.
      coefficient: optional `[pairs]` c_ij.
      temperature, base_temperature: tau and tau_b (default tau_b = tau).
      log_partition: optional scalar log Z.
      curve_points: int >= 2.

    Returns:
      JSON-able dict: `edges`, `positives` and `negatives` (each with per-bin
      lists `count`, `mean_cos`, `mean`, `q25`, `median`, `q75`, `analytic`,
      None where a bin is empty, and the group's `mean_abs_coefficient` or
      `log_partition`), `analytic` (the forms in words) and `curve`
      (`cos`, `positives`, `negatives`).
    """
    cos, grad_norm, positive = _pair_arrays(cos, grad_norm, is_positive)
    edges = _edges(bins)
    points = _int_at_least(curve_points, "curve_points", 2)
    if coefficient is not None:
        coefficient = np.asarray(coefficient, dtype=np.float64)
        if coefficient.shape != cos.shape or not np.all(np.isfinite(coefficient)):
            raise ValueError(f"`coefficient` must be a finite array shaped like `cos` {cos.shape}, received: "
                             f"coefficient with shape {coefficient.shape}")
    negative_form = temperature is not None and log_partition is not None
    if negative_form:
        temperature = _positive(temperature, "temperature")
        base_temperature = temperature if base_temperature is None else _positive(base_temperature, "base_temperature")
        if isinstance(log_partition, bool) or not isinstance(log_partition, numbers.Real) or not math.isfinite(log_partition):
            raise ValueError(f"`log_partition` must be a finite number, received: log_partition={log_partition!r}")
        log_partition = float(log_partition)
    elif temperature is not None or log_partition is not None:
        raise ValueError(
            "the negatives' analytic form needs both `temperature` and `log_partition`, received: "
            f"temperature={temperature!r}, log_partition={log_partition!r}"
        )

    mean_abs_c = None
    if coefficient is not None and positive.any():
        mean_abs_c = float(np.mean(np.abs(coefficient[positive])))

    def form(group, values):
        tangent = np.sqrt(np.maximum(0.0, 1.0 - values**2))
        if group == "positives":
            return None if mean_abs_c is None else mean_abs_c * tangent
        if not negative_form:
            return None
        return np.exp(values / temperature - log_partition) / base_temperature * tangent

    index = np.searchsorted(edges, cos, side="right") - 1
    index[cos == edges[-1]] = len(edges) - 2
    inside = (index >= 0) & (index < len(edges) - 1)
    out = {"edges": edges.tolist()}
    for group, members in (("positives", positive), ("negatives", ~positive)):
        rows = {key: [] for key in ("count", "mean_cos", "mean", "q25", "median", "q75", "analytic")}
        for k in range(len(edges) - 1):
            chosen = members & inside & (index == k)
            values = grad_norm[chosen]
            rows["count"].append(int(chosen.sum()))
            if not len(values):
                for key in ("mean_cos", "mean", "q25", "median", "q75", "analytic"):
                    rows[key].append(None)
                continue
            q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
            predicted = form(group, cos[chosen])
            rows["mean_cos"].append(float(cos[chosen].mean()))
            rows["mean"].append(float(values.mean()))
            rows["q25"].append(float(q25))
            rows["median"].append(float(median))
            rows["q75"].append(float(q75))
            rows["analytic"].append(None if predicted is None else float(predicted.mean()))
        out[group] = rows
    out["positives"]["mean_abs_coefficient"] = mean_abs_c
    out["negatives"]["log_partition"] = log_partition if negative_form else None
    grid = np.linspace(max(edges[0], -1.0), min(edges[-1], 1.0), points)
    out["curve"] = {
        "cos": grid.tolist(),
        **{group: (None if form(group, grid) is None else form(group, grid).tolist()) for group in GROUPS},
    }
    out["analytic"] = {
        "positives": "mean|c_ip| (observed, all positive pairs) * sqrt(1 - cos^2)",
        "negatives": "exp(cos / tau - log_Z) / tau_b * sqrt(1 - cos^2), log_Z = mean over anchors of log Z_i",
    }
    return out


# ---------------------------------------------------------------------------
# The verdict.
# ---------------------------------------------------------------------------


class _Ranking:
    """One variable sorted once, for weighted mid-ranks under many weightings of the same items."""

    def __init__(self, values):
        self.order = np.argsort(values, kind="stable")
        ordered = values[self.order]
        starts = ordered[1:] != ordered[:-1]
        self.ties = not bool(np.all(starts))
        self.group = np.concatenate([[0], np.cumsum(starts)]) if self.ties else None

    def midranks(self, weight):
        """Mid-ranks of the data in which item k appears `weight[k]` times (ties shared), one per item."""
        w = weight[self.order]
        if self.ties:
            total = np.bincount(self.group, weights=w)
            before = np.cumsum(total) - total
            ordered = before[self.group] + (total[self.group] + 1.0) / 2.0
        else:  # every item its own group: rank = weight before it + (its weight + 1) / 2
            ordered = np.cumsum(w) - (w - 1.0) / 2.0
        ranks = np.empty(len(w))
        ranks[self.order] = ordered
        return ranks


def weighted_spearman(x, y, weight, *, _rankings=None):
    """Spearman's rho of the data in which item k appears `weight[k]` times (an integer; 0 drops it).

    Equals `scipy.stats.spearmanr` of the expanded data (mid-ranks for ties,
    repeated items tie with each other), without expanding it: the
    bootstrap below resamples anchors, i.e. repeats all pairs of an anchor.
    NaN when either side has no spread.
    """
    rank_x, rank_y = _rankings or (_Ranking(np.asarray(x, np.float64)), _Ranking(np.asarray(y, np.float64)))
    weight = np.asarray(weight, dtype=np.float64)
    total = weight.sum()
    if total <= 0:
        return float("nan")
    mean = (total + 1.0) / 2.0  # the weighted mean of mid-ranks 1..total, ties or not
    dx, dy = rank_x.midranks(weight) - mean, rank_y.midranks(weight) - mean
    wx = weight * dx  # elementwise products and sums, not `@`: a threaded BLAS dot is slower on a busy machine
    sxx, syy = float((wx * dx).sum()), float((weight * dy * dy).sum())
    if sxx <= 0 or syy <= 0:
        return float("nan")
    return float((wx * dy).sum() / math.sqrt(sxx * syy))


def hardness(cos, is_positive):
    """The stated hardness: 1 - cos for a positive pair, cos for a negative pair."""
    cos = np.asarray(cos, dtype=np.float64)
    return np.where(np.asarray(is_positive, dtype=bool), 1.0 - cos, cos)


def hardness_verdict(cos, grad_norm, is_positive, *, anchor=None, resamples=2000, level=0.95, seed=0):
    """Does the pair term grow with hardness, for positives and for negatives? (the rule: `HARDNESS_RULE`)

    Spearman's rho between hardness (1 - cos for positives, cos for
    negatives) and the gradient norm, per group, over all pairs, with a
    percentile bootstrap interval at `level`. The pairs of one anchor share
    its partition function Z_i, its |P(i)| and its position: they are not
    independent, so the bootstrap resamples anchors with replacement and
    keeps every pair of a drawn anchor (as often as it is drawn); resampling
    pairs would treat them as independent and give too narrow an interval.
    Without `anchor` every pair is its own unit (only right for independent
    pairs, e.g. synthetic data).

    Verdict: "yes" when the interval's lower bound is > 0 for both groups;
    "no" when its upper bound is < 0 for either; "inconclusive" otherwise
    (also when a group has no pairs, or too few units to resample).

    Note the analytic form is not monotone over the whole range: for
    positives sqrt(1 - cos^2) falls again below cos = 0, and for negatives
    exp(cos / tau) sqrt(1 - cos^2) peaks near cos = 1 - tau (for small tau);
    the rank correlation asks whether harder pairs get larger terms overall.

    Args:
      cos, grad_norm: `[pairs]` float; is_positive: `[pairs]` bool.
      anchor: optional `[pairs]` int, the anchor of each pair (the bootstrap unit).
      resamples: bootstrap resamples (int >= 1).
      level: interval level in (0, 1).
      seed: int >= 0, the bootstrap's random state.

    Returns:
      JSON-able dict: `verdict`, `rule`, `level`, `resamples`, `unit`
      ("anchor" or "pair") and per group `{pairs, units, rho, interval}`.
    """
    cos, grad_norm, positive = _pair_arrays(cos, grad_norm, is_positive)
    resamples = _int_at_least(resamples, "resamples", 1)
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), received: level={level!r}")
    seed = _int_at_least(seed, "seed", 0)
    if anchor is None:
        unit = np.arange(len(cos))
    else:
        unit = np.asarray(anchor)
        if unit.shape != cos.shape or not np.issubdtype(unit.dtype, np.integer) or (len(unit) and unit.min() < 0):
            raise ValueError(f"`anchor` must be a non-negative int array shaped like `cos` {cos.shape}, received: "
                             f"anchor with shape {unit.shape} and dtype {unit.dtype}")
    from scipy import stats

    rng = np.random.default_rng(seed)
    tail = (1.0 - level) / 2.0
    score = hardness(cos, positive)
    groups = {}
    for group, members in (("positives", positive), ("negatives", ~positive)):
        x, y = score[members], grad_norm[members]
        _, local = np.unique(unit[members], return_inverse=True)
        units = int(local.max()) + 1 if len(local) else 0
        entry = {"pairs": int(len(x)), "units": units, "rho": None, "interval": None}
        if len(x) >= 2:
            rho = stats.spearmanr(x, y).statistic
            entry["rho"] = None if not math.isfinite(rho) else float(rho)
        if units >= 2 and entry["rho"] is not None:
            rankings = (_Ranking(x), _Ranking(y))
            draws = np.empty(resamples)
            for r in range(resamples):
                counts = np.bincount(rng.integers(0, units, size=units), minlength=units).astype(np.float64)
                draws[r] = weighted_spearman(x, y, counts[local], _rankings=rankings)
            draws = draws[np.isfinite(draws)]
            if len(draws):
                entry["interval"] = [float(np.quantile(draws, tail)), float(np.quantile(draws, 1.0 - tail))]
        groups[group] = entry
    intervals = [groups[g]["interval"] for g in GROUPS]
    if any(i is not None and i[1] < 0 for i in intervals):
        verdict = NO
    elif all(i is not None and i[0] > 0 for i in intervals):
        verdict = YES
    else:
        verdict = INCONCLUSIVE
    return {
        "verdict": verdict,
        "rule": HARDNESS_RULE,
        "level": float(level),
        "resamples": resamples,
        "seed": seed,
        "unit": "pair" if anchor is None else "anchor",
        **groups,
    }


# ---------------------------------------------------------------------------
# A trained encoder.
# ---------------------------------------------------------------------------


def digits_augmentation(image_size):
    """The digits presets' training augmentation (experiments/presets.py `_DIGITS`), as the runner builds it."""
    from experiments import presets
    from supcon_tf import config as config_lib, runner

    return runner.augmentation(config_lib.RunConfig.from_flat(**{**presets.get_preset("digits_supcon"), "image_size": image_size}))


def _summary(values):
    if not len(values):
        return {"count": 0, "mean": None, "q25": None, "median": None, "q75": None}
    q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"count": int(len(values)), "mean": float(np.mean(values)), "q25": float(q25), "median": float(median),
            "q75": float(q75)}


def analyse_encoder(model_path, images, labels, *, method=None, temperature=None, base_temperature=None, num_views=2,
                    augment=None, seed=0, max_samples=256, bins=20, resamples=2000, level=0.95, training=False,
                    include_pairs=False):
    """The pair terms of a trained SupConModel's embeddings of augmented views, binned, with the verdict.

    Loads `model_path` (`supcon_tf.load_model`), takes up to `max_samples`
    of `images` (a seeded random subset when there are more), makes
    `num_views` views of each with `augment` (view v seeded by
    `stateless_split([seed, 19], num_views)[v]`, as the training stream
    splits a batch seed), embeds them with `model.embed_views(views,
    training=training)` (default: inference mode, batch-norm moving
    statistics) and analyses the B * V embeddings as one batch: rows
    sample-major, labels the class (SupCon) or the sample index (SimCLR).

    Args:
      model_path: a SupConModel `.keras` file.
      images: `[N, H, W, C]` uint8 or float images (e.g. `data.load_digits`).
      labels: `[N]` int class ids.
      method: "supcon" or "simclr"; default the model's own `method`.
      temperature, base_temperature: default the model's own (its training loss).
      num_views: int >= 2.
      augment: `(images, seed [2]) -> images` callable; default
        `digits_augmentation(H)`, the digits presets' training augmentation.
      seed: int >= 0: the subset, the views and the bootstrap.
      max_samples: int >= 2.
      bins: cosine bins (`binned`).
      resamples, level: the bootstrap of `hardness_verdict`.
      training: forward pass mode.
      include_pairs: also return the per-pair arrays as lists (large: N V (N V - 1) pairs).

    Returns:
      JSON-able dict: settings, `loss` (the project's `supcon_loss` of the
      embeddings) and `loss_reference` (the same from the pair arrays),
      `summary` (grad_norm and cos per group), `bins`, `verdict`, and
      `pairs` when `include_pairs`.
    """
    import tensorflow as tf

    import supcon_tf
    from supcon_tf import losses

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"`images` must be an array [N, H, W, C] with N >= 2, received: images with shape {images.shape}")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be an int array [N] with N = {images.shape[0]}, received: labels with shape "
                         f"{labels.shape} and dtype {labels.dtype}")
    if method is not None and method not in ("supcon", "simclr"):
        raise ValueError(f"`method` must be 'supcon', 'simclr' or None, received: method={method!r}")
    num_views = _int_at_least(num_views, "num_views", 2)
    seed = _int_at_least(seed, "seed", 0)
    max_samples = _int_at_least(max_samples, "max_samples", 2)
    if augment is not None and not callable(augment):
        raise ValueError(f"`augment` must be a callable (images, seed) -> images, received: augment={augment!r}")
    if not isinstance(training, bool):
        raise ValueError(f"`training` must be a bool, received: training={training!r}")
    if not isinstance(model_path, (str, bytes)) and not hasattr(model_path, "__fspath__"):
        raise ValueError(f"`model_path` must be a path to a .keras file, received: model_path={model_path!r}")

    model = supcon_tf.load_model(model_path, compile=False)
    if not hasattr(model, "embed_views"):
        raise ValueError(f"`model_path` must hold a SupConModel, received: model_path={model_path!r} "
                         f"holding a {type(model).__name__}")
    method = method or model.method
    if method not in ("supcon", "simclr"):
        raise ValueError(f"`method` must be 'supcon' or 'simclr', received: the model's method={method!r}")
    temperature = float(model.loss_config.temperature) if temperature is None else _positive(temperature, "temperature")
    if base_temperature is None:
        base_temperature = temperature if model.loss_config.base_temperature is None else float(model.loss_config.base_temperature)
    base_temperature = _positive(base_temperature, "base_temperature")
    if augment is None:
        augment = digits_augmentation(images.shape[1])

    rng = np.random.default_rng(seed)
    chosen = np.arange(images.shape[0])
    if images.shape[0] > max_samples:
        chosen = np.sort(rng.choice(images.shape[0], size=max_samples, replace=False))
    batch, batch_labels = images[chosen], labels[chosen]
    view_seeds = tf.random.experimental.stateless_split(tf.constant([seed, _VIEW_SEED_SALT], tf.int64), num_views)
    views = tf.stack([tf.cast(augment(tf.convert_to_tensor(batch), view_seeds[v]), tf.float32)
                      for v in range(num_views)], axis=1)
    embeddings = np.asarray(model.embed_views(views, training=training), dtype=np.float64)  # [B, V, D]
    z = _embeddings(embeddings.reshape(len(chosen) * num_views, -1))  # row b * V + v, renormalised in float64
    loss = losses.supcon_loss(
        tf.constant(z.reshape(embeddings.shape)), batch_labels if method == "supcon" else None,
        temperature=temperature, base_temperature=base_temperature, implementation="dense",
    )
    ids = batch_labels if method == "supcon" else np.arange(len(chosen))
    pairs = pair_gradients(z, np.repeat(ids, num_views).astype(np.int64), temperature, base_temperature)
    anchors = pairs["has_positive"]
    reference = float(pairs["loss"][anchors].mean()) if anchors.any() else 0.0
    kept = anchors[pairs["anchor"]]  # pairs of anchors with a loss (all of them with >= 2 views)
    log_z = float(pairs["log_partition"][anchors].mean()) if anchors.any() else None
    result = {
        "method": method,
        "model_path": str(model_path),
        "temperature": temperature,
        "base_temperature": base_temperature,
        "num_samples": int(len(chosen)),
        "num_views": num_views,
        "seed": seed,
        "training_mode": training,
        "augmentation": repr(augment),
        "norm_convention": NORM_CONVENTION,
        "loss": float(loss),
        "loss_reference": reference,
        "summary": {
            group: {
                "grad_norm": _summary(pairs["grad_norm"][kept & members]),
                "cos": _summary(pairs["cos"][kept & members]),
            }
            for group, members in (("positives", pairs["is_positive"]), ("negatives", ~pairs["is_positive"]))
        },
        "bins": binned(
            pairs["cos"][kept], pairs["grad_norm"][kept], pairs["is_positive"][kept], bins,
            coefficient=pairs["coefficient"][kept], temperature=temperature, base_temperature=base_temperature,
            log_partition=log_z,
        ) if kept.any() else None,
        "verdict": hardness_verdict(
            pairs["cos"][kept], pairs["grad_norm"][kept], pairs["is_positive"][kept], anchor=pairs["anchor"][kept],
            resamples=resamples, level=level, seed=seed,
        ),
    }
    if include_pairs:
        result["pairs"] = {k: v.tolist() for k, v in pairs.items()}
    return result


# ---------------------------------------------------------------------------
# The figure.
# ---------------------------------------------------------------------------


def figure(results, path):
    """PNG: per method one row of two panels (positives, negatives), mean gradient norm per cosine bin.

    Each panel: the per-bin mean (markers) and interquartile band of the pair
    terms' norms against the bin's mean cosine, and the analytic form
    (`binned`) as a dashed line; negatives on a log scale (P_in spans
    orders of magnitude). Drawn like `supcon_tf.plots` (a `Figure` on the
    Agg canvas, no pyplot).

    Args:
      results: `{method: analyse_encoder result}` (keys "supcon", "simclr"
        are labelled as in the report; any other key is used as is).
      path: output `.png`.

    Returns:
      `path`.
    """
    import os

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from experiments.report.config import LABELS

    if not isinstance(results, dict) or not results:
        raise ValueError(f"`results` must be a non-empty dict {{method: analyse_encoder result}}, received: "
                         f"results={_short(results)}")
    path = os.fspath(path)
    if not path.endswith(".png"):
        raise ValueError(f"`path` must end with .png, received: path={path!r}")
    for method, result in results.items():
        if not isinstance(result, dict) or not isinstance(result.get("bins"), dict) or "verdict" not in result:
            raise ValueError(f"`results[{method!r}]` must be an analyse_encoder result with bins, received: "
                             f"{_short(result)}")

    rows = len(results)
    canvas_figure = Figure(figsize=(8.0, 3.0 * rows), dpi=110)
    FigureCanvasAgg(canvas_figure)
    axes = canvas_figure.subplots(rows, 2, squeeze=False)
    for row, (method, result) in enumerate(results.items()):
        label = LABELS.get(method, str(method))
        bins, verdict = result["bins"], result["verdict"]
        for col, group in enumerate(GROUPS):
            axis = axes[row][col]
            entry = bins[group]
            keep = [k for k, m in enumerate(entry["mean"]) if m is not None]
            x = np.asarray([entry["mean_cos"][k] for k in keep])
            mean = np.asarray([entry["mean"][k] for k in keep])
            low = np.asarray([entry["q25"][k] for k in keep])
            high = np.asarray([entry["q75"][k] for k in keep])
            if len(keep):
                axis.fill_between(x, low, high, alpha=0.2, label="interquartile range")
                axis.plot(x, mean, marker="o", markersize=3, label="observed mean")
            curve = bins["curve"][group]
            if curve is not None:
                grid = np.asarray(bins["curve"]["cos"])
                values = np.asarray(curve)
                span = (grid >= (x.min() if len(x) else -1)) & (grid <= (x.max() if len(x) else 1))
                if group == "negatives":
                    span &= values > 0  # log scale
                grid, values = grid[span], values[span]
                axis.plot(grid, values, linestyle="--", color="black", linewidth=1, label="analytic form")
            if group == "negatives" and len(keep) and np.all(low > 0):
                axis.set_yscale("log")
            stats = verdict[group]
            rho = "n/a" if stats["rho"] is None else f"{stats['rho']:+.2f}"
            axis.set_title(f"{label}: {group} (Spearman {rho}; verdict {verdict['verdict']})", fontsize=8)
            axis.set_xlabel("cos(z_i, z_j)")
            axis.set_ylabel("|c_ij| sqrt(1 - cos²)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=6)
    from experiments.report import plots

    return plots.save_figure(canvas_figure, path)
