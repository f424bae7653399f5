"""Weight priors: log densities against torch.distributions/scipy, draws and the Gibbs update by Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from uqkit.models.matched_priors import PerLayerGaussian, PerLayerHierarchicalGaussian
from uqkit.models.priors import (
    AnalyticGradPrior,
    GibbsPrior,
    HierarchicalLayerwiseGaussian,
    IndependentGaussian,
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


# Every prior with the in-place analytic gradient, and the variance of each entry of each tensor of
# `_params` (plus a 0-d tensor, fan-in 1), written out independently of the priors' own code.
_NAMES = ("l0.weight", "l0.bias", "conv.weight", "gain")
_GAUSSIANS = [
    (IsotropicGaussian(0.7), dict.fromkeys(_NAMES, 0.49)),
    (LayerwiseGaussian(1.3, 0.4), {"l0.weight": 1.69 / 3, "l0.bias": 0.16, "conv.weight": 1.69 / 18, "gain": 0.16}),
    (HierarchicalLayerwiseGaussian(init_variance=0.8, variances={"l0.weight": torch.tensor(0.3, dtype=torch.float64)}),
     {"l0.weight": 0.1, "l0.bias": 0.8, "conv.weight": 0.8 / 18, "gain": 0.8}),
    (PerLayerGaussian({"l0.weight": 2.0, "l0.bias": 0.5, "conv.weight": 1.5, "gain": 0.3}),
     {"l0.weight": 4 / 3, "l0.bias": 0.25, "conv.weight": 2.25 / 18, "gain": 0.09}),
    (PerLayerHierarchicalGaussian(dict.fromkeys(_NAMES, 3.0), dict.fromkeys(_NAMES, 2.0),
                                  variances={"l0.bias": torch.tensor(0.5, dtype=torch.float64)}),
     {"l0.weight": 2 / 9, "l0.bias": 0.5, "conv.weight": 2 / 54, "gain": 2 / 3}),
]
_IDS = [type(prior).__name__ for prior, _ in _GAUSSIANS]


def _gaussian_params(generator: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    params = {k: v.to(dtype) for k, v in _params(generator).items()}
    return {**params, "gain": torch.randn((), generator=generator, dtype=dtype)}


def test_every_gaussian_prior_in_uqkit_is_checked_below():
    def concrete_subclasses(cls: type) -> set[type]:
        found = {c for c in cls.__subclasses__() if c.__module__.startswith("uqkit.")}
        return {c for c in found if not c.__abstractmethods__}.union(*map(concrete_subclasses, found))

    assert concrete_subclasses(IndependentGaussian) == {type(prior) for prior, _ in _GAUSSIANS}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prior, variances", _GAUSSIANS, ids=_IDS)
def test_gaussian_log_prob_against_scipy_per_tensor(prior, variances, dtype, generator):
    """log_prob equals the sum over tensors and entries of scipy's normal log density (in float64), within
    the a-priori bound of a sum of n rounded terms, (n + 10) eps sum_i |term_i| (Higham, Accuracy and
    Stability, section 4.2; the 10 covers each tensor's norm, division and logarithm)."""
    params = _gaussian_params(generator, dtype)
    terms = np.concatenate([stats.norm(0, math.sqrt(variances[k])).logpdf(p.double().numpy()).ravel()
                            for k, p in params.items()])
    value = prior.log_prob(params)
    assert value.dtype == dtype and value.shape == ()
    bound = (terms.size + 10) * torch.finfo(dtype).eps * np.abs(terms).sum()
    assert abs(float(value) - terms.sum()) <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prior, variances", _GAUSSIANS, ids=_IDS)
def test_add_grad_log_prob_adds_the_autograd_gradient_in_place(prior, variances, dtype, generator):
    """grads[k] += d log_prob / d params[k], in place, equal to autograd of `log_prob` and to the direct
    formula -theta / var within a few roundings (8 eps of the magnitudes involved)."""
    params = _gaussian_params(generator, dtype)
    start = {k: torch.randn(p.shape, generator=generator, dtype=dtype) for k, p in params.items()}
    grads = {k: g.clone() for k, g in start.items()}
    storage = {k: g.data_ptr() for k, g in grads.items()}
    assert isinstance(prior, AnalyticGradPrior)
    prior.add_grad_log_prob_(params, grads)
    assert {k: g.data_ptr() for k, g in grads.items()} == storage  # in place
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    autograd = dict(zip(leaves, torch.autograd.grad(prior.log_prob(leaves), list(leaves.values()))))
    eps = torch.finfo(dtype).eps
    for k, p in params.items():
        direct = start[k].double() - p.double() / variances[k]
        bound = 8 * eps * (start[k].double().abs() + p.double().abs() / variances[k])
        assert grads[k].dtype == dtype
        assert bool(((grads[k].double() - direct).abs() <= bound).all()), k
        assert bool(((grads[k].double() - start[k].double() - autograd[k].double()).abs() <= bound).all()), k


@pytest.mark.parametrize("prior, variances", _GAUSSIANS, ids=_IDS)
def test_gaussian_log_prob_under_vmap_and_grad(prior, variances, generator):
    """The log density works inside torch.func transforms (the NUTS driver and ensembles vmap it)."""
    draws = {k: torch.stack([_gaussian_params(generator, torch.float64)[k] for _ in range(3)]) for k in _NAMES}
    batched = torch.vmap(prior.log_prob)(draws)
    grads = torch.vmap(torch.func.grad(prior.log_prob))(draws)
    for s in range(3):
        params = {k: v[s] for k, v in draws.items()}
        torch.testing.assert_close(batched[s], prior.log_prob(params), rtol=1e-14, atol=0)
        for k, p in params.items():
            torch.testing.assert_close(grads[k][s], -p / variances[k], rtol=1e-14, atol=1e-14)

