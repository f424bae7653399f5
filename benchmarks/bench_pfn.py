"""PFN vs exact / type-II ML / full-Bayes GP predictives on fresh prior datasets, side by side.

Part ``gp``: on datasets from the ``gp`` checkpoint's prior (RBF GP, fixed hyperparameters), the mean
NLL per query point of the PFN vs the exact GP posterior predictive with the true hyperparameters
(gpytorch), for every context size 1..max; the goal is a gap of at most 0.05 nats averaged over
context sizes. Part ``gp-hyper``: on datasets from the ``gp-hyper`` prior, the PFN vs full Bayes
(NUTS over the log hyperparameters with `uqkit.sample`, GP predictive averaged over the draws) and vs
type-II maximum likelihood (gpytorch + L-BFGS), with wall time per dataset; goal >= 200x faster
than full Bayes. ``--reference is`` (or ``both``) computes full Bayes instead (or also) by importance
sampling from the hyperprior (`importance_predictive`, with its Kish ESS), which needs no MCMC and is
trustworthy at small contexts; gaps are then taken to it. ``--ess-floor E`` (with ``--reference is``)
also runs NUTS on the datasets whose IS Kish ESS is below E and reports the gap to that hybrid
reference. NLL gaps carry their standard error over datasets (the same datasets for every method,
so the gaps are paired).

Usage: python benchmarks/bench_pfn.py --part gp --datasets 20 --threads 1
       python benchmarks/bench_pfn.py --part gp-hyper --datasets 6 --contexts 2,5,10,20,50 --dim 1 --threads 1
       python benchmarks/bench_pfn.py --part gp-hyper --reference is --datasets 100 --contexts 2,5,10 --dim 3
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
from uqkit.inference.pfn.gp_reference import (
    exact_gp_predictive,
    full_bayes_predictive,
    importance_predictive,
    kish_ess,
    type2_ml_predictive,
)
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
                   warmup: int, samples: int, reference: str, is_draws: int, type2: bool = True,
                   ess_floor: float = 0.0) -> None:
    info = pfn.prior_info
    hyper = {k: (v["log_mean"], v["log_std"]) for k, v in info["hyperpriors"].items()}
    prior = GPHyperSimulator(hyper, input_dims=(dim, dim), noise_floor=info["noise_floor"])
    g = torch.Generator().manual_seed(seed)
    methods = {"pfn": lambda args, i: pfn.predict(*args)}
    if type2:
        methods["ml2"] = lambda args, i: type2_ml_predictive(*args, noise_floor=prior.noise_floor)
    if reference in ("nuts", "both"):
        methods["fb"] = lambda args, i: full_bayes_predictive(*args, prior, num_warmup=warmup, num_samples=samples,
                                                              seed=i)
    if reference in ("is", "both"):
        methods["is"] = lambda args, i: importance_predictive(*args, prior, num_draws=is_draws, seed=i)
    ref = "is" if "is" in methods else "fb"
    fallback = reference == "is" and ess_floor > 0  # NUTS replaces IS on datasets where IS is unreliable
    print(f"# gp-hyper: d={dim}, {datasets} datasets x {queries} queries per context size; references: "
          + ", ".join(f"{LABELS[k]}" for k in methods if k in ("fb", "is"))
          + f" (FB = NUTS {warmup}+{samples} x 4 chains, IS = {is_draws} hyperprior draws); {context_str()}")
    pairs = [("pfn", ref)] + ([("pfn", "ml2")] if type2 else []) + ([("fb", "is")] if reference == "both" else [])
    timed = [k for k in ("fb", "is") if k in methods]
    print("context | " + " | ".join(f"NLL {LABELS[k]}" for k in methods) + " | "
          + " | ".join(f"{LABELS[a]} - {LABELS[b]} (+-se)" for a, b in pairs)
          + (" | IS Kish ESS mean / min" if "is" in methods else "") + " | time per dataset (s) | "
          + " | ".join(f"{LABELS[k]} / PFN" for k in timed)
          + (f" | PFN - IS|FB (+-se), FB (NUTS) where IS ESS < {ess_floor:g}: datasets, FB time per dataset (s)"
             if fallback else ""))
    for n in contexts:
        x, y = prior.sample(datasets, n + queries, generator=g)
        rows = {k: [] for k in methods}
        times = {k: 0.0 for k in methods}
        ess, nuts_nll, nuts_time = [], {}, 0.0
        for i, (xb, yb) in enumerate(tqdm(list(zip(x, y)), desc=f"context {n}", leave=False)):
            args = (xb[:n], yb[:n], xb[n:])
            for name, fn in methods.items():
                pred, dt = _timed(lambda: fn(args, i))
                rows[name].append(-float(pred.log_prob(yb[n:]).mean()))
                times[name] += dt
                if name == "is":
                    ess.append(kish_ess(pred))
            if fallback and ess[-1] < ess_floor:
                pred, dt = _timed(lambda: full_bayes_predictive(*args, prior, num_warmup=warmup, num_samples=samples,
                                                                seed=i))
                nuts_nll[i], nuts_time = -float(pred.log_prob(yb[n:]).mean()), nuts_time + dt
        nll = " | ".join(f"{_mean_se(v)[0]:.4f}" for v in rows.values())
        gaps = " | ".join("{:+.4f} ({:.4f})".format(*_mean_se([u - v for u, v in zip(rows[a], rows[b])]))
                          for a, b in pairs)
        ess_col = f" | {sum(ess) / len(ess):.0f} / {min(ess):.0f}" if ess else ""
        t = {k: v / datasets for k, v in times.items()}
        time_col = " / ".join(f"{LABELS[k]} {v:.4f}" for k, v in t.items())
        ratios = " | ".join(f"{t[k] / t['pfn']:.0f}x" for k in timed)
        if fallback:
            hybrid = [nuts_nll.get(j, v) for j, v in enumerate(rows["is"])]
            gap, se = _mean_se([u - v for u, v in zip(rows["pfn"], hybrid)])
            ratios += (f" | {gap:+.4f} ({se:.4f}), {len(nuts_nll)}, "
                       + (f"{nuts_time / len(nuts_nll):.2f}" if nuts_nll else "-"))
        print(f"{n:>7} | {nll} | {gaps}{ess_col} | {time_col} | {ratios} | {context_str()}")


LABELS = {"pfn": "PFN", "ml2": "ML2", "fb": "FB", "is": "IS"}


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
    parser.add_argument("--reference", choices=["nuts", "is", "both"], default="nuts",
                        help="gp-hyper: full Bayes by NUTS, by importance sampling from the hyperprior, or both "
                             "(gaps are then taken to IS, and NUTS is also compared with IS)")
    parser.add_argument("--is-draws", type=int, default=20_000, help="gp-hyper: importance-sampling draws")
    parser.add_argument("--ess-floor", type=float, default=0.0,
                        help="gp-hyper, --reference is: on datasets whose IS Kish ESS is below this, also run NUTS "
                             "and report the gap to that hybrid reference (IS, NUTS where IS is unreliable)")
    parser.add_argument("--skip-type2", action="store_true", help="gp-hyper: leave out type-II ML")
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
        bench_gp_hyper(pfn, args.datasets, args.queries, contexts, args.dim, args.seed, args.warmup, args.samples,
                       args.reference, args.is_draws, type2=not args.skip_type2,
                       ess_floor=args.ess_floor)


if __name__ == "__main__":
    main()
