"""GPPrior: draws against the kernel within Monte Carlo error, hyperpriors, jitter escalation, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate, stats

with warnings.catch_warnings():  # linear_operator (under gpytorch) calls the deprecated torch.jit.script at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import gpytorch

from uqkit.models import GPPrior


def _rbf(lengthscale: float = 0.7, outputscale: float = 1.3, ard: int | None = None) -> gpytorch.kernels.Kernel:
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=ard))
    kernel.base_kernel.lengthscale = lengthscale
    kernel.outputscale = outputscale
    return kernel


def _assert_cov_within_mc(draws: torch.Tensor, cov: torch.Tensor) -> None:
    """Empirical E[f f^T] of zero-mean Gaussian draws ``[S, n]`` vs ``cov``: 4.5 standard errors per entry."""
    num = draws.shape[0]
    empirical = draws.T @ draws / num
    se = ((torch.outer(cov.diagonal(), cov.diagonal()) + cov.square()) / num).sqrt()  # Var(f_i f_j) = K_ii K_jj + K_ij^2
    assert bool(((empirical - cov).abs() <= 4.5 * se).all()), float(((empirical - cov).abs() / se).max())


def test_rbf_covariance_matches_direct_formula(generator):
    x = torch.randn(6, 2, generator=generator)
    gp = GPPrior(_rbf(0.7, 1.3))
    direct = 1.3 * torch.exp(-torch.cdist(x, x).square() / (2 * 0.7**2))
    torch.testing.assert_close(gp.covariance(x), direct)


@pytest.mark.parametrize("kernel", [
    _rbf(0.5, 2.0, ard=2),
    gpytorch.kernels.PeriodicKernel() + gpytorch.kernels.MaternKernel(nu=1.5),
    gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()) * gpytorch.kernels.MaternKernel(nu=2.5),
], ids=["ard-rbf", "periodic+matern", "rbf*matern"])
def test_draws_have_the_kernel_covariance(kernel, generator):
    x = torch.rand(5, 2, generator=generator) * 2
    gp = GPPrior(kernel)
    draws = gp.sample_functions(x, 20000, generator=generator)
    assert draws.shape == (20000, 5) and draws.dtype == torch.float64
    _assert_cov_within_mc(draws, gp.covariance(x) + gp.jitter * torch.eye(5))


def test_batched_inputs_give_one_covariance_per_set(generator):
    x = torch.rand(3, 4, 1, generator=generator) * 3
    gp = GPPrior(_rbf())
    draws = gp.sample_functions(x, 20000, generator=generator)
    assert draws.shape == (3, 20000, 4)
    cov = gp.covariance(x)
    assert cov.shape == (3, 4, 4)
    for b in range(3):
        _assert_cov_within_mc(draws[b], cov[b] + gp.jitter * torch.eye(4))


def test_draws_are_reproducible_from_the_generator():
    gp = GPPrior(_rbf(), hyperpriors={"lengthscale": torch.distributions.LogNormal(0.0, 0.5)})
    x = torch.linspace(0, 1, 7)[:, None]
    a = gp.sample_functions(x, 3, generator=torch.Generator().manual_seed(4))
    b = gp.sample_functions(x, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lengthscale_hyperprior_gives_the_mixture_covariance(generator):
    """Per-draw lengthscales: E[f(x) f(x')] = E_l[k_l(x, x')], computed by quadrature over the LogNormal."""
    mu, sigma, d = math.log(0.5), 0.6, 1.0
    gp = GPPrior(_rbf(1.0, 1.0), hyperpriors={"lengthscale": torch.distributions.LogNormal(mu, sigma)})
    x = torch.tensor([[0.0], [d]])
    draws = gp.sample_functions(x, 40000, generator=generator)
    products = draws[:, 0] * draws[:, 1]
    density = stats.lognorm(s=sigma, scale=math.exp(mu)).pdf
    expected, _ = integrate.quad(lambda ell: density(ell) * math.exp(-d**2 / (2 * ell**2)), 0, np.inf)
    se = float(products.std() / math.sqrt(products.numel()))
    assert abs(float(products.mean()) - expected) < 4 * se
    # a single fixed lengthscale (the kernel's own, 1.0) would give exp(-1/2) = 0.61, far from the mixture
    assert abs(math.exp(-0.5) - expected) > 10 * se


def test_outputscale_hyperprior_makes_a_scale_mixture(generator):
    """Var f(x) = E[s] and E f^4 = 3 E[s^2] for s ~ LogNormal(0.1, 0.5) drawn per function."""
    mu, sigma = 0.1, 0.5
    gp = GPPrior(_rbf(), hyperpriors={"outputscale": torch.distributions.LogNormal(mu, sigma)})
    f = gp.sample_functions(torch.zeros(1, 1), 40000, generator=generator)[:, 0]
    second, fourth = f.square(), f.pow(4)
    assert abs(float(second.mean()) - math.exp(mu + sigma**2 / 2)) < 4 * float(second.std()) / 200
    assert abs(float(fourth.mean()) - 3 * math.exp(2 * mu + 2 * sigma**2)) < 4 * float(fourth.std()) / 200


def test_ard_hyperprior_batched_shapes(generator):
    gp = GPPrior(_rbf(ard=3), hyperpriors={"lengthscale": torch.distributions.LogNormal(torch.zeros(3), 1.0),
                                           "outputscale": torch.distributions.LogNormal(0.1, 1.0)})
    assert gp.sample_functions(torch.randn(2, 10, 3, generator=generator), 5, generator=generator).shape == (2, 5, 10)


class _ShiftedRBF(gpytorch.kernels.RBFKernel):
    """RBF minus ``shift`` on the diagonal: not positive definite for ``shift`` above its smallest eigenvalue."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x1, x2, **params):
        return super().forward(x1, x2, **params) - self.shift * torch.eye(x1.shape[-2], dtype=x1.dtype)


def test_jitter_escalates_with_a_warning_naming_it(generator):
    x = torch.linspace(0, 1, 8)[:, None]
    gp = GPPrior(_ShiftedRBF(5e-4), jitter=1e-6, max_jitter=1e-2)
    with pytest.warns(RuntimeWarning, match="used jitter up to 0.001"):
        draws = gp.sample_functions(x, 4, generator=generator)
    assert bool(torch.isfinite(draws).all())


def test_non_positive_definite_kernel_beyond_max_jitter_is_a_clear_error(generator):
    gp = GPPrior(_ShiftedRBF(1.0), max_jitter=1e-2)
    with pytest.raises(ValueError, match=r"^kernel: the covariance is not positive definite even with jitter 0.01"):
        gp.sample_functions(torch.linspace(0, 1, 8)[:, None], 4, generator=generator)


def test_bad_input(generator):
    gp = GPPrior(_rbf())
    with pytest.raises(ValueError, match="^x: expected finite values"):
        gp.sample_functions(torch.tensor([[0.0], [float("nan")]]), 2, generator=generator)
    with pytest.raises(ValueError, match="^x: expected a 2-D or 3-D array"):
        gp.sample_functions(torch.zeros(3), 2, generator=generator)
    with pytest.raises(ValueError, match="^num: expected a positive integer"):
        gp.sample_functions(torch.zeros(3, 1), 0, generator=generator)
    with pytest.raises(TypeError, match="^kernel: expected a gpytorch"):
        GPPrior(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="^hyperpriors: expected keys"):
        GPPrior(_rbf(), hyperpriors={"period": torch.distributions.LogNormal(0.0, 1.0)})
    with pytest.raises(ValueError, match="^hyperpriors: the kernel RBFKernel has no 'outputscale'"):
        GPPrior(gpytorch.kernels.RBFKernel(), hyperpriors={"outputscale": torch.distributions.LogNormal(0.0, 1.0)})
    with pytest.raises(ValueError, match="^max_jitter: expected a value >= jitter"):
        GPPrior(_rbf(), jitter=1e-3, max_jitter=1e-4)
    bad_shape = GPPrior(_rbf(ard=2), hyperpriors={"lengthscale": torch.distributions.LogNormal(torch.zeros(3), 1.0)})
    with pytest.raises(ValueError, match="^hyperpriors: a 'lengthscale' draw of shape"):
        bad_shape.sample_functions(torch.zeros(4, 2), 2, generator=generator)


def test_info_and_repr_describe_kernel_and_hyperparameters():
    gp = GPPrior(_rbf(0.7, 1.3), hyperpriors={"outputscale": torch.distributions.LogNormal(0.0, 1.0)})
    info = gp.info()
    assert info["hyperparameters"]["base_kernel.lengthscale"] == pytest.approx([0.7])
    assert info["hyperparameters"]["outputscale"] == pytest.approx([1.3])
    assert "RBFKernel" in info["kernel"] and "outputscale" in info["hyperpriors"]
    assert "ScaleKernel" in repr(gp) and "hyperpriors" in repr(gp)
