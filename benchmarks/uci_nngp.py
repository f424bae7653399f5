"""UCI methods for `benchmarks/uci.py`: the NNGP (Gaussian) baseline and the Student-t process.

Both use a 3-hidden-layer ReLU NNGP kernel (`uqkit.models.NNGPKernel`) plus a learned jitter, and fit
every hyperparameter (weight and bias variances, jitter, and the output scale for ``nngp`` or the
inverse-gamma ``a, b`` for ``stp``) by maximising the exact marginal likelihood (100 Adam steps,
learning rate 0.1 on log-parameters), then predict the test split (METHODS.md section 5):

* ``nngp``: Gaussian predictive ``N(m*, s c*)``;
* ``stp``: Student-t predictive with ``2a + n`` degrees of freedom.

Cost on 2 shared cores: each fitting step differentiates the n x n kernel recursion, so the
hyperparameters are fitted on a random subset of at most `FIT_SIZE` training points; the prediction
then conditions on at most `MAX_TRAIN` training points (all of them except for kin8nm, 7373 points,
and wine, 1439, which are subsampled). Subsets are random, seeded by the split and the seed.

    python benchmarks/uci_nngp.py --method stp --dataset yacht --splits 5 --threads 1
"""

from __future__ import annotations

import torch

from uqkit.calibration.predictive import Predictive
from uqkit.data.uci import UCISplit
from uqkit.models import NNGPKernel, NNGPRegression, StudentTProcess

FIT_SIZE = 400
MAX_TRAIN = 1000
DEPTH = 3
NUM_STEPS = 100
LR = 0.1


def _fit_predict(model: NNGPRegression | StudentTProcess, split: UCISplit, seed: int) -> Predictive:
    """Fit on a random subset of at most `FIT_SIZE` points, condition on at most `MAX_TRAIN`, predict the test split."""
    order = torch.randperm(split.x_train.shape[0], generator=torch.Generator().manual_seed(1000 * seed + split.split))
    fit_idx, cond_idx = order[:FIT_SIZE], order[:MAX_TRAIN]
    model.fit(split.x_train[fit_idx], split.y_train[fit_idx], num_steps=NUM_STEPS, lr=LR)
    return model.fit(split.x_train[cond_idx], split.y_train[cond_idx], num_steps=0).predict(split.x_test)


def _kernel() -> NNGPKernel:
    return NNGPKernel(depth=DEPTH, weight_var=2.0, bias_var=0.1, activation="relu")


def nngp(split: UCISplit, seed: int) -> Predictive:
    """NNGP regression (Gaussian), hyperparameters by marginal likelihood."""
    return _fit_predict(NNGPRegression(_kernel(), jitter=0.1), split, seed)


def stp(split: UCISplit, seed: int) -> Predictive:
    """Student-t process on the NNGP kernel (inverse-gamma scale), hyperparameters by marginal likelihood."""
    return _fit_predict(StudentTProcess(_kernel(), a=2.0, b=2.0, jitter=0.1), split, seed)


if __name__ == "__main__":
    from uci import METHODS, main, method  # benchmarks/ is on sys.path when this file runs as a script

    for _name, _fn in (("nngp", nngp), ("stp", stp)):
        if _name not in METHODS:  # uci.py may register them itself
            method(_name)(_fn)
    raise SystemExit(main())
