"""uqkit: Bayesian inference and uncertainty quantification for PyTorch."""

from uqkit.calibration.evaluate import evaluate
from uqkit.calibration.predictive import Predictive
from uqkit.calibration.report import Report
from uqkit.inference.fit import fit
from uqkit.inference.posterior import Posterior
from uqkit.inference.sample import sample
from uqkit.registry import get_engine, register_engine
from uqkit.wrap import wrap

__version__ = "0.1.0"

__all__ = ["Posterior", "Predictive", "Report", "__version__", "evaluate", "fit", "get_engine", "register_engine", "sample", "wrap"]
