"""Mean-field variational inference (Bayes by Backprop; Blundell et al., ICML 2015) for any `ModelSpec`.

Adam minimises the one-draw negative ELBO per training point on minibatches of B points,

    L(mu, rho) = -1/B sum_b log p(y_b | x_b, theta) + beta(t) * kl_scale * KL(q || p) / N,

whose expectation is ``-ELBO / N`` when ``beta = kl_scale = 1`` (the minibatch sum scaled by N/B is
the full-data expected log-likelihood). ``beta(t) = min(1, t / (kl_warmup * num_steps))`` is the
linear KL warm-up (SSVI's ``beta(e) = min(2e/E, 1)`` for ``kl_warmup = 0.5``). The family, the
(local) reparameterisation and the KL are in `uqkit.inference.variational`; the same loop runs SSVI
(`uqkit.inference.ssvi`), which passes a `Subspace` that masks coordinates and updates the masks.

The result is a `VariationalPosterior`: ``num_draws`` weight draws from q (seeded, so a loaded
posterior redraws the same ones), ``predict(x)`` the uniform mixture over them, and ``save(path)``
storing only the active coordinates.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from uqkit._checks import check_float, check_positive
from uqkit._io import load_tensors, save_tensors
from uqkit.inference.base import check_int
from uqkit.inference.ensemble import check_data
from uqkit.inference.flops import Layer, forward_flops, linear_layers, train_step_flops
from uqkit.inference.posterior import Posterior
from uqkit.inference.variational import (MeanFieldGaussian, gaussian_prior_variances, local_reparameterisation,
                                         negative_elbo)
from uqkit.models.spec import ModelSpec

Params = dict[str, Tensor]

_KIND = "uqkit.variational-posterior/1"
_POSTFIX_EVERY = 50


@dataclass(frozen=True)
class VIConfig:
    """Optimisation settings shared by MFVI and SSVI.

    Args:
        num_steps: optimiser steps (>= 1).
        batch_size: minibatch size B (at most N is used); None uses all N points every step.
        lr: Adam learning rate for means, scales and point parameters (> 0).
        kl_scale: multiplier of the KL (1 gives the ELBO; SSVI's code uses 0.01).
        kl_warmup: fraction of ``num_steps`` over which the KL weight rises linearly to ``kl_scale``
            (0: no warm-up), in [0, 1].
        init_std: initial sigma of every coordinate (> 0), weight units.
        local_reparam: local reparameterisation for Linear/Conv layers (weight sampling otherwise).
        num_draws: S, weight draws kept for prediction (>= 1).
        lr_schedule: "cosine" anneals the learning rate to 0 over the run (the SSVI paper's choice),
            "constant" keeps it.
    """

    num_steps: int = 2000
    batch_size: int | None = 128
    lr: float = 1e-2
    kl_scale: float = 1.0
    kl_warmup: float = 0.5
    init_std: float = 1e-2
    local_reparam: bool = True
    num_draws: int = 32
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        check_int(self.num_steps, "num_steps", minimum=1)
        if self.batch_size is not None:
            check_int(self.batch_size, "batch_size", minimum=1)
        check_positive(self.lr, "lr")
        check_positive(self.kl_scale, "kl_scale", allow_zero=True)
        if not 0 <= check_positive(self.kl_warmup, "kl_warmup", allow_zero=True) <= 1:
            raise ValueError(f"kl_warmup: expected a fraction of the steps in [0, 1], got {self.kl_warmup!r}")
        check_positive(self.init_std, "init_std")
        check_int(self.num_draws, "num_draws", minimum=1)
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule: expected 'cosine' or 'constant', got {self.lr_schedule!r}")


class Subspace(Protocol):
    """SSVI's hooks into the loop: initial masks, and the subspace update after a backward pass.

    Attributes:
        growth_steps: steps per update whose dense mean gradients it reads (counted as dense in FLOPs).
    """

    growth_steps: int

    def initial_masks(self, spec: ModelSpec, layers: list[Layer], *, generator: torch.Generator) -> dict[str, Tensor]:
        """``{weight name: bool mask}`` with each layer's budget of active entries."""
        ...

    def update(self, step: int, q: MeanFieldGaussian) -> bool:
        """Update the masks (and q) in place from the dense gradients; True if this step was an update step."""
        ...

    def reset_optimizer(self, optimizer: torch.optim.Optimizer, q: MeanFieldGaussian) -> None:
        """Reset the optimiser's moments after an update (in place)."""
        ...

    def report(self) -> dict[str, Any]:
        """JSON-serialisable facts for the posterior's meta (configuration, swap log)."""
        ...


@dataclass(frozen=True)
class VariationalPosterior(Posterior):
    """A `Posterior` of draws from a mean-field q, which keeps q and saves only its active coordinates.

    Attributes:
        family: the fitted variational parameters.
    """

    family: MeanFieldGaussian | None = field(default=None)

    def save(self, path: str | Path) -> None:
        """Write q's active coordinates (values and flat indices of masked tensors), point parameters and meta."""
        q = self.family
        tensors: dict[str, Tensor] = {}
        for k, mu in q.mu.items():
            if k in q.masks:
                index = q.masks[k].reshape(-1).nonzero().squeeze(-1)
                tensors[f"index/{k}"] = index.to(torch.int32 if mu.numel() < 2**31 else torch.int64)
                tensors[f"mu/{k}"], tensors[f"rho/{k}"] = mu.reshape(-1)[index], q.rho[k].reshape(-1)[index]
            else:
                tensors[f"mu/{k}"], tensors[f"rho/{k}"] = mu, q.rho[k]
        tensors.update({f"point/{k}": v for k, v in q.point.items()})
        shapes = {k: list(v.shape) for k, v in q.mu.items()}
        save_tensors(path, tensors, kind=_KIND, meta={"meta": json.dumps(self.meta), "shapes": json.dumps(shapes)})


def load_variational(path: str | Path, spec: ModelSpec) -> VariationalPosterior:
    """Read a file written by `VariationalPosterior.save` and reattach ``spec``: the same draws and predictions."""
    tensors, raw = load_tensors(path, kind=_KIND)
    shapes, meta = json.loads(raw["shapes"]), json.loads(raw["meta"])
    template = spec.split(spec.param_template())[0]
    if {k: list(v.shape) for k, v in template.items()} != shapes:
        raise ValueError(f"spec: its net parameters do not match those stored in {path}")
    mu, rho, masks = {}, {}, {}
    for k, shape in shapes.items():
        like = template[k]
        if f"index/{k}" in tensors:
            index = tensors[f"index/{k}"].long()
            flat_mask = torch.zeros(like.numel(), dtype=torch.bool).index_fill_(0, index, True)
            masks[k] = flat_mask.reshape(shape)
            for dense, part in ((mu, "mu"), (rho, "rho")):
                values = torch.zeros(like.numel(), dtype=like.dtype)
                dense[k] = values.index_copy_(0, index, tensors[f"{part}/{k}"]).reshape(shape)
        else:
            mu[k], rho[k] = tensors[f"mu/{k}"], tensors[f"rho/{k}"]
    point = {k[len("point/"):]: v for k, v in tensors.items() if k.startswith("point/")}
    q = MeanFieldGaussian(mu, rho, masks, point)
    return variational_posterior(spec, q, num_draws=int(meta["num_draws"]), seed=int(meta["predict_seed"]), meta=meta)


def variational_posterior(spec: ModelSpec, q: MeanFieldGaussian, *, num_draws: int, seed: int,
                          meta: dict[str, Any]) -> VariationalPosterior:
    """``num_draws`` draws of q seeded by ``seed`` (draws ``{name: [1, S, *shape]}``); ``predict`` mixes them."""
    with torch.no_grad():
        q = MeanFieldGaussian({k: v.detach() for k, v in q.mu.items()}, {k: v.detach() for k, v in q.rho.items()},
                              q.masks, {k: v.detach() for k, v in q.point.items()})
        draws = q.sample(num_draws, generator=torch.Generator().manual_seed(seed))
    meta = {**meta, "num_draws": num_draws, "predict_seed": seed}
    return VariationalPosterior(draws={k: v.unsqueeze(0) for k, v in draws.items()}, sample_stats={},
                                predict_fn=lambda x: spec.predict(draws, check_float(x, "x").to(spec.dtype)),
                                meta=meta, family=q)


def fit_mfvi(spec: ModelSpec, data: tuple[Tensor, Tensor], *, num_steps: int = VIConfig.num_steps,
             batch_size: int | None = VIConfig.batch_size, lr: float = VIConfig.lr,
             kl_scale: float = VIConfig.kl_scale, kl_warmup: float = VIConfig.kl_warmup,
             init_std: float = VIConfig.init_std, local_reparam: bool = VIConfig.local_reparam,
             num_draws: int = VIConfig.num_draws, lr_schedule: str = VIConfig.lr_schedule, density: float = 1.0,
             seed: int = 0, progress: bool = True) -> VariationalPosterior:
    """Dense mean-field VI of ``spec`` on ``data = (x [N, ...], y [N] | [N, D])``.

    Args:
        spec: the model; the prior gives the KL (closed form when Gaussian per coordinate).
        data: training data, ``N == spec.num_data``.
        num_steps, batch_size, lr, kl_scale, kl_warmup, init_std, local_reparam, num_draws, lr_schedule:
            see `VIConfig`.
        density: must be 1 (every coordinate active); use `uqkit.inference.ssvi.fit_ssvi` for less.
        seed: seeds initial means, noise, minibatch order and the prediction draws (>= 0).
        progress: show a progress bar.

    Returns:
        A `VariationalPosterior`; its ``meta`` holds ``active_parameters``, ``dense_parameters``,
        ``train_flops`` (whole run), ``inference_flops`` (per example and draw), the loss trace and
        the configuration.
    """
    if density != 1:
        raise ValueError(f"density: mean-field VI keeps every coordinate (density 1); got {density!r} "
                         f"(use engine='ssvi' for a sparse subspace)")
    config = VIConfig(num_steps, batch_size, lr, kl_scale, kl_warmup, init_std, local_reparam, num_draws, lr_schedule)
    return fit_variational(spec, data, config, seed=seed, progress=progress, engine="mfvi")


def fit_variational(spec: ModelSpec, data: tuple[Tensor, Tensor], config: VIConfig, *, seed: int, progress: bool,
                    engine: str, subspace: Subspace | None = None) -> VariationalPosterior:
    """The shared MFVI/SSVI driver (see `fit_mfvi`; SSVI passes its `Subspace`)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    check_int(seed, "seed", minimum=0)
    x, y = check_data(spec, data)
    batch_size = min(config.batch_size or x.shape[0], x.shape[0])
    init_gen, noise_gen, batch_gen, predict_seed = _generators(seed)
    layers = linear_layers(spec, spec.param_template(), x[:1])
    masks = subspace.initial_masks(spec, layers, generator=init_gen) if subspace is not None else {}
    q = MeanFieldGaussian.init(spec, init_std=config.init_std, generator=init_gen, masks=masks)
    prior_var = gaussian_prior_variances(spec.prior, q.mu)
    if subspace is not None and prior_var is None:
        raise ValueError(f"prior: {engine} needs a prior that is Gaussian per coordinate (IsotropicGaussian, "
                         f"LayerwiseGaussian, PerLayerGaussian, HierarchicalLayerwiseGaussian, "
                         f"PerLayerHierarchicalGaussian) so the KL counts active coordinates only; "
                         f"got {type(spec.prior).__name__}")
    leaves = q.leaves()
    for t in leaves:
        t.requires_grad_(True)
    optimizer = torch.optim.Adam(leaves, lr=config.lr, fused=True)  # fused CPU kernel: fastest, also on zeros
    t_max = config.num_steps if config.lr_schedule == "cosine" else math.inf
    warmup_steps = config.kl_warmup * config.num_steps
    losses, update_steps = [], 0
    batches = minibatches(x.shape[0], batch_size, batch_gen)
    bar = tqdm(total=config.num_steps, desc=f"fit[{engine}]", unit="step", disable=not progress, dynamic_ncols=True)
    with bar:
        for step in range(config.num_steps):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / t_max))
            idx = next(batches)
            beta = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
            optimizer.zero_grad(set_to_none=True)
            loss, nll, kl = negative_elbo(spec, q, (x[idx], y[idx]), kl_weight=beta * config.kl_scale,
                                          local=config.local_reparam, prior_var=prior_var, generator=noise_gen)
            nll, kl = nll.detach(), kl.detach()
            if not bool(torch.isfinite(loss.detach())):
                raise ValueError(f"{engine}: the loss is {float(loss.detach())} at step {step} "
                                 f"(nll {float(nll):.4g}, KL {float(kl):.4g}); {_first_nonfinite(spec, q, x[idx])}; "
                                 f"lower lr or init_std, or check the data")
            loss.backward()
            losses.append(float(loss.detach()))
            if subspace is not None and subspace.update(step, q):
                subspace.reset_optimizer(optimizer, q)
                update_steps += 1
            else:
                _masked_step(optimizer, q)
            bar.update()
            if progress and step % _POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", nll=f"{float(nll):.4g}", kl=f"{float(kl):.4g}", refresh=False)
    meta = {"engine": engine, "config": asdict(config), "seed": seed, "wall_time_s": time.perf_counter() - start,
            "loss_trace": losses,
            **_counts(q, layers, config, batch_size, update_steps * (subspace.growth_steps if subspace else 0))}
    if subspace is not None:
        meta.update(subspace.report())
    return variational_posterior(spec, q, num_draws=config.num_draws, seed=predict_seed, meta=meta)


def minibatches(num_data: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless index batches ``[B]``: a fresh random permutation per epoch, the last partial batch dropped."""
    while True:
        order = torch.randperm(num_data, generator=generator)
        for start in range(0, num_data - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def _masked_step(optimizer: torch.optim.Optimizer, q: MeanFieldGaussian) -> None:
    """An optimiser step that leaves inactive coordinates exactly as they are.

    The scales enter the loss masked, so their gradient is 0 at inactive coordinates already; the
    means enter unmasked (for SSVI's dense growth gradient), so their gradient is masked here. With a
    zero gradient and zero Adam moments (reset at every subspace update, which also zeroes the means
    it moves), an inactive mean stays exactly 0.
    """
    with torch.no_grad():
        for k in q.masks:
            q.mu[k].grad.mul_(q.mask_weight(k))
    optimizer.step()


def _generators(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator, int]:
    """Initial-weight, noise and minibatch generators, and the prediction seed, all from ``seed``."""
    states = np.random.SeedSequence([seed, 8]).generate_state(4, np.uint64) >> np.uint64(1)
    init, noise, batch, predict = (int(s) for s in states)
    return (torch.Generator().manual_seed(init), torch.Generator().manual_seed(noise),
            torch.Generator().manual_seed(batch), predict)


def _counts(q: MeanFieldGaussian, layers: list[Layer], config: VIConfig, batch_size: int,
            dense_gradient_steps: int) -> dict[str, int]:
    """Parameter counts and FLOPs (`uqkit.inference.flops`) of the fitted q and of the whole run."""
    active = q.num_active()
    dense = {k: v.numel() for k, v in q.mu.items()}
    regular = train_step_flops(layers, active, batch_size=batch_size, local=config.local_reparam)
    on_update = train_step_flops(layers, active, batch_size=batch_size, local=config.local_reparam, dense=dense)
    return {
        "active_parameters": sum(active.values()),
        "dense_parameters": sum(dense.values()),
        "train_flops": (config.num_steps - dense_gradient_steps) * regular + dense_gradient_steps * on_update,
        "train_flops_per_step": regular,
        "inference_flops": forward_flops(layers, active),
    }


def _first_nonfinite(spec: ModelSpec, q: MeanFieldGaussian, x: Tensor) -> str:
    """Where a non-finite value first appears: a variational parameter, or the first module whose output is."""
    for kind, tensors in (("mean", q.mu), ("scale", q.rho), ("likelihood parameter", q.point)):
        for k, v in tensors.items():
            if not bool(torch.isfinite(v).all()):
                return f"first non-finite {kind}: layer {k!r}"
    found: list[str] = []
    variances = {k: s.square() for k, s in q.std().items()}
    with torch.no_grad(), local_reparameterisation(spec.net, variances, torch.Generator().manual_seed(0)):
        handles = [m.register_forward_hook(lambda m, a, out, name=name: found.append(name)
                                           if isinstance(out, Tensor) and not bool(torch.isfinite(out).all()) else None)
                   for name, m in spec.net.named_modules() if name]  # after the noise hooks: they see noisy outputs
        try:
            spec.forward(q.mean_params(), x)
        finally:
            for h in handles:
                h.remove()
    return f"first non-finite output: layer {found[0]!r}" if found else "the likelihood of the batch is not finite"
