"""Small in-memory data sets: scikit-learn's bundled tables (no download) and synthetic regression.

`load_sklearn` gives seeded, stratified (for classification) train/validation/test splits with
features standardised by training-split statistics; `make_regression_1d` draws a 1-D toy problem,
optionally with a gap in the inputs to probe in-between uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from uqkit._checks import check_positive

Task = Literal["classification", "regression"]

#: The bundled scikit-learn tables `load_sklearn` serves: name -> (loader in sklearn.datasets, task).
SKLEARN_DATASETS: dict[str, tuple[str, Task]] = {
    "digits": ("load_digits", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "wine": ("load_wine", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}

_REGRESSION_1D_RANGE = 3.0  # inputs lie in [-3, 3]
_REGRESSION_1D_GAP = 1.0  # with gap=True no input falls in (-1, 1)


@dataclass(frozen=True)
class TabularData:
    """A table split into train/validation/test parts.

    Attributes:
        name: the data set's name.
        task: "classification" or "regression".
        x_train, x_val, x_test: float64 features ``[n, d]`` (standardised when asked; ``x_val`` has
            zero rows when no validation part was requested).
        y_train, y_val, y_test: ``[n]`` int64 class labels (classification) or float64 targets
            (regression; standardised when asked).
        num_classes: number of classes (classification) or None.
        feature_names: ``d`` feature names.
        target_names: class names (classification) or the target's name (regression).
        x_mean, x_std: ``[d]`` training-split statistics used to standardise (0 and 1 when not).
        y_mean, y_std: regression target statistics used to standardise (0 and 1 otherwise); a
            prediction ``m`` in standardised units is ``m * y_std + y_mean`` in the original units.
    """

    name: str
    task: Task
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int | None
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    x_mean: Tensor
    x_std: Tensor
    y_mean: float
    y_std: float

    @property
    def num_features(self) -> int:
        """d, the number of input features."""
        return int(self.x_train.shape[1])


def train_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Column means and standard deviations (``ddof=0``) of ``x [n, d]``, with a zero std replaced by 1.

    The guard keeps constant columns (e.g. always-blank pixels) at 0 after standardising instead of NaN.
    """
    mean = x.mean(0)
    std = x.std(0, correction=0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def load_sklearn(
    name: str,
    *,
    test_fraction: float = 0.25,
    val_fraction: float = 0.0,
    seed: int = 0,
    standardize: bool = True,
) -> TabularData:
    """Load a scikit-learn bundled data set and split it.

    Args:
        name: "digits", "breast_cancer", "wine" (classification) or "diabetes" (regression).
        test_fraction: share of all rows held out for testing, in (0, 1).
        val_fraction: share of all rows held out for validation, in [0, 1); 0 gives an empty part.
        seed: seeds the shuffles; the same seed gives the same split.
        standardize: standardise features (and regression targets) with training-split statistics.

    Returns:
        A `TabularData`; classification splits are stratified by class.
    """
    if not isinstance(name, str) or name not in SKLEARN_DATASETS:
        raise ValueError(f"name: expected one of {', '.join(SKLEARN_DATASETS)}, got {name!r}")
    test_fraction = _check_fraction(test_fraction, "test_fraction", allow_zero=False)
    val_fraction = _check_fraction(val_fraction, "val_fraction", allow_zero=True)
    if test_fraction + val_fraction >= 1:
        raise ValueError(
            f"val_fraction: expected test_fraction + val_fraction < 1 to leave training rows, "
            f"got {test_fraction} + {val_fraction}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
    # scikit-learn is imported here so that `import uqkit.data` (and the UCI loader) stays light.
    from sklearn import datasets as sk_datasets
    from sklearn.model_selection import train_test_split

    loader, task = SKLEARN_DATASETS[name]
    bunch = getattr(sk_datasets, loader)()
    x = torch.as_tensor(np.asarray(bunch.data, dtype=np.float64))
    classify = task == "classification"
    y = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64 if classify else np.float64))

    rows = np.arange(x.shape[0])
    labels = y.numpy() if classify else None
    rest, test = train_test_split(rows, test_size=test_fraction, stratify=labels, random_state=seed)
    if val_fraction > 0:
        rest_labels = labels[rest] if classify else None
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=rest_labels, random_state=seed
        )
    else:
        train, val = rest, rest[:0]
    train, val, test = (torch.as_tensor(np.sort(idx)) for idx in (train, val, test))

    if standardize:
        x_mean, x_std = train_statistics(x[train])
    else:
        x_mean, x_std = torch.zeros(x.shape[1], dtype=x.dtype), torch.ones(x.shape[1], dtype=x.dtype)
    y_mean, y_std = 0.0, 1.0
    if standardize and not classify:
        y_mean_t, y_std_t = train_statistics(y[train].unsqueeze(-1))
        y_mean, y_std = float(y_mean_t), float(y_std_t)
    x = (x - x_mean) / x_std
    if not classify:
        y = (y - y_mean) / y_std
    target_names = tuple(str(t) for t in bunch.target_names) if classify else ("target",)
    return TabularData(
        name=name,
        task=task,
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        x_test=x[test],
        y_test=y[test],
        num_classes=len(target_names) if classify else None,
        feature_names=tuple(str(f) for f in bunch.feature_names),
        target_names=target_names,
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
    )


def make_regression_1d(
    num_points: int, *, noise: float = 0.1, generator: torch.Generator, gap: bool = False
) -> tuple[Tensor, Tensor]:
    """Noisy samples of ``y = sin(2x) + noise * eps`` with ``eps ~ N(0, 1)``.

    Args:
        num_points: number of points.
        noise: standard deviation of the additive Gaussian noise (target units), >= 0.
        generator: the source of randomness.
        gap: draw ``x`` uniformly from ``[-3, -1] u [1, 3]`` (half on each side on average) instead of
            ``[-3, 3]``; a well-calibrated model should be less certain inside the gap.

    Returns:
        ``x [num_points, 1]`` and ``y [num_points]`` in the default float dtype.
    """
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 1:
        raise ValueError(f"num_points: expected a positive integer, got {num_points!r}")
    noise = check_positive(noise, "noise", allow_zero=True)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    dtype = torch.get_default_dtype()
    u = torch.rand(int(num_points), generator=generator, dtype=dtype)
    if gap:
        width = _REGRESSION_1D_RANGE - _REGRESSION_1D_GAP
        side = torch.randint(0, 2, (int(num_points),), generator=generator).to(dtype) * 2 - 1
        x = side * (_REGRESSION_1D_GAP + width * u)
    else:
        x = _REGRESSION_1D_RANGE * (2 * u - 1)
    eps = torch.randn(int(num_points), generator=generator, dtype=dtype)
    return x.unsqueeze(-1), torch.sin(2 * x) + noise * eps


def _check_fraction(value: float, name: str, *, allow_zero: bool) -> float:
    v = check_positive(value, name, allow_zero=allow_zero)
    if v >= 1:
        raise ValueError(f"{name}: expected a fraction in {'[0' if allow_zero else '(0'}, 1), got {value!r}")
    return v
