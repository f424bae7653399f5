"""Few-shot meta-learning: NIW-Meta vs MAML vs ProtoNet on SineLine regression and few-shot classification.

    python benchmarks/bench_meta.py --task sineline --json [--iterations 1000] [--threads 1] [--seed 0]
    python benchmarks/bench_meta.py --task digits --json
    python benchmarks/bench_meta.py --task prototypes --json
    python benchmarks/bench_meta.py --memory --json        # peak memory vs inner steps

Every method is meta-trained in a fresh interpreter (started with `_common.MALLOC_ENV`) so that its
peak memory, the rise of the resident set's high-water mark during meta-training
(`_common.peak_rss_delta`, which sees torch's CPU allocations; tracemalloc does not), is its own.
The methods are all uqkit implementations (there is no reference library to run beside them).

SineLine (`uqkit.data.SineLine`): 5 support and 10 query points per task, meta-batch 8, Adam 3e-3,
learned Gaussian noise, networks 1-40-40-1 (tanh). NIW-Meta is `NIWMeta` with its defaults (diagonal
NIW, factored Gauss-Newton curvature with the gradient term, no inner steps, the query set's
posterior predictive as objective; see `uqkit.inference.meta.niw_meta`), adapting the last layer
(its prior covers the head; the body is a shared point estimate), initial prior precision 0.1 per
weight. ``--methods niw-elbo`` is the same model trained by the paper's ELBO (expected query
log-likelihood plus the local KL), ``niw-paper`` the paper's whole form (`NIWMeta.paper`: capped
diagonal curvature, 10 SGD inner steps of 0.01, no gradient term, straight-through, ELBO), whose
learned noise runs away on SineLine and whose digits features collapse, and ``niw-full`` a
full-covariance NIW over the head (eigenvalue-capped full curvature), an extension beyond the
paper's diagonal form. MAML adapts all weights, 1 inner step in training and 10 at test (Finn et al.
2017), second order; ProtoNet is the kernel-weighted prototype regressor of
`uqkit.inference.meta.protonet` on a 1-40-40-8 embedding.
Metrics on 300 new tasks: query NLL (nats per point), query MSE of the predictive mean, and as
``ece`` the quantile-calibration error (mean |observed - nominal| PIT coverage over levels
0.05..0.95, `uqkit.calibration.regression.quantile_calibration_error`), plus 50/90/95% central
interval coverage.

Classification, 5-way 1-shot, 10 queries per class: ``digits`` (`uqkit.data.DigitsFewShot`, train
classes 0-4, test classes 5-9) and ``prototypes`` (`uqkit.data.PrototypeFewShot`, a stated generator
with 64 training, 16 validation and 20 test classes, 32 features). Networks IN-64-5 (NIW and MAML,
NIW adapting the last layer) and an IN-64-32 embedding (ProtoNet); inner step size 0.5 (MAML's
Omniglot setting is 0.4), otherwise as for SineLine. Every method is early-stopped on 100
validation episodes (query NLL of `predict` every 100 iterations, `MetaLearner.fit` ``validation``;
``stopped_at`` in the output): for prototypes they come from the validation classes; digits has
no classes to spare (5-way episodes need all 5 training classes, and the other 5 are the test set),
so its validation episodes come from the training classes and cannot see overfitting to them.
Metrics on 300 test episodes: accuracy, NLL, ECE (15 equal-width bins).

Memory (``--memory``): meta-training peak for 1, 5, 10 and 20 inner steps, NIW-Meta vs second- and
first-order MAML, all adapting every weight of a 1-256-256-1 network, 3 iterations of 8 SineLine tasks,
inner step 1e-3 (0.01 makes the inner steps diverge at this width; the step size does not change memory).
NIW-Meta there runs its default form with the given inner steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MALLOC_ENV, context, context_str, peak_rss_delta  # noqa: E402

from uqkit.calibration import classification as cls_metrics  # noqa: E402
from uqkit.calibration import regression as reg_metrics  # noqa: E402
from uqkit.data.episodes import DigitsFewShot, PrototypeFewShot, SineLine  # noqa: E402
from uqkit.inference.meta import MAML, NIWMeta, ProtoNet  # noqa: E402
from uqkit.models import MLP, Categorical, Gaussian  # noqa: E402

METHODS = ("niw", "maml", "protonet")
EXTRA_METHODS = ("niw-elbo", "niw-paper", "niw-full", "maml-fo")
NUM_TEST = 300
NUM_VAL = 100
VALIDATE_EVERY = 100
PREDICT_SAMPLES = 10


def build(task: str, method: str, *, inner_steps: int | None = None, memory: bool = False):
    """A learner, its training sampler ``train(b, g)``, test episodes and validation episodes (None: no early stopping)."""
    if task == "sineline":
        tasks = SineLine()
        width = [256, 256] if memory else [40, 40]
        lik, inner_lr = Gaussian(0.3, learn_noise=True), 1e-3 if memory else 0.01  # 0.01 diverges at width 256
        head = None if memory else ["layers.4."]
        sample = lambda b, g: tasks.sample(b, 5, 10, generator=g)  # noqa: E731
        test = tasks.sample(NUM_TEST, 5, 10, generator=torch.Generator().manual_seed(12345))
        val = None
        if method == "protonet":
            return ProtoNet(MLP(1, width, 8), lik), sample, test, None
        net = MLP(1, width, 1)
    else:
        if task == "digits":
            train_tasks, val_tasks, test_tasks = DigitsFewShot("train"), DigitsFewShot("train"), DigitsFewShot("test")
        else:
            train_tasks, val_tasks, test_tasks = (PrototypeFewShot(split) for split in ("train", "val", "test"))
        features = train_tasks.num_features
        lik, head, inner_lr = Categorical(), ["layers.2."], 0.5
        sample = lambda b, g: train_tasks.sample(b, 1, 10, generator=g)  # noqa: E731
        test = test_tasks.sample(NUM_TEST, 1, 10, generator=torch.Generator().manual_seed(12345))
        val = val_tasks.sample(NUM_VAL, 1, 10, generator=torch.Generator().manual_seed(54321))
        if method == "protonet":
            return ProtoNet(MLP(features, [64], 32, "relu"), lik), sample, test, val
        net = MLP(features, [64], 5, "relu")
    if method == "niw":
        learner = NIWMeta(net, lik, inner_steps=inner_steps or 0, inner_lr=inner_lr, init_precision=0.1, adapted=head)
        return learner, sample, test, val
    if method == "niw-elbo":
        return NIWMeta(net, lik, inner_steps=inner_steps or 0, inner_lr=inner_lr, init_precision=0.1, adapted=head,
                       query_objective="elbo", kl_weight=1.0, train_samples=1), sample, test, val
    if method == "niw-paper":
        return NIWMeta.paper(net, lik, inner_steps=inner_steps or 10, inner_lr=inner_lr, init_precision=0.1,
                             adapted=head), sample, test, val
    if method == "niw-full":
        return NIWMeta(net, lik, inner_steps=inner_steps or 10, inner_lr=inner_lr, init_precision=0.1, adapted=head,
                       covariance="full"), sample, test, val
    if method in ("maml", "maml-fo"):
        return MAML(net, lik, inner_steps=inner_steps or 1, inner_lr=inner_lr, test_inner_steps=None if memory else 10,
                    first_order=method == "maml-fo"), sample, test, val
    raise ValueError(f"method: expected one of {METHODS + EXTRA_METHODS}, got {method!r}")


def scores(task: str, pred, y: torch.Tensor) -> dict:
    if task == "sineline":
        return {"query_nll": float(reg_metrics.regression_nll(pred, y)),
                "query_mse": float(reg_metrics.rmse(pred, y)) ** 2,
                "ece": float(reg_metrics.quantile_calibration_error(pred, y)),
                "ece_kind": "quantile calibration error (PIT, 19 levels)",
                **{f"coverage{round(100 * c)}": float(reg_metrics.interval_coverage(pred, y, c)) for c in (0.5, 0.9, 0.95)}}
    probs = pred.mixture_probs()
    return {"accuracy": float(cls_metrics.accuracy(probs, y)), "query_nll": float(cls_metrics.nll(probs, y)),
            "ece": float(cls_metrics.ece(probs, y, num_bins=15))}


def worker(task: str, method: str, iterations: int, inner_steps: int | None, memory: bool, seed: int) -> dict:
    """One method, in this (fresh) process: meta-train, measure peak memory and time, then score."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)  # network initialisation
    learner, sample, test, val = build(task, method, inner_steps=inner_steps, memory=memory)
    gen = torch.Generator().manual_seed(seed)
    learner.fit(sample, num_iterations=1, meta_batch=8, generator=gen)  # warm-up: lazy imports, first calls
    start = time.perf_counter()
    peak, _ = peak_rss_delta(lambda: learner.fit(sample, num_iterations=iterations, meta_batch=8, lr=3e-3, generator=gen,
                                                 validation=val, validate_every=VALIDATE_EVERY))
    seconds = time.perf_counter() - start
    row = {"task": task, "method": method, "seed": seed, "iterations": iterations, "seconds": round(seconds, 2),
           "peak_mb": round(peak / 2**20, 2)}
    if val is not None:
        row["stopped_at"] = min(learner.validation_curve, key=lambda c: c[1])[0]
    if inner_steps is not None:
        row["inner_steps"] = inner_steps
    if not memory:
        pred = learner.predict(test, num_samples=PREDICT_SAMPLES, generator=torch.Generator().manual_seed(1))
        row.update(scores(task, pred, test.flat_query_y()))
    return row | context()


def run(args: argparse.Namespace, method: str, inner_steps: int | None, memory: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--task", args.task,
           "--iterations", str(args.iterations), "--threads", str(args.threads), "--seed", str(args.seed)]
    if inner_steps is not None:
        cmd += ["--inner-steps", str(inner_steps)]
    if memory:
        cmd.append("--memory")
    out = subprocess.run(cmd, env={**os.environ, **MALLOC_ENV}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["sineline", "digits", "prototypes"], default="sineline")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of niw,maml,protonet, and niw-elbo (the default form trained by the "
                             "paper's ELBO), niw-paper (paper's form), niw-full (full-covariance head) or maml-fo")
    parser.add_argument("--iterations", type=int, default=None, help="meta-iterations (default 1000; --memory 3)")
    parser.add_argument("--memory", action="store_true", help="peak memory for 1, 5, 10, 20 inner steps")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and training-episode seed (test tasks are fixed)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--inner-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.iterations = args.iterations or (3 if args.memory else 1000)
    if args.worker:
        print(json.dumps(worker(args.task, args.worker, args.iterations, args.inner_steps, args.memory, args.seed)))
        return
    if args.memory:
        args.task = "sineline"
        jobs = [(m, s) for s in (1, 5, 10, 20) for m in ("niw", "maml", "maml-fo")]
    else:
        jobs = [(m, None) for m in args.methods.split(",")]
    for method, steps in jobs:
        row = run(args, method, steps, args.memory)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k not in ("threads", "load")}
            print(shown, f"[{context_str()}]", flush=True)


if __name__ == "__main__":
    main()
