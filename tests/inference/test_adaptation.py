"""Warmup: dual averaging, Welford estimates, Stan's windows, mass-matrix updates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uqkit.inference.adaptation import (
    GAMMA,
    T0,
    dual_averaging_init,
    dual_averaging_update,
    warmup_init,
    warmup_update,
    warmup_windows,
    welford_covariance,
    welford_init,
    welford_update,
)
from uqkit.inference.hmc import HMC


def test_dual_averaging_finds_the_step_size_of_a_known_acceptance_curve():
    # acceptance exp(−ε²) per chain scale: the step size with acceptance δ is √(−log δ)·scale
    scale = torch.tensor([0.1, 1.0, 10.0])
    state = dual_averaging_init(torch.ones(3))
    for _ in range(2000):
        accept = torch.exp(-(state.log_step_size.exp() / scale) ** 2)
        state = dual_averaging_update(state, accept, 0.8)
    torch.testing.assert_close(state.log_step_size_avg.exp(), math.sqrt(-math.log(0.8)) * scale, rtol=1e-2, atol=0)


def test_dual_averaging_mean_acceptance_identity_on_a_gaussian(generator):
    """H̄_t = Σ(δ − α_i)/(t + t₀) exactly, so mean(α) over warmup = δ − (t+t₀)/t·H̄_t, and
    log ε_t = μ − √t/γ·H̄_t bounds that gap by γ|μ − log ε_t|(t+t₀)/t^1.5."""
    target_accept, num_warmup = 0.8, 600
    kernel = HMC(num_steps=5, target_accept=target_accept, adapt_mass=False)
    f = lambda z: -0.5 * (z**2).sum(-1)  # noqa: E731
    state = kernel.init(f, torch.zeros(4, 3), generator=generator, num_warmup=num_warmup)
    accepts = []
    for _ in range(num_warmup - 1):  # stop before the last update replaces ε by the average
        state, info = kernel.step(f, state, generator=generator)
        accepts.append(info.accept_prob)
    dual = state.warmup.step_size
    t = int(dual.count)
    mean_accept = torch.stack(accepts).mean(0)
    torch.testing.assert_close(target_accept - mean_accept, (t + T0) / t * dual.error_avg, rtol=1e-10, atol=1e-12)
    gap = GAMMA * (dual.shrink_target - dual.log_step_size).abs() * (t + T0) / t**1.5
    torch.testing.assert_close((target_accept - mean_accept).abs(), gap, rtol=1e-10, atol=1e-12)
    assert bool((gap < 0.02).all())


@pytest.mark.parametrize("dense", [False, True])
def test_welford_matches_numpy(generator, dense):
    x = torch.randn(3, 40, 5, generator=generator) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) + 7.0
    state = welford_init(3, 5, dense=dense)
    for i in range(40):
        state = welford_update(state, x[:, i])
    np.testing.assert_allclose(state.mean.numpy(), x.numpy().mean(1), rtol=1e-12)
    for c in range(3):
        cov = np.cov(x[c].numpy(), rowvar=False)
        expected = cov if dense else np.diag(cov)
        np.testing.assert_allclose(welford_covariance(state, regularize=False)[c].numpy(), expected, rtol=1e-10)
        shrunk = 40 / 45 * expected + 1e-3 * 5 / 45 * (np.eye(5) if dense else 1.0)
        np.testing.assert_allclose(welford_covariance(state)[c].numpy(), shrunk, rtol=1e-10)


def test_windows_follow_stan():
    # Stan's documented default for 1000 warmup iterations: 75 fast, then 25, 50, 100, 200, 500 slow, 50 fast
    assert warmup_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert warmup_windows(150) == [(75, 100)]
    assert warmup_windows(100) == [(15, 90)]  # 15 % / 75 % / 10 %
    assert warmup_windows(19) == []


def test_mass_matrix_is_the_regularised_window_variance(generator):
    num_warmup = 100  # one slow window: iterations 15..89
    state = warmup_init(torch.ones(2), 3, num_warmup, dense=False)
    positions = torch.randn(num_warmup, 2, 3, generator=generator) * torch.tensor([0.5, 1.0, 4.0])
    updates = {}
    for i in range(num_warmup):
        update = warmup_update(state, positions[i], torch.full((2,), 0.8), target_accept=0.8)
        state = update.state
        if update.inverse_mass is not None:
            updates[i] = update.inverse_mass
    assert list(updates) == [89]
    window = positions[15:90].numpy()
    n = window.shape[0]
    expected = n / (n + 5) * window.var(0, ddof=1) + 1e-3 * 5 / (n + 5)
    np.testing.assert_allclose(updates[89].numpy(), expected, rtol=1e-10)
    assert not state.active
