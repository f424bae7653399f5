"""Tutorial: deep ensembles vs MC dropout vs deep evidential regression, and an early-exit cascade.

    python tutorials/ensembles_dropout_evidential.py [--out tutorial_out]

Part 1 fits the three single-network-family methods to a 1-D problem with a gap in the inputs,
``y = sin(2x) + 0.1 eps`` on ``[-3, -1] u [1, 3]``, and plots their 90% predictive bands on
``[-5, 5]`` together with the epistemic standard deviation: a good method is more uncertain inside
the gap (in-between) and outside the data (extrapolation) than on it.

Part 2 trains two digit classifiers as a deep ensemble and runs them as a window-based early-exit
cascade: member 2 only sees the samples whose member-1 confidence lies near the 5%-risk threshold.
It plots coverage at 5% risk against average FLOPs per sample for member 1, the ensemble and
cascades of several window widths. Runs in well under three minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from uqkit.calibration.selective import coverage_at_risk  # noqa: E402
from uqkit.data import load_sklearn, make_regression_1d  # noqa: E402
from uqkit.inference.cascade import WindowCascade  # noqa: E402
from uqkit.inference.ensemble import fit_ensemble, member_modules  # noqa: E402
from uqkit.inference.evidential import NormalInverseGamma, fit_der  # noqa: E402
from uqkit.inference.mc_dropout import fit_mc_dropout  # noqa: E402
from uqkit.models.likelihoods import Categorical, HeteroscedasticGaussian  # noqa: E402
from uqkit.models.nets import MLP  # noqa: E402
from uqkit.models.priors import IsotropicGaussian  # noqa: E402
from uqkit.models.spec import ModelSpec  # noqa: E402

PRIOR = IsotropicGaussian(1.0)  # the objectives here are likelihood-based; a ModelSpec still names a prior


def regression_1d(out: Path) -> None:
    """Part 1: predictive bands and epistemic uncertainty of the three methods on a 1-D gap problem."""
    gen = torch.Generator().manual_seed(0)
    x, y = make_regression_1d(200, noise=0.1, generator=gen, gap=True)
    grid = torch.linspace(-5, 5, 400).unsqueeze(-1)
    n = x.shape[0]

    ensemble = fit_ensemble(ModelSpec(MLP(1, [50, 50], 2, "relu"), PRIOR, HeteroscedasticGaussian(), n), (x, y),
                            num_members=5, num_epochs=300, batch_size=50, lr=5e-3, seed=0)
    dropout_net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Dropout(0.1), nn.Linear(50, 50), nn.ReLU(),
                                nn.Dropout(0.1), nn.Linear(50, 2))
    dropout = fit_mc_dropout(ModelSpec(dropout_net, PRIOR, HeteroscedasticGaussian(), n), (x, y), num_epochs=300,
                             batch_size=50, lr=5e-3, num_passes=200, seed=0)
    der_spec = ModelSpec(MLP(1, [50, 50], 4, "relu"), PRIOR, NormalInverseGamma(), n)
    der = fit_der(der_spec, (x, y), num_epochs=300, batch_size=50, lr=5e-3, reg_weight=0.01, seed=0)

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    der_params = {k: v[0, 0] for k, v in der.draws.items()}
    with torch.no_grad():
        _, _, der_epistemic = der_spec.likelihood.uncertainty(der_spec.forward(der_params, grid))
    for col, (name, post) in enumerate((("deep ensemble (5)", ensemble), ("MC dropout (T=200)", dropout),
                                        ("evidential (NIG)", der))):
        pred = post.predict(grid)
        lo, hi = pred.interval(0.9)
        ax = axes[0, col]
        ax.fill_between(grid[:, 0], lo, hi, alpha=0.3, label="90% predictive band")
        ax.plot(grid[:, 0], pred.mean(), lw=2, label="predictive mean")
        ax.plot(grid[:, 0], torch.sin(2 * grid[:, 0]), "k--", lw=1, label="sin(2x)")
        ax.scatter(x[:, 0], y, s=6, c="k", alpha=0.5)
        ax.set_ylim(-4, 4)
        ax.set_title(name)
        # epistemic spread: across members / passes; for DER the NIG's Var[mu]
        epistemic = der_epistemic[:, 0] if post is der else pred.epistemic_variance()
        axes[1, col].plot(grid[:, 0], epistemic.sqrt())
        axes[1, col].axvspan(-1, 1, color="grey", alpha=0.15)
        axes[1, col].set_xlabel("x (gap shaded)")
        gap = (grid[:, 0].abs() < 1)
        far = (grid[:, 0].abs() > 3.5)
        seen = ~gap & ~far
        print(f"{name:20s} epistemic sd: on data {float(epistemic[seen].sqrt().mean()):.3f}  "
              f"in gap {float(epistemic[gap].sqrt().mean()):.3f}  extrapolating {float(epistemic[far].sqrt().mean()):.3f}")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    axes[1, 0].set_ylabel("epistemic sd")
    fig.tight_layout()
    fig.savefig(out / "regression_1d.png", dpi=110)
    plt.close(fig)


def cascade_digits(out: Path) -> None:
    """Part 2: coverage at 5% risk against compute for member 1, the ensemble and window cascades."""
    data = load_sklearn("digits", test_fraction=0.3, val_fraction=0.3, seed=0)
    gen = torch.Generator().manual_seed(1)
    noisy = [x + 1.0 * torch.randn(x.shape, generator=gen) for x in (data.x_train, data.x_val, data.x_test)]
    x_train, x_val, x_test = noisy  # pixel noise makes errors common enough for a 5%-risk operating point
    spec = ModelSpec(MLP(64, [64], 10, "relu"), PRIOR, Categorical(), x_train.shape[0])
    post = fit_ensemble(spec, (x_train, data.y_train), num_members=2, num_epochs=30, batch_size=64, lr=1e-3, seed=0)
    members = member_modules(spec, post.draws)

    def cov5(probs: torch.Tensor) -> float:
        return 100 * float(coverage_at_risk(probs.amax(-1), probs.argmax(-1) == data.y_test, 0.05))

    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x_test), -1) for m in members])
    points = {"member 1": (cov5(probs[0]), 0.5), "ensemble": (cov5(probs.mean(0)), 1.0)}
    for width in (2.5, 5, 10, 20):
        cascade = WindowCascade(members, score="msp", operating_point="cov@5", width=width).fit(x_val, data.y_val)
        result = cascade.predict(x_test)
        points[f"window +-{width:g}"] = (cov5(result.probs), result.flops_per_sample / float(cascade.flops_.sum()))
        print(f"window +-{width:4g} percentiles: deferred {100 * result.fraction_deferred:5.1f}%  "
              f"cov@5 {points[f'window +-{width:g}'][0]:.1f}%")
    for name, (cov, compute) in points.items():
        print(f"{name:16s} cov@5 {cov:5.1f}%   compute {100 * compute:5.1f}% of the ensemble")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (cov, compute) in points.items():
        ax.scatter(100 * compute, cov, marker="s" if "window" not in name else "o")
        ax.annotate(name, (100 * compute, cov), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("average FLOPs per sample (% of the 2-member ensemble)")
    ax.set_ylabel("coverage at 5% risk (%)")
    ax.set_title("Window-based cascade on noisy digits")
    fig.tight_layout()
    fig.savefig(out / "cascade_digits.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tutorial_out", help="directory for the figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    regression_1d(out)
    cascade_digits(out)
    print(f"figures written to {out}/regression_1d.png and {out}/cascade_digits.png")


if __name__ == "__main__":
    main()
