"""NNGP kernels: the Gaussian-process limit of infinitely wide fully connected networks.

A network with ``depth`` hidden layers, weights ``W ~ N(0, weight_var / fan_in)`` and biases
``b ~ N(0, bias_var)`` has, as every hidden width goes to infinity, a GP output with the kernel of
the recursion (Neal 1996; Lee et al., "Deep Neural Networks as Gaussian Processes", ICLR 2018)::

    K0(x, x')      = bias_var + weight_var * x.x' / d
    K{l+1}(x, x')  = bias_var + weight_var * E[phi(u) phi(v)],  (u, v) ~ N(0, [[K(x,x), K(x,x')], [., K(x',x')]])

and the output kernel is ``K^depth`` (``depth = 0`` is Bayesian linear regression). The expectation
has closed forms:

* ReLU, the arc-cosine kernel of degree 1 (Cho & Saul, NeurIPS 2009), with ``c = cos(theta)`` the
  correlation: ``sqrt(K(x,x) K(x',x')) * (sin theta + (pi - theta) cos theta) / (2 pi)``;
* erf (Williams, "Computing with infinite networks", NeurIPS 1996):
  ``(2 / pi) * arcsin(2 K(x,x') / sqrt((1 + 2 K(x,x)) (1 + 2 K(x',x'))))``.

METHODS.md section 5 gives the same recursion (Lee, Yun, Yang & Lee, ICLR 2022).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from uqkit._gpytorch import import_gpytorch

gpytorch = import_gpytorch()
Positive = gpytorch.constraints.Positive

ACTIVATIONS = ("relu", "erf")


class NNGPKernel(gpytorch.kernels.Kernel):
    """The NNGP kernel of a fully connected ReLU or erf network with ``depth`` hidden layers.

    ``weight_var`` and ``bias_var`` are gpytorch raw parameters under a positive constraint
    (differentiable and learnable; read them as ``kernel.weight_var``/``kernel.bias_var``), one pair
    per batch member when ``batch_shape`` is given.

    Args:
        depth: number of hidden layers L >= 0.
        weight_var: weight variance sigma_w^2 (> 0), scaled by 1/fan_in.
        bias_var: bias variance sigma_b^2 (> 0; use a small value such as 1e-6 for "no bias").
        activation: "relu" or "erf".
        batch_shape: gpytorch batch shape of the hyperparameters.
    """

    has_lengthscale = False

    def __init__(
        self,
        depth: int = 1,
        weight_var: float = 1.0,
        bias_var: float = 0.1,
        activation: str = "relu",
        *,
        batch_shape: torch.Size | tuple[int, ...] = torch.Size([]),
        **kwargs: object,
    ) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth: expected an integer >= 0, got {depth!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        for name, value in (("weight_var", weight_var), ("bias_var", bias_var)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        super().__init__(batch_shape=torch.Size(batch_shape), **kwargs)
        self.depth = depth
        self.activation = activation
        shape = (*self.batch_shape, 1, 1)
        for name, value in (("weight_var", weight_var), ("bias_var", bias_var)):
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(torch.zeros(shape)))
            self.register_constraint(f"raw_{name}", Positive())
            self._set(name, value)

    # ------------------------------------------------------------------------------ parameters
    @property
    def weight_var(self) -> Tensor:
        """``[*batch_shape, 1, 1]`` weight variance."""
        return self.raw_weight_var_constraint.transform(self.raw_weight_var)

    @weight_var.setter
    def weight_var(self, value: float | Tensor) -> None:
        self._set("weight_var", value)

    @property
    def bias_var(self) -> Tensor:
        """``[*batch_shape, 1, 1]`` bias variance."""
        return self.raw_bias_var_constraint.transform(self.raw_bias_var)

    @bias_var.setter
    def bias_var(self, value: float | Tensor) -> None:
        self._set("bias_var", value)

    def _set(self, name: str, value: float | Tensor) -> None:
        raw = getattr(self, f"raw_{name}")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device)
        constraint = getattr(self, f"raw_{name}_constraint")
        self.initialize(**{f"raw_{name}": constraint.inverse_transform(value.expand_as(raw))})

    # ---------------------------------------------------------------------------------- kernel
    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch: bool = False, **params: object) -> Tensor:
        """Kernel matrix ``[..., n1, n2]`` (or its diagonal ``[..., n]`` with ``diag=True``).

        Args:
            x1: ``[..., n1, d]`` inputs.
            x2: ``[..., n2, d]`` inputs.
        """
        if last_dim_is_batch:
            raise ValueError("last_dim_is_batch: not supported by NNGPKernel")
        d = x1.shape[-1]
        w, b = self.weight_var, self.bias_var
        if diag:
            w, b = w[..., 0], b[..., 0]  # [*batch, 1]: broadcasts over the n points
            k = b + w * (x1 * x2).sum(-1) / d
            for _ in range(self.depth):
                k = b + w * _expect_diag(k, self.activation)
            return k
        k = b + w * (x1 @ x2.transpose(-1, -2)) / d
        k11 = b[..., 0] + w[..., 0] * (x1 * x1).sum(-1) / d  # [..., n1]
        k22 = b[..., 0] + w[..., 0] * (x2 * x2).sum(-1) / d  # [..., n2]
        for _ in range(self.depth):
            k = b + w * _expect_cross(k, k11, k22, self.activation)
            k11 = b[..., 0] + w[..., 0] * _expect_diag(k11, self.activation)
            k22 = b[..., 0] + w[..., 0] * _expect_diag(k22, self.activation)
        return k


def _expect_diag(k: Tensor, activation: str) -> Tensor:
    """``E[phi(u)^2]`` for ``u ~ N(0, k)``."""
    if activation == "relu":
        return 0.5 * k
    return (2 / math.pi) * torch.asin(2 * k / (1 + 2 * k))


def _expect_cross(k12: Tensor, k11: Tensor, k22: Tensor, activation: str) -> Tensor:
    """``E[phi(u) phi(v)]`` for the bivariate normal with variances ``k11 [..., n1]``, ``k22 [..., n2]``, covariance ``k12``."""
    tiny = torch.finfo(k12.dtype).tiny
    margin = 4 * torch.finfo(k12.dtype).eps  # keeps arccos/arcsin off +-1, where their gradients are infinite
    if activation == "relu":
        norm = torch.sqrt((k11.unsqueeze(-1) * k22.unsqueeze(-2)).clamp_min(tiny))
        cos = (k12 / norm).clamp(-1 + margin, 1 - margin)  # a zero input (K(x,x) = 0) has k12 = 0: cos = 0
        theta = torch.acos(cos)
        return norm * (torch.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
    norm = torch.sqrt((1 + 2 * k11).unsqueeze(-1) * (1 + 2 * k22).unsqueeze(-2))
    return (2 / math.pi) * torch.asin((2 * k12 / norm).clamp(-1 + margin, 1 - margin))
