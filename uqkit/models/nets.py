"""Small network builders for BNN examples and tests."""

from __future__ import annotations

from torch import Tensor, nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class MLP(nn.Module):
    """Fully connected network ``in_features -> hidden... -> out_features`` with one activation.

    Args:
        in_features: input width.
        hidden: widths of the hidden layers (may be empty: a linear model).
        out_features: output width.
        activation: "tanh" or "relu".
    """

    def __init__(self, in_features: int, hidden: list[int], out_features: int, activation: str = "tanh") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        widths = [in_features, *hidden, out_features]
        if any(int(w) != w or w < 1 for w in widths):
            raise ValueError(f"in_features, hidden, out_features: expected positive integers, got {widths}")
        self.in_features, self.out_features = in_features, out_features
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(widths) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_features] -> [B, out_features]``."""
        return self.layers(x)
