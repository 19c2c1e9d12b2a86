"""The sLSTM layer (Beck et al., 2024, "xLSTM", section 2.2): scalar memory, exponential gating.

Per head and per step ``t`` (all products elementwise; ``x`` is the layer input, ``u`` the gate
input, which is ``x`` unless a block passes its convolved ``x``)::

    i~ = W_i u_t + R_i h_{t-1} + b_i         f~ = W_f u_t + R_f h_{t-1} + b_f
    z~ = W_z x_t + R_z h_{t-1} + b_z         o~ = W_o x_t + R_o h_{t-1} + b_o
    log f = log sigmoid(f~)                  (the sigmoid forget gate, in log space)
    m_t = max(log f + m_{t-1}, i~)           (the stabiliser state; m_0 = -inf)
    i' = exp(i~ - m_t)                       f' = exp(log f + m_{t-1} - m_t)
    c_t = f' c_{t-1} + i' tanh(z~)           n_t = f' n_{t-1} + i'
    h_t = sigmoid(o~) * c_t / n_t

``i'`` and ``f'`` are the paper's exponential input gate ``exp(i~)`` and sigmoid forget gate,
both divided by ``exp(m_t)``: the stabiliser scales ``c`` and ``n`` alike, so ``h`` is unchanged,
while ``exp`` never sees a positive argument and cannot overflow. With ``m_0 = -inf`` the first
step gives ``m_1 = i~`` and ``n_t >= 1`` for every ``t``, so ``c / n`` never divides by ~0.

The input projections ``W`` are dense (one matmul over all time steps, before the loop); the
recurrent matrix ``R`` is block-diagonal per head, as in the paper: head ``k`` sees only its own
``h_{t-1}[k]``. The per-step loop is run by a TorchScript-compiled function (``use_jit``), which
removes the Python overhead per step and gives the same numbers as the eager loop.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError

ScanResult = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
ScanFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], ScanResult]


def _same(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class SLSTMState(NamedTuple):
    """The recurrent state after a step, each ``(B, hidden_size)``: output, cell, normaliser,
    stabiliser."""

    h: Tensor
    c: Tensor
    n: Tensor
    m: Tensor


def slstm_cell(
    raw: Tensor, c: Tensor, n: Tensor, m: Tensor, dim: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step from the gate pre-activations ``raw`` (``[i, f, z, o]`` along ``dim``) and the
    state before it: returns ``h, c, n, m`` (the module docstring's equations)."""
    i_pre, f_pre, z_pre, o_pre = raw.chunk(4, dim=dim)
    log_f_plus_m = F.logsigmoid(f_pre) + m
    m = torch.maximum(log_f_plus_m, i_pre)
    i_gate = torch.exp(i_pre - m)
    f_gate = torch.exp(log_f_plus_m - m)
    c = torch.addcmul(i_gate * torch.tanh(z_pre), f_gate, c)
    n = torch.addcmul(i_gate, f_gate, n)
    h = torch.sigmoid(o_pre) * c / n
    return h, c, n, m


def slstm_scan(wx: Tensor, r: Tensor, h: Tensor, c: Tensor, n: Tensor, m: Tensor) -> ScanResult:
    """Run the sLSTM recurrence over ``T`` steps (the equations in the module docstring).

    ``wx``: ``(B, T, NH, 4 * DH)``, the input pre-activations ``W u + b`` of gates i, f, z, o per
    head (in that order along the last axis; any strides); ``r``: ``(NH, DH, 4 * DH)``, the
    recurrent weights per head (``h_{t-1} @ r[k]``); ``h, c, n, m``: ``(NH, B, DH)``, the state
    before step 0. Returns the outputs ``(T, NH, B, DH)`` and the final ``h, c, n, m``.
    """
    outs: list[Tensor] = []
    for t in range(wx.shape[1]):
        raw = torch.baddbmm(wx[:, t].transpose(0, 1), h, r)
        h, c, n, m = slstm_cell(raw, c, n, m, -1)
        outs.append(h)
    return torch.stack(outs), h, c, n, m


def slstm_scan_batch_inner(
    wx: Tensor, rt: Tensor, h: Tensor, c: Tensor, n: Tensor, m: Tensor
) -> ScanResult:
    """``slstm_scan`` with the batch innermost: ``rt`` is ``r`` transposed ``(NH, 4 * DH, DH)``,
    the state and the outputs are ``(NH, DH, B)`` (``(T, NH, DH, B)``). The gates then come out
    as runs of ``DH * B`` contiguous values, which the elementwise steps vectorise well when
    ``DH`` is small and the batch is not (the ``tiny`` preset at batch 64: ~25 % faster)."""
    outs: list[Tensor] = []
    for t in range(wx.shape[1]):
        raw = torch.baddbmm(wx[:, t].permute(1, 2, 0), rt, h)
        h, c, n, m = slstm_cell(raw, c, n, m, 1)
        outs.append(h)
    return torch.stack(outs), h, c, n, m


@functools.cache
def scripted_slstm_scan(batch_inner: bool = False) -> ScanFn | None:
    """``slstm_scan`` (or ``slstm_scan_batch_inner``) compiled by TorchScript, or ``None`` if
    this torch cannot script it.

    Compiled on first use (never at import). ``torch.jit.script`` is deprecated in torch 2.x but
    still works and runs the loop ~1.5x faster than eager at batch 1; its deprecation warning is
    silenced here. If a later torch drops it, the layer falls back to the eager loop.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn = slstm_scan_batch_inner if batch_inner else slstm_scan
            return torch.jit.script(fn)  # type: ignore[no-any-return]
    except Exception as err:  # any scripting failure means: run the loop eagerly
        warnings.warn(
            f"torch.jit.script failed on the sLSTM loop ({err}); running it eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


HEAD_MAJOR_FROM = 256
"""From this many rows (batch x steps) the input projections use weights reordered per head
(``SLSTMLayer.head_major``); below it, reordering the few outputs is cheaper than checking
that the cached weights are still current."""

BATCH_INNER_FROM = 8
BATCH_INNER_MAX_HEAD_DIM = 16
"""Batches of at least ``BATCH_INNER_FROM`` with heads of at most ``BATCH_INNER_MAX_HEAD_DIM``
run the batch-innermost loop (``slstm_scan_batch_inner``; with wider heads the other layout
is faster)."""


class SLSTMLayer(nn.Module):
    """Multi-head sLSTM over a batch-first sequence.

    Args:
        input_size: features of ``x`` (and of ``gate_input``, if given).
        hidden_size: features of ``h``; divisible by ``num_heads``.
        num_heads: heads; the recurrent matrix is block-diagonal with one block per head.
        use_jit: run the step loop through TorchScript (same numbers, less overhead per step).

    Parameters: ``w_if`` (i, f gates from the gate input) and ``w_zo`` (z, o from ``x``), each
    ``Linear(input_size, 2 * hidden_size)`` with output features laid out ``[gate][head][dim]``;
    ``r`` ``(num_heads, head_dim, 4 * head_dim)`` laid out ``[head][in dim][gate][out dim]``.
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_heads: int = 4, *, use_jit: bool = True
    ) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1 or num_heads < 1 or hidden_size % num_heads:
            raise ConfigError(
                f"sLSTM needs input_size >= 1 and hidden_size divisible by num_heads >= 1, got "
                f"input_size={input_size}, hidden_size={hidden_size}, num_heads={num_heads}"
            )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.use_jit = use_jit
        self.w_if = nn.Linear(input_size, 2 * hidden_size)
        self.w_zo = nn.Linear(input_size, 2 * hidden_size)
        self.r = nn.Parameter(torch.empty(num_heads, self.head_dim, 4 * self.head_dim))
        self._cache: tuple[tuple[Tensor, ...], tuple[Tensor, Tensor, Tensor, Tensor]] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default ``Linear`` init for ``W``; ``R ~ U(+-1/sqrt(head_dim))``; the forget-gate bias
        spread over ``[3, 6]`` per head (long memory at the start), the input-gate bias 0."""
        self.w_if.reset_parameters()
        self.w_zo.reset_parameters()
        bound = 1.0 / math.sqrt(self.head_dim)
        nn.init.uniform_(self.r, -bound, bound)
        with torch.no_grad():
            self.w_if.bias[: self.hidden_size].zero_()
            f_bias = torch.linspace(3.0, 6.0, self.head_dim).repeat(self.num_heads)
            self.w_if.bias[self.hidden_size :].copy_(f_bias)

    def initial_state(self, batch: int, like: Tensor) -> SLSTMState:
        """The zero state (``m = -inf``, see the module docstring) for ``batch`` sequences."""
        zeros = like.new_zeros(batch, self.hidden_size)
        return SLSTMState(zeros, zeros, zeros, torch.full_like(zeros, float("-inf")))

    def forward(
        self, x: Tensor, state: SLSTMState | None = None, gate_input: Tensor | None = None
    ) -> tuple[Tensor, SLSTMState]:
        """``x``: ``(B, T, input_size)``; ``gate_input`` (same shape) feeds the i and f gates
        instead of ``x``. Returns ``h`` for every step ``(B, T, hidden_size)`` and the state
        after the last step (pass it back in to continue the sequence)."""
        bsz, steps, _ = x.shape
        nh, dh = self.num_heads, self.head_dim
        u = x if gate_input is None else gate_input
        if bsz * steps >= HEAD_MAJOR_FROM:
            w = self.head_major()
            pre_if = F.linear(u, w[0], w[1]).view(bsz, steps, nh, 2 * dh)
            pre_zo = F.linear(x, w[2], w[3]).view(bsz, steps, nh, 2 * dh)
        else:  # a few rows (a streaming step): reorder the outputs instead of the weights
            pre_if = self.w_if(u).view(bsz, steps, 2, nh, dh).transpose(2, 3).flatten(-2)
            pre_zo = self.w_zo(x).view(bsz, steps, 2, nh, dh).transpose(2, 3).flatten(-2)
        wx = torch.cat([pre_if, pre_zo], dim=-1)  # (B, T, NH, [i f z o] x DH)
        st = self.initial_state(bsz, x) if state is None else state
        inner = bsz >= BATCH_INNER_FROM and dh <= BATCH_INNER_MAX_HEAD_DIM
        if inner:
            heads = [s.view(bsz, nh, dh).permute(1, 2, 0) for s in st]
            r = self.r.transpose(1, 2)
            eager: ScanFn = slstm_scan_batch_inner
        else:
            heads = [s.view(bsz, nh, dh).transpose(0, 1) for s in st]
            r, eager = self.r, slstm_scan
        scan = scripted_slstm_scan(inner) if self.use_jit else None
        out, h, c, n, m = (scan or eager)(wx, r, *heads)
        seq_order, state_order = ((3, 0, 1, 2), (2, 0, 1)) if inner else ((2, 0, 1, 3), (1, 0, 2))
        seq = out.permute(*seq_order).reshape(bsz, steps, self.hidden_size)
        final = SLSTMState(*(s.permute(*state_order).reshape(bsz, -1) for s in (h, c, n, m)))
        return seq, final

    def head_major(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``w_if`` and ``w_zo`` (weights, biases) with their output rows reordered from
        ``[gate][head][dim]`` to ``[head][gate][dim]``, so that the input projections come out
        grouped per head (no copy of the pre-activations). Cached while autograd is off, until
        a parameter changes (as ``MLSTMLayer.folded``)."""
        params = (self.w_if.weight, self.w_if.bias, self.w_zo.weight, self.w_zo.bias)
        if torch.is_grad_enabled():
            return self._head_major(params)
        if self._cache is None or not all(map(_same, self._cache[0], params)):
            self._cache = (tuple(p.detach().clone() for p in params), self._head_major(params))
        return self._cache[1]

    def _head_major(self, params: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        nh, dh = self.num_heads, self.head_dim
        out = [p.unflatten(0, (2, nh, dh)).transpose(0, 1).flatten(0, 2) for p in params]
        return out[0], out[1], out[2], out[3]
