"""Tutorial: score any model's predictions, recalibrate them, and write a report.

    python tutorials/scoring_and_recalibration.py --out tutorial-scoring

Part 1 (classification): a gradient-boosted classifier on scikit-learn's breast-cancer set is scored,
recalibrated with temperature, isotonic and Platt scaling, and wrapped in conformal prediction sets.
Part 2 (regression): Bayesian linear regression on the diabetes set is scored, its variance rescaled,
and split-conformal intervals are compared with its own Gaussian intervals.
Runs in well under a minute on two cores; writes one HTML report per part.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

import uqkit
from uqkit import Predictive
from uqkit.calibration import classification, regression
from uqkit.calibration.conformal import ConformalClassifier, SplitConformalRegressor, set_size
from uqkit.calibration.recalibrate import IsotonicCalibrator, PlattScaler, TemperatureScaler
from uqkit.calibration.recalibrate_regression import VarianceScaler
from uqkit.data import load_sklearn
from uqkit.models import BayesianLinearRegression


def classification_part(out: Path) -> None:
    data = load_sklearn("breast_cancer", test_fraction=0.4, val_fraction=0.2, seed=0)
    model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.3, random_state=0)
    model.fit(data.x_train.numpy(), data.y_train.numpy())
    # Any model works: uqkit only needs its logits (or probabilities) on validation and test inputs.
    logits_val = torch.from_numpy(model.decision_function(data.x_val.numpy()))
    logits_test = torch.from_numpy(model.decision_function(data.x_test.numpy()))
    logits_val = torch.stack([torch.zeros_like(logits_val), logits_val], -1)  # binary: logit of class 1 vs 0
    logits_test = torch.stack([torch.zeros_like(logits_test), logits_test], -1)

    print("classification (breast cancer, gradient boosting)")
    print(f"  {'method':12s} {'accuracy':>9s} {'nll':>8s} {'ece':>8s} {'brier':>8s}")
    temperature = TemperatureScaler().fit(logits_val, data.y_val)
    methods = {
        "uncalibrated": Predictive.from_logits(logits_test),
        "temperature": temperature.transform(logits_test),
        "isotonic": IsotonicCalibrator().fit(logits_val, data.y_val).transform(logits_test),
        "platt": PlattScaler().fit(logits_val, data.y_val).transform(logits_test),
    }
    for name, pred in methods.items():
        p = pred.mixture_probs()
        print(f"  {name:12s} {classification.accuracy(p, data.y_test):9.4f} {classification.nll(p, data.y_test):8.4f} "
              f"{classification.ece(p, data.y_test):8.4f} {classification.brier(p, data.y_test):8.4f}")

    # Isotonic maps can output exact 0/1 probabilities, so one confident mistake makes its NLL large.
    sets = ConformalClassifier(level=0.95, method="thr").fit(temperature.transform(logits_val), data.y_val)
    prediction_sets = sets.predict_set(methods["temperature"])
    covered = prediction_sets[torch.arange(len(data.y_test)), data.y_test].double().mean()
    print(f"  conformal THR sets at 95%: coverage {covered:.3f}, mean size {set_size(prediction_sets).double().mean():.2f}")

    report = uqkit.evaluate(methods["temperature"], data.y_test, title="Breast cancer, temperature-scaled boosting")
    print(f"  report: {report.to_html(out / 'classification')}")


def regression_part(out: Path) -> None:
    data = load_sklearn("diabetes", test_fraction=0.3, val_fraction=0.2, seed=0)
    blr = BayesianLinearRegression(prior_precision=None, noise_var=None).fit(data.x_train, data.y_train)
    pred_val, pred_test = blr.predict(data.x_val), blr.predict(data.x_test)
    scaled = VarianceScaler().fit(pred_val, data.y_val).transform(pred_test)
    lower, upper = SplitConformalRegressor(level=0.9).fit(pred_val, data.y_val).predict_interval(pred_test)
    conformal_cover = ((data.y_test >= lower) & (data.y_test <= upper)).double().mean()

    print("regression (diabetes, Bayesian linear regression; standardised targets)")
    for name, pred in {"model": pred_test, "variance-scaled": scaled}.items():
        m = regression.regression_metrics(pred, data.y_test)
        print(f"  {name:16s} rmse {m['rmse']:.4f}  nll {m['nll']:.4f}  crps {m['crps']:.4f}  "
              f"coverage_90 {m['coverage_90']:.3f}  width_90 {m['width_90']:.3f}")
    print(f"  split conformal 90%: coverage {conformal_cover:.3f}, width {(upper - lower).mean():.3f}")
    report = uqkit.evaluate(pred_test, data.y_test, title="Diabetes, Bayesian linear regression")
    print(f"  report: {report.to_html(out / 'regression')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tutorial-scoring"))
    args = parser.parse_args()
    np.random.seed(0)
    classification_part(args.out)
    regression_part(args.out)


if __name__ == "__main__":
    main()
