"""SSVI vs dense mean-field VI vs a deterministic network on bundled data: accuracy, NLL, ECE, size, FLOPs, time.

    python benchmarks/bench_ssvi.py --dataset digits --json                # MLP, one JSON object per method
    python benchmarks/bench_ssvi.py --dataset digits --model cnn
    python benchmarks/bench_ssvi.py --dataset mnist1d                      # needs `pip install mnist1d`
    python benchmarks/bench_ssvi.py --dataset digits --speed               # per-step speed vs hand-written BBB

Methods (same net, steps, batch, Adam with cosine learning rate): ``deterministic`` (maximum
likelihood), ``dense-vi`` (`uqkit.fit(engine="mfvi")`) and ``ssvi-0.2``, ``ssvi-0.1``, ``ssvi-0.05``
(`uqkit.fit(engine="ssvi", density=...)` with the library's defaults: SNR(|theta|) removal, swaps
every ``--swap-every`` = 25 steps until 75% of training, alpha 0.3, first layer dense, KL scale 0.01
with warm-up over the first half). ``--allocation`` (default ``erk``) says how SSVI's budget is
spread: ``density`` is the active fraction of the *whole* model (dense first layer and biases
included) for ``model`` and ``erk`` (RigL's Erdos-Renyi-Kernel spread, small layers denser), of each
masked layer for ``layer`` (the paper's convention; the model is then denser than ``density``).
``active_parameters`` is always the whole model's count. ``--growth-steps`` (default 10, at most
``--swap-every``) gradients are summed to rank the coordinates to grow (the SSVI code's
``grad_accumulation_n``). Every method trains for the same ``--steps``. VI predictions average
``--draws`` weight draws. ``train_flops`` counts matrix-product and convolution FLOPs of the whole run, derived from the active
counts (`uqkit.inference.flops`); ``active_parameters`` counts weight coordinates (each VI coordinate
has a mean and a scale).

``--speed`` times training steps of uqkit's dense VI and SSVI against a hand-written Bayes-by-Backprop
loop (same MLP, local reparameterisation, closed-form KL, Adam) in the same process, interleaved,
best of three, and prints the ratios. uqkit uses torch's fused CPU Adam kernel; the hand-written loop
runs once with torch's default Adam (what a user would write) and once with the fused kernel. The
uqkit timings include its setup (layer discovery, prediction draws, FLOP counts) and, for SSVI,
subspace updates every 20 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import context, interleaved_best  # noqa: E402

import uqkit  # noqa: E402
from uqkit.calibration.classification import accuracy, ece, nll  # noqa: E402
from uqkit.data import load_sklearn  # noqa: E402
from uqkit.inference.flops import linear_layers, train_step_flops  # noqa: E402
from uqkit.inference.mfvi import minibatches  # noqa: E402
from uqkit.inference.ssvi import ALLOCATIONS, SparseSubspace  # noqa: E402
from uqkit.models.likelihoods import Categorical  # noqa: E402
from uqkit.models.nets import MLP  # noqa: E402
from uqkit.models.priors import LayerwiseGaussian  # noqa: E402
from uqkit.models.spec import ModelSpec  # noqa: E402

DENSITIES = (0.2, 0.1, 0.05)
PRIOR = LayerwiseGaussian(1.0, 1.0)
HIDDEN = [32, 256, 256]  # a narrow first layer: it stays dense, so it must not dominate the size


def load(dataset: str, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """``(x_train, y_train, x_test, y_test, num_classes)``, float32 features standardised on the training split."""
    if dataset == "digits":
        data = load_sklearn("digits", test_fraction=0.25, seed=seed)
        return data.x_train.float(), data.y_train, data.x_test.float(), data.y_test, 10
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise SystemExit("mnist1d: not installed (pip install mnist1d; it generates its data locally)") from None
    args = get_dataset_args()
    args.seed = seed
    raw = make_dataset(args)  # generated locally, no download
    x, x_test = torch.as_tensor(raw["x"]).float(), torch.as_tensor(raw["x_test"]).float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    y, y_test = torch.as_tensor(raw["y"]).long(), torch.as_tensor(raw["y_test"]).long()
    return (x - mean) / std, y, (x_test - mean) / std, y_test, 10


def build_net(model: str, dataset: str, num_features: int, num_classes: int) -> nn.Module:
    """The benchmark's MLP or small CNN (Conv2d on digits' 8x8 images, Conv1d on mnist1d's 40-step signals)."""
    if model == "mlp":
        return MLP(num_features, HIDDEN, num_classes, "relu")
    conv, shape = (nn.Conv2d, (1, 8, 8)) if dataset == "digits" else (nn.Conv1d, (1, num_features))
    flat = 64 * math.prod((s + 3) // 4 for s in shape[1:])
    return nn.Sequential(nn.Unflatten(1, shape), conv(1, 16, 3, padding=1), nn.ReLU(),
                         conv(16, 32, 3, stride=2, padding=1), nn.ReLU(), conv(32, 64, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, num_classes))


def train_deterministic(spec: ModelSpec, x: Tensor, y: Tensor, *, steps: int, batch_size: int, lr: float,
                        seed: int) -> tuple[nn.Module, int]:
    """Maximum likelihood with Adam and a cosine learning rate; returns the net and its training FLOPs."""
    gen = torch.Generator().manual_seed(seed)
    net = spec.net
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in net.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    batches = minibatches(len(x), batch_size, gen)
    for _ in range(steps):
        idx = next(batches)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()
    layers = linear_layers(spec, spec.param_template(), x[:1])
    dense = {k: v.numel() for k, v in net.named_parameters()}
    return net, steps * train_step_flops(layers, dense, batch_size=batch_size, local=False)


def scores(probs: Tensor, y: Tensor) -> dict[str, float]:
    return {"accuracy": float(accuracy(probs, y)), "nll": float(nll(probs, y)), "ece": float(ece(probs, y))}


def run_methods(args: argparse.Namespace) -> list[dict]:
    x, y, x_test, y_test, num_classes = load(args.dataset, args.seed)
    common = {"num_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "kl_scale": args.kl_scale,
              "num_draws": args.draws, "seed": args.seed, "progress": False}
    rows = []

    def spec() -> ModelSpec:
        return ModelSpec(build_net(args.model, args.dataset, x.shape[1], num_classes), PRIOR, Categorical(), len(x))

    start = time.perf_counter()
    det_spec = spec()
    net, flops = train_deterministic(det_spec, x, y, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                     seed=args.seed)
    with torch.no_grad():
        probs = torch.softmax(net(x_test), -1)
    count = sum(p.numel() for p in net.parameters())
    rows.append({"method": "deterministic", **scores(probs, y_test), "active_parameters": count,
                 "dense_parameters": count, "train_flops": flops, "seconds": time.perf_counter() - start, **context()})
    for name, options in [("dense-vi", {"engine": "mfvi"}),
                          *((f"ssvi-{d}", {"engine": "ssvi", "density": d, "allocation": args.allocation,
                                         "growth_steps": args.growth_steps, "swap_every": args.swap_every})
                            for d in DENSITIES)]:
        start = time.perf_counter()
        post = uqkit.fit(spec(), (x, y), **options, **common)
        seconds = time.perf_counter() - start
        probs = post.predict(x_test).mixture_probs()
        rows.append({"method": name, **scores(probs, y_test),
                     **{k: post.meta[k] for k in ("active_parameters", "dense_parameters", "train_flops")},
                     "allocation": post.meta.get("allocation"), "layer_budgets": post.meta.get("layer_budgets"),
                     "seconds": seconds, **context()})
    for row in rows:
        row.update({"dataset": args.dataset, "model": args.model, "steps": args.steps})
    return rows


class HandwrittenBBB(nn.Module):
    """Bayes by Backprop written out for an MLP: local reparameterisation, closed-form KL to N(0, 1/fan_in)."""

    def __init__(self, widths: list[int], init_std: float, generator: torch.Generator) -> None:
        super().__init__()
        rho0 = math.log(math.expm1(init_std))
        self.mu_w = nn.ParameterList([nn.Parameter(torch.randn(o, i, generator=generator) / math.sqrt(i))
                                      for i, o in zip(widths[:-1], widths[1:])])
        self.mu_b = nn.ParameterList([nn.Parameter(torch.zeros(o)) for o in widths[1:]])
        self.rho_w = nn.ParameterList([nn.Parameter(torch.full((o, i), rho0)) for i, o in zip(widths[:-1], widths[1:])])
        self.rho_b = nn.ParameterList([nn.Parameter(torch.full((o,), rho0)) for o in widths[1:]])

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for i in range(len(self.mu_w)):
            mean = F.linear(x, self.mu_w[i], self.mu_b[i])
            var = F.linear(x * x, F.softplus(self.rho_w[i]) ** 2, F.softplus(self.rho_b[i]) ** 2)
            x = mean + var.sqrt() * torch.randn(mean.shape, generator=generator)
            if i < len(self.mu_w) - 1:
                x = torch.relu(x)
        return x

    def kl(self) -> Tensor:
        total = 0.0
        for mu_w, rho_w, mu_b, rho_b in zip(self.mu_w, self.rho_w, self.mu_b, self.rho_b):
            for mu, rho, var in ((mu_w, rho_w, 1.0 / mu_w.shape[1]), (mu_b, rho_b, 1.0)):
                s = F.softplus(rho)
                total = total + 0.5 * (math.log(var) - 2 * torch.log(s) + (s * s + mu * mu) / var - 1).sum()
        return total


def train_handwritten(x: Tensor, y: Tensor, widths: list[int], *, steps: int, batch_size: int, lr: float,
                      kl_scale: float, seed: int, fused: bool = False) -> HandwrittenBBB:
    """The loop a user would write (torch's default Adam, or its fused CPU kernel, which uqkit uses)."""
    gen = torch.Generator().manual_seed(seed)
    model = HandwrittenBBB(widths, 1e-2, gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    batches = minibatches(len(x), batch_size, gen)
    for step in range(steps):
        idx = next(batches)
        beta = min(1.0, (step + 1) / (0.5 * steps))
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx], gen), y[idx]) + beta * kl_scale * model.kl() / len(x)
        loss.backward()
        opt.step()
        sched.step()
    return model


def run_speed(args: argparse.Namespace) -> list[dict]:
    x, y, _, _, num_classes = load(args.dataset, args.seed)
    widths = [x.shape[1], *HIDDEN, num_classes]
    common = {"num_steps": args.speed_steps, "batch_size": args.batch_size, "lr": args.lr, "kl_scale": args.kl_scale,
              "num_draws": 1, "seed": args.seed, "progress": False}

    def spec() -> ModelSpec:
        return ModelSpec(MLP(x.shape[1], HIDDEN, num_classes, "relu"), PRIOR, Categorical(), len(x))

    hand = {"steps": args.speed_steps, "batch_size": args.batch_size, "lr": args.lr, "kl_scale": args.kl_scale,
            "seed": args.seed}
    fns = {
        "handwritten-bbb": lambda: train_handwritten(x, y, widths, **hand),
        "handwritten-bbb-fused-adam": lambda: train_handwritten(x, y, widths, fused=True, **hand),
        "uqkit-dense-vi": lambda: uqkit.fit(spec(), (x, y), engine="mfvi", **common),
        "uqkit-ssvi-0.1": lambda: uqkit.fit(spec(), (x, y), engine="ssvi", density=0.1, swap_every=20, **common),
    }
    timings = interleaved_best(fns, repeats=3)
    base = timings["handwritten-bbb"].wall_s
    return [{"method": name, "ms_per_step": 1e3 * t.wall_s / args.speed_steps,
             "cpu_ms_per_step": 1e3 * t.cpu_s / args.speed_steps, "ratio_to_handwritten": t.wall_s / base,
             "dataset": args.dataset, "steps": args.speed_steps, **context()} for name, t in timings.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("digits", "mnist1d"), default="digits")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--kl-scale", type=float, default=0.01, help="KL multiplier (the SSVI code's kl_scale)")
    parser.add_argument("--allocation", choices=ALLOCATIONS, default=SparseSubspace.allocation,
                        help="what SSVI's density is a fraction of (uqkit.inference.ssvi.layer_budgets)")
    parser.add_argument("--growth-steps", type=int, default=SparseSubspace.growth_steps,
                        help="steps whose gradients SSVI sums to choose the coordinates it grows "
                             "(default: min(10, swap-every))")
    parser.add_argument("--swap-every", type=int, default=SparseSubspace.swap_every,
                        help="steps between SSVI's subspace updates (Delta T)")
    parser.add_argument("--draws", type=int, default=32, help="weight draws averaged at prediction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speed", action="store_true", help="time training steps against a hand-written BBB loop")
    parser.add_argument("--speed-steps", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run_speed(args) if args.speed else run_methods(args)
    for row in rows:
        if args.json:
            print(json.dumps(row), flush=True)
        elif args.speed:
            print(f"{row['method']:>26}  {row['ms_per_step']:7.2f} ms/step (cpu {row['cpu_ms_per_step']:7.2f})  "
                  f"ratio to hand-written {row['ratio_to_handwritten']:.2f}  [{_context_of(row)}]")
        else:
            print(f"{row['method']:>14}  acc {row['accuracy']:.4f}  nll {row['nll']:.4f}  ece {row['ece']:.4f}  "
                  f"params {row['active_parameters']:>7}/{row['dense_parameters']}  "
                  f"train GFLOPs {row['train_flops'] / 1e9:8.2f}  {row['seconds']:6.1f} s  [{_context_of(row)}]")
    return 0


def _context_of(row: dict) -> str:
    """The threads and load averages recorded with a row (`_common.context_str` format)."""
    return f"threads={row['threads']} load={'/'.join(f'{v:.2f}' for v in row['load'])}"


if __name__ == "__main__":
    sys.exit(main())
