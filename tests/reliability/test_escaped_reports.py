"""Escaped reports (issue 11, part 4): titles, metric and figure names, metadata keys and values that
contain HTML/JS end up as text. The HTML is parsed with ``html.parser``; no injected element or
attribute may exist, and the hostile strings must come back verbatim as text.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import torch
from click.testing import CliRunner

import uqkit
from uqkit.calibration.report import Report
from uqkit.cli import main as cli_main

#: Every tag and attribute the report template itself writes.
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "tr", "th", "td", "code",
                "figure", "img", "figcaption", "b"}
ALLOWED_ATTRS = {"lang", "charset", "class", "alt", "src", "style"}
HOSTILE = [
    "<script>alert('title')</script>",
    "<img src=x onerror=alert(1)>",
    "\"><svg onload=alert(2)>",
    "'><iframe src=javascript:alert(3)></iframe>",
    "</td></tr></table><script>alert(4)</script>",
    "<!-- --><a href='javascript:alert(5)'>x</a>",
]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)

    def handle_comment(self, data):
        self.comments.append(data)


def _assert_clean(page: str, *, expected_text: list[str]) -> None:
    parser = _Collector()
    parser.feed(page)
    parser.close()
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS, f"injected element <{tag}>"
        for name, value in attrs:
            assert name in ALLOWED_ATTRS, f"injected attribute {name}={value!r} on <{tag}>"
            if name == "src":
                assert value.startswith("data:image/png;base64,"), f"injected src {value!r}"
    assert not parser.comments, f"injected comment {parser.comments}"
    text = "".join(parser.text)
    for s in expected_text:
        assert s in text, f"{s!r} should appear as text"


def _hostile_report() -> Report:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=g, dtype=torch.float64)
    meta = {f"key {s}": f"value {s}" for s in HOSTILE}
    return uqkit.evaluate(uqkit.Predictive.from_logits(logits), torch.arange(50) % 3, title=HOSTILE[0], meta=meta)


def test_evaluate_report_html_has_no_injected_elements(tmp_path) -> None:
    report = _hostile_report()
    page = report.to_html(tmp_path).read_text()
    _assert_clean(page, expected_text=[HOSTILE[0], *(f"key {s}" for s in HOSTILE), *(f"value {s}" for s in HOSTILE)])


def test_user_built_report_escapes_metric_figure_and_diagnostic_names(tmp_path) -> None:
    png = _hostile_report().figures["reliability"]
    report = Report(title=HOSTILE[1], task=HOSTILE[2], metrics={s: 0.5 for s in HOSTILE},
                    diagnostics={f"d {s}": 1.0 for s in HOSTILE}, figures={s: png for s in HOSTILE[:2]},
                    meta={"engine": HOSTILE[3]})
    page = report.to_html(tmp_path).read_text()
    _assert_clean(page, expected_text=[*HOSTILE, *(f"d {s}" for s in HOSTILE)])
    md = report.to_markdown(tmp_path / "report.md", figure_dir="figures").read_text()
    assert "<" not in md.replace("&lt;", "")


def test_markdown_and_json_keep_hostile_strings_inert(tmp_path) -> None:
    report = _hostile_report()
    md = report.to_markdown(tmp_path / "report.md", figure_dir="figures").read_text()
    for s in HOSTILE:
        assert s not in md
    assert "<" not in md.replace("&lt;", "")
    data = json.loads(report.to_json(tmp_path / "metrics.json").read_text())
    assert data["title"] == HOSTILE[0] and data["meta"][f"key {HOSTILE[1]}"] == f"value {HOSTILE[1]}"


def test_cli_title_is_escaped(tmp_path) -> None:
    g = np.random.default_rng(0)
    path = tmp_path / "pred.npz"
    np.savez(path, logits=g.normal(size=(40, 3)), labels=np.arange(40) % 3)
    result = CliRunner().invoke(cli_main, ["report", str(path), "--out", str(tmp_path / "out"), "--title", HOSTILE[4]])
    assert result.exit_code == 0, result.output
    _assert_clean((tmp_path / "out" / "report.html").read_text(), expected_text=[HOSTILE[4]])


def test_hostile_figure_names_stay_inside_the_figure_folder(tmp_path):
    from uqkit.calibration.report import Report, figure_filename

    assert figure_filename("../../evil") == "______evil.png"
    report = Report(title="t", task="classification", metrics={}, figures={"../../evil": b"png"})
    path = report.to_markdown(tmp_path / "out", figure_dir="figures")
    assert "](figures/______evil.png)" in path.read_text()
