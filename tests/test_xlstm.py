"""xLSTM layers against step-by-step references of the paper's equations (Beck et al., 2024).

The references here are written independently of ``mlmodels.nets``: plain loops over time steps
and heads, reading the layers' parameters by their documented layouts, in double precision.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from core.errors import ConfigError
from mlmodels.nets import MLSTMBlock, MLSTMLayer, SLSTMBlock, SLSTMLayer, XLSTMStack
from mlmodels.nets.mlstm import BlockDiagonalLinear, mlstm_parallel
from mlmodels.nets.slstm import scripted_slstm_scan
from mlmodels.nets.xlstm import CausalConv1d

DT = torch.float64


# ----------------------------------------------------------------------------- references


def slstm_reference(
    layer: SLSTMLayer, x: Tensor, u: Tensor | None = None, *, stabilised: bool = True
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The sLSTM equations, one step and one head at a time.

    ``w_if`` rows are ``[i | f]`` and ``w_zo`` rows ``[z | o]``, each ``[head][dim]``; ``r[k]``
    maps head ``k``'s ``h`` to its ``[i | f | z | o]`` recurrent pre-activations. Stabilised:
    ``m_t = max(log f + m_{t-1}, i~)`` with ``m_0 = -inf``; naive: ``i = exp(i~)``, ``f = sigmoid``.
    """
    u = x if u is None else u
    bsz, steps, _ = x.shape
    hid, nh = layer.hidden_size, layer.num_heads
    dh = hid // nh
    h, c, n = (torch.zeros(bsz, hid, dtype=x.dtype) for _ in range(3))
    m = torch.full((bsz, hid), -math.inf, dtype=x.dtype)
    outs = []
    for t in range(steps):
        pre_if = u[:, t] @ layer.w_if.weight.T + layer.w_if.bias
        pre_zo = x[:, t] @ layer.w_zo.weight.T + layer.w_zo.bias
        h_new, c_new, n_new, m_new = (torch.empty_like(h) for _ in range(4))
        for k in range(nh):
            hs, fs = slice(k * dh, (k + 1) * dh), slice(hid + k * dh, hid + (k + 1) * dh)
            rec = h[:, hs] @ layer.r[k]
            i_t = pre_if[:, hs] + rec[:, :dh]
            f_t = pre_if[:, fs] + rec[:, dh : 2 * dh]
            z_t = torch.tanh(pre_zo[:, hs] + rec[:, 2 * dh : 3 * dh])
            o_t = torch.sigmoid(pre_zo[:, fs] + rec[:, 3 * dh :])
            if stabilised:
                log_f = F.logsigmoid(f_t)
                m_new[:, hs] = torch.maximum(log_f + m[:, hs], i_t)
                i_g = torch.exp(i_t - m_new[:, hs])
                f_g = torch.exp(log_f + m[:, hs] - m_new[:, hs])
            else:
                i_g, f_g = torch.exp(i_t), torch.sigmoid(f_t)
                m_new[:, hs] = 0.0
            c_new[:, hs] = f_g * c[:, hs] + i_g * z_t
            n_new[:, hs] = f_g * n[:, hs] + i_g
            h_new[:, hs] = o_t * c_new[:, hs] / n_new[:, hs]
        h, c, n, m = h_new, c_new, n_new, m_new
        outs.append(h)
    return torch.stack(outs, dim=1), (h, c, n, m)


def mlstm_recurrent(q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor) -> Tensor:
    """The paper's mLSTM recurrence, stabilised, per step: ``(B, NH, T, D) -> (B, NH, T, D)``.

    ``C_t = f C_{t-1} + i v_t k_t^T``, ``n_t = f n_{t-1} + i k_t`` (``k_t`` scaled by
    ``1/sqrt(D)``), ``h_t = C_t q_t / max(|n_t^T q_t|, 1)``; with ``m_t = max(log f_t + m_{t-1},
    i~_t)``, ``C, n`` are kept divided by ``exp(m_t)``, so the ``1`` becomes ``exp(-m_t)``.
    """
    bsz, nh, steps, d = q.shape
    c_mat = torch.zeros(bsz, nh, d, d, dtype=q.dtype)
    n_vec = torch.zeros(bsz, nh, d, dtype=q.dtype)
    m = torch.zeros(bsz, nh, dtype=q.dtype)
    outs = []
    for t in range(steps):
        log_f, i_t = F.logsigmoid(f_pre[..., t]), i_pre[..., t]
        m_new = torch.maximum(log_f + m, i_t)
        f_g, i_g = torch.exp(log_f + m - m_new), torch.exp(i_t - m_new)
        k_t, v_t, q_t = k[..., t, :] / math.sqrt(d), v[..., t, :], q[..., t, :]
        outer = v_t.unsqueeze(-1) * k_t.unsqueeze(-2)
        c_mat = f_g[..., None, None] * c_mat + i_g[..., None, None] * outer
        n_vec = f_g[..., None] * n_vec + i_g[..., None] * k_t
        num = (c_mat @ q_t.unsqueeze(-1)).squeeze(-1)
        den = torch.maximum((n_vec * q_t).sum(-1).abs(), torch.exp(-m_new))
        outs.append(num / den[..., None])
        m = m_new
    return torch.stack(outs, dim=2)


def dense_block_diagonal(weight: Tensor) -> Tensor:
    """The full matrix of a ``(blocks, n, n)`` block-diagonal weight."""
    return torch.block_diag(*weight)


def mlstm_layer_reference(layer: MLSTMLayer, x: Tensor, u: Tensor) -> Tensor:
    """``MLSTMLayer`` spelled out: q, k from ``u``, v from ``x``, gates from ``[q, k, v]``."""
    q = u @ dense_block_diagonal(layer.q_proj.weight).T
    k = u @ dense_block_diagonal(layer.k_proj.weight).T
    v = x @ dense_block_diagonal(layer.v_proj.weight).T
    gates = layer.gates(torch.cat([q, k, v], dim=-1))
    nh = layer.num_heads
    i_pre, f_pre = gates[..., :nh].transpose(1, 2), gates[..., nh:].transpose(1, 2)

    def heads(t: Tensor) -> Tensor:
        return t.unflatten(-1, (nh, -1)).transpose(1, 2)

    h = mlstm_recurrent(heads(q), heads(k), heads(v), i_pre, f_pre).transpose(1, 2).flatten(-2)
    return h if layer.o_proj is None else torch.sigmoid(layer.o_proj(x)) * h


# ----------------------------------------------------------------------------- sLSTM


@pytest.mark.parametrize("use_jit", [True, False])
@pytest.mark.parametrize("with_gate_input", [False, True])
def test_slstm_layer_equals_step_by_step_reference(use_jit: bool, with_gate_input: bool) -> None:
    torch.manual_seed(0)
    layer = SLSTMLayer(5, 12, num_heads=3, use_jit=use_jit).to(DT)
    x = torch.randn(2, 9, 5, dtype=DT)
    u = torch.randn(2, 9, 5, dtype=DT) if with_gate_input else None
    out, state = layer(x, gate_input=u)
    ref, ref_state = slstm_reference(layer, x, u)
    assert out.shape == (2, 9, 12)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    for got, want in zip(state, ref_state, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_slstm_stabiliser_survives_preactivations_where_naive_exp_overflows() -> None:
    torch.manual_seed(1)
    layer = SLSTMLayer(4, 8, num_heads=2).to(DT)
    with torch.no_grad():
        layer.w_if.bias[:8] += 800.0  # i~ ~ 800: exp(800) = inf in float64
        layer.w_if.weight[:8] *= 50.0  # ... and swinging by hundreds from step to step
    x = torch.randn(3, 12, 4, dtype=DT)
    naive, _ = slstm_reference(layer, x, stabilised=False)
    assert not torch.isfinite(naive).all()  # inf / inf
    out, state = layer(x)
    ref, _ = slstm_reference(layer, x)
    assert torch.isfinite(out).all() and torch.isfinite(state.m).all()
    assert (state.m > 700).any()  # the stabiliser did absorb the huge exponents
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_slstm_naive_reference_agrees_where_it_does_not_overflow() -> None:
    """The stabiliser changes nothing but the scale of c and n."""
    torch.manual_seed(2)
    layer = SLSTMLayer(4, 8, num_heads=2).to(DT)
    x = torch.randn(2, 10, 4, dtype=DT)
    naive, _ = slstm_reference(layer, x, stabilised=False)
    out, _ = layer(x)
    torch.testing.assert_close(out, naive, atol=1e-9, rtol=1e-9)


def test_slstm_float32_large_preactivations_stay_finite_with_finite_gradients() -> None:
    torch.manual_seed(3)
    layer = SLSTMLayer(4, 8, num_heads=2)
    with torch.no_grad():
        layer.w_if.bias[:8] += 200.0  # exp(200) overflows float32
    x = torch.randn(2, 15, 4, requires_grad=True)
    out, _ = layer(x)
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_slstm_state_carries_over_between_calls() -> None:
    torch.manual_seed(4)
    layer = SLSTMLayer(3, 8, num_heads=4).to(DT)
    x = torch.randn(2, 10, 3, dtype=DT)
    full, _ = layer(x)
    first, state = layer(x[:, :6])
    second, _ = layer(x[:, 6:], state=state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-12, rtol=0)


def _grad(t: Tensor) -> Tensor:
    assert t.grad is not None
    return t.grad.clone()


def test_scripted_scan_is_compiled_and_equals_eager_forward_and_backward() -> None:
    assert isinstance(scripted_slstm_scan(), torch.jit.ScriptFunction)
    torch.manual_seed(5)
    jit_layer = SLSTMLayer(6, 16, num_heads=4, use_jit=True)
    eager_layer = SLSTMLayer(6, 16, num_heads=4, use_jit=False)
    eager_layer.load_state_dict(jit_layer.state_dict())
    x = torch.randn(3, 20, 6)
    results = []
    for layer in (jit_layer, eager_layer):
        for _ in range(3):  # the profiling executor optimises after a few calls
            layer.zero_grad()
            out, _ = layer(x)
            out.sum().backward()
        results.append((out.detach(), [_grad(p) for p in layer.parameters()]))
    (out_j, grads_j), (out_e, grads_e) = results
    torch.testing.assert_close(out_j, out_e, atol=1e-6, rtol=0)
    for gj, ge in zip(grads_j, grads_e, strict=True):
        torch.testing.assert_close(gj, ge, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- mLSTM


def _mlstm_inputs(seed: int, scale_i: float = 1.0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 11, 8, dtype=DT, generator=g) for _ in range(3))
    i_pre = scale_i * torch.randn(2, 3, 11, dtype=DT, generator=g)
    f_pre = 2.0 * torch.randn(2, 3, 11, dtype=DT, generator=g) + 1.0
    return q, k, v, i_pre, f_pre


@pytest.mark.parametrize("scale_i", [1.0, 300.0])
def test_mlstm_parallel_equals_recurrent_reference(scale_i: float) -> None:
    q, k, v, i_pre, f_pre = _mlstm_inputs(0, scale_i)
    par = mlstm_parallel(q, k, v, i_pre, f_pre, eps=0.0)
    rec = mlstm_recurrent(q, k, v, i_pre, f_pre)
    assert torch.isfinite(par).all()
    torch.testing.assert_close(par, rec, atol=1e-5, rtol=0)


def test_mlstm_parallel_gradients_equal_recurrent_gradients() -> None:
    q, k, v, i_pre, f_pre = inputs = [t.requires_grad_() for t in _mlstm_inputs(1)]
    weight = torch.randn(2, 3, 11, 8, dtype=DT)
    grads = []
    for parallel in (True, False):
        args = (q, k, v, i_pre, f_pre)
        out = mlstm_parallel(*args, eps=0.0) if parallel else mlstm_recurrent(*args)
        (out * weight).sum().backward()
        grads.append([_grad(t) for t in inputs])
        for t in inputs:
            t.grad = None
    for gp, gr in zip(*grads, strict=True):
        torch.testing.assert_close(gp, gr, atol=1e-5, rtol=0)


@pytest.mark.parametrize("output_gate", [False, True])
def test_mlstm_layer_equals_explicit_projections_and_recurrence(output_gate: bool) -> None:
    torch.manual_seed(6)
    layer = MLSTMLayer(16, num_heads=2, qkv_block_size=4, output_gate=output_gate, eps=0.0)
    layer = layer.to(DT)
    nn.init.normal_(layer.gates.weight, std=0.3)  # the default init zeroes them
    x, u = torch.randn(2, 7, 16, dtype=DT), torch.randn(2, 7, 16, dtype=DT)
    ref = mlstm_layer_reference(layer, x, u)
    torch.testing.assert_close(layer(x, x_conv=u), ref, atol=1e-5, rtol=0)
    with torch.inference_mode():  # the cached derived weights give the same numbers
        torch.testing.assert_close(layer(x, x_conv=u), ref.detach(), atol=1e-5, rtol=0)


def test_mlstm_inference_cache_follows_parameter_updates() -> None:
    torch.manual_seed(7)
    layer = MLSTMLayer(32, num_heads=4).eval()
    nn.init.normal_(layer.gates.weight, std=0.1)
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        before = layer(x)
        layer.q_proj.weight.mul_(2.0)  # an optimiser step would do this in place
        after = layer(x)
        layer.gates.weight.data.mul_(0.5)  # .data writes do not bump the version counter
        after_data = layer(x)
    fresh = layer(x)  # autograd on: computed without the cache
    assert not torch.allclose(before, after) and not torch.allclose(after, after_data)
    torch.testing.assert_close(after_data, fresh.detach())


def test_block_diagonal_linear_equals_dense_block_diagonal_matrix() -> None:
    torch.manual_seed(8)
    for features in (64, 24, 12):  # merged into 16 x 16 groups, or not mergeable
        proj = BlockDiagonalLinear(features, 4)
        x = torch.randn(3, 5, features)
        want = x @ dense_block_diagonal(proj.weight).T
        torch.testing.assert_close(proj(x), want, atol=1e-5, rtol=0)


def test_causal_conv_equals_left_padded_conv1d() -> None:
    torch.manual_seed(9)
    conv = CausalConv1d(6, 4)
    x = torch.randn(2, 9, 6)
    want = conv.conv(F.pad(x.transpose(1, 2), (3, 0))).transpose(1, 2)
    torch.testing.assert_close(conv(x), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(conv(x[:, :2]), want[:, :2], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- blocks, stack


def _modules(dropout: float = 0.0) -> dict[str, nn.Module]:
    return {
        "slstm_layer": _SeqOnly(SLSTMLayer(8, 8, num_heads=2)),
        "mlstm_layer": MLSTMLayer(8, num_heads=2),
        "slstm_block": SLSTMBlock(8, num_heads=2, dropout=dropout),
        "mlstm_block": MLSTMBlock(8, num_heads=2, dropout=dropout),
        "stack": _SeqOnly(XLSTMStack(5, 8, 3, num_heads=2, slstm_at=(1,), dropout=dropout)),
    }


class _SeqOnly(nn.Module):
    """The sequence output of a module that returns a tuple."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.in_features = 5 if isinstance(inner, XLSTMStack) else 8

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)[0]


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(["slstm_layer", "mlstm_layer", "slstm_block", "mlstm_block", "stack"]),
    cut=st.integers(min_value=0, max_value=10),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_every_module_is_causal(name: str, cut: int, seed: int) -> None:
    torch.manual_seed(seed)
    module = _modules()[name].eval()
    features = getattr(module, "in_features", 8)
    x = torch.randn(2, 12, features)
    changed = x.clone()
    changed[:, cut + 1 :] = 10.0 * torch.randn_like(changed[:, cut + 1 :])
    with torch.no_grad():
        a, b = module(x), module(changed)
    torch.testing.assert_close(a[:, : cut + 1], b[:, : cut + 1], atol=1e-5, rtol=0)
    assert not torch.allclose(a[:, cut + 1 :], b[:, cut + 1 :])


def test_slstm_block_without_conv_or_feedforward_is_causal_and_trains() -> None:
    torch.manual_seed(12)
    block = SLSTMBlock(8, num_heads=2, conv_kernel=0, feedforward=False)
    assert block.conv is None and block.ffn is None
    x = torch.randn(2, 10, 8, requires_grad=True)
    out = block(x)
    changed = x.detach().clone()
    changed[:, 5:] += 1.0
    torch.testing.assert_close(block(changed)[:, :5], out[:, :5].detach(), atol=1e-6, rtol=0)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("slstm_at", [(), (0, 1), (1,)])
def test_stack_shapes_and_gradients(slstm_at: tuple[int, ...]) -> None:
    torch.manual_seed(10)
    stack = XLSTMStack(7, 16, 2, num_heads=4, slstm_at=slstm_at, dropout=0.1)
    x = torch.randn(3, 13, 7, requires_grad=True)
    seq, last = stack(x)
    assert seq.shape == (3, 13, 16) and last.shape == (3, 16)
    torch.testing.assert_close(last, seq[:, -1])
    (seq.square().mean() + last.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in stack.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_stack_block_types_follow_slstm_at() -> None:
    stack = XLSTMStack(4, 8, 3, num_heads=2, slstm_at=(0, 2))
    kinds = [type(b) for b in stack.blocks]
    assert kinds == [SLSTMBlock, MLSTMBlock, SLSTMBlock]


def test_stack_is_deterministic_under_manual_seed() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        stack = XLSTMStack(4, 8, 2, num_heads=2, slstm_at=(1,), dropout=0.2).train()
        x = torch.randn(2, 9, 4)
        outs.append(stack(x)[0])
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_parameter_counts_of_the_preset_sizes() -> None:
    def count(stack: nn.Module) -> int:
        return sum(p.numel() for p in stack.parameters())

    assert count(XLSTMStack(64, 256, 2, slstm_at=(1,))) == 1_061_384
    assert count(XLSTMStack(64, 512, 3, slstm_at=(1,))) == 5_676_432


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 30, "num_heads": 4},
        {"slstm_at": (2,)},
        {"slstm_at": (0, 0)},
        {"num_layers": 0},
        {"dropout": 1.0},
    ],
)
def test_stack_rejects_bad_configuration(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"input_size": 4, "hidden_size": 8, "num_layers": 2, "num_heads": 2}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        XLSTMStack(**args)  # type: ignore[arg-type]


def test_stack_rejects_wrong_input_rank() -> None:
    with pytest.raises(ValueError, match="batch, time, features"):
        XLSTMStack(4, 8, 1, num_heads=2)(torch.randn(9, 4))
