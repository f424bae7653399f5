"""Tutorial: a Bayesian neural network on 1-D regression with SGHMC and with NUTS.

    python tutorials/bnn_regression.py --out tutorial-bnn

A 1-20-1 tanh network with a layer-wise Gaussian prior is fitted to sin(2x) + noise with a gap in the
inputs, once with adaptive SGHMC on minibatches and once with vectorised full-batch NUTS (4 chains).
Each posterior is scored with `uqkit.evaluate` (R-hat, ESS and trace plots included; for a BNN the
weight-space R-hat is pessimistic, since chains settle in modes related by hidden-unit permutations
and sign flips that predict alike) and the
predictive bands of both are drawn on one figure: uncertainty should grow in the gap and beyond the
data. Runs in about two minutes on two cores (NUTS trees are capped at depth 6 to keep it short).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import uqkit
from uqkit.data import make_regression_1d
from uqkit.models import MLP, Gaussian, LayerwiseGaussian, ModelSpec


def band_figure(x_grid, bands, x_train, y_train, path: Path) -> None:
    """Predictive mean and central 90% interval of each posterior over a grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.scatter(x_train[:, 0], y_train, s=8, c="k", label="training data")
    ax.plot(x_grid[:, 0], torch.sin(2 * x_grid[:, 0]), c="0.5", ls="--", lw=1, label="sin(2x)")
    for (name, (mean, lower, upper)), colour in zip(bands.items(), ("#4c72b0", "#c44e52")):
        ax.plot(x_grid[:, 0], mean, c=colour, label=f"{name} mean")
        ax.fill_between(x_grid[:, 0], lower, upper, color=colour, alpha=0.2, label=f"{name} 90% interval")
    ax.set_xlabel("x"), ax.set_ylabel("y"), ax.set_ylim(-3, 3), ax.legend(fontsize=8, loc="lower left")
    ax.set_title("BNN posterior predictive: SGHMC vs NUTS")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tutorial-bnn"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    x, y = (t.double() for t in make_regression_1d(100, noise=0.1, generator=gen, gap=True))
    x_test, y_test = (t.double() for t in make_regression_1d(200, noise=0.1, generator=gen, gap=False))
    x_grid = torch.linspace(-4.5, 4.5, 300, dtype=x.dtype).unsqueeze(1)

    spec = ModelSpec(MLP(1, [20], 1, "tanh").to(x.dtype), LayerwiseGaussian(1.0, 1.0), Gaussian(noise_std=0.1),
                     num_data=len(y))
    runs = {
        "sghmc": dict(engine="sghmc", step_size=0.01, mdecay=0.05, num_chains=2, num_warmup=2000, num_samples=100,
                      thinning=20, batch_size=20),
        "nuts": dict(engine="nuts", num_chains=4, num_warmup=200, num_samples=150, thinning=1, max_tree_depth=6),
    }
    bands = {}
    for name, options in runs.items():
        start = time.perf_counter()
        post = uqkit.fit(spec, (x, y), seed=0, progress=True, **options)
        seconds = time.perf_counter() - start
        report = uqkit.evaluate(post.predict(x_test), y_test, posterior=post, title=f"1-D BNN, {name}",
                                meta={"engine": name, "seconds": round(seconds, 1)})
        report.to_html(args.out / name)
        print(f"{name}: {seconds:.1f} s, test NLL {report.metrics['nll']:.3f}, RMSE {report.metrics['rmse']:.3f}, "
              f"coverage_90 {report.metrics['coverage_90']:.3f}, max R-hat {report.diagnostics['max_rhat']:.3f}, "
              f"min bulk ESS {report.diagnostics['min_ess_bulk']:.0f} -> {args.out / name / 'report.html'}")
        grid = post.predict(x_grid)
        lower, upper = grid.interval(0.9)
        bands[name] = (grid.mean().squeeze(-1), lower.squeeze(-1), upper.squeeze(-1))
    band_figure(x_grid, bands, x, y, args.out / "bands.png")
    print(f"predictive bands: {args.out / 'bands.png'}")


if __name__ == "__main__":
    main()
