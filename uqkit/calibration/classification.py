"""Classification metrics on class probabilities ``probs [N, C]`` and integer labels ``[N]``.

Every metric accepts torch tensors or numpy arrays, validates them (finite probabilities whose rows
sum to 1 within ``PROB_SUM_ATOL``, integer labels in ``[0, C)``, equal lengths) and returns a 0-d
float64 tensor. Sums are accumulated in float64 whatever the input precision.

Calibration errors bin the top-label confidence ``max_c p_c``. **Bin-edge convention:** bins are
right-closed, ``(e_{m-1}, e_m]``, except that the first bin also holds 0, so a confidence of exactly
1.0 lands in the last bin and a confidence equal to an edge lands in the bin below it (Guo et al.,
2017). Equal-width edges are ``m / M`` correctly rounded to the confidence's dtype (so 0.3 is an edge
of 10 bins in float32 and float64 alike; ``torch.linspace`` is off by one ulp at some edges);
equal-mass edges are order statistics (see `reliability_curve`). torchmetrics and netcal close bins on the left
instead (and torchmetrics gives a confidence of exactly 1.0 a bin of its own), so they differ from
uqkit only for confidences that sit exactly on an edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Integral

import torch
from torch import Tensor

from uqkit._checks import check_labels, check_probs

_NORMS = ("l1", "l2", "max")
_BINNINGS = ("width", "mass")
_CHUNK_ELEMENTS = 1 << 22  # classwise_ece bins [rows, C] blocks of about this many entries at a time


def top_label(probs: object, labels: object) -> tuple[Tensor, Tensor]:
    """Top-label confidence and correctness, the inputs of selective prediction.

    Args:
        probs: ``[N, C]`` class probabilities.
        labels: ``[N]`` integer labels.

    Returns:
        ``(confidence [N], correct [N])``: ``max_c p_c`` in the probabilities' dtype, and whether the
        argmax (first index on ties) equals the label, as bool.
    """
    p, y = _validate(probs, labels)
    return top_label_of(p, y)


def accuracy(probs: object, labels: object) -> Tensor:
    """Fraction of points whose argmax class (first index on ties) equals the label."""
    _, correct = top_label(probs, labels)
    return torch.tensor(int(correct.count_nonzero()) / correct.numel(), dtype=torch.float64)


def nll(probs: object, labels: object) -> Tensor:
    """Mean negative log probability of the true class, in nats.

    Probabilities are clamped at the dtype's smallest normal number, so a zero probability on the true
    class costs about 87 nats (float32) or 708 nats (float64) instead of infinity.
    """
    p, y = _validate(probs, labels)
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return -torch.log(p_true.clamp_min(torch.finfo(p.dtype).tiny)).sum(dtype=torch.float64) / p.shape[0]


def brier(probs: object, labels: object) -> Tensor:
    """Multiclass Brier score: mean over points of ``sum_c (p_c - 1[y = c])^2``, in ``[0, 2]``.

    This equals scikit-learn's ``brier_score_loss`` on ``[N, C >= 3]`` inputs; on two columns
    scikit-learn halves it by default (``scale_by_half="auto"``), so uqkit's value is twice
    scikit-learn's there. Computed as ``sum_c p_c^2 - 2 p_y + 1``, without a one-hot array.
    """
    p, y = _validate(probs, labels)
    return brier_terms(p, y).mean()


def brier_terms(p: Tensor, y: Tensor) -> Tensor:
    """Per-point Brier scores ``[N]`` float64 from validated ``p [N, C]`` and ``y [N]`` (no checks)."""
    sum_sq = torch.linalg.vector_norm(p, dim=1).to(torch.float64) ** 2  # fastest row sum of squares
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1).to(torch.float64)
    return sum_sq - 2 * p_true + 1


def ece(probs: object, labels: object, *, num_bins: int = 15, norm: str = "l1", binning: str = "width") -> Tensor:
    """Top-label expected calibration error.

    With bins ``B_m`` of the confidence (module docstring for the edges), accuracy ``acc_m`` and mean
    confidence ``conf_m`` per bin, and ``N`` points; empty bins are skipped:

    * ``"l1"``: ``sum_m |B_m|/N * |acc_m - conf_m|`` (Guo et al. 2017);
    * ``"l2"``: ``sqrt(sum_m |B_m|/N * (acc_m - conf_m)^2)``, torchmetrics' root-mean-square convention;
    * ``"max"``: ``max_m |acc_m - conf_m|`` (the MCE).

    Args:
        probs: ``[N, C]`` class probabilities.
        labels: ``[N]`` integer labels.
        num_bins: number of bins M.
        norm: "l1", "l2" or "max".
        binning: "width" (equal-width bins) or "mass" (equal-mass, adaptive bins).
    """
    num_bins = check_num_bins(num_bins)
    _check_choice(norm, "norm", _NORMS)
    _check_choice(binning, "binning", _BINNINGS)
    conf, correct = top_label(probs, labels)
    return ece_from_top_label(conf, correct, num_bins=num_bins, norm=norm, binning=binning)


def ece_from_top_label(conf: Tensor, correct: Tensor, *, num_bins: int, norm: str = "l1", binning: str = "width") -> Tensor:
    """`ece` from already validated top-label confidences ``[N]`` and correctness ``[N]`` (no checks)."""
    _, count, hits, conf_sum = _binned(conf, correct, num_bins, binning)
    gap = (hits - conf_sum).abs()  # = count * |acc - conf|
    if norm == "l1":
        return gap.sum() / conf.numel()
    full = count > 0
    if norm == "l2":
        return torch.sqrt((gap[full] ** 2 / count[full]).sum() / conf.numel())
    return (gap[full] / count[full]).max()


def debiased_squared_ece(probs: object, labels: object, *, num_bins: int = 15) -> Tensor:
    """Unbiased estimate of the binned squared top-label calibration error (Kumar et al., NeurIPS 2019, sec. 5).

    With the equal-width bins of `ece`, ``n_b`` points, accuracy ``a_b`` and mean confidence ``c_b`` in
    bin ``b`` of ``N`` points:

        sum_b n_b / N * [(a_b - c_b)^2 - a_b (1 - a_b) / (n_b - 1)]

    The subtracted term removes the expected ``Var(a_b)`` that inflates the plain ``(a_b - c_b)^2``, which
    makes the ECE of a small test set large even for a calibrated model. The estimate can be negative
    (its square root, where positive, is a debiased l2-ECE); a bin holding one point keeps its plain term
    (its variance cannot be estimated), so such bins still bias it upwards.

    Args:
        probs: ``[N, C]`` class probabilities.
        labels: ``[N]`` integer labels.
        num_bins: number of equal-width bins.
    """
    num_bins = check_num_bins(num_bins)
    conf, correct = top_label(probs, labels)
    _, count, hits, conf_sum = _binned(conf, correct, num_bins, "width")
    full = count > 0
    acc, mean_conf, n = hits[full] / count[full], conf_sum[full] / count[full], count[full]
    variance = torch.where(n > 1, acc * (1 - acc) / (n - 1).clamp_min(1), torch.zeros_like(acc))
    return (n * ((acc - mean_conf) ** 2 - variance)).sum() / conf.numel()


def mce(probs: object, labels: object, *, num_bins: int = 15) -> Tensor:
    """Maximum calibration error over non-empty equal-width bins: ``ece(..., norm="max")``."""
    return ece(probs, labels, num_bins=num_bins, norm="max")


def adaptive_ece(probs: object, labels: object, *, num_bins: int = 15) -> Tensor:
    """ECE with equal-mass bins: ``ece(..., binning="mass")`` (see `reliability_curve` for the edges).

    netcal's ``ECE(equal_intervals=False)`` places its edges at linearly interpolated quantiles and
    closes bins on the left; that moves at most one point across each edge, so the two differ by at
    most ``2 (M - 1) / N`` and agree exactly when M divides N and confidences are distinct. netcal's
    ``ACE`` is a different quantity: the unweighted mean of ``|acc_m - conf_m|`` over non-empty bins.
    """
    return ece(probs, labels, num_bins=num_bins, binning="mass")


def classwise_ece(probs: object, labels: object, *, num_bins: int = 15) -> Tensor:
    """Classwise ECE (Kull et al., 2019): the mean over classes of the L1 ECE of ``p_c`` against ``1[y = c]``.

    Each class's probabilities ``p[:, c]`` are binned in M equal-width right-closed bins over all N
    points; ``classwise_ece = 1/C sum_c sum_m |B_cm|/N * |freq_cm - conf_cm|``, where ``freq_cm`` is
    the fraction of points in the bin whose label is c. Rows are processed in blocks, so no
    ``[N, C]`` bin-index or one-hot array is held in full.
    """
    num_bins = check_num_bins(num_bins)
    p, y = _validate(probs, labels)
    hits, conf_sum = classwise_bin_sums(p, y, num_bins=num_bins)
    return classwise_ece_from_sums(hits, conf_sum, num_points=p.shape[0], num_bins=num_bins)


def classwise_bin_sums(p: Tensor, y: Tensor, *, num_bins: int) -> tuple[Tensor, Tensor]:
    """Per (class, bin) label counts and probability sums ``[C * M]`` float64, from validated ``p [N, C]``, ``y [N]``.

    Sums over row chunks add up, so large inputs can be processed chunk by chunk (see `evaluate`).
    """
    num_points, num_classes = p.shape
    inner = _width_edges(num_bins, p)[1:-1]
    offsets = torch.arange(num_classes, device=p.device) * num_bins  # flat bin id = class * M + bin
    hits = torch.zeros(num_classes * num_bins, dtype=torch.float64, device=p.device)
    conf_sum = torch.zeros_like(hits)
    for rows in _row_blocks(num_points, num_classes):
        block = p[rows]
        flat = torch.bucketize(block, inner).add_(offsets)  # [rows, C] right-closed bins, as in `_binned`
        conf_sum.scatter_add_(0, flat.view(-1), block.reshape(-1).to(torch.float64))
        label_bins = flat.gather(1, y[rows].unsqueeze(1)).squeeze(1)  # the one bin per row whose class is the label
        hits.scatter_add_(0, label_bins, _ones_like(label_bins))
    return hits, conf_sum


def classwise_ece_from_sums(hits: Tensor, conf_sum: Tensor, *, num_points: int, num_bins: int) -> Tensor:
    """`classwise_ece` from the sums of `classwise_bin_sums` (added over chunks) and the number of points."""
    per_class = (hits - conf_sum).abs().view(-1, num_bins).sum(1) / num_points
    return per_class.mean()


def reliability_curve(probs: object, labels: object, *, num_bins: int = 15, binning: str = "width") -> dict[str, Tensor]:
    """Per-bin accuracy and confidence of the top label, for reliability diagrams.

    Equal-mass edges (``binning="mass"``) are ``e_0 = 0``, ``e_M = 1`` and ``e_m = c_(ceil(m N / M))``,
    the ``ceil(m N / M)``-th smallest confidence; with right-closed bins, bin m then holds the points
    of ranks ``ceil((m-1) N / M) .. ceil(m N / M) - 1`` (sizes differ by at most one) when the
    confidences are distinct, while tied confidences always share a bin.

    Returns:
        ``edges [M + 1]`` (float64), ``confidence [M]`` and ``accuracy [M]`` (float64 bin means, NaN
        for empty bins) and ``count [M]`` (int64).
    """
    num_bins = check_num_bins(num_bins)
    _check_choice(binning, "binning", _BINNINGS)
    conf, correct = top_label(probs, labels)
    return curve_from_top_label(conf, correct, num_bins=num_bins, binning=binning)


def curve_from_top_label(conf: Tensor, correct: Tensor, *, num_bins: int, binning: str = "width") -> dict[str, Tensor]:
    """`reliability_curve` from already validated top-label confidences and correctness ``[N]`` (no checks)."""
    edges, count, hits, conf_sum = _binned(conf, correct, num_bins, binning)
    return {
        "edges": edges.to(torch.float64),
        "confidence": conf_sum / count,
        "accuracy": hits / count,
        "count": count.to(torch.int64),
    }


# ------------------------------------------------------------------------------------- internals
def _validate(probs: object, labels: object) -> tuple[Tensor, Tensor]:
    p = check_probs(probs, "probs", ndim=2)
    y = check_labels(labels, "labels", num_classes=p.shape[1], length=p.shape[0])
    return p, y.to(p.device)


def top_label_of(p: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """`top_label` of validated ``p [N, C]`` and ``y [N]`` (no checks)."""
    conf, pred = p.max(dim=1)
    return conf, pred == y


def _binned(conf: Tensor, correct: Tensor, num_bins: int, binning: str) -> tuple[Tensor, ...]:
    """``edges [M + 1]`` in ``conf``'s dtype and per-bin ``(count, number correct, confidence sum)``, ``[M]`` float64."""
    if binning == "width":
        edges = _width_edges(num_bins, conf)
    else:
        num_points = conf.numel()
        ranks = -(-torch.arange(1, num_bins, device=conf.device) * num_points // num_bins) - 1  # ceil(m N / M) - 1
        edges = torch.cat([conf.new_zeros(1), conf.sort().values[ranks], conf.new_ones(1)])
    idx = torch.bucketize(conf, edges[1:-1])  # (e_{m-1}, e_m] -> m - 1; <= e_1 -> 0; > e_{M-1} -> M - 1
    count, hits, conf_sum = (_bin_sums(idx, values, num_bins) for values in (_ones_like(idx), correct, conf))
    return edges, count, hits, conf_sum


def _bin_sums(idx: Tensor, values: Tensor, num_bins: int) -> Tensor:
    """``[M]`` float64 sums of ``values`` per bin index (scatter_add_: unlike bincount, no min/max passes over idx)."""
    out = torch.zeros(num_bins, dtype=torch.float64, device=idx.device)
    return out.scatter_add_(0, idx, values.to(torch.float64))


def _ones_like(idx: Tensor) -> Tensor:
    return torch.ones((), dtype=torch.float64, device=idx.device).expand(idx.shape)


def _width_edges(num_bins: int, like: Tensor) -> Tensor:
    """``[M + 1]`` equal-width edges ``m / M``, correctly rounded to ``like``'s dtype."""
    return torch.arange(num_bins + 1, dtype=like.dtype, device=like.device) / num_bins


def _row_blocks(num_rows: int, num_cols: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // num_cols)
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def check_num_bins(num_bins: object) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, Integral):
        raise TypeError(f"num_bins: expected a positive integer, got {type(num_bins).__name__}")
    if num_bins < 1:
        raise ValueError(f"num_bins: expected a positive integer, got {num_bins}")
    return int(num_bins)


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
