"""Sparse variational classification with a scale-mixture (NN)GP prior (METHODS.md section 5).

One latent function per class, ``f_c = sqrt(s) * g_c`` with ``g_c ~ GP(0, K)`` and a scale
``s ~ InvGamma(a, b)`` shared by all classes (Lee, Yun, Yang & Lee, ICLR 2022). Marginally each
``f_c`` is a Student-t process; ``scale="fixed"`` keeps ``s = 1``, the plain NNGP/GP classifier.

Variational family (gpytorch's SVGP machinery, Hensman, Matthews & Ghahramani, AISTATS 2015): learned
inducing inputs ``Z [C, I, d]``, a whitened mean-field Gaussian ``q(v_c)`` over each class's inducing
values (unit-scale ``u_c = L_Z v_c``, scaled by ``sqrt(s)``), and ``q(s) = InvGamma(a', b')`` with
learned ``a', b'``. Because ``u | s = sqrt(s) L_Z v``, the inducing KL does not depend on ``s``:

    ELBO = E_{q(s) q(g)} [sum_i log softmax(sqrt(s) g(x_i))_{y_i}] - sum_c KL(q(v_c) || N(0, I))
           - KL(InvGamma(a', b') || InvGamma(a, b))

with ``KL = a log(b'/b) - lgamma(a') + lgamma(a) + (a' - a) digamma(a') + (b - b') a'/b'``. The
expectation is estimated with reparameterised draws of ``s`` and of the per-point marginals of ``g``.
At test time, ``f`` is drawn from its (Student-t) marginals and the draws become the ``S`` members of
a classification `Predictive`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from uqkit._checks import check_float, check_labels, check_positive, check_same_length
from uqkit._gpytorch import import_gpytorch
from uqkit.calibration.predictive import Predictive

gpytorch = import_gpytorch()

SCALES = ("inverse-gamma", "fixed")


def inverse_gamma_kl(a_q: Tensor, b_q: Tensor, a_p: Tensor | float, b_p: Tensor | float) -> Tensor:
    """``KL(InvGamma(a_q, b_q) || InvGamma(a_p, b_p))`` in nats (shape/rate parameters)."""
    a_p, b_p = torch.as_tensor(a_p, dtype=a_q.dtype), torch.as_tensor(b_p, dtype=a_q.dtype)
    return (a_p * torch.log(b_q / b_p) - torch.lgamma(a_q) + torch.lgamma(a_p)
            + (a_q - a_p) * torch.digamma(a_q) + (b_p - b_q) * a_q / b_q)


class _LatentFunctions(gpytorch.models.ApproximateGP):
    """``C`` independent SVGPs (batch shape ``[C]``) sharing one kernel, with whitened mean-field ``q(v)``."""

    def __init__(self, kernel: gpytorch.kernels.Kernel, inducing: Tensor) -> None:
        num_classes, num_inducing = inducing.shape[:2]
        dist = gpytorch.variational.MeanFieldVariationalDistribution(num_inducing, batch_shape=torch.Size([num_classes]))
        strategy = gpytorch.variational.VariationalStrategy(self, inducing, dist, learn_inducing_locations=True)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=torch.Size([num_classes]))
        self.covar_module = kernel

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class ScaleMixtureClassifier(torch.nn.Module):
    """Multi-class sparse variational GP classifier with an inverse-gamma (or fixed) output scale.

    Args:
        kernel: a gpytorch kernel over the inputs (e.g. `NNGPKernel`); its hyperparameters are learned.
        num_classes: C >= 2.
        num_inducing: inducing points per class (initialised at random training inputs).
        scale: "inverse-gamma" (Student-t process prior) or "fixed" (s = 1, the Gaussian baseline).
        a: prior inverse-gamma shape (> 0).
        b: prior inverse-gamma rate (> 0).
        num_mc: Monte Carlo draws per ELBO evaluation.
        seed: seed of every random draw (inducing initialisation, minibatches, Monte Carlo).
    """

    def __init__(self, kernel: gpytorch.kernels.Kernel, num_classes: int, *, num_inducing: int = 32,
                 scale: str = "inverse-gamma", a: float = 2.0, b: float = 2.0, num_mc: int = 8, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(kernel, gpytorch.kernels.Kernel):
            raise TypeError(f"kernel: expected a gpytorch kernel, got {type(kernel).__name__}")
        for name, value, low in (("num_classes", num_classes, 2), ("num_inducing", num_inducing, 1), ("num_mc", num_mc, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if scale not in SCALES:
            raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
        self.kernel = kernel
        self.num_classes, self.num_inducing, self.scale, self.num_mc = num_classes, num_inducing, scale, num_mc
        self.prior_a, self.prior_b = check_positive(a, "a"), check_positive(b, "b")
        # q(s) starts at the prior.
        self.log_a_q = torch.nn.Parameter(torch.tensor(math.log(self.prior_a)))
        self.log_b_q = torch.nn.Parameter(torch.tensor(math.log(self.prior_b)))
        self.generator = torch.Generator().manual_seed(seed)
        self.latent: _LatentFunctions | None = None

    @property
    def a_q(self) -> Tensor:
        """Variational inverse-gamma shape a'."""
        return self.log_a_q.exp()

    @property
    def b_q(self) -> Tensor:
        """Variational inverse-gamma rate b'."""
        return self.log_b_q.exp()

    # ------------------------------------------------------------------------------ public API
    def fit(self, x: object, y: object, *, num_steps: int = 500, lr: float = 0.01, batch_size: int | None = None,
            progress: bool = False) -> ScaleMixtureClassifier:
        """Maximise the ELBO with Adam over ``q(v)``, ``Z``, ``q(s)`` and the kernel hyperparameters.

        Args:
            x: ``[N, d]`` training inputs.
            y: ``[N]`` integer labels in ``[0, C)``.
            num_steps: Adam steps.
            lr: Adam learning rate.
            batch_size: minibatch size (None: full batch).
            progress: show a tqdm bar.

        Returns:
            self, fitted.
        """
        x = check_float(x, "x", ndim=2)
        labels = check_labels(y, "y", num_classes=self.num_classes)
        check_same_length("x", x, "y", labels)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
        check_positive(lr, "lr")
        n = x.shape[0]
        batch = n if batch_size is None else int(check_positive(batch_size, "batch_size"))
        if self.latent is None:
            pick = torch.randint(n, (self.num_classes, self.num_inducing), generator=self.generator)
            self.latent = _LatentFunctions(self.kernel, x[pick].clone()).to(x.dtype)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        bar = tqdm(range(num_steps), desc="ScaleMixtureClassifier", disable=not progress)
        for _ in bar:
            idx = torch.randperm(n, generator=self.generator)[:batch] if batch < n else slice(None)
            opt.zero_grad()
            loss = -self._elbo(x[idx], labels[idx], n) / n
            loss.backward()
            opt.step()
            bar.set_postfix(neg_elbo=f"{float(loss.detach()):.4f}")
        return self

    def predict(self, x: object, *, num_samples: int = 256) -> Predictive:
        """Classification `Predictive` with ``num_samples`` draws of the logits ``[S, N, C]`` at ``x [N, d]``."""
        if self.latent is None:
            raise ValueError("ScaleMixtureClassifier: call fit(x, y) before predict")
        x = check_float(x, "x", ndim=2)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected an integer >= 1, got {num_samples!r}")
        self.latent.eval()
        with torch.no_grad():
            logits = self._sample_logits(x.to(self.log_a_q.dtype), num_samples)
        self.latent.train()
        return Predictive.from_logits(logits)

    # ------------------------------------------------------------------------------- internals
    def _elbo(self, x: Tensor, labels: Tensor, num_data: int) -> Tensor:
        logits = self._sample_logits(x, self.num_mc)  # [S, B, C]
        log_lik = torch.log_softmax(logits, -1).gather(-1, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1))
        expected = log_lik.mean(0).sum() * (num_data / x.shape[0])
        kl = self.latent.variational_strategy.kl_divergence().sum()
        if self.scale == "inverse-gamma":
            kl = kl + inverse_gamma_kl(self.a_q, self.b_q, self.prior_a, self.prior_b)
        return expected - kl

    def _sample_logits(self, x: Tensor, num: int) -> Tensor:
        """``[num, N, C]`` reparameterised draws of ``sqrt(s) g(x)`` from per-point marginals."""
        marginal = self.latent(x)
        mean, std = marginal.mean, marginal.variance.clamp_min(0).sqrt()  # [C, N]
        eps = torch.randn((num, *mean.shape), generator=self.generator, dtype=mean.dtype)
        g = mean + std * eps
        if self.scale == "inverse-gamma":
            g = g * self._sample_scale(num).sqrt().view(-1, 1, 1)
        return g.transpose(-1, -2)

    def _sample_scale(self, num: int) -> Tensor:
        """``[num]`` reparameterised draws ``s = b' / Gamma(a', 1)`` from ``q(s)``.

        torch draws gamma variates (with implicit reparameterisation gradients) from the global RNG
        only, so the draw runs in a forked RNG seeded from this model's generator.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
            gamma = torch.distributions.Gamma(self.a_q, torch.ones_like(self.a_q)).rsample((num,))
        return self.b_q / gamma
