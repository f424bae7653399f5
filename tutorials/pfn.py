"""Tutorial: prior-data fitted networks (PFN), Bayesian prediction in one transformer forward pass.

    python tutorials/pfn.py --out tutorial-pfn [--tiny-steps 300]

1. Trains a tiny PFN on an RBF-GP prior for a few minutes on the CPU (`uqkit.inference.pfn.train_pfn`,
   the same loop as ``uqkit pfn train``) and compares its NLL with the prior predictive's.
2. Loads the shipped ``PFN.pretrained("gp")`` and compares it, on one 1-D dataset drawn from its
   prior, with the exact GP posterior predictive under the true hyperparameters.
3. Loads ``PFN.pretrained("gp-hyper")`` (hyperparameters unknown, log-normal hyperpriors) and
   compares it with full Bayes (NUTS over the GP hyperparameters via `uqkit.sample`, predictive
   averaged over the draws) and with type-II maximum likelihood, with wall times.

Writes ``pfn_gp.png`` and ``pfn_gp_hyper.png`` (predictive means and 90% intervals) to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from uqkit.inference import PFN
from uqkit.inference.pfn import PFNConfig, TrainConfig, train_pfn
from uqkit.inference.pfn.gp_reference import exact_gp_predictive, full_bayes_predictive, type2_ml_predictive
from uqkit.models.pfn_priors import GPHyperSimulator, GPSimulator


def band_figure(x_grid, bands, x_train, y_train, title: str, path: Path) -> None:
    """Predictive mean and central 90% interval of each method over a grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.scatter(x_train[:, 0], y_train, s=10, c="k", label="context", zorder=3)
    for (name, pred), colour in zip(bands.items(), ("#4c72b0", "#c44e52", "#55a868")):
        lower, upper = pred.interval(0.9)
        ax.plot(x_grid[:, 0], pred.mean(), c=colour, label=f"{name} mean")
        ax.fill_between(x_grid[:, 0], lower, upper, color=colour, alpha=0.15, label=f"{name} 90%")
    ax.set_xlabel("x"), ax.set_ylabel("y"), ax.legend(fontsize=7, loc="lower left"), ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def timed(fn):
    t0 = time.perf_counter()
    return fn(), time.perf_counter() - t0


def tiny_pfn(out: Path, steps: int) -> None:
    print(f"1. training a tiny PFN for {steps} steps on an RBF GP prior (lengthscale 0.3, noise 0.01)")
    prior = GPSimulator(lengthscale=0.3, outputscale=1.0, noise=0.01)
    model = PFNConfig(max_input_dim=1, num_outputs=100, d_model=64, num_heads=4, num_layers=2, d_ff=128)
    train = TrainConfig(steps=steps, batch_size=16, seq_len=40, max_context=30, lr=2e-3, warmup=steps // 10,
                        checkpoint_every=max(1, steps // 4), border_datasets=300)
    pfn, seconds = timed(lambda: train_pfn(prior, out / "tiny_pfn.safetensors", train, model))
    x, y = prior.sample(200, 30, generator=torch.Generator().manual_seed(1))
    nll = torch.stack([-pfn.predict(xb[:20], yb[:20], xb[20:]).log_prob(yb[20:]).mean() for xb, yb in zip(x, y)])
    prior_nll = 0.5 * math.log(2 * math.pi * 1.01) + 0.5 * float(y[:, 20:].square().mean()) / 1.01
    print(f"   trained in {seconds:.0f} s; NLL on fresh prior data with 20 context points: "
          f"{float(nll.mean()):.3f} (prior predictive {prior_nll:.3f})")


def shipped_gp(out: Path) -> None:
    pfn = PFN.pretrained("gp")
    info = pfn.prior_info
    print(f"2. PFN.pretrained('gp'): {info}")
    prior = GPSimulator(info["lengthscale"], info["outputscale"], info["noise"])
    x, y = prior.sample(1, 215, generator=torch.Generator().manual_seed(5))
    x, y = x[0], y[0]
    x_tr, y_tr, x_te, y_te = x[:15], y[:15], x[15:], y[15:]
    pred_pfn, t_pfn = timed(lambda: pfn.predict(x_tr, y_tr, x_te))
    hyper = {k: info[k] for k in ("lengthscale", "outputscale", "noise")}
    pred_gp, t_gp = timed(lambda: exact_gp_predictive(x_tr, y_tr, x_te, **hyper))
    for name, pred, t in (("PFN", pred_pfn, t_pfn), ("exact GP", pred_gp, t_gp)):
        print(f"   {name:>9}: test NLL {-float(pred.log_prob(y_te).mean()):.3f}, {1e3 * t:.1f} ms")
    grid = torch.linspace(0, 1, 200).unsqueeze(-1)
    band_figure(grid, {"PFN": pfn.predict(x_tr, y_tr, grid), "exact GP": exact_gp_predictive(x_tr, y_tr, grid, **hyper)},
                x_tr, y_tr, "PFN('gp') vs the exact GP posterior predictive (15 points)", out / "pfn_gp.png")


def shipped_gp_hyper(out: Path) -> None:
    pfn = PFN.pretrained("gp-hyper")
    info = pfn.prior_info
    print(f"3. PFN.pretrained('gp-hyper'): hyperpriors {info['hyperpriors']}")
    hyper = {k: (v["log_mean"], v["log_std"]) for k, v in info["hyperpriors"].items()}
    prior = GPHyperSimulator(hyper, input_dims=(1, 1), noise_floor=info["noise_floor"])
    x, y = prior.sample(1, 210, generator=torch.Generator().manual_seed(11))
    x, y = x[0], y[0]
    x_tr, y_tr, x_te, y_te = x[:10], y[:10], x[10:], y[10:]
    fns = {"PFN": lambda xt: pfn.predict(x_tr, y_tr, xt),
           "NUTS (full Bayes)": lambda xt: full_bayes_predictive(x_tr, y_tr, xt, prior, num_warmup=300, num_samples=300),
           "type-II ML": lambda xt: type2_ml_predictive(x_tr, y_tr, xt, noise_floor=prior.noise_floor)}
    times = {}
    for name, fn in fns.items():
        pred, times[name] = timed(lambda fn=fn: fn(x_te))
        print(f"   {name:>17}: test NLL {-float(pred.log_prob(y_te).mean()):.3f}, {times[name]:.3f} s")
    print(f"   PFN is {times['NUTS (full Bayes)'] / times['PFN']:.0f}x faster than NUTS here")
    grid = torch.linspace(0, 1, 200).unsqueeze(-1)
    band_figure(grid, {name: fn(grid) for name, fn in fns.items()}, x_tr, y_tr,
                "PFN('gp-hyper') vs NUTS over GP hyperparameters vs type-II ML (10 points)", out / "pfn_gp_hyper.png")


def main() -> None:
    parser = argparse.ArgumentParser(description="PFN tutorial")
    parser.add_argument("--out", type=Path, default=Path("tutorial-pfn"))
    parser.add_argument("--tiny-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    tiny_pfn(args.out, args.tiny_steps)
    shipped_gp(args.out)
    shipped_gp_hyper(args.out)
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
