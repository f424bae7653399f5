"""Post-hoc recalibration, sklearn-shaped: ``__init__`` stores arguments, ``fit`` returns ``self``.

Classification recalibrators take logits ``[N, C]`` (or ``[S, N, C]``; tensor or numpy) or a
classification `Predictive`. A Predictive built from probabilities is read through ``log(probs)``,
which temperature and Platt scaling treat exactly like logits (they differ by a per-row constant).
With ``S > 1`` draws the logit maps are applied to every draw and fitted on the NLL of the mixture;
the top-label maps (histogram binning, isotonic) act on the mixture probabilities.

Regression recalibrators are in `uqkit.calibration.recalibrate_regression`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression
from torch import Tensor

from uqkit._checks import check_labels, check_positive
from uqkit.calibration.predictive import Predictive
from uqkit.calibration.regression import check_count

#: LBFGS iterations for the recalibrators without a ``max_iter`` argument.
MAX_ITER = 200


# ------------------------------------------------------------------------------ logit maps
class _LogitMap:
    """A parametric map of per-draw logits, fitted by LBFGS on the mixture NLL of validation labels."""

    def fit(self, logits: object, labels: object) -> _LogitMap:
        """Fit on validation logits ``[N, C]`` (or a Predictive) and labels ``[N]``; returns ``self``."""
        z, log_weights = _per_draw_logits(logits)
        y = check_labels(labels, "labels", num_classes=z.shape[-1], length=z.shape[1])
        params = self._initial_params(z)
        z, y = z.detach().double(), y.to(z.device)
        log_w = torch.log_softmax(log_weights.double(), 0) if log_weights is not None else None
        max_iter = check_count(getattr(self, "max_iter", MAX_ITER), "max_iter")
        lbfgs_minimise(lambda: _mixture_nll(self._map(z, *params), log_w, y), params, max_iter)
        self._store(*(p.detach() for p in params))
        self.num_classes_ = z.shape[-1]
        return self

    def transform(self, logits: object) -> Predictive:
        """Recalibrated `Predictive` that keeps per-draw logits (for max-logit and energy OOD scores)."""
        check_fitted(self)
        z, log_weights = _per_draw_logits(logits)
        expected = getattr(self, "num_classes_", None)  # None when parameters were restored, not fitted
        if expected is not None and z.shape[-1] != expected:
            raise ValueError(f"logits: expected {expected} classes as in fit, got {z.shape[-1]}")
        params = [p.to(z) for p in self._fitted_params()]
        return Predictive.from_logits(self._map(z, *params), log_weights=log_weights)

    def predict_proba(self, logits: object) -> Tensor:
        """Recalibrated mixture probabilities ``[N, C]``."""
        return self.transform(logits).mixture_probs()


class TemperatureScaler(_LogitMap):
    """Temperature scaling ``softmax(z / T)`` with one ``T > 0`` (Guo et al. 2017).

    ``log T`` is fitted by LBFGS (strong Wolfe line search) on the NLL of cached logits. The argmax,
    hence accuracy, is unchanged.

    Args:
        init: starting temperature.
        max_iter: LBFGS iterations.

    Attributes:
        temperature_: the fitted ``T`` (float).
    """

    _fitted_attr = "temperature_"

    def __init__(self, init: float = 1.5, max_iter: int = 200) -> None:
        self.init = init
        self.max_iter = max_iter

    def _initial_params(self, z: Tensor) -> list[Tensor]:
        return [torch.tensor(math.log(check_positive(self.init, "init")), dtype=torch.float64, requires_grad=True)]

    @staticmethod
    def _map(z: Tensor, log_temperature: Tensor) -> Tensor:
        return z / log_temperature.exp()

    def _store(self, log_temperature: Tensor) -> None:
        self.temperature_ = float(log_temperature.exp())

    def _fitted_params(self) -> list[Tensor]:
        return [torch.tensor(math.log(self.temperature_))]


class VectorScaler(_LogitMap):
    """Vector scaling ``z * w + b`` with per-class ``w, b`` ``[C]`` (Guo et al. 2017); may change the argmax.

    Attributes:
        weight_: ``[C]``.
        bias_: ``[C]`` (defined up to a common constant, which softmax ignores).
    """

    _fitted_attr = "weight_"

    def _initial_params(self, z: Tensor) -> list[Tensor]:
        num_classes = z.shape[-1]
        return [
            torch.ones(num_classes, dtype=torch.float64, requires_grad=True),
            torch.zeros(num_classes, dtype=torch.float64, requires_grad=True),
        ]

    @staticmethod
    def _map(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return z * weight + bias

    def _store(self, weight: Tensor, bias: Tensor) -> None:
        self.weight_, self.bias_ = weight, bias

    def _fitted_params(self) -> list[Tensor]:
        return [self.weight_, self.bias_]


class PlattScaler(_LogitMap):
    """Platt scaling for two classes: ``P(class 1) = sigmoid(a * z + b)``, ``z = z_1 - z_0`` the log-odds.

    Fitted by maximum likelihood (LBFGS; no target smoothing), i.e. an unpenalised logistic
    regression on the log-odds.

    Attributes:
        coef_: ``a`` (float).
        intercept_: ``b`` (float).
    """

    _fitted_attr = "coef_"

    def _initial_params(self, z: Tensor) -> list[Tensor]:
        return [
            torch.ones((), dtype=torch.float64, requires_grad=True),
            torch.zeros((), dtype=torch.float64, requires_grad=True),
        ]

    @staticmethod
    def _map(z: Tensor, coef: Tensor, intercept: Tensor) -> Tensor:
        if z.shape[-1] != 2:
            raise ValueError(f"logits: PlattScaler needs exactly 2 classes, got {z.shape[-1]}")
        log_odds = coef * (z[..., 1] - z[..., 0]) + intercept
        return torch.stack([torch.zeros_like(log_odds), log_odds], dim=-1)

    def _store(self, coef: Tensor, intercept: Tensor) -> None:
        self.coef_, self.intercept_ = float(coef), float(intercept)

    def _fitted_params(self) -> list[Tensor]:
        return [torch.tensor(self.coef_), torch.tensor(self.intercept_)]


# ------------------------------------------------------------------------- top-label maps
class _TopLabelMap:
    """Recalibrates the top-label confidence ``max_k p_k`` of the mixture probabilities.

    The new confidence ``c'`` replaces the predicted class's probability; the other classes are
    rescaled by ``(1 - c') / (1 - c)`` so rows still sum to 1 (spread uniformly when ``c = 1``).
    A low ``c'`` may therefore change the argmax.
    """

    def fit(self, logits: object, labels: object) -> _TopLabelMap:
        """Fit on validation logits ``[N, C]`` (or a Predictive) and labels ``[N]``; returns ``self``."""
        probs = _mixture_probs(logits)
        y = check_labels(labels, "labels", num_classes=probs.shape[-1], length=probs.shape[0]).to(probs.device)
        confidence, predicted = probs.max(-1)
        self._fit_map(confidence, (predicted == y).to(probs.dtype))
        return self

    def predict_proba(self, logits: object) -> Tensor:
        """Recalibrated probabilities ``[N, C]``."""
        check_fitted(self)
        probs = _mixture_probs(logits)
        confidence, predicted = probs.max(-1)
        return _replace_top(probs, predicted, self._apply_map(confidence).clamp(0, 1))

    def transform(self, logits: object) -> Predictive:
        """Recalibrated single-draw `Predictive` (probabilities only)."""
        return Predictive.from_probs(self.predict_proba(logits))


class HistogramBinning(_TopLabelMap):
    """Histogram binning of the top-label confidence (Zadrozny & Elkan 2001; Guo et al. 2017).

    Bins are equal-mass: the inner edges are the ``m / num_bins`` quantiles of the validation
    confidences (lower order statistics, duplicates dropped), bins are right-closed, and each bin
    maps to the accuracy of its validation points. Every bin holds at least one validation point.

    Attributes:
        bin_edges_: ``[B - 1]`` inner edges.
        bin_values_: ``[B]`` accuracy per bin.
    """

    _fitted_attr = "bin_values_"

    def __init__(self, num_bins: int = 15) -> None:
        self.num_bins = num_bins

    def _fit_map(self, confidence: Tensor, correct: Tensor) -> None:
        num_bins = check_count(self.num_bins, "num_bins")
        levels = torch.arange(1, num_bins, dtype=confidence.dtype, device=confidence.device) / num_bins
        edges = torch.quantile(confidence, levels, interpolation="lower").unique()
        edges = edges[edges < confidence.max()]
        index = torch.searchsorted(edges, confidence)
        counts = torch.bincount(index, minlength=edges.numel() + 1).to(correct.dtype)
        self.bin_edges_ = edges
        self.bin_values_ = torch.bincount(index, weights=correct, minlength=edges.numel() + 1) / counts

    def _apply_map(self, confidence: Tensor) -> Tensor:
        return self.bin_values_.to(confidence)[torch.searchsorted(self.bin_edges_.to(confidence), confidence)]


class IsotonicCalibrator(_TopLabelMap):
    """Isotonic regression of correctness on the top-label confidence (Zadrozny & Elkan 2002).

    Fitted with sklearn's ``IsotonicRegression``; confidences are mapped by linear interpolation
    between its knots and clipped outside them (as sklearn's ``out_of_bounds="clip"``).

    Attributes:
        knots_x_, knots_y_: ``[K]`` knots of the non-decreasing map.
    """

    _fitted_attr = "knots_x_"

    def _fit_map(self, confidence: Tensor, correct: Tensor) -> None:
        self.knots_x_, self.knots_y_ = isotonic_knots(confidence, correct)

    def _apply_map(self, confidence: Tensor) -> Tensor:
        return interp(confidence, self.knots_x_.to(confidence), self.knots_y_.to(confidence))


# ------------------------------------------------------------------------------- helpers
def check_fitted(estimator: object) -> None:
    if not hasattr(estimator, estimator._fitted_attr):
        raise NotFittedError(f"{type(estimator).__name__} is not fitted yet; call fit(...) before using it")


def _classification(x: object) -> Predictive:
    """A classification Predictive from logits ``[N, C]`` / ``[S, N, C]`` or a Predictive."""
    pred = x if isinstance(x, Predictive) else Predictive.from_logits(x)
    if pred.task != "classification":
        raise ValueError("logits: expected logits or a classification Predictive, got a regression Predictive")
    return pred


def _per_draw_logits(x: object) -> tuple[Tensor, Tensor | None]:
    """Per-draw logits ``[S, N, C]`` (``log(probs)`` when the Predictive has none) and log weights."""
    pred = _classification(x)
    if pred.logits is not None:
        return pred.logits, pred.log_weights
    return torch.log(pred.probs.clamp_min(torch.finfo(pred.probs.dtype).tiny)), pred.log_weights


def _mixture_probs(x: object) -> Tensor:
    """Mixture probabilities ``[N, C]`` from logits or a classification Predictive."""
    return _classification(x).mixture_probs()


def _mixture_nll(z: Tensor, log_w: Tensor | None, y: Tensor) -> Tensor:
    """Mean NLL of labels ``y`` ``[N]`` under the mixture of ``softmax(z)`` ``[S, N, C]``."""
    log_p = torch.log_softmax(z, -1).gather(-1, y.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)
    if log_w is None:
        log_w = torch.full((z.shape[0],), -math.log(z.shape[0]), dtype=z.dtype, device=z.device)
    return -torch.logsumexp(log_p + log_w.view(-1, 1), 0).mean()


def lbfgs_minimise(loss_fn: Callable[[], Tensor], params: list[Tensor], max_iter: int) -> None:
    """Minimise ``loss_fn`` over ``params`` in place with LBFGS and a strong Wolfe line search."""
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)


def _replace_top(probs: Tensor, predicted: Tensor, new_top: Tensor) -> Tensor:
    """Set ``probs[n, predicted[n]] = new_top[n]`` and rescale the other classes to keep rows summing to 1."""
    is_top = torch.nn.functional.one_hot(predicted, probs.shape[-1]).bool()
    others = probs.masked_fill(is_top, 0)
    rest = others.sum(-1, keepdim=True)
    uniform = (~is_top).to(probs.dtype) / (probs.shape[-1] - 1)
    share = torch.where(rest > 0, others / torch.where(rest > 0, rest, torch.ones_like(rest)), uniform)
    return torch.where(is_top, new_top.unsqueeze(-1), share * (1 - new_top.unsqueeze(-1)))


def isotonic_knots(x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Knots of the non-decreasing least-squares fit of ``target`` on ``x`` (values in [0, 1])."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(x.detach().cpu().numpy(), target.detach().cpu().numpy())
    knots = np.stack([iso.X_thresholds_, iso.y_thresholds_]).astype(np.float64)
    knots_x, knots_y = torch.from_numpy(knots).to(dtype=x.dtype, device=x.device)
    return knots_x, knots_y


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation through increasing ``xp``, constant outside ``[xp[0], xp[-1]]``."""
    if xp.numel() == 1:
        return fp.expand(x.shape).clone()
    x = x.clamp(xp[0], xp[-1])
    index = torch.searchsorted(xp, x, right=True).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


