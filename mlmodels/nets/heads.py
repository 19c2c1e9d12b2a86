"""Attention fusion of the paths, and the multi-task heads shared by every preset.

Output contract (every preset, batch ``B``):

==================  =========  ============================================================
key                 shape      meaning
==================  =========  ============================================================
``price``           (B, 3)     predicted log return at 1, 4, 24 bars
``direction``       (B, 3)     logits of down / flat / up
``action``          (B, 3)     logits of sell / hold / buy
``size``            (B,)       position size in [0, 1] (sigmoid)
``volatility``      (B,)       realised volatility of the next 24 bars, > 0 (softplus)
``risk``            (B,)       maximum adverse excursion of the next 24 bars, > 0 (softplus)
``confidence``      (B,)       in [0, 1] (sigmoid)
==================  =========  ============================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KEYS: tuple[str, ...] = (
    "price",
    "direction",
    "action",
    "size",
    "volatility",
    "risk",
    "confidence",
)


class PositionEncoder(nn.Module):
    """Embeds the position state (position, unrealised log P&L, bars held) into ``d`` features.

    Bars held enters as ``log1p(bars)`` so long holds do not dominate.
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        p = torch.stack([pos[:, 0], pos[:, 1], torch.log1p(pos[:, 2].clamp(min=0))], dim=1)
        return self.net(p)


class AttentionFusion(nn.Module):
    """A learned query, conditioned on the position state, attends over the path summaries.

    Each path summary is projected to ``d``; the softmax weights over paths are kept in
    ``last_weights`` (B, P) for explanation. With one path the weights are all ones.
    """

    def __init__(
        self, path_sizes: list[int], d: int, num_heads: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.sizes = list(path_sizes)
        self.proj = nn.ModuleList([nn.Linear(s, d) for s in path_sizes])
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        self.attn = nn.MultiheadAttention(d, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.last_weights: torch.Tensor | None = None

    def forward(self, summaries: list[torch.Tensor], pos_emb: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack(
            [p(s) for p, s in zip(self.proj, summaries, strict=True)], dim=1
        )  # (B, P, d)
        q = self.query.expand(tokens.shape[0], -1, -1) + pos_emb[:, None, :]
        out, w = self.attn(q, tokens, tokens, need_weights=True, average_attn_weights=True)
        self.last_weights = w[:, 0].detach()
        return self.norm(out[:, 0] + pos_emb + tokens.mean(dim=1))


class MultiTaskHeads(nn.Module):
    """All heads from one fused vector (see the module docstring for the contract)."""

    def __init__(self, d: int, hidden: int, dropout: float = 0.3, horizons: int = 3) -> None:
        super().__init__()

        def mlp(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out)
            )

        self.price = mlp(horizons)
        self.direction = mlp(3)
        self.action = mlp(4)  # 3 action logits + 1 size
        self.volatility = mlp(1)
        self.risk = mlp(1)
        self.confidence = mlp(1)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        act = self.action(z)
        return {
            "price": self.price(z),
            "direction": self.direction(z),
            "action": act[:, :3],
            "size": torch.sigmoid(act[:, 3]),
            "volatility": F.softplus(self.volatility(z)[:, 0]) + 1e-6,
            "risk": F.softplus(self.risk(z)[:, 0]) + 1e-6,
            "confidence": torch.sigmoid(self.confidence(z)[:, 0]),
        }
