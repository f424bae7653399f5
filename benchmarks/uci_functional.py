"""UCI methods with GP-matched weight priors (Tran et al. 2022, METHODS.md section 1), and the fit-time figure.

* ``gpi-g`` / ``gpi-h``: fit a per-layer Gaussian / hierarchical prior of a 1x50 tanh net to the
  hierarchical ARD-RBF GP prior of the reference UCI notebook (lengthscale ~ LogNormal(log sqrt(2D), 1),
  variance ~ LogNormal(0.1, 1), per function draw) on measurement sets of the split's training inputs
  (M = 100, 70 % training points), then adaptive SGHMC (GPi-H with Gibbs updates of the layer variances).
* ``fg``: fixed N(0, 1) on every weight and bias (the paper's FG baseline), same SGHMC.

SGHMC is shortened for 2 shared CPU cores further than the runner's ``sghmc`` method (2 chains, 1000
burn-in steps, 30 draws thinned by 30, batch 32, lr 0.01, mdecay 0.01, learned noise; ``SGHMC_OPTIONS``),
and the prior fit uses far fewer outer and critic steps than the paper (``FIT_OPTIONS``). Run them through the runner:

    nice python benchmarks/uci.py --method gpi-g --dataset all --splits 5 --threads 1

and time the Wasserstein fit of a 1x50 net on 100-point measurement sets with

    python benchmarks/uci_functional.py --fit-time --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import best_time, context_str  # noqa: E402

from uqkit.calibration.predictive import Predictive  # noqa: E402
from uqkit.data.uci import UCISplit  # noqa: E402
from uqkit.models import MLP, Gaussian, GPPrior, IsotropicGaussian, ModelSpec, Prior, match_prior  # noqa: E402

#: Prior-fit settings for UCI: the reference uses 200 outer x 200 critic steps and S = 128.
FIT_OPTIONS = {"num_steps": 30, "num_functions": 64, "measurement_size": 100, "critic_steps": 10, "lr": 0.05}
SGHMC_OPTIONS = {"step_size": 0.01, "mdecay": 0.01, "num_chains": 2, "num_warmup": 1000, "num_samples": 30,
                 "thinning": 30, "batch_size": 32}


def target_gp(num_features: int) -> GPPrior:
    """The reference notebook's hierarchical ARD-RBF GP prior for ``num_features`` standardised inputs."""
    import gpytorch

    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=num_features))
    log_ls = math.log(math.sqrt(2 * num_features))
    kernel.base_kernel.lengthscale = math.exp(log_ls)
    hyperpriors = {"lengthscale": torch.distributions.LogNormal(torch.full((num_features,), log_ls), 1.0),
                   "outputscale": torch.distributions.LogNormal(torch.tensor(0.1), 1.0)}
    return GPPrior(kernel, hyperpriors=hyperpriors)


def _net(split: UCISplit) -> torch.nn.Module:
    return MLP(split.num_features, [50], 1, "tanh").double()


def _sghmc(split: UCISplit, net: torch.nn.Module, prior: Prior, seed: int) -> Predictive:
    from uqkit.inference.fit import fit

    spec = ModelSpec(net, prior, Gaussian(noise_std=0.1**0.5, learn_noise=True), num_data=split.x_train.shape[0])
    post = fit(spec, (split.x_train, split.y_train), engine="sghmc", seed=seed, progress=False, **SGHMC_OPTIONS)
    return post.predict(split.x_test)


def _matched(family: str, split: UCISplit, seed: int) -> Predictive:
    net = _net(split)
    result = match_prior(net, target_gp(split.num_features), split.x_train, family=family, seed=seed, progress=False,
                         **FIT_OPTIONS)
    return _sghmc(split, net, result.prior, seed)


def gpi_g(split: UCISplit, seed: int) -> Predictive:
    """GPi-G prior (Wasserstein fit to the GP) + adaptive SGHMC."""
    return _matched("gpi-g", split, seed)


def gpi_h(split: UCISplit, seed: int) -> Predictive:
    """GPi-H prior (Wasserstein fit to the GP) + adaptive SGHMC with Gibbs updates of the layer variances."""
    return _matched("gpi-h", split, seed)


def fg(split: UCISplit, seed: int) -> Predictive:
    """FG: fixed N(0, 1) on every weight and bias + adaptive SGHMC."""
    return _sghmc(split, _net(split), IsotropicGaussian(1.0), seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the Wasserstein prior fit (1x50 net, 100-point sets).")
    parser.add_argument("--fit-time", action="store_true", help="time match_prior for both families")
    parser.add_argument("--features", type=int, default=8, help="input dimension of the synthetic inputs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.fit_time:
        parser.error("nothing to do: pass --fit-time (UCI methods run through benchmarks/uci.py)")
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    inputs = torch.randn(500, args.features, generator=torch.Generator().manual_seed(0))
    net = MLP(args.features, [50], 1, "tanh").double()
    print("No other library fits GP-matched weight priors, so there is no peer to time against.")
    for family in ("gpi-g", "gpi-h"):
        timing = best_time(lambda: match_prior(net, target_gp(args.features), inputs, family=family, progress=False,
                                               **FIT_OPTIONS), repeats=1)
        steps = FIT_OPTIONS["num_steps"]
        print(f"match_prior {family}: 1x50 tanh, M={FIT_OPTIONS['measurement_size']}, S={FIT_OPTIONS['num_functions']}, "
              f"{steps} outer x {FIT_OPTIONS['critic_steps']} critic steps: {timing.wall_s:.2f} s wall "
              f"({timing.wall_s / steps * 1e3:.1f} ms per outer step), {timing.cpu_s:.2f} s CPU  [{context_str()}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
