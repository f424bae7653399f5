"""Hamiltonian Monte Carlo on vectorised chains, and the pieces NUTS shares with it.

A log density maps positions ``[C, D]`` (one row per chain) to ``[C]``; one autograd call gives the
gradients of all chains. Shared here: the leapfrog integrator, the Euclidean metric (diagonal or
dense inverse mass matrix), the step-size heuristic, the warmup glue and the state type.

References: Neal (2011), "MCMC using Hamiltonian dynamics"; Hoffman & Gelman (2014) for the
step-size heuristic; Betancourt (2017, arXiv:1701.02434) for the divergence criterion.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, get_type_hints

import torch
from torch import Tensor

from uqkit._checks import check_level, check_positive
from uqkit.inference.adaptation import WarmupState, restart_step_size, warmup_init, warmup_update
from uqkit.inference.traced import LogDensity, value_and_grad
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


def velocity_fn(inverse_mass: Tensor) -> Callable[[Tensor], Tensor]:
    """``p ↦ M⁻¹ p`` for momenta ``[C, D]`` under a diagonal ``[C, D]`` or dense ``[C, D, D]`` ``M⁻¹``."""
    if inverse_mass.ndim == 3:
        return lambda p: torch.bmm(inverse_mass, p.unsqueeze(-1)).squeeze(-1)
    return lambda p: inverse_mass * p


def kinetic_energy(momentum: Tensor, velocity: Tensor) -> Tensor:
    """½ pᵀM⁻¹p ``[C]`` from momenta and velocities ``[C, D]``."""
    return 0.5 * torch.linalg.vecdot(momentum, velocity)


def sample_momentum(inverse_mass: Tensor, generator: torch.Generator) -> Tensor:
    """Momenta ``[C, D]`` ~ N(0, M) per chain."""
    shape = inverse_mass.shape[:2]
    noise = torch.randn(shape, generator=generator, dtype=inverse_mass.dtype, device=inverse_mass.device)
    if inverse_mass.ndim == 3:  # M⁻¹ = LLᵀ  ⇒  p = L⁻ᵀξ has covariance (LLᵀ)⁻¹ = M
        chol = torch.linalg.cholesky(inverse_mass)
        return torch.linalg.solve_triangular(chol.mT, noise.unsqueeze(-1), upper=True).squeeze(-1)
    return noise * inverse_mass.rsqrt()


def leapfrog(
    log_density: LogDensity,
    position: Tensor,
    momentum: Tensor,
    grad: Tensor,
    step_size: Tensor,
    velocity: Callable[[Tensor], Tensor],
    active: Tensor | None = None,
    *,
    half_step: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One velocity-Verlet step: p ← p + ε/2·∇; z ← z + ε·M⁻¹p; p ← p + ε/2·∇.

    Args:
        step_size: ``[C, 1]`` signed step sizes (negative integrates backward in time).
        active: ``[C]`` bool; inactive chains stay where they are, so the log density is never
            evaluated at a point beyond one where it was already non-finite.
        half_step: ``0.5 * step_size``, when the caller integrates many steps with one step size.

    Returns:
        position, momentum, velocity ``[C, D]``, log density ``[C]`` and gradient ``[C, D]``.
    """
    half = 0.5 * step_size if half_step is None else half_step
    momentum = torch.addcmul(momentum, half, grad)
    new_position = torch.addcmul(position, step_size, velocity(momentum))
    if active is not None:
        new_position = torch.where(active.unsqueeze(-1), new_position, position)
    value, grad = value_and_grad(log_density, new_position)
    momentum = torch.addcmul(momentum, half, grad)
    return new_position, momentum, velocity(momentum), value, grad


def energy_error(momentum: Tensor, velocity: Tensor, value: Tensor, energy0: Tensor) -> Tensor:
    """H(z, p) − H₀ ``[C]``, with every non-finite case (NaN, +inf log density) mapped to +inf."""
    delta = kinetic_energy(momentum, velocity) - value - energy0
    return torch.nan_to_num(delta, nan=math.inf, posinf=math.inf, neginf=math.inf)


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
    velocity = velocity_fn(state.inverse_mass)
    log_target = math.log(0.8)
    step_size = step_size.clone()
    direction_up: Tensor | None = None
    done = torch.zeros_like(step_size, dtype=torch.bool)
    for _ in range(max_iter):
        momentum = sample_momentum(state.inverse_mass, generator)
        energy0 = kinetic_energy(momentum, velocity(momentum)) - state.log_density
        _, p, v, value, _ = leapfrog(
            log_density, state.position, momentum, state.grad, step_size.unsqueeze(-1), velocity
        )
        log_accept = -energy_error(p, v, value, energy0)
        if direction_up is None:
            direction_up = log_accept > log_target
            continue
        done |= torch.where(direction_up, ~(log_accept > log_target), ~(log_accept < log_target))
        done |= (step_size > 1e7) | (step_size < 1e-10)
        if bool(done.all()):
            break
        step_size = torch.where(done, step_size, torch.where(direction_up, 2 * step_size, 0.5 * step_size))
    return step_size.clamp(1e-10, 1e7)


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
        num_steps = torch.randint(lo, hi + 1, (num_chains,), generator=generator, device=device)
        velocity = velocity_fn(state.inverse_mass)
        momentum = sample_momentum(state.inverse_mass, generator)
        energy0 = kinetic_energy(momentum, velocity(momentum)) - state.log_density
        log_u = torch.rand(num_chains, generator=generator, dtype=state.position.dtype, device=device).log()
        position, grad, value, step_size = state.position, state.grad, state.log_density, state.step_size.unsqueeze(-1)
        alive = torch.ones(num_chains, dtype=torch.bool, device=device)
        steps_taken = torch.zeros_like(num_steps)
        for i in range(hi):
            active = alive & (num_steps > i)
            position, momentum, v, value, grad = leapfrog(
                log_density, position, momentum, grad, step_size * active.unsqueeze(-1), velocity, active
            )
            steps_taken += active
            alive = alive & torch.isfinite(value)
        delta = energy_error(momentum, v, value, energy0)
        accept = log_u < -delta
        col = accept.unsqueeze(-1)
        new_state = replace(
            state,
            position=torch.where(col, position, state.position),
            log_density=torch.where(accept, value, state.log_density),
            grad=torch.where(col, grad, state.grad),
        )
        info = HMCInfo(
            accept_prob=torch.exp(-delta.clamp(min=0)),
            divergent=delta > MAX_ENERGY_ERROR,
            num_steps=steps_taken,
            energy=torch.where(accept, delta + energy0, energy0),
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
