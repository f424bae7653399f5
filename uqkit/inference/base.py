"""The engine protocol shared by the minibatch (SG-MCMC) engines, and the pieces they share.

An engine is a frozen config dataclass with three pure methods: ``init`` makes a frozen ``*State``
from initial parameters, ``step`` maps ``(state, batch)`` to ``(new state, StepInfo)``, and
``posterior`` turns a `Trace` of collected draws into a `Posterior`. The driver (`uqkit.inference.fit`)
owns loops, chains, thinning, checkpoints and progress bars.

State convention: every ``*State`` field is a tensor, a ``dict[str, Tensor]`` keyed by parameter
name, a `Prior` (whose hyperparameters may be Gibbs-updated), or an ``int`` counter, so that
`state_to_tensors` / `state_from_tensors` can checkpoint any engine. Steps never modify their input
state: the returned state holds new tensors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor

from uqkit.inference.posterior import Posterior
from uqkit.models.priors import GibbsPrior, Prior
from uqkit.models.spec import Batch, ModelSpec

Params = dict[str, Tensor]
S = TypeVar("S")


@dataclass(frozen=True)
class StepInfo:
    """What one transition reports, uniformly across engines.

    Attributes:
        log_density: scalar minibatch estimate of the log joint at the point the gradient was taken.
        step_size: the step size used by this transition (schedules make it vary).
        sampling: whether the new state may be kept as a posterior draw (False in the exploration
            phase of cyclical SG-MCMC).
        accept_prob, divergent: for Metropolis-adjusted engines; None otherwise.
        extras: any other per-step scalars.
    """

    log_density: Tensor
    step_size: float | None = None
    sampling: bool = True
    accept_prob: Tensor | None = None
    divergent: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Trace:
    """Draws collected by the driver: ``draws`` leaves ``[chain, draw, *shape]``, ``sample_stats`` ``[chain, draw]``."""

    draws: Params
    sample_stats: dict[str, Tensor]


class Engine(Protocol[S]):
    """A minibatch inference engine (config dataclass; all changing quantities live in the state ``S``)."""

    name: ClassVar[str]
    minibatch: ClassVar[bool]

    def init(self, spec: ModelSpec, params: Params, *, generator: torch.Generator) -> S: ...

    def step(self, spec: ModelSpec, state: S, batch: Batch | None, *, generator: torch.Generator,
             warmup: bool = False) -> tuple[S, StepInfo]: ...

    def posterior(self, spec: ModelSpec, trace: Trace, *, meta: dict[str, Any] | None = None) -> Posterior: ...


def check_int(value: object, name: str, *, minimum: int) -> int:
    """An integer (not bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def log_joint_and_grad(engine: str, spec: ModelSpec, prior: Prior, params: Params, batch: Batch | None,
                       step: int) -> tuple[Tensor, list[Tensor]]:
    """Minibatch log joint (detached scalar) and its gradient per parameter, in ``params`` order.

    Raises:
        ValueError: naming the engine and the step, when the batch is missing or the log density is
            not finite (NaN/inf in the batch, or a diverged sampler).
    """
    if batch is None:
        raise ValueError(f"{engine}: step {step}: a minibatch engine needs a batch, got None")
    log_density, grads = spec.log_joint_and_grad(params, batch, prior=prior)
    value = float(log_density)
    if not math.isfinite(value):
        bad_batch = any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in batch)
        why = "the batch contains NaN or inf values" if bad_batch else "the sampler diverged; try a smaller step_size"
        raise ValueError(f"{engine}: step {step}: the minibatch log density is {value} ({why})")
    return log_density, [grads[k] for k in params]


def gaussian_noise(like: list[Tensor], generator: torch.Generator) -> list[Tensor]:
    """Standard normal tensors shaped like ``like`` (one ``randn`` call when all share dtype and device)."""
    first = like[0]
    if all(t.dtype == first.dtype and t.device == first.device for t in like):
        flat = torch.randn(sum(t.numel() for t in like), generator=generator, dtype=first.dtype, device=first.device)
        return [chunk.view(t.shape) for chunk, t in zip(flat.split([t.numel() for t in like]), like)]
    return [torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device) for t in like]


def maybe_gibbs(spec: ModelSpec, prior: Prior, params: Params, step: int, every: int,
                generator: torch.Generator) -> Prior:
    """Gibbs-update the prior's hyperparameters every ``every`` steps (0: never), if it has any."""
    if every and step % every == 0 and isinstance(prior, GibbsPrior):
        return prior.gibbs_update(spec.split(params)[0], generator=generator)
    return prior


def state_to_tensors(state: Any) -> dict[str, Tensor]:
    """Flatten an engine state (see the module docstring) into named tensors for a checkpoint."""
    out: dict[str, Tensor] = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if isinstance(value, Tensor):
            out[f.name] = value
        elif isinstance(value, dict):
            out.update({f"{f.name}/{k}": v for k, v in value.items()})
        elif isinstance(value, Prior):
            out.update({f"{f.name}/{k}": v for k, v in value.state().items()})
        elif isinstance(value, int):
            out[f.name] = torch.tensor(value, dtype=torch.int64)
        else:
            raise TypeError(f"state: field {f.name!r} of type {type(value).__name__} cannot be checkpointed")
    return out


def state_from_tensors(template: S, tensors: dict[str, Tensor]) -> S:
    """Inverse of `state_to_tensors`, using a state of the same run (e.g. a fresh ``init``) as template."""
    updates: dict[str, Any] = {}
    try:
        for f in fields(template):
            value, prefix = getattr(template, f.name), f"{f.name}/"
            if isinstance(value, Tensor):
                updates[f.name] = tensors[f.name]
            elif isinstance(value, dict):
                updates[f.name] = {k: tensors[prefix + k] for k in value}
            elif isinstance(value, Prior):
                updates[f.name] = value.with_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            else:
                updates[f.name] = int(tensors[f.name])
    except KeyError as err:
        raise ValueError(f"checkpoint: the engine state is missing tensor {err.args[0]!r}") from None
    return replace(template, **updates)


class DrawsPosterior:
    """For engines whose posterior is the collected draws: the `Engine.posterior` method, with the
    engine's name and config recorded in ``meta``."""

    def posterior(self, spec: ModelSpec, trace: Trace, *, meta: dict[str, Any] | None = None) -> Posterior:
        """Posterior over the collected draws (for cyclical engines, those of the sampling phases)."""
        return posterior_from_trace(spec, trace, meta={"engine": self.name, "config": asdict(self), **(meta or {})})


def posterior_from_trace(spec: ModelSpec, trace: Trace, *, meta: dict[str, Any] | None = None) -> Posterior:
    """A `Posterior` whose ``predict(x)`` pools all chains and draws (``S = chain * draw``) through the spec."""
    pooled = {k: v.reshape(-1, *v.shape[2:]) for k, v in trace.draws.items()}
    return Posterior(draws=trace.draws, sample_stats=trace.sample_stats,
                     predict_fn=lambda x: spec.predict(pooled, x), meta=dict(meta or {}))
