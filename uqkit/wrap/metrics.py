"""Metrics used to judge the wrappers.

BayesCap and its baselines (Laves et al., MIDL 2020) compare a predicted per-element uncertainty with
the frozen model's actual errors, on the same scale as the targets: `uncertainty_calibration_error`
bins the predicted variances and compares them with the mean squared error in each bin;
`error_correlation` is Pearson's r between absolute errors and predicted standard deviations
(BayesCap's "C.Coeff").
"""

from __future__ import annotations

import torch
from torch import Tensor

from uqkit._checks import check_float
from uqkit.wrap.base import check_count


def uncertainty_calibration_error(squared_error: object, variance: object, *, num_bins: int = 15) -> Tensor:
    """UCE ``= sum_m |B_m|/n * |mean squared error in B_m - mean variance in B_m|`` (squared target units).

    Bins ``B_m`` split ``[0, max variance]`` into ``num_bins`` equal, right-closed intervals; empty bins count 0.

    Args:
        squared_error: per-element squared errors of the point prediction, any shape.
        variance: the predicted variances, same number of elements, >= 0.
        num_bins: number of bins.
    """
    err = check_float(squared_error, "squared_error").flatten().to(torch.float64)
    var = check_float(variance, "variance").flatten().to(torch.float64)
    if err.numel() != var.numel():
        raise ValueError(f"variance: expected {err.numel()} elements to match squared_error, got {var.numel()}")
    if bool((var < 0).any()):
        raise ValueError(f"variance: expected values >= 0, found minimum {float(var.min()):.3g}")
    num_bins = check_count(num_bins, "num_bins")
    edges = torch.linspace(0, float(var.max()), num_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(var, edges[1:-1])  # right-closed: bin m holds (edges[m], edges[m + 1]]
    gap = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, err - var)
    return gap.abs().sum() / err.numel()


def error_correlation(abs_error: object, std: object) -> Tensor:
    """Pearson correlation between per-element absolute errors and predicted standard deviations."""
    err = check_float(abs_error, "abs_error").flatten().to(torch.float64)
    sd = check_float(std, "std").flatten().to(torch.float64)
    if err.numel() != sd.numel() or err.numel() < 2:
        raise ValueError(f"std: expected {err.numel()} elements (at least 2) to match abs_error, got {sd.numel()}")
    return torch.corrcoef(torch.stack([err, sd]))[0, 1]
