"""``uqkit demo``: the main job end to end on bundled data, in well under three minutes on two cores.

1. Train a small MLP on a fifth of scikit-learn's digits until it overfits (an overconfident model), then freeze it.
2. Score it on held-out digits and on a shifted set (rotated, noisy digits) as OOD.
3. Recalibrate it with temperature scaling fitted on a validation split, and score again.
4. Wrap the frozen model with a Mahalanobis OOD score on its features (`uqkit.wrap`).
5. Train a deep ensemble of five such MLPs (vectorised with torch.func) and score it the same way.
6. Sample a Bayesian MLP with SGHMC (two chains) and score its posterior predictive the same way.
7. Write one HTML report per stage and an index page comparing them.

The BNN's prior is `HierarchicalLayerwiseGaussian` (each layer's variance Gibbs-sampled): with the
fixed 1/fan_in prior ``LayerwiseGaussian(1, 1)`` and 359 training images the prior dominates (its MAP
averages 0.39 confidence at 86% accuracy), so the posterior is badly underconfident (ECE ~0.49,
whatever the step size, run length, batch size or temperature; full-batch runs agree).
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from uqkit.calibration.evaluate import evaluate
from uqkit.calibration.predictive import Predictive
from uqkit.calibration.recalibrate import TemperatureScaler
from uqkit.data import load_sklearn
from uqkit.inference.ensemble import fit_ensemble
from uqkit.inference.fit import fit
from uqkit.inference.posterior import Posterior
from uqkit.models import MLP, Categorical, HierarchicalLayerwiseGaussian, IsotropicGaussian, ModelSpec
from uqkit.wrap import wrap

_COMPARED = ("accuracy", "nll", "brier", "ece", "aurc", "ood_auroc", "ood_fpr95")


def run_demo(out_dir: str | Path, *, seed: int = 0, echo: Callable[[str], None] = print) -> Path:
    """Run the demo and return the path of its index page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_sklearn("digits", test_fraction=0.5, val_fraction=0.3, seed=seed)
    x_train, x_val, x_test = data.x_train.float(), data.x_val.float(), data.x_test.float()
    gen = torch.Generator().manual_seed(seed)
    echo(f"[1/7] training an MLP on digits ({len(data.y_train)} train / {len(data.y_val)} val / "
         f"{len(data.y_test)} test images) until it overfits")
    model = train_overconfident_mlp(x_train, data.y_train, generator=gen)
    model.eval().requires_grad_(False)
    x_shift = shifted_digits(x_test, generator=gen)
    with torch.no_grad():
        logits_val, logits_test, logits_shift = model(x_val), model(x_test), model(x_shift)

    echo("[2/7] scoring the frozen model on held-out digits, with rotated noisy digits as OOD")
    stages = {"frozen model": (Predictive.from_logits(logits_test), {"ood": Predictive.from_logits(logits_shift)})}

    echo("[3/7] temperature scaling on the validation split")
    scaler = TemperatureScaler().fit(logits_val, data.y_val)
    stages["temperature scaled"] = (scaler.transform(logits_test), {"ood": scaler.transform(logits_shift)})
    echo(f"      T = {float(scaler.temperature_):.3f}")

    echo("[4/7] wrapping the frozen model with a Mahalanobis OOD score on its last hidden layer")
    mahalanobis = wrap(model, "mahalanobis").fit(x_train, data.y_train)
    scores = (mahalanobis.ood_score(x_test), mahalanobis.ood_score(x_shift))
    stages["temperature + mahalanobis"] = (scaler.transform(logits_test), {"ood_scores": scores, "ood_score": "mahalanobis"})

    echo("[5/7] training a deep ensemble of five MLPs together (vectorised over members)")
    spec = ModelSpec(MLP(x_train.shape[1], [256, 256], 10, "relu"), IsotropicGaussian(1.0), Categorical(),
                     num_data=len(data.y_train))
    ensemble = fit_ensemble(spec, (x_train, data.y_train), num_members=5, num_epochs=30, batch_size=64, lr=1e-3,
                            seed=seed, progress=False)
    stages["deep ensemble (5)"] = (ensemble.predict(x_test), {"ood": ensemble.predict(x_shift)})

    echo("[6/7] sampling a Bayesian MLP (64-100-10 ReLU, hierarchical layer-wise prior) with SGHMC, 2 chains")
    bnn = sample_bnn(x_train, data.y_train, seed=seed)
    stages["BNN (SGHMC)"] = (bnn.predict(x_test), {"ood": bnn.predict(x_shift)})

    echo("[7/7] writing reports")
    rows = {}
    for name, (pred, ood_args) in stages.items():
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        report = evaluate(pred, data.y_test, title=f"Digits MLP: {name}", **ood_args,
                          meta={"dataset": "sklearn digits", "ood": "test digits rotated 90 degrees + noise", "seed": seed})
        path = report.to_html(out / slug)
        report.to_json(out / slug / "metrics.json")
        rows[name] = (slug, report.metrics)
        echo(f"      {name:26s} " + "  ".join(f"{k}={report.metrics[k]:.4f}" for k in _COMPARED) + f"  -> {path}")
    index = write_index(out, rows, temperature=float(scaler.temperature_))
    echo(f"done in {time.perf_counter() - t0:.1f} s; open {index}")
    return index


def train_overconfident_mlp(
    x: Tensor, y: Tensor, *, generator: torch.Generator, epochs: int = 300, width: int = 256, depth: int = 3
) -> nn.Module:
    """An MLP (``depth`` ReLU layers of ``width``) trained as deployed networks often are: Adam (lr 1e-3, batches
    of 64), no weight decay, no early stopping, ``epochs`` passes to near-zero training loss. Such networks are
    overconfident (Guo et al., ICML 2017): on half of digits, mean confidence exceeds validation accuracy by
    0.016 +- 0.002 (10 seeds, ``benchmarks/bench_wrap.py``).

    Args:
        x: ``[N, D]`` training inputs (the model takes their dtype).
        y: ``[N]`` integer labels.
        generator: seeds the initialisation and the batch order.
        epochs: passes over the data.
        width, depth: hidden units per layer, hidden layers.
    """
    with torch.random.fork_rng():  # nn.Linear initialises from the global RNG; keep it untouched
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        sizes = [x.shape[1]] + [width] * depth
        hidden = [m for d_in, d_out in zip(sizes, sizes[1:]) for m in (nn.Linear(d_in, d_out), nn.ReLU())]
        model = nn.Sequential(*hidden, nn.Linear(sizes[-1], int(y.max()) + 1)).to(x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=generator)
        for idx in perm.split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def sample_bnn(x: Tensor, y: Tensor, *, seed: int) -> Posterior:
    """SGHMC posterior of a 64-100-10 ReLU MLP with a hierarchical layer-wise Gaussian prior, given images
    ``x [N, 64]`` and labels ``y [N]``: 2 chains of 1000 burn-in steps + 100 draws thinned by 10, batches of 32."""
    spec = ModelSpec(MLP(x.shape[1], [100], int(y.max()) + 1, "relu"), HierarchicalLayerwiseGaussian(), Categorical(),
                     num_data=len(y))
    return fit(spec, (x, y), engine="sghmc", num_chains=2, num_warmup=1000, num_samples=100, thinning=10,
               batch_size=32, seed=seed, progress=False)


def shifted_digits(x: Tensor, *, generator: torch.Generator, noise: float = 0.5) -> Tensor:
    """Standardised 8x8 digit images rotated by 90 degrees with added Gaussian noise, ``[N, 64]``."""
    images = x.reshape(-1, 8, 8).rot90(1, dims=(1, 2)).reshape(-1, 64)
    return images + noise * torch.randn(images.shape, generator=generator, dtype=x.dtype)


def write_index(out: Path, rows: dict[str, tuple[str, dict[str, float]]], *, temperature: float) -> Path:
    """An index page with one row per stage and links to each stage's report."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in _COMPARED)
    body = "".join(
        f"<tr><td><a href='{html.escape(slug)}/report.html'>{html.escape(name)}</a></td>"
        + "".join(f"<td>{metrics[k]:.4f}</td>" for k in _COMPARED) + "</tr>"
        for name, (slug, metrics) in rows.items()
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>uqkit demo</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style></head><body>"
        "<h1>uqkit demo: a frozen digits classifier</h1>"
        "<p>An MLP trained to overfit scikit-learn's digits is frozen and scored on held-out digits, with "
        "rotated noisy digits as out-of-distribution inputs. Temperature scaling, fitted on a validation "
        f"split (T = {temperature:.3f}), changes no prediction but should lower NLL and ECE. A deep ensemble "
        "of five such networks, trained together, averages their probabilities. The BNN row averages 200 SGHMC "
        "draws of a 64-100-10 network whose layer-wise prior variances are sampled too. The Mahalanobis row "
        "keeps the temperature-scaled predictions and scores OOD inputs by their distance to the class means of "
        "the frozen network's last hidden features.</p>"
        f"<table><tr><th>stage</th>{head}</tr>{body}</table></body></html>"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
