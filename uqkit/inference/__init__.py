"""Inference engines (one module each), the `fit` driver and the `Posterior` they produce.

Importing this package registers every built-in engine in `uqkit.registry.ENGINES`.
"""

from uqkit.inference import cyclical, sghmc, sgld  # noqa: F401  (registers the engines)
from uqkit.inference.base import Engine, StepInfo, Trace
from uqkit.inference.cyclical import Cyclical
from uqkit.inference.fit import fit
from uqkit.inference.posterior import Posterior
from uqkit.inference.sghmc import SGHMC
from uqkit.inference.sgld import SGLD

__all__ = ["SGHMC", "SGLD", "Cyclical", "Engine", "Posterior", "StepInfo", "Trace", "fit"]
