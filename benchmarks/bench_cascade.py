"""Window-based early-exit cascade of two ensemble members on digits: coverage at 5% risk vs compute.

    python benchmarks/bench_cascade.py [--seeds 5] [--width 10] [--noise 1.0]

scikit-learn's digits (bundled, no download), split train/validation/test (default 50/20/30) per seed, with
Gaussian pixel noise (``--noise`` standard deviations, in standardised units, drawn once per seed)
so that the error rate is well above 5% and coverage at 5% risk is informative. Two MLPs 64-64-10
are trained as a deep ensemble; the cascade (MSP score, threshold at cov@5 on validation, window of
+-``width`` percentiles) is compared with member 1 alone, the full two-member ensemble and the
single-threshold early exit that passes on the same fraction of least-confident samples. Goal: the
cascade's coverage at 5% risk within 1 point of the ensemble's at <= 60% of its average FLOPs.
"""

from __future__ import annotations

import argparse
import os

import torch

from uqkit.calibration.selective import coverage_at_risk
from uqkit.data import load_sklearn
from uqkit.inference.cascade import WindowCascade
from uqkit.inference.ensemble import fit_ensemble, member_modules
from uqkit.models.likelihoods import Categorical
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec


def cov5(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Coverage at 5% selective risk of MSP confidence, in percent."""
    return 100 * float(coverage_at_risk(probs.amax(-1), probs.argmax(-1) == labels, 0.05))


def run_seed(seed: int, width: float, noise: float, val_fraction: float) -> dict[str, tuple[float, float]]:
    """``{system: (coverage at 5% risk in %, average FLOPs per sample)}`` for one split."""
    data = load_sklearn("digits", test_fraction=0.3, val_fraction=val_fraction, seed=seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    x_train, x_val, x_test = (x + noise * torch.randn(x.shape, generator=gen)
                              for x in (data.x_train, data.x_val, data.x_test))
    spec = ModelSpec(MLP(64, [64], 10, "relu"), IsotropicGaussian(1.0), Categorical(), x_train.shape[0])
    post = fit_ensemble(spec, (x_train, data.y_train), num_members=2, num_epochs=30, batch_size=64, lr=1e-3,
                        seed=seed, progress=False)
    members = member_modules(spec, post.draws)
    window = WindowCascade(members, score="msp", operating_point="cov@5", width=width).fit(x_val, data.y_val)
    out = window.predict(x_test)
    single = WindowCascade(members, score="msp", operating_point="cov@5", rule="single",
                           width=max(100 * out.fraction_deferred, 1e-9)).fit(x_val, data.y_val).predict(x_test)
    flops = window.flops_
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x_test), -1) for m in members])
    return {
        "member 1": (cov5(probs[0], data.y_test), float(flops[0])),
        "ensemble (2)": (cov5(probs.mean(0), data.y_test), float(flops.sum())),
        f"window cascade (+-{width:g} pct)": (cov5(out.probs, data.y_test), out.flops_per_sample),
        "single-threshold cascade": (cov5(single.probs, data.y_test), single.flops_per_sample),
        "_deferred": (100 * out.fraction_deferred, 100 * single.fraction_deferred),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--width", type=float, default=10.0)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)  # load_sklearn gives float64 features
    runs = [run_seed(s, args.width, args.noise, args.val_fraction) for s in range(args.seeds)]
    for s, r in enumerate(runs):
        print(f"seed {s}: " + "  ".join(f"{k} {v[0]:.1f}%" for k, v in r.items() if not k.startswith("_"))
              + f"  deferred {r['_deferred'][0]:.1f}%  [threads={torch.get_num_threads()} load={os.getloadavg()}]")
    ens_flops = runs[0]["ensemble (2)"][1]
    print(f"\ndigits + noise {args.noise}, validation {args.val_fraction:g}, {args.seeds} seeds (mean over seeds); "
          "FLOPs by FlopCounterMode")
    for name in (k for k in runs[0] if not k.startswith("_")):
        cov = sum(r[name][0] for r in runs) / len(runs)
        flops = sum(r[name][1] for r in runs) / len(runs)
        diff = cov - sum(r["ensemble (2)"][0] for r in runs) / len(runs)
        print(f"  {name:28s} cov@5 {cov:5.1f}%  ({diff:+.1f} vs ensemble)  FLOPs/sample {flops:8.0f}  "
              f"({100 * flops / ens_flops:5.1f}% of ensemble)")
    deferred = sum(r["_deferred"][0] for r in runs) / len(runs)
    print(f"  fraction deferred (window): {deferred:.1f}%   threads={torch.get_num_threads()} load={os.getloadavg()}")


if __name__ == "__main__":
    main()
