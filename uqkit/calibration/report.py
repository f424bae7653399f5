"""`Report`: metrics, diagnostics and figures of one evaluation, written as HTML, JSON or Markdown.

Every string that reaches the HTML page (title, metric names, metadata, captions) is escaped, so a
user-supplied title or class name cannot inject markup.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote


class MetricInfo(NamedTuple):
    """How to read one metric: its direction and a one-line meaning."""

    higher_is_better: bool
    description: str


METRIC_INFO: dict[str, MetricInfo] = {
    "accuracy": MetricInfo(True, "fraction of correct top-1 predictions"),
    "nll": MetricInfo(False, "mean negative log predictive density per point (nats)"),
    "brier": MetricInfo(False, "mean squared error of the probability vector"),
    "ece": MetricInfo(False, "top-label expected calibration error, 15 equal-width bins, L1"),
    "mce": MetricInfo(False, "largest per-bin calibration gap"),
    "adaptive_ece": MetricInfo(False, "top-label ECE with equal-mass bins"),
    "classwise_ece": MetricInfo(False, "calibration error averaged over classes"),
    "aurc": MetricInfo(False, "area under the risk-coverage curve"),
    "eaurc": MetricInfo(False, "AURC above the best achievable for this error rate"),
    "coverage_at_5pct_risk": MetricInfo(True, "largest fraction kept with at most 5% errors among kept points"),
    "mean_entropy": MetricInfo(False, "mean predictive entropy (nats)"),
    "mean_mutual_information": MetricInfo(False, "mean epistemic part of the entropy (nats)"),
    "rmse": MetricInfo(False, "root mean squared error of the predictive mean (target units)"),
    "crps": MetricInfo(False, "continuous ranked probability score (target units)"),
    "coverage_50": MetricInfo(True, "fraction of targets inside the central 50% interval (nominal 0.50)"),
    "coverage_90": MetricInfo(True, "fraction of targets inside the central 90% interval (nominal 0.90)"),
    "coverage_95": MetricInfo(True, "fraction of targets inside the central 95% interval (nominal 0.95)"),
    "width_50": MetricInfo(False, "mean width of the central 50% interval (target units)"),
    "width_90": MetricInfo(False, "mean width of the central 90% interval (target units)"),
    "width_95": MetricInfo(False, "mean width of the central 95% interval (target units)"),
    "miscalibration_area": MetricInfo(False, "area between the quantile calibration curve and the diagonal"),
    "quantile_calibration_error": MetricInfo(False, "mean |observed - expected| over quantile levels"),
    "sharpness": MetricInfo(False, "root mean predictive variance (target units)"),
    "ood_auroc": MetricInfo(True, "area under the ROC curve, OOD as the positive class"),
    "ood_aupr_in": MetricInfo(True, "average precision with in-distribution as the positive class"),
    "ood_aupr_out": MetricInfo(True, "average precision with OOD as the positive class"),
    "ood_fpr95": MetricInfo(False, "fraction of in-distribution points flagged OOD when 95% of OOD points are caught"),
}

CAPTIONS: dict[str, str] = {
    "reliability": "Bars show the accuracy of the points whose confidence falls in each bin; a calibrated model "
    "follows the dashed diagonal. Hatched bars are the gap to the bin's mean confidence (bars below the "
    "diagonal mean overconfidence). The lower panel shows how many points fall in each bin.",
    "risk_coverage": "Points are rejected from the least confident up. The curve shows the error rate among the "
    "points kept at each coverage; lower and flatter is better, and its area is the AURC.",
    "ood_histogram": "Distribution of the OOD score on in-distribution and OOD inputs. The less the two overlap, "
    "the better the score separates them.",
    "ood_roc": "True positive rate (OOD inputs detected) against false positive rate (in-distribution inputs "
    "flagged). The dotted line marks 95% detection, where FPR95 is read.",
    "pit": "Probability integral transform F(y) of each test target under its predictive distribution. A flat "
    "histogram means calibrated; a U shape means intervals are too narrow (overconfident); a hump means too wide.",
    "calibration_curve": "For each level p, the fraction of targets with F(y) <= p. A calibrated model follows "
    "the diagonal; the shaded area is the miscalibration area.",
    "coverage": "Fraction of targets inside the central prediction interval at each nominal level, with the "
    "mean interval width. Points below the diagonal mean the intervals are too narrow.",
    "traces": "Per-chain traces of the first coordinates of the posterior draws; well-mixed chains overlap "
    "and show no trend.",
}


@dataclass
class Report:
    """The result of `uqkit.evaluate`.

    Attributes:
        title: shown at the top of every rendering.
        task: "classification" or "regression".
        metrics: metric name -> value (plain floats; NaN where undefined).
        diagnostics: MCMC diagnostics (e.g. ``max_rhat``, ``min_ess_bulk``) when a posterior was given.
        figures: figure name -> PNG bytes.
        meta: facts about the evaluation (number of points, OOD score used, engine, versions).
    """

    title: str
    task: str
    metrics: dict[str, float]
    diagnostics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Metrics, diagnostics and meta as plain JSON types (NaN becomes null)."""
        return {
            "title": self.title,
            "task": self.task,
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
            "diagnostics": {k: _finite_or_none(v) for k, v in self.diagnostics.items()},
            "meta": self.meta,
        }

    def to_json(self, path: str | Path) -> Path:
        """Write `to_dict` as JSON to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    def to_markdown(self, path: str | Path, *, figure_dir: str | None = None) -> Path:
        """Write a Markdown summary; figures are linked when ``figure_dir`` (relative to the file) holds them."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"# {_md_escape(self.title)}", "", f"Task: {_md_escape(self.task)}", "", "| metric | value | better | meaning |",
                 "|---|---|---|---|"]
        for name, value in self.metrics.items():
            info = METRIC_INFO.get(name)
            better = "" if info is None else ("higher" if info.higher_is_better else "lower")
            lines.append(f"| {_md_escape(name)} | {_fmt(value)} | {better} | {_md_escape(info.description if info else '')} |")
        if self.diagnostics:
            lines += ["", "## Diagnostics", "", "| diagnostic | value |", "|---|---|"]
            lines += [f"| {_md_escape(k)} | {_fmt(v)} |" for k, v in self.diagnostics.items()]
        if figure_dir is not None:
            lines += ["", "## Figures", ""]
            for name in self.figures:
                link = f"{figure_dir}/{quote(figure_filename(name))}"
                lines += [f"![{_md_escape(name)}]({link})", "", _md_escape(CAPTIONS.get(name, "")), ""]
        if self.meta:
            lines += ["", "## Details", ""] + [f"- {_md_escape(str(k))}: {_md_escape(str(v))}" for k, v in self.meta.items()]
        path.write_text("\n".join(lines) + "\n")
        return path

    def to_html(self, out_dir: str | Path, *, name: str = "report.html") -> Path:
        """Write one self-contained HTML page (figures embedded as base64 PNG) into ``out_dir``; returns its path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        esc = html.escape
        rows = []
        for metric, value in self.metrics.items():
            info = METRIC_INFO.get(metric)
            better = "" if info is None else ("&uarr; higher is better" if info.higher_is_better else "&darr; lower is better")
            rows.append(f"<tr><td><code>{esc(metric)}</code></td><td class='num'>{esc(_fmt(value))}</td>"
                        f"<td>{better}</td><td>{esc(info.description if info else '')}</td></tr>")
        diag = "".join(f"<tr><td><code>{esc(k)}</code></td><td class='num'>{esc(_fmt(v))}</td></tr>"
                       for k, v in self.diagnostics.items())
        figs = []
        for fig_name, png in self.figures.items():
            data = base64.b64encode(png).decode("ascii")
            figs.append(f"<figure><img alt='{esc(fig_name)}' src='data:image/png;base64,{data}'>"
                        f"<figcaption><b>{esc(fig_name.replace('_', ' '))}.</b> {esc(CAPTIONS.get(fig_name, ''))}</figcaption></figure>")
        meta = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in self.meta.items())
        page = _HTML.format(
            title=esc(self.title), task=esc(self.task), rows="".join(rows),
            diagnostics=f"<h2>MCMC diagnostics</h2><table>{diag}</table>" if diag else "",
            figures="".join(figs), meta=meta,
        )
        path = out / name
        path.write_text(page, encoding="utf-8")
        return path


def _finite_or_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _md_escape(s: str) -> str:
    return html.escape(s).replace("|", "\\|").replace("\n", " ")


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; font-size: 14px; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; vertical-align: top; width: 480px; margin: 0 1em 1.5em 0; }}
figure img {{ max-width: 100%; }}
figcaption {{ font-size: 13px; color: #444; }}
</style></head>
<body>
<h1>{title}</h1>
<p>Task: {task}</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>direction</th><th>meaning</th></tr>{rows}</table>
{diagnostics}
<h2>Figures</h2>
{figures}
<h2>Details</h2>
<table>{meta}</table>
<p style="font-size:12px;color:#777">Generated by uqkit.</p>
</body></html>
"""


def figure_filename(name: str) -> str:
    """A file name for figure ``name`` that stays inside its folder: ``[A-Za-z0-9_-]`` only, plus ``.png``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) + ".png"
