"""Window-based early-exit cascades: decisions against a direct numpy implementation of the rule, thresholds, FLOPs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import percentileofscore
from torch import nn

from uqkit.inference.cascade import WindowCascade, confidence, operating_threshold, window
from uqkit.models.nets import MLP

C = 4


class _Slice(nn.Module):
    """A 'member' whose logits are a slice of the input: inputs ``[N, K*C]`` hold every member's logits."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.k * C:(self.k + 1) * C] * 1.0


def _logits(generator: torch.Generator, n: int) -> torch.Tensor:
    """``[n, 2C]``: member-1 and member-2 logits with a spread of confidences."""
    return torch.randn(n, 2 * C, generator=generator) * torch.rand(n, 1, generator=generator) * 4


def _numpy_window(reference: np.ndarray, tau: float, width: float) -> tuple[float, float]:
    q = percentileofscore(reference, tau)  # kind="rank", as the reference code
    return tuple(np.percentile(reference, [max(q - width, 0), min(q + width, 100)]))


def _numpy_cov_threshold(scores: np.ndarray, correct: np.ndarray, risk: float) -> float:
    """Brute force: among thresholds t (accept scores >= t), the one with the largest coverage and risk <= target."""
    best_cov, best_t = 0.0, np.inf
    for t in np.unique(scores):
        accepted = scores >= t
        if np.mean(~correct[accepted]) <= risk and accepted.mean() > best_cov:
            best_cov, best_t = accepted.mean(), t
    return best_t


@pytest.mark.parametrize("score", ["msp", "energy"])
@pytest.mark.parametrize("adjusted", [False, True])
def test_decisions_match_direct_window_rule(generator, score, adjusted):
    x_val, x_test = _logits(generator, 400), _logits(generator, 300)
    y_val = torch.randint(0, C, (400,), generator=generator)
    y_val[:300] = x_val[:300, :C].argmax(-1)  # 75% right, so a 5%-risk point needs a real threshold
    cascade = WindowCascade([_Slice(0), _Slice(1)], score=score, operating_point="cov@5" if score == "msp" else "tpr@95",
                            width=10, adjusted=adjusted).fit(x_val, y_val)
    out = cascade.predict(x_test)

    z_val, z_test = x_val.numpy(), x_test.numpy()
    if score == "msp":
        s_val, s_test = softmax(z_val[:, :C], -1).max(-1), softmax(z_test[:, :C], -1).max(-1)
        tau = _numpy_cov_threshold(s_val, z_val[:, :C].argmax(-1) == y_val.numpy(), 0.05)
    else:
        s_val, s_test = logsumexp(z_val[:, :C], -1), logsumexp(z_test[:, :C], -1)
        tau = np.percentile(s_val, 5)
    assert cascade.threshold_ == pytest.approx(tau, rel=1e-12)
    lo, hi = _numpy_window(s_test if adjusted else s_val, tau, 10)
    deferred = (s_test >= lo) & (s_test <= hi)
    np.testing.assert_array_equal(out.deferred.numpy(), deferred)
    assert out.fraction_deferred == pytest.approx(deferred.mean())

    # outputs: member 1 where it exits, the two-member average where deferred, score recomputed from it
    probs = softmax(z_test[:, :C], -1)
    both = (softmax(z_test[:, :C], -1) + softmax(z_test[:, C:], -1)) / 2
    probs[deferred] = both[deferred]
    np.testing.assert_allclose(out.probs.numpy(), probs, rtol=1e-12)
    if score == "msp":
        expected_conf = np.where(deferred, both.max(-1), s_test)
    else:
        expected_conf = np.where(deferred, (logsumexp(z_test[:, :C], -1) + logsumexp(z_test[:, C:], -1)) / 2, s_test)
    np.testing.assert_allclose(out.confidence.numpy(), expected_conf, rtol=1e-12)


def test_window_covers_about_twenty_percent_of_validation(generator):
    scores = torch.rand(1000, generator=generator)
    lo, hi = window(scores, threshold=0.5, width=10)
    inside = float(((scores >= lo) & (scores <= hi)).double().mean())
    assert inside == pytest.approx(0.2, abs=0.002)
    lo, hi = window(scores, threshold=0.01, width=10)  # the lower end is clamped at the 0th percentile
    centre = float((scores < 0.01).double().mean())
    assert lo == float(scores.min())
    assert hi == pytest.approx(float(torch.quantile(scores, centre + 0.10)), rel=1e-12)


def test_window_centre_is_percentile_rank_with_ties():
    reference = np.array([0.1, 0.2, 0.2, 0.2, 0.5, 0.7, 0.9, 0.9, 1.0, 1.0])
    for tau in (0.2, 0.9, 0.6):  # tied with several scores, and between scores
        rank = percentileofscore(reference, tau)
        expected = np.percentile(reference, [max(rank - 10, 0), min(rank + 10, 100)])
        np.testing.assert_allclose(window(torch.from_numpy(reference), tau, 10), expected, rtol=1e-12)


def test_single_threshold_baseline_defers_least_confident(generator):
    x_val, x_test = _logits(generator, 500), _logits(generator, 500)
    cascade = WindowCascade([_Slice(0), _Slice(1)], rule="single", width=20, operating_point="risk@80").fit(x_val)
    out = cascade.predict(x_test)
    s_val, s_test = softmax(x_val.numpy()[:, :C], -1).max(-1), softmax(x_test.numpy()[:, :C], -1).max(-1)
    np.testing.assert_array_equal(out.deferred.numpy(), s_test <= np.percentile(s_val, 20))  # exits only above


def test_operating_thresholds(generator):
    scores = torch.rand(200, generator=generator)
    assert float((scores >= operating_threshold(scores, "risk@80")).double().mean()) == pytest.approx(0.8, abs=0.006)
    assert float((scores >= operating_threshold(scores, "tpr@95")).double().mean()) == pytest.approx(0.95, abs=0.006)
    correct = torch.zeros(200, dtype=torch.bool)
    assert operating_threshold(scores, "cov@5", correct) == float("inf")  # always wrong: accept nothing
    with pytest.raises(ValueError, match="^y_val"):
        operating_threshold(scores, "cov@5")


def test_confidence_scores_from_ensemble(generator):
    logits = torch.randn(3, 6, C, generator=generator)
    z = logits.numpy()
    p = softmax(z, -1).mean(0)
    np.testing.assert_allclose(confidence(logits, "msp").numpy(), p.max(-1), rtol=1e-12)
    np.testing.assert_allclose(confidence(logits, "entropy").numpy(), (p * np.log(p)).sum(-1), rtol=1e-12)
    # logit scores: the members' own scores averaged (reference code), not the score of averaged logits
    np.testing.assert_allclose(confidence(logits, "energy").numpy(), logsumexp(z, -1).mean(0), rtol=1e-12)
    np.testing.assert_allclose(confidence(logits, "max_logit").numpy(), z.max(-1).mean(0), rtol=1e-12)


def test_flops_per_sample(generator):
    small, large = MLP(8, [16], C), MLP(8, [64, 64], C)
    x_val = torch.randn(50, 8, generator=generator)
    cascade = WindowCascade([small, large], operating_point="risk@50").fit(x_val)
    expected = [2 * (8 * 16 + 16 * C), 2 * (8 * 64 + 64 * 64 + 64 * C)]  # 2 FLOPs per multiply-accumulate
    np.testing.assert_allclose(cascade.flops_.numpy(), expected)
    out = cascade.predict(torch.randn(40, 8, generator=generator))
    assert out.flops_per_sample == pytest.approx(expected[0] + out.fraction_deferred * expected[1])
    assert 0 < out.fraction_deferred < 1
    assert small.training and large.training  # modes restored


def test_bad_input(generator):
    x_val = _logits(generator, 50)
    with pytest.raises(ValueError, match="^members"):
        WindowCascade([_Slice(0)])
    with pytest.raises(ValueError, match="^width"):
        WindowCascade([_Slice(0), _Slice(1)], width=120)
    with pytest.raises(ValueError, match="^width"):
        WindowCascade([_Slice(0), _Slice(1)], width=-5)
    with pytest.raises(ValueError, match="^operating_point"):
        WindowCascade([_Slice(0), _Slice(1)], operating_point="cov@150")
    with pytest.raises(ValueError, match="^score"):
        WindowCascade([_Slice(0), _Slice(1)], score="margin")
    with pytest.raises(ValueError, match="^rule"):
        WindowCascade([_Slice(0), _Slice(1)], rule="triple")
    cascade = WindowCascade([_Slice(0), _Slice(1)], operating_point="risk@80")
    with pytest.raises(ValueError, match="^x_val: the cascade has no validation data"):
        cascade.predict(x_val)
    with pytest.raises(TypeError, match="^x_val"):
        cascade.fit(None)
    with pytest.raises(ValueError, match="^y_val"):
        WindowCascade([_Slice(0), _Slice(1)]).fit(x_val)  # cov@5 needs labels
    bad = x_val.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^x_val: expected finite"):
        cascade.fit(bad)
    with pytest.raises(ValueError, match="^members"):
        WindowCascade([MLP(2 * C, [4], C), MLP(2 * C, [4], C + 1)], operating_point="risk@80").fit(x_val)


def test_benchmark_coverage_definitions_match_brute_force(generator, monkeypatch):
    """bench_cascade's two cov@5 definitions: uqkit's largest coverage with risk <= 5%, and the reference
    code's point whose risk is closest to 5% after the most confident 1% (both by direct numpy loops)."""
    bench_dir = Path(__file__).resolve().parents[2] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench_dir))
    spec = importlib.util.spec_from_file_location("uqkit_bench_cascade", bench_dir / "bench_cascade.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    n = 540
    labels = torch.randint(0, C, (n,), generator=generator)
    probs = torch.softmax(torch.randn(n, C, generator=generator) * 3, -1)
    probs[: n // 2] = torch.nn.functional.one_hot(labels[: n // 2], C) * 0.5 + probs[: n // 2] * 0.5  # 80-90% right
    confidence = probs.amax(-1)
    largest, closest = bench.cov5(probs, confidence, labels)

    conf, wrong = confidence.numpy(), (probs.argmax(-1) != labels).numpy()
    order = np.argsort(-conf, kind="stable")
    risk = np.array([wrong[order[: k + 1]].mean() for k in range(n)])  # no ties among continuous scores
    skip = int(np.ceil(0.01 * n))
    assert closest == pytest.approx(100 * (skip + np.argmin(np.abs(risk[skip:] - 0.05)) + 1) / n, rel=1e-12)
    assert largest == pytest.approx(100 * max(k + 1 for k in range(n) if risk[k] <= 0.05) / n, rel=1e-12)
    assert 0 < closest < 100 and 0 < largest < 100
