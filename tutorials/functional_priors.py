"""Tutorial: choosing a functional prior for a Bayesian neural network.

    python tutorials/functional_priors.py --out tutorial-functional-priors

1. Prior draws of a GP (RBF kernel) and of a 1x50 tanh BNN under a fixed N(0, 1) weight prior, then
   under the GPi-G prior fitted to the GP by `uqkit.models.match_prior` (1-Wasserstein, Tran et al.
   2022): the fitted BNN prior produces GP-like functions (``prior_draws.png``, ``w1_curve.png``).
2. The posterior on a 1-D problem with a gap, SGHMC with the fixed and the matched prior (``posterior_1d.png``).
3. One UCI data set (yacht, first split) with both priors; skipped with a message when the data are absent.
4. If `uqkit.models.StudentTProcess` is available: Student-t process vs NNGP on test inputs shifted
   away from the training data (the heavier-tailed Student-t predictive should have lower NLL).

About two minutes on two cores.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from uqkit.data import load_uci, make_regression_1d
from uqkit.inference.fit import fit
from uqkit.models import MLP, Gaussian, GPPrior, IsotropicGaussian, ModelSpec, match_prior

SGHMC = {"engine": "sghmc", "step_size": 0.01, "mdecay": 0.05, "num_chains": 2, "num_warmup": 1000,
         "num_samples": 50, "thinning": 20, "batch_size": 20}


def rbf_prior(num_features: int, lengthscale: float) -> GPPrior:
    """Unit-variance RBF GP prior."""
    import gpytorch

    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=num_features))
    kernel.base_kernel.lengthscale = lengthscale
    kernel.outputscale = 1.0
    return GPPrior(kernel)


def prior_draws_figure(grid: torch.Tensor, panels: dict[str, torch.Tensor], path: Path) -> None:
    """One panel of function draws ``[S, n]`` per prior."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(panels), 3.2))
    for ax, (title, draws) in zip(fig.subplots(1, len(panels), sharey=True), panels.items()):
        ax.plot(grid[:, 0], draws.T, lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x")
        ax.set_ylim(-4, 4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def posterior_figure(grid, bands, x, y, path: Path) -> None:
    """Predictive mean and +-2 sd band per prior."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.scatter(x[:, 0], y, s=8, c="k", label="training data")
    for (name, (mean, sd)), colour in zip(bands.items(), ("#c44e52", "#4c72b0")):
        ax.plot(grid[:, 0], mean, c=colour, label=f"{name} mean")
        ax.fill_between(grid[:, 0], mean - 2 * sd, mean + 2 * sd, color=colour, alpha=0.2, label=f"{name} +-2 sd")
    ax.set_ylim(-3, 3), ax.set_xlabel("x"), ax.set_ylabel("y"), ax.legend(fontsize=8, loc="lower left")
    ax.set_title("SGHMC posterior: fixed N(0, 1) prior vs GP-matched prior")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def section_prior_draws(out: Path) -> object:
    """Fit GPi-G to an RBF GP on [-3, 3] and draw functions from the GP and the BNN priors."""
    grid = torch.linspace(-3, 3, 200, dtype=torch.float64)[:, None]
    gp = rbf_prior(1, 1.0)
    net = MLP(1, [50], 1, "tanh").double()
    start = time.perf_counter()
    result = match_prior(net, gp, grid, family="gpi-g", num_steps=100, num_functions=64, measurement_size=50,
                         critic_steps=20, seed=0, progress=True)
    print(f"GPi-G fit: {time.perf_counter() - start:.1f} s; W1 first 5 steps {result.w1_curve[:5].mean():.3f}, "
          f"last 10 {result.w1_curve[-10:].mean():.3f}")
    print("fitted per-layer stds (weights x sqrt(fan_in)):", {k: round(v, 3) for k, v in result.prior.scales.items()})
    gen = torch.Generator().manual_seed(1)
    panels = {"GP prior (RBF, l = 1)": gp.sample_functions(grid, 8, generator=gen)}
    for title, prior in (("BNN, fixed N(0, 1) weights", IsotropicGaussian(1.0)), ("BNN, GPi-G (fitted)", result.prior)):
        spec = ModelSpec(net, prior, Gaussian(0.1), num_data=1)
        panels[title] = spec.sample_functions(grid, 8, generator=gen)[..., 0]
    prior_draws_figure(grid, panels, out / "prior_draws.png")
    (out / "w1_curve.png").write_bytes(result.figure())
    return result


def section_posterior_1d(out: Path, matched_prior: object) -> None:
    """SGHMC on sin(2x) + noise with a gap, fixed vs matched prior."""
    gen = torch.Generator().manual_seed(0)
    x, y = (t.double() for t in make_regression_1d(60, noise=0.1, generator=gen, gap=True))
    grid = torch.linspace(-4, 4, 200, dtype=torch.float64)[:, None]
    bands = {}
    for name, prior in (("fixed N(0, 1)", IsotropicGaussian(1.0)), ("GPi-G", matched_prior)):
        spec = ModelSpec(MLP(1, [50], 1, "tanh").double(), prior, Gaussian(0.1), num_data=len(y))
        post = fit(spec, (x, y), seed=0, progress=False, **SGHMC)
        pred = post.predict(grid)
        bands[name] = (pred.mean(), pred.variance().sqrt())
        x_out = torch.linspace(3.2, 4, 20, dtype=torch.float64)[:, None]
        print(f"1-D posterior, {name}: mean predictive sd inside the data {float(post.predict(x).variance().sqrt().mean()):.3f}, "
              f"beyond it (x in [3.2, 4]) {float(post.predict(x_out).variance().sqrt().mean()):.3f}")
    posterior_figure(grid, bands, x, y, out / "posterior_1d.png")


def section_uci() -> None:
    """Yacht, split 0: GPi-G vs fixed prior, short SGHMC."""
    try:
        split = load_uci("yacht", 0)
    except (FileNotFoundError, ValueError) as err:
        print(f"UCI section skipped: the yacht data are not available ({err})")
        return
    d = split.num_features
    for name in ("fixed N(0, 1)", "GPi-G"):
        net = MLP(d, [50], 1, "tanh").double()
        prior = IsotropicGaussian(1.0)
        if name == "GPi-G":
            prior = match_prior(net, rbf_prior(d, math.sqrt(2 * d)), split.x_train, num_steps=30, num_functions=64,
                                critic_steps=10, progress=False).prior
        spec = ModelSpec(net, prior, Gaussian(0.1**0.5, learn_noise=True), num_data=len(split.y_train))
        pred = fit(spec, (split.x_train, split.y_train), seed=0, progress=False,
                   **{**SGHMC, "batch_size": 32, "num_samples": 30}).predict(split.x_test)
        print(f"yacht split 0, {name}: test RMSE {split.rmse(pred.mean()):.3f}, NLL {split.nll(pred.log_prob(split.y_test)):.3f}")


def section_student_t() -> None:
    """Student-t process vs NNGP (same NNGP kernel) on inputs shifted away from the training data."""
    import uqkit.models as models

    try:
        StudentTProcess, NNGPRegression, NNGPKernel = (getattr(models, n) for n in
                                                       ("StudentTProcess", "NNGPRegression", "NNGPKernel"))
    except (AttributeError, ImportError) as err:
        print(f"Student-t section skipped: part B of issue 4 is not available ({err})")
        return
    gen = torch.Generator().manual_seed(2)
    x, y = (t.double() for t in make_regression_1d(80, noise=0.1, generator=gen))
    x_shift = torch.linspace(3.5, 5.0, 50, dtype=torch.float64)[:, None]  # beyond the training range [-3, 3]
    y_shift = torch.sin(2 * x_shift[:, 0]) + 0.1 * torch.randn(50, generator=gen, dtype=torch.float64)
    for name, model in (("NNGP", NNGPRegression(NNGPKernel(depth=2))), ("Student-t process", StudentTProcess(NNGPKernel(depth=2)))):
        model.fit(x, y)
        print(f"{name}: NLL on shifted inputs {float(-model.predict(x_shift).log_prob(y_shift).mean()):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tutorial-functional-priors"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    args.out.mkdir(parents=True, exist_ok=True)
    result = section_prior_draws(args.out)
    section_posterior_1d(args.out, result.prior)
    section_uci()
    section_student_t()
    print(f"figures in {args.out}/")


if __name__ == "__main__":
    main()
