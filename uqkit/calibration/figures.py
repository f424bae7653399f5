"""Report figures: each function draws one plot and returns it as PNG bytes.

Matplotlib runs on the non-interactive Agg backend, so figures render on machines without a screen.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from torch import Tensor

_DPI = 110
_MAX_CURVE_POINTS = 4000


def _new_figure(width: float = 5.0, height: float = 3.6, rows: int = 1, *, ratios: Sequence[float] | None = None):
    """A pyplot-free Figure (no global state, no backend switching) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    if rows == 1:
        return fig, fig.subplots()
    return fig, fig.subplots(rows, 1, sharex=True, gridspec_kw={"height_ratios": ratios} if ratios else None)


def _to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _thin(x: Tensor | np.ndarray, y: Tensor | np.ndarray, max_points: int = _MAX_CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of a curve, first and last kept (a plot needs no more)."""
    x, y = _np(x), _np(y)
    if len(x) <= max_points:
        return x, y
    idx = np.linspace(0, len(x) - 1, max_points).round().astype(np.int64)
    return x[idx], y[idx]


def reliability_diagram(curve: Mapping[str, Tensor], *, ece: float, title: str = "Reliability") -> bytes:
    """Per-bin accuracy against confidence (bars) over the diagonal, with the confidence histogram below.

    Args:
        curve: output of ``reliability_curve``: ``edges [M+1]``, ``confidence [M]``, ``accuracy [M]``, ``count [M]``.
        ece: the top-label ECE to print in the legend.
    """
    edges, conf, acc, count = (_np(curve[k]) for k in ("edges", "confidence", "accuracy", "count"))
    centers, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = count > 0
    fig, (ax, hist) = _new_figure(5.0, 5.0, rows=2, ratios=(3, 1))
    ax.plot([0, 1], [0, 1], ls="--", c="0.5", lw=1, label="perfect calibration")
    ax.bar(centers[filled], acc[filled], width=widths[filled], edgecolor="k", color="#4c72b0", alpha=0.85,
           label=f"accuracy (ECE = {ece:.3f})")
    gap_lo = np.minimum(acc[filled], conf[filled])
    ax.bar(centers[filled], np.abs(conf[filled] - acc[filled]), bottom=gap_lo, width=widths[filled],
           color="#dd8452", alpha=0.5, edgecolor="#dd8452", hatch="//", label="gap to mean confidence")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy"), ax.set_title(title), ax.legend(loc="upper left", fontsize=8)
    hist.bar(centers, count / max(count.sum(), 1), width=widths, color="0.6", edgecolor="k")
    hist.set_xlabel("confidence (max probability)"), hist.set_ylabel("fraction")
    return _to_png(fig)


def risk_coverage_plot(coverage: Tensor, risk: Tensor, *, aurc: float) -> bytes:
    """Selective risk against coverage when the least confident points are rejected first."""
    fig, ax = _new_figure()
    ax.plot(*_thin(coverage, risk), c="#4c72b0", lw=1.5, label=f"model (AURC = {aurc:.4f})")
    ax.set_xlim(0, 1), ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (fraction of points kept)"), ax.set_ylabel("selective risk (error rate)")
    ax.set_title("Risk-coverage"), ax.legend(loc="upper left", fontsize=8)
    return _to_png(fig)


def ood_histogram(scores_in: Tensor, scores_out: Tensor, *, score_name: str) -> bytes:
    """Overlaid histograms of the OOD score on in-distribution and OOD inputs."""
    s_in, s_out = _np(scores_in), _np(scores_out)
    lo, hi = float(min(s_in.min(), s_out.min())), float(max(s_in.max(), s_out.max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    fig, ax = _new_figure()
    ax.hist(s_in, bins=bins, alpha=0.6, density=True, label="in-distribution", color="#4c72b0")
    ax.hist(s_out, bins=bins, alpha=0.6, density=True, label="OOD", color="#c44e52")
    ax.set_xlabel(f"{score_name} score (higher = more OOD)"), ax.set_ylabel("density")
    ax.set_title("OOD scores"), ax.legend(fontsize=8)
    return _to_png(fig)


def roc_plot(fpr: Tensor, tpr: Tensor, *, auroc: float) -> bytes:
    """ROC curve of OOD detection (OOD is the positive class)."""
    fig, ax = _new_figure(4.2, 4.0)
    ax.plot(*_thin(fpr, tpr), c="#c44e52", lw=1.5, label=f"AUROC = {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="0.5", lw=1)
    ax.axhline(0.95, c="0.7", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate (ID flagged as OOD)"), ax.set_ylabel("true positive rate (OOD detected)")
    ax.set_title("OOD detection ROC"), ax.legend(loc="lower right", fontsize=8)
    return _to_png(fig)


def pit_histogram(pit: Tensor, *, num_bins: int = 20) -> bytes:
    """Histogram of PIT values F(y); flat means calibrated, U-shaped overconfident, hump-shaped underconfident."""
    fig, ax = _new_figure()
    ax.hist(_np(pit).ravel(), bins=num_bins, range=(0, 1), density=True, color="#4c72b0", edgecolor="k")
    ax.axhline(1.0, ls="--", c="0.3", lw=1, label="uniform (calibrated)")
    ax.set_xlabel("PIT value F(y)"), ax.set_ylabel("density"), ax.set_title("PIT histogram")
    ax.legend(fontsize=8)
    return _to_png(fig)


def calibration_curve_plot(expected: Tensor, observed: Tensor, *, area: float) -> bytes:
    """Observed frequency of ``F(y) <= p`` against the expected level ``p`` (quantile calibration)."""
    fig, ax = _new_figure(4.2, 4.0)
    e, o = _np(expected), _np(observed)
    ax.plot([0, 1], [0, 1], ls="--", c="0.5", lw=1)
    ax.plot(e, o, marker="o", ms=3, c="#4c72b0", label=f"model (miscalibration area = {area:.3f})")
    ax.fill_between(e, e, o, color="#4c72b0", alpha=0.2)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_xlabel("expected proportion in interval"), ax.set_ylabel("observed proportion")
    ax.set_title("Regression calibration"), ax.legend(loc="upper left", fontsize=8)
    return _to_png(fig)


def coverage_plot(levels: Sequence[float], observed: Sequence[float], widths: Sequence[float]) -> bytes:
    """Central-interval coverage against nominal level, with the mean interval width annotated."""
    fig, ax = _new_figure()
    ax.plot([0, 1], [0, 1], ls="--", c="0.5", lw=1)
    ax.plot(levels, observed, marker="o", c="#4c72b0", label="observed coverage")
    for lv, ob, w in zip(levels, observed, widths):
        ax.annotate(f"width {w:.3g}", (lv, ob), textcoords="offset points", xytext=(-60, 6), fontsize=7)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level"), ax.set_ylabel("fraction of targets inside"), ax.set_title("Interval coverage")
    ax.legend(loc="upper left", fontsize=8)
    return _to_png(fig)


def trace_plot(draws: np.ndarray, names: Sequence[str]) -> bytes:
    """Per-chain traces of a few coordinates, draws ``[chain, draw, K]``."""
    from matplotlib.figure import Figure

    k = draws.shape[-1]
    fig = Figure(figsize=(6.0, 1.4 * k + 0.6))
    axes = fig.subplots(k, 1, sharex=True, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        for c in range(draws.shape[0]):
            ax.plot(draws[c, :, j], lw=0.6, alpha=0.8)
        ax.set_ylabel(names[j], fontsize=8)
    axes[-1].set_xlabel("draw")
    axes[0].set_title("Traces (one colour per chain)")
    return _to_png(fig)


def rank_histogram(ranks: np.ndarray, *, num_draws: int, num_bins: int, names: Sequence[str]) -> bytes:
    """SBC rank histograms, one panel per parameter (``ranks [S, P]`` in ``[0, num_draws]``).

    The grey band is the central 99% range of each bin's count under uniform ranks (binomial).
    """
    from matplotlib.figure import Figure
    from scipy import stats

    ranks = np.asarray(ranks)
    num_sims, num_params = ranks.shape
    bin_of_rank = (np.arange(num_draws + 1) * num_bins) // (num_draws + 1)
    share = np.bincount(bin_of_rank, minlength=num_bins) / (num_draws + 1)
    lo, hi = stats.binom.ppf(0.005, num_sims, share), stats.binom.ppf(0.995, num_sims, share)
    fig = Figure(figsize=(5.0, 1.6 * num_params + 0.6))
    axes = fig.subplots(num_params, 1, squeeze=False)[:, 0]
    centres = np.arange(num_bins)
    for j, ax in enumerate(axes):
        ax.fill_between(centres, lo, hi, step="mid", color="0.85", label="99% band if uniform")
        ax.bar(centres, np.bincount(bin_of_rank[ranks[:, j]], minlength=num_bins), width=1.0,
               color="#4c72b0", edgecolor="k", alpha=0.8)
        ax.set_ylabel(names[j], fontsize=8)
    axes[-1].set_xlabel(f"rank bin ({num_draws + 1} ranks in {num_bins} bins)")
    axes[0].set_title("SBC rank histograms"), axes[0].legend(fontsize=7, loc="upper right")
    return _to_png(fig)
