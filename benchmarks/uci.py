"""UCI regression benchmark: test RMSE and NLL over the standard splits (METHODS.md section 0).

    python benchmarks/uci.py --method linear --dataset yacht --splits 20
    python benchmarks/uci.py --method linear --dataset all --json
    python benchmarks/uci.py --method linear --peer sklearn-bayesian-ridge --dataset all

Figures are per test point in the original target units (NLL in nats), summarised as mean ± standard
error over splits (the standard deviation is printed too, since published tables mix the two). The
Deep Ensembles row from Lakshminarayanan et al. (2017, Table 1; ± as published) is printed beside it.
``seconds`` is the wall time of fit + predict summed over splits. With ``--peer`` a second method runs
on the same splits in the same process, alternating with the first split by split, and the time
ratio method / peer is printed (and added to the method's JSON object as ``seconds_ratio``).

To add a method, write one function ``f(split: UCISplit, seed: int) -> Predictive`` decorated with
``@method("name")``: it trains on ``split.x_train, split.y_train`` and predicts ``split.x_test``, all
in standardised units; the runner converts to original units.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

import numpy as np
import torch
from sklearn.linear_model import BayesianRidge
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import context, context_str  # noqa: E402

from uqkit.calibration.predictive import Predictive  # noqa: E402
from uqkit.data.uci import UCISplit, load_uci, num_uci_splits, uci_datasets, uci_root  # noqa: E402
from uqkit.models.linear import BayesianLinearRegression  # noqa: E402
from uqkit.parallel import BACKENDS, connect_ray, run_tasks  # noqa: E402

MethodFn = Callable[[UCISplit, int], Predictive]

#: Method name -> function from a split (and a seed) to a Predictive on ``x_test`` in standardised units.
METHODS: dict[str, MethodFn] = {}

#: Deep Ensembles, Lakshminarayanan et al. (2017) Table 1: (RMSE mean, ±), (NLL mean, ±) as published.
DEEP_ENSEMBLES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "bostonHousing": ((3.28, 1.00), (2.41, 0.25)),
    "concrete": ((6.03, 0.58), (3.06, 0.18)),
    "energy": ((2.09, 0.29), (1.38, 0.22)),
    "kin8nm": ((0.09, 0.00), (-1.20, 0.02)),
    "naval-propulsion-plant": ((0.00, 0.00), (-5.63, 0.05)),
    "power-plant": ((4.11, 0.17), (2.79, 0.04)),
    "protein-tertiary-structure": ((4.71, 0.06), (2.83, 0.02)),
    "wine-quality-red": ((0.64, 0.04), (0.94, 0.12)),
    "yacht": ((1.58, 0.48), (1.18, 0.21)),
}


def method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` in `METHODS` under ``name``."""

    def register(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = fn
        return fn

    return register


@method("linear")
def linear(split: UCISplit, seed: int) -> Predictive:
    """Bayesian linear regression, prior precision and noise by evidence maximisation (deterministic)."""
    model = BayesianLinearRegression(prior_precision=None, noise_var=None)
    return model.fit(split.x_train, split.y_train).predict(split.x_test)


@method("sklearn-bayesian-ridge")
def sklearn_bayesian_ridge(split: UCISplit, seed: int) -> Predictive:
    """Peer: scikit-learn's BayesianRidge (unpenalised intercept, Gamma(1e-6, 1e-6) hyperpriors)."""
    model = BayesianRidge().fit(split.x_train.numpy(), split.y_train.numpy())
    mean, std = model.predict(split.x_test.numpy(), return_std=True)
    return Predictive.gaussian(torch.from_numpy(mean), torch.from_numpy(std**2))


@method("sghmc")
def sghmc(split: UCISplit, seed: int) -> Predictive:
    """Adaptive SGHMC BNN, 1x50 tanh, learned noise (METHODS.md section 1 settings, shortened for 2 CPU cores)."""
    from uqkit.inference.fit import fit
    from uqkit.models import MLP, Gaussian, LayerwiseGaussian, ModelSpec

    spec = ModelSpec(MLP(split.num_features, [50], 1).double(), LayerwiseGaussian(1.0, 1.0),
                     Gaussian(noise_std=0.1**0.5, learn_noise=True), num_data=split.x_train.shape[0])
    post = fit(spec, (split.x_train, split.y_train), engine="sghmc", step_size=0.01, mdecay=0.01, num_chains=2,
               num_warmup=2000, num_samples=50, thinning=50, batch_size=32, seed=seed, progress=False)
    return post.predict(split.x_test)


@method("nuts")
def nuts(split: UCISplit, seed: int) -> Predictive:
    """Full-batch NUTS on a small BNN (1x10 tanh, layer-wise Gaussian prior, learned noise), 4 chains vectorised."""
    from uqkit.inference.fit import fit
    from uqkit.models import MLP, Gaussian, LayerwiseGaussian, ModelSpec

    spec = ModelSpec(MLP(split.num_features, [10], 1).double(), LayerwiseGaussian(1.0, 1.0),
                     Gaussian(noise_std=0.1**0.5, learn_noise=True), num_data=split.x_train.shape[0])
    post = fit(spec, (split.x_train, split.y_train), engine="nuts", num_chains=4, num_warmup=300, num_samples=100,
               thinning=1, seed=seed, progress=False, max_tree_depth=8)
    return post.predict(split.x_test)


from uci_baselines import der, ensemble, mc_dropout  # noqa: E402  (issue 5 baselines, published protocols)

method("ensemble")(ensemble)
method("mc-dropout")(mc_dropout)
method("der")(der)

from uci_functional import fg, gpi_g, gpi_h  # noqa: E402  (issue 4A: GP-matched priors + SGHMC)

method("gpi-g")(gpi_g)
method("gpi-h")(gpi_h)
method("fg")(fg)

from uci_vi import mfvi, ssvi  # noqa: E402  (issue 8: mean-field VI and SSVI)

method("mfvi")(mfvi)
method("ssvi")(ssvi)

from uci_nngp import nngp, stp  # noqa: E402  (issue 4B: NNGP and Student-t process)

method("nngp")(nngp)
method("stp")(stp)

from uci_pfn import pfn  # noqa: E402  (issue 7: the shipped gp-hyper PFN, inputs of at most 5 features)

method("pfn")(pfn)


def run_dataset(
    method_names: list[str], dataset: str, num_splits: int, root: str | None, seed: int, *, as_json: bool,
    backend: str = "local", address: str | None = None,
) -> list[dict]:
    """Run the methods on the first ``num_splits`` splits, alternating per split; one summary per method.

    In text mode a line per split and method is printed as it finishes (with ``backend="ray"``, once
    all have finished). When several methods are timed against each other locally, each first runs
    once, untimed, on split 0 (lazy initialisation out of the clock).
    """
    if len(method_names) > 1 and backend == "local":
        first = load_uci(dataset, 0, root)
        for name in method_names:
            METHODS[name](first, seed)
    rows: dict[str, list[dict]] = {name: [] for name in method_names}
    tasks = [(name, dataset, k, root, seed) for k in range(num_splits) for name in method_names]
    if backend == "ray":  # every (split, method) as a Ray task; rows come back in task order
        results = run_tasks(_score_task, tasks, backend="ray", address=address, desc=dataset, progress=not as_json)
        scored = [{"split": k, **{key: float(v) for key, v in r.items()}} for (_, _, k, _, _), r in zip(tasks, results)]
    else:
        scored = (_score(name, load_uci(dataset, k, root), seed) for name, _, k, _, _ in tasks)
    for (name, _, k, _, _), row in zip(tasks, scored):
        rows[name].append(row)
        if not as_json:
            print(f"{name} {dataset} split {k:2d}: RMSE {row['rmse']:.4f}  NLL {row['nll']:.4f}  "
                  f"{row['seconds']:.4f} s  [{context_str()}]")
    name = load_uci(dataset, 0, root).name
    return [_summarise(method_name, name, rows[method_name]) for method_name in method_names]


def print_summary(result: dict) -> None:
    """Human-readable summary lines for one data set."""
    print(
        f"{result['method']} {result['dataset']}, {result['splits']} splits: "
        f"RMSE {result['rmse_mean']:.4f} ± {_fmt(result['rmse_se'])}  "
        f"NLL {result['nll_mean']:.4f} ± {_fmt(result['nll_se'])}  "
        f"(mean ± s.e.; std {_fmt(result['rmse_std'])} / {_fmt(result['nll_std'])})  "
        f"{result['seconds']:.3f} s  [{context_str()}]"
    )
    ref = result["deep_ensembles"]
    if ref is not None:
        print(
            f"  Deep Ensembles (Lakshminarayanan et al. 2017, Table 1, ± as published): "
            f"RMSE {ref['rmse'][0]:.2f} ± {ref['rmse'][1]:.2f}  NLL {ref['nll'][0]:.2f} ± {ref['nll'][1]:.2f}"
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line on stderr, exit code 2, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="uci.py", description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    parser.add_argument("--peer", default=None, help="a second method, run side by side for a time ratio")
    parser.add_argument("--dataset", required=True, help="a UCI directory name or alias, or 'all'")
    parser.add_argument("--splits", type=int, default=None, help="run the first K splits (default: all stored)")
    parser.add_argument("--data-dir", default=None, help="directory holding the data set folders")
    parser.add_argument("--seed", type=int, default=0, help="seed passed to the method")
    parser.add_argument("--json", action="store_true", help="print one JSON object per data set, nothing else")
    parser.add_argument("--threads", type=int, default=None, help="limit torch, BLAS and OpenMP to N threads")
    parser.add_argument("--backend", default="local", choices=BACKENDS,
                        help="run the splits one after another here, or as Ray tasks (pip install 'uqkit[ray]')")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start Ray on this machine)")
    args = parser.parse_args(argv)

    for flag, name in (("--method", args.method), ("--peer", args.peer)):
        if name is not None and name not in METHODS:
            parser.error(f"{flag}: unknown method {name!r}; choose from {', '.join(METHODS)}")
    method_names = [args.method] if args.peer is None else [args.method, args.peer]
    if args.splits is not None and args.splits < 1:
        parser.error(f"--splits: expected a positive integer, got {args.splits}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)  # numpy / scipy / scikit-learn BLAS and OpenMP pools too
    try:
        names = uci_datasets(args.data_dir) if args.dataset == "all" else [args.dataset]
        if not names:
            raise FileNotFoundError(f"--dataset all: no data sets found in {uci_root(args.data_dir)}")
        plan = []
        for name in names:
            available = num_uci_splits(name, args.data_dir)
            if args.splits is not None and args.splits > available:
                raise ValueError(f"--splits: {name} has {available} splits, got {args.splits}")
            plan.append((name, args.splits or available))
    except (FileNotFoundError, ValueError, TypeError) as err:
        parser.error(str(err))

    if args.backend == "ray":
        try:
            start_ray(args.address)
        except (ImportError, ValueError) as err:
            parser.error(str(err))
    refused = 0
    for name, num_splits in plan:
        try:
            results = run_dataset(method_names, name, num_splits, args.data_dir, args.seed, as_json=args.json,
                                  backend=args.backend, address=args.address)
        except ValueError as err:  # a method that refuses a data set (e.g. too many features): one line, go on
            print(f"uci.py: {name}: skipped: {err}", file=sys.stderr, flush=True)
            refused += 1
            continue
        if args.peer is not None:
            results[0]["peer"] = args.peer
            results[0]["seconds_ratio"] = results[0]["seconds"] / results[1]["seconds"]
        for result in results:
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                print_summary(result)
        if args.peer is not None and not args.json:
            print(f"  time {args.method} / {args.peer}: {results[0]['seconds_ratio']:.3f}  [{context_str()}]")
    return 1 if refused else 0


def start_ray(address: str | None) -> None:
    """Start (or join) Ray, shipping this folder to the workers so that they can import the method modules."""
    connect_ray(address, runtime_env={"working_dir": os.path.dirname(os.path.abspath(__file__))})


def _score_task(task: tuple[str, str, int, str | None, int], report: object) -> dict[str, torch.Tensor]:
    """`_score` as a `uqkit.parallel` task: the worker loads its own split (from its ``$UQKIT_DATA`` or ``root``)."""
    method_name, dataset, k, root, seed = task
    row = _score(method_name, load_uci(dataset, k, root), seed)
    return {key: torch.tensor(float(row[key]), dtype=torch.float64) for key in ("rmse", "nll", "seconds")}


def _score(method_name: str, split: UCISplit, seed: int) -> dict:
    """Fit and predict one split; RMSE and NLL in original units and the seconds it took."""
    start = time.perf_counter()
    predictive = METHODS[method_name](split, seed)
    seconds = time.perf_counter() - start
    num_test = split.y_test.shape[0]
    if predictive.num_points != num_test:
        raise RuntimeError(f"{method_name} predicted {predictive.num_points} points, expected {num_test}")
    return {
        "split": split.split,
        "rmse": split.rmse(predictive.mean()),
        "nll": split.nll(predictive.log_prob(split.y_test)),
        "seconds": seconds,
    }


def _summarise(method_name: str, dataset: str, rows: list[dict]) -> dict:
    rmse_mean, rmse_std, rmse_se = _summary([r["rmse"] for r in rows])
    nll_mean, nll_std, nll_se = _summary([r["nll"] for r in rows])
    reference = DEEP_ENSEMBLES.get(dataset)
    return {
        "method": method_name,
        "dataset": dataset,
        "splits": len(rows),
        "rmse_mean": rmse_mean,
        "rmse_se": rmse_se,
        "nll_mean": nll_mean,
        "nll_se": nll_se,
        "seconds": sum(r["seconds"] for r in rows),
        "rmse_std": rmse_std,
        "nll_std": nll_std,
        "units": "original target units; NLL in nats per test point; se = std / sqrt(splits); seconds = fit + predict",
        "per_split": rows,
        "deep_ensembles": None if reference is None else {"rmse": list(reference[0]), "nll": list(reference[1])},
        **context(),
    }


def _summary(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean, sample standard deviation and standard error (None for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2:
        return float(arr.mean()), None, None
    std = float(arr.std(ddof=1))
    return float(arr.mean()), std, std / math.sqrt(arr.size)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
