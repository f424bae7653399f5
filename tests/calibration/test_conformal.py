"""Split conformal prediction: exact finite-sample coverage, scores against direct loops, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from uqkit.calibration.conformal import ConformalClassifier, SplitConformalRegressor, conformal_quantile, set_size
from uqkit.calibration.predictive import Predictive

LEVEL = 0.9
NUM_CAL = 25  # rank ceil(26 * 0.9) = 24: expected coverage 24/26, strictly inside [0.9, 0.9 + 1/26)
NUM_TEST = 100
NUM_SPLITS = 300


def _exact_coverage(num_cal: int, level: float) -> float:
    """Expected coverage of split conformal with continuous scores: ``ceil((n + 1) level) / (n + 1)``."""
    return math.ceil((num_cal + 1) * level) / (num_cal + 1)


def _assert_coverage(per_split: np.ndarray, *, exact: bool) -> None:
    """The mean coverage over splits is within 4 Monte Carlo standard errors of the finite-sample bounds."""
    mean, mc_se = per_split.mean(), per_split.std(ddof=1) / np.sqrt(len(per_split))
    assert mean >= LEVEL - 4 * mc_se
    if exact:
        assert mean <= LEVEL + 1 / (NUM_CAL + 1) + 4 * mc_se
        assert abs(mean - _exact_coverage(NUM_CAL, LEVEL)) <= 4 * mc_se


def _regression_split(generator, num):
    x = 4 * torch.rand(num, generator=generator) - 2
    noise_sd = 0.2 + 0.3 * x.abs()
    y = torch.sin(2 * x) + noise_sd * torch.randn(num, generator=generator)
    # A biased, misspecified model: conformal coverage must not depend on it being right.
    return Predictive.gaussian(torch.sin(2 * x) + 0.1, (0.5 * noise_sd) ** 2), y


@pytest.mark.parametrize("score", ["abs", "normalized"])
def test_split_conformal_regression_has_exact_marginal_coverage(generator, score):
    coverage = np.empty(NUM_SPLITS)
    for split in range(NUM_SPLITS):
        pred_cal, y_cal = _regression_split(generator, NUM_CAL)
        pred_test, y_test = _regression_split(generator, NUM_TEST)
        lower, upper = SplitConformalRegressor(LEVEL, score=score).fit(pred_cal, y_cal).predict_interval(pred_test)
        coverage[split] = float(((lower <= y_test) & (y_test <= upper)).double().mean())
    _assert_coverage(coverage, exact=True)


def test_split_conformal_regression_threshold_and_outputs(generator):
    mean, sd = torch.randn(1, 40, 2, generator=generator), torch.rand(1, 40, 2, generator=generator) + 0.5
    pred = Predictive.gaussian(mean, sd**2)
    y = torch.randn(40, 2, generator=generator)
    model = SplitConformalRegressor(0.8, score="normalized").fit(pred, y)
    scores = ((y - mean[0]).abs() / sd[0]).numpy()
    rank = math.ceil(41 * 0.8)
    np.testing.assert_allclose(model.qhat_.numpy(), np.sort(scores, axis=0)[rank - 1], rtol=1e-15)
    lower, upper = model.predict_interval(pred)
    torch.testing.assert_close(upper - lower, 2 * model.qhat_ * sd[0])
    with pytest.raises(ValueError, match=r"^pred: expected outputs of shape \(2,\)"):
        model.predict_interval(Predictive.gaussian(torch.zeros(5), torch.ones(5)))


def _classification_splits(generator, sharpen=1.0):
    """``NUM_SPLITS`` exchangeable calibration/test splits of 5-class data, simulated in one batch.

    Labels are drawn from ``softmax(z)``; the model reports ``softmax(sharpen * z)``.
    """
    true_logits = 2 * torch.randn(NUM_SPLITS, NUM_CAL + NUM_TEST, 5, generator=generator)
    labels = torch.multinomial(torch.softmax(true_logits, -1).view(-1, 5), 1, generator=generator)
    probs = torch.softmax(sharpen * true_logits, -1)
    labels = labels.view(NUM_SPLITS, -1)
    for split in range(NUM_SPLITS):
        yield (probs[split, :NUM_CAL], labels[split, :NUM_CAL]), (probs[split, NUM_CAL:], labels[split, NUM_CAL:])


@pytest.mark.parametrize(("method", "randomized"), [("thr", False), ("aps", True), ("aps", False)])
def test_conformal_classifier_has_exact_marginal_coverage(generator, method, randomized):
    coverage = np.empty(NUM_SPLITS)
    for split, ((probs_cal, y_cal), (probs_test, y_test)) in enumerate(_classification_splits(generator, sharpen=1.5)):
        model = ConformalClassifier(LEVEL, method=method, randomized=randomized)
        sets = model.fit(probs_cal, y_cal, generator=generator).predict_set(probs_test, generator=generator)
        coverage[split] = float(sets.gather(-1, y_test.unsqueeze(-1)).double().mean())
    # Deterministic APS has tied (conservative) scores: only the lower bound holds.
    _assert_coverage(coverage, exact=method == "thr" or randomized)


def test_thr_sets_are_not_larger_than_aps_on_a_well_specified_model(generator):
    size_gap = np.empty(NUM_SPLITS)
    for split, ((probs_cal, y_cal), (probs_test, _)) in enumerate(_classification_splits(generator)):
        sizes = []
        for method in ("thr", "aps"):
            model = ConformalClassifier(LEVEL, method=method, randomized=True)
            model.fit(probs_cal, y_cal, generator=generator)
            sizes.append(float(set_size(model.predict_set(probs_test, generator=generator)).double().mean()))
        size_gap[split] = sizes[1] - sizes[0]
    # Same expected coverage (both exact); THR (Sadinle et al.) is the smaller on average.
    assert size_gap.mean() > -4 * size_gap.std(ddof=1) / np.sqrt(NUM_SPLITS)


def test_aps_scores_and_threshold_match_a_direct_loop(generator):
    probs = torch.softmax(torch.randn(30, 4, generator=generator), -1)
    labels = torch.randint(0, 4, (30,), generator=generator)
    for randomized in (False, True):
        u = torch.rand(30, 1, generator=torch.Generator().manual_seed(7)).numpy()[:, 0] if randomized else np.ones(30)
        expected = np.empty((30, 4))
        for i, row in enumerate(probs.numpy()):
            order = np.argsort(-row, kind="stable")
            for rank, k in enumerate(order):
                expected[i, k] = row[order[:rank]].sum() + u[i] * row[k]
        model = ConformalClassifier(0.7, method="aps", randomized=randomized)
        model.fit(probs, labels, generator=torch.Generator().manual_seed(7))  # same uniforms as above
        calibration = np.sort(expected[np.arange(30), labels.numpy()])
        assert float(model.qhat_) == pytest.approx(calibration[math.ceil(31 * 0.7) - 1], rel=1e-14)
        scores = model._scores(probs, torch.Generator().manual_seed(7) if randomized else None)
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-14)
    sets = ConformalClassifier(0.7, method="aps").fit(probs, labels).predict_set(probs)
    assert bool(sets.any(-1).all())  # deterministic APS always keeps the top class


def test_thr_sets_and_set_size(generator):
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.05, 0.05, 0.9]])
    model = ConformalClassifier(0.7, method="thr").fit(probs, torch.tensor([0, 1, 2]))
    assert float(model.qhat_) == pytest.approx(0.65)  # scores (0.3, 0.65, 0.1); rank ceil(4 * 0.7) = 3
    sets = model.predict_set(Predictive.from_probs(probs))
    assert sets.tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    assert set_size(sets).tolist() == [1, 2, 1]


def test_conformal_quantile_minimum_sample_size():
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        percent = round(level * 100)
        need = next(n for n in range(1, 10_000) if (n + 1) * percent <= 100 * n)  # exact integer arithmetic
        conformal_quantile(torch.arange(float(need)), level)
        with pytest.raises(ValueError, match=f"needs at least {need} calibration points, got {need - 1}"):
            conformal_quantile(torch.arange(float(need - 1)), level)


def test_bad_inputs_raise_clear_errors(generator):
    pred = Predictive.gaussian(torch.zeros(5), torch.ones(5))
    probs = torch.full((5, 2), 0.5)
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="^level: expected"):
            SplitConformalRegressor(level).fit(pred, torch.zeros(5))
        with pytest.raises(ValueError, match="^level: expected"):
            ConformalClassifier(level).fit(probs, torch.zeros(5))
    with pytest.raises(ValueError, match="^y_cal: level 0.9 needs at least 9 calibration points, got 5"):
        SplitConformalRegressor(0.9).fit(pred, torch.zeros(5))
    with pytest.raises(ValueError, match="^labels: level 0.95 needs at least 19 calibration points, got 5"):
        ConformalClassifier(0.95).fit(probs, torch.zeros(5))
    with pytest.raises(ValueError, match="^score: expected 'abs' or 'normalized'"):
        SplitConformalRegressor(0.5, score="squared").fit(pred, torch.zeros(5))
    with pytest.raises(ValueError, match="^method: expected 'thr' or 'aps'"):
        ConformalClassifier(0.5, method="raps").fit(probs, torch.zeros(5))
    with pytest.raises(ValueError, match="^generator: randomized APS needs a torch.Generator"):
        ConformalClassifier(0.5, method="aps", randomized=True).fit(probs, torch.zeros(5))
    with pytest.raises(ValueError, match="^probs: expected each row to sum to 1"):
        ConformalClassifier(0.5).fit(torch.full((5, 2), 0.3), torch.zeros(5))
    with pytest.raises(ValueError, match="^probs: expected class probabilities or a classification Predictive"):
        ConformalClassifier(0.5).fit(pred, torch.zeros(5))
    with pytest.raises(ValueError, match="^pred: expected a regression Predictive"):
        SplitConformalRegressor(0.5).fit(Predictive.from_probs(probs), torch.zeros(5))
    with pytest.raises(ValueError, match="^labels: expected labels in"):
        ConformalClassifier(0.5).fit(probs, torch.full((5,), 2))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        SplitConformalRegressor().predict_interval(pred)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ConformalClassifier().predict_set(probs)
    with pytest.raises(ValueError, match="^sets: expected a boolean tensor"):
        set_size(torch.ones(3, 2))
