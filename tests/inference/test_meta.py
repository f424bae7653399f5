"""Meta-learners: exact local posteriors on linear-Gaussian episodes, MAML meta-gradients, ProtoNet, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from torch import nn

from uqkit.calibration.regression import regression_nll
from uqkit.data.episodes import DigitsFewShot, Episodes, SineLine
from uqkit.inference.meta import MAML, NIWMeta, ProtoNet
from uqkit.models import MLP, Categorical, Gaussian
from uqkit.models.niw import NormalInverseWishart

NOISE = 0.5


def _orthogonal_episodes(generator: torch.Generator, *, num: int = 3, k: int = 6, d: int = 3, scale: float = 2.0) -> Episodes:
    """Linear-Gaussian episodes whose support designs have ``X^T X = scale^2 I`` (diagonal curvature)."""
    eps = []
    for _ in range(num):
        q, _ = torch.linalg.qr(torch.randn(k, d, generator=generator))
        sx = scale * q
        w = torch.randn(d, generator=generator)
        qx = torch.randn(4, d, generator=generator)
        eps.append((sx, sx @ w + NOISE * torch.randn(k, generator=generator), qx, qx @ w))
    return Episodes.stack(eps, task="regression")


def _conjugate(q: NormalInverseWishart, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Gaussian posterior of w for y ~ N(x w, NOISE^2) under the prior N(m, (n V^{-1})^{-1})."""
    scale = q.scale.numpy() if q.scale.ndim == 2 else np.diag(q.scale.numpy())
    prior_prec = q.dof.item() * np.linalg.inv(scale)
    prec = x.T @ x / NOISE**2 + prior_prec
    cov = np.linalg.inv(prec)
    return cov @ (x.T @ y / NOISE**2 + prior_prec @ q.loc.numpy()), cov


@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("paper_form", [True, False])
def test_local_posterior_equals_conjugate_posterior(paper_form, covariance, generator):
    """Linear-Gaussian episodes make the quadratic approximation exact.

    Paper form (no gradient term): one SGD step of size sigma^2 K / scale^2 lands on the least-squares
    solution, the expansion point the paper assumes. With the gradient term, no steps are needed.
    """
    episodes = _orthogonal_episodes(generator)
    k, scale = episodes.num_support, 2.0
    net = nn.Linear(3, 1, bias=False)
    if paper_form:
        learner = NIWMeta.paper(net, Gaussian(NOISE), straight_through=False, covariance=covariance,
                                inner_steps=1, inner_lr=NOISE**2 * k / scale**2)
    else:
        learner = NIWMeta(net, Gaussian(NOISE), covariance=covariance, curvature="diag")
    a = torch.randn(3, 3, generator=generator)
    scale = torch.rand(3, generator=generator) + 0.5 if covariance == "diag" else a @ a.T + torch.eye(3)
    q = NormalInverseWishart.create(torch.randn(3, generator=generator), 1.5, scale, 3.5)
    mean, cov = learner.local_posterior(q, episodes)
    for i in range(len(episodes)):
        want_mean, want_cov = _conjugate(q, episodes.support_x[i].numpy(), episodes.support_y[i].numpy())
        got_cov = cov[i] if covariance == "full" else torch.diag(cov[i])
        np.testing.assert_allclose(mean[i].detach().numpy(), want_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_cov.detach().numpy(), want_cov, rtol=1e-9, atol=1e-14)


def test_full_curvature_local_posterior_is_bayesian_linear_regression(generator):
    """Full NIW with the full Gauss-Newton curvature: exact for any (non-orthogonal) linear-Gaussian design."""
    eps = []
    for _ in range(2):
        x, w = torch.randn(6, 3, generator=generator), torch.randn(3, generator=generator)
        eps.append((x, x @ w + NOISE * torch.randn(6, generator=generator), x[:2], x[:2] @ w))
    episodes = Episodes.stack(eps, task="regression")
    learner = NIWMeta(nn.Linear(3, 1, bias=False), Gaussian(NOISE), covariance="full", curvature="full",
                      inner_steps=2, linear_term=True, straight_through=False)
    a = torch.randn(3, 3, generator=generator)
    q = NormalInverseWishart.create(torch.randn(3, generator=generator), 1.5, a @ a.T + torch.eye(3), 3.5)
    mean, cov = learner.local_posterior(q, episodes)
    for i in range(2):
        want_mean, want_cov = _conjugate(q, episodes.support_x[i].numpy(), episodes.support_y[i].numpy())
        np.testing.assert_allclose(mean[i].numpy(), want_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(cov[i].numpy(), want_cov, rtol=1e-9, atol=1e-14)


def _linear_gaussian_episodes(generator: torch.Generator, d: int = 3) -> Episodes:
    eps = []
    for _ in range(2):
        x, w = torch.randn(6, d, generator=generator), torch.randn(d, generator=generator)
        eps.append((x, x @ w + NOISE * torch.randn(6, generator=generator), x[:2], x[:2] @ w))
    return Episodes.stack(eps, task="regression")


@pytest.mark.parametrize("inner_steps", [0, 3])
def test_factored_curvature_local_posterior_is_bayesian_linear_regression(inner_steps, generator):
    """Diagonal NIW with the factored Gauss-Newton curvature: the exact conjugate posterior, full covariance included."""
    episodes = _linear_gaussian_episodes(generator)
    learner = NIWMeta(nn.Linear(3, 1, bias=False), Gaussian(NOISE), curvature="factored", inner_steps=inner_steps,
                      linear_term=True, straight_through=False)
    q = NormalInverseWishart.create(torch.randn(3, generator=generator), 1.5, torch.rand(3, generator=generator) + 0.5, 3.5)
    mean, post = learner.local_posterior(q, episodes)
    dense_cov = post.apply_cov(torch.eye(3).unsqueeze(1))  # rows: cov @ e_j for each episode, [3, B, 3]
    for i in range(2):
        want_mean, want_cov = _conjugate(q, episodes.support_x[i].numpy(), episodes.support_y[i].numpy())
        np.testing.assert_allclose(mean[i].numpy(), want_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dense_cov[:, i].numpy(), want_cov, rtol=1e-9, atol=1e-14)


def test_support_gradients_reach_the_shared_body_through_the_closed_form(generator):
    """With ``support_gradients`` the meta-gradient of the local posterior mean with respect to the body equals
    that of a direct ridge-regression (Bayesian linear regression) solve on the body's features."""
    episodes = _linear_gaussian_episodes(generator, d=2)
    net = MLP(2, [4], 1)
    learner = NIWMeta(net, Gaussian(NOISE), curvature="factored", inner_steps=0, linear_term=True,
                      straight_through=False, support_gradients=True, adapted=["layers.2."])
    q = learner.q()
    mean, _ = learner.local_posterior(q, episodes)
    body = [p for n, p in net.named_parameters() if n.startswith("layers.0.")]
    got = torch.autograd.grad(mean.square().sum(), body)
    prec = q.expected_precision().detach()
    want_means = []
    for i in range(2):
        feats = torch.cat([net.layers[1](net.layers[0](episodes.support_x[i])), torch.ones(6, 1)], 1)  # [K, 5]
        system = torch.diag(prec) + feats.T @ feats / NOISE**2
        want_means.append(torch.linalg.solve(system, feats.T @ episodes.support_y[i] / NOISE**2 + prec * q.loc.detach()))
    want_mean = torch.stack(want_means)
    torch.testing.assert_close(mean.detach(), want_mean.detach())
    want = torch.autograd.grad(want_mean.square().sum(), body)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
        assert float(a.abs().max()) > 0


def test_gauss_newton_diagonal_matches_explicit_fisher(generator):
    """Categorical likelihood: diag(sum_n J_n^T (diag p_n - p_n p_n^T) J_n) from explicit Jacobians."""
    torch.manual_seed(0)
    learner = NIWMeta(MLP(3, [4], 3), Categorical())
    theta = learner.flat.initial() + 0.3 * torch.randn(learner.flat.num_params, generator=generator)
    x = torch.randn(5, 3, generator=generator)
    y = torch.randint(0, 3, (5,), generator=generator)
    jac = torch.autograd.functional.jacobian(lambda t: learner.flat(t, x), theta)  # [N, C, P]
    probs = torch.softmax(learner.flat(theta, x), -1)
    want = sum(jac[n].T @ (torch.diag(probs[n]) - torch.outer(probs[n], probs[n])) @ jac[n] for n in range(5))
    torch.testing.assert_close(learner.gauss_newton(theta, x, y), want.diagonal())
    torch.testing.assert_close(learner.gauss_newton(theta, x, y, diagonal=False), want)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_matches_closed_form(first_order, generator):
    """Linear model, one inner step: theta_1 = (I - a X^T X / (s^2 K)) theta_0 + a X^T y / (s^2 K)."""
    episodes = _orthogonal_episodes(generator, num=1)
    alpha, k = 0.05, episodes.num_support
    learner = MAML(nn.Linear(3, 1, bias=False), Gaussian(NOISE), inner_lr=alpha, first_order=first_order)
    learner.loss(episodes, generator=generator, num_episodes_total=1).backward()
    x, y = episodes.support_x[0], episodes.support_y[0]
    xq, yq = episodes.query_x[0], episodes.query_y[0]
    theta0 = learner.theta0.detach()
    jac = torch.eye(3) - alpha * x.T @ x / (NOISE**2 * k)
    theta1 = jac @ theta0 + alpha * x.T @ y / (NOISE**2 * k)
    outer = xq.T @ (xq @ theta1 - yq) / NOISE**2
    torch.testing.assert_close(learner.theta0.grad, outer if first_order else jac.T @ outer)


def test_protonet_classification_logits_are_negative_squared_distances(generator):
    sx = torch.randn(1, 6, 4, generator=generator)
    sy = torch.tensor([[0, 1, 2, 0, 1, 2]])
    qx = torch.randn(1, 5, 4, generator=generator)
    episodes = Episodes(sx, sy, qx, torch.tensor([[0, 1, 2, 0, 1]]), "classification", 3)
    learner = ProtoNet(nn.Linear(4, 2), Categorical())
    pred = learner.predict(episodes, generator=generator)
    emb = learner.embedding
    with torch.no_grad():
        protos = torch.stack([emb(sx[0, sy[0] == c]).mean(0) for c in range(3)])
        logits = -((emb(qx[0])[:, None, :] - protos[None]) ** 2).sum(-1)
    torch.testing.assert_close(pred.probs[0], torch.softmax(logits, -1))


def test_protonet_regression_is_kernel_weighted_prototype_regressor(generator):
    episodes = SineLine().sample(2, 5, 3, generator=generator)
    learner = ProtoNet(nn.Linear(1, 2), Gaussian(0.2))
    pred = learner.predict(episodes, generator=generator)
    with torch.no_grad():
        for b in range(2):
            es, eq = learner.embedding(episodes.support_x[b]).numpy(), learner.embedding(episodes.query_x[b]).numpy()
            ys = episodes.support_y[b].numpy()
            for j in range(3):
                logits = -((eq[j] - es) ** 2).sum(-1)
                w = np.exp(logits - logits.max())
                w /= w.sum()
                mean = (w * ys).sum()
                var = (w * (ys - mean) ** 2).sum() + 0.2**2
                assert pred.mean()[3 * b + j].item() == pytest.approx(mean, rel=1e-10)
                assert pred.variance()[3 * b + j].item() == pytest.approx(var, rel=1e-10)


def test_predict_shapes_for_every_learner(generator):
    regression = SineLine().sample(3, 5, 4, generator=generator)
    classification = Episodes(regression.support_x, regression.support_y.gt(0).long(), regression.query_x,
                              regression.query_y.gt(0).long(), "classification", 2)
    for learner, draws in ((NIWMeta.paper(MLP(1, [8], 1), Gaussian(0.3)), 7), (NIWMeta(MLP(1, [8], 1), Gaussian(0.3)), 1),
                           (NIWMeta(MLP(1, [8], 2), Categorical()), 7), (MAML(MLP(1, [8], 1), Gaussian(0.3)), 1),
                           (ProtoNet(MLP(1, [8], 4), Gaussian(0.3)), 1)):
        pred = learner.predict(regression if learner.task == "regression" else classification, num_samples=7, generator=generator)
        assert pred.task == learner.task and pred.num_points == 12 and pred.num_draws == draws


def test_sgld_inner_steps_need_a_generator_and_add_noise(generator):
    episodes = SineLine().sample(2, 5, 4, generator=generator)
    learner = NIWMeta(MLP(1, [8], 1), Gaussian(0.3), inner_noise=True, inner_steps=3)
    with pytest.raises(ValueError, match="generator: required"):
        learner.quadratic_approximation(learner.q().loc, episodes)
    a = learner.quadratic_approximation(learner.q().loc, episodes, generator=torch.Generator().manual_seed(1))[0]
    b = learner.quadratic_approximation(learner.q().loc, episodes, generator=torch.Generator().manual_seed(2))[0]
    assert not torch.allclose(a, b)


def test_short_meta_training_improves_query_nll():
    """100 meta-iterations on SineLine lower the query NLL of new episodes below the untrained prior's."""
    torch.manual_seed(0)
    tasks = SineLine()
    test = tasks.sample(100, 5, 10, generator=torch.Generator().manual_seed(1))
    # The paper's form: its untrained local posterior barely adapts, so meta-training has much to gain.
    learner = NIWMeta.paper(MLP(1, [16], 1), Gaussian(0.3, learn_noise=True), inner_steps=5, init_precision=1.0)
    gen = torch.Generator().manual_seed(0)
    before = regression_nll(learner.predict(test, generator=gen), test.flat_query_y())
    learner.fit(lambda b, g: tasks.sample(b, 5, 10, generator=g), num_iterations=100, meta_batch=4, lr=3e-3, generator=gen)
    after = regression_nll(learner.predict(test, generator=gen), test.flat_query_y())
    assert math.isfinite(after) and after < before - 1.0, (before, after)


def test_factored_niw_learns_few_shot_digits_where_features_would_collapse():
    """100 meta-iterations of 5-way 1-shot digits (validation episodes of the training classes, separate
    generator): the default form (factored curvature, support gradients) is far above chance (0.2)."""
    torch.manual_seed(0)
    tasks = DigitsFewShot("train")
    val = tasks.sample(60, 1, 10, generator=torch.Generator().manual_seed(777))
    net = MLP(64, [64], 5, "relu")
    learner = NIWMeta(net, Categorical(), init_precision=0.1, adapted=["layers.2."])  # the default (factored) form
    gen = torch.Generator().manual_seed(0)
    learner.fit(lambda b, g: tasks.sample(b, 1, 10, generator=g), num_iterations=100, meta_batch=8, lr=3e-3, generator=gen)
    probs = learner.predict(val, generator=gen).mixture_probs()
    accuracy = float((probs.argmax(-1) == val.flat_query_y()).double().mean())
    # 600 query points: chance 0.2 has a binomial standard error of 0.016.
    assert accuracy > 0.5, accuracy


def _last_layer_learner(**kwargs: object) -> NIWMeta:
    torch.manual_seed(0)
    return NIWMeta(MLP(2, [4], 1), Gaussian(NOISE), adapted=["layers.2."], **kwargs)


def _exact_last_layer_predictive(learner: NIWMeta, episodes: Episodes) -> tuple[np.ndarray, np.ndarray]:
    """Bayesian linear regression on the body's features, in numpy: query predictive means and variances ``[B, Q]``."""
    q = learner.q()
    prior_prec = q.expected_precision().detach().numpy()
    body = learner.flat.net.layers[:2]
    means, variances = [], []
    with torch.no_grad():
        for i in range(len(episodes)):
            fs, fq = (np.c_[body(x).numpy(), np.ones(len(x))] for x in (episodes.support_x[i], episodes.query_x[i]))
            cov = np.linalg.inv(np.diag(prior_prec) + fs.T @ fs / NOISE**2)
            mean = cov @ (fs.T @ episodes.support_y[i].numpy() / NOISE**2 + prior_prec * q.loc.detach().numpy())
            means.append(fq @ mean)
            variances.append(np.einsum("qp,pr,qr->q", fq, cov, fq) + NOISE**2)
    return np.array(means), np.array(variances)


def test_predictive_objective_is_the_exact_last_layer_predictive(generator):
    """Gaussian likelihood, adapted last layer: `predict` and the training loss use the exact posterior predictive
    ``N(phi^T m_i, phi^T V_i phi + s^2)``, checked against Bayesian linear regression in numpy and scipy's density."""
    episodes = _linear_gaussian_episodes(generator, d=2)
    learner = _last_layer_learner(init_precision=0.5)
    want_mean, want_var = _exact_last_layer_predictive(learner, episodes)
    pred = learner.predict(episodes, generator=generator)
    np.testing.assert_allclose(pred.mean().numpy(), want_mean.reshape(-1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pred.variance().numpy(), want_var.reshape(-1), rtol=1e-9)
    total = 50
    loss = learner.loss(episodes, generator=generator, num_episodes_total=total)
    query_nll = -scipy.stats.norm.logpdf(episodes.query_y.numpy(), want_mean, np.sqrt(want_var)).sum(-1).mean()
    want = query_nll + float(learner.q().kl(learner.prior).detach()) / total  # kl_weight = 0 by default
    assert loss.detach().item() == pytest.approx(want, rel=1e-10)
    weighted = _last_layer_learner(init_precision=0.5, kl_weight=0.5)
    with torch.no_grad():
        local_kl = weighted.q().expected_gaussian_kl(*weighted.local_posterior(weighted.q(), episodes)).mean()
    assert weighted.loss(episodes, generator=generator, num_episodes_total=total).detach().item() == pytest.approx(
        want + 0.5 * local_kl.item(), rel=1e-10)


def test_predictive_objective_by_draws_is_log_mean_predictive_probability(generator):
    """Categorical likelihood: the query term is ``-sum_q log (1/S sum_s p(y_q | theta_s))`` over the same draws."""
    torch.manual_seed(0)
    learner = NIWMeta(MLP(3, [4], 3), Categorical(), train_samples=5, adapted=["layers.2."])
    x = torch.randn(2, 6, 3, generator=generator)
    y = torch.randint(0, 3, (2, 6), generator=generator)
    episodes = Episodes(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:], "classification", 3)
    loss = learner.loss(episodes, generator=torch.Generator().manual_seed(4), num_episodes_total=10)
    with torch.no_grad():
        mean, post = learner.local_posterior(learner.q(), episodes)
        thetas = learner._draws(mean, post, 5, torch.Generator().manual_seed(4))  # [S, B, P], the loss's draws
        logits = np.stack([[learner.flat(thetas[s, b], episodes.query_x[b]).numpy() for b in range(2)] for s in range(5)])
    log_p = scipy.special.log_softmax(logits, -1)  # [S, B, Q, C]
    picked = np.take_along_axis(log_p, episodes.query_y.numpy()[None, :, :, None], -1)[..., 0]
    query_nll = -(scipy.special.logsumexp(picked, axis=0) - np.log(5)).sum(-1).mean()
    assert loss.detach().item() == pytest.approx(query_nll + float(learner.q().kl(learner.prior).detach()) / 10, rel=1e-10)


def test_paper_form_settings_and_overrides():
    learner = NIWMeta.paper(MLP(1, [4], 1), Gaussian(), inner_steps=5)
    assert (learner.curvature, learner.query_objective, learner.kl_weight, learner.linear_term) == ("diag", "elbo", 1.0, False)
    assert learner.straight_through and not learner.support_gradients and learner.inner_steps == 5
    default = NIWMeta(MLP(1, [4], 1), Gaussian())
    settings = (default.curvature, default.query_objective, default.kl_weight, default.inner_steps)
    assert settings == ("factored", "predictive", 0.0, 0)
    assert NIWMeta(MLP(1, [4], 1), Gaussian(), covariance="full").curvature == "full"


def test_fit_with_validation_keeps_the_best_checkpoint(generator):
    """Early stopping: the learner ends at the lowest validation NLL of the recorded curve."""
    torch.manual_seed(0)
    tasks = SineLine()
    val = tasks.sample(20, 5, 5, generator=torch.Generator().manual_seed(5))
    learner = NIWMeta(MLP(1, [8], 1), Gaussian(0.3, learn_noise=True), adapted=["layers.2."])
    # A large step size makes the validation curve uneven, so the best checkpoint is usually not the last.
    learner.fit(lambda b, g: tasks.sample(b, 5, 5, generator=g), num_iterations=25, meta_batch=4, lr=0.3,
                generator=generator, validation=val, validate_every=10)
    steps, nlls = zip(*learner.validation_curve)
    assert steps == (10, 20, 25)
    assert learner.validation_nll(val) == pytest.approx(min(nlls), rel=1e-12)
    with pytest.raises(ValueError, match="^validate_every"):
        learner.fit(lambda b, g: tasks.sample(b, 5, 5, generator=g), num_iterations=1, generator=generator, validate_every=0)


# ------------------------------------------------------------------------------------ bad input
def test_episode_errors(generator):
    x, y = torch.randn(5, 1, generator=generator), torch.randn(5, generator=generator)
    with pytest.raises(ValueError, match="support_x .*non-empty"):
        Episodes.stack([(torch.zeros(0, 1), torch.zeros(0), x, y)], task="regression")
    with pytest.raises(ValueError, match="episodes: episode 1 support_x has shape"):
        Episodes.stack([(x, y, x, y), (x[:3], y[:3], x, y)], task="regression")
    bad = x.clone()
    bad[2] = float("nan")
    with pytest.raises(ValueError, match="query_x .*finite"):
        Episodes.stack([(x, y, bad, y)], task="regression")
    with pytest.raises(ValueError, match="support_y .*expected 5 targets"):
        Episodes.stack([(x, y[:4], x, y)], task="regression")
    with pytest.raises(ValueError, match="episodes: expected at least one episode, support point"):
        Episodes(torch.zeros(2, 0, 1), torch.zeros(2, 0), torch.zeros(2, 3, 1), torch.zeros(2, 3), "regression")
    with pytest.raises(ValueError, match="support_y: expected finite"):
        Episodes(torch.zeros(1, 2, 1), torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 3, 1), torch.zeros(1, 3), "regression")


def test_learner_errors(generator):
    regression = SineLine().sample(2, 3, 3, generator=generator)
    learner = NIWMeta(MLP(1, [4], 3), Categorical())
    with pytest.raises(ValueError, match="episodes: this learner's likelihood is for classification"):
        learner.predict(regression, generator=generator)
    with pytest.raises(TypeError, match="episodes: expected uqkit.data.Episodes"):
        learner.predict((1, 2, 3, 4), generator=generator)
    with pytest.raises(ValueError, match="episodes: inputs of width 1 do not fit net"):
        NIWMeta(MLP(2, [4], 1), Gaussian()).predict(regression, generator=generator)
    with pytest.raises(ValueError, match="inner_steps"):
        NIWMeta(MLP(1, [4], 1), Gaussian(), inner_steps=-1)
    with pytest.raises(ValueError, match="curvature_cap"):
        NIWMeta(MLP(1, [4], 1), Gaussian(), curvature_cap=0.0)
    with pytest.raises(ValueError, match="^curvature: expected 'diag', 'full' with covariance='full' or 'factored'"):
        NIWMeta(MLP(1, [4], 1), Gaussian(), covariance="full", curvature="factored")
    with pytest.raises(ValueError, match="^query_objective"):
        NIWMeta(MLP(1, [4], 1), Gaussian(), query_objective="marginal")
    with pytest.raises(ValueError, match="^init_dof"):
        NIWMeta(MLP(1, [4], 1), Gaussian(), init_dof=0.0)
    with pytest.raises(ValueError, match="prior: expected a diag NIW over"):
        NIWMeta(MLP(1, [4], 1), Gaussian(), prior=NormalInverseWishart.create([0.0], 1.0, [1.0], 1.0))
    labels = regression.support_y.gt(0).long(), regression.query_y.gt(0).long()
    classification = Episodes(regression.support_x, labels[0], regression.query_x, labels[1], "classification", 2)
    with pytest.raises(ValueError, match="net: output shape"):
        MAML(MLP(1, [4], 1), Categorical()).check_episodes(classification)


def test_full_covariance_niw_trains_and_predicts(generator):
    episodes = SineLine().sample(4, 5, 3, generator=generator)
    learner = NIWMeta(MLP(1, [3], 1), Gaussian(0.3, learn_noise=True), covariance="full")
    loss = learner.loss(episodes, generator=generator, num_episodes_total=100)
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in learner.q.parameters())
    pred = learner.predict(episodes, num_samples=5, generator=generator)  # closed-form Gaussian predictive
    assert pred.num_draws == 1 and bool((pred.variance() > learner.noise_std().detach() ** 2).all())
