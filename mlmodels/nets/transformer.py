"""The Transformer path: a pre-norm encoder over the feature window, with positions.

Positions are fixed sinusoidal encodings added after the input projection (Vaswani et al.,
2017). Attention is causal by default, so the output at step ``t`` depends on steps ``<= t`` only;
the path's summary is the last step. Each layer keeps its latest attention weights when
``keep_attention`` is set (used by the explainer; off for speed otherwise).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sinusoidal position encodings."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward, with residuals and dropout."""

    def __init__(
        self, d_model: int, num_heads: int, ff_mult: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
        )
        self.drop = nn.Dropout(dropout)
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        out, weights = self.attn(
            h, h, h, attn_mask=mask, need_weights=self.keep_attention, average_attn_weights=True
        )
        if self.keep_attention:
            self.last_attention = weights.detach()
        x = x + self.drop(out)
        return x + self.drop(self.ff(self.norm2(x)))


class TransformerPath(nn.Module):
    """Encoder over (B, T, F) inputs; returns the sequence (B, T, D) and the last step (B, D)."""

    def __init__(
        self,
        input_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        *,
        dropout: float = 0.1,
        max_len: int = 512,
        causal: bool = True,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} must be divisible by num_heads {num_heads}")
        self.proj = nn.Linear(input_size, d_model)
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)
        self.layers = nn.ModuleList(
            [EncoderLayer(d_model, num_heads, ff_mult, dropout) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(d_model)
        self.causal = causal
        self.out_size = d_model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = x.shape[1]
        pe: torch.Tensor = self.pe  # type: ignore[assignment]
        h = self.proj(x) + pe[:t]
        mask = None
        if self.causal:
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        for layer in self.layers:
            h = layer(h, mask)
        h = self.norm(h)
        return h, h[:, -1]

    def keep_attention(self, on: bool = True) -> None:
        """Record each layer's attention weights on the next forward passes."""
        for layer in self.layers:
            layer.keep_attention = on  # type: ignore[union-attr,assignment]
