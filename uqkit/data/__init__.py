"""Data loaders: UCI standard splits, scikit-learn bundled sets, synthetic data."""

from uqkit.data.datasets import SKLEARN_DATASETS, TabularData, load_sklearn, make_regression_1d, train_statistics
from uqkit.data.episodes import DigitsFewShot, Episodes, PrototypeFewShot, SineLine
from uqkit.data.uci import UCI_ALIASES, UCISplit, load_uci, num_uci_splits, uci_datasets, uci_root

__all__ = [
    "SKLEARN_DATASETS",
    "UCI_ALIASES",
    "DigitsFewShot",
    "Episodes",
    "PrototypeFewShot",
    "SineLine",
    "TabularData",
    "UCISplit",
    "load_sklearn",
    "load_uci",
    "make_regression_1d",
    "num_uci_splits",
    "train_statistics",
    "uci_datasets",
    "uci_root",
]
