"""uqkit NUTS vs Pyro NUTS: minimum bulk ESS per second on the same posteriors, side by side.

uqkit runs 4 chains vectorised (one batched log density call per leapfrog step). Pyro is run three
ways, each ``MCMC(..., num_chains=1)`` once per chain, sequentially, in this process (Pyro's
multi-chain mode forks one process per chain, which on this 2-core shared machine is no faster):

- ``pyro-potential``: ``NUTS(potential_fn=...)`` on the very torch function uqkit samples (the
  strictest comparison: only the samplers differ);
- ``pyro-model``: the same posterior written as an ordinary Pyro model (``pyro.sample`` statements,
  constrained sites transformed by Pyro, potential computed by tracing the model), NUTS defaults,
  as a user runs it;
- ``pyro-model-jit``: the same with ``jit_compile=True, ignore_jit_warnings=True`` (compile time
  included, as a user pays it).

The headline peer is the fastest Pyro route (ESS per CPU second). Every side gets the same starting
points (in the unconstrained space) and the same warmup/sample counts, unless ``--pyro-scale``
shrinks Pyro's (keeping the warmup:sample ratio) to bound its run time; ESS/s is a rate, so the
comparison stays fair. ESS is arviz's bulk ESS over the 4 chains; the minimum over coordinates.
Rates are given per wall second and per process-CPU second (the robust one on a shared machine),
with the CPU time per log density + gradient call, sampler overhead included (4 chains batched for
uqkit, one chain for Pyro's potential route; not counted for Pyro models). uqkit evaluates the log
density and gradient through its traced graph (`TracedLogDensity`; the one-off cost of the first
trace in a process, about 1 CPU second of imports, is measured first and printed on its own line). Each Pyro route's posterior means are checked against uqkit's in units of the
combined Monte Carlo standard error (``same target`` column: max z over the checked quantities and
the Bonferroni critical z at p = 0.01; coordinates for eight schools and linreg, the network's
output at 5 inputs for the BNN, whose weights are only identified up to symmetries).

Usage: python benchmarks/bench_nuts.py [--targets eight_schools,linreg,bnn] [--sides uqkit,pyro-potential,...]
       [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import arviz as az
import numpy as np
import torch
from _common import context_str
from scipy import stats

from uqkit.inference.traced import TracedLogDensity, value_and_grad
from uqkit.inference.sample import sample
from uqkit.testing.checks import mcse_mean
from uqkit.testing.targets import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, eight_schools_noncentered, linear_regression

BNN_HIDDEN, BNN_NOISE_SD = 50, 0.1
#: Inputs at which the BNN's posterior mean function is compared across samplers.
BNN_CHECK_X = torch.linspace(-1.8, 1.8, 5, dtype=torch.float64)


@dataclass
class Target:
    """A posterior three ways: a torch log density on ``[..., D]``, a Pyro model with its sites, and a
    map from flat draws ``[..., D]`` to the quantities whose means are compared ``[..., K]``."""

    log_density: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    model: Callable[[], None]
    to_flat: Callable[[dict], torch.Tensor]  # Pyro draws (constrained) -> [..., D] in uqkit's coordinates
    to_sites: Callable[[torch.Tensor], dict]  # [D] in uqkit's coordinates -> Pyro's unconstrained sites
    check: Callable[[torch.Tensor], torch.Tensor] = lambda z: z


def eight_schools() -> Target:
    import pyro
    import pyro.distributions as dist

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
        pyro.sample("obs", dist.Normal(mu + tau * eta, EIGHT_SCHOOLS_SIGMA).to_event(1), obs=EIGHT_SCHOOLS_Y)

    return Target(
        eight_schools_noncentered, 10, model,
        to_flat=lambda s: torch.cat([s["mu"][..., None], s["tau"].log()[..., None], s["eta"]], -1),
        to_sites=lambda z: {"mu": z[0], "tau": z[1], "eta": z[2:]},
    )


def linreg() -> Target:
    import pyro
    import pyro.distributions as dist

    reg = linear_regression(num_data=500, dim=10, noise_sd=1.0, prior_sd=1.0, seed=0)

    def model() -> None:
        w = pyro.sample("w", dist.Normal(0.0, reg.prior_sd).expand([10]).to_event(1))
        pyro.sample("obs", dist.Normal(reg.x @ w, reg.noise_sd).to_event(1), obs=reg.y)

    return Target(reg.log_density, 10, model, to_flat=lambda s: s["w"], to_sites=lambda z: {"w": z})


def _bnn_forward(x: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    """1-H-1 tanh network: ``x [N]``, weights ``[..., H]`` (``b2 [..., 1]``) -> ``f [..., N]``."""
    h = torch.tanh(x[..., :, None] * w1[..., None, :] + b1[..., None, :])  # [..., N, H]
    return (h * w2[..., None, :]).sum(-1) + b2


def _bnn_split(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h = BNN_HIDDEN
    return w[..., :h], w[..., h:2 * h], w[..., 2 * h:3 * h], w[..., -1:]


def bnn(num_data: int = 100, seed: int = 0) -> Target:
    """A 1-50-1 tanh network on ``num_data`` points of sin(2x) + N(0, 0.1²), x ~ U(-2, 2), weights ~ N(0, 1)."""
    import pyro
    import pyro.distributions as dist

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(num_data, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.sin(2 * x) + BNN_NOISE_SD * torch.randn(num_data, generator=g, dtype=torch.float64)

    def log_density(w: torch.Tensor) -> torch.Tensor:  # w [..., 3·H + 1]
        f = _bnn_forward(x, *_bnn_split(w))
        return -0.5 * ((y - f) ** 2).sum(-1) / BNN_NOISE_SD**2 - 0.5 * (w**2).sum(-1)

    def model() -> None:
        shapes = {"w1": BNN_HIDDEN, "b1": BNN_HIDDEN, "w2": BNN_HIDDEN, "b2": 1}
        w = {k: pyro.sample(k, dist.Normal(0.0, 1.0).expand([n]).to_event(1)) for k, n in shapes.items()}
        pyro.sample("obs", dist.Normal(_bnn_forward(x, **w), BNN_NOISE_SD).to_event(1), obs=y)

    return Target(
        log_density, 3 * BNN_HIDDEN + 1, model,
        to_flat=lambda s: torch.cat([s["w1"], s["b1"], s["w2"], s["b2"]], -1),
        to_sites=lambda z: dict(zip(("w1", "b1", "w2", "b2"), _bnn_split(z))),
        check=lambda z: _bnn_forward(BNN_CHECK_X, *_bnn_split(z)),
    )


TARGETS = {"eight_schools": eight_schools, "linreg": linreg, "bnn": bnn}
SIDES = ("uqkit", "pyro-potential", "pyro-model", "pyro-model-jit")


def min_bulk_ess(draws: np.ndarray) -> float:
    return float(np.min(az.ess(az.convert_to_dataset(draws), method="bulk")["x"].values))


class Counted:
    """The log density, counting its calls (one per gradient evaluation on either side)."""

    def __init__(self, log_density) -> None:
        self.log_density, self.calls = log_density, 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.log_density(z)


class CountedTraced(TracedLogDensity):
    """uqkit's traced log density, counting gradient calls (the log density's Python code runs only
    while tracing, so `Counted` cannot see them)."""

    calls = 0

    def graph_for(self, position: torch.Tensor):
        graph = super().graph_for(position)
        if graph is None:
            return None

        def counted(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            CountedTraced.calls += 1
            return graph(z)
        return counted


def run_uqkit(target: Target, init: torch.Tensor, num_warmup: int, num_samples: int, seed: int) -> dict:
    CountedTraced.calls = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    with mock.patch("uqkit.inference.sample.TracedLogDensity", CountedTraced):
        post = sample(target.log_density, init, num_warmup=num_warmup, num_samples=num_samples,
                      num_chains=init.shape[0], seed=seed, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if not post.meta["traced_gradient"]:
        print(f"note: {target.log_density} could not be traced; uqkit used autograd")
    return {"wall_s": wall, "cpu_s": cpu, "draws": post.draws, "calls": CountedTraced.calls,
            "divergent": int(post.sample_stats["divergent"].sum())}


def run_pyro(target: Target, init: torch.Tensor, num_warmup: int, num_samples: int, seed: int, *,
             route: str) -> dict:
    """Pyro's NUTS, one chain after another; ``route`` is one of the ``pyro-*`` sides."""
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    counted = Counted(target.log_density)
    draws, divergent = [], 0
    start, start_cpu = time.perf_counter(), time.process_time()
    for chain, z0 in enumerate(init):
        pyro.set_rng_seed(seed + chain)
        pyro.clear_param_store()
        if route == "pyro-potential":
            kernel = NUTS(potential_fn=lambda params: -counted(params["z"]))
            initial = {"z": z0.clone()}
        else:
            kernel = NUTS(target.model, jit_compile=route == "pyro-model-jit", ignore_jit_warnings=True)
            initial = {k: v.clone() for k, v in target.to_sites(z0).items()}
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, initial_params=initial,
                    disable_progbar=True)
        mcmc.run()
        samples = mcmc.get_samples()
        draws.append(samples["z"] if route == "pyro-potential" else target.to_flat(samples))
        divergent += len(mcmc.diagnostics()["divergences"]["chain 0"])
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"wall_s": wall, "cpu_s": cpu, "draws": torch.stack(draws), "calls": counted.calls,
            "divergent": divergent}


def same_target_z(target: Target, ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, int, float]:
    """Max |mean difference| / combined MCSE over the checked quantities, the quantity where it is
    reached, and the Bonferroni critical z (p = 0.01)."""
    mean_a, se_a = mcse_mean(target.check(ours).numpy())
    mean_b, se_b = mcse_mean(target.check(theirs).numpy())
    z = np.abs(mean_a - mean_b) / np.sqrt(se_a**2 + se_b**2)
    return float(np.max(z)), int(np.argmax(z)), float(stats.norm.ppf(1 - 0.01 / (2 * len(z))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="eight_schools,linreg,bnn")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--pyro-scale", default="bnn=0.4", help="per-target fraction of the iterations Pyro runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per target")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    sides = args.sides.split(",")
    if "uqkit" not in sides or not set(sides) <= set(SIDES):
        parser.error(f"--sides: expected uqkit plus any of {SIDES[1:]}, got {args.sides}")
    scale = {k: float(v) for k, v in (item.split("=") for item in args.pyro_scale.split(",") if item)}
    start_cpu = time.process_time()
    value_and_grad(TracedLogDensity(lambda z: -0.5 * (z**2).sum(-1)), torch.zeros(4, 2))
    one_off = time.process_time() - start_cpu
    if not args.json:
        print(f"uqkit one-off per process (first trace: imports): {one_off:.2f} CPU s, not in the rows below  "
              f"{context_str()}")
        print(f"{'target':<14}{'side':<16}{'warmup':>7}{'samples':>8}{'wall s':>9}{'cpu s':>9}{'min ESS':>9}"
              f"{'ESS/s':>9}{'ESS/cpu s':>10}{'ms/call':>9}{'div':>5}{'same target':>20}  context")
    for name in args.targets.split(","):
        target = TARGETS[name]()
        g = torch.Generator().manual_seed(args.seed)
        init = 0.1 * torch.randn(4, target.dim, generator=g, dtype=torch.float64)
        rows, draws = {}, {}
        for side in sides:
            frac = 1.0 if side == "uqkit" else scale.get(name, 1.0)
            warmup, samples = max(1, round(args.num_warmup * frac)), max(1, round(args.num_samples * frac))
            if side == "uqkit":
                out = run_uqkit(target, init, warmup, samples, args.seed)
            else:
                out = run_pyro(target, init, warmup, samples, args.seed, route=side)
            draws[side] = out["draws"]
            ess = min_bulk_ess(out["draws"].numpy())
            z, worst, z_crit = (same_target_z(target, draws["uqkit"], out["draws"]) if side != "uqkit"
                                else (0.0, -1, math.inf))
            rows[side] = {"num_warmup": warmup, "num_samples": samples, "wall_s": out["wall_s"], "cpu_s": out["cpu_s"],
                          "min_bulk_ess": ess, "ess_per_s": ess / out["wall_s"], "ess_per_cpu_s": ess / out["cpu_s"],
                          "ms_per_call": 1e3 * out["cpu_s"] / out["calls"] if out["calls"] else math.nan,
                          "divergent": out["divergent"], "same_target_max_z": z, "same_target_worst": worst,
                          "same_target_critical_z": z_crit,
                          "threads": torch.get_num_threads(), "loadavg": os.getloadavg()}
            if not args.json:
                r = rows[side]
                check = "" if side == "uqkit" else f"z[{worst}]={z:.2f}<{z_crit:.2f} {'ok' if z < z_crit else 'NO'}"
                print(f"{name:<14}{side:<16}{warmup:>7}{samples:>8}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{ess:>9.0f}"
                      f"{r['ess_per_s']:>9.1f}{r['ess_per_cpu_s']:>10.1f}{r['ms_per_call']:>9.3f}{r['divergent']:>5}"
                      f"{check:>20}  {context_str()}", flush=True)
        ratios = {side: {k: rows["uqkit"][k] / rows[side][k] if rows[side][k] > 0 else math.inf
                         for k in ("ess_per_s", "ess_per_cpu_s")} for side in sides if side != "uqkit"}
        best = max(ratios, key=lambda s: rows[s]["ess_per_cpu_s"]) if ratios else None
        if args.json:
            print(json.dumps({"target": name, "dim": target.dim, "rows": rows, "ratios": ratios, "fastest_pyro": best,
                              "uqkit_one_off_cpu_s": one_off}))
            continue
        for side, ratio in ratios.items():
            tag = "  <- fastest Pyro route (headline)" if side == best else ""
            print(f"{name:<14}uqkit/{side:<16} min bulk ESS per wall s = {ratio['ess_per_s']:.1f}x, per CPU s = "
                  f"{ratio['ess_per_cpu_s']:.1f}x  (goal 10x)  {context_str()}{tag}")


if __name__ == "__main__":
    main()
