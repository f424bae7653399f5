"""HMC: accuracy within Monte Carlo error, jittered path lengths, divergences, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uqkit.inference.hmc import HMC
from uqkit.inference.integrator import array_log_density, leapfrog, velocity_fn
from uqkit.inference.traced import TracedLogDensity, value_and_grad
from uqkit.inference.sample import sample
from uqkit.testing.checks import assert_mcse_close
from uqkit.testing.targets import (
    correlated_gaussian,
    eight_schools_centered,
    eight_schools_noncentered,
    linear_regression,
)

P_VALUE = 0.01


# Accuracy runs jitter the path length: with a fixed L, HMC on a Gaussian is nearly periodic, and the
# autocorrelation of (x − μ)² then defeats the ESS estimate the MCSE check relies on (seen at L = 10).
@pytest.mark.parametrize("jitter", [0.2, 0.5])
def test_correlated_gaussian_moments(seed, jitter):
    target = correlated_gaussian(2, correlation=0.9, scale_ratio=10.0)
    post = sample(target.log_density, torch.zeros(2), method="hmc", num_warmup=300, num_samples=600, seed=seed,
                  progress=False, num_steps=8, jitter=jitter)
    assert_mcse_close(post.draws, target.mean, target.variance, target.correlation, p_value=P_VALUE)


def test_linear_regression_posterior(seed):
    model = linear_regression(num_data=50, dim=4, noise_sd=0.5, prior_sd=2.0, seed=seed)
    truth = model.posterior
    post = sample(model.log_density, torch.zeros(4), method="hmc", num_warmup=300, num_samples=600, seed=seed,
                  progress=False, num_steps=10, jitter=0.3)
    assert_mcse_close(post.draws, truth.mean, truth.variance, truth.correlation, p_value=P_VALUE)


def test_jittered_path_lengths_cover_the_range(seed):
    target = correlated_gaussian(2)
    post = sample(target.log_density, torch.zeros(2), method="hmc", num_warmup=0, num_samples=300, seed=seed,
                  progress=False, num_steps=10, jitter=0.3, step_size=0.1)
    steps = post.sample_stats["num_steps"]
    assert int(steps.min()) == 7 and int(steps.max()) == 13
    assert "tree_depth" not in post.sample_stats


def test_fixed_step_size_without_adaptation(seed):
    target = correlated_gaussian(2)
    post = sample(target.log_density, torch.zeros(2), method="hmc", num_warmup=50, num_samples=20, seed=seed,
                  progress=False, step_size=0.05, adapt_step_size=False)
    assert bool((post.sample_stats["step_size"] == 0.05).all())


def test_huge_step_size_diverges_and_rejects(seed):
    target = correlated_gaussian(2)
    post = sample(target.log_density, torch.zeros(2, 2), method="hmc", num_warmup=0, num_samples=20, seed=seed,
                  progress=False, step_size=1e3, adapt_step_size=False, num_chains=2)
    assert bool(post.sample_stats["divergent"].all())
    assert bool((post.draws == 0).all())  # every proposal rejected: the chains stay at the start
    assert bool((post.sample_stats["accept_prob"] == 0).all())


def test_leapfrog_is_reversible_and_matches_hand_computation(generator):
    target = correlated_gaussian(3)
    z = torch.randn(4, 3, generator=generator)
    p = torch.randn(4, 3, generator=generator)
    inverse_mass = torch.rand(4, 3, generator=generator) + 0.5
    eps = torch.full((4, 1), 0.1)
    evaluate = array_log_density(target.log_density, z)
    velocity = velocity_fn(inverse_mass.numpy())
    _, grad = evaluate(z.numpy())
    z1, p1, _, value1, grad1 = leapfrog(evaluate, z.numpy(), p.numpy(), grad, eps.numpy(), velocity)
    # by hand: ∇log N(z | μ, Σ) = −Σ⁻¹(z − μ)
    g0 = -(z - target.mean) @ target.precision
    z_hand = z + 0.1 * inverse_mass * (p + 0.05 * g0)
    p_hand = p + 0.05 * g0 + 0.05 * (-(z_hand - target.mean) @ target.precision)
    torch.testing.assert_close(torch.from_numpy(z1), z_hand)
    torch.testing.assert_close(torch.from_numpy(p1), p_hand)
    torch.testing.assert_close(torch.from_numpy(value1), target.log_density(z_hand))
    z_back, p_back, _, _, _ = leapfrog(evaluate, z1, p1, grad1, -eps.numpy(), velocity)
    np.testing.assert_allclose(z_back, z.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p_back, p.numpy(), rtol=1e-12, atol=1e-12)


def test_value_and_grad_matches_autograd(generator):
    target = correlated_gaussian(3)
    z = torch.randn(4, 3, generator=generator, requires_grad=True)
    value, grad = value_and_grad(target.log_density, z.detach())
    expected = torch.autograd.grad(target.log_density(z).sum(), z)[0]
    assert torch.equal(grad, expected)
    assert torch.equal(value, target.log_density(z).detach())


def _funnel_with_nan_region(z):
    """Eight schools (centred) where log tau > 2.5 is NaN: exercises NaN in the traced graph."""
    return torch.where(z[..., 1] > 2.5, torch.nan, eight_schools_centered(z))


@pytest.mark.parametrize("log_density", [
    eight_schools_noncentered, _funnel_with_nan_region, linear_regression(num_data=30, dim=10).log_density,
])
def test_traced_value_and_grad_is_bit_identical_to_autograd(generator, log_density):
    traced = TracedLogDensity(log_density)
    for scale in (0.5, 1.0, 3.0):  # the first call traces; later calls run the graph
        z = scale * torch.randn(4, 10, generator=generator)
        value, grad = value_and_grad(traced, z)
        leaf = z.clone().requires_grad_(True)
        expected_value = log_density(leaf)
        (expected_grad,) = torch.autograd.grad(expected_value.sum(), leaf)
        torch.testing.assert_close(value, expected_value.detach(), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0, equal_nan=True)
    assert traced.traced


def test_traced_graph_drops_constant_work():
    """The backward seed ``ones_like(value)``, ``detach`` and ``x ** 1`` are folded out of the graph."""
    traced = TracedLogDensity(eight_schools_noncentered)
    graph = traced.graph_for(torch.zeros(4, 10))
    kinds = {node.kind() for node in graph.graph.nodes()}
    assert "aten::add" in kinds and not kinds & {"aten::ones_like", "aten::detach", "aten::expand"}


def _noisy(z):
    """Hidden randomness (global RNG): folding must not bake one draw in; the first-call check refuses it."""
    return -0.5 * (z**2).sum(-1) + torch.randn(z.shape[0], dtype=z.dtype)


def test_traced_log_density_with_hidden_randomness_falls_back_to_autograd():
    torch.manual_seed(0)
    traced = TracedLogDensity(_noisy)
    value_and_grad(traced, torch.zeros(4, 3))
    assert not traced.traced


def _depends_on_values(z):
    """Python control flow on a tensor's value: tracing must refuse it rather than bake one branch in."""
    sign = 1.0 if float(z.detach().sum()) > 0 else -1.0
    return -0.5 * sign * (z**2).sum(-1)


def test_traced_log_density_falls_back_to_autograd(generator):
    traced = TracedLogDensity(_depends_on_values)
    z = torch.randn(4, 3, generator=generator)
    for point in (z.abs(), -z.abs()):  # both branches, evaluated correctly
        value, grad = value_and_grad(traced, point)
        sign = 1.0 if float(point.sum()) > 0 else -1.0
        torch.testing.assert_close(value, -0.5 * sign * (point**2).sum(-1), rtol=0, atol=0)
        torch.testing.assert_close(grad, -sign * point, rtol=0, atol=0)
    assert not traced.traced


def test_traced_log_density_traces_each_shape_against_the_closed_form(generator):
    target = correlated_gaussian(3)
    traced = TracedLogDensity(target.log_density)
    for chains in (2, 5, 2, 5):
        z = torch.randn(chains, 3, generator=generator)
        value, grad = value_and_grad(traced, z)
        d = z - target.mean  # log N = −½ dᵀΣ⁻¹d, gradient −Σ⁻¹d
        torch.testing.assert_close(value, -0.5 * torch.einsum("ci,ij,cj->c", d, target.precision, d))
        torch.testing.assert_close(grad, -d @ target.precision)
    assert len(traced._graphs) == 2 and traced.traced


def test_same_seed_same_draws():
    target = correlated_gaussian(2)
    runs = [sample(target.log_density, torch.zeros(2), method="hmc", num_warmup=30, num_samples=30, seed=3,
                   progress=False, jitter=0.2) for _ in range(2)]
    assert torch.equal(runs[0].draws, runs[1].draws)


def test_config_validation():
    for bad in ({"num_steps": 0}, {"jitter": 1.0}, {"jitter": -0.1}, {"step_size": 0.0}, {"target_accept": 1.2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HMC(**bad)
