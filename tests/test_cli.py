"""The ``uqkit`` command line: reports from npz files, recalibration, readable errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from uqkit.cli import main

CLASSIFICATION_KEYS = {"accuracy", "nll", "brier", "ece", "mce", "aurc", "ood_auroc", "ood_aupr_out", "ood_fpr95"}
REGRESSION_KEYS = {"rmse", "nll", "crps", "coverage_90", "width_90", "miscalibration_area"}


@pytest.fixture
def runner():
    return CliRunner()


def _overconfident(rng, n):
    labels = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), labels] += 1.5
    return 4 * logits, labels  # four times too confident


def test_classification_report_writes_three_files(runner, tmp_path):
    rng = np.random.default_rng(0)
    logits, labels = _overconfident(rng, 500)
    np.savez(tmp_path / "p.npz", logits=logits, labels=labels, ood_logits=rng.normal(size=(200, 4)))
    result = runner.invoke(main, ["report", str(tmp_path / "p.npz"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert CLASSIFICATION_KEYS <= set(metrics)
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000  # embedded figures
    assert "| ece |" in (tmp_path / "out" / "report.md").read_text()


def test_regression_report_with_std(runner, tmp_path):
    rng = np.random.default_rng(1)
    mean = rng.normal(size=300)
    np.savez(tmp_path / "r.npz", mean=mean, std=np.ones(300), y=mean + rng.normal(size=300),
             ood_mean=np.zeros(100), ood_std=3 * np.ones(100))
    result = runner.invoke(main, ["report", str(tmp_path / "r.npz"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert REGRESSION_KEYS <= set(metrics)


def test_recalibrate_temperature_lowers_nll(runner, tmp_path):
    rng = np.random.default_rng(2)
    logits, labels = _overconfident(rng, 2000)
    np.savez(tmp_path / "val.npz", logits=logits[:1000], labels=labels[:1000])
    np.savez(tmp_path / "test.npz", logits=logits[1000:], labels=labels[1000:])
    result = runner.invoke(main, ["report", str(tmp_path / "test.npz"), "--out", str(tmp_path / "out"),
                                  "--recalibrate", "temperature", "--validation", str(tmp_path / "val.npz")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["meta"]["before_temperature"] > 2  # the logits were scaled up four times
    assert data["metrics"]["nll"] < data["meta"]["before_nll"]
    assert data["metrics"]["accuracy"] == pytest.approx(data["meta"]["before_accuracy"])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"logits": np.zeros((3, 2))}, "need a 'labels' array"),
        ({"logits": np.array([[0.0, np.nan]]), "labels": np.array([0])}, "logits: expected finite"),
        ({"probs": np.array([[0.2, 0.2]]), "labels": np.array([0])}, "probs: expected each row to sum to 1"),
        ({"logits": np.zeros((3, 2)), "labels": np.array([0, 1, 5])}, r"labels in \[0, 1\]"),
        ({"logits": np.zeros((3, 2)), "labels": np.array([0, 1])}, "expected 3 labels"),
        ({"mean": np.zeros(3), "y": np.zeros(3)}, "need 'var' or 'std'"),
        ({"scores": np.zeros(3), "y": np.zeros(3)}, "expected 'logits' or 'probs'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runner, tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    result = runner.invoke(main, ["report", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output)


def test_missing_or_foreign_files(runner, tmp_path):
    result = runner.invoke(main, ["report", str(tmp_path / "nope.npz"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no such file" in result.output
    torch.save({"a": 1}, tmp_path / "pickle.npz")
    result = runner.invoke(main, ["report", str(tmp_path / "pickle.npz"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not a readable .npz" in result.output


def test_recalibrate_needs_validation(runner, tmp_path):
    np.savez(tmp_path / "p.npz", logits=np.zeros((3, 2)), labels=np.array([0, 1, 0]))
    result = runner.invoke(main, ["report", str(tmp_path / "p.npz"), "--out", str(tmp_path / "o"), "--recalibrate", "temperature"])
    assert result.exit_code == 2 and "--validation" in result.output
