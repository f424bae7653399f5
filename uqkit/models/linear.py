"""Bayesian linear regression with a conjugate Gaussian prior, solved in closed form.

Model, with features ``phi(x) = [x, 1]`` (a bias column appended last, ``p = d + 1``)::

    w ~ N(0, I / prior_precision),    y | x, w ~ N(phi(x)^T w, noise_var)

The posterior is ``N(m, S)`` with ``S = (a I + Phi^T Phi / noise_var)^-1`` and
``m = S Phi^T y / noise_var`` (``a`` the prior precision). The marginal likelihood (evidence) is
``y ~ N(0, noise_var I + Phi Phi^T / a)``.

Hyperparameters left as None are chosen by type-II maximum likelihood (maximising the evidence).
With the thin SVD ``Phi = U diag(s) V^T``, ``c = U^T y`` and ``R = |y - U c|^2`` the evidence costs
O(min(n, p)) per evaluation::

    -2 log p(y) = sum_i [log d_i + c_i^2 / d_i] + (n - r) log noise_var + R / noise_var + n log 2 pi,
    d_i = noise_var + s_i^2 / prior_precision,   r = min(n, p).

The search runs over the ratio ``lam = noise_var * prior_precision`` (in squared feature units, like
``s_i^2``), inside ``[eps * max s^2, max s^2 / eps]``, with Brent's bounded method (scipy). When both
are free, the noise variance has a closed form given ``lam``: ``(sum_i c_i^2 / (1 + s_i^2 / lam) + R) / n``,
so the search stays one-dimensional. Unlike MacKay's fixed-point updates, which crawl for thousands of
iterations when the maximum lies on a boundary (noise -> 0 or prior precision -> inf, common when
``n < p``), the bounded search ends in a few dozen evaluations either way.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize
from torch import Tensor

from uqkit._checks import check_float, check_positive, check_same_length
from uqkit.calibration.predictive import Predictive


class BayesianLinearRegression:
    """Conjugate Bayesian linear regression with optional evidence maximisation.

    Args:
        prior_precision: precision of the zero-mean isotropic Gaussian prior on the weights and the
            bias (1 / prior variance); None chooses it by maximising the evidence.
        noise_var: observation noise variance (squared target units); None chooses it by maximising
            the evidence.
        max_iter: most iterations of the hyperparameter search.
        tol: absolute tolerance on ``log(noise_var * prior_precision)`` in the search (which also
            stops at ~1.5e-8 relative, the resolution of a search on function values).

    Fitted attributes:
        posterior_mean_: ``[d + 1]`` posterior mean of the weights, bias last.
        posterior_cov_: ``[d + 1, d + 1]`` posterior covariance.
        noise_var_: the noise variance used (given or estimated).
        prior_precision_: the prior precision used (given or estimated).
        log_evidence_: log marginal likelihood ``log p(y | x)`` at those hyperparameters (nats).
        num_iter_: search iterations run (0 when both hyperparameters are given).
    """

    def __init__(
        self,
        prior_precision: float | None = 1.0,
        noise_var: float | None = None,
        *,
        max_iter: int = 1000,
        tol: float = 1e-10,
    ) -> None:
        self.prior_precision = None if prior_precision is None else check_positive(prior_precision, "prior_precision")
        self.noise_var = None if noise_var is None else check_positive(noise_var, "noise_var")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
        self.max_iter = max_iter
        self.tol = check_positive(tol, "tol")

    def fit(self, x: object, y: object) -> BayesianLinearRegression:
        """Compute the posterior (and the estimated hyperparameters) from ``x [n, d]`` and ``y [n]``."""
        x = check_float(x, "x", ndim=2).to(torch.float64)
        y = check_float(y, "y", ndim=1).to(torch.float64)
        check_same_length("x", x, "y", y)
        phi = _with_bias(x)
        num_params = phi.shape[1]
        u, sing, vh = torch.linalg.svd(phi, full_matrices=False)
        coords = u.T @ y
        spectrum = _Spectrum(
            eigvals=(sing**2).cpu().numpy(),
            coords=coords.cpu().numpy(),
            resid=float(((y - u @ coords) ** 2).sum()),
            num_points=int(y.shape[0]),
        )
        prior_prec, noise, self.num_iter_ = self._choose_hyperparameters(spectrum, float((y**2).mean()))

        # Along Vh's rows the posterior precision is prior_prec + s^2 / noise; on the null space of Phi
        # (p > n) the posterior equals the prior.
        precision_eig = prior_prec + sing**2 / noise
        cov = (vh.T / precision_eig) @ vh
        if vh.shape[0] < num_params:
            cov = cov + (torch.eye(num_params, dtype=cov.dtype, device=cov.device) - vh.T @ vh) / prior_prec
        self.posterior_mean_ = vh.T @ (sing * coords / (noise * prior_prec + sing**2))
        self.posterior_cov_ = cov
        self.noise_var_ = noise
        self.prior_precision_ = prior_prec
        self.log_evidence_ = spectrum.log_evidence(prior_prec, noise)
        return self

    def predict(self, x: object) -> Predictive:
        """Gaussian posterior predictive of ``y`` at ``x [m, d]``.

        Mean ``phi^T m``, variance ``noise_var + phi^T S phi`` (noise plus weight uncertainty).
        """
        if not hasattr(self, "posterior_mean_"):
            raise RuntimeError("predict: call fit(x, y) first")
        x = check_float(x, "x", ndim=2).to(torch.float64)
        num_features = self.posterior_mean_.shape[0] - 1
        if x.shape[1] != num_features:
            raise ValueError(f"x: expected {num_features} features as in fit, got shape {tuple(x.shape)}")
        phi = _with_bias(x)
        weight_var = ((phi @ self.posterior_cov_) * phi).sum(-1)
        return Predictive.gaussian(phi @ self.posterior_mean_, self.noise_var_ + weight_var)

    def _choose_hyperparameters(self, spectrum: _Spectrum, mean_square: float) -> tuple[float, float, int]:
        """``(prior_precision, noise_var, iterations)``: the given values, or evidence maximisers."""
        given_prior, given_noise = self.prior_precision, self.noise_var
        if given_prior is not None and given_noise is not None:
            return given_prior, given_noise, 0
        eps = float(np.finfo(np.float64).eps)
        # Keeps the profiled noise positive when y is (numerically) all zeros.
        noise_floor = eps * (mean_square if mean_square > 0 else 1.0)

        def hyperparameters(log_ratio: float) -> tuple[float, float]:
            ratio = math.exp(log_ratio)
            if given_noise is not None:
                return ratio / given_noise, given_noise
            if given_prior is not None:
                return given_prior, ratio / given_prior
            noise = max(spectrum.profile_noise(ratio), noise_floor)
            return ratio / noise, noise

        top = float(spectrum.eigvals.max())
        result = optimize.minimize_scalar(
            lambda log_ratio: -spectrum.log_evidence(*hyperparameters(log_ratio)),
            bounds=(math.log(eps * top), math.log(top / eps)),
            method="bounded",
            options={"xatol": self.tol, "maxiter": self.max_iter},
        )
        if not result.success:
            warnings.warn(
                f"BayesianLinearRegression: evidence maximisation did not converge in {result.nit} iterations "
                f"({result.message}); raise max_iter or tol",
                RuntimeWarning,
                stacklevel=3,
            )
        return (*hyperparameters(float(result.x)), int(result.nit))


@dataclass(frozen=True)
class _Spectrum:
    """What the evidence needs from the data: squared singular values of Phi, ``U^T y``, ``|y - U U^T y|^2``."""

    eigvals: np.ndarray
    coords: np.ndarray
    resid: float
    num_points: int

    def log_evidence(self, prior_precision: float, noise_var: float) -> float:
        """``log p(y)`` (nats) under ``y ~ N(0, noise_var I + Phi Phi^T / prior_precision)``."""
        d = noise_var + self.eigvals / prior_precision
        num_rest = self.num_points - self.eigvals.shape[0]
        return -0.5 * float(
            np.log(d).sum()
            + (self.coords**2 / d).sum()
            + num_rest * math.log(noise_var)
            + self.resid / noise_var
            + self.num_points * math.log(2 * math.pi)
        )

    def profile_noise(self, ratio: float) -> float:
        """The evidence-maximising noise variance when ``noise_var * prior_precision = ratio``."""
        return float((self.coords**2 / (1 + self.eigvals / ratio)).sum() + self.resid) / self.num_points


def _with_bias(x: Tensor) -> Tensor:
    """``[n, d] -> [n, d + 1]`` with a column of ones appended."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
