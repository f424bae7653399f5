"""Priors, likelihoods and model specifications."""

from uqkit.models.likelihoods import Bernoulli, Categorical, Gaussian, HeteroscedasticGaussian, Likelihood
from uqkit.models.linear import BayesianLinearRegression
from uqkit.models.nets import MLP
from uqkit.models.priors import (
    AnalyticGradPrior,
    GibbsPrior,
    HierarchicalLayerwiseGaussian,
    IsotropicGaussian,
    LayerwiseGaussian,
    Prior,
)
from uqkit.models.spec import ModelSpec

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
    "IsotropicGaussian",
    "LayerwiseGaussian",
    "Likelihood",
    "ModelSpec",
    "Prior",
]
