"""Last-layer Laplace approximation for a frozen classifier, with the GLM (linearised) predictive.

With features ``phi(x)`` entering the last ``nn.Linear`` (weights ``W [C, d]``, bias ``b [C]``),
the logits ``f = W phi + b`` are linear in ``theta = [W | b]``, so the generalised Gauss-Newton
matrix of the cross-entropy is its exact Hessian:

    H = sum_n (diag(p_n) - p_n p_n^T) (x) phi~_n phi~_n^T,   phi~ = [phi, 1],   p_n = softmax(f_n)

(ordering ``theta`` as ``[C, d + 1]`` row-major). With a prior ``N(0, 1/lambda I)`` the posterior is
``N(theta_map, (H + lambda I)^-1)`` around the frozen weights, and the logits' predictive is exactly
Gaussian, ``N(f, Sigma_f)`` with ``Sigma_f[c, k] = phi~^T Sigma[c, :, k, :] phi~``. Class probabilities:

- "scaled" (default): ``softmax(f / sqrt(1 + pi/8 v))`` with one variance per point,
  ``v = trace(Sigma_f) / C``: the probit approximation with every logit given the mean logit variance.
  One factor divides all of a point's logits, so its predicted class is the frozen model's.
- "probit": ``softmax(f / sqrt(1 + pi/8 diag Sigma_f))``, each class its own variance (Daxberger et al.'s
  default); classes with different variances can change order, and so the predicted class.
- "mc": Monte Carlo draws of the logits from ``N(f, Sigma_f)``.

``lambda`` defaults to the maximiser of the Laplace evidence (MacKay), found in closed form
per eigenvalue of ``H``; `LastLayerLaplace.tune_prior_precision` instead picks it by the NLL of
held-out data (better for models trained without weight decay, whose evidence-optimal posterior can
be far too wide). Daxberger et al., "Laplace Redux", NeurIPS 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from scipy.optimize import brentq
from torch import Tensor, nn

from uqkit._checks import check_labels, check_positive
from uqkit.calibration.predictive import Predictive
from uqkit.wrap.base import FrozenWrapper, LayerTap, check_choice, check_count, find_layer, last_linear_name

_LOG_LAMBDA_RANGE = (-30.0, 30.0)  # search range of log(prior precision) for the evidence maximum
#: Default grid of prior precisions for `LastLayerLaplace.tune_prior_precision`: 10^-4 ... 10^4.
PRIOR_PRECISION_GRID = tuple(10.0 ** (k / 4) for k in range(-16, 17))


def last_layer_hessian(features: Tensor, logits: Tensor, *, bias: bool, chunk_size: int = 256) -> Tensor:
    """Cross-entropy Hessian w.r.t. the last layer's ``[C, d (+1)]`` parameters, ``[C*(d+1), C*(d+1)]``.

    Args:
        features: ``[N, d]`` inputs of the last layer.
        logits: ``[N, C]`` its outputs.
        bias: whether the layer has a bias (a constant feature 1 is appended).
        chunk_size: rows per accumulation step (bounds memory at ``chunk_size * C^2 * d`` entries).
    """
    phi = _augment(features.to(torch.float64), bias)
    probs = torch.softmax(logits.to(torch.float64), -1)
    num_classes, width = probs.shape[1], phi.shape[1]
    hessian = torch.zeros(num_classes, num_classes, width, width, dtype=torch.float64, device=phi.device)
    for rows in torch.arange(len(phi), device=phi.device).split(chunk_size):
        p, f = probs[rows], phi[rows]
        curvature = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # [n, C, C]
        weighted = (curvature.reshape(len(rows), -1, 1) * f.unsqueeze(1)).reshape(len(rows), -1)  # [n, C*C*w]
        hessian += (weighted.T @ f).reshape(num_classes, num_classes, width, width)
    return hessian.permute(0, 2, 1, 3).reshape(num_classes * width, num_classes * width)


def evidence_prior_precision(hessian_eigenvalues: Tensor, theta: Tensor) -> float:
    """The prior precision maximising the Laplace evidence ``(P/2) log lam - lam/2 |theta|^2 - 1/2 log det(H + lam I)``.

    The stationarity condition ``sum_i e_i / (lam (e_i + lam)) = |theta|^2`` over the eigenvalues
    ``e_i`` of ``H`` has one root, found by Brent's method on ``log lam``.

    Args:
        hessian_eigenvalues: ``[P]`` eigenvalues of the Hessian ``H`` (round-off negatives count as 0).
        theta: the ``P`` MAP parameters, any shape.
    """
    eigenvalues = hessian_eigenvalues.to(torch.float64).clamp_min(0).cpu().numpy()
    sq_norm = float((theta.to(torch.float64) ** 2).sum())
    if sq_norm == 0 or eigenvalues.max() == 0:
        raise ValueError(
            "model: the evidence has no maximum (zero last-layer weights or zero curvature); pass prior_precision=VALUE"
        )

    def stationarity(log_lam: float) -> float:
        lam = math.exp(log_lam)
        return float((eigenvalues / (lam * (eigenvalues + lam))).sum()) - sq_norm

    lo, hi = _LOG_LAMBDA_RANGE
    if stationarity(lo) <= 0 or stationarity(hi) >= 0:
        raise ValueError("model: the evidence maximum lies outside prior precisions exp(+-30); pass prior_precision=VALUE")
    return math.exp(brentq(stationarity, lo, hi, xtol=1e-12))


class LastLayerLaplace(FrozenWrapper, method="laplace"):
    """A frozen classifier with a Laplace posterior over its last linear layer.

    Args:
        model: the frozen classifier; its output must be the logits of ``last_layer``.
        last_layer: name of the final ``nn.Linear``; None finds the last one.
        prior_precision: a number, or "evidence" to maximise the Laplace evidence at fit time.
        link_approx: "scaled" (probit with one shared variance per point; keeps the predicted class), "probit"
            (per-class variances) or "mc" (``num_samples`` logit draws); see the module docstring.
        num_samples: Monte Carlo draws for ``link_approx="mc"``.
        batch_size: rows per frozen forward pass while fitting.
        seed: seeds the Monte Carlo draws (each call starts from it, so calls are reproducible).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        last_layer: str | None = None,
        prior_precision: float | Literal["evidence"] = "evidence",
        link_approx: Literal["scaled", "probit", "mc"] = "scaled",
        num_samples: int = 100,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        self.last_layer = last_linear_name(self.model, "last_layer") if last_layer is None else last_layer
        layer = find_layer(self.model, self.last_layer, "last_layer")
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"last_layer: expected an nn.Linear, {self.last_layer!r} is a {type(layer).__name__}")
        self._layer = [layer]  # a list keeps it out of this module's own state
        if isinstance(prior_precision, str) and prior_precision != "evidence":
            raise ValueError(f"prior_precision: expected a number > 0 or 'evidence', got {prior_precision!r}")
        if prior_precision != "evidence":
            prior_precision = check_positive(prior_precision, "prior_precision")
        self.prior_precision = prior_precision
        self.link_approx = check_choice(link_approx, "link_approx", ("scaled", "probit", "mc"))
        self.num_samples = check_count(num_samples, "num_samples")
        self.batch_size = check_count(batch_size, "batch_size")
        self.seed = check_count(seed, "seed", minimum=0)

    def fit(self, data: object, y: object = None) -> LastLayerLaplace:
        """Accumulate the last-layer Hessian on labelled data ``(x, y)`` and form the posterior."""
        run = self._collect(data, y, batch_size=self.batch_size, need_target=True)
        logits = run.output
        if logits.ndim != 2:
            raise ValueError(f"model: expected logits of shape [N, C], got {tuple(logits.shape)}")
        check_labels(run.target, "y", num_classes=logits.shape[1], length=len(logits))
        hessian = last_layer_hessian(run.features.reshape(len(logits), -1), logits, bias=self._has_bias)
        self._set_posterior(hessian, self.prior_precision)
        self.fitted_ = True
        return self

    def tune_prior_precision(
        self, data: object, y: object = None, *, grid: Sequence[float] = PRIOR_PRECISION_GRID
    ) -> LastLayerLaplace:
        """Set the prior precision to the value in ``grid`` with the lowest predictive NLL on held-out ``(x, y)``.

        Cheap per grid value: the held-out Jacobians are projected once onto the Hessian's eigenbasis,
        after which ``Sigma_f = (J V) diag(1 / (e + lambda)) (J V)^T``. Returns self.
        """
        self._require_fitted()
        values = [check_positive(v, "grid") for v in grid]
        if not values:
            raise ValueError("grid: expected at least one prior precision")
        run = self._collect(data, y, batch_size=self.batch_size, need_target=True)
        labels = check_labels(run.target, "y", num_classes=run.output.shape[1], length=len(run.output))
        projected = self._project(run.features)  # [N, C, P]
        losses = []
        for value in values:
            inverse = 1 / (self.hessian_eigenvalues_.clamp_min(0) + value)
            cov = torch.einsum("ncp,p,nkp->nck", projected, inverse, projected)
            losses.append(float(-self._predictive_from(run.output, cov).log_prob(labels).mean()))
        self.tuning_nll_ = dict(zip(values, losses))
        best = values[min(range(len(values)), key=losses.__getitem__)]
        self._set_posterior(self.hessian_, best, eigen=(self.hessian_eigenvalues_, self.hessian_eigenvectors_))
        return self

    def logit_covariance(self, features: Tensor) -> Tensor:
        """``[N, C, C]`` predictive covariance of the logits for last-layer inputs ``features [N, d]``."""
        phi = self._phi(features)
        num_classes, width = self._layer[0].out_features, phi.shape[1]
        cov = self.posterior_covariance_.reshape(num_classes, width, num_classes, width)
        return torch.einsum("ni,cikj,nj->nck", phi, cov, phi)

    # ------------------------------------------------------------------------------ internals
    @property
    def _has_bias(self) -> bool:
        return self._layer[0].bias is not None

    def _theta(self) -> Tensor:
        layer = self._layer[0]
        w = layer.weight.detach().to(torch.float64)
        return torch.cat([w, layer.bias.detach().to(torch.float64).unsqueeze(-1)], 1) if self._has_bias else w

    def _tap(self) -> LayerTap:
        return LayerTap(self._layer[0], "input", name=self.last_layer, gives_output=True)

    def _phi(self, features: Tensor) -> Tensor:
        return _augment(features.reshape(len(features), -1).to(torch.float64), self._has_bias)

    def _project(self, features: Tensor) -> Tensor:
        """``[N, C, P]``: each point's logit Jacobian ``J_n = I_C (x) phi~_n^T`` times the Hessian's eigenvectors."""
        phi = self._phi(features)
        vectors = self.hessian_eigenvectors_.reshape(self._layer[0].out_features, phi.shape[1], -1)
        return torch.einsum("ni,cip->ncp", phi, vectors)

    def _set_posterior(
        self, hessian: Tensor, prior_precision: float | str, eigen: tuple[Tensor, Tensor] | None = None
    ) -> None:
        """Posterior covariance ``(H + lam I)^-1`` from one eigendecomposition of ``H`` (computed unless given)."""
        eigenvalues, vectors = torch.linalg.eigh(hessian) if eigen is None else eigen
        if prior_precision == "evidence":
            prior_precision = evidence_prior_precision(eigenvalues, self._theta())
        self.register_buffer("hessian_", hessian)
        self.register_buffer("hessian_eigenvalues_", eigenvalues, persistent=False)
        self.register_buffer("hessian_eigenvectors_", vectors, persistent=False)
        self.register_buffer("prior_precision_", torch.tensor(float(prior_precision), dtype=torch.float64))
        inverse = 1 / (eigenvalues.clamp_min(0) + self.prior_precision_)
        self.register_buffer("posterior_covariance_", (vectors * inverse) @ vectors.T)

    def _predictive(self, output: Tensor, features: Tensor | None) -> Predictive:
        return self._predictive_from(output, self.logit_covariance(features))

    def _predictive_from(self, output: Tensor, cov: Tensor) -> Predictive:
        """The class predictive from the MAP logits ``[N, C]`` and their covariance ``[N, C, C]``."""
        logits = output.to(torch.float64)
        if self.link_approx != "mc":
            var = cov.diagonal(dim1=-2, dim2=-1)  # [N, C]
            if self.link_approx == "scaled":
                var = var.mean(-1, keepdim=True)  # [N, 1]
            return Predictive.from_logits(logits / torch.sqrt(1 + math.pi / 8 * var))
        eigenvalues, vectors = torch.linalg.eigh(cov)
        root = vectors * eigenvalues.clamp_min(0).sqrt().unsqueeze(-2)  # [N, C, C], root @ root^T = cov
        generator = torch.Generator(device=logits.device).manual_seed(self.seed)
        shape = (self.num_samples, *logits.shape)
        noise = torch.randn(shape, generator=generator, dtype=logits.dtype, device=logits.device)
        return Predictive.from_logits(logits + torch.einsum("nck,snk->snc", root, noise))

    def _fitted_tensors(self) -> dict[str, Tensor]:
        return {"hessian": self.hessian_, "prior_precision": self.prior_precision_}

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        self._set_posterior(tensors["hessian"], float(tensors["prior_precision"]))


def _augment(features: Tensor, bias: bool) -> Tensor:
    """``[N, d] -> [N, d + 1]`` with a trailing column of ones when the layer has a bias."""
    return torch.cat([features, torch.ones_like(features[:, :1])], 1) if bias else features
