"""UCE and the error correlation against a direct numpy loop and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

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
