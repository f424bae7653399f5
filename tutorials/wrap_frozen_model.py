"""Tutorial: give a frozen model uncertainty in five lines, with `uqkit.wrap`.

    python tutorials/wrap_frozen_model.py [--out wrap_tutorial]

A model is trained once (standing in for one you were handed and may not retrain), then frozen.
`uqkit.wrap` adds uncertainty around it without changing a single prediction:

    wrapped = wrap(model, "temperature").fit(x_val, y_val)         # 1. wrap, fit on held-out data
    out = wrapped(x_test)                                          # 2. out.output: the model's own output
    ood = wrapped(x_ood).predictive                                # 3. the same on shifted inputs
    report = evaluate(out.predictive, y_test, ood=ood)             # 4. score it
    report.to_html(out_dir)                                        # 5. write the report

The same lines work for "laplace" (last-layer Laplace) and "mahalanobis" (an OOD score on the
penultimate features) on the digits classifier, and for "bayescap" on a regressor (scikit-learn's
diabetes data) and on an image-to-image model (a digits denoiser). Each method writes a report under ``--out``;
an index page links them. Runs in about three minutes (191 s measured on a busy two-core machine).
"""

from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from uqkit import Predictive
from uqkit.calibration.evaluate import evaluate
from uqkit.calibration.ood import ood_auroc
from uqkit.data import load_sklearn
from uqkit.demo import train_overconfident_mlp
from uqkit.wrap import wrap


def train_denoiser(clean: Tensor, noise_sd: float, generator: torch.Generator) -> nn.Module:
    """A small convolutional denoiser for 8x8 digits ``[N, 1, 8, 8]`` in [0, 1]."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(32, 1, 3, padding=1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(60):
        for idx in torch.randperm(len(clean), generator=generator).split(64):
            noisy = clean[idx] + noise_sd * torch.randn(clean[idx].shape, generator=generator)
            opt.zero_grad()
            ((model(noisy) - clean[idx]) ** 2).mean().backward()
            opt.step()
    return model


def classifier_part(out_dir: Path, generator: torch.Generator) -> dict[str, dict[str, float]]:
    data = load_sklearn("digits", test_fraction=0.3, val_fraction=0.2, seed=0, standardize=True)
    x_train, y_train = data.x_train.float(), data.y_train
    x_val, y_val, x_test, y_test = data.x_val.float(), data.y_val, data.x_test.float(), data.y_test
    # Shifted inputs: the test digits rotated by 90 degrees, plus noise.
    x_ood = x_test.reshape(-1, 8, 8).rot90(1, dims=(1, 2)).reshape(-1, 64)
    x_ood = x_ood + 0.5 * torch.randn(x_ood.shape, generator=generator)

    # The model we are handed, frozen from here on: trained as deployed networks often are (a 64-256-256-256-10
    # MLP, Adam, no weight decay, no early stopping, 300 epochs to near-zero training loss), so it is overconfident.
    model = train_overconfident_mlp(x_train, y_train, generator=generator).eval()
    with torch.no_grad():
        frozen_out = model(x_test)
    results = {}
    for method, (x_fit, y_fit) in {"temperature": (x_val, y_val), "laplace": (x_train, y_train),
                                   "mahalanobis": (x_train, y_train)}.items():
        # ---- the five lines ----
        wrapped = wrap(model, method).fit(x_fit, y_fit)
        if method == "laplace":  # this model was trained without weight decay: pick the prior on held-out data
            wrapped.tune_prior_precision(x_val, y_val)
        out = wrapped(x_test)
        ood = wrapped(x_ood).predictive
        report = evaluate(out.predictive, y_test, ood=ood, title=f"Frozen digits MLP wrapped with {method!r}")
        # -------------------------
        assert torch.equal(out.output, frozen_out)  # the model's predictions are untouched
        # Every wrapper also has its own OOD score (Mahalanobis distance for "mahalanobis"):
        report.metrics[f"{method}_ood_score_auroc"] = float(ood_auroc(wrapped.ood_score(x_test), wrapped.ood_score(x_ood)))
        report.to_html(out_dir / method)
        results[method] = report.metrics
    frozen = evaluate(Predictive.from_logits(frozen_out), y_test, make_figures=False).metrics
    results = {"frozen (no wrapper)": frozen, **results}
    return results


def regressor_part(out_dir: Path, generator: torch.Generator) -> dict[str, dict[str, float]]:
    """BayesCap on a vector regressor: scikit-learn's diabetes data (standardised target).

    The MLP fits its training rows far better than new ones, so the cap learns the error law on the
    held-out validation rows; trained on the training rows it would learn the (too small) training errors.
    """
    data = load_sklearn("diabetes", test_fraction=0.25, val_fraction=0.25, seed=0)
    x_train, y_train = data.x_train.float(), data.y_train.float().unsqueeze(-1)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        model = nn.Sequential(nn.Linear(data.num_features, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(200):
        for idx in torch.randperm(len(y_train), generator=generator).split(32):
            opt.zero_grad()
            ((model(x_train[idx]) - y_train[idx]) ** 2).mean().backward()
            opt.step()
    model.eval()
    wrapped = wrap(model, "bayescap", num_epochs=100, progress=False).fit(data.x_val.float(), data.y_val.float().unsqueeze(-1))
    out = wrapped(data.x_test.float())
    report = evaluate(out.predictive, data.y_test.float().unsqueeze(-1), title="Frozen diabetes MLP wrapped with BayesCap")
    report.to_html(out_dir / "bayescap-regressor")
    return {"bayescap-regressor": report.metrics}


def denoiser_part(out_dir: Path, generator: torch.Generator) -> dict[str, dict[str, float]]:
    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16
    order = torch.randperm(len(images), generator=generator)
    train, test = images[order[:1200]], images[order[1200:]]
    noise_sd = 0.2
    model = train_denoiser(train, noise_sd, generator).eval()

    def noisy(x: Tensor, sd: float = noise_sd) -> Tensor:
        return x + sd * torch.randn(x.shape, generator=generator)

    # BayesCap trains caps on the model's outputs: here on a quarter of the training images, each with ten
    # fresh noise draws (the denoiser, too, saw fresh noise every epoch). Three caps from different
    # initialisations (num_caps=3) add their disagreement to the GGD variance; it grows on outputs unlike
    # the training ones. beta_min=0.3 keeps the GGD shape away from the heavy tails whose variance explodes.
    quarter = train[: len(train) // 4].repeat(10, 1, 1, 1)
    wrapped = wrap(model, "bayescap", hidden=32, num_blocks=2, num_caps=3, beta_min=0.3, num_epochs=20, progress=False)
    wrapped.fit(noisy(quarter), quarter)
    x_test = noisy(test)
    out = wrapped(x_test[:200])  # 200 test images (12800 pixels) keep the report quick
    report = evaluate(out.predictive, test[:200].reshape(200, -1), title="Frozen digits denoiser wrapped with BayesCap")
    # Shifted inputs: corrupted digits. The per-image mean variance is BayesCap's OOD score.
    shifted = {"heavier noise (sd 0.5)": noisy(test, 0.5), "inverted": noisy(1 - test),
               "rotated 90 degrees": noisy(test.rot90(1, dims=(2, 3))),
               "3x3 blur": noisy(nn.functional.avg_pool2d(test, 3, 1, 1))}
    clean_score = wrapped.ood_score(x_test)
    aurocs = {name: float(ood_auroc(clean_score, wrapped.ood_score(x))) for name, x in shifted.items()}
    print("BayesCap OOD AUROC, clean vs " + ", ".join(f"{name} {auroc:.3f}" for name, auroc in aurocs.items()))
    report.metrics["bayescap_ood_score_auroc"] = min(aurocs.values())  # the worst of the four corruptions
    report.to_html(out_dir / "bayescap-denoiser")
    return {"bayescap-denoiser": report.metrics}


def write_index(out_dir: Path, results: dict[str, dict[str, float]]) -> Path:
    columns = ("accuracy", "nll", "ece", "ood_auroc", "rmse", "crps", "coverage_90")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*columns, "own OOD score AUROC"))
    rows = []
    for name, metrics in results.items():
        own = next((v for k, v in metrics.items() if k.endswith("_ood_score_auroc")), float("nan"))
        cells = "".join(f"<td>{metrics.get(c, float('nan')):.4f}</td>" for c in columns) + f"<td>{own:.4f}</td>"
        link = f"<a href='{html.escape(name)}/report.html'>{html.escape(name)}</a>" if (out_dir / name).is_dir() else html.escape(name)
        rows.append(f"<tr><td>{link}</td>{cells}</tr>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>uqkit.wrap tutorial</title></head><body>"
            "<h1>Frozen models with uncertainty (uqkit.wrap)</h1><p>nan = not defined for that task. The "
            "denoiser's own OOD score AUROC is the worst over four corruptions of the test digits.</p>"
            f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table></body></html>")
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Give a frozen model uncertainty in five lines.")
    parser.add_argument("--out", default="wrap_tutorial", help="output directory for the reports")
    args = parser.parse_args()
    out_dir = Path(args.out)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    results = classifier_part(out_dir, generator)
    results.update(regressor_part(out_dir, generator))
    results.update(denoiser_part(out_dir, generator))
    for name, metrics in results.items():
        shown = {k: round(v, 4) for k, v in metrics.items() if k in ("accuracy", "nll", "ece", "ood_auroc", "rmse", "coverage_90")
                 or k.endswith("_ood_score_auroc")}
        print(f"{name:20s} {shown}")
    print(f"done in {time.perf_counter() - start:.0f} s; open {write_index(out_dir, results)}")


if __name__ == "__main__":
    main()
