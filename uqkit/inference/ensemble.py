"""Deep ensembles (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017), trained as one vectorised model.

M copies of ``spec.net`` start from different initial weights and see the data in different orders;
each minimises its own mean negative log-likelihood (``-log p(y | net(x))`` under ``spec.likelihood``),
optionally plus the adversarial term ``l(x')`` with ``x' = x + eps * range(x) * sign(grad_x l)``.
The members are stacked with ``torch.func.stack_module_state`` and trained with ``vmap`` over
``functional_call``: one forward/backward pass per step for all of them. The loss summed over
members has, for member m, exactly member m's gradient, and Adam acts elementwise, so one Adam over
the stacked ``[M, ...]`` tensors takes the same steps as M separate Adams; member m's parameters
equal those of member m trained alone with the same seeds (to float round-off). Modules that cannot
run under ``vmap`` (BatchNorm in training mode updates running statistics in place) are trained one
member after another instead, with a warning.

The result is a `Posterior` whose draws are the members (chain 1, draw M); its ``predict(x)`` is the
uniform mixture over members: averaged class probabilities, or for regression the Gaussian mixture
with mean ``mu* = mean_m mu_m`` and variance ``mean_m (sigma_m^2 + mu_m^2) - mu*^2``.

The shared trainer, `train_members`, also serves the evidential and MC-dropout engines.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from uqkit._checks import as_tensor, check_float, check_positive, check_same_length
from uqkit.calibration.predictive import Predictive
from uqkit.inference.base import check_int
from uqkit.inference.posterior import Posterior
from uqkit.models.likelihoods import PREFIX
from uqkit.models.spec import ModelSpec
from uqkit.parallel import ReportBar, check_backend, run_tasks

Params = dict[str, Tensor]
#: A member's objective: ``(params, state, x [B, ...], y [B, ...]) -> (scalar loss, new state)``, where
#: ``params`` holds the member's parameters and buffers and ``state`` its own per-member tensors.
MemberLoss = Callable[[Params, Params, Tensor, Tensor], tuple[Tensor, Params]]

_INITS = ("module", "prior")


@dataclass(frozen=True)
class TrainedMembers:
    """Output of `train_members`.

    Attributes:
        params: ``{name: [M, *shape]}`` trained parameters, buffers and ``"likelihood.*"`` parameters.
        state: ``{name: [M, ...]}`` final per-member state of the objective (e.g. a Lagrange multiplier).
        losses: ``[M]`` mean training loss of each member over its last epoch.
        vectorized: whether the members were trained together under ``vmap``.
    """

    params: Params
    state: Params
    losses: Tensor
    vectorized: bool


def member_seeds(seed: int, member: int) -> tuple[int, int]:
    """``(init_seed, batch_seed)`` of one member, from ``(seed, member)`` only (not from M)."""
    init_seed, batch_seed = np.random.SeedSequence([seed, member]).generate_state(2, np.uint64) >> np.uint64(1)
    return int(init_seed), int(batch_seed)


@contextlib.contextmanager
def seeded_global_rng(seed: int, devices: list[torch.device] | tuple = ()) -> Iterator[None]:
    """Run a block with torch's global RNG seeded by ``seed``, restoring its previous state afterwards.

    Only for code that offers no ``generator=`` argument (``reset_parameters``, ``nn.Dropout``); the
    caller's random stream is left exactly as it was.
    """
    cuda = sorted({d.index or 0 for d in devices if torch.device(d).type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def module_modes(net: nn.Module, training: Callable[[nn.Module], bool]) -> Iterator[None]:
    """Set each submodule's ``training`` flag to ``training(module)`` for a block, then restore the flags."""
    saved = [(m, m.training) for m in net.modules()]
    try:
        for m in net.modules():
            m.training = training(m)
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def check_data(spec: ModelSpec, data: object) -> tuple[Tensor, Tensor]:
    """``(x [N, ...], y [N] | [N, D])`` in the spec's dtype; finite, with ``N == spec.num_data``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data: expected a pair (x, y) of tensors or arrays, got {type(data).__name__}")
    x = check_float(data[0], "x").to(spec.dtype)
    y = as_tensor(data[1], "y")
    if y.is_floating_point():
        y = check_float(y, "y").to(spec.dtype)
    check_same_length("x", x, "y", y)
    if x.shape[0] != spec.num_data:
        raise ValueError(f"data: x holds {x.shape[0]} points but spec.num_data is {spec.num_data}")
    return x, y


def nll_loss(spec: ModelSpec, *, use_prior: bool = False) -> Callable[[Params, Tensor, Tensor], Tensor]:
    """Mean negative log-likelihood of a batch, ``-1/B sum_b log p(y_b | x_b)`` (nats per point).

    With ``use_prior`` the MAP objective ``- log p(theta) / num_data`` is added (weight decay from the prior).
    """
    names = set(spec.param_template())

    def loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        out = spec.forward(params, x)
        value = -spec.likelihood.log_prob(out, y, spec.split(params)[1]).mean()
        if use_prior:
            value = value - spec.log_prior({k: v for k, v in params.items() if k in names}) / spec.num_data
        return value

    return loss


def adversarial_loss(base: Callable[[Params, Tensor, Tensor], Tensor],
                     step: Tensor) -> Callable[[Params, Tensor, Tensor], Tensor]:
    """``l(x) + l(x')`` with the fast-gradient-sign input ``x' = x + step * sign(grad_x l(x))``.

    Args:
        base: the loss ``l(params, x, y)``.
        step: ``[*x.shape[1:]]`` perturbation size per input dimension (``epsilon * range``), input units.
    """

    def loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        grad_x = torch.func.grad(lambda inputs: base(params, inputs, y))(x).detach()
        return base(params, x, y) + base(params, x + step * torch.sign(grad_x), y)

    return loss


def stateless(loss: Callable[[Params, Tensor, Tensor], Tensor]) -> MemberLoss:
    """Lift ``loss(params, x, y)`` to the `MemberLoss` signature with an empty state."""
    return lambda params, state, x, y: (loss(params, x, y), state)


def train_members(spec: ModelSpec, x: Tensor, y: Tensor, loss: MemberLoss, *, num_members: int, num_epochs: int,
                  batch_size: int, lr: float, seed: int, init: str = "module", state: Params | None = None,
                  vectorize: bool = True, progress: bool = True, desc: str = "ensemble", backend: str = "local",
                  address: str | None = None) -> TrainedMembers:
    """Train ``num_members`` copies of ``spec.net`` with Adam, each from its own seeds.

    Member m draws its initial weights and its minibatch order from `member_seeds` ``(seed, m)``, and
    each epoch visits its data in a fresh random order in batches of ``batch_size`` (the last one
    may be smaller).

    Args:
        spec: the model (its net is copied, never modified).
        x, y: ``[N, ...]`` inputs and ``[N]``/``[N, D]`` targets, already checked.
        loss: the member objective.
        num_members: M >= 1.
        num_epochs: passes over the data (>= 1).
        batch_size: minibatch size (>= 1; capped at N).
        lr: Adam learning rate (> 0).
        seed: the run seed.
        init: "module" (each submodule's own ``reset_parameters``, under the member's init seed) or
            "prior" (a draw from ``spec.prior``).
        state: initial per-member state of the objective, leaves without the member dimension.
        vectorize: train all members at once under ``vmap``; False trains them one after another.
        progress: show a progress bar.
        desc: the progress bar's label.
        backend: "local", or "ray" to train each member as its own Ray task (see `uqkit.parallel`);
            member m's parameters are those of the local run with ``vectorize=False``, bit for bit.
        address: the Ray cluster for ``backend="ray"`` (None: start Ray on this machine).
    """
    check_int(num_members, "num_members", minimum=1)
    check_int(num_epochs, "num_epochs", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    lr = check_positive(lr, "lr")
    if init not in _INITS:
        raise ValueError(f"init: expected one of {', '.join(_INITS)}, got {init!r}")
    check_backend(backend)
    group = functools.partial(_train_group, spec, x, y, loss, num_epochs=num_epochs,
                              batch_size=min(batch_size, x.shape[0]), lr=lr, seed=seed, init=init, state=state or {},
                              desc=desc)
    steps_per_member = num_epochs * -(-x.shape[0] // min(batch_size, x.shape[0]))
    if backend == "ray":
        results = run_tasks(functools.partial(_member_task, group), list(range(num_members)), backend="ray",
                            address=address, total_steps=steps_per_member * num_members, desc=desc, progress=progress)
        parts = [TrainedMembers(*(_unprefixed(r, p) for p in ("params.", "state.")), r["losses"], False)
                 for r in results]
        return TrainedMembers(_concat([p.params for p in parts]), _concat([p.state for p in parts]),
                              torch.cat([p.losses for p in parts]), False)
    from tqdm.auto import tqdm

    with tqdm(total=steps_per_member * num_members, desc=desc, unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        return group(list(range(num_members)), vectorize=vectorize, bar=bar)


def members_posterior(spec: ModelSpec, trained: TrainedMembers, meta: dict[str, Any]) -> Posterior:
    """The `Posterior` over members: draws ``{name: [1, M, *shape]}``, ``sample_stats["loss"]`` ``[1, M]``."""
    draws = {k: v.detach().unsqueeze(0) for k, v in trained.params.items()}
    stats = {"loss": trained.losses.detach().to(torch.float64).unsqueeze(0)}
    stats.update({k: v.detach().unsqueeze(0) for k, v in trained.state.items() if v.ndim == 1})
    return Posterior(draws=draws, sample_stats=stats, predict_fn=ensemble_predict_fn(spec, draws),
                     meta={**meta, "vectorized": trained.vectorized})


def ensemble_predict_fn(spec: ModelSpec, draws: Params) -> Callable[[Tensor], Predictive]:
    """``x -> Predictive``: the uniform mixture over the members in ``draws`` (``[chain, draw, ...]``), in eval mode."""
    pooled = {k: v.reshape(-1, *v.shape[2:]) for k, v in draws.items()}

    def predict(x: Tensor) -> Predictive:
        x = check_float(x, "x").to(spec.dtype)
        with module_modes(spec.net, lambda m: False):
            return spec.predict(pooled, x)

    return predict


def member_modules(spec: ModelSpec, draws: Params) -> list[nn.Module]:
    """One copy of ``spec.net`` per member of ``draws`` (``[chain, draw, ...]``), in eval mode (e.g. for a cascade)."""
    pooled = {k: v.reshape(-1, *v.shape[2:]) for k, v in draws.items() if not k.startswith(PREFIX)}
    members = []
    for m in range(next(iter(pooled.values())).shape[0]):
        member = copy.deepcopy(spec.net).eval()
        member.load_state_dict({k: v[m] for k, v in pooled.items()})
        members.append(member)
    return members


def load_ensemble(path: str | Path, spec: ModelSpec) -> Posterior:
    """Read a posterior saved by ``fit_ensemble(...).save(path)`` (or ``fit_der``) and reattach ``spec``."""
    post = Posterior.load(path)
    want = {k: tuple(v.shape) for k, v in _template(spec).items()}
    if not isinstance(post.draws, dict) or {k: tuple(v.shape[2:]) for k, v in post.draws.items()} != want:
        raise ValueError(f"spec: its parameters {want} do not match those stored in {path}")
    return Posterior(post.draws, post.sample_stats, ensemble_predict_fn(spec, post.draws), post.meta)


def fit_ensemble(spec: ModelSpec, data: tuple[Tensor, Tensor], *, num_members: int = 5, num_epochs: int = 40,
                 batch_size: int = 100, lr: float = 1e-2, adversarial: bool = False, epsilon: float = 0.01,
                 use_prior: bool = False, init: str = "module", seed: int = 0, progress: bool = True,
                 vectorize: bool = True, backend: str = "local", address: str | None = None) -> Posterior:
    """Train a deep ensemble of ``spec.net`` (Lakshminarayanan et al., 2017).

    Use ``HeteroscedasticGaussian`` for regression (mean and variance heads, Gaussian NLL) and
    ``Categorical`` for classification (the predictive averages the members' probabilities).

    Args:
        spec: the model; ``spec.num_data`` must equal the number of training points.
        data: ``(x [N, ...], y [N] | [N, D])``; labels for classification.
        num_members: M >= 1.
        num_epochs: passes over the data per member.
        batch_size: minibatch size.
        lr: Adam learning rate.
        adversarial: add the fast-gradient-sign adversarial loss.
        epsilon: adversarial step as a fraction of each input dimension's training range (> 0).
        use_prior: minimise ``-log p(theta) / N`` as well (MAP members) instead of the plain NLL.
        init: "module" (the modules' own initialisation) or "prior" (draws from ``spec.prior``).
        seed: seeds every member (initial weights, minibatch order); member m depends only on
            ``(seed, m)``.
        progress: show a progress bar.
        vectorize: train the members together under ``vmap`` (falls back to a loop, with a warning,
            for modules that cannot be vectorised).
        backend: "local", or "ray" to train each member as its own Ray task (``address``: the cluster,
            None starts Ray here); the members equal a local run's to float round-off (bit for bit
            with ``vectorize=False``).
        address: Ray cluster address for ``backend="ray"``.

    Returns:
        A `Posterior` with draws ``{name: [1, M, *shape]}``, ``sample_stats["loss"]`` ``[1, M]`` (each
        member's mean loss over its last epoch) and ``predict(x)`` the mixture `Predictive`.
    """
    start = time.perf_counter()
    x, y = check_data(spec, data)
    loss = nll_loss(spec, use_prior=use_prior)
    if adversarial:
        epsilon = check_positive(epsilon, "epsilon")
        loss = adversarial_loss(loss, epsilon * (x.amax(0) - x.amin(0)))
    trained = train_members(spec, x, y, stateless(loss), num_members=num_members, num_epochs=num_epochs,
                            batch_size=batch_size, lr=lr, seed=seed, init=init, vectorize=vectorize,
                            progress=progress, desc="fit[ensemble]", backend=backend, address=address)
    config = {"num_members": num_members, "num_epochs": num_epochs, "batch_size": batch_size, "lr": lr,
              "adversarial": adversarial, "epsilon": epsilon, "use_prior": use_prior, "init": init}
    return members_posterior(spec, trained, {"engine": "ensemble", "config": config, "seed": seed,
                                             "wall_time_s": time.perf_counter() - start})


# ------------------------------------------------------------------------------------------ internals
class _Runner:
    """The epoch/minibatch/Adam loop over a group of members stacked along dimension 0."""

    def __init__(self, x: Tensor, y: Tensor, num_epochs: int, batch_size: int, lr: float, buffers: frozenset[str]) -> None:
        self.x, self.y, self.buffers = x, y, buffers
        self.num_epochs, self.batch_size, self.lr = num_epochs, batch_size, lr

    def run(self, params: Params, state: Params, batch_seeds: list[int], group_loss: MemberLoss,
            bar: Any) -> tuple[Params, Params, Tensor]:
        """Train the group; ``group_loss`` maps ``[G]``-stacked params and batches ``[G, B, ...]`` to ``[G]`` losses."""
        leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point() and k not in self.buffers)
                  for k, v in params.items()}
        trainable = [v for v in leaves.values() if v.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=self.lr)
        generators = [torch.Generator().manual_seed(s) for s in batch_seeds]
        num_points = self.x.shape[0]
        for epoch in range(self.num_epochs):
            order = torch.stack([torch.randperm(num_points, generator=g) for g in generators])  # [G, N]
            epoch_loss = torch.zeros(len(generators), dtype=torch.float64)
            for start in range(0, num_points, self.batch_size):
                idx = order[:, start:start + self.batch_size]
                losses, state = group_loss(leaves, state, self.x[idx], self.y[idx])
                state = {k: v.detach() for k, v in state.items()}
                if not bool(torch.isfinite(losses).all()):
                    raise ValueError(f"train: the loss became {losses.tolist()} at epoch {epoch}, batch "
                                     f"{start // self.batch_size}; lower lr")
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                optimizer.step()
                epoch_loss += losses.detach().to(torch.float64) * idx.shape[1]
                bar.update()
        return {k: v.detach() for k, v in leaves.items()}, state, epoch_loss / num_points


def _train_group(spec: ModelSpec, x: Tensor, y: Tensor, loss: MemberLoss, members: list[int], *, num_epochs: int,
                 batch_size: int, lr: float, seed: int, init: str, state: Params, desc: str, vectorize: bool,
                 bar: Any) -> TrainedMembers:
    """Train the members numbered ``members`` (seeds from ``(seed, m)``), together or one after another."""
    seeds = [member_seeds(seed, m) for m in members]
    params = _initial_members(spec, [s[0] for s in seeds], init)
    states = {k: torch.stack([v] * len(members)) for k, v in state.items()}
    if vectorize:
        reason = _not_vectorizable(spec, params, x[:2])
        if reason is not None:
            warnings.warn(f"{desc}: training the members one after another, not vectorised: {reason}", stacklevel=4)
            vectorize = False
    batch_seeds = [s[1] for s in seeds]
    buffers = frozenset(k for k, _ in spec.net.named_buffers())
    runner = _Runner(x, y, num_epochs, batch_size, lr, buffers)
    if vectorize:
        out, new_state, losses = runner.run(params, states, batch_seeds, torch.vmap(loss), bar)
    else:
        parts = [runner.run(_select(params, i), _select(states, i), [batch_seeds[i]], _one_member(loss), bar)
                 for i in range(len(members))]
        out, new_state = (_concat([p[i] for p in parts]) for i in (0, 1))
        losses = torch.cat([p[2] for p in parts])
    return TrainedMembers(out, new_state, losses, vectorize)


def _member_task(group: Callable[..., TrainedMembers], member: int, report: Callable[[int], None]) -> Params:
    """One member as a `uqkit.parallel` task: its parameters, state and loss as prefixed tensors."""
    trained = group([member], vectorize=False, bar=ReportBar(report))
    return {**{f"params.{k}": v for k, v in trained.params.items()},
            **{f"state.{k}": v for k, v in trained.state.items()}, "losses": trained.losses}


def _unprefixed(tree: Params, prefix: str) -> Params:
    return {k.removeprefix(prefix): v for k, v in tree.items() if k.startswith(prefix)}


def _template(spec: ModelSpec) -> Params:
    """Names and shapes of everything a member carries: parameters, buffers, likelihood parameters."""
    return {**spec.param_template(), **{k: b for k, b in spec.net.named_buffers()}}


def _initial_members(spec: ModelSpec, init_seeds: list[int], init: str) -> Params:
    """``{name: [M, *shape]}`` initial parameters, buffers and likelihood parameters."""
    template = spec.param_template()
    net_names = [k for k in template if not k.startswith(PREFIX)]
    if init == "prior":
        draws = [spec.init_params(generator=torch.Generator().manual_seed(s)) for s in init_seeds]
        params = {k: torch.stack([d[k] for d in draws]) for k in template}
        buffers = {k: torch.stack([b.detach()] * len(init_seeds)) for k, b in spec.net.named_buffers()}
        return {**params, **buffers}
    resettable = [m for m in spec.net.modules() if callable(getattr(m, "reset_parameters", None))]
    if net_names and not resettable:
        raise ValueError("init: no submodule of net has reset_parameters(), so 'module' initialisation cannot "
                         "give the members different weights; use init='prior'")
    devices = [p.device for p in spec.net.parameters()]
    members = []
    for s in init_seeds:
        member = copy.deepcopy(spec.net)
        with seeded_global_rng(s, devices), torch.no_grad():
            for m in member.modules():
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
        members.append(member)
    params, buffers = stack_module_state(members)
    lik = {k: torch.stack([v] * len(init_seeds)) for k, v in template.items() if k.startswith(PREFIX)}
    return {**{k: v.detach() for k, v in params.items()}, **buffers, **lik}


def _not_vectorizable(spec: ModelSpec, params: Params, x: Tensor) -> str | None:
    """Why the members cannot be trained under ``vmap``, or None if they can."""
    for name, m in spec.net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            return f"{name or 'net'} ({type(m).__name__}) updates running statistics in place in training mode"
    try:
        with torch.no_grad():
            torch.vmap(lambda p: functional_call(spec.net, spec.split(p)[0], (x,)))(params)
    except RuntimeError as err:
        return f"the net fails under torch.vmap ({err})"
    return None


def _one_member(loss: MemberLoss) -> MemberLoss:
    """Apply ``loss`` to a group of one member without ``vmap``: ``[1, ...]`` in and out."""

    def run(params: Params, state: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Params]:
        value, new_state = loss({k: v[0] for k, v in params.items()}, {k: v[0] for k, v in state.items()}, x[0], y[0])
        return value.unsqueeze(0), {k: v.unsqueeze(0) for k, v in new_state.items()}

    return run


def _select(tree: Params, member: int) -> Params:
    return {k: v[member:member + 1] for k, v in tree.items()}


def _concat(trees: list[Params]) -> Params:
    return {k: torch.cat([t[k] for t in trees]) for k in trees[0]}
