"""The mean-field Gaussian variational family over a `ModelSpec`'s net parameters, and its ELBO pieces.

``q(theta) = prod_{j active} N(theta_j; mu_j, softplus(rho_j)^2) * prod_{j inactive} delta_0(theta_j)``
(Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015; the masked form is SSVI's,
Li et al., ICLR 2024). Without masks every coordinate is active. Likelihood parameters
(``"likelihood.*"``) are point estimates under their flat prior.

The expected log-likelihood is estimated with the reparameterisation ``theta = mu + sigma * eps`` or,
for ``nn.Linear`` / ``nn.Conv{1,2,3}d`` layers, the local reparameterisation (Kingma, Salimans &
Welling, NeurIPS 2015): the pre-activation of each example is drawn directly from its Gaussian,
``b = x W_mu^T + sqrt(x^2 (sigma_W^2)^T + sigma_b^2) * eps``, which needs one noise draw per output
instead of per weight and has lower variance. It runs as ``functional_call`` with the means plus a
forward hook on each such layer that adds the noise term (the convolution's variance uses the
layer's own ``_conv_forward`` on ``x^2``).

The KL to the prior is closed form when the prior is Gaussian per coordinate (`IsotropicGaussian`,
`LayerwiseGaussian`, `PerLayerGaussian`, and `HierarchicalLayerwiseGaussian` and
`PerLayerHierarchicalGaussian` at their current variances)::

    KL(N(mu, s^2) || N(0, v)) = 0.5 * (log(v / s^2) + (s^2 + mu^2) / v - 1),

summed over active coordinates only; for any other prior it is the one-draw Monte Carlo estimate
``log q(theta) - log p(theta)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uqkit.models.likelihoods import PREFIX
from uqkit.models.matched_priors import PerLayerGaussian, PerLayerHierarchicalGaussian
from uqkit.models.priors import HierarchicalLayerwiseGaussian, IsotropicGaussian, LayerwiseGaussian, Prior, fan_in
from uqkit.models.spec import Batch, ModelSpec

Params = dict[str, Tensor]

#: Layers that the local reparameterisation (and SSVI's masks and FLOP counts) understand.
LINEAR_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LOG_2PI = math.log(2 * math.pi)


def inverse_softplus(value: float) -> float:
    """``rho`` with ``softplus(rho) = value`` (> 0)."""
    return value + math.log(-math.expm1(-value))


@dataclass(frozen=True, eq=False)
class MeanFieldGaussian:
    """Variational parameters: means ``mu``, pre-softplus scales ``rho``, optional masks, point parameters.

    Attributes:
        mu: ``{name: tensor}`` means of the net parameters; zero wherever the mask is False.
        rho: ``{name: tensor}`` with ``sigma = softplus(rho)``.
        masks: ``{name: bool tensor}`` active coordinates of the tensors that have inactive ones
            (a name absent here is dense).
        point: likelihood parameters (without the prefix), point estimates.
    """

    mu: Params
    rho: Params
    masks: dict[str, Tensor] = field(default_factory=dict)
    point: Params = field(default_factory=dict)
    _weights: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for k, mask in self.masks.items():
            self.set_mask(k, mask)

    def set_mask(self, name: str, mask: Tensor) -> None:
        """Replace the mask of parameter ``name`` (bool, its shape)."""
        self.masks[name] = mask
        self._weights[name] = mask.to(self.mu[name].dtype)  # multiplying by a float mask is ~6x faster than by bool

    @classmethod
    def init(cls, spec: ModelSpec, *, init_std: float, generator: torch.Generator,
             masks: dict[str, Tensor] | None = None) -> MeanFieldGaussian:
        """Means ``N(0, 1 / fan_in)`` for weights (>= 2-D) and 0 for biases, every ``sigma = init_std``."""
        net, lik = spec.split(spec.param_template())
        masks = dict(masks or {})
        mu = {}
        for k, t in net.items():
            draw = torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device)
            draw = draw / math.sqrt(fan_in(t.shape))
            mu[k] = draw if t.ndim >= 2 else torch.zeros_like(t)
            if k in masks:
                mu[k] = mu[k] * masks[k]
        rho = {k: torch.full_like(t, inverse_softplus(init_std)) for k, t in net.items()}
        return cls(mu, rho, masks, {k: v.clone() for k, v in lik.items()})

    def std(self) -> Params:
        """``sigma = softplus(rho)``, zero at inactive coordinates."""
        return {k: self.masked(k, F.softplus(r)) for k, r in self.rho.items()}

    def mask_weight(self, name: str) -> Tensor | None:
        """The mask of parameter ``name`` as 0/1 in its dtype, or None when it is dense."""
        return self._weights.get(name)

    def masked(self, name: str, t: Tensor) -> Tensor:
        """``t`` (shaped like parameter ``name``) with its inactive entries set to 0."""
        weight = self._weights.get(name)
        return t if weight is None else t * weight

    def num_active(self) -> dict[str, int]:
        """Active coordinates per net parameter tensor."""
        return {k: int(self.masks[k].sum()) if k in self.masks else v.numel() for k, v in self.mu.items()}

    def leaves(self) -> list[Tensor]:
        """Every trainable tensor: means, scales and point parameters."""
        return [*self.mu.values(), *self.rho.values(), *self.point.values()]

    def mean_params(self) -> Params:
        """The mean network (plus the point parameters, prefixed) as a ``ModelSpec`` parameter dict."""
        return {**self.mu, **{PREFIX + k: v for k, v in self.point.items()}}

    def sample(self, num: int, *, generator: torch.Generator) -> Params:
        """``num`` draws ``{name: [num, *shape]}``: ``mu + sigma * eps`` at active coordinates, exactly 0 elsewhere."""
        std = self.std()
        out = {}
        for k, m in self.mu.items():
            eps = torch.randn((num, *m.shape), generator=generator, dtype=m.dtype, device=m.device)
            draw = m + std[k] * eps
            out[k] = torch.where(self.masks[k], draw, torch.zeros((), dtype=m.dtype)) if k in self.masks else draw
        out.update({PREFIX + k: v.detach().expand(num, *v.shape) for k, v in self.point.items()})
        return out

    def log_q(self, theta: Params) -> Tensor:
        """Scalar ``log q(theta)`` over active coordinates (net parameters only)."""
        std = self.std()
        total = torch.zeros((), dtype=next(iter(self.mu.values())).dtype)
        for k, m in self.mu.items():
            z = (theta[k] - m) / std[k].clamp_min(torch.finfo(m.dtype).tiny)
            terms = -0.5 * z.square() - torch.log(std[k].clamp_min(torch.finfo(m.dtype).tiny)) - 0.5 * _LOG_2PI
            total = total + self.masked(k, terms).sum()
        return total


def gaussian_prior_variances(prior: Prior, template: Params) -> dict[str, Tensor | float] | None:
    """Per-tensor prior variance of each coordinate when ``prior`` is Gaussian per coordinate, else None."""
    if isinstance(prior, IsotropicGaussian):
        return dict.fromkeys(template, float(prior.scale) ** 2)
    if isinstance(prior, LayerwiseGaussian):
        return {k: prior.variance(t.shape) for k, t in template.items()}
    if isinstance(prior, PerLayerGaussian):
        return {k: prior.variance(k, t.shape) for k, t in template.items()}
    if isinstance(prior, HierarchicalLayerwiseGaussian | PerLayerHierarchicalGaussian):
        return {k: prior.variance(k, t) for k, t in template.items()}
    return None


def kl_to_gaussian_prior(q: MeanFieldGaussian, prior_var: dict[str, Tensor | float], *,
                         scale_sq: Params | None = None) -> Tensor:
    """Closed-form ``KL(q || N(0, diag(v)))`` summed over active coordinates (module docstring).

    Args:
        q: the variational parameters.
        prior_var: `gaussian_prior_variances` of the prior.
        scale_sq: ``softplus(rho)^2`` without masks, when the caller has it already.
    """
    if scale_sq is None:
        scale_sq = {k: F.softplus(r).square() for k, r in q.rho.items()}
    total = torch.zeros((), dtype=next(iter(q.mu.values())).dtype)
    for k, m in q.mu.items():
        v = prior_var[k]
        log_v = math.log(v) if isinstance(v, float) else torch.log(v)
        s2 = scale_sq[k].clamp_min(torch.finfo(m.dtype).tiny)
        terms = (s2 + m.square()) / v - torch.log(s2) + (log_v - 1)
        total = total + q.masked(k, terms).sum()
    return 0.5 * total


@contextlib.contextmanager
def local_reparameterisation(net: nn.Module, variances: Params, generator: torch.Generator) -> Iterator[set[str]]:
    """Within the block, each Linear/Conv layer of ``net`` adds ``sqrt(x^2 var_W + var_b) * eps`` to its output.

    Args:
        net: the network (run through ``functional_call`` with the means inside the block).
        variances: ``{param name: sigma^2}`` for every net parameter.
        generator: draws ``eps``.

    Yields:
        The parameter names the hooks cover (the other parameters need weight-space sampling).
    """
    handles, covered = [], set()

    def hook(weight_var: Tensor, bias_var: Tensor | None):
        def add_noise(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            x2 = args[0].square()
            if isinstance(module, nn.Linear):
                var = F.linear(x2, weight_var, bias_var)
            else:
                var = module._conv_forward(x2, weight_var, bias_var)
            std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
            eps = torch.randn(output.shape, generator=generator, dtype=output.dtype, device=output.device)
            return output + std * eps
        return add_noise

    try:
        for name, module in net.named_modules():
            if not isinstance(module, LINEAR_LAYERS):
                continue
            prefix = f"{name}." if name else ""
            weight, bias = prefix + "weight", prefix + "bias"
            if weight not in variances or (module.bias is not None and bias not in variances):
                continue
            handles.append(module.register_forward_hook(hook(variances[weight], variances.get(bias))))
            covered.update({weight, bias} if module.bias is not None else {weight})
        yield covered
    finally:
        for h in handles:
            h.remove()


def negative_elbo(spec: ModelSpec, q: MeanFieldGaussian, batch: Batch, *, kl_weight: float, local: bool,
                  prior_var: dict[str, Tensor | float] | None,
                  generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One-draw estimate of the negative ELBO per training point, ``-E_q[log p(y|x,theta)]/B + w * KL / N``.

    Args:
        spec: the model (``num_data`` = N scales the KL so the minibatch objective is the full-data
            ELBO divided by N).
        q: the variational parameters (leaves that require grad).
        batch: ``(x [B, ...], y [B, ...])``.
        kl_weight: KL multiplier (warm-up factor times ``kl_scale``; 1 gives the ELBO).
        local: use the local reparameterisation for Linear/Conv layers.
        prior_var: `gaussian_prior_variances` of the prior, or None for the Monte Carlo KL.
        generator: noise.

    Returns:
        ``(loss, mean negative log-likelihood of the batch, KL)``, scalars.
    """
    x, y = batch
    scale_sq = {k: F.softplus(r).square() for k, r in q.rho.items()}
    if local:
        hooks = local_reparameterisation(spec.net, {k: q.masked(k, v) for k, v in scale_sq.items()}, generator)
    else:
        hooks = contextlib.nullcontext(set())
    with hooks as covered:
        params, theta = q.mean_params(), {}
        for k, m in q.mu.items():
            if k in covered and prior_var is not None:
                continue
            std = q.masked(k, F.softplus(q.rho[k]))
            draw = m + std * torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
            theta[k] = draw  # for the Monte Carlo KL; a Linear/Conv layer's forward uses the hook instead
            if k not in covered:
                params[k] = draw
        output = spec.forward(params, x)
    nll = -spec.likelihood.log_prob(output, y, q.point).mean()
    if prior_var is not None:
        kl = kl_to_gaussian_prior(q, prior_var, scale_sq=scale_sq)
    else:
        kl = q.log_q(theta) - spec.log_prior(theta)
    return nll + kl_weight * kl / spec.num_data, nll, kl
