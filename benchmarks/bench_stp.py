"""Student-t process vs NNGP (Gaussian) under input shift: test NLL side by side.

Both models use the same 3-hidden-layer ReLU NNGP kernel, fitted by marginal likelihood (100 Adam
steps, lr 0.1) on the same training data; only the scale prior differs (fitted constant vs
inverse-gamma, METHODS.md section 5). Two shifts:

* ``1d``: y = sin(3x) + 0.3 x^2 + noise, trained on x in [-1, 1] (40 points), tested in
  distribution (x in [-1, 1]) and by extrapolation (x in [1, 2] and [2, 3]); 5 seeds.
* ``--fixed-a A``: the Student-t process keeps ``a = A`` (Lee et al. pick a from a grid, {1, 2, 4})
  and fits only ``b``, the jitter and the kernel; by default ``a`` is fitted too.
* ``uci``: a UCI set (standardised with training statistics), trained on the first ``--train`` points
  of each split's training set (0: all), tested on the test inputs plus Gaussian noise of standard
  deviation sigma (in standardised units) with the targets unchanged; NLL in original units.

    python benchmarks/bench_stp.py --threads 1
    python benchmarks/bench_stp.py --threads 1 --dataset bostonHousing --splits 3 --train 100

NLL is the mean over test points (nats), mean ± standard error over seeds/splits; ``diff`` is
NNGP - STP (positive: the Student-t process is better) with its standard error over paired runs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import context_str  # noqa: E402

from uqkit.data.uci import load_uci  # noqa: E402
from uqkit.models import NNGPKernel, NNGPRegression, StudentTProcess  # noqa: E402

NUM_STEPS, LR = 100, 0.1


#: Inverse-gamma shape held fixed instead of fitted (``--fixed-a``); None fits it.
FIXED_A: float | None = None


def _models() -> dict[str, NNGPRegression | StudentTProcess]:
    kernel = dict(depth=3, weight_var=2.0, bias_var=0.1, activation="relu")
    stp = (StudentTProcess(NNGPKernel(**kernel), a=2.0, b=2.0, jitter=0.1) if FIXED_A is None else
           StudentTProcess(NNGPKernel(**kernel), a=FIXED_A, b=2.0, jitter=0.1, learn=("b", "jitter", "kernel")))
    return {"stp": stp, "nngp": NNGPRegression(NNGPKernel(**kernel), jitter=0.1)}


def _fit_both(x: torch.Tensor, y: torch.Tensor) -> tuple[dict, dict[str, float]]:
    models, seconds = _models(), {}
    for name, model in models.items():
        start = time.process_time()
        model.fit(x, y, num_steps=NUM_STEPS, lr=LR)
        seconds[name] = time.process_time() - start
    stp = models["stp"]
    print(f"  fitted stp a={float(stp.a.detach()):.3g} b={float(stp.b.detach()):.3g} (df = 2a + n = "
          f"{float(2 * stp.a.detach()) + x.shape[0]:.1f}), nngp scale={float(models['nngp'].scale.detach()):.3g}")
    return models, seconds


def _truth(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(3 * x[:, 0]) + 0.3 * x[:, 0] ** 2


def run_1d(num_seeds: int) -> dict[str, list[tuple[float, float]]]:
    """Per test region, a list of (stp NLL, nngp NLL), one pair per seed."""
    regions = {"in [-1,1]": (-1.0, 1.0), "extrap [1,2]": (1.0, 2.0), "extrap [2,3]": (2.0, 3.0)}
    out: dict[str, list[tuple[float, float]]] = {r: [] for r in regions}
    for seed in range(num_seeds):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(40, 1, generator=g) * 2 - 1
        y = _truth(x) + 0.1 * torch.randn(40, generator=g)
        models, seconds = _fit_both(x, y)
        for region, (lo, hi) in regions.items():
            xt = lo + (hi - lo) * torch.rand(200, 1, generator=g)
            yt = _truth(xt) + 0.1 * torch.randn(200, generator=g)
            out[region].append(tuple(float(-models[m].predict(xt).log_prob(yt).mean()) for m in ("stp", "nngp")))
        print(f"1d seed {seed}: fit CPU s stp {seconds['stp']:.2f} nngp {seconds['nngp']:.2f} "
              f"ratio {seconds['stp'] / seconds['nngp']:.2f}  [{context_str()}]")
    return out


def run_uci(dataset: str, num_splits: int, num_train: int, sigmas: list[float]) -> dict[str, list[tuple[float, float]]]:
    """Per input-noise level, a list of (stp NLL, nngp NLL) in original units, one pair per split."""
    out: dict[str, list[tuple[float, float]]] = {f"sigma={s:g}": [] for s in sigmas}
    for k in range(num_splits):
        split = load_uci(dataset, k)
        n = split.x_train.shape[0] if num_train <= 0 else min(num_train, split.x_train.shape[0])
        models, seconds = _fit_both(split.x_train[:n], split.y_train[:n])
        g = torch.Generator().manual_seed(k)
        for sigma in sigmas:
            xt = split.x_test + sigma * torch.randn(split.x_test.shape, generator=g)
            out[f"sigma={sigma:g}"].append(
                tuple(split.nll(models[m].predict(xt).log_prob(split.y_test)) for m in ("stp", "nngp")))
        print(f"{split.name} split {k} (n_train={n}): fit CPU s stp {seconds['stp']:.2f} nngp {seconds['nngp']:.2f} "
              f"ratio {seconds['stp'] / seconds['nngp']:.2f}  [{context_str()}]")
    return out


def report(title: str, results: dict[str, list[tuple[float, float]]]) -> None:
    """One line per condition: STP and NNGP NLL (mean ± s.e.) and the paired difference NNGP - STP."""
    print(title)
    for condition, pairs in results.items():
        stp, nngp = torch.tensor(pairs, dtype=torch.float64).unbind(-1)
        diff = nngp - stp
        se = (lambda v: float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan"))
        print(f"  {condition:14s} NLL stp {float(stp.mean()):8.4f} ± {se(stp):.4f}   nngp {float(nngp.mean()):8.4f} ± "
              f"{se(nngp):.4f}   diff (nngp - stp) {float(diff.mean()):+.4f} ± {se(diff):.4f}  "
              f"stp better in {int((diff > 0).sum())}/{len(diff)}  [{context_str()}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the 1-D problem (0: skip it)")
    parser.add_argument("--dataset", default=None, help="a UCI data set for the input-noise shift")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--train", type=int, default=0, help="training points per split (0: all)")
    parser.add_argument("--sigmas", default="0,0.5,1,2", help="input-noise standard deviations, comma-separated")
    parser.add_argument("--fixed-a", type=float, default=None,
                        help="hold the inverse-gamma shape a at this value (as the paper's grid a in {1, 2, 4})")
    args = parser.parse_args(argv)
    global FIXED_A
    FIXED_A = args.fixed_a
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    if args.seeds > 0:
        report(f"1-D extrapolation, {args.seeds} seeds, 40 training points:", run_1d(args.seeds))
    if args.dataset is not None:
        sigmas = [float(s) for s in args.sigmas.split(",")]
        results = run_uci(args.dataset, args.splits, args.train, sigmas)
        report(f"{args.dataset}, {args.splits} splits, n_train={args.train or 'all'}, test inputs + N(0, sigma^2) noise:",
               results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
