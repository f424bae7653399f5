"""The No-U-Turn Sampler, iterative and vectorised over chains.

Every chain builds its own trajectory (own directions, own depth), but all chains move in lockstep:
at doubling ``j`` each running chain adds a subtree of ``2^j`` leapfrog steps, and one batched log
density call serves all of them. A chain that stops (U-turn, divergence) is masked out and waits;
the loop ends when every chain has stopped. Subtrees are built leaf by leaf; the U-turn checks of
the sub-subtrees that end at a leaf use checkpoint slots indexed by the sub-subtree size, so there is
no recursion and no per-chain Python object.

Sampling is multinomial over the trajectory: uniform progressive sampling inside a subtree and
biased progressive sampling when a subtree is merged (Betancourt 2017, arXiv:1701.02434, appendix
A.3.2); U-turns use the generalised criterion on momentum sums with Stan's extra checks across
every subtree boundary. Hoffman & Gelman (2014) for the original sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from uqkit.inference.hmc import (
    MAX_ENERGY_ERROR,
    AdaptiveKernel,
    HMCInfo,
    HMCState,
    LogDensity,
    adapt,
    check_adapt_options,
    kinetic_energy,
    leapfrog,
    sample_momentum,
    velocity_fn,
)
from uqkit.registry import register_engine


@register_engine("nuts")
@dataclass(frozen=True)
class NUTS(AdaptiveKernel):
    """No-U-Turn Sampler with multinomial sampling and Stan-style warmup.

    Args:
        max_tree_depth: at most ``2^max_tree_depth − 1`` leapfrog steps per transition.
        target_accept: mean acceptance statistic that warmup's dual averaging aims for, in (0, 1).
        step_size: initial step size; None runs Stan's heuristic.
        dense_mass: adapt a dense ``[D, D]`` mass matrix instead of a diagonal one.
        adapt_step_size: adapt the step size during warmup.
        adapt_mass: adapt the mass matrix during warmup (Stan's windows).
    """

    max_tree_depth: int = 10
    target_accept: float = 0.8
    step_size: float | None = None
    dense_mass: bool = False
    adapt_step_size: bool = True
    adapt_mass: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_tree_depth, int) or not 1 <= self.max_tree_depth <= 20:
            raise ValueError(f"max_tree_depth: expected an integer in [1, 20], got {self.max_tree_depth!r}")
        check_adapt_options(self.step_size, self.target_accept)

    def step(self, log_density: LogDensity, state: HMCState, *, generator: torch.Generator) -> tuple[HMCState, HMCInfo]:
        """One NUTS transition of every chain (and one warmup update while warmup lasts)."""
        position, value, grad, info = _transition(log_density, state, self.max_tree_depth, generator)
        state = replace(state, position=position, log_density=value, grad=grad)
        return adapt(log_density, state, info.accept_prob, self.adapt_options, generator), info


def _turning(v_left: Tensor, v_right: Tensor, rho: Tensor) -> Tensor:
    """Generalised U-turn ``[..., C]``: M⁻¹p at either end of a span has a non-positive dot product
    with the span's momentum sum ``rho [..., C, D]``."""
    return (torch.linalg.vecdot(v_left, rho) <= 0) | (torch.linalg.vecdot(v_right, rho) <= 0)


def _select(mask: Tensor, new: tuple[Tensor, ...], old: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Per chain (``mask [C]``), ``new`` where true, else ``old``; tensors ``[C]`` or ``[C, D]``."""
    col = mask[:, None]
    return tuple(torch.where(col if a.ndim == 2 else mask, a, b) for a, b in zip(new, old))


def _trailing_ones(n: int) -> int:
    return (~n & (n + 1)).bit_length() - 1


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


class _Slots:
    """Checkpoints of the first and last leaf of the sub-subtrees still open, indexed by log2 size.

    ``first[k]`` belongs to the sub-subtree of ``2^k`` leaves that contains the current leaf;
    ``last[k]`` to the most recent completed left half of ``2^k`` leaves. Each holds ``[3, C, D]``:
    the momentum ``p``, velocity ``v`` and running momentum sum ``r`` up to and including that leaf.
    """

    def __init__(self, depth: int, like: Tensor) -> None:
        self.first = like.new_empty((depth + 1, 3, *like.shape))
        self.last = like.new_empty((depth + 1, 3, *like.shape))

    def leaf(self, n: int, depth: int, p: Tensor, v: Tensor, r: Tensor) -> Tensor | None:
        """Record leaf ``n`` of a subtree of ``2^depth`` leaves (``p``, ``v``, running sum ``r`` ``[C, D]``);
        at an odd leaf, return the U-turn mask ``[C]`` of the sub-subtrees that end there."""
        if n % 2 == 0:  # the leaf opens sub-subtrees of 2^1 .. 2^k leaves
            self.first[1 : (min(_trailing_zeros(n), depth) if n else depth) + 1] = torch.stack((p, v, r))
            return None
        ones = _trailing_ones(n)
        if ones < depth:  # the leaf closes a left half of 2^ones leaves
            self.last[ones] = torch.stack((p, v, r))
        return self.turning(ones, v, r)

    def turning(self, num: int, v: Tensor, r: Tensor) -> Tensor:
        """U-turn ``[C]`` in any of the sub-subtrees of ``2^1 .. 2^num`` leaves that end at the current
        leaf (velocity ``v``, running momentum sum ``r``), checking each one across its halves' boundary too."""
        fp, fv, fr = self.first[1 : num + 1].unbind(1)
        turning = _turning(fv, v, r - fr + fp).any(0)  # whole span
        if num >= 2:  # left half + first leaf of the right half; last leaf of the left half + right half
            lp, lv, lr = self.last[1:num].unbind(1)
            turning |= _turning(fv[1:], fv[:-1], fr[:-1] - fr[1:] + fp[1:]).any(0)
            turning |= _turning(lv, v, r - lr + lp).any(0)
        return turning


def _transition(
    log_density: LogDensity, state: HMCState, max_depth: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, HMCInfo]:
    """One NUTS trajectory per chain; returns the sampled position ``[C, D]``, its log density ``[C]``,
    gradient ``[C, D]`` and the transition's info. Stopping tests read a per-leaf count back to Python."""
    num_chains = state.position.shape[0]
    dtype, device = state.position.dtype, state.position.device
    velocity = velocity_fn(state.inverse_mass)
    p0 = sample_momentum(state.inverse_mass, generator)
    v0 = velocity(p0)
    energy0 = kinetic_energy(p0, v0) - state.log_density
    forward = (torch.rand(max_depth, num_chains, generator=generator, dtype=dtype, device=device) < 0.5).unbind(0)
    step_size = state.step_size.unsqueeze(-1)

    # trajectory ends in integration time, each [C, 4, D]: position, momentum, velocity, gradient
    left = right = torch.stack((state.position, p0, v0, state.grad), 1)
    proposal = (state.position, state.log_density, state.grad, torch.zeros_like(energy0))
    log_weight = torch.zeros_like(energy0)  # log Σ exp(H₀ − H) over the trajectory so far
    rho = p0  # momentum sum over the trajectory so far
    running = torch.ones_like(energy0, dtype=torch.bool)
    all_running = True
    tree_depth = torch.zeros_like(energy0, dtype=torch.int64)
    num_steps = torch.zeros_like(tree_depth)  # leapfrog steps per chain, plus ``steps_all`` taken by every chain
    steps_all = 0
    accept_sum = torch.zeros_like(energy0)
    divergent = torch.zeros_like(running)
    slots = _Slots(max_depth, state.position)

    for depth in range(max_depth):
        fwd = forward[depth].view(-1, 1, 1)
        z, p_near, v_near, g = torch.where(fwd, right, left).unbind(1)
        p = p_near
        signed_step = torch.where(fwd[:, 0], step_size, -step_size)
        half_step = 0.5 * signed_step
        num_leaves = 1 << depth
        log_u = torch.rand(num_leaves + 1, num_chains, generator=generator, dtype=dtype, device=device).log().unbind(0)
        active, all_active = running, all_running
        log_w_sub = torch.full_like(energy0, -math.inf)
        rho_sub = torch.zeros_like(p)
        for n in range(num_leaves):
            z, p, v, value, g = leapfrog(log_density, z, p, g, signed_step, velocity, None if all_active else active,
                                         half_step=half_step)
            log_w = torch.nan_to_num(
                torch.sub(value + energy0, torch.linalg.vecdot(p, v), alpha=0.5), nan=-math.inf, posinf=-math.inf
            )  # log weight H₀ − H; NaN and +inf log densities weigh nothing (and diverge below)
            if all_active:
                steps_all += 1
                accept_sum += log_w.clamp(max=0).exp()
            else:
                num_steps += active
                accept_sum += torch.where(active, log_w, -math.inf).clamp(max=0).exp()
            log_w_new = torch.logaddexp(log_w_sub, log_w)
            if n == 0:
                sub_proposal, first_p, first_v = (z, value, g, log_w), p, v
            else:  # uniform progressive sampling: the new leaf replaces the proposal w.p. w_leaf / w_subtree
                sub_proposal = _select(log_u[n] < log_w - log_w_new, (z, value, g, log_w), sub_proposal)
            log_w_sub = log_w_new
            rho_sub = rho_sub + p
            ok = log_w >= -MAX_ENERGY_ERROR
            divergent |= active > ok
            active = active & ok
            if n % 2:
                active = active & ~slots.leaf(n, depth, p, v, rho_sub)
            elif depth:
                slots.leaf(n, depth, p, v, rho_sub)
            num_active = int(active.sum())
            if num_active == 0:
                break
            all_active = num_active == num_chains

        valid = active
        # biased progressive sampling: prefer the new subtree w.p. min(1, w_subtree / w_old)
        proposal = _select(valid & (log_u[-1] < log_w_sub - log_weight), sub_proposal, proposal)
        log_weight = torch.where(valid, torch.logaddexp(log_weight, log_w_sub), log_weight)
        # U-turn over the merged trajectory, plus Stan's checks across the old/new boundary
        v_far = torch.where(fwd, left, right)[:, 2]
        turning = _turning(
            torch.stack([v_far, v_far, v_near]),
            torch.stack([v, first_v, v]),
            torch.stack([rho + rho_sub, rho + first_p, rho_sub + p_near]),
        ).any(0)
        rho = rho + rho_sub
        end = torch.stack((z, p, v, g), 1)
        right, left = torch.where(fwd, end, right), torch.where(fwd, left, end)
        tree_depth += valid
        running = valid & ~turning
        num_running = int(running.sum())
        if num_running == 0:
            break
        all_running = num_running == num_chains

    position, value, grad, log_w = proposal
    num_steps += steps_all
    info = HMCInfo(
        accept_prob=accept_sum / num_steps,
        divergent=divergent,
        num_steps=num_steps,
        energy=energy0 - log_w,
        step_size=state.step_size,
        tree_depth=tree_depth,
    )
    return position, value, grad, info
