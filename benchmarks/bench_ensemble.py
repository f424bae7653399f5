"""Deep ensemble training: all members at once under vmap vs one member after another.

    python benchmarks/bench_ensemble.py [--members 10] [--epochs 20] [--repeats 3]

10 MLPs 13-100-100-1 (ReLU, Gaussian likelihood with fixed noise: MSE), n = 10,000 synthetic
points, batch 256, 20 epochs, float32, Adam. Both runs use the same seeds, so they must reach the
same final losses (checked and printed); the figure is the ratio of wall times (best of repeats).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from uqkit.inference.ensemble import fit_ensemble
from uqkit.models.likelihoods import Gaussian
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--num-data", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.set_default_dtype(torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.num_data, 13, generator=gen)
    w = torch.randn(13, generator=gen)
    y = torch.tanh(x @ w / 4) + 0.1 * torch.randn(args.num_data, generator=gen)
    def make_spec(num_data: int) -> ModelSpec:
        return ModelSpec(MLP(13, [100, 100], 1, "relu"), IsotropicGaussian(1.0), Gaussian(1.0), num_data)

    spec = make_spec(args.num_data)
    options = dict(num_members=args.members, num_epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                   seed=0, progress=False)

    def timed(vectorize: bool) -> tuple[float, torch.Tensor]:
        best, losses = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            post = fit_ensemble(spec, (x, y), vectorize=vectorize, **options)
            best = min(best, time.perf_counter() - start)
            losses = post.sample_stats["loss"][0]
        return best, losses

    for vectorize in (True, False):  # warm-up: lazy imports and first-call costs stay out of the timings
        fit_ensemble(make_spec(512), (x[:512], y[:512]), **{**options, "num_epochs": 1}, vectorize=vectorize)
    print(f"{args.members} MLPs 13-100-100-1, n={args.num_data}, batch {args.batch_size}, {args.epochs} epochs, "
          f"float32, best of {args.repeats}")
    t_vec, loss_vec = timed(True)
    print(f"  vectorised (vmap): {t_vec:7.2f} s   threads={torch.get_num_threads()} load={os.getloadavg()}")
    t_loop, loss_loop = timed(False)
    print(f"  loop over members: {t_loop:7.2f} s   threads={torch.get_num_threads()} load={os.getloadavg()}")
    gap = float((loss_vec - loss_loop).abs().max())
    print(f"  final mean losses (vectorised): {[round(v, 5) for v in loss_vec.tolist()]}")
    print(f"  max |loss difference| vectorised vs loop: {gap:.2e}")
    print(f"  speed-up loop / vectorised: {t_loop / t_vec:.2f}x (goal >= 3x)   "
          f"threads={torch.get_num_threads()} load={os.getloadavg()}")


if __name__ == "__main__":
    main()
