"""Benchmark for `uqkit.wrap` on frozen digits models (issue 6).

1. Image-to-image: a convolutional denoiser for scikit-learn's 8x8 digits (noise sd 0.2, intensities
   in [0, 1]) is trained, then frozen. BayesCap (trained on 25% of the denoiser's training images, the
   paper's loss weights; the cap size chosen among `CAP_SIZES` by the BayesCap loss on the validation
   images, never the test images)
   against MC dropout on the base model (p = 0.2, 50 passes) and test-time augmentation (input + 5%
   Gaussian noise, 50 passes): Pearson correlation between per-pixel |error| and predicted sd, UCE
   (squared error vs variance, 15 bins), and the AUROC of per-image mean uncertainty, clean test
   inputs vs corrupted ones.
2. Classifier: an overfitted digits MLP (the demo's), frozen, over several seeds (mean +- standard
   error over seeds; ECE on 540 test points is noisy, so the ECE a perfectly calibrated model with the
   same confidences would show, labels drawn from its own confidences, is printed beside it). Temperature
   scaling (validation split) and last-layer Laplace (Hessian on the training split; prior precision
   by the evidence, or tuned on the validation split): accuracy, NLL, ECE. OOD AUROC on rotated noisy
   digits: Mahalanobis score vs softmax baselines. Peers side by side: netcal's temperature scaling
   (quality) and scikit-learn's Ledoit-Wolf fit (time, with the ratio).
3. Memory: the frozen denoiser's size against BayesCap's training state (analytic) and the peak
   resident memory added by cap training and by base-model training, each in a fresh subprocess.

Run: ``python benchmarks/bench_wrap.py [--seed 0] [--threads 1]``. Every figure is printed with the
thread count and the load average at the time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.datasets import load_digits
from torch import Tensor, nn

from uqkit.calibration.classification import accuracy, ece, ece_from_top_label, nll
from uqkit import Predictive
from uqkit.calibration.ood import msp_score, mutual_information_score, ood_auroc
from uqkit.data import load_sklearn
from uqkit.demo import shifted_digits, train_overconfident_mlp
from uqkit.wrap import wrap
from uqkit.wrap.bayescap import BayesCap, bayescap_loss
from uqkit.wrap.metrics import error_correlation, uncertainty_calibration_error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MALLOC_ENV, context_str, peak_rss_delta  # noqa: E402

NOISE_SD = 0.2  # the denoiser's training corruption
TRAIN_SHARE, TEST_SHARE = 0.6, 0.2  # of the 1797 digits; the rest is validation
CAP_FRACTION = 0.25  # BayesCap sees at most this share of the denoiser's training images
NUM_PASSES = 50  # MC dropout / test-time augmentation passes
TTA_NOISE_SD = 0.05
#: Conv caps for 8x8 images, ``(feature maps, residual blocks)``, no larger than the frozen denoiser; the one with
#: the lowest BayesCap loss on the validation images is used. Within a fit, the best of 200 epochs by the loss on
#: the cap's own held-out 10% is kept.
CAP_SIZES = ((8, 1), (16, 1), (32, 2))
CAP_OPTIONS = {"num_epochs": 200, "batch_size": 32, "train_fraction": CAP_FRACTION, "progress": False}


def show(label: str, value: str) -> None:
    print(f"  {label:62s} {value:>34s}  [{context_str()}]", flush=True)


# ------------------------------------------------------------------------------ image-to-image
class Denoiser(nn.Module):
    """A residual convolutional denoiser ``[N, 1, 8, 8] -> [N, 1, 8, 8]`` with dropout (p = 0.2)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Dropout(0.2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Dropout(0.2),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def digit_images() -> Tensor:
    """All 1797 digits as ``[N, 1, 8, 8]`` float32 intensities in [0, 1]."""
    return torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16


def split_rows(num: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    order = torch.randperm(num, generator=generator)
    num_train, num_test = int(TRAIN_SHARE * num), int(TEST_SHARE * num)
    return order[:num_train], order[num_train:num - num_test], order[num - num_test:]


def add_noise(x: Tensor, sd: float, generator: torch.Generator) -> Tensor:
    return x + sd * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def train_denoiser(clean: Tensor, generator: torch.Generator, epochs: int = 80) -> Denoiser:
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        model = Denoiser()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(epochs):
            for idx in torch.randperm(len(clean), generator=generator).split(64):
                target = clean[idx]
                opt.zero_grad()
                ((model(add_noise(target, NOISE_SD, generator)) - target) ** 2).mean().backward()
                opt.step()
    return model.eval()


def repeated_variance(fn, x: Tensor) -> Tensor:
    """Per-element variance over NUM_PASSES calls of ``fn(x)``."""
    with torch.no_grad():
        return torch.stack([fn(x) for _ in range(NUM_PASSES)]).var(0, correction=1)


def mc_dropout_variance(model: nn.Module, x: Tensor, seed: int) -> Tensor:
    """MC dropout on a copy of the base model (dropout layers on, everything else in eval mode)."""
    sampler = copy.deepcopy(model)
    for module in sampler.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    with torch.random.fork_rng():  # dropout masks come from the global RNG; keep it seeded and isolated
        torch.manual_seed(seed)
        return repeated_variance(sampler, x)


def tta_variance(model: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
    return repeated_variance(lambda z: model(add_noise(z, TTA_NOISE_SD, generator)), x)


def corruptions(x_clean: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """Corrupted test inputs for OOD detection (all start from the clean test digits)."""
    return {
        "noise sd 0.5 (2.5x training noise)": add_noise(x_clean, 0.5, generator),
        "noise sd 0.2 + inverted intensities": add_noise(1 - x_clean, NOISE_SD, generator),
        "noise sd 0.2 + rotated 90 degrees": add_noise(x_clean.rot90(1, dims=(2, 3)), NOISE_SD, generator),
        "noise sd 0.2 + 3x3 box blur": add_noise(nn.functional.avg_pool2d(x_clean, 3, 1, 1), NOISE_SD, generator),
    }


def select_cap(model: Denoiser, fit_data: tuple[Tensor, Tensor], val_data: tuple[Tensor, Tensor], seed: int) -> BayesCap:
    """Fit a cap of each size in `CAP_SIZES`; return the one with the lowest BayesCap loss on ``val_data``."""
    best_loss, best = math.inf, None
    for hidden, num_blocks in CAP_SIZES:
        t0 = time.perf_counter()
        cap = wrap(model, "bayescap", seed=seed, hidden=hidden, num_blocks=num_blocks, **CAP_OPTIONS).fit(*fit_data)
        with torch.no_grad():
            y_hat = model(val_data[0])
            loss = float(bayescap_loss(*cap.cap_outputs(y_hat), y_hat, val_data[1]))
        show(f"  cap {hidden} maps x {num_blocks} block(s): fit (s) / validation loss", f"{time.perf_counter() - t0:.1f} / {loss:.5f}")
        if loss < best_loss:
            best_loss, best = loss, cap
    return best


def image_to_image(seed: int) -> tuple[Denoiser, Tensor, Tensor, tuple[int, int]]:
    print("\n== BayesCap on a frozen digits denoiser ==", flush=True)
    gen = torch.Generator().manual_seed(seed)
    images = digit_images()
    train, val, test = split_rows(len(images), gen)
    t0 = time.perf_counter()
    model = train_denoiser(images[train], gen)
    show("base denoiser trained (s)", f"{time.perf_counter() - t0:.1f}")
    cap_clean = images[train]
    cap_inputs = add_noise(cap_clean, NOISE_SD, gen)
    print(f"  BayesCap trained on {CAP_FRACTION:.0%} of {len(train)} training images; size chosen on {len(val)} validation images:")
    cap = select_cap(model, (cap_inputs, cap_clean), (add_noise(images[val], NOISE_SD, gen), images[val]), seed)
    show("  chosen cap: feature maps / residual blocks", f"{cap.hidden} / {cap.num_blocks}")

    x_test, y_test = add_noise(images[test], NOISE_SD, gen), images[test]
    out = cap(x_test)
    err = out.output - y_test
    show("denoiser test RMSE (noisy input RMSE)", f"{err.pow(2).mean().sqrt():.4f} ({(x_test - y_test).pow(2).mean().sqrt():.4f})")
    variances = {
        "BayesCap (GGD variance)": out.predictive.variance().reshape(err.shape),
        f"MC dropout (p=0.2, {NUM_PASSES} passes)": mc_dropout_variance(model, x_test, seed),
        f"test-time augmentation ({TTA_NOISE_SD:.0%} noise, {NUM_PASSES} passes)": tta_variance(model, x_test, gen),
    }
    print("  per-pixel |error| vs predicted sd on the test images (higher r, lower UCE = better):")
    for name, var in variances.items():
        r = error_correlation(err.abs(), var.sqrt())
        uce = uncertainty_calibration_error(err**2, var)
        show(f"  {name}", f"r = {r:.3f}  UCE = {uce:.5f}")
    show("  (mean squared error of the frozen output, for scale)", f"{err.pow(2).mean():.5f}")

    print("  OOD AUROC of per-image mean uncertainty, clean vs corrupted test inputs (goal >= 0.90):")
    score_in = {name: var.flatten(1).mean(1) for name, var in variances.items()}
    for corruption, x_bad in corruptions(images[test], gen).items():
        bad = {
            "BayesCap": cap.ood_score(x_bad),
            "MC dropout": mc_dropout_variance(model, x_bad, seed).flatten(1).mean(1),
            "TTA": tta_variance(model, x_bad, gen).flatten(1).mean(1),
        }
        cells = "  ".join(f"{k} {float(ood_auroc(s_in, bad[k])):.3f}" for k, s_in in zip(bad, score_in.values()))
        show(f"  {corruption}", cells)
    return model, cap_inputs, cap_clean, (cap.hidden, cap.num_blocks)


# ---------------------------------------------------------------------------------- classifier
def classifier_run(seed: int) -> tuple[dict[str, tuple[float, float, float, bool]], dict[str, float], dict[str, float]]:
    """One seed: ``{method: (accuracy, NLL, ECE, same argmax)}``, ``{score: OOD AUROC}``, fitted values and timings."""
    data = load_sklearn("digits", test_fraction=0.3, val_fraction=0.2, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    model = train_overconfident_mlp(data.x_train, data.y_train, generator=gen).eval()
    x_ood = shifted_digits(data.x_test, generator=gen)
    train, val = (data.x_train, data.y_train), (data.x_val, data.y_val)
    facts: dict[str, float] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        result = fn()
        facts[f"{name} fit (s)"] = time.perf_counter() - start
        return result

    wrappers = {
        "temperature scaling (val)": timed("temperature", lambda: wrap(model, "temperature").fit(*val)),
        "Laplace probit, evidence prior (train)": timed("Laplace", lambda: wrap(model, "laplace").fit(*train)),
        "Laplace probit, prior tuned on val": timed("Laplace tuning", lambda: wrap(model, "laplace").fit(*train).tune_prior_precision(*val)),
        "Laplace MC 100, prior tuned on val": wrap(model, "laplace", link_approx="mc").fit(*train).tune_prior_precision(*val),
    }
    mahalanobis = timed("Mahalanobis", lambda: wrap(model, "mahalanobis").fit(*train))
    facts["temperature"] = wrappers["temperature scaling (val)"].temperature_
    facts["prior precision, evidence"] = float(wrappers["Laplace probit, evidence prior (train)"].prior_precision_)
    facts["prior precision, val-tuned"] = float(wrappers["Laplace probit, prior tuned on val"].prior_precision_)

    with torch.no_grad():
        frozen_logits, ood_logits = model(data.x_test), model(x_ood)
    probs = {"frozen model": torch.softmax(frozen_logits, -1), "peer: netcal TemperatureScaling (val)": netcal_temperature(model, data)}
    probs.update({k: w(data.x_test).predictive.mixture_probs() for k, w in wrappers.items()})
    y = data.y_test
    quality = {k: (float(accuracy(p, y)), float(nll(p, y)), float(ece(p, y)), bool(torch.equal(p.argmax(-1), frozen_logits.argmax(-1))))
               for k, p in probs.items()}
    confidence = probs["frozen model"].max(-1).values
    facts["frozen test confidence - accuracy"] = float(confidence.mean()) - quality["frozen model"][0]
    facts["ECE if perfectly calibrated (frozen confidences)"] = calibrated_ece(confidence, gen)
    facts["ECE if perfectly calibrated (TS confidences)"] = calibrated_ece(probs["temperature scaling (val)"].max(-1).values, gen)

    tuned = wrappers["Laplace probit, prior tuned on val"]
    mc = wrappers["Laplace MC 100, prior tuned on val"]
    scores = {
        "Mahalanobis (penultimate features)": (mahalanobis.ood_score(data.x_test), mahalanobis.ood_score(x_ood)),
        "frozen MSP": (msp_score(Predictive.from_logits(frozen_logits)), msp_score(Predictive.from_logits(ood_logits))),
        "temperature-scaled entropy": (wrappers["temperature scaling (val)"].ood_score(data.x_test),
                                       wrappers["temperature scaling (val)"].ood_score(x_ood)),
        "Laplace probit (val-tuned) entropy": (tuned.ood_score(data.x_test), tuned.ood_score(x_ood)),
        "Laplace MC (val-tuned) mutual information": (mutual_information_score(mc(data.x_test).predictive),
                                                      mutual_information_score(mc(x_ood).predictive)),
    }
    auroc = {k: float(ood_auroc(s_in, s_out)) for k, (s_in, s_out) in scores.items()}

    features = model[:4](data.x_train).detach()
    start = time.perf_counter()
    LedoitWolf(assume_centered=True).fit(features.numpy())
    facts["sklearn LedoitWolf fit (s)"] = time.perf_counter() - start
    return quality, auroc, facts


def calibrated_ece(confidence: Tensor, generator: torch.Generator, draws: int = 200) -> float:
    """Mean ECE (15 bins) of a perfectly calibrated model with these top-label confidences ``[N]``: each
    prediction is correct with probability equal to its confidence. The floor that sampling noise puts
    under the measured ECE on ``N`` test points."""
    correct = torch.bernoulli(confidence.expand(draws, -1), generator=generator)
    return float(torch.stack([ece_from_top_label(confidence, c, num_bins=15) for c in correct]).mean())


def classifier(seeds: list[int]) -> None:
    print(f"\n== Frozen digits MLP (the demo's, 64-256-256-10, overfitted): seeds {seeds} ==", flush=True)
    runs = [classifier_run(seed) for seed in seeds]

    def spread(values: list[float]) -> str:
        return f"{np.mean(values):.4f}+-{np.std(values, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0:.4f}"

    print("  test accuracy / NLL / ECE (15 bins), mean+-s.e. over seeds; * = some predicted labels changed:")
    for name in runs[0][0]:
        cols = [[run[0][name][i] for run in runs] for i in range(3)]
        changed = "" if all(run[0][name][3] for run in runs) else " *"
        show(f"  {name}", " / ".join(spread(c) for c in cols) + changed)
    print("  paired differences to the frozen model, mean+-s.e. over seeds (NLL / ECE; negative = better):")
    for name in list(runs[0][0])[1:]:
        diffs = [[run[0][name][i] - run[0]["frozen model"][i] for run in runs] for i in (1, 2)]
        show(f"  {name}", " / ".join(spread(d) for d in diffs))
    print("  OOD AUROC, test digits vs the same digits rotated 90 degrees + noise (goal >= 0.90 for Mahalanobis):")
    for name in runs[0][1]:
        show(f"  {name}", spread([run[1][name] for run in runs]))
    print("  fitted values and fit times (uqkit, and scikit-learn's LedoitWolf on the same features):")
    for name in runs[0][2]:
        show(f"  {name}", spread([run[2][name] for run in runs]))
    ratio = [run[2]["Mahalanobis fit (s)"] / run[2]["sklearn LedoitWolf fit (s)"] for run in runs]
    show("  ratio: uqkit Mahalanobis fit (incl. forward pass) / sklearn LedoitWolf", spread(ratio))


def netcal_temperature(model: nn.Module, data) -> Tensor:
    """netcal's TemperatureScaling fitted on the validation split, applied to the test split."""
    from netcal.scaling import TemperatureScaling

    with torch.no_grad():
        p_val = torch.softmax(model(data.x_val), -1).numpy()
        p_test = torch.softmax(model(data.x_test), -1).numpy()
    scaler = TemperatureScaling()
    scaler.fit(p_val, data.y_val.numpy())
    probs = np.clip(scaler.transform(p_test), 1e-300, None)
    return torch.from_numpy(probs / probs.sum(-1, keepdims=True))


# -------------------------------------------------------------------------------------- memory
def memory_probe(job: str, seed: int, cap_size: tuple[int, int]) -> dict[str, float]:
    """Run in a fresh interpreter with MALLOC_ENV: peak extra resident memory of 5 epochs of ``job``.

    ``job`` is "cap" (BayesCap training) or "base" (training the denoiser itself). One warm-up epoch
    runs first, so lazy imports and first-call allocations are not counted.
    """
    torch.set_num_threads(1)
    hidden, num_blocks = cap_size
    gen = torch.Generator().manual_seed(seed)
    images = digit_images()
    clean = images[split_rows(len(images), gen)[0]]
    inputs = add_noise(clean, NOISE_SD, gen)
    model = Denoiser().eval()
    jobs = {
        "cap": lambda epochs: wrap(model, "bayescap", seed=seed, hidden=hidden, num_blocks=num_blocks,
                                   **dict(CAP_OPTIONS, num_epochs=epochs)).fit(inputs, clean),
        "base": lambda epochs: train_denoiser(clean, gen, epochs=epochs),
    }
    jobs[job](1)
    known = 1 << 24
    check, _ = peak_rss_delta(lambda: torch.ones(known // 4, dtype=torch.float32).sum())
    peak, _ = peak_rss_delta(lambda: jobs[job](5))
    return {"check_known_bytes": known, "check_measured_bytes": check, "peak_bytes": peak}


def memory(model: Denoiser, cap_inputs: Tensor, cap_clean: Tensor, seed: int, cap_size: tuple[int, int]) -> None:
    print(f"\n== Memory: BayesCap training ({cap_size[0]} maps x {cap_size[1]} blocks) against the frozen model ==", flush=True)
    frozen_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    cap = wrap(model, "bayescap", seed=seed, hidden=cap_size[0], num_blocks=cap_size[1],
               **dict(CAP_OPTIONS, num_epochs=1)).fit(cap_inputs, cap_clean)
    cap_bytes = sum(p.numel() * p.element_size() for p in cap.cap_.parameters())
    num_cached = math.ceil(CAP_FRACTION * len(cap_inputs))
    cached = 2 * num_cached * cap_inputs[0].numel() * cap_inputs.element_size()  # frozen outputs and targets
    show("frozen denoiser parameters + buffers (KiB)", f"{frozen_bytes / 1024:.1f}")
    show("cap parameters (KiB)", f"{cap_bytes / 1024:.1f}")
    show("cap training state: params, grads, 2 Adam moments (KiB)", f"{4 * cap_bytes / 1024:.1f}")
    show(f"cached frozen outputs + targets, {num_cached} images (KiB)", f"{cached / 1024:.1f}")
    peaks = {}
    for job, label in (("cap", "BayesCap training"), ("base", "base denoiser training")):
        size = f"{cap_size[0]},{cap_size[1]}"
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", job, "--seed", str(seed),
                              "--cap-size", size],
                             env={**os.environ, **MALLOC_ENV}, capture_output=True, text=True, check=True)
        probe = json.loads(out.stdout)
        peaks[job] = probe["peak_bytes"]
        show(f"  instrument check before {label}: 16 MiB measured as (MiB)", f"{probe['check_measured_bytes'] / 2**20:.1f}")
        show(f"peak RSS added by 5 epochs of {label} (MiB, fresh process)", f"{probe['peak_bytes'] / 2**20:.2f}")
    if peaks["base"] > 0:
        show("ratio cap / base training peak", f"{peaks['cap'] / peaks['base']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-seeds", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated seeds for the classifier part")
    parser.add_argument("--skip-images", action="store_true", help="only the classifier part")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-probe", choices=("cap", "base"), help=argparse.SUPPRESS)
    parser.add_argument("--cap-size", default="16,1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        hidden, num_blocks = (int(v) for v in args.cap_size.split(","))
        print(json.dumps(memory_probe(args.memory_probe, args.seed, (hidden, num_blocks))))
        return
    torch.set_num_threads(args.threads)
    print(f"uqkit.wrap benchmark, seed {args.seed}, torch {torch.__version__} [{context_str()}]")
    t0 = time.perf_counter()
    if not args.skip_images:
        model, cap_inputs, cap_clean, cap_size = image_to_image(args.seed)
    classifier([int(v) for v in args.classifier_seeds.split(",")])
    if not args.skip_images:
        memory(model, cap_inputs, cap_clean, args.seed, cap_size)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s [{context_str()}]")


if __name__ == "__main__":
    main()
