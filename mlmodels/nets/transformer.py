"""The Transformer path: a pre-norm encoder over the feature window.

Attention is causal by default, so the output at step ``t`` depends on steps ``<= t`` only; the
path's summary is the last step. Two position schemes:

* ``"sinusoidal"`` (the windowed presets): fixed sinusoidal encodings added after the input
  projection (Vaswani et al., 2017), counted from the start of the window.
* ``"alibi"`` (the streaming presets): no encodings; each head adds ``-slope_h * (t - s)`` to the
  score of query ``t`` on key ``s`` (ALiBi, Press et al., 2022), and a query sees only the last
  ``attention_window`` steps. The bias depends on the distance only, so a stream of any length
  runs with a bounded cache of keys and values per layer (:meth:`TransformerPath.forward_state`)
  and gives the same numbers as a forward over the whole sequence.

Attention runs through ``F.scaled_dot_product_attention`` with the parameters of each layer's
``nn.MultiheadAttention`` (the state dict is unchanged). With ``keep_attention`` set (the
explainer) the weights are computed explicitly and kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError

POSITIONS = ("sinusoidal", "alibi")


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sinusoidal position encodings."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


def alibi_slopes(num_heads: int) -> Tensor:
    """The ALiBi slopes ``2^(-8 (h + 1) / H)``, one per head."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])


def attention_bias(slopes: Tensor, distance: Tensor, allowed: Tensor) -> Tensor:
    """``-slope_h * distance`` where ``allowed``, ``-inf`` elsewhere: ``(..., H, L, S)`` from
    ``distance`` and ``allowed`` ``(..., 1, L, S)``."""
    bias = -slopes[:, None, None] * distance.to(slopes.dtype)
    return bias.masked_fill(~allowed, float("-inf"))


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

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of ``x`` ``(B, L, D)``, each ``(B, H, L, D / H)``."""
        packed = F.linear(self.norm1(x), self.attn.in_proj_weight, self.attn.in_proj_bias)
        heads = packed.unflatten(-1, (3, self.attn.num_heads, -1)).permute(2, 0, 3, 1, 4)
        q, k, v = heads.unbind(0)
        return q, k, v

    def forward(self, x: Tensor, mask: Tensor | None = None, *, causal: bool = False) -> Tensor:
        """``x`` ``(B, T, D)``; ``mask``: an additive float or a boolean ``True = masked``
        ``(T, T)`` (or ``(B, H, T, T)``) mask, or ``causal`` for the plain causal one."""
        q, k, v = self.qkv(x)
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(mask, float("-inf"))
        return self.finish(x, q, k, v, mask, causal=causal)

    def finish(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, *, causal: bool
    ) -> Tensor:
        """Attention of ``q`` over ``k, v`` (additive ``bias`` or ``causal``), then the output
        projection, the residuals and the feed-forward."""
        p = self.attn.dropout if self.training else 0.0
        if self.keep_attention:
            out = self._explicit(q, k, v, bias, causal=causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, bias, dropout_p=p, is_causal=causal)
        out = self.attn.out_proj(out.transpose(1, 2).flatten(-2))
        x = x + self.drop(out)
        return x + self.drop(self.ff(self.norm2(x)))

    def _explicit(
        self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, *, causal: bool
    ) -> Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if causal:
            steps = scores.shape[-1]
            future = torch.ones(steps, steps, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        if bias is not None:
            scores = scores + bias
        weights = torch.softmax(scores, dim=-1)
        self.last_attention = weights.mean(dim=1).detach()
        if self.training and self.attn.dropout:
            weights = F.dropout(weights, self.attn.dropout)
        return weights @ v


class TransformerPath(nn.Module):
    """Encoder over (B, T, F) inputs; returns the sequence (B, T, D) and the last step (B, D).

    Args:
        positions: ``"sinusoidal"`` or ``"alibi"`` (module docstring).
        attention_window: with ``"alibi"``, how many steps (the query's own included) a query
            sees; ``None`` means all (only for windowed use: streaming needs a bound).
    """

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
        positions: str = "sinusoidal",
        attention_window: int | None = None,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} must be divisible by num_heads {num_heads}")
        if positions not in POSITIONS:
            raise ConfigError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if positions == "alibi" and (not causal or (attention_window or 1) < 1):
            raise ConfigError("ALiBi positions need causal attention and attention_window >= 1")
        self.proj = nn.Linear(input_size, d_model)
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)
        self.layers = nn.ModuleList(
            [EncoderLayer(d_model, num_heads, ff_mult, dropout) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(d_model)
        self.causal = causal
        self.positions = positions
        self.attention_window = attention_window
        self.num_heads = num_heads
        self.out_size = d_model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.positions == "alibi":
            h, _ = self.forward_state(x, None)
            return h, h[:, -1]
        t = x.shape[1]
        pe: torch.Tensor = self.pe  # type: ignore[assignment]
        h = self.proj(x) + pe[:t]
        for layer in self.layers:
            h = layer(h, causal=self.causal)
        h = self.norm(h)
        return h, h[:, -1]

    def keep_attention(self, on: bool = True) -> None:
        """Record each layer's attention weights on the next forward passes."""
        for layer in self.layers:
            layer.keep_attention = on  # type: ignore[union-attr,assignment]

    # ------------------------------------------------------------------------ streaming

    def cache_size(self) -> int:
        """Keys and values kept per layer between calls: ``attention_window - 1``."""
        if self.positions != "alibi" or self.attention_window is None:
            raise ConfigError(
                "only a Transformer path with ALiBi positions and an attention_window streams"
            )
        return self.attention_window - 1

    def initial_state(self, batch: int, like: Tensor) -> dict[str, Tensor]:
        """Empty caches: ``k{j}``, ``v{j}`` ``(B, H, window - 1, D / H)`` per layer ``j`` and
        ``seen`` ``(B,)``, the steps consumed so far (all batch-first)."""
        size, dh = self.cache_size(), self.out_size // self.num_heads
        state = {"seen": torch.zeros(batch, dtype=torch.long, device=like.device)}
        for j in range(len(self.layers)):
            for key in ("k", "v"):
                state[f"{key}{j}"] = like.new_zeros(batch, self.num_heads, size, dh)
        return state

    def forward_state(
        self, x: Tensor, state: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Continue the stream with ``x`` ``(B, L, F)`` from ``state`` (``None``: the start).
        Returns the normalised sequence ``(B, L, D)`` and the state after its last step."""
        if state is None:
            if self.attention_window is None:  # windowed use: one causal ALiBi pass
                return self._alibi_window(x), {}
            state = self.initial_state(x.shape[0], x)
        size = self.cache_size()
        seen = state["seen"]
        bias = self._stream_bias(seen, x.shape[1], size)
        h = self.proj(x)
        new: dict[str, Tensor] = {"seen": seen + x.shape[1]}
        for j, layer in enumerate(self.layers):
            q, k, v = layer.qkv(h)  # type: ignore[operator]
            k = torch.cat([state[f"k{j}"], k], dim=2)
            v = torch.cat([state[f"v{j}"], v], dim=2)
            new[f"k{j}"], new[f"v{j}"] = k[:, :, k.shape[2] - size :], v[:, :, v.shape[2] - size :]
            h = layer.finish(h, q, k, v, bias, causal=False)  # type: ignore[operator]
        return self.norm(h), new

    def _stream_bias(self, seen: Tensor, steps: int, size: int) -> Tensor:
        """ALiBi bias ``(B, H, L, size + L)`` of ``steps`` new queries over the cache and the
        new keys; cache slots before the first step of the stream are masked."""
        slot = torch.arange(size + steps, device=seen.device)
        query = torch.arange(steps, device=seen.device)
        distance = query[:, None] + size - slot[None, :]  # (L, S)
        window = self.attention_window or (size + 1)
        allowed = (distance >= 0) & (distance < window)
        filled = slot[None, :] >= size - seen[:, None]  # (B, S): the slot holds a real step
        allowed = allowed[None] & filled[:, None, :]
        return attention_bias(self.slopes, distance, allowed[:, None])  # type: ignore[arg-type]

    def _alibi_window(self, x: Tensor) -> Tensor:
        steps = x.shape[1]
        pos = torch.arange(steps, device=x.device)
        distance = pos[:, None] - pos[None, :]
        allowed = (distance >= 0) & (distance < (self.attention_window or steps))
        bias = attention_bias(self.slopes, distance, allowed[None])  # type: ignore[arg-type]
        h = self.proj(x)
        for layer in self.layers:
            h = layer(h, bias)
        return self.norm(h)
