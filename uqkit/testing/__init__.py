"""Reusable statistical checks for engines and metrics, and simulation-based calibration."""

from uqkit.testing.sbc import SBCResult, sbc_ranks, sbc_test, simulation_based_calibration

__all__ = ["SBCResult", "sbc_ranks", "sbc_test", "simulation_based_calibration"]
