"""Window-based early-exit cascade of two ensemble members on digits: coverage at 5% risk vs compute.

    python benchmarks/bench_cascade.py [--seeds 100] [--first-seed 0] [--width 10] [--noise 1.0] \
        [--val-fraction 0.3] --threads 1

scikit-learn's digits (bundled, no download), split train/validation/test (test 30%, validation
``--val-fraction``) per seed, with Gaussian pixel noise (``--noise`` standard deviations, in
standardised units, drawn once per seed, the same distribution for all three parts) so that the
error rate (about 18%, like the paper's ImageNet models) is well above 5% and coverage at 5% risk is
informative. Two MLPs 64-64-10 are trained as a deep ensemble; the cascade (MSP score, threshold at
cov@5 on validation, window of +-``width`` percentiles) and its adjusted-window variant are compared
with the first member alone, the full two-member ensemble and the single-threshold early exit that
passes on the same fraction of least-confident samples.

As in the reference code (Guoxoug/window-early-exit, ``experiment_scripts/test_cascades.sh`` and
``plot_unc_macs_comparison.py``), every cascade is run in both member orders ("12" and "21") and the
two results are averaged; one order alone is printed too. Coverage at 5% risk is measured on the test
split, all samples ranked by one score (the first member's MSP where they exit, the MSP of the
averaged probabilities where deferred). Two definitions are printed: uqkit's (the largest coverage
whose selective risk is <= 5%, `coverage_at_risk`; the threshold ``tau`` is fixed on validation with
the same rule) and the reference code's (the coverage whose risk is closest to 5%, the most
confident 1% of points skipped; it needs far more than the ~540 test points here to be stable).

Goal: the cascade's coverage at 5% risk within 1 point of the ensemble's at <= 60% of its average
FLOPs. Gaps to the ensemble are paired per seed and given as mean +- standard error over seeds. The
window-placement line shows where the first member's own 5%-risk point on the test split lies (in
test percentiles) against the validation-based ``tau``.
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import context_str

from uqkit.calibration.selective import coverage_at_risk, risk_coverage_curve
from uqkit.data import load_sklearn
from uqkit.inference.cascade import WindowCascade, operating_threshold
from uqkit.inference.ensemble import fit_ensemble, member_modules
from uqkit.models.likelihoods import Categorical
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec

ENSEMBLE = "ensemble (2)"
ORDERS = ((0, 1), (1, 0))  # the reference code's cascade directions "12" and "21"


def cov5(probs: torch.Tensor, confidence: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Coverage at 5% selective risk in percent, ``(uqkit's largest coverage, reference code's closest point)``."""
    correct = probs.argmax(-1) == labels
    coverage, risk = risk_coverage_curve(confidence, correct)
    skip = math.ceil(0.01 * labels.numel())  # the reference skips 500 of 50,000 ImageNet test points
    closest = skip + int(torch.argmin((risk[skip:] - 0.05).abs()))
    return 100 * float(coverage_at_risk(confidence, correct, 0.05)), 100 * float(coverage[closest])


def run_order(members: list, x_val: torch.Tensor, y_val: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
              width: float) -> dict[str, tuple[float, ...]]:
    """``{system: (cov@5 uqkit %, cov@5 reference %, FLOPs per sample, % deferred)}`` for one member order,
    plus ``"_placement"``: (validation tau percentile, first member's test 5%-risk percentile, 1 if that point
    lies inside the window)."""
    results: dict[str, tuple[float, ...]] = {}
    cascade = WindowCascade(members, score="msp", operating_point="cov@5", width=width).fit(x_val, y_val)
    for name, adjusted in ((f"window cascade (+-{width:g} pct)", False), ("adjusted window", True)):
        cascade.adjusted = adjusted
        out = cascade.predict(x_test)
        results[name] = (*cov5(out.probs, out.confidence, y_test), out.flops_per_sample, 100 * out.fraction_deferred)
    cascade.adjusted = False
    single = WindowCascade(members, score="msp", operating_point="cov@5", rule="single",
                           width=max(results[next(iter(results))][3], 1e-9)).fit(x_val, y_val).predict(x_test)
    results["single-threshold cascade"] = (*cov5(single.probs, single.confidence, y_test), single.flops_per_sample,
                                           100 * single.fraction_deferred)
    flops = cascade.flops_
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x_test), -1) for m in members])
    ensemble = probs.mean(0)
    results["first member"] = (*cov5(probs[0], probs[0].amax(-1), y_test), float(flops[0]), 0.0)
    results[ENSEMBLE] = (*cov5(ensemble, ensemble.amax(-1), y_test), float(flops.sum()), 100.0)

    test_scores = probs[0].amax(-1)
    test_tau = operating_threshold(test_scores, "cov@5", probs[0].argmax(-1) == y_test)
    low, high = cascade.window_
    results["_placement"] = (100 * float((cascade.val_scores_ < cascade.threshold_).double().mean()),
                             100 * float((test_scores < test_tau).double().mean()), float(low <= test_tau <= high))
    return results


def run_seed(seed: int, width: float, noise: float, val_fraction: float) -> list[dict[str, tuple[float, ...]]]:
    """Train one two-member ensemble on split ``seed``; `run_order` results for both member orders."""
    data = load_sklearn("digits", test_fraction=0.3, val_fraction=val_fraction, seed=seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    x_train, x_val, x_test = (x + noise * torch.randn(x.shape, generator=gen)
                              for x in (data.x_train, data.x_val, data.x_test))
    spec = ModelSpec(MLP(64, [64], 10, "relu"), IsotropicGaussian(1.0), Categorical(), x_train.shape[0])
    post = fit_ensemble(spec, (x_train, data.y_train), num_members=2, num_epochs=30, batch_size=64, lr=1e-3,
                        seed=seed, progress=False)
    members = member_modules(spec, post.draws)
    return [run_order([members[i] for i in order], x_val, data.y_val, x_test, data.y_test, width) for order in ORDERS]


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample s.d. / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def summarise(runs: list[list[dict[str, tuple[float, ...]]]]) -> None:
    """Print each system's coverage, paired gap to the ensemble (both orders averaged; order "12" alone) and compute."""
    ens_flops = runs[0][0][ENSEMBLE][2]

    def per_seed(name: str, field: int, orders: tuple[int, ...]) -> list[float]:
        return [sum(run[o][name][field] for o in orders) / len(orders) for run in runs]

    def gap(name: str, field: int, orders: tuple[int, ...]) -> str:
        ours, ens = per_seed(name, field, orders), per_seed(ENSEMBLE, field, orders)
        return "{:+.2f} +- {:.2f}".format(*mean_se([a - b for a, b in zip(ours, ens)]))

    for name in (k for k in runs[0][0] if not k.startswith("_")):
        cov, cov_se = mean_se(per_seed(name, 0, (0, 1)))
        flops = sum(per_seed(name, 2, (0, 1))) / len(runs)
        deferred = sum(per_seed(name, 3, (0, 1))) / len(runs)
        print(f"  {name:28s} cov@5 {cov:5.2f} +- {cov_se:.2f}%  gap {gap(name, 0, (0, 1))} (order 12 alone "
              f"{gap(name, 0, (0,))}; reference metric {gap(name, 1, (0, 1))})  FLOPs/sample {flops:7.0f} "
              f"({100 * flops / ens_flops:6.2f}% of ensemble)  deferred {deferred:6.2f}%")
    val_q, val_q_se = mean_se(per_seed("_placement", 0, (0, 1)))
    test_q, test_q_se = mean_se(per_seed("_placement", 1, (0, 1)))
    inside = 100 * sum(per_seed("_placement", 2, (0, 1))) / len(runs)
    print(f"  window placement: validation tau at percentile {val_q:.1f} +- {val_q_se:.1f}; first member's test "
          f"5%-risk point at {test_q:.1f} +- {test_q_se:.1f}; inside the window in {inside:.0f}% of runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--width", type=float, default=10.0)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--val-fraction", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)  # load_sklearn gives float64 features
    runs = []
    for s in range(args.first_seed, args.first_seed + args.seeds):
        runs.append(run_seed(s, args.width, args.noise, args.val_fraction))
        print(f"seed {s}: " + "  ".join(f"{k} {(a[k][0] + b[k][0]) / 2:.1f}%" for a, b in [runs[-1]] for k in a
                                        if not k.startswith("_")) + f"  [{context_str()}]", flush=True)
    print(f"\ndigits + noise {args.noise}, validation {args.val_fraction:g}, seeds {args.first_seed}.."
          f"{args.first_seed + args.seeds - 1}, both member orders averaged per seed; FLOPs by FlopCounterMode; "
          "gap = paired difference to the ensemble in points, mean +- s.e. over seeds")
    summarise(runs)
    print(f"  [{context_str()}]")


if __name__ == "__main__":
    main()
