"""Classification metrics against scikit-learn, torchmetrics, netcal and direct numpy formulas."""

from __future__ import annotations

import netcal.metrics as netcal
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from uqkit.calibration import classification as cls
from uqkit.calibration.classification import (
    accuracy,
    adaptive_ece,
    brier,
    classwise_ece,
    ece,
    mce,
    nll,
    reliability_curve,
    top_label,
)

# torchmetrics casts confidences to float32 and sums them in float32, so on general data its value is
# off by up to N * 2**-24 (recursive-summation bound). On probabilities that are multiples of 2**-12
# every float32 sum of up to 4096 of them is exact, and only a few final roundings (relative 2**-24
# each) separate it from uqkit's float64 value: 1e-6 is then a safe bound. netcal and numpy work in
# float64: agreement to 1e-12.
TM_ATOL = 1e-6
F64_ATOL = 1e-12


def _data(generator, num_points=2000, num_classes=10, scale=2.0, overconfident=1.0):
    """Logit-softmax probabilities and labels drawn from softened probabilities (miscalibrated when overconfident > 1)."""
    logits = scale * torch.randn(num_points, num_classes, generator=generator)
    probs = torch.softmax(overconfident * logits, -1)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    return probs, labels


def _dyadic(probs, bits=12):
    """Round probabilities down to multiples of 2**-bits and give the deficit to the top class (rows sum to 1 exactly).

    Rows whose confidence would become exactly 1 are dropped: torchmetrics puts 1.0 in an extra bin
    of its own, uqkit in the last bin.
    """
    q = torch.floor(probs * 2**bits) / 2**bits
    top = probs.argmax(1, keepdim=True)
    q.scatter_add_(1, top, (1 - q.sum(1, keepdim=True)))
    return q, q.amax(1) < 1


def _numpy_ece(probs, labels, num_bins):
    """Direct numpy top-label ECE (l1, l2, max) with right-closed bins via np.digitize(right=True)."""
    p, y = np.asarray(probs), np.asarray(labels)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.arange(num_bins + 1) / num_bins
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, num_bins - 1)
    weights, gaps = [], []
    for m in range(num_bins):
        inside = bins == m
        if inside.any():
            weights.append(inside.mean())
            gaps.append(abs(correct[inside].mean() - conf[inside].mean()))
    w, g = np.array(weights), np.array(gaps)
    return {"l1": (w * g).sum(), "l2": np.sqrt((w * g**2).sum()), "max": g.max()}


# ----------------------------------------------------------------------------- simple metrics
def test_accuracy_nll_brier_match_sklearn(generator):
    probs, labels = _data(generator, num_classes=7)
    p, y = probs.numpy(), labels.numpy()
    assert float(accuracy(probs, labels)) == pytest.approx(accuracy_score(y, p.argmax(1)), abs=F64_ATOL)
    assert float(nll(probs, labels)) == pytest.approx(log_loss(y, p, labels=range(7)), abs=F64_ATOL)
    assert float(brier(probs, labels)) == pytest.approx(brier_score_loss(y, p, labels=range(7)), abs=F64_ATOL)


def test_brier_binary_is_twice_sklearn_default(generator):
    probs, labels = _data(generator, num_classes=2)
    p, y = probs.numpy(), labels.numpy()
    assert float(brier(probs, labels)) == pytest.approx(2 * brier_score_loss(y, p[:, 1]), abs=F64_ATOL)
    assert float(brier(probs, labels)) == pytest.approx(brier_score_loss(y, p, scale_by_half=False), abs=F64_ATOL)


def test_hand_worked_values():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.7, 0.2], [0.0, 0.0, 1.0]])
    labels = torch.tensor([1, 1, 0])
    # argmax is the first index on ties, so row 0 predicts class 0 and is wrong
    assert float(accuracy(probs, labels)) == pytest.approx(1 / 3)
    assert float(brier(probs, labels)) == pytest.approx((0.5 + 0.14 + 2.0) / 3)
    # a zero probability on the true class is clamped at float64's tiny: -log(tiny) = 708.4 nats
    tiny = torch.finfo(torch.float64).tiny
    assert float(nll(probs, labels)) == pytest.approx((-np.log(0.5) - np.log(0.7) - np.log(tiny)) / 3)


def test_inputs_numpy_float32_and_output_type(generator):
    probs, labels = _data(generator)
    out = ece(probs.float().numpy(), labels.numpy())
    assert out.dtype == torch.float64 and out.ndim == 0
    assert float(out) == pytest.approx(float(ece(probs.float(), labels)), abs=0)
    assert float(out) == pytest.approx(float(ece(probs, labels)), abs=1e-6)  # float32 confidences, float64 sums


# ------------------------------------------------------------------------------------------ ECE
@pytest.mark.parametrize("num_classes", [3, 10])
@pytest.mark.parametrize("num_bins", [1, 7, 15])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_torchmetrics_and_numpy(generator, num_classes, num_bins, norm):
    probs, labels = _data(generator, num_classes=num_classes, overconfident=1.5)
    assert float(ece(probs, labels, num_bins=num_bins, norm=norm)) == pytest.approx(
        _numpy_ece(probs, labels, num_bins)[norm], abs=F64_ATOL
    )
    # dyadic probabilities: no confidence sits on an edge m/M (M = 1, 7, 15), float32 sums are exact
    probs, keep = _dyadic(probs)
    probs, labels = probs[keep], labels[keep]
    ours = float(ece(probs, labels, num_bins=num_bins, norm=norm))
    ref = multiclass_calibration_error(probs, labels, num_classes, n_bins=num_bins, norm=norm)
    assert ours == pytest.approx(float(ref), abs=TM_ATOL)
    assert ours == pytest.approx(_numpy_ece(probs, labels, num_bins)[norm], abs=F64_ATOL)


@pytest.mark.parametrize("num_bins", [10, 15])
def test_ece_and_mce_match_netcal(generator, num_bins):
    probs, labels = _data(generator, num_classes=5, overconfident=2.0)
    p, y = probs.numpy(), labels.numpy()
    assert float(ece(probs, labels, num_bins=num_bins)) == pytest.approx(netcal.ECE(bins=num_bins).measure(p, y), abs=F64_ATOL)
    assert float(mce(probs, labels, num_bins=num_bins)) == pytest.approx(netcal.MCE(bins=num_bins).measure(p, y), abs=F64_ATOL)
    assert float(mce(probs, labels, num_bins=num_bins)) == float(ece(probs, labels, num_bins=num_bins, norm="max"))


def test_bin_edges_are_right_closed_hand_worked():
    # confidences 0.2 (right), 0.3 (wrong), 0.4 (right), 0.4 (wrong), 1.0 (right) in 5 bins
    rest = lambda c: [c] + [(1 - c) / 4] * 4  # noqa: E731
    probs = torch.tensor([rest(0.2), rest(0.3), rest(0.4), rest(0.4), rest(1.0)])
    labels = torch.tensor([0, 1, 0, 1, 0])
    curve = reliability_curve(probs, labels, num_bins=5)
    assert curve["edges"][1] == 0.2 and curve["edges"][2] == 0.4
    # right-closed: 0.2 -> bin 1 (which includes 0), {0.3, 0.4, 0.4} -> bin 2, 1.0 -> bin 5
    assert curve["count"].tolist() == [1, 3, 0, 0, 1]
    # ECE = (|1 - 0.2| + |1 - (0.3 + 0.4 + 0.4)| + 0) / 5, MCE = 0.8
    assert float(ece(probs, labels, num_bins=5)) == pytest.approx(0.18, abs=F64_ATOL)
    assert float(mce(probs, labels, num_bins=5)) == pytest.approx(0.8, abs=F64_ATOL)
    assert _numpy_ece(probs, labels, 5)["l1"] == pytest.approx(0.18, abs=F64_ATOL)
    # torchmetrics closes bins on the left ({0.2, 0.3}, {0.4, 0.4}, {1.0}): (0.5 + 0.2 + 0) / 5
    tm = multiclass_calibration_error(probs, labels, 5, n_bins=5, norm="l1")
    assert float(tm) == pytest.approx(0.14, abs=TM_ATOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_bins", [3, 10, 15])
def test_every_edge_value_lands_in_the_bin_below(dtype, num_bins):
    num_classes = 10
    edges = torch.arange(num_bins + 1, dtype=dtype) / num_bins  # m / M correctly rounded
    # top-label confidences: every edge >= 1/C, and the floats just above and just below it
    top = edges[edges >= 1 / num_classes]
    above = torch.nextafter(top, torch.tensor(2.0, dtype=dtype))[:-1]
    below = torch.nextafter(top, torch.tensor(0.0, dtype=dtype))[1:]
    conf = torch.cat([top, above, below])
    rest = ((1 - conf) / (num_classes - 1)).unsqueeze(1).expand(-1, num_classes - 1)
    probs = torch.cat([conf.unsqueeze(1), rest], 1)
    assert bool((probs.argmax(1) == 0).all()) and bool((probs.amax(1) == conf).all())
    curve = reliability_curve(probs, torch.zeros(len(conf), dtype=torch.long), num_bins=num_bins)
    assert torch.equal(curve["edges"], edges.to(torch.float64))
    # a confidence in (e_{m-1}, e_m] goes to bin m: count the expected members of each bin directly
    expected = [int(((conf > edges[m - 1]) & (conf <= edges[m])).sum()) for m in range(1, num_bins + 1)]
    expected[0] += int((conf == 0).sum())
    assert curve["count"].tolist() == expected
    on_edge = [int((top == edges[m]).sum()) for m in range(1, num_bins + 1)]
    assert sum(on_edge) == len(top) and all(c >= e for c, e in zip(expected, on_edge))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decimal_edges(dtype):
    # 0.3 and 0.7 are edges of 10 bins in both precisions: they close bins 3 and 7
    probs = torch.tensor([[0.3, 0.25, 0.25, 0.2], [0.7, 0.1, 0.1, 0.1], [0.31, 0.23, 0.23, 0.23]], dtype=dtype)
    curve = reliability_curve(probs, torch.tensor([0, 0, 1]), num_bins=10)
    assert torch.nonzero(curve["count"]).squeeze(1).tolist() == [2, 3, 6]


def test_reliability_curve_consistent_with_ece(generator):
    probs, labels = _data(generator, num_points=500, num_classes=4, overconfident=2.0)
    curve = reliability_curve(probs, labels, num_bins=20)
    assert set(curve) == {"edges", "confidence", "accuracy", "count"}
    assert curve["edges"].shape == (21,) and curve["count"].shape == (20,)
    empty = curve["count"] == 0
    assert bool(empty.any()), "with confidences >= 1/4 the low bins must be empty"
    assert bool(curve["confidence"][empty].isnan().all()) and bool(curve["accuracy"][empty].isnan().all())
    assert int(curve["count"].sum()) == 500
    full = ~empty
    weighted = (curve["count"][full] / 500 * (curve["accuracy"][full] - curve["confidence"][full]).abs()).sum()
    assert float(weighted) == pytest.approx(float(ece(probs, labels, num_bins=20)), abs=F64_ATOL)
    # bin means lie inside their bins
    lo, hi = curve["edges"][:-1][full], curve["edges"][1:][full]
    assert bool(((curve["confidence"][full] > lo) & (curve["confidence"][full] <= hi)).all())


# ---------------------------------------------------------------------------- equal-mass bins
def _numpy_mass_ece(probs, labels, num_bins):
    """Equal-mass ECE from ranks: the point of rank r (distinct confidences) is in bin floor(r M / N)."""
    p, y = np.asarray(probs), np.asarray(labels)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    bins = np.empty(len(conf), dtype=int)
    bins[np.argsort(conf)] = np.arange(len(conf)) * num_bins // len(conf)
    return sum(abs(correct[bins == m].sum() - conf[bins == m].sum()) for m in range(num_bins)) / len(conf)


@pytest.mark.parametrize("num_points", [997, 2000, 3001])
def test_adaptive_ece_matches_rank_formula(generator, num_points):
    probs, labels = _data(generator, num_points=num_points, num_classes=6, overconfident=1.7)
    assert float(adaptive_ece(probs, labels)) == pytest.approx(_numpy_mass_ece(probs, labels, 15), abs=F64_ATOL)
    counts = reliability_curve(probs, labels, binning="mass")["count"]
    assert int(counts.max() - counts.min()) <= 1


def test_adaptive_ece_against_netcal(generator):
    """netcal's equal-mass edges are interpolated quantiles with left-closed bins.

    When M divides N its bins hold exactly the same points as ours (edge positions (N-1) m / M round up
    to N m / M), so ECE and ACE (equal bin weights) coincide; otherwise each edge moves at most one
    point, and the ECE changes by at most 2 (M - 1) / N.
    """
    num_bins = 15
    probs, labels = _data(generator, num_points=1500, num_classes=6, overconfident=1.7)
    p, y = probs.numpy(), labels.numpy()
    ours = float(adaptive_ece(probs, labels, num_bins=num_bins))
    assert ours == pytest.approx(netcal.ECE(bins=num_bins, equal_intervals=False).measure(p, y), abs=F64_ATOL)
    assert ours == pytest.approx(netcal.ACE(bins=num_bins, equal_intervals=False).measure(p, y), abs=F64_ATOL)
    p, y = p[:1493], y[:1493]
    diff = abs(float(adaptive_ece(p, y, num_bins=num_bins)) - netcal.ECE(bins=num_bins, equal_intervals=False).measure(p, y))
    assert diff <= 2 * (num_bins - 1) / len(y)


def test_adaptive_ece_keeps_ties_together():
    probs = torch.tensor([[0.6, 0.4]] * 6 + [[0.9, 0.1]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0])
    curve = reliability_curve(probs, labels, num_bins=4, binning="mass")
    assert curve["count"][curve["count"] > 0].tolist() == [6, 2]
    assert float(adaptive_ece(probs, labels, num_bins=4)) == pytest.approx((6 * 0.1 + 2 * 0.1) / 8, abs=F64_ATOL)


# ------------------------------------------------------------------------------------ classwise
def _numpy_classwise(probs, labels, num_bins):
    p, y = np.asarray(probs), np.asarray(labels)
    edges = np.arange(num_bins + 1) / num_bins
    per_class = []
    for c in range(p.shape[1]):
        pc, hit = p[:, c], (y == c).astype(float)
        bins = np.digitize(pc, edges[1:-1], right=True)
        per_class.append(sum(abs(hit[bins == m].sum() - pc[bins == m].sum()) for m in range(num_bins)) / len(y))
    return np.mean(per_class)


def test_classwise_ece_matches_numpy(generator, monkeypatch):
    probs, labels = _data(generator, num_points=3000, num_classes=8, overconfident=1.5)
    expected = _numpy_classwise(probs, labels, 15)
    assert float(classwise_ece(probs, labels)) == pytest.approx(expected, abs=F64_ATOL)
    monkeypatch.setattr(cls, "_CHUNK_ELEMENTS", 8 * 7)  # 7 rows per block, last block partial
    assert float(classwise_ece(probs, labels)) == pytest.approx(expected, abs=F64_ATOL)


def test_classwise_ece_hand_worked():
    # 2 bins: p in [0, 0.5] -> bin 1 (zeros included), (0.5, 1] -> bin 2
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    labels = torch.tensor([0, 1, 0])
    # class 0: bin 1 {0.5 (no), 0.25 (yes)}: |1 - 0.75|; bin 2 {1.0 (yes)}: 0  -> 0.25 / 3
    # class 1: bin 1 {0.0 (no), 0.5 (yes)}: |1 - 0.5|; bin 2 {0.75 (no)}: 0.75 -> 1.25 / 3
    assert float(classwise_ece(probs, labels, num_bins=2)) == pytest.approx((0.25 + 1.25) / 6, abs=F64_ATOL)


def test_top_label(generator):
    probs, labels = _data(generator, num_points=50)
    conf, correct = top_label(probs.numpy(), labels)
    assert torch.equal(conf, probs.amax(1)) and torch.equal(correct, probs.argmax(1) == labels)
    assert correct.dtype == torch.bool


# ----------------------------------------------------------------------------------- bad inputs
METRICS = [accuracy, nll, brier, ece, mce, adaptive_ece, classwise_ece, reliability_curve, top_label]
GOOD_P = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]
GOOD_Y = [0, 2]


@pytest.mark.parametrize("metric", METRICS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("probs", "labels", "name", "words"),
    [
        ([[0.7, 0.2, float("nan")], [0.1, 0.1, 0.8]], GOOD_Y, "probs", "finite"),
        ([[0.7, 0.2, float("inf")], [0.1, 0.1, 0.8]], GOOD_Y, "probs", "finite"),
        ([0.7, 0.2, 0.1], GOOD_Y, "probs", "2-D"),
        ([GOOD_P], GOOD_Y, "probs", "2-D"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "probs", "non-empty"),
        ([[0.7, 0.2, 0.2], [0.1, 0.1, 0.8]], GOOD_Y, "probs", "sum to 1"),
        ([[1.2, -0.1, -0.1], [0.1, 0.1, 0.8]], GOOD_Y, "probs", r"\[0, 1\]"),
        (GOOD_P, [0, 3], "labels", r"\[0, 2\]"),
        (GOOD_P, [-1, 0], "labels", r"\[0, 2\]"),
        (GOOD_P, [0.5, 1.0], "labels", "integer"),
        (GOOD_P, [0, 1, 2], "labels", "2 labels"),
        (GOOD_P, [[0, 1]], "labels", "1-D"),
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(metric, probs, labels, name, words):
    with pytest.raises(ValueError, match=rf"^{name}: .*{words}"):
        metric(probs, labels)


def test_wrong_kinds_and_options():
    with pytest.raises(TypeError, match="^probs: "):
        ece("not an array", GOOD_Y)
    with pytest.raises(TypeError, match="^num_bins: "):
        ece(GOOD_P, GOOD_Y, num_bins=2.5)
    with pytest.raises(ValueError, match="^num_bins: "):
        classwise_ece(GOOD_P, GOOD_Y, num_bins=0)
    with pytest.raises(ValueError, match="^norm: "):
        ece(GOOD_P, GOOD_Y, norm="l3")
    with pytest.raises(ValueError, match="^binning: "):
        reliability_curve(GOOD_P, GOOD_Y, binning="quantile")
    assert float(ece(GOOD_P, GOOD_Y, num_bins=np.int64(4))) == float(ece(GOOD_P, GOOD_Y, num_bins=4))
