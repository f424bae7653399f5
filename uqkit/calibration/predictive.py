"""`Predictive`: the one type that scoring reads.

Every engine ends in a `Predictive`: a weighted mixture over ``S`` draws (MCMC samples, ensemble
members, VI samples; ``S = 1`` for a single model) of per-point predictive distributions.

* Classification: per-draw class probabilities ``probs [S, N, C]`` (and the logits, when built from
  logits, for max-logit and energy OOD scores).
* Regression: a `torch.distributions.Distribution` with batch shape ``[S, N]`` or ``[S, N, D]``.
  Gaussian draws (``Predictive.gaussian``) are the common case; Student-t processes, bar (Riemann)
  distributions and anything else that implements ``log_prob``/``cdf`` (and ideally ``icdf``,
  ``mean``, ``variance``, ``entropy``) plug in through ``Predictive.from_distribution``.

Mixture weights are ``softmax(log_weights)`` (uniform when ``log_weights`` is None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal

from uqkit._checks import as_tensor, check_float, check_labels, check_level, check_probs

Task = Literal["classification", "regression"]

_QUANTILE_ITERS = 100  # bisection steps: the bracket shrinks by 2**-100, far below float64 resolution


@dataclass(frozen=True)
class Predictive:
    """A mixture over ``S`` draws of per-point predictive distributions.

    Use the constructors rather than the fields: `from_logits`, `from_probs`, `gaussian`,
    `from_distribution`.

    Attributes:
        task: "classification" or "regression".
        probs: ``[S, N, C]`` per-draw class probabilities (classification).
        logits: ``[S, N, C]`` per-draw logits, when known (classification).
        dist: per-draw distribution with batch shape ``[S, N]`` or ``[S, N, D]`` (regression).
        log_weights: ``[S]`` unnormalised log mixture weights; None means uniform.
    """

    task: Task
    probs: Tensor | None = None
    logits: Tensor | None = None
    dist: Distribution | None = None
    log_weights: Tensor | None = None

    def __post_init__(self) -> None:
        if self.task == "classification":
            if self.probs is None or self.probs.ndim != 3:
                raise ValueError("probs: a classification Predictive needs probs of shape [S, N, C]")
        elif self.task == "regression":
            if self.dist is None or len(self.dist.batch_shape) not in (2, 3):
                raise ValueError("dist: a regression Predictive needs a distribution with batch shape [S, N] or [S, N, D]")
        else:
            raise ValueError(f"task: expected 'classification' or 'regression', got {self.task!r}")
        if self.log_weights is not None:
            lw = self.log_weights
            if lw.shape != (self.num_draws,) or not bool(torch.isfinite(lw).any()) or bool(torch.isnan(lw).any()):
                raise ValueError(f"log_weights: expected {self.num_draws} values, not all -inf and no NaN, got shape {tuple(lw.shape)}")

    # ----------------------------------------------------------------------------------- builders
    @classmethod
    def from_logits(cls, logits: object, *, log_weights: object | None = None) -> Predictive:
        """Classification from logits ``[N, C]`` (one model) or ``[S, N, C]`` (S draws)."""
        z = check_float(logits, "logits", ndim=(2, 3))
        z = z if z.ndim == 3 else z.unsqueeze(0)
        if z.shape[-1] < 2:
            raise ValueError(f"logits: expected at least 2 classes in the last dimension, got shape {tuple(z.shape)}")
        return cls("classification", probs=torch.softmax(z, dim=-1), logits=z, log_weights=_weights_arg(log_weights))

    @classmethod
    def from_probs(cls, probs: object, *, log_weights: object | None = None) -> Predictive:
        """Classification from probabilities ``[N, C]`` or ``[S, N, C]`` whose rows sum to 1."""
        p = check_probs(probs, "probs", ndim=(2, 3))
        p = p if p.ndim == 3 else p.unsqueeze(0)
        if p.shape[-1] < 2:
            raise ValueError(f"probs: expected at least 2 classes in the last dimension, got shape {tuple(p.shape)}")
        return cls("classification", probs=p, log_weights=_weights_arg(log_weights))

    @classmethod
    def gaussian(cls, mean: object, var: object, *, log_weights: object | None = None) -> Predictive:
        """Regression: a mixture of Gaussians per point.

        Args:
            mean: ``[N]`` (one model), ``[S, N]`` or ``[S, N, D]``.
            var: same shape as ``mean`` (or broadcastable to it); variances > 0, in squared target units.
            log_weights: optional ``[S]``.
        """
        m = check_float(mean, "mean", ndim=(1, 2, 3))
        v = check_float(var, "var")
        try:
            v = torch.broadcast_to(v, m.shape)
        except RuntimeError:
            raise ValueError(f"var: expected a shape broadcastable to mean's {tuple(m.shape)}, got {tuple(v.shape)}") from None
        if bool((v <= 0).any()):
            raise ValueError(f"var: expected variances > 0, found minimum {float(v.min()):.3g}")
        if m.ndim == 1:
            m, v = m.unsqueeze(0), v.unsqueeze(0)
        dtype = torch.promote_types(m.dtype, v.dtype)
        m, v = m.to(dtype), v.to(dtype)
        return cls("regression", dist=Normal(m, v.sqrt()), log_weights=_weights_arg(log_weights))

    @classmethod
    def from_distribution(cls, dist: Distribution, *, log_weights: object | None = None) -> Predictive:
        """Regression from any distribution with batch shape ``[S, N]`` or ``[S, N, D]``."""
        if not isinstance(dist, Distribution):
            raise TypeError(f"dist: expected a torch.distributions.Distribution, got {type(dist).__name__}")
        return cls("regression", dist=dist, log_weights=_weights_arg(log_weights))

    # ------------------------------------------------------------------------------------- shapes
    @property
    def num_draws(self) -> int:
        """S, the number of mixture components."""
        return int(self.probs.shape[0] if self.task == "classification" else self.dist.batch_shape[0])

    @property
    def num_points(self) -> int:
        """N, the number of predicted points."""
        return int(self.probs.shape[1] if self.task == "classification" else self.dist.batch_shape[1])

    @property
    def num_classes(self) -> int:
        """C (classification only)."""
        self._require("classification", "num_classes")
        return int(self.probs.shape[-1])

    def weights(self) -> Tensor:
        """``[S]`` normalised mixture weights."""
        ref = self.probs if self.probs is not None else self.dist.mean
        if self.log_weights is None:
            return torch.full((self.num_draws,), 1.0 / self.num_draws, dtype=ref.dtype, device=ref.device)
        return torch.softmax(self.log_weights.to(ref.dtype), dim=0)

    # ------------------------------------------------------------------------------ summaries
    def mixture_probs(self) -> Tensor:
        """``[N, C]`` class probabilities of the mixture (classification)."""
        self._require("classification", "mixture_probs")
        if self.num_draws == 1:
            return self.probs[0]
        return torch.einsum("s,snc->nc", self.weights(), self.probs)

    def mean(self) -> Tensor:
        """Mixture mean: ``[N, C]`` probabilities (classification) or ``[N]``/``[N, D]`` (regression)."""
        if self.task == "classification":
            return self.mixture_probs()
        return _wsum(self.weights(), self.dist.mean)

    def variance(self) -> Tensor:
        """Total predictive variance (law of total variance), ``[N]``/``[N, D]`` (regression).

        For classification, the variance of each class probability across draws, ``[N, C]``.
        """
        w = self.weights()
        if self.task == "classification":
            mu = self.mixture_probs()
            return _wsum(w, (self.probs - mu) ** 2)
        return self.aleatoric_variance() + self.epistemic_variance()

    def aleatoric_variance(self) -> Tensor:
        """Expected per-draw variance ``E_s[Var(y | s)]`` (regression), ``[N]``/``[N, D]``."""
        self._require("regression", "aleatoric_variance")
        return _wsum(self.weights(), self.dist.variance)

    def epistemic_variance(self) -> Tensor:
        """Variance of the per-draw means ``Var_s[E(y | s)]`` (regression), ``[N]``/``[N, D]``."""
        self._require("regression", "epistemic_variance")
        w, mu_s = self.weights(), self.dist.mean
        return _wsum(w, (mu_s - _wsum(w, mu_s)) ** 2)  # centred, so no cancellation against the squared mean

    def log_prob(self, y: object) -> Tensor:
        """``[N]`` log predictive density of the mixture at the observed targets (log-mean-exp over S).

        Args:
            y: ``[N]`` integer labels (classification), or targets ``[N]``/``[N, D]`` (regression);
                for regression with ``D`` outputs the log density is summed over ``D``.
        """
        logw = torch.log(self.weights())
        if self.task == "classification":
            labels = check_labels(y, "y", num_classes=self.num_classes, length=self.num_points)
            if self.logits is not None:
                per_draw = torch.log_softmax(self.logits, -1)
            else:
                per_draw = torch.log(self.probs)
            idx = labels.to(per_draw.device).view(1, -1, 1).expand(self.num_draws, -1, 1)
            lp = per_draw.gather(-1, idx).squeeze(-1)  # [S, N]
        else:
            t = self._targets(y)
            lp = self.dist.log_prob(t.unsqueeze(0).to(self.dist.mean.dtype))
            if lp.ndim == 3:
                lp = lp.sum(-1)
        return torch.logsumexp(logw.unsqueeze(-1) + lp, dim=0)

    def cdf(self, y: object) -> Tensor:
        """Mixture CDF at ``y`` (regression), same shape as ``y`` (``[N]`` or ``[N, D]``)."""
        self._require("regression", "cdf")
        t = self._targets(y)
        return _wsum(self.weights(), self.dist.cdf(t.unsqueeze(0).to(self.dist.mean.dtype)))

    def quantile(self, q: float) -> Tensor:
        """The ``q``-quantile of each point's predictive distribution (regression), ``[N]``/``[N, D]``.

        Exact ``icdf`` for a single draw when the family has one; otherwise bisection on the mixture CDF.
        """
        self._require("regression", "quantile")
        q = check_level(q, "q")
        if self.num_draws == 1:
            try:
                level = torch.full(self.dist.batch_shape, q, dtype=self.dist.mean.dtype, device=self.dist.mean.device)
                return self.dist.icdf(level)[0]
            except NotImplementedError:
                pass
        return self._bisect_quantile(q)

    def interval(self, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Central prediction interval ``(lower, upper)`` holding ``level`` of the mass (regression)."""
        level = check_level(level, "level")
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def entropy(self) -> Tensor:
        """``[N]`` predictive (total) entropy in nats.

        Classification: ``H[sum_s w_s p_s]``. Regression: entropy of the moment-matched Gaussian,
        ``0.5 * log(2*pi*e*Var)`` summed over ``D`` (an upper bound on the mixture's entropy).
        """
        if self.task == "classification":
            return _categorical_entropy(self.mixture_probs())
        h = 0.5 * torch.log(2 * math.pi * math.e * self.variance())
        return h if h.ndim == 1 else h.sum(-1)

    def expected_entropy(self) -> Tensor:
        """``[N]`` expected per-draw entropy ``E_s H[p(y | s)]`` (aleatoric part), in nats."""
        if self.task == "classification":
            return _wsum(self.weights(), _categorical_entropy(self.probs))
        h = self.dist.entropy()
        h = h if h.ndim == 2 else h.sum(-1)
        return _wsum(self.weights(), h)

    def mutual_information(self) -> Tensor:
        """``[N]`` mutual information between the prediction and the draw (BALD; epistemic part), in nats.

        ``entropy() - expected_entropy()``, clamped at 0 against round-off. For regression this uses the
        moment-matched entropy above, so it is an approximation (exact in the single-draw case: 0).
        """
        return (self.entropy() - self.expected_entropy()).clamp_min(0)

    # ------------------------------------------------------------------------------- internals
    def _require(self, task: Task, what: str) -> None:
        if self.task != task:
            raise ValueError(f"{what}: only defined for {task} predictives, this one is {self.task}")

    def _targets(self, y: object) -> Tensor:
        t = check_float(y, "y", ndim=len(self.dist.batch_shape) - 1)
        want = tuple(self.dist.batch_shape[1:])
        if tuple(t.shape) != want:
            raise ValueError(f"y: expected shape {want} to match the predictive, got {tuple(t.shape)}")
        return t.to(self.dist.mean.device)

    def _bisect_quantile(self, q: float) -> Tensor:
        mean, sd = self.dist.mean, self.dist.variance.sqrt()
        floor, ceiling = _support_bounds(self.dist)
        lo = (mean - 10 * sd).amin(0).clamp(floor, ceiling)
        hi = (mean + 10 * sd).amax(0).clamp(floor, ceiling)
        w = self.weights()
        # Widen the bracket until it holds the quantile (heavy tails may need it), never past the support.
        for _ in range(60):
            c_lo = _wsum(w, self.dist.cdf(lo.unsqueeze(0)))
            c_hi = _wsum(w, self.dist.cdf(hi.unsqueeze(0)))
            if bool((c_lo <= q).all()) and bool((c_hi >= q).all()):
                break
            span = (hi - lo).clamp_min(1e-12)
            lo = torch.where(c_lo > q, lo - span, lo).clamp(floor, ceiling)
            hi = torch.where(c_hi < q, hi + span, hi).clamp(floor, ceiling)
        for _ in range(_QUANTILE_ITERS):
            mid = 0.5 * (lo + hi)
            below = _wsum(w, self.dist.cdf(mid.unsqueeze(0))) < q
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)


def _support_bounds(dist: torch.distributions.Distribution) -> tuple[float, float]:
    """The support's bounds nudged one float inside it (``-inf``/``inf`` where unbounded), for ``clamp``."""
    dtype = dist.mean.dtype
    lower = getattr(dist.support, "lower_bound", -math.inf)
    upper = getattr(dist.support, "upper_bound", math.inf)
    inf = torch.tensor(math.inf, dtype=dtype)
    floor = torch.nextafter(torch.as_tensor(lower, dtype=dtype), inf)
    ceiling = torch.nextafter(torch.as_tensor(upper, dtype=dtype), -inf)
    return float(floor), float(ceiling)


def _wsum(w: Tensor, x: Tensor) -> Tensor:
    """Weighted sum over the leading draw dimension: ``sum_s w[s] * x[s]``."""
    return torch.tensordot(w.to(x.dtype), x, dims=([0], [0]))


def _categorical_entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1)


def _weights_arg(log_weights: object | None) -> Tensor | None:
    if log_weights is None:
        return None
    lw = as_tensor(log_weights, "log_weights")
    if lw.ndim != 1:
        raise ValueError(f"log_weights: expected a 1-D array [S], got shape {tuple(lw.shape)}")
    return lw.to(torch.float64) if not lw.is_floating_point() else lw
