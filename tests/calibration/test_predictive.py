"""`Predictive` against direct numpy/scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats
from torch.distributions import Laplace

from uqkit import Predictive


@pytest.fixture
def mixture(generator):
    mean = torch.randn(4, 30, generator=generator)
    var = torch.rand(4, 30, generator=generator) + 0.2
    log_w = torch.randn(4, generator=generator)
    return mean, var, log_w


def test_from_logits_matches_softmax_and_log_prob(generator):
    logits = torch.randn(3, 50, 5, generator=generator) * 3
    labels = torch.randint(0, 5, (50,), generator=generator)
    pred = Predictive.from_logits(logits)
    probs = special.softmax(logits.numpy(), axis=-1)
    np.testing.assert_allclose(pred.mixture_probs().numpy(), probs.mean(0), rtol=1e-12)
    expected = np.log(probs[:, np.arange(50), labels.numpy()].mean(0))
    np.testing.assert_allclose(pred.log_prob(labels).numpy(), expected, rtol=1e-10)


def test_single_model_logits_are_one_draw(generator):
    pred = Predictive.from_logits(torch.randn(7, 3, generator=generator))
    assert pred.probs.shape == (1, 7, 3) and pred.num_draws == 1 and pred.num_points == 7 and pred.num_classes == 3
    assert torch.allclose(pred.mutual_information(), torch.zeros(7))


def test_classification_entropies_against_scipy(generator):
    probs = torch.softmax(torch.randn(5, 20, 4, generator=generator), -1)
    pred = Predictive.from_probs(probs)
    p = probs.numpy()
    total = stats.entropy(p.mean(0), axis=-1)
    expected = stats.entropy(p, axis=-1).mean(0)
    np.testing.assert_allclose(pred.entropy().numpy(), total, rtol=1e-10)
    np.testing.assert_allclose(pred.expected_entropy().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(pred.mutual_information().numpy(), total - expected, rtol=1e-8, atol=1e-12)


def test_disagreeing_members_have_mutual_information_log2():
    # Two confident members that disagree: the mixture is uniform over 2 classes, each member has ~0 entropy.
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    pred = Predictive.from_probs(probs)
    assert torch.allclose(pred.mutual_information(), torch.tensor([np.log(2)]))


def test_log_weights_weight_the_mixture(generator):
    probs = torch.softmax(torch.randn(3, 10, 4, generator=generator), -1)
    log_w = torch.tensor([0.0, np.log(3.0), -np.inf])
    pred = Predictive.from_probs(probs, log_weights=log_w)
    expected = (probs[0] + 3 * probs[1]) / 4
    assert torch.allclose(pred.mixture_probs(), expected)


def test_gaussian_mixture_moments_density_and_cdf(mixture):
    mean, var, log_w = mixture
    pred = Predictive.gaussian(mean, var, log_weights=log_w)
    w = special.softmax(log_w.numpy())
    m, v = mean.numpy(), var.numpy()
    mix_mean = (w[:, None] * m).sum(0)
    mix_var = (w[:, None] * (v + m**2)).sum(0) - mix_mean**2
    np.testing.assert_allclose(pred.mean().numpy(), mix_mean, rtol=1e-12)
    np.testing.assert_allclose(pred.variance().numpy(), mix_var, rtol=1e-10)
    np.testing.assert_allclose(pred.aleatoric_variance().numpy(), (w[:, None] * v).sum(0), rtol=1e-12)
    y = np.linspace(-2, 2, 30)
    logpdf = special.logsumexp(np.log(w)[:, None] + stats.norm.logpdf(y, m, np.sqrt(v)), axis=0)
    np.testing.assert_allclose(pred.log_prob(torch.tensor(y)).numpy(), logpdf, rtol=1e-10)
    cdf = (w[:, None] * stats.norm.cdf(y, m, np.sqrt(v))).sum(0)
    np.testing.assert_allclose(pred.cdf(torch.tensor(y)).numpy(), cdf, rtol=1e-10)


@pytest.mark.parametrize("q", [0.01, 0.3, 0.5, 0.975])
def test_quantile_inverts_the_mixture_cdf(mixture, q):
    mean, var, log_w = mixture
    pred = Predictive.gaussian(mean, var, log_weights=log_w)
    x = pred.quantile(q)
    np.testing.assert_allclose(pred.cdf(x).numpy(), q, atol=1e-10)


def test_single_gaussian_quantile_and_interval_match_scipy():
    pred = Predictive.gaussian(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0]))
    lo, hi = pred.interval(0.9)
    np.testing.assert_allclose(lo.numpy(), stats.norm.ppf(0.05, [0, 1], [1, 2]), rtol=1e-10)
    np.testing.assert_allclose(hi.numpy(), stats.norm.ppf(0.95, [0, 1], [1, 2]), rtol=1e-10)


def test_other_families_through_from_distribution():
    loc, scale = torch.tensor([[0.0, 2.0], [1.0, -1.0]]), torch.tensor([[1.0, 0.5], [2.0, 1.0]])
    pred = Predictive.from_distribution(Laplace(loc, scale))
    y = torch.tensor([0.3, 1.0])
    dens = stats.laplace.pdf(y.numpy(), loc.numpy(), scale.numpy()).mean(0)
    np.testing.assert_allclose(pred.log_prob(y).numpy(), np.log(dens), rtol=1e-10)
    # A two-component Laplace mixture has no closed-form quantile: bisection on the CDF, checked with brentq.
    for j in range(2):
        cdf = lambda t, j=j: stats.laplace.cdf(t, loc[:, j].numpy(), scale[:, j].numpy()).mean() - 0.95
        np.testing.assert_allclose(pred.quantile(0.95)[j].item(), optimize.brentq(cdf, -50, 50, xtol=1e-14), rtol=1e-9)
    np.testing.assert_allclose(pred.variance().numpy(), stats.laplace.var(loc.numpy(), scale.numpy()).mean(0)
                               + loc.numpy().var(0), rtol=1e-10)
    single = Predictive.from_distribution(Laplace(loc[:1], scale[:1]))  # exact icdf path
    np.testing.assert_allclose(single.quantile(0.2).numpy(), stats.laplace.ppf(0.2, [0, 2], [1, 0.5]), rtol=1e-10)


def test_quantile_of_a_positive_family_stays_inside_its_support():
    # Mean - 10 sd is negative for these log-normals; the bracket must start inside (0, inf), checked with brentq.
    loc, scale = torch.tensor([[0.0, 1.0], [0.5, 0.2]]), torch.tensor([[1.0, 0.5], [0.3, 2.0]])
    pred = Predictive.from_distribution(torch.distributions.LogNormal(loc, scale))
    for q in (0.01, 0.1, 0.9):
        got = pred.quantile(q)
        for j in range(2):
            def cdf(x, j=j):
                return stats.lognorm.cdf(x, scale[:, j].numpy(), scale=np.exp(loc[:, j].numpy())).mean() - q
            np.testing.assert_allclose(got[j].item(), optimize.brentq(cdf, 1e-12, 1e4, xtol=1e-14), rtol=1e-8)


def test_multi_output_regression_sums_log_density_over_outputs(generator):
    mean = torch.randn(2, 6, 3, generator=generator)
    var = torch.rand(2, 6, 3, generator=generator) + 0.5
    pred = Predictive.gaussian(mean, var)
    y = torch.randn(6, 3, generator=generator)
    per_draw = stats.norm.logpdf(y.numpy(), mean.numpy(), np.sqrt(var.numpy())).sum(-1)
    np.testing.assert_allclose(pred.log_prob(y).numpy(), special.logsumexp(per_draw, axis=0) - np.log(2), rtol=1e-10)
    assert pred.quantile(0.5).shape == (6, 3) and pred.cdf(y).shape == (6, 3)


def test_regression_mutual_information_is_zero_for_one_gaussian():
    pred = Predictive.gaussian(torch.zeros(4), torch.full((4,), 2.0))
    assert torch.allclose(pred.mutual_information(), torch.zeros(4), atol=1e-12)
    assert torch.allclose(pred.entropy(), torch.full((4,), 0.5 * np.log(2 * np.pi * np.e * 2.0)))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Predictive.from_logits(torch.tensor([[0.0, float("nan")]])), "logits: expected finite"),
        (lambda: Predictive.from_logits(torch.zeros(3)), "logits: expected a 2-D or 3-D"),
        (lambda: Predictive.from_logits(torch.zeros(3, 1)), "logits: expected at least 2 classes"),
        (lambda: Predictive.from_probs(torch.tensor([[0.5, 0.6]])), "probs: expected each row to sum to 1"),
        (lambda: Predictive.from_probs(torch.zeros(0, 3)), "probs: expected a non-empty"),
        (lambda: Predictive.gaussian(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0])), "var: expected variances > 0"),
        (lambda: Predictive.gaussian(torch.zeros(3), torch.ones(4)), "var: expected a shape broadcastable"),
        (lambda: Predictive.from_logits(torch.zeros(2, 3), log_weights=torch.zeros(2)), "log_weights: expected 1 values"),
        (lambda: Predictive.from_distribution("normal"), "dist: expected a torch.distributions"),
    ],
)
def test_bad_construction_names_the_argument(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_bad_targets_name_the_argument():
    cls = Predictive.from_logits(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 3\]"):
        cls.log_prob(torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="y: expected 3 labels"):
        cls.log_prob(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cdf: only defined for regression"):
        cls.cdf(torch.zeros(3))
    reg = Predictive.gaussian(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"y: expected shape \(3,\)"):
        reg.log_prob(torch.zeros(4))
    with pytest.raises(ValueError, match="q: expected a level in"):
        reg.quantile(1.0)
    with pytest.raises(ValueError, match="mixture_probs: only defined for classification"):
        reg.mixture_probs()


def test_mixture_variance_keeps_a_small_spread_of_large_means():
    """Law of total variance in float32 for means near 1000 that differ by 0.01: the spread (1e-4) is far below
    float32's resolution of the squared mean (1e6 * 6e-8 = 0.06), so E[var + mu^2] - E[mu]^2 would lose it;
    centred means keep it to a few ulps."""
    means = 1000 + torch.tensor([-0.01, 0.0, 0.01], dtype=torch.float64)
    pred = Predictive.from_distribution(torch.distributions.Normal(means.float().reshape(3, 1), torch.full((3, 1), 1e-3)))
    stored = pred.dist.mean.double().flatten()  # the float32 means as stored
    spread = ((stored - stored.mean()) ** 2).mean()
    torch.testing.assert_close(pred.epistemic_variance().double().flatten(), spread.reshape(1), rtol=1e-3, atol=0)
    torch.testing.assert_close(pred.variance().double().flatten(), (spread + 1e-6).reshape(1), rtol=1e-3, atol=0)
