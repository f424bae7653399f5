"""BayesianLinearRegression against numpy linear algebra, scipy's Gaussian marginal and sklearn's BayesianRidge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from sklearn.linear_model import BayesianRidge

from uqkit.calibration.predictive import Predictive
from uqkit.models.linear import BayesianLinearRegression


def _data(generator: torch.Generator, num_points: int = 60, num_features: int = 3, noise_sd: float = 0.4):
    x = torch.randn(num_points, num_features, generator=generator)
    w = torch.randn(num_features, generator=generator)
    y = x @ w + 0.5 + noise_sd * torch.randn(num_points, generator=generator)
    return x, y, w


def _phi(x: torch.Tensor) -> np.ndarray:
    return np.c_[x.numpy(), np.ones(x.shape[0])]


def _scipy_log_evidence(phi: np.ndarray, y: np.ndarray, prior_precision: float, noise_var: float) -> float:
    """log N(y; 0, noise_var I + Phi Phi^T / prior_precision): the marginal likelihood, written directly."""
    cov = noise_var * np.eye(len(y)) + phi @ phi.T / prior_precision
    return float(stats.multivariate_normal(mean=np.zeros(len(y)), cov=cov).logpdf(y))


def test_fixed_hyperparameters_match_numpy(generator):
    x, y, _ = _data(generator)
    x_new = torch.randn(7, 3, generator=generator)
    model = BayesianLinearRegression(prior_precision=2.0, noise_var=0.3).fit(x, y)

    phi, phi_new = _phi(x), _phi(x_new)
    cov = np.linalg.inv(2.0 * np.eye(4) + phi.T @ phi / 0.3)
    mean = cov @ phi.T @ y.numpy() / 0.3
    np.testing.assert_allclose(model.posterior_mean_.numpy(), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.posterior_cov_.numpy(), cov, rtol=1e-10, atol=1e-14)
    assert model.num_iter_ == 0 and model.noise_var_ == 0.3 and model.prior_precision_ == 2.0

    pred = model.predict(x_new)
    assert isinstance(pred, Predictive) and pred.task == "regression" and pred.num_draws == 1
    np.testing.assert_allclose(pred.mean().numpy(), phi_new @ mean, rtol=1e-10, atol=1e-12)
    expected_var = 0.3 + np.einsum("np,pq,nq->n", phi_new, cov, phi_new)
    np.testing.assert_allclose(pred.variance().numpy(), expected_var, rtol=1e-10)


@pytest.mark.parametrize(
    ("prior_precision", "noise_var", "num_points", "num_features"),
    [(2.0, 0.3, 60, 3), (None, None, 60, 3), (None, None, 5, 10), (0.5, None, 5, 10)],
)
def test_log_evidence_matches_scipy_marginal(generator, prior_precision, noise_var, num_points, num_features):
    x, y, _ = _data(generator, num_points, num_features)
    model = BayesianLinearRegression(prior_precision, noise_var).fit(x, y)
    expected = _scipy_log_evidence(_phi(x), y.numpy(), model.prior_precision_, model.noise_var_)
    assert model.log_evidence_ == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize(("estimate_prior", "estimate_noise"), [(True, True), (True, False), (False, True)])
def test_type2_maximises_evidence(generator, estimate_prior, estimate_noise):
    """Our search lands on the evidence maximum that a generic optimiser finds on scipy's marginal density."""
    x, y, _ = _data(generator)
    fixed_prior, fixed_noise = 1.5, 0.2
    model = BayesianLinearRegression(
        prior_precision=None if estimate_prior else fixed_prior, noise_var=None if estimate_noise else fixed_noise
    ).fit(x, y)
    phi, y_np = _phi(x), y.numpy()

    def negative_evidence(log_params: np.ndarray) -> float:
        it = iter(np.exp(log_params))
        prior = next(it) if estimate_prior else fixed_prior
        noise = next(it) if estimate_noise else fixed_noise
        return -_scipy_log_evidence(phi, y_np, prior, noise)

    start = np.zeros(int(estimate_prior) + int(estimate_noise))
    best = optimize.minimize(negative_evidence, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12})
    assert best.success
    estimated = ((model.prior_precision_, estimate_prior), (model.noise_var_, estimate_noise))
    ours = np.log([value for value, free in estimated if free])
    # Both are searches on function values, which resolve a smooth maximum only to about
    # sqrt(eps * |f| / curvature): ~1e-7 here (|f| ~ 50, curvature ~ 1). 1e-5 is that with a 100x margin and
    # far below what a wrong evidence or update rule would shift the maximum by.
    np.testing.assert_allclose(ours, best.x, atol=1e-5)
    # Our point is at least as good as the optimiser's (up to round-off of the log-determinant).
    assert model.log_evidence_ >= -best.fun - 1e-9


def test_type2_matches_sklearn_bayesian_ridge(generator):
    """BayesianRidge on [x, 1] without intercept and with flat hyperpriors is the same model and maximum."""
    x, y, _ = _data(generator, num_points=80, num_features=4)
    model = BayesianLinearRegression(prior_precision=None, noise_var=None).fit(x, y)
    peer = BayesianRidge(
        fit_intercept=False, alpha_1=0.0, alpha_2=0.0, lambda_1=0.0, lambda_2=0.0, tol=1e-14, max_iter=100_000
    ).fit(_phi(x), y.numpy())
    # sklearn runs MacKay's fixed point to machine precision. Our search compares evidence values, and
    # near a smooth maximum those differ by less than their round-off (eps * |log_evidence|) within
    # sqrt(eps * |log_evidence| / curvature) of it; the curvature in log(noise_var * prior_precision) is
    # O(1), so the hyperparameters and weights are resolved to about sqrt(eps * |log_evidence|) ~ 1e-7.
    rtol = 10 * math.sqrt(np.finfo(float).eps * abs(model.log_evidence_))
    assert model.noise_var_ == pytest.approx(1.0 / peer.alpha_, rel=rtol)
    assert model.prior_precision_ == pytest.approx(peer.lambda_, rel=rtol)
    np.testing.assert_allclose(model.posterior_mean_.numpy(), peer.coef_, rtol=rtol)
    np.testing.assert_allclose(model.posterior_cov_.numpy(), peer.sigma_, rtol=rtol, atol=1e-14)


def test_recovers_weights_and_noise(generator):
    num_points, noise_sd = 2000, 0.5
    x, y, w = _data(generator, num_points=num_points, noise_sd=noise_sd)
    model = BayesianLinearRegression(prior_precision=None, noise_var=None).fit(x, y)
    # The evidence noise estimate is ~ RSS / (n - p): relative standard error sqrt(2 / (n - p)).
    noise_se = noise_sd**2 * math.sqrt(2 / (num_points - 4))
    assert abs(model.noise_var_ - noise_sd**2) < 4 * noise_se
    truth = torch.cat([w, torch.tensor([0.5])])
    z = (model.posterior_mean_ - truth) / model.posterior_cov_.diagonal().sqrt()
    assert bool((z.abs() < 4).all()), z


def test_predictive_log_prob_matches_scipy_normal(generator):
    x, y, _ = _data(generator)
    x_new, y_new, _ = _data(generator, num_points=9)
    pred = BayesianLinearRegression(prior_precision=None).fit(x, y).predict(x_new)
    expected = stats.norm.logpdf(y_new.numpy(), pred.mean().numpy(), np.sqrt(pred.variance().numpy()))
    np.testing.assert_allclose(pred.log_prob(y_new).numpy(), expected, rtol=1e-12)


def test_float32_inputs_are_fitted_in_float64(generator):
    x, y, _ = _data(generator)
    model = BayesianLinearRegression().fit(x.float(), y.float())
    assert model.posterior_mean_.dtype == torch.float64
    assert model.predict(x.float()).mean().dtype == torch.float64


def test_all_zero_targets_stay_finite():
    x = torch.linspace(-1, 1, 10).unsqueeze(-1)
    model = BayesianLinearRegression(prior_precision=None, noise_var=None).fit(x, torch.zeros(10))
    assert torch.equal(model.posterior_mean_, torch.zeros(2))
    assert math.isfinite(model.log_evidence_) and model.noise_var_ > 0


def test_non_convergence_warns(generator):
    x, y, _ = _data(generator)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        BayesianLinearRegression(prior_precision=None, max_iter=1).fit(x, y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior_precision": -1.0}, "prior_precision"),
        ({"noise_var": 0.0}, "noise_var"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": float("nan")}, "tol"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=f"^{match}"):
        BayesianLinearRegression(**kwargs)


def test_bad_inputs(generator):
    x, y, _ = _data(generator)
    model = BayesianLinearRegression()
    with pytest.raises(RuntimeError, match="^predict"):
        model.predict(x)
    with pytest.raises(ValueError, match="^x"):
        model.fit(x[:, 0], y)
    with pytest.raises(ValueError, match="^y"):
        model.fit(x, y[:-1])
    bad = y.clone()
    bad[0] = float("nan")
    with pytest.raises(ValueError, match="^y"):
        model.fit(x, bad)
    model.fit(x, y)
    with pytest.raises(ValueError, match="^x: expected 3 features"):
        model.predict(x[:, :2])
