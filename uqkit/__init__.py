"""uqkit: Bayesian inference and uncertainty quantification for PyTorch."""

from uqkit.calibration.predictive import Predictive
from uqkit.inference.posterior import Posterior
from uqkit.registry import get_engine, register_engine

__version__ = "0.1.0"

__all__ = ["Posterior", "Predictive", "__version__", "get_engine", "register_engine"]
