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

import numpy as np
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
    sample_momentum,
)
from uqkit.inference.integrator import (
    array_log_density,
    dot,
    integrating,
    kinetic_energy,
    leapfrog,
    to_numpy,
    to_torch,
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


def _turning(v_left: np.ndarray, v_right: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Generalised U-turn ``[..., C]``: M⁻¹p at either end of a span has a non-positive dot product
    with the span's momentum sum ``rho [..., C, D]`` (`np.fmin` skips a NaN product, as ``a <= 0 | b <= 0``
    would)."""
    return np.fmin(dot(v_left, rho), dot(v_right, rho)) <= 0


def _trailing_ones(n: int) -> int:
    return (~n & (n + 1)).bit_length() - 1


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


class _Slots:
    """Checkpoints of the first and last leaf of the sub-subtrees still open, indexed by log2 size.

    ``p``, ``v`` and ``r`` (the momentum, velocity and running momentum sum up to and including a leaf)
    are each ``[2, depth + 1, C, D]``: ``[0, k]`` belongs to the first leaf of the sub-subtree of ``2^k``
    leaves that contains the current leaf, ``[1, k]`` to the last leaf of the most recent completed left
    half of ``2^k`` leaves.
    """

    def __init__(self, depth: int, like: np.ndarray) -> None:
        # zeros, not empty: `turning` reads slot ``[1, num]`` (no left half) before discarding its result, and
        # garbage there (NaN, inf) raised floating-point warnings outside the samplers' errstate
        self.p, self.v, self.r = np.zeros((3, 2, depth + 1, *like.shape), like.dtype)

    def leaf(self, n: int, depth: int, p: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray | None:
        """Record leaf ``n`` of a subtree of ``2^depth`` leaves (``p``, ``v``, running sum ``r`` ``[C, D]``);
        at an odd leaf, return the U-turn mask ``[C]`` of the sub-subtrees that end there."""
        if n % 2 == 0:  # the leaf opens sub-subtrees of 2^1 .. 2^k leaves
            k = min(_trailing_zeros(n), depth) if n else depth
            self.p[0, 1 : k + 1], self.v[0, 1 : k + 1], self.r[0, 1 : k + 1] = p, v, r
            return None
        ones = _trailing_ones(n)
        if ones < depth:  # the leaf closes a left half of 2^ones leaves
            self.p[1, ones], self.v[1, ones], self.r[1, ones] = p, v, r
        return self.turning(ones, v, r)

    def turning(self, num: int, v: np.ndarray, r: np.ndarray) -> np.ndarray:
        """U-turn ``[C]`` in any of the sub-subtrees of ``2^1 .. 2^num`` leaves that end at the current
        leaf (velocity ``v``, running momentum sum ``r``), checking each one across its halves' boundary too."""
        if num == 1:  # a pair of leaves
            return _turning(self.v[0, 1], v, r - self.r[0, 1] + self.p[0, 1])
        p, v_slots, r_slots = self.p[:, 1 : num + 1], self.v[:, 1 : num + 1], self.r[:, 1 : num + 1]
        # [0]: the whole span; [1]: the last leaf of its left half + its right half (slot num is no left half)
        spans = _turning(v_slots, v, r - r_slots + p)  # [2, num, C]
        spans[1, -1] = False
        # the left half + the first leaf of the right half
        halves = _turning(v_slots[0, 1:], v_slots[0, :-1], r_slots[0, :-1] - r_slots[0, 1:] + p[0, 1:])
        return np.logical_or.reduce(spans.reshape(-1, len(v))) | np.logical_or.reduce(halves)  # any(0), unwrapped


def _gather(leaves: dict[int, tuple[np.ndarray, ...]], index: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per chain ``c``, row ``c`` of leaf ``index[c]``'s arrays (each leaf a tuple of ``[C, ...]`` arrays)."""
    out = tuple(np.empty_like(a) for a in leaves[int(index[0])])
    for c, i in enumerate(index.tolist()):
        for a, b in zip(out, leaves[i]):
            a[c] = b[c]
    return out


def _pack(z: np.ndarray, p: np.ndarray, v: np.ndarray, g: np.ndarray) -> np.ndarray:
    """A trajectory end ``[C, 4, D]`` from its position, momentum, velocity and gradient ``[C, D]``."""
    end = np.empty((z.shape[0], 4, z.shape[1]), z.dtype)
    end[:, 0], end[:, 1], end[:, 2], end[:, 3] = z, p, v, g
    return end


def _transition(
    log_density: LogDensity, state: HMCState, max_depth: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, HMCInfo]:
    """One NUTS trajectory per chain; returns the sampled position ``[C, D]``, its log density ``[C]``,
    gradient ``[C, D]`` and the transition's info. Random numbers come from ``generator``; the
    arithmetic runs in NumPy (`uqkit.inference.integrator`). The multinomial draws pick leaf numbers;
    the leaves that may still be drawn are kept (by reference) and the proposal is gathered once, at the end."""
    num_chains = state.position.shape[0]
    like, dtype, device = state.position, state.position.dtype, state.position.device
    evaluate = array_log_density(log_density, like)
    velocity = velocity_fn(to_numpy(state.inverse_mass))
    p0 = to_numpy(sample_momentum(state.inverse_mass, generator))
    v0 = velocity(p0)
    z0, value0, g0 = to_numpy(state.position), to_numpy(state.log_density), to_numpy(state.grad)
    energy0 = kinetic_energy(p0, v0) - value0
    forward = to_numpy(torch.rand(max_depth, num_chains, generator=generator, dtype=dtype, device=device)) < 0.5
    step_size = to_numpy(state.step_size)[:, None]
    signed_steps = np.where(forward[:, :, None], step_size, -step_size)  # [depth, C, 1]
    half_steps = 0.5 * signed_steps

    # trajectory ends in integration time, each [C, 4, D]: position, momentum, velocity, gradient
    left = right = _pack(z0, p0, v0, g0)
    # the leaves that some chain's proposal is or may become, by leaf number (0: the initial state):
    # position, log density, gradient, log weight
    candidates = {0: (z0, value0, g0, np.zeros(num_chains, energy0.dtype))}
    proposal = np.zeros(num_chains, dtype=np.int64)  # per chain, the leaf number of its proposal
    log_weight = np.zeros(num_chains, energy0.dtype)  # log Σ exp(H₀ − H) over the trajectory so far
    rho = p0  # momentum sum over the trajectory so far
    running = np.ones(num_chains, dtype=bool)
    all_running = True
    tree_depth = np.zeros(num_chains, dtype=np.int64)
    num_steps = np.zeros(num_chains, dtype=np.int64)  # leapfrog steps per chain, plus ``steps_all`` taken by every chain
    steps_all = 0
    accept_terms: list[np.ndarray] = []  # per leaf [C]: the log weight where the chain was active, else -inf
    divergent = np.zeros(num_chains, dtype=bool)
    slots = _Slots(max_depth, z0)

    with integrating():  # NaN and ±inf log densities are handled as divergences
        for depth in range(max_depth):
            fwd = forward[depth][:, None, None]
            z, p_near, v_near, g = np.where(fwd, right, left).transpose(1, 0, 2)
            p = p_near
            signed_step, half_step = signed_steps[depth], half_steps[depth]
            num_leaves = 1 << depth
            log_u = np.log(to_numpy(torch.rand(num_leaves + 1, num_chains, generator=generator, dtype=dtype,
                                               device=device)))
            active, all_active = running, all_running
            log_w_sub = -math.inf
            for n in range(num_leaves):
                z, p, v, value, g = leapfrog(evaluate, z, p, g, signed_step, velocity, None if all_active else active,
                                             half_step=half_step)
                log_w = value + energy0 - 0.5 * dot(p, v)  # log weight H₀ − H
                # NaN and +inf weigh nothing; a weight below exp(-MAX_ENERGY_ERROR) is a divergence
                diverging = not -MAX_ENERGY_ERROR <= np.minimum.reduce(log_w) <= np.maximum.reduce(log_w) < math.inf
                if diverging:
                    log_w = np.where(log_w < math.inf, log_w, -math.inf)
                if all_active:
                    steps_all += 1
                    accept_terms.append(log_w)
                else:
                    num_steps += active
                    accept_terms.append(np.where(active, log_w, -math.inf))
                log_w_new = np.logaddexp(log_w_sub, log_w)
                leaf = len(accept_terms)  # this leaf's number in the whole trajectory, from 1
                if n == 0:
                    sub_proposal, candidates[leaf] = leaf, (z, value, g, log_w)
                    rho_sub, first_p, first_v = p, p, v
                else:  # uniform progressive sampling: the new leaf replaces the proposal w.p. w_leaf / w_subtree
                    pick = log_u[n] < log_w - log_w_new
                    if np.count_nonzero(pick):
                        sub_proposal, candidates[leaf] = np.where(pick, leaf, sub_proposal), (z, value, g, log_w)
                    rho_sub = rho_sub + p
                log_w_sub = log_w_new
                if diverging:
                    ok = log_w >= -MAX_ENERGY_ERROR
                    divergent |= active > ok
                    active = active & ok
                changed = diverging
                if n % 2:
                    turned = slots.leaf(n, depth, p, v, rho_sub)
                    if np.count_nonzero(turned):
                        active, changed = active > turned, True  # active and not turning
                elif depth:
                    slots.leaf(n, depth, p, v, rho_sub)
                if changed:
                    num_active = np.count_nonzero(active)
                    all_active = num_active == num_chains
                    if num_active == 0:
                        break

            valid = active
            # biased progressive sampling: prefer the new subtree w.p. min(1, w_subtree / w_old)
            merge = log_u[-1] < log_w_sub - log_weight
            if all_active:
                proposal = np.where(merge, sub_proposal, proposal)
                log_weight = np.logaddexp(log_weight, log_w_sub)
            else:
                proposal = np.where(valid & merge, sub_proposal, proposal)
                log_weight = np.where(valid, np.logaddexp(log_weight, log_w_sub), log_weight)
            candidates = {i: candidates[i] for i in set(proposal.tolist())}  # the others can no longer be drawn
            # U-turn over the merged trajectory, plus Stan's checks across the old/new boundary
            v_far = np.where(fwd[:, 0], left[:, 2], right[:, 2])
            turning = np.logical_or.reduce(_turning(np.array((v_far, v_far, v_near)), np.array((v, first_v, v)),
                                                    np.array((rho + rho_sub, rho + first_p, rho_sub + p_near))))
            tree_depth += valid
            running = valid > turning
            num_running = np.count_nonzero(running)
            if num_running == 0:
                break
            all_running = num_running == num_chains
            rho = rho + rho_sub
            end = _pack(z, p, v, g)
            right, left = np.where(fwd, end, right), np.where(fwd, left, end)

    position, value, grad, log_w = _gather(candidates, proposal)
    num_steps += steps_all
    accept_sum = np.exp(np.minimum(np.array(accept_terms), 0)).sum(0)
    info = HMCInfo(
        accept_prob=to_torch((accept_sum / num_steps).astype(accept_sum.dtype), like),
        divergent=to_torch(divergent, like),
        num_steps=to_torch(num_steps, like),
        energy=to_torch(energy0 - log_w, like),
        step_size=state.step_size,
        tree_depth=to_torch(tree_depth, like),
    )
    return to_torch(position, like), to_torch(value, like), to_torch(grad, like), info
