"""How much a frozen denoiser's *outputs* say about corrupted inputs: reference scores for BayesCap's OOD AUROC.

BayesCap scores a sample from the frozen model's output alone, so what the outputs carry limits what any cap can
do. For the digits denoiser of `bench_wrap.py` (same seed, same splits, same corruptions), clean vs corrupted test
inputs, AUROC of:

- the denoiser's true per-image squared error (against the corrupted clean image): what a perfect error predictor
  would score;
- a Ledoit-Wolf Gaussian fitted to the outputs on the cap's training inputs (Mahalanobis distance; unsupervised);
- logistic regression and an MLP trained on validation outputs labelled clean / corrupted (supervised: each
  knows the corruption, so a reference, not a method).

Run: ``python benchmarks/bench_wrap_reference_ood.py [--seed 0] [--threads 1]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier

from bench_wrap import (
    NOISE_SD,
    add_noise,
    cap_training_pairs,
    corruptions,
    digit_images,
    noise_free_corruptions,
    show,
    split_rows,
    train_denoiser,
)
from _common import context_str


def auroc(clean: np.ndarray, bad: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(bad))], np.r_[clean, bad]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Reference OOD scores from the frozen denoiser's outputs, seed {args.seed} [{context_str()}]")
    gen = torch.Generator().manual_seed(args.seed)
    images = digit_images()
    train, val, test = split_rows(len(images), gen)
    model = train_denoiser(images[train], gen)
    cap_inputs, _ = cap_training_pairs(images[train], gen)
    with torch.no_grad():
        flat = lambda x: model(x).flatten(1).numpy()  # noqa: E731
        fit_outputs = flat(cap_inputs)
        val_clean, val_bad = flat(add_noise(images[val], NOISE_SD, gen)), {k: flat(x) for k, x in corruptions(images[val], gen).items()}
        test_clean_out = model(add_noise(images[test], NOISE_SD, gen))
        test_bad_out = {k: model(x) for k, x in corruptions(images[test], gen).items()}
    gaussian = LedoitWolf().fit(fit_outputs)
    error_clean = (test_clean_out - images[test]).pow(2).flatten(1).mean(1).numpy()
    test_clean = test_clean_out.flatten(1).numpy()
    targets = noise_free_corruptions(images[test])
    for name, out in test_bad_out.items():
        target, bad = targets[name][0], out.flatten(1).numpy()
        x_fit, y_fit = np.r_[val_clean, val_bad[name]], np.r_[np.zeros(len(val_clean)), np.ones(len(val_bad[name]))]
        logistic = LogisticRegression(max_iter=5000).fit(x_fit, y_fit)
        mlp = MLPClassifier((128,), alpha=1e-3, max_iter=2000, random_state=args.seed).fit(x_fit, y_fit)
        cells = {
            "true error": auroc(error_clean, (out - target).pow(2).flatten(1).mean(1).numpy()),
            "output Gaussian": auroc(gaussian.mahalanobis(test_clean), gaussian.mahalanobis(bad)),
            "supervised logistic": auroc(logistic.decision_function(test_clean), logistic.decision_function(bad)),
            "supervised MLP": auroc(mlp.predict_proba(test_clean)[:, 1], mlp.predict_proba(bad)[:, 1]),
        }
        show(f"  {name}", "  ".join(f"{k} {v:.3f}" for k, v in cells.items()))


if __name__ == "__main__":
    main()
