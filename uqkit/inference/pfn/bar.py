"""The bar ("Riemann") distribution head of a PFN, with half-normal tails (full support).

``K`` buckets with borders ``b_0 < ... < b_K`` (equal prior mass, from `borders_from_samples`) and
bucket probabilities ``p = softmax(logits)``. Interior bucket ``k`` has density ``p_k / w_k`` on
``[b_k, b_{k+1})`` with width ``w_k = b_{k+1} - b_k``, so its log density includes ``-log w_k``. The
two edge buckets are replaced by half-normal tails that reach to infinity: left of ``b_1`` the density
is ``p_0 * HalfNormal_s0(b_1 - y)``, right of ``b_{K-1}`` it is ``p_{K-1} * HalfNormal_s(y - b_{K-1})``,
each scale chosen so that half the tail's mass lies within the original edge bucket
(``s = w / Phi^{-1}(0.75)``). A target far outside the borders therefore gets a finite, quadratically
decaying log density rather than an error or a clamp.

After Müller et al., "Transformers Can Do Bayesian Inference" (ICLR 2022) and the
``FullSupportBarDistribution`` of automl/PFNs (own implementation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

_HALF_NORMAL_MEDIAN = 0.6744897501960817  # Phi^{-1}(0.75), the median of HalfNormal(1)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def borders_from_samples(y: Tensor, num_buckets: int) -> Tensor:
    """``[K + 1]`` equal-mass bucket borders from prior target samples ``y`` (any shape, float64).

    Interior borders are midpoints of adjacent order statistics at multiples of ``n / K``; the outer
    borders are the sample minimum and maximum.
    """
    s = torch.sort(y.reshape(-1).to(torch.float64)).values
    n = s.numel()
    if num_buckets < 3 or n < 2 * num_buckets:
        raise ValueError(f"num_buckets: expected 3 <= K <= n / 2 for n = {n} samples, got {num_buckets}")
    idx = (torch.arange(1, num_buckets) * n) // num_buckets
    inner = 0.5 * (s[idx - 1] + s[idx])
    borders = torch.cat([s[:1], inner, s[-1:]])
    if not bool((borders.diff() > 0).all()):
        raise ValueError("y: prior samples have ties; bucket borders must be strictly increasing")
    return borders


class BarDistribution(Distribution):
    """Per-point bar distribution with half-normal tails; batch shape ``logits.shape[:-1]``.

    Args:
        logits: ``[..., K]`` unnormalised log bucket probabilities.
        borders: ``[K + 1]`` strictly increasing bucket borders (target units).
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, logits: Tensor, borders: Tensor) -> None:
        if borders.ndim != 1 or logits.shape[-1] != borders.numel() - 1:
            raise ValueError(f"logits: expected last dimension len(borders) - 1 = {borders.numel() - 1}, "
                             f"got shape {tuple(logits.shape)}")
        self.borders = borders.to(logits.dtype)
        self.log_probs = torch.log_softmax(logits, dim=-1)
        self.probs = self.log_probs.exp()
        self.widths = self.borders.diff()
        self.left_scale = self.widths[0] / _HALF_NORMAL_MEDIAN
        self.right_scale = self.widths[-1] / _HALF_NORMAL_MEDIAN
        super().__init__(batch_shape=logits.shape[:-1], validate_args=False)

    def _bucket(self, y: Tensor) -> Tensor:
        """Index of the bucket holding ``y`` (values beyond the outer borders go to the edge buckets)."""
        return torch.searchsorted(self.borders[1:-1].contiguous(), y.contiguous(), right=True)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log density (per unit of ``y``), broadcasting ``value`` against the batch shape."""
        y = torch.as_tensor(value, dtype=self.log_probs.dtype).expand(self.batch_shape)
        k = self._bucket(y)
        logp = self.log_probs.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        inner = logp - torch.log(self.widths[k])
        b, s_l, s_r = self.borders, self.left_scale, self.right_scale
        left = logp + _log_half_normal((b[1] - y).clamp_min(0), s_l)
        right = logp + _log_half_normal((y - b[-2]).clamp_min(0), s_r)
        return torch.where(k == 0, left, torch.where(k == self.widths.numel() - 1, right, inner))

    def cdf(self, value: Tensor) -> Tensor:
        """``P(Y <= value)``, broadcasting ``value`` against the batch shape."""
        y = torch.as_tensor(value, dtype=self.probs.dtype).expand(self.batch_shape)
        k = self._bucket(y)
        before = (self.probs.cumsum(-1) - self.probs).gather(-1, k.unsqueeze(-1)).squeeze(-1)
        pk = self.probs.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        b = self.borders
        inner = before + pk * ((y - b[k]) / self.widths[k])
        p0, plast = self.probs[..., 0], self.probs[..., -1]
        left = p0 * 2 * torch.special.ndtr(-(b[1] - y).clamp_min(0) / self.left_scale)
        right = 1 - plast * 2 * torch.special.ndtr(-(y - b[-2]).clamp_min(0) / self.right_scale)
        return torch.where(k == 0, left, torch.where(k == self.widths.numel() - 1, right, inner))

    def icdf(self, value: Tensor) -> Tensor:
        """The ``value``-quantile (``0 < value < 1``), inverting `cdf` bucket by bucket."""
        q = torch.as_tensor(value, dtype=self.probs.dtype).expand(self.batch_shape)
        cum = self.probs.cumsum(-1)
        last = self.widths.numel() - 1
        k = torch.searchsorted(cum.contiguous(), q.unsqueeze(-1).contiguous()).squeeze(-1).clamp_max(last)
        pk = self.probs.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        before = cum.gather(-1, k.unsqueeze(-1)).squeeze(-1) - pk
        b = self.borders
        inner = b[k] + self.widths[k] * ((q - before) / pk.clamp_min(torch.finfo(pk.dtype).tiny))
        p0, plast = self.probs[..., 0], self.probs[..., -1]
        left = b[1] + self.left_scale * torch.special.ndtri((q / (2 * p0)).clamp(max=0.5))
        right = b[-2] - self.right_scale * torch.special.ndtri(((1 - q) / (2 * plast)).clamp(max=0.5))
        return torch.where(k == 0, left, torch.where(k == last, right, inner))

    @property
    def mean(self) -> Tensor:
        return (self.probs * self._bucket_means()).sum(-1)

    @property
    def variance(self) -> Tensor:
        second = (self.probs * self._bucket_second_moments()).sum(-1)
        return (second - self.mean.square()).clamp_min(0)

    def _bucket_means(self) -> Tensor:
        """``[K]`` mean of y within each bucket (midpoints; half-normal means at the edges)."""
        b = self.borders
        mids = 0.5 * (b[:-1] + b[1:])
        mids[0] = b[1] - self.left_scale * _SQRT_2_OVER_PI
        mids[-1] = b[-2] + self.right_scale * _SQRT_2_OVER_PI
        return mids

    def _bucket_second_moments(self) -> Tensor:
        """``[K]`` ``E[y^2]`` within each bucket: ``(a^2 + ab + b^2) / 3`` inside, half-normal at the edges."""
        lo, hi = self.borders[:-1], self.borders[1:]
        m2 = ((lo.square() + lo * hi + hi.square()) / 3).clone()
        b1, bk = self.borders[1], self.borders[-2]
        m2[0] = b1.square() - 2 * b1 * self.left_scale * _SQRT_2_OVER_PI + self.left_scale.square()
        m2[-1] = bk.square() + 2 * bk * self.right_scale * _SQRT_2_OVER_PI + self.right_scale.square()
        return m2


def _log_half_normal(t: Tensor, scale: Tensor) -> Tensor:
    """Log density of HalfNormal(scale) at ``t >= 0``."""
    return math.log(_SQRT_2_OVER_PI) - torch.log(scale) - 0.5 * (t / scale).square()

