"""Post-hoc recalibration of regression predictives, sklearn-shaped (``fit`` returns ``self``).

Each recalibrator takes a regression `Predictive` and targets ``[N]`` / ``[N, D]`` and returns a new
`Predictive` from ``transform``: variance scaling (Gaussian predictives) and Kuleshov et al.'s
isotonic recalibration of the predictive CDF (any predictive).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal, constraints

from uqkit.calibration.predictive import Predictive
from uqkit.calibration.recalibrate import MAX_ITER, check_fitted, interp, isotonic_knots, lbfgs_minimise
from uqkit.calibration.regression import (
    QUADRATURE_NUM_INTERVALS,
    check_regression_pred,
    check_regression_targets,
    mixture_cdf,
    simpson,
)

#: Tail probability cut off on each side when integrating the moments of a `RecalibratedDistribution`;
#: the second moment loses about ``MOMENT_TAIL_PROB`` times the squared width of the integration range.
MOMENT_TAIL_PROB = 1e-9


class VarianceScaler:
    """One scale ``s^2`` on the predictive variance of a Gaussian (mixture), fitted by maximum likelihood.

    The recalibrated predictive is ``m + s (Y - m)`` with ``m`` the mixture mean: component means move
    to ``m + s (mu_i - m)`` and scales to ``s sigma_i``, so the total variance becomes ``s^2 Var``
    (Levi et al. 2019; Laves et al. 2020). For one Gaussian ``s^2 = mean(r^2 / sigma^2)`` in closed
    form; for mixtures ``log s`` is fitted by LBFGS from the moment estimate.

    Attributes:
        scale_: ``s^2`` (float).
    """

    _fitted_attr = "scale_"

    def fit(self, pred: Predictive, y: object) -> VarianceScaler:
        """Fit on validation predictions and targets ``[N]`` / ``[N, D]``; returns ``self``."""
        t = check_regression_targets(_check_gaussian(pred), y)
        ratio = ((t - pred.mean()) ** 2 / pred.variance()).mean()
        if pred.num_draws == 1:
            self.scale_ = float(ratio)
            return self
        log_scale = (0.5 * ratio.log()).detach().requires_grad_(True)
        lbfgs_minimise(lambda: -_scaled(pred, log_scale.exp()).log_prob(t).mean(), [log_scale], MAX_ITER)
        self.scale_ = float((2 * log_scale.detach()).exp())
        return self

    def transform(self, pred: Predictive) -> Predictive:
        """The rescaled Gaussian (mixture) `Predictive`."""
        check_fitted(self)
        _check_gaussian(pred)
        return _scaled(pred, torch.tensor(math.sqrt(self.scale_)))


class IsotonicRegressionCalibrator:
    """Quantile recalibration (Kuleshov et al. 2018): ``F'(y) = R(F(y))`` with ``R`` isotonic.

    ``R`` is the isotonic fit (sklearn ``IsotonicRegression``) of the empirical frequency
    ``#{j : p_j <= p_i} / (n + 1)`` on the validation PITs ``p_i = F(y_i)``, linear between its knots
    and anchored at ``(0, 0)`` and ``(1, 1)``. The ``n + 1`` (Kuleshov et al. divide by ``n``) keeps
    ``R`` increasing up to ``(1, 1)``, so the recalibrated density is positive wherever the PITs have
    no ties. Quantiles use the generalised inverse of ``R``. With ``D`` outputs one ``R`` serves all.

    Attributes:
        knots_x_, knots_y_: ``[K]`` knots of ``R``.
    """

    _fitted_attr = "knots_x_"

    def fit(self, pred: Predictive, y: object) -> IsotonicRegressionCalibrator:
        """Fit on validation predictions and targets ``[N]`` / ``[N, D]``; returns ``self``."""
        t = check_regression_targets(pred, y)
        pits = pred.cdf(t).reshape(-1)
        frequency = torch.searchsorted(pits.sort().values, pits, right=True).to(pits.dtype) / (pits.numel() + 1)
        x, fx = isotonic_knots(pits, frequency)
        inside = (x > 0) & (x < 1)
        self.knots_x_ = torch.cat([x.new_zeros(1), x[inside], x.new_ones(1)])
        self.knots_y_ = torch.cat([fx.new_zeros(1), fx[inside], fx.new_ones(1)])
        return self

    def transform(self, pred: Predictive) -> Predictive:
        """A single-draw `Predictive` over a `RecalibratedDistribution`."""
        check_fitted(self)
        check_regression_pred(pred)
        return Predictive.from_distribution(RecalibratedDistribution(pred, self.knots_x_, self.knots_y_))


class RecalibratedDistribution(Distribution):
    """The distribution with CDF ``R(F(y))``: a mixture predictive ``F`` seen through a monotone map ``R``.

    Batch shape ``[1, N]`` / ``[1, N, D]`` (the mixture collapses to one draw). ``R`` is piecewise
    linear through ``(knots_x, knots_y)`` from ``(0, 0)`` to ``(1, 1)``. ``cdf`` and ``icdf`` are exact
    (``icdf`` bisects the base mixture once per distinct level); ``log_prob`` is
    ``log R'(F(y)) + log f(y)``, which is ``-inf`` where ``R`` is flat. ``mean`` and ``variance`` are
    integrated once from the CDF with Simpson's rule between the ``MOMENT_TAIL_PROB`` quantiles; the
    kinks of ``R`` limit them to a relative accuracy of about 1e-5.
    """

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, base: Predictive, knots_x: Tensor, knots_y: Tensor) -> None:
        dtype = base.dist.mean.dtype
        self.base, self.knots_x, self.knots_y = base, knots_x.to(dtype), knots_y.to(dtype)
        super().__init__(batch_shape=torch.Size([1, *base.dist.batch_shape[1:]]), validate_args=False)
        self._mean, self._variance = self._moments()

    @property
    def mean(self) -> Tensor:
        return self._mean

    @property
    def variance(self) -> Tensor:
        return self._variance

    def cdf(self, value: Tensor) -> Tensor:
        return interp(self._base_cdf(value), self.knots_x, self.knots_y)

    def icdf(self, value: Tensor) -> Tensor:
        levels = _interp_inverse(torch.broadcast_to(value, self._shape_with(value)), self.knots_x, self.knots_y)
        eps = torch.finfo(levels.dtype).eps
        levels = levels.clamp(eps, 1 - eps)  # the base quantile needs a level inside (0, 1)
        out = torch.empty_like(levels)
        for level in levels.unique():
            out = torch.where(levels == level, self.base.quantile(float(level)), out)
        return out

    def log_prob(self, value: Tensor) -> Tensor:
        value = torch.broadcast_to(value, self._shape_with(value))
        index = torch.searchsorted(self.knots_x, self._base_cdf(value)).clamp(1, self.knots_x.numel() - 1)
        slope = (self.knots_y[index] - self.knots_y[index - 1]) / (self.knots_x[index] - self.knots_x[index - 1])
        num_point_dims = len(self.batch_shape) - 1
        per_draw = self.base.dist.log_prob(value.unsqueeze(value.ndim - num_point_dims))  # [..., S, N(, D)]
        log_w = torch.log(self.base.weights()).view(-1, *([1] * num_point_dims))
        return slope.log() + torch.logsumexp(per_draw + log_w, dim=-num_point_dims - 1)

    def _shape_with(self, value: Tensor) -> torch.Size:
        return torch.broadcast_shapes(value.shape, self.batch_shape)

    def _base_cdf(self, value: Tensor) -> Tensor:
        """Base mixture CDF at ``value`` broadcastable to ``[..., 1, N(, D)]``, in the broadcast shape."""
        return mixture_cdf(self.base, torch.broadcast_to(value, self._shape_with(value)))

    def _moments(self) -> tuple[Tensor, Tensor]:
        """Mean and variance from ``E[Y] = a + ∫_a^b (1 - F')`` and ``E[(Y - a)^2] = ∫_a^b 2 (z - a)(1 - F')``."""
        low = self.icdf(torch.full(self.batch_shape, MOMENT_TAIL_PROB, dtype=self.knots_x.dtype))[0]
        high = self.icdf(torch.full(self.batch_shape, 1 - MOMENT_TAIL_PROB, dtype=self.knots_x.dtype))[0]

        def integrands(z: Tensor) -> Tensor:
            survival = 1 - interp(mixture_cdf(self.base, z), self.knots_x, self.knots_y)
            return torch.stack([survival, 2 * (z - low) * survival], dim=1)

        shift, second = simpson(integrands, low, high, QUADRATURE_NUM_INTERVALS, cost=self.base.num_draws + 2)
        return (low + shift).unsqueeze(0), (second - shift**2).clamp_min(0).unsqueeze(0)


def _interp_inverse(q: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Generalised inverse ``inf{x : R(x) >= q}`` of the interpolant `interp` with non-decreasing ``fp``."""
    index = torch.searchsorted(fp, q.contiguous()).clamp(1, fp.numel() - 1)
    x0, x1, f0, f1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    rise = f1 - f0
    return torch.where(rise > 0, x0 + (q - f0) * (x1 - x0) / torch.where(rise > 0, rise, torch.ones_like(rise)), x0)


def _check_gaussian(pred: Predictive) -> Predictive:
    check_regression_pred(pred)
    if not isinstance(pred.dist, Normal):
        raise ValueError(f"pred: VarianceScaler needs a Gaussian (mixture) predictive, got {type(pred.dist).__name__}")
    return pred


def _scaled(pred: Predictive, scale: Tensor) -> Predictive:
    """The Gaussian mixture ``m + scale (Y - m)`` around the mixture mean ``m``."""
    center = pred.mean().unsqueeze(0)
    loc = center + scale * (pred.dist.loc - center)
    return Predictive.from_distribution(Normal(loc, scale * pred.dist.scale), log_weights=pred.log_weights)
