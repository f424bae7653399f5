"""Deep ensembles: vectorised training equals a loop over members, mixture predictive formulas, I/O, bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from uqkit.inference.ensemble import fit_ensemble, load_ensemble, member_modules, member_seeds
from uqkit.models.likelihoods import Categorical, HeteroscedasticGaussian
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec

N = 64


def _regression(generator: torch.Generator) -> tuple[ModelSpec, torch.Tensor, torch.Tensor]:
    x = torch.randn(N, 3, generator=generator)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(N, generator=generator)
    return ModelSpec(MLP(3, [16], 2, "relu"), IsotropicGaussian(1.0), HeteroscedasticGaussian(), N), x, y


def _classification(generator: torch.Generator) -> tuple[ModelSpec, torch.Tensor, torch.Tensor]:
    x = torch.randn(N, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return ModelSpec(MLP(4, [16], 3, "tanh"), IsotropicGaussian(1.0), Categorical(), N), x, y


@pytest.mark.parametrize("problem", [_regression, _classification])
@pytest.mark.parametrize("adversarial", [False, True])
def test_vectorised_equals_loop(problem, adversarial, generator):
    spec, x, y = problem(generator)
    opts = dict(num_members=3, num_epochs=3, batch_size=20, lr=1e-2, adversarial=adversarial, seed=7, progress=False)
    vec = fit_ensemble(spec, (x, y), vectorize=True, **opts)
    loop = fit_ensemble(spec, (x, y), vectorize=False, **opts)
    assert vec.meta["vectorized"] and not loop.meta["vectorized"]
    for name, value in vec.draws.items():
        assert value.shape == (1, 3, *spec.param_template()[name].shape)
        torch.testing.assert_close(value, loop.draws[name], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vec.sample_stats["loss"], loop.sample_stats["loss"], rtol=1e-10, atol=1e-12)
    # the members really differ (different seeds) and really trained (parameters moved from init)
    w = vec.draws["layers.0.weight"][0]
    assert float((w[0] - w[1]).abs().max()) > 1e-3


def test_member_depends_only_on_seed_and_index(generator):
    spec, x, y = _regression(generator)
    opts = dict(num_epochs=2, batch_size=16, seed=3, progress=False)
    two = fit_ensemble(spec, (x, y), num_members=2, **opts)
    three = fit_ensemble(spec, (x, y), num_members=3, **opts)
    for name in two.draws:
        torch.testing.assert_close(two.draws[name], three.draws[name][:, :2], rtol=1e-10, atol=1e-12)
    assert member_seeds(3, 0) != member_seeds(3, 1) != member_seeds(4, 1)


def test_stacked_adam_equals_separate_adams(generator):
    """Adam is elementwise, so one Adam over [M, ...] tensors takes exactly the steps of M separate Adams."""
    num_members, shape = 4, (5, 3)
    start = torch.randn(num_members, *shape, generator=generator)
    stacked = start.clone().requires_grad_()
    separate = [start[m].clone().requires_grad_() for m in range(num_members)]
    opt_stacked = torch.optim.Adam([stacked], lr=0.05)
    opt_separate = [torch.optim.Adam([p], lr=0.05) for p in separate]
    for _ in range(25):
        grads = torch.randn(num_members, *shape, generator=generator) * torch.logspace(-3, 1, num_members).view(-1, 1, 1)
        stacked.grad = grads.clone()
        opt_stacked.step()
        for m, (p, opt) in enumerate(zip(separate, opt_separate)):
            p.grad = grads[m].clone()
            opt.step()
    torch.testing.assert_close(stacked.detach(), torch.stack([p.detach() for p in separate]), rtol=0, atol=0)


def _member_outputs(spec: ModelSpec, post, x: torch.Tensor) -> torch.Tensor:
    """``[M, N, out]`` by running independent copies of the net (plain nn.Module calls, no vmap)."""
    outs = []
    for m in range(post.num_draws):
        net = copy.deepcopy(spec.net)
        net.load_state_dict({k: v[0, m] for k, v in post.draws.items()})
        with torch.no_grad():
            outs.append(net(x))
    return torch.stack(outs)


def test_regression_mixture_matches_direct_formulas(generator):
    spec, x, y = _regression(generator)
    post = fit_ensemble(spec, (x, y), num_members=4, num_epochs=5, batch_size=16, progress=False)
    x_test = torch.randn(10, 3, generator=generator)
    y_test = torch.randn(10, generator=generator)
    outs = _member_outputs(spec, post, x_test)
    mu, var = outs[..., 0], (F.softplus(outs[..., 1]) + 1e-6) ** 2  # [M, N]
    mix_mean = mu.mean(0)
    mix_var = (var + mu**2).mean(0) - mix_mean**2  # Lakshminarayanan et al., section 2.4
    pred = post.predict(x_test)
    torch.testing.assert_close(pred.mean(), mix_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pred.variance(), mix_var, rtol=1e-10, atol=1e-12)
    # log density of the uniform Gaussian mixture, against scipy
    logpdf = stats.norm.logpdf(y_test.numpy()[None], mu.numpy(), np.sqrt(var.numpy()))
    expected = np.logaddexp.reduce(logpdf, axis=0) - math.log(4)
    np.testing.assert_allclose(pred.log_prob(y_test).numpy(), expected, rtol=1e-10)


def test_classification_averages_member_probabilities(generator):
    spec, x, y = _classification(generator)
    post = fit_ensemble(spec, (x, y), num_members=3, num_epochs=5, batch_size=16, progress=False)
    x_test = torch.randn(7, 4, generator=generator)
    expected = torch.softmax(_member_outputs(spec, post, x_test), -1).mean(0)
    torch.testing.assert_close(post.predict(x_test).mixture_probs(), expected, rtol=1e-10, atol=1e-12)
    members = member_modules(spec, post.draws)
    torch.testing.assert_close(torch.stack([m(x_test) for m in members]).detach(), _member_outputs(spec, post, x_test))


def test_training_reduces_loss_and_fits(generator):
    x = torch.linspace(-2, 2, N).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.05 * torch.randn(N, generator=generator)
    spec = ModelSpec(MLP(1, [32], 2, "tanh"), IsotropicGaussian(1.0), HeteroscedasticGaussian(), N)
    short = fit_ensemble(spec, (x, y), num_members=2, num_epochs=1, batch_size=16, lr=1e-2, progress=False)
    long = fit_ensemble(spec, (x, y), num_members=2, num_epochs=150, batch_size=16, lr=1e-2, progress=False)
    assert bool((long.sample_stats["loss"] < short.sample_stats["loss"] - 1.0).all())
    rmse = float((long.predict(x).mean() - torch.sin(2 * x[:, 0])).square().mean().sqrt())
    assert rmse < 0.15  # noise sd 0.05; an untrained net has rmse ~0.7


def test_save_load_roundtrip(generator, tmp_path):
    spec, x, y = _regression(generator)
    post = fit_ensemble(spec, (x, y), num_members=2, num_epochs=1, progress=False)
    post.save(tmp_path / "ens.safetensors")
    back = load_ensemble(tmp_path / "ens.safetensors", spec)
    x_test = torch.randn(5, 3, generator=generator)
    torch.testing.assert_close(back.predict(x_test).mean(), post.predict(x_test).mean())
    assert back.meta["config"]["num_members"] == 2
    other = ModelSpec(MLP(3, [8], 2, "relu"), IsotropicGaussian(1.0), HeteroscedasticGaussian(), N)
    with pytest.raises(ValueError, match="^spec"):
        load_ensemble(tmp_path / "ens.safetensors", other)


def test_global_rng_untouched(generator):
    spec, x, y = _regression(generator)
    before = torch.get_rng_state()
    fit_ensemble(spec, (x, y), num_members=2, num_epochs=1, progress=False)
    assert torch.equal(before, torch.get_rng_state())


def test_batchnorm_falls_back_to_loop_with_warning(generator):
    x = torch.randn(N, 3, generator=generator)
    y = x.sum(1)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    spec = ModelSpec(net, IsotropicGaussian(1.0), HeteroscedasticGaussian(), N)
    with pytest.warns(UserWarning, match="one after another.*BatchNorm1d"):
        post = fit_ensemble(spec, (x, y), num_members=2, num_epochs=2, batch_size=16, progress=False)
    assert not post.meta["vectorized"]
    running = post.draws["1.running_mean"][0]
    assert float((running[0] - running[1]).abs().max()) > 0  # each member kept its own statistics
    assert int(post.draws["1.num_batches_tracked"][0, 0]) == 2 * 4
    assert net.training and int(net[1].num_batches_tracked) == 0  # the spec's own net is untouched
    pred = post.predict(torch.randn(5, 3, generator=generator))
    assert bool(torch.isfinite(pred.mean()).all())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(num_members=0), ValueError, "^num_members"),
        (dict(num_members=1.5), TypeError, "^num_members"),
        (dict(num_epochs=0), ValueError, "^num_epochs"),
        (dict(batch_size=0), ValueError, "^batch_size"),
        (dict(lr=-1.0), ValueError, "^lr"),
        (dict(adversarial=True, epsilon=0.0), ValueError, "^epsilon"),
        (dict(init="xavier"), ValueError, "^init"),
    ],
)
def test_bad_options(generator, kwargs, error, match):
    spec, x, y = _regression(generator)
    with pytest.raises(error, match=match):
        fit_ensemble(spec, (x, y), progress=False, **kwargs)


def test_bad_data(generator):
    spec, x, y = _regression(generator)
    x_nan = x.clone()
    x_nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="^x: expected finite"):
        fit_ensemble(spec, (x_nan, y), progress=False)
    y_nan = y.clone()
    y_nan[0] = float("inf")
    with pytest.raises(ValueError, match="^y: expected finite"):
        fit_ensemble(spec, (x, y_nan), progress=False)
    with pytest.raises(ValueError, match="^y: expected length"):
        fit_ensemble(spec, (x, y[:-1]), progress=False)
    with pytest.raises(ValueError, match="^data: x holds"):
        fit_ensemble(spec, (x[:-1], y[:-1]), progress=False)
    with pytest.raises(TypeError, match="^data"):
        fit_ensemble(spec, x, progress=False)
    with pytest.raises(TypeError, match="^spec"):
        fit_ensemble("mlp", (x, y), progress=False)


def test_prior_init_and_map(generator):
    spec, x, y = _regression(generator)
    post = fit_ensemble(spec, (x, y), num_members=2, num_epochs=1, init="prior", use_prior=True, progress=False)
    assert bool(torch.isfinite(post.sample_stats["loss"]).all())
    assert post.to_arviz().posterior.sizes["draw"] == 2
