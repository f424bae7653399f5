"""Leapfrog integration under a Euclidean metric, on NumPy arrays.

HMC and NUTS do their per-step arithmetic (momenta, energies, trajectory bookkeeping) in NumPy and
only the log density and its gradient in torch (`value_and_grad`, on the device of the chains'
state). On the small ``[C, D]`` arrays of a few chains a NumPy operation costs a third to a tenth of
a torch operation's dispatch, and a NUTS transition performs dozens of them per leapfrog step.
On the CPU, arrays cross to torch and back without copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from torch import Tensor

from uqkit.inference.traced import LogDensity, TracedLogDensity, value_and_grad

#: Log density and gradient of positions ``[C, D]``: ``[C]`` and ``[C, D]`` arrays.
ArrayLogDensity = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def to_numpy(tensor: Tensor) -> np.ndarray:
    """``tensor`` as a NumPy array (a view on the CPU, a copy from other devices)."""
    return tensor.numpy(force=True)  # detach().cpu().numpy() in one call


def to_torch(array: np.ndarray, like: Tensor) -> Tensor:
    """``array`` as a tensor on ``like``'s device."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(like.device)


@contextmanager
def integrating() -> Iterator[None]:
    """The context in which `ArrayLogDensity` functions are called: traced graphs run without the
    graph executor's optimisations (which would change their floating-point results, see
    `TracedLogDensity.graph_for`), and NumPy's floating-point warnings are off (NaN and ±inf log
    densities are divergences, which the samplers handle). Entered once per transition rather than
    once per leapfrog step (it costs a few microseconds, a few percent of a small model's step)."""
    with torch.jit.optimized_execution(False), np.errstate(all="ignore"):
        yield


def array_log_density(log_density: LogDensity, like: Tensor) -> ArrayLogDensity:
    """``log_density`` evaluated with its gradient on ``like``'s device, taking and giving arrays of
    ``like``'s shape (a `TracedLogDensity`'s graph is looked up once, here). Call the result inside
    `integrating()`."""
    graph = log_density.graph_for(like) if isinstance(log_density, TracedLogDensity) else None
    if graph is None:
        graph = partial(value_and_grad, log_density)
    if like.device.type == "cpu":  # no copies
        to_device = torch.from_numpy
    else:
        def to_device(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array).to(like.device)

    def evaluate(position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value, grad = graph(to_device(position))
        return to_numpy(value), to_numpy(grad)

    return evaluate


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inner product over the last axis: ``[..., D] × [..., D] → [...]`` (what ``(a * b).sum(-1)``
    computes, without `ndarray.sum`'s Python wrapper)."""
    return np.add.reduce(a * b, -1)


def velocity_fn(inverse_mass: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``p ↦ M⁻¹ p`` for momenta ``[C, D]`` under a diagonal ``[C, D]`` or dense ``[C, D, D]`` ``M⁻¹``."""
    if inverse_mass.ndim == 3:
        return lambda p: np.matmul(inverse_mass, p[..., None])[..., 0]
    return lambda p: inverse_mass * p


def kinetic_energy(momentum: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """½ pᵀM⁻¹p ``[C]`` from momenta and velocities ``[C, D]``."""
    return 0.5 * dot(momentum, velocity)


def leapfrog(
    evaluate: ArrayLogDensity,
    position: np.ndarray,
    momentum: np.ndarray,
    grad: np.ndarray,
    step_size: np.ndarray,
    velocity: Callable[[np.ndarray], np.ndarray],
    active: np.ndarray | None = None,
    *,
    half_step: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
    momentum = momentum + half * grad
    new_position = position + step_size * velocity(momentum)
    if active is not None:
        new_position = np.where(active[:, None], new_position, position)
    value, grad = evaluate(new_position)
    momentum = momentum + half * grad
    return new_position, momentum, velocity(momentum), value, grad


def energy_error(momentum: np.ndarray, velocity: np.ndarray, value: np.ndarray, energy0: np.ndarray) -> np.ndarray:
    """H(z, p) − H₀ ``[C]``, with every non-finite case (NaN, +inf log density) mapped to +inf."""
    delta = kinetic_energy(momentum, velocity) - value - energy0
    return np.where(delta > -math.inf, delta, math.inf)
