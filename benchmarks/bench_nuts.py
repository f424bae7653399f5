"""uqkit NUTS vs Pyro NUTS: minimum bulk ESS per second on the same log densities, side by side.

uqkit runs 4 chains vectorised (one batched log density call per leapfrog step). Pyro runs
``MCMC(NUTS(potential_fn=...), num_chains=1)`` once per chain, sequentially, in this process:
Pyro's multi-chain mode forks one process per chain, which on this 2-core shared machine is no
faster and adds start-up time, and ``jit_compile=True`` needs a model (not a potential_fn). Both
sides get the same starting points and the same warmup/sample counts, unless ``--pyro-scale``
shrinks Pyro's (keeping the warmup:sample ratio) to bound its run time; ESS/s is a rate, so the
comparison stays fair. ESS is arviz's bulk ESS over the 4 chains; the minimum over coordinates.

Usage: python benchmarks/bench_nuts.py [--targets eight_schools,linreg,bnn] [--json]
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


def run_uqkit(log_density, init: torch.Tensor, num_warmup: int, num_samples: int, seed: int) -> dict:
    start = time.perf_counter()
    post = sample(log_density, init, num_warmup=num_warmup, num_samples=num_samples, num_chains=init.shape[0],
                  seed=seed, progress=False)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "draws": post.draws.numpy(), "divergent": int(post.sample_stats["divergent"].sum()),
            "grad_evals": int(post.sample_stats["num_steps"].sum())}


def run_pyro(log_density, init: torch.Tensor, num_warmup: int, num_samples: int, seed: int) -> dict:
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    draws, divergent, start = [], 0, time.perf_counter()
    for chain, z0 in enumerate(init):
        pyro.set_rng_seed(seed + chain)
        kernel = NUTS(potential_fn=lambda params: -log_density(params["z"]))
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, initial_params={"z": z0.clone()},
                    disable_progbar=True)
        mcmc.run()
        draws.append(mcmc.get_samples()["z"].numpy())
        divergent += len(mcmc.diagnostics()["divergences"]["chain 0"])
    wall = time.perf_counter() - start
    return {"wall_s": wall, "draws": np.stack(draws), "divergent": divergent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="eight_schools,linreg,bnn")
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--pyro-scale", default="bnn=0.4", help="per-target fraction of the iterations Pyro runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object per target")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    scale = {k: float(v) for k, v in (item.split("=") for item in args.pyro_scale.split(",") if item)}
    all_targets = targets()
    if not args.json:
        print(f"{'target':<14}{'side':<7}{'warmup':>7}{'samples':>8}{'wall s':>9}{'min ESS':>9}{'ESS/s':>9}"
              f"{'div':>5}  threads  load")
    for name in args.targets.split(","):
        log_density, dim = all_targets[name]
        g = torch.Generator().manual_seed(args.seed)
        init = 0.1 * torch.randn(4, dim, generator=g, dtype=torch.float64)
        rows = {}
        for side, runner, frac in (("uqkit", run_uqkit, 1.0), ("pyro", run_pyro, scale.get(name, 1.0))):
            warmup, samples = max(1, round(args.num_warmup * frac)), max(1, round(args.num_samples * frac))
            out = runner(log_density, init, warmup, samples, args.seed)
            ess = min_bulk_ess(out["draws"])
            rows[side] = {"num_warmup": warmup, "num_samples": samples, "wall_s": out["wall_s"], "min_bulk_ess": ess,
                          "ess_per_s": ess / out["wall_s"], "divergent": out["divergent"],
                          "threads": torch.get_num_threads(), "loadavg": os.getloadavg()[0]}
            if not args.json:
                r = rows[side]
                print(f"{name:<14}{side:<7}{warmup:>7}{samples:>8}{r['wall_s']:>9.2f}{ess:>9.0f}{r['ess_per_s']:>9.1f}"
                      f"{r['divergent']:>5}  {r['threads']:>7}  {r['loadavg']:.2f}")
        ratio = rows["uqkit"]["ess_per_s"] / rows["pyro"]["ess_per_s"] if rows["pyro"]["ess_per_s"] > 0 else math.inf
        if args.json:
            flat = {f"{side}_{k}": v for side, r in rows.items() for k, v in r.items()}
            print(json.dumps({"target": name, "dim": dim, **flat, "ratio_ess_per_s": ratio}))
        else:
            print(f"{name:<14}ratio uqkit/pyro min bulk ESS/s = {ratio:.1f}x  (threads {torch.get_num_threads()}, "
                  f"load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
