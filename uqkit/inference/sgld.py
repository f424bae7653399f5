"""Stochastic gradient Langevin dynamics (Welling & Teh, 2011)."""

from __future__ import annotations

import math
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


@register_engine("sgld")
@dataclass(frozen=True)
class SGLD(DrawsPosterior):
    """SGLD: ``theta <- theta + eps/2 * grad log p_hat(theta) + N(0, eps * T)``.

    ``log p_hat`` is the unbiased minibatch estimate of the full-data log joint
    (`ModelSpec.log_joint`), so ``step_size`` is in the textbook units (squared parameter units per
    unit of log density), with no 1/N rescaling.

    Args:
        step_size: eps > 0.
        temperature: T >= 0; 1 targets the posterior, 0 is stochastic gradient ascent.
        gibbs_every: Gibbs-update hierarchical prior variances every this many steps (0: never).
    """

    name: ClassVar[str]
    minibatch: ClassVar[bool] = True

    step_size: float = 1e-4
    temperature: float = 1.0
    gibbs_every: int = 100

    def __post_init__(self) -> None:
        check_positive(self.step_size, "step_size")
        check_positive(self.temperature, "temperature", allow_zero=True)
        check_int(self.gibbs_every, "gibbs_every", minimum=0)

    def init(self, spec: ModelSpec, params: Params, *, generator: torch.Generator) -> SGLDState:
        """State at ``params`` (leaves with their natural shapes)."""
        return SGLDState(params={k: v.detach().clone() for k, v in params.items()}, prior=spec.prior, step=0)

    def step(self, spec: ModelSpec, state: SGLDState, batch: Batch | None, *, generator: torch.Generator,
             warmup: bool = False) -> tuple[SGLDState, StepInfo]:
        """One Langevin step on ``batch``; ``warmup`` has no effect (SGLD adapts nothing)."""
        names, values = list(state.params), list(state.params.values())
        log_density, grads = log_joint_and_grad(self.name, spec, state.prior, state.params, batch, state.step)
        new = torch._foreach_add(values, grads, alpha=self.step_size / 2)
        if self.temperature > 0:
            torch._foreach_add_(new, gaussian_noise(values, generator), alpha=math.sqrt(self.step_size * self.temperature))
        params = dict(zip(names, new))
        prior = maybe_gibbs(spec, state.prior, params, state.step + 1, self.gibbs_every, generator)
        return SGLDState(params=params, prior=prior, step=state.step + 1), StepInfo(log_density, self.step_size)


@dataclass(frozen=True)
class SGLDState:
    """Current parameters, the (possibly Gibbs-updated) prior, and the number of steps taken."""

    params: Params
    prior: Prior
    step: int
