"""`match_prior`: fit a BNN weight prior so that its functions match a GP prior in 1-Wasserstein distance.

Tran, Rossi, Milios & Filippone (2022), "All You Need is a Good Functional Prior for Bayesian Deep
Learning" (JMLR; reference code tranbahien/you-need-a-good-prior, read, not copied). METHODS.md section 1.

The distance between the BNN's and the GP's distributions of function values ``f(X_M) in R^M`` on a
measurement set ``X_M`` uses the Kantorovich-Rubinstein dual::

    W1 = sup_{||phi||_L <= 1}  E_nn[phi(f(X_M))] - E_gp[phi(f(X_M))]

with a critic MLP ``phi`` (M -> width -> width -> 1, softplus) kept 1-Lipschitz by a gradient penalty
(Gulrajani et al. 2017, "WGAN-GP"). Each outer step draws a fresh measurement set (training inputs
and uniform points in their bounding box), trains a freshly initialised critic, then takes one RMSprop
step on the prior hyperparameters through reparameterised weight draws (``theta = sigma eps / sqrt(fan_in)``;
for GPi-H the Gamma precision draws are reparameterised too), vectorised over draws with ``torch.func``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.functional import softplus
from tqdm.auto import tqdm

from uqkit._checks import check_float, check_positive
from uqkit._io import load_tensors, save_tensors
from uqkit.models.gp_prior import GPPrior, forked_rng
from uqkit.models.matched_priors import PerLayerGaussian, PerLayerHierarchicalGaussian
from uqkit.models.priors import Prior, fan_in
from uqkit.models.spec import ModelSpec
from uqkit.parallel import run_tasks

_KIND = "uqkit.matched-prior/1"
_FAMILIES = ("gpi-g", "gpi-h")
_POOL_FACTOR = 4  # function draws per side and outer step = this x num_functions; critic bags are drawn from them
_MIN_PRECISION = 1e-8  # floor on reparameterised Gamma precision draws (sigma = tau^-1/2 stays finite)

MatchedPrior = PerLayerGaussian | PerLayerHierarchicalGaussian


@dataclass(frozen=True, eq=False)
class MatchResult:
    """The fitted prior and its convergence record.

    Attributes:
        prior: `PerLayerGaussian` (gpi-g) or `PerLayerHierarchicalGaussian` (gpi-h), keyed by the
            net's parameter names; usable as ``ModelSpec(net, result.prior, ...)`` by every engine.
        w1_curve: ``[num_steps]`` critic estimate of W1 at each outer step (units of f).
        family: "gpi-g" or "gpi-h".
        seconds: wall time of the fit.
    """

    prior: MatchedPrior
    w1_curve: Tensor
    family: str
    seconds: float

    def save(self, path: str | Path) -> None:
        """Write prior and curve to a safetensors file (atomic)."""
        save_tensors(path, self.to_tensors(), kind=_KIND, meta={"family": self.family, "seconds": json.dumps(self.seconds)})

    @classmethod
    def load(cls, path: str | Path) -> MatchResult:
        """Read a file written by `save`."""
        tensors, meta = load_tensors(path, kind=_KIND)
        return cls.from_tensors(tensors, meta.get("family"), float(json.loads(meta.get("seconds", "0"))), str(path))

    def to_tensors(self) -> dict[str, Tensor]:
        """Hyperparameters (``scale/*`` or ``shape/*``, ``rate/*``) and ``w1_curve`` as named tensors."""
        if isinstance(self.prior, PerLayerGaussian):
            tensors = {f"scale/{k}": torch.tensor(float(v)) for k, v in self.prior.scales.items()}
        else:
            tensors = {f"shape/{k}": torch.tensor(float(v)) for k, v in self.prior.shapes.items()}
            tensors.update({f"rate/{k}": torch.tensor(float(v)) for k, v in self.prior.rates.items()})
        tensors["w1_curve"] = self.w1_curve.double()
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], family: object, seconds: float, source: str = "tensors") -> MatchResult:
        """Inverse of `to_tensors`."""

        def table(prefix: str) -> dict[str, float]:
            return {k[len(prefix):]: float(v) for k, v in tensors.items() if k.startswith(prefix)}

        if family == "gpi-g":
            prior: MatchedPrior = PerLayerGaussian(table("scale/"))
        elif family == "gpi-h":
            prior = PerLayerHierarchicalGaussian(table("shape/"), table("rate/"))
        else:
            raise ValueError(f"path: {source} holds an unknown prior family {family!r}")
        return cls(prior, tensors["w1_curve"], family, seconds)

    def figure(self) -> bytes:
        """PNG of the W1 curve per outer step, with a running mean over 10 % of the steps."""
        from uqkit.calibration.figures import _new_figure, _to_png

        curve = self.w1_curve.double().numpy()
        window = max(1, len(curve) // 10)
        smooth = torch.nn.functional.avg_pool1d(torch.from_numpy(curve)[None, None], window, 1).flatten().numpy()
        fig, ax = _new_figure()
        ax.plot(range(1, len(curve) + 1), curve, lw=0.8, alpha=0.5, label="critic estimate")
        ax.plot(range(window, len(curve) + 1), smooth, lw=2, label=f"running mean ({window})")
        ax.set_xlabel("outer step")
        ax.set_ylabel("W1 (BNN prior vs GP)")
        ax.set_title(f"Wasserstein prior fit ({self.family})")
        ax.legend()
        return _to_png(fig)


def match_prior(spec_or_net: ModelSpec | nn.Module, gp_prior: GPPrior, inputs: Tensor, *, family: str = "gpi-g",
                num_steps: int = 200, num_functions: int = 128, measurement_size: int = 100, lr: float = 0.05,
                critic_steps: int = 50, critic_lr: float = 0.02, gradient_penalty: float = 10.0,
                train_fraction: float = 0.7, init_weight_std: float = 1.0, init_bias_std: float = 1.0,
                seed: int = 0, progress: bool = True) -> MatchResult:
    """Fit a per-layer weight prior whose induced functions match ``gp_prior`` (1-Wasserstein, dual form).

    Args:
        spec_or_net: a `ModelSpec` or an ``nn.Module`` with one output ``[B, 1]``.
        gp_prior: the target functional prior.
        inputs: ``[N, d]`` training inputs; measurement sets mix them with uniform points in their box.
        family: "gpi-g" (per-layer Gaussian stds) or "gpi-h" (per-layer Gamma(shape, rate) precisions).
        num_steps: outer steps (one prior update each).
        num_functions: S, function draws per side in each critic and prior step.
        measurement_size: M, points per measurement set (>= 2).
        lr: RMSprop learning rate of the prior hyperparameters (softplus-parameterised).
        critic_steps: Adagrad steps of each freshly initialised critic; critic_lr: its learning rate.
        gradient_penalty: lambda of the WGAN-GP penalty ``(||grad phi|| - 1)^2``.
        train_fraction: share of a measurement set drawn from ``inputs`` (the rest uniform in the box).
        init_weight_std, init_bias_std: initial stds (weights: times sqrt(fan_in)); for gpi-h the
            initial Gamma is shape 1, rate std^2.
        seed: seeds all randomness.
        progress: tqdm bar with the current W1 estimate.

    Returns:
        `MatchResult` with the fitted prior, the W1 curve and the wall time.
    """
    net, x = _check_common(spec_or_net, gp_prior, inputs, measurement_size, num_functions)
    if family not in _FAMILIES:
        raise ValueError(f"family: expected one of {_FAMILIES}, got {family!r}")
    _check_count(num_steps, "num_steps", 1)
    _check_count(critic_steps, "critic_steps", 1)
    _check_count(seed, "seed", 0)
    for value, name in ((lr, "lr"), (critic_lr, "critic_lr"), (init_weight_std, "init_weight_std"),
                        (init_bias_std, "init_bias_std")):
        check_positive(value, name)
    check_positive(gradient_penalty, "gradient_penalty", allow_zero=True)
    if not 0 <= train_fraction <= 1:
        raise ValueError(f"train_fraction: expected a share in [0, 1], got {train_fraction!r}")

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    template = {k: p.detach() for k, p in net.named_parameters()}
    init = torch.tensor([init_weight_std if t.ndim > 1 else init_bias_std for t in template.values()])
    if family == "gpi-g":
        raw = {"scale": _inverse_softplus(init)}
    else:  # Gamma(1, std^2) on the precision: mean precision 1 / std^2
        raw = {"shape": _inverse_softplus(torch.ones_like(init)), "rate": _inverse_softplus(init.square())}
    raw = {k: v.clone().requires_grad_() for k, v in raw.items()}
    optimiser = torch.optim.RMSprop(list(raw.values()), lr=lr)
    curve = torch.empty(num_steps, dtype=torch.float64)

    bar = tqdm(range(num_steps), desc=f"match_prior {family}", disable=not progress, leave=False)
    for step in bar:
        x_m = measurement_set(x, measurement_size, train_fraction, generator)
        with torch.no_grad():
            pool_nn = _functions(net, _reparam_draws(family, raw, template, _POOL_FACTOR * num_functions, generator), x_m)
        pool_gp = gp_prior.sample_functions(x_m, _POOL_FACTOR * num_functions, generator=generator)
        critic = _train_critic(pool_nn, pool_gp, num_functions, critic_steps, critic_lr, gradient_penalty, generator)
        bag = torch.randint(0, pool_gp.shape[0], (num_functions,), generator=generator)
        f_nn = _functions(net, _reparam_draws(family, raw, template, num_functions, generator), x_m)
        w1 = critic(f_nn).mean() - critic(pool_gp[bag]).mean()
        optimiser.zero_grad()
        w1.backward()
        optimiser.step()
        curve[step] = float(w1.detach())
        if progress and step % 10 == 0:
            bar.set_postfix(w1=f"{float(curve[step]):.3f}")

    with torch.no_grad():
        values = {k: softplus(v).tolist() for k, v in raw.items()}
    names = list(template)
    if family == "gpi-g":
        prior: MatchedPrior = PerLayerGaussian(dict(zip(names, values["scale"])))
    else:
        prior = PerLayerHierarchicalGaussian(dict(zip(names, values["shape"])), dict(zip(names, values["rate"])))
    return MatchResult(prior, curve, family, time.perf_counter() - start)


def match_prior_restarts(spec_or_net: ModelSpec | nn.Module, gp_prior: GPPrior, inputs: Tensor, *,
                         num_restarts: int = 4, seed: int = 0, backend: str = "local", address: str | None = None,
                         progress: bool = True, **options: Any) -> MatchResult:
    """`match_prior` from ``num_restarts`` seeds; the fit with the lowest final W1 wins.

    Restart r uses seed ``seed * num_restarts + r`` (so restarts of different calls never share a
    seed); "final W1" is the mean of the last 10% of its curve (the fit's own critic estimates).
    With ``backend="ray"`` each restart is a Ray task (see `uqkit.parallel`); the winner is the
    same as with the local backend.

    Args:
        spec_or_net, gp_prior, inputs, **options: as for `match_prior` (``progress`` is per run).
        num_restarts: fits to run (>= 1).
        seed: the run seed (>= 0).
        backend, address: where the restarts run (see `uqkit.parallel.run_tasks`).
    """
    _check_count(num_restarts, "num_restarts", 1)
    _check_count(seed, "seed", 0)
    family = options.get("family", "gpi-g")
    task = functools.partial(_restart_task, spec_or_net, gp_prior, inputs, options)
    results = run_tasks(task, [seed * num_restarts + r for r in range(num_restarts)], backend=backend,
                        address=address, desc=f"match_prior restarts ({family})", progress=progress)
    fits = [MatchResult.from_tensors(r, family, float(r["seconds"])) for r in results]
    return min(fits, key=lambda fit: float(fit.w1_curve[-max(1, len(fit.w1_curve) // 10):].mean()))


def _restart_task(spec_or_net: ModelSpec | nn.Module, gp_prior: GPPrior, inputs: Tensor, options: dict[str, Any],
                  seed: int, report: Any) -> dict[str, Tensor]:
    fit = match_prior(spec_or_net, gp_prior, inputs, seed=seed, **{**options, "progress": False})
    report(1)
    return {**fit.to_tensors(), "seconds": torch.tensor(fit.seconds, dtype=torch.float64)}


def estimate_w1(spec_or_net: ModelSpec | nn.Module, prior: Prior, gp_prior: GPPrior, inputs: Tensor, *,
                num_sets: int = 8, num_functions: int = 256, measurement_size: int = 50, critic_steps: int = 200,
                critic_lr: float = 0.02, gradient_penalty: float = 10.0, train_fraction: float = 0.7,
                seed: int = 0) -> Tensor:
    """W1 between the functions of ``net`` under any weight ``prior`` and ``gp_prior``, one estimate per set.

    For each of ``num_sets`` fresh measurement sets a fresh critic is trained on independent draws
    (``num_functions`` per side and critic step, drawn from pools as in `match_prior`), then the dual
    objective is evaluated on a further independent sample. Returns ``[num_sets]``.
    """
    net, x = _check_common(spec_or_net, gp_prior, inputs, measurement_size, num_functions)
    _check_count(num_sets, "num_sets", 1)
    generator = torch.Generator().manual_seed(seed)
    template = {k: p.detach() for k, p in net.named_parameters()}
    estimates = torch.empty(num_sets, dtype=torch.float64)
    for i in range(num_sets):
        x_m = measurement_set(x, measurement_size, train_fraction, generator)

        def draw(count: int) -> tuple[Tensor, Tensor]:
            weights = prior.sample(count, generator=generator, template=template)
            return _functions(net, weights, x_m), gp_prior.sample_functions(x_m, count, generator=generator)

        critic = _train_critic(*draw(_POOL_FACTOR * num_functions), num_functions, critic_steps, critic_lr,
                               gradient_penalty, generator)
        f_nn, f_gp = draw(num_functions)
        with torch.no_grad():
            estimates[i] = critic(f_nn).mean() - critic(f_gp).mean()
    return estimates


def measurement_set(inputs: Tensor, size: int, train_fraction: float, generator: torch.Generator) -> Tensor:
    """``[size, d]``: ``round(train_fraction * size)`` rows of ``inputs`` (without replacement where
    possible), the rest uniform in their bounding box, shuffled."""
    num_train = round(train_fraction * size)
    n = inputs.shape[0]
    rows = (torch.randperm(n, generator=generator)[:num_train] if num_train <= n
            else torch.randint(0, n, (num_train,), generator=generator))
    lo, hi = inputs.min(0).values, inputs.max(0).values
    uniform = lo + (hi - lo) * torch.rand(size - num_train, inputs.shape[1], generator=generator, dtype=inputs.dtype)
    points = torch.cat([inputs[rows], uniform])
    return points[torch.randperm(size, generator=generator)]


def _check_common(spec_or_net: object, gp_prior: object, inputs: object, measurement_size: int,
                  num_functions: int) -> tuple[nn.Module, Tensor]:
    """The net (a float64 copy) and the float64 inputs, after every shared validation."""
    if isinstance(spec_or_net, ModelSpec):
        net = spec_or_net.net
    elif isinstance(spec_or_net, nn.Module):
        net = spec_or_net
    else:
        raise TypeError(f"spec_or_net: expected a ModelSpec or an nn.Module, got {type(spec_or_net).__name__}")
    if not isinstance(gp_prior, GPPrior):
        raise TypeError(f"gp_prior: expected a GPPrior, got {type(gp_prior).__name__}")
    _check_count(measurement_size, "measurement_size", 2)
    _check_count(num_functions, "num_functions", 2)
    x = check_float(inputs, "inputs", ndim=2).to(torch.float64)
    if x.shape[0] < 2 or bool((x == x[0]).all()):
        raise ValueError(f"inputs: degenerate measurement sets: expected at least two distinct input rows, "
                         f"got {x.shape[0]} row(s) of shape {tuple(x.shape)} that are all equal")
    net = copy.deepcopy(net).double().requires_grad_(False)
    try:
        with torch.no_grad():
            out = net(x[:2])
    except RuntimeError as err:
        raise ValueError(f"inputs: the net cannot take inputs of shape {tuple(x.shape)}: {err}") from None
    if out.shape != (2, 1):
        raise ValueError(f"spec_or_net: expected a net with one output [B, 1], got output shape {tuple(out.shape)}")
    return net, x


def _check_count(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def _reparam_draws(family: str, raw: dict[str, Tensor], template: dict[str, Tensor], num: int,
                   generator: torch.Generator) -> dict[str, Tensor]:
    """``num`` weight draws ``sigma_k eps / sqrt(fan_in_k)`` differentiable in the raw hyperparameters."""
    if family == "gpi-g":
        sigma = softplus(raw["scale"]).expand(num, -1)  # [num, K]
    else:
        with forked_rng(generator):
            tau = torch.distributions.Gamma(softplus(raw["shape"]), softplus(raw["rate"])).rsample((num,))
        sigma = tau.clamp_min(_MIN_PRECISION).rsqrt()
    draws = {}
    for i, (name, t) in enumerate(template.items()):
        eps = torch.randn(num, *t.shape, generator=generator, dtype=torch.float64)
        draws[name] = eps * (sigma[:, i] / math.sqrt(fan_in(t.shape))).reshape(num, *([1] * t.ndim))
    return draws


def _functions(net: nn.Module, weights: dict[str, Tensor], x: Tensor) -> Tensor:
    """``[S, M]`` outputs of ``net`` at ``x [M, d]`` for weight draws with leading ``[S]`` (vmapped)."""
    return torch.vmap(lambda p: functional_call(net, p, (x,)))(weights)[..., 0]


def _critic(dim: int, width: int, generator: torch.Generator) -> nn.Module:
    """Fresh critic MLP ``dim -> width -> width -> 1`` (softplus): Xavier-normal weights, N(0, 1) biases."""
    critic = nn.Sequential(nn.Linear(dim, width), nn.Softplus(), nn.Linear(width, width), nn.Softplus(),
                           nn.Linear(width, 1)).double()
    for layer in critic[::2]:
        nn.init.xavier_normal_(layer.weight, generator=generator)
        nn.init.normal_(layer.bias, generator=generator)
    return critic


def _train_critic(pool_nn: Tensor, pool_gp: Tensor, bag_size: int, steps: int, lr: float, penalty: float,
                  generator: torch.Generator, width: int = 200) -> nn.Module:
    """Maximise ``E_nn phi - E_gp phi - penalty E (||grad phi(interp)|| - 1)^2`` over bags from the pools."""
    pool_nn, pool_gp = pool_nn.detach(), pool_gp.detach()
    critic = _critic(pool_nn.shape[1], width, generator)
    optimiser = torch.optim.Adagrad(critic.parameters(), lr=lr)
    for _ in range(steps):
        f_nn = pool_nn[torch.randint(0, pool_nn.shape[0], (bag_size,), generator=generator)]
        f_gp = pool_gp[torch.randint(0, pool_gp.shape[0], (bag_size,), generator=generator)]
        objective = critic(f_nn).mean() - critic(f_gp).mean()
        if penalty > 0:
            u = torch.rand(bag_size, 1, generator=generator, dtype=f_nn.dtype)
            mix = (u * f_nn + (1 - u) * f_gp).requires_grad_()
            (grad,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
            objective = objective - penalty * (grad.norm(dim=1) - 1).square().mean()
        optimiser.zero_grad()
        (-objective).backward()
        optimiser.step()
    return critic.requires_grad_(False)
