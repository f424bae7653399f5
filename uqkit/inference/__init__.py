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
from uqkit.inference.meta import MAML, NIWMeta, ProtoNet
from uqkit.inference.mfvi import VariationalPosterior, fit_mfvi, load_variational
from uqkit.inference.nuts import NUTS
from uqkit.inference.pfn import PFN
from uqkit.inference.posterior import Posterior
from uqkit.inference.sample import sample
from uqkit.inference.sghmc import SGHMC
from uqkit.inference.sgld import SGLD
from uqkit.inference.ssvi import fit_ssvi

__all__ = [
    "HMC",
    "MAML",
    "NUTS",
    "NIWMeta",
    "ProtoNet",
    "PFN",
    "SGHMC",
    "SGLD",
    "Cyclical",
    "Engine",
    "HMCInfo",
    "HMCState",
    "Posterior",
    "StepInfo",
    "Trace",
    "VariationalPosterior",
    "WindowCascade",
    "fit",
    "fit_der",
    "fit_ensemble",
    "fit_mc_dropout",
    "fit_mfvi",
    "fit_ssvi",
    "load_variational",
    "sample",
]
