"""Tutorial: a sparse Bayesian network from the start with SSVI, next to dense mean-field VI.

    python tutorials/sparse_vi.py [--out tutorial_out] [--steps 800]

On scikit-learn's bundled digits (8x8 images, 10 classes) it fits the same MLP with dense mean-field
VI (``uqkit.fit(..., engine="mfvi")``) and with SSVI at densities 0.2, 0.1 and 0.05
(``engine="ssvi", density=...``), then:

1. prints accuracy, NLL, ECE, active parameters and training FLOPs for each (all read from the
   fitted posterior's ``meta``);
2. shows the swap log of the 0.1 run: each layer's active count stays at its budget while the
   cosine-decaying fraction of coordinates moves;
3. saves the 0.1 posterior (only its active coordinates) and loads it back to identical predictions;
4. plots accuracy and NLL against training FLOPs (``sparse_vi.png``).

Runs in about two minutes on one CPU core.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import uqkit  # noqa: E402
from uqkit.calibration.classification import accuracy, ece, nll  # noqa: E402
from uqkit.data import load_sklearn  # noqa: E402
from uqkit.inference.mfvi import load_variational  # noqa: E402
from uqkit.models import MLP, Categorical, LayerwiseGaussian, ModelSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tutorial_out")
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    data = load_sklearn("digits", test_fraction=0.25, seed=0)
    x, y, x_test, y_test = data.x_train.float(), data.y_train, data.x_test.float(), data.y_test

    def spec() -> ModelSpec:
        # A narrow first layer: SSVI keeps the first layer dense, so it should hold few of the weights.
        return ModelSpec(MLP(64, [32, 256, 256], 10, "relu"), LayerwiseGaussian(1.0, 1.0), Categorical(), len(x))

    options = {"num_steps": args.steps, "batch_size": 128, "lr": 1e-2, "kl_scale": 0.01, "progress": False}
    runs = {"dense VI": uqkit.fit(spec(), (x, y), engine="mfvi", **options)}
    for density in (0.2, 0.1, 0.05):
        runs[f"SSVI {density}"] = uqkit.fit(spec(), (x, y), engine="ssvi", density=density, **options)

    print(f"{'method':>10}  {'acc':>6}  {'nll':>6}  {'ece':>6}  {'active':>7}  {'train GFLOPs':>12}")
    rows = {}
    for name, post in runs.items():
        probs = post.predict(x_test).mixture_probs()
        rows[name] = (float(accuracy(probs, y_test)), float(nll(probs, y_test)), post.meta["train_flops"] / 1e9)
        print(f"{name:>10}  {rows[name][0]:6.4f}  {rows[name][1]:6.4f}  {float(ece(probs, y_test)):6.4f}  "
              f"{post.meta['active_parameters']:>7}  {rows[name][2]:12.2f}")

    sparse = runs["SSVI 0.1"]
    print("\nlayer budgets:", sparse.meta["layer_budgets"])
    for swap in sparse.meta["swaps"][:3] + sparse.meta["swaps"][-1:]:
        print(f"step {swap['step']:4d}: swapped {swap['moved']:4d} ({swap['fraction']:.3f} of each layer); "
              f"active {swap['active']}")

    path = out / "ssvi_digits.safetensors"
    sparse.save(path)
    loaded = load_variational(path, spec())
    same = torch.equal(loaded.predict(x_test).probs, sparse.predict(x_test).probs)
    print(f"\nsaved {path} ({path.stat().st_size / 1024:.0f} KiB, active coordinates only); "
          f"identical predictions after loading: {same}")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, (acc, loss, flops) in rows.items():
        axes[0].scatter(flops, acc, label=name)
        axes[1].scatter(flops, loss, label=name)
    for ax, label in zip(axes, ("test accuracy", "test NLL (nats)")):
        ax.set_xscale("log")
        ax.set_xlabel("training GFLOPs")
        ax.set_ylabel(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "sparse_vi.png", dpi=120)
    print(f"figure: {out / 'sparse_vi.png'}")


if __name__ == "__main__":
    main()
