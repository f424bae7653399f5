"""Mahalanobis scores against scikit-learn's covariance estimators and a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from torch import nn

from uqkit.wrap import MahalanobisWrapper, wrap
from uqkit.wrap.mahalanobis import ledoit_wolf_covariance


@pytest.mark.parametrize("shape", [(50, 6), (8, 12), (200, 3)])
def test_ledoit_wolf_matches_sklearn(generator, shape):
    x = torch.randn(*shape, generator=generator) * torch.linspace(0.2, 3, shape[1])
    ours, shrinkage = ledoit_wolf_covariance(x)
    ref = LedoitWolf(assume_centered=True).fit(x.numpy())
    np.testing.assert_allclose(ours.numpy(), ref.covariance_, rtol=1e-10, atol=1e-12)
    assert shrinkage == pytest.approx(ref.shrinkage_, rel=1e-10, abs=1e-12)


def _direct_scores(features, labels, queries, estimator):
    """min over classes of sklearn's squared Mahalanobis distance with the pooled within-class covariance."""
    f, q = features.numpy(), queries.numpy()
    classes = np.unique(labels.numpy())
    means = np.stack([f[labels.numpy() == c].mean(0) for c in classes])
    residuals = f - means[np.searchsorted(classes, labels.numpy())]
    est = estimator(assume_centered=True).fit(residuals)
    return np.stack([est.mahalanobis(q - m) for m in means], 1).min(1)


@pytest.mark.parametrize("covariance, estimator", [("empirical", EmpiricalCovariance), ("ledoit_wolf", LedoitWolf)])
def test_scores_match_sklearn_on_penultimate_features(classifier, blobs, generator, covariance, estimator):
    x, y = blobs
    wrapped = wrap(classifier, "mahalanobis", covariance=covariance).fit(x, y)
    x_new = torch.randn(30, x.shape[1], generator=generator) * 4
    features = classifier[:4]  # everything before the last nn.Linear
    expected = _direct_scores(features(x), y, features(x_new), estimator)
    np.testing.assert_allclose(wrapped.ood_score(x_new).numpy(), expected, rtol=1e-9)
    out = wrapped(x_new)
    assert torch.equal(out.predictive.probs[0], torch.softmax(out.output, -1))


def test_named_conv_layer_is_pooled_and_unlabelled_data_gives_one_gaussian(build, generator):
    model = build(lambda: nn.Sequential(
        nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 2)
    )).eval()
    x = torch.randn(40, 1, 6, 6, generator=generator)
    wrapped = MahalanobisWrapper(model, layer="1").fit(x)  # features: ReLU maps [N, 5, 6, 6] averaged to [N, 5]
    assert wrapped.means_.shape == (1, 5)
    pooled = model[:2](x).mean((2, 3))
    x_new = torch.randn(7, 1, 6, 6, generator=generator)
    expected = _direct_scores(pooled, torch.zeros(40, dtype=torch.long), model[:2](x_new).mean((2, 3)), LedoitWolf)
    np.testing.assert_allclose(wrapped.ood_score(x_new).numpy(), expected, rtol=1e-9)


def test_too_little_data_names_the_minimum(classifier, blobs):
    x, y = blobs
    # Penultimate features have 8 dimensions; 3 classes: empirical needs 3 + 8 = 11 samples.
    with pytest.raises(ValueError, match=r"^data: the empirical covariance needs at least 11 fitting samples \(num_classes \+ num_features = 3 \+ 8\), got 9"):
        wrap(classifier, "mahalanobis", covariance="empirical").fit(x[:9], y[:9])
    with pytest.raises(ValueError, match=r"^data: the ledoit_wolf covariance needs at least 4 fitting samples \(num_classes \+ 1 = 3 \+ 1\), got 3"):
        wrap(classifier, "mahalanobis").fit(x[:3], y[:3])
    wrap(classifier, "mahalanobis").fit(x[:4], y[:4])  # the minimum works


def test_singular_empirical_covariance_is_refused(build, generator):
    model = build(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))).eval()
    with torch.no_grad():
        model[0].weight[0].zero_()
        model[0].bias[0] = -1.0  # unit 0 is dead: a constant zero feature
    x = torch.randn(50, 3, generator=generator)
    with pytest.raises(ValueError, match="^covariance: the empirical covariance of the features is singular"):
        MahalanobisWrapper(model, covariance="empirical").fit(x)
    assert bool(torch.isfinite(MahalanobisWrapper(model).fit(x).ood_score(x)).all())
