"""PFN vs exact / type-II ML / full-Bayes GP predictives on fresh prior datasets, side by side.

Part ``gp``: on datasets from the ``gp`` checkpoint's prior (RBF GP, fixed hyperparameters), the mean
NLL per query point of the PFN vs the exact GP posterior predictive with the true hyperparameters
(gpytorch), for every context size 1..max; the goal is a gap of at most 0.05 nats averaged over
context sizes. Part ``gp-hyper``: on datasets from the ``gp-hyper`` prior, the PFN vs full Bayes
(NUTS over the log hyperparameters with `uqkit.sample`, GP predictive averaged over the draws) and vs
type-II maximum likelihood (gpytorch + L-BFGS), with wall time per dataset; goal >= 200x faster
than full Bayes. NLL gaps carry their standard error over datasets.

Usage: python benchmarks/bench_pfn.py --part gp --datasets 20 --threads 1
       python benchmarks/bench_pfn.py --part gp-hyper --datasets 6 --contexts 2,5,10,20,50 --dim 1 --threads 1
       (--checkpoint PATH benchmarks a checkpoint file instead of the shipped one)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import context_str
from tqdm import tqdm

from uqkit.inference import PFN
from uqkit.inference.pfn.gp_reference import exact_gp_predictive, full_bayes_predictive, type2_ml_predictive
from uqkit.models.pfn_priors import GPHyperSimulator, GPSimulator


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan")


def bench_gp(pfn: PFN, datasets: int, queries: int, max_context: int, seed: int) -> None:
    info = pfn.prior_info
    prior = GPSimulator(info["lengthscale"], info["outputscale"], info["noise"], input_dim=1)
    g = torch.Generator().manual_seed(seed)
    gaps_by_context, nll_pfn, nll_gp, t_pfn, t_gp = [], [], [], 0.0, 0.0
    for n in tqdm(range(1, max_context + 1), desc="context sizes"):
        x, y = prior.sample(datasets, n + queries, generator=g)
        gaps = []
        for xb, yb in zip(x, y):
            args = (xb[:n], yb[:n], xb[n:])
            pred_pfn, dt_pfn = _timed(lambda: pfn.predict(*args))
            pred_gp, dt_gp = _timed(lambda: exact_gp_predictive(*args, lengthscale=info["lengthscale"],
                                                                 outputscale=info["outputscale"], noise=info["noise"]))
            a, b = -float(pred_pfn.log_prob(yb[n:]).mean()), -float(pred_gp.log_prob(yb[n:]).mean())
            gaps.append(a - b)
            nll_pfn.append(a)
            nll_gp.append(b)
            t_pfn, t_gp = t_pfn + dt_pfn, t_gp + dt_gp
        gaps_by_context.append(_mean_se(gaps))
    print(f"# gp: {datasets} datasets x {queries} queries per context size 1..{max_context}; {context_str()}")
    print("context | NLL gap PFN - exact GP (nats) +- se")
    for lo, hi in ((1, 5), (6, 10), (11, 25), (26, 50), (51, 75), (76, 100)):
        rows = gaps_by_context[lo - 1:min(hi, max_context)]
        if rows:
            mean = sum(r[0] for r in rows) / len(rows)
            se = math.sqrt(sum(r[1] ** 2 for r in rows)) / len(rows)
            print(f"{lo:>3}-{hi:<3} | {mean:+.4f} +- {se:.4f}")
    gap = sum(r[0] for r in gaps_by_context) / len(gaps_by_context)
    se = math.sqrt(sum(r[1] ** 2 for r in gaps_by_context)) / len(gaps_by_context)
    print(f"mean NLL: PFN {sum(nll_pfn) / len(nll_pfn):.4f}, exact GP {sum(nll_gp) / len(nll_gp):.4f}")
    print(f"NLL gap averaged over context sizes 1..{max_context}: {gap:+.4f} +- {se:.4f} nats (goal <= 0.05)")
    per = len(nll_pfn)
    print(f"wall time per dataset: PFN {1e3 * t_pfn / per:.2f} ms, exact GP (gpytorch) {1e3 * t_gp / per:.2f} ms; "
          f"{context_str()}")


def bench_gp_hyper(pfn: PFN, datasets: int, queries: int, contexts: list[int], dim: int, seed: int,
                   warmup: int, samples: int) -> None:
    info = pfn.prior_info
    hyper = {k: (v["log_mean"], v["log_std"]) for k, v in info["hyperpriors"].items()}
    prior = GPHyperSimulator(hyper, input_dims=(dim, dim), noise_floor=info["noise_floor"])
    g = torch.Generator().manual_seed(seed)
    print(f"# gp-hyper: d={dim}, {datasets} datasets x {queries} queries per context size; NUTS {warmup}+{samples} "
          f"x 4 chains; {context_str()}")
    print("context | NLL PFN | NLL full Bayes | NLL type-II ML | PFN - FB (+-se) | PFN - ML2 (+-se) | "
          "time PFN / FB / ML2 (s per dataset) | FB / PFN")
    for n in contexts:
        x, y = prior.sample(datasets, n + queries, generator=g)
        rows = {"pfn": [], "fb": [], "ml2": []}
        times = {"pfn": 0.0, "fb": 0.0, "ml2": 0.0}
        for i, (xb, yb) in enumerate(tqdm(list(zip(x, y)), desc=f"context {n}", leave=False)):
            args = (xb[:n], yb[:n], xb[n:])
            fns = {"pfn": lambda: pfn.predict(*args),
                   "fb": lambda: full_bayes_predictive(*args, prior, num_warmup=warmup, num_samples=samples, seed=i),
                   "ml2": lambda: type2_ml_predictive(*args, noise_floor=prior.noise_floor)}
            for name, fn in fns.items():
                pred, dt = _timed(fn)
                rows[name].append(-float(pred.log_prob(yb[n:]).mean()))
                times[name] += dt
        nll = {k: _mean_se(v)[0] for k, v in rows.items()}
        d_fb = _mean_se([a - b for a, b in zip(rows["pfn"], rows["fb"])])
        d_ml = _mean_se([a - b for a, b in zip(rows["pfn"], rows["ml2"])])
        t = {k: v / datasets for k, v in times.items()}
        print(f"{n:>7} | {nll['pfn']:.4f} | {nll['fb']:.4f} | {nll['ml2']:.4f} | {d_fb[0]:+.4f} ({d_fb[1]:.4f}) | "
              f"{d_ml[0]:+.4f} ({d_ml[1]:.4f}) | {t['pfn']:.4f} / {t['fb']:.2f} / {t['ml2']:.3f} | "
              f"{t['fb'] / t['pfn']:.0f}x | {context_str()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["gp", "gp-hyper"], required=True)
    parser.add_argument("--checkpoint", default=None, help="a PFN checkpoint file (default: the shipped one)")
    parser.add_argument("--datasets", type=int, default=20, help="datasets per context size")
    parser.add_argument("--queries", type=int, default=10, help="query points per dataset")
    parser.add_argument("--max-context", type=int, default=100, help="gp: context sizes 1..this")
    parser.add_argument("--contexts", default="2,5,10,20,50", help="gp-hyper: context sizes")
    parser.add_argument("--dim", type=int, default=1, help="gp-hyper: input dimension")
    parser.add_argument("--warmup", type=int, default=200, help="gp-hyper: NUTS warmup per chain")
    parser.add_argument("--samples", type=int, default=200, help="gp-hyper: NUTS draws per chain")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pfn = PFN.load(args.checkpoint) if args.checkpoint else PFN.pretrained(args.part)
    print(f"checkpoint: {args.checkpoint or args.part}; trained {pfn.training_info.get('steps')} steps")
    if args.part == "gp":
        bench_gp(pfn, args.datasets, args.queries, args.max_context, args.seed)
    else:
        contexts = [int(c) for c in args.contexts.split(",")]
        bench_gp_hyper(pfn, args.datasets, args.queries, contexts, args.dim, args.seed, args.warmup, args.samples)


if __name__ == "__main__":
    main()
