"""Likelihoods against torch.distributions, and their predictives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Normal

from uqkit.models.likelihoods import Bernoulli, Categorical, Gaussian, HeteroscedasticGaussian, Likelihood


def test_gaussian_fixed_noise(generator):
    out, y = torch.randn(7, 1, generator=generator), torch.randn(7, generator=generator)
    lik = Gaussian(noise_std=0.3)
    assert lik.init_params(torch.float64) == {}
    torch.testing.assert_close(lik.log_prob(out, y, {}), Normal(out[:, 0], 0.3).log_prob(y))


def test_gaussian_multi_output_sums_dimensions(generator):
    out, y = torch.randn(7, 3, generator=generator), torch.randn(7, 3, generator=generator)
    torch.testing.assert_close(Gaussian(0.5).log_prob(out, y, {}), Normal(out, 0.5).log_prob(y).sum(-1))


def test_gaussian_learned_noise(generator):
    lik = Gaussian(noise_std=0.2, learn_noise=True)
    params = lik.init_params(torch.float64)
    assert set(params) == {"log_noise_std"} and math.isclose(float(params["log_noise_std"].exp()), 0.2)
    out, y = torch.randn(5, 1, generator=generator), torch.randn(5, generator=generator)
    p = {"log_noise_std": torch.tensor(-0.4)}
    torch.testing.assert_close(lik.log_prob(out, y, p), Normal(out[:, 0], math.exp(-0.4)).log_prob(y))
    # Predictive: per-draw noise.
    outputs = torch.randn(3, 5, 1, generator=generator)
    draws = {"log_noise_std": torch.tensor([-1.0, 0.0, 0.5])}
    pred = lik.predictive(outputs, draws)
    assert pred.dist.batch_shape == (3, 5)
    torch.testing.assert_close(pred.dist.stddev, torch.tensor([-1.0, 0.0, 0.5]).exp()[:, None].expand(3, 5))
    torch.testing.assert_close(pred.dist.mean, outputs[..., 0])


def test_gaussian_predictive_shapes(generator):
    pred = Gaussian(0.1).predictive(torch.randn(4, 6, 1, generator=generator), {})
    assert pred.dist.batch_shape == (4, 6) and torch.allclose(pred.dist.variance, torch.tensor(0.01))
    assert Gaussian(0.1).predictive(torch.randn(4, 6, 2, generator=generator), {}).dist.batch_shape == (4, 6, 2)


def test_heteroscedastic(generator):
    out, y = torch.randn(9, 2, generator=generator), torch.randn(9, generator=generator)
    std = F.softplus(out[:, 1]) + 1e-6
    lik = HeteroscedasticGaussian()
    torch.testing.assert_close(lik.log_prob(out, y, {}), Normal(out[:, 0], std).log_prob(y))
    pred = lik.predictive(out.unsqueeze(0), {})
    torch.testing.assert_close(pred.dist.stddev[0], std)
    torch.testing.assert_close(pred.dist.mean[0], out[:, 0])


def test_categorical(generator):
    out, y = torch.randn(8, 4, generator=generator), torch.randint(0, 4, (8,), generator=generator)
    torch.testing.assert_close(Categorical().log_prob(out, y, {}), TorchCategorical(logits=out).log_prob(y))
    pred = Categorical().predictive(out.unsqueeze(0).expand(2, 8, 4), {})
    assert pred.probs.shape == (2, 8, 4)
    torch.testing.assert_close(pred.mixture_probs(), torch.softmax(out, -1))


def test_bernoulli(generator):
    out, y = torch.randn(8, 1, generator=generator), torch.randint(0, 2, (8,), generator=generator).double()
    torch.testing.assert_close(Bernoulli().log_prob(out, y, {}), TorchBernoulli(logits=out[:, 0]).log_prob(y))
    pred = Bernoulli().predictive(out.unsqueeze(0), {})
    assert pred.probs.shape == (1, 8, 2)
    torch.testing.assert_close(pred.probs[0, :, 1], torch.sigmoid(out[:, 0]))


@pytest.mark.parametrize("lik, shape", [
    (Gaussian(), (4,)), (Gaussian(), (4, 1, 1)), (HeteroscedasticGaussian(), (4, 3)),
    (Categorical(), (4, 1)), (Bernoulli(), (4, 2)),
])
def test_wrong_output_shape(lik, shape):
    assert isinstance(lik, Likelihood)
    with pytest.raises(ValueError, match=f"^net: output shape .* {type(lik).__name__}"):
        lik.check_output(shape)


def test_bad_noise():
    with pytest.raises(ValueError, match="^noise_std:"):
        Gaussian(noise_std=0.0)
    with pytest.raises(ValueError, match="^min_std:"):
        HeteroscedasticGaussian(min_std=-1.0)
