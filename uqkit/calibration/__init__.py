"""Scoring: the `Predictive` type, calibration/OOD/selective/regression metrics, recalibration, reports."""

from uqkit.calibration.predictive import Predictive

__all__ = ["Predictive"]
