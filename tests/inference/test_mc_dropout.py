"""MC dropout: Gal's test log-likelihood, moments of the stochastic passes, reproducibility, I/O, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from torch import nn

from uqkit.inference.mc_dropout import dropout_rate, fit_mc_dropout, load_mc_dropout, mc_dropout_predict_fn
from uqkit.models.likelihoods import Gaussian
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec

N = 64


def _net(p: float = 0.1) -> nn.Module:
    return nn.Sequential(nn.Dropout(p), nn.Linear(3, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 1))


def _data(generator: torch.Generator):
    x = torch.randn(N, 3, generator=generator)
    return x, x @ torch.tensor([1.0, -0.5, 0.2]) + 0.1 * torch.randn(N, generator=generator)


def test_log_likelihood_is_gals_formula(generator):
    x, y = _data(generator)
    tau = 4.0
    spec = ModelSpec(_net(), IsotropicGaussian(1.0), Gaussian(noise_std=tau**-0.5), N)
    post = fit_mc_dropout(spec, (x, y), num_epochs=3, num_passes=50, progress=False)
    x_test, y_test = x[:9], y[:9]
    pred = post.predict(x_test)
    passes = pred.dist.mean.numpy()  # [T, N]
    assert passes.shape == (50, 9) and np.ptp(passes, axis=0).min() > 0  # the passes really differ
    expected = (logsumexp(-0.5 * tau * (y_test.numpy() - passes) ** 2, axis=0) - math.log(50)
                - 0.5 * math.log(2 * math.pi) + 0.5 * math.log(tau))
    np.testing.assert_allclose(pred.log_prob(y_test).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(pred.mean().numpy(), passes.mean(0), rtol=1e-10)
    np.testing.assert_allclose(pred.variance().numpy(), 1 / tau + passes.var(0), rtol=1e-10)


def test_pass_moments_match_dropout_theory(generator):
    """Dropout(p) then Linear: E f = W x + b and Var f = p/(1-p) sum_j W_j^2 x_j^2, within Monte Carlo error."""
    p, num_passes = 0.3, 4000
    net = nn.Sequential(nn.Dropout(p), nn.Linear(3, 1))
    spec = ModelSpec(net, IsotropicGaussian(1.0), Gaussian(1.0), N)
    params = {k: torch.randn(v.shape, generator=generator) for k, v in spec.param_template().items()}
    x = torch.randn(5, 3, generator=generator)
    passes = mc_dropout_predict_fn(spec, params, num_passes=num_passes, seed=1)(x).dist.mean  # [T, 5]
    w, b = params["1.weight"][0], params["1.bias"][0]
    mean = x @ w + b
    var = p / (1 - p) * (w**2 * x**2).sum(-1)
    z_mean = (passes.mean(0) - mean) / (var / num_passes).sqrt()
    assert float(z_mean.abs().max()) < 4.0, z_mean
    # sample variance: its standard error is sqrt((m4 - var^2) / T) with the 4th central moment estimated
    centred = passes - passes.mean(0)
    se_var = ((centred**4).mean(0) - centred.var(0) ** 2).sqrt() / math.sqrt(num_passes)
    z_var = (centred.var(0) - var) / se_var
    assert float(z_var.abs().max()) < 4.5, z_var


def test_predictions_reproducible_and_global_rng_untouched(generator, tmp_path):
    x, y = _data(generator)
    spec = ModelSpec(_net(), IsotropicGaussian(1.0), Gaussian(0.5), N)
    before = torch.get_rng_state()
    post = fit_mc_dropout(spec, (x, y), num_epochs=2, num_passes=20, seed=5, progress=False)
    first, second = post.predict(x), post.predict(x)
    assert torch.equal(before, torch.get_rng_state())
    torch.testing.assert_close(first.dist.mean, second.dist.mean, rtol=0, atol=0)
    again = fit_mc_dropout(spec, (x, y), num_epochs=2, num_passes=20, seed=5, progress=False)
    torch.testing.assert_close(again.predict(x).dist.mean, first.dist.mean, rtol=0, atol=0)
    post.save(tmp_path / "mcd.safetensors")
    back = load_mc_dropout(tmp_path / "mcd.safetensors", spec)
    torch.testing.assert_close(back.predict(x).log_prob(y), first.log_prob(y), rtol=0, atol=0)
    assert spec.net.training  # the spec's net keeps its mode


def test_weight_decay_default_and_training(generator):
    x, y = _data(generator)
    spec = ModelSpec(_net(0.05), IsotropicGaussian(1.0), Gaussian(0.3), N)
    short = fit_mc_dropout(spec, (x, y), num_epochs=1, batch_size=16, lr=1e-2, progress=False)
    post = fit_mc_dropout(spec, (x, y), num_epochs=60, batch_size=16, lr=1e-2, progress=False)
    assert post.meta["config"]["weight_decay"] == pytest.approx(1e-4 * 0.95 / (2 * N), rel=1e-12)
    assert float(post.sample_stats["loss"]) < float(short.sample_stats["loss"]) - 0.5
    assert float((post.predict(x).mean() - y).square().mean().sqrt()) < 0.3


def test_bad_input(generator, tmp_path):
    x, y = _data(generator)
    plain = ModelSpec(nn.Sequential(nn.Linear(3, 1)), IsotropicGaussian(1.0), Gaussian(0.3), N)
    with pytest.raises(ValueError, match="^net: MC dropout needs"):
        fit_mc_dropout(plain, (x, y), progress=False)
    mixed = nn.Sequential(nn.Dropout(0.1), nn.Linear(3, 4), nn.Dropout(0.2), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="^net: dropout modules use different rates"):
        dropout_rate(mixed)
    spec = ModelSpec(mixed, IsotropicGaussian(1.0), Gaussian(0.3), N)
    post = fit_mc_dropout(spec, (x, y), num_epochs=1, weight_decay=1e-4, num_passes=2, progress=False)
    assert post.meta["config"]["weight_decay"] == 1e-4
    spec = ModelSpec(_net(), IsotropicGaussian(1.0), Gaussian(0.3), N)
    with pytest.raises(ValueError, match="^num_passes"):
        fit_mc_dropout(spec, (x, y), num_passes=0, progress=False)
    with pytest.raises(ValueError, match="^weight_decay"):
        fit_mc_dropout(spec, (x, y), weight_decay=-1.0, progress=False)
    x_nan = x.clone()
    x_nan[2, 2] = float("nan")
    with pytest.raises(ValueError, match="^x: expected finite"):
        fit_mc_dropout(spec, (x_nan, y), progress=False)
    post = fit_mc_dropout(spec, (x, y), num_epochs=1, num_passes=2, progress=False)
    with pytest.raises(ValueError, match="^x: expected finite"):
        post.predict(x_nan)
    from uqkit.inference.ensemble import fit_ensemble

    fit_ensemble(plain, (x, y), num_members=1, num_epochs=1, progress=False).save(tmp_path / "ens.safetensors")
    with pytest.raises(ValueError, match="^path: .* does not hold an MC dropout posterior"):
        load_mc_dropout(tmp_path / "ens.safetensors", spec)
