"""Split conformal prediction: intervals for regression, sets for classification.

With ``n`` exchangeable calibration points and continuous scores, the test point is covered with
probability in ``[level, level + 1 / (n + 1))``: the threshold is the ``k``-th smallest calibration
score, ``k = ceil((n + 1) * level)``, which needs ``n >= level / (1 - level)``.

References: Vovk et al. 2005; Lei et al. 2018 (split conformal regression); Sadinle, Lei &
Wasserman 2019 (THR sets); Romano, Sesia & Candès 2020 (APS sets); Angelopoulos & Bates 2023.
"""

from __future__ import annotations

import math

import torch
from sklearn.exceptions import NotFittedError
from torch import Tensor

from uqkit._checks import check_labels, check_level, check_probs
from uqkit.calibration.predictive import Predictive
from uqkit.calibration.regression import check_regression_pred, check_regression_targets

#: Slack on ``(n + 1) * level`` before rounding up, so that e.g. ``20 * 0.95`` counts as 19.
_RANK_SLACK = 1e-9


class SplitConformalRegressor:
    """Split conformal intervals around the predictive mean (Lei et al. 2018).

    Scores are ``|y - mean|`` (``score="abs"``) or ``|y - mean| / sd`` with ``sd`` the predictive
    standard deviation (``score="normalized"``); the interval is ``mean -/+ qhat_`` (times ``sd``).
    With ``D`` outputs each output gets its own threshold.

    Args:
        level: target coverage in (0, 1).
        score: "abs" or "normalized".

    Attributes:
        qhat_: threshold, a 0-d tensor, or ``[D]``.
    """

    def __init__(self, level: float = 0.9, score: str = "abs") -> None:
        self.level = level
        self.score = score

    def fit(self, pred_cal: Predictive, y_cal: object) -> SplitConformalRegressor:
        """Calibrate on predictions and targets ``[N]`` / ``[N, D]``; returns ``self``."""
        level = check_level(self.level, "level")
        if self.score not in ("abs", "normalized"):
            raise ValueError(f"score: expected 'abs' or 'normalized', got {self.score!r}")
        t = check_regression_targets(pred_cal, y_cal)
        self.qhat_ = conformal_quantile((t - pred_cal.mean()).abs() / self._spread(pred_cal), level, name="y_cal")
        return self

    def predict_interval(self, pred: Predictive) -> tuple[Tensor, Tensor]:
        """``(lower, upper)``, each ``[N]`` / ``[N, D]``."""
        if not hasattr(self, "qhat_"):
            raise NotFittedError("SplitConformalRegressor is not fitted yet; call fit(...) before using it")
        check_regression_pred(pred)
        center = pred.mean()
        if center.shape[1:] != self.qhat_.shape:
            want, got = tuple(self.qhat_.shape), tuple(center.shape[1:])
            raise ValueError(f"pred: expected outputs of shape {want} as in fit, got {got}")
        half = self.qhat_.to(center) * self._spread(pred)
        return center - half, center + half

    def _spread(self, pred: Predictive) -> Tensor | float:
        return pred.variance().sqrt() if self.score == "normalized" else 1.0


class ConformalClassifier:
    """Split conformal prediction sets from class probabilities.

    * ``method="thr"`` (Sadinle et al. 2019): score ``1 - p_y``; the set holds every class with
      ``1 - p_k <= qhat_``. It has the smallest expected size among sets with the same coverage.
    * ``method="aps"`` (Romano et al. 2020): sort classes by decreasing probability; the score of
      ``y`` is the mass of the classes ranked above it plus ``u * p_y``, with ``u ~ U(0, 1)`` when
      ``randomized`` and ``u = 1`` otherwise. The randomised set holds the classes whose score is at
      most ``qhat_`` (it may be empty); the deterministic set holds every class whose mass ranked
      above it is below ``qhat_`` (never empty, conservative).

    Coverage lies in ``[level, level + 1/(n + 1))`` for "thr" and randomised "aps" (no ties); the
    deterministic "aps" only guarantees ``>= level``.

    Args:
        level: target coverage in (0, 1).
        method: "thr" or "aps".
        randomized: randomise the APS scores and sets (needs a ``generator`` in ``fit`` and ``predict_set``).

    Attributes:
        qhat_: threshold (0-d tensor).
    """

    def __init__(self, level: float = 0.9, method: str = "thr", randomized: bool = False) -> None:
        self.level = level
        self.method = method
        self.randomized = randomized

    def fit(
        self, probs_or_pred_cal: object, labels: object, *, generator: torch.Generator | None = None
    ) -> ConformalClassifier:
        """Calibrate on probabilities ``[N, C]`` (or a classification Predictive) and labels ``[N]``; returns self."""
        level = check_level(self.level, "level")
        if self.method not in ("thr", "aps"):
            raise ValueError(f"method: expected 'thr' or 'aps', got {self.method!r}")
        probs = _class_probs(probs_or_pred_cal)
        y = check_labels(labels, "labels", num_classes=probs.shape[-1], length=probs.shape[0]).to(probs.device)
        scores = self._scores(probs, generator).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        self.qhat_ = conformal_quantile(scores, level, name="labels")
        return self

    def predict_set(self, probs_or_pred: object, *, generator: torch.Generator | None = None) -> Tensor:
        """Boolean set membership ``[N, C]``."""
        if not hasattr(self, "qhat_"):
            raise NotFittedError("ConformalClassifier is not fitted yet; call fit(...) before using it")
        probs = _class_probs(probs_or_pred)
        qhat = self.qhat_.to(probs)
        if self.method == "aps" and not self.randomized:
            return _aps_scores(probs, torch.zeros((), dtype=probs.dtype, device=probs.device)) < qhat
        return self._scores(probs, generator) <= qhat

    def _scores(self, probs: Tensor, generator: torch.Generator | None) -> Tensor:
        """Score of every candidate label ``[N, C]``."""
        if self.method == "thr":
            return 1 - probs
        if not self.randomized:
            return _aps_scores(probs, torch.ones((), dtype=probs.dtype, device=probs.device))
        if generator is None:
            raise ValueError("generator: randomized APS needs a torch.Generator")
        return _aps_scores(
            probs, torch.rand(probs.shape[0], 1, generator=generator, dtype=probs.dtype, device=probs.device)
        )


def set_size(sets: object) -> Tensor:
    """Number of classes in each prediction set, ``[N]`` (long)."""
    if not isinstance(sets, Tensor) or sets.dtype != torch.bool or sets.ndim != 2:
        raise ValueError("sets: expected a boolean tensor [N, C] from ConformalClassifier.predict_set")
    return sets.sum(-1)


def conformal_quantile(scores: Tensor, level: float, *, name: str = "scores") -> Tensor:
    """The ``ceil((n + 1) * level)``-th smallest of ``n`` scores along dim 0 (``[n]`` or ``[n, D]``).

    Raises ``ValueError`` naming ``name`` when ``n`` is below the minimum ``ceil(level / (1 - level))``.
    """
    num = scores.shape[0]
    rank = math.ceil((num + 1) * level - _RANK_SLACK)
    if rank > num:
        need = math.ceil(level / (1 - level) - _RANK_SLACK)
        raise ValueError(f"{name}: level {level:g} needs at least {need} calibration points, got {num}")
    return scores.kthvalue(rank, dim=0).values


def _aps_scores(probs: Tensor, own_weight: Tensor) -> Tensor:
    """``[N, C]``: the mass of the classes ranked above each class, plus ``own_weight`` times its own."""
    order = probs.argsort(dim=-1, descending=True, stable=True)
    sorted_probs = probs.gather(-1, order)
    above = sorted_probs.cumsum(-1) - sorted_probs
    return torch.empty_like(probs).scatter_(-1, order, above + own_weight * sorted_probs)


def _class_probs(x: object) -> Tensor:
    if isinstance(x, Predictive):
        if x.task != "classification":
            raise ValueError("probs: expected class probabilities or a classification Predictive, got a regression one")
        return x.mixture_probs()
    return check_probs(x, "probs", ndim=2)
