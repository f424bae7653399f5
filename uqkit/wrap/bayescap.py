"""BayesCap (Upadhyay et al., ECCV 2022): a cap network on the frozen model's *output*.

The cap maps the frozen output ``y_hat`` to generalised-Gaussian parameters ``(mu, alpha, beta)``
per output element and is trained with

    L = identity_weight * |mu - y_hat| + ggd_weight * [(|mu - y| / alpha)^beta - log beta + log alpha + log Gamma(1/beta)]

averaged over elements (the paper's power form; ``ggd_residual="linear"`` uses the released code's
``|mu - y| / alpha * beta``, clamped to ``RESIDUAL_CLAMP`` as there). The uncertainty is the GGD variance
``alpha^2 Gamma(3/beta) / Gamma(1/beta)`` per element; its per-sample mean is the OOD score (the paper's;
``ood_quantile=q`` scores by the q-quantile of a sample's per-element variances instead, a variant).

``num_caps=K`` trains K caps from different initialisations and data orders on the same data (a deep
ensemble of caps, an extension of the paper): the predictive is their equal-weight mixture, each GGD
shifted by its cap's ``mu`` minus the caps' mean ``mu`` so the mixture stays centred on ``y_hat``; its
variance adds the spread of the caps' ``mu`` (disagreement, which grows off the training outputs) to
their mean GGD variance, and the OOD score is the per-sample mean of that total variance.

Vector outputs ``[N, D]`` get an MLP cap, image outputs ``[N, C, H, W]`` a small convolutional cap
(3x3 convolutions; both: a stem, residual blocks, a global skip and three heads). Departures from the
paper's SRGAN cap, for small outputs: the ``mu`` head predicts a correction added to ``y_hat``
(initialised to zero, so training starts at the identity), the ``1/alpha`` and ``beta`` heads end
in a softplus rather than a ReLU (no dead heads), and the cap sees ``y_hat`` standardised by
training statistics, so one learning rate suits any output scale.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from uqkit._checks import check_positive
from uqkit.calibration.predictive import Predictive
from uqkit.wrap.base import FrozenWrapper, check_choice, check_count, check_fraction
from uqkit.wrap.ggd import GeneralizedGaussian

#: Added to the ``1/alpha`` head before inverting it (the paper's alpha-eps).
ALPHA_EPS = 1e-5
#: The paper's beta-eps, added to the ``beta`` head: the default ``beta_min``. Below about 0.075 the GGD
#: variance ``Gamma(3/beta) / Gamma(1/beta)`` overflows float32.
BETA_EPS = 1e-2
#: The linear residual term is clamped to this range, as in the released code (the power form is not:
#: there a clamp at the top stops the gradient of badly fitted elements and lets beta run away).
RESIDUAL_CLAMP = (1e-4, 1e3)


def bayescap_loss(
    mu: Tensor,
    alpha: Tensor,
    beta: Tensor,
    y_hat: Tensor,
    y: Tensor,
    *,
    identity_weight: float = 1.0,
    ggd_weight: float = 5e-2,
    ggd_residual: Literal["power", "linear"] = "power",
) -> Tensor:
    """The BayesCap training loss (scalar), averaged over all elements.

    Args:
        mu, alpha, beta: cap outputs, same shape as ``y``.
        y_hat: the frozen model's output.
        y: the ground truth.
        identity_weight: weight of ``|mu - y_hat|``.
        ggd_weight: weight of the GGD negative log-likelihood (up to the constant ``log 2``).
        ggd_residual: "power" for ``(|mu - y| / alpha)^beta`` (paper), "linear" for ``|mu - y| / alpha * beta``
            clamped to ``RESIDUAL_CLAMP`` (released code).
    """
    ratio = ((mu - y).abs() / alpha).clamp_min(torch.finfo(mu.dtype).tiny)  # keeps d(ratio^beta)/d ratio finite at 0
    residual = ratio**beta if ggd_residual == "power" else (ratio * beta).clamp(*RESIDUAL_CLAMP)
    nll = residual - torch.log(beta) + torch.log(alpha) + torch.lgamma(1 / beta)
    return identity_weight * (mu - y_hat).abs().mean() + ggd_weight * nll.mean()


class Cap(nn.Module):
    """The cap network: ``y_hat`` (standardised) -> ``(delta_mu, alpha, beta)`` of the same shape.

    Args:
        num_channels: D for vector outputs, C for images.
        hidden: hidden width (MLP) or number of feature maps (conv).
        num_blocks: residual blocks in the trunk.
        conv: 3x3 convolutions on ``[N, C, H, W]`` instead of linear layers on ``[N, D]``.
        beta_min: added to the ``beta`` head's softplus, the smallest shape the cap can predict.
    """

    def __init__(self, num_channels: int, hidden: int, num_blocks: int, conv: bool, beta_min: float) -> None:
        super().__init__()
        self.beta_min = beta_min

        def layer(n_in: int, n_out: int) -> nn.Module:
            return nn.Conv2d(n_in, n_out, 3, padding=1) if conv else nn.Linear(n_in, n_out)

        def positive_head() -> nn.Module:
            return nn.Sequential(layer(hidden, hidden), nn.PReLU(), layer(hidden, num_channels), nn.Softplus())

        self.stem = nn.Sequential(layer(num_channels, hidden), nn.PReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(layer(hidden, hidden), nn.PReLU(), layer(hidden, hidden)) for _ in range(num_blocks)
        )
        self.mu_head = layer(hidden, num_channels)
        self.inv_alpha_head = positive_head()
        self.beta_head = positive_head()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z`` -> ``(delta_mu, alpha, beta)``, alpha in units of the standardised output."""
        stem = self.stem(z)
        h = stem
        for block in self.blocks:
            h = h + block(h)
        h = h + stem
        return self.mu_head(h), 1 / (self.inv_alpha_head(h) + ALPHA_EPS), self.beta_head(h) + self.beta_min

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Kaiming-normal weights from ``generator``, zero biases, and a calm start.

        Each residual block's last layer and every head's last layer start at zero weight, so the
        cap starts as ``mu = y_hat`` with ``alpha = 1`` and ``beta = 2`` (a Gaussian with sd
        ``1/sqrt(2)`` in standardised units) whatever its depth.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)
        last_layers = [block[-1] for block in self.blocks] + [self.mu_head, self.inv_alpha_head[-2], self.beta_head[-2]]
        for layer in last_layers:
            nn.init.zeros_(layer.weight)
        with torch.no_grad():
            self.inv_alpha_head[-2].bias.fill_(_inverse_softplus(1.0 - ALPHA_EPS))
            self.beta_head[-2].bias.fill_(_inverse_softplus(2.0 - self.beta_min))


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class BayesCap(FrozenWrapper, method="bayescap"):
    """A frozen regressor (vector or image-to-image) with a BayesCap uncertainty cap.

    Args:
        model: the frozen model, outputs ``[N, D]`` or ``[N, C, H, W]``.
        cap: "auto" (by the output's shape), "mlp" or "conv".
        hidden: the cap's hidden width / feature maps.
        num_blocks: residual blocks in the cap's trunk.
        num_epochs: training epochs (cosine-annealed learning rate).
        lr: Adam learning rate.
        batch_size: training (and frozen-model) batch size.
        train_fraction: share of the fitting data used, in (0, 1] (the paper trains on a fraction).
        val_fraction: share of that held out to keep the best epoch by validation loss, in [0, 1).
        identity_weight, ggd_weight, ggd_residual: see `bayescap_loss`.
        ood_quantile: None scores a sample by the mean of its per-element (total) variances (paper); a number
            in [0, 1] by their quantile (a variant: e.g. 0.9 responds to a few very uncertain pixels).
        num_caps: caps trained from different initialisations (an ensemble of caps, see the module docstring).
        beta_min: the smallest GGD shape the caps predict, in (0, 2); the paper's 0.01 by default. Shapes
            near it have enormous variances (``beta = 0.3``: 1.3e5 alpha^2), so a larger floor gives
            steadier per-element variances.
        seed: seeds the subset, the split, the caps' initialisation and the shuffling.
        progress: show a progress bar over epochs.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        cap: Literal["auto", "mlp", "conv"] = "auto",
        hidden: int = 64,
        num_blocks: int = 4,
        num_epochs: int = 50,
        lr: float = 1e-3,
        batch_size: int = 64,
        train_fraction: float = 1.0,
        val_fraction: float = 0.1,
        identity_weight: float = 1.0,
        ggd_weight: float = 5e-2,
        ggd_residual: Literal["power", "linear"] = "power",
        ood_quantile: float | None = None,
        num_caps: int = 1,
        beta_min: float = BETA_EPS,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__(model)
        self.cap = check_choice(cap, "cap", ("auto", "mlp", "conv"))
        self.hidden = check_count(hidden, "hidden")
        self.num_blocks = check_count(num_blocks, "num_blocks", minimum=0)
        self.num_epochs = check_count(num_epochs, "num_epochs")
        self.lr = check_positive(lr, "lr")
        self.batch_size = check_count(batch_size, "batch_size")
        self.train_fraction = check_fraction(train_fraction, "train_fraction")
        self.val_fraction = check_fraction(val_fraction, "val_fraction", allow_zero=True, allow_one=False)
        self.identity_weight = check_positive(identity_weight, "identity_weight", allow_zero=True)
        self.ggd_weight = check_positive(ggd_weight, "ggd_weight")
        self.ggd_residual = check_choice(ggd_residual, "ggd_residual", ("power", "linear"))
        if ood_quantile is not None:
            ood_quantile = check_fraction(ood_quantile, "ood_quantile", allow_zero=True)
        self.ood_quantile = ood_quantile
        self.num_caps = check_count(num_caps, "num_caps")
        self.beta_min = check_positive(beta_min, "beta_min")
        if self.beta_min >= 2:
            raise ValueError(f"beta_min: expected a value in (0, 2) (the caps start at beta = 2), got {beta_min!r}")
        self.seed = check_count(seed, "seed", minimum=0)
        self.progress = bool(progress)
        self.caps_: nn.ModuleList | None = None

    def fit(self, data: object, y: object = None) -> BayesCap:
        """Train the caps on ``train_fraction`` of ``(data, y)``; ``y`` has the frozen output's shape.

        The frozen model runs once over that share; the caps then train on the cached outputs, so no
        activation of the frozen model is kept for backpropagation. All caps share the subset and the
        validation split; each has its own initialisation and data order.
        """
        generator = torch.Generator().manual_seed(self.seed)
        run = self._collect(data, y, batch_size=self.batch_size, need_target=True, fraction=self.train_fraction,
                            generator=generator)
        y_hat = run.output
        self._set_shape(y_hat, "model")
        target = run.target.to(y_hat.dtype)
        if target.shape != y_hat.shape:
            raise ValueError(f"y: expected the frozen output's shape {tuple(y_hat.shape)}, got {tuple(target.shape)}")
        num_val = math.floor(self.val_fraction * len(y_hat))
        order = torch.randperm(len(y_hat), generator=generator)
        val, train = order[:num_val], order[num_val:]
        reduce = (0, 2, 3) if self._is_conv else (0,)
        self.register_buffer("input_mean_", y_hat[train].mean(reduce, keepdim=True)[0])
        std = y_hat[train].std(reduce, keepdim=True, correction=0)[0]
        self.register_buffer("input_scale_", torch.where(std > 0, std, torch.ones_like(std)))
        self.caps_ = self._new_caps().to(y_hat.device, y_hat.dtype)
        self.history_: list[dict[str, list[float]]] = []
        for index, cap in enumerate(self.caps_):
            cap.reset_parameters(generator)
            desc = f"BayesCap {index + 1}/{self.num_caps}" if self.num_caps > 1 else "BayesCap"
            self.history_.append(self._train_cap(cap, y_hat[train], target[train], y_hat[val], target[val], generator, desc))
        self.fitted_ = True
        return self

    def cap_outputs(self, y_hat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(mu, alpha, beta)`` of each cap's GGD per element, in the output's units, each
        ``[num_caps, *y_hat.shape]``."""
        outputs = [self._cap_output(cap, y_hat) for cap in self.caps_]
        return tuple(torch.stack(parts) for parts in zip(*outputs))

    # ------------------------------------------------------------------------------ internals
    @property
    def _is_conv(self) -> bool:
        return len(self.output_shape_) == 3

    def _set_shape(self, y_hat: Tensor, arg: str) -> None:
        kind = {2: "mlp", 4: "conv"}.get(y_hat.ndim)
        if kind is None or (self.cap != "auto" and self.cap != kind):
            shapes = {"mlp": "[N, D]", "conv": "[N, C, H, W]"}
            want = "[N, D] (mlp cap) or [N, C, H, W] (conv cap)" if self.cap == "auto" else shapes[self.cap]
            raise ValueError(f"{arg}: expected outputs of shape {want} for the {self.cap!r} cap, got {tuple(y_hat.shape)}")
        self.output_shape_ = tuple(y_hat.shape[1:])
        self.num_channels_ = int(y_hat.shape[1])

    def _check_shape(self, y_hat: Tensor) -> None:
        ok = y_hat.ndim == len(self.output_shape_) + 1 and (
            y_hat.shape[1] == self.num_channels_ if self._is_conv else tuple(y_hat.shape[1:]) == self.output_shape_
        )
        if not ok:
            dims = [str(self.num_channels_), "H", "W"] if self._is_conv else [str(d) for d in self.output_shape_]
            want = f"[N, {', '.join(dims)}]"
            raise ValueError(f"model: output of shape {tuple(y_hat.shape)} does not match the cap's expected shape {want}")

    def _new_caps(self) -> nn.ModuleList:
        return nn.ModuleList(Cap(self.num_channels_, self.hidden, self.num_blocks, self._is_conv, self.beta_min)
                             for _ in range(self.num_caps))

    def _cap_output(self, cap: Cap, y_hat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        delta, alpha, beta = cap((y_hat - self.input_mean_) / self.input_scale_)
        return y_hat + self.input_scale_ * delta, self.input_scale_ * alpha, beta

    def _loss(self, cap: Cap, y_hat: Tensor, y: Tensor) -> Tensor:
        mu, alpha, beta = self._cap_output(cap, y_hat)
        return bayescap_loss(mu, alpha, beta, y_hat, y, identity_weight=self.identity_weight,
                             ggd_weight=self.ggd_weight, ggd_residual=self.ggd_residual)

    def _mean_loss(self, cap: Cap, y_hat: Tensor, y: Tensor) -> float:
        """The loss over all of ``(y_hat, y)`` without gradients, in batches (so memory does not grow with
        the validation share): the row-weighted mean of batch losses, as every row has the same elements."""
        total = 0.0
        with torch.no_grad():
            for idx in torch.arange(len(y_hat), device=y_hat.device).split(self.batch_size):
                total += float(self._loss(cap, y_hat[idx], y[idx])) * len(idx)
        return total / len(y_hat)

    def _train_cap(self, cap: Cap, y_hat: Tensor, y: Tensor, y_hat_val: Tensor, y_val: Tensor,
                   generator: torch.Generator, desc: str) -> dict[str, list[float]]:
        """Adam with cosine annealing; keeps the epoch with the lowest validation loss (the last without
        validation). Returns the per-epoch ``train_loss`` and ``val_loss``."""
        optimizer = torch.optim.Adam(cap.parameters(), lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.num_epochs)
        best_loss, best_state = math.inf, None
        history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        epochs = tqdm(range(self.num_epochs), desc=desc, disable=not self.progress, leave=False)
        for _ in epochs:
            cap.train()
            total = 0.0
            for idx in torch.randperm(len(y_hat), generator=generator).split(self.batch_size):
                loss = self._loss(cap, y_hat[idx], y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            schedule.step()
            history["train_loss"].append(total / len(y_hat))
            if len(y_val):
                cap.eval()
                val_loss = self._mean_loss(cap, y_hat_val, y_val)
                history["val_loss"].append(val_loss)
                if val_loss < best_loss:
                    best_loss, best_state = val_loss, copy.deepcopy(cap.state_dict())
                epochs.set_postfix(val_loss=f"{val_loss:.4g}")
        if best_state is not None:
            cap.load_state_dict(best_state)
        cap.eval()
        return history

    def _components(self, y_hat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each cap's GGD ``(loc, alpha, beta)`` per element, ``[num_caps, N, prod(output_shape)]``: the locations
        are ``y_hat`` plus the cap's ``mu`` minus the caps' mean ``mu`` (just ``y_hat`` for one cap)."""
        self._check_shape(y_hat)
        mu, alpha, beta = (t.reshape(self.num_caps, y_hat.shape[0], -1) for t in self.cap_outputs(y_hat))
        return y_hat.reshape(1, y_hat.shape[0], -1) + (mu - mu.mean(0)), alpha, beta

    def _predictive(self, output: Tensor, features: Tensor | None) -> Predictive:
        """The caps' equal-weight GGD mixture, centred on the frozen output (each cap's ``mu`` is trained to
        reproduce it; only their spread is kept)."""
        return Predictive.from_distribution(GeneralizedGaussian(*self._components(output)))

    def _ood_score(self, output: Tensor, features: Tensor | None) -> Tensor:
        """Per-sample mean (or ``ood_quantile`` quantile) over the output's elements of the predictive's total
        variance: the caps' mean GGD variance plus the variance of their ``mu`` (zero for one cap)."""
        variance = self._predictive(output, features).variance()
        return variance.mean(-1) if self.ood_quantile is None else torch.quantile(variance, self.ood_quantile, dim=-1)

    def _fitted_tensors(self) -> dict[str, Tensor]:
        state = {f"caps.{k}": v for k, v in self.caps_.state_dict().items()}
        return {**state, "output_shape": torch.tensor(self.output_shape_), "input_mean": self.input_mean_,
                "input_scale": self.input_scale_}

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        self.output_shape_ = tuple(int(s) for s in tensors["output_shape"])
        self.num_channels_ = self.output_shape_[0]
        self.register_buffer("input_mean_", tensors["input_mean"])
        self.register_buffer("input_scale_", tensors["input_scale"])
        dtype = tensors["input_scale"].dtype
        self.caps_ = self._new_caps().to(dtype)
        # files written before num_caps existed hold one cap under "cap."; they load as cap 0
        state = {k[len("caps."):]: v for k, v in tensors.items() if k.startswith("caps.")}
        state = state or {f"0.{k[len('cap.'):]}": v for k, v in tensors.items() if k.startswith("cap.")}
        self.caps_.load_state_dict(state)
        self.caps_.eval()
