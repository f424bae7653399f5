"""Stan-style warmup: dual-averaging step size, Welford mass-matrix estimates, windowed schedule.

Every chain adapts on its own: one dual-averaging state and one mass matrix per chain, so chains
stay independent (R-hat keeps its meaning) and a badly initialised chain does not drag the others'
step size down. All state is tensors in frozen dataclasses, so a warmup can be checkpointed and
resumed bit for bit.

References: Nesterov (2009) and Hoffman & Gelman (2014, section 3.2) for dual averaging; Stan
Reference Manual, "HMC algorithm parameters", for the windows and the mass-matrix regulariser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

#: Dual-averaging constants (Hoffman & Gelman 2014; Stan's defaults).
GAMMA, T0, KAPPA = 0.05, 10.0, 0.75
#: Stan's default warmup buffers, in iterations.
INIT_BUFFER, TERM_BUFFER, BASE_WINDOW = 75, 50, 25


@dataclass(frozen=True)
class DualAveragingState:
    """Per-chain dual-averaging state (log step sizes, so step sizes stay positive).

    Attributes:
        log_step_size: ``[C]`` the step size used next (x_t).
        log_step_size_avg: ``[C]`` the weighted average of past iterates (x̄_t), used after warmup.
        error_avg: ``[C]`` the running mean of (target − acceptance) (H̄_t).
        shrink_target: ``[C]`` the point the iterates shrink toward (μ = log(10 ε₀)).
        count: ``[]`` int64, updates since the last restart (t).
    """

    log_step_size: Tensor
    log_step_size_avg: Tensor
    error_avg: Tensor
    shrink_target: Tensor
    count: Tensor


def dual_averaging_init(step_size: Tensor) -> DualAveragingState:
    """Start (or restart) dual averaging from ``step_size [C]``, shrinking toward log(10·step_size)."""
    log_step = step_size.log()
    zeros = torch.zeros_like(log_step)
    return DualAveragingState(log_step, zeros, zeros, log_step + math.log(10.0), torch.zeros((), dtype=torch.int64))


def dual_averaging_update(state: DualAveragingState, accept_prob: Tensor, target_accept: float) -> DualAveragingState:
    """One dual-averaging step from the acceptance statistics ``accept_prob [C]`` of the last transition.

    H̄ ← (1 − 1/(t+t₀)) H̄ + (δ − α)/(t+t₀);  x = μ − √t/γ · H̄;  x̄ ← (1 − t^−κ) x̄ + t^−κ x.
    """
    count = state.count + 1
    t = float(count)
    eta = 1.0 / (t + T0)
    error_avg = (1 - eta) * state.error_avg + eta * (target_accept - accept_prob.clamp(max=1.0))
    log_step = state.shrink_target - math.sqrt(t) / GAMMA * error_avg
    weight = t ** (-KAPPA)
    log_avg = (1 - weight) * state.log_step_size_avg + weight * log_step
    return DualAveragingState(log_step, log_avg, error_avg, state.shrink_target, count)


@dataclass(frozen=True)
class WelfordState:
    """Running mean and sum of squared deviations per chain (Welford 1962).

    Attributes:
        count: ``[]`` int64, samples seen.
        mean: ``[C, D]``.
        m2: ``[C, D]`` (diagonal) or ``[C, D, D]`` (dense) sums of (outer) products of deviations.
    """

    count: Tensor
    mean: Tensor
    m2: Tensor


def welford_init(num_chains: int, dim: int, *, dense: bool, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> WelfordState:
    """An empty estimator for ``[num_chains, dim]`` samples."""
    m2_shape = (num_chains, dim, dim) if dense else (num_chains, dim)
    return WelfordState(torch.zeros((), dtype=torch.int64), torch.zeros(num_chains, dim, dtype=dtype, device=device),
                        torch.zeros(m2_shape, dtype=dtype, device=device))


def welford_update(state: WelfordState, x: Tensor) -> WelfordState:
    """Add one sample ``x [C, D]`` per chain."""
    count = state.count + 1
    delta = x - state.mean
    mean = state.mean + delta / count.to(x.dtype)
    if state.m2.ndim == 3:
        m2 = state.m2 + delta[:, :, None] * (x - mean)[:, None, :]
    else:
        m2 = state.m2 + delta * (x - mean)
    return WelfordState(count, mean, m2)


def welford_covariance(state: WelfordState, *, regularize: bool = True) -> Tensor:
    """Sample (co)variance ``[C, D]`` or ``[C, D, D]`` (denominator n − 1).

    With ``regularize``, shrink toward 10⁻³·I as Stan does: n/(n+5)·Σ̂ + 10⁻³·5/(n+5)·I.
    """
    n = float(state.count)
    if n < 2:
        raise ValueError(f"welford: need at least 2 samples for a variance, got {int(n)}")
    cov = state.m2 / (n - 1)
    if not regularize:
        return cov
    shrink = 1e-3 * 5.0 / (n + 5.0)
    cov = (n / (n + 5.0)) * cov
    if cov.ndim == 3:
        return cov + shrink * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return cov + shrink


def warmup_windows(num_warmup: int) -> list[tuple[int, int]]:
    """Stan's slow adaptation windows ``[(start, end), ...]`` (iteration indices, end exclusive).

    An initial fast buffer (75 iterations), windows doubling from 25 and a terminal fast buffer (50);
    a window is stretched to the terminal buffer when the next (doubled) one would not fit. With fewer
    than 150 warmup iterations the buffers become 15 % / 75 % / 10 % of the warmup; below 20 there is
    no mass-matrix adaptation, only step size.
    """
    if num_warmup < 20:
        return []
    init_buffer, term_buffer, window = INIT_BUFFER, TERM_BUFFER, BASE_WINDOW
    if init_buffer + window + term_buffer > num_warmup:
        init_buffer = int(0.15 * num_warmup)
        term_buffer = int(0.1 * num_warmup)
        window = num_warmup - (init_buffer + term_buffer)
    slow_end = num_warmup - term_buffer
    windows, start = [], init_buffer
    while start < slow_end:
        end = start + window
        if end + 2 * window > slow_end:
            end = slow_end
        windows.append((start, end))
        start, window = end, 2 * window
    return windows


@dataclass(frozen=True)
class WarmupState:
    """Where a chain set is in its warmup, and the running step-size and mass-matrix estimators.

    Attributes:
        iteration: ``[]`` int64, warmup transitions done so far.
        num_warmup: ``[]`` int64, warmup transitions in total (0: no adaptation).
        step_size: dual-averaging state, one per chain.
        mass: Welford estimator of the positions in the current slow window.
    """

    iteration: Tensor
    num_warmup: Tensor
    step_size: DualAveragingState
    mass: WelfordState

    @property
    def active(self) -> bool:
        return int(self.iteration) < int(self.num_warmup)


def warmup_init(step_size: Tensor, dim: int, num_warmup: int, *, dense: bool) -> WarmupState:
    """The warmup state before the first transition, for ``step_size [C]`` chains in ``dim`` dimensions."""
    return WarmupState(
        torch.zeros((), dtype=torch.int64),
        torch.tensor(num_warmup, dtype=torch.int64),
        dual_averaging_init(step_size),
        welford_init(step_size.shape[0], dim, dense=dense, dtype=step_size.dtype, device=step_size.device),
    )


@dataclass(frozen=True)
class WarmupUpdate:
    """What one warmup update decided: the new state, step size ``[C]``, and a new mass matrix or None."""

    state: WarmupState
    step_size: Tensor
    inverse_mass: Tensor | None


def warmup_update(
    state: WarmupState, position: Tensor, accept_prob: Tensor, *, target_accept: float, adapt_mass: bool = True
) -> WarmupUpdate:
    """Learn from one warmup transition that ended at ``position [C, D]`` with ``accept_prob [C]``.

    Returns the step size for the next transition (the dual-averaging average after the last warmup
    iteration) and, at the end of a slow window, the new regularised inverse mass matrix; the caller
    then re-runs the step-size heuristic and calls `restart_step_size`.
    """
    it = int(state.iteration)
    dual = dual_averaging_update(state.step_size, accept_prob, target_accept)
    welford, inverse_mass = state.mass, None
    if adapt_mass:
        for start, end in warmup_windows(int(state.num_warmup)):
            if start <= it < end:
                welford = welford_update(welford, position)
                if it == end - 1:
                    inverse_mass = welford_covariance(welford)
                    welford = replace(welford, count=torch.zeros_like(welford.count),
                                      mean=torch.zeros_like(welford.mean), m2=torch.zeros_like(welford.m2))
    new_state = WarmupState(state.iteration + 1, state.num_warmup, dual, welford)
    last = it + 1 == int(state.num_warmup)
    step_size = (dual.log_step_size_avg if last else dual.log_step_size).exp()
    return WarmupUpdate(new_state, step_size, inverse_mass)


def restart_step_size(state: WarmupState, step_size: Tensor) -> WarmupState:
    """Restart dual averaging from ``step_size [C]`` (after a mass-matrix update, as Stan does)."""
    return replace(state, step_size=dual_averaging_init(step_size))
