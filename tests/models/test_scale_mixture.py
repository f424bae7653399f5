"""Scale mixtures of GPs against numerical integration over the scale (scipy), numpy GP algebra and scipy's Burr XII."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats
from torch.distributions import HalfCauchy, InverseGamma, Uniform

from uqkit.models import BurrXII, NNGPKernel, NNGPRegression, ScaleMixtureClassifier, ScaleMixtureGP, StudentTProcess
from uqkit.models.scale_mixture import MAX_RELATIVE_JITTER
from uqkit.models.scale_mixture_classifier import inverse_gamma_kl

A, B, JITTER = 1.7, 0.8, 0.05


def _data(generator, n=8, m=3):
    x = torch.rand(n + m, 2, generator=generator) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.3 * x[:, 1] + 0.2 * torch.randn(n + m, generator=generator)
    return x[:n], y[:n], x[n:], y[n:]


def _kernel():
    return NNGPKernel(depth=2, weight_var=1.5, bias_var=0.1)


def _gp_algebra(x, y, x_new):
    """Unit-scale GP pieces in numpy: K + jitter I, the conditional means and variances of noisy targets."""
    kern = _kernel()
    k = kern(x).to_dense().detach().numpy() + JITTER * np.eye(len(y))
    cross = kern(x, x_new).to_dense().detach().numpy()
    prior = np.diag(kern(x_new).to_dense().detach().numpy()) + JITTER
    solve = np.linalg.solve(k, cross)
    return k, solve.T @ y.numpy(), prior - np.einsum("nm,nm->m", cross, solve)


def _scale_integral(log_integrand) -> float:
    """``log int_0^inf exp(log_integrand(s)) ds`` by quadrature over log s, shifted by the peak for stability."""
    grid = np.linspace(-15, 15, 601)
    values = [log_integrand(math.exp(t)) + t for t in grid]
    peak, mode = max(values), float(grid[int(np.argmax(values))])
    val, _ = integrate.quad(lambda t: math.exp(log_integrand(math.exp(t)) + t - peak), -15, 15, epsabs=0,
                            epsrel=1e-11, limit=500, points=[mode])
    return math.log(val) + peak


def _mvn(k, s):
    return stats.multivariate_normal(mean=np.zeros(len(k)), cov=s * k)


def _gaussian_log_evidence(k, y):
    """``s -> log N(y; 0, s K)`` from numpy's log-determinant and solve (cheap to call inside quadrature)."""
    logdet, quad, n = np.linalg.slogdet(k)[1], float(y @ np.linalg.solve(k, y)), len(y)
    return lambda s: -0.5 * (n * math.log(2 * math.pi * s) + logdet + quad / s)


def test_student_t_marginal_likelihood_is_the_scale_integral(generator):
    x, y, _, _ = _data(generator)
    k, _, _ = _gp_algebra(x, y, x[:1])
    prior = stats.invgamma(A, scale=B)
    expected = _scale_integral(lambda s: _mvn(k, s).logpdf(y.numpy()) + prior.logpdf(s))
    model = StudentTProcess(_kernel(), a=A, b=B, jitter=JITTER)
    assert float(model.log_marginal_likelihood(x, y).detach()) == pytest.approx(expected, abs=1e-8)


def test_student_t_predictive_is_the_scale_integral(generator):
    x, y, x_new, y_new = _data(generator)
    k, mean, var = _gp_algebra(x, y, x_new)
    prior = stats.invgamma(A, scale=B)
    log_evidence_at = _gaussian_log_evidence(k, y.numpy())
    assert log_evidence_at(0.7) == pytest.approx(_mvn(k, 0.7).logpdf(y.numpy()), abs=1e-10)

    def log_joint(s, extra=lambda s: 0.0):
        return log_evidence_at(s) + prior.logpdf(s) + extra(s)

    log_evidence = _scale_integral(log_joint)
    pred = StudentTProcess(_kernel(), a=A, b=B, jitter=JITTER).fit(x, y, num_steps=0).predict(x_new)
    got_logpdf, got_cdf = pred.log_prob(y_new).numpy(), pred.cdf(y_new).numpy()
    for i in range(len(y_new)):
        t, mu, c = float(y_new[i]), mean[i], var[i]
        z = (t - mu) / math.sqrt(c)
        logpdf = _scale_integral(lambda s: log_joint(s, lambda s: -0.5 * (math.log(2 * math.pi * s * c) + z * z / s)))
        cdf = _scale_integral(lambda s: log_joint(s, lambda s: special.log_ndtr(z / math.sqrt(s))))
        logpdf, cdf = logpdf - log_evidence, math.exp(cdf - log_evidence)
        assert got_logpdf[i] == pytest.approx(logpdf, abs=1e-7)
        assert got_cdf[i] == pytest.approx(cdf, abs=1e-7)
    q = pred.quantile(0.9)
    np.testing.assert_allclose(pred.cdf(q).numpy(), 0.9, atol=1e-10)
    np.testing.assert_allclose(pred.mean().numpy(), mean, atol=1e-10)


def test_gaussian_baseline_matches_numpy(generator):
    x, y, x_new, y_new = _data(generator)
    k, mean, var = _gp_algebra(x, y, x_new)
    model = NNGPRegression(_kernel(), scale=1.3, jitter=JITTER)
    assert float(model.log_marginal_likelihood(x, y).detach()) == pytest.approx(_mvn(k, 1.3).logpdf(y.numpy()), abs=1e-9)
    pred = model.fit(x, y, num_steps=0).predict(x_new)
    np.testing.assert_allclose(pred.log_prob(y_new).numpy(), stats.norm.logpdf(y_new.numpy(), mean, np.sqrt(1.3 * var)),
                               atol=1e-9)


def test_fit_raises_the_marginal_likelihood(generator):
    x, y, _, _ = _data(generator, n=30)
    for model in (StudentTProcess(_kernel(), a=A, b=B, jitter=JITTER), NNGPRegression(_kernel(), jitter=JITTER)):
        before = float(model.log_marginal_likelihood(x, y).detach())
        model.fit(x, y, num_steps=60, lr=0.05)
        assert float(model.log_marginal_likelihood(x, y).detach()) > before + 1.0


@pytest.mark.parametrize("proposal", ["prior", "likelihood"])
def test_importance_sampling_with_inverse_gamma_converges_to_closed_form(proposal, generator, seed):
    """Log evidence and log predictive densities within 4 Monte Carlo standard errors (delta method)."""
    x, y, x_new, y_new = _data(generator)
    exact_model = StudentTProcess(_kernel(), a=A, b=B, jitter=JITTER).fit(x, y, num_steps=0)
    model = ScaleMixtureGP(_kernel(), InverseGamma(torch.tensor(A), torch.tensor(B)), num_samples=20000,
                           proposal=proposal, jitter=JITTER, seed=seed).fit(x, y, num_steps=0)
    log_s, logw = model.log_weights()
    w = torch.exp(logw - logw.max())
    # log of a mean of K iid weights: standard error = sd(w) / (mean(w) sqrt(K)).
    se_evidence = float(w.std() / (w.mean() * math.sqrt(w.shape[0])))
    got = float(model.log_marginal_likelihood(x, y).detach())
    assert abs(got - float(exact_model.log_marginal_likelihood(x, y).detach())) < 4 * se_evidence
    # Self-normalised estimate of p(y* | y) = sum_k wbar_k h_k: variance sum_k wbar_k^2 (h_k - estimate)^2.
    pred = model.predict(x_new)
    h = torch.exp(pred.dist.log_prob(y_new.unsqueeze(0)))  # [K, m]
    wbar = torch.softmax(logw, 0).unsqueeze(-1)
    estimate = (wbar * h).sum(0)
    se = torch.sqrt((wbar.square() * (h - estimate).square()).sum(0))
    exact = torch.exp(exact_model.predict(x_new).log_prob(y_new))
    assert bool(((estimate - exact).abs() < 4 * se).all())
    assert 1 <= model.effective_sample_size() <= 20000


def test_likelihood_proposal_keeps_more_effective_samples(generator):
    x, y, _, _ = _data(generator, n=150)
    prior = HalfCauchy(torch.tensor(1.0))  # infinite mean: fine for importance sampling, the weights are bounded
    ess = {p: ScaleMixtureGP(_kernel(), prior, num_samples=2000, proposal=p, jitter=JITTER).fit(x, y, num_steps=0)
           .effective_sample_size() for p in ("prior", "likelihood")}
    assert ess["likelihood"] > 3 * ess["prior"] and ess["likelihood"] > 200


def test_scale_mixture_fit_and_burr_predictive(generator):
    x, y, x_new, y_new = _data(generator, n=30)
    model = ScaleMixtureGP(_kernel(), BurrXII(2.0, 1.0), num_samples=1000, jitter=JITTER)
    before = float(model.log_marginal_likelihood(x, y).detach())
    model.fit(x, y, num_steps=40, lr=0.05)
    assert float(model.log_marginal_likelihood(x, y).detach()) > before
    pred = model.predict(x_new)
    assert pred.num_draws == 1000 and bool(torch.isfinite(pred.log_prob(y_new)).all())


def test_burr_xii_matches_scipy():
    dist, ref = BurrXII(torch.tensor(2.0), torch.tensor(1.5)), stats.burr12(2.0, 1.5)
    s = torch.tensor([0.1, 0.7, 1.0, 3.0])
    np.testing.assert_allclose(dist.log_prob(s).numpy(), ref.logpdf(s.numpy()), rtol=1e-12)
    np.testing.assert_allclose(dist.cdf(s).numpy(), ref.cdf(s.numpy()), rtol=1e-12)
    np.testing.assert_allclose(dist.icdf(torch.tensor([0.1, 0.5, 0.99])).numpy(), ref.ppf([0.1, 0.5, 0.99]), rtol=1e-10)
    assert float(dist.mean) == pytest.approx(ref.mean(), rel=1e-10)
    assert math.isinf(float(BurrXII(2.0, 0.5).mean))  # c d <= 1: infinite mean


def test_inverse_gamma_kl_matches_quadrature():
    q, p = stats.invgamma(3.0, scale=2.0), stats.invgamma(1.5, scale=0.7)
    expected = integrate.quad(lambda s: q.pdf(s) * (q.logpdf(s) - p.logpdf(s)), 0, np.inf, epsabs=1e-12)[0]
    got = inverse_gamma_kl(torch.tensor(3.0), torch.tensor(2.0), 1.5, 0.7)
    assert float(got) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("scale", ["inverse-gamma", "fixed"])
def test_classifier_beats_chance_with_valid_probabilities(scale, generator):
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    labels = torch.randint(3, (180,), generator=generator)
    x = centres[labels] + torch.randn(180, 2, generator=generator)
    model = ScaleMixtureClassifier(NNGPKernel(depth=1), 3, num_inducing=10, scale=scale, seed=0)
    model.fit(x[:120], labels[:120], num_steps=150, lr=0.05, batch_size=60)
    pred = model.predict(x[120:], num_samples=64)
    probs = pred.mixture_probs()
    assert bool(((probs >= 0) & (probs <= 1)).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(60))
    accuracy = float((probs.argmax(-1) == labels[120:]).double().mean())
    assert accuracy > 0.7  # chance is 1/3
    assert float(-pred.log_prob(labels[120:]).mean()) < math.log(3)
    if scale == "inverse-gamma":
        assert model.a_q.detach() > 0 and model.b_q.detach() > 0


class _MatrixKernel(NNGPKernel):
    """A kernel that returns a fixed matrix, indexed by the first input coordinate (for non-PD cases)."""

    def __init__(self, matrix):
        super().__init__(depth=0)
        self.matrix = matrix

    def forward(self, x1, x2, diag=False, **params):
        i, j = x1[:, 0].long(), x2[:, 0].long()
        return self.matrix[i, i] if diag else self.matrix[i][:, j]


def _non_pd(min_eig):
    v = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(3)))[0]
    return v @ torch.diag(torch.tensor([min_eig, 1.0, 2.0, 3.0, 4.0])) @ v.T


def test_non_positive_definite_kernel_gets_bounded_jitter_or_clear_error():
    x, y = torch.arange(5.0).unsqueeze(-1), torch.linspace(-1, 1, 5)
    slightly = StudentTProcess(_MatrixKernel(_non_pd(-1e-9)), jitter=1e-12, learn=())
    with pytest.warns(UserWarning, match="^kernel: matrix not positive definite; added jitter"):
        assert math.isfinite(float(slightly.log_marginal_likelihood(x, y).detach()))
    badly = StudentTProcess(_MatrixKernel(_non_pd(-0.5)), jitter=1e-12, learn=())
    with pytest.raises(ValueError, match=f"^kernel: matrix not positive definite even with jitter {MAX_RELATIVE_JITTER:.0e}"):
        badly.log_marginal_likelihood(x, y)


def test_bad_inputs(generator):
    x, y, _, _ = _data(generator)
    with pytest.raises(ValueError, match="^a: expected a finite number > 0"):
        StudentTProcess(_kernel(), a=-1.0)
    with pytest.raises(ValueError, match="^b: "):
        StudentTProcess(_kernel(), b=0.0)
    with pytest.raises(ValueError, match="^learn: "):
        StudentTProcess(_kernel(), learn=("scale",))
    with pytest.raises(TypeError, match="^kernel: "):
        StudentTProcess("rbf")
    x_nan = x.clone()
    x_nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^x: expected finite values"):
        StudentTProcess(_kernel()).fit(x_nan, y)
    with pytest.raises(ValueError, match="^y: expected finite values"):
        StudentTProcess(_kernel()).fit(x, torch.full_like(y, float("nan")))
    with pytest.raises(ValueError, match="^y: expected length"):
        StudentTProcess(_kernel()).fit(x, y[:-1])
    with pytest.raises(ValueError, match="^StudentTProcess: call fit"):
        StudentTProcess(_kernel()).predict(x)
    with pytest.raises(ValueError, match="^x: expected 2 features"):
        StudentTProcess(_kernel()).fit(x, y, num_steps=0).predict(torch.ones(3, 4))
    with pytest.raises(ValueError, match="^scale_prior: expected a distribution over scales s > 0"):
        ScaleMixtureGP(_kernel(), Uniform(-1.0, 1.0))
    with pytest.raises(TypeError, match="^scale_prior: "):
        ScaleMixtureGP(_kernel(), 2.0)
    with pytest.raises(ValueError, match="^num_classes: "):
        ScaleMixtureClassifier(_kernel(), 1)
    with pytest.raises(ValueError, match="^y: expected labels in"):
        ScaleMixtureClassifier(_kernel(), 2).fit(x, torch.arange(len(y)) % 3)
