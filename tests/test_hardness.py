"""experiments/report/hardness.py: the pair decomposition of SupCon's gradient against autodiff of the project's loss,
a float64 NumPy loss reference, binning, the hardness verdict, the encoder analysis and its figure."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from experiments.report import hardness as h
from loss_reference import reference_loss
from supcon_tf import losses

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("hardness")


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rows(features):
    """[B, V, D] -> [B * V, D], row b * V + v (the module's sample-major rows)."""
    b, v, d = features.shape
    return features.reshape(b * v, d)


def _row_reference(rows, row_labels, temperature, base_temperature):
    """L_out(i) of every row, each row its own one-view sample (`tests/loss_reference.py`): -(tau / tau_b) / |P|
    sum_p log(exp(s_ip) / sum_{a != i} exp(s_ia)), 0 without positives."""
    return reference_loss(rows[:, None, :], row_labels, temperature=temperature, base_temperature=base_temperature)[0][:, 0]


CASES = [
    # (batch, views, labels or None for SimCLR): one positive, several positives, no positive for some anchors.
    (6, 2, [0, 1, 2, 3, 4, 5]),
    (6, 2, None),
    (6, 3, [0, 1, 0, 1, 2, 0]),
    (5, 1, [0, 1, 0, 2, 3]),  # one view: anchors 1, 3, 4 have no positive
]


@pytest.mark.parametrize("batch, views, labels", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_the_float64_reference(batch, views, labels, seed):
    rng = np.random.default_rng(seed)
    features = _unit(rng, batch, views, 7)
    ids = np.arange(batch) if labels is None else np.asarray(labels)
    row_labels = np.repeat(ids, views)
    expected = _row_reference(_rows(features), row_labels, 0.2, 0.07)
    pairs = h.pair_gradients(_rows(features), row_labels, 0.2, base_temperature=0.07)
    np.testing.assert_allclose(pairs["loss"], expected, rtol=1e-12, atol=1e-12)
    project = losses.supcon_per_anchor_loss(
        tf.constant(features), None if labels is None else tf.constant(labels), temperature=0.2, base_temperature=0.07,
        implementation="dense",
    )
    assert project.loss.dtype == tf.float64
    np.testing.assert_allclose(project.loss.numpy().reshape(-1), expected, rtol=1e-12, atol=1e-12)


def _diagonal(jacobian, batch, views):
    return np.stack([jacobian[b, v, b, v] for b in range(batch) for v in range(views)])


@pytest.mark.parametrize("batch, views, labels", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
def test_pair_terms_add_up_to_the_autodiff_gradient(batch, views, labels, seed, implementation):
    rng = np.random.default_rng(seed)
    temperature, base = (0.1, None) if seed % 2 else (0.3, 0.07)
    w = rng.normal(size=(batch, views, 6)) * rng.uniform(0.5, 3.0, size=(batch, views, 1))  # unnormalised
    features = w / np.linalg.norm(w, axis=-1, keepdims=True)
    label_tensor = None if labels is None else tf.constant(labels)
    options = dict(temperature=temperature, base_temperature=base, implementation=implementation, block_size=4)
    x, wt = tf.constant(features), tf.constant(w)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, wt])
        per_anchor = losses.supcon_per_anchor_loss(x, label_tensor, **options)
        batch_loss = losses.reduce_per_anchor(per_anchor)
        normalised = losses.supcon_per_anchor_loss(wt, label_tensor, normalize=True, **options)
    batch_autodiff = tape.gradient(batch_loss, x).numpy().reshape(batch * views, -1)

    z = _rows(features)
    ids = np.arange(batch) if labels is None else np.asarray(labels)
    pairs = h.pair_gradients(z, np.repeat(ids, views), temperature, base)
    # Sum the pair terms c_ij z_j and their tangent projections c_ij (z_j - cos_ij z_i) pair by pair.
    i, j, c, cos = pairs["anchor"], pairs["other"], pairs["coefficient"], pairs["cos"]
    summed = np.zeros_like(z)
    np.add.at(summed, i, c[:, None] * z[j])
    tangent_terms = c[:, None] * (z[j] - cos[:, None] * z[i])
    summed_tangent = np.zeros_like(z)
    np.add.at(summed_tangent, i, tangent_terms)
    norms = np.linalg.norm(_rows(w), axis=1, keepdims=True)

    if implementation == "dense":
        # One anchor's loss at a time (the Jacobian's diagonal blocks): dL(i)/dz_i and, through the
        # normalisation, dL(i)/dw_i. Only the dense form: the blockwise custom gradient is inexact when
        # the upstream gradient is 0 for some anchors, as it is in each row of a Jacobian (see the report).
        anchor_autodiff = _diagonal(tape.jacobian(per_anchor.loss, x).numpy(), batch, views)
        tangent_autodiff = _diagonal(tape.jacobian(normalised.loss, wt).numpy(), batch, views)
        np.testing.assert_allclose(summed, anchor_autodiff, atol=1e-12, rtol=0)
        np.testing.assert_allclose(summed_tangent / norms, tangent_autodiff, atol=1e-12, rtol=0)
    # Each pair term's norm is |c_ij| sqrt(1 - cos^2) (at ||w_i|| = 1).
    np.testing.assert_allclose(np.linalg.norm(tangent_terms, axis=1), pairs["grad_norm"], atol=1e-12, rtol=1e-10)
    # The matrix forms agree, and the batch loss adds the contrast-member terms, over M anchors.
    grads = h.gradients(z, np.repeat(ids, views), temperature, base)
    np.testing.assert_allclose(grads["anchor"], summed, atol=1e-13, rtol=0)
    np.testing.assert_allclose(grads["anchor_tangent"], summed_tangent, atol=1e-13, rtol=0)
    np.testing.assert_allclose(grads["batch"], batch_autodiff, atol=1e-12, rtol=0)
    # Anchors without a positive contribute nothing.
    assert np.all(c[~pairs["has_positive"][i]] == 0)
    assert np.array_equal(pairs["has_positive"], per_anchor.has_positive.numpy().reshape(-1))


def test_coefficients_are_the_softmax_minus_the_positive_target():
    rng = np.random.default_rng(3)
    z = _unit(rng, 8, 4)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    pairs = h.pair_gradients(z, labels, 0.5, base_temperature=0.25)
    for i in range(8):
        rows = pairs["anchor"] == i
        logits = np.array([z[i] @ z[j] / 0.5 for j in pairs["other"][rows]])
        p = np.exp(logits) / np.exp(logits).sum()
        positive = labels[pairs["other"][rows]] == labels[i]
        target = positive / positive.sum() if positive.any() else 0 * p
        expected = (p - target) / 0.25 if positive.any() else 0 * p
        np.testing.assert_allclose(pairs["probability"][rows], p, rtol=1e-12)
        np.testing.assert_allclose(pairs["coefficient"][rows], expected, rtol=1e-12, atol=1e-15)
        assert np.isclose(pairs["log_partition"][i], np.log(np.exp(logits).sum()))


def _anchor_with(cosines, dim=8):
    """Unit vectors: row 0 the anchor e_0, row k + 1 at cosine cosines[k] with it (each in its own direction)."""
    z = np.zeros((len(cosines) + 1, dim))
    z[0, 0] = 1.0
    for k, c in enumerate(cosines):
        z[k + 1, 0] = c
        z[k + 1, k + 1] = math.sqrt(1 - c * c)
    return z


def test_easy_positive_gets_a_smaller_term_than_a_hard_one():
    # Anchor 0 with two positives (cos 0.99 and 0.2) and two negatives (cos -0.9 and 0.5).
    z = _anchor_with([0.99, 0.2, -0.9, 0.5])
    labels = np.array([0, 0, 0, 1, 2])
    pairs = h.pair_gradients(z, labels, 0.1)
    rows = pairs["anchor"] == 0
    term = dict(zip(pairs["other"][rows], pairs["grad_norm"][rows]))
    assert term[1] < term[2]  # easy positive (0.99) < hard positive (0.2)
    assert term[3] < term[4]  # easy negative (-0.9) < hard negative (0.5)
    assert term[3] < 1e-3 * term[4]  # P_in ~ exp(-1.4 / 0.1) relative: next to nothing


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5])
def test_negative_terms_grow_with_cosine_below_the_peak(temperature):
    cosines = [-0.8, -0.4, 0.0, 0.3, 0.6]
    z = _anchor_with([0.9] + cosines)
    pairs = h.pair_gradients(z, np.array([0, 0, 1, 2, 3, 4, 5]), temperature)
    rows = pairs["anchor"] == 0
    negatives = pairs["grad_norm"][rows][1:]
    assert np.all(np.diff(negatives) > 0)
    # The analytic form exactly: P_in sqrt(1 - cos^2) / tau with P_in the softmax of cos / tau.
    logits = np.array([0.9] + cosines) / temperature
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(negatives, p[1:] * np.sqrt(1 - np.square(cosines)) / temperature, rtol=1e-12)


# ---------------------------------------------------------------------------
# Binning.
# ---------------------------------------------------------------------------


def test_binned_statistics_and_analytic_form():
    rng = np.random.default_rng(0)
    z = _unit(rng, 40, 3)
    labels = np.repeat(np.arange(10), 4)
    pairs = h.pair_gradients(z, labels, 0.2)
    log_z = float(pairs["log_partition"].mean())
    out = h.binned(pairs["cos"], pairs["grad_norm"], pairs["is_positive"], 4, coefficient=pairs["coefficient"],
                   temperature=0.2, log_partition=log_z)
    json.dumps(out, allow_nan=False)
    assert out["edges"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    for group, members in (("positives", pairs["is_positive"]), ("negatives", ~pairs["is_positive"])):
        assert sum(out[group]["count"]) == members.sum()
        for k in range(4):
            low, high = out["edges"][k], out["edges"][k + 1]
            inside = members & (pairs["cos"] >= low) & ((pairs["cos"] < high) | (k == 3))
            assert out[group]["count"][k] == inside.sum()
            if inside.any():
                values = pairs["grad_norm"][inside]
                assert out[group]["mean"][k] == pytest.approx(values.mean())
                assert out[group]["median"][k] == pytest.approx(np.median(values))
                tangent = np.sqrt(1 - pairs["cos"][inside] ** 2)
                if group == "positives":
                    expected = np.abs(pairs["coefficient"][pairs["is_positive"]]).mean() * tangent.mean()
                else:
                    expected = (np.exp(pairs["cos"][inside] / 0.2 - log_z) / 0.2 * tangent).mean()
                assert out[group]["analytic"][k] == pytest.approx(expected)
    grid = np.asarray(out["curve"]["cos"])
    np.testing.assert_allclose(out["curve"]["negatives"], np.exp(grid / 0.2 - log_z) / 0.2 * np.sqrt(1 - grid**2))


def test_binned_empty_bins_and_no_analytic_inputs():
    out = h.binned([0.1, 0.2, 0.9], [0.5, 0.4, 0.1], [True, True, False], [0.0, 0.5, 1.0])
    assert out["positives"]["count"] == [2, 0] and out["negatives"]["count"] == [0, 1]
    assert out["positives"]["mean"] == [pytest.approx(0.45), None]
    assert out["positives"]["analytic"] == [None, None] and out["curve"]["positives"] is None
    json.dumps(out, allow_nan=False)


# ---------------------------------------------------------------------------
# The verdict.
# ---------------------------------------------------------------------------


def test_weighted_spearman_is_spearman_of_the_expanded_data():
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(size=30), 1)  # with ties
    y = np.round(x + rng.normal(size=30), 1)
    weight = rng.integers(0, 4, size=30)
    expected = stats.spearmanr(np.repeat(x, weight), np.repeat(y, weight)).statistic
    assert h.weighted_spearman(x, y, weight) == pytest.approx(expected, abs=1e-12)
    assert h.weighted_spearman(x, y, np.ones(30)) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def _synthetic(sign, seed=0, anchors=40, per_anchor=20):
    """Pairs whose gradient norm rises (sign=+1) or falls (sign=-1) with hardness, grouped by anchor."""
    rng = np.random.default_rng(seed)
    anchor = np.repeat(np.arange(anchors), per_anchor)
    positive = np.tile(np.arange(per_anchor) < per_anchor // 4, anchors)
    cos = np.where(positive, rng.uniform(0.0, 1.0, anchor.size), rng.uniform(-1.0, 0.8, anchor.size))
    hard = np.where(positive, 1 - cos, cos)
    grad = np.exp(sign * 2 * hard + 0.3 * rng.normal(size=anchor.size))
    return cos, grad, positive, anchor


def test_verdict_yes_no_inconclusive():
    options = dict(resamples=300, level=0.95, seed=0)
    cos, grad, positive, anchor = _synthetic(+1)
    yes = h.hardness_verdict(cos, grad, positive, anchor=anchor, **options)
    assert yes["verdict"] == h.YES and yes["unit"] == "anchor"
    assert yes["positives"]["interval"][0] > 0 and yes["negatives"]["rho"] > 0.5
    assert yes["positives"]["units"] == 40 and yes["positives"]["pairs"] == 200
    json.dumps(yes, allow_nan=False)

    cos, grad, positive, anchor = _synthetic(-1)
    assert h.hardness_verdict(cos, grad, positive, anchor=anchor, **options)["verdict"] == h.NO
    # Positives follow the claim, negatives go against it: "no" (either group below 0).
    mixed = np.where(positive, _synthetic(+1)[1], grad)
    assert h.hardness_verdict(cos, mixed, positive, anchor=anchor, **options)["verdict"] == h.NO

    rng = np.random.default_rng(5)
    noise = rng.uniform(size=cos.size)  # no relation: both intervals straddle 0
    verdict = h.hardness_verdict(cos, noise, positive, anchor=anchor, **options)
    assert verdict["verdict"] == h.INCONCLUSIVE
    # No negatives at all: cannot say yes.
    cos, grad, positive, _ = _synthetic(+1)
    only = h.hardness_verdict(cos[positive], grad[positive], positive[positive], **options)
    assert only["positives"]["interval"][0] > 0
    assert only["verdict"] == h.INCONCLUSIVE and only["negatives"]["rho"] is None


def test_verdict_point_estimate_is_scipy_spearman_and_is_seeded():
    cos, grad, positive, anchor = _synthetic(+1, seed=2)
    first = h.hardness_verdict(cos, grad, positive, anchor=anchor, resamples=50, level=0.9, seed=3)
    again = h.hardness_verdict(cos, grad, positive, anchor=anchor, resamples=50, level=0.9, seed=3)
    assert first == again
    expected = stats.spearmanr(1 - cos[positive], grad[positive]).statistic
    assert first["positives"]["rho"] == pytest.approx(expected)
    assert first["negatives"]["rho"] == pytest.approx(stats.spearmanr(cos[~positive], grad[~positive]).statistic)


def test_anchor_bootstrap_is_wider_than_pair_bootstrap_for_dependent_pairs():
    # Each anchor has one random offset shared by all its pairs: the pairs are dependent.
    rng = np.random.default_rng(0)
    anchor = np.repeat(np.arange(15), 30)
    positive = np.zeros(anchor.size, bool)
    positive[::30] = True
    shift = rng.normal(size=15)[anchor]
    cos = np.clip(0.3 * shift + 0.05 * rng.normal(size=anchor.size), -1, 1)
    grad = np.exp(shift + 0.05 * rng.normal(size=anchor.size))
    by_anchor = h.hardness_verdict(cos, grad, positive, anchor=anchor, resamples=300, level=0.95, seed=0)
    by_pair = h.hardness_verdict(cos, grad, positive, resamples=300, level=0.95, seed=0)
    width = lambda v: v["negatives"]["interval"][1] - v["negatives"]["interval"][0]  # noqa: E731
    assert width(by_anchor) > width(by_pair)


# ---------------------------------------------------------------------------
# Input validation.
# ---------------------------------------------------------------------------


def test_pair_gradients_validates_its_inputs():
    z = _unit(np.random.default_rng(0), 4, 3)
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"`z` must be L2-normalised.*norm 2"):
        h.pair_gradients(2 * z, labels, 0.1)
    with pytest.raises(ValueError, match=r"`z` must be a float array \[N, D\].*shape \(4,\)"):
        h.pair_gradients(z[:, 0], labels, 0.1)
    with pytest.raises(ValueError, match="`z` must be finite"):
        h.pair_gradients(np.full((4, 3), np.nan), labels, 0.1)
    with pytest.raises(ValueError, match=r"`labels` must be an int array \[N\] with N = 4.*shape \(3,\)"):
        h.pair_gradients(z, labels[:3], 0.1)
    with pytest.raises(ValueError, match="`labels`.*dtype float64"):
        h.pair_gradients(z, labels.astype(float), 0.1)
    with pytest.raises(ValueError, match="`temperature` must be a positive number, received: temperature=0"):
        h.pair_gradients(z, labels, 0)
    with pytest.raises(ValueError, match="`base_temperature` must be a positive number, received: base_temperature=-1"):
        h.pair_gradients(z, labels, 0.1, base_temperature=-1)
    with pytest.raises(ValueError, match="`temperature`.*received: temperature=True"):
        h.gradients(z, labels, True)
    # Within the tolerance is accepted (renormalised).
    h.pair_gradients(z * (1 + 5e-4), labels, 0.1)


def test_binned_and_verdict_validate_their_inputs():
    cos, grad, positive = np.array([0.1, 0.5]), np.array([1.0, 2.0]), np.array([True, False])
    with pytest.raises(ValueError, match="`bins` must be an int >= 1.*bins=0"):
        h.binned(cos, grad, positive, 0)
    with pytest.raises(ValueError, match="`bins` must be .*increasing.*bins=\\[0.5, 0.1\\]"):
        h.binned(cos, grad, positive, [0.5, 0.1])
    with pytest.raises(ValueError, match="`is_positive` bool"):
        h.binned(cos, grad, [1, 0], 3)
    with pytest.raises(ValueError, match="one length"):
        h.binned(cos, grad[:1], positive, 3)
    with pytest.raises(ValueError, match=r"`cos` must lie in \[-1, 1\].*1.5"):
        h.binned(np.array([0.1, 1.5]), grad, positive, 3)
    with pytest.raises(ValueError, match="`grad_norm` must be >= 0"):
        h.binned(cos, -grad, positive, 3)
    with pytest.raises(ValueError, match="`grad_norm` must be a finite"):
        h.binned(cos, np.array([1.0, np.inf]), positive, 3)
    with pytest.raises(ValueError, match="needs both `temperature` and `log_partition`.*log_partition=None"):
        h.binned(cos, grad, positive, 3, temperature=0.1)
    with pytest.raises(ValueError, match="`coefficient` must be"):
        h.binned(cos, grad, positive, 3, coefficient=[1.0])
    with pytest.raises(ValueError, match="`resamples` must be an int >= 1, received: resamples=0"):
        h.hardness_verdict(cos, grad, positive, resamples=0)
    with pytest.raises(ValueError, match=r"`level` must be in \(0, 1\), received: level=1.5"):
        h.hardness_verdict(cos, grad, positive, level=1.5)
    with pytest.raises(ValueError, match="`seed` must be an int >= 0, received: seed=-1"):
        h.hardness_verdict(cos, grad, positive, seed=-1)
    with pytest.raises(ValueError, match="`anchor` must be a non-negative int array"):
        h.hardness_verdict(cos, grad, positive, anchor=np.array([0.5, 1.0]))


# ---------------------------------------------------------------------------
# A trained (here: freshly built) encoder, and the figure.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    from supcon_tf.encoders import build_encoder
    from supcon_tf.layers import ProjectionHead
    from supcon_tf.losses import LossConfig
    from supcon_tf.models import SupConModel

    encoder = build_encoder("small_cnn", (8, 8, 1), width=0.25)
    model = SupConModel(encoder, ProjectionHead(hidden_dims=(16,), output_dim=8), method="supcon", loss_config=LossConfig(temperature=0.2))
    model.build((None, 8, 8, 1))
    path = tmp_path_factory.mktemp("hardness") / "model.keras"
    model.save(path)
    return str(path)


def _digits_like(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8), (np.arange(n) % 5).astype(np.int32)


@pytest.fixture(scope="module")
def analyses(tiny_model_path):
    images, labels = _digits_like()
    common = dict(seed=1, max_samples=24, bins=8, resamples=50, level=0.9)
    return {
        "supcon": h.analyse_encoder(tiny_model_path, images, labels, **common),
        "simclr": h.analyse_encoder(tiny_model_path, images, labels, method="simclr", temperature=0.5, num_views=3,
                                    **common),
    }


def _finite_numbers(value):
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def test_analyse_encoder_returns_the_expected_keys_and_finite_numbers(analyses):
    supcon, simclr = analyses["supcon"], analyses["simclr"]
    expected = {"method", "model_path", "temperature", "base_temperature", "num_samples", "num_views", "seed",
                "training_mode", "augmentation", "norm_convention", "loss", "loss_reference", "summary", "bins",
                "verdict"}
    assert set(supcon) == expected
    json.dumps(analyses, allow_nan=False)
    assert _finite_numbers(analyses)
    assert supcon["method"] == "supcon" and supcon["temperature"] == 0.2  # the model's own
    assert simclr["method"] == "simclr" and simclr["temperature"] == 0.5 and simclr["num_views"] == 3
    assert supcon["num_samples"] == 24 and "SimCLRAugment" in supcon["augmentation"]
    for result in analyses.values():
        assert result["loss"] == pytest.approx(result["loss_reference"], rel=1e-12)
        assert result["verdict"]["verdict"] in (h.YES, h.NO, h.INCONCLUSIVE)
        n = result["num_samples"] * result["num_views"]
        counts = result["summary"]["positives"]["grad_norm"]["count"] + result["summary"]["negatives"]["grad_norm"]["count"]
        assert counts == n * (n - 1)
    # SimCLR: only the other views are positives.
    assert simclr["summary"]["positives"]["grad_norm"]["count"] == 24 * 3 * 2
    assert sum(supcon["bins"]["positives"]["count"]) == supcon["summary"]["positives"]["grad_norm"]["count"]


def test_analyse_encoder_is_seeded_and_can_return_the_pairs(tiny_model_path, analyses):
    images, labels = _digits_like()
    again = h.analyse_encoder(tiny_model_path, images, labels, seed=1, max_samples=24, bins=8, resamples=50,
                              level=0.9, include_pairs=True)
    pairs = again.pop("pairs")
    assert again == analyses["supcon"]
    assert len(pairs["cos"]) == 48 * 47 and set(pairs) >= {"anchor", "other", "coefficient", "grad_norm"}


def test_analyse_encoder_validates_its_inputs(tiny_model_path, tmp_path):
    images, labels = _digits_like()
    with pytest.raises(ValueError, match=r"`images` must be an array \[N, H, W, C\]"):
        h.analyse_encoder(tiny_model_path, images[:, :, :, 0], labels)
    with pytest.raises(ValueError, match="`labels` must be an int array"):
        h.analyse_encoder(tiny_model_path, images, labels[:3])
    with pytest.raises(ValueError, match="`method` must be 'supcon', 'simclr' or None, received: method='ce'"):
        h.analyse_encoder(tiny_model_path, images, labels, method="ce")
    with pytest.raises(ValueError, match="`num_views` must be an int >= 2, received: num_views=1"):
        h.analyse_encoder(tiny_model_path, images, labels, num_views=1)
    with pytest.raises(ValueError, match="`augment` must be a callable"):
        h.analyse_encoder(tiny_model_path, images, labels, augment="simclr")
    with pytest.raises(ValueError, match="File not found"):
        h.analyse_encoder(str(tmp_path / "missing.keras"), images, labels)


def test_figure_is_written(analyses, tmp_path):
    path = h.figure(analyses, tmp_path / "figures" / "hardness.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="`path` must end with .png"):
        h.figure(analyses, tmp_path / "hardness.pdf")
    with pytest.raises(ValueError, match="`results` must be a non-empty dict"):
        h.figure({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"`results\['supcon'\]` must be an analyse_encoder result"):
        h.figure({"supcon": {"bins": None}}, tmp_path / "x.png")
