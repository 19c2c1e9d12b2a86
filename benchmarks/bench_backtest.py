"""Backtest benchmark: the ML strategy through TorchServe and in-process against a plain SMA
crossover on the same datas, in one run.

Run: .venv/bin/python benchmarks/bench_backtest.py [--symbols 3 20] [--bars 1000]

For each universe size, a synthetic market (``generate_market``) of that many symbols is
backtested three ways at the same costs: ``SmaCross`` (plain backtrader indicators), and
``MLSignalStrategy`` with the ``tiny`` preset (seeded weights, window 60, 51 features) asking
the served model over REST (one batched request per timestamp) and the in-process client.
Bars/s counts data bars (symbols x timestamps) over the whole Cerebro run, warm-up included.
Goal: ML through TorchServe >= 0.5x the SMA crossover's bars/s. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

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
    "| symbols | bars | SMA bars/s | ML via TorchServe bars/s | ratio | ML in-process bars/s | ratio |\n"
    "|---|---|---|---|---|---|---|"
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


def bars_per_second(frames: dict[str, pd.DataFrame], strategy: type, **kwargs: Any) -> float:
    """Data bars (symbols x timestamps) per second of one whole Cerebro run."""
    total = sum(len(f) for f in frames.values())
    t = time.perf_counter()
    run_backtest(strategy.__name__, frames, strategy, costs=CostConfig(), strategy_kwargs=kwargs)
    return total / (time.perf_counter() - t)


def bench_universe(
    n: int, bars: int, window: int, reg: ModelRegistry, card: ModelCard, cfg: ServerConfig
) -> str:
    """One table row: SMA, ML over REST and ML in-process on an ``n``-symbol market."""
    frames = generate_market(SyntheticConfig(n_symbols=n, n_bars=bars, seed=1))
    windows = FeatureWindows.build(frames, list(card.features), window)
    total = sum(len(f) for f in frames.values())
    clients = {
        "rest": RestClient.for_server(cfg.home, "tiny"),
        "inproc": InProcessClient.from_registry(reg.root, card.ref, threads=1),
    }
    speeds = {"sma": bars_per_second(frames, SmaCross, config=SmaCrossConfig())}
    for key, client in clients.items():
        speeds[key] = bars_per_second(
            frames, MLSignalStrategy, config=ML_CONFIG, client=client, windows=windows
        )
    return (
        f"| {n} | {total:,} | {speeds['sma']:,.0f} | {speeds['rest']:,.0f} | "
        f"{speeds['rest'] / speeds['sma']:.2f}x | {speeds['inproc']:,.0f} | "
        f"{speeds['inproc'] / speeds['sma']:.2f}x |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--symbols", type=int, nargs="+", default=[3, 20])
    ap.add_argument("--bars", type=int, default=1000)
    ap.add_argument("--window", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        reg, card, cfg = serve_tiny(Path(tmp), args.window)
        try:
            print(HEADER)
            for n in args.symbols:
                print(bench_universe(n, args.bars, args.window, reg, card, cfg), flush=True)
        finally:
            stop(cfg)


if __name__ == "__main__":
    main()
