"""Window-based early-exit cascade of two ensemble members on digits: coverage at 5% risk vs compute.

    python benchmarks/bench_cascade.py [--seeds 20] [--width 10] [--noise 1.0] [--val-fraction 0.3] --threads 1

scikit-learn's digits (bundled, no download), split train/validation/test (test 30%, validation
``--val-fraction``) per seed, with Gaussian pixel noise (``--noise`` standard deviations, in
standardised units, drawn once per seed) so that the error rate is well above 5% and coverage at 5%
risk is informative. Two MLPs 64-64-10 are trained as a deep ensemble; the cascade (MSP score,
threshold at cov@5 on validation, window of +-``width`` percentiles) and its adjusted-window variant
are compared with member 1 alone, the full two-member ensemble and the single-threshold early exit
that passes on the same fraction of least-confident samples. Coverage at 5% risk is measured on the
test split as in the reference code (the largest test coverage whose selective risk is <= 5%, all
samples ranked by one score: member 1's where they exit, the ensemble's where deferred).

Goal: the cascade's coverage at 5% risk within 1 point of the ensemble's at <= 60% of its average
FLOPs. Gaps to the ensemble are paired per seed and given as mean +- standard error over seeds. The
window-placement line checks question (a): where member 1's own 5%-risk point on the test split lies
(in test percentiles) against the validation-based window.
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import context_str

from uqkit.calibration.selective import coverage_at_risk
from uqkit.data import load_sklearn
from uqkit.inference.cascade import WindowCascade, operating_threshold
from uqkit.inference.ensemble import fit_ensemble, member_modules
from uqkit.models.likelihoods import Categorical
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec

ENSEMBLE = "ensemble (2)"


def cov5(probs: torch.Tensor, confidence: torch.Tensor, labels: torch.Tensor) -> float:
    """Coverage at 5% selective risk, in percent, of predictions ``argmax probs`` ranked by ``confidence``."""
    return 100 * float(coverage_at_risk(confidence, probs.argmax(-1) == labels, 0.05))


def run_seed(seed: int, width: float, noise: float, val_fraction: float) -> dict[str, tuple[float, ...]]:
    """``{system: (coverage at 5% risk in %, average FLOPs per sample, % deferred)}`` for one split,
    plus ``"_placement"``: (validation tau percentile, member-1 test 5%-risk percentile, 1 if inside the window)."""
    data = load_sklearn("digits", test_fraction=0.3, val_fraction=val_fraction, seed=seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    x_train, x_val, x_test = (x + noise * torch.randn(x.shape, generator=gen)
                              for x in (data.x_train, data.x_val, data.x_test))
    spec = ModelSpec(MLP(64, [64], 10, "relu"), IsotropicGaussian(1.0), Categorical(), x_train.shape[0])
    post = fit_ensemble(spec, (x_train, data.y_train), num_members=2, num_epochs=30, batch_size=64, lr=1e-3,
                        seed=seed, progress=False)
    members = member_modules(spec, post.draws)
    results: dict[str, tuple[float, ...]] = {}
    cascade = WindowCascade(members, score="msp", operating_point="cov@5", width=width).fit(x_val, data.y_val)
    for name, adjusted in ((f"window cascade (+-{width:g} pct)", False), ("adjusted window", True)):
        cascade.adjusted = adjusted
        out = cascade.predict(x_test)
        results[name] = (cov5(out.probs, out.confidence, data.y_test), out.flops_per_sample,
                         100 * out.fraction_deferred)
    cascade.adjusted = False
    single = WindowCascade(members, score="msp", operating_point="cov@5", rule="single",
                           width=max(results[next(iter(results))][2], 1e-9)).fit(x_val, data.y_val).predict(x_test)
    results["single-threshold cascade"] = (cov5(single.probs, single.confidence, data.y_test),
                                           single.flops_per_sample, 100 * single.fraction_deferred)
    flops = cascade.flops_
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x_test), -1) for m in members])
    ensemble = probs.mean(0)
    results["member 1"] = (cov5(probs[0], probs[0].amax(-1), data.y_test), float(flops[0]), 0.0)
    results[ENSEMBLE] = (cov5(ensemble, ensemble.amax(-1), data.y_test), float(flops.sum()), 100.0)

    test_scores = probs[0].amax(-1)
    test_tau = operating_threshold(test_scores, "cov@5", probs[0].argmax(-1) == data.y_test)
    low, high = cascade.window_
    results["_placement"] = (100 * float((cascade.val_scores_ < cascade.threshold_).double().mean()),
                             100 * float((test_scores < test_tau).double().mean()), float(low <= test_tau <= high))
    return results


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample s.d. / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--width", type=float, default=10.0)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--val-fraction", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)  # load_sklearn gives float64 features
    runs = []
    for s in range(args.seeds):
        runs.append(run_seed(s, args.width, args.noise, args.val_fraction))
        print(f"seed {s}: " + "  ".join(f"{k} {v[0]:.1f}%" for k, v in runs[-1].items() if not k.startswith("_"))
              + f"  [{context_str()}]", flush=True)
    ens_flops = runs[0][ENSEMBLE][1]
    print(f"\ndigits + noise {args.noise}, validation {args.val_fraction:g}, {args.seeds} seeds; "
          "FLOPs by FlopCounterMode; gap = paired difference to the ensemble, mean +- s.e. over seeds")
    for name in (k for k in runs[0] if not k.startswith("_")):
        cov, cov_se = mean_se([r[name][0] for r in runs])
        gap, gap_se = mean_se([r[name][0] - r[ENSEMBLE][0] for r in runs])
        flops = sum(r[name][1] for r in runs) / len(runs)
        deferred = sum(r[name][2] for r in runs) / len(runs)
        print(f"  {name:28s} cov@5 {cov:5.1f} +- {cov_se:.1f}%  gap {gap:+.2f} +- {gap_se:.2f}  "
              f"FLOPs/sample {flops:7.0f} ({100 * flops / ens_flops:5.1f}% of ensemble)  deferred {deferred:5.1f}%")
    val_q, val_q_se = mean_se([r["_placement"][0] for r in runs])
    test_q, test_q_se = mean_se([r["_placement"][1] for r in runs])
    inside = 100 * sum(r["_placement"][2] for r in runs) / len(runs)
    print(f"  window placement: validation tau at percentile {val_q:.1f} +- {val_q_se:.1f}; member 1's test 5%-risk "
          f"point at {test_q:.1f} +- {test_q_se:.1f}; inside the window in {inside:.0f}% of seeds   [{context_str()}]")


if __name__ == "__main__":
    main()
