"""ModelSpec: functional forward, unbiased log joint, prior function draws, predictives, validation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from scipy import stats
from torch import nn

from uqkit.models.likelihoods import Bernoulli, Categorical, Gaussian, HeteroscedasticGaussian
from uqkit.models.nets import MLP
from uqkit.models.priors import AnalyticGradPrior, HierarchicalLayerwiseGaussian, IsotropicGaussian, LayerwiseGaussian
from uqkit.models.spec import ModelSpec


def _regression(generator, num_data=24, learn_noise=False):
    spec = ModelSpec(MLP(3, [6], 1), LayerwiseGaussian(), Gaussian(0.3, learn_noise=learn_noise), num_data)
    x = torch.randn(num_data, 3, generator=generator)
    y = torch.randn(num_data, generator=generator)
    return spec, x, y


def test_forward_equals_module_with_loaded_weights(generator):
    spec, x, _ = _regression(generator)
    params = spec.init_params(generator=generator)
    net = copy.deepcopy(spec.net)
    net.load_state_dict(params)
    torch.testing.assert_close(spec.forward(params, x), net(x))
    # The module's own weights are untouched.
    assert all(torch.equal(a, b) for a, b in zip(spec.net.parameters(), copy.deepcopy(spec.net).parameters()))


def test_log_likelihood_and_prior_against_direct_formula(generator):
    spec, x, y = _regression(generator, learn_noise=True)
    params = spec.init_params(generator=generator)
    params["likelihood.log_noise_std"] = torch.tensor(-0.7)
    net = copy.deepcopy(spec.net)
    net.load_state_dict({k: v for k, v in params.items() if not k.startswith("likelihood.")})
    expected_lik = stats.norm(net(x)[:, 0].detach().numpy(), math.exp(-0.7)).logpdf(y.numpy()).sum()
    assert math.isclose(float(spec.log_likelihood(params, (x, y))), expected_lik, rel_tol=1e-12)
    expected_prior = LayerwiseGaussian().log_prob({k: v.detach() for k, v in net.named_parameters()})
    assert math.isclose(float(spec.log_prior(params)), float(expected_prior), rel_tol=1e-12)


def test_log_joint_is_unbiased_over_a_partition(generator):
    spec, x, y = _regression(generator, num_data=24)
    params = spec.init_params(generator=generator)
    full = spec.log_prior(params) + spec.log_likelihood(params, (x, y))
    torch.testing.assert_close(spec.log_joint(params, (x, y)), full, rtol=1e-13, atol=0)
    for batch_size in (1, 4, 6, 8):
        perm = torch.randperm(24, generator=generator)
        batches = [(x[i], y[i]) for i in perm.split(batch_size)]
        mean = torch.stack([spec.log_joint(params, b) for b in batches]).mean()
        torch.testing.assert_close(mean, full, rtol=1e-13, atol=0)


def test_prior_override(generator):
    spec, x, y = _regression(generator)
    params = spec.init_params(generator=generator)
    other = IsotropicGaussian(3.0)
    assert spec.log_prior(params, prior=other) == other.log_prob(spec.split(params)[0])


def test_sample_functions_vectorised_equals_loop(generator):
    spec, x, _ = _regression(generator)
    f = spec.sample_functions(x, 5, generator=torch.Generator().manual_seed(3))
    assert f.shape == (5, 24, 1)
    net_template = spec.split(spec.param_template())[0]
    draws = spec.prior.sample(5, generator=torch.Generator().manual_seed(3), template=net_template)
    for s in range(5):
        torch.testing.assert_close(f[s], spec.forward({k: v[s] for k, v in draws.items()}, x))


def test_sample_functions_variance_of_a_linear_model(generator):
    # f(x) = w.x + b with w, b ~ N(0, s^2): Var f(x) = s^2 (|x|^2 + 1).
    spec = ModelSpec(nn.Linear(2, 1), IsotropicGaussian(0.5), Gaussian(), 10)
    x = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    num = 4000
    f = spec.sample_functions(x, num, generator=generator)[..., 0]
    var = 0.25 * (x.square().sum(1) + 1)
    z = stats.norm.ppf(1 - 1e-3 / 4)
    assert bool(((f.var(0) - var).abs() < z * var * math.sqrt(2 / (num - 1))).all())


@pytest.mark.parametrize("likelihood, out, check", [
    (Gaussian(0.1), 1, lambda p: p.dist.batch_shape == (4, 5)),
    (HeteroscedasticGaussian(), 2, lambda p: p.dist.batch_shape == (4, 5)),
    (Categorical(), 3, lambda p: p.probs.shape == (4, 5, 3)),
    (Bernoulli(), 1, lambda p: p.probs.shape == (4, 5, 2)),
])
def test_predict_shapes(likelihood, out, check, generator):
    spec = ModelSpec(MLP(2, [3], out), IsotropicGaussian(), likelihood, 10)
    template = spec.param_template()
    draws = {k: torch.stack([spec.init_params(generator=generator)[k] for _ in range(4)]) for k in template}
    pred = spec.predict(draws, torch.randn(5, 2, generator=generator))
    assert check(pred) and pred.num_draws == 4 and pred.num_points == 5


class _NoInFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(2, 3)

    def forward(self, x):
        return self.body(x)


def test_wrong_output_shape_raises():
    with pytest.raises(ValueError, match="^net: output shape .* Bernoulli"):
        ModelSpec(MLP(2, [3], 2), IsotropicGaussian(), Bernoulli(), 10)
    spec = ModelSpec(_NoInFeatures(), IsotropicGaussian(), Gaussian(), 10)  # cannot probe: checked at first use
    with pytest.raises(ValueError, match="^net: output shape .* HeteroscedasticGaussian"):
        ModelSpec(_NoInFeatures(), IsotropicGaussian(), HeteroscedasticGaussian(), 10).forward(
            spec.param_template(), torch.zeros(1, 2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="^num_data:"):
        ModelSpec(MLP(2, [3], 1), IsotropicGaussian(), Gaussian(), 0)
    with pytest.raises(TypeError, match="^net:"):
        ModelSpec(lambda x: x, IsotropicGaussian(), Gaussian(), 3)
    with pytest.raises(TypeError, match="^prior:"):
        ModelSpec(MLP(2, [3], 1), "normal", Gaussian(), 3)
    with pytest.raises(TypeError, match="^likelihood:"):
        ModelSpec(MLP(2, [3], 1), IsotropicGaussian(), "gaussian", 3)
    with pytest.raises(ValueError, match="^activation:"):
        MLP(2, [3], 1, activation="gelu")
    with pytest.raises(ValueError, match="^in_features, hidden, out_features:"):
        MLP(2, [0], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prior", [IsotropicGaussian(0.7), LayerwiseGaussian(1.3, 0.4),
                                   HierarchicalLayerwiseGaussian(variances={"layers.0.weight": torch.tensor(0.2)})])
def test_log_joint_and_grad_matches_autograd(prior, dtype, generator):
    spec = ModelSpec(MLP(3, [6], 1).to(dtype), prior, Gaussian(0.3, learn_noise=True), 24)
    x, y = torch.randn(8, 3, generator=generator, dtype=dtype), torch.randn(8, generator=generator, dtype=dtype)
    params = spec.init_params(generator=generator)
    _assert_matches_autograd(spec, params, (x, y))
    assert isinstance(prior, AnalyticGradPrior)


def _assert_matches_autograd(spec, params, batch):
    """`log_joint_and_grad` against autograd of `log_joint`: the same value, and gradients within a few
    roundings (8 eps) of the magnitudes of the likelihood and prior parts, each taken by autograd."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    expected = spec.log_joint(leaves, batch)
    expected_grads = torch.autograd.grad(expected, list(leaves.values()))
    lik_grads = torch.autograd.grad(spec.log_joint(leaves, batch) - spec.log_prior(leaves), list(leaves.values()))
    prior_grads = torch.autograd.grad(spec.log_prior(leaves), list(leaves.values()), allow_unused=True,
                                      materialize_grads=True)
    value, grads = spec.log_joint_and_grad(params, batch)
    assert list(grads) == list(params) and value.dtype == spec.dtype
    eps = torch.finfo(spec.dtype).eps
    assert abs(float(value) - float(expected.detach())) <= 8 * eps * (abs(float(expected.detach())) + 1)
    for k, g, lik, pri in zip(leaves, expected_grads, lik_grads, prior_grads):
        assert grads[k].dtype == spec.dtype
        assert bool(((grads[k] - g).abs() <= 8 * eps * (lik.abs() + pri.abs())).all()), k


class _SummedBiases(nn.Module):
    """``x W^T + (b1 + b2)``: autograd returns one tensor as the gradient of both biases."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2, bias=False)
        self.b1 = nn.Parameter(torch.zeros(2))
        self.b2 = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return self.linear(x) + (self.b1 + self.b2)


def test_log_joint_and_grad_when_autograd_shares_a_gradient_between_parameters(generator):
    spec = ModelSpec(_SummedBiases(), IsotropicGaussian(0.5), Categorical(), 20)
    x, y = torch.randn(4, 3, generator=generator), torch.randint(0, 2, (4,), generator=generator)
    params = spec.init_params(generator=generator)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    g1, g2 = torch.autograd.grad(spec.log_likelihood(leaves, (x, y)), [leaves["b1"], leaves["b2"]])
    assert g1.data_ptr() == g2.data_ptr()  # the case this test is about
    _assert_matches_autograd(spec, params, (x, y))


class _TiedLayers(nn.Module):
    """Two linear layers sharing one weight: ``named_parameters`` lists it once."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 3)
        self.second = nn.Linear(3, 3)
        self.second.weight = self.first.weight
        self.in_features = 3

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))[:, :1]


def test_tied_weights_take_the_given_value_everywhere(generator):
    spec = ModelSpec(_TiedLayers(), LayerwiseGaussian(), Gaussian(0.3), 10)
    params = spec.init_params(generator=generator)
    assert "second.weight" not in params
    x, y = torch.randn(5, 3, generator=generator), torch.randn(5, generator=generator)
    w = params["first.weight"]
    expected = (torch.tanh(x @ w.T + params["first.bias"]) @ w.T + params["second.bias"])[:, :1]
    torch.testing.assert_close(spec.forward(params, x), expected, rtol=1e-14, atol=1e-14)
    _assert_matches_autograd(spec, params, (x, y))


class _LaplaceWithGradient:
    """A Laplace(0, 1) prior that is not an `IndependentGaussian` but has ``add_grad_log_prob_``."""

    def __init__(self):
        self.calls = 0

    def log_prob(self, params):
        return sum(torch.distributions.Laplace(0.0, 1.0).log_prob(p).sum() for p in params.values())

    def add_grad_log_prob_(self, params, grads):
        self.calls += 1
        for k, p in params.items():
            grads[k].sub_(p.sign())

    def sample(self, num, *, generator, template):
        return {k: torch.randn((num, *t.shape), generator=generator) for k, t in template.items()}

    def state(self):
        return {}

    def with_state(self, tensors):
        return self


def test_log_joint_and_grad_uses_any_prior_with_add_grad_log_prob(generator):
    prior = _LaplaceWithGradient()
    spec = ModelSpec(MLP(3, [4], 1), prior, Gaussian(0.3), 16)
    x, y = torch.randn(4, 3, generator=generator), torch.randn(4, generator=generator)
    _assert_matches_autograd(spec, spec.init_params(generator=generator), (x, y))
    assert prior.calls == 1
