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


def _gaussian_case(generator, num_draws: int, num_outputs: int | None) -> tuple[Predictive, torch.Tensor]:
    shape = (num_draws, 103) if num_outputs is None else (num_draws, 103, num_outputs)
    mean = torch.randn(shape, generator=generator)
    var = 0.2 + torch.rand(shape, generator=generator)
    y = mean[0] + torch.randn(shape[1:], generator=generator)
    return Predictive.gaussian(mean, var), y


def _student_case(generator) -> tuple[Predictive, torch.Tensor]:
    from uqkit.calibration.distributions import StudentT

    loc = torch.randn(2, 103, generator=generator)
    dist = StudentT(3 + torch.rand(2, 103, generator=generator), loc, 0.5 + torch.rand(2, 103, generator=generator))
    return Predictive.from_distribution(dist), loc[1] + torch.randn(103, generator=generator)


def _lognormal_case(generator) -> tuple[Predictive, torch.Tensor]:
    """LogNormal keeps its parameters in its base distribution: not rebuilt, scored in one chunk. (One draw:
    `Predictive`'s mixture-quantile bisection brackets with mean +- 10 sd, outside a positive support.)"""
    dist = torch.distributions.LogNormal(torch.randn(1, 103, generator=generator), torch.full((1, 103), 0.5))
    return Predictive.from_distribution(dist), torch.rand(103, generator=generator) * 3 + 0.05


@pytest.mark.parametrize("case", ["gaussian", "mixture", "mixture_2d", "student_t", "lognormal"])
def test_chunked_regression_scores_equal_one_pass_functions(generator, case: str) -> None:
    """`regression_scores` in chunks of 7 points (103 points: 15 chunks, the last one short) gives the
    results of the public one-pass functions: counts exactly, sums to summation-order rounding."""
    pred, y = {
        "gaussian": lambda: _gaussian_case(generator, 1, None), "mixture": lambda: _gaussian_case(generator, 3, None),
        "mixture_2d": lambda: _gaussian_case(generator, 3, 2), "student_t": lambda: _student_case(generator),
        "lognormal": lambda: _lognormal_case(generator),
    }[case]()
    levels = (0.1, 0.7, 0.99)
    scores = R.regression_scores(pred, y, levels=levels, keep_pit=True, chunk_rows=7)
    expected = {
        "rmse": R.rmse(pred, y), "nll": R.regression_nll(pred, y), "crps": R.crps(pred, y),
        "miscalibration_area": R.miscalibration_area(pred, y),
        "quantile_calibration_error": R.quantile_calibration_error(pred, y), "sharpness": R.sharpness(pred),
        **{f"coverage_{round(100 * lv)}": R.interval_coverage(pred, y, lv) for lv in (0.5, 0.9, 0.95)},
        **{f"width_{round(100 * lv)}": R.interval_width(pred, lv) for lv in (0.5, 0.9, 0.95)},
    }
    assert scores.metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert scores.metrics[name] == pytest.approx(float(value), rel=1e-12, abs=1e-15), name
    for lv in (*levels, 0.5, 0.9, 0.95):
        assert scores.coverage[lv] == float(R.interval_coverage(pred, y, lv))  # exact counts
        assert scores.width[lv] == pytest.approx(float(R.interval_width(pred, lv)), rel=1e-12)
    for got, want in zip(scores.curve, R.calibration_curve(pred, y)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(scores.pit, R.pit(pred, y), rtol=0, atol=0)
    assert R.regression_metrics(pred, y) == pytest.approx(scores.metrics, rel=1e-12, abs=1e-15)


def test_chunked_regression_matches_scipy(generator) -> None:
    """A single Gaussian per point, scored in chunks of 10, against scipy.stats.norm."""
    mean, sd = torch.randn(95, generator=generator), 0.5 + torch.rand(95, generator=generator)
    y = mean + sd * torch.randn(95, generator=generator)
    scores = R.regression_scores(Predictive.gaussian(mean, sd**2), y, chunk_rows=10).metrics
    m, s, t = mean.numpy(), sd.numpy(), y.numpy()
    z = (t - m) / s
    lower, upper = stats.norm.interval(0.9, m, s)
    assert scores["rmse"] == pytest.approx(np.sqrt(((t - m) ** 2).mean()), rel=1e-12)
    assert scores["nll"] == pytest.approx(-stats.norm.logpdf(t, m, s).mean(), rel=1e-12)
    crps = s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert scores["crps"] == pytest.approx(crps.mean(), rel=1e-10)
    assert scores["coverage_90"] == ((lower <= t) & (t <= upper)).mean()
    assert scores["width_90"] == pytest.approx((upper - lower).mean(), rel=1e-10)
    assert scores["sharpness"] == pytest.approx(np.sqrt((s**2).mean()), rel=1e-12)


def test_regression_report_uses_the_chunked_scores(generator, monkeypatch) -> None:
    """`evaluate` on regression: metrics and figures from one chunked pass; default chunking is bounded."""
    pred, y = _gaussian_case(generator, 3, None)
    monkeypatch.setattr(R, "_ROW_CHUNK_ELEMENTS", 30)  # 10 points per chunk with S = 3
    report = uqkit.evaluate(pred, y)
    assert report.metrics == pytest.approx(R.regression_scores(pred, y, chunk_rows=103).metrics, rel=1e-12, abs=1e-15)
    assert {"pit", "calibration_curve", "coverage"} <= set(report.figures)
    assert all(png.startswith(b"\x89PNG") for png in report.figures.values())


def test_regression_scores_bad_options_are_named(generator) -> None:
    pred, y = _gaussian_case(generator, 1, None)
    with pytest.raises(ValueError, match="^chunk_rows: expected a positive integer"):
        R.regression_scores(pred, y, chunk_rows=0)
    with pytest.raises(ValueError, match="^levels: expected a level in"):
        R.regression_scores(pred, y, levels=(1.5,))
    with pytest.raises(ValueError, match="^y: expected shape"):
        R.regression_scores(pred, y[:-1])
