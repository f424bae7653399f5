"""Benchmark for `uqkit.wrap` on frozen digits models (issue 6).

1. Image-to-image: a convolutional denoiser for scikit-learn's 8x8 digits (noise sd 0.2, intensities
   in [0, 1]) is trained, then frozen. BayesCap is trained on 25% of the denoiser's training images, each
   with `CAP_NOISE_DRAWS` fresh noise draws (the denoiser itself drew fresh noise every epoch), with the
   paper's loss weights; the cap size and the shape floor ``beta_min`` are chosen among `CAP_SIZES` x
   `BETA_MINS` by the BayesCap loss on the validation images, never the test images. That one cap (the
   paper's method) and an ensemble of `NUM_CAPS` such caps (``num_caps``, each from its own initialisation)
   are compared with MC dropout on the base model (p = 0.2, 50 passes) and test-time augmentation (input +
   5% Gaussian noise, 50 passes): Pearson correlation between per-pixel |error| and predicted sd, UCE
   (squared error vs variance, 15 bins), and the AUROC of per-image mean uncertainty (the paper's score),
   clean test inputs vs corrupted ones.
2. Classifier: the demo's frozen digits MLP (64-256-256-256-10, Adam, no weight decay, no early stopping,
   300 epochs to near-zero training loss; its overconfidence is checked on the validation split) over
   several seeds (mean +- standard error over seeds, paired differences). ECE (15 bins) on 540 test points
   is noisy and its floor rises as confidences spread, so the ECE a perfectly calibrated model with the
   same confidences would show is printed beside it, as are the debiased squared ECE (Kumar et al. 2019)
   and both ECEs pooled over seeds with paired-bootstrap standard errors. Temperature scaling (validation
   split) and last-layer Laplace (Hessian on the training split; prior precision by the evidence, or
   tuned on the validation split; scaled, per-class probit and MC predictives): accuracy, NLL, ECE, and
   whether any predicted class changed. OOD AUROC on rotated noisy digits: Mahalanobis score vs softmax
   baselines. Peers side by side: netcal's temperature scaling (quality) and scikit-learn's Ledoit-Wolf
   fit (time, with the ratio). ``--classifier-depth 2 --classifier-epochs 60`` gives last session's model.
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

from uqkit.calibration.classification import accuracy, debiased_squared_ece, ece, ece_from_top_label, nll
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
CAP_NOISE_DRAWS = 20  # noisy copies of each cap training image
#: Conv caps for 8x8 images, ``(feature maps, residual blocks)`` (0.3x, 1x and 5.7x the frozen denoiser's
#: parameters), and shape floors (the paper's 0.01 and two larger); the pair with the lowest BayesCap loss on the
#: validation images is used. Within a fit, the best of 20 epochs by the loss on the cap's own held-out 10% is kept.
CAP_SIZES = ((8, 1), (16, 1), (32, 2))
BETA_MINS = (0.01, 0.3, 1.0)
NUM_CAPS = 5
CAP_OPTIONS = {"num_epochs": 20, "batch_size": 32, "progress": False}


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


def cap_training_pairs(train_images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """BayesCap's training pairs: `CAP_FRACTION` of the denoiser's training images, each `CAP_NOISE_DRAWS` times
    with fresh noise, as ``(noisy inputs, clean targets)``."""
    num_images = math.floor(CAP_FRACTION * len(train_images))
    subset = train_images[torch.randperm(len(train_images), generator=generator)[:num_images]]
    clean = subset.repeat(CAP_NOISE_DRAWS, 1, 1, 1)
    return add_noise(clean, NOISE_SD, generator), clean


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


def noise_free_corruptions(x_clean: Tensor) -> dict[str, tuple[Tensor, float]]:
    """Per corruption, the corrupted digits before noise and the sd of the noise then added."""
    return {
        "noise sd 0.5 (2.5x training noise)": (x_clean, 0.5),
        "noise sd 0.2 + inverted intensities": (1 - x_clean, NOISE_SD),
        "noise sd 0.2 + rotated 90 degrees": (x_clean.rot90(1, dims=(2, 3)), NOISE_SD),
        "noise sd 0.2 + 3x3 box blur": (nn.functional.avg_pool2d(x_clean, 3, 1, 1), NOISE_SD),
    }


def corruptions(x_clean: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """Corrupted test inputs for OOD detection (all start from the clean test digits)."""
    return {name: add_noise(x, sd, generator) for name, (x, sd) in noise_free_corruptions(x_clean).items()}


def select_cap(model: Denoiser, fit_data: tuple[Tensor, Tensor], val_data: tuple[Tensor, Tensor], seed: int) -> BayesCap:
    """Fit one cap per size in `CAP_SIZES` and floor in `BETA_MINS`; return the one with the lowest BayesCap loss on
    ``val_data``."""
    best_loss, best = math.inf, None
    with torch.no_grad():
        y_hat = model(val_data[0])
    for beta_min in BETA_MINS:
        for hidden, num_blocks in CAP_SIZES:
            t0 = time.perf_counter()
            cap = wrap(model, "bayescap", seed=seed, hidden=hidden, num_blocks=num_blocks, beta_min=beta_min,
                       **CAP_OPTIONS).fit(*fit_data)
            with torch.no_grad():
                loss = float(bayescap_loss(*cap.cap_outputs(y_hat), y_hat, val_data[1]))
            show(f"  cap {hidden} maps x {num_blocks} block(s), beta_min {beta_min}: fit (s) / validation loss",
                 f"{time.perf_counter() - t0:.1f} / {loss:.5f}")
            if loss < best_loss:
                best_loss, best = loss, cap
    return best


def image_to_image(seed: int) -> tuple[Denoiser, Tensor, Tensor, dict[str, object]]:
    print("\n== BayesCap on a frozen digits denoiser ==", flush=True)
    gen = torch.Generator().manual_seed(seed)
    images = digit_images()
    train, val, test = split_rows(len(images), gen)
    t0 = time.perf_counter()
    model = train_denoiser(images[train], gen)
    show("base denoiser trained (s)", f"{time.perf_counter() - t0:.1f}")
    cap_inputs, cap_clean = cap_training_pairs(images[train], gen)
    print(f"  BayesCap trained on {len(cap_clean) // CAP_NOISE_DRAWS} of the {len(train)} training images "
          f"({CAP_FRACTION:.0%}) x {CAP_NOISE_DRAWS} noise draws; size and beta_min chosen on {len(val)} validation images:")
    x_val = add_noise(images[val], NOISE_SD, gen)
    cap = select_cap(model, (cap_inputs, cap_clean), (x_val, images[val]), seed)
    chosen = {"hidden": cap.hidden, "num_blocks": cap.num_blocks, "beta_min": cap.beta_min}
    show("  chosen cap: feature maps / residual blocks / beta_min", f"{cap.hidden} / {cap.num_blocks} / {cap.beta_min}")
    t0 = time.perf_counter()
    caps = wrap(model, "bayescap", seed=seed, num_caps=NUM_CAPS, **chosen, **CAP_OPTIONS).fit(cap_inputs, cap_clean)
    show(f"  ensemble of {NUM_CAPS} such caps fitted (s; its cap 1 is the chosen cap)", f"{time.perf_counter() - t0:.1f}")

    x_test, y_test = add_noise(images[test], NOISE_SD, gen), images[test]
    out = cap(x_test)
    err = out.output - y_test
    show("denoiser test RMSE (noisy input RMSE)", f"{err.pow(2).mean().sqrt():.4f} ({(x_test - y_test).pow(2).mean().sqrt():.4f})")
    variances = {
        "BayesCap, one cap (GGD variance)": out.predictive.variance().reshape(err.shape),
        f"BayesCap, {NUM_CAPS} caps (mixture variance)": caps(x_test).predictive.variance().reshape(err.shape),
        f"MC dropout (p=0.2, {NUM_PASSES} passes)": mc_dropout_variance(model, x_test, seed),
        f"test-time augmentation ({TTA_NOISE_SD:.0%} noise, {NUM_PASSES} passes)": tta_variance(model, x_test, gen),
    }
    print("  per-pixel |error| vs predicted sd on the test images (higher r, lower UCE = better):")
    for name, var in variances.items():
        r = error_correlation(err.abs(), var.sqrt())
        uce = uncertainty_calibration_error(err**2, var)
        show(f"  {name}", f"r = {r:.3f}  UCE = {uce:.5f}")
    show("  (mean squared error of the frozen output, for scale)", f"{err.pow(2).mean():.5f}")

    print("  OOD AUROC, clean vs corrupted test inputs (goal >= 0.90), each by its per-image mean variance:")
    scorers = {
        "BayesCap 1 cap": cap.ood_score,
        f"BayesCap {NUM_CAPS} caps": caps.ood_score,
        "MC dropout": lambda x: mc_dropout_variance(model, x, seed).flatten(1).mean(1),
        "TTA": lambda x: tta_variance(model, x, gen).flatten(1).mean(1),
    }
    score_in = {name: score(x_test) for name, score in scorers.items()}
    for corruption, x_bad in corruptions(images[test], gen).items():
        cells = "  ".join(f"{name} {float(ood_auroc(score_in[name], score(x_bad))):.3f}" for name, score in scorers.items())
        show(f"  {corruption}", cells)
    return model, cap_inputs, cap_clean, chosen


# ---------------------------------------------------------------------------------- classifier
BOOTSTRAP = 500  # paired bootstrap resamples for the pooled ECE differences
QUALITY = ("accuracy", "NLL", "ECE (15 bins)", "debiased squared ECE x 1e4")


def classifier_run(seed: int, depth: int, epochs: int) -> dict[str, object]:
    """One seed. Returns ``quality`` ``{method: [accuracy, NLL, ECE, debiased squared ECE x 1e4]}``, ``same_class``
    ``{method: argmax equals the frozen model's on every test point}``, ``probs`` ``{method: test probabilities}``,
    ``labels``, ``auroc`` ``{score: OOD AUROC}`` and ``facts`` (validation checks, fitted values, timings)."""
    data = load_sklearn("digits", test_fraction=0.3, val_fraction=0.2, seed=seed)
    x_train, x_val, x_test = data.x_train.float(), data.x_val.float(), data.x_test.float()
    gen = torch.Generator().manual_seed(seed)
    facts: dict[str, float] = {}
    start = time.perf_counter()
    model = train_overconfident_mlp(x_train, data.y_train, generator=gen, depth=depth, epochs=epochs).eval()
    facts["frozen model training (s)"] = time.perf_counter() - start
    x_ood = shifted_digits(x_test, generator=gen)
    train, val = (x_train, data.y_train), (x_val, data.y_val)
    with torch.no_grad():
        facts["training loss of the frozen model"] = float(nn.functional.cross_entropy(model(x_train), data.y_train))
        p_val = torch.softmax(model(x_val).double(), -1)
    facts["validation confidence - accuracy (> 0: overconfident)"] = float(p_val.max(-1).values.mean() - accuracy(p_val, data.y_val))
    facts["validation NLL"] = float(nll(p_val, data.y_val))

    def timed(name: str, fn):
        start = time.perf_counter()
        result = fn()
        facts[f"{name} fit (s)"] = time.perf_counter() - start
        return result

    tuned_on_val = {  # one Hessian on the training split; the prior precision by the validation NLL, per link
        link: wrap(model, "laplace", link_approx=link).fit(*train).tune_prior_precision(*val) for link in ("probit", "mc")
    }
    wrappers = {
        "temperature scaling (val)": timed("temperature", lambda: wrap(model, "temperature").fit(*val)),
        "Laplace scaled (default), evidence prior": timed("Laplace", lambda: wrap(model, "laplace").fit(*train)),
        "Laplace scaled (default), prior tuned on val": timed(
            "Laplace + prior tuning", lambda: wrap(model, "laplace").fit(*train).tune_prior_precision(*val)),
        "Laplace per-class probit, prior tuned on val": tuned_on_val["probit"],
        "Laplace MC 100, prior tuned on val": tuned_on_val["mc"],
    }
    mahalanobis = timed("Mahalanobis", lambda: wrap(model, "mahalanobis").fit(*train))
    facts["temperature"] = wrappers["temperature scaling (val)"].temperature_
    facts["log10 prior precision, evidence"] = math.log10(float(wrappers["Laplace scaled (default), evidence prior"].prior_precision_))
    facts["log10 prior precision, val-tuned (scaled)"] = math.log10(
        float(wrappers["Laplace scaled (default), prior tuned on val"].prior_precision_))

    with torch.no_grad():
        frozen_logits, ood_logits = model(x_test), model(x_ood)
    probs = {"frozen model": torch.softmax(frozen_logits.double(), -1),
             "peer: netcal TemperatureScaling (val)": netcal_temperature(model, x_val, data.y_val, x_test)}
    probs.update({k: w(x_test).predictive.mixture_probs().double() for k, w in wrappers.items()})
    y = data.y_test
    quality = {k: [float(accuracy(p, y)), float(nll(p, y)), float(ece(p, y)), 1e4 * float(debiased_squared_ece(p, y))]
               for k, p in probs.items()}
    same_class = {k: bool(torch.equal(p.argmax(-1), frozen_logits.argmax(-1))) for k, p in probs.items()}
    facts["test ECE if perfectly calibrated (frozen confidences)"] = calibrated_ece(probs["frozen model"].max(-1).values, gen)
    facts["test ECE if perfectly calibrated (TS confidences)"] = calibrated_ece(
        probs["temperature scaling (val)"].max(-1).values, gen)

    tuned = wrappers["Laplace scaled (default), prior tuned on val"]
    mc = wrappers["Laplace MC 100, prior tuned on val"]
    temperature = wrappers["temperature scaling (val)"]
    scores = {
        "Mahalanobis (penultimate features)": (mahalanobis.ood_score(x_test), mahalanobis.ood_score(x_ood)),
        "frozen MSP": (msp_score(Predictive.from_logits(frozen_logits)), msp_score(Predictive.from_logits(ood_logits))),
        "temperature-scaled entropy": (temperature.ood_score(x_test), temperature.ood_score(x_ood)),
        "Laplace scaled (val-tuned) entropy": (tuned.ood_score(x_test), tuned.ood_score(x_ood)),
        "Laplace MC (val-tuned) mutual information": (mutual_information_score(mc(x_test).predictive),
                                                      mutual_information_score(mc(x_ood).predictive)),
    }
    auroc = {k: float(ood_auroc(s_in, s_out)) for k, (s_in, s_out) in scores.items()}

    features = model[:-1](x_train).detach()
    start = time.perf_counter()
    LedoitWolf(assume_centered=True).fit(features.numpy())
    facts["sklearn LedoitWolf fit (s)"] = time.perf_counter() - start
    return {"quality": quality, "same_class": same_class, "probs": probs, "labels": y, "auroc": auroc, "facts": facts}


def calibrated_ece(confidence: Tensor, generator: torch.Generator, draws: int = 200) -> float:
    """Mean ECE (15 bins) of a perfectly calibrated model with these top-label confidences ``[N]``: each
    prediction is correct with probability equal to its confidence. The floor that sampling noise puts
    under the measured ECE on ``N`` test points."""
    correct = torch.bernoulli(confidence.expand(draws, -1), generator=generator)
    return float(torch.stack([ece_from_top_label(confidence, c, num_bins=15) for c in correct]).mean())


def spread(values: list[float]) -> str:
    """``mean+-standard error`` over seeds."""
    se = np.std(values, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f}+-{se:.4f}"


def classifier(seeds: list[int], depth: int, epochs: int) -> None:
    print(f"\n== Frozen digits MLP (the demo's: 64-{'-'.join(['256'] * depth)}-10, Adam, no weight decay, "
          f"{epochs} epochs): seeds {seeds} ==", flush=True)
    runs = [classifier_run(seed, depth, epochs) for seed in seeds]
    methods = list(runs[0]["quality"])
    print("  test " + " / ".join(QUALITY) + ", mean+-s.e. over seeds; * = some predicted class changed:")
    for name in methods:
        cols = [[run["quality"][name][i] for run in runs] for i in range(len(QUALITY))]
        changed = "" if all(run["same_class"][name] for run in runs) else " *"
        show(f"  {name}", " / ".join(spread(c) for c in cols) + changed)
    print("  paired differences to the frozen model, mean+-s.e. over seeds (" + " / ".join(QUALITY[1:]) + "; negative = better):")
    for name in methods[1:]:
        diffs = [[run["quality"][name][i] - run["quality"]["frozen model"][i] for run in runs] for i in (1, 2, 3)]
        show(f"  {name}", " / ".join(spread(d) for d in diffs))
    labels = torch.cat([run["labels"] for run in runs])
    pooled = {name: torch.cat([run["probs"][name] for run in runs]) for name in methods}
    print(f"  pooled over seeds ({len(labels)} test points): ECE (15 bins) / debiased squared ECE x 1e4 / its square root:")
    for name in methods:
        sq = float(debiased_squared_ece(pooled[name], labels))
        show(f"  {name}", f"{float(ece(pooled[name], labels)):.4f} / {1e4 * sq:.2f} / {math.sqrt(max(sq, 0.0)):.4f}")
    print(f"  pooled, difference to the frozen model +- paired bootstrap s.e. ({BOOTSTRAP} resamples of the pooled test points;")
    print("  the fitted models held fixed): ECE (15 bins) / debiased squared ECE x 1e4:")
    gen = torch.Generator().manual_seed(0)
    resamples = [torch.randint(0, len(labels), (len(labels),), generator=gen) for _ in range(BOOTSTRAP)]
    for name in methods[1:]:
        cols = []
        for metric, scale in ((ece, 1.0), (debiased_squared_ece, 1e4)):
            diff = scale * float(metric(pooled[name], labels) - metric(pooled["frozen model"], labels))
            boot = [scale * float(metric(pooled[name][i], labels[i]) - metric(pooled["frozen model"][i], labels[i]))
                    for i in resamples]
            cols.append(f"{diff:.4f}+-{np.std(boot, ddof=1):.4f}")
        show(f"  {name}", " / ".join(cols))
    print("  OOD AUROC, test digits vs the same digits rotated 90 degrees + noise (goal >= 0.90 for Mahalanobis):")
    for name in runs[0]["auroc"]:
        show(f"  {name}", spread([run["auroc"][name] for run in runs]))
    print("  validation checks, fitted values and fit times (uqkit, and scikit-learn's LedoitWolf on the same features):")
    for name in runs[0]["facts"]:
        show(f"  {name}", spread([run["facts"][name] for run in runs]))
    ratio = [run["facts"]["Mahalanobis fit (s)"] / run["facts"]["sklearn LedoitWolf fit (s)"] for run in runs]
    show("  ratio: uqkit Mahalanobis fit (incl. forward pass) / sklearn LedoitWolf", spread(ratio))


def netcal_temperature(model: nn.Module, x_val: Tensor, y_val: Tensor, x_test: Tensor) -> Tensor:
    """netcal's TemperatureScaling fitted on the validation split, applied to the test split."""
    from netcal.scaling import TemperatureScaling

    with torch.no_grad():
        p_val = torch.softmax(model(x_val).double(), -1).numpy()
        p_test = torch.softmax(model(x_test).double(), -1).numpy()
    scaler = TemperatureScaling()
    scaler.fit(p_val, y_val.numpy())
    probs = np.clip(scaler.transform(p_test), 1e-300, None)
    return torch.from_numpy(probs / probs.sum(-1, keepdims=True))


# -------------------------------------------------------------------------------------- memory
def memory_probe(job: str, seed: int, cap: dict[str, object]) -> dict[str, float]:
    """Run in a fresh interpreter with MALLOC_ENV: peak extra resident memory of 5 epochs of ``job``.

    ``job`` is "cap" (BayesCap training, one cap with the options ``cap``, on its training pairs) or "base"
    (training the denoiser itself). One warm-up epoch runs first, so lazy imports and first-call allocations
    are not counted.
    """
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    images = digit_images()
    clean = images[split_rows(len(images), gen)[0]]
    cap_inputs, cap_clean = cap_training_pairs(clean, gen)
    model = Denoiser().eval()
    jobs = {
        "cap": lambda epochs: wrap(model, "bayescap", seed=seed, **cap, **dict(CAP_OPTIONS, num_epochs=epochs)).fit(
            cap_inputs, cap_clean),
        "base": lambda epochs: train_denoiser(clean, gen, epochs=epochs),
    }
    jobs[job](1)
    known = 1 << 24
    check, _ = peak_rss_delta(lambda: torch.ones(known // 4, dtype=torch.float32).sum())
    peak, _ = peak_rss_delta(lambda: jobs[job](5))
    return {"check_known_bytes": known, "check_measured_bytes": check, "peak_bytes": peak}


def memory(model: Denoiser, cap_inputs: Tensor, cap_clean: Tensor, seed: int, chosen: dict[str, object]) -> None:
    print(f"\n== Memory: training one BayesCap ({chosen['hidden']} maps x {chosen['num_blocks']} blocks) against the frozen "
          "model (an ensemble trains its caps one after another) ==", flush=True)
    frozen_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    cap = wrap(model, "bayescap", seed=seed, **chosen, **dict(CAP_OPTIONS, num_epochs=1)).fit(cap_inputs, cap_clean)
    cap_bytes = sum(p.numel() * p.element_size() for p in cap.caps_[0].parameters())
    num_cached = len(cap_inputs)
    cached = 2 * num_cached * cap_inputs[0].numel() * cap_inputs.element_size()  # frozen outputs and targets
    show("frozen denoiser parameters + buffers (KiB)", f"{frozen_bytes / 1024:.1f}")
    show("cap parameters (KiB)", f"{cap_bytes / 1024:.1f}")
    show("cap training state: params, grads, 2 Adam moments (KiB)", f"{4 * cap_bytes / 1024:.1f}")
    show(f"cached frozen outputs + targets, {num_cached} training pairs (KiB)", f"{cached / 1024:.1f}")
    peaks = {}
    for job, label in (("cap", "BayesCap training"), ("base", "base denoiser training")):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", job, "--seed", str(seed),
                              "--cap", json.dumps(chosen)],
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
    parser.add_argument("--skip-classifier", action="store_true", help="only the image-to-image part")
    parser.add_argument("--classifier-depth", type=int, default=3, help="hidden layers of 256 (last session's model: 2)")
    parser.add_argument("--classifier-epochs", type=int, default=300, help="training epochs (last session's model: 60)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-probe", choices=("cap", "base"), help=argparse.SUPPRESS)
    parser.add_argument("--cap", default='{"hidden": 16, "num_blocks": 1, "beta_min": 0.3}', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.seed, json.loads(args.cap))))
        return
    torch.set_num_threads(args.threads)
    print(f"uqkit.wrap benchmark, seed {args.seed}, torch {torch.__version__} [{context_str()}]")
    t0 = time.perf_counter()
    if not args.skip_images:
        model, cap_inputs, cap_clean, chosen = image_to_image(args.seed)
    if not args.skip_classifier:
        classifier([int(v) for v in args.classifier_seeds.split(",")], args.classifier_depth, args.classifier_epochs)
    if not args.skip_images:
        memory(model, cap_inputs, cap_clean, args.seed, chosen)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s [{context_str()}]")


if __name__ == "__main__":
    main()
