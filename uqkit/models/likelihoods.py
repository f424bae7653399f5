"""Likelihoods ``p(y | f(x))`` for network outputs ``[B, out]``, and their posterior predictives.

A likelihood may own parameters (a learned noise level); they live in the model's parameter dict
under names starting with ``"likelihood."`` and are passed to `log_prob` and `predictive` as
``lik_params`` (without the prefix), so one functional parameter dict describes the whole model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from uqkit._checks import check_positive
from uqkit.calibration.predictive import Predictive

Params = dict[str, Tensor]

#: Prefix of likelihood parameters inside a model's parameter dict.
PREFIX = "likelihood."


@runtime_checkable
class Likelihood(Protocol):
    """Observation model for network outputs."""

    def check_output(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if a net output of this shape ``[B, out]`` does not fit."""
        ...

    def init_params(self, dtype: torch.dtype) -> Params:
        """Initial values of the likelihood's own parameters (empty if none)."""
        ...

    def log_prob(self, output: Tensor, y: Tensor, lik_params: Params) -> Tensor:
        """``[B]`` log p(y_b | output_b), nats."""
        ...

    def predictive(self, outputs: Tensor, lik_params: Params) -> Predictive:
        """Predictive mixture from outputs ``[S, N, out]`` and likelihood parameters with leading ``[S]``."""
        ...


def _require_width(name: str, shape: tuple[int, ...], ok: bool, want: str) -> None:
    if len(shape) != 2 or not ok:
        raise ValueError(f"net: output shape {tuple(shape)} does not fit the {name} likelihood (expected {want})")


def _as_targets(output: Tensor, y: Tensor) -> Tensor:
    """Regression targets ``[B]`` or ``[B, D]`` as ``[B, D]`` in the output's dtype."""
    y = y.to(output.dtype)
    return y.unsqueeze(-1) if y.ndim == 1 else y


def _regression_predictive(mean: Tensor, std: Tensor) -> Predictive:
    """``[S, N, D]`` mean/std -> Gaussian Predictive (``[S, N]`` when D = 1)."""
    if mean.shape[-1] == 1:
        mean, std = mean.squeeze(-1), std.squeeze(-1)
    return Predictive.gaussian(mean, std.square())


@dataclass(frozen=True)
class Gaussian:
    """``y ~ N(f(x), noise_std^2)``, one output per target dimension.

    Args:
        noise_std: observation noise standard deviation (> 0), in target units; with
            ``learn_noise`` the initial value of the learned one.
        learn_noise: learn ``log noise_std`` as the parameter ``"likelihood.log_noise_std"``, with a
            flat prior on it (the scale-invariant prior on noise_std).
    """

    noise_std: float = 0.1
    learn_noise: bool = False

    def __post_init__(self) -> None:
        check_positive(self.noise_std, "noise_std")

    def check_output(self, shape: tuple[int, ...]) -> None:
        _require_width("Gaussian", shape, len(shape) == 2 and shape[-1] >= 1, "[B, D] with D >= 1")

    def init_params(self, dtype: torch.dtype) -> Params:
        return {"log_noise_std": torch.tensor(math.log(self.noise_std), dtype=dtype)} if self.learn_noise else {}

    def _std(self, lik_params: Params, like: Tensor) -> Tensor:
        if self.learn_noise:
            return lik_params["log_noise_std"].exp()
        return torch.tensor(self.noise_std, dtype=like.dtype, device=like.device)

    def log_prob(self, output: Tensor, y: Tensor, lik_params: Params) -> Tensor:
        std = self._std(lik_params, output)
        z = (_as_targets(output, y) - output) / std
        return (-0.5 * z.square() - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def predictive(self, outputs: Tensor, lik_params: Params) -> Predictive:
        std = self._std(lik_params, outputs)
        std = std.reshape(-1, 1, 1) if std.ndim else std
        return _regression_predictive(outputs, std.expand_as(outputs))


@dataclass(frozen=True)
class HeteroscedasticGaussian:
    """``y ~ N(mean, scale^2)`` with the net giving ``[mean (D), raw scale (D)]``; scale = softplus(raw) + min_std.

    Args:
        min_std: floor added to the softplus, in target units (> 0).
    """

    min_std: float = 1e-6

    def __post_init__(self) -> None:
        check_positive(self.min_std, "min_std")

    def check_output(self, shape: tuple[int, ...]) -> None:
        _require_width("HeteroscedasticGaussian", shape, len(shape) == 2 and shape[-1] % 2 == 0,
                       "[B, 2D]: D means then D raw scales")

    def init_params(self, dtype: torch.dtype) -> Params:
        return {}

    def _split(self, output: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = output.chunk(2, dim=-1)
        return mean, F.softplus(raw) + self.min_std

    def log_prob(self, output: Tensor, y: Tensor, lik_params: Params) -> Tensor:
        mean, std = self._split(output)
        z = (_as_targets(output, y) - mean) / std
        return (-0.5 * z.square() - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def predictive(self, outputs: Tensor, lik_params: Params) -> Predictive:
        return _regression_predictive(*self._split(outputs))


@dataclass(frozen=True)
class Categorical:
    """``y ~ Categorical(softmax(f(x)))``; the net outputs ``C >= 2`` logits, targets are labels ``[B]``."""

    def check_output(self, shape: tuple[int, ...]) -> None:
        _require_width("Categorical", shape, len(shape) == 2 and shape[-1] >= 2, "[B, C] logits with C >= 2")

    def init_params(self, dtype: torch.dtype) -> Params:
        return {}

    def log_prob(self, output: Tensor, y: Tensor, lik_params: Params) -> Tensor:
        return -F.cross_entropy(output, y.long(), reduction="none")

    def predictive(self, outputs: Tensor, lik_params: Params) -> Predictive:
        return Predictive.from_logits(outputs)


@dataclass(frozen=True)
class Bernoulli:
    """``y ~ Bernoulli(sigmoid(f(x)))``; the net outputs one logit, targets are 0/1 ``[B]``.

    The predictive has two classes, with logits ``[0, f]`` (so class 1 has probability sigmoid(f)).
    """

    def check_output(self, shape: tuple[int, ...]) -> None:
        _require_width("Bernoulli", shape, len(shape) == 2 and shape[-1] == 1, "[B, 1]: one logit")

    def init_params(self, dtype: torch.dtype) -> Params:
        return {}

    def log_prob(self, output: Tensor, y: Tensor, lik_params: Params) -> Tensor:
        return -F.binary_cross_entropy_with_logits(output.squeeze(-1), y.to(output.dtype), reduction="none")

    def predictive(self, outputs: Tensor, lik_params: Params) -> Predictive:
        return Predictive.from_logits(torch.cat([torch.zeros_like(outputs), outputs], dim=-1))
