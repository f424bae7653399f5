"""NIW prior: KL terms against Monte Carlo (scipy samplers and densities), conjugate update, local posterior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from uqkit.models.niw import FactoredGaussian, NormalInverseWishart, VariationalNIW
from uqkit.testing.checks import assert_mcse_close

NUM_MC = 20_000


def _diag_niw(rng: np.random.Generator, p: int) -> NormalInverseWishart:
    return NormalInverseWishart.create(rng.normal(size=p), rng.uniform(0.5, 2), rng.uniform(0.5, 2, size=p), rng.uniform(2, 6))


def _full_niw(rng: np.random.Generator, p: int) -> NormalInverseWishart:
    a = rng.normal(size=(p, p))
    return NormalInverseWishart.create(rng.normal(size=p), rng.uniform(0.5, 2), a @ a.T + p * np.eye(p), p + rng.uniform(1, 4))


def _scipy_draws(q: NormalInverseWishart, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``num`` draws (mu, Sigma) from the NIW with scipy's samplers; Sigma as [num, P] (diag) or [num, P, P]."""
    m, l, v, n = (t.detach().numpy() for t in (q.loc, q.mean_precision, q.scale, q.dof))
    if q.diagonal:
        cov = stats.invgamma(a=n / 2, scale=v / 2).rvs(size=(num, v.size), random_state=rng)
        return m + np.sqrt(cov / l) * rng.standard_normal((num, m.size)), cov
    cov = stats.invwishart(df=float(n), scale=v).rvs(size=num, random_state=rng)
    chol = np.linalg.cholesky(cov / l)
    return m + np.einsum("sij,sj->si", chol, rng.standard_normal((num, m.size))), cov


def _scipy_log_density(q: NormalInverseWishart, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``[num]`` log NIW density of each draw, from scipy's densities."""
    m, l, v, n = (t.detach().numpy() for t in (q.loc, q.mean_precision, q.scale, q.dof))
    if q.diagonal:
        return (stats.invgamma(a=n / 2, scale=v / 2).logpdf(cov) + stats.norm(m, np.sqrt(cov / l)).logpdf(mu)).sum(-1)
    normal = MultivariateNormal(torch.as_tensor(m), torch.as_tensor(cov / l)).log_prob(torch.as_tensor(mu)).numpy()
    return stats.invwishart(df=float(n), scale=v).logpdf(np.moveaxis(cov, 0, -1)) + normal


def _assert_mc(value: float, samples: np.ndarray) -> None:
    mean, se = samples.mean(), samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(value - mean) < 4 * se, (value, mean, se)


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_kl_matches_monte_carlo(structure, seed):
    rng = np.random.default_rng(seed)
    make = _diag_niw if structure == "diag" else _full_niw
    q, p = make(rng, 3), make(rng, 3)
    num = NUM_MC
    mu, cov = _scipy_draws(q, num, rng)
    _assert_mc(float(q.kl(p)), _scipy_log_density(q, mu, cov) - _scipy_log_density(p, mu, cov))


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_expected_gaussian_kl_matches_monte_carlo(structure, seed):
    rng = np.random.default_rng(seed)
    q = (_diag_niw if structure == "diag" else _full_niw)(rng, 3)
    mean = torch.as_tensor(rng.normal(size=3))
    mu, cov = _scipy_draws(q, 4000, rng)
    mu, cov = torch.as_tensor(mu), torch.as_tensor(cov)
    if structure == "diag":
        local_cov = torch.as_tensor(rng.uniform(0.2, 1.5, size=3))
        kls = kl_divergence(Normal(mean, local_cov.sqrt()), Normal(mu, cov.sqrt())).sum(-1)
    else:
        a = torch.as_tensor(rng.normal(size=(3, 3)))
        local_cov = a @ a.T + torch.eye(3)
        kls = kl_divergence(MultivariateNormal(mean, local_cov), MultivariateNormal(mu, cov))
    _assert_mc(float(q.expected_gaussian_kl(mean, local_cov)), kls.numpy())


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_update_is_proportional_to_prior_times_likelihood(structure, seed):
    """log posterior - log prior - sum_k log N(theta_k | mu, Sigma) is the same at every (mu, Sigma)."""
    rng = np.random.default_rng(seed)
    prior = (_diag_niw if structure == "diag" else _full_niw)(rng, 3)
    theta = rng.normal(size=(7, 3)) * 2 + 1
    post = prior.update(torch.as_tensor(theta))
    mu, cov = _scipy_draws(prior, 20, rng)
    if structure == "diag":
        lik = np.array([stats.norm(x, np.sqrt(c)).logpdf(theta).sum() for x, c in zip(mu, cov)])
    else:
        lik = np.array([stats.multivariate_normal(x, c).logpdf(theta).sum() for x, c in zip(mu, cov)])
    diff = _scipy_log_density(post, mu, cov) - _scipy_log_density(prior, mu, cov) - lik
    np.testing.assert_allclose(diff, diff[0], atol=1e-8 * np.abs(diff).max())
    assert float(post.dof) == float(prior.dof) + 7 and float(post.mean_precision) == pytest.approx(float(prior.mean_precision) + 7)


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_local_posterior_is_conjugate_gaussian_posterior(structure, generator):
    """Quadratic loss 1/2 (t - c)^T A (t - c) + g^T (t - c): product with N(m, (nV^{-1})^{-1}) in closed form."""
    rng = np.random.default_rng(0)
    q = (_diag_niw if structure == "diag" else _full_niw)(rng, 4)
    center, curvature, gradient = (torch.randn(4, generator=generator) for _ in range(3))
    curvature = curvature.abs() + 0.1
    prec = q.expected_precision() if structure == "full" else torch.diag(q.expected_precision())
    post_prec = torch.diag(curvature) + prec
    # The loss's minimiser is c - A^{-1} g; the posterior is the product of two Gaussians.
    target = center - gradient / curvature
    want_cov = torch.linalg.inv(post_prec)
    want_mean = want_cov @ (curvature * target + prec @ q.loc)
    mean, cov = q.local_posterior(center, curvature, gradient)
    torch.testing.assert_close(mean, want_mean)
    torch.testing.assert_close(cov if structure == "full" else torch.diag(cov), want_cov)


def _factored_case(rng: np.random.Generator, generator: torch.Generator) -> tuple:
    """A diagonal NIW, a batch of two factors ``F [2, 3, 6]``, centres and gradients, and numpy's dense posterior."""
    q = _diag_niw(rng, 6)
    factor, center, gradient = torch.randn(2, 3, 6, generator=generator), torch.randn(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    d = q.expected_precision().numpy()
    f, c, g, m = factor.numpy(), center.numpy(), gradient.numpy(), q.loc.numpy()
    cov = np.linalg.inv(np.diag(d) + np.swapaxes(f, -1, -2) @ f)
    mean = np.einsum("bij,bj->bi", cov, np.einsum("bri,brj,bj->bi", f, f, c) - g + d * m)
    return q, factor, center, gradient, mean, cov


def test_factored_local_posterior_matches_dense_woodbury_free_solution(generator):
    """Mean, diagonal and log-determinant of N(m_i, (D + F^T F)^{-1}) against numpy's dense inverse."""
    q, factor, center, gradient, want_mean, want_cov = _factored_case(np.random.default_rng(3), generator)
    post = q.local_posterior_factored(center, factor, gradient)
    np.testing.assert_allclose(post.mean.numpy(), want_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(post.variance().numpy(), np.diagonal(want_cov, axis1=-2, axis2=-1), rtol=1e-10)
    np.testing.assert_allclose(post.log_det_cov().numpy(), np.linalg.slogdet(want_cov)[1], rtol=1e-10)
    # Without the gradient term and with a zero factor the posterior is the prior.
    prior = q.local_posterior_factored(center, torch.zeros_like(factor))
    torch.testing.assert_close(prior.mean, q.loc.expand(2, -1))
    torch.testing.assert_close(prior.variance(), (1 / q.expected_precision()).expand(2, -1))


def test_factored_draws_have_the_posterior_moments(generator):
    q, factor, center, gradient, want_mean, want_cov = _factored_case(np.random.default_rng(4), generator)
    post = q.local_posterior_factored(center, factor, gradient)
    draws = post.sample(20_000, generator)  # [S, 2, 6]
    for b in range(2):
        sd = np.sqrt(np.diagonal(want_cov[b]))
        assert_mcse_close(draws[None, :, b].numpy(), want_mean[b], sd**2, want_cov[b] / np.outer(sd, sd))


def test_expected_kl_of_factored_posterior_matches_monte_carlo(seed):
    """E_q(phi) KL(N(m_i, V_i) || N(mu, Sigma)) for a full local V_i under a diagonal NIW, against scipy draws."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    q, factor, center, gradient, _, want_cov = _factored_case(rng, generator)
    post = q.local_posterior_factored(center[:1], factor[:1], gradient[:1])
    mu, cov = (torch.as_tensor(a) for a in _scipy_draws(q, 4000, rng))
    kls = kl_divergence(MultivariateNormal(post.mean[0], torch.as_tensor(want_cov[0])), MultivariateNormal(mu, torch.diag_embed(cov)))
    _assert_mc(float(q.expected_gaussian_kl(post.mean, post)[0]), kls.numpy())


def test_factored_posterior_errors():
    q = NormalInverseWishart.create(np.zeros(3), 1.0, np.ones(3), 2.0)
    with pytest.raises(ValueError, match="^factor: expected shape"):
        q.local_posterior_factored(torch.zeros(3), torch.zeros(3, 4))
    full = NormalInverseWishart.create(np.zeros(2), 1.0, np.eye(2), 3.0)
    with pytest.raises(ValueError, match="^factor: the factored local posterior needs a diagonal NIW"):
        full.local_posterior_factored(torch.zeros(2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="^factor: I \\+ F D\\^\\{-1\\} F\\^T is not numerically positive definite"):
        q.local_posterior_factored(torch.zeros(3), torch.full((1, 3), float("nan")))
    post = q.local_posterior_factored(torch.zeros(3), torch.ones(1, 3))
    assert isinstance(post, FactoredGaussian)
    with pytest.raises(ValueError, match="^cov: a FactoredGaussian local posterior needs a diagonal NIW"):
        NormalInverseWishart.create(np.zeros(3), 1.0, np.eye(3), 4.0).expected_gaussian_kl(post.mean, post)


def test_expected_precision_and_log_det_match_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    q = _full_niw(rng, 3)
    _, cov = _scipy_draws(q, NUM_MC, rng)
    logdets = np.linalg.slogdet(cov)[1]
    _assert_mc(float(q.expected_log_det_cov()), logdets)
    prec = np.linalg.inv(cov)
    for i, j in ((0, 0), (0, 1), (2, 2)):
        _assert_mc(float(q.expected_precision()[i, j]), prec[:, i, j])


def test_variational_niw_round_trips_and_has_gradients():
    rng = np.random.default_rng(1)
    for init in (_diag_niw(rng, 3), _full_niw(rng, 3)):
        module = VariationalNIW(init.loc, float(init.mean_precision), init.scale, float(init.dof))
        got = module()
        for a, b in zip((got.loc, got.mean_precision, got.scale, got.dof), (init.loc, init.mean_precision, init.scale, init.dof)):
            torch.testing.assert_close(a.detach(), b)
        got.kl(init).backward()
        assert all(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": [[1.0, 2.0], [2.0, 1.0]]}, "scale: expected a symmetric positive-definite"),
        ({"scale": [[1.0, 0.5], [0.0, 1.0]]}, "scale: expected a symmetric positive-definite"),
        ({"scale": [1.0, -1.0]}, "scale: expected a positive diagonal"),
        ({"scale": [1.0, 1.0, 1.0]}, "scale: expected shape"),
        ({"loc": [float("nan"), 0.0]}, "loc: expected finite"),
        ({"mean_precision": 0.0}, "mean_precision: expected a value > 0"),
        ({"dof": 0.5, "scale": [[1.0, 0.0], [0.0, 1.0]]}, "dof: expected a value > 1"),
    ],
)
def test_bad_niw_parameters(kwargs, match):
    args = {"loc": [0.0, 0.0], "mean_precision": 1.0, "scale": [1.0, 1.0], "dof": 2.0} | kwargs
    with pytest.raises(ValueError, match=match):
        NormalInverseWishart.create(**args)


def test_bad_update_input():
    q = NormalInverseWishart.create([0.0, 0.0], 1.0, [1.0, 1.0], 2.0)
    with pytest.raises(ValueError, match="theta: expected shape"):
        q.update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="theta: expected finite"):
        q.update(torch.tensor([[0.0, float("nan")]]))
