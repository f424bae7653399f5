"""Deep evidential regression (Amini, Schwarting, Soleimany & Rus, NeurIPS 2020).

The net outputs, per target dimension, the four parameters of a Normal-Inverse-Gamma prior over the
Gaussian likelihood's mean and variance, ``(mu, sigma^2) ~ NIG(gamma, nu, alpha, beta)``; the
`NormalInverseGamma` likelihood is that head's link (raw ``[B, 4D]`` outputs: D gammas, then D raw
nu, alpha, beta) with ``nu = softplus + eps``, ``alpha = 1 + softplus + eps``, ``beta = softplus + eps``.
Training minimises the marginal (Student-t) NLL plus the evidence regulariser,

    L = NLL + lambda * |y - gamma| * (2 nu + alpha),

with a fixed ``lambda`` (the paper) or, as in the authors' UCI trainer, ``lambda * (L_R - target)``
where ``lambda`` rises by ``dual_lr * (L_R - target)`` after every step (dual ascent; here kept >= 0).
The predictive is ``St(y; gamma, beta (1 + nu) / (nu alpha), 2 alpha)``, whose variance splits into
the aleatoric ``E[sigma^2] = beta / (alpha - 1)`` and epistemic ``Var[mu] = beta / (nu (alpha - 1))``
parts (`NormalInverseGamma.uncertainty`). The split is not identifiable from data alone (Meinert et
al., 2023): read it as the model's own bookkeeping, not as ground truth.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from uqkit._checks import check_positive
from uqkit.calibration.distributions import StudentT
from uqkit.calibration.predictive import Predictive
from uqkit.inference.ensemble import MemberLoss, check_data, members_posterior, train_members
from uqkit.inference.posterior import Posterior
from uqkit.models.spec import ModelSpec

Params = dict[str, Tensor]


@dataclass(frozen=True)
class NormalInverseGamma:
    """Evidential likelihood: ``y ~ St(gamma, beta (1 + nu) / (nu alpha), 2 alpha)`` from raw outputs ``[B, 4D]``.

    Args:
        eps: floor added to nu, alpha - 1 and beta (> 0), so that the variances stay finite.
    """

    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")

    def check_output(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[-1] % 4:
            raise ValueError(f"net: output shape {tuple(shape)} does not fit the NormalInverseGamma likelihood "
                             "(expected [B, 4D]: D gammas, then D raw nu, alpha, beta)")

    def init_params(self, dtype: torch.dtype) -> Params:
        return {}

    def nig(self, output: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(gamma, nu, alpha, beta)``, each ``[..., D]``, from raw outputs ``[..., 4D]``."""
        gamma, nu, alpha, beta = output.chunk(4, dim=-1)
        return gamma, F.softplus(nu) + self.eps, 1 + F.softplus(alpha) + self.eps, F.softplus(beta) + self.eps

    def log_prob(self, output: Tensor, y: Tensor, lik_params: Params) -> Tensor:
        """``[B]`` Student-t marginal log density, summed over D:

        ``-[0.5 log(pi/nu) - alpha log(Omega) + (alpha + 0.5) log(nu (y - gamma)^2 + Omega)
        + lgamma(alpha) - lgamma(alpha + 0.5)]`` with ``Omega = 2 beta (1 + nu)``.
        """
        gamma, nu, alpha, beta = self.nig(output)
        omega = 2 * beta * (1 + nu)
        nll = (0.5 * torch.log(math.pi / nu) - alpha * torch.log(omega)
               + (alpha + 0.5) * torch.log(nu * (_targets(y, gamma) - gamma) ** 2 + omega)
               + torch.lgamma(alpha) - torch.lgamma(alpha + 0.5))
        return -nll.sum(-1)

    def regularizer(self, output: Tensor, y: Tensor) -> Tensor:
        """``[B]`` evidence regulariser ``|y - gamma| (2 nu + alpha)``, summed over D."""
        gamma, nu, alpha, _ = self.nig(output)
        return ((_targets(y, gamma) - gamma).abs() * (2 * nu + alpha)).sum(-1)

    def uncertainty(self, output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean gamma, aleatoric beta/(alpha-1), epistemic beta/(nu (alpha-1)))``, each ``[..., D]``.

        The mean is in target units, the two variances in squared target units.
        """
        gamma, nu, alpha, beta = self.nig(output)
        aleatoric = beta / (alpha - 1)
        return gamma, aleatoric, aleatoric / nu

    def predictive(self, outputs: Tensor, lik_params: Params) -> Predictive:
        """Mixture over ``S`` of Student-t predictives from outputs ``[S, N, 4D]`` (batch ``[S, N]`` when D = 1)."""
        gamma, nu, alpha, beta = self.nig(outputs)
        scale = torch.sqrt(beta * (1 + nu) / (nu * alpha))
        if gamma.shape[-1] == 1:
            gamma, scale, alpha = gamma.squeeze(-1), scale.squeeze(-1), alpha.squeeze(-1)
        return Predictive.from_distribution(StudentT(2 * alpha, gamma, scale))


def evidential_loss(spec: ModelSpec, *, adaptive: bool, target: float, dual_lr: float) -> MemberLoss:
    """Per-member DER objective with ``state = {"lagrange": lambda}``.

    The returned state is the dual-ascent update (adaptive) or the state unchanged (fixed lambda).
    """
    lik = spec.likelihood

    def loss(params: Params, state: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Params]:
        out = spec.forward(params, x)
        nll = -lik.log_prob(out, y, {}).mean()
        reg = lik.regularizer(out, y).mean()
        lam = state["lagrange"]
        if not adaptive:
            return nll + lam * reg, state
        gap = reg - target
        return nll + lam * gap, {"lagrange": (lam + dual_lr * gap.detach()).clamp_min(0)}

    return loss


def fit_der(spec: ModelSpec, data: tuple[Tensor, Tensor], *, num_epochs: int = 40, batch_size: int = 32,
            lr: float = 1e-3, reg_weight: float = 0.01, adaptive: bool = False, target: float = 0.01,
            dual_lr: float = 1e-4, num_members: int = 1, seed: int = 0, progress: bool = True) -> Posterior:
    """Train a deep evidential regression net (Adam on NLL + lambda * evidence regulariser).

    Args:
        spec: a model whose likelihood is `NormalInverseGamma` (net output ``[B, 4D]``).
        data: ``(x [N, ...], y [N] | [N, D])`` with ``N == spec.num_data``.
        num_epochs, batch_size, lr: Adam training schedule.
        reg_weight: lambda (>= 0): fixed, or the starting value of the adaptive multiplier.
        adaptive: use the Lagrange-multiplier variant of the authors' UCI trainer.
        target: the regulariser level the adaptive variant aims for (epsilon, >= 0).
        dual_lr: dual ascent rate of the adaptive multiplier (> 0).
        num_members: independent evidential nets (1 in the paper; > 1 gives a Student-t mixture).
        seed: seeds initial weights and minibatch order.
        progress: show a progress bar.

    Returns:
        A `Posterior` with draws ``{name: [1, M, *shape]}``, ``sample_stats`` ``loss`` and ``lagrange``
        ``[1, M]``, and ``predict(x)`` the Student-t `Predictive` (``predict(x).log_prob(y)`` is the test
        log-likelihood).
    """
    start = time.perf_counter()
    if not isinstance(getattr(spec, "likelihood", None), NormalInverseGamma):
        raise TypeError(f"spec: expected a ModelSpec with the NormalInverseGamma likelihood, got "
                        f"{type(getattr(spec, 'likelihood', spec)).__name__}")
    x, y = check_data(spec, data)
    reg_weight = check_positive(reg_weight, "reg_weight", allow_zero=True)
    target = check_positive(target, "target", allow_zero=True)
    dual_lr = check_positive(dual_lr, "dual_lr")
    loss = evidential_loss(spec, adaptive=adaptive, target=target, dual_lr=dual_lr)
    trained = train_members(spec, x, y, loss, num_members=num_members, num_epochs=num_epochs, batch_size=batch_size,
                            lr=lr, seed=seed, state={"lagrange": torch.tensor(reg_weight, dtype=spec.dtype)},
                            progress=progress, desc="fit[der]")
    config = {"num_epochs": num_epochs, "batch_size": batch_size, "lr": lr, "reg_weight": reg_weight,
              "adaptive": adaptive, "target": target, "dual_lr": dual_lr, "num_members": num_members}
    return members_posterior(spec, trained, {"engine": "der", "config": config, "seed": seed,
                                             "wall_time_s": time.perf_counter() - start})


def _targets(y: Tensor, like: Tensor) -> Tensor:
    y = y.to(like.dtype)
    return y.unsqueeze(-1) if y.ndim == like.ndim - 1 else y
