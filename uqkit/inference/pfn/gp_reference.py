"""Reference GP predictives to measure a PFN against (RBF kernel, Gaussian noise).

* `exact_gp_predictive`: the exact posterior predictive with known hyperparameters (gpytorch).
* `type2_ml_predictive`: hyperparameters by maximising the marginal likelihood (gpytorch, L-BFGS).
* `full_bayes_predictive`: NUTS over the log hyperparameters under a `GPHyperSimulator`'s log-normal
  hyperpriors (`uqkit.sample`), then the GP predictive averaged over the draws.
* `importance_predictive`: the same full-Bayes predictive by importance sampling with the hyperprior
  as proposal (weights = GP marginal likelihood), an independent, MCMC-free reference whose quality
  `kish_ess` reports; reliable at small contexts, where the hyperparameter posterior stays broad.

All work in float64 and return a `Predictive` whose ``log_prob(y_test)`` is ``[m]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from uqkit._gpytorch import import_gpytorch
from uqkit.calibration.predictive import Predictive
from uqkit.models.pfn_priors import GPHyperSimulator, rbf_kernel


def _exact_gp(x: Tensor, y: Tensor, kernel, noise_floor: float):
    gpytorch = import_gpytorch()

    class ExactGP(gpytorch.models.ExactGP):
        def __init__(self) -> None:
            likelihood = gpytorch.likelihoods.GaussianLikelihood(
                noise_constraint=gpytorch.constraints.GreaterThan(noise_floor)).double()
            super().__init__(x, y, likelihood)
            self.kernel = kernel.double()

        def forward(self, z: Tensor):
            return gpytorch.distributions.MultivariateNormal(torch.zeros(z.shape[:-1], dtype=z.dtype), self.kernel(z))

    return ExactGP()


def _gp_predict(model, x_test: Tensor) -> Predictive:
    gpytorch = import_gpytorch()
    model.eval()
    with torch.no_grad(), gpytorch.settings.fast_computations(False, False, False), \
            gpytorch.settings.fast_pred_var(False):
        out = model.likelihood(model(x_test))
        return Predictive.gaussian(out.mean, out.variance)


def exact_gp_predictive(x_train: Tensor, y_train: Tensor, x_test: Tensor, *, lengthscale: float,
                        outputscale: float, noise: float) -> Predictive:
    """Exact GP posterior predictive at ``x_test [m, d]`` given ``(x_train [n, d], y_train [n])`` (gpytorch)."""
    model = _exact_gp(x_train.double(), y_train.double(), rbf_kernel(lengthscale, outputscale), noise_floor=1e-9)
    model.likelihood.noise = noise
    return _gp_predict(model, x_test.double())


def type2_ml_hyper(x_train: Tensor, y_train: Tensor, *, noise_floor: float = 1e-4, iters: int = 50) -> Tensor:
    """``[3]`` log hyperparameters maximising the marginal likelihood (gpytorch, L-BFGS from lengthscale 0.5,
    outputscale 1, noise 0.1), in `gp_log_marginal`'s layout."""
    gpytorch = import_gpytorch()
    x, y = x_train.double(), y_train.double()
    model = _exact_gp(x, y, rbf_kernel(0.5, 1.0), noise_floor=noise_floor)
    model.likelihood.noise = 0.1
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        return loss

    with gpytorch.settings.fast_computations(False, False, False):
        opt.step(closure)
    with torch.no_grad():
        extra = (model.likelihood.noise - noise_floor).clamp_min(1e-12)
        return torch.stack([model.kernel.base_kernel.lengthscale.log().reshape(()),
                            model.kernel.outputscale.log().reshape(()), extra.log().reshape(())])


def type2_ml_predictive(x_train: Tensor, y_train: Tensor, x_test: Tensor, *, noise_floor: float = 1e-4,
                        iters: int = 50) -> Predictive:
    """GP predictive at ``x_test [m, d]`` with the `type2_ml_hyper` hyperparameters."""
    theta = type2_ml_hyper(x_train, y_train, noise_floor=noise_floor, iters=iters)
    return gp_predictive_per_draw(theta.unsqueeze(0), x_train.double(), y_train.double(), x_test.double(), noise_floor)


def gp_log_marginal(log_hyper: Tensor, x: Tensor, y: Tensor, noise_floor: float) -> Tensor:
    """``[C]`` log marginal likelihood ``log N(y | 0, K + noise I)`` for ``C`` settings of the log hyperparameters
    (``-inf`` where the covariance is numerically singular).

    Args:
        log_hyper: ``[C, 3]`` (log lengthscale, log outputscale, log extra noise); noise = floor + exp(...).
        x: ``[n, d]``; y: ``[n]``.
    """
    cov, _ = _covariances(log_hyper, x, x, noise_floor)
    _, info = torch.linalg.cholesky_ex(cov.detach())
    failed = info > 0  # numerically singular (extreme hyperparameters): log density -inf, a NUTS divergence
    chol = torch.linalg.cholesky(torch.where(failed.reshape(-1, 1, 1), torch.eye(x.shape[0], dtype=cov.dtype), cov))
    alpha = torch.cholesky_solve(y.reshape(1, -1, 1).expand(cov.shape[0], -1, 1), chol)
    quad = (y.reshape(1, -1) * alpha[..., 0]).sum(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    value = -0.5 * (quad + logdet + y.numel() * math.log(2 * math.pi))
    return torch.where(failed, torch.full_like(value, -math.inf), value)


def gp_predictive_per_draw(log_hyper: Tensor, x: Tensor, y: Tensor, x_test: Tensor, noise_floor: float) -> Predictive:
    """Mixture over ``S`` hyperparameter draws ``log_hyper [S, 3]`` of the exact GP predictives at ``x_test``."""
    cov, noise = _covariances(log_hyper, x, x, noise_floor)
    ell, scale = log_hyper[:, 0].exp().reshape(-1, 1, 1), log_hyper[:, 1].exp().reshape(-1, 1, 1)
    cross = scale * torch.exp(-0.5 * torch.cdist(x_test, x).square() / ell.square())  # [S, m, n]
    chol = torch.linalg.cholesky(cov)
    mean = (cross @ torch.cholesky_solve(y.reshape(1, -1, 1).expand(cov.shape[0], -1, 1), chol))[..., 0]
    v = torch.linalg.solve_triangular(chol, cross.transpose(-1, -2), upper=False)
    var = scale.reshape(-1, 1) - v.square().sum(-2) + noise.reshape(-1, 1)
    return Predictive.gaussian(mean, var.clamp_min(1e-12))


def _covariances(log_hyper: Tensor, x: Tensor, z: Tensor, noise_floor: float) -> tuple[Tensor, Tensor]:
    ell, scale = log_hyper[:, 0].exp().reshape(-1, 1, 1), log_hyper[:, 1].exp().reshape(-1, 1, 1)
    noise = noise_floor + log_hyper[:, 2].exp()
    cov = scale * torch.exp(-0.5 * torch.cdist(x, z).square().unsqueeze(0) / ell.square())
    return cov + noise.reshape(-1, 1, 1) * torch.eye(x.shape[0], dtype=x.dtype), noise


def full_bayes_predictive(x_train: Tensor, y_train: Tensor, x_test: Tensor, prior: GPHyperSimulator, *,
                          num_warmup: int = 300, num_samples: int = 300, num_chains: int = 4, seed: int = 0,
                          max_draws: int = 400) -> Predictive:
    """NUTS over the log hyperparameters under ``prior``'s hyperpriors, then the GP predictive mixture.

    Args:
        x_train: ``[n, d]``; y_train: ``[n]``; x_test: ``[m, d]``.
        prior: the `GPHyperSimulator` whose log-normal hyperpriors (and noise floor) define the model.
        num_warmup, num_samples, num_chains, seed: passed to `uqkit.sample` (``method="nuts"``).
        max_draws: the predictive mixes at most this many (evenly thinned) draws.
    """
    from uqkit.inference.sample import sample

    x, y, xt = x_train.double(), y_train.double(), x_test.double()
    mu, sd = prior.log_hyperprior()

    def log_density(theta: Tensor) -> Tensor:
        log_prior = torch.distributions.Normal(mu, sd).log_prob(theta).sum(-1)
        return log_prior + gp_log_marginal(theta, x, y, prior.noise_floor)

    post = sample(log_density, mu, method="nuts", num_warmup=num_warmup, num_samples=num_samples,
                  num_chains=num_chains, seed=seed, progress=False)
    draws = post.draws.reshape(-1, 3)
    draws = draws[torch.linspace(0, draws.shape[0] - 1, min(max_draws, draws.shape[0])).long()]
    return gp_predictive_per_draw(draws, x, y, xt, prior.noise_floor)


def importance_predictive(x_train: Tensor, y_train: Tensor, x_test: Tensor, prior: GPHyperSimulator, *,
                          num_draws: int = 20_000, seed: int = 0, chunk: int = 128) -> Predictive:
    """Full-Bayes GP predictive by self-normalised importance sampling from the hyperprior.

    Draws ``num_draws`` log hyperparameters from ``prior``'s log-normal hyperpriors and weights each by
    its GP marginal likelihood ``p(y_train | theta)``; the result is the weighted mixture of the exact
    GP predictives (``log_weights`` set), which converges to the posterior predictive as the draws
    grow. Its `kish_ess` says how many draws effectively carry the weight.

    Args:
        x_train: ``[n, d]``; y_train: ``[n]``; x_test: ``[m, d]``.
        prior: the `GPHyperSimulator` whose hyperpriors (and noise floor) define the model.
        num_draws: proposal draws; seed: seed of their `torch.Generator`.
        chunk: draws factorised at once (bounds the ``[chunk, m, n]`` working memory; 128 was 3-4x faster
            than 4096 at 100 context points on a CPU, with identical results).
    """
    if num_draws < 1 or chunk < 1:
        raise ValueError(f"num_draws, chunk: expected positive integers, got {num_draws}, {chunk}")
    x, y, xt = x_train.double(), y_train.double(), x_test.double()
    mu, sd = prior.log_hyperprior()
    g = torch.Generator().manual_seed(seed)
    theta = mu + sd * torch.randn(num_draws, 3, generator=g, dtype=torch.float64)
    means, variances, log_w = [], [], []
    for part in theta.split(chunk):
        no_data = torch.zeros(part.shape[0], dtype=torch.float64)  # an empty context leaves the prior weights
        log_w.append(gp_log_marginal(part, x, y, prior.noise_floor) if x.shape[0] else no_data)
        ok = torch.isfinite(log_w[-1])  # numerically singular draws get weight 0 (and a dummy component)
        pred = gp_predictive_per_draw(torch.where(ok.unsqueeze(-1), part, mu), x, y, xt, prior.noise_floor)
        means.append(pred.dist.mean)
        variances.append(pred.dist.variance)
    normal = torch.distributions.Normal(torch.cat(means), torch.cat(variances).sqrt())
    return Predictive.from_distribution(normal, log_weights=torch.cat(log_w))


def kish_ess(pred: Predictive) -> float:
    """Kish's effective sample size ``1 / sum(w^2)`` of a mixture's normalised weights ``w``."""
    w = pred.weights()
    return float(1.0 / w.square().sum())
