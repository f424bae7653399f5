"""UCE and the error correlation against a direct numpy loop and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from uqkit.calibration.classification import debiased_squared_ece, ece
from uqkit.wrap.metrics import error_correlation, uncertainty_calibration_error


def _uce_loop(err: np.ndarray, var: np.ndarray, num_bins: int) -> float:
    edges = np.linspace(0, var.max(), num_bins + 1)
    total = 0.0
    for m in range(num_bins):
        inside = (var > edges[m]) & (var <= edges[m + 1]) if m > 0 else var <= edges[1]
        if inside.any():
            total += inside.mean() * abs(err[inside].mean() - var[inside].mean())
    return total


@pytest.mark.parametrize("num_bins", [1, 7, 15])
def test_uce_matches_a_direct_loop(generator, num_bins):
    var = torch.rand(500, generator=generator) ** 2
    err = var * torch.randn(500, generator=generator) ** 2 * 1.3
    expected = _uce_loop(err.numpy(), var.numpy(), num_bins)
    assert float(uncertainty_calibration_error(err, var, num_bins=num_bins)) == pytest.approx(expected, rel=1e-12)


def test_uce_is_zero_when_each_bin_is_calibrated():
    var = torch.tensor([0.1, 0.1, 1.0, 1.0])
    err = torch.tensor([0.0, 0.2, 0.5, 1.5])
    assert float(uncertainty_calibration_error(err, var, num_bins=2)) == pytest.approx(0.0, abs=1e-15)


def test_correlation_matches_scipy(generator):
    err, sd = torch.rand(300, generator=generator), torch.rand(300, generator=generator)
    sd = sd + err
    assert float(error_correlation(err.reshape(10, 30), sd.reshape(10, 30))) == pytest.approx(stats.pearsonr(err.numpy(), sd.numpy())[0], rel=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="^variance: expected values >= 0"):
        uncertainty_calibration_error(torch.ones(3), torch.tensor([0.1, -0.1, 0.2]))
    with pytest.raises(ValueError, match="^variance: expected 3 elements to match squared_error, got 2"):
        uncertainty_calibration_error(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="^num_bins: expected an integer >= 1"):
        uncertainty_calibration_error(torch.ones(3), torch.ones(3), num_bins=0)


def _debiased_loop(conf: np.ndarray, correct: np.ndarray, num_bins: int) -> float:
    total = 0.0
    for m in range(num_bins):
        lo, hi = m / num_bins, (m + 1) / num_bins
        inside = (conf > lo) & (conf <= hi) if m > 0 else conf <= hi
        n = inside.sum()
        if n:
            acc = correct[inside].mean()
            correction = acc * (1 - acc) / (n - 1) if n > 1 else 0.0
            total += n / len(conf) * ((acc - conf[inside].mean()) ** 2 - correction)
    return total


def _top_label_probs(conf: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` probabilities whose top label is class 0 with confidence ``conf`` (>= 0.5)."""
    return torch.stack([conf, 1 - conf], 1)


def test_debiased_squared_ece_matches_a_direct_loop(generator):
    probs = torch.softmax(3 * torch.randn(400, 5, generator=generator), -1)
    labels = torch.randint(0, 5, (400,), generator=generator)
    conf, pred = probs.max(-1)
    expected = _debiased_loop(conf.numpy(), (pred == labels).numpy(), 15)
    assert float(debiased_squared_ece(probs, labels)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("confidence", "accuracy"), [(0.9, 0.9), (0.9, 0.75), (0.6, 0.65)])
def test_debiased_squared_ece_is_unbiased_where_plain_ece_is_not(generator, confidence, accuracy):
    """One bin, all points at one confidence, correct with probability ``accuracy``: the true squared calibration
    error is ``(accuracy - confidence)^2``. The mean over 2000 test sets of 50 points is within 4 Monte Carlo
    standard errors of it; the plain squared l2-ECE overshoots by ``accuracy (1 - accuracy) / 50``."""
    num_sets, num_points = 2000, 50
    probs = _top_label_probs(torch.full((num_points,), confidence))
    draws = torch.bernoulli(torch.full((num_sets, num_points), accuracy), generator=generator)
    labels = (1 - draws).long()  # label 0 (the top class) when correct
    debiased = torch.stack([debiased_squared_ece(probs, y) for y in labels])
    plain = torch.stack([ece(probs, y, norm="l2") ** 2 for y in labels])
    truth = (accuracy - confidence) ** 2
    mcse = float(debiased.std() / math.sqrt(num_sets))
    assert abs(float(debiased.mean()) - truth) < 4 * mcse
    bias = accuracy * (1 - accuracy) / num_points
    assert float(plain.mean()) - truth == pytest.approx(bias, abs=4 * float(plain.std() / math.sqrt(num_sets)))
