"""Last-layer Laplace against the exact computation on a tiny model: autograd Hessian, Jacobians, weight samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from torch import nn
from torch.func import functional_call

from uqkit.wrap import LastLayerLaplace
from uqkit.wrap.laplace import evidence_prior_precision, last_layer_hessian

LAST = "4"  # name of the classifier fixture's last nn.Linear


def _last_layer_theta(model: nn.Module) -> torch.Tensor:
    layer = getattr(model, LAST)
    return torch.cat([layer.weight, layer.bias.unsqueeze(-1)], 1).detach()


def _logits_at(model: nn.Module, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The model's logits with last-layer parameters ``theta [C, d + 1]`` (weights, then bias column)."""
    params = {f"{LAST}.weight": theta[..., :-1], f"{LAST}.bias": theta[..., -1]}
    return functional_call(model, params, (x,))


def _exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    theta = _last_layer_theta(model)

    def total_nll(flat: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(_logits_at(model, flat.reshape(theta.shape), x), y, reduction="sum")

    return torch.autograd.functional.hessian(total_nll, theta.flatten())


def test_hessian_equals_the_autograd_hessian(classifier, blobs):
    x, y = blobs
    la = LastLayerLaplace(classifier, prior_precision=1.0).fit(x, y)
    exact = _exact_hessian(classifier, x, y)
    torch.testing.assert_close(la.hessian_, exact, rtol=1e-10, atol=1e-10)
    # Chunking does not change the sum.
    feats = classifier[:4](x)
    torch.testing.assert_close(last_layer_hessian(feats, classifier(x), bias=True, chunk_size=7), exact, rtol=1e-10, atol=1e-10)


def test_hessian_without_bias(generator):
    model = nn.Sequential(nn.Linear(3, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(4, 3, generator=generator))
    x = torch.randn(25, 3, generator=generator)
    y = torch.randint(0, 4, (25,), generator=generator)

    def total_nll(flat):
        return nn.functional.cross_entropy(x @ flat.reshape(4, 3).T, y, reduction="sum")

    exact = torch.autograd.functional.hessian(total_nll, model[0].weight.detach().flatten())
    la = LastLayerLaplace(model, prior_precision=2.0).fit(x, y)
    torch.testing.assert_close(la.hessian_, exact, rtol=1e-10, atol=1e-10)


def test_evidence_prior_precision_maximises_the_log_evidence(classifier, blobs):
    x, y = blobs
    la = LastLayerLaplace(classifier).fit(x, y)
    hessian, theta = _exact_hessian(classifier, x, y), _last_layer_theta(classifier)
    num_params, sq_norm = theta.numel(), float((theta**2).sum())

    def neg_log_evidence(log_lam: float) -> float:
        lam = math.exp(log_lam)
        logdet = torch.linalg.slogdet(hessian + lam * torch.eye(num_params)).logabsdet
        return -(0.5 * num_params * log_lam - 0.5 * lam * sq_norm - 0.5 * float(logdet))

    best = optimize.minimize_scalar(neg_log_evidence, bounds=(-15, 15), method="bounded", options={"xatol": 1e-10})
    np.testing.assert_allclose(math.log(float(la.prior_precision_)), best.x, atol=1e-6)
    assert evidence_prior_precision(torch.linalg.eigvalsh(hessian), theta) == pytest.approx(float(la.prior_precision_), rel=1e-9)


def _exact_logit_covariance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_new: torch.Tensor, prior_precision: float):
    """``[N, C, C]`` GLM logit covariance ``J Sigma J^T``: posterior covariance by inversion, autograd Jacobians."""
    theta = _last_layer_theta(model)
    sigma = torch.linalg.inv(_exact_hessian(model, x, y) + prior_precision * torch.eye(theta.numel()))
    jac = torch.autograd.functional.jacobian(lambda t: _logits_at(model, t.reshape(theta.shape), x_new), theta.flatten())
    return jac @ sigma @ jac.transpose(1, 2)


def test_glm_probit_predictive_against_jacobians_and_full_covariance(classifier, blobs, generator):
    x, y = blobs
    la = LastLayerLaplace(classifier, prior_precision=0.5, link_approx="probit").fit(x, y)
    x_new = torch.randn(15, x.shape[1], generator=generator) * 3
    logit_cov = _exact_logit_covariance(classifier, x, y, x_new, 0.5)
    torch.testing.assert_close(la.logit_covariance(classifier[:4](x_new)), logit_cov, rtol=1e-9, atol=1e-12)
    logits = classifier(x_new)
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * logit_cov.diagonal(dim1=1, dim2=2))
    out = la(x_new)
    assert torch.equal(out.output, logits)
    torch.testing.assert_close(out.predictive.mixture_probs(), torch.softmax(kappa * logits, -1), rtol=1e-9, atol=1e-12)


def test_default_scaled_predictive_is_direct_and_keeps_every_predicted_class(classifier, blobs, generator):
    """Default link: all logits of a point divided by sqrt(1 + pi/8 * mean logit variance), computed in numpy from the
    exact covariance; near and far inputs (where logit variances differ most), moderate and very wide posteriors."""
    x, y = blobs
    x_new = torch.randn(400, x.shape[1], generator=generator) * torch.tensor([3.0, 10.0, 30.0, 100.0]).repeat(100)[:, None]
    logits = classifier(x_new).detach().numpy()
    frozen_class = logits.argmax(-1)
    for prior_precision in (0.5, 1e-3):
        la = LastLayerLaplace(classifier, prior_precision=prior_precision).fit(x, y)
        assert la.link_approx == "scaled"
        cov = _exact_logit_covariance(classifier, x, y, x_new, prior_precision).numpy()
        mean_var = np.trace(cov, axis1=1, axis2=2) / cov.shape[1]
        scaled = logits / np.sqrt(1 + np.pi / 8 * mean_var)[:, None]
        expected = np.exp(scaled - scaled.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        probs = la(x_new).predictive.mixture_probs().numpy()
        np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(probs.argmax(-1), frozen_class)


def test_mc_predictive_matches_sampling_last_layer_weights(classifier, blobs, generator):
    """The linearised predictive is exact for the last layer: compare with weights drawn from the posterior."""
    x, y = blobs
    num_samples = 4000
    la = LastLayerLaplace(classifier, prior_precision=0.5, link_approx="mc", num_samples=num_samples, seed=3).fit(x, y)
    x_new = torch.randn(10, x.shape[1], generator=generator) * 3
    pred = la(x_new).predictive
    assert pred.probs.shape == (num_samples, 10, 3)
    theta = _last_layer_theta(classifier)
    chol = torch.linalg.cholesky(la.posterior_covariance_)
    draws = theta.flatten() + torch.randn(num_samples, theta.numel(), generator=generator) @ chol.T
    weight_probs = torch.softmax(torch.func.vmap(lambda d: _logits_at(classifier, d.reshape(theta.shape), x_new))(draws), -1)
    diff = pred.probs.mean(0) - weight_probs.mean(0)
    se = torch.sqrt(pred.probs.var(0) / num_samples + weight_probs.var(0) / num_samples)
    z = stats.norm.ppf(1 - 0.001 / (2 * diff.numel()))  # two-sided, Bonferroni over the 30 entries
    assert bool((diff.abs() <= z * se + 1e-12).all()), f"max |diff|/se = {float((diff.abs() / se).max()):.2f} > z = {z:.2f}"
    # Same seed, same draws.
    assert torch.equal(la(x_new).predictive.probs, pred.probs)


@pytest.mark.parametrize("link_approx", ["probit", "mc"])
def test_tuned_prior_precision_is_the_grid_value_with_the_lowest_held_out_nll(classifier, blobs, generator, link_approx):
    x, y = blobs
    x_val = x[:40] + 0.5 * torch.randn(40, x.shape[1], generator=generator)
    y_val = y[:40]
    grid = (0.01, 0.3, 3.0, 100.0)
    tuned = LastLayerLaplace(classifier, link_approx=link_approx, num_samples=50).fit(x, y).tune_prior_precision(x_val, y_val, grid=grid)
    brute = {}
    for value in grid:
        la = LastLayerLaplace(classifier, prior_precision=value, link_approx=link_approx, num_samples=50).fit(x, y)
        brute[value] = float(-la(x_val).predictive.log_prob(y_val).mean())
    np.testing.assert_allclose([tuned.tuning_nll_[v] for v in grid], [brute[v] for v in grid], rtol=1e-9)
    assert float(tuned.prior_precision_) == min(brute, key=brute.get)
    refit = LastLayerLaplace(classifier, prior_precision=float(tuned.prior_precision_), link_approx=link_approx,
                             num_samples=50).fit(x, y)
    torch.testing.assert_close(tuned(x_val).predictive.probs, refit(x_val).predictive.probs, rtol=1e-9, atol=1e-12)


def test_output_must_be_the_last_linear_output(classifier, blobs):
    x, y = blobs
    with pytest.raises(ValueError, match="^model: expected its output to be the output of its last layer '0.4'"):
        LastLayerLaplace(nn.Sequential(classifier, nn.LogSoftmax(-1))).fit(x, y)
    with pytest.raises(ValueError, match="^model: expected logits of shape \\[N, C\\], got \\(60, 2, 3\\)"):
        LastLayerLaplace(nn.Linear(4, 3)).fit(x.reshape(60, 2, 4), y[:60])
