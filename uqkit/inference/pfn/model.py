"""The PFN transformer: training tokens ``e_x + e_y``, query tokens ``e_x``, the PFN attention mask.

Every token attends to all training tokens; each query token also attends to itself and never to
another query. There is no positional encoding, so predictions are invariant to the order of the
training set and each query's output depends only on the training set and that query. Post-LN
encoder layers with GELU; the decoder runs on query positions only.

After Müller et al., "Transformers Can Do Bayesian Inference" (ICLR 2022), section 4 (own
implementation of the architecture described there and in automl/PFNs ``transformer.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class PFNConfig:
    """Sizes of a PFN transformer.

    Attributes:
        max_input_dim: inputs with fewer dimensions are zero-padded to this many.
        num_outputs: bar buckets ``K`` (regression) or classes ``C`` (classification).
        d_model, num_heads, num_layers, d_ff: transformer sizes.
    """

    max_input_dim: int = 1
    num_outputs: int = 1000
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    d_ff: int = 256

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def pfn_attention_mask(num_tokens: int, num_train: int) -> Tensor:
    """``[L, L]`` boolean mask, True where token ``i`` may attend to token ``j``.

    Allowed: ``j < num_train`` (training tokens) and ``i == j`` (each token sees itself).
    """
    allowed = torch.zeros(num_tokens, num_tokens, dtype=torch.bool)
    allowed[:, :num_train] = True
    allowed.fill_diagonal_(True)
    return allowed


def pfn_attention(q: Tensor, k: Tensor, v: Tensor, num_train: int) -> Tensor:
    """Attention under `pfn_attention_mask` without materialising it, in ``O(L * num_train)``.

    Args:
        q, k, v: ``[B, H, L, dh]``; the first ``num_train`` positions are training tokens.

    Returns:
        ``[B, H, L, dh]``.
    """
    p = num_train
    k_tr, v_tr = k[..., :p, :], v[..., :p, :]
    out_train = F.scaled_dot_product_attention(q[..., :p, :], k_tr, v_tr) if p > 0 else q[..., :0, :]
    q_te, k_te, v_te = q[..., p:, :], k[..., p:, :], v[..., p:, :]
    scale = q.shape[-1] ** -0.5
    scores = torch.cat([q_te @ k_tr.transpose(-1, -2), (q_te * k_te).sum(-1, keepdim=True)], dim=-1) * scale
    attn = torch.softmax(scores, dim=-1)
    out_test = attn[..., :p] @ v_tr + attn[..., p:] * v_te
    return torch.cat([out_train, out_test], dim=-2)


class _EncoderLayer(nn.Module):
    """Post-LN transformer layer (self-attention under the PFN mask, then a GELU feed-forward)."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, h: Tensor, num_train: int) -> Tensor:
        b, length, d = h.shape
        q, k, v = self.qkv(h).view(b, length, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        att = pfn_attention(q, k, v, num_train).transpose(1, 2).reshape(b, length, d)
        h = self.norm1(h + self.out(att))
        return self.norm2(h + self.ff(h))


class PFNTransformer(nn.Module):
    """Maps a context ``(x_train, y_train)`` and queries ``x_test`` to per-query output logits.

    Args:
        config: the sizes (`PFNConfig`).
    """

    def __init__(self, config: PFNConfig) -> None:
        super().__init__()
        if config.d_model % config.num_heads:
            raise ValueError(f"config: d_model {config.d_model} must be divisible by num_heads {config.num_heads}")
        self.config = config
        self.x_encoder = nn.Linear(config.max_input_dim, config.d_model)
        self.y_encoder = nn.Linear(1, config.d_model)
        self.layers = nn.ModuleList(
            _EncoderLayer(config.d_model, config.num_heads, config.d_ff) for _ in range(config.num_layers))
        self.decoder = nn.Sequential(nn.Linear(config.d_model, config.d_ff), nn.GELU(),
                                     nn.Linear(config.d_ff, config.num_outputs))

    def forward(self, x_train: Tensor, y_train: Tensor, x_test: Tensor) -> Tensor:
        """``[B, m, num_outputs]`` logits.

        Args:
            x_train: ``[B, n, d]`` (``d <= max_input_dim``; zero-padded), ``n`` may be 0.
            y_train: ``[B, n]``.
            x_test: ``[B, m, d]``.
        """
        n = x_train.shape[1]
        x = self._pad(torch.cat([x_train, x_test], dim=1))
        h = self.x_encoder(x)
        h = torch.cat([h[:, :n] + self.y_encoder(y_train.unsqueeze(-1)), h[:, n:]], dim=1)
        for layer in self.layers:
            h = layer(h, n)
        return self.decoder(h[:, n:])

    def _pad(self, x: Tensor) -> Tensor:
        missing = self.config.max_input_dim - x.shape[-1]
        return F.pad(x, (0, missing)) if missing > 0 else x
