"""Numerical robustness (issue 11, part 5): metrics stay finite and correct for logits of magnitude
1e4, probabilities with exact zeros and ones, variances of 1e-12, and float16/32/64 inputs.

References are computed in float64 with scipy/numpy from the same (quantised) input values. The
report's bounded memory for 10 million predictions is measured in ``benchmarks/bench_report_memory.py``;
here `evaluate`'s chunked scoring is checked to equal the one-pass metric functions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats

import uqkit
from uqkit.calibration import classification as C
from uqkit.calibration import regression as R
from uqkit.calibration.predictive import Predictive


def ece_reference(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)  # right-closed bins (lo, hi]
    total = 0.0
    for b in range(num_bins):
        m = bins == b
        if m.any():
            total += m.sum() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
    return total / len(labels)


def huge_logits(generator: torch.Generator, n: int = 400, c: int = 5) -> torch.Tensor:
    return 1e4 * torch.randn(n, c, generator=generator, dtype=torch.float64)


def test_logits_of_magnitude_1e4(generator) -> None:
    z = huge_logits(generator)
    y = torch.randint(0, 5, (400,), generator=generator)
    pred = Predictive.from_logits(z)
    log_p = special.log_softmax(z.numpy(), axis=1)
    p = np.exp(log_p)
    report = uqkit.evaluate(pred, y, make_figures=False)
    assert all(np.isfinite(v) for v in report.metrics.values()), report.metrics
    assert report.metrics["nll"] == pytest.approx(-log_p[np.arange(400), y.numpy()].mean(), rel=1e-12)
    assert report.metrics["brier"] == pytest.approx(((p - np.eye(5)[y.numpy()]) ** 2).sum(1).mean(), rel=1e-12)
    assert report.metrics["ece"] == pytest.approx(ece_reference(p, y.numpy()), abs=1e-12)
    np.testing.assert_allclose(pred.entropy().numpy(), stats.entropy(p, axis=1), atol=1e-12)
    draws = Predictive.from_logits(torch.stack([z, z.flip(0)]))  # two draws, both saturated
    assert torch.isfinite(draws.mutual_information()).all() and torch.isfinite(draws.log_prob(y)).all()


def test_probabilities_with_exact_zeros_and_ones() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    report = uqkit.evaluate(Predictive.from_probs(probs), labels, make_figures=False)
    assert all(np.isfinite(v) for v in report.metrics.values()), report.metrics
    assert report.metrics["nll"] == pytest.approx(np.log(2) / 4, rel=1e-12)
    assert report.metrics["brier"] == pytest.approx(0.5 / 4, rel=1e-12)
    assert report.metrics["accuracy"] == 1.0
    np.testing.assert_allclose(Predictive.from_probs(probs).entropy().numpy(), [0, 0, 0, np.log(2)], atol=1e-15)
    wrong = torch.tensor([1, 1, 2, 0])  # all the mass on the wrong class: finite, clamped (documented)
    assert np.isfinite(float(C.nll(probs, wrong))) and float(C.nll(probs, wrong)) > 100


def test_variances_of_1e_12(generator) -> None:
    mean = torch.randn(300, generator=generator, dtype=torch.float64)
    sd = 1e-6
    y = mean + sd * torch.randn(300, generator=generator, dtype=torch.float64)
    pred = Predictive.gaussian(mean, torch.full((300,), sd**2))
    z = ((y - mean) / sd).numpy()
    assert float(R.regression_nll(pred, y)) == pytest.approx(-stats.norm.logpdf(y.numpy(), mean.numpy(), sd).mean(), rel=1e-9)
    crps = sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert float(R.crps(pred, y)) == pytest.approx(crps.mean(), rel=1e-6)
    np.testing.assert_allclose(R.pit(pred, y).numpy(), stats.norm.cdf(z), atol=1e-9)
    metrics = R.regression_metrics(pred, y)
    assert all(np.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.parametrize("dtype, rtol", [(torch.float16, 1e-5), (torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_low_precision_inputs_match_a_float64_reference(generator, dtype: torch.dtype, rtol: float) -> None:
    z = (3 * torch.randn(500, 4, generator=generator)).to(dtype)
    y = torch.randint(0, 4, (500,), generator=generator)
    ref_z = z.double().numpy()  # the same quantised values, in float64
    log_p = special.log_softmax(ref_z, axis=1)
    report = uqkit.evaluate(Predictive.from_logits(z), y, make_figures=False)
    assert report.metrics["nll"] == pytest.approx(-log_p[np.arange(500), y.numpy()].mean(), rel=rtol)
    assert report.metrics["brier"] == pytest.approx(((np.exp(log_p) - np.eye(4)[y.numpy()]) ** 2).sum(1).mean(), rel=rtol)
    mean, var = z[:, 0], (z[:, 1].abs() + 0.5)
    target = z[:, 2].double()
    reg = R.regression_nll(Predictive.gaussian(mean, var), target)
    ref = -stats.norm.logpdf(target.numpy(), mean.double().numpy(), np.sqrt(var.double().numpy())).mean()
    assert float(reg) == pytest.approx(ref, rel=rtol)


@pytest.mark.parametrize("num_draws", [1, 3])
def test_chunked_evaluate_equals_one_pass_metrics(generator, monkeypatch, num_draws: int) -> None:
    """With a tiny chunk size, `evaluate` gives the metrics of the public one-pass functions."""
    import uqkit.calibration.evaluate as ev

    z = torch.randn(num_draws, 1003, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (1003,), generator=generator)
    pred = Predictive.from_logits(z if num_draws > 1 else z[0])
    whole = uqkit.evaluate(pred, y, make_figures=False).metrics
    monkeypatch.setattr(ev, "CHUNK_SIZE", 97)
    chunked = uqkit.evaluate(pred, y, make_figures=False).metrics
    probs = pred.mixture_probs()
    assert chunked.keys() == whole.keys()
    for name, value in whole.items():
        assert chunked[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert chunked["ece"] == pytest.approx(float(C.ece(probs, y)), rel=1e-12)
    assert chunked["adaptive_ece"] == pytest.approx(float(C.adaptive_ece(probs, y)), rel=1e-12)
    assert chunked["nll"] == pytest.approx(float(-pred.log_prob(y).mean()), rel=1e-12)
