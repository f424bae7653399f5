"""Cyclical SG-MCMC (Zhang, Li, Zhang, Chen & Wilson, 2020, "Cyclical stochastic gradient MCMC")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

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


@register_engine("cyclical")
@dataclass(frozen=True)
class Cyclical(DrawsPosterior):
    """cSG-MCMC: a cosine step size restarted every ``cycle_length`` steps, exploring then sampling.

    At step k, with ``u = (k mod L) / L``, the step size is ``eps_k = step_size / 2 * (cos(pi u) + 1)``.
    While ``u < exploration`` the update is noise-free (SGD, or SGD with momentum) and its states are
    not draws (``StepInfo.sampling`` is False); afterwards the Langevin noise is added and the states
    are draws. Updates, with ``grad`` the gradient of the minibatch log joint:

    * ``sampler="sgld"``: ``theta <- theta + eps_k/2 grad + N(0, eps_k T)``;
    * ``sampler="sghmc"``: ``v <- (1 - a) v + eps_k/2 grad + N(0, a eps_k T)``, ``theta <- theta + v``
      (SGHMC with unit mass and friction ``a = mdecay``, discretisation ``eps^2 = eps_k / 2``).

    Args:
        step_size: peak step size eps_0 > 0 (units of `SGLD`'s step size).
        cycle_length: L, steps per cycle (>= 2).
        exploration: fraction of each cycle spent exploring, in [0, 1).
        sampler: "sghmc" or "sgld".
        mdecay: friction a in (0, 1] (sghmc only).
        temperature: T >= 0.
        gibbs_every: Gibbs-update hierarchical prior variances every this many steps (0: never).
    """

    name: ClassVar[str]
    minibatch: ClassVar[bool] = True

    step_size: float = 1e-4
    cycle_length: int = 1000
    exploration: float = 0.5
    sampler: Literal["sghmc", "sgld"] = "sghmc"
    mdecay: float = 0.1
    temperature: float = 1.0
    gibbs_every: int = 100

    def __post_init__(self) -> None:
        check_positive(self.step_size, "step_size")
        check_int(self.cycle_length, "cycle_length", minimum=2)
        if not 0 <= check_positive(self.exploration, "exploration", allow_zero=True) < 1:
            raise ValueError(f"exploration: expected a fraction in [0, 1), got {self.exploration!r}")
        if self.sampler not in ("sghmc", "sgld"):
            raise ValueError(f"sampler: expected 'sghmc' or 'sgld', got {self.sampler!r}")
        if not 0 < check_positive(self.mdecay, "mdecay") <= 1:
            raise ValueError(f"mdecay: expected a friction in (0, 1], got {self.mdecay!r}")
        check_positive(self.temperature, "temperature", allow_zero=True)
        check_int(self.gibbs_every, "gibbs_every", minimum=0)

    def schedule(self, step: int) -> tuple[float, bool]:
        """``(step size, sampling?)`` at step ``step`` (counting from 0)."""
        u = (step % self.cycle_length) / self.cycle_length
        return self.step_size / 2 * (math.cos(math.pi * u) + 1), u >= self.exploration

    def init(self, spec: ModelSpec, params: Params, *, generator: torch.Generator) -> CyclicalState:
        """State at ``params``; zero momentum for the sghmc sampler (none for sgld)."""
        params = {k: v.detach().clone() for k, v in params.items()}
        momentum = {k: torch.zeros_like(v) for k, v in params.items()} if self.sampler == "sghmc" else {}
        return CyclicalState(params=params, momentum=momentum, prior=spec.prior, step=0)

    def step(self, spec: ModelSpec, state: CyclicalState, batch: Batch | None, *, generator: torch.Generator,
             warmup: bool = False) -> tuple[CyclicalState, StepInfo]:
        """One step of the schedule on ``batch``; ``warmup`` has no effect (the schedule is fixed)."""
        names, values = list(state.params), list(state.params.values())
        log_density, grads = log_joint_and_grad(self.name, spec, state.prior, state.params, batch, state.step)
        step_size, sampling = self.schedule(state.step)
        noise_var = (self.mdecay if self.sampler == "sghmc" else 1.0) * step_size * self.temperature
        noise = gaussian_noise(values, generator) if sampling and noise_var > 0 else None
        if self.sampler == "sghmc":
            increment = torch._foreach_mul(list(state.momentum.values()), 1 - self.mdecay)
            torch._foreach_add_(increment, grads, alpha=step_size / 2)
        else:
            increment = torch._foreach_mul(grads, step_size / 2)
        if noise is not None:
            torch._foreach_add_(increment, noise, alpha=math.sqrt(noise_var))
        params = dict(zip(names, torch._foreach_add(values, increment)))
        momentum = dict(zip(names, increment)) if self.sampler == "sghmc" else {}
        prior = maybe_gibbs(spec, state.prior, params, state.step + 1, self.gibbs_every, generator)
        new_state = CyclicalState(params=params, momentum=momentum, prior=prior, step=state.step + 1)
        return new_state, StepInfo(log_density, step_size, sampling=sampling)


@dataclass(frozen=True)
class CyclicalState:
    """Parameters, momentum (empty for sgld), the prior and the step count."""

    params: Params
    momentum: Params
    prior: Prior
    step: int
