"""The Normal-Inverse-Wishart (NIW) hierarchical prior of NIW-Meta, its variational form and its local posteriors.

Model (Kim & Hospedales, "A Hierarchical Bayesian Model for Few-Shot Meta Learning", ICLR 2024,
arXiv 2306.09702, section 3). A global variable ``phi = (mu, Sigma)`` has the prior
``NIW(mu, Sigma; m0, l0, V0, n0)``, i.e. ``Sigma ~ IW(V0, n0)`` and ``mu | Sigma ~ N(m0, Sigma / l0)``;
each episode ``i`` draws its network weights ``theta_i ~ N(mu, Sigma)`` ``[P]``. The variational
posterior over the global variable is again NIW, ``q(phi) = NIW(m, l, V, n)``.

Diagonal covariance (the default, and what the paper uses for networks): ``Sigma = diag(s_1..s_P)``
with independent one-dimensional NIWs per coordinate, ``s_j ~ IW_1(V_j, n) = InvGamma(n/2, V_j/2)``,
``mu_j | s_j ~ N(m_j, s_j / l)``. Every formula below holds blockwise with block size ``d = 1``
(diagonal, ``P`` blocks) or ``d = P`` (full covariance, one block).

Expectations under ``q(phi) = NIW(m, l, V, n)`` (``Sigma^{-1} ~ Wishart(V^{-1}, n)``):

    E[Sigma^{-1}]   = n V^{-1}
    E[log|Sigma|]   = log|V| - d log 2 - psi_d(n/2)            (psi_d: multivariate digamma)
    E[(t - mu)^T Sigma^{-1} (t - mu)] = n (t - m)^T V^{-1} (t - m) + d / l

so the expected Gaussian KL from a local ``N(m_i, V_i)`` to ``p(theta | phi) = N(mu, Sigma)`` is

    E_q[KL] = 1/2 [ n tr(V^{-1} V_i) + n (m_i - m)^T V^{-1} (m_i - m) + P / l - P
                    + E[log|Sigma|] - log|V_i| ].

Local posterior (the paper's "approximately closed form"). Mean-field ``q(phi) prod_i q_i(theta_i)``
makes the optimal local factor ``q_i(theta) ∝ exp(E_q[log N(theta; mu, Sigma)]) p(D_i | theta)``; the
first factor is, up to a constant, ``exp(-1/2 n (theta - m)^T V^{-1} (theta - m))``. The episode loss
``-log p(D_i | theta)`` is replaced by its second-order expansion at a point ``theta_bar`` reached by a
few SGD/SGLD steps from ``m``, with a diagonal curvature ``A`` (capped, see `uqkit.inference.meta`)
and gradient ``g``:

    -log p(D_i | theta) ≈ g^T (theta - theta_bar) + 1/2 (theta - theta_bar)^T A (theta - theta_bar) + const.

The product of the two Gaussian factors is Gaussian with

    precision  V_i^{-1} = A + n V^{-1},      mean  m_i = V_i (A theta_bar - g + n V^{-1} m).

The paper drops ``g`` (``theta_bar`` is taken as the episode's minimiser); ``gradient=None`` does the
same. With ``g`` kept, the result is exact for any ``theta_bar`` whenever the loss is quadratic (a
linear-Gaussian episode), which the tests check against the conjugate posterior.

Factored curvature (`FactoredGaussian`, `NormalInverseWishart.local_posterior_factored`). The diagonal
``A`` of a Gauss-Newton matrix ``F^T F`` (``F [R, P]``, ``R`` = support points x outputs) over-counts
what ``R << P`` points say: every weight's entry claims the whole support set, so the local KL
``1/2 sum_j log(1 + A_j / prec_j)`` grows with ``P`` rather than with ``R``, and independent draws over
correlated weights add up ``P`` variances along directions the data pin down. Keeping the factor, the
local precision is ``D + F^T F`` with ``D = n V^{-1}`` diagonal, and Woodbury's identity, with
``M = I_R + F D^{-1} F^T = L L^T``, gives the covariance, its diagonal and log-determinant at
``O(P R^2)`` cost:

    V_i = D^{-1} - D^{-1} F^T M^{-1} F D^{-1},   diag V_i = D^{-1} - colsum((L^{-1} F D^{-1})^2),
    log|V_i| = -sum log D - 2 sum log diag L,   m_i = V_i (F^T F theta_bar - g + D m).

Exact draws use ``V_i (D^{1/2} e1 + F^T e2)`` (``e1 [P]``, ``e2 [R]`` standard normal), whose
covariance is ``V_i (D + F^T F) V_i = V_i``. The expected KL keeps the same form (with a diagonal
``E[Sigma^{-1}]`` only ``diag V_i`` enters the trace).

KL between NIWs (``KL(q || p)``, ``q = NIW(m, l, V, n)``, ``p = NIW(m0, l0, V0, n0)``), per block of
size ``d``: the inverse-Wishart part equals the KL between the Wisharts of the precisions,

    (n - n0)/2 psi_d(n/2) - n d/2 + n/2 tr(V0 V^{-1}) + n0/2 (log|V| - log|V0|)
      - log Gamma_d(n/2) + log Gamma_d(n0/2),

and the conditional normal part averaged over ``q(Sigma)`` is
``1/2 [ d l0/l + l0 n (m - m0)^T V^{-1} (m - m0) - d + d log(l/l0) ]``.

Conjugate update of ``NIW(m, l, V, n)`` by observed weights ``theta_1..theta_K`` (mean ``t``, scatter
``S = sum (theta_k - t)(theta_k - t)^T``): ``l' = l + K``, ``m' = (l m + K t)/l'``, ``n' = n + K``,
``V' = V + S + (l K / l') (t - m)(t - m)^T`` (diagonal: the diagonals of these matrices).

Verification status: only the paper's abstract and the authors' README (no code was released)
could be read through the available tools, not section 3 itself. The formulas above are derived
here from the stated model (NIW global, Gaussian locals, NIW variational family, quadratic episode
loss from SGD/SGLD steps started at the global mean, capped diagonal precision), and agree with the
reconstruction in the project's METHODS.md section 6, with one difference: that note writes the
local term as ``KL(q_i || E_q[p(theta | phi)])`` (a Student-t marginal), while the mean-field ELBO of
this model has ``E_q[KL(q_i || p(theta | phi))]``, which is what `expected_gaussian_kl` computes.
The README flags ``--gam0_init`` / ``--use_gami`` (not described anywhere we could read) are not
modelled.

References: Kim & Hospedales 2024 (model, local posterior); Murphy, "Conjugate Bayesian analysis of
the Gaussian distribution" (2007) for the NIW update; Penny (2001) for the Wishart KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class NormalInverseWishart:
    """``NIW(mu, Sigma; loc, mean_precision, scale, dof)`` over ``mu [P]`` and ``Sigma``.

    Build it with `NormalInverseWishart.create` (which validates); the fields may carry gradients.

    Attributes:
        loc: ``[P]`` mean of ``mu`` (``m``).
        mean_precision: scalar ``l > 0``: ``mu | Sigma ~ N(loc, Sigma / l)``.
        scale: ``[P]`` diagonal scale (``P`` one-dimensional blocks) or ``[P, P]`` symmetric
            positive-definite scale matrix ``V`` of the inverse Wishart.
        dof: scalar degrees of freedom ``n > d - 1`` (``d`` = block size: 1 diagonal, ``P`` full).
    """

    loc: Tensor
    mean_precision: Tensor
    scale: Tensor
    dof: Tensor

    @classmethod
    def create(cls, loc: object, mean_precision: object, scale: object, dof: object) -> NormalInverseWishart:
        """Validated constructor: raises ``ValueError`` naming the bad argument."""
        loc_t = _tensor(loc, "loc")
        dtype = loc_t.dtype if loc_t.is_floating_point() else torch.get_default_dtype()
        loc_t = loc_t.to(dtype)
        if loc_t.ndim != 1 or loc_t.numel() == 0:
            raise ValueError(f"loc: expected a non-empty vector [P], got shape {tuple(loc_t.shape)}")
        size = loc_t.numel()
        scale_t = _tensor(scale, "scale").to(dtype)
        for name, t in (("loc", loc_t), ("scale", scale_t)):
            if not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{name}: expected finite values, found NaN or inf")
        if scale_t.shape == (size,):
            if bool((scale_t <= 0).any()):
                raise ValueError("scale: expected a positive diagonal (a positive-definite scale), found entries <= 0")
        elif scale_t.shape == (size, size):
            s = scale_t.detach()
            if not torch.allclose(s, s.mT, rtol=1e-10, atol=1e-12) or int(torch.linalg.cholesky_ex(s).info) != 0:
                raise ValueError("scale: expected a symmetric positive-definite matrix")
        else:
            raise ValueError(f"scale: expected shape [{size}] (diagonal) or [{size}, {size}], got {tuple(scale_t.shape)}")
        l_t = _scalar(mean_precision, "mean_precision", dtype)
        n_t = _scalar(dof, "dof", dtype)
        if not float(l_t) > 0:
            raise ValueError(f"mean_precision: expected a value > 0, got {float(l_t)}")
        block = 1 if scale_t.ndim == 1 else size
        if not float(n_t) > block - 1:
            raise ValueError(f"dof: expected a value > {block - 1} (block size - 1), got {float(n_t)}")
        return cls(loc_t, l_t, scale_t, n_t)

    # ------------------------------------------------------------------------------------ shapes
    @property
    def diagonal(self) -> bool:
        """True for the diagonal (per-coordinate) model."""
        return self.scale.ndim == 1

    @property
    def size(self) -> int:
        """P, the dimension of ``mu``."""
        return self.loc.numel()

    @property
    def _block(self) -> int:
        return 1 if self.diagonal else self.size

    @property
    def _num_blocks(self) -> int:
        return self.size if self.diagonal else 1

    # ------------------------------------------------------------------------------ expectations
    def expected_precision(self) -> Tensor:
        """``E[Sigma^{-1}] = n V^{-1}``: ``[P]`` (diagonal) or ``[P, P]``."""
        if self.diagonal:
            return self.dof / self.scale
        return self.dof * torch.cholesky_inverse(torch.linalg.cholesky(self.scale))

    def expected_log_det_cov(self) -> Tensor:
        """``E[log|Sigma|] = log|V| - P log 2 - (number of blocks) psi_d(n/2)``, nats."""
        return _logdet(self.scale) - self.size * _LOG2 - self._num_blocks * _mvdigamma(self.dof / 2, self._block)

    def mode(self) -> tuple[Tensor, Tensor]:
        """Joint mode ``(mu, Sigma) = (m, V / (n + d + 2))``: ``[P]`` and ``[P]`` or ``[P, P]``."""
        return self.loc, self.scale / (self.dof + self._block + 2)

    def expected_gaussian_kl(self, mean: Tensor, cov: Tensor | FactoredGaussian) -> Tensor:
        """``E_{q(phi)}[KL(N(mean, cov) || N(mu, Sigma))]`` ``[...]`` nats, for local posteriors ``[..., P]``.

        ``cov`` is ``[..., P]`` (diagonal) or ``[..., P, P]``, matching the NIW's own structure, or (diagonal
        NIW) a `FactoredGaussian` local posterior, whose ``mean`` is then ignored in favour of its own.
        """
        prec = self.expected_precision()
        if isinstance(cov, FactoredGaussian):
            if not self.diagonal:
                raise ValueError("cov: a FactoredGaussian local posterior needs a diagonal NIW")
            mean, logdet_local, cov = cov.mean, cov.log_det_cov(), cov.variance()
        else:
            logdet_local = None
        diff = mean - self.loc
        if self.diagonal:
            trace, quad = (prec * cov).sum(-1), (prec * diff.square()).sum(-1)
            logdet_local = cov.log().sum(-1) if logdet_local is None else logdet_local
        else:
            trace = (prec * cov).sum((-2, -1))
            quad = torch.einsum("...i,ij,...j->...", diff, prec, diff)
            logdet_local = torch.linalg.slogdet(cov)[1]
        p = self.size
        return 0.5 * (trace + quad + p / self.mean_precision - p + self.expected_log_det_cov() - logdet_local)

    def kl(self, other: NormalInverseWishart) -> Tensor:
        """``KL(self || other)`` in nats (both diagonal or both full, same ``P``)."""
        if other.diagonal != self.diagonal or other.size != self.size:
            raise ValueError("other: expected an NIW with the same size and covariance structure")
        n, n0, d, blocks = self.dof, other.dof, self._block, self._num_blocks
        if self.diagonal:
            trace = (other.scale / self.scale).sum()
        else:
            trace = torch.linalg.solve(self.scale, other.scale).diagonal().sum()
        wishart = (blocks * ((n - n0) / 2 * _mvdigamma(n / 2, d) - n * d / 2
                             - torch.special.multigammaln(n / 2, d) + torch.special.multigammaln(n0 / 2, d))
                   + n / 2 * trace + n0 / 2 * (_logdet(self.scale) - _logdet(other.scale)))
        l, l0, p = self.mean_precision, other.mean_precision, self.size
        diff = self.loc - other.loc
        quad = (self.expected_precision() * diff.square()).sum() if self.diagonal else diff @ self.expected_precision() @ diff
        normal = 0.5 * (p * l0 / l + l0 * quad - p + p * torch.log(l / l0))
        return wishart + normal

    # ---------------------------------------------------------------------------------- updates
    def update(self, theta: object) -> NormalInverseWishart:
        """Conjugate posterior after observing local weights ``theta`` ``[K, P]`` drawn from ``N(mu, Sigma)``."""
        t = _tensor(theta, "theta").to(self.loc.dtype)
        if t.ndim != 2 or t.shape[1] != self.size or t.shape[0] == 0:
            raise ValueError(f"theta: expected shape [K >= 1, {self.size}], got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("theta: expected finite values, found NaN or inf")
        k = t.shape[0]
        mean = t.mean(0)
        centred, shift = t - mean, mean - self.loc
        l_new = self.mean_precision + k
        if self.diagonal:
            scatter, outer = centred.square().sum(0), shift.square()
        else:
            scatter, outer = centred.mT @ centred, torch.outer(shift, shift)
        scale = self.scale + scatter + (self.mean_precision * k / l_new) * outer
        return NormalInverseWishart(
            (self.mean_precision * self.loc + k * mean) / l_new, l_new, scale, self.dof + k
        )

    def local_posterior(self, center: Tensor, curvature: Tensor, gradient: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Closed-form ``q_i(theta) = N(mean, cov)`` from a quadratic episode loss (module docstring).

        Args:
            center: ``[..., P]`` expansion point ``theta_bar``.
            curvature: ``[..., P]`` diagonal ``A >= 0`` of the loss's Hessian (or Gauss-Newton) at
                ``center``, or (full NIW only) the whole positive semi-definite matrix ``[..., P, P]``.
            gradient: ``[..., P]`` loss gradient at ``center``; None drops the linear term (the paper's form).

        Returns:
            ``mean [..., P]`` and ``cov`` ``[..., P]`` (diagonal NIW) or ``[..., P, P]`` (full).
        """
        prior_prec = self.expected_precision()
        full_curvature = curvature.ndim == center.ndim + 1
        if full_curvature and self.diagonal:
            raise ValueError("curvature: a full [P, P] curvature needs a full-covariance NIW")
        pulled = (curvature @ center.unsqueeze(-1)).squeeze(-1) if full_curvature else curvature * center
        linear = pulled - (0 if gradient is None else gradient)
        if self.diagonal:
            prec = curvature + prior_prec
            return (linear + prior_prec * self.loc) / prec, 1.0 / prec
        prec = (curvature if full_curvature else torch.diag_embed(curvature)) + prior_prec
        cov = torch.cholesky_inverse(torch.linalg.cholesky(prec))
        mean = (cov @ (linear + prior_prec @ self.loc).unsqueeze(-1)).squeeze(-1)
        return mean, cov

    def local_posterior_factored(self, center: Tensor, factor: Tensor, gradient: Tensor | None = None) -> FactoredGaussian:
        """Closed-form ``q_i = N(m_i, (D + F^T F)^{-1})`` for a Gauss-Newton curvature kept as its factor (diagonal NIW).

        Args:
            center: ``[..., P]`` expansion point ``theta_bar``.
            factor: ``[..., R, P]`` ``F`` with curvature ``F^T F`` (`MetaLearner.gauss_newton_factor`).
            gradient: ``[..., P]`` loss gradient at ``center``; None drops the linear term.
        """
        if not self.diagonal:
            raise ValueError("factor: the factored local posterior needs a diagonal NIW")
        if factor.ndim != center.ndim + 1 or factor.shape[-1] != center.shape[-1]:
            raise ValueError(f"factor: expected shape [..., R, {center.shape[-1]}], got {tuple(factor.shape)}")
        prec = self.expected_precision()
        scaled = factor / prec  # F D^{-1}
        eye = torch.eye(factor.shape[-2], dtype=factor.dtype)
        chol, info = torch.linalg.cholesky_ex(eye + scaled @ factor.mT)
        if bool((info != 0).any()):
            raise ValueError("factor: I + F D^{-1} F^T is not numerically positive definite (non-finite or huge "
                             "curvature; if the inner steps diverged, lower inner_lr)")
        post = FactoredGaussian(center, prec, factor, chol)
        linear = (factor.mT @ (factor @ center.unsqueeze(-1))).squeeze(-1) - (0 if gradient is None else gradient)
        return FactoredGaussian(post.apply_cov(linear + prec * self.loc), prec, factor, chol)


@dataclass(frozen=True)
class FactoredGaussian:
    """``N(mean, (D + F^T F)^{-1})`` with a diagonal ``D`` and a low-rank factor ``F`` (module docstring, Woodbury).

    Attributes:
        mean: ``[..., P]``.
        prior_precision: ``D`` ``[P]`` (> 0).
        factor: ``F`` ``[..., R, P]``.
        chol: lower Cholesky factor ``L`` ``[..., R, R]`` of ``I + F D^{-1} F^T``.
    """

    mean: Tensor
    prior_precision: Tensor
    factor: Tensor
    chol: Tensor

    def apply_cov(self, v: Tensor) -> Tensor:
        """``cov @ v`` for ``v [..., P]`` (broadcast against the batch)."""
        scaled = v / self.prior_precision
        inner = torch.cholesky_solve((self.factor @ scaled.unsqueeze(-1)), self.chol)
        return scaled - (self.factor.mT @ inner).squeeze(-1) / self.prior_precision

    def variance(self) -> Tensor:
        """``[..., P]`` the diagonal of the covariance."""
        w = torch.linalg.solve_triangular(self.chol, self.factor / self.prior_precision, upper=False)
        return 1.0 / self.prior_precision - w.square().sum(-2)

    def log_det_cov(self) -> Tensor:
        """``[...]`` log-determinant of the covariance, nats."""
        return -self.prior_precision.log().sum() - 2 * self.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def sample(self, num: int, generator: torch.Generator) -> Tensor:
        """``[num, ..., P]`` exact reparameterised draws."""
        e1 = torch.randn((num, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
        e2 = torch.randn((num, *self.factor.shape[:-1]), generator=generator, dtype=self.mean.dtype)
        rough = self.prior_precision.sqrt() * e1 + (self.factor.mT @ e2.unsqueeze(-1)).squeeze(-1)
        return self.mean + self.apply_cov(rough)


class VariationalNIW(nn.Module):
    """Learnable ``q(phi) = NIW(m, l, V, n)`` with unconstrained parameters (softplus maps to the constraints).

    Args:
        loc: ``[P]`` initial ``m`` (e.g. a network's initial weights, flattened).
        mean_precision: initial ``l > 0``.
        scale: initial diagonal ``V`` ``[P]`` (> 0) or a full ``[P, P]`` positive-definite matrix.
        dof: initial ``n > d - 1``.
    """

    def __init__(self, loc: Tensor, mean_precision: float, scale: Tensor, dof: float) -> None:
        super().__init__()
        init = NormalInverseWishart.create(loc, mean_precision, scale, dof)
        self._block = 1 if init.diagonal else init.size
        self.loc = nn.Parameter(init.loc.clone())
        self.raw_mean_precision = nn.Parameter(_softplus_inv(init.mean_precision))
        self.raw_dof = nn.Parameter(_softplus_inv(init.dof - (self._block - 1)))
        if init.diagonal:
            self.raw_scale = nn.Parameter(_softplus_inv(init.scale))
        else:
            chol = torch.linalg.cholesky(init.scale)
            self.raw_scale = nn.Parameter(chol.tril(-1) + torch.diag_embed(_softplus_inv(chol.diagonal())))

    def forward(self) -> NormalInverseWishart:
        """The current NIW (fields carry gradients to the raw parameters)."""
        if self.raw_scale.ndim == 1:
            scale = F.softplus(self.raw_scale)
        else:
            chol = self.raw_scale.tril(-1) + torch.diag_embed(F.softplus(self.raw_scale.diagonal()))
            scale = chol @ chol.mT
        dof = F.softplus(self.raw_dof) + (self._block - 1)
        return NormalInverseWishart(self.loc, F.softplus(self.raw_mean_precision), scale, dof)


def _mvdigamma(x: Tensor, d: int) -> Tensor:
    """Multivariate digamma ``psi_d(x) = sum_{j=1..d} psi(x + (1 - j)/2)``."""
    return sum(torch.special.digamma(x + (1 - j) / 2) for j in range(1, d + 1))


def _logdet(scale: Tensor) -> Tensor:
    """``log|V|`` for a diagonal ``[P]`` or full ``[P, P]`` scale."""
    return scale.log().sum() if scale.ndim == 1 else 2 * torch.linalg.cholesky(scale).diagonal().log().sum()


def _softplus_inv(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


def _tensor(x: object, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name}: expected a tensor or numeric array, got {type(x).__name__}: {err}") from None


def _scalar(x: object, name: str, dtype: torch.dtype) -> Tensor:
    t = _tensor(x, name).to(dtype)
    if t.numel() != 1 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected one finite number, got shape {tuple(t.shape)}")
    return t.reshape(())
