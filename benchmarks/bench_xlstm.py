"""xLSTM benchmark: ``XLSTMStack`` against ``torch.nn.LSTM`` of the same parameter count.

Run: .venv/bin/python benchmarks/bench_xlstm.py [--hidden 256] [--layers 2] [--threads 2]

For each stack variant (all mLSTM, all sLSTM, mixed), an ``nn.LSTM`` with the same number of
layers and input features whose hidden size gives the closest parameter count is built; every
model runs forward passes on a ``--steps``-step window at batch 1 and batch 64 under
``torch.inference_mode``, interleaved round-robin so that load from other processes hits all
models alike. Prints parameters, p50 latency and the ratio xLSTM / matched LSTM; writes nothing.
Record the figures in benchmarks/RESULTS.md.

Goals stated for the xLSTM layers: every ratio <= 2.0, and batch-1 latency <= 5 ms.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mlmodels.nets import XLSTMStack

GOAL_RATIO = 2.0
GOAL_BATCH1_MS = 5.0


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_lstm(target: int, input_size: int, layers: int) -> nn.LSTM:
    """The ``nn.LSTM`` (batch-first) whose parameter count is closest to ``target``.

    Parameters of an ``L``-layer LSTM with hidden ``h`` over ``F`` inputs:
    ``4h(F + h + 2) + (L - 1) 4h(2h + 2) = (8L - 4) h^2 + (4F + 8L) h``.
    """
    a, b = 8 * layers - 4, 4 * input_size + 8 * layers
    h = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
    best = min((max(1, math.floor(h)), math.ceil(h)), key=lambda k: abs(a * k * k + b * k - target))
    return nn.LSTM(input_size, best, layers, batch_first=True)


def p50_interleaved(
    runs: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, float]:
    """Median wall-clock milliseconds of each run, timed round-robin."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def build_models(args: argparse.Namespace) -> dict[str, tuple[nn.Module, nn.LSTM]]:
    """Each variant with its matched LSTM, in eval mode. The all-sLSTM stack also runs with the
    eager step loop (``use_jit=False``) to show what TorchScript buys."""
    all_s = tuple(range(args.layers))
    variants = {
        "all-mLSTM": ((), True),
        "all-sLSTM": (all_s, True),
        f"mixed slstm_at={args.mixed}": (args.mixed, True),
        "all-sLSTM, eager loop": (all_s, False),
    }
    out: dict[str, tuple[nn.Module, nn.LSTM]] = {}
    for name, (slstm_at, use_jit) in variants.items():
        stack = XLSTMStack(
            args.features, args.hidden, args.layers, args.heads, slstm_at=slstm_at, use_jit=use_jit
        )
        lstm = matched_lstm(n_params(stack), args.features, args.layers)
        out[name] = (stack.eval(), lstm.eval())
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--mixed", type=int, nargs="+", default=[1], help="slstm_at of the mixed stack")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument(
        "--batch1-goal-ms",
        type=float,
        default=GOAL_BATCH1_MS,
        help="batch-1 latency goal (stated for the default 256 x 2 stack; 0 turns it off)",
    )
    args = ap.parse_args()
    args.mixed = tuple(args.mixed)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = build_models(args)
    print(
        f"xLSTM vs matched nn.LSTM: hidden {args.hidden} x {args.layers} layers, {args.heads} heads, "
        f"{args.features} features, {args.steps} steps, {args.threads} threads, p50 of "
        f"{args.rounds} interleaved rounds"
    )
    for name, (stack, lstm) in models.items():
        print(
            f"  {name:<24} xLSTM {n_params(stack):>9,} params | nn.LSTM hidden {lstm.hidden_size}"
            f" {n_params(lstm):>9,} params"
        )
    misses: list[str] = []
    for batch in args.batches:
        ms = time_batch(models, batch, args)
        print(f"batch {batch}:")
        for name in models:
            xl, ls = ms[f"{name} xLSTM"], ms[f"{name} LSTM"]
            slow = batch == 1 and 0 < args.batch1_goal_ms < xl
            miss = xl / ls > GOAL_RATIO or slow
            if miss and "eager" not in name:
                misses.append(f"{name} at batch {batch}")
            print(
                f"  {name:<24} xLSTM {xl:8.2f} ms   matched LSTM {ls:8.2f} ms   "
                f"ratio {xl / ls:5.2f}{'   (misses the goal)' if miss else ''}"
            )
    goal = f"ratio <= {GOAL_RATIO}, batch 1 <= {args.batch1_goal_ms} ms, TorchScript loop"
    print(f"goal ({goal}): " + ("met" if not misses else "NOT met by " + "; ".join(misses)))


def time_batch(
    models: dict[str, tuple[nn.Module, nn.LSTM]], batch: int, args: argparse.Namespace
) -> dict[str, float]:
    """p50 milliseconds of every model at ``batch``, keyed ``"<variant> xLSTM|LSTM"``."""
    x = torch.randn(batch, args.steps, args.features)
    runs: dict[str, Callable[[], object]] = {}
    for name, (stack, lstm) in models.items():
        runs[f"{name} xLSTM"] = functools.partial(stack, x)
        runs[f"{name} LSTM"] = functools.partial(lstm, x)
    rounds = args.rounds if batch < 16 else max(5, args.rounds // 4)
    with torch.inference_mode():
        return p50_interleaved(runs, rounds, warmup=3)


if __name__ == "__main__":
    main()
