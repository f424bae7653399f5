"""Inference engines (one module each), the `fit`/`sample` drivers and the `Posterior` they produce.

Importing this package registers every built-in engine in `uqkit.registry.ENGINES`.
"""

from uqkit.inference import cyclical, hmc, nuts, sghmc, sgld  # noqa: F401  (registers the engines)
from uqkit.inference.base import Engine, StepInfo, Trace
from uqkit.inference.cascade import WindowCascade
from uqkit.inference.cyclical import Cyclical
from uqkit.inference.ensemble import fit_ensemble
from uqkit.inference.evidential import fit_der
from uqkit.inference.fit import fit
from uqkit.inference.hmc import HMC, HMCInfo, HMCState
from uqkit.inference.mc_dropout import fit_mc_dropout
from uqkit.inference.nuts import NUTS
from uqkit.inference.posterior import Posterior
from uqkit.inference.sample import sample
from uqkit.inference.sghmc import SGHMC
from uqkit.inference.sgld import SGLD

__all__ = [
    "HMC",
    "NUTS",
    "SGHMC",
    "SGLD",
    "Cyclical",
    "Engine",
    "HMCInfo",
    "HMCState",
    "Posterior",
    "StepInfo",
    "Trace",
    "WindowCascade",
    "fit",
    "fit_der",
    "fit_ensemble",
    "fit_mc_dropout",
    "sample",
]
