"""Weight priors over a network's parameters ``Params = dict[str, Tensor]``.

Every prior scores a parameter dict (``log_prob -> scalar``) and draws parameter dicts shaped like a
template (``sample -> leaves [num, *shape]``). Priors are frozen dataclasses; a prior with state that
changes during inference (the hierarchical prior's layer variances) returns a new prior from
``gibbs_update`` and exposes its state as tensors (``state()`` / ``with_state()``) for checkpoints.
The Gaussian priors (`IndependentGaussian`: zero mean, one variance per tensor) also add their
gradient in closed form into given gradients, in place (``add_grad_log_prob_``), which
`ModelSpec.log_joint_and_grad` uses instead of autograd.

"Fan-in" of a parameter tensor is the product of all dimensions but the first (``in_features`` for an
``nn.Linear`` weight ``[out, in]``, ``in_channels * kernel`` for a convolution); 1-D tensors (biases)
have fan-in 1, so they are never rescaled.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from uqkit._checks import check_positive

Params = dict[str, Tensor]


@runtime_checkable
class Prior(Protocol):
    """A distribution over parameter dicts."""

    def log_prob(self, params: Params) -> Tensor:
        """Scalar log density of ``params`` (leaves with their natural shapes)."""
        ...

    def sample(self, num: int, *, generator: torch.Generator, template: Params) -> Params:
        """``num`` draws shaped like ``template``: leaves ``[num, *shape]``."""
        ...

    def state(self) -> dict[str, Tensor]:
        """Tensors that change during inference (empty for fixed priors)."""
        ...

    def with_state(self, tensors: dict[str, Tensor]) -> Prior:
        """The same prior with its state replaced by ``tensors`` (inverse of `state`)."""
        ...


@runtime_checkable
class GibbsPrior(Prior, Protocol):
    """A prior whose hyperparameters are resampled from their conditional given the weights."""

    def gibbs_update(self, params: Params, *, generator: torch.Generator) -> GibbsPrior: ...


@runtime_checkable
class AnalyticGradPrior(Prior, Protocol):
    """A prior that adds the gradient of its log density to given gradients in closed form, in place
    (one pass over the weights, no allocation: cheaper than autograd). `ModelSpec` looks the method up
    by name, so a prior needs only to define it."""

    def add_grad_log_prob_(self, params: Params, grads: Params) -> None:
        """``grads[k] += d log_prob / d params[k]`` in place, for every ``k`` in ``params``."""
        ...


def fan_in(shape: torch.Size | tuple[int, ...]) -> int:
    """Product of all dimensions but the first (1 for scalars and 1-D tensors)."""
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def _gaussian_log_density(tensors: list[Tensor], variances: Tensor) -> Tensor:
    """``sum_k sum_i log N(t_k,i | 0, variances[k])`` for K tensors ``t_k`` and ``variances [K]``."""
    # ||t_k||^2 through the norm: one pass forward and one backward (square().sum() takes four). One
    # `vector_norm` per tensor costs the same as a fused `torch._foreach_norm` (memory bound: 28 vs 27 us
    # on a 784-200-200-10 MLP), which, unlike it, works under `torch.vmap`; the per-tensor scalar
    # arithmetic is vectorised over the K tensors.
    sum_sq = torch.stack([torch.linalg.vector_norm(t) for t in tensors]).square()
    numel = variances.new_tensor([t.numel() for t in tensors])
    return -0.5 * (sum_sq / variances + numel * torch.log(variances * (2 * math.pi))).sum()


def _variances_like(values: list[float], params: Params) -> Tensor:
    """``[K]`` tensor of per-tensor variances in the dtype and on the device of ``params``."""
    first = next(iter(params.values()))
    return torch.tensor(values, dtype=first.dtype, device=first.device)


class IndependentGaussian(ABC):
    """Zero-mean Gaussian prior with independent entries and one variance per parameter tensor (a base class).

    Subclasses give the variances (`tensor_variances`); this gives the log density (one norm per
    tensor, the rest vectorised over tensors) and its closed-form gradient ``-theta_k / var_k``, added
    in place into given gradients (`AnalyticGradPrior`).
    """

    @abstractmethod
    def tensor_variances(self, params: Params) -> Tensor:
        """``[K]``: the prior variance of every entry of each of the K tensors of ``params`` (in order),
        in their dtype."""

    def log_prob(self, params: Params) -> Tensor:
        """Scalar ``sum_k sum_i log N(params[k]_i | 0, var_k)``."""
        return _gaussian_log_density(list(params.values()), self.tensor_variances(params))

    def add_grad_log_prob_(self, params: Params, grads: Params) -> None:
        """``grads[k] -= params[k] / var_k`` in place (the gradient of `log_prob`), one pass per tensor."""
        for (name, p), var in zip(params.items(), self.tensor_variances(params).tolist()):
            grads[name].add_(p, alpha=-1.0 / var)


def _gaussian_draws(num: int, template: Params, scales: dict[str, Tensor | float], generator: torch.Generator) -> Params:
    """Leaves ``[num, *shape] ~ N(0, scale^2)``; ``scales[name]`` is a float or a ``[num]`` tensor."""
    out = {}
    for name, t in template.items():
        z = torch.randn((num, *t.shape), generator=generator, dtype=t.dtype, device=t.device)
        scale = torch.as_tensor(scales[name], dtype=t.dtype, device=t.device)
        out[name] = z * scale.reshape(-1, *([1] * t.ndim)) if scale.ndim else z * scale
    return out


@dataclass(frozen=True)
class IsotropicGaussian(IndependentGaussian):
    """Every weight i.i.d. ``N(0, scale^2)``.

    Args:
        scale: prior standard deviation (> 0), in weight units.
    """

    scale: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.scale, "scale")

    def tensor_variances(self, params: Params) -> Tensor:
        return _variances_like([float(self.scale) ** 2] * len(params), params)

    def sample(self, num: int, *, generator: torch.Generator, template: Params) -> Params:
        return _gaussian_draws(num, template, dict.fromkeys(template, self.scale), generator)

    def state(self) -> dict[str, Tensor]:
        return {}

    def with_state(self, tensors: dict[str, Tensor]) -> IsotropicGaussian:
        return self


@dataclass(frozen=True)
class LayerwiseGaussian(IndependentGaussian):
    """Weights ``W ~ N(0, weight_scale^2 / fan_in)``, biases (1-D tensors) ``b ~ N(0, bias_scale^2)``.

    The 1/sqrt(fan_in) ("scaled variance") convention keeps the pre-activation variance independent
    of the layer width, so one ``weight_scale`` suits every layer.

    Args:
        weight_scale: standard deviation of a weight times sqrt(fan_in) (> 0).
        bias_scale: standard deviation of a bias (> 0).
    """

    weight_scale: float = 1.0
    bias_scale: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.weight_scale, "weight_scale")
        check_positive(self.bias_scale, "bias_scale")

    def variance(self, shape: torch.Size) -> float:
        """Prior variance of each entry of a parameter tensor of this shape."""
        return float(self.bias_scale) ** 2 if len(shape) <= 1 else float(self.weight_scale) ** 2 / fan_in(shape)

    def tensor_variances(self, params: Params) -> Tensor:
        return _variances_like([self.variance(p.shape) for p in params.values()], params)

    def sample(self, num: int, *, generator: torch.Generator, template: Params) -> Params:
        scales = {k: math.sqrt(self.variance(t.shape)) for k, t in template.items()}
        return _gaussian_draws(num, template, scales, generator)

    def state(self) -> dict[str, Tensor]:
        return {}

    def with_state(self, tensors: dict[str, Tensor]) -> LayerwiseGaussian:
        return self


class ConditionalGaussian(IndependentGaussian):
    """Independent ``N(0, variance(name, t))`` entries given the current variances (a mixin).

    Subclasses define `variance`; `log_prob` is then the conditional ``log p(theta | sigma^2)`` at the
    current variances, and ``add_grad_log_prob_`` its gradient.
    """

    @abstractmethod
    def variance(self, name: str, t: Tensor) -> Tensor:
        """Current prior variance (0-d, in ``t``'s dtype) of each entry of parameter ``name`` with value ``t``."""

    def tensor_variances(self, params: Params) -> Tensor:
        return torch.stack([self.variance(k, p) for k, p in params.items()])


@dataclass(frozen=True)
class HierarchicalLayerwiseGaussian(ConditionalGaussian):
    """Layer-wise Gaussian whose per-tensor variances have inverse-gamma priors (Tran et al. 2022, "FH").

    For every parameter tensor ``k`` (each layer's weight and bias separately), with precision
    ``tau_k = 1 / sigma_k^2``::

        tau_k ~ Gamma(shape, rate),        theta_k,i | tau_k ~ N(0, 1 / (tau_k * fan_in_k))

    i.e. ``sigma_k^2 ~ InverseGamma(shape, rate)`` and the 1/sqrt(fan_in) convention of
    `LayerwiseGaussian`. The current ``variances`` (sigma_k^2) are the prior's state: `log_prob` is the
    conditional ``log p(theta | sigma^2)``, and `gibbs_update` draws new variances from their
    conditional. Since ``fan_in_k * theta_k,i^2 * tau_k`` is a chi-square-type quadratic form, the
    conditional is conjugate::

        tau_k | theta ~ Gamma(shape + n_k / 2, rate + fan_in_k * sum_i theta_k,i^2 / 2)

    (n_k entries in tensor k; fan_in = 1 for biases).

    Args:
        shape: Gamma shape of each precision (> 0).
        rate: Gamma rate of each precision (> 0).
        init_variance: sigma^2 used for a tensor before its first Gibbs update (> 0).
        variances: current sigma_k^2 per parameter name (0-d tensors); usually left empty.
    """

    shape: float = 1.0
    rate: float = 1.0
    init_variance: float = 1.0
    variances: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_positive(self.shape, "shape")
        check_positive(self.rate, "rate")
        check_positive(self.init_variance, "init_variance")

    def variance(self, name: str, t: Tensor) -> Tensor:
        """Current prior variance of each entry of parameter ``name`` (sigma^2 / fan_in)."""
        sigma2 = self.variances.get(name)
        if sigma2 is None:
            sigma2 = torch.tensor(self.init_variance, dtype=t.dtype, device=t.device)
        return sigma2.to(t.dtype) / fan_in(t.shape)

    def sample(self, num: int, *, generator: torch.Generator, template: Params) -> Params:
        """Joint draws: fresh precisions per draw and tensor, then weights given them."""
        scales = {}
        for k, t in template.items():
            tau = gamma_draws(torch.full((num,), self.shape), torch.full((num,), self.rate), generator=generator)
            scales[k] = (1.0 / (tau * fan_in(t.shape))).sqrt().to(t.dtype)
        return _gaussian_draws(num, template, scales, generator)

    def gibbs_update(self, params: Params, *, generator: torch.Generator) -> HierarchicalLayerwiseGaussian:
        """New prior with every sigma_k^2 drawn from its conditional given ``params`` (see class docstring)."""
        names = list(params)
        shapes = torch.tensor([self.shape + params[k].numel() / 2 for k in names], dtype=torch.float64)
        rates = torch.stack(
            [self.rate + fan_in(params[k].shape) * params[k].detach().double().square().sum() / 2 for k in names]
        ).cpu()
        tau = gamma_draws(shapes, rates, generator=generator)
        new = {k: (1.0 / tau[i]).to(params[k].dtype) for i, k in enumerate(names)}
        return HierarchicalLayerwiseGaussian(self.shape, self.rate, self.init_variance, new)

    def state(self) -> dict[str, Tensor]:
        return dict(self.variances)

    def with_state(self, tensors: dict[str, Tensor]) -> HierarchicalLayerwiseGaussian:
        return HierarchicalLayerwiseGaussian(self.shape, self.rate, self.init_variance, dict(tensors))


def gamma_draws(shape: Tensor, rate: Tensor, *, generator: torch.Generator) -> Tensor:
    """Gamma(shape, rate) draws (float64, same shape as ``shape``), reproducible from ``generator``.

    ``torch.distributions.Gamma`` takes no generator, so a 64-bit seed is drawn from ``generator``
    and numpy's Gamma sampler does the work.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    draws = rng.gamma(shape.double().cpu().numpy(), 1.0 / rate.double().cpu().numpy())
    return torch.from_numpy(np.asarray(draws, dtype=np.float64)).reshape(shape.shape)
