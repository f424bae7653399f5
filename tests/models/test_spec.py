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


@pytest.mark.parametrize("prior", [IsotropicGaussian(0.7), LayerwiseGaussian(1.3, 0.4),
                                   HierarchicalLayerwiseGaussian(variances={"layers.0.weight": torch.tensor(0.2)})])
def test_log_joint_and_grad_matches_autograd(prior, generator):
    spec = ModelSpec(MLP(3, [6], 1), prior, Gaussian(0.3, learn_noise=True), 24)
    x, y = torch.randn(8, 3, generator=generator), torch.randn(8, generator=generator)
    params = spec.init_params(generator=generator)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    expected = spec.log_joint(leaves, (x, y))
    expected_grads = torch.autograd.grad(expected, list(leaves.values()))
    value, grads = spec.log_joint_and_grad(params, (x, y))
    assert isinstance(prior, AnalyticGradPrior) and list(grads) == list(params)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-13, atol=1e-10)
    for k, g in zip(leaves, expected_grads):
        torch.testing.assert_close(grads[k], g, rtol=1e-12, atol=1e-12)


class _LaplacePrior:
    """A prior without a closed-form gradient: `log_joint_and_grad` must fall back to autograd."""

    def log_prob(self, params):
        return sum(torch.distributions.Laplace(0.0, 1.0).log_prob(p).sum() for p in params.values())

    def sample(self, num, *, generator, template):
        return {k: torch.randn((num, *t.shape), generator=generator) for k, t in template.items()}

    def state(self):
        return {}

    def with_state(self, tensors):
        return self


def test_log_joint_and_grad_autograd_fallback(generator):
    spec = ModelSpec(MLP(3, [4], 1), _LaplacePrior(), Gaussian(0.3), 16)
    x, y = torch.randn(4, 3, generator=generator), torch.randn(4, generator=generator)
    params = spec.init_params(generator=generator)
    value, grads = spec.log_joint_and_grad(params, (x, y))
    w = params["layers.0.weight"].clone().requires_grad_()
    expected = spec.log_joint({**params, "layers.0.weight": w}, (x, y))
    torch.testing.assert_close(value, expected.detach())
    torch.testing.assert_close(grads["layers.0.weight"], torch.autograd.grad(expected, w)[0])
