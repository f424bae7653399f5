"""Weight priors: log densities against torch.distributions/scipy, draws and the Gibbs update by Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from uqkit.models.priors import (
    GibbsPrior,
    HierarchicalLayerwiseGaussian,
    IsotropicGaussian,
    LayerwiseGaussian,
    Prior,
    fan_in,
    gamma_draws,
)

P_VALUE = 1e-3  # per statistical check; each test makes at most a few


def _params(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"l0.weight": torch.randn(5, 3, generator=generator), "l0.bias": torch.randn(5, generator=generator),
            "conv.weight": torch.randn(4, 2, 3, 3, generator=generator)}


def test_fan_in():
    assert fan_in((5, 3)) == 3 and fan_in((4, 2, 3, 3)) == 18 and fan_in((7,)) == 1 and fan_in(()) == 1


def test_isotropic_log_prob_matches_torch(generator):
    params = _params(generator)
    prior = IsotropicGaussian(scale=0.7)
    expected = sum(torch.distributions.Normal(0.0, 0.7).log_prob(p).sum() for p in params.values())
    torch.testing.assert_close(prior.log_prob(params), expected, rtol=1e-12, atol=1e-12)


def test_layerwise_log_prob_matches_scipy(generator):
    params = _params(generator)
    prior = LayerwiseGaussian(weight_scale=2.0, bias_scale=0.5)
    expected = (stats.norm(0, 2.0 / math.sqrt(3)).logpdf(params["l0.weight"].numpy()).sum()
                + stats.norm(0, 0.5).logpdf(params["l0.bias"].numpy()).sum()
                + stats.norm(0, 2.0 / math.sqrt(18)).logpdf(params["conv.weight"].numpy()).sum())
    assert abs(float(prior.log_prob(params)) - expected) < 1e-9


def test_hierarchical_log_prob_is_conditional_gaussian(generator):
    params = _params(generator)
    variances = {"l0.weight": torch.tensor(0.3), "l0.bias": torch.tensor(2.0)}  # conv uses init_variance
    prior = HierarchicalLayerwiseGaussian(shape=2.0, rate=1.5, init_variance=0.8, variances=variances)
    expected = (stats.norm(0, math.sqrt(0.3 / 3)).logpdf(params["l0.weight"].numpy()).sum()
                + stats.norm(0, math.sqrt(2.0)).logpdf(params["l0.bias"].numpy()).sum()
                + stats.norm(0, math.sqrt(0.8 / 18)).logpdf(params["conv.weight"].numpy()).sum())
    assert abs(float(prior.log_prob(params)) - expected) < 1e-9


@pytest.mark.parametrize("prior", [IsotropicGaussian(0.5), LayerwiseGaussian(1.5, 0.2)])
def test_gaussian_draws_have_the_prior_variance(prior, generator):
    template = _params(generator)
    num = 4000
    draws = prior.sample(num, generator=generator, template=template)
    z = stats.norm.ppf(1 - P_VALUE / 2)
    for name, t in template.items():
        assert draws[name].shape == (num, *t.shape) and draws[name].dtype == t.dtype
        x = draws[name].reshape(num, -1)[:, 0]  # one entry: num i.i.d. draws
        var = prior.variance(t.shape) if isinstance(prior, LayerwiseGaussian) else prior.scale**2
        # The sample variance of n normals has sd var * sqrt(2 / (n - 1)); the mean has sd sqrt(var / n).
        assert abs(float(x.var()) - var) < z * var * math.sqrt(2 / (num - 1))
        assert abs(float(x.mean())) < z * math.sqrt(var / num)


def test_hierarchical_draws_are_student_t(generator):
    # tau ~ Gamma(a, b), theta | tau ~ N(0, 1 / (tau fan_in))  =>  theta sqrt(fan_in) ~ t_{2a}(0, sqrt(b / a)).
    prior = HierarchicalLayerwiseGaussian(shape=3.0, rate=2.0)
    template = _params(generator)
    draws = prior.sample(3000, generator=generator, template=template)
    x = (draws["l0.weight"][:, 0, 0] * math.sqrt(3)).numpy()
    result = stats.kstest(x, stats.t(df=6.0, scale=math.sqrt(2.0 / 3.0)).cdf)
    assert result.pvalue > P_VALUE, result


def test_gibbs_update_matches_conjugate_gamma(generator):
    prior = HierarchicalLayerwiseGaussian(shape=2.0, rate=0.5)
    params = _params(generator)
    num = 3000
    precisions = {k: [] for k in params}
    for _ in range(num):
        new = prior.gibbs_update(params, generator=generator)
        for k in params:
            precisions[k].append(1.0 / float(new.variances[k]))
    for k, t in params.items():
        shape = 2.0 + t.numel() / 2
        rate = 0.5 + fan_in(t.shape) * float(t.square().sum()) / 2
        result = stats.kstest(np.array(precisions[k]), stats.gamma(a=shape, scale=1 / rate).cdf)
        assert result.pvalue > P_VALUE / len(params), (k, result)


def test_gibbs_update_is_reproducible_and_frozen(seed):
    prior = HierarchicalLayerwiseGaussian()
    params = _params(torch.Generator().manual_seed(seed))
    a = prior.gibbs_update(params, generator=torch.Generator().manual_seed(1))
    b = prior.gibbs_update(params, generator=torch.Generator().manual_seed(1))
    assert a.variances.keys() == params.keys() and prior.variances == {}
    assert all(torch.equal(a.variances[k], b.variances[k]) for k in params)
    assert isinstance(a, GibbsPrior) and not isinstance(LayerwiseGaussian(), GibbsPrior)
    restored = prior.with_state(a.state())
    assert restored.log_prob(params) == a.log_prob(params)


def test_gamma_draws_match_scipy(generator):
    x = gamma_draws(torch.full((4000,), 2.5), torch.full((4000,), 4.0), generator=generator).numpy()
    assert stats.kstest(x, stats.gamma(a=2.5, scale=0.25).cdf).pvalue > P_VALUE


def test_priors_are_priors():
    for prior in (IsotropicGaussian(), LayerwiseGaussian(), HierarchicalLayerwiseGaussian()):
        assert isinstance(prior, Prior) and prior.with_state(prior.state()) == prior


@pytest.mark.parametrize("build, name", [
    (lambda: IsotropicGaussian(scale=0.0), "scale"),
    (lambda: IsotropicGaussian(scale=float("nan")), "scale"),
    (lambda: LayerwiseGaussian(weight_scale=-1.0), "weight_scale"),
    (lambda: LayerwiseGaussian(bias_scale=0.0), "bias_scale"),
    (lambda: HierarchicalLayerwiseGaussian(shape=0.0), "shape"),
    (lambda: HierarchicalLayerwiseGaussian(rate=-2.0), "rate"),
])
def test_bad_hyperparameters(build, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        build()
