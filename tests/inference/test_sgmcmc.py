"""SG-MCMC accuracy on conjugate Bayesian linear regression, against the exact stationary laws of the discretised chains.

Target: ``y = X w + N(0, noise^2)``, ``w ~ N(0, s^2 I)``, posterior ``N(mu, Sigma)`` with precision
``A = X'X / noise^2 + I / s^2``. With full-batch gradients both samplers are linear Gaussian
recursions, so their stationary laws are known exactly:

* SGLD, ``w' = w + eps/2 (-A (w - mu)) + sqrt(eps) xi``: mean ``mu``, covariance ``C`` solving
  ``C = (I - eps A/2) C (I - eps A/2)' + eps I``; as ``C`` commutes with ``A``,
  ``C = eps (I - (I - eps A/2)^2)^-1 = (A - eps A^2/4)^-1 = Sigma (I - eps A/4)^-1``, an O(eps) bias
  that inflates every posterior variance by ``1 / (1 - eps lambda/4)``.
* SGHMC with the inverse mass ``m`` frozen after warmup (diagonal), ``h = lr^2/N``, friction ``c``:
  ``v' = (1-c) v - h m A (w - mu) + n``, ``w' = w + v'``, ``n ~ N(0, D)``, ``D = diag(2 h c m - h^2)``.
  The state ``z = (w - mu, v)`` follows ``z' = F z + (n, n)`` with
  ``F = [[I - h m A, (1-c) I], [-h m A, (1-c) I]]``; its stationary covariance solves the discrete
  Lyapunov equation ``P = F P F' + [[D, D], [D, D]]`` and ``C`` is the top-left block.

Checks (with ``k = d + d(d+1)/2`` free parameters of a d-dimensional Gaussian, and the asymptotic
``2 n KL(fitted || truth) ~ chi^2_k`` for the maximum-likelihood Gaussian fitted to n independent
draws, n replaced by the smallest bulk ESS of the coordinates, which is conservative for the
second moments since squares of an AR(1) chain decorrelate faster):

1. KL(fitted || true posterior) < 1e-2 KL(initial distribution || true posterior) (the initial
   distribution is the prior, which every chain starts from), as in the ``posteriors`` test suite.
2. KL(fitted || stationary law) < chi^2_{k, 1-p} / (2 ESS), p = 1e-3: the draws follow the derived
   discretised law.
3. KL(fitted || stationary law) < KL(fitted || true posterior) where the derived bias exceeds the
   Monte Carlo error: the O(eps) inflation is real and the formula captures it.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import stats
from torch import nn

import uqkit.inference.cyclical  # noqa: F401
import uqkit.inference.sghmc  # noqa: F401
import uqkit.inference.sgld  # noqa: F401
from uqkit.inference.fit import fit
from uqkit.models.likelihoods import Gaussian
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec
from uqkit.registry import get_engine

P_VALUE = 1e-3
NUM_DATA, DIM, NOISE, PRIOR_SCALE = 50, 3, 1.0, 1.0


def _problem(seed: int):
    """Design with X'X = N R diag(1, 1/2, 1/4) R' (well-separated posterior scales) and a conjugate model."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((NUM_DATA, DIM)))
    rot, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    x = np.sqrt(NUM_DATA) * q @ np.diag([1.0, 0.5**0.5, 0.5]) @ rot.T
    w_true = rng.standard_normal(DIM)
    y = x @ w_true + NOISE * rng.standard_normal(NUM_DATA)
    precision = x.T @ x / NOISE**2 + np.eye(DIM) / PRIOR_SCALE**2
    cov = np.linalg.inv(precision)
    mean = cov @ x.T @ y / NOISE**2
    spec = ModelSpec(nn.Linear(DIM, 1, bias=False), IsotropicGaussian(PRIOR_SCALE), Gaussian(NOISE), NUM_DATA)
    return spec, (torch.from_numpy(x), torch.from_numpy(y)), mean, cov, precision


def _kl(mean0, cov0, mean1, cov1) -> float:
    """KL(N(mean0, cov0) || N(mean1, cov1))."""
    inv1 = np.linalg.inv(cov1)
    diff = mean1 - mean0
    return 0.5 * float(np.trace(inv1 @ cov0) + diff @ inv1 @ diff - len(mean0)
                       + np.linalg.slogdet(cov1)[1] - np.linalg.slogdet(cov0)[1])


def _check(draws: np.ndarray, mean, cov, stationary_cov, *, expect_visible_bias: bool):
    """Assertions 1-3 of the module docstring on draws ``[chain, draw, d]``."""
    flat = draws.reshape(-1, DIM)
    fitted_mean, fitted_cov = flat.mean(0), np.cov(flat.T, bias=True)
    ess = min(float(az.ess(draws[..., i])) for i in range(DIM))
    kl_init = _kl(np.zeros(DIM), PRIOR_SCALE**2 * np.eye(DIM), mean, cov)
    kl_true = _kl(fitted_mean, fitted_cov, mean, cov)
    kl_stationary = _kl(fitted_mean, fitted_cov, mean, stationary_cov)
    k = DIM + DIM * (DIM + 1) // 2
    bound = stats.chi2.ppf(1 - P_VALUE, k) / (2 * ess)
    report = f"KL init {kl_init:.3g}, to posterior {kl_true:.3g}, to stationary {kl_stationary:.3g}, bound {bound:.3g}, ESS {ess:.0f}"
    assert kl_true < 1e-2 * kl_init, report
    assert kl_stationary < bound, report
    if expect_visible_bias:
        assert _kl(mean, stationary_cov, mean, cov) > 2 * bound, report  # the bias is larger than the MC error ...
        assert kl_stationary < kl_true, report  # ... and the draws show it


def test_sgld_matches_its_discretised_stationary_law(seed):
    spec, data, mean, cov, precision = _problem(seed)
    step_size = 2.0 / np.linalg.eigvalsh(precision).max()  # eps lambda_max / 4 = 0.5 (stable below 1)
    post = fit(spec, data, engine="sgld", step_size=step_size, num_chains=4, num_warmup=200, num_samples=2000,
               thinning=1, seed=seed, progress=False)
    draws = post.draws["weight"][..., 0, :].numpy()
    stationary = np.linalg.inv(precision - step_size * precision @ precision / 4)
    _check(draws, mean, cov, stationary, expect_visible_bias=True)


def test_sgld_bias_vanishes_with_the_step_size(seed):
    spec, data, mean, cov, precision = _problem(seed)
    lam = np.linalg.eigvalsh(precision)
    for step_size in (0.5 / lam.max(), 0.05 / lam.max()):
        stationary = np.linalg.inv(precision - step_size * precision @ precision / 4)
        # Per eigen-direction the variance ratio is 1 / (1 - eps lambda / 4): KL is O(eps^2).
        ratio = 1 / (1 - step_size * lam / 4)
        assert np.isclose(_kl(mean, stationary, mean, cov), 0.5 * np.sum(ratio - 1 - np.log(ratio)))


def test_sghmc_matches_its_discretised_stationary_law(seed):
    spec, data, mean, cov, precision = _problem(seed)
    lr, mdecay, num_warmup, num_samples = 0.3, 0.2, 500, 1500
    engine = get_engine("sghmc", step_size=lr, mdecay=mdecay)
    generator = torch.Generator().manual_seed(seed)
    for chain in range(3):  # each chain has its own preconditioner, hence its own stationary law
        state = engine.init(spec, spec.init_params(generator=generator), generator=generator)
        for _ in range(num_warmup):
            state, _ = engine.step(spec, state, data, generator=generator, warmup=True)
        draws = []
        for _ in range(num_samples):
            state, _ = engine.step(spec, state, data, generator=generator)
            draws.append(state.params["weight"][0].numpy())
        inv_mass = 1.0 / (np.sqrt(state.v_hat["weight"][0].numpy()) + engine.jitter)
        stationary = _sghmc_stationary_cov(inv_mass, lr**2 / NUM_DATA, mdecay, precision)
        _check(np.stack(draws)[None], mean, cov, stationary, expect_visible_bias=False)


def _sghmc_stationary_cov(inv_mass: np.ndarray, h: float, mdecay: float, precision: np.ndarray) -> np.ndarray:
    """Stationary covariance of full-batch SGHMC with a frozen diagonal inverse mass (module docstring)."""
    hma = h * np.diag(inv_mass) @ precision
    eye = np.eye(DIM)
    f = np.block([[eye - hma, (1 - mdecay) * eye], [-hma, (1 - mdecay) * eye]])
    d = np.diag(np.maximum(2 * h * mdecay * inv_mass - h**2, 1e-16))
    return scipy.linalg.solve_discrete_lyapunov(f, np.block([[d, d], [d, d]]))[:DIM, :DIM]


# ---- one step against a direct numpy transcription of each update rule ---------------------------


def _one_step_setup(seed: int):
    spec, data, *_ = _problem(seed)
    generator = torch.Generator().manual_seed(seed)
    params = spec.init_params(generator=generator)
    w = params["weight"].clone().requires_grad_()
    grad = torch.autograd.grad(spec.log_joint({"weight": w}, data), w)[0].numpy()
    return spec, data, params, grad


def _noise(generator_state, like):
    g = torch.Generator()
    g.set_state(generator_state)
    return torch.randn(like.numel(), generator=g, dtype=like.dtype).reshape(like.shape).numpy()


def test_sgld_step_formula(seed):
    spec, data, params, grad = _one_step_setup(seed)
    engine = get_engine("sgld", step_size=1e-3, temperature=0.5)
    g = torch.Generator().manual_seed(seed)
    state = engine.init(spec, params, generator=g)
    xi = _noise(g.get_state(), params["weight"])
    new, _ = engine.step(spec, state, data, generator=g)
    expected = params["weight"].numpy() + 1e-3 / 2 * grad + np.sqrt(1e-3 * 0.5) * xi
    np.testing.assert_allclose(new.params["weight"].numpy(), expected, rtol=1e-12, atol=1e-14)


def test_sghmc_steps_formula_during_and_after_burnin(seed):
    spec, data, params, _ = _one_step_setup(seed)
    lr, c, jitter = 0.05, 0.1, 1e-16
    engine = get_engine("sghmc", step_size=lr, mdecay=c)
    g = torch.Generator().manual_seed(seed)
    state = engine.init(spec, params, generator=g)
    theta, v = params["weight"].numpy().copy(), np.zeros_like(params["weight"].numpy())
    tau, avg_g, v_hat = np.ones_like(theta), np.ones_like(theta), np.ones_like(theta)
    eps2 = lr**2 / NUM_DATA
    for warmup in (True, True, True, False, False):
        w = torch.from_numpy(theta).requires_grad_()
        grad_u = -torch.autograd.grad(spec.log_joint({"weight": w}, data), w)[0].numpy() / NUM_DATA
        xi = _noise(g.get_state(), params["weight"])
        state, _ = engine.step(spec, state, data, generator=g, warmup=warmup)
        # Springenberg et al. 2016, written out: r and m^-1 from the averages before this step's update;
        # after burn-in the averages, hence the mass, stay frozen.
        r, m_inv = 1 / (tau + 1), 1 / (np.sqrt(v_hat) + jitter)
        if warmup:
            tau = tau - tau * avg_g**2 / (v_hat + jitter) + 1
            avg_g = avg_g - r * avg_g + r * grad_u
            v_hat = v_hat - r * v_hat + r * grad_u**2
        noise_var = np.maximum(2 * eps2 * c * m_inv - eps2**2, 1e-16)
        v = v - lr**2 * m_inv * grad_u - c * v + np.sqrt(noise_var) * xi
        theta = theta + v
        np.testing.assert_allclose(state.params["weight"].numpy(), theta, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(state.momentum["weight"].numpy(), v, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(state.v_hat["weight"].numpy(), v_hat, rtol=1e-12)
        np.testing.assert_allclose(state.tau["weight"].numpy(), tau, rtol=1e-12)


@pytest.mark.parametrize("sampler", ["sgld", "sghmc"])
def test_cyclical_step_formula(sampler, seed):
    spec, data, params, grad = _one_step_setup(seed)
    engine = get_engine("cyclical", sampler=sampler, step_size=1e-3, cycle_length=8, exploration=0.25, mdecay=0.3)
    g = torch.Generator().manual_seed(seed)
    state = engine.init(spec, params, generator=g)
    state = type(state)(params=state.params, momentum=state.momentum, prior=state.prior, step=3)  # sampling phase
    eta = 1e-3 / 2 * (np.cos(np.pi * 3 / 8) + 1)
    xi = _noise(g.get_state(), params["weight"])
    new, info = engine.step(spec, state, data, generator=g)
    theta = params["weight"].numpy()
    if sampler == "sgld":
        expected = theta + eta / 2 * grad + np.sqrt(eta) * xi
    else:  # zero initial momentum
        expected = theta + eta / 2 * grad + np.sqrt(0.3 * eta) * xi
    assert info.sampling and np.isclose(info.step_size, eta)
    np.testing.assert_allclose(new.params["weight"].numpy(), expected, rtol=1e-12, atol=1e-14)
    explore = type(state)(params=state.params, momentum=state.momentum, prior=state.prior, step=8)  # new cycle
    rng = g.get_state()
    new, info = engine.step(spec, explore, data, generator=g)
    assert not info.sampling and torch.equal(g.get_state(), rng)  # no noise drawn while exploring
    np.testing.assert_allclose(new.params["weight"].numpy(), theta + 1e-3 / 2 * grad, rtol=1e-12, atol=1e-14)


def test_minibatch_log_joint_and_gradient_average_to_the_full_batch_ones(seed):
    """The SG engines' minibatch estimate (`log_joint_and_grad`), averaged over a partition of the data
    into equal batches, equals the full-data log joint and gradient, written here independently with
    torch.distributions (a digits-sized classifier with the 1/fan_in layer-wise prior)."""
    from uqkit.inference.base import log_joint_and_grad
    from uqkit.models.likelihoods import Categorical
    from uqkit.models.nets import MLP
    from uqkit.models.priors import LayerwiseGaussian

    g = torch.Generator().manual_seed(seed)
    num_data, batch_size = 60, 12
    x, y = torch.randn(num_data, 8, generator=g), torch.randint(0, 4, (num_data,), generator=g)
    spec = ModelSpec(MLP(8, [16], 4, "tanh").double(), LayerwiseGaussian(1.5, 0.5), Categorical(), num_data)
    params = spec.init_params(generator=g)
    estimates = [log_joint_and_grad("sghmc", spec, spec.prior, params, (x[i:i + batch_size], y[i:i + batch_size]), 0)
                 for i in range(0, num_data, batch_size)]
    mean_value = torch.stack([value for value, _ in estimates]).mean()
    mean_grads = [torch.stack(grads).mean(0) for grads in zip(*(grads for _, grads in estimates))]

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    w1, b1, w2, b2 = (leaves[k] for k in params)  # MLP order: weight, bias, weight, bias
    logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    log_lik = torch.distributions.Categorical(logits=logits).log_prob(y).sum()
    sds = {k: 1.5 / v.shape[1] ** 0.5 if v.ndim == 2 else 0.5 for k, v in leaves.items()}
    log_prior = sum(torch.distributions.Normal(0.0, sds[k]).log_prob(v).sum() for k, v in leaves.items())
    full = log_lik + log_prior
    full_grads = torch.autograd.grad(full, list(leaves.values()))
    torch.testing.assert_close(mean_value, full.detach(), rtol=1e-12, atol=1e-9)
    for got, want in zip(mean_grads, full_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
