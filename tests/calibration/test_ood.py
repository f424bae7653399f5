"""OOD scores against direct numpy/scipy formulas; detection metrics against scikit-learn, scipy and loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import entropy, mannwhitneyu
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from uqkit.calibration.ood import (
    OOD_SCORES,
    energy_score,
    entropy_score,
    fpr_at_tpr,
    max_logit_score,
    msp_score,
    mutual_information_score,
    ood_aupr_in,
    ood_aupr_out,
    ood_auroc,
    ood_roc_curve,
    variance_score,
)
from uqkit.calibration.predictive import Predictive

EXACT = 1e-12


# ----------------------------------------------------------------------------------------- scores
@pytest.fixture
def ensemble(generator):
    """An S = 4 weighted ensemble of logits [S, N, C] and its numpy reference quantities."""
    logits = 2 * torch.randn(4, 50, 6, generator=generator)
    log_weights = torch.randn(4, generator=generator)
    z, w = logits.numpy(), softmax(log_weights.numpy())
    probs = softmax(z, axis=-1)
    mix = np.einsum("s,snc->nc", w, probs)
    return Predictive.from_logits(logits, log_weights=log_weights), z, w, probs, mix


def test_classification_scores_match_numpy(ensemble):
    pred, z, w, probs, mix = ensemble
    np.testing.assert_allclose(msp_score(pred).numpy(), 1 - mix.max(-1), atol=EXACT)
    np.testing.assert_allclose(max_logit_score(pred).numpy(), -(w @ z.max(-1)), atol=EXACT)
    np.testing.assert_allclose(energy_score(pred).numpy(), -(w @ logsumexp(z, axis=-1)), atol=EXACT)
    total = entropy(mix, axis=-1)
    np.testing.assert_allclose(entropy_score(pred).numpy(), total, atol=EXACT)
    np.testing.assert_allclose(mutual_information_score(pred).numpy(), total - w @ entropy(probs, axis=-1), atol=EXACT)
    spread = np.einsum("s,snc->nc", w, (probs - mix) ** 2).sum(-1)
    np.testing.assert_allclose(variance_score(pred).numpy(), spread, atol=EXACT)


def test_single_draw_scores(generator):
    logits = torch.randn(30, 3, generator=generator)
    pred = Predictive.from_logits(logits)
    np.testing.assert_allclose(energy_score(pred).numpy(), -logsumexp(logits.numpy(), axis=-1), atol=EXACT)
    assert torch.equal(mutual_information_score(pred), torch.zeros(30))
    assert torch.equal(variance_score(pred), torch.zeros(30))


@pytest.mark.parametrize("shape", [(3, 40), (3, 40, 2)])
def test_regression_variance_score_is_total_variance(generator, shape):
    mean = torch.randn(*shape, generator=generator)
    var = torch.rand(*shape, generator=generator) + 0.1
    pred = Predictive.gaussian(mean, var)
    m, v = mean.numpy(), var.numpy()
    total = (v + m**2).mean(0) - m.mean(0) ** 2
    np.testing.assert_allclose(variance_score(pred).numpy(), total if total.ndim == 1 else total.sum(-1), atol=EXACT)
    assert entropy_score(pred).shape == (40,)


def test_scores_rank_ood_above_in_distribution():
    # in-distribution: every member is confident in class 0; OOD: members disagree, each fairly flat
    z_in = torch.tensor([[6.0, 0, 0]]).expand(4, 10, 3)
    z_out = torch.tensor([[1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5], [0.5, 0.5, 0]]).unsqueeze(1).expand(4, 10, 3)
    pred_in, pred_out = Predictive.from_logits(z_in), Predictive.from_logits(z_out)
    for name, score in OOD_SCORES.items():
        s_in, s_out = score(pred_in), score(pred_out)
        assert s_in.shape == s_out.shape == (10,)
        assert bool((s_out > s_in).all()), name
        assert float(ood_auroc(s_in, s_out)) == 1.0


def test_ood_scores_table():
    assert set(OOD_SCORES) == {"msp", "max_logit", "energy", "entropy", "mutual_information", "variance"}
    assert OOD_SCORES["energy"] is energy_score and OOD_SCORES["msp"] is msp_score


def test_score_errors_name_pred():
    from_probs = Predictive.from_probs([[0.3, 0.7]])
    regression = Predictive.gaussian(torch.zeros(3), torch.ones(3))
    for score in (energy_score, max_logit_score):
        with pytest.raises(ValueError, match="^pred: .*logits"):
            score(from_probs)
    for score in (energy_score, max_logit_score, msp_score):
        with pytest.raises(ValueError, match="^pred: .*classification"):
            score(regression)
    for score in OOD_SCORES.values():
        with pytest.raises(TypeError, match="^pred: "):
            score(torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------- metrics
def _scores(generator, num_in=300, num_out=200, ties=False):
    s_in = torch.randn(num_in, generator=generator)
    s_out = torch.randn(num_out, generator=generator) + 1.0
    if ties:
        s_in, s_out = torch.round(s_in * 2) / 2, torch.round(s_out * 2) / 2
    return s_in, s_out


def _loop_ap(pos, neg):
    """Average precision, step-wise over distinct thresholds (positives = ``pos``)."""
    total = len(pos)
    ap, last_recall = 0.0, 0.0
    for t in np.unique(np.concatenate([pos, neg]))[::-1]:
        tp, fp = (pos >= t).sum(), (neg >= t).sum()
        ap += (tp / total - last_recall) * tp / (tp + fp)
        last_recall = tp / total
    return ap


def _loop_fpr_at_tpr(s_in, s_out, tpr):
    """The lowest FPR over all thresholds ``score >= t`` whose TPR reaches ``tpr``."""
    best = 1.0
    for t in np.unique(np.concatenate([s_in, s_out])):
        if (s_out >= t).sum() >= tpr * len(s_out) - 1e-9:
            best = min(best, (s_in >= t).mean())
    return best


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_aupr_match_sklearn_scipy_and_loops(generator, ties):
    s_in, s_out = _scores(generator, ties=ties)
    a, b = s_in.numpy(), s_out.numpy()
    y, s = np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]
    auroc = float(ood_auroc(s_in, s_out))
    assert auroc == pytest.approx(roc_auc_score(y, s), abs=EXACT)
    u = mannwhitneyu(b, a).statistic  # U counts OOD-above-ID pairs, ties as 1/2
    assert auroc == pytest.approx(u / (len(a) * len(b)), abs=EXACT)
    assert float(ood_aupr_out(s_in, s_out)) == pytest.approx(average_precision_score(y, s), abs=EXACT)
    assert float(ood_aupr_out(s_in, s_out)) == pytest.approx(_loop_ap(b, a), abs=EXACT)
    assert float(ood_aupr_in(s_in, s_out)) == pytest.approx(average_precision_score(1 - y, -s), abs=EXACT)
    assert float(ood_aupr_in(s_in, s_out)) == pytest.approx(_loop_ap(-a, -b), abs=EXACT)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("tpr", [0.5, 0.8, 0.95, 1.0])
def test_fpr_at_tpr_matches_threshold_loop_and_roc_curve(generator, ties, tpr):
    s_in, s_out = _scores(generator, ties=ties)
    a, b = s_in.numpy(), s_out.numpy()
    ours = float(fpr_at_tpr(s_in, s_out, tpr))
    assert ours == pytest.approx(_loop_fpr_at_tpr(a, b, tpr), abs=EXACT)
    fpr, tprs, _ = roc_curve(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b], drop_intermediate=False)
    assert ours == pytest.approx(fpr[np.searchsorted(tprs, tpr - 1e-12)], abs=EXACT)


def test_fpr_at_tpr_hand_worked():
    s_out = torch.arange(1.0, 11.0)  # OOD scores 1..10
    s_in = torch.tensor([0.0, 2.5, 3.0, 8.5])
    # tpr 0.8 of 10 points: flag the 8 highest, threshold 3.0 (score >= 3): ID points 3.0 and 8.5 are flagged
    assert float(fpr_at_tpr(s_in, s_out, 0.8)) == 0.5
    # tpr 0.75 needs ceil(7.5) = 8 points as well; tpr 0.7 needs 7: threshold 4.0
    assert float(fpr_at_tpr(s_in, s_out, 0.75)) == 0.5
    assert float(fpr_at_tpr(s_in, s_out, 0.7)) == 0.25
    assert float(fpr_at_tpr(s_in, s_out, 1.0)) == 0.75  # threshold 1.0
    assert float(fpr_at_tpr(s_in, s_out, 0.01)) == 0.0  # threshold 10.0


def test_roc_curve_matches_sklearn(generator):
    s_in, s_out = _scores(generator, ties=True)
    fpr, tpr = ood_roc_curve(s_in.numpy(), s_out.numpy())
    ref_fpr, ref_tpr, _ = roc_curve(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in.numpy(), s_out.numpy()])
    np.testing.assert_array_equal(fpr.numpy(), ref_fpr)
    np.testing.assert_array_equal(tpr.numpy(), ref_tpr)
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(float(ood_auroc(s_in, s_out)), abs=EXACT)


METRICS = [ood_auroc, ood_aupr_in, ood_aupr_out, fpr_at_tpr, ood_roc_curve]


@pytest.mark.parametrize("metric", METRICS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("scores_in", "scores_out", "name"),
    [
        ([], [1.0, 2.0], "scores_in"),
        ([1.0, 2.0], np.zeros(0), "scores_out"),
        ([1.0, float("nan")], [1.0], "scores_in"),
        ([1.0], [float("inf")], "scores_out"),
        ([[1.0, 2.0]], [1.0], "scores_in"),
    ],
)
def test_bad_scores_raise_value_error_naming_argument(metric, scores_in, scores_out, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        metric(scores_in, scores_out)


@pytest.mark.parametrize("tpr", [0.0, -0.5, 1.5, float("nan")])
def test_bad_tpr(tpr):
    with pytest.raises(ValueError, match="^tpr: "):
        fpr_at_tpr([0.0, 1.0], [2.0, 3.0], tpr)
