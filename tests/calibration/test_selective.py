"""Selective prediction against direct loops over thresholds and hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uqkit.calibration.classification import top_label
from uqkit.calibration.selective import aurc, coverage_at_risk, eaurc, risk_at_coverage, risk_coverage_curve

EXACT = 1e-12  # float64 ratios of small integers


def _data(generator, num_points=400, ties=False):
    conf = torch.rand(num_points, generator=generator)
    if ties:
        conf = torch.round(conf * 10) / 10  # 11 distinct values, many ties
    correct = torch.rand(num_points, generator=generator) < conf  # confident points are right more often
    return conf, correct


def _loop_curve(conf, correct):
    """For each point in order of decreasing confidence, accept everything at least as confident."""
    conf, correct = np.asarray(conf), np.asarray(correct, dtype=bool)
    coverage, risk = [], []
    for t in np.sort(conf)[::-1]:
        accepted = conf >= t
        coverage.append(accepted.sum() / len(conf))
        risk.append((~correct[accepted]).sum() / accepted.sum())  # one rounding of the exact ratio
    return np.array(coverage), np.array(risk)


def _loop_optimal_aurc(num_points, num_errors):
    num_right = num_points - num_errors
    return sum(max(0, k - num_right) / k for k in range(1, num_points + 1)) / num_points


@pytest.mark.parametrize("ties", [False, True])
def test_curve_and_aurc_match_threshold_loop(generator, ties):
    conf, correct = _data(generator, ties=ties)
    coverage, risk = risk_coverage_curve(conf, correct)
    ref_cov, ref_risk = _loop_curve(conf, correct)
    np.testing.assert_allclose(coverage.numpy(), ref_cov, rtol=0, atol=EXACT)
    np.testing.assert_allclose(risk.numpy(), ref_risk, rtol=0, atol=EXACT)
    assert coverage.dtype == risk.dtype == torch.float64
    assert float(aurc(conf, correct)) == pytest.approx(ref_risk.mean(), abs=EXACT)
    num_errors = int((~correct).sum())
    assert float(eaurc(conf, correct)) == pytest.approx(ref_risk.mean() - _loop_optimal_aurc(len(conf), num_errors), abs=EXACT)


@pytest.mark.parametrize("ties", [False, True])
def test_operating_points_match_brute_force(generator, ties):
    conf, correct = _data(generator, ties=ties)
    ref_cov, ref_risk = _loop_curve(conf, correct)
    for target in [0.0, 0.05, 0.1, 0.2, 0.35, 1.0]:
        reachable = ref_cov[ref_risk <= target]
        expected = reachable.max() if reachable.size else 0.0
        assert float(coverage_at_risk(conf, correct, target)) == pytest.approx(expected, abs=EXACT)
    for target in [0.0025, 0.1, 0.5, 0.8, 1.0]:
        expected = ref_risk[np.argmax(ref_cov >= target - EXACT)]
        assert float(risk_at_coverage(conf, correct, target)) == pytest.approx(expected, abs=EXACT)


def test_hand_worked_without_ties():
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    coverage, risk = risk_coverage_curve(conf, correct)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(risk.numpy(), [0, 1 / 2, 1 / 3, 1 / 2], atol=EXACT)
    assert float(aurc(conf, correct)) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4, abs=EXACT)
    # the perfect ranking of 2 right and 2 wrong points: risks 0, 0, 1/3, 1/2
    assert float(eaurc(conf, correct)) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 - 1 / 3 - 1 / 2) / 4, abs=EXACT)
    assert float(coverage_at_risk(conf, correct, 0.4)) == 0.75
    assert float(coverage_at_risk(conf, correct, 0.0)) == 0.25
    assert float(risk_at_coverage(conf, correct, 0.5)) == 0.5
    assert float(risk_at_coverage(conf, correct, 0.6)) == pytest.approx(1 / 3, abs=EXACT)


def test_ties_enter_together_and_order_does_not_matter():
    conf, correct = torch.tensor([0.5, 0.9, 0.9]), torch.tensor([True, True, False])
    coverage, risk = risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(coverage.numpy(), [2 / 3, 2 / 3, 1], atol=EXACT)
    np.testing.assert_allclose(risk.numpy(), [1 / 2, 1 / 2, 1 / 3], atol=EXACT)
    assert float(aurc(conf, correct)) == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3, abs=EXACT)
    assert float(coverage_at_risk(conf, correct, 0.4)) == 1.0
    assert float(coverage_at_risk(conf, correct, 0.2)) == 0.0  # the tied pair cannot be split
    assert float(risk_at_coverage(conf, correct, 0.1)) == 0.5
    perm = torch.tensor([2, 0, 1])
    assert float(aurc(conf[perm], correct[perm])) == float(aurc(conf, correct))


def test_eaurc_extremes_and_large_n_limit(generator):
    conf = torch.rand(5000, generator=generator)
    assert float(eaurc(conf, conf > 0.3)) == pytest.approx(0.0, abs=EXACT)  # perfect ranking
    assert float(eaurc(conf, conf < 0.3)) > 0.25  # worst ranking
    assert float(aurc(conf, torch.zeros(5000))) == 1.0 and float(eaurc(conf, torch.zeros(5000))) == pytest.approx(0, abs=EXACT)
    assert float(aurc(conf, torch.ones(5000))) == 0.0 and float(eaurc(conf, torch.ones(5000))) == 0.0
    # the exact optimum tends to Geifman et al.'s r + (1 - r) ln(1 - r); the gap is (1 - r) * O(log N / N)
    correct = conf > 0.3
    r = float((~correct).double().mean())
    optimal = float(aurc(conf, correct) - eaurc(conf, correct))
    assert optimal == pytest.approx(_loop_optimal_aurc(5000, int((~correct).sum())), abs=EXACT)
    assert abs(optimal - (r + (1 - r) * math.log(1 - r))) < math.log(5000) / 5000


def test_works_with_top_label(generator):
    probs = torch.softmax(2 * torch.randn(300, 5, generator=generator), -1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    conf, correct = top_label(probs, labels)
    assert float(risk_at_coverage(conf, correct, 1.0)) == pytest.approx(1 - float((probs.argmax(1) == labels).double().mean()))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: aurc([0.1, float("nan")], [1, 0]), "confidence"),
        (lambda: aurc([[0.1, 0.2]], [1, 0]), "confidence"),
        (lambda: aurc([], []), "confidence"),
        (lambda: eaurc([0.1, 0.2], [1, 2]), "correct"),
        (lambda: risk_coverage_curve([0.1, 0.2], [1, 0.5]), "correct"),
        (lambda: aurc([0.1, 0.2, 0.3], [1, 0]), "correct"),
        (lambda: coverage_at_risk([0.1, 0.2], [1, 0], -0.1), "risk"),
        (lambda: coverage_at_risk([0.1, 0.2], [1, 0], 1.5), "risk"),
        (lambda: risk_at_coverage([0.1, 0.2], [1, 0], 0.0), "coverage"),
        (lambda: risk_at_coverage([0.1, 0.2], [1, 0], 1.01), "coverage"),
        (lambda: risk_at_coverage([0.1, 0.2], [1, 0], float("nan")), "coverage"),
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        call()


def test_wrong_kind_raises_type_error():
    with pytest.raises(TypeError, match="^confidence: "):
        aurc({"a": 1}, [1])
    with pytest.raises(TypeError, match="^risk: "):
        coverage_at_risk([0.1], [1], "low")
