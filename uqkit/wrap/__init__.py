"""Wrapping frozen models with uncertainty: ``uqkit.wrap(model, method, **options).fit(x, y)``."""

from uqkit.wrap.api import wrap
from uqkit.wrap.base import WRAPPERS, FrozenWrapper, WrappedOutput, state_dict_hash
from uqkit.wrap.bayescap import BayesCap, bayescap_loss
from uqkit.wrap.ggd import GeneralizedGaussian, ggd_log_prob, ggd_variance
from uqkit.wrap.laplace import LastLayerLaplace
from uqkit.wrap.mahalanobis import MahalanobisWrapper
from uqkit.wrap.metrics import error_correlation, uncertainty_calibration_error
from uqkit.wrap.temperature import TemperatureWrapper

__all__ = [
    "WRAPPERS",
    "BayesCap",
    "FrozenWrapper",
    "GeneralizedGaussian",
    "LastLayerLaplace",
    "MahalanobisWrapper",
    "TemperatureWrapper",
    "WrappedOutput",
    "bayescap_loss",
    "error_correlation",
    "ggd_log_prob",
    "ggd_variance",
    "state_dict_hash",
    "uncertainty_calibration_error",
    "wrap",
]
