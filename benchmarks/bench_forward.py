"""Forward, step and training speed of the networks, before and after the fast paths, in one run.

Run: .venv/bin/python benchmarks/bench_forward.py [--arch tiny --arch efficient-hybrid]

Printed side by side (1 torch thread unless ``--threads``; timings interleaved round-robin so that
load from other processes hits every side alike; load average printed with the figures):

* the FLOP floor of each preset at batch 64 (window 60, 51 features): the forward's FLOPs, counted
  by ``torch.utils.flop_counter`` on the eager reference, at the single-thread matmul rate of
  this CPU (a 512 x 512 x 512 matmul, timed between the model runs) -- the yardstick of
  ``bench_serving.py``;
* the in-process batch-64 forward of the eager reference kept in this script (the layers'
  forwards before the fast paths, run on the same modules and weights) and of the current code,
  each as a ratio to the floor; goals: 1.5x for ``efficient-hybrid``, 3x for ``tiny``;
* the cost per bar of ``step`` for the streaming presets at batch 1 and 20, beside the windowed
  forward (one 60-bar window per bar) that a backtest pays without streaming;
* training samples/s at batch 64 (forward, backward, Adam step on random data) of each preset,
  before and after, against the same model with ``nn.LSTM`` of equal size; goal: within 1.3x.

Both sides are checked to give the same outputs (1e-5) before they are timed. Writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
import types
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mlmodels.nets.mlstm import MLSTMLayer, block_diagonal
from mlmodels.nets.model import ARCHITECTURES, build_model, lstm_baseline
from mlmodels.nets.slstm import SLSTMLayer, SLSTMState
from mlmodels.nets.transformer import TransformerPath

N_FEATURES, WINDOW = 51, 60
GOALS = {"efficient-hybrid": 1.5, "tiny": 3.0}
WINDOWED_TWIN = {"tiny-stream": "tiny", "hybrid-stream": "efficient-hybrid"}
TRAIN_GOAL = 1.3

# ----------------------------------------------------------------------------- eager reference
# The layers' forwards as they were before the fast paths (same parameters, same numbers).


def _old_slstm_scan(
    wx: Tensor, r: Tensor, h: Tensor, c: Tensor, n: Tensor, m: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    outs: list[Tensor] = []
    for t in range(wx.shape[0]):
        raw = torch.baddbmm(wx[t], h, r)
        i_pre, f_pre, z_pre, o_pre = raw.chunk(4, dim=-1)
        log_f_plus_m = F.logsigmoid(f_pre) + m
        m = torch.maximum(log_f_plus_m, i_pre)
        i_gate = torch.exp(i_pre - m)
        f_gate = torch.exp(log_f_plus_m - m)
        c = torch.addcmul(i_gate * torch.tanh(z_pre), f_gate, c)
        n = torch.addcmul(i_gate, f_gate, n)
        h = torch.sigmoid(o_pre) * c / n
        outs.append(h)
    return torch.stack(outs), h, c, n, m


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _OLD_SCAN = torch.jit.script(_old_slstm_scan)


def _old_slstm_forward(
    self: SLSTMLayer, x: Tensor, state: SLSTMState | None = None, gate_input: Tensor | None = None
) -> tuple[Tensor, SLSTMState]:
    bsz, steps, _ = x.shape
    nh, dh = self.num_heads, self.head_dim
    u = x if gate_input is None else gate_input
    pre_if = self.w_if(u).view(bsz, steps, 2, nh, dh)
    pre_zo = self.w_zo(x).view(bsz, steps, 2, nh, dh)
    wx = torch.cat([pre_if, pre_zo], dim=2).permute(1, 3, 0, 2, 4).reshape(steps, nh, bsz, 4 * dh)
    st = self.initial_state(bsz, x) if state is None else state
    heads = [s.view(bsz, nh, dh).transpose(0, 1) for s in st]
    out, h, c, n, m = _OLD_SCAN(wx, self.r, *heads)
    seq = out.permute(2, 0, 1, 3).reshape(bsz, steps, self.hidden_size)
    final = SLSTMState(*(s.transpose(0, 1).reshape(bsz, self.hidden_size) for s in (h, c, n, m)))
    return seq, final


def _old_mlstm_parallel(q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor) -> Tensor:
    steps, head_dim = q.shape[-2], q.shape[-1]
    cum_log_f = torch.cumsum(F.logsigmoid(f_pre), dim=-1)
    log_d = cum_log_f.unsqueeze(-1) - (cum_log_f - i_pre).unsqueeze(-2)
    future = torch.ones(steps, steps, dtype=torch.bool, device=q.device).triu(diagonal=1)
    log_d = log_d.masked_fill(future, float("-inf"))
    m = log_d.amax(dim=-1, keepdim=True)
    decay = torch.exp(log_d - (m + 0.5 * math.log(head_dim)))
    scores = (q @ k.transpose(-2, -1)) * decay
    normaliser = torch.maximum(scores.sum(dim=-1, keepdim=True).abs(), torch.exp(-m)) + 1e-6
    return (scores / normaliser) @ v


def _old_mlstm_forward(self: MLSTMLayer, x: Tensor, x_conv: Tensor | None = None) -> Tensor:
    u = x if x_conv is None else x_conv
    w = self.folded()  # the derived weights, cached in inference (as before)
    gates = F.linear(u, w.gate_u, self.gates.bias) + F.linear(x, w.gate_x)
    i_pre, f_pre = gates.transpose(1, 2).chunk(2, dim=1)

    def heads(t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2).contiguous()

    cx = _old_mlstm_parallel(heads(block_diagonal(u, w.qk)), heads(u), heads(x), i_pre, f_pre)
    h = block_diagonal(cx.transpose(1, 2).flatten(-2), w.v)
    return h if self.o_proj is None else torch.sigmoid(self.o_proj(x)) * h


def _old_transformer_forward(self: TransformerPath, x: Tensor) -> tuple[Tensor, Tensor]:
    t = x.shape[1]
    h = self.proj(x) + self.pe[:t]  # type: ignore[index]
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
    for layer in self.layers:
        y = layer.norm1(h)  # type: ignore[operator]
        out, _ = layer.attn(y, y, y, attn_mask=mask, need_weights=False)  # type: ignore[operator]
        h = h + layer.drop(out)  # type: ignore[operator]
        h = h + layer.drop(layer.ff(layer.norm2(h)))  # type: ignore[operator]
    h = self.norm(h)
    return h, h[:, -1]


def eager_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose layers run their forwards as they were before the fast paths
    (the derived-weight caches, the per-head input projections, the batched block-diagonal
    maps and SDPA attention are all bypassed)."""
    ref = copy.deepcopy(model)
    patches: dict[type, Callable[..., object]] = {
        SLSTMLayer: _old_slstm_forward,
        MLSTMLayer: _old_mlstm_forward,
        TransformerPath: _old_transformer_forward,
    }
    for module in ref.modules():
        for kind, fn in patches.items():
            if type(module) is kind:
                module.forward = types.MethodType(fn, module)  # type: ignore[method-assign]
    return ref


# ----------------------------------------------------------------------------- timing


def matmul_probe() -> Callable[[], None]:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    return lambda: torch.mm(a, b)


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """p50 wall-clock milliseconds of each run, timed round-robin after one warm-up round."""
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _inputs(batch: int, steps: int = WINDOW) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(batch)
    return torch.randn(batch, steps, N_FEATURES, generator=gen), torch.zeros(batch, 3)


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ARCHITECTURES[arch].with_data(N_FEATURES, WINDOW)).eval()


def _check_same(a: nn.Module, b: nn.Module, x: Tensor, pos: Tensor) -> float:
    with torch.inference_mode():
        oa, ob = a(x, pos), b(x, pos)
    diff = max(float((oa[k] - ob[k]).abs().max()) for k in oa)
    if diff > 1e-5:
        raise AssertionError(f"before and after differ by {diff:.2e} (> 1e-5)")
    return diff


def forward_row(arch: str, rounds: int) -> str:
    """Floor, before, after at batch 64 for ``arch`` (one table row)."""
    after = _model(arch)
    before = eager_reference(after)
    x, pos = _inputs(64)
    diff = _check_same(before, after, x, pos)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        before(x, pos)
    flops = counter.get_total_flops()
    with torch.inference_mode():
        ms = interleaved(
            {
                "mm": matmul_probe(),
                "before": lambda: before(x, pos),
                "after": lambda: after(x, pos),
            },
            rounds,
        )
    rate = 2 * 512**3 / (ms["mm"] / 1e3)
    floor = flops / rate * 1e3
    goal = GOALS.get(arch)
    verdict = "" if goal is None else (" met" if ms["after"] / floor <= goal else " NOT met")
    return (
        f"| {arch} | {flops / 1e9:.2f} GFLOP | {rate / 1e9:.0f} GFLOP/s | {floor:.1f} ms | "
        f"{ms['before']:.1f} ms ({ms['before'] / floor:.2f}x) | {ms['after']:.1f} ms "
        f"({ms['after'] / floor:.2f}x) | {ms['before'] / ms['after']:.2f}x | "
        f"{goal or '-'}x:{verdict} | {diff:.1e} |"
    )


def step_row(arch: str, batch: int, rounds: int) -> str:
    """Per-bar cost of ``step`` against a windowed forward at ``batch`` (one table row)."""
    model = _model(arch)
    windowed = _model(WINDOWED_TWIN[arch])
    x, pos = _inputs(batch)
    with torch.inference_mode():
        state = model.init_state(batch)
        for t in range(WINDOW):  # a warm stream: caches full
            _, state = model.step(x[:, t], pos, state)
        holder = {"state": state}

        def one_step() -> None:
            _, holder["state"] = model.step(x[:, -1], pos, holder["state"])

        ms = interleaved({"step": one_step, "window": lambda: windowed(x, pos)}, rounds)
    return (
        f"| {arch} | {batch} | {ms['step']:.2f} ms | {ms['step'] / batch * 1e3:.0f} us | "
        f"{ms['window']:.2f} ms | {ms['window'] / ms['step']:.1f}x |"
    )


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, pos: Tensor) -> None:
    out = model(x, pos)
    loss = sum(v.square().mean() for v in out.values())
    opt.zero_grad()
    loss.backward()  # type: ignore[union-attr]
    opt.step()


def train_row(arch: str, rounds: int) -> str:
    """Training samples/s at batch 64: before, after and the ``nn.LSTM`` twin (one row)."""
    after = _model(arch).train()
    before = eager_reference(after).train()
    cfg = lstm_baseline(ARCHITECTURES[arch].with_data(N_FEATURES, WINDOW))
    torch.manual_seed(0)
    lstm = build_model(cfg).train()
    x, pos = _inputs(64)
    runs: dict[str, Callable[[], object]] = {}
    for name, net in (("before", before), ("after", after), ("lstm", lstm)):
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        runs[name] = lambda net=net, opt=opt: _train_step(net, opt, x, pos)
    ms = interleaved(runs, rounds)
    rate = {k: 64e3 / v for k, v in ms.items()}
    ratio = rate["lstm"] / rate["after"]
    return (
        f"| {arch} | {rate['before']:.0f} | {rate['after']:.0f} | {rate['lstm']:.0f} "
        f"(hidden {cfg.xlstm_hidden}) | {ratio:.2f}x ({'met' if ratio <= TRAIN_GOAL else 'NOT met'}) |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", action="append", default=None)
    ap.add_argument("--stream", action="append", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--train-rounds", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    archs = args.arch or ["tiny", "efficient-hybrid"]
    print(f"{args.threads} torch thread(s); load average at start {os.getloadavg()}")
    print("| model, batch 64 | FLOPs | matmul rate | FLOP floor | before (x floor) | after "
          "(x floor) | speed-up | goal | max diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in archs:
        print(forward_row(arch, args.rounds), flush=True)
    print("\n| stream preset | batch | step | per stream | windowed forward | window / step |")
    print("|---|---|---|---|---|---|")
    for arch in args.stream or ["tiny-stream", "hybrid-stream"]:
        for batch in (1, 20):
            print(step_row(arch, batch, 4 * args.rounds), flush=True)
    print("\n| model, batch 64 | train samples/s before | after | nn.LSTM twin | LSTM / after |")
    print("|---|---|---|---|---|")
    for arch in archs:
        print(train_row(arch, args.train_rounds), flush=True)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
