"""UCI baselines for `benchmarks/uci.py`: deep ensembles, MC dropout and deep evidential regression.

Each function maps a standardised `UCISplit` and a seed to a `Predictive` on ``split.x_test`` in
standardised units, following the published protocol (METHODS.md sections 10 and 9):

* ``ensemble``: 5 members, 1 hidden layer of 50 ReLU units (100 for protein), mean and variance
  heads with the Gaussian NLL, adversarial training with epsilon = 1% of each input's range, 40
  epochs, batch 100, Adam (Lakshminarayanan et al., 2017).
* ``mc_dropout``: dropout on the input and hidden layer, 1 x 50 ReLU (100 for protein), 400 epochs
  (the repository's "new" protocol, 10 x 40), batch 128, Gal's weight decay with length scale 1e-2;
  the dropout rate in {0.005, 0.01, 0.05, 0.1}
  and the precision tau chosen per split on an 80/20 split of the training data by validation
  log-likelihood, then retrained on the whole training split; T = 1000 passes at test time.
* ``der``: 1 x 50 ReLU with an NIG head, the authors' adaptive evidence regulariser (target 0.01,
  multiplier from 0 at rate 1e-4), 40 epochs, per-data-set learning rate and batch size from their
  grid search; a run whose test NLL is not finite is repeated with another seed, as theirs.

Run them through this file (it registers them in the runner when the runner does not know them yet):

    python benchmarks/uci_baselines.py --method ensemble --dataset yacht --splits 5 --threads 1
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from uqkit.calibration.predictive import Predictive
from uqkit.data.uci import UCISplit
from uqkit.inference.ensemble import fit_ensemble
from uqkit.inference.evidential import NormalInverseGamma, fit_der
from uqkit.inference.mc_dropout import fit_mc_dropout
from uqkit.models.likelihoods import Gaussian, HeteroscedasticGaussian
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec

#: DER learning rate and batch size per data set (Amini et al.'s grid search, METHODS.md section 9).
DER_SETTINGS: dict[str, tuple[float, int]] = {
    "yacht": (5e-4, 1), "naval-propulsion-plant": (5e-4, 1), "concrete": (5e-3, 1), "energy": (2e-3, 1),
    "kin8nm": (1e-3, 1), "power-plant": (1e-3, 2), "bostonHousing": (1e-3, 8), "wine-quality-red": (1e-4, 32),
    "protein-tertiary-structure": (1e-3, 64),
}
DROPOUT_RATES = (0.005, 0.01, 0.05, 0.1)
#: Candidate precisions tau for standardised targets (a log grid: the per-data-set grids of Gal's
#: repository are not part of the stored data; tau is cheap to choose once the passes are drawn).
TAU_GRID = np.exp(np.linspace(np.log(0.5), np.log(2000.0), 200))
NUM_PASSES = 1000
MC_DROPOUT_EPOCHS = 400  # 10 x 40: 40 epochs of batch 128 leave the small data sets far from fitted
_PRIOR = IsotropicGaussian(1.0)  # unused by these objectives (maximum likelihood); ModelSpec needs one


def _hidden(split: UCISplit) -> int:
    return 100 if split.name == "protein-tertiary-structure" else 50


def ensemble(split: UCISplit, seed: int) -> Predictive:
    """Deep ensemble, Lakshminarayanan et al. (2017) UCI protocol."""
    x, y = split.x_train, split.y_train
    spec = ModelSpec(MLP(split.num_features, [_hidden(split)], 2, "relu").double(), _PRIOR, HeteroscedasticGaussian(),
                     x.shape[0])
    post = fit_ensemble(spec, (x, y), num_members=5, num_epochs=40, batch_size=100, lr=1e-2, adversarial=True,
                        epsilon=0.01, seed=seed, progress=False)
    return post.predict(split.x_test)


def _dropout_net(num_features: int, hidden: int, rate: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(rate), nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(rate),
                         nn.Linear(hidden, 1)).double()


def _dropout_passes(split: UCISplit, x: torch.Tensor, y: torch.Tensor, x_eval: torch.Tensor, rate: float,
                    seed: int) -> torch.Tensor:
    """``[T, n_eval]`` stochastic forward passes of a net trained on ``(x, y)`` with dropout ``rate``."""
    spec = ModelSpec(_dropout_net(split.num_features, _hidden(split), rate), _PRIOR, Gaussian(1.0), x.shape[0])
    post = fit_mc_dropout(spec, (x, y), num_epochs=MC_DROPOUT_EPOCHS, batch_size=128, lr=1e-3, num_passes=NUM_PASSES,
                          seed=seed, progress=False)
    return post.predict(x_eval).dist.mean


def _best_tau(passes: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(tau, mean log-likelihood)`` maximising the MC dropout log-likelihood of ``y`` over `TAU_GRID`."""
    scores = [float(Predictive.gaussian(passes, torch.tensor(1 / tau)).log_prob(y).mean()) for tau in TAU_GRID]
    best = int(np.argmax(scores))
    return float(TAU_GRID[best]), scores[best]


def mc_dropout(split: UCISplit, seed: int) -> Predictive:
    """MC dropout, Gal & Ghahramani (2016), with the per-split 80/20 grid search of Gal's repository."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(split.x_train.shape[0], generator=gen)
    num_fit = int(round(0.8 * order.numel()))
    fit_idx, val_idx = order[:num_fit], order[num_fit:]
    x_fit, y_fit = split.x_train[fit_idx], split.y_train[fit_idx]
    x_val, y_val = split.x_train[val_idx], split.y_train[val_idx]
    best = max(((rate, *_best_tau(_dropout_passes(split, x_fit, y_fit, x_val, rate, seed), y_val))
                for rate in DROPOUT_RATES), key=lambda r: r[2])
    rate, tau, _ = best
    passes = _dropout_passes(split, split.x_train, split.y_train, split.x_test, rate, seed)
    return Predictive.gaussian(passes, torch.tensor(1 / tau))


def der(split: UCISplit, seed: int) -> Predictive:
    """Deep evidential regression, Amini et al. (2020) UCI protocol (adaptive regulariser)."""
    lr, batch_size = DER_SETTINGS.get(split.name, (1e-3, 32))
    x, y = split.x_train, split.y_train
    for attempt in range(5):
        spec = ModelSpec(MLP(split.num_features, [_hidden(split)], 4, "relu").double(), _PRIOR, NormalInverseGamma(),
                         x.shape[0])
        post = fit_der(spec, (x, y), num_epochs=40, batch_size=batch_size, lr=lr, reg_weight=0.0, adaptive=True,
                       target=0.01, dual_lr=1e-4, seed=seed + 1000 * attempt, progress=False)
        pred = post.predict(split.x_test)
        if bool(torch.isfinite(pred.log_prob(split.y_test)).all()):
            return pred
    raise RuntimeError(f"der: {split.name} split {split.split}: non-finite test NLL in 5 attempts")


if __name__ == "__main__":
    from uci import METHODS, main, method  # benchmarks/ is on sys.path when this file runs as a script

    for _name, _fn in (("ensemble", ensemble), ("mc-dropout", mc_dropout), ("der", der)):
        if _name not in METHODS:  # uci.py may register them itself
            method(_name)(_fn)
    raise SystemExit(main())
