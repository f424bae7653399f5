"""Out-of-distribution scores on a `Predictive`, and detection metrics on those scores.

**Convention: higher score = more OOD**, for every score function here, and OOD is the positive class
for every detection metric (except `ood_aupr_in`, which by definition takes in-distribution points as
positives). Score functions return ``[N]`` tensors; metrics return 0-d float64 tensors. The
threshold-free metrics come from scikit-learn (``roc_auc_score``, ``average_precision_score``,
``roc_curve``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import Tensor

from uqkit._checks import check_float, check_positive
from uqkit.calibration.predictive import Predictive

_TPR_SLACK = 1e-12  # relative slack on tpr * n_out, so that e.g. tpr=0.8 of 10 points asks for 8, not 9


# --------------------------------------------------------------------------------------- scores
def msp_score(pred: Predictive) -> Tensor:
    """``1 - max_c p_c`` of the mixture probabilities (maximum softmax probability, flipped), ``[N]``."""
    return 1 - _classification(pred, "msp_score").mixture_probs().amax(-1)


def max_logit_score(pred: Predictive) -> Tensor:
    """``-max_c z_c``, the negated maximum logit, averaged over draws with the mixture weights, ``[N]``."""
    logits = _logits(pred, "max_logit_score")
    return -(pred.weights() @ logits.amax(-1))


def energy_score(pred: Predictive) -> Tensor:
    """Energy ``-logsumexp_c z_c`` (Liu et al., 2020), averaged over draws with the mixture weights, ``[N]``."""
    logits = _logits(pred, "energy_score")
    return -(pred.weights() @ torch.logsumexp(logits, -1))


def entropy_score(pred: Predictive) -> Tensor:
    """Total predictive entropy in nats, ``[N]`` (`Predictive.entropy`; regression uses the moment-matched Gaussian)."""
    _predictive(pred)
    return pred.entropy()


def mutual_information_score(pred: Predictive) -> Tensor:
    """Mutual information between prediction and draw (BALD, epistemic), in nats, ``[N]``; 0 for one draw."""
    _predictive(pred)
    return pred.mutual_information()


def variance_score(pred: Predictive) -> Tensor:
    """Total predictive variance, ``[N]``.

    Regression: the law-of-total-variance variance, summed over outputs D. Classification: the
    variance of each class probability across draws, summed over classes (0 for one draw).
    """
    var = _predictive(pred).variance()
    return var if var.ndim == 1 else var.sum(-1)


OOD_SCORES: dict[str, Callable[[Predictive], Tensor]] = {
    "msp": msp_score,
    "max_logit": max_logit_score,
    "energy": energy_score,
    "entropy": entropy_score,
    "mutual_information": mutual_information_score,
    "variance": variance_score,
}


# -------------------------------------------------------------------------------------- metrics
def ood_auroc(scores_in: object, scores_out: object) -> Tensor:
    """Area under the ROC curve for detecting OOD points (OOD positive); 0.5 = chance, ties count half."""
    y, s = _binary(scores_in, scores_out)
    return torch.tensor(roc_auc_score(y, s), dtype=torch.float64)


def ood_aupr_out(scores_in: object, scores_out: object) -> Tensor:
    """Average precision with OOD points as positives (scikit-learn's step-wise AP, no interpolation)."""
    y, s = _binary(scores_in, scores_out)
    return torch.tensor(average_precision_score(y, s), dtype=torch.float64)


def ood_aupr_in(scores_in: object, scores_out: object) -> Tensor:
    """Average precision with in-distribution points as positives, ranked by the negated scores."""
    y, s = _binary(scores_in, scores_out)
    return torch.tensor(average_precision_score(1 - y, -s), dtype=torch.float64)


def fpr_at_tpr(scores_in: object, scores_out: object, tpr: float = 0.95) -> Tensor:
    """Fraction of in-distribution points flagged as OOD when a fraction ``tpr`` of OOD points is detected.

    Threshold rule: a point is flagged when its score is ``>= t``, and ``t`` is the k-th largest OOD
    score with ``k = ceil(tpr * n_out)``: the highest threshold that detects at least ``tpr`` of the
    OOD points, hence the lowest false-positive rate among thresholds that reach the target.

    Args:
        scores_in: ``[n_in]`` scores of in-distribution points.
        scores_out: ``[n_out]`` scores of OOD points.
        tpr: target true-positive rate in ``(0, 1]``.
    """
    tpr = check_positive(tpr, "tpr")
    if tpr > 1:
        raise ValueError(f"tpr: expected a rate in (0, 1], got {tpr!r}")
    s_in = check_float(scores_in, "scores_in", ndim=1)
    s_out = check_float(scores_out, "scores_out", ndim=1)
    num_out = s_out.numel()
    k = max(1, math.ceil(tpr * num_out * (1 - _TPR_SLACK)))
    threshold = torch.kthvalue(s_out.to(torch.float64), num_out - k + 1).values  # k-th largest
    return (s_in.to(torch.float64) >= threshold).to(torch.float64).mean()


def ood_roc_curve(scores_in: object, scores_out: object) -> tuple[Tensor, Tensor]:
    """``(fpr, tpr)`` of the OOD detector over decreasing thresholds (scikit-learn ``roc_curve``, collinear points dropped)."""
    y, s = _binary(scores_in, scores_out)
    fpr, tpr, _ = roc_curve(y, s)
    return torch.from_numpy(fpr), torch.from_numpy(tpr)


# ------------------------------------------------------------------------------------ internals
def _predictive(pred: object) -> Predictive:
    if not isinstance(pred, Predictive):
        raise TypeError(f"pred: expected a uqkit Predictive, got {type(pred).__name__}")
    return pred


def _classification(pred: object, what: str) -> Predictive:
    if _predictive(pred).task != "classification":
        raise ValueError(f"pred: {what} needs a classification Predictive, got a {pred.task} one")
    return pred


def _logits(pred: object, what: str) -> Tensor:
    logits = _classification(pred, what).logits
    if logits is None:
        raise ValueError(f"pred: {what} needs logits; build the Predictive with Predictive.from_logits")
    return logits


def _binary(scores_in: object, scores_out: object) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0 = in, 1 = OOD) and scores (in their common dtype: rankings are exact) as numpy arrays for scikit-learn."""
    s_in = check_float(scores_in, "scores_in", ndim=1)
    s_out = check_float(scores_out, "scores_out", ndim=1)
    scores = torch.cat([s_in, s_out.to(s_in.device)]).cpu().numpy()
    labels = np.concatenate([np.zeros(s_in.numel()), np.ones(s_out.numel())])
    return labels, scores
