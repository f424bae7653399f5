"""Multiply-add FLOPs of (sparse) variational training and prediction, derived exactly from active counts.

Convention (that of ``torch.utils.flop_counter``): only matrix products and convolutions count, and a
product of a weight with ``n`` entries used at ``u`` output positions per example (``u = 1`` for a
Linear layer, the number of output pixels for a convolution) costs ``2 * u * n`` per example. Counts
for a sparse layer use its *active* entries only: the FLOPs a sparse kernel would need, as in the
SSVI and RigL papers (this CPU implementation multiplies masked dense tensors). For a dense network
the training-step count equals ``FlopCounterMode``'s measurement of the same step (tested).

Per layer and example, with ``n`` active weights, one forward pass costs ``2un``; the backward pass
costs ``2un`` for the weight gradient plus ``2un`` for the input gradient, which the first layer
does not need (its input is data). The local reparameterisation makes two passes (means, and
variances on ``x^2``); weight sampling makes one. SSVI takes the mean path's weight gradient densely
(``n`` = all entries), to rank inactive coordinates, on each update step and the ``growth_steps - 1``
steps before it whose gradients it sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from uqkit.inference.variational import LINEAR_LAYERS
from uqkit.models.spec import ModelSpec

Params = dict[str, Tensor]


@dataclass(frozen=True)
class Layer:
    """A Linear/Conv layer as the forward pass meets it.

    Attributes:
        module: its name in the net (``""`` for the net itself).
        weight: the name of its weight parameter.
        bias: the name of its bias parameter, or None.
        uses: output positions per example (1 for Linear, output pixels for a convolution).
    """

    module: str
    weight: str
    bias: str | None
    uses: int


def linear_layers(spec: ModelSpec, params: Params, x: Tensor) -> list[Layer]:
    """The Linear/Conv layers of ``spec.net`` in the order a forward pass on ``x [B, ...]`` calls them."""
    found: dict[str, Layer] = {}
    handles = []

    def record(name: str):
        def hook(module, args, output: Tensor) -> None:
            prefix = f"{name}." if name else ""
            uses = output.numel() // (output.shape[0] * module.weight.shape[0])  # Linear: out_features
            previous = found.get(name)
            found[name] = Layer(name, prefix + "weight", prefix + "bias" if module.bias is not None else None,
                                uses + (previous.uses if previous else 0))
        return hook

    try:
        for name, module in spec.net.named_modules():
            if isinstance(module, LINEAR_LAYERS):
                handles.append(module.register_forward_hook(record(name)))
        with torch.no_grad():
            spec.forward(params, x)
    finally:
        for h in handles:
            h.remove()
    return list(found.values())


def forward_flops(layers: list[Layer], active: dict[str, int]) -> int:
    """FLOPs of one forward pass of one example through sampled weights (``active``: entries per weight)."""
    return sum(2 * layer.uses * active[layer.weight] for layer in layers)


def train_step_flops(layers: list[Layer], active: dict[str, int], *, batch_size: int, local: bool,
                     dense: dict[str, int] | None = None) -> int:
    """FLOPs of one training step (forward and backward) on ``batch_size`` examples.

    Args:
        layers: `linear_layers` of the net, in call order.
        active: active entries per weight name.
        batch_size: B.
        local: local reparameterisation (two passes) rather than weight sampling (one).
        dense: all entries per weight name, when the mean path's weight gradient is taken densely
            (an SSVI subspace update); None otherwise.
    """
    passes = 2 if local else 1
    total = 0
    for i, layer in enumerate(layers):
        n = active[layer.weight]
        unit = 2 * batch_size * layer.uses
        grad_weight = unit * ((dense or active)[layer.weight] + (passes - 1) * n)
        grad_input = 0 if i == 0 else unit * n * passes
        total += unit * n * passes + grad_weight + grad_input
    return total
