"""Streaming presets against their windowed twins: out-of-sample quality and backtest speed.

Run: .venv/bin/python benchmarks/bench_stream.py [--symbols 3 20] [--bars 1000] [--epochs 6]

Quality: ``tiny`` and ``tiny-stream`` (same sizes; the stream trained by truncated BPTT,
``mlmodels.stream``) trained on the same data, split (70/15/15) and seed: a synthetic market
with a planted AR(1) signal (phi 0.3) and the embedded sample's AAPL, IBM and MSFT (adjusted). Printed per data set:
test direction accuracy (majority beside it), the 1-bar rank IC with its block-bootstrap 95 %
interval, and the training wall time.

Speed: on synthetic markets of ``--symbols`` x ``--bars`` daily bars at the same costs, the
SMA crossover, ``tiny`` through TorchServe batched (``strategies.batched``) and
``tiny-stream`` through TorchServe, its streams continued on the server one bar per request
(per-bar, as live) and 256 bars per request (batched). Bars/s = data bars / wall time of the
whole Cerebro run; the ratio is to the SMA's. Goal: the streaming run >= 0.5x SMA at 20
symbols and >= 0.3x at 3. Prints tables; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_backtest import ML_CONFIG, free_ports, timed  # noqa: E402

from feeds.sample import load_sample  # noqa: E402
from feeds.sources.synthetic import SyntheticConfig, generate_market  # noqa: E402
from mlmodels.dataset import DatasetConfig, build_dataset  # noqa: E402
from mlmodels.features import FEATURES  # noqa: E402
from mlmodels.pipeline import register_untrained, train_on_dataset  # noqa: E402
from mlmodels.registry import ModelRegistry  # noqa: E402
from mlmodels.splits import chronological_split  # noqa: E402
from mlmodels.trainer import TrainConfig  # noqa: E402
from serving.archive import build_archive  # noqa: E402
from serving.client import InProcessClient, RestClient  # noqa: E402
from serving.server import ServerConfig, start, stop  # noqa: E402
from strategies.baselines import SmaCross, SmaCrossConfig  # noqa: E402
from strategies.batched import BatchedSignals  # noqa: E402
from strategies.ml_signal import MLSignalStrategy  # noqa: E402
from strategies.streamed import StreamSignals  # noqa: E402
from strategies.windows import FeatureWindows  # noqa: E402

ARCHS = ("tiny", "tiny-stream")


def quality(name: str, frames: dict[str, pd.DataFrame], epochs: int) -> list[str]:
    """Table rows: each preset's test figures on ``frames``."""
    ds = build_dataset(frames, DatasetConfig(window=60))
    split = chronological_split(ds.times, lookahead=DatasetConfig().labels.lookahead)
    rows = []
    for arch in ARCHS:
        cfg = TrainConfig(epochs=epochs, batch_size=64, patience=3, seed=0, threads=1)
        t = time.perf_counter()
        _, card = train_on_dataset(
            _copy(ds), split, arch, name=arch.replace("-", "_"), registry=None, train_cfg=cfg,
            data_cfg=DatasetConfig(window=60),
        )  # fmt: skip
        secs = time.perf_counter() - t
        test, rep = card.metrics["test"], card.metrics["report"]
        ic = rep["heads"]["price_1"]["models"]["network"]["rank_ic"]
        majority = card.metrics["baselines_test"]["majority_direction_accuracy"]
        rows.append(
            f"| {name} | {arch} | {test['direction_accuracy']:.3f} (majority {majority:.3f}) | "
            f"{ic['value']:.3f} [{ic['lo']:.3f}, {ic['hi']:.3f}] | {secs:.0f} s |"
        )
    return rows


def _copy(ds: Any) -> Any:
    """A fresh copy of an unscaled dataset (each training fits its own scaler)."""
    import copy

    return copy.deepcopy(ds)


def serve(root: Path, window: int) -> tuple[ModelRegistry, ServerConfig]:
    """Register ``tiny`` and ``tiny-stream`` (seeded weights, 51 features) and serve both."""
    names = [f.name for f in FEATURES[:51]]
    reg = ModelRegistry(root / "models")
    for arch in ARCHS:
        register_untrained(reg, arch, arch, features=names, window=window)
    p = free_ports(5)
    cfg = ServerConfig(
        home=root / "serving", inference_port=p[0], management_port=p[1],
        metrics_port=p[2], grpc_inference_port=p[3], grpc_management_port=p[4],
    )  # fmt: skip
    start(cfg, [build_archive(reg, f"{a}:1", cfg.model_store) for a in ARCHS])
    return reg, cfg


def speed(n: int, bars: int, window: int, reg: ModelRegistry, cfg: ServerConfig) -> str:
    """One table row on an ``n``-symbol market."""
    frames = generate_market(SyntheticConfig(n_symbols=n, n_bars=bars, seed=1))
    names = [f.name for f in FEATURES[:51]]
    windows = FeatureWindows.build(frames, names, window)
    total = sum(len(f) for f in frames.values())
    t_sma, _ = timed(frames, SmaCross, config=SmaCrossConfig())
    runs = {}
    tail = InProcessClient.from_registry(reg.root, "tiny:1", threads=1)
    rest = RestClient.for_server(cfg.home, "tiny")
    runs["windowed"] = timed(frames, MLSignalStrategy, config=ML_CONFIG, client=rest,
                             windows=windows, batched=BatchedSignals(windows, rest, tail))  # fmt: skip
    stail = InProcessClient.from_registry(reg.root, "tiny-stream:1", threads=1)
    srest = RestClient.for_server(cfg.home, "tiny-stream")
    for key, chunk in (("per-bar", 1), ("batched", 256)):
        scorer = StreamSignals(windows, srest, stail, chunk=chunk)
        runs[key] = timed(frames, MLSignalStrategy, config=ML_CONFIG, client=srest,
                          windows=windows, batched=scorer)  # fmt: skip
    same = (
        runs["per-bar"][1].final_value == runs["batched"][1].final_value
        and runs["per-bar"][1].stats.trades == runs["batched"][1].stats.trades
    )
    sma = total / t_sma
    cells = [f"{total / t:,.0f} ({total / t / sma:.2f}x)" for t, _ in runs.values()]
    return (
        f"| {n} | {total:,} | {sma:,.0f} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--symbols", type=int, nargs="+", default=[3, 20])
    ap.add_argument("--bars", type=int, default=1000)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--skip-quality", action="store_true", help="the speed table only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    if not args.skip_quality:
        print("| data | preset | test direction accuracy | 1-bar rank IC [95 %] | training |")
        print("|---|---|---|---|---|")
        planted = generate_market(SyntheticConfig(n_symbols=4, n_bars=1500, seed=3,
                                                  planted_strength=0.3))  # fmt: skip
        for row in quality("planted AR(1) 0.3", planted, args.epochs):
            print(row, flush=True)
        sample = load_sample(adjusted=True)
        demo = {s: sample[s] for s in ("AAPL", "IBM", "MSFT")}  # the demo's three
        for row in quality("embedded sample (AAPL, IBM, MSFT)", demo, args.epochs):
            print(row, flush=True)
        print()
    with tempfile.TemporaryDirectory() as tmp:
        reg, cfg = serve(Path(tmp), args.window)
        try:
            print("| symbols | bars | SMA bars/s | tiny batched (TorchServe) | tiny-stream per-bar "
                  "(TorchServe) | tiny-stream batched (TorchServe) | stream per-bar = batched |")  # fmt: skip
            print("|---|---|---|---|---|---|---|")
            for n in args.symbols:
                print(speed(n, args.bars, args.window, reg, cfg), flush=True)
        finally:
            stop(cfg)


if __name__ == "__main__":
    main()
