"""Peak memory of a 10-million-prediction report (issue 11, part 5).

For N predictions (default 10,000,000 points x 10 classes, float32 logits) this measures the peak
resident memory that scoring adds above the inputs (the `Predictive` and the labels), with
`_common.peak_rss_delta` (the kernel's VmHWM high-water mark, reset before each measurement, so
torch's allocations are seen; tracemalloc would miss them). The process re-executes itself with
`_common.MALLOC_ENV` so that freed blocks go back to the OS and each measurement starts clean.

Side by side in one process:

* ``uqkit.evaluate`` (chunked: one validated pass over row chunks, O(N) vectors beside the inputs);
* the peer: the same metrics from the public one-pass functions on the full arrays (what `evaluate`
  did before chunking: every function validates and allocates its own ``[N, C]`` temporaries);
* the full report with figures;
* regression (``--task regression`` or ``both``): N Gaussian predictions, ``evaluate`` (chunked by
  `regression.regression_scores`) against the public one-pass regression functions (what
  `regression_metrics` did before chunking), then the report with figures.

The ratio (peer / evaluate) is printed with ``torch.get_num_threads()`` and the load average.

Usage: ``python benchmarks/bench_report_memory.py [--num-points 10000000] [--num-classes 10]
[--task {classification,regression,both}] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MALLOC_ENV, context_str, peak_rss_delta  # noqa: E402

import uqkit  # noqa: E402
from uqkit.calibration import classification as C  # noqa: E402
from uqkit.calibration import regression as R  # noqa: E402
from uqkit.calibration import selective  # noqa: E402

MIB = 1 << 20


def one_pass_metrics(pred: uqkit.Predictive, labels: torch.Tensor) -> dict[str, float]:
    """The classification metrics of `evaluate`, each from its public function on the full arrays."""
    probs = pred.mixture_probs()
    conf, correct = C.top_label(probs, labels)
    return {
        "accuracy": float(C.accuracy(probs, labels)), "nll": float(-pred.log_prob(labels).mean()),
        "brier": float(C.brier(probs, labels)), "ece": float(C.ece(probs, labels)), "mce": float(C.mce(probs, labels)),
        "adaptive_ece": float(C.adaptive_ece(probs, labels)), "classwise_ece": float(C.classwise_ece(probs, labels)),
        "aurc": float(selective.aurc(conf, correct)), "eaurc": float(selective.eaurc(conf, correct)),
        "coverage_at_5pct_risk": float(selective.coverage_at_risk(conf, correct, 0.05)),
        "mean_entropy": float(pred.entropy().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-points", type=int, default=10_000_000)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--task", choices=("classification", "regression", "both"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    torch.set_num_threads(args.threads)
    if args.task in ("classification", "both"):
        classification(args.num_points, args.num_classes)
    if args.task in ("regression", "both"):
        regression(args.num_points)


def classification(n: int, c: int) -> None:
    """Peak memory of `evaluate` against the one-pass functions on ``n x c`` float32 logits."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (n,), generator=g)
    pred = uqkit.Predictive.from_logits(3 * torch.randn(n, c, generator=g, dtype=torch.float32))
    inputs = (pred.logits.numel() + pred.probs.numel()) * 4 + labels.numel() * 8
    print(f"N = {n:,} points x C = {c} classes, float32 logits; inputs (logits + probs + labels) {inputs / MIB:.0f} MiB")
    peak_eval, report = peak_rss_delta(lambda: uqkit.evaluate(pred, labels, make_figures=False))
    print(f"uqkit.evaluate (chunked, metrics only): peak +{peak_eval / MIB:.0f} MiB  [{context_str()}]")
    peak_peer, peer = peak_rss_delta(lambda: one_pass_metrics(pred, labels))
    print(f"peer: one-pass public metric functions: peak +{peak_peer / MIB:.0f} MiB  [{context_str()}]")
    print(f"ratio peer / evaluate: {peak_peer / peak_eval:.2f}x")
    worst = max(abs(report.metrics[k] - v) / max(abs(v), 1e-12) for k, v in peer.items())
    print(f"largest relative difference between the two: {worst:.2e}")
    peak_fig, _ = peak_rss_delta(lambda: uqkit.evaluate(pred, labels, make_figures=True))
    print(f"uqkit.evaluate with figures: peak +{peak_fig / MIB:.0f} MiB ({peak_fig / n:.1f} bytes per prediction)"
          f"  [{context_str()}]")


def one_pass_regression(pred: uqkit.Predictive, y: torch.Tensor) -> dict[str, float]:
    """The regression metrics of `evaluate`, each from its public function on the full arrays."""
    out = {"rmse": R.rmse(pred, y), "nll": R.regression_nll(pred, y), "crps": R.crps(pred, y),
           "miscalibration_area": R.miscalibration_area(pred, y),
           "quantile_calibration_error": R.quantile_calibration_error(pred, y), "sharpness": R.sharpness(pred)}
    for level in (0.5, 0.9, 0.95):
        out[f"coverage_{round(100 * level)}"] = R.interval_coverage(pred, y, level)
        out[f"width_{round(100 * level)}"] = R.interval_width(pred, level)
    return {k: float(v) for k, v in out.items()}


def regression(n: int) -> None:
    """Peak memory of a regression `evaluate` against the one-pass functions on ``n`` float32 Gaussians."""
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(n, generator=g, dtype=torch.float32)
    y = mean + torch.randn(n, generator=g, dtype=torch.float32)
    pred = uqkit.Predictive.gaussian(mean, torch.ones(n, dtype=torch.float32))
    inputs = (pred.dist.loc.numel() + pred.dist.scale.numel() + y.numel()) * 4
    print(f"N = {n:,} Gaussian predictions, float32; inputs (mean + sd + targets) {inputs / MIB:.0f} MiB")
    peak_eval, report = peak_rss_delta(lambda: uqkit.evaluate(pred, y, make_figures=False))
    print(f"uqkit.evaluate regression (chunked, metrics only): peak +{peak_eval / MIB:.0f} MiB "
          f"({peak_eval / n:.1f} bytes per prediction)  [{context_str()}]")
    peak_peer, peer = peak_rss_delta(lambda: one_pass_regression(pred, y))
    print(f"peer: one-pass public regression functions: peak +{peak_peer / MIB:.0f} MiB "
          f"({peak_peer / n:.1f} bytes per prediction)  [{context_str()}]")
    print(f"ratio peer / evaluate: {peak_peer / peak_eval:.2f}x")
    worst = max(abs(report.metrics[k] - v) / max(abs(v), 1e-12) for k, v in peer.items())
    print(f"largest relative difference between the two: {worst:.2e} (float32 one-pass sums vs float64 chunk sums)")
    peak_fig, _ = peak_rss_delta(lambda: uqkit.evaluate(pred, y, make_figures=True))
    print(f"uqkit.evaluate regression with figures: peak +{peak_fig / MIB:.0f} MiB ({peak_fig / n:.1f} bytes per "
          f"prediction)  [{context_str()}]")


if __name__ == "__main__":
    main()
