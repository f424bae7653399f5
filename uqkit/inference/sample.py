"""`sample`: the MCMC driver for any log density over ``[num_chains, D]`` positions (NUTS or HMC)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uqkit._checks import check_float
from uqkit._io import load_tensors, save_tensors
from uqkit.inference.hmc import HMC, HMCInfo, HMCState, state_from_tensors, state_to_tensors
from uqkit.inference.nuts import NUTS
from uqkit.inference.posterior import Posterior
from uqkit.inference.traced import TracedLogDensity
from uqkit.registry import get_engine

_CHECKPOINT_KIND = "uqkit.sample_checkpoint/1"
#: Standard deviation of the jitter added to a shared ``[D]`` init, per chain and coordinate.
INIT_JITTER = 0.1
_STATS = ("log_density", "accept_prob", "step_size", "tree_depth", "num_steps", "divergent", "energy")


def sample(
    log_density: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    method: str = "nuts",
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    thinning: int = 1,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    trace_gradient: bool = True,
    **engine_options: Any,
) -> Posterior:
    """Draw from ``exp(log_density)`` with vectorised NUTS or HMC chains and Stan-style warmup.

    Args:
        log_density: maps float64 positions ``[num_chains, D]`` to ``[num_chains]`` (unnormalised
            log density, differentiable with autograd).
        init: ``[num_chains, D]`` starting points, or ``[D]``: every chain starts there plus
            N(0, 0.1²) jitter per coordinate drawn from ``seed`` (so chains differ and R-hat means something).
        method: ``"nuts"`` or ``"hmc"``; ``engine_options`` go to its config (`NUTS`, `HMC`).
        num_warmup: adaptation transitions, discarded.
        num_samples: draws kept per chain (after thinning).
        num_chains: chains, run in lockstep in one batch.
        seed: seeds the one ``torch.Generator`` all randomness comes from; same seed, same draws.
        thinning: keep every ``thinning``-th post-warmup transition.
        progress: a tqdm bar on stderr (phase, acceptance, step size, divergences); off when not a TTY.
        checkpoint: a file path; the run state is saved there every ``checkpoint_every`` transitions
            and at the end, and a later call with the same arguments resumes from it bit-identically.
        checkpoint_every: transitions between checkpoints.
        trace_gradient: evaluate the log density and its gradient through a traced graph
            (`TracedLogDensity`; bit-identical draws, less overhead per call), falling back to
            autograd where the log density cannot be traced. The log density must then be a pure
            function of its input: its Python code runs only while tracing, so state it keeps or
            changes between calls is not seen; pass False for such a log density.

    Returns:
        `Posterior` with ``draws [num_chains, num_samples, D]`` and ``sample_stats`` ``[num_chains,
        num_samples]``: ``log_density``, ``accept_prob``, ``step_size``, ``num_steps``, ``divergent``
        (bool), ``energy`` and (NUTS) ``tree_depth``.
    """
    engine = _engine(method, engine_options)
    num_warmup = _count(num_warmup, "num_warmup", minimum=0)
    num_samples = _count(num_samples, "num_samples")
    num_chains = _count(num_chains, "num_chains")
    thinning = _count(thinning, "thinning")
    checkpoint_every = _count(checkpoint_every, "checkpoint_every")
    seed = _count(seed, "seed", minimum=0)
    generator = torch.Generator().manual_seed(seed)
    position = _initial_positions(init, num_chains, generator)
    dim = position.shape[1]
    checked = _checked(log_density, num_chains, method)
    if trace_gradient:
        checked = TracedLogDensity(checked)
    fingerprint = json.dumps({
        "method": method, "options": asdict(engine), "dim": dim, "num_chains": num_chains, "num_warmup": num_warmup,
        "num_samples": num_samples, "thinning": thinning, "seed": seed,
        "init": _digest(init),
    }, sort_keys=True, default=str)

    total = num_warmup + num_samples * thinning
    run = _Run.restore(checkpoint, fingerprint, generator) if checkpoint and Path(checkpoint).exists() else None
    if run is None:
        state = engine.init(checked, position, generator=generator, num_warmup=num_warmup)
        run = _Run.empty(state, num_samples, is_nuts=isinstance(engine, NUTS))

    from tqdm import tqdm

    bar = tqdm(total=total, initial=run.iteration, disable=None if progress else True, file=sys.stderr,
               desc="warmup" if run.iteration < num_warmup else "sampling", dynamic_ncols=True)
    start = time.perf_counter()
    state = run.state
    try:
        for it in range(run.iteration, total):
            state, info = engine.step(checked, state, generator=generator)
            run.record(it, state, info, num_warmup, thinning)
            run.state, run.iteration = state, it + 1
            if checkpoint and (run.iteration % checkpoint_every == 0 or run.iteration == total):
                run.save(checkpoint, fingerprint, generator, run.wall_time + time.perf_counter() - start)
            if bar.disable:
                continue
            if it + 1 == num_warmup:
                bar.set_description("sampling", refresh=False)
            if it % 10 == 0 or it + 1 == total:
                bar.set_postfix_str(
                    f"accept={float(info.accept_prob.mean()):.2f} step={float(info.step_size.mean()):.3g} "
                    f"divergent={int(run.num_divergent_warmup) + int(run.stats['divergent'].sum())}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    wall_time = run.wall_time + time.perf_counter() - start
    meta = {
        "method": method, "options": asdict(engine), "seed": seed, "num_warmup": num_warmup,
        "num_samples": num_samples, "num_chains": num_chains, "thinning": thinning, "wall_time_s": wall_time,
        "num_divergent": int(run.stats["divergent"].sum()), "num_divergent_warmup": int(run.num_divergent_warmup),
        "traced_gradient": isinstance(checked, TracedLogDensity) and checked.traced,
    }
    return Posterior(draws=run.draws, sample_stats=run.stats, meta=meta)


def _digest(init: object) -> str:
    """SHA-256 of ``init`` as float64 (part of the checkpoint fingerprint)."""
    data = torch.as_tensor(init).detach().to(torch.float64).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


class _Run:
    """The driver's mutable progress: kernel state, iteration counter, draws and statistics so far."""

    def __init__(self, state: HMCState, iteration: int, draws: Tensor, stats: dict[str, Tensor],
                 num_divergent_warmup: Tensor, wall_time: float) -> None:
        self.state, self.iteration, self.draws, self.stats = state, iteration, draws, stats
        self.num_divergent_warmup, self.wall_time = num_divergent_warmup, wall_time

    @classmethod
    def empty(cls, state: HMCState, num_samples: int, *, is_nuts: bool) -> _Run:
        num_chains, dim = state.position.shape
        shape = (num_chains, num_samples)
        stats = {
            "log_density": torch.zeros(shape, dtype=state.position.dtype),
            "accept_prob": torch.zeros(shape, dtype=state.position.dtype),
            "step_size": torch.zeros(shape, dtype=state.position.dtype),
            "num_steps": torch.zeros(shape, dtype=torch.int64),
            "divergent": torch.zeros(shape, dtype=torch.bool),
            "energy": torch.zeros(shape, dtype=state.position.dtype),
        }
        if is_nuts:
            stats["tree_depth"] = torch.zeros(shape, dtype=torch.int64)
        draws = torch.zeros(num_chains, num_samples, dim, dtype=state.position.dtype)
        return cls(state, 0, draws, stats, torch.zeros((), dtype=torch.int64), 0.0)

    def record(self, it: int, state: HMCState, info: HMCInfo, num_warmup: int, thinning: int) -> None:
        if it < num_warmup:
            self.num_divergent_warmup += info.divergent.sum()
            return
        if (it - num_warmup + 1) % thinning:
            return
        k = (it - num_warmup) // thinning
        self.draws[:, k] = state.position
        self.stats["log_density"][:, k] = state.log_density
        for name in ("accept_prob", "step_size", "num_steps", "divergent", "energy", "tree_depth"):
            if name in self.stats:
                self.stats[name][:, k] = getattr(info, name)

    def save(self, path: str | Path, fingerprint: str, generator: torch.Generator, wall_time: float) -> None:
        tensors = {f"state/{k}": v for k, v in state_to_tensors(self.state).items()}
        tensors.update({f"stats/{k}": v for k, v in self.stats.items()})
        tensors.update({
            "draws": self.draws, "rng": generator.get_state(), "iteration": torch.tensor(self.iteration),
            "num_divergent_warmup": self.num_divergent_warmup,
        })
        save_tensors(path, tensors, kind=_CHECKPOINT_KIND,
                     meta={"fingerprint": fingerprint, "wall_time_s": repr(wall_time)})

    @classmethod
    def restore(cls, path: str | Path, fingerprint: str, generator: torch.Generator) -> _Run:
        try:
            tensors, meta = load_tensors(path, kind=_CHECKPOINT_KIND)
        except ValueError as err:
            raise ValueError(f"checkpoint: {err}") from None
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(f"checkpoint: {path} was written by a run with different arguments; "
                             f"{_diff(meta.get('fingerprint'), fingerprint)}; use another path or delete the file")
        state = state_from_tensors(HMCState, {k[6:]: v for k, v in tensors.items() if k.startswith("state/")})
        generator.set_state(tensors["rng"])
        stats = {k[len("stats/"):]: v for k, v in tensors.items() if k.startswith("stats/")}
        return cls(state, int(tensors["iteration"]), tensors["draws"], stats, tensors["num_divergent_warmup"],
                   float(meta.get("wall_time_s", "0")))


def _diff(old: str | None, new: str) -> str:
    try:
        before = json.loads(old or "{}")
    except json.JSONDecodeError:
        return "its fingerprint is unreadable"
    after = json.loads(new)
    changed = [f"{k}: {before.get(k)!r} in the file, {after[k]!r} now" for k in after if before.get(k) != after[k]]
    return "; ".join(changed) or "unknown difference"


def _engine(method: str, options: dict[str, Any]) -> NUTS | HMC:
    if method not in ("nuts", "hmc"):
        raise ValueError(f"method: expected 'nuts' or 'hmc', got {method!r}")
    return get_engine(method, **options)


def _count(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _initial_positions(init: object, num_chains: int, generator: torch.Generator) -> Tensor:
    position = check_float(init, "init", ndim=(1, 2)).to(torch.float64)
    if position.ndim == 1:
        noise = torch.randn(num_chains, position.shape[0], generator=generator, dtype=torch.float64)
        return position + INIT_JITTER * noise
    if position.shape[0] != num_chains:
        raise ValueError(f"init: expected [num_chains={num_chains}, D] or [D], got shape {tuple(position.shape)}")
    return position.clone()


def _checked(log_density: Callable[[Tensor], Tensor], num_chains: int, method: str) -> Callable[[Tensor], Tensor]:
    if not callable(log_density):
        raise TypeError(f"log_density: expected a callable, got {type(log_density).__name__}")

    def checked(z: Tensor) -> Tensor:
        value = log_density(z)
        if not isinstance(value, Tensor) or value.shape != (num_chains,):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"log_density ({method}): expected a tensor of shape [{num_chains}], got {got}")
        return value

    return checked
