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

import torch

from analyzers.backtest import CostConfig, run_backtest
from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.features import FEATURES
from mlmodels.pipeline import register_untrained
from mlmodels.registry import ModelRegistry
from serving.archive import build_archive
from serving.client import InProcessClient, RestClient
from serving.server import ServerConfig, start, stop
from strategies.baselines import SmaCross, SmaCrossConfig
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.sizing import FixedFraction
from strategies.windows import FeatureWindows


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--symbols", type=int, nargs="+", default=[3, 20])
    ap.add_argument("--bars", type=int, default=1000)
    ap.add_argument("--window", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = [f.name for f in FEATURES[:51]]
    with tempfile.TemporaryDirectory() as tmp:
        reg = ModelRegistry(Path(tmp) / "models")
        card = register_untrained(reg, "tiny", "tiny", features=names, window=args.window)
        p = free_ports(5)
        cfg = ServerConfig(
            home=Path(tmp) / "serving", inference_port=p[0], management_port=p[1],
            metrics_port=p[2], grpc_inference_port=p[3], grpc_management_port=p[4],
        )  # fmt: skip
        start(cfg, [build_archive(reg, card.ref, cfg.model_store)])
        try:
            print(
                "| symbols | bars | SMA bars/s | ML via TorchServe bars/s | ratio | ML in-process bars/s | ratio |"
            )
            print("|---|---|---|---|---|---|---|")
            for n in args.symbols:
                frames = generate_market(SyntheticConfig(n_symbols=n, n_bars=args.bars, seed=1))
                windows = FeatureWindows.build(frames, names, args.window)
                total = sum(len(f) for f in frames.values())
                speeds = {}
                clients = {
                    "rest": RestClient.for_server(cfg.home, "tiny"),
                    "inproc": InProcessClient.from_registry(reg.root, card.ref, threads=1),
                }
                t = time.perf_counter()
                run_backtest("sma", frames, SmaCross, costs=CostConfig(),
                             strategy_kwargs={"config": SmaCrossConfig()})  # fmt: skip
                speeds["sma"] = total / (time.perf_counter() - t)
                for key, client in clients.items():
                    mcfg = MLSignalConfig(
                        client=client, windows=windows, sizer=FixedFraction(fraction=0.05),
                        min_edge=0.0, horizon_agreement=0, allow_short=True,
                    )  # fmt: skip
                    t = time.perf_counter()
                    run_backtest("ml", frames, MLSignalStrategy, costs=CostConfig(),
                                 strategy_kwargs={"config": mcfg})  # fmt: skip
                    speeds[key] = total / (time.perf_counter() - t)
                print(
                    f"| {n} | {total:,} | {speeds['sma']:,.0f} | {speeds['rest']:,.0f} | "
                    f"{speeds['rest'] / speeds['sma']:.2f}x | {speeds['inproc']:,.0f} | "
                    f"{speeds['inproc'] / speeds['sma']:.2f}x |",
                    flush=True,
                )
        finally:
            stop(cfg)


if __name__ == "__main__":
    main()
