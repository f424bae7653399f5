"""UCI method ``pfn`` for `benchmarks/uci.py`: the shipped ``gp-hyper`` PFN, one forward pass per split.

The PFN was trained on inputs of 1..5 dimensions in [0, 1] and contexts of at most ``max_context``
points, so: data sets with more than 5 features are refused with a clear error (of the standard UCI
sets only power-plant, d = 4, qualifies); features are min-max scaled with the training split's range
(test points may fall slightly outside [0, 1]); and the context is a random subset of
``max_context`` training points (seeded by the split and the seed). Targets are the split's
standardised targets, matching the prior's unit-scale outputscale.

    python benchmarks/uci.py --method pfn --dataset power-plant --splits 20 --threads 1
"""

from __future__ import annotations

import torch

from uqkit.calibration.predictive import Predictive
from uqkit.data.uci import UCISplit
from uqkit.inference import PFN


def pfn(split: UCISplit, seed: int) -> Predictive:
    """``gp-hyper`` PFN predictive on ``split.x_test`` (standardised units)."""
    model = PFN.pretrained("gp-hyper")
    lo, hi = model.input_dims
    if not lo <= split.num_features <= hi:
        raise ValueError(f"pfn: the gp-hyper PFN takes {lo}..{hi} input features; {split.name} has {split.num_features}")
    g = torch.Generator().manual_seed(1000 * seed + split.split)
    n = min(int(model.prior_info["max_context"]), split.x_train.shape[0])
    idx = torch.randperm(split.x_train.shape[0], generator=g)[:n]
    x_min, x_max = split.x_train.amin(0), split.x_train.amax(0)
    span = torch.where(x_max > x_min, x_max - x_min, torch.ones_like(x_max))

    def scale(x: torch.Tensor) -> torch.Tensor:  # to [0, 1] by the training range; the PFN accepts a 25% margin
        return ((x - x_min) / span).clamp(-0.2, 1.2)

    return model.predict(scale(split.x_train[idx]), split.y_train[idx], scale(split.x_test))
