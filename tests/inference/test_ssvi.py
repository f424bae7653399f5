"""SSVI: removal scores against scipy's folded normal, budgets, swap invariants, masked draws and KL,
sparse storage, FLOPs and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import uqkit
from uqkit._io import load_tensors
from uqkit.inference.flops import Layer, linear_layers, train_step_flops
from uqkit.inference.mfvi import load_variational
from uqkit.inference.ssvi import (SparseSubspace, fit_ssvi, folded_normal_moments, layer_budgets, removal_score,
                                  swap_fraction)
from uqkit.inference.variational import MeanFieldGaussian, gaussian_prior_variances, kl_to_gaussian_prior
from uqkit.models.likelihoods import Categorical
from uqkit.models.nets import MLP
from uqkit.models.priors import LayerwiseGaussian
from uqkit.models.spec import ModelSpec

N = 80


def _data(generator: torch.Generator):
    x = torch.randn(N, 4, generator=generator)
    return x, (x[:, 0] - x[:, 1] > 0).long()


def _spec() -> ModelSpec:
    return ModelSpec(MLP(4, [8, 32, 32], 2, "relu"), LayerwiseGaussian(), Categorical(), N)


def test_folded_normal_moments_match_scipy(generator):
    mu = torch.cat([torch.randn(200, generator=generator) * 3, torch.tensor([0.0, 1e-3, -7.9])])
    std = torch.rand(mu.shape, generator=generator) + 0.05
    mean, var = folded_normal_moments(mu, std)
    ref = stats.foldnorm(c=(mu.abs() / std).numpy(), scale=std.numpy())
    np.testing.assert_allclose(mean.numpy(), ref.mean(), rtol=1e-10)
    np.testing.assert_allclose(var.numpy(), ref.var(), rtol=1e-7)
    # Far from 0, |theta| is N(|mu|, std^2) up to exp(-a^2/2): the variance keeps full precision there.
    mean, var = folded_normal_moments(torch.tensor([40.0, -300.0]), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(var, torch.tensor([1.0, 4.0]), rtol=1e-12, atol=0)
    torch.testing.assert_close(mean, torch.tensor([40.0, 300.0]), rtol=1e-12, atol=0)


def test_removal_scores_against_direct_formulas(generator):
    mu = torch.randn(50, generator=generator)
    std = torch.rand(50, generator=generator) + 0.1
    ref = stats.foldnorm(c=(mu.abs() / std).numpy(), scale=std.numpy())
    torch.testing.assert_close(removal_score(mu, std, "mean"), mu.abs())
    torch.testing.assert_close(removal_score(mu, std, "snr"), mu.abs() / std)
    np.testing.assert_allclose(removal_score(mu, std, "E_mean_abs").numpy(), ref.mean(), rtol=1e-10)
    np.testing.assert_allclose(removal_score(mu, std, "SNR_mean_abs").numpy(), ref.mean() / ref.std(), rtol=1e-7)
    assert removal_score(torch.tensor([0.0]), torch.tensor([0.0]), "snr").item() == 0.0  # NaN -> 0


def test_swap_fraction_is_the_cosine_schedule():
    assert swap_fraction(0, alpha=0.3, end_step=750) == pytest.approx(0.3)
    assert swap_fraction(375, alpha=0.3, end_step=750) == pytest.approx(0.15)
    assert swap_fraction(750, alpha=0.3, end_step=750) == pytest.approx(0.0)


def test_budgets_are_exact_and_keep_the_first_layer_dense():
    layers = [Layer("a", "a.weight", "a.bias", 1), Layer("b", "b.weight", "b.bias", 1), Layer("c", "c.weight", None, 1)]
    shapes = {"a.weight": (10, 4), "a.bias": (10,), "b.weight": (100, 10), "b.bias": (100,), "c.weight": (333, 1)}
    sizes = {k: math.prod(v) for k, v in shapes.items()}
    budgets = layer_budgets(layers, shapes, 0.2, dense_first_layer=True, allocation="model")
    assert set(budgets) == {"b.weight", "c.weight"}
    assert sum(budgets.values()) + 40 + 10 + 100 == round(0.2 * sum(sizes.values()))
    assert budgets["b.weight"] / 1000 == pytest.approx(budgets["c.weight"] / 333, abs=0.01)  # uniform density
    assert layer_budgets(layers, shapes, 1.0) == {}
    # the paper's convention: every masked weight at the density itself
    assert layer_budgets(layers, shapes, 0.2, allocation="layer") == {"b.weight": 200, "c.weight": 67}
    with pytest.raises(ValueError, match="^allocation: expected one of"):
        layer_budgets(layers, shapes, 0.2, allocation="uniform")


def test_erk_budgets_follow_the_erdos_renyi_kernel_rule():
    """Uncapped layers' densities are proportional to sum(shape)/prod(shape); capped layers are dense; total exact."""
    layers = [Layer(n, f"{n}.weight", None, 1) for n in "abcd"]
    shapes = {"a.weight": (16, 1, 3), "b.weight": (32, 16, 3), "c.weight": (128, 640), "d.weight": (10, 128)}
    sizes = {k: math.prod(v) for k, v in shapes.items()}
    density = 0.1
    budgets = layer_budgets(layers, shapes, density, allocation="erk")
    assert sum(budgets.values()) + sizes["a.weight"] == round(density * sum(sizes.values()))
    # direct water-filling by hand: d has ERK weight 138/1280 = 0.108, about 11.5x c's 768/81920
    erk = {k: sum(shapes[k]) / sizes[k] for k in ("b.weight", "c.weight", "d.weight")}
    left = round(density * sum(sizes.values())) - sizes["a.weight"]
    scale = left / sum(erk[k] * sizes[k] for k in erk)
    assert all(scale * w < 1 for w in erk.values())  # no layer capped at this density
    for k, w in erk.items():
        assert budgets[k] == pytest.approx(scale * w * sizes[k], abs=1)
    capped = layer_budgets(layers, shapes, 0.3, allocation="erk")
    assert capped["d.weight"] == sizes["d.weight"]  # its ERK density would pass 1
    assert sum(capped.values()) + sizes["a.weight"] == round(0.3 * sum(sizes.values()))


def _subspace_and_q(generator, density=0.3):
    spec = _spec()
    x, _ = _data(generator)
    subspace = SparseSubspace(density, num_steps=400, swap_every=10, growth_steps=1)
    layers = linear_layers(spec, spec.param_template(), x[:1])
    masks = subspace.initial_masks(spec, layers, generator=generator)
    q = MeanFieldGaussian.init(spec, init_std=0.05, generator=generator, masks=masks)
    for k in q.rho:
        q.rho[k] = q.rho[k] + 0.5 * torch.randn(q.rho[k].shape, generator=generator)
        q.mu[k].grad = torch.randn(q.mu[k].shape, generator=generator)
    return spec, subspace, q


def test_swap_drops_lowest_scores_and_grows_largest_gradients(generator):
    """Drop D = the n lowest removal scores, keep K = active minus D, grow G = the n largest |gradients| outside
    K (dropped ones included): new mask K | G; new coordinates start at mu 0 and K's mean rho, regrown ones keep
    theirs."""
    _, subspace, q = _subspace_and_q(generator)
    name = "layers.2.weight"
    before = q.masks[name].clone().reshape(-1)
    mu, rho = q.mu[name].clone().reshape(-1), q.rho[name].clone().reshape(-1)
    n_swap = math.floor(swap_fraction(10, alpha=0.3, end_step=300) * int(before.sum()))
    active = before.nonzero().squeeze(-1).numpy()
    score = removal_score(mu, F.softplus(rho)).numpy()
    dropped = active[np.argsort(score[active], kind="stable")[:n_swap]]
    kept = before.clone()
    kept[dropped] = False
    grad = q.mu[name].grad.reshape(-1)
    grad[dropped[:2]] = 100.0  # two dropped coordinates have the largest gradients: they come straight back
    outside = (~kept).nonzero().squeeze(-1).numpy()
    grown = outside[np.argsort(-grad.abs().numpy()[outside], kind="stable")[:n_swap]]
    expected = kept.clone()
    expected[grown] = True
    assert subspace.update(10, q)
    after, mu_after, rho_after = q.masks[name].reshape(-1), q.mu[name].reshape(-1), q.rho[name].reshape(-1)
    assert torch.equal(after, expected) and int(after.sum()) == int(before.sum()) and n_swap > 2
    new = after & ~before
    assert (mu_after[new] == 0).all()
    torch.testing.assert_close(rho_after[new], torch.full((int(new.sum()),), float(rho[kept].mean())))
    regrown = torch.from_numpy(dropped[:2])
    assert torch.equal(mu_after[regrown], mu[regrown]) and torch.equal(rho_after[regrown], rho[regrown])
    assert (mu_after[before & ~after] == 0).all()
    assert torch.equal(mu_after[kept], mu[kept])


def test_growth_sums_the_gradients_of_the_last_growth_steps(generator):
    """With growth_steps=3, the grown coordinates are those with the largest |g_8 + g_9 + g_10|; g_7 is ignored."""
    spec, _, q = _subspace_and_q(generator)
    subspace = SparseSubspace(0.3, num_steps=400, swap_every=10, growth_steps=3)
    subspace.initial_masks(spec, linear_layers(spec, spec.param_template(), _data(generator)[0][:1]),
                           generator=generator)
    name = "layers.2.weight"
    before, total = q.masks[name].clone(), torch.zeros_like(q.mu[name])
    for step in range(7, 11):
        for k in q.mu:
            q.mu[k].grad = torch.randn(q.mu[k].shape, generator=generator)
        if step >= 8:
            total += q.mu[name].grad
        assert subspace.update(step, q) == (step == 10)
    grown, idle = ~before & q.masks[name], ~before & ~q.masks[name]
    assert int(grown.sum()) > 0
    assert total.abs()[grown].min() >= total.abs()[idle].max()
    with pytest.raises(ValueError, match="^growth_steps: expected at most swap_every"):
        SparseSubspace(0.3, num_steps=400, swap_every=10, growth_steps=11)
    # by default ten steps, fewer when the updates come more often
    assert SparseSubspace(0.3, num_steps=400).growth_steps == 10
    assert SparseSubspace(0.3, num_steps=400, swap_every=4).growth_steps == 4


def test_optimizer_reset_zeroes_the_moments_of_dropped_coordinates_only(generator):
    """After a swap Adam's moments are 0 at every inactive coordinate (the dropped ones lose theirs, as the SSVI
    code masks its momentum buffers); active coordinates and dense tensors keep theirs."""
    spec, subspace, q = _subspace_and_q(generator)
    leaves = q.leaves()
    for t in leaves:
        t.requires_grad_(True)
        t.grad = torch.randn(t.shape, generator=generator)
    for k in q.masks:  # as in the loop: no gradient at inactive coordinates
        q.rho[k].grad.mul_(q.mask_weight(k))
        q.mu[k].grad.mul_(q.mask_weight(k))
    optimizer = torch.optim.Adam(leaves, lr=1e-2)
    optimizer.step()
    for k in q.masks:
        q.mu[k].grad = torch.randn(q.mu[k].shape, generator=generator)  # the dense growth gradient
    before = {k: m.clone() for k, m in q.masks.items()}
    moments = {id(t): {key: optimizer.state[t][key].clone() for key in ("exp_avg", "exp_avg_sq")} for t in leaves}
    assert subspace.update(10, q)
    subspace.reset_optimizer(optimizer, q)
    assert any((before[k] & ~q.masks[k]).any() for k in q.masks)
    for t in leaves:
        name = next((k for k in q.masks if t is q.mu[k] or t is q.rho[k]), None)
        for key, old in moments[id(t)].items():
            new = optimizer.state[t][key]
            if name is None:
                assert torch.equal(new, old)  # dense tensors keep their moments
            else:
                mask = q.masks[name]
                assert (new[~mask] == 0).all() and (old[before[name] & ~mask] != 0).all()
                assert torch.equal(new[mask], old[mask])


@pytest.mark.parametrize("allocation", ["model", "erk"])
def test_budgets_hold_after_every_swap_and_inactive_draws_are_exactly_zero(allocation, generator):
    spec = _spec()
    post = uqkit.fit(spec, _data(generator), engine="ssvi", density=0.3, num_steps=200, batch_size=20,
                     swap_every=10, num_draws=5, seed=1, allocation=allocation, growth_steps=3, progress=False)
    assert post.meta["allocation"] == allocation and post.meta["growth_steps"] == 3
    budgets = post.meta["layer_budgets"]
    assert len(post.meta["swaps"]) == 14  # steps 10, 20, ..., 140 < T_end = 150
    assert post.meta["swaps"][0]["moved"] > 0
    for swap in post.meta["swaps"]:
        assert all(swap["active"][k] == n for k, n in budgets.items())
    q = post.family
    assert q.num_active() == {k: budgets.get(k, v.numel()) for k, v in q.mu.items()}
    assert post.meta["active_parameters"] == round(0.3 * post.meta["dense_parameters"])
    for k, mask in q.masks.items():
        draws = post.draws[k][0]  # [S, *shape]
        assert (draws[:, ~mask] == 0).all() and (draws[:, mask] != 0).all()
        assert (q.mu[k][~mask] == 0).all()


def test_kl_counts_active_coordinates_only(generator):
    spec, _, q = _subspace_and_q(generator)
    prior_var = gaussian_prior_variances(spec.prior, q.mu)
    expected = sum(torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mu[k][q.masks.get(k, torch.ones_like(q.mu[k], dtype=torch.bool))],
                                   F.softplus(q.rho[k])[q.masks.get(k, torch.ones_like(q.mu[k], dtype=torch.bool))]),
        torch.distributions.Normal(0.0, math.sqrt(float(prior_var[k])))).sum() for k in q.mu)
    torch.testing.assert_close(kl_to_gaussian_prior(q, prior_var), expected)
    for k, mask in q.masks.items():
        q.rho[k][~mask] = 50.0  # inactive scales do not enter
    torch.testing.assert_close(kl_to_gaussian_prior(q, prior_var), expected)


def test_sparse_storage_round_trip(tmp_path, generator):
    spec = _spec()
    x, y = _data(generator)
    post = fit_ssvi(spec, (x, y), density=0.2, num_steps=60, batch_size=20, swap_every=10, num_draws=4, seed=2,
                    progress=False)
    path = tmp_path / "ssvi.safetensors"
    post.save(path)
    tensors, _ = load_tensors(path, kind="uqkit.variational-posterior/1")
    for k, n in post.meta["layer_budgets"].items():
        assert tensors[f"mu/{k}"].numel() == tensors[f"rho/{k}"].numel() == tensors[f"index/{k}"].numel() == n
    stored = sum(v.numel() for k, v in tensors.items() if k.startswith("mu/"))
    assert stored == post.meta["active_parameters"]
    loaded = load_variational(path, spec)
    assert torch.equal(loaded.predict(x).probs, post.predict(x).probs)
    assert all(torch.equal(loaded.family.masks[k], m) for k, m in post.family.masks.items())


def test_sparse_training_counts_fewer_flops(generator):
    spec = _spec()
    data = _data(generator)
    dense = uqkit.fit(spec, data, engine="mfvi", num_steps=40, batch_size=20, progress=False)
    sparse = uqkit.fit(spec, data, engine="ssvi", density=0.25, num_steps=40, batch_size=20, swap_every=10,
                       growth_steps=1, progress=False)
    assert sparse.meta["train_flops"] < 0.5 * dense.meta["train_flops"]
    assert sparse.meta["inference_flops"] < dense.meta["inference_flops"]
    # update steps and the growth_steps - 1 steps before each take the weight gradient densely
    accumulated = uqkit.fit(spec, data, engine="ssvi", density=0.25, num_steps=40, batch_size=20, swap_every=10,
                            growth_steps=4, progress=False)
    layers = linear_layers(spec, spec.param_template(), data[0][:1])
    active, full = accumulated.family.num_active(), {k: v.numel() for k, v in accumulated.family.mu.items()}
    regular = train_step_flops(layers, active, batch_size=20, local=True)
    dense_grad = train_step_flops(layers, active, batch_size=20, local=True, dense=full)
    assert len(accumulated.meta["swaps"]) == 2  # steps 10 and 20 < T_end = 30
    assert accumulated.meta["train_flops"] == (40 - 2 * 4) * regular + 2 * 4 * dense_grad > sparse.meta["train_flops"]


@pytest.mark.parametrize(("options", "match"), [
    ({"density": 0.0}, "density: expected a finite number > 0"),
    ({"density": 1.5}, r"density: expected a fraction of active coordinates in \(0, 1\]"),
    ({"density": float("nan")}, "density: expected a finite number > 0"),
    ({"swap_every": 100, "num_steps": 120}, "swap_every, swap_until: the schedule ends at step 90"),
    ({"swap_until": 0.0}, "swap_until: expected a finite number > 0"),
    ({"removal": "magnitude"}, "removal: expected one of"),
    ({"allocation": "uniform"}, "allocation: expected one of"),
    ({"growth_steps": 0}, "growth_steps: expected an integer >= 1"),
    ({"growth_steps": 11}, "growth_steps: expected at most swap_every=10 steps"),
    ({"density": 0.01}, "density: 0.01 keeps .* the masks cannot cover the remaining layers"),
])
def test_bad_input(options, match, generator):
    with pytest.raises(ValueError, match=match):
        fit_ssvi(_spec(), _data(generator), progress=False, **{"num_steps": 50, "swap_every": 10, **options})


def test_a_net_without_maskable_layers_is_refused(generator):
    spec = ModelSpec(MLP(4, [], 2), LayerwiseGaussian(), Categorical(), N)
    with pytest.raises(ValueError, match="net: SSVI masks the weights of Linear/Conv layers after the first"):
        fit_ssvi(spec, _data(generator), num_steps=50, swap_every=10, progress=False)


def test_nan_loss_names_the_step_and_the_layer(generator):
    spec = ModelSpec(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)), LayerwiseGaussian(),
                     Categorical(), N)
    x, y = _data(generator)
    x[5, 2] = 1e300  # finite, but x^2 in the first layer's output variance overflows
    with pytest.raises(ValueError, match=r"ssvi: the loss is nan at step 0 .*first non-finite output: layer '0'"):
        fit_ssvi(spec, (x, y), density=0.5, num_steps=50, swap_every=10, batch_size=None, progress=False)


class _FlatPrior:
    """Not Gaussian per coordinate: SSVI cannot restrict its KL to the active coordinates."""

    def log_prob(self, params):
        return torch.zeros(())

    def sample(self, num, *, generator, template):
        raise NotImplementedError

    def state(self):
        return {}

    def with_state(self, tensors):
        return self


def test_a_prior_without_closed_form_kl_is_refused(generator):
    spec = ModelSpec(MLP(4, [8, 32, 32], 2, "relu"), _FlatPrior(), Categorical(), N)
    with pytest.raises(ValueError, match="prior: ssvi needs a prior that is Gaussian per coordinate"):
        fit_ssvi(spec, _data(generator), num_steps=50, swap_every=10, progress=False)
