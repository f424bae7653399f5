"""The generalised Gaussian and the BayesCap loss against scipy's ``gennorm`` and direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from uqkit import Predictive
from uqkit.wrap import GeneralizedGaussian, bayescap_loss, ggd_log_prob, ggd_variance
from uqkit.wrap.bayescap import RESIDUAL_CLAMP


@pytest.fixture
def params(generator):
    loc = torch.randn(40, generator=generator)
    scale = torch.rand(40, generator=generator) * 2 + 0.05
    beta = torch.rand(40, generator=generator) * 4 + 0.3
    y = loc + torch.randn(40, generator=generator) * 2
    return y, loc, scale, beta


def test_log_prob_variance_cdf_entropy_match_scipy_gennorm(params):
    y, loc, scale, beta = params
    ref = stats.gennorm(beta.numpy(), loc=loc.numpy(), scale=scale.numpy())
    np.testing.assert_allclose(ggd_log_prob(y, loc, scale, beta).numpy(), ref.logpdf(y.numpy()), rtol=1e-12)
    np.testing.assert_allclose(ggd_variance(scale, beta).numpy(), ref.var(), rtol=1e-10)
    dist = GeneralizedGaussian(loc, scale, beta)
    np.testing.assert_allclose(dist.log_prob(y).numpy(), ref.logpdf(y.numpy()), rtol=1e-12)
    np.testing.assert_allclose(dist.cdf(y).numpy(), ref.cdf(y.numpy()), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dist.entropy().numpy(), ref.entropy(), rtol=1e-10)
    np.testing.assert_allclose(dist.variance.numpy(), ref.var(), rtol=1e-10)
    assert torch.equal(dist.mean, loc)


def test_special_cases_are_gaussian_and_laplace():
    y = torch.linspace(-3, 3, 13)
    sd = 0.7
    gaussian = GeneralizedGaussian(torch.zeros(13), torch.full((13,), sd * math.sqrt(2)), torch.full((13,), 2.0))
    np.testing.assert_allclose(gaussian.log_prob(y).numpy(), stats.norm(0, sd).logpdf(y.numpy()), rtol=1e-12)
    np.testing.assert_allclose(gaussian.variance.numpy(), sd**2, rtol=1e-12)
    laplace = GeneralizedGaussian(torch.zeros(13), torch.full((13,), sd), torch.ones(13))
    np.testing.assert_allclose(laplace.cdf(y).numpy(), stats.laplace(0, sd).cdf(y.numpy()), rtol=1e-12)


def test_predictive_quantiles_of_a_ggd_match_scipy(params):
    _, loc, scale, beta = params
    pred = Predictive.from_distribution(GeneralizedGaussian(loc.view(1, -1), scale.view(1, -1), beta.view(1, -1)))
    lo, hi = pred.interval(0.9)
    ref = stats.gennorm(beta.numpy(), loc=loc.numpy(), scale=scale.numpy())
    np.testing.assert_allclose(lo.numpy(), ref.ppf(0.05), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(hi.numpy(), ref.ppf(0.95), rtol=1e-8, atol=1e-10)


def test_power_loss_is_the_ggd_nll_plus_identity_term(params):
    y, loc, scale, beta = params
    y_hat = loc + 0.01
    loss = bayescap_loss(loc, scale, beta, y_hat, y, identity_weight=0.7, ggd_weight=0.3, ggd_residual="power")
    # The GGD part is scipy's negative log density minus the constant log 2.
    nll = -stats.gennorm.logpdf(y.numpy(), beta.numpy(), loc.numpy(), scale.numpy()) - np.log(2)
    np.testing.assert_allclose(float(loss), 0.7 * 0.01 + 0.3 * nll.mean(), rtol=1e-12)


def test_linear_loss_uses_the_released_code_residual(params):
    y, loc, scale, beta = params
    loss = bayescap_loss(loc, scale, beta, loc, y, identity_weight=1.0, ggd_weight=1.0, ggd_residual="linear")
    yn, mn, an, bn = (t.numpy() for t in (y, loc, scale, beta))
    r = np.clip(np.abs(mn - yn) / an * bn, *RESIDUAL_CLAMP)
    np.testing.assert_allclose(float(loss), (r - np.log(bn) + np.log(an) + special.gammaln(1 / bn)).mean(), rtol=1e-12)


def test_power_loss_gradient_is_finite_at_zero_residual():
    mu = torch.zeros(3, requires_grad=True)
    beta = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    loss = bayescap_loss(mu, torch.ones(3), beta, torch.zeros(3), torch.zeros(3))
    loss.backward()
    assert bool(torch.isfinite(mu.grad).all()) and bool(torch.isfinite(beta.grad).all())
