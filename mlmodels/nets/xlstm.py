"""xLSTM blocks and the stack (Beck et al., 2024, "xLSTM", section 2.4, appendix figures 9-10).

All tensors are batch-first ``(B, T, features)`` and every block is causal: the output at step
``t`` depends on inputs at steps ``<= t`` only.

sLSTM block (post up-projection)::

    y = LN(x);  u = swish(conv4(y))                   (causal depthwise conv, kernel 4)
    x = x + dropout(HeadNorm(sLSTM(y, gates i, f from u)))
    x = x + dropout(FFN(LN(x)))                       FFN(a) = W_d (gelu(W_g a) * W_u a)

mLSTM block (pre up-projection, factor 2)::

    y = LN(x);  [a, z] = W_up y                       (a, z each 2 * hidden)
    u = swish(conv4(a));  h = HeadNorm(mLSTM(q, k from u; v from a)) + s * u
    x = x + dropout(W_down(h * swish(z)))             (s: learnable skip; swish(z): output gate)

Stack: ``x -> Linear(input_size, hidden) -> blocks -> LN``; block ``j`` is an sLSTM block if
``j in slstm_at``, else an mLSTM block.

``forward`` starts every sequence from the zero state; ``forward_state`` continues one from a
state (each block's cell memory and the last ``K - 1`` inputs of its convolution), so a stream
can be fed in pieces of any length with the same outputs as one call over the whole of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError
from mlmodels.nets.mlstm import MLSTMLayer, MLSTMState
from mlmodels.nets.slstm import SLSTMLayer, SLSTMState


def _linear_halves(linear: nn.Linear, x: Tensor) -> tuple[Tensor, Tensor]:
    """``linear(x).chunk(2, -1)`` as two matmuls: both halves come out contiguous, which makes
    the elementwise work on them ~2x faster on CPU."""
    w1, w2 = linear.weight.chunk(2, dim=0)
    b1, b2 = (None, None) if linear.bias is None else linear.bias.chunk(2)
    return F.linear(x, w1, b1), F.linear(x, w2, b2)


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


class CausalConv1d(nn.Module):
    """Depthwise causal convolution over time: ``y_t = b + sum_{j<K} w_j * x_{t-j}`` per channel,
    with zeros before the first step. ``(B, T, C) -> (B, T, C)``.

    The parameters are an ``nn.Conv1d``'s (``weight`` ``(C, 1, K)``, ``bias`` ``(C,)``); the
    convolution runs as ``K`` shifted multiply-adds in the ``(B, T, C)`` layout, which on CPU is
    faster than transposing to ``nn.Conv1d``'s ``(B, C, T)`` and back.
    """

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: Tensor, history: Tensor | None = None) -> Tensor:
        """``x`` ``(B, T, C)``; ``history`` ``(B, K - 1, C)``: the inputs before ``x`` (zeros if
        ``None``)."""
        if history is not None:
            return self.forward(torch.cat([history, x], dim=1))[:, history.shape[1] :]
        w = self.conv.weight.squeeze(1)  # (C, K); w[:, K - 1] multiplies x_t
        bias = self.conv.bias
        assert bias is not None
        last = self.kernel_size - 1
        out = torch.addcmul(bias, x, w[:, last])
        for j in range(1, min(self.kernel_size, x.shape[1])):
            out[:, j:].addcmul_(x[:, :-j], w[:, last - j])
        return out

    def initial_history(self, batch: int, like: Tensor) -> Tensor:
        """The zeros before the first step: ``(B, K - 1, C)``."""
        return like.new_zeros(batch, self.kernel_size - 1, self.conv.weight.shape[0])

    def next_history(self, history: Tensor, x: Tensor) -> Tensor:
        """The last ``K - 1`` inputs once ``x`` follows ``history``."""
        both = torch.cat([history, x], dim=1)
        return both[:, both.shape[1] - history.shape[1] :]


class HeadNorm(nn.Module):
    """Layer norm within each head (the paper's group norm after the cell), then a learned scale
    per feature. ``(..., num_heads * head_dim) -> same``."""

    def __init__(self, size: int, num_heads: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: Tensor) -> Tensor:
        heads = x.unflatten(-1, (self.num_heads, -1))
        normed = F.layer_norm(heads, (heads.shape[-1],), eps=self.eps)
        return normed.flatten(-2) * self.weight


class GatedFeedForward(nn.Module):
    """``W_down (gelu(W_gate x) * W_up x)``, inner size ``factor * size`` rounded up to a
    multiple of 64 (as the authors do)."""

    def __init__(self, size: int, factor: float = 4.0 / 3.0) -> None:
        super().__init__()
        self.inner = 64 * math.ceil(factor * size / 64)
        self.up = nn.Linear(size, 2 * self.inner)
        self.down = nn.Linear(self.inner, size)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = _linear_halves(self.up, x)
        return self.down(F.gelu(gate) * up)


class SLSTMBlock(nn.Module):
    """Pre-LayerNorm residual block around an sLSTM layer, with an optional gated feed-forward.

    Args:
        hidden_size: features in and out; divisible by ``num_heads``.
        num_heads: sLSTM heads (block-diagonal recurrence).
        conv_kernel: causal conv kernel feeding the i and f gates; 0 feeds them ``LN(x)``.
        feedforward: add the gated feed-forward sub-block (factor ``ffn_factor``).
        dropout: on each residual branch.
        use_jit: run the sLSTM loop through TorchScript.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 4,
        *,
        conv_kernel: int = 4,
        feedforward: bool = True,
        ffn_factor: float = 4.0 / 3.0,
        dropout: float = 0.0,
        use_jit: bool = True,
    ) -> None:
        super().__init__()
        _check_dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size)
        self.conv = CausalConv1d(hidden_size, conv_kernel) if conv_kernel > 0 else None
        self.cell = SLSTMLayer(hidden_size, hidden_size, num_heads, use_jit=use_jit)
        self.head_norm = HeadNorm(hidden_size, num_heads)
        self.ffn_norm = nn.LayerNorm(hidden_size) if feedforward else None
        self.ffn = GatedFeedForward(hidden_size, ffn_factor) if feedforward else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, hidden) -> (B, T, hidden)``."""
        return self.forward_state(x, None)[0]

    def initial_state(self, batch: int, like: Tensor) -> dict[str, Tensor]:
        """``h, c, n, m`` of the cell and ``conv``, the last inputs of the convolution."""
        state = dict(self.cell.initial_state(batch, like)._asdict())
        if self.conv is not None:
            state["conv"] = self.conv.initial_history(batch, like)
        return state

    def forward_state(
        self, x: Tensor, state: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Continue from ``state`` (``None``: the start; then no state is returned)."""
        y = self.norm(x)
        cell_state = None if state is None else SLSTMState(*(state[k] for k in SLSTMState._fields))
        history = None if state is None or self.conv is None else state["conv"]
        u = None if self.conv is None else F.silu(self.conv(y, history))
        h, final = self.cell(y, cell_state, gate_input=u)
        x = x + self.dropout(self.head_norm(h))
        if self.ffn is not None and self.ffn_norm is not None:
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        if state is None:
            return x, {}
        new = dict(final._asdict())
        if self.conv is not None:
            new["conv"] = self.conv.next_history(state["conv"], y)
        return x, new


class MLSTMBlock(nn.Module):
    """Pre-LayerNorm residual block around an mLSTM layer with up-projection (module docstring).

    Args:
        hidden_size: features in and out.
        num_heads: mLSTM heads; ``proj_factor * hidden_size`` must be divisible by it.
        proj_factor: up-projection factor (the paper's 2).
        conv_kernel: causal conv kernel on the q/k path.
        qkv_block_size: block size of the block-diagonal q/k/v projections.
        dropout: on the residual branch.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 4,
        *,
        proj_factor: float = 2.0,
        conv_kernel: int = 4,
        qkv_block_size: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_dropout(dropout)
        if conv_kernel < 1:
            raise ConfigError(f"mLSTM block conv_kernel must be >= 1, got {conv_kernel}")
        inner = round(proj_factor * hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.up = nn.Linear(hidden_size, 2 * inner)
        self.conv = CausalConv1d(inner, conv_kernel)
        self.cell = MLSTMLayer(inner, num_heads, qkv_block_size=qkv_block_size, output_gate=False)
        self.head_norm = HeadNorm(inner, num_heads)
        self.skip = nn.Parameter(torch.ones(inner))
        self.down = nn.Linear(inner, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, hidden) -> (B, T, hidden)``."""
        return self.forward_state(x, None)[0]

    def initial_state(self, batch: int, like: Tensor) -> dict[str, Tensor]:
        """``c, n, m`` of the cell and ``conv``, the last inputs of the convolution."""
        state = dict(self.cell.initial_state(batch, like)._asdict())
        state["conv"] = self.conv.initial_history(batch, like)
        return state

    def forward_state(
        self, x: Tensor, state: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Continue from ``state`` (``None``: the start; then no state is returned)."""
        a, z = _linear_halves(self.up, self.norm(x))
        if state is None:
            u = F.silu(self.conv(a))
            cell_out = self.cell(a, x_conv=u)
            new: dict[str, Tensor] = {}
        else:
            u = F.silu(self.conv(a, state["conv"]))
            cell_state = MLSTMState(state["c"], state["n"], state["m"])
            cell_out, final = self.cell.forward_state(a, u, cell_state)
            new = {**final._asdict(), "conv": self.conv.next_history(state["conv"], a)}
        h = torch.addcmul(self.head_norm(cell_out), self.skip, u)
        return x + self.dropout(self.down(h * F.silu(z))), new


class XLSTMStack(nn.Module):
    """Embedding, ``num_layers`` xLSTM blocks, final LayerNorm.

    Args:
        input_size: features per step of the input ``(B, T, input_size)``.
        hidden_size: width of every block; divisible by ``num_heads``.
        num_layers: blocks.
        num_heads: heads of every sLSTM and mLSTM layer.
        slstm_at: block positions (0-based) that are sLSTM blocks; the rest are mLSTM blocks.
        dropout: on every residual branch.
        use_jit: run sLSTM loops through TorchScript.

    ``forward(x)`` returns the sequence ``(B, T, hidden_size)`` and its last step
    ``(B, hidden_size)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int = 4,
        slstm_at: Sequence[int] = (),
        dropout: float = 0.0,
        *,
        use_jit: bool = True,
    ) -> None:
        super().__init__()
        _check_stack_args(input_size, hidden_size, num_layers, num_heads, slstm_at)
        _check_dropout(dropout)
        self.slstm_at = tuple(sorted(slstm_at))
        self.embed = nn.Linear(input_size, hidden_size)
        self.blocks = nn.ModuleList(
            SLSTMBlock(hidden_size, num_heads, dropout=dropout, use_jit=use_jit)
            if j in self.slstm_at
            else MLSTMBlock(hidden_size, num_heads, dropout=dropout)
            for j in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(hidden_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, input_size) -> ((B, T, hidden_size), (B, hidden_size))``."""
        _check_rank(x)
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        h = self.post_norm(h)
        return h, h[:, -1]

    def initial_state(self, batch: int, like: Tensor) -> dict[str, Tensor]:
        """The state before the first step: ``"{block}.{name}"`` -> tensor, each batch-first
        (sLSTM blocks: ``h, c, n, m, conv``; mLSTM blocks: ``c, n, m, conv``)."""
        return {
            f"{j}.{key}": value
            for j, block in enumerate(self.blocks)
            for key, value in block.initial_state(batch, like).items()  # type: ignore[operator]
        }

    def forward_state(
        self, x: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Continue the sequence from ``state`` with ``x`` ``(B, T, input_size)``: returns the
        sequence ``(B, T, hidden_size)`` and the state after its last step. Calls one after
        another (any split of the steps) equal one call over the whole sequence."""
        _check_rank(x)
        h = self.embed(x)
        new: dict[str, Tensor] = {}
        for j, block in enumerate(self.blocks):
            mine = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(j)}
            h, out = block.forward_state(h, mine)  # type: ignore[operator]
            new.update({f"{j}.{k}": v for k, v in out.items()})
        return self.post_norm(h), new


def _check_rank(x: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"XLSTMStack expects (batch, time, features), got shape {tuple(x.shape)}")


def _check_stack_args(
    input_size: int, hidden_size: int, num_layers: int, num_heads: int, slstm_at: Sequence[int]
) -> None:
    if input_size < 1 or num_layers < 1 or num_heads < 1:
        raise ConfigError(
            f"input_size, num_layers and num_heads must be >= 1, got "
            f"{input_size}, {num_layers}, {num_heads}"
        )
    if hidden_size < 1 or hidden_size % num_heads:
        raise ConfigError(
            f"hidden_size {hidden_size} must be a positive multiple of num_heads {num_heads}"
        )
    bad = [j for j in slstm_at if not 0 <= j < num_layers]
    if bad or len(set(slstm_at)) != len(slstm_at):
        raise ConfigError(
            f"slstm_at must hold distinct block positions in [0, {num_layers - 1}], got "
            f"{tuple(slstm_at)}"
        )
