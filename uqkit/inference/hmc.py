"""Hamiltonian Monte Carlo on vectorised chains, and the pieces NUTS shares with it.

A log density maps positions ``[C, D]`` (one row per chain) to ``[C]``; one call gives the values
and gradients of all chains. Shared here: the state type, momentum draws, the step-size heuristic
and the warmup glue; the leapfrog integrator and the metric are in `uqkit.inference.integrator`.

References: Neal (2011), "MCMC using Hamiltonian dynamics"; Hoffman & Gelman (2014) for the
step-size heuristic; Betancourt (2017, arXiv:1701.02434) for the divergence criterion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, get_type_hints

import numpy as np
import torch
from torch import Tensor

from uqkit._checks import check_level, check_positive
from uqkit.inference.adaptation import WarmupState, restart_step_size, warmup_init, warmup_update
from uqkit.inference.integrator import (
    array_log_density,
    energy_error,
    integrating,
    kinetic_energy,
    leapfrog,
    to_numpy,
    to_torch,
    velocity_fn,
)
from uqkit.inference.traced import LogDensity
from uqkit.registry import register_engine


#: A transition whose energy error exceeds this is divergent (Stan's and BlackJAX's threshold).
MAX_ENERGY_ERROR = 1000.0


@dataclass(frozen=True)
class HMCState:
    """The state of ``C`` chains between transitions (HMC and NUTS share it).

    Attributes:
        position: ``[C, D]``.
        log_density: ``[C]`` at ``position``.
        grad: ``[C, D]`` gradient of the log density at ``position``.
        step_size: ``[C]`` leapfrog step size per chain (in units of the position).
        inverse_mass: ``[C, D]`` diagonal or ``[C, D, D]`` dense inverse mass matrix per chain.
        warmup: adaptation state; inactive once ``warmup.iteration == warmup.num_warmup``.
    """

    position: Tensor
    log_density: Tensor
    grad: Tensor
    step_size: Tensor
    inverse_mass: Tensor
    warmup: WarmupState


@dataclass(frozen=True)
class HMCInfo:
    """What one transition did, per chain.

    Attributes:
        accept_prob: ``[C]`` acceptance statistic (Metropolis probability for HMC, the mean over the
            trajectory for NUTS); what dual averaging targets.
        divergent: ``[C]`` bool, the energy error exceeded `MAX_ENERGY_ERROR` or was not finite.
        num_steps: ``[C]`` int64 leapfrog steps (gradient evaluations) taken.
        energy: ``[C]`` Hamiltonian at the returned state (for arviz's BFMI).
        step_size: ``[C]`` the step size this transition used.
        tree_depth: ``[C]`` int64 trajectory doublings (NUTS only).
    """

    accept_prob: Tensor
    divergent: Tensor
    num_steps: Tensor
    energy: Tensor
    step_size: Tensor
    tree_depth: Tensor | None = None


def sample_momentum(inverse_mass: Tensor, generator: torch.Generator) -> Tensor:
    """Momenta ``[C, D]`` ~ N(0, M) per chain."""
    shape = inverse_mass.shape[:2]
    noise = torch.randn(shape, generator=generator, dtype=inverse_mass.dtype, device=inverse_mass.device)
    if inverse_mass.ndim == 3:  # M⁻¹ = LLᵀ  ⇒  p = L⁻ᵀξ has covariance (LLᵀ)⁻¹ = M
        chol = torch.linalg.cholesky(inverse_mass)
        return torch.linalg.solve_triangular(chol.mT, noise.unsqueeze(-1), upper=True).squeeze(-1)
    return noise * inverse_mass.rsqrt()


def find_step_size(
    log_density: LogDensity,
    state: HMCState,
    step_size: Tensor,
    generator: torch.Generator,
    *,
    max_iter: int = 100,
) -> Tensor:
    """Stan's heuristic: double or halve ``step_size [C]`` until one leapfrog step's acceptance
    probability crosses 0.8 (per chain; bounded to ``[1e-10, 1e7]``)."""
    evaluate = array_log_density(log_density, state.position)
    velocity = velocity_fn(to_numpy(state.inverse_mass))
    position, value0, grad = to_numpy(state.position), to_numpy(state.log_density), to_numpy(state.grad)
    log_target = math.log(0.8)
    eps = to_numpy(step_size)
    direction_up: np.ndarray | None = None
    done = np.zeros(eps.shape, dtype=bool)
    with integrating():
        for _ in range(max_iter):
            momentum = to_numpy(sample_momentum(state.inverse_mass, generator))
            energy0 = kinetic_energy(momentum, velocity(momentum)) - value0
            _, p, v, value, _ = leapfrog(evaluate, position, momentum, grad, eps[:, None], velocity)
            log_accept = -energy_error(p, v, value, energy0)
            if direction_up is None:
                direction_up = log_accept > log_target
                continue
            done |= np.where(direction_up, ~(log_accept > log_target), ~(log_accept < log_target))
            done |= (eps > 1e7) | (eps < 1e-10)
            if done.all():
                break
            eps = np.where(done, eps, np.where(direction_up, 2 * eps, 0.5 * eps))
    return to_torch(eps, step_size).clamp(1e-10, 1e7)


@dataclass(frozen=True)
class AdaptOptions:
    """Warmup options shared by HMC and NUTS (fields of their configs)."""

    target_accept: float
    dense_mass: bool
    adapt_step_size: bool
    adapt_mass: bool


def init_state(
    log_density: LogDensity,
    position: Tensor,
    *,
    step_size: float | None,
    options: AdaptOptions,
    num_warmup: int,
    generator: torch.Generator,
    engine: str,
) -> HMCState:
    """The state before the first transition: log density and gradient at ``position [C, D]``, identity
    mass matrix, and the initial step size (given, or Stan's heuristic from 1)."""
    if position.ndim != 2:
        raise ValueError(f"position: expected [num_chains, D], got shape {tuple(position.shape)}")
    num_chains, dim = position.shape
    with torch.enable_grad():
        z = position.detach().requires_grad_(True)
        value = log_density(z)
        if not isinstance(value, Tensor) or value.shape != (num_chains,):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"log_density ({engine}): expected a tensor of shape [{num_chains}], got {got}")
        if not value.requires_grad:
            raise ValueError(f"log_density ({engine}): its output does not depend on the position through "
                             "autograd; write it with differentiable torch operations")
        (grad,) = torch.autograd.grad(value.sum(), z, allow_unused=True)
    value = value.detach()
    grad = torch.zeros_like(position) if grad is None else grad
    if not bool(torch.isfinite(value).all()) or not bool(torch.isfinite(grad).all()):
        bad = (~torch.isfinite(value) | ~torch.isfinite(grad).all(-1)).nonzero().flatten().tolist()
        raise ValueError(f"log_density ({engine}): not finite (or its gradient is not) at the initial position "
                         f"of chains {bad}; start inside the support")
    eye = torch.eye(dim, dtype=position.dtype, device=position.device)
    inverse_mass = eye.expand(num_chains, dim, dim).clone() if options.dense_mass else torch.ones_like(position)
    eps = position.new_full((num_chains,), 1.0 if step_size is None else step_size)
    warmup = warmup_init(eps, dim, num_warmup, dense=options.dense_mass)
    state = HMCState(position, value, grad, eps, inverse_mass, warmup)
    if step_size is None:
        eps = find_step_size(log_density, state, eps, generator)
        state = replace(state, step_size=eps, warmup=restart_step_size(state.warmup, eps))
    return state


def adapt(
    log_density: LogDensity, state: HMCState, accept_prob: Tensor, options: AdaptOptions, generator: torch.Generator
) -> HMCState:
    """Apply one warmup update after a transition (no-op once warmup is over)."""
    if not state.warmup.active:
        return state
    update = warmup_update(
        state.warmup, state.position, accept_prob, target_accept=options.target_accept, adapt_mass=options.adapt_mass
    )
    warmup, step_size = update.state, update.step_size if options.adapt_step_size else state.step_size
    if update.inverse_mass is None:
        return replace(state, step_size=step_size, warmup=warmup)
    state = replace(state, inverse_mass=update.inverse_mass)
    if options.adapt_step_size:
        step_size = find_step_size(log_density, state, step_size, generator)
        warmup = restart_step_size(warmup, step_size)
    return replace(state, step_size=step_size, warmup=warmup)


def check_adapt_options(step_size: float | None, target_accept: float) -> None:
    """Validate the fields every HMC-family config shares."""
    if step_size is not None:
        check_positive(step_size, "step_size")
    check_level(target_accept, "target_accept")


class AdaptiveKernel:
    """What HMC and NUTS configs share: Stan-style warmup options and the initial state."""

    @property
    def adapt_options(self) -> AdaptOptions:
        return AdaptOptions(self.target_accept, self.dense_mass, self.adapt_step_size, self.adapt_mass)

    def init(self, log_density: LogDensity, position: Tensor, *, generator: torch.Generator,
             num_warmup: int = 0) -> HMCState:
        """The state at ``position [C, D]``; the next ``num_warmup`` transitions adapt."""
        return init_state(log_density, position, step_size=self.step_size, options=self.adapt_options,
                          num_warmup=num_warmup, generator=generator, engine=self.name)


@register_engine("hmc")
@dataclass(frozen=True)
class HMC(AdaptiveKernel):
    """Hamiltonian Monte Carlo with a fixed or jittered number of leapfrog steps, Metropolis-corrected.

    z, p ← leapfrog^L(z, p) with p ~ N(0, M); accept with probability min(1, exp(H₀ − H_L)).
    Neal (2011). Each chain draws its own L per transition (uniform on
    ``[round(num_steps·(1−jitter)), round(num_steps·(1+jitter))]``); chains that finish early wait.

    Args:
        num_steps: leapfrog steps per transition (L ≥ 1).
        jitter: relative jitter of L in [0, 1); 0 keeps L fixed.
        step_size: initial step size; None runs Stan's heuristic.
        target_accept: acceptance probability that warmup's dual averaging aims for, in (0, 1).
        dense_mass: adapt a dense ``[D, D]`` mass matrix instead of a diagonal one.
        adapt_step_size: adapt the step size during warmup.
        adapt_mass: adapt the mass matrix during warmup (Stan's windows).
    """

    num_steps: int = 16
    jitter: float = 0.0
    step_size: float | None = None
    target_accept: float = 0.8
    dense_mass: bool = False
    adapt_step_size: bool = True
    adapt_mass: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps: expected an integer >= 1, got {self.num_steps!r}")
        if not 0 <= check_positive(self.jitter, "jitter", allow_zero=True) < 1:
            raise ValueError(f"jitter: expected a number in [0, 1), got {self.jitter!r}")
        check_adapt_options(self.step_size, self.target_accept)

    def step(self, log_density: LogDensity, state: HMCState, *, generator: torch.Generator) -> tuple[HMCState, HMCInfo]:
        """One transition of every chain (and one warmup update while warmup lasts)."""
        num_chains = state.position.shape[0]
        lo = max(1, round(self.num_steps * (1 - self.jitter)))
        hi = max(lo, round(self.num_steps * (1 + self.jitter)))
        device = state.position.device
        num_steps = to_numpy(torch.randint(lo, hi + 1, (num_chains,), generator=generator, device=device))
        evaluate = array_log_density(log_density, state.position)
        velocity = velocity_fn(to_numpy(state.inverse_mass))
        momentum = to_numpy(sample_momentum(state.inverse_mass, generator))
        value0 = to_numpy(state.log_density)
        energy0 = kinetic_energy(momentum, velocity(momentum)) - value0
        log_u = np.log(to_numpy(torch.rand(num_chains, generator=generator, dtype=state.position.dtype, device=device)))
        position0, grad0 = to_numpy(state.position), to_numpy(state.grad)
        position, grad, value = position0, grad0, value0
        step_size = to_numpy(state.step_size)[:, None]
        alive = np.ones(num_chains, dtype=bool)
        steps_taken = np.zeros(num_chains, dtype=np.int64)
        with integrating():
            for i in range(hi):
                active = alive & (num_steps > i)
                position, momentum, v, value, grad = leapfrog(
                    evaluate, position, momentum, grad, step_size * active[:, None], velocity, active
                )
                steps_taken += active
                alive &= np.isfinite(value)
            delta = energy_error(momentum, v, value, energy0)
        accept = log_u < -delta
        col = accept[:, None]
        like = state.position
        new_state = replace(
            state,
            position=to_torch(np.where(col, position, position0), like),
            log_density=to_torch(np.where(accept, value, value0), like),
            grad=to_torch(np.where(col, grad, grad0), like),
        )
        info = HMCInfo(
            accept_prob=to_torch(np.exp(-np.maximum(delta, 0)), like),
            divergent=to_torch(delta > MAX_ENERGY_ERROR, like),
            num_steps=to_torch(steps_taken, like),
            energy=to_torch(np.where(accept, delta + energy0, energy0), like),
            step_size=state.step_size,
        )
        return adapt(log_density, new_state, info.accept_prob, self.adapt_options, generator), info


def state_to_tensors(state: Any, prefix: str = "") -> dict[str, Tensor]:
    """Flatten a (nested) dataclass of tensors into ``{"field/subfield": tensor}``; None fields are left out."""
    out: dict[str, Tensor] = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if is_dataclass(value):
            out.update(state_to_tensors(value, f"{prefix}{f.name}/"))
        elif value is not None:
            out[f"{prefix}{f.name}"] = value
    return out


def state_from_tensors(cls: type, tensors: dict[str, Tensor], prefix: str = "") -> Any:
    """Rebuild a dataclass of type ``cls`` (e.g. `HMCState`) from `state_to_tensors` output."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        kind = hints[f.name]
        key = f"{prefix}{f.name}"
        if is_dataclass(kind):
            kwargs[f.name] = state_from_tensors(kind, tensors, f"{key}/")
        elif key in tensors:
            kwargs[f.name] = tensors[key]
        elif f.default is not None:  # a required tensor is missing
            raise ValueError(f"state: missing tensor {key!r} for {cls.__name__}")
        else:
            kwargs[f.name] = None
    return cls(**kwargs)
