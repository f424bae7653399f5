"""NNGPKernel against finite random networks (Monte Carlo), numerical integration (scipy) and gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from uqkit.models import NNGPKernel
from uqkit.testing.checks import assert_mcse_close

WIDTH = 2048
NUM_NETWORKS = 64


def _inputs(generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(4, 3, generator=generator)
    x[3] = 0.0  # a zero input: K0(x, x) = bias_var only
    return x


def _network_kernel_draws(x, depth, weight_var, bias_var, activation, generator) -> torch.Tensor:
    """``[NUM_NETWORKS, P]`` output covariances of random finite networks, one row per network.

    Each row is ``E[f(x_i) f(x_j) | hidden layers]`` for one draw of the hidden layers (width 2048):
    the read-out layer is integrated exactly, ``bias_var + weight_var * mean_h phi_h(x_i) phi_h(x_j)``,
    so each network gives an unbiased, low-variance estimate of the finite-width kernel. The networks
    run in float32 (4x cheaper draws; round-off ~1e-6, far below the Monte Carlo error).
    """
    phi = torch.relu if activation == "relu" else torch.erf
    i, j = torch.triu_indices(x.shape[0], x.shape[0])
    rows = []
    for _ in range(NUM_NETWORKS):
        h, fan_in = x.float(), x.shape[1]
        for _ in range(depth):
            w = torch.randn(fan_in, WIDTH, generator=generator, dtype=torch.float32) * math.sqrt(weight_var / fan_in)
            b = torch.randn(WIDTH, generator=generator, dtype=torch.float32) * math.sqrt(bias_var)
            h, fan_in = phi(h @ w + b), WIDTH
        cov = bias_var + weight_var * (h.double() @ h.double().T) / fan_in
        rows.append(cov[i, j])
    return torch.stack(rows)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_kernel_matches_wide_random_networks(activation, generator):
    x = _inputs(generator)
    kernel = NNGPKernel(depth=2, weight_var=1.6, bias_var=0.2, activation=activation)
    draws = _network_kernel_draws(x, 2, 1.6, 0.2, activation, generator)
    i, j = torch.triu_indices(4, 4)
    full = kernel(x).to_dense().detach()
    exact = full[i, j]
    # 3 standard errors are small: under 3% of each entry's natural scale sqrt(K(x_i, x_i) K(x_j, x_j)).
    se = draws.std(0) / math.sqrt(NUM_NETWORKS)
    assert bool((3 * se < 0.03 * torch.sqrt(full.diagonal()[i] * full.diagonal()[j])).all())
    assert_mcse_close(draws.unsqueeze(0).numpy(), exact.numpy(), p_value=0.01)


def _relu_moment(k11: float, k12: float, k22: float) -> float:
    """``E[relu(u) relu(v)]`` by quadrature over u, with the inner Gaussian integral over v | u in closed form."""
    s1 = math.sqrt(k11)
    slope, cond_sd = k12 / k11, math.sqrt(max(k22 - k12**2 / k11, 1e-300))

    def integrand(u: float) -> float:
        mu = slope * u
        inner = mu * stats.norm.cdf(mu / cond_sd) + cond_sd * stats.norm.pdf(mu / cond_sd)  # E[relu(v) | u]
        return u * inner * stats.norm.pdf(u / s1) / s1

    return integrate.quad(integrand, 0, 12 * s1, epsabs=1e-12, epsrel=1e-10)[0]


def _erf_moment(k11: float, k12: float, k22: float) -> float:
    """``E[erf(u) erf(v)]`` by quadrature over u, with ``E[erf(v) | u] = erf(mu / sqrt(1 + 2 tau^2))`` inside.

    (``v | u ~ N(mu, tau^2)``; the inner identity is the Gaussian smoothing of erf, itself checked below.)
    """
    s1 = math.sqrt(k11)
    slope, cond_var = k12 / k11, max(k22 - k12**2 / k11, 0.0)

    def integrand(u: float) -> float:
        return special.erf(u) * special.erf(slope * u / math.sqrt(1 + 2 * cond_var)) * stats.norm.pdf(u / s1) / s1

    return integrate.quad(integrand, -12 * s1, 12 * s1, epsabs=1e-12, epsrel=1e-10, limit=200)[0]


def test_gaussian_smoothing_of_erf():
    """``E[erf(v)] = erf(mu / sqrt(1 + 2 tau^2))`` for ``v ~ N(mu, tau^2)``, by direct quadrature."""
    for mu, tau in [(0.7, 0.5), (-1.2, 2.0)]:
        direct = integrate.quad(lambda v: special.erf(v) * stats.norm.pdf(v, mu, tau), mu - 12 * tau, mu + 12 * tau,
                                epsabs=1e-12)[0]
        assert direct == pytest.approx(special.erf(mu / math.sqrt(1 + 2 * tau**2)), abs=1e-10)


@pytest.mark.parametrize(("activation", "moment", "tol"), [("relu", _relu_moment, 1e-8), ("erf", _erf_moment, 1e-8)])
def test_recursion_matches_numerical_integration(activation, moment, tol, generator):
    """Depth 2 built layer by layer from quadrature of the activation's second moments."""
    x = torch.randn(3, 2, generator=generator)
    w, b = 1.3, 0.15
    k = (b + w * (x @ x.T) / 2).numpy()
    for _ in range(2):
        k = np.array([[b + w * moment(k[p, p], k[p, q], k[q, q]) for q in range(3)] for p in range(3)])
    got = NNGPKernel(depth=2, weight_var=w, bias_var=b, activation=activation)(x).to_dense().detach().numpy()
    np.testing.assert_allclose(got, k, rtol=tol, atol=tol)


def test_depth_zero_is_linear_kernel(generator):
    x1, x2 = torch.randn(5, 4, generator=generator), torch.randn(3, 4, generator=generator)
    got = NNGPKernel(depth=0, weight_var=2.0, bias_var=0.5)(x1, x2).to_dense()
    torch.testing.assert_close(got, 0.5 + 2.0 * x1 @ x2.T / 4)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_gradcheck_hyperparameters_and_inputs(activation, generator):
    kernel = NNGPKernel(depth=3, weight_var=1.4, bias_var=0.3, activation=activation)
    x1 = torch.randn(4, 3, generator=generator, requires_grad=True)
    x2 = torch.randn(3, 3, generator=generator, requires_grad=True)
    raw_w = kernel.raw_weight_var.detach().clone().requires_grad_()
    raw_b = kernel.raw_bias_var.detach().clone().requires_grad_()

    def full(rw, rb, a, c):
        params = {"raw_weight_var": rw, "raw_bias_var": rb}
        return torch.func.functional_call(kernel, params, (a, c)).to_dense()

    def diag(rw, rb, a):
        return torch.func.functional_call(kernel, {"raw_weight_var": rw, "raw_bias_var": rb}, (a,), {"diag": True})

    assert torch.autograd.gradcheck(full, (raw_w, raw_b, x1, x2))
    assert torch.autograd.gradcheck(diag, (raw_w, raw_b, x1))


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_diag_batch_and_psd(activation, generator):
    x = torch.randn(2, 6, 3, generator=generator)
    x[0, 2] = 0.0
    kernel = NNGPKernel(depth=2, activation=activation, batch_shape=(2,))
    kernel.weight_var = torch.tensor([1.0, 2.5]).view(2, 1, 1)
    kernel.bias_var = torch.tensor([0.1, 0.4]).view(2, 1, 1)
    full = kernel(x).to_dense().detach()
    assert full.shape == (2, 6, 6)
    torch.testing.assert_close(kernel(x, diag=True).detach(), full.diagonal(dim1=-2, dim2=-1))
    for member, (w, b) in enumerate([(1.0, 0.1), (2.5, 0.4)]):
        single = NNGPKernel(depth=2, weight_var=w, bias_var=b, activation=activation)(x[member]).to_dense().detach()
        torch.testing.assert_close(full[member], single)
    assert bool(torch.isfinite(full).all())
    assert float(torch.linalg.eigvalsh(full).min()) > 0


def test_zero_inputs_have_finite_gradients():
    kernel = NNGPKernel(depth=2, weight_var=1.0, bias_var=1e-6)
    x = torch.zeros(3, 2, requires_grad=True)
    k = kernel(x).to_dense()
    k.sum().backward()
    assert bool(torch.isfinite(k).all()) and bool(torch.isfinite(x.grad).all())
    assert bool(torch.isfinite(kernel.raw_weight_var.grad).all())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"depth": -1}, "depth"), ({"depth": 1.5}, "depth"), ({"activation": "tanh"}, "activation"),
     ({"weight_var": 0.0}, "weight_var"), ({"bias_var": float("nan")}, "bias_var")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        NNGPKernel(**kwargs)
