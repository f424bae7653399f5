"""The generalised Gaussian distribution (GGD) that BayesCap predicts per output element.

Density ``p(y | mu, alpha, beta) = beta / (2 alpha Gamma(1/beta)) * exp(-(|y - mu| / alpha)^beta)``,
scale ``alpha > 0``, shape ``beta > 0``: ``beta = 2`` is a Gaussian with ``sd = alpha / sqrt(2)``,
``beta = 1`` a Laplace distribution. Same parametrisation as ``scipy.stats.gennorm(beta, loc, scale)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all


def ggd_log_prob(y: Tensor, loc: Tensor, scale: Tensor, beta: Tensor) -> Tensor:
    """Elementwise GGD log density (nats), broadcasting all arguments."""
    z = (y - loc).abs() / scale
    return torch.log(beta) - math.log(2) - torch.log(scale) - torch.lgamma(1 / beta) - z**beta


def ggd_variance(scale: Tensor, beta: Tensor) -> Tensor:
    """Elementwise GGD variance ``alpha^2 Gamma(3/beta) / Gamma(1/beta)`` (squared target units)."""
    return scale**2 * torch.exp(torch.lgamma(3 / beta) - torch.lgamma(1 / beta))


class GeneralizedGaussian(Distribution):
    """Generalised Gaussian with location ``loc``, scale ``scale`` (alpha) and shape ``beta``.

    Implements ``log_prob``, ``cdf``, ``mean``, ``variance`` and ``entropy`` (what `Predictive`
    reads); ``icdf`` is left to `Predictive.quantile`'s bisection on the CDF.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "beta": constraints.positive}
    support = constraints.real
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, beta: Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.scale, self.beta = broadcast_all(loc, scale, beta)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: GeneralizedGaussian | None = None) -> GeneralizedGaussian:
        shape = torch.Size(batch_shape)
        loc, scale, beta = (t.expand(shape) for t in (self.loc, self.scale, self.beta))
        return GeneralizedGaussian(loc, scale, beta, validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return ggd_variance(self.scale, self.beta)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return ggd_log_prob(value, self.loc, self.scale, self.beta)

    def cdf(self, value: Tensor) -> Tensor:
        """``1/2 + sign(y - mu)/2 * P(1/beta, (|y - mu| / alpha)^beta)`` with P the regularised lower incomplete gamma."""
        if self._validate_args:
            self._validate_sample(value)
        diff = value - self.loc
        tail = torch.special.gammainc(1 / self.beta, (diff.abs() / self.scale) ** self.beta)
        return 0.5 + 0.5 * torch.sign(diff) * tail

    def entropy(self) -> Tensor:
        """``1/beta - log(beta / (2 alpha Gamma(1/beta)))`` nats."""
        return 1 / self.beta - torch.log(self.beta) + math.log(2) + torch.log(self.scale) + torch.lgamma(1 / self.beta)
