"""Scale mixtures of (NN)GPs for regression: Gaussian baseline, Student-t process, general scale priors.

Conditional on a scale ``s``, the targets are a GP with covariance ``s * (K + jitter * I)`` (``K`` a
kernel such as `NNGPKernel`; ``jitter`` is a learned positive noise term). Then (Lee, Yun, Yang & Lee,
"Scale Mixtures of Neural Network Gaussian Processes", ICLR 2022; METHODS.md section 5):

* `NNGPRegression`: ``s`` is a fitted constant, the plain GP;
* `StudentTProcess`: ``s ~ InvGamma(a, b)``, giving ``y ~ MVT_{2a}(0, (b/a) K)`` in closed form, with a
  Student-t posterior predictive of ``2a + n`` degrees of freedom (Shah, Wilson & Ghahramani,
  "Student-t Processes as Alternatives to Gaussian Processes", AISTATS 2014);
* `ScaleMixtureGP`: any other prior on ``s`` by self-normalised importance sampling over ``log s``.

All three share one Cholesky factorisation of ``K + jitter * I`` and one fitting loop: Adam on the
(log) marginal likelihood of the training targets. Inputs are ``x [n, d]``, targets ``y [n]`` (ideally
standardised: the prior mean is 0); predictions are `Predictive` objects in the units of ``y``.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from uqkit._checks import check_float, check_positive, check_same_length
from uqkit.calibration.distributions import StudentT
from uqkit.calibration.predictive import Predictive

#: Largest extra jitter, relative to the mean diagonal of the kernel matrix, added to make it positive definite.
MAX_RELATIVE_JITTER = 1e-6


@dataclass(frozen=True)
class _Factor:
    """Cholesky factor ``L`` of ``K + jitter * I`` for training data, and the whitened targets ``L^-1 y``."""

    chol: Tensor  # [n, n]
    white_y: Tensor  # [n]

    @property
    def quad(self) -> Tensor:
        """``y^T (K + jitter I)^-1 y``."""
        return self.white_y.square().sum()

    @property
    def logdet(self) -> Tensor:
        """``log |K + jitter I|``."""
        return 2 * self.chol.diagonal().log().sum()


class _KernelRegression(torch.nn.Module, ABC):
    """Shared machinery: training data, jitter, Cholesky factor, posterior mean/variance, fitting loop."""

    _learnable: tuple[str, ...] = ("jitter", "kernel")

    def __init__(self, kernel: torch.nn.Module, jitter: float, learn: Sequence[str]) -> None:
        super().__init__()
        if not isinstance(kernel, torch.nn.Module) or not callable(kernel):
            raise TypeError(f"kernel: expected a gpytorch kernel, got {type(kernel).__name__}")
        unknown = set(learn) - set(self._learnable)
        if isinstance(learn, str) or unknown:
            raise ValueError(f"learn: expected a sequence of names from {self._learnable}, got {learn!r}")
        self.kernel = kernel
        self.learn = tuple(learn)
        self.log_jitter = torch.nn.Parameter(torch.tensor(math.log(check_positive(jitter, "jitter"))))
        self._data: tuple[Tensor, Tensor] | None = None

    @property
    def jitter(self) -> Tensor:
        """Noise/jitter variance epsilon added to the kernel diagonal (before the scale)."""
        return self.log_jitter.exp()

    # ------------------------------------------------------------------------------ public API
    def fit(self, x: object, y: object, *, num_steps: int = 200, lr: float = 0.05, progress: bool = False) -> _KernelRegression:
        """Store the training data and maximise the log marginal likelihood over the learned parameters.

        Args:
            x: ``[n, d]`` training inputs.
            y: ``[n]`` training targets.
            num_steps: Adam steps (0 keeps the current hyperparameters).
            lr: Adam learning rate (on log-parameters).
            progress: show a tqdm bar.

        Returns:
            self, fitted.
        """
        x, y = self._check_data(x, y)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps: expected an integer >= 0, got {num_steps!r}")
        check_positive(lr, "lr")
        params = [p for name in self.learn for p in self._parameters_named(name)]
        self._data = (x, y)
        if num_steps and params:
            opt = torch.optim.Adam(params, lr=lr)
            bar = tqdm(range(num_steps), desc=type(self).__name__, disable=not progress)
            for _ in bar:
                opt.zero_grad()
                loss = -self._log_marginal(self._factor(x, y)) / y.shape[0]
                loss.backward()
                opt.step()
                bar.set_postfix(nll=f"{float(loss.detach()):.4f}")
        return self

    def log_marginal_likelihood(self, x: object, y: object) -> Tensor:
        """Log marginal likelihood ``log p(y | x)`` (nats, summed over the ``n`` targets), differentiable."""
        x, y = self._check_data(x, y)
        return self._log_marginal(self._factor(x, y))

    @abstractmethod
    def predict(self, x: object) -> Predictive:
        """Posterior predictive of noisy targets at ``x [m, d]`` (``m`` points)."""

    # ------------------------------------------------------------------------------- internals
    @abstractmethod
    def _log_marginal(self, factor: _Factor) -> Tensor:
        """Log marginal likelihood of the training targets given their factor."""

    def _parameters_named(self, name: str) -> list[torch.nn.Parameter]:
        if name == "kernel":
            return list(self.kernel.parameters())
        return [getattr(self, f"log_{name}")]

    def _check_data(self, x: object, y: object) -> tuple[Tensor, Tensor]:
        x = check_float(x, "x", ndim=2)
        y = check_float(y, "y", ndim=1)
        check_same_length("x", x, "y", y)
        return x, y.to(x.dtype)

    def _trained(self) -> tuple[Tensor, Tensor]:
        if self._data is None:
            raise ValueError(f"{type(self).__name__}: call fit(x, y) before predict")
        return self._data

    def _kernel_matrix(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        return self.kernel(x1, x1 if x2 is None else x2).to_dense()

    def _factor(self, x: Tensor, y: Tensor) -> _Factor:
        k = self._kernel_matrix(x)
        if not bool(torch.isfinite(k).all()):
            raise ValueError("kernel: the kernel matrix has NaN or inf entries")
        chol = _cholesky_with_jitter(k + self.jitter * torch.eye(k.shape[-1], dtype=k.dtype))
        return _Factor(chol, torch.linalg.solve_triangular(chol, y.unsqueeze(-1), upper=False).squeeze(-1))

    def _posterior(self, x_new: object) -> tuple[Tensor, Tensor, _Factor]:
        """Conditional mean ``m* [m]`` and unit-scale variance ``c* [m]`` of noisy targets, and the training factor."""
        x, y = self._trained()
        x_new = check_float(x_new, "x", ndim=2)
        if x_new.shape[-1] != x.shape[-1]:
            raise ValueError(f"x: expected {x.shape[-1]} features as in training, got shape {tuple(x_new.shape)}")
        x_new = x_new.to(x.dtype)
        with torch.no_grad():
            factor = self._factor(x, y)
            cross = torch.linalg.solve_triangular(factor.chol, self._kernel_matrix(x, x_new), upper=False)  # [n, m]
            mean = cross.T @ factor.white_y
            prior_var = self.kernel(x_new, diag=True) + self.jitter
            var = (prior_var - cross.square().sum(0)).clamp_min(torch.finfo(x.dtype).eps * prior_var)
        return mean, var, factor


class NNGPRegression(_KernelRegression):
    """The Gaussian baseline: ``y ~ N(0, scale * (K + jitter I))`` with a fitted ``scale``.

    Args:
        kernel: a gpytorch kernel (e.g. `NNGPKernel`).
        scale: output scale (sigma_v^2, > 0).
        jitter: noise variance added to the kernel diagonal (> 0).
        learn: which of "scale", "jitter", "kernel" `fit` optimises.
    """

    _learnable = ("scale", "jitter", "kernel")

    def __init__(self, kernel: torch.nn.Module, *, scale: float = 1.0, jitter: float = 0.1,
                 learn: Sequence[str] = ("scale", "jitter", "kernel")) -> None:
        super().__init__(kernel, jitter, learn)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(check_positive(scale, "scale"))))

    @property
    def scale(self) -> Tensor:
        """Output scale s."""
        return self.log_scale.exp()

    def _log_marginal(self, factor: _Factor) -> Tensor:
        n = factor.white_y.shape[0]
        s = self.scale
        return -0.5 * (n * math.log(2 * math.pi) + n * s.log() + factor.logdet + factor.quad / s)

    def predict(self, x: object) -> Predictive:
        """Gaussian predictive ``N(m*, scale * c*)`` at ``x [m, d]``."""
        mean, var, _ = self._posterior(x)
        return Predictive.gaussian(mean, self.scale.detach() * var)


class StudentTProcess(_KernelRegression):
    """Student-t process: the inverse-gamma scale mixture ``s ~ InvGamma(a, b)`` of GPs, in closed form.

    Marginal likelihood ``MVT_{2a}(y; 0, (b/a)(K + jitter I))``; predictive at x*: Student-t with
    ``2a + n`` degrees of freedom, location ``m*`` and scale^2 ``(2b + y^T K^-1 y) / (2a + n) * c*``.

    Args:
        kernel: a gpytorch kernel (e.g. `NNGPKernel`).
        a: inverse-gamma shape (> 0).
        b: inverse-gamma rate (> 0).
        jitter: noise variance added to the kernel diagonal (> 0).
        learn: which of "a", "b", "jitter", "kernel" `fit` optimises.
    """

    _learnable = ("a", "b", "jitter", "kernel")

    def __init__(self, kernel: torch.nn.Module, *, a: float = 2.0, b: float = 2.0, jitter: float = 0.1,
                 learn: Sequence[str] = ("a", "b", "jitter", "kernel")) -> None:
        super().__init__(kernel, jitter, learn)
        self.log_a = torch.nn.Parameter(torch.tensor(math.log(check_positive(a, "a"))))
        self.log_b = torch.nn.Parameter(torch.tensor(math.log(check_positive(b, "b"))))

    @property
    def a(self) -> Tensor:
        """Inverse-gamma shape a (the prior has 2a degrees of freedom)."""
        return self.log_a.exp()

    @property
    def b(self) -> Tensor:
        """Inverse-gamma rate b."""
        return self.log_b.exp()

    def _log_marginal(self, factor: _Factor) -> Tensor:
        n = factor.white_y.shape[0]
        a, b = self.a, self.b
        return (torch.lgamma(a + n / 2) - torch.lgamma(a) - 0.5 * n * torch.log(2 * math.pi * b)
                - 0.5 * factor.logdet - (a + n / 2) * torch.log1p(factor.quad / (2 * b)))

    def predict(self, x: object) -> Predictive:
        """Student-t predictive at ``x [m, d]`` (batch shape ``[1, m]``)."""
        mean, var, factor = self._posterior(x)
        n = factor.white_y.shape[0]
        with torch.no_grad():
            df = 2 * self.a + n
            scale = torch.sqrt((2 * self.b + factor.quad) / df * var)
        return Predictive.from_distribution(StudentT(df.expand(1, mean.shape[0]), mean.unsqueeze(0), scale.unsqueeze(0)))


class ScaleMixtureGP(_KernelRegression):
    """A GP mixed over any prior on its scale ``s`` by self-normalised importance sampling.

    Draws ``log s_k`` from a proposal, weighs them by ``p(s_k) N(y; 0, s_k (K + jitter I)) / q(s_k)`` in
    log space, and predicts with the weighted mixture of Gaussians ``N(m*, s_k c*)``.

    Proposals: ``"prior"`` draws from ``scale_prior`` itself (needs only ``sample``; the weights are
    the marginal likelihoods and are bounded, so heavy-tailed and infinite-mean priors are fine);
    ``"likelihood"`` (default) draws ``log s`` from a normal around the maximum of the likelihood in
    ``log s`` (``s = y^T K^-1 y / n``, curvature ``n / 2``), widened by ``proposal_width``, and needs
    ``scale_prior.log_prob``: far fewer draws for the same effective sample size when ``n`` is large.

    Args:
        kernel: a gpytorch kernel.
        scale_prior: a ``torch.distributions.Distribution`` over ``s > 0`` (scalar event), e.g.
            `BurrXII`, ``HalfCauchy``, ``InverseGamma``.
        num_samples: number of importance draws K.
        proposal: "likelihood" or "prior".
        proposal_width: factor on the likelihood's standard deviation in ``log s`` (>= 1 is safe).
        jitter: noise variance added to the kernel diagonal (> 0).
        learn: which of "jitter", "kernel" `fit` optimises (on the importance-sampled evidence, with
            the draws held fixed).
        seed: seed of the draws.
    """

    def __init__(self, kernel: torch.nn.Module, scale_prior: Distribution, *, num_samples: int = 4096,
                 proposal: str = "likelihood", proposal_width: float = 3.0, jitter: float = 0.1,
                 learn: Sequence[str] = ("jitter", "kernel"), seed: int = 0) -> None:
        super().__init__(kernel, jitter, learn)
        if not isinstance(scale_prior, Distribution):
            raise TypeError(f"scale_prior: expected a torch.distributions.Distribution, got {type(scale_prior).__name__}")
        if scale_prior.batch_shape != () or scale_prior.event_shape != ():
            raise ValueError(f"scale_prior: expected a scalar distribution, got batch {tuple(scale_prior.batch_shape)} "
                             f"and event {tuple(scale_prior.event_shape)} shapes")
        if bool(scale_prior.support.check(torch.tensor(-1.0))):
            raise ValueError(f"scale_prior: expected a distribution over scales s > 0, got support {scale_prior.support}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"num_samples: expected an integer >= 2, got {num_samples!r}")
        if proposal not in ("likelihood", "prior"):
            raise ValueError(f"proposal: expected 'likelihood' or 'prior', got {proposal!r}")
        self.scale_prior = scale_prior
        self.proposal = proposal
        self.proposal_width = check_positive(proposal_width, "proposal_width")
        generator = torch.Generator().manual_seed(seed)
        if proposal == "prior":
            with torch.random.fork_rng(devices=[]):  # torch distributions sample from the global RNG: isolate it
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
                draws = scale_prior.sample((num_samples,)).to(torch.get_default_dtype())
            if not bool(torch.isfinite(draws).all() & (draws > 0).all()):
                raise ValueError("scale_prior: expected finite draws > 0 (a distribution over positive scales), "
                                 f"got values in [{float(draws.min()):.3g}, {float(draws.max()):.3g}]")
            self.register_buffer("_base", draws.log())  # log s_k
        else:
            self.register_buffer("_base", torch.randn(num_samples, generator=generator, dtype=torch.get_default_dtype()))

    def log_weights(self) -> tuple[Tensor, Tensor]:
        """``log s_k [K]`` and unnormalised log importance weights ``[K]`` given the training data (no gradient)."""
        with torch.no_grad():
            return self._log_weights(self._factor(*self._trained()))

    def _log_weights(self, factor: _Factor) -> tuple[Tensor, Tensor]:
        n = factor.white_y.shape[0]
        if self.proposal == "prior":
            log_s, log_correction = self._base.to(factor.quad.dtype), 0.0
        else:
            centre, sd = torch.log(factor.quad / n), self.proposal_width * math.sqrt(2.0 / n)
            log_s = centre + sd * self._base
            log_q = -0.5 * self._base.square() - math.log(sd) - 0.5 * math.log(2 * math.pi)  # density of log s
            log_prior = self.scale_prior.log_prob(log_s.exp())
            if not bool(torch.isfinite(log_prior).any()):
                raise ValueError("scale_prior: log_prob is -inf or NaN at every proposed scale; check its support is s > 0")
            log_correction = log_prior.to(log_s.dtype) + log_s - log_q  # p(s) |ds/dlog s| / q(log s)
        log_lik = -0.5 * (n * math.log(2 * math.pi) + n * log_s + factor.logdet + factor.quad / log_s.exp())
        return log_s, log_lik + log_correction

    def effective_sample_size(self) -> float:
        """Kish's effective sample size ``1 / sum(w_k^2)`` of the normalised weights (between 1 and K)."""
        _, logw = self.log_weights()
        return float(1 / torch.softmax(logw, 0).square().sum())

    def _log_marginal(self, factor: _Factor) -> Tensor:
        _, logw = self._log_weights(factor)
        return torch.logsumexp(logw, 0) - math.log(logw.shape[0])

    def predict(self, x: object) -> Predictive:
        """Mixture of ``K`` Gaussians ``N(m*, s_k c*)`` with the importance weights (``[K, m]`` components)."""
        mean, var, factor = self._posterior(x)
        with torch.no_grad():
            log_s, logw = self._log_weights(factor)
        scales = log_s.exp().unsqueeze(-1)
        return Predictive.gaussian(mean.expand(scales.shape[0], -1), scales * var, log_weights=logw)


def _cholesky_with_jitter(matrix: Tensor) -> Tensor:
    """Cholesky factor of ``matrix [n, n]``, adding up to `MAX_RELATIVE_JITTER` x mean diagonal if it is not PD.

    Extra jitter starts at 1e-12 of the mean diagonal and grows tenfold per try; a `UserWarning`
    reports the amount used. Beyond the bound, a ``ValueError``.
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return chol
    scale = float(matrix.diagonal().mean().detach().abs())
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype)
    extra = 1e-12
    while extra <= MAX_RELATIVE_JITTER * (1 + 1e-9):
        chol, info = torch.linalg.cholesky_ex(matrix + extra * scale * eye)
        if int(info) == 0:
            warnings.warn(f"kernel: matrix not positive definite; added jitter {extra * scale:.3g} "
                          f"({extra:.0e} x mean diagonal) to the diagonal", UserWarning, stacklevel=3)
            return chol
        extra *= 10
    raise ValueError(f"kernel: matrix not positive definite even with jitter {MAX_RELATIVE_JITTER:.0e} x mean diagonal "
                     "added; check the kernel and its hyperparameters, or raise the jitter")

