"""match_prior: the Wasserstein fit moves a bad prior toward the GP; per-layer priors; Gibbs; save/load; bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from scipy import integrate, stats
from torch.func import functional_call

from uqkit.inference.fit import fit
from uqkit.models import (
    MLP,
    Gaussian,
    GPPrior,
    LayerwiseGaussian,
    MatchResult,
    ModelSpec,
    PerLayerGaussian,
    PerLayerHierarchicalGaussian,
    estimate_w1,
    match_prior,
)
from uqkit.models.wasserstein import measurement_set

with warnings.catch_warnings():  # linear_operator (under gpytorch) calls the deprecated torch.jit.script at import
    warnings.simplefilter("ignore", DeprecationWarning)
    import gpytorch

FAST = {"num_steps": 40, "num_functions": 48, "measurement_size": 16, "critic_steps": 10, "lr": 0.08}
X = torch.linspace(-2, 2, 30, dtype=torch.float64)[:, None]


def _gp(lengthscale: float = 0.6) -> GPPrior:
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
    kernel.base_kernel.lengthscale = lengthscale
    return GPPrior(kernel)


def _net() -> torch.nn.Module:
    return MLP(1, [20], 1, "tanh").double()


def _function_cov(net: torch.nn.Module, prior, x: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    """Empirical covariance ``[n, n]`` of the net's prior functions at ``x``."""
    template = {k: p.detach() for k, p in net.named_parameters()}
    draws = prior.sample(num, generator=torch.Generator().manual_seed(seed), template=template)
    f = torch.vmap(lambda p: functional_call(net, p, (x,)))(draws)[..., 0]
    f = f - f.mean(0)
    return f.T @ f / (num - 1)


@pytest.fixture(scope="module")
def bad_fit() -> MatchResult:
    """GPi-G fit from a deliberately bad start (weight std 5); one thread, as conftest's per-test fixture would set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return match_prior(MLP(1, [20], 1, "tanh").double(), _gp(), X, family="gpi-g", init_weight_std=5.0, seed=1,
                           progress=False, **FAST)
    finally:
        torch.set_num_threads(threads)


def test_initial_prior_is_the_bad_layerwise_gaussian():
    net = _net()
    result = match_prior(net, _gp(), X, init_weight_std=5.0, progress=True, **{**FAST, "num_steps": 1, "lr": 1e-12})
    params = {k: torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) for k, p in net.named_parameters()}
    torch.testing.assert_close(result.prior.log_prob(params), LayerwiseGaussian(5.0, 1.0).log_prob(params))


def test_fit_lowers_w1_on_fresh_measurement_sets(bad_fit):
    """W1 estimated by freshly trained critics on fresh sets (other seed) falls at least 5-fold."""
    options = {"num_sets": 3, "num_functions": 128, "measurement_size": 16, "critic_steps": 60, "seed": 123}
    before = estimate_w1(_net(), LayerwiseGaussian(5.0, 1.0), _gp(), X, **options)
    after = estimate_w1(_net(), bad_fit.prior, _gp(), X, **options)
    assert float(after.mean()) < float(before.mean()) / 5, (before, after)
    assert bad_fit.w1_curve[-10:].mean() < bad_fit.w1_curve[:5].mean() / 5


def test_fitted_function_covariance_approaches_the_kernel(bad_fit):
    """Relative Frobenius error of the prior functions' covariance on a grid vs the GP kernel falls at least 3-fold."""
    grid = torch.linspace(-2, 2, 12)[:, None]
    kernel = _gp().covariance(grid)

    def error(prior) -> float:
        return float(torch.linalg.norm(_function_cov(_net(), prior, grid, 4000, seed=7) - kernel) / torch.linalg.norm(kernel))

    before, after = error(LayerwiseGaussian(5.0, 1.0)), error(bad_fit.prior)
    assert after < before / 3, (before, after)


def test_gpi_h_fit_moves_toward_the_gp():
    result = match_prior(_net(), _gp(), X, family="gpi-h", init_weight_std=5.0, seed=2, progress=False, **FAST)
    assert isinstance(result.prior, PerLayerHierarchicalGaussian)
    assert set(result.prior.shapes) == {k for k, _ in _net().named_parameters()}
    assert result.w1_curve[-10:].mean() < result.w1_curve[:5].mean() / 2


def test_gibbs_update_matches_the_conjugate_posterior_by_quadrature():
    """tau | theta for one tensor: Gibbs draws' mean and variance vs numerical integration of prior x likelihood."""
    shape, rate = 2.0, 0.5
    theta = {"w": 0.7 * torch.randn(4, 3, generator=torch.Generator().manual_seed(0))}
    prior = PerLayerHierarchicalGaussian({"w": shape}, {"w": rate})
    fan, sum_sq = 3, float(theta["w"].square().sum())

    def unnormalised(tau: float) -> float:  # Gamma(shape, rate) prior x N(theta | 0, 1 / (tau fan)) likelihood
        return stats.gamma(shape, scale=1 / rate).pdf(tau) * tau ** (12 / 2) * math.exp(-tau * fan * sum_sq / 2)

    moments = [integrate.quad(lambda t, k=k: t**k * unnormalised(t), 0, math.inf)[0] for k in range(3)]
    mean, var = moments[1] / moments[0], moments[2] / moments[0] - (moments[1] / moments[0]) ** 2
    generator = torch.Generator().manual_seed(1)
    taus = torch.tensor([1 / float(prior.gibbs_update(theta, generator=generator).variances["w"]) for _ in range(4000)])
    assert abs(float(taus.mean()) - mean) < 4 * math.sqrt(var / 4000)
    assert abs(float(taus.var()) - var) < 0.1 * var
    conditional = prior.conditional(theta)
    assert conditional[0]["w"] == pytest.approx(mean**2 / var) and conditional[1]["w"] == pytest.approx(mean / var)


def test_per_layer_priors_against_scipy():
    params = {"a.weight": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), "a.bias": torch.randn(3)}
    g = PerLayerGaussian({"a.weight": 2.0, "a.bias": 0.5})
    expected = stats.norm(0, 2.0 / 2).logpdf(params["a.weight"]).sum() + stats.norm(0, 0.5).logpdf(params["a.bias"]).sum()
    assert float(g.log_prob(params)) == pytest.approx(expected)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    auto = torch.autograd.grad(g.log_prob(leaves), list(leaves.values()))
    analytic = {k: torch.zeros_like(p) for k, p in params.items()}
    g.add_grad_log_prob_(params, analytic)
    for got, numeric in zip(analytic.values(), auto):
        torch.testing.assert_close(got, numeric)
    h = PerLayerHierarchicalGaussian({"a.weight": 3.0, "a.bias": 3.0}, {"a.weight": 2.0, "a.bias": 2.0})
    expected = (stats.norm(0, math.sqrt(2 / 3 / 4)).logpdf(params["a.weight"]).sum()
                + stats.norm(0, math.sqrt(2 / 3)).logpdf(params["a.bias"]).sum())
    assert float(h.log_prob(params)) == pytest.approx(expected)
    draws = h.sample(20000, generator=torch.Generator().manual_seed(3), template=params)["a.bias"]
    # marginal variance of a bias: E[1 / tau] = rate / (shape - 1) = 1, a Student-t with 2 * shape dof
    assert float(draws.var()) == pytest.approx(1.0, rel=0.1)


def test_fitted_gpi_h_prior_runs_in_sghmc_with_gibbs_updates():
    net = _net()
    prior = PerLayerHierarchicalGaussian({k: 2.0 for k, _ in net.named_parameters()},
                                         {k: 1.0 for k, _ in net.named_parameters()})
    spec = ModelSpec(net, prior, Gaussian(0.3), num_data=30)
    y = torch.sin(2 * X[:, 0])
    post = fit(spec, (X, y), engine="sghmc", num_warmup=30, num_samples=5, thinning=3, batch_size=10, gibbs_every=5,
               progress=False)
    assert bool(torch.isfinite(post.predict(X).mean()).all())


def test_save_load_round_trip(bad_fit, tmp_path):
    for result in (bad_fit, match_prior(_net(), _gp(), X, family="gpi-h", progress=False, **{**FAST, "num_steps": 2})):
        result.save(tmp_path / "prior.safetensors")
        loaded = MatchResult.load(tmp_path / "prior.safetensors")
        assert loaded.family == result.family and loaded.seconds == pytest.approx(result.seconds)
        torch.testing.assert_close(loaded.w1_curve, result.w1_curve)
        params = {k: torch.randn(p.shape) for k, p in _net().named_parameters()}
        torch.testing.assert_close(loaded.prior.log_prob(params), result.prior.log_prob(params))
    (tmp_path / "foreign.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="^path: .* is not a uqkit file"):
        MatchResult.load(tmp_path / "foreign.safetensors")


def test_figure_is_a_png(bad_fit):
    assert bad_fit.figure().startswith(b"\x89PNG")


def test_measurement_sets_mix_training_rows_and_box_points():
    inputs = torch.rand(50, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 10.0])
    points = measurement_set(inputs, 20, 0.7, torch.Generator().manual_seed(1))
    from_train = (points[:, None, :] == inputs[None]).all(-1).any(-1)
    assert int(from_train.sum()) == 14
    assert bool((points >= inputs.min(0).values).all() and (points <= inputs.max(0).values).all())


def test_bad_input():
    gp = _gp()
    with pytest.raises(ValueError, match="^inputs: degenerate measurement sets"):
        match_prior(_net(), gp, torch.ones(10, 1), progress=False)
    with pytest.raises(ValueError, match="^inputs: degenerate measurement sets"):
        match_prior(_net(), gp, torch.ones(1, 1), progress=False)
    with pytest.raises(ValueError, match="^inputs: expected finite values"):
        match_prior(_net(), gp, torch.tensor([[0.0], [float("nan")]]), progress=False)
    with pytest.raises(ValueError, match="^measurement_size: expected an integer >= 2"):
        match_prior(_net(), gp, X, measurement_size=1, progress=False)
    with pytest.raises(ValueError, match="^family: expected one of"):
        match_prior(_net(), gp, X, family="gpi-nf", progress=False)
    with pytest.raises(ValueError, match="^spec_or_net: expected a net with one output"):
        match_prior(MLP(1, [5], 2), gp, X, progress=False)
    with pytest.raises(ValueError, match="^inputs: the net cannot take inputs"):
        match_prior(_net(), gp, torch.randn(10, 3), progress=False)
    with pytest.raises(TypeError, match="^gp_prior: expected a GPPrior"):
        match_prior(_net(), "rbf", X, progress=False)
    with pytest.raises(TypeError, match="^spec_or_net: expected a ModelSpec or an nn.Module"):
        match_prior(None, gp, X, progress=False)


def test_non_positive_definite_kernel_is_a_clear_error():
    class Negative(gpytorch.kernels.RBFKernel):
        def forward(self, x1, x2, **params):
            return -super().forward(x1, x2, **params)

    with pytest.raises(ValueError, match="^kernel: the covariance is not positive definite"):
        match_prior(_net(), GPPrior(Negative()), X, progress=False, **{**FAST, "num_steps": 1})


def test_restarts_keep_the_fit_with_the_lowest_final_w1():
    from uqkit.models.wasserstein import match_prior_restarts

    options = {**FAST, "num_steps": 10, "family": "gpi-g", "init_weight_std": 5.0}
    best = match_prior_restarts(_net(), _gp(), X, num_restarts=3, seed=1, progress=False, **options)
    fits = [match_prior(_net(), _gp(), X, seed=3 + r, progress=False, **options) for r in range(3)]
    finals = [float(f.w1_curve[-1:].mean()) for f in fits]
    winner = fits[finals.index(min(finals))]
    assert torch.equal(best.w1_curve, winner.w1_curve)
    assert best.prior.scales == winner.prior.scales
