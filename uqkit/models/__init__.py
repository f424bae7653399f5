"""Priors, likelihoods and model specifications."""

from uqkit.models.likelihoods import Bernoulli, Categorical, Gaussian, HeteroscedasticGaussian, Likelihood
from uqkit.models.linear import BayesianLinearRegression
from uqkit.models.nets import MLP
from uqkit.models.niw import NormalInverseWishart, VariationalNIW
from uqkit.models.priors import (
    AnalyticGradPrior,
    GibbsPrior,
    HierarchicalLayerwiseGaussian,
    IndependentGaussian,
    IsotropicGaussian,
    LayerwiseGaussian,
    Prior,
)
from uqkit.models.gp_prior import GPPrior
from uqkit.models.matched_priors import PerLayerGaussian, PerLayerHierarchicalGaussian
from uqkit.models.spec import ModelSpec
from uqkit.models.wasserstein import MatchResult, estimate_w1, match_prior, match_prior_restarts

__all__ = [
    "MLP",
    "AnalyticGradPrior",
    "BayesianLinearRegression",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "GibbsPrior",
    "HeteroscedasticGaussian",
    "HierarchicalLayerwiseGaussian",
    "IndependentGaussian",
    "IsotropicGaussian",
    "LayerwiseGaussian",
    "Likelihood",
    "ModelSpec",
    "Prior",
    "GPPrior",
    "MatchResult",
    "PerLayerGaussian",
    "PerLayerHierarchicalGaussian",
    "estimate_w1",
    "match_prior",
    "match_prior_restarts",
    "NormalInverseWishart",
    "VariationalNIW",
]

#: NNGP and scale-mixture exports, loaded on first use: the NNGP kernel imports gpytorch (seconds).
_LAZY = {
    "NNGPKernel": "uqkit.models.nngp",
    "NNGPRegression": "uqkit.models.scale_mixture",
    "StudentTProcess": "uqkit.models.scale_mixture",
    "ScaleMixtureGP": "uqkit.models.scale_mixture",
    "BurrXII": "uqkit.models.scale_priors",
    "ScaleMixtureClassifier": "uqkit.models.scale_mixture_classifier",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'uqkit.models' has no attribute {name!r}")
