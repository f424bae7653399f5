"""`fit`: posterior inference for a `ModelSpec` with any engine, with thinning, chains and resumable checkpoints.

Minibatch engines (``sgld``, ``sghmc``, ``cyclical``) are driven step by step here. Chains run one
after another, each from its own generators (seeded from ``(seed, chain)``), so chain ``c`` gives the
same draws whatever ``num_chains`` is. ``engine="nuts"`` / ``"hmc"`` hand a full-batch log density
over the flattened weights to `uqkit.inference.sample.sample`, which vectorises over chains.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler

from uqkit._checks import as_tensor, check_float, check_same_length
from uqkit._io import load_tensors, save_tensors
from uqkit.inference.base import Params, StepInfo, Trace, check_int, state_from_tensors, state_to_tensors
from uqkit.inference.ensemble import fit_ensemble
from uqkit.inference.evidential import fit_der
from uqkit.inference.mc_dropout import fit_mc_dropout
from uqkit.inference.mfvi import fit_mfvi
from uqkit.inference.posterior import Posterior
from uqkit.inference.ssvi import fit_ssvi
from uqkit.models.spec import Batch, ModelSpec
from uqkit.parallel import ReportBar, check_backend, run_tasks
from uqkit.registry import ENGINES, check_engine_options, check_options, get_engine

_KIND = "uqkit.fit-checkpoint/1"
_POSTFIX_EVERY = 50  # steps between progress-bar postfix updates
_FULL_BATCH = ("nuts", "hmc")  # engines run by `uqkit.inference.sample.sample` on the full-data log density
#: Engines that train point estimates (members) with an optimiser rather than sample a chain.
TRAINERS = {"ensemble": fit_ensemble, "mc-dropout": fit_mc_dropout, "der": fit_der, "mfvi": fit_mfvi,
            "ssvi": fit_ssvi}


def fit(spec: ModelSpec, data: tuple[Tensor, Tensor] | DataLoader, *, engine: Any = "sghmc", num_chains: int = 1,
        num_samples: int = 100, num_warmup: int = 1000, thinning: int = 10, batch_size: int | None = None,
        seed: int = 0, checkpoint: str | Path | None = None, checkpoint_every: int = 1000, progress: bool = True,
        backend: str = "local", address: str | None = None, **engine_options: Any) -> Posterior:
    """Sample the posterior of ``spec`` given ``data``.

    Each chain takes ``num_warmup`` steps (SGHMC adapts its preconditioner there), then keeps every
    ``thinning``-th sampling step (see `StepInfo.sampling`) until it holds ``num_samples`` draws.

    Args:
        spec: the model.
        data: ``(x [N, ...], y [N] | [N, D])`` tensors or numpy arrays, or a ``DataLoader`` yielding
            ``(x, y)`` batches (a shuffling loader needs ``generator=`` for reproducible runs).
        engine: a registered engine name ("sghmc", "sgld", "cyclical", "nuts", "hmc"), a trainer name
            ("ensemble", "mc-dropout", "der", "mfvi", "ssvi": ``engine_options`` go to `fit_ensemble`,
            `fit_mc_dropout`, `fit_der`, `fit_mfvi`, `fit_ssvi`), or an engine object.
        num_chains, num_samples: chains, and draws kept per chain (>= 1).
        num_warmup: steps per chain before draws are kept (>= 0).
        thinning: keep one sampling step in this many (>= 1).
        batch_size: minibatch size for tensor data; None means the full data set.
        seed: seeds every generator (noise, minibatch order, initial weights); >= 0.
        checkpoint: path of a resumable checkpoint, written atomically every ``checkpoint_every``
            steps and at the end of each chain; if it exists, the run resumes from it and gives
            bit-identical draws to an uninterrupted run (a finished run's file gives its draws back
            at once). A file from a different run (engine, options, seed, sizes) is refused.
        checkpoint_every: steps between checkpoints (>= 1).
        progress: show a tqdm progress bar on stderr.
        backend: "local", or "ray" to run each chain of a minibatch engine (or each ensemble member)
            as its own Ray task (see `uqkit.parallel`); the draws equal the local run's bit for bit.
            With ``checkpoint``, finished chains are kept in ``<checkpoint>.chains/`` and a restarted
            run recomputes only the unfinished ones.
        address: the Ray cluster for ``backend="ray"`` (None: start Ray on this machine).
        **engine_options: hyperparameters of the engine named by ``engine``; "nuts" and "hmc" also take
            ``trace_gradient`` (see `uqkit.sample`: False for a model whose forward pass has side effects).

    Returns:
        A `Posterior` with ``draws`` ``{name: [chain, draw, *shape]}``, ``sample_stats``
        ``log_density`` and ``step_size`` ``[chain, draw]``, ``predict(x)`` pooling all draws, and
        ``meta`` (engine and config, seed, wall time).
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
    check_int(num_chains, "num_chains", minimum=1)
    check_int(num_samples, "num_samples", minimum=1)
    check_int(num_warmup, "num_warmup", minimum=0)
    check_int(thinning, "thinning", minimum=1)
    check_int(checkpoint_every, "checkpoint_every", minimum=1)
    check_int(seed, "seed", minimum=0)
    check_backend(backend)
    if backend != "local" and not (engine == "ensemble" or (isinstance(engine, str) and engine in ENGINES
                                                            and getattr(ENGINES[engine], "minibatch", False))
                                   or getattr(engine, "minibatch", False)):
        raise ValueError(f"backend: {backend!r} runs minibatch-engine chains and ensemble members; engine "
                         f"{engine!r} runs in this process (backend='local')")
    if engine == "ensemble" and backend != "local":
        engine_options.update(backend=backend, address=address)
    if isinstance(engine, str):
        _check_options(engine, engine_options)
    if isinstance(engine, str) and engine in TRAINERS:
        if checkpoint is not None or num_chains != 1:
            raise ValueError(f"engine: {engine!r} trains members, not chains; it takes no checkpoint and num_chains=1")
        if batch_size is not None or engine in ("mfvi", "ssvi"):  # these take None: the full data set
            engine_options["batch_size"] = batch_size
        return TRAINERS[engine](spec, data, seed=seed, progress=progress, **engine_options)
    if isinstance(engine, str) and (
            engine in _FULL_BATCH or (engine in ENGINES and not getattr(ENGINES[engine], "minibatch", False))):
        if batch_size is not None:
            raise ValueError(f"batch_size: {engine} uses the full data set; pass batch_size=None")
        return _fit_full_batch(spec, data, engine, num_chains=num_chains, num_samples=num_samples,
                               num_warmup=num_warmup, thinning=thinning, seed=seed, checkpoint=checkpoint,
                               checkpoint_every=checkpoint_every, progress=progress, **engine_options)
    if isinstance(engine, str):
        engine = get_engine(engine, **engine_options)
    elif engine_options:
        raise TypeError(f"engine_options: give options only with an engine name, got an engine object and {sorted(engine_options)}")
    if not getattr(engine, "minibatch", False):
        raise TypeError(f"engine: expected a minibatch engine or a registered engine name, got {type(engine).__name__}")
    try:
        source = _BatchSource.build(data, batch_size, spec)
    except ValueError as err:
        raise ValueError(f"{err} (engine {engine.name})") from None
    run = _Run(spec, engine, source, num_chains, num_samples, num_warmup, thinning, seed)
    if backend == "ray":
        return _fit_chains_on_ray(run, checkpoint, address, progress)
    return run.execute(Path(checkpoint) if checkpoint is not None else None, checkpoint_every, progress)


def _check_options(engine: str, options: dict[str, Any]) -> None:
    """Refuse options that the named engine or trainer does not take, before any work starts."""
    if engine in TRAINERS:
        known = [k for k, p in inspect.signature(TRAINERS[engine]).parameters.items()
                 if p.kind is p.KEYWORD_ONLY and k not in ("progress", "seed")]
        check_options(engine, known, options)
    else:  # the sample driver's own option is also accepted for the full-batch engines
        check_engine_options(engine, {k: v for k, v in options.items()
                                      if not (engine in _FULL_BATCH and k == "trace_gradient")})


class _BatchSource:
    """Endless minibatches from tensors (random permutations, last partial batch dropped) or a DataLoader.

    Its position (generator state, permutation, index) is checkpointable via `state` / `restore`.
    """

    def __init__(self, x: Tensor | None, y: Tensor | None, batch_size: int, loader: DataLoader | None) -> None:
        self.x, self.y, self.batch_size, self.loader = x, y, batch_size, loader
        self.generator = torch.Generator()
        self.perm: Tensor | None = None
        self.pos = 0
        self._iter = None
        self._loader_state: Tensor | None = None

    @classmethod
    def build(cls, data: object, batch_size: int | None, spec: ModelSpec) -> _BatchSource:
        if isinstance(data, DataLoader):
            if batch_size is not None:
                raise ValueError("batch_size: a DataLoader sets its own batch size; pass batch_size=None")
            if isinstance(data.sampler, RandomSampler) and data.sampler.generator is None and data.generator is None:
                raise ValueError("data: a shuffling DataLoader needs generator=torch.Generator() for reproducible, resumable runs")
            if len(data.dataset) != spec.num_data:
                raise ValueError(f"data: the DataLoader holds {len(data.dataset)} points but spec.num_data is {spec.num_data}")
            return cls(None, None, int(data.batch_size or 0), data)
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise TypeError(f"data: expected (x, y) tensors or a DataLoader, got {type(data).__name__}")
        x, y = as_tensor(data[0], "x"), as_tensor(data[1], "y")
        check_same_length("x", x, "y", y)
        for t, name in ((x, "x"), (y, "y")):
            if t.is_floating_point():
                check_float(t, name)  # finite and non-empty
        if x.shape[0] != spec.num_data:
            raise ValueError(f"data: x holds {x.shape[0]} points but spec.num_data is {spec.num_data}")
        x = x.to(spec.dtype) if x.is_floating_point() else x
        y = y.to(spec.dtype) if y.is_floating_point() else y
        if batch_size is None:
            batch_size = x.shape[0]
        check_int(batch_size, "batch_size", minimum=1)
        if batch_size > x.shape[0]:
            raise ValueError(f"batch_size: expected at most the {x.shape[0]} data points, got {batch_size}")
        return cls(x, y, batch_size, None)

    def full_data(self) -> Batch:
        """All data as one batch (concatenating the loader's batches)."""
        if self.loader is None:
            return self.x, self.y
        xs, ys = zip(*self.loader)
        return torch.cat(xs), torch.cat(ys)

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self.perm, self.pos, self._iter = None, 0, None

    def next(self) -> Batch:
        if self.loader is not None:
            return self._next_from_loader()
        n = self.x.shape[0]
        if self.batch_size == n:
            return self.x, self.y
        if self.perm is None or self.pos + self.batch_size > n:
            self.perm, self.pos = torch.randperm(n, generator=self.generator), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.x[idx], self.y[idx]

    def _next_from_loader(self) -> Batch:
        while True:
            if self._iter is None:
                self._loader_state = self._loader_generator_state()
                self._iter, self.pos = iter(self.loader), 0
            try:
                x, y = next(self._iter)
            except StopIteration:
                self._iter = None
                continue
            self.pos += 1
            return x, y

    def _loader_generator(self) -> torch.Generator | None:
        return getattr(self.loader.sampler, "generator", None) or self.loader.generator

    def _loader_generator_state(self) -> Tensor | None:
        gen = self._loader_generator()
        return gen.get_state() if gen is not None else None

    def state(self) -> dict[str, Tensor]:
        out = {"batch_rng": self.generator.get_state(), "batch_pos": torch.tensor(self.pos)}
        if self.perm is not None:
            out["batch_perm"] = self.perm
        if self.loader is not None:
            out["loader_started"] = torch.tensor(self._iter is not None)
            if self._loader_generator() is not None:
                out["loader_rng_now"] = self._loader_generator_state()
            if self._loader_state is not None:
                out["loader_rng"] = self._loader_state
        return out

    def restore(self, tensors: dict[str, Tensor]) -> None:
        """Return to the saved position; a DataLoader is replayed from its epoch start to the saved batch."""
        self.generator.set_state(tensors["batch_rng"])
        self.pos, self.perm, self._iter = int(tensors["batch_pos"]), tensors.get("batch_perm"), None
        if self.loader is None:
            return
        gen = self._loader_generator()
        if not bool(tensors["loader_started"]):
            if gen is not None:
                gen.set_state(tensors["loader_rng_now"])
            return
        if gen is not None:
            gen.set_state(tensors["loader_rng"])
        self._loader_state, self._iter = tensors.get("loader_rng"), iter(self.loader)
        for _ in range(self.pos):
            next(self._iter)


class _Run:
    """One call of `fit` with a minibatch engine: buffers for the draws, the loop, and checkpoints."""

    def __init__(self, spec: ModelSpec, engine: Any, source: _BatchSource, num_chains: int, num_samples: int,
                 num_warmup: int, thinning: int, seed: int, first_chain: int = 0) -> None:
        self.spec, self.engine, self.source = spec, engine, source
        self.first_chain = first_chain  # chain c of this run is chain first_chain + c of the whole run
        self.num_chains, self.num_samples, self.num_warmup, self.thinning, self.seed = (
            num_chains, num_samples, num_warmup, thinning, seed)
        template = spec.param_template()
        self.draws = {k: torch.zeros(num_chains, num_samples, *v.shape, dtype=v.dtype) for k, v in template.items()}
        self.stats = {k: torch.zeros(num_chains, num_samples, dtype=torch.float64) for k in ("log_density", "step_size")}
        self.noise = torch.Generator()
        # Position: chain, step within the chain, draws kept, sampling steps seen since warmup.
        self.chain = self.step = self.kept = self.seen = 0
        self.state: Any = None

    def fingerprint(self) -> str:
        return json.dumps({
            "engine": self.engine.name, "config": asdict(self.engine), "seed": self.seed,
            "num_chains": self.num_chains, "num_samples": self.num_samples, "num_warmup": self.num_warmup,
            "thinning": self.thinning, "batch_size": self.source.batch_size, "num_data": self.spec.num_data,
            "params": {k: list(v.shape[2:]) for k, v in self.draws.items()},
        }, sort_keys=True, default=str)

    def execute(self, checkpoint: Path | None, checkpoint_every: int, progress: bool) -> Posterior:
        from tqdm.auto import tqdm

        start = time.perf_counter()
        resumed = checkpoint is not None and checkpoint.exists()
        if resumed:
            self.load(checkpoint)
        with tqdm(desc=f"fit[{self.engine.name}]", unit="step", disable=not progress, dynamic_ncols=True) as bar:
            self.run(bar, checkpoint, checkpoint_every, progress)
        return self.engine.posterior(self.spec, Trace(self.draws, self.stats), meta=self.meta(start, resumed))

    def meta(self, start: float, resumed: bool) -> dict[str, Any]:
        return {"seed": self.seed, "num_warmup": self.num_warmup, "thinning": self.thinning,
                "batch_size": self.source.batch_size, "wall_time_s": time.perf_counter() - start, "resumed": resumed}

    def run(self, bar: Any, checkpoint: Path | None, checkpoint_every: int, progress: bool) -> None:
        """Step the chains from the current position to the end, updating ``bar`` every step."""
        while self.chain < self.num_chains:
            if self.state is None:
                self.start_chain()
            state, info = self.engine.step(self.spec, self.state, self.source.next(), generator=self.noise,
                                           warmup=self.step < self.num_warmup)
            self.state, self.step = state, self.step + 1
            self.record(info)
            bar.update()
            if progress and self.step % _POSTFIX_EVERY == 0:
                bar.set_postfix(chain=self.chain, draws=self.kept, log_density=f"{float(info.log_density):.4g}",
                                step_size=f"{info.step_size:.3g}", refresh=False)
            if self.kept == self.num_samples:
                self.chain, self.step, self.kept, self.seen, self.state = self.chain + 1, 0, 0, 0, None
                if checkpoint is not None:
                    self.save(checkpoint)
            elif checkpoint is not None and self.step % checkpoint_every == 0:
                self.save(checkpoint)

    def start_chain(self) -> None:
        chain = self.first_chain + self.chain
        noise_seed, batch_seed = (int(s) for s in np.random.SeedSequence([self.seed, chain]).generate_state(2, np.uint64) >> 1)
        self.noise.manual_seed(noise_seed)
        self.source.reset(batch_seed)
        params = self.spec.init_params(generator=self.noise)
        self.state = self.engine.init(self.spec, params, generator=self.noise)

    def record(self, info: StepInfo) -> None:
        if self.step <= self.num_warmup or not info.sampling:
            return
        self.seen += 1
        if self.seen % self.thinning:
            return
        for k, v in self.state.params.items():
            self.draws[k][self.chain, self.kept] = v
        self.stats["log_density"][self.chain, self.kept] = float(info.log_density)
        self.stats["step_size"][self.chain, self.kept] = info.step_size if info.step_size is not None else float("nan")
        self.kept += 1

    def save(self, path: Path) -> None:
        tensors: dict[str, Tensor] = {f"draws/{k}": v for k, v in self.draws.items()}
        tensors.update({f"stats/{k}": v for k, v in self.stats.items()})
        tensors["position"] = torch.tensor([self.chain, self.step, self.kept, self.seen])
        tensors.update({f"source/{k}": v for k, v in self.source.state().items()})
        if self.state is not None:
            tensors.update({f"engine/{k}": v for k, v in state_to_tensors(self.state).items()})
            tensors["noise_rng"] = self.noise.get_state()
        save_tensors(path, tensors, kind=_KIND, meta={"fingerprint": self.fingerprint()})

    def load(self, path: Path) -> None:
        try:
            tensors, meta = load_tensors(path, kind=_KIND)
        except ValueError as err:
            raise ValueError(f"checkpoint: {err}") from None
        if meta.get("fingerprint") != self.fingerprint():
            raise ValueError(f"checkpoint: {path} was written by a different run (engine, options, seed, sizes or "
                             f"model differ); delete it or pass another path. Stored: {meta.get('fingerprint')}")
        try:
            for k in self.draws:
                self.draws[k].copy_(tensors[f"draws/{k}"])
            for k in self.stats:
                self.stats[k].copy_(tensors[f"stats/{k}"])
            self.chain, self.step, self.kept, self.seen = (int(v) for v in tensors["position"])
            if self.step > 0:
                self.start_chain()  # builds the template state and the generators; then overwritten
                self.state = state_from_tensors(self.state, _strip(tensors, "engine/"))
                self.noise.set_state(tensors["noise_rng"])
            self.source.restore(_strip(tensors, "source/"))
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"checkpoint: {path} is corrupt or incomplete ({err})") from None


def _fit_chains_on_ray(run: _Run, checkpoint: str | Path | None, address: str | None, progress: bool) -> Posterior:
    """Each chain of ``run`` as a Ray task; finished chains kept in ``<checkpoint>.chains/``."""
    start = time.perf_counter()
    chains_dir = None if checkpoint is None else Path(f"{checkpoint}.chains")
    resumed = chains_dir is not None and chains_dir.exists()
    results = run_tasks(functools.partial(_chain_task, run), list(range(run.num_chains)), backend="ray",
                        address=address, desc=f"fit[{run.engine.name}]", progress=progress,
                        checkpoint_dir=chains_dir)
    for c, result in enumerate(results):
        for k in run.draws:
            run.draws[k][c] = result[f"draws/{k}"][0]
        for k in run.stats:
            run.stats[k][c] = result[f"stats/{k}"][0]
    meta = {**run.meta(start, resumed), "backend": "ray"}
    return run.engine.posterior(run.spec, Trace(run.draws, run.stats), meta=meta)


def _chain_task(run: _Run, chain: int, report: Any) -> dict[str, Tensor]:
    """Chain ``chain`` of ``run`` alone (same seeds as in the full run): its draws and stats ``[1, draw, ...]``."""
    one = _Run(run.spec, run.engine, run.source, 1, run.num_samples, run.num_warmup, run.thinning, run.seed,
               first_chain=chain)
    one.run(ReportBar(report), None, 1, False)
    return {**{f"draws/{k}": v for k, v in one.draws.items()}, **{f"stats/{k}": v for k, v in one.stats.items()}}


def _strip(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _fit_full_batch(spec: ModelSpec, data: object, method: str, *, num_chains: int, num_samples: int, num_warmup: int,
                    thinning: int, seed: int, checkpoint: str | Path | None, checkpoint_every: int, progress: bool,
                    **engine_options: Any) -> Posterior:
    """NUTS/HMC on the full-data log joint over the flattened weights, through `uqkit.inference.sample.sample`."""
    from uqkit.inference.sample import sample

    if spec.dtype != torch.float64:
        raise ValueError(f"spec: {method} runs in float64 (energy errors decide acceptance); build the network "
                         f"in float64, e.g. MLP(...).double(), got {spec.dtype}")
    batch = _BatchSource.build(data, None, spec).full_data()
    names, shapes = zip(*((k, v.shape) for k, v in spec.param_template().items()))
    sizes = [s.numel() for s in shapes]

    def unflatten(z: Tensor) -> Params:  # [..., D] -> {name: [..., *shape]}
        return {k: c.reshape((*z.shape[:-1], *s)) for k, c, s in zip(names, z.split(sizes, dim=-1), shapes)}

    def log_density(z: Tensor) -> Tensor:  # [C, D] -> [C]
        return torch.vmap(lambda flat: spec.log_joint(unflatten(flat), batch))(z)

    inits = []
    for chain in range(num_chains):
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, chain]).generate_state(1, np.uint64)[0] >> 1))
        inits.append(torch.cat([v.reshape(-1) for v in spec.init_params(generator=generator).values()]))
    post = sample(log_density, torch.stack(inits), method=method, num_warmup=num_warmup, num_samples=num_samples,
                  num_chains=num_chains, seed=seed, thinning=thinning, progress=progress, checkpoint=checkpoint,
                  checkpoint_every=checkpoint_every, **engine_options)
    draws = unflatten(post.draws)
    pooled = {k: v.reshape(-1, *v.shape[2:]) for k, v in draws.items()}
    return Posterior(draws=draws, sample_stats=post.sample_stats, predict_fn=lambda x: spec.predict(pooled, x),
                     meta={**post.meta, "engine": method})
