"""NUTS: accuracy within Monte Carlo error, U-turn bookkeeping against a recursive reference,
divergences, determinism and checkpointed stepping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uqkit._io import load_tensors, save_tensors
from uqkit.inference.hmc import HMCState, state_from_tensors, state_to_tensors
from uqkit.inference.nuts import NUTS, _Slots
from uqkit.inference.sample import sample
from uqkit.testing.checks import assert_mcse_close, assert_means_agree
from uqkit.testing.targets import (
    correlated_gaussian,
    eight_schools_centered,
    eight_schools_noncentered,
    linear_regression,
)

P_VALUE = 0.01  # family-wise probability that a correct sampler fails one accuracy test


@pytest.mark.parametrize(("dim", "dense_mass"), [(2, False), (5, False), (5, True)])
def test_correlated_gaussian_moments(seed, dim, dense_mass):
    target = correlated_gaussian(dim, correlation=0.9, scale_ratio=10.0)
    post = sample(target.log_density, torch.zeros(dim), num_warmup=200, num_samples=500, seed=seed,
                  progress=False, dense_mass=dense_mass)
    assert_mcse_close(post.draws, target.mean, target.variance, target.correlation, p_value=P_VALUE)
    assert int(post.sample_stats["divergent"].sum()) == 0


def test_linear_regression_posterior(seed):
    model = linear_regression(num_data=50, dim=4, noise_sd=0.5, prior_sd=2.0, seed=seed)
    truth = model.posterior
    post = sample(model.log_density, torch.zeros(4), num_warmup=200, num_samples=500, seed=seed, progress=False)
    assert_mcse_close(post.draws, truth.mean, truth.variance, truth.correlation, p_value=P_VALUE)


def _pyro_draws(log_density, dim: int, *, num_warmup: int, num_samples: int, seed: int) -> np.ndarray:
    pyro = pytest.importorskip("pyro")
    from pyro.infer.mcmc import MCMC
    from pyro.infer.mcmc import NUTS as PyroNUTS

    pyro.set_rng_seed(seed)
    kernel = PyroNUTS(potential_fn=lambda params: -log_density(params["z"]))
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup,
                initial_params={"z": torch.zeros(dim)}, disable_progbar=True)
    mcmc.run()
    return mcmc.get_samples()["z"].numpy()[None]


def test_eight_schools_noncentered_matches_pyro(seed):
    ours = sample(eight_schools_noncentered, torch.zeros(10), num_warmup=150, num_samples=400, seed=seed,
                  progress=False)
    theirs = _pyro_draws(eight_schools_noncentered, 10, num_warmup=150, num_samples=400, seed=seed)
    assert_means_agree(ours.draws, theirs, p_value=P_VALUE)
    assert int(ours.sample_stats["divergent"].sum()) <= 20  # the non-centred form rarely diverges


def test_eight_schools_centered_reports_divergences(seed):
    # a lower acceptance target (larger steps) and shallow trees keep it fast and make the funnel bite
    post = sample(eight_schools_centered, torch.zeros(10), num_warmup=100, num_samples=200, seed=seed,
                  progress=False, max_tree_depth=4, target_accept=0.6)
    divergent = post.sample_stats["divergent"]
    assert divergent.dtype == torch.bool
    assert int(divergent.sum()) > 0
    assert post.meta["num_divergent"] == int(divergent.sum())
    assert bool(torch.isfinite(post.draws).all())
    assert bool(torch.isfinite(post.sample_stats["log_density"]).all())


def test_nan_region_is_a_divergence_not_a_nan_draw(seed):
    def log_density(z):  # a standard normal whose density is undefined (NaN) beyond z₀ = 1.5
        value = -0.5 * (z**2).sum(-1)
        return torch.where(z[:, 0] > 1.5, torch.full_like(value, float("nan")), value)

    post = sample(log_density, torch.zeros(2), num_warmup=200, num_samples=300, seed=seed, progress=False)
    assert int(post.sample_stats["divergent"].sum()) > 0
    assert bool(torch.isfinite(post.draws).all())
    assert float(post.draws[..., 0].max()) <= 1.5


def test_max_tree_depth_bounds_trajectory(seed):
    target = correlated_gaussian(3, correlation=0.99, scale_ratio=100.0)
    post = sample(target.log_density, torch.zeros(3), num_warmup=50, num_samples=50, seed=seed, progress=False,
                  max_tree_depth=3, adapt_mass=False)
    assert int(post.sample_stats["tree_depth"].max()) == 3
    assert int(post.sample_stats["num_steps"].max()) <= 2**3 - 1


def _recursive_valid(p: list[np.ndarray]) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
    """Stan's recursive build_tree criterion for a subtree with leaf momenta ``p`` (identity metric):
    (valid, momentum sum, first momentum, last momentum)."""
    if len(p) == 1:
        return True, p[0], p[0], p[0]

    def persist(a, b, rho):
        return a @ rho > 0 and b @ rho > 0

    half = len(p) // 2
    valid_a, rho_a, first_a, last_a = _recursive_valid(p[:half])
    valid_b, rho_b, first_b, last_b = _recursive_valid(p[half:])
    rho = rho_a + rho_b
    valid = (valid_a and valid_b and persist(first_a, last_b, rho) and persist(first_a, first_b, rho_a + first_b)
             and persist(last_a, last_b, rho_b + last_a))
    return valid, rho, first_a, last_b


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_iterative_uturn_checks_match_recursive_reference(generator, depth):
    num_chains, num_leaves = 64, 2**depth
    # momenta rotating at a random rate per chain, plus noise: U-turns at every scale
    rate = torch.rand(num_chains, generator=generator) * 2.0
    angle = rate[None, :] * torch.arange(num_leaves)[:, None] + torch.rand(num_chains, generator=generator) * 6.3
    p = torch.stack([angle.cos(), angle.sin(), 0.3 * torch.randn(num_leaves, num_chains, generator=generator)], -1)
    p = p.numpy()
    slots = _Slots(depth, np.zeros((num_chains, 3)))
    turned = np.zeros(num_chains, dtype=bool)
    running = np.zeros((num_chains, 3))
    for n in range(num_leaves):
        running = running + p[n]
        mask = slots.leaf(n, depth, p[n], p[n], running)
        if mask is not None:
            turned |= mask
    expected = [not _recursive_valid(list(p[:, c]))[0] for c in range(num_chains)]
    assert turned.tolist() == expected
    assert 0 < sum(expected) < num_chains or depth == 1


def test_same_generator_state_gives_identical_step(seed):
    target = correlated_gaussian(3)
    kernel = NUTS()
    state = kernel.init(target.log_density, torch.zeros(4, 3), generator=torch.Generator().manual_seed(seed),
                        num_warmup=10)
    out = [kernel.step(target.log_density, state, generator=torch.Generator().manual_seed(seed + 1)) for _ in range(2)]
    assert torch.equal(out[0][0].position, out[1][0].position)
    assert torch.equal(out[0][1].accept_prob, out[1][1].accept_prob)


def test_num_steps_counts_the_leapfrog_steps_of_the_longest_chain(seed):
    """Chains run in lockstep and never restart within a transition, so the chain that stops last was
    active at every batched log density call: its ``num_steps`` equals the number of calls."""
    target = eight_schools_noncentered
    calls = []

    def counted(z: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return target(z)

    kernel, generator = NUTS(max_tree_depth=6), torch.Generator().manual_seed(seed)
    state = kernel.init(counted, 0.1 * torch.randn(4, 10, generator=generator), generator=generator, num_warmup=0)
    spread = set()
    for _ in range(30):
        calls.clear()
        state, info = kernel.step(counted, state, generator=generator)
        assert int(info.num_steps.max()) == len(calls)
        # the completed doublings, plus at most the subtree that stopped it
        assert bool((2**info.tree_depth - 1 <= info.num_steps).all())
        assert bool((info.num_steps <= 2 ** (info.tree_depth + 1) - 1).all())
        spread.add(int(info.num_steps.max() - info.num_steps.min()))
    assert max(spread) > 0  # some transitions had chains stop at different times


@pytest.mark.parametrize("dense_mass", [False, True])
def test_steps_equal_half_save_load_half(tmp_path, seed, dense_mass):
    """30 steps == 15 steps, save to safetensors, load, 15 steps; with num_warmup=20 the second half
    crosses a mass-matrix window end (step-size heuristic and restart) and the end of warmup."""
    target = correlated_gaussian(3)
    kernel = NUTS(dense_mass=dense_mass)

    def run(state, generator, num):
        for _ in range(num):
            state, _ = kernel.step(target.log_density, state, generator=generator)
        return state

    g = torch.Generator().manual_seed(seed)
    start = kernel.init(target.log_density, torch.zeros(4, 3), generator=g, num_warmup=20)
    g_start = g.get_state()
    straight = run(start, g, 30)
    g.set_state(g_start)
    half = run(start, g, 15)
    save_tensors(tmp_path / "s.safetensors", {**state_to_tensors(half), "rng": g.get_state()}, kind="test")
    tensors, _ = load_tensors(tmp_path / "s.safetensors", kind="test")
    g_loaded = torch.Generator()
    g_loaded.set_state(tensors.pop("rng"))
    resumed = run(state_from_tensors(HMCState, tensors), g_loaded, 15)
    assert not resumed.warmup.active
    expected = state_to_tensors(straight)
    for key, value in state_to_tensors(resumed).items():
        assert torch.equal(value, expected[key]), key


def test_config_validation():
    for bad in ({"max_tree_depth": 0}, {"target_accept": 0.0}, {"target_accept": 1.0}, {"step_size": -0.1},
                {"step_size": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NUTS(**bad)


def test_mcse_check_matches_arviz_and_detects_bias(generator):
    import arviz as az

    from uqkit.testing.checks import mcse_mean

    # an AR(1) chain: correlated draws with known mean 0 and variance 1
    noise = torch.randn(4, 2000, 2, generator=generator)
    x = torch.zeros_like(noise)
    for t in range(1, 2000):
        x[:, t] = 0.8 * x[:, t - 1] + 0.6 * noise[:, t]
    draws = x.numpy()
    _, se = mcse_mean(draws)
    expected = az.mcse(az.convert_to_dataset(draws), method="mean")["x"].values
    np.testing.assert_allclose(se, expected, rtol=1e-3)  # arviz uses sd with ddof=0
    assert_mcse_close(draws, np.zeros(2), np.ones(2), p_value=P_VALUE)
    with pytest.raises(AssertionError, match="critical z"):
        assert_mcse_close(draws, np.array([10 * se[0], 0.0]), p_value=P_VALUE)
    with pytest.raises(AssertionError, match="var"):
        assert_mcse_close(draws, np.zeros(2), np.array([1.5, 1.0]), p_value=P_VALUE)
