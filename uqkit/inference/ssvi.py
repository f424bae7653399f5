"""Sparse Subspace Variational Inference (SSVI; Li, Miao, Qiu & Zhang, ICLR 2024, arXiv 2402.11025).

Mean-field Gaussian VI restricted to a sparse set S of coordinates, ``|S| = density * d``, from
initialisation on: ``q(theta) = prod_{j in S} N(mu_j, sigma_j^2) prod_{j not in S} delta_0``, with
the KL over S only. The loop is `uqkit.inference.mfvi.fit_variational`; this module supplies the
masks and their updates (`SparseSubspace`):

* **Budgets** (`layer_budgets`). The first Linear/Conv layer the forward pass meets, biases and any
  parameter outside a Linear/Conv weight stay dense (the paper keeps the first layer dense; the
  output layer is masked like the others, the SSVI code's ``ignore_linear_layers=False``).
  ``density`` is the active fraction of the whole model: with ``allocation="erk"`` (default) what is
  left of ``round(density * d)`` after the dense part is spread by RigL's Erdos-Renyi-Kernel rule
  (small layers, such as convolutions and the output layer, denser), with ``"model"`` at one common
  density; ``"layer"`` is the paper's convention (every masked weight at ``density``; the model ends
  up denser).
* **Schedule.** Every ``swap_every`` steps while ``t < T_end = swap_until * num_steps``, each masked
  layer swaps ``floor(zeta(t) * n_active)`` coordinates, ``zeta(t) = alpha/2 (1 + cos(pi t / T_end))``;
  on those steps the parameters are not updated. The paper's Delta T = 100 is about 1/400 of its
  runs (100 CIFAR epochs, ~39,000 steps, ~290 updates); the default 25 keeps 45-90 updates in runs
  of 1500-3000 steps (on mnist1d's CNN at density 0.1, 3000 steps, validation split of the training
  data, one seed: Delta T 100 -> 25 gained about 0.9 accuracy points; with the two changes below,
  1.7 and 3.2 points on two seeds).
* **Removal** drops the ``n = floor(zeta * n_active)`` active coordinates with the lowest score (NaN
  scores count as 0): ``mean`` |mu|, ``snr`` |mu|/sigma, ``E_mean_abs`` E|theta|, ``SNR_mean_abs``
  (default) E|theta| / sd|theta|, with the folded-normal moments of `folded_normal_moments`.
* **Addition** activates the ``n`` coordinates outside the kept set (the just-dropped ones included,
  as in the SSVI code) with the largest dense gradient magnitude ``|dL/dmu_j|``, the gradient summed
  over the ``growth_steps`` steps ending at the update (the loop keeps inactive means at exactly 0
  and feeds the means to the network unmasked, so their gradient is the loss gradient at
  ``theta_j = 0``). Newly active coordinates get ``mu = 0`` and the mean ``rho`` of the layer's kept
  coordinates (the paper's ``grow_std='mean'``); a dropped coordinate that is grown again keeps its
  ``mu`` and ``rho``.
* **Optimiser state.** After an update Adam's moments are zeroed at the coordinates that left the
  subspace and kept elsewhere (`SparseSubspace.reset_optimizer`; the SSVI code masks its SGD
  momentum the same way). Clearing the whole state instead restarts Adam's bias correction, so every
  coordinate takes a step of about ``lr`` at each update; it cost 0.6-0.7 points in the same
  experiment.
* Between updates the masks zero the means' gradients at inactive coordinates (the scales enter the
  loss masked, so theirs are zero already); with zero gradients and zero moments, inactive means stay
  exactly 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from uqkit._checks import check_positive
from uqkit.inference.base import check_int
from uqkit.inference.flops import Layer
from uqkit.inference.mfvi import VariationalPosterior, VIConfig, fit_variational
from uqkit.inference.variational import MeanFieldGaussian
from uqkit.models.spec import ModelSpec

#: Removal scores (the names of the SSVI code's options).
REMOVAL_SCORES = ("mean", "snr", "E_mean_abs", "SNR_mean_abs")


def folded_normal_moments(mu: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``|theta|`` for ``theta ~ N(mu, std^2)`` (elementwise).

    ``E|theta| = |mu| + delta`` with ``delta = std (sqrt(2/pi) exp(-a^2/2) - a erfc(a/sqrt 2)) >= 0``,
    ``a = |mu|/std`` (equal to ``mu erf(mu/(std sqrt 2)) + std sqrt(2/pi) exp(-mu^2/(2 std^2))``), and
    ``Var|theta| = mu^2 + std^2 - E|theta|^2 = std^2 - 2|mu| delta - delta^2``: written through delta,
    it keeps its precision when ``|mu| >> std``, where the textbook form cancels catastrophically.
    """
    abs_mu = mu.abs()
    a = abs_mu / std
    delta = std * (math.sqrt(2 / math.pi) * torch.exp(-0.5 * a.square()) - a * torch.erfc(a / math.sqrt(2)))
    return abs_mu + delta, (std.square() - 2 * abs_mu * delta - delta.square()).clamp_min(0)


def removal_score(mu: Tensor, std: Tensor, kind: str = "SNR_mean_abs") -> Tensor:
    """Importance of each coordinate of ``q = N(mu, std^2)`` (higher = keep); NaN becomes 0."""
    if kind == "mean":
        score = mu.abs()
    elif kind == "snr":
        score = mu.abs() / std
    elif kind in ("E_mean_abs", "SNR_mean_abs"):
        mean, var = folded_normal_moments(mu, std)
        score = mean if kind == "E_mean_abs" else mean / var.sqrt()
    else:
        raise ValueError(f"removal: expected one of {REMOVAL_SCORES}, got {kind!r}")
    return torch.nan_to_num(score, nan=0.0)


def swap_fraction(step: int, *, alpha: float, end_step: int) -> float:
    """``zeta(t) = alpha/2 (1 + cos(pi t / T_end))``, the fraction of a layer's active coordinates swapped at ``t``."""
    return alpha / 2 * (1 + math.cos(math.pi * step / end_step))


#: Default number of steps whose gradients are summed for the growth score (capped at ``swap_every``).
GROWTH_STEPS = 10

#: How the active budget is spread over the masked weights (see `layer_budgets`).
ALLOCATIONS = ("model", "layer", "erk")


def layer_budgets(layers: list[Layer], shapes: dict[str, tuple[int, ...]], density: float, *,
                  dense_first_layer: bool = True, allocation: str = "erk") -> dict[str, int]:
    """Active entries per masked weight.

    ``allocation`` says what ``density`` is the fraction of:

    * ``"model"``: the whole model keeps ``round(density * d)`` coordinates; the dense part (first
      layer, biases, other parameters) comes out of that budget and the masked weights share the
      rest at one common density (so they end up sparser than ``density``).
    * ``"layer"``: the paper's convention: every masked weight keeps ``round(density * numel)``
      entries; with the dense part the model keeps more than ``density * d``.
    * ``"erk"``: the ``"model"`` budget spread by the Erdos-Renyi-Kernel rule of RigL (Evci et al.,
      ICML 2020): layer density proportional to ``sum(shape) / prod(shape)``, capped at 1, so small
      layers (convolutions, the output layer) stay denser than wide ones.

    Args:
        layers: Linear/Conv layers in call order (`uqkit.inference.flops.linear_layers`).
        shapes: ``{name: shape}`` of every net parameter (d = the sum of their sizes).
        density: fraction of active coordinates, in (0, 1].
        dense_first_layer: keep the first layer dense (the paper's choice).
        allocation: one of `ALLOCATIONS`.

    Raises:
        ValueError: unknown allocation, no weight can be masked, or the dense part alone exceeds the budget.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation: expected one of {ALLOCATIONS}, got {allocation!r}")
    if density == 1:
        return {}
    masked = [layer.weight for layer in (layers[1:] if dense_first_layer else layers)]
    if not masked:
        raise ValueError(f"net: SSVI masks the weights of Linear/Conv layers{' after the first' * dense_first_layer}; "
                         f"this net has none (layers: {[layer.module for layer in layers]})")
    sizes = {k: math.prod(shape) for k, shape in shapes.items()}
    if allocation == "layer":
        return {k: max(1, round(density * sizes[k])) for k in masked}
    total = sum(sizes.values())
    budget = round(density * total)
    maskable = sum(sizes[k] for k in masked)
    left = budget - (total - maskable)
    if left < len(masked):
        need = (total - maskable + len(masked)) / total
        raise ValueError(f"density: {density} keeps {budget} of {total} coordinates, but {total - maskable} stay dense "
                         f"(first layer, biases, other parameters); the masks cannot cover the remaining layers. "
                         f"Use density >= {need:.4g}")
    weight = {k: sum(shapes[k]) / sizes[k] if allocation == "erk" else 1.0 for k in masked}
    shares = _water_fill(left, {k: sizes[k] for k in masked}, weight)
    counts = {k: max(1, math.floor(v)) for k, v in shares.items()}
    by_remainder = sorted((k for k in masked if counts[k] < sizes[k]),
                          key=lambda k: shares[k] - math.floor(shares[k]), reverse=True)
    for k in by_remainder[:max(0, left - sum(counts.values()))]:
        counts[k] += 1
    return {k: min(n, sizes[k]) for k, n in counts.items()}


def _water_fill(total: int, sizes: dict[str, int], weight: dict[str, float]) -> dict[str, float]:
    """Real shares ``min(size_k, c * weight_k * size_k)`` summing to ``total``: layers that would pass
    density 1 are made dense and the rest re-spread, until none does."""
    if total >= sum(sizes.values()):
        return {k: float(v) for k, v in sizes.items()}
    dense: set[str] = set()
    while True:
        left = total - sum(sizes[k] for k in dense)
        free = [k for k in sizes if k not in dense]
        scale = left / sum(weight[k] * sizes[k] for k in free)
        over = {k for k in free if scale * weight[k] >= 1}
        if not over:
            return {**{k: float(sizes[k]) for k in dense}, **{k: scale * weight[k] * sizes[k] for k in free}}
        dense |= over


@dataclass
class SparseSubspace:
    """SSVI's masks and their schedule (a `uqkit.inference.mfvi.Subspace`); see the module docstring.

    Args:
        density: fraction of active coordinates in (0, 1].
        num_steps: training steps (sets ``T_end``).
        swap_every: Delta T, steps between subspace updates (>= 1).
        swap_until: ``T_end / num_steps`` in (0, 1].
        swap_alpha: alpha, the initial swap fraction, in (0, 1].
        removal: one of `REMOVAL_SCORES`.
        dense_first_layer: keep the first Linear/Conv layer dense.
        allocation: how the budget is spread over the masked weights, one of `ALLOCATIONS` (see `layer_budgets`).
        growth_steps: steps whose dense mean gradients are summed for the growth score, ending at the
            update step (the SSVI code's ``grad_accumulation_n``), in [1, swap_every]; None:
            ``min(GROWTH_STEPS, swap_every)``.
    """

    density: float
    num_steps: int
    swap_every: int = 25
    swap_until: float = 0.75
    swap_alpha: float = 0.3
    removal: str = "SNR_mean_abs"
    dense_first_layer: bool = True
    allocation: str = "erk"
    growth_steps: int | None = None
    budgets: dict[str, int] = field(default_factory=dict, init=False)
    swaps: list[dict[str, Any]] = field(default_factory=list, init=False)
    _growth: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < check_positive(self.density, "density") <= 1:
            raise ValueError(f"density: expected a fraction of active coordinates in (0, 1], got {self.density!r}")
        check_int(self.num_steps, "num_steps", minimum=1)
        check_int(self.swap_every, "swap_every", minimum=1)
        if not 0 < check_positive(self.swap_until, "swap_until") <= 1:
            raise ValueError(f"swap_until: expected a fraction of the steps in (0, 1], got {self.swap_until!r}")
        if not 0 < check_positive(self.swap_alpha, "swap_alpha") <= 1:
            raise ValueError(f"swap_alpha: expected a fraction in (0, 1], got {self.swap_alpha!r}")
        if self.removal not in REMOVAL_SCORES:
            raise ValueError(f"removal: expected one of {REMOVAL_SCORES}, got {self.removal!r}")
        if self.growth_steps is None:
            self.growth_steps = min(GROWTH_STEPS, self.swap_every)
        check_int(self.growth_steps, "growth_steps", minimum=1)
        if self.growth_steps > self.swap_every:
            raise ValueError(f"growth_steps: expected at most swap_every={self.swap_every} steps, "
                             f"got {self.growth_steps}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation: expected one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.density < 1 and self.swap_every >= self.end_step:
            raise ValueError(f"swap_every, swap_until: the schedule ends at step {self.end_step} (swap_until "
                             f"{self.swap_until} x {self.num_steps} steps) before its first swap at step "
                             f"{self.swap_every}; lower swap_every or raise swap_until or num_steps")

    @property
    def end_step(self) -> int:
        """T_end: no subspace update at or after this step."""
        return math.floor(self.swap_until * self.num_steps)

    def initial_masks(self, spec: ModelSpec, layers: list[Layer], *, generator: torch.Generator) -> dict[str, Tensor]:
        """Uniformly random masks with exactly each layer's budget of active entries."""
        template = spec.split(spec.param_template())[0]
        self.budgets = layer_budgets(layers, {k: tuple(v.shape) for k, v in template.items()}, self.density,
                                     dense_first_layer=self.dense_first_layer, allocation=self.allocation)
        masks = {}
        for k, n in self.budgets.items():
            flat = torch.zeros(template[k].numel(), dtype=torch.bool)
            flat[torch.randperm(flat.numel(), generator=generator)[:n]] = True
            masks[k] = flat.reshape(template[k].shape)
        return masks

    def update(self, step: int, q: MeanFieldGaussian) -> bool:
        """At update steps, swap coordinates in every masked layer (q's tensors and masks change in place).

        Called after every backward pass (mean gradients still dense): the ``growth_steps`` calls
        up to an update step add their gradients into the growth score's sum.
        """
        if step >= self.end_step or not q.masks or step + self.growth_steps <= self.swap_every:
            return False
        to_update = -step % self.swap_every
        if step + to_update >= self.end_step:
            return False
        if to_update < self.growth_steps:
            with torch.no_grad():
                for name in q.masks:
                    grad = q.mu[name].grad
                    first = to_update == self.growth_steps - 1
                    self._growth[name] = grad.clone() if first else self._growth[name] + grad
        if to_update:
            return False
        fraction = swap_fraction(step, alpha=self.swap_alpha, end_step=self.end_step)
        moved = 0
        with torch.no_grad():
            for name in list(q.masks):
                moved += self._swap_layer(name, q, fraction)
        self.swaps.append({"step": step, "fraction": fraction, "moved": moved, "active": q.num_active()})
        return True

    def _swap_layer(self, name: str, q: MeanFieldGaussian, fraction: float) -> int:
        mask, mu, rho = q.masks[name].reshape(-1), q.mu[name].view(-1), q.rho[name].view(-1)
        num_active = int(mask.sum())
        num_swap = min(math.floor(fraction * num_active), mask.numel() - num_active)
        if num_swap == 0:
            return 0
        score = removal_score(mu, F.softplus(rho), self.removal).masked_fill(~mask, math.inf)
        drop = torch.topk(score, num_swap, largest=False).indices
        kept = mask.clone()
        kept[drop] = False
        growth = self._growth.pop(name).reshape(-1).abs().masked_fill(kept, -math.inf)
        grow = torch.topk(growth, num_swap).indices
        new_mask = kept.clone()
        new_mask[grow] = True
        new = new_mask & ~mask
        rho[new] = rho[kept].mean()
        mu[mask & ~new_mask] = 0.0
        mu[new] = 0.0
        q.set_mask(name, new_mask.reshape(q.masks[name].shape))
        return int(new.sum())

    def reset_optimizer(self, optimizer: torch.optim.Optimizer, q: MeanFieldGaussian) -> None:
        """After an update, zero Adam's moments of the means and scales at inactive coordinates (in place).

        The dropped coordinates lose their moments; those grown were inactive, so theirs are 0 already;
        every other moment (and Adam's step count) is kept, as the SSVI code masks its SGD momentum.
        """
        for name in q.masks:
            weight = q.mask_weight(name)
            for t in (q.mu[name], q.rho[name]):
                state = optimizer.state.get(t, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key].mul_(weight)

    def report(self) -> dict[str, Any]:
        return {"density": self.density, "swap_every": self.swap_every, "swap_until": self.swap_until,
                "swap_alpha": self.swap_alpha, "removal": self.removal, "dense_first_layer": self.dense_first_layer,
                "allocation": self.allocation,
                "growth_steps": self.growth_steps, "layer_budgets": self.budgets, "swaps": self.swaps}


def fit_ssvi(spec: ModelSpec, data: tuple[Tensor, Tensor], *, density: float = 0.1, swap_every: int = 25,
             swap_until: float = 0.75, swap_alpha: float = 0.3, removal: str = "SNR_mean_abs",
             dense_first_layer: bool = True, allocation: str = "erk", growth_steps: int | None = None,
             num_steps: int = VIConfig.num_steps,
             batch_size: int | None = VIConfig.batch_size, lr: float = VIConfig.lr,
             kl_scale: float = VIConfig.kl_scale, kl_warmup: float = VIConfig.kl_warmup,
             init_std: float = VIConfig.init_std, local_reparam: bool = VIConfig.local_reparam,
             num_draws: int = VIConfig.num_draws, lr_schedule: str = VIConfig.lr_schedule, seed: int = 0,
             progress: bool = True) -> VariationalPosterior:
    """Sparse subspace VI of ``spec`` on ``data = (x [N, ...], y [N] | [N, D])`` (module docstring).

    Args:
        spec: the model; its prior must be Gaussian per coordinate (closed-form KL over active ones).
        data: training data, ``N == spec.num_data``.
        density, swap_every, swap_until, swap_alpha, removal, dense_first_layer, allocation, growth_steps:
            see `SparseSubspace`.
        num_steps, batch_size, lr, kl_scale, kl_warmup, init_std, local_reparam, num_draws, lr_schedule:
            see `uqkit.inference.mfvi.VIConfig`.
        seed: seeds the initial masks and means, noise, minibatch order and prediction draws (>= 0).
        progress: show a progress bar.

    Returns:
        A `VariationalPosterior` (``save`` stores only active coordinates); ``meta`` holds
        ``active_parameters``, ``dense_parameters``, ``train_flops`` (whole run, sparse counts),
        ``inference_flops`` (per example and draw), ``layer_budgets`` and the swap log ``swaps``.
    """
    config = VIConfig(num_steps, batch_size, lr, kl_scale, kl_warmup, init_std, local_reparam, num_draws, lr_schedule)
    subspace = SparseSubspace(density, config.num_steps, swap_every, swap_until, swap_alpha, removal, dense_first_layer,
                              allocation, growth_steps)
    return fit_variational(spec, data, config, seed=seed, progress=progress, engine="ssvi", subspace=subspace)
