"""Selective prediction: abstain on the least confident points and score the ones that are kept.

Inputs are ``confidence [N]`` (higher = more confident) and ``correct [N]`` (bool or 0/1); from
probabilities and labels, `uqkit.calibration.classification.top_label` gives both. Points are
accepted in order of decreasing confidence; coverage is the fraction accepted and selective risk the
error rate among them.

**Ties:** a threshold on the confidence cannot separate points with equal confidence, so they are
accepted together: the curve has one operating point per distinct confidence value, and in the
``[N]`` arrays of `risk_coverage_curve` every point of a tie group carries the coverage and risk
reached once the whole group is in. All results are float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from uqkit._checks import check_float, check_labels, check_positive, check_same_length


def risk_coverage_curve(confidence: object, correct: object) -> tuple[Tensor, Tensor]:
    """Coverage and selective risk as points are accepted by decreasing confidence.

    Args:
        confidence: ``[N]`` scores, higher = more confident.
        correct: ``[N]`` bool or 0/1, whether each prediction is right.

    Returns:
        ``(coverage [N], risk [N])`` in acceptance order: entry i holds the coverage and selective
        risk once point i and every point tied with it are accepted (module docstring).
    """
    return _curve(*_validate(confidence, correct))


def aurc(confidence: object, correct: object) -> Tensor:
    """Area under the risk-coverage curve: the mean of the ``[N]`` selective risks (Geifman et al., 2019).

    Without ties this is ``1/N sum_k risk(top k)``; a tie group contributes its group-end risk once per member.
    """
    return _curve(*_validate(confidence, correct))[1].mean()


def eaurc(confidence: object, correct: object) -> Tensor:
    """Excess AURC: `aurc` minus the AURC of a perfect ranking with the same number of errors.

    The perfect ranking accepts all ``N - E`` correct points first; its AURC is computed exactly for
    N points, ``(E - (N - E)(H_N - H_{N-E})) / N`` with harmonic numbers ``H``. Geifman et al. (2019)
    quote the large-N limit ``r + (1 - r) ln(1 - r)`` with error rate ``r = E / N``.
    """
    conf, ok = _validate(confidence, correct)
    num_points = ok.numel()
    num_right = int(ok.count_nonzero())
    harmonic = torch.special.digamma(torch.tensor([num_points + 1.0, num_right + 1.0], dtype=torch.float64))
    optimal = (num_points - num_right - num_right * (harmonic[0] - harmonic[1])) / num_points
    return _curve(conf, ok)[1].mean() - optimal


def coverage_at_risk(confidence: object, correct: object, risk: float) -> Tensor:
    """The largest coverage whose selective risk is at most ``risk``; 0 if no operating point reaches it.

    Args:
        confidence: ``[N]`` scores, higher = more confident.
        correct: ``[N]`` bool or 0/1.
        risk: target selective risk in ``[0, 1]``.
    """
    risk = _check_fraction(risk, "risk", allow_zero=True)
    coverage, sel_risk = _curve(*_validate(confidence, correct))
    ok = sel_risk <= risk
    return coverage[ok].max() if bool(ok.any()) else coverage.new_zeros(())


def risk_at_coverage(confidence: object, correct: object, coverage: float) -> Tensor:
    """Selective risk at the first operating point whose coverage is at least ``coverage``.

    Args:
        confidence: ``[N]`` scores, higher = more confident.
        correct: ``[N]`` bool or 0/1.
        coverage: target coverage in ``(0, 1]``; ties can make the point used cover more.
    """
    coverage = _check_fraction(coverage, "coverage", allow_zero=False)
    cov, sel_risk = _curve(*_validate(confidence, correct))
    first = torch.searchsorted(cov, torch.tensor([coverage], dtype=cov.dtype))
    return sel_risk[first[0]]


def _validate(confidence: object, correct: object) -> tuple[Tensor, Tensor]:
    conf = check_float(confidence, "confidence", ndim=1)
    ok = check_labels(correct, "correct", num_classes=2)
    check_same_length("confidence", conf, "correct", ok)
    return conf, ok.to(device=conf.device, dtype=torch.bool)


def _curve(conf: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """Coverage and risk ``[N]`` float64; temporaries are freed as soon as possible (about 30 bytes per point
    beside the 16 of the result), so reports on tens of millions of points stay within memory."""
    num_points = conf.numel()
    sorted_conf, order = torch.sort(conf, descending=True, stable=True)
    wrong = (~ok)[order]
    del order
    errors = torch.cumsum(wrong, dim=0, dtype=torch.int32 if num_points < 2**31 else torch.int64)
    del wrong
    is_last = torch.ones(num_points, dtype=torch.bool, device=conf.device)  # last position of its tie group
    torch.ne(sorted_conf[1:], sorted_conf[:-1], out=is_last[:-1])
    del sorted_conf
    ends = torch.nonzero(is_last).squeeze(1)  # where each tie group ends
    del is_last
    sizes = torch.diff(ends, prepend=ends.new_full((1,), -1))
    end = torch.repeat_interleave(ends, sizes, output_size=num_points)  # position where each point's group ends
    del ends, sizes
    accepted = end.add(1).to(torch.float64)
    risk = errors[end].to(torch.float64).div_(accepted)
    return accepted.div_(num_points), risk


def _check_fraction(value: float, name: str, *, allow_zero: bool) -> float:
    v = check_positive(value, name, allow_zero=allow_zero)
    if v > 1:
        raise ValueError(f"{name}: expected a fraction in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
    return v
