"""Bar distribution with half-normal tails: normalisation, cdf/quantile, bucket widths, moments (vs scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from uqkit.calibration.predictive import Predictive
from uqkit.inference.pfn import BarDistribution, borders_from_samples


def _bar(generator: torch.Generator, batch: int = 3, buckets: int = 12) -> BarDistribution:
    borders = torch.sort(torch.randn(buckets + 1, generator=generator) * 2).values
    logits = torch.randn(batch, buckets, generator=generator)
    return BarDistribution(logits, borders)


def _density(bar: BarDistribution, row: int):
    return lambda y: float(bar.log_prob(torch.full(bar.batch_shape, y))[row].exp())


def _integral(f, a: float, b: float, borders: np.ndarray) -> float:
    """Integral of a piecewise-smooth density over [a, b], split at the bucket borders."""
    pts = [a, *[x for x in borders if a < x < b], b]
    return sum(integrate.quad(f, lo, hi, epsabs=1e-12, epsrel=1e-10, limit=200)[0] for lo, hi in zip(pts, pts[1:]))


def test_integrates_to_one_and_cdf_is_its_integral(generator):
    bar = _bar(generator)
    b = bar.borders.numpy()
    for row in range(3):
        f = _density(bar, row)
        total = _integral(f, -np.inf, b[1], b) + _integral(f, b[1], b[-2], b) + _integral(f, b[-2], np.inf, b)
        assert total == pytest.approx(1.0, abs=1e-8)
        for y in (b[0] - 1.0, b[1] - 0.1, 0.5 * (b[4] + b[5]), b[-2] + 0.2, b[-1] + 2.0):
            expected = _integral(f, -np.inf, min(y, b[1]), b) + (_integral(f, b[1], y, b) if y > b[1] else 0.0)
            got = float(bar.cdf(torch.full(bar.batch_shape, y))[row])
            assert got == pytest.approx(expected, abs=1e-8)


def test_log_prob_includes_bucket_width(generator):
    bar = _bar(generator)
    b, p = bar.borders, torch.softmax(bar.log_probs, -1)
    for k in range(1, 11):  # interior buckets: log p_k - log w_k
        y = torch.full(bar.batch_shape, float(0.3 * b[k] + 0.7 * b[k + 1]))
        expected = torch.log(p[:, k]) - torch.log(b[k + 1] - b[k])
        torch.testing.assert_close(bar.log_prob(y), expected, rtol=1e-12, atol=1e-12)


def test_tails_are_half_normal_with_half_their_mass_in_the_edge_bucket(generator):
    bar = _bar(generator)
    b, p = bar.borders.numpy(), torch.softmax(bar.log_probs, -1).numpy()
    left = stats.halfnorm(scale=(b[1] - b[0]) / stats.halfnorm.ppf(0.5))
    right = stats.halfnorm(scale=(b[-1] - b[-2]) / stats.halfnorm.ppf(0.5))
    assert left.cdf(b[1] - b[0]) == pytest.approx(0.5)
    for y in (b[1] - 0.01, b[0], b[0] - 5.0, b[0] - 50.0):  # far outside: finite, quadratic decay
        got = bar.log_prob(torch.full(bar.batch_shape, y)).numpy()
        np.testing.assert_allclose(got, np.log(p[:, 0]) + left.logpdf(b[1] - y), rtol=1e-10)
    for y in (b[-2] + 0.01, b[-1] + 30.0):
        got = bar.log_prob(torch.full(bar.batch_shape, y)).numpy()
        np.testing.assert_allclose(got, np.log(p[:, -1]) + right.logpdf(y - b[-2]), rtol=1e-10)


def test_cdf_and_quantile_are_inverses(generator):
    bar = _bar(generator)
    for q in (1e-6, 0.01, 0.2, 0.5, 0.77, 0.99, 1 - 1e-6):
        y = bar.icdf(torch.full(bar.batch_shape, q))
        torch.testing.assert_close(bar.cdf(y), torch.full(bar.batch_shape, q), rtol=0, atol=1e-10)
    ys = torch.linspace(float(bar.borders[0]) - 3, float(bar.borders[-1]) + 3, 41)
    for y in ys:
        yy = torch.full(bar.batch_shape, float(y))
        torch.testing.assert_close(bar.icdf(bar.cdf(yy)), yy, rtol=0, atol=1e-7)


def test_mean_and_variance_match_numerical_integration(generator):
    bar = _bar(generator)
    b = bar.borders.numpy()
    for row in range(3):
        f = _density(bar, row)
        pieces = ((-np.inf, b[1]), (b[1], b[-2]), (b[-2], np.inf))
        m1 = sum(_integral(lambda y: y * f(y), lo, hi, b) for lo, hi in pieces)
        m2 = sum(_integral(lambda y: y**2 * f(y), lo, hi, b) for lo, hi in pieces)
        assert float(bar.mean[row]) == pytest.approx(m1, abs=1e-8)
        assert float(bar.variance[row]) == pytest.approx(m2 - m1**2, abs=1e-8)


def test_predictive_from_bar_distribution(generator):
    bar = _bar(generator, batch=5)
    pred = Predictive.from_distribution(BarDistribution(bar.log_probs.unsqueeze(0), bar.borders))
    y = torch.randn(5, generator=generator)
    torch.testing.assert_close(pred.log_prob(y), bar.log_prob(y))
    torch.testing.assert_close(pred.quantile(0.3), bar.icdf(torch.full((5,), 0.3)))
    torch.testing.assert_close(pred.mean(), bar.mean)
    lo, hi = pred.interval(0.9)
    torch.testing.assert_close(bar.cdf(hi) - bar.cdf(lo), torch.full((5,), 0.9))


def test_borders_have_equal_prior_mass(generator):
    y = torch.randn(20_000, generator=generator)
    borders = borders_from_samples(y, 50)
    assert borders.shape == (51,)
    assert float(borders[0]) == float(y.min()) and float(borders[-1]) == float(y.max())
    per_bucket = torch.bucketize(y, borders[1:-1], right=True).bincount(minlength=50)
    assert bool((per_bucket == 400).all())
    # the borders are the N(0, 1) quantiles up to sampling error (sd of a sample quantile ~ 0.02 here)
    inner = borders[1:-1].numpy()
    np.testing.assert_allclose(inner, stats.norm.ppf(np.arange(1, 50) / 50), atol=0.12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_buckets"):
        borders_from_samples(torch.randn(10), 50)
    with pytest.raises(ValueError, match="logits"):
        BarDistribution(torch.zeros(3, 4), torch.arange(4.0))
    with pytest.raises(ValueError, match="ties"):
        borders_from_samples(torch.zeros(100), 5)
    assert math.isfinite(float(BarDistribution(torch.zeros(1, 3), torch.arange(4.0)).log_prob(torch.tensor([1e3]))[0]))
