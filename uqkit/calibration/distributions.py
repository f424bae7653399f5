"""Predictive distribution families that torch lacks pieces of.

`StudentT` is ``torch.distributions.StudentT`` plus ``cdf`` and ``icdf`` (torch has neither), so
Student-t predictives (deep evidential regression, t processes) get PIT values, quantiles and
intervals from `Predictive`. The CDF is the regularised incomplete beta function,
``F(t; v) = 1 - I_{v/(v+t^2)}(v/2, 1/2) / 2`` for ``t >= 0``, evaluated by ``scipy.special.stdtr``
(and its inverse ``stdtrit``) on CPU copies: values only, no gradient.
"""

from __future__ import annotations

import torch
from scipy import special
from torch import Tensor
from torch.distributions import StudentT as _TorchStudentT


class StudentT(_TorchStudentT):
    """Student-t with location ``loc``, scale ``scale`` and ``df`` degrees of freedom, with ``cdf``/``icdf``.

    Args:
        df: degrees of freedom (> 0).
        loc: location, in target units.
        scale: scale (> 0), in target units.
    """

    def cdf(self, value: Tensor) -> Tensor:
        """``P(Y <= value)``, broadcast against the batch shape (no gradient)."""
        if self._validate_args:
            self._validate_sample(value)
        t = (value - self.loc) / self.scale
        df, t = torch.broadcast_tensors(self.df, t)
        return _scipy(special.stdtr, df, t, like=t)

    def icdf(self, value: Tensor) -> Tensor:
        """The ``value``-quantile (``value`` in (0, 1)), broadcast against the batch shape (no gradient)."""
        df, level = torch.broadcast_tensors(self.df, torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device))
        return self.loc + self.scale * _scipy(special.stdtrit, df, level, like=level)


def _scipy(fn: object, a: Tensor, b: Tensor, *, like: Tensor) -> Tensor:
    out = fn(a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy())  # type: ignore[operator]
    return torch.as_tensor(out, dtype=like.dtype, device=like.device)
