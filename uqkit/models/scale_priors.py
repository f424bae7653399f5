"""Priors over a GP's output scale that torch lacks: the Burr type XII distribution.

Burr XII(c, d) on s > 0 has CDF ``F(s) = 1 - (1 + s^c)^-d`` and density
``c d s^(c-1) (1 + s^c)^-(d+1)`` (Burr, "Cumulative frequency functions", Ann. Math. Stat. 1942;
``scipy.stats.burr12`` uses the same parameters). Its mean is finite only when ``c d > 1``. Lee et al.
(ICLR 2022) use it as a heavy-tailed scale prior (METHODS.md section 5: ``c = 2``, ``d in {1, 2, 3}``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all


class BurrXII(Distribution):
    """Burr type XII distribution with shape parameters ``c > 0`` and ``d > 0``.

    Sampled by inverting the CDF: ``s = ((1 - u)^(-1/d) - 1)^(1/c)``, ``u ~ U(0, 1)``.

    Args:
        c: first shape parameter (> 0).
        d: second shape parameter (> 0).
    """

    arg_constraints = {"c": constraints.positive, "d": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, c: float | Tensor, d: float | Tensor, validate_args: bool | None = None) -> None:
        self.c, self.d = broadcast_all(c, d)
        super().__init__(self.c.shape, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        """``d B(d - 1/c, 1 + 1/c)``, infinite when ``c d <= 1``."""
        c, d = self.c, self.d
        log_beta = torch.lgamma(d - 1 / c) + torch.lgamma(1 + 1 / c) - torch.lgamma(d + 1)
        return torch.where(c * d > 1, d * torch.exp(log_beta), torch.full_like(c, float("inf")))

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:
        """Draws of shape ``sample_shape + batch_shape`` (global RNG, as every torch distribution)."""
        shape = self._extended_shape(torch.Size(sample_shape))
        u = torch.rand(shape, dtype=self.c.dtype, device=self.c.device)
        return self.icdf(u)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log density at ``value > 0``."""
        if self._validate_args:
            self._validate_sample(value)
        c, d = self.c, self.d
        return torch.log(c) + torch.log(d) + (c - 1) * torch.log(value) - (d + 1) * torch.log1p(value**c)

    def cdf(self, value: Tensor) -> Tensor:
        """``1 - (1 + s^c)^-d``."""
        return -torch.expm1(-self.d * torch.log1p(value**self.c))

    def icdf(self, value: Tensor) -> Tensor:
        """Quantile at levels ``value`` in (0, 1)."""
        return torch.expm1(-torch.log1p(-value) / self.d) ** (1 / self.c)
