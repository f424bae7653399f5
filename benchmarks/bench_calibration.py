"""Calibration metrics: uqkit against torchmetrics and netcal (ECE) and scikit-learn (AUROC).

Goals: on N = 1,000,000 x C = 10 and N = 100,000 x C = 1000 float32 probabilities, uqkit's ``ece`` is
at least as fast as torchmetrics' ``multiclass_calibration_error`` and at least 10x faster than
netcal's ``ECE``, agrees with both to 1e-6, and its peak extra memory is at most twice the input.

Timings are the best of ``--repeats`` runs, with the implementations interleaved within each repeat so
that they see the same load; wall-clock and process CPU time are both printed (on a shared machine the
CPU time is the steadier one). Memory is measured in a fresh interpreter (this script re-run with
``--memory-probe``) through the resident-set high-water mark, with glibc's mmap threshold fixed so
that freed blocks go back to the OS (``benchmarks/_common.py``); the probe first checks the instrument
on an allocation of known size.

Usage: ``python benchmarks/bench_calibration.py [--json] [--repeats 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from netcal.metrics import ECE as NetcalECE
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import multiclass_calibration_error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MALLOC_ENV, Timing, context, context_str, interleaved_best, peak_rss_delta  # noqa: E402

from uqkit.calibration import classification as cls  # noqa: E402
from uqkit.calibration.ood import ood_auroc  # noqa: E402

SIZES = [(1_000_000, 10), (100_000, 1000)]
NUM_BINS = 15
NETCAL_BUDGET_S = 60.0  # netcal runs on a subset when the full input is projected to take longer
NUM_AUROC_SCORES = 1_000_000
METRIC_SET = {
    "accuracy": cls.accuracy,
    "nll": cls.nll,
    "brier": cls.brier,
    "ece": cls.ece,
    "mce": cls.mce,
    "classwise_ece": cls.classwise_ece,
    "adaptive_ece": cls.adaptive_ece,
}


def make_data(num_points: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 softmax probabilities of random logits, and labels from a softer model (so it is overconfident)."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(num_points, num_classes, generator=g, dtype=torch.float32)
    uniform = torch.rand(num_points, num_classes, generator=g, dtype=torch.float32).clamp_min_(1e-30)
    labels = (0.7 * logits - torch.log(-torch.log(uniform))).argmax(1)  # Gumbel-max: a draw from softmax(0.7 z)
    del uniform
    return torch.softmax(logits, 1), labels


def row(timing: Timing, ref: Timing | None = None, **fields) -> dict:
    """One result: times, value, the peer/uqkit time ratios and |difference| when ``ref`` is uqkit's timing."""
    out = {**fields, "wall_s": timing.wall_s, "cpu_s": timing.cpu_s, "value": float(timing.result)}
    if ref is not None:
        out.update(wall_ratio=timing.wall_s / ref.wall_s, cpu_ratio=timing.cpu_s / ref.cpu_s,
                   abs_diff=abs(float(timing.result) - float(ref.result)))
    return {**out, **context()}


def bench_ece(probs: torch.Tensor, labels: torch.Tensor, repeats: int) -> list[dict]:
    num_points, num_classes = probs.shape
    size = f"{num_points}x{num_classes}"
    timed = interleaved_best({
        "uqkit ece": lambda: cls.ece(probs, labels, num_bins=NUM_BINS),
        "torchmetrics": lambda: multiclass_calibration_error(probs, labels, num_classes, n_bins=NUM_BINS, norm="l1"),
        "torchmetrics validate_args=False": lambda: multiclass_calibration_error(
            probs, labels, num_classes, n_bins=NUM_BINS, norm="l1", validate_args=False),
    }, repeats=repeats)
    ours = timed.pop("uqkit ece")
    rows = [row(ours, impl="uqkit ece", size=size, points=num_points)]
    rows += [row(t, ours, impl=name, size=size, points=num_points) for name, t in timed.items()]
    # netcal: project the full-size time from a 10 % subset, and fall back to the subset if too slow
    p_np, y_np = probs.numpy(), labels.numpy()
    sub = num_points // 10
    start = time.perf_counter()
    NetcalECE(bins=NUM_BINS).measure(p_np[:sub], y_np[:sub])
    projected = 10 * (time.perf_counter() - start)
    n_net = num_points if projected <= NETCAL_BUDGET_S else sub
    timed = interleaved_best({
        "uqkit": lambda: cls.ece(probs[:n_net], labels[:n_net], num_bins=NUM_BINS),
        "netcal": lambda: NetcalECE(bins=NUM_BINS).measure(p_np[:n_net], y_np[:n_net]),
    }, repeats=repeats if projected * n_net / num_points < 10 else 1)
    name = "netcal ECE" + ("" if n_net == num_points else f" (subset {n_net})")
    rows.append(row(timed["netcal"], timed["uqkit"], impl=name, size=size, points=n_net))
    return rows


def memory_probe(num_points: int, num_classes: int) -> dict:
    """Run in a fresh interpreter with MALLOC_ENV: peak extra memory of uqkit's and torchmetrics' ECE."""
    probs, labels = make_data(num_points, num_classes)
    check, _ = peak_rss_delta(lambda: torch.ones(probs.numel(), dtype=probs.dtype).sum())
    uq, _ = peak_rss_delta(lambda: cls.ece(probs, labels, num_bins=NUM_BINS))
    tm, _ = peak_rss_delta(lambda: multiclass_calibration_error(probs, labels, num_classes, n_bins=NUM_BINS))
    return {"input_bytes": probs.numel() * probs.element_size(), "instrument_check_bytes": check,
            "uqkit_peak_extra_bytes": uq, "torchmetrics_peak_extra_bytes": tm}


def bench_memory(num_points: int, num_classes: int) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-probe", str(num_points), str(num_classes)],
        env={**os.environ, **MALLOC_ENV}, capture_output=True, text=True, check=True,
    )
    result = json.loads(out.stdout)
    ratio = result["uqkit_peak_extra_bytes"] / result["input_bytes"]
    return {"size": f"{num_points}x{num_classes}", **result, "ratio": ratio, **context()}


def bench_auroc(repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    half = NUM_AUROC_SCORES // 2
    s_in, s_out = torch.randn(half, generator=g), torch.randn(half, generator=g) + 1
    y, s = np.r_[np.zeros(half), np.ones(half)], torch.cat([s_in, s_out]).numpy()
    timed = interleaved_best({"uqkit": lambda: ood_auroc(s_in, s_out), "sklearn": lambda: roc_auc_score(y, s)}, repeats=repeats)
    return row(timed["sklearn"], timed["uqkit"], impl="sklearn roc_auc_score", size=f"{half}+{half}",
               uqkit_wall_s=timed["uqkit"].wall_s, uqkit_cpu_s=timed["uqkit"].cpu_s)


def bench_metric_set(probs: torch.Tensor, labels: torch.Tensor, repeats: int) -> list[dict]:
    size = f"{probs.shape[0]}x{probs.shape[1]}"
    timed = interleaved_best({name: (lambda m=m: m(probs, labels)) for name, m in METRIC_SET.items()}, repeats=repeats)
    return [row(t, metric=name, size=size) for name, t in timed.items()]


def _ctx(r: dict) -> str:
    return f"[threads={r['threads']} load={r['load'][0]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (the best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory-probe", nargs=2, type=int, metavar=("N", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return
    say = (lambda *a: None) if args.json else print
    result = {"ece": [], "memory": [], "metrics": []}
    for num_points, num_classes in SIZES:
        probs, labels = make_data(num_points, num_classes)
        say(f"\n== ECE, N={num_points} x C={num_classes} float32, {NUM_BINS} bins "
            f"(ratio = peer time / uqkit time; > 1 means uqkit is faster) ==")
        for r in bench_ece(probs, labels, args.repeats):
            result["ece"].append(r)
            extra = (f"  ratio wall {r['wall_ratio']:5.2f} cpu {r['cpu_ratio']:5.2f}  |diff| {r['abs_diff']:.2e}"
                     if "abs_diff" in r else "")
            say(f"{r['impl']:<34} wall {1e3 * r['wall_s']:8.1f} ms  cpu {1e3 * r['cpu_s']:8.1f} ms  "
                f"ece={r['value']:.8f}{extra}  {_ctx(r)}")
        mem = bench_memory(num_points, num_classes)
        result["memory"].append(mem)
        mib = 2.0**20
        say(f"peak extra memory: uqkit {mem['uqkit_peak_extra_bytes'] / mib:.1f} MiB = {mem['ratio']:.2f} x input "
            f"({mem['input_bytes'] / mib:.1f} MiB); torchmetrics {mem['torchmetrics_peak_extra_bytes'] / mib:.1f} MiB; "
            f"instrument check: {mem['instrument_check_bytes'] / mib:.1f} MiB seen for a {mem['input_bytes'] / mib:.1f} MiB "
            f"allocation  {_ctx(mem)}")
        say("uqkit metric set:")
        for r in bench_metric_set(probs, labels, args.repeats):
            result["metrics"].append(r)
            say(f"  {r['metric']:<14} wall {1e3 * r['wall_s']:8.1f} ms  cpu {1e3 * r['cpu_s']:8.1f} ms  "
                f"value={r['value']:.6f}  {_ctx(r)}")
        del probs, labels
    a = result["auroc"] = bench_auroc(args.repeats)
    say(f"\n== AUROC on {a['size']} scores ==\nuqkit ood_auroc wall {1e3 * a['uqkit_wall_s']:.1f} ms cpu "
        f"{1e3 * a['uqkit_cpu_s']:.1f} ms; sklearn roc_auc_score wall {1e3 * a['wall_s']:.1f} ms cpu {1e3 * a['cpu_s']:.1f} ms "
        f"(ratio wall {a['wall_ratio']:.2f} cpu {a['cpu_ratio']:.2f}); value {a['value']:.8f}, |diff| {a['abs_diff']:.1e}  {_ctx(a)}")
    say(f"\n{context_str()}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
