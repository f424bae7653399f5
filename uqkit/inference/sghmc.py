"""Adaptive stochastic gradient Hamiltonian Monte Carlo (Springenberg et al., 2016; METHODS.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from uqkit._checks import check_positive
from uqkit.inference.base import (
    DrawsPosterior,
    Params,
    StepInfo,
    check_int,
    gaussian_noise,
    log_joint_and_grad,
    maybe_gibbs,
)
from uqkit.models.priors import Prior
from uqkit.models.spec import Batch, ModelSpec
from uqkit.registry import register_engine

_MIN_NOISE_VAR = 1e-16


@register_engine("sghmc")
@dataclass(frozen=True)
class SGHMC(DrawsPosterior):
    """Scale-adapted SGHMC: ``v <- v - eps^2 m^-1 grad U - c v + N(0, 2 eps^2 c m^-1 T - eps^4)``, ``theta <- theta + v``.

    ``U = -log p_hat`` is the minibatch estimate of the full-data potential, ``eps^2 = step_size^2 / N``
    and the inverse mass ``m^-1 = 1 / (sqrt(v_hat) + jitter)`` is adapted during warmup (burn-in) from
    moving averages of the per-datapoint gradient ``grad U / N`` (Springenberg et al. 2016,
    "Bayesian optimization with robust Bayesian neural networks"): with ``r = 1 / (tau + 1)``::

        tau <- tau - tau g^2 / (v_hat + jitter) + 1,   g <- g + r (grad - g),   v_hat <- v_hat + r (grad^2 - v_hat)

    so ``step_size`` is scale free (0.01 suits most BNNs). After warmup the mass is frozen and the
    chain targets ``p^(1/T)`` (up to the SG noise). The noise variance is clamped at 1e-16 or above.

    Args:
        step_size: the learning rate ``lr`` of the paper (> 0).
        mdecay: friction / momentum decay ``c`` in (0, 1].
        temperature: T >= 0 (1 targets the posterior).
        jitter: the epsilon added to ``sqrt(v_hat)`` and ``v_hat`` (> 0).
        gibbs_every: Gibbs-update hierarchical prior variances every this many steps (0: never).
    """

    name: ClassVar[str]
    minibatch: ClassVar[bool] = True

    step_size: float = 0.01
    mdecay: float = 0.05
    temperature: float = 1.0
    jitter: float = 1e-16
    gibbs_every: int = 100

    def __post_init__(self) -> None:
        check_positive(self.step_size, "step_size")
        if not 0 < check_positive(self.mdecay, "mdecay") <= 1:
            raise ValueError(f"mdecay: expected a friction in (0, 1], got {self.mdecay!r}")
        check_positive(self.temperature, "temperature", allow_zero=True)
        check_positive(self.jitter, "jitter")
        check_int(self.gibbs_every, "gibbs_every", minimum=0)

    def init(self, spec: ModelSpec, params: Params, *, generator: torch.Generator) -> SGHMCState:
        """Zero momentum and unit moving averages (``tau = g = v_hat = 1``) at ``params``."""
        params = {k: v.detach().clone() for k, v in params.items()}

        def fill(value: float) -> Params:
            return {k: torch.full_like(v, value) for k, v in params.items()}

        v_hat = fill(1.0)
        inv_mass, noise_std = self._preconditioner(v_hat, spec.num_data)
        return SGHMCState(params=params, momentum=fill(0.0), tau=fill(1.0), g=fill(1.0), v_hat=v_hat,
                          inv_mass=inv_mass, noise_std=noise_std, prior=spec.prior, step=0)

    def step(self, spec: ModelSpec, state: SGHMCState, batch: Batch | None, *, generator: torch.Generator,
             warmup: bool = False) -> tuple[SGHMCState, StepInfo]:
        """One SGHMC step on ``batch``; with ``warmup`` the preconditioner's moving averages are updated."""
        names = list(state.params)
        params, momentum = list(state.params.values()), list(state.momentum.values())
        log_density, grads = log_joint_and_grad(self.name, spec, state.prior, state.params, batch, state.step)
        inv_mass, noise_std = list(state.inv_mass.values()), list(state.noise_std.values())
        # v <- noise + eps^2 m^-1 grad log p + (1 - c) v;  theta <- theta + v.  The new momentum is built in
        # place in the freshly drawn noise (one buffer for all tensors), so the input state stays untouched.
        new_momentum = gaussian_noise(params, generator)
        torch._foreach_mul_(new_momentum, noise_std)
        torch._foreach_addcmul_(new_momentum, inv_mass, grads, value=self.step_size**2 / spec.num_data)
        torch._foreach_add_(new_momentum, momentum, alpha=1 - self.mdecay)
        new_params = dict(zip(names, torch._foreach_add(params, new_momentum)))
        if warmup:
            tau, g, v_hat = _adapt(list(state.tau.values()), list(state.g.values()), list(state.v_hat.values()),
                                   torch._foreach_div(grads, -spec.num_data), self.jitter)
            state_v_hat = dict(zip(names, v_hat))
            next_inv_mass, next_noise_std = self._preconditioner(state_v_hat, spec.num_data)
            state_tau, state_g = dict(zip(names, tau)), dict(zip(names, g))
        else:  # frozen mass: the moving averages and the cached preconditioner carry over unchanged
            state_tau, state_g, state_v_hat = state.tau, state.g, state.v_hat
            next_inv_mass, next_noise_std = state.inv_mass, state.noise_std

        prior = maybe_gibbs(spec, state.prior, new_params, state.step + 1, self.gibbs_every, generator)
        new_state = SGHMCState(params=new_params, momentum=dict(zip(names, new_momentum)), tau=state_tau, g=state_g,
                               v_hat=state_v_hat, inv_mass=next_inv_mass, noise_std=next_noise_std, prior=prior,
                               step=state.step + 1)
        return new_state, StepInfo(log_density, self.step_size)

    def _preconditioner(self, v_hat: Params, num_data: int) -> tuple[Params, Params]:
        """Inverse mass ``1 / (sqrt(v_hat) + jitter)`` and noise sd ``sqrt(max(2 eps^2 c m^-1 T - eps^4, 1e-16))``."""
        eps2 = self.step_size**2 / num_data
        inv_mass = torch._foreach_add(torch._foreach_sqrt(list(v_hat.values())), self.jitter)
        torch._foreach_reciprocal_(inv_mass)
        noise_std = torch._foreach_mul(inv_mass, 2 * eps2 * self.mdecay * self.temperature)
        torch._foreach_add_(noise_std, -(eps2**2))
        torch._foreach_clamp_min_(noise_std, _MIN_NOISE_VAR)
        torch._foreach_sqrt_(noise_std)
        return dict(zip(v_hat, inv_mass)), dict(zip(v_hat, noise_std))


@dataclass(frozen=True)
class SGHMCState:
    """Parameters, momentum ``v``, the preconditioner's moving averages, the prior and the step count.

    ``inv_mass`` and ``noise_std`` are functions of ``v_hat`` (see `SGHMC._preconditioner`), cached so
    that steps after warmup, where the mass is frozen, do not recompute them.
    """

    params: Params
    momentum: Params
    tau: Params
    g: Params
    v_hat: Params
    inv_mass: Params
    noise_std: Params
    prior: Prior
    step: int


def _adapt(tau: list, g: list, v_hat: list, grad_u: list, jitter: float) -> tuple[list, list, list]:
    """One burn-in update of the window ``tau`` and the averages ``g``, ``v_hat`` of the per-datapoint gradient."""
    r = torch._foreach_add(tau, 1.0)
    torch._foreach_reciprocal_(r)
    ratio = torch._foreach_div(torch._foreach_mul(g, g), torch._foreach_add(v_hat, jitter))
    new_tau = torch._foreach_sub(tau, torch._foreach_mul(tau, ratio))
    torch._foreach_add_(new_tau, 1.0)
    new_g = torch._foreach_addcmul(g, r, torch._foreach_sub(grad_u, g))
    new_v = torch._foreach_addcmul(v_hat, r, torch._foreach_sub(torch._foreach_mul(grad_u, grad_u), v_hat))
    return new_tau, new_g, new_v
