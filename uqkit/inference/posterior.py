"""`Posterior`: draws from any engine, their sample statistics, and the way to predict with them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from uqkit.calibration.predictive import Predictive

Params = dict[str, Tensor]

_FORMAT = "uqkit.posterior/1"


@dataclass(frozen=True)
class Posterior:
    """Draws ``[chain, draw, ...]`` (ArviZ order) plus per-draw sample statistics.

    Attributes:
        draws: a tensor ``[chain, draw, D]`` (from `uqkit.sample` on a flat log density), a dict of
            tensors ``[chain, draw, *param_shape]`` (from `uqkit.fit` on a ModelSpec), or None
            (amortised engines such as a PFN).
        sample_stats: ``[chain, draw]`` tensors such as ``log_density``, ``accept_prob``,
            ``step_size``, ``tree_depth``, ``divergent``.
        predict_fn: maps inputs ``x`` to a `Predictive`; None when the posterior has no model.
        meta: JSON-serialisable facts about the run (engine name and config, seed, wall time).
    """

    draws: Tensor | Params | None
    sample_stats: dict[str, Tensor] = field(default_factory=dict)
    predict_fn: Callable[[Tensor], Predictive] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_chains(self) -> int:
        return int(self._leaves()[0].shape[0])

    @property
    def num_draws(self) -> int:
        return int(self._leaves()[0].shape[1])

    def predict(self, x: Tensor) -> Predictive:
        """The posterior predictive at inputs ``x`` (all chains and draws pooled as mixture components)."""
        if self.predict_fn is None:
            raise ValueError("predict: this posterior has no model to predict with (it came from a bare log density, "
                             "or was loaded without one; pass predict_fn= to Posterior.load)")
        return self.predict_fn(x)

    def to_arviz(self):
        """An ``arviz.InferenceData`` with ``posterior`` and ``sample_stats`` groups."""
        import arviz as az

        if isinstance(self.draws, Tensor):
            posterior = {"z": self.draws.detach().cpu().numpy()}
        else:
            posterior = {k: v.detach().cpu().numpy() for k, v in (self.draws or {}).items()}
        stats = {k: v.detach().cpu().numpy() for k, v in self.sample_stats.items()}
        if "divergent" in stats:
            stats["diverging"] = stats.pop("divergent").astype(bool)
        if "log_density" in stats:
            stats["lp"] = stats.pop("log_density")
        return az.from_dict(posterior=posterior, sample_stats=stats or None)

    def summary(self, **kwargs: Any):
        """``arviz.summary`` table: mean, sd, HDI, MCSE, bulk/tail ESS and R-hat per coordinate."""
        import arviz as az

        return az.summary(self.to_arviz(), **kwargs)

    def save(self, path: str | Path) -> None:
        """Write draws, sample statistics and meta to a safetensors file (atomically: temp file + rename)."""
        from uqkit._io import save_tensors

        tensors: dict[str, Tensor] = {}
        if isinstance(self.draws, Tensor):
            tensors["draws"] = self.draws
        elif self.draws is not None:
            tensors.update({f"draws/{k}": v for k, v in self.draws.items()})
        tensors.update({f"stats/{k}": v for k, v in self.sample_stats.items()})
        save_tensors(path, tensors, kind=_FORMAT, meta={"meta": json.dumps(self.meta, default=_jsonable)})

    @classmethod
    def load(cls, path: str | Path, *, predict_fn: Callable[[Tensor], Predictive] | None = None) -> Posterior:
        """Read a file written by `save`; refuses files of any other kind without executing anything."""
        from uqkit._io import load_tensors

        tensors, meta = load_tensors(path, kind=_FORMAT)
        if "draws" in tensors:
            draws: Tensor | Params | None = tensors["draws"]
        else:
            draws = {k[len("draws/"):]: v for k, v in tensors.items() if k.startswith("draws/")} or None
        stats = {k[len("stats/"):]: v for k, v in tensors.items() if k.startswith("stats/")}
        return cls(draws=draws, sample_stats=stats, predict_fn=predict_fn, meta=json.loads(meta.get("meta", "{}")))

    def _leaves(self) -> list[Tensor]:
        if isinstance(self.draws, Tensor):
            return [self.draws]
        if self.draws:
            return list(self.draws.values())
        if self.sample_stats:
            return list(self.sample_stats.values())
        raise ValueError("this posterior holds no draws")


def _jsonable(obj: object) -> object:
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Tensor):
        return obj.tolist()
    return str(obj)
