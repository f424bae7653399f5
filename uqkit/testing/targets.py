"""Log densities with known answers, for testing and benchmarking samplers.

Each log density takes positions ``[..., D]`` and returns ``[...]`` (batched over chains).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianTarget:
    """N(mean, covariance) with its exact moments.

    Attributes:
        mean: ``[D]``.
        covariance: ``[D, D]`` symmetric positive definite.
    """

    mean: Tensor
    covariance: Tensor
    precision: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", torch.linalg.inv(self.covariance))

    @property
    def variance(self) -> Tensor:
        """``[D]``."""
        return self.covariance.diagonal()

    @property
    def correlation(self) -> Tensor:
        """``[D, D]``."""
        sd = self.variance.sqrt()
        return self.covariance / (sd[:, None] * sd[None, :])

    def log_density(self, z: Tensor) -> Tensor:
        """Unnormalised log density ``[...]`` at ``z [..., D]``."""
        d = z - self.mean
        return -0.5 * ((d @ self.precision) * d).sum(-1)


def correlated_gaussian(dim: int = 2, *, correlation: float = 0.9, scale_ratio: float = 10.0) -> GaussianTarget:
    """A Gaussian whose coordinates are equicorrelated and whose scales span ``scale_ratio`` (log-spaced).

    Mean ``linspace(-1, 1, dim)``; standard deviations ``logspace`` from 1 to ``scale_ratio``.
    """
    sd = torch.logspace(0.0, math.log10(scale_ratio), dim, dtype=torch.float64)
    corr = torch.full((dim, dim), correlation, dtype=torch.float64).fill_diagonal_(1.0)
    return GaussianTarget(torch.linspace(-1.0, 1.0, dim, dtype=torch.float64), corr * sd[:, None] * sd[None, :])


@dataclass(frozen=True)
class LinearRegression:
    """Conjugate Bayesian linear regression: w ~ N(0, prior_sd² I), y | x, w ~ N(x w, noise_sd²).

    The log density is computed from the data (likelihood + prior), the posterior from the closed form
    Σ = (xᵀx/σ² + I/τ²)⁻¹, μ = Σ xᵀy/σ².

    Attributes:
        x: ``[N, D]`` design.
        y: ``[N]`` responses.
        noise_sd: σ.
        prior_sd: τ.
    """

    x: Tensor
    y: Tensor
    noise_sd: float
    prior_sd: float

    def log_density(self, w: Tensor) -> Tensor:
        """Unnormalised log posterior ``[...]`` at weights ``w [..., D]``."""
        resid = self.y - w @ self.x.T
        return -0.5 * (resid**2).sum(-1) / self.noise_sd**2 - 0.5 * (w**2).sum(-1) / self.prior_sd**2

    @property
    def posterior(self) -> GaussianTarget:
        eye = torch.eye(self.x.shape[1], dtype=self.x.dtype)
        precision = self.x.T @ self.x / self.noise_sd**2 + eye / self.prior_sd**2
        covariance = torch.linalg.inv(precision)
        covariance = 0.5 * (covariance + covariance.T)
        return GaussianTarget(covariance @ self.x.T @ self.y / self.noise_sd**2, covariance)


def linear_regression(num_data: int = 50, dim: int = 3, *, noise_sd: float = 1.0, prior_sd: float = 1.0,
                      seed: int = 0) -> LinearRegression:
    """Simulated data: x ~ N(0, I) ``[num_data, dim]``, true weights ~ N(0, prior_sd²), y = x w + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_data, dim, generator=g, dtype=torch.float64)
    w = prior_sd * torch.randn(dim, generator=g, dtype=torch.float64)
    y = x @ w + noise_sd * torch.randn(num_data, generator=g, dtype=torch.float64)
    return LinearRegression(x, y, noise_sd, prior_sd)


#: Eight schools (Rubin 1981): estimated treatment effects and their standard errors.
EIGHT_SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=torch.float64)
EIGHT_SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)


def _eight_schools_hyper(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mu ~ N(0, 5²), tau ~ HalfCauchy(5) on log tau (with the Jacobian); returns mu, tau, the rest, log prior."""
    mu, log_tau, rest = z[..., 0], z[..., 1], z[..., 2:]
    tau = log_tau.exp()
    log_prior = -0.5 * (mu / 5.0) ** 2 - torch.log1p((tau / 5.0) ** 2) + log_tau
    return mu, tau, rest, log_prior


def eight_schools_noncentered(z: Tensor) -> Tensor:
    """Non-centred eight schools ``[...]`` at ``z [..., 10] = (mu, log tau, eta_1..8)``; theta = mu + tau·eta."""
    y, sigma = EIGHT_SCHOOLS_Y.to(z.dtype), EIGHT_SCHOOLS_SIGMA.to(z.dtype)
    mu, tau, eta, log_prior = _eight_schools_hyper(z)
    theta = mu[..., None] + tau[..., None] * eta
    return log_prior - 0.5 * (eta**2).sum(-1) - 0.5 * (((y - theta) / sigma) ** 2).sum(-1)


def eight_schools_centered(z: Tensor) -> Tensor:
    """Centred eight schools ``[...]`` at ``z [..., 10] = (mu, log tau, theta_1..8)``: the funnel that
    makes NUTS diverge."""
    y, sigma = EIGHT_SCHOOLS_Y.to(z.dtype), EIGHT_SCHOOLS_SIGMA.to(z.dtype)
    mu, tau, theta, log_prior = _eight_schools_hyper(z)
    log_theta = -0.5 * (((theta - mu[..., None]) / tau[..., None]) ** 2).sum(-1) - 8 * tau.log()
    return log_prior + log_theta - 0.5 * (((y - theta) / sigma) ** 2).sum(-1)
