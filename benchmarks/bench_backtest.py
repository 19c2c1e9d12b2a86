"""Backtest benchmark: the ML strategy through TorchServe and in-process, one request per
timestamp and batched, against a plain SMA crossover on the same datas, in one run.

Run: .venv/bin/python benchmarks/bench_backtest.py [--symbols 3 20] [--bars 1000] [--chunk 256]

For each universe size, a synthetic market (``generate_market``) of that many symbols is
backtested at the same costs: ``SmaCross`` (plain backtrader indicators), and
``MLSignalStrategy`` with the ``tiny`` preset (seeded weights, window 60, 51 features) asking
the served model over REST and the in-process client, each one request per timestamp
(``per-bar``) and batched (``strategies.batched``: the paths scored ``--chunk`` bars ahead in
one request, the fusion and heads per bar in-process). Wall time is the whole Cerebro run,
warm-up included; bars/s counts data bars (symbols x timestamps).

Goals: batched through TorchServe within 1.5x of (the SMA run's time + the in-process forward
of all its windows at the best batch size), printed as ``vs floor``; the ratio to the SMA
crossover's bars/s too. Batched and per-bar must end at the same value with the same trades
(printed). Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from analyzers.backtest import CostConfig, run_backtest
from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.features import FEATURES
from mlmodels.pipeline import register_untrained
from mlmodels.registry import ModelCard, ModelRegistry
from serving.archive import build_archive
from serving.client import InProcessClient, RestClient
from serving.server import ServerConfig, start, stop
from strategies.baselines import SmaCross, SmaCrossConfig
from strategies.batched import BatchedSignals
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.plugins import PluginSpec
from strategies.windows import FeatureWindows


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


HEADER = (
    "| symbols | bars | SMA bars/s | TorchServe per-bar | TorchServe batched | in-process "
    "per-bar | in-process batched | floor: SMA + forwards | batched TorchServe vs floor | "
    "same trades and value |\n|---|---|---|---|---|---|---|---|---|---|"
)
# The ML strategy's rules for the benchmark: every signal trades, 5 % of equity per entry.
ML_CONFIG = MLSignalConfig(
    sizer=PluginSpec(name="fixed", params={"fraction": 0.05}),
    min_edge=0.0, horizon_agreement=0, allow_short=True,
)  # fmt: skip


def serve_tiny(root: Path, window: int) -> tuple[ModelRegistry, ModelCard, ServerConfig]:
    """Register the ``tiny`` preset (seeded weights, 51 features), archive it, start TorchServe."""
    names = [f.name for f in FEATURES[:51]]
    reg = ModelRegistry(root / "models")
    card = register_untrained(reg, "tiny", "tiny", features=names, window=window)
    p = free_ports(5)
    cfg = ServerConfig(
        home=root / "serving", inference_port=p[0], management_port=p[1],
        metrics_port=p[2], grpc_inference_port=p[3], grpc_management_port=p[4],
    )  # fmt: skip
    start(cfg, [build_archive(reg, card.ref, cfg.model_store)])
    return reg, card, cfg


def timed(frames: dict[str, pd.DataFrame], strategy: type, **kwargs: Any) -> tuple[float, Any]:
    """Wall seconds of one whole Cerebro run, and its result."""
    t = time.perf_counter()
    res = run_backtest(
        strategy.__name__, frames, strategy, costs=CostConfig(), strategy_kwargs=kwargs
    )
    return time.perf_counter() - t, res


def forward_floor(windows: FeatureWindows, client: InProcessClient) -> tuple[float, int]:
    """Seconds of the in-process forward of every window at the best of a few batch sizes,
    and that batch size."""
    every = np.concatenate([_ahead_all(f, windows.window) for f in windows.symbols.values()])
    best = (float("inf"), 0)
    for batch in (64, 256, 1024):
        t = time.perf_counter()
        for i in range(0, len(every), batch):
            client.predict(every[i : i + batch])
        best = min(best, (time.perf_counter() - t, batch))
    return best


def _ahead_all(feats: Any, window: int) -> np.ndarray:
    ts = [int(t) for t in feats.times]
    wins = [w for t in ts if (w := feats.window_at(t, window)) is not None]
    return np.stack(wins)


def bench_universe(
    n: int, bars: int, window: int, chunk: int, reg: ModelRegistry, card: ModelCard,
    cfg: ServerConfig,
) -> str:  # fmt: skip
    """One table row on an ``n``-symbol market (see the module docstring)."""
    frames = generate_market(SyntheticConfig(n_symbols=n, n_bars=bars, seed=1))
    windows = FeatureWindows.build(frames, list(card.features), window)
    total = sum(len(f) for f in frames.values())
    rest = RestClient.for_server(cfg.home, "tiny")
    inproc = InProcessClient.from_registry(reg.root, card.ref, threads=1)
    t_sma, _ = timed(frames, SmaCross, config=SmaCrossConfig())
    runs = {}
    for key, client in (("rest", rest), ("inproc", inproc)):
        runs[key] = timed(frames, MLSignalStrategy, config=ML_CONFIG, client=client,
                          windows=windows)  # fmt: skip
        batched = BatchedSignals(windows, client, inproc, chunk=chunk)
        runs[key + "-b"] = timed(frames, MLSignalStrategy, config=ML_CONFIG, client=client,
                                 windows=windows, batched=batched)  # fmt: skip
    floor, best_batch = forward_floor(windows, inproc)
    same = all(
        runs[k][1].final_value == runs[k + "-b"][1].final_value
        and runs[k][1].stats.trades == runs[k + "-b"][1].stats.trades
        for k in ("rest", "inproc")
    )
    speed = {k: total / t for k, (t, _) in runs.items()}
    sma = total / t_sma
    return (
        f"| {n} | {total:,} | {sma:,.0f} | {speed['rest']:,.0f} ({speed['rest'] / sma:.2f}x) | "
        f"{speed['rest-b']:,.0f} ({speed['rest-b'] / sma:.2f}x) | "
        f"{speed['inproc']:,.0f} ({speed['inproc'] / sma:.2f}x) | "
        f"{speed['inproc-b']:,.0f} ({speed['inproc-b'] / sma:.2f}x) | "
        f"{t_sma:.2f} + {floor:.2f} s (batch {best_batch}) | "
        f"{runs['rest-b'][0] / (t_sma + floor):.2f}x | {'yes' if same else 'NO'} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--symbols", type=int, nargs="+", default=[3, 20])
    ap.add_argument("--bars", type=int, default=1000)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=256, help="bars scored ahead (batched mode)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        reg, card, cfg = serve_tiny(Path(tmp), args.window)
        try:
            print(HEADER)
            for n in args.symbols:
                print(
                    bench_universe(n, args.bars, args.window, args.chunk, reg, card, cfg),
                    flush=True,
                )
        finally:
            stop(cfg)


if __name__ == "__main__":
    main()
