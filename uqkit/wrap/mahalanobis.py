"""Mahalanobis OOD scores from class-conditional Gaussians on a frozen layer's features.

Features ``z`` are read by a forward hook (the input of the last ``nn.Linear`` by default, or a
named layer's output; feature maps ``[N, C, H, W]`` are averaged over their spatial positions).
Each class ``c`` gets a mean ``mu_c``; all classes share one covariance ``Sigma`` of the
class-centred features (Lee et al., NeurIPS 2018), estimated empirically or with Ledoit-Wolf
shrinkage toward ``tr(S)/d * I`` (as in Rippel et al., "Modeling the Distribution of Normal Data in
Pre-Trained Deep Features for Anomaly Detection", ICPR 2020). The score is the squared distance to
the nearest class, ``min_c (z - mu_c)^T Sigma^-1 (z - mu_c)``; without labels, one Gaussian.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from uqkit._checks import check_labels
from uqkit.calibration.predictive import Predictive
from uqkit.wrap.base import FrozenWrapper, LayerTap, check_choice, check_count, find_layer, last_linear_name


def empirical_covariance(residuals: Tensor) -> Tensor:
    """``[d, d]`` maximum-likelihood covariance ``R^T R / N`` of centred ``residuals [N, d]``."""
    return residuals.T @ residuals / len(residuals)


def ledoit_wolf_covariance(residuals: Tensor) -> tuple[Tensor, float]:
    """Ledoit-Wolf (2004) shrinkage of the covariance of centred ``residuals [N, d]``.

    ``(1 - s) S + s m I`` with ``S = R^T R / N``, ``m = tr(S) / d`` and the shrinkage
    ``s = min(b, c) / c``, where ``c = |S - m I|_F^2`` and ``b = (sum_n |r_n|^4 / N - |S|_F^2) / N``
    estimates the sampling error of ``S``.

    Returns:
        The ``[d, d]`` covariance and the shrinkage ``s`` in [0, 1].
    """
    n, d = residuals.shape
    sample = empirical_covariance(residuals)
    target = torch.trace(sample) / d
    identity = torch.eye(d, dtype=sample.dtype, device=sample.device)
    spread = float(((sample - target * identity) ** 2).sum())
    error = float((((residuals**2).sum(1) ** 2).sum() / n - (sample**2).sum()) / n)
    shrinkage = 0.0 if spread == 0 else min(error, spread) / spread
    return (1 - shrinkage) * sample + shrinkage * target * identity, shrinkage


def pool_features(features: Tensor) -> Tensor:
    """``[N, d]`` as is; ``[N, C, ...]`` averaged over everything after the channel dimension."""
    return features if features.ndim == 2 else features.reshape(*features.shape[:2], -1).mean(-1)


class MahalanobisWrapper(FrozenWrapper, method="mahalanobis"):
    """A frozen classifier with a Mahalanobis OOD score on one layer's features.

    Its predictive is the classifier's own softmax (unchanged); the method adds `ood_score`.

    Args:
        model: the frozen classifier (outputs logits ``[N, C]``).
        layer: name of the layer whose output gives the features; None takes the input of the last ``nn.Linear``.
        covariance: "ledoit_wolf" (shrunk, always invertible) or "empirical" (needs more samples than features).
        batch_size: rows per frozen forward pass while fitting.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: str | None = None,
        covariance: Literal["ledoit_wolf", "empirical"] = "ledoit_wolf",
        batch_size: int = 256,
    ) -> None:
        super().__init__(model)
        self.layer = layer
        name = last_linear_name(self.model, "layer") if layer is None else layer
        self._hooked = (find_layer(self.model, name, "layer"), name)
        self.covariance = check_choice(covariance, "covariance", ("ledoit_wolf", "empirical"))
        self.batch_size = check_count(batch_size, "batch_size")

    def fit(self, data: object, y: object = None) -> MahalanobisWrapper:
        """Fit class means and the shared covariance on ``(x, y)`` (or ``x`` alone: one Gaussian)."""
        run = self._collect(data, y, batch_size=self.batch_size, need_target=False)
        z = pool_features(run.features.to(torch.float64))
        if run.target is None:
            labels = torch.zeros(len(z), dtype=torch.long, device=z.device)
        else:
            num_outputs = run.output.shape[-1] if run.output.ndim == 2 else None  # a classifier's classes
            labels = check_labels(run.target, "y", num_classes=num_outputs, length=len(z)).to(z.device)
        classes, index = torch.unique(labels, return_inverse=True)
        num_classes, (num_samples, num_features) = len(classes), z.shape
        minimum = num_classes + (num_features if self.covariance == "empirical" else 1)
        if num_samples < minimum:
            what = f"num_classes + num_features = {num_classes} + {num_features}" if self.covariance == "empirical" \
                else f"num_classes + 1 = {num_classes} + 1"
            raise ValueError(
                f"data: the {self.covariance} covariance needs at least {minimum} fitting samples ({what}), got {num_samples}"
            )
        counts = torch.bincount(index, minlength=num_classes).to(z.dtype)
        sums = torch.zeros(num_classes, num_features, dtype=z.dtype, device=z.device).index_add_(0, index, z)
        means = sums / counts[:, None]
        residuals = z - means[index]
        if self.covariance == "empirical":
            cov, shrinkage = empirical_covariance(residuals), 0.0
        else:
            cov, shrinkage = ledoit_wolf_covariance(residuals)
        self._set_gaussians(classes, means, cov, torch.tensor(shrinkage, dtype=torch.float64))
        self.fitted_ = True
        return self

    def distances(self, features: Tensor) -> Tensor:
        """``[N, K]`` squared Mahalanobis distances of ``features`` (as hooked) to every class mean."""
        z = pool_features(features.to(torch.float64))
        diff = (z.unsqueeze(1) - self.means_).reshape(-1, z.shape[1])  # [N*K, d]
        white = torch.linalg.solve_triangular(self.cholesky_, diff.T, upper=False)
        return (white**2).sum(0).reshape(len(z), -1)

    # ------------------------------------------------------------------------------ internals
    def _tap(self) -> LayerTap:
        layer, name = self._hooked
        return LayerTap(layer, "input" if self.layer is None else "output", name=name)

    def _set_gaussians(self, classes: Tensor, means: Tensor, cov: Tensor, shrinkage: Tensor) -> None:
        cholesky, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError(
                "covariance: the empirical covariance of the features is singular (constant or collinear features); "
                "use covariance='ledoit_wolf'"
            )
        self.register_buffer("classes_", classes)
        self.register_buffer("means_", means)
        self.register_buffer("covariance_", cov)
        self.register_buffer("cholesky_", cholesky)
        self.register_buffer("shrinkage_", shrinkage)

    def _predictive(self, output: Tensor, features: Tensor | None) -> Predictive:
        return Predictive.from_logits(output)

    def _ood_score(self, output: Tensor, features: Tensor | None) -> Tensor:
        """Squared Mahalanobis distance to the nearest class mean."""
        return self.distances(features).amin(-1)

    def _fitted_tensors(self) -> dict[str, Tensor]:
        return {"classes": self.classes_, "means": self.means_, "covariance": self.covariance_,
                "shrinkage": self.shrinkage_}

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        self._set_gaussians(tensors["classes"], tensors["means"], tensors["covariance"], tensors["shrinkage"])
