"""uqkit NUTS vs Pyro NUTS: minimum bulk ESS per second on the same log densities, side by side.

uqkit runs 4 chains vectorised (one batched log density call per leapfrog step). Pyro runs
``MCMC(NUTS(potential_fn=...), num_chains=1)`` once per chain, sequentially, in this process:
Pyro's multi-chain mode forks one process per chain, which on this 2-core shared machine is no
faster and adds start-up time, and ``jit_compile=True`` needs a model (not a potential_fn). Both
sides get the same starting points and the same warmup/sample counts, unless ``--pyro-scale``
shrinks Pyro's (keeping the warmup:sample ratio) to bound its run time; ESS/s is a rate, so the
comparison stays fair. ESS is arviz's bulk ESS over the 4 chains; the minimum over coordinates.
Rates are given per wall second and per process-CPU second (the robust one on a shared machine),
with the cost of one log density + gradient call (4 chains batched for uqkit, one chain for Pyro).

Usage: python benchmarks/bench_nuts.py [--targets eight_schools,linreg,bnn] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import arviz as az
import numpy as np
import torch
from _common import context_str

from uqkit.inference.sample import sample
from uqkit.testing.targets import eight_schools_noncentered, linear_regression


def bnn_log_density(num_data: int = 100, hidden: int = 50, noise_sd: float = 0.1, seed: int = 0):
    """A 1-``hidden``-1 tanh network on ``num_data`` points of sin(2x) + N(0, noise_sd²), weights ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(num_data, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.sin(2 * x) + noise_sd * torch.randn(num_data, generator=g, dtype=torch.float64)
    dim = 3 * hidden + 1

    def log_density(w: torch.Tensor) -> torch.Tensor:  # w [..., 3·hidden + 1]
        w1, b1, w2, b2 = w[..., :hidden], w[..., hidden:2 * hidden], w[..., 2 * hidden:3 * hidden], w[..., -1:]
        h = torch.tanh(x[..., :, None] * w1[..., None, :] + b1[..., None, :])  # [..., N, H]
        f = (h * w2[..., None, :]).sum(-1) + b2  # [..., N]
        return -0.5 * ((y - f) ** 2).sum(-1) / noise_sd**2 - 0.5 * (w**2).sum(-1)

    return log_density, dim


def targets() -> dict:
    reg = linear_regression(num_data=500, dim=10, noise_sd=1.0, prior_sd=1.0, seed=0)
    bnn, bnn_dim = bnn_log_density()
    return {"eight_schools": (eight_schools_noncentered, 10), "linreg": (reg.log_density, 10), "bnn": (bnn, bnn_dim)}


def min_bulk_ess(draws: np.ndarray) -> float:
    return float(np.min(az.ess(az.convert_to_dataset(draws), method="bulk")["x"].values))


class Counted:
    """The log density, counting its calls (one per gradient evaluation on either side)."""

    def __init__(self, log_density) -> None:
        self.log_density, self.calls = log_density, 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.log_density(z)


def run_uqkit(log_density, init: torch.Tensor, num_warmup: int, num_samples: int, seed: int) -> dict:
    counted = Counted(log_density)
    start, start_cpu = time.perf_counter(), time.process_time()
    post = sample(counted, init, num_warmup=num_warmup, num_samples=num_samples, num_chains=init.shape[0],
                  seed=seed, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"wall_s": wall, "cpu_s": cpu, "draws": post.draws.numpy(), "calls": counted.calls,
            "divergent": int(post.sample_stats["divergent"].sum())}


def run_pyro(log_density, init: torch.Tensor, num_warmup: int, num_samples: int, seed: int) -> dict:
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    counted = Counted(log_density)
    draws, divergent = [], 0
    start, start_cpu = time.perf_counter(), time.process_time()
    for chain, z0 in enumerate(init):
        pyro.set_rng_seed(seed + chain)
        kernel = NUTS(potential_fn=lambda params: -counted(params["z"]))
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, initial_params={"z": z0.clone()},
                    disable_progbar=True)
        mcmc.run()
        draws.append(mcmc.get_samples()["z"].numpy())
        divergent += len(mcmc.diagnostics()["divergences"]["chain 0"])
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"wall_s": wall, "cpu_s": cpu, "draws": np.stack(draws), "calls": counted.calls, "divergent": divergent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="eight_schools,linreg,bnn")
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
    scale = {k: float(v) for k, v in (item.split("=") for item in args.pyro_scale.split(",") if item)}
    all_targets = targets()
    if not args.json:
        print(f"{'target':<14}{'side':<7}{'warmup':>7}{'samples':>8}{'wall s':>9}{'cpu s':>9}{'min ESS':>9}"
              f"{'ESS/s':>9}{'ESS/cpu s':>10}{'ms/call':>9}{'div':>5}  context")
    for name in args.targets.split(","):
        log_density, dim = all_targets[name]
        g = torch.Generator().manual_seed(args.seed)
        init = 0.1 * torch.randn(4, dim, generator=g, dtype=torch.float64)
        rows = {}
        for side, runner, frac in (("uqkit", run_uqkit, 1.0), ("pyro", run_pyro, scale.get(name, 1.0))):
            warmup, samples = max(1, round(args.num_warmup * frac)), max(1, round(args.num_samples * frac))
            out = runner(log_density, init, warmup, samples, args.seed)
            ess = min_bulk_ess(out["draws"])
            rows[side] = {"num_warmup": warmup, "num_samples": samples, "wall_s": out["wall_s"], "cpu_s": out["cpu_s"],
                          "min_bulk_ess": ess, "ess_per_s": ess / out["wall_s"], "ess_per_cpu_s": ess / out["cpu_s"],
                          "ms_per_call": 1e3 * out["cpu_s"] / out["calls"], "divergent": out["divergent"],
                          "threads": torch.get_num_threads(), "loadavg": os.getloadavg()[0]}
            if not args.json:
                r = rows[side]
                print(f"{name:<14}{side:<7}{warmup:>7}{samples:>8}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{ess:>9.0f}"
                      f"{r['ess_per_s']:>9.1f}{r['ess_per_cpu_s']:>10.1f}{r['ms_per_call']:>9.3f}{r['divergent']:>5}"
                      f"  {context_str()}")
        ratio, cpu_ratio = (rows["uqkit"][k] / rows["pyro"][k] if rows["pyro"][k] > 0 else math.inf
                            for k in ("ess_per_s", "ess_per_cpu_s"))
        if args.json:
            flat = {f"{side}_{k}": v for side, r in rows.items() for k, v in r.items()}
            print(json.dumps({"target": name, "dim": dim, **flat, "ratio_ess_per_s": ratio,
                              "ratio_ess_per_cpu_s": cpu_ratio}))
        else:
            print(f"{name:<14}uqkit/pyro min bulk ESS per wall s = {ratio:.1f}x, per CPU s = {cpu_ratio:.1f}x  "
                  f"(goal 10x)  {context_str()}")


if __name__ == "__main__":
    main()
