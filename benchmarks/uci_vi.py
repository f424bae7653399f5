"""UCI methods for `benchmarks/uci.py`: mean-field VI (``mfvi``) and sparse subspace VI (``ssvi``).

Both fit a 1 x 50 ReLU network (100 for protein) with the layer-wise Gaussian prior N(0, 1/fan_in)
(biases N(0, 1)) and a learned noise level (a point estimate), on the full ELBO (KL scale 1, linear
warm-up over the first half), 3000 Adam steps of batch 128 at lr 1e-2 with a cosine schedule, and
predict with 64 weight draws. ``ssvi`` keeps 25% of the coordinates with the library's default
subspace schedule (`uqkit.inference.ssvi.SparseSubspace`); since a one-hidden-layer network's first layer holds most of its weights, the first layer
is masked too (``dense_first_layer=False``).

    python benchmarks/uci.py --method mfvi --dataset yacht --splits 5 --threads 1
"""

from __future__ import annotations

from uqkit.calibration.predictive import Predictive
from uqkit.data.uci import UCISplit
from uqkit.inference.fit import fit
from uqkit.models import MLP, Gaussian, LayerwiseGaussian, ModelSpec

SETTINGS = {"num_steps": 3000, "batch_size": 128, "lr": 1e-2, "kl_scale": 1.0, "num_draws": 64}


def _spec(split: UCISplit) -> ModelSpec:
    hidden = 100 if split.name == "protein-tertiary-structure" else 50
    return ModelSpec(MLP(split.num_features, [hidden], 1, "relu").double(), LayerwiseGaussian(1.0, 1.0),
                     Gaussian(noise_std=0.1**0.5, learn_noise=True), num_data=split.x_train.shape[0])


def mfvi(split: UCISplit, seed: int) -> Predictive:
    """Dense mean-field VI (Bayes by Backprop with the local reparameterisation)."""
    post = fit(_spec(split), (split.x_train, split.y_train), engine="mfvi", seed=seed, progress=False, **SETTINGS)
    return post.predict(split.x_test)


def ssvi(split: UCISplit, seed: int) -> Predictive:
    """SSVI at density 0.25, first layer masked too."""
    post = fit(_spec(split), (split.x_train, split.y_train), engine="ssvi", density=0.25, dense_first_layer=False,
               seed=seed, progress=False, **SETTINGS)
    return post.predict(split.x_test)
