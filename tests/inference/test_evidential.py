"""Deep evidential regression: NIG Student-t marginal, Student-t CDF/quantiles, uncertainty split, training, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from uqkit.calibration.distributions import StudentT
from uqkit.inference.ensemble import load_ensemble
from uqkit.inference.evidential import NormalInverseGamma, evidential_loss, fit_der
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec

N = 64


def _nig_numpy(raw: torch.Tensor, eps: float = 1e-6):
    g, n, a, b = (c.numpy() for c in raw.chunk(4, -1))
    soft = lambda z: np.logaddexp(0, z)  # noqa: E731
    return g, soft(n) + eps, 1 + soft(a) + eps, soft(b) + eps


def test_log_prob_is_student_t_marginal(generator):
    lik = NormalInverseGamma()
    raw = torch.randn(50, 8, generator=generator) * 2  # D = 2
    y = torch.randn(50, 2, generator=generator) * 3
    gamma, nu, alpha, beta = _nig_numpy(raw)
    expected = stats.t.logpdf(y.numpy(), df=2 * alpha, loc=gamma, scale=np.sqrt(beta * (1 + nu) / (nu * alpha))).sum(-1)
    np.testing.assert_allclose(lik.log_prob(raw, y, {}).numpy(), expected, rtol=1e-10)


def test_nig_marginal_by_simulation(generator):
    """sigma^2 ~ InvGamma(alpha, beta), mu ~ N(gamma, sigma^2/nu), y ~ N(mu, sigma^2) has the predictive's CDF."""
    gamma, nu, alpha, beta = 0.3, 2.0, 3.0, 1.5
    num = 200_000
    sigma2 = beta / torch.from_numpy(stats.gamma.rvs(alpha, size=num, random_state=np.random.default_rng(0)))
    mu = gamma + torch.randn(num, generator=generator) * (sigma2 / nu).sqrt()
    y = mu + torch.randn(num, generator=generator) * sigma2.sqrt()
    raw = torch.tensor([[gamma, _softplus_inv(nu - 1e-6), _softplus_inv(alpha - 1 - 1e-6), _softplus_inv(beta - 1e-6)]])
    pred = NormalInverseGamma().predictive(raw.unsqueeze(0), {})
    points = torch.tensor([-2.0, -0.5, 0.3, 1.0, 2.5])
    for t in points:
        empirical = float((y <= t).double().mean())
        model = float(pred.cdf(t.reshape(1)))
        se = np.sqrt(model * (1 - model) / num)
        assert abs(empirical - model) < 4.5 * se, (float(t), empirical, model, se)


def _softplus_inv(v: float) -> float:
    return float(np.log(np.expm1(v)))


def test_student_t_cdf_icdf_against_scipy(generator):
    df = torch.rand(20, generator=generator) * 10 + 0.5
    loc, scale = torch.randn(20, generator=generator), torch.rand(20, generator=generator) + 0.1
    dist = StudentT(df, loc, scale)
    value = torch.randn(20, generator=generator) * 3
    np.testing.assert_allclose(dist.cdf(value).numpy(), stats.t.cdf(value.numpy(), df.numpy(), loc.numpy(), scale.numpy()),
                               rtol=1e-10, atol=1e-14)
    q = torch.rand(20, generator=generator)
    np.testing.assert_allclose(dist.icdf(q).numpy(), stats.t.ppf(q.numpy(), df.numpy(), loc.numpy(), scale.numpy()),
                               rtol=1e-8)
    torch.testing.assert_close(dist.cdf(dist.icdf(q)), q, rtol=1e-8, atol=1e-10)


def test_predictive_interval_and_uncertainty_split(generator):
    lik = NormalInverseGamma()
    raw = torch.randn(1, 6, 4, generator=generator)
    pred = lik.predictive(raw, {})
    gamma, nu, alpha, beta = (v[:, 0] for v in _nig_numpy(raw[0]))
    df, scale = 2 * alpha, np.sqrt(beta * (1 + nu) / (nu * alpha))
    lo, hi = pred.interval(0.9)
    np.testing.assert_allclose(lo.numpy(), stats.t.ppf(0.05, df, gamma, scale), rtol=1e-8)
    np.testing.assert_allclose(hi.numpy(), stats.t.ppf(0.95, df, gamma, scale), rtol=1e-8)
    mean, aleatoric, epistemic = lik.uncertainty(raw[0])
    np.testing.assert_allclose(aleatoric[:, 0].numpy(), beta / (alpha - 1), rtol=1e-12)  # E[sigma^2]
    np.testing.assert_allclose(epistemic[:, 0].numpy(), beta / (nu * (alpha - 1)), rtol=1e-12)  # Var[mu]
    np.testing.assert_allclose(pred.variance().numpy(), stats.t.var(df, gamma, scale), rtol=1e-10)
    np.testing.assert_allclose(pred.variance().numpy(), (aleatoric + epistemic)[:, 0].numpy(), rtol=1e-10)
    torch.testing.assert_close(pred.mean(), mean[:, 0])


def test_regularizer_and_adaptive_multiplier(generator):
    spec = ModelSpec(MLP(2, [8], 4, "tanh"), IsotropicGaussian(1.0), NormalInverseGamma(), N)
    params = spec.param_template()
    x, y = torch.randn(10, 2, generator=generator), torch.randn(10, generator=generator)
    raw = spec.forward(params, x)
    gamma, nu, alpha, _ = _nig_numpy(raw.detach())
    reg = (np.abs(y.numpy()[:, None] - gamma) * (2 * nu + alpha)).sum(-1)
    np.testing.assert_allclose(spec.likelihood.regularizer(raw, y).detach().numpy(), reg, rtol=1e-12)
    nll = -spec.likelihood.log_prob(raw, y, {}).mean()
    lam = torch.tensor(0.3)
    fixed, state = evidential_loss(spec, adaptive=False, target=0.01, dual_lr=1e-4)(params, {"lagrange": lam}, x, y)
    torch.testing.assert_close(fixed, nll + 0.3 * reg.mean())
    assert float(state["lagrange"]) == 0.3
    adaptive, state = evidential_loss(spec, adaptive=True, target=0.01, dual_lr=0.5)(params, {"lagrange": lam}, x, y)
    torch.testing.assert_close(adaptive, nll + 0.3 * (reg.mean() - 0.01))
    np.testing.assert_allclose(float(state["lagrange"]), max(0.0, 0.3 + 0.5 * (reg.mean() - 0.01)), rtol=1e-12)
    _, state = evidential_loss(spec, adaptive=True, target=1e9, dual_lr=1.0)(params, {"lagrange": lam}, x, y)
    assert float(state["lagrange"]) == 0.0  # projected onto lambda >= 0


def _toy(generator: torch.Generator):
    x = torch.linspace(-2, 2, N).unsqueeze(-1)
    noise = 0.05 + 0.3 * (x[:, 0] > 0)  # heteroscedastic
    y = torch.sin(2 * x[:, 0]) + noise * torch.randn(N, generator=generator)
    return ModelSpec(MLP(1, [32], 4, "tanh"), IsotropicGaussian(1.0), NormalInverseGamma(), N), x, y


@pytest.mark.parametrize("adaptive", [False, True])
def test_fit_der_learns(generator, adaptive):
    spec, x, y = _toy(generator)
    short = fit_der(spec, (x, y), num_epochs=1, batch_size=16, lr=1e-2, adaptive=adaptive, progress=False)
    post = fit_der(spec, (x, y), num_epochs=150, batch_size=16, lr=1e-2, adaptive=adaptive, progress=False)
    assert float(post.sample_stats["loss"]) < float(short.sample_stats["loss"]) - 0.5
    pred = post.predict(x)
    assert float((pred.mean() - torch.sin(2 * x[:, 0])).square().mean().sqrt()) < 0.2
    _, aleatoric, _ = spec.likelihood.uncertainty(spec.forward({k: v[0, 0] for k, v in post.draws.items()}, x))
    assert float(aleatoric[x[:, 0] > 0.5].mean()) > 2 * float(aleatoric[x[:, 0] < -0.5].mean())  # noisy side is noisier
    if adaptive:
        assert float(post.sample_stats["lagrange"]) > 0
    assert post.meta["engine"] == "der"


def test_der_ensemble_and_save_load(generator, tmp_path):
    spec, x, y = _toy(generator)
    post = fit_der(spec, (x, y), num_epochs=2, num_members=2, progress=False)
    assert post.predict(x).num_draws == 2
    post.save(tmp_path / "der.safetensors")
    back = load_ensemble(tmp_path / "der.safetensors", spec)
    torch.testing.assert_close(back.predict(x).log_prob(y), post.predict(x).log_prob(y))


def test_bad_input(generator):
    spec, x, y = _toy(generator)
    with pytest.raises(ValueError, match="^net: output shape"):
        ModelSpec(MLP(1, [4], 3), IsotropicGaussian(1.0), NormalInverseGamma(), N)
    from uqkit.models.likelihoods import Gaussian

    with pytest.raises(TypeError, match="^spec"):
        fit_der(ModelSpec(MLP(1, [4], 1), IsotropicGaussian(1.0), Gaussian(), N), (x, y), progress=False)
    x_nan = x.clone()
    x_nan[0] = float("nan")
    with pytest.raises(ValueError, match="^x: expected finite"):
        fit_der(spec, (x_nan, y), progress=False)
    with pytest.raises(ValueError, match="^reg_weight"):
        fit_der(spec, (x, y), reg_weight=-1.0, progress=False)
    with pytest.raises(ValueError, match="^dual_lr"):
        fit_der(spec, (x, y), adaptive=True, dual_lr=0.0, progress=False)
    with pytest.raises(ValueError, match="^num_members"):
        fit_der(spec, (x, y), num_members=0, progress=False)
    with pytest.raises(ValueError, match="^eps"):
        NormalInverseGamma(eps=0.0)
