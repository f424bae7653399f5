"""MC dropout (Gal & Ghahramani, ICML 2016): dropout kept on at test time as approximate inference.

Training minimises the mean NLL plus ``weight_decay * sum ||W||^2`` over the weight matrices, with
Gal's default ``weight_decay = l^2 (1 - p) / (2 N)`` (prior length scale ``l``, dropout rate ``p``,
``N`` training points: the KL term of the variational objective per data point). The predictive
is the uniform mixture over ``T`` stochastic forward passes, each a draw ``omega_t`` of the dropout
masks: for a Gaussian likelihood with precision ``tau`` its log density is

    log p(y | x) = logsumexp_t(-tau/2 (y - f_t(x))^2) - log T - 0.5 log(2 pi) + 0.5 log(tau).

The ``T`` passes run as one batched forward pass over ``T`` copies of the inputs (in chunks), since
each row gets its own masks. Masks come from torch's global RNG (``nn.Dropout`` takes no
generator), seeded per call from the run seed inside a forked RNG state, so predictions are
reproducible and the caller's random stream is untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from uqkit._checks import check_float, check_positive
from uqkit.calibration.predictive import Predictive
from uqkit.inference.base import check_int
from uqkit.inference.ensemble import (check_data, members_posterior, module_modes, nll_loss, seeded_global_rng,
                                      stateless, train_members)
from uqkit.inference.posterior import Posterior
from uqkit.models.spec import ModelSpec

Params = dict[str, Tensor]

#: Rows per batched forward pass (T copies of N inputs are split so that no chunk exceeds this).
_MAX_ROWS = 2**18


def dropout_rate(net: nn.Module) -> float:
    """The dropout probability shared by all dropout modules of ``net``.

    Raises:
        ValueError: ``net`` has no dropout module, or its dropout modules use different rates.
    """
    rates = {float(m.p) for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    if not rates:
        raise ValueError("net: MC dropout needs at least one dropout module (nn.Dropout) in the net")
    if len(rates) > 1:
        raise ValueError(f"net: dropout modules use different rates {sorted(rates)}; pass weight_decay explicitly")
    return rates.pop()


def mc_dropout_predict_fn(spec: ModelSpec, params: Params, *, num_passes: int, seed: int) -> Callable[[Tensor], Predictive]:
    """``x -> Predictive`` mixing ``num_passes`` stochastic forward passes (dropout on, every other module in eval mode).

    Args:
        spec: the model.
        params: one set of trained parameters (leaves with their natural shapes).
        num_passes: T >= 1.
        seed: seeds the dropout masks; the same ``x`` always gets the same masks.
    """
    check_int(num_passes, "num_passes", minimum=1)
    _, lik_params = spec.split(params)
    devices = [v.device for v in params.values()]

    def predict(x: Tensor) -> Predictive:
        x = check_float(x, "x").to(spec.dtype)
        chunk = max(1, _MAX_ROWS // max(1, x.shape[0]))
        outputs = []
        with torch.no_grad(), seeded_global_rng(seed, devices), \
                module_modes(spec.net, lambda m: isinstance(m, nn.modules.dropout._DropoutNd)):
            for start in range(0, num_passes, chunk):
                copies = min(chunk, num_passes - start)
                out = spec.forward(params, x.repeat(copies, *([1] * (x.ndim - 1))))
                outputs.append(out.reshape(copies, x.shape[0], *out.shape[1:]))
        stacked = {k: v.expand(num_passes, *v.shape) for k, v in lik_params.items()}
        return spec.likelihood.predictive(torch.cat(outputs), stacked)

    return predict


def fit_mc_dropout(spec: ModelSpec, data: tuple[Tensor, Tensor], *, num_epochs: int = 40, batch_size: int = 128,
                   lr: float = 1e-3, weight_decay: float | None = None, length_scale: float = 1e-2,
                   num_passes: int = 100, seed: int = 0, progress: bool = True) -> Posterior:
    """Train ``spec.net`` (which must contain dropout modules) and predict with ``num_passes`` dropout masks.

    Args:
        spec: the model; for Gal's regression setting use ``Gaussian(noise_std=tau ** -0.5)``.
        data: ``(x [N, ...], y [N] | [N, D])`` with ``N == spec.num_data``.
        num_epochs, batch_size, lr: Adam training schedule.
        weight_decay: coefficient of ``sum ||W||^2`` over parameters with >= 2 dimensions, added to the
            mean NLL; None gives ``length_scale^2 (1 - p) / (2 N)``.
        length_scale: prior length scale ``l`` (> 0) for the default weight decay.
        num_passes: T, stochastic forward passes per prediction.
        seed: seeds initial weights, minibatch order, training masks and prediction masks.
        progress: show a progress bar.

    Returns:
        A `Posterior` with the one trained parameter set as draws ``{name: [1, 1, *shape]}`` and
        ``predict(x)`` the mixture over ``T`` passes (``S = T``).
    """
    start = time.perf_counter()
    x, y = check_data(spec, data)
    check_int(num_passes, "num_passes", minimum=1)
    rate = dropout_rate(spec.net) if weight_decay is None else None
    if weight_decay is None:
        weight_decay = check_positive(length_scale, "length_scale") ** 2 * (1 - rate) / (2 * spec.num_data)
    weight_decay = check_positive(weight_decay, "weight_decay", allow_zero=True)
    base = nll_loss(spec)
    weights = [k for k, v in spec.net.named_parameters() if v.ndim >= 2]

    def loss(params: Params, xb: Tensor, yb: Tensor) -> Tensor:
        return base(params, xb, yb) + weight_decay * sum(params[k].square().sum() for k in weights)

    seeds = np.random.SeedSequence([seed, 1]).generate_state(2, np.uint64) >> np.uint64(1)
    train_seed, predict_seed = (int(s) for s in seeds)
    with seeded_global_rng(train_seed, [p.device for p in spec.net.parameters()]):
        trained = train_members(spec, x, y, stateless(loss), num_members=1, num_epochs=num_epochs,
                                batch_size=batch_size, lr=lr, seed=seed, vectorize=False, progress=progress,
                                desc="fit[mc-dropout]")
    params = {k: v[0] for k, v in trained.params.items()}
    config = {"num_epochs": num_epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "length_scale": length_scale, "num_passes": num_passes, "predict_seed": predict_seed}
    post = members_posterior(spec, trained, {"engine": "mc-dropout", "config": config, "seed": seed,
                                             "wall_time_s": time.perf_counter() - start})
    return Posterior(post.draws, post.sample_stats,
                     mc_dropout_predict_fn(spec, params, num_passes=num_passes, seed=predict_seed), post.meta)


def load_mc_dropout(path: str | Path, spec: ModelSpec) -> Posterior:
    """Read a posterior saved by ``fit_mc_dropout(...).save(path)`` and reattach ``spec`` (same T and mask seed)."""
    post = Posterior.load(path)
    config = post.meta.get("config", {})
    if post.meta.get("engine") != "mc-dropout" or not isinstance(post.draws, dict):
        raise ValueError(f"path: {path} does not hold an MC dropout posterior (engine {post.meta.get('engine')!r})")
    params = {k: v[0, 0] for k, v in post.draws.items()}
    if set(params) != set(spec.param_template()) | {k for k, _ in spec.net.named_buffers()}:
        raise ValueError(f"spec: its parameters do not match those stored in {path}")
    predict = mc_dropout_predict_fn(spec, params, num_passes=int(config["num_passes"]), seed=int(config["predict_seed"]))
    return Posterior(post.draws, post.sample_stats, predict, post.meta)

