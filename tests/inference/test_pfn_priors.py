"""PFN prior simulators: GP covariances (vs sklearn), hyperprior moments, BNN and classification variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.gaussian_process.kernels import RBF

from uqkit.models import MLP, IsotropicGaussian, ModelSpec
from uqkit.models.likelihoods import Gaussian
from uqkit.models.pfn_priors import (
    BNNSimulator,
    ClassificationSimulator,
    GPHyperSimulator,
    GPSimulator,
    prior_by_name,
)


def test_gp_targets_have_the_rbf_covariance(generator):
    """``y^T Sigma^{-1} y ~ chi^2_n`` with Sigma from sklearn's RBF kernel: mean n, variance 2n."""
    sim = GPSimulator(lengthscale=0.3, outputscale=1.5, noise=0.05, input_dim=2)
    x, y = sim.sample(400, 6, generator=generator)
    assert x.shape == (400, 6, 2) and y.shape == (400, 6)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    quad = []
    for xb, yb in zip(x.numpy(), y.numpy()):
        cov = 1.5 * RBF(0.3)(xb) + 0.05 * np.eye(6)
        quad.append(yb @ np.linalg.solve(cov, yb))
    mcse = math.sqrt(2 * 6 / 400)
    assert float(np.mean(quad)) == pytest.approx(6.0, abs=4 * mcse)


def test_gp_hyper_marginal_variance_matches_the_hyperpriors(generator):
    hyper = {"lengthscale": (math.log(0.3), 0.3), "outputscale": (0.0, 0.4), "noise": (math.log(0.05), 0.5)}
    sim = GPHyperSimulator(hyper, input_dims=(1, 3))
    x, y = sim.sample(2000, 3, generator=generator)
    assert 1 <= x.shape[-1] <= 3
    expected = math.exp(0.4**2 / 2) + 1e-4 + math.exp(math.log(0.05) + 0.5**2 / 2)  # E[outputscale] + E[noise]
    per_dataset = y[:, 0].square()  # the first point of each dataset: independent draws
    mcse = float(per_dataset.std()) / math.sqrt(2000)
    assert float(per_dataset.mean()) == pytest.approx(expected, abs=4 * mcse)
    assert sim.info()["hyperpriors"]["noise"]["log_mean"] == pytest.approx(math.log(0.05))
    dims = {sim.sample(1, 2, generator=generator)[0].shape[-1] for _ in range(30)}
    assert dims == {1, 2, 3}


def test_same_generator_state_same_datasets():
    sim = prior_by_name("gp-hyper")
    a = sim.sample(3, 5, generator=torch.Generator().manual_seed(7))
    b = sim.sample(3, 5, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_bnn_prior_uses_the_spec_functions_plus_noise(generator):
    torch.manual_seed(0)
    spec = ModelSpec(MLP(2, [8], 1).double(), IsotropicGaussian(1.0), Gaussian(noise_std=0.1), num_data=10)
    sim = BNNSimulator(spec, noise=0.01, input_dim=2)
    x, y = sim.sample(4, 7, generator=generator)
    assert x.shape == (4, 7, 2) and y.shape == (4, 7) and bool(torch.isfinite(y).all())
    # with tiny noise, datasets are functions: equal inputs give (nearly) equal targets within a dataset
    tiny = BNNSimulator(spec, noise=1e-12, input_dim=2)
    g = torch.Generator().manual_seed(3)
    xs = torch.rand(1, 1, 2, generator=g).expand(1, 4, 2)
    ys = tiny.sample_y(xs, generator=g)
    torch.testing.assert_close(ys, ys[:, :1].expand(1, 4), atol=1e-5, rtol=0)


def test_classification_labels_are_balanced_quantile_bins(generator):
    sim = ClassificationSimulator(GPSimulator(0.3, 1.0, 0.01), num_classes=3)
    x, y = sim.sample(5, 30, generator=generator)
    assert set(y.unique().tolist()) == {0.0, 1.0, 2.0}
    assert bool((torch.stack([(y == c).sum(1) for c in range(3)]) == 10).all())
    assert sim.info()["num_classes"] == 3 and sim.task == "classification"


def test_bad_arguments():
    with pytest.raises(ValueError, match="lengthscale"):
        GPSimulator(lengthscale=-1.0, outputscale=1.0, noise=0.1)
    with pytest.raises(ValueError, match="hyperpriors"):
        GPHyperSimulator({"lengthscale": (0.0, 1.0)})
    with pytest.raises(ValueError, match="input_dim"):
        GPSimulator(0.3, 1.0, 0.1).sample(2, 3, generator=torch.Generator(), input_dim=2)
    with pytest.raises(ValueError, match="prior"):
        prior_by_name("nope")
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationSimulator(GPSimulator(0.3, 1.0, 0.1), num_classes=1)
