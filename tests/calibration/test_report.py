"""`evaluate` and `Report`: metrics against the functional metrics, renderings, escaping."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import uqkit
from uqkit import Predictive
from uqkit.calibration import classification, regression


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,"):
            self.images += 1


@pytest.fixture
def classification_case(generator):
    logits = 3 * torch.randn(400, 5, generator=generator)
    labels = torch.distributions.Categorical(logits=logits / 3).sample((1,)).squeeze(0)
    ood_logits = torch.randn(300, 5, generator=generator)
    return logits, labels, ood_logits


def test_classification_report_matches_functional_metrics(classification_case, tmp_path):
    logits, labels, ood_logits = classification_case
    pred = Predictive.from_logits(logits)
    report = uqkit.evaluate(pred, labels, ood=Predictive.from_logits(ood_logits))
    probs = torch.softmax(logits, -1)
    assert report.metrics["ece"] == pytest.approx(float(classification.ece(probs, labels)), abs=1e-12)
    assert report.metrics["accuracy"] == pytest.approx(float((probs.argmax(-1) == labels).double().mean()))
    assert report.metrics["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-10)
    assert 0.5 < report.metrics["ood_auroc"] <= 1.0
    assert set(report.figures) == {"reliability", "risk_coverage", "ood_histogram", "ood_roc"}
    page = report.to_html(tmp_path)
    parser = _Elements()
    parser.feed(page.read_text())
    assert parser.images == 4
    data = json.loads(report.to_json(tmp_path / "m.json").read_text())
    assert data["metrics"]["ece"] == pytest.approx(report.metrics["ece"])


def test_regression_report_matches_functional_metrics(generator, tmp_path):
    mean = torch.randn(3, 200, generator=generator)
    var = torch.rand(3, 200, generator=generator) + 0.5
    y = torch.randn(200, generator=generator)
    pred = Predictive.gaussian(mean, var)
    report = uqkit.evaluate(pred, y, ood=Predictive.gaussian(mean, 10 * var))
    assert report.metrics["rmse"] == pytest.approx(float(regression.rmse(pred, y)))
    assert report.metrics["nll"] == pytest.approx(float(-pred.log_prob(y).mean()))
    assert report.metrics["ood_auroc"] > 0.9  # ten times the variance is easy to tell apart
    assert {"pit", "calibration_curve", "coverage"} <= set(report.figures)
    md = report.to_markdown(tmp_path / "r.md").read_text()
    assert "| rmse |" in md


def test_user_strings_are_escaped_in_html(classification_case, tmp_path):
    logits, labels, _ = classification_case
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    report = uqkit.evaluate(Predictive.from_logits(logits), labels, title=evil, meta={evil: evil}, make_figures=False)
    parser = _Elements()
    parser.feed(report.to_html(tmp_path).read_text())
    assert "script" not in parser.tags and "img" not in parser.tags
    assert "&lt;script&gt;" in (tmp_path / "report.html").read_text()


def test_ood_task_mismatch_and_unknown_score(classification_case):
    logits, labels, _ = classification_case
    pred = Predictive.from_logits(logits)
    with pytest.raises(ValueError, match="ood: expected a classification predictive"):
        uqkit.evaluate(pred, labels, ood=Predictive.gaussian(torch.zeros(3), torch.ones(3)))
    with pytest.raises(ValueError, match="ood_score: expected one of"):
        uqkit.evaluate(pred, labels, ood=pred, ood_score="nope", make_figures=False)


def test_arrays_are_accepted_in_place_of_a_predictive(classification_case):
    logits, labels, _ = classification_case
    a = uqkit.evaluate({"logits": logits.numpy()}, labels.numpy(), make_figures=False)
    b = uqkit.evaluate(Predictive.from_logits(logits), labels, make_figures=False)
    assert a.metrics == b.metrics
    with pytest.raises(ValueError, match="expected 'logits' or 'probs'"):
        uqkit.evaluate({"scores": np.zeros(3)}, labels.numpy())


def test_precomputed_ood_scores_match_sklearn(classification_case):
    from sklearn.metrics import roc_auc_score

    logits, labels, _ = classification_case
    s_in, s_out = torch.randn(400, generator=torch.Generator().manual_seed(1)), torch.randn(300) + 1
    report = uqkit.evaluate(Predictive.from_logits(logits), labels, ood_scores=(s_in, s_out), ood_score="custom",
                            make_figures=False)
    truth = np.r_[np.zeros(400), np.ones(300)]
    assert report.metrics["ood_auroc"] == pytest.approx(roc_auc_score(truth, np.r_[s_in.numpy(), s_out.numpy()]))
    assert report.meta["ood_score"] == "custom"
    with pytest.raises(ValueError, match="ood_scores\\[1\\]: expected finite"):
        uqkit.evaluate(Predictive.from_logits(logits), labels, ood_scores=(s_in, torch.tensor([float("nan")])))
