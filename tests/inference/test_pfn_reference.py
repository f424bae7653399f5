"""Reference GP predictives used to benchmark PFNs: cross-checked against sklearn and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from sklearn.gaussian_process.kernels import RBF

from uqkit.inference.pfn.gp_reference import (
    exact_gp_predictive,
    full_bayes_predictive,
    gp_log_marginal,
    gp_predictive_per_draw,
    importance_predictive,
    kish_ess,
    type2_ml_hyper,
    type2_ml_predictive,
)
from uqkit.calibration.predictive import Predictive
from uqkit.models.pfn_priors import PRESETS, GPHyperSimulator


def _data(generator, n=12, m=5, d=2):
    x = torch.rand(n, d, generator=generator)
    y = torch.sin(6 * x).sum(-1) + 0.1 * torch.randn(n, generator=generator)
    return x, y, torch.rand(m, d, generator=generator)


def _direct(x, y, xt, ell, scale, noise):
    """Textbook GP predictive with sklearn's RBF kernel and numpy solves."""
    k = RBF(length_scale=ell)
    kxx = scale * k(x.numpy()) + noise * np.eye(len(x))
    kxt = scale * k(xt.numpy(), x.numpy())
    mean = kxt @ np.linalg.solve(kxx, y.numpy())
    var = scale + noise - np.einsum("ij,ji->i", kxt, np.linalg.solve(kxx, kxt.T))
    return mean, var, stats.multivariate_normal(np.zeros(len(x)), kxx).logpdf(y.numpy())


def test_exact_and_per_draw_predictives_match_the_textbook_formula(generator):
    x, y, xt = _data(generator)
    yt = torch.randn(5, generator=generator)
    mean, var, logml = _direct(x, y, xt, 0.4, 1.3, 0.05)
    expected = stats.norm(mean, np.sqrt(var)).logpdf(yt.numpy())
    got = exact_gp_predictive(x, y, xt, lengthscale=0.4, outputscale=1.3, noise=0.05).log_prob(yt)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    theta = torch.tensor([[math.log(0.4), math.log(1.3), math.log(0.05 - 1e-4)]])
    np.testing.assert_allclose(gp_predictive_per_draw(theta, x, y, xt, 1e-4).log_prob(yt).numpy(), expected, rtol=1e-9)
    assert float(gp_log_marginal(theta, x, y, 1e-4)[0]) == pytest.approx(logml, rel=1e-10)
    # a numerically singular covariance (huge outputscale, duplicate inputs, no noise floor) gives -inf
    dup = torch.cat([x, x[:1]])
    extreme = torch.tensor([[0.0, 40.0, -40.0]], requires_grad=True)
    value = gp_log_marginal(extreme, dup, torch.cat([y, y[:1] + 1]), 0.0)
    assert value.shape == (1,) and float(value.detach()[0]) == -math.inf
    value.sum().backward()
    assert bool(torch.isfinite(extreme.grad).all())


def test_type2_ml_maximises_the_marginal_likelihood(generator):
    x, y, xt = _data(generator, n=30)
    theta = type2_ml_hyper(x, y)
    fitted = float(gp_log_marginal(theta.unsqueeze(0), x, y, 1e-4)[0])
    # better than every setting on a grid, and a stationary point: small steps do not improve it
    grid = torch.cartesian_prod(torch.log(torch.tensor([0.05, 0.3, 2.0])), torch.log(torch.tensor([0.1, 1.0, 10.0])),
                                torch.log(torch.tensor([1e-3, 0.01, 0.3])))
    assert float(gp_log_marginal(grid, x, y, 1e-4).max()) < fitted
    steps = torch.cat([torch.eye(3), -torch.eye(3)]) * 1e-2
    assert float(gp_log_marginal(theta + steps, x, y, 1e-4).max()) <= fitted + 1e-6
    assert type2_ml_predictive(x, y, xt).log_prob(torch.zeros(5)).shape == (5,)


def _three_point_problem():
    """The gp-hyper preset with 3 context points and one query: ``(prior, x, y, xt, yt)``."""
    x = torch.tensor([[0.1], [0.35], [0.8]])
    y = torch.tensor([0.3, -0.5, 1.1])
    return PRESETS["gp-hyper"](), x, y, torch.tensor([[0.5]]), torch.tensor([0.2])


def _grid_predictive_density(prior, x, y, xt, yt) -> float:
    """Full-Bayes predictive density at ``yt [1]`` by a 41^3 grid over the log hyperparameters (prior x marginal)."""
    mu, sd = prior.log_hyperprior()
    grid = torch.cartesian_prod(*[torch.linspace(float(m - 5 * s), float(m + 5 * s), 41) for m, s in zip(mu, sd)])
    log_w = torch.distributions.Normal(mu, sd).log_prob(grid).sum(-1) + gp_log_marginal(grid, x, y, prior.noise_floor)
    per_setting = gp_predictive_per_draw(grid, x, y, xt, prior.noise_floor).dist.log_prob(yt).exp()[:, 0]
    return float((torch.softmax(log_w, 0) * per_setting).sum())


@pytest.mark.slow  # NUTS: ~1 minute on a busy 2-core machine
def test_full_bayes_matches_quadrature_over_the_hyperparameters(generator):
    """NUTS + mixture vs a 41^3 grid over the log hyperparameters (prior x marginal likelihood weights)."""
    import arviz as az

    prior, x, y, xt, yt = _three_point_problem()
    expected = _grid_predictive_density(prior, x, y, xt, yt)

    chains, kept = 4, 250
    pred = full_bayes_predictive(x, y, xt, prior, num_warmup=250, num_samples=kept, num_chains=chains,
                                 max_draws=chains * kept)
    dens = pred.dist.log_prob(yt).exp()[:, 0]  # [chains * kept], chain-major
    ess = float(az.ess(dens.reshape(chains, kept).numpy()))
    mcse = float(dens.std()) / math.sqrt(ess)
    assert float(pred.log_prob(yt)[0].exp()) == pytest.approx(expected, abs=4 * mcse)


def _importance_estimate_and_se(pred, yt) -> tuple[float, float]:
    """Self-normalised IS estimate of the predictive density at ``yt [1]`` and its delta-method s.e."""
    w = pred.weights()
    dens = pred.dist.log_prob(yt).exp()[:, 0]
    estimate = float((w * dens).sum())
    return estimate, float(torch.sqrt((w.square() * (dens - estimate).square()).sum()))


def test_importance_sampling_matches_quadrature_over_the_lengthscale(generator):
    """Only the lengthscale uncertain: IS vs scipy quadrature over log lengthscale (scipy GP densities)."""
    ell_mu, ell_sd, scale, noise = math.log(0.3), 0.6, 1.2, 0.05
    floor = 1e-4
    prior = GPHyperSimulator({"lengthscale": (ell_mu, ell_sd), "outputscale": (math.log(scale), 1e-9),
                              "noise": (math.log(noise - floor), 1e-9)}, input_dims=(1, 1), noise_floor=floor)
    x = torch.tensor([[0.05], [0.3], [0.42], [0.9]])
    y = torch.tensor([0.4, -0.6, -0.2, 1.0])
    xt, yt = torch.tensor([[0.65]]), torch.tensor([0.5])

    def joint(log_ell: float, with_query: bool) -> float:
        mean, var, logml = _direct(x, y, xt, math.exp(log_ell), scale, noise)
        value = math.exp(stats.norm(ell_mu, ell_sd).logpdf(log_ell) + logml)
        return value * (stats.norm(mean[0], math.sqrt(var[0])).pdf(0.5) if with_query else 1.0)

    lims = (ell_mu - 8 * ell_sd, ell_mu + 8 * ell_sd)
    expected = (integrate.quad(joint, *lims, args=(True,), epsabs=0, epsrel=1e-10)[0]
                / integrate.quad(joint, *lims, args=(False,), epsabs=0, epsrel=1e-10)[0])
    pred = importance_predictive(x, y, xt, prior, num_draws=20_000, seed=3, chunk=7000)
    estimate, se = _importance_estimate_and_se(pred, yt)
    assert float(pred.log_prob(yt)[0].exp()) == pytest.approx(estimate, rel=1e-12)
    assert estimate == pytest.approx(expected, abs=4 * se) and se < 0.01 * expected
    assert 1000 < kish_ess(pred) <= 20_000


def test_importance_sampling_matches_a_grid_over_all_three_hyperparameters():
    """The gp-hyper preset, 3 points: IS vs a 41^3 grid over the log hyperparameters (prior x marginal)."""
    prior, x, y, xt, yt = _three_point_problem()
    expected = _grid_predictive_density(prior, x, y, xt, yt)
    pred = importance_predictive(x, y, xt, prior, num_draws=20_000, seed=0)
    estimate, se = _importance_estimate_and_se(pred, yt)
    assert estimate == pytest.approx(expected, abs=4 * se) and se < 0.01 * expected
    assert pred.log_prob(torch.zeros(1)).shape == (1,)
    # no context: the weights are uniform and the mixture is the prior predictive
    empty = importance_predictive(x[:0], y[:0], xt, prior, num_draws=100)
    assert kish_ess(empty) == pytest.approx(100.0)


def test_kish_ess_matches_its_formula(generator):
    normal = torch.distributions.Normal(torch.zeros(50, 2), torch.ones(50, 2))
    raw = torch.rand(50, generator=generator) ** 4
    pred = Predictive.from_distribution(normal, log_weights=raw.log())
    w = raw.numpy()
    assert kish_ess(pred) == pytest.approx(w.sum() ** 2 / np.square(w).sum(), rel=1e-12)
    with pytest.raises(ValueError, match="num_draws"):
        importance_predictive(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1), PRESETS["gp-hyper"](),
                              num_draws=0)
