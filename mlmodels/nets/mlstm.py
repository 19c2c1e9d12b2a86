"""The mLSTM layer (Beck et al., 2024, "xLSTM", section 2.3): matrix memory, covariance update.

The recurrence, per head, with ``d`` the head dimension::

    q_t = W_q x_t        k_t = W_k x_t / sqrt(d)        v_t = W_v x_t
    i_t = exp(i~_t)      f_t = sigmoid(f~_t)            (i~, f~ scalars per head and step)
    C_t = f_t C_{t-1} + i_t v_t k_t^T                   n_t = f_t n_{t-1} + i_t k_t
    h~_t = C_t q_t / max(|n_t^T q_t|, 1)                h_t = o_t * h~_t

has no recurrence in the gates, so it unrolls into the parallel form computed here, attention
with a decay matrix: with ``F_t = sum_{k<=t} log f_k``,

    log D_ts = F_t - F_s + i~_s  (s <= t),  -inf (s > t)     m_t = max_s log D_ts
    C~ = (Q K^T / sqrt(d)) * exp(log D - m)                   (rows divided by exp(m_t))
    h~ = C~ V / (max(|sum_s C~_ts|, exp(-m_t)) + eps)

which equals the recurrence exactly (its ``C_t``, ``n_t`` stabilised by ``exp(-m_t)``; the
``exp(-m_t)`` in the normaliser is the stabilised ``1``). It costs O(T^2) per head, small for
the 60-step windows used here, and runs as a few large matmuls instead of a loop.

The forget gate is the sigmoid one (``log f = log sigmoid(f~)``); ``eps`` (default 1e-6, as in
the authors' code) only guards against ``exp(-m)`` underflowing to 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError


def mlstm_parallel(
    q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor, eps: float = 1e-6
) -> Tensor:
    """The stabilised parallel mLSTM (module docstring): ``h~`` for every step.

    ``q, k, v``: ``(B, NH, T, DH)`` (``k`` not yet scaled by ``1/sqrt(DH)``); ``i_pre, f_pre``:
    ``(B, NH, T)``, the gate pre-activations. Returns ``(B, NH, T, DH)``.
    """
    return mlstm_chunk(q, k, v, i_pre, f_pre, None, eps)[0]


class MLSTMState(NamedTuple):
    """The mLSTM memory after a step, stabilised (divided by ``exp(m)``), per head.

    ``c``: ``(B, NH, DV, DK)``, ``sum_s exp(log D_s - m) v_s k_s^T / sqrt(DK)``; ``n``:
    ``(B, NH, DK)``, the same sum over ``k_s``; ``m``: ``(B, NH)``, the stabiliser (``-inf``
    before the first step). ``k`` and ``v`` are what :func:`mlstm_chunk` was given.
    """

    c: Tensor
    n: Tensor
    m: Tensor


def mlstm_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i_pre: Tensor,
    f_pre: Tensor,
    state: MLSTMState | None,
    eps: float = 1e-6,
    *,
    want_state: bool = False,
) -> tuple[Tensor, MLSTMState | None]:
    """The chunkwise mLSTM: the parallel form over the chunk's ``T`` steps plus the memory
    carried in ``state`` (``None``: the start of the sequence). Shapes as ``mlstm_parallel``.

    With ``b_t`` the cumulative ``log f`` inside the chunk, the carried memory enters step ``t``
    with weight ``exp(b_t + m_0)``, so the stabiliser becomes ``m_t = max(b_t + m_0, max_s
    log D_ts)``, the same one the recurrence keeps; running chunks one after another equals one
    chunk over the whole sequence. Returns ``h~`` and, if ``want_state``, the state after the
    chunk's last step.
    """
    steps = q.shape[-2]
    scale = 0.5 * math.log(q.shape[-1])
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, i_pre, f_pre))
    cum_log_f = torch.cumsum(F.logsigmoid(f_pre), dim=-1)
    log_d = cum_log_f.unsqueeze(-1) - (cum_log_f - i_pre).unsqueeze(-2)
    future = torch.ones(steps, steps, dtype=torch.bool, device=q.device).triu(diagonal=1)
    log_d = (
        log_d.masked_fill(future, float("-inf")) if grad else log_d.masked_fill_(future, -math.inf)
    )
    m = log_d.amax(dim=-1, keepdim=True)
    carry = None
    if state is not None:
        m_carry = (cum_log_f + state.m.unsqueeze(-1)).unsqueeze(-1)
        m = torch.maximum(m, m_carry)
        carry = torch.exp(m_carry - m)  # (B, NH, T, 1)
    scores = q @ k.transpose(-2, -1)
    if grad:  # exp(log D - m) / sqrt(d), the decay
        scores = scores * torch.exp(log_d - (m + scale))
    else:
        scores.mul_(log_d.sub_(m + scale).exp_())
    total = scores.sum(dim=-1, keepdim=True)
    if state is not None and carry is not None:
        total = total + carry * (q @ state.n.unsqueeze(-1))
    normaliser = torch.maximum(total.abs(), torch.exp(-m)) + eps
    h = ((scores / normaliser) if grad else scores.div_(normaliser)) @ v
    if state is not None and carry is not None:
        h = h + (carry / normaliser) * (q @ state.c.transpose(-2, -1))
    if not want_state:
        return h, None
    return h, _chunk_state(k, v, i_pre, cum_log_f, m[..., -1, 0], scale, state)


def _chunk_state(
    k: Tensor,
    v: Tensor,
    i_pre: Tensor,
    cum_log_f: Tensor,
    m_last: Tensor,
    scale: float,
    state: MLSTMState | None,
) -> MLSTMState:
    """The memory after the chunk's last step, stabilised by its ``m_last`` (``(B, NH)``)."""
    w = torch.exp(cum_log_f[..., -1:] - cum_log_f + i_pre - (m_last.unsqueeze(-1) + scale))
    c = (v * w.unsqueeze(-1)).transpose(-2, -1) @ k
    n = (w.unsqueeze(-2) @ k).squeeze(-2)
    if state is not None:
        g = torch.exp(cum_log_f[..., -1] + state.m - m_last)
        c = c + g[..., None, None] * state.c
        n = n + g[..., None] * state.n
    return MLSTMState(c, n, m_last)


def merge_blocks(weight: Tensor, group: int = 16) -> Tensor:
    """Block-diagonal ``(blocks, n, n)`` weights regrouped as ``(blocks * n / g, g, g)``, each a
    block-diagonal matrix of ``g / n`` consecutive blocks (zeros elsewhere); ``g = group`` if it
    fits, else ``n``. On CPU a batched matmul over 16 x 16 blocks runs ~2.5x faster than over
    4 x 4 ones, despite the zeros."""
    blocks, n, _ = weight.shape
    per = group // n
    if group % n or per <= 1 or blocks % per:
        return weight
    eye = torch.eye(per, dtype=weight.dtype, device=weight.device)
    merged = torch.einsum("gjoi,jk->gjoki", weight.unflatten(0, (-1, per)), eye)
    return merged.reshape(blocks // per, per * n, per * n)


def block_diagonal(x: Tensor, weight: Tensor) -> Tensor:
    """``y[..., b * n + o] = sum_i weight[b, o, i] * x[..., b * n + i]`` for ``weight``
    ``(blocks, n, n)``: ``(..., blocks * n) -> (..., blocks * n)``."""
    xb = x.unflatten(-1, (weight.shape[0], -1))
    return torch.einsum("...bi,boi->...bo", xb, weight).flatten(-2)


def block_diagonal_heads(x: Tensor, weight: Tensor, num_heads: int) -> Tensor:
    """``block_diagonal(x, weight)`` for ``x`` ``(B, T, features)``, returned per head as
    ``(B, num_heads, T, features / num_heads)`` (contiguous). One batched matmul reads ``x``
    in place (each block's rows are evenly strided) and one copy lays the result out per head,
    instead of the three copies of ``einsum`` followed by a transpose."""
    bsz, steps, _ = x.shape
    blocks, n, _ = weight.shape
    if blocks % num_heads:  # a (merged) block spans two heads
        y = block_diagonal(x, weight).unflatten(-1, (num_heads, -1))
        return y.transpose(1, 2).contiguous()
    xb = x.reshape(bsz * steps, blocks, n).transpose(0, 1)  # (blocks, B*T, n), a view
    yb = torch.bmm(xb, weight.transpose(1, 2))  # (blocks, B*T, n)
    per_head = yb.view(num_heads, blocks // num_heads, bsz, steps, n).permute(2, 0, 3, 1, 4)
    return per_head.reshape(bsz, num_heads, steps, -1)


class BlockDiagonalLinear(nn.Module):
    """A block-diagonal linear map (no bias), the paper's q/k/v projections: block ``b`` maps
    features ``[b * block_size, (b + 1) * block_size)`` to the same features.

    ``weight``: ``(features / block_size, block_size, block_size)``, ``[block][out][in]`` (the
    authors' layout). ``forward``: ``(..., features) -> (..., features)``.
    """

    def __init__(self, features: int, block_size: int) -> None:
        super().__init__()
        if block_size < 1 or features % block_size:
            raise ConfigError(
                f"features {features} must be divisible by the projection block size {block_size}"
            )
        bound = 1.0 / math.sqrt(block_size)
        weight = torch.empty(features // block_size, block_size, block_size)
        self.weight = nn.Parameter(weight.uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return block_diagonal(x, merge_blocks(self.weight))

    def fold(self, w: Tensor) -> Tensor:
        """``w @ W`` for a dense ``w`` ``(out, features)``: ``x -> w @ forward(x)`` as one dense
        map of ``x``."""
        folded = torch.einsum("gbo,boi->gbi", w.unflatten(-1, self.weight.shape[:2]), self.weight)
        return folded.flatten(-2)


def _same(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class _Folded(NamedTuple):
    """The weights ``MLSTMLayer.forward`` applies, derived from its parameters."""

    qk: Tensor  # merged blocks of W_k^T W_q, [block][out][in]
    v: Tensor  # merged blocks of W_v, [block][out][in]
    gate_u: Tensor  # gate weights folded with W_q, W_k: (2 * NH, size), applied to x_conv
    gate_x: Tensor  # gate weights folded with W_v: (2 * NH, size), applied to x


class MLSTMLayer(nn.Module):
    """Multi-head mLSTM over a batch-first sequence, in the parallel form.

    ``q = W_q u``, ``k = W_k u`` from ``u = x_conv`` (the block's convolved input; ``x`` if not
    given) and ``v = W_v x``, all block-diagonal; the gate pre-activations ``i~, f~`` (one per
    head) are a dense map of ``[q, k, v]``, as in the authors' code. With ``output_gate`` the layer
    returns ``sigmoid(W_o x + b_o) * h~`` (the paper's cell); the mLSTM block turns it off and
    gates with its own ``swish(z)`` branch instead (the paper's Figure 10).

    The projections are applied where they are cheapest, with the same result: per head,
    ``q . k' = (W_k^T W_q u) . u'`` (one block-diagonal map instead of two, and the keys are
    ``u`` itself), and the gates use ``W_g`` folded with ``W_q, W_k, W_v``. Without autograd
    (inference), those derived weights are cached until a parameter changes.

    Args:
        size: features in and out; divisible by ``num_heads * qkv_block_size``.
        num_heads: heads (each with its own ``size / num_heads`` matrix memory).
        qkv_block_size: block size of the q/k/v projections.
        output_gate: apply the sigmoid output gate inside the layer.
        eps: added to the normaliser (see ``mlstm_parallel``).
    """

    def __init__(
        self,
        size: int,
        num_heads: int = 4,
        *,
        qkv_block_size: int = 4,
        output_gate: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if size < 1 or num_heads < 1 or qkv_block_size < 1 or size % (num_heads * qkv_block_size):
            raise ConfigError(
                f"mLSTM size {size} must be divisible by num_heads {num_heads} times "
                f"qkv_block_size {qkv_block_size} (all >= 1)"
            )
        self.size = size
        self.num_heads = num_heads
        self.eps = eps
        self.q_proj = BlockDiagonalLinear(size, qkv_block_size)
        self.k_proj = BlockDiagonalLinear(size, qkv_block_size)
        self.v_proj = BlockDiagonalLinear(size, qkv_block_size)
        self.gates = nn.Linear(3 * size, 2 * num_heads)  # [q, k, v] -> [i~ per head, f~ per head]
        self.o_proj = nn.Linear(size, size) if output_gate else None
        self._cache: tuple[tuple[Tensor, ...], _Folded] | None = None
        self.reset_gates()

    def reset_gates(self) -> None:
        """The authors' gate init: zero weights, input-gate bias ~ N(0, 0.1), forget-gate bias
        spread over ``[3, 6]`` across heads (slow decay at the start)."""
        nn.init.zeros_(self.gates.weight)
        with torch.no_grad():
            nh = self.num_heads
            self.gates.bias[:nh].normal_(0.0, 0.1)
            self.gates.bias[nh:].copy_(torch.linspace(3.0, 6.0, nh))

    def forward(self, x: Tensor, x_conv: Tensor | None = None) -> Tensor:
        """``x`` (and ``x_conv``): ``(B, T, size)`` -> ``h``: ``(B, T, size)``."""
        return self._run(x, x_conv, None, want_state=False)[0]

    def forward_state(
        self, x: Tensor, x_conv: Tensor | None, state: MLSTMState | None
    ) -> tuple[Tensor, MLSTMState]:
        """Continue a sequence from ``state`` (``None``: its start); returns ``h`` and the state
        after the last step. Calls one after another equal one call over the whole sequence.

        The memory's keys are kept in the layer's input space (``u``, with the queries
        ``W_k^T W_q u``: class docstring), its values are ``W_v x``.
        """
        h, new = self._run(x, x_conv, state, want_state=True)
        assert new is not None
        return h, new

    def initial_state(self, batch: int, like: Tensor) -> MLSTMState:
        """The empty memory (``m = -inf``) for ``batch`` sequences."""
        nh, dh = self.num_heads, self.size // self.num_heads
        m = like.new_full((batch, nh), float("-inf"))
        return MLSTMState(like.new_zeros(batch, nh, dh, dh), like.new_zeros(batch, nh, dh), m)

    def _run(
        self, x: Tensor, x_conv: Tensor | None, state: MLSTMState | None, *, want_state: bool
    ) -> tuple[Tensor, MLSTMState | None]:
        u = x if x_conv is None else x_conv
        w = self.folded()
        gates = F.linear(u, w.gate_u, self.gates.bias) + F.linear(x, w.gate_x)
        i_pre, f_pre = gates.transpose(1, 2).chunk(2, dim=1)
        nh = self.num_heads
        cx, new = mlstm_chunk(
            block_diagonal_heads(u, w.qk, nh),
            self._heads(u),
            block_diagonal_heads(x, w.v, nh),
            i_pre,
            f_pre,
            state,
            self.eps,
            want_state=want_state,
        )
        h = cx.transpose(1, 2).flatten(-2)
        return (h if self.o_proj is None else torch.sigmoid(self.o_proj(x)) * h), new

    def folded(self) -> _Folded:
        """The derived weights (class docstring). While autograd is off they are cached, with a
        copy of the parameters they came from: any change to those (an optimiser step, a loaded
        state dict, even a write through ``.data``) recomputes them."""
        if torch.is_grad_enabled():
            return self._fold()
        params = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.gates.weight)
        if self._cache is None or not all(map(_same, self._cache[0], params)):
            self._cache = (tuple(p.detach().clone() for p in params), self._fold())
        return self._cache[1]

    def _fold(self) -> _Folded:
        w_q, w_k, w_v = self.gates.weight.split(self.size, dim=1)
        w_qk = torch.einsum("boj,boi->bji", self.k_proj.weight, self.q_proj.weight)
        return _Folded(
            qk=merge_blocks(w_qk),
            v=merge_blocks(self.v_proj.weight),
            gate_u=self.q_proj.fold(w_q) + self.k_proj.fold(w_k),
            gate_x=self.v_proj.fold(w_v),
        )

    def _heads(self, t: Tensor) -> Tensor:
        """``(B, T, NH * DH) -> (B, NH, T, DH)``, contiguous (one copy)."""
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2).contiguous()
