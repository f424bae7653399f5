"""scikit-learn bundled sets (splits, stratification, standardisation) and the synthetic 1-D regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import datasets as sk_datasets

from uqkit.data import load_sklearn, make_regression_1d, train_statistics

BUNDLED = {
    "digits": (sk_datasets.load_digits, 10),
    "breast_cancer": (sk_datasets.load_breast_cancer, 2),
    "wine": (sk_datasets.load_wine, 3),
    "diabetes": (sk_datasets.load_diabetes, None),
}


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("name", list(BUNDLED))
def test_parts_partition_the_table(name):
    loader, num_classes = BUNDLED[name]
    bunch = loader()
    data = load_sklearn(name, test_fraction=0.2, val_fraction=0.2, seed=3)
    n, d = bunch.data.shape
    assert data.num_features == d and len(data.feature_names) == d
    assert data.task == ("regression" if num_classes is None else "classification")
    assert data.num_classes == num_classes
    parts = [(data.x_train, data.y_train), (data.x_val, data.y_val), (data.x_test, data.y_test)]
    assert sum(x.shape[0] for x, _ in parts) == n
    assert data.x_test.shape[0] == math.ceil(0.2 * n)  # sklearn rounds the held-out share up
    # Undo the standardisation: the three parts hold exactly the original rows (with their targets).
    unscaled = [torch.cat([x * data.x_std + data.x_mean, (y * data.y_std + data.y_mean)[:, None]], 1) for x, y in parts]
    rows = torch.cat(unscaled)
    original = np.c_[bunch.data, bunch.target]
    np.testing.assert_allclose(_sorted_rows(rows.numpy()), _sorted_rows(original), rtol=1e-12, atol=1e-12)
    for x, y in parts:
        assert x.dtype == torch.float64
        assert y.dtype == (torch.float64 if num_classes is None else torch.int64)


def test_standardisation_uses_training_rows_only():
    data = load_sklearn("diabetes", seed=1)
    np.testing.assert_allclose(data.x_train.mean(0).numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(data.x_train.std(0, correction=0).numpy(), 1, rtol=1e-12)
    assert float(data.y_train.mean()) == pytest.approx(0, abs=1e-12)
    assert float(data.y_train.std(correction=0)) == pytest.approx(1, rel=1e-12)
    raw_train = data.x_train * data.x_std + data.x_mean
    np.testing.assert_allclose(data.x_mean.numpy(), raw_train.numpy().mean(0), rtol=1e-12)
    assert float(data.x_test.mean(0).abs().max()) > 1e-3  # test rows are not re-centred


def test_constant_columns_get_unit_std():
    data = load_sklearn("digits")
    raw = sk_datasets.load_digits().data
    constant = raw.std(0) == 0  # pixels that are blank in every image
    assert constant.any()
    assert bool((data.x_std[torch.as_tensor(constant)] == 1).all())
    assert bool(torch.isfinite(data.x_test).all())


def test_classification_splits_are_stratified():
    data = load_sklearn("wine", test_fraction=0.3, val_fraction=0.2, seed=5)
    total = torch.bincount(torch.cat([data.y_train, data.y_val, data.y_test]), minlength=3).double()
    for y in (data.y_train, data.y_val, data.y_test):
        expected = total * y.shape[0] / total.sum()
        # Stratified splitting puts within one row of the proportional count of each class in every part.
        assert bool(((torch.bincount(y, minlength=3) - expected).abs() <= 1).all())
    assert data.target_names == ("class_0", "class_1", "class_2")


def test_seed_controls_the_split():
    a, b, c = (load_sklearn("breast_cancer", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)


def test_without_standardisation_values_are_raw():
    data = load_sklearn("wine", standardize=False, val_fraction=0.0)
    assert data.x_val.shape == (0, 13) and data.y_val.shape == (0,)
    assert bool((data.x_mean == 0).all()) and bool((data.x_std == 1).all())
    raw = sk_datasets.load_wine().data
    assert float(data.x_train.max()) == pytest.approx(float(raw.max()))


def test_train_statistics_matches_numpy(generator):
    x = torch.randn(30, 4, generator=generator) * torch.tensor([1.0, 2.0, 0.5, 0.0]) + 3
    mean, std = train_statistics(x)
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(std.numpy()[:3], x.numpy().std(0)[:3], rtol=1e-12)
    assert float(std[3]) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "mnist"}, ValueError, "^name"),
        ({"name": "wine", "test_fraction": 0.0}, ValueError, "^test_fraction"),
        ({"name": "wine", "test_fraction": 1.0}, ValueError, "^test_fraction"),
        ({"name": "wine", "val_fraction": -0.1}, ValueError, "^val_fraction"),
        ({"name": "wine", "test_fraction": 0.5, "val_fraction": 0.5}, ValueError, "^val_fraction"),
        ({"name": "wine", "seed": 1.5}, TypeError, "^seed"),
    ],
)
def test_load_sklearn_rejects_bad_arguments(kwargs, error, match):
    name = kwargs.pop("name")
    with pytest.raises(error, match=match):
        load_sklearn(name, **kwargs)


def test_regression_1d_noise_matches_request(generator):
    num_points, noise = 4000, 0.3
    x, y = make_regression_1d(num_points, noise=noise, generator=generator)
    assert x.shape == (num_points, 1) and y.shape == (num_points,) and x.dtype == torch.float64
    assert float(x.min()) >= -3 and float(x.max()) <= 3
    resid = (y - torch.sin(2 * x[:, 0])).numpy()
    # The sample variance of n Gaussian residuals has standard error noise^2 * sqrt(2 / n).
    assert abs(resid.var() - noise**2) < 4 * noise**2 * math.sqrt(2 / num_points)
    assert abs(resid.mean()) < 4 * noise / math.sqrt(num_points)


def test_regression_1d_gap_leaves_the_middle_empty(generator):
    x, y = make_regression_1d(1000, noise=0.0, generator=generator, gap=True)
    inside = x[:, 0].abs()
    assert float(inside.min()) >= 1 and float(inside.max()) <= 3
    num_left = int((x[:, 0] < 0).sum())
    assert abs(num_left - 500) < 4 * math.sqrt(1000 * 0.25)  # a fair coin picks the side
    torch.testing.assert_close(y, torch.sin(2 * x[:, 0]))


def test_regression_1d_is_reproducible():
    a = make_regression_1d(50, generator=torch.Generator().manual_seed(7))
    b = make_regression_1d(50, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_regression_1d_rejects_bad_arguments(generator):
    with pytest.raises(ValueError, match="^num_points"):
        make_regression_1d(0, generator=generator)
    with pytest.raises(ValueError, match="^noise"):
        make_regression_1d(10, noise=-1.0, generator=generator)
    with pytest.raises(TypeError, match="^generator"):
        make_regression_1d(10, generator=0)
