"""Regression metrics against scipy.stats, direct numpy and numerical integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats
from torch.distributions import Gumbel, Laplace

from uqkit.calibration import regression as reg
from uqkit.calibration.predictive import Predictive


def _gaussian_mixture(generator, shape, num_draws=3, with_weights=True):
    mean = torch.randn(num_draws, *shape, generator=generator)
    var = torch.rand(num_draws, *shape, generator=generator) + 0.2
    log_w = torch.randn(num_draws, generator=generator) if with_weights else None
    return Predictive.gaussian(mean, var, log_weights=log_w), mean.numpy(), var.numpy(), log_w


def _np_weights(log_w, num_draws):
    return np.full(num_draws, 1 / num_draws) if log_w is None else special.softmax(log_w.numpy())


def _mixture_cdf_np(z, mean, sd, w):
    return float(np.sum(w * stats.norm.cdf(z, mean, sd)))


def _root(fn):
    return optimize.brentq(fn, -50, 50, xtol=1e-14, rtol=1e-14)


def _crps_by_quad(cdf, y):
    """``∫ (F(z) - 1[z >= y])^2 dz`` by adaptive quadrature, split at the jump."""
    below, _ = integrate.quad(lambda z: cdf(z) ** 2, -np.inf, y, epsabs=1e-12, epsrel=1e-12, limit=200)
    above, _ = integrate.quad(lambda z: (1 - cdf(z)) ** 2, y, np.inf, epsabs=1e-12, epsrel=1e-12, limit=200)
    return below + above


@pytest.mark.parametrize("shape", [(6,), (4, 2)])
def test_rmse_nll_pit_against_scipy(generator, shape):
    pred, mean, var, log_w = _gaussian_mixture(generator, shape)
    y = torch.randn(*shape, generator=generator) * 1.5
    w = _np_weights(log_w, 3)
    w_b = w.reshape(-1, *[1] * len(shape))
    mix_mean = (w_b * mean).sum(0)
    assert float(reg.rmse(pred, y)) == pytest.approx(np.sqrt(np.mean((mix_mean - y.numpy()) ** 2)), rel=1e-12)
    # Each draw's density is a product over the D outputs; the mixture is over draws.
    per_draw = stats.norm.logpdf(y.numpy(), mean, np.sqrt(var))
    per_draw = per_draw if len(shape) == 1 else per_draw.sum(-1)
    per_point = special.logsumexp(np.log(w)[:, None] + per_draw, axis=0)
    assert float(reg.regression_nll(pred, y)) == pytest.approx(-per_point.mean(), rel=1e-12)
    pits = (w_b * stats.norm.cdf(y.numpy(), mean, np.sqrt(var))).sum(0)
    # torch's Normal CDF is 0.5 * (1 + erf): absolute, not relative, accuracy in the far left tail.
    np.testing.assert_allclose(reg.pit(pred, y.numpy()).numpy(), pits, rtol=1e-12, atol=1e-16)


def test_crps_single_gaussian_matches_known_formula(generator):
    mean, sd = torch.randn(50, generator=generator), torch.rand(50, generator=generator) + 0.1
    y = torch.randn(50, generator=generator) * 2
    z = ((y - mean) / sd).numpy()
    expected = sd.numpy() * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert float(reg.crps(Predictive.gaussian(mean, sd**2), y)) == pytest.approx(expected.mean(), rel=1e-12)


@pytest.mark.parametrize("with_weights", [False, True])
def test_crps_gaussian_mixture_matches_numerical_integral(generator, with_weights):
    pred, mean, var, log_w = _gaussian_mixture(generator, (5,), num_draws=4, with_weights=with_weights)
    y = torch.randn(5, generator=generator) * 2
    w = _np_weights(log_w, 4)
    per_point = [
        _crps_by_quad(lambda z, i=i: _mixture_cdf_np(z, mean[:, i], np.sqrt(var[:, i]), w), float(y[i]))
        for i in range(5)
    ]
    assert float(reg.crps(pred, y)) == pytest.approx(np.mean(per_point), rel=1e-9)


def test_crps_chunked_pairs_agree(generator, monkeypatch):
    pred, *_ = _gaussian_mixture(generator, (7, 2), num_draws=9)
    y = torch.randn(7, 2, generator=generator)
    whole = reg.crps(pred, y)
    monkeypatch.setattr(reg, "_CHUNK_ELEMENTS", 20)  # forces one draw per chunk
    assert float(reg.crps(pred, y)) == pytest.approx(float(whole), rel=1e-13)


@pytest.mark.parametrize("shape", [(8,), (5, 3)])
def test_crps_quadrature_fallback_matches_closed_form(generator, shape):
    pred, *_ = _gaussian_mixture(generator, shape, num_draws=3)
    y = torch.randn(*shape, generator=generator) * 2
    y.view(-1)[0] = 25.0  # a far outlier: the grid spans it
    closed = reg._crps_gaussian_mixture(pred, y)
    numeric = reg._crps_quadrature(pred, y)
    np.testing.assert_allclose(numeric.numpy(), closed.numpy(), rtol=1e-8)


def test_crps_non_gaussian_families_match_numerical_integral(generator):
    loc, scale = torch.randn(2, 4, generator=generator), torch.rand(2, 4, generator=generator) + 0.3
    y = torch.randn(4, generator=generator)
    log_w = torch.tensor([0.3, -0.2])
    w = special.softmax(log_w.numpy())
    # Simpson's rule is O(h^4) for the smooth Gumbel CDF; the Laplace density's kink at the mode costs accuracy.
    families = [
        (Laplace(loc, scale), stats.laplace, 1e-6),
        (Gumbel(loc, scale, validate_args=False), stats.gumbel_r, 1e-8),
    ]
    loc_np, scale_np = loc.numpy(), scale.numpy()
    for dist, family, rel in families:
        pred = Predictive.from_distribution(dist, log_weights=log_w)
        per_point = []
        for i in range(4):

            def cdf(z, i=i, family=family):
                return float(np.sum(w * family.cdf(z, loc_np[:, i], scale_np[:, i])))

            with np.errstate(over="ignore"):  # scipy's Gumbel CDF overflows to the right answer, 0, far left
                per_point.append(_crps_by_quad(cdf, float(y[i])))
        assert float(reg.crps(pred, y)) == pytest.approx(np.mean(per_point), rel=rel)


def test_calibration_curve_and_quantile_error_against_numpy(generator):
    pred, *_ = _gaussian_mixture(generator, (40, 2))
    y = torch.randn(40, 2, generator=generator) * 2
    pits = reg.pit(pred, y).numpy().ravel()
    expected, observed = reg.calibration_curve(pred, y, num_levels=9)
    levels = np.arange(1, 10) / 10
    np.testing.assert_allclose(expected.numpy(), levels, rtol=1e-15)
    np.testing.assert_allclose(observed.numpy(), [(pits <= p).mean() for p in levels], rtol=1e-15)
    qce = reg.quantile_calibration_error(pred, y, num_levels=9)
    assert float(qce) == pytest.approx(np.mean(np.abs(observed.numpy() - levels)), rel=1e-13)


@pytest.mark.parametrize("num_levels", [4, 99])
def test_miscalibration_area_is_the_integral_of_the_gap(generator, num_levels):
    # Overdispersed targets and a shift make the curve cross the diagonal.
    mean = torch.randn(300, generator=generator)
    y = mean + 0.4 + 1.7 * torch.randn(300, generator=generator)
    pred = Predictive.gaussian(mean, torch.ones(300))
    expected, observed = reg.calibration_curve(pred, y, num_levels=num_levels)
    xs = np.concatenate([[0.0], expected.numpy(), [1.0]])
    ys = np.concatenate([[0.0], observed.numpy(), [1.0]])
    gap = lambda p: abs(np.interp(p, xs, ys) - p)  # noqa: E731
    area, _ = integrate.quad(gap, 0, 1, points=xs[1:-1], limit=1000, epsabs=1e-14, epsrel=1e-13)
    assert float(reg.miscalibration_area(pred, y, num_levels=num_levels)) == pytest.approx(area, rel=1e-9)


def test_miscalibration_area_of_a_hand_computed_curve():
    # Every PIT is Phi(0.3) = 0.618, so at levels (1/4, 1/2, 3/4) the curve is (0, 0, 1) and the gap at
    # p = 0, 1/4, 1/2, 3/4, 1 is (0, -1/4, -1/2, 1/4, 0). Segment areas: 1/32, 3/32, then a crossing
    # from -1/2 to 1/4 (triangles of width 2/3 and 1/3 of 1/4: 1/24 + 1/96 = 5/96), then 1/32.
    y = torch.full((3,), 0.3)
    pred = Predictive.gaussian(torch.zeros(3), torch.ones(3))
    exact = 1 / 32 + 3 / 32 + 5 / 96 + 1 / 32
    assert float(reg.miscalibration_area(pred, y, num_levels=3)) == pytest.approx(exact, rel=1e-14)


def test_interval_coverage_width_sharpness_single_gaussian(generator):
    mean, sd = torch.randn(200, 2, generator=generator), torch.rand(200, 2, generator=generator) + 0.5
    y = mean + sd * torch.randn(200, 2, generator=generator) * 1.3
    pred = Predictive.gaussian(mean[None], sd[None] ** 2)  # one model, D = 2 outputs
    z = stats.norm.ppf(0.95)
    lo, hi = (mean - z * sd).numpy(), (mean + z * sd).numpy()
    inside = (lo <= y.numpy()) & (y.numpy() <= hi)
    assert float(reg.interval_coverage(pred, y, 0.9)) == pytest.approx(inside.mean(), abs=1e-15)
    assert float(reg.interval_width(pred, 0.9)) == pytest.approx((hi - lo).mean(), rel=1e-12)
    assert float(reg.sharpness(pred)) == pytest.approx(np.sqrt((sd.numpy() ** 2).mean()), rel=1e-12)


def test_interval_width_of_a_mixture_against_scipy(generator):
    pred, mean, var, log_w = _gaussian_mixture(generator, (3,))
    w = _np_weights(log_w, 3)
    widths = []
    for i in range(3):
        lo, hi = (
            _root(lambda z, i=i, q=q: _mixture_cdf_np(z, mean[:, i], np.sqrt(var[:, i]), w) - q) for q in (0.05, 0.95)
        )
        widths.append(hi - lo)
    assert float(reg.interval_width(pred, 0.9)) == pytest.approx(np.mean(widths), rel=1e-9)
    total_var = (w[:, None] * (var + mean**2)).sum(0) - ((w[:, None] * mean).sum(0)) ** 2
    assert float(reg.sharpness(pred)) == pytest.approx(np.sqrt(total_var.mean()), rel=1e-12)


def test_well_specified_gaussian_is_calibrated(seed):
    generator = torch.Generator().manual_seed(1000 + seed)
    n = 5000
    mean = 3 * torch.randn(n, generator=generator)
    sd = torch.rand(n, generator=generator) + 0.2
    y = mean + sd * torch.randn(n, generator=generator)
    pred = Predictive.gaussian(mean, sd**2)
    for level in (0.5, 0.9, 0.95):
        binomial_sd = np.sqrt(level * (1 - level) / n)
        assert abs(float(reg.interval_coverage(pred, y, level)) - level) < 4.5 * binomial_sd
    # Kolmogorov-Smirnov: the exact one-sample statistic from scipy, against its 1e-4 critical value.
    ks = stats.kstest(reg.pit(pred, y).numpy(), "uniform").statistic
    assert ks < stats.kstwo.ppf(1 - 1e-4, n)
    # Quantile calibration error: each observed frequency has binomial sd <= 0.5 / sqrt(n).
    assert float(reg.quantile_calibration_error(pred, y)) < 4.5 * 0.5 / np.sqrt(n)


def test_regression_metrics_keys_and_values(generator):
    pred, *_ = _gaussian_mixture(generator, (30,))
    y = torch.randn(30, generator=generator)
    out = reg.regression_metrics(pred, y)
    assert list(out) == [
        "rmse", "nll", "crps", "coverage_50", "coverage_90", "coverage_95", "width_50", "width_90", "width_95",
        "miscalibration_area", "quantile_calibration_error", "sharpness",
    ]  # fmt: skip
    assert all(isinstance(v, float) for v in out.values())
    assert out["rmse"] == float(reg.rmse(pred, y))
    assert out["nll"] == float(reg.regression_nll(pred, y))
    assert out["crps"] == float(reg.crps(pred, y))
    assert out["coverage_90"] == float(reg.interval_coverage(pred, y, 0.9))
    assert out["width_50"] == float(reg.interval_width(pred, 0.5))
    assert out["miscalibration_area"] == float(reg.miscalibration_area(pred, y))
    assert out["quantile_calibration_error"] == float(reg.quantile_calibration_error(pred, y))
    assert out["sharpness"] == float(reg.sharpness(pred))


def test_bad_inputs_raise_clear_errors():
    pred = Predictive.gaussian(torch.zeros(4), torch.ones(4))
    cls_pred = Predictive.from_logits(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="^pred: expected a regression Predictive"):
        reg.crps(cls_pred, torch.zeros(4))
    with pytest.raises(ValueError, match="^pred: expected a regression Predictive"):
        reg.sharpness(cls_pred)
    with pytest.raises(TypeError, match="^pred: expected a uqkit Predictive"):
        reg.rmse(np.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"^y: expected shape \(4,\)"):
        reg.regression_nll(pred, torch.zeros(5))
    with pytest.raises(ValueError, match="^y: expected a 1-D array"):
        reg.pit(pred, torch.zeros(4, 1))
    with pytest.raises(ValueError, match="^y: expected finite values"):
        reg.rmse(pred, torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="^num_levels: expected a positive integer"):
        reg.calibration_curve(pred, torch.zeros(4), num_levels=0)
    with pytest.raises(TypeError, match="^num_levels: expected a positive integer"):
        reg.miscalibration_area(pred, torch.zeros(4), num_levels=2.5)
    with pytest.raises(ValueError, match="^level: expected a level in"):
        reg.interval_coverage(pred, torch.zeros(4), 1.5)
