"""Weight priors with one hyperparameter set per parameter tensor, as fitted by `uqkit.models.match_prior`.

* `PerLayerGaussian` (GPi-G): ``theta_k ~ N(0, scale_k^2 / fan_in_k)``, one ``scale_k`` per tensor
  (each layer's weight and bias), the per-layer form of `LayerwiseGaussian`.
* `PerLayerHierarchicalGaussian` (GPi-H): the per-layer form of `HierarchicalLayerwiseGaussian`:
  precision ``tau_k ~ Gamma(shape_k, rate_k)`` and ``theta_k | tau_k ~ N(0, 1 / (tau_k fan_in_k))``,
  with the conjugate Gibbs update ``tau_k | theta ~ Gamma(shape_k + n_k / 2, rate_k + fan_in_k sum theta_k^2 / 2)``
  (Tran et al. 2022, METHODS.md section 1).

Both follow the `Prior` protocol of `uqkit.models.priors` (and `GibbsPrior` for the hierarchical one),
so every engine that takes a prior takes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from uqkit._checks import check_positive
from uqkit.models.priors import (
    ConditionalGaussian,
    IndependentGaussian,
    Params,
    _gaussian_draws,
    _variances_like,
    fan_in,
    gamma_draws,
)


def _lookup(table: dict, name: str, what: str) -> object:
    if name not in table:
        raise ValueError(f"params: the prior has no {what} for parameter {name!r} (it knows {sorted(table)})")
    return table[name]


@dataclass(frozen=True, eq=False)
class PerLayerGaussian(IndependentGaussian):
    """``theta_k ~ N(0, scales[k]^2 / fan_in_k)`` independently for every parameter tensor ``k``.

    Args:
        scales: per parameter name, the standard deviation times sqrt(fan_in) (> 0); for biases
            (fan-in 1) simply their standard deviation.
    """

    scales: dict[str, float]

    def __post_init__(self) -> None:
        for name, value in self.scales.items():
            check_positive(value, f"scales[{name!r}]")

    def variance(self, name: str, shape: torch.Size) -> float:
        """Prior variance of each entry of parameter ``name``."""
        return float(_lookup(self.scales, name, "scale")) ** 2 / fan_in(shape)

    def tensor_variances(self, params: Params) -> Tensor:
        return _variances_like([self.variance(k, p.shape) for k, p in params.items()], params)

    def sample(self, num: int, *, generator: torch.Generator, template: Params) -> Params:
        scales = {k: math.sqrt(self.variance(k, t.shape)) for k, t in template.items()}
        return _gaussian_draws(num, template, scales, generator)

    def state(self) -> dict[str, Tensor]:
        return {}

    def with_state(self, tensors: dict[str, Tensor]) -> PerLayerGaussian:
        return self


@dataclass(frozen=True, eq=False)
class PerLayerHierarchicalGaussian(ConditionalGaussian):
    """Per-tensor inverse-gamma / Gaussian prior (see the module docstring).

    Args:
        shapes: Gamma shape of each tensor's precision (> 0), by parameter name.
        rates: Gamma rate of each tensor's precision (> 0), by parameter name.
        variances: current ``sigma_k^2 = 1 / tau_k`` (0-d tensors), the Gibbs state; a tensor missing
            here uses ``rates[k] / shapes[k]`` (the inverse of the mean precision).
    """

    shapes: dict[str, float]
    rates: dict[str, float]
    variances: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.shapes) != set(self.rates):
            raise ValueError(f"rates: expected the same parameter names as shapes, got {sorted(self.rates)} "
                             f"and {sorted(self.shapes)}")
        for name in self.shapes:
            check_positive(self.shapes[name], f"shapes[{name!r}]")
            check_positive(self.rates[name], f"rates[{name!r}]")

    def variance(self, name: str, t: Tensor) -> Tensor:
        """Current prior variance of each entry of parameter ``name`` (sigma^2 / fan_in)."""
        sigma2 = self.variances.get(name)
        if sigma2 is None:
            rate, shape = _lookup(self.rates, name, "rate"), self.shapes[name]
            sigma2 = torch.tensor(rate / shape, dtype=t.dtype, device=t.device)
        return sigma2.to(t.dtype) / fan_in(t.shape)

    def sample(self, num: int, *, generator: torch.Generator, template: Params) -> Params:
        """Joint draws: a fresh precision per draw and tensor, then the weights given it."""
        scales = {}
        for k, t in template.items():
            shape, rate = float(_lookup(self.shapes, k, "shape")), float(self.rates[k])
            tau = gamma_draws(torch.full((num,), shape), torch.full((num,), rate), generator=generator)
            scales[k] = (1.0 / (tau * fan_in(t.shape))).sqrt().to(t.dtype)
        return _gaussian_draws(num, template, scales, generator)

    def conditional(self, params: Params) -> tuple[dict[str, float], dict[str, float]]:
        """Gamma ``(shape, rate)`` of each precision given ``params`` (the conjugate update)."""
        shapes, rates = {}, {}
        for k, p in params.items():
            shapes[k] = float(_lookup(self.shapes, k, "shape")) + p.numel() / 2
            rates[k] = float(self.rates[k]) + fan_in(p.shape) * float(p.detach().double().square().sum()) / 2
        return shapes, rates

    def gibbs_update(self, params: Params, *, generator: torch.Generator) -> PerLayerHierarchicalGaussian:
        """New prior with every ``sigma_k^2`` drawn from its conditional given ``params``."""
        shapes, rates = self.conditional(params)
        names = list(shapes)
        tau = gamma_draws(torch.tensor([shapes[k] for k in names]), torch.tensor([rates[k] for k in names]),
                          generator=generator)
        return self.with_state({k: (1.0 / tau[i]).to(params[k].dtype) for i, k in enumerate(names)})

    def state(self) -> dict[str, Tensor]:
        return dict(self.variances)

    def with_state(self, tensors: dict[str, Tensor]) -> PerLayerHierarchicalGaussian:
        return PerLayerHierarchicalGaussian(self.shapes, self.rates, dict(tensors))
