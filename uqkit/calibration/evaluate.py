"""`evaluate`: score a `Predictive` (and optional OOD predictions) into a `Report`."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uqkit._checks import check_float, check_labels
from uqkit.calibration import classification as cls_metrics
from uqkit.calibration import figures, regression, selective
from uqkit.calibration import ood as ood_metrics
from uqkit.calibration.predictive import Predictive
from uqkit.calibration.report import Report

#: Rows scored at a time: bounds the temporaries of a classification report independently of N.
CHUNK_SIZE = 1 << 16
#: Interval levels drawn in a regression report's coverage figure.
COVERAGE_PLOT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99)


def evaluate(
    predictive: Predictive | Mapping[str, Any],
    y: object,
    *,
    ood: Predictive | Mapping[str, Any] | None = None,
    ood_score: str | None = None,
    ood_scores: tuple[object, object] | None = None,
    posterior: Any = None,
    title: str | None = None,
    num_bins: int = 15,
    make_figures: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> Report:
    """Score predictions against targets; returns a `Report` with metrics, figures and diagnostics.

    Args:
        predictive: a `Predictive`, or arrays as in `predictive_from_arrays` (``logits``/``probs``, or
            ``mean`` with ``var``/``std``).
        y: ``[N]`` labels (classification) or targets ``[N]``/``[N, D]`` (regression).
        ood: predictions on out-of-distribution inputs, same task; adds ``ood_*`` metrics and figures.
        ood_score: name in ``ood_metrics.OOD_SCORES``; default "msp" for classification, "variance" for regression.
        ood_scores: precomputed ``(scores_in [N], scores_out [M])``, higher = more OOD (e.g. a wrapper's
            ``ood_score(x)``), used instead of ``ood``/``ood_score``.
        posterior: optional `Posterior` (anything with ``to_arviz()``) for R-hat/ESS diagnostics and traces.
        title: report title.
        num_bins: bins for the ECE family and the reliability diagram.
        make_figures: set False to skip plotting (faster; metrics only).
        meta: extra facts to record (engine, seed, ...).
    """
    pred = _as_predictive(predictive, "predictive")
    if posterior is not None and not callable(getattr(posterior, "to_arviz", None)):
        raise TypeError(f"posterior: expected a Posterior (anything with to_arviz()), got {type(posterior).__name__}")
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta: expected a mapping of names to values, got {type(meta).__name__}")
    ood_pred = None
    if ood is not None:
        ood_pred = _as_predictive(ood, "ood")
        if ood_pred.task != pred.task:
            raise ValueError(f"ood: expected a {pred.task} predictive like the in-distribution one, got {ood_pred.task}")
    report = Report(title=title or f"uqkit {pred.task} report", task=pred.task, metrics={})
    if pred.task == "classification":
        _score_classification(report, pred, y, num_bins=num_bins, make_figures=make_figures)
    else:
        _score_regression(report, pred, y, make_figures=make_figures)
    if ood_scores is not None:
        if ood_pred is not None:
            raise ValueError("ood_scores: give either ood (a predictive to score) or ood_scores, not both")
        s_in, s_out = (check_float(s, name, ndim=1) for s, name in zip(ood_scores, ("ood_scores[0]", "ood_scores[1]")))
        _score_ood(report, s_in, s_out, ood_score or "supplied", make_figures=make_figures)
    elif ood_pred is not None:
        score_name = ood_score or ("msp" if pred.task == "classification" else "variance")
        if score_name not in ood_metrics.OOD_SCORES:
            raise ValueError(f"ood_score: expected one of {sorted(ood_metrics.OOD_SCORES)}, got {score_name!r}")
        score = ood_metrics.OOD_SCORES[score_name]
        _score_ood(report, score(pred), score(ood_pred), score_name, make_figures=make_figures)
    if posterior is not None:
        _diagnose(report, posterior, make_figures=make_figures)
    report.meta.update({
        "num_points": pred.num_points,
        "num_draws": pred.num_draws,
        "uqkit_version": _version(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        **dict(meta or {}),
    })
    return report


def predictive_from_arrays(arrays: Mapping[str, Any], *, prefix: str = "") -> Predictive:
    """Build a `Predictive` from named arrays (an ``.npz`` file's contents, say).

    Classification: ``{prefix}logits`` or ``{prefix}probs``, shape ``[N, C]`` or ``[S, N, C]``.
    Regression: ``{prefix}mean`` (``[N]`` or ``[S, N]``) with ``{prefix}var`` or ``{prefix}std``.
    """
    keys = set(arrays)
    if f"{prefix}logits" in keys:
        return Predictive.from_logits(arrays[f"{prefix}logits"])
    if f"{prefix}probs" in keys:
        return Predictive.from_probs(arrays[f"{prefix}probs"])
    if f"{prefix}mean" in keys:
        if f"{prefix}var" in keys:
            var = arrays[f"{prefix}var"]
        elif f"{prefix}std" in keys:
            var = np.square(np.asarray(arrays[f"{prefix}std"], dtype=np.float64))
        else:
            raise ValueError(f"{prefix}var: regression predictions need '{prefix}var' or '{prefix}std' beside '{prefix}mean'")
        return Predictive.gaussian(arrays[f"{prefix}mean"], var)
    raise ValueError(
        f"{prefix or 'predictions'}: expected '{prefix}logits' or '{prefix}probs' (classification) or "
        f"'{prefix}mean' with '{prefix}var'/'{prefix}std' (regression); found keys {sorted(keys)}"
    )


def _as_predictive(value: object, name: str) -> Predictive:
    if isinstance(value, Predictive):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a Predictive or a mapping of arrays, got {type(value).__name__}")
    return predictive_from_arrays(value)


def _score_classification(report: Report, pred: Predictive, y: object, *, num_bins: int, make_figures: bool) -> None:
    """Classification metrics in one validated pass over row chunks (memory: O(N) vectors, O(chunk * S * C) temporaries)."""
    num_bins = cls_metrics.check_num_bins(num_bins)
    labels = check_labels(y, "y", num_classes=pred.num_classes, length=pred.num_points).to(pred.probs.device)
    n = pred.num_points
    confidence = torch.empty(n, dtype=pred.probs.dtype, device=pred.probs.device)
    correct = torch.empty(n, dtype=torch.bool, device=pred.probs.device)
    sums = dict.fromkeys(("nll", "brier", "entropy", "mutual_information"), 0.0)
    classwise = None
    for start in range(0, n, CHUNK_SIZE):
        rows = slice(start, min(start + CHUNK_SIZE, n))
        part = Predictive("classification", probs=pred.probs[:, rows], log_weights=pred.log_weights,
                          logits=None if pred.logits is None else pred.logits[:, rows])
        p, yb = part.mixture_probs(), labels[rows]
        confidence[rows], correct[rows] = cls_metrics.top_label_of(p, yb)
        sums["nll"] -= float(part.log_prob(yb).sum(dtype=torch.float64))  # exact from logits when known
        sums["brier"] += float(cls_metrics.brier_terms(p, yb).sum())
        sums["entropy"] += float(part.entropy().sum(dtype=torch.float64))
        if pred.num_draws > 1:
            sums["mutual_information"] += float(part.mutual_information().sum(dtype=torch.float64))
        chunk_sums = cls_metrics.classwise_bin_sums(p, yb, num_bins=num_bins)
        classwise = chunk_sums if classwise is None else tuple(a + b for a, b in zip(classwise, chunk_sums))
    m = report.metrics
    m["accuracy"] = int(correct.count_nonzero()) / n
    m["nll"] = sums["nll"] / n
    m["brier"] = sums["brier"] / n
    m["ece"] = float(cls_metrics.ece_from_top_label(confidence, correct, num_bins=num_bins))
    m["mce"] = float(cls_metrics.ece_from_top_label(confidence, correct, num_bins=num_bins, norm="max"))
    m["adaptive_ece"] = float(cls_metrics.ece_from_top_label(confidence, correct, num_bins=num_bins, binning="mass"))
    m["classwise_ece"] = float(cls_metrics.classwise_ece_from_sums(*classwise, num_points=n, num_bins=num_bins))
    m["aurc"] = float(selective.aurc(confidence, correct))
    m["eaurc"] = float(selective.eaurc(confidence, correct))
    m["coverage_at_5pct_risk"] = float(selective.coverage_at_risk(confidence, correct, 0.05))
    m["mean_entropy"] = sums["entropy"] / n
    if pred.num_draws > 1:
        m["mean_mutual_information"] = sums["mutual_information"] / n
    if make_figures:
        curve = cls_metrics.curve_from_top_label(confidence, correct, num_bins=num_bins)
        report.figures["reliability"] = figures.reliability_diagram(curve, ece=m["ece"])
        coverage, risk = selective.risk_coverage_curve(confidence, correct)
        report.figures["risk_coverage"] = figures.risk_coverage_plot(coverage, risk, aurc=m["aurc"])
    report.meta["num_classes"] = pred.num_classes


def _score_regression(report: Report, pred: Predictive, y: object, *, make_figures: bool) -> None:
    """Regression metrics (and figures) from one validated, chunked pass (`regression.regression_scores`)."""
    levels = COVERAGE_PLOT_LEVELS if make_figures else ()
    scores = regression.regression_scores(pred, y, levels=levels, keep_pit=make_figures)
    report.metrics.update(scores.metrics)
    if make_figures:
        report.figures["pit"] = figures.pit_histogram(scores.pit)
        report.figures["calibration_curve"] = figures.calibration_curve_plot(
            *scores.curve, area=report.metrics["miscalibration_area"])
        report.figures["coverage"] = figures.coverage_plot(
            levels, [scores.coverage[lv] for lv in levels], [scores.width[lv] for lv in levels])


def _score_ood(report: Report, s_in: Tensor, s_out: Tensor, score_name: str, *, make_figures: bool) -> None:
    m = report.metrics
    m["ood_auroc"] = float(ood_metrics.ood_auroc(s_in, s_out))
    m["ood_aupr_in"] = float(ood_metrics.ood_aupr_in(s_in, s_out))
    m["ood_aupr_out"] = float(ood_metrics.ood_aupr_out(s_in, s_out))
    m["ood_fpr95"] = float(ood_metrics.fpr_at_tpr(s_in, s_out, tpr=0.95))
    report.meta["ood_score"] = score_name
    report.meta["num_ood_points"] = len(s_out)
    if make_figures:
        report.figures["ood_histogram"] = figures.ood_histogram(s_in, s_out, score_name=score_name)
        fpr, tpr = ood_metrics.ood_roc_curve(s_in, s_out)
        report.figures["ood_roc"] = figures.roc_plot(fpr, tpr, auroc=m["ood_auroc"])


def _diagnose(report: Report, posterior: Any, *, make_figures: bool) -> None:
    import arviz as az

    idata = posterior.to_arviz()
    rhat = az.rhat(idata)
    ess_bulk = az.ess(idata, method="bulk")
    ess_tail = az.ess(idata, method="tail")
    report.diagnostics["max_rhat"] = float(max(float(np.nanmax(v.values)) for v in rhat.data_vars.values()))
    report.diagnostics["min_ess_bulk"] = float(min(float(np.nanmin(v.values)) for v in ess_bulk.data_vars.values()))
    report.diagnostics["min_ess_tail"] = float(min(float(np.nanmin(v.values)) for v in ess_tail.data_vars.values()))
    divergent = getattr(posterior, "sample_stats", {}).get("divergent")
    if divergent is not None:
        report.diagnostics["divergences"] = float(divergent.sum())
    if make_figures:
        first = next(iter(idata.posterior.data_vars.values())).values
        flat = first.reshape(first.shape[0], first.shape[1], -1)[:, :, :4]
        names = [f"{next(iter(idata.posterior.data_vars))}[{j}]" for j in range(flat.shape[-1])]
        report.figures["traces"] = figures.trace_plot(flat, names)


def _version() -> str:
    from uqkit import __version__

    return __version__
