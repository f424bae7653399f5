"""Input validation shared by every public entry point.

Each check raises ``ValueError`` (or ``TypeError`` for the wrong kind of object) with a message that
names the argument and says what was expected, so that users see the problem, not a traceback from
deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

#: Tolerance on ``|sum(probs) - 1|`` per row, accepted by every function that takes probabilities.
PROB_SUM_ATOL = 1e-4


def as_tensor(x: object, name: str, *, dtype: torch.dtype | None = None) -> Tensor:
    """Convert a tensor, numpy array or nested list to a tensor without copying where possible.

    Floating inputs keep their precision (float16/bfloat16 are promoted to float32); integer and
    boolean inputs are kept as they are unless ``dtype`` is given.
    """
    if isinstance(x, Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{name}: expected a numeric array, got an object array")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (list, tuple, float, int)):
        try:
            t = torch.as_tensor(np.asarray(x))
        except (ValueError, TypeError) as err:
            raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}: {err}") from None
    else:
        raise TypeError(f"{name}: expected a tensor or numpy array, got {type(x).__name__}")
    if t.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor with data, got one on the 'meta' device")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if dtype is not None:
        t = t.to(dtype)
    return t


def check_float(x: object, name: str, *, ndim: int | Sequence[int] | None = None) -> Tensor:
    """A finite floating tensor with one of the allowed numbers of dimensions, and at least one element."""
    t = _float_tensor(x, name, ndim)
    if not bool(torch.isfinite(t.sum())):  # one pass; NaN/inf propagate (an overflowing sum is re-checked)
        _raise_if_not_finite(t, name)
    return t


def check_probs(x: object, name: str, *, ndim: int | Sequence[int] = (2, 3)) -> Tensor:
    """Probabilities in [0, 1] whose last dimension sums to 1 within ``PROB_SUM_ATOL``.

    Two passes over the data (``aminmax``, then row sums in the input precision), no large temporaries.
    """
    p = _float_tensor(x, name, ndim)
    lo, hi = (float(v) for v in torch.aminmax(p))  # NaN propagates to both
    if not (np.isfinite(lo) and np.isfinite(hi)):
        _raise_if_not_finite(p, name)
    if lo < 0 or hi > 1:
        raise ValueError(f"{name}: expected probabilities in [0, 1], found values in [{lo:.4g}, {hi:.4g}]")
    err = float((p.sum(-1) - 1).abs().max())
    if err > PROB_SUM_ATOL:
        raise ValueError(
            f"{name}: expected each row to sum to 1 (tolerance {PROB_SUM_ATOL:g}), worst row is off by {err:.3g}; "
            "pass logits instead, or normalise"
        )
    return p


def check_labels(x: object, name: str, *, num_classes: int | None = None, length: int | None = None) -> Tensor:
    """Integer class labels ``[N]`` in ``[0, num_classes)``; float arrays holding whole numbers are accepted."""
    t = as_tensor(x, name)
    _check_ndim(t, name, 1)
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty array of labels")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise ValueError(f"{name}: expected integer class labels, got non-integer values")
    elif t.dtype == torch.bool:
        pass
    elif t.dtype.is_complex:
        raise TypeError(f"{name}: expected integer class labels, got {t.dtype}")
    t = t.long()
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name}: expected {length} labels to match the predictions, got {t.shape[0]}")
    if num_classes is not None:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name}: expected labels in [0, {num_classes - 1}], found values in [{lo}, {hi}]")
    return t


def check_same_length(name_a: str, a: Tensor, name_b: str, b: Tensor, *, dim_a: int = 0, dim_b: int = 0) -> None:
    """Raise if ``a.shape[dim_a] != b.shape[dim_b]``."""
    if a.shape[dim_a] != b.shape[dim_b]:
        raise ValueError(
            f"{name_b}: expected length {a.shape[dim_a]} to match {name_a}, got {b.shape[dim_b]} "
            f"(shapes {tuple(a.shape)} and {tuple(b.shape)})"
        )


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """A finite scalar > 0 (or >= 0 with ``allow_zero``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v


def check_level(value: float, name: str) -> float:
    """A probability level strictly inside (0, 1)."""
    v = check_positive(value, name)
    if v >= 1:
        raise ValueError(f"{name}: expected a level in (0, 1), got {value!r}")
    return v


def _float_tensor(x: object, name: str, ndim: int | Sequence[int] | None) -> Tensor:
    t = as_tensor(x, name)
    if t.dtype.is_complex:
        raise TypeError(f"{name}: expected a real floating array, got {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    _check_ndim(t, name, ndim)
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {tuple(t.shape)}")
    return t


def _raise_if_not_finite(t: Tensor, name: str) -> None:
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(f"{name}: expected finite values, found {bad} NaN or inf entries")


def _check_ndim(t: Tensor, name: str, ndim: int | Sequence[int] | None) -> None:
    if ndim is None:
        return
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if t.ndim not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name}: expected a {want} array, got shape {tuple(t.shape)}")
