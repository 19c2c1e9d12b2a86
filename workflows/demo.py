"""``btml demo``: the whole system on the embedded default, offline.

Load the embedded real sample (or generate a synthetic market), validate and store it, build a
synthetic index of its constituents, compute the causal features, train the ``tiny`` model
(chronological 70/15/15 split), archive it, start TorchServe, backtest the ML strategy through
the REST client on the model's test range (never seen in training) with costs and risk limits,
beside buy-and-hold and the SMA baseline at the same costs, write the QuantStats tearsheet, stop
the server, and report where everything is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from analyzers.backtest import BacktestResult, CostConfig
from feeds.index import IndexConfig, build_from_store
from feeds.sample import load_sample
from feeds.store import ParquetStore
from feeds.validate import ValidationReport, validate
from mlmodels.features import WARMUP, compute_features

if TYPE_CHECKING:
    from mlmodels.registry import ModelCard
    from serving.server import ServerConfig

DEMO_SYMBOLS = ("AAPL", "IBM", "MSFT")
DEMO_EPOCHS = 12


@dataclass
class DemoResult:
    """What the demo made and measured."""

    store: Path
    files: list[Path] = field(default_factory=list)
    reports: list[ValidationReport] = field(default_factory=list)
    results: list[BacktestResult] = field(default_factory=list)
    seconds: float = 0.0


def _synthetic_frames() -> dict[str, pd.DataFrame]:
    from feeds.sources.synthetic import SyntheticConfig, generate_market

    return generate_market(SyntheticConfig(n_symbols=3, n_bars=2520, seed=7))


def _store_market(
    store: ParquetStore, synthetic: bool, out: DemoResult, log: Callable[[str], None]
) -> dict[str, pd.DataFrame]:
    if synthetic:
        log("generating a synthetic market (3 symbols, 10 years daily)")
        frames = _synthetic_frames()
    else:
        log(
            "loading the embedded real sample (split/dividend-adjusted): " + ", ".join(DEMO_SYMBOLS)
        )
        sample = load_sample(adjusted=True)
        frames = {s: sample[s] for s in DEMO_SYMBOLS}
    for sym, frame in frames.items():
        checked, report = validate(frame, sym)
        out.reports.append(report)
        out.files.append(store.write(checked, merge=False))
        log(f"  validated and stored {report.summary()}")
    return {
        sym: store.read(sym, "1Day", asset_class=f.attrs.get("asset_class"))
        for sym, f in frames.items()
    }


def _train(
    store_path: Path,
    feeds: dict[str, pd.DataFrame],
    index: pd.DataFrame,
    log: Callable[[str], None],
) -> ModelCard:
    from mlmodels.dataset import DatasetConfig
    from mlmodels.pipeline import train_model
    from mlmodels.registry import ModelRegistry
    from mlmodels.trainer import TrainConfig

    tcfg = TrainConfig(
        epochs=DEMO_EPOCHS, batch_size=128, patience=4, seed=0, threads=os.cpu_count()
    )
    log(f"training the tiny model ({DEMO_EPOCHS} epochs at most, early stopping on validation)")

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        log(f"  epoch {epoch}: train {row['train_loss']:.4f}  val {row['val_loss']:.4f}")

    _, card = train_model(
        feeds, "tiny", name="demo", registry=ModelRegistry(store_path / "models"),
        train_cfg=tcfg, data_cfg=DatasetConfig(window=30), index=index, index_name="DEMOIDX",
        work_dir=store_path / "runs" / "demo", on_epoch=on_epoch,
    )  # fmt: skip
    t, b = card.metrics["test"], card.metrics["baselines_test"]
    log(
        f"registered {card.ref}: test direction accuracy {t['direction_accuracy']:.3f} "
        f"(majority {b['majority_direction_accuracy']:.3f}), IC 1-bar {t['price_1_ic']:+.3f}"
    )
    return card


def _serve(store_path: Path, card: ModelCard, log: Callable[[str], None]) -> ServerConfig:
    from mlmodels.registry import ModelRegistry
    from serving.archive import build_archive
    from serving.server import ServerConfig, read_state, start, stop

    ports = _free_ports(5)
    cfg = ServerConfig(
        home=store_path / "serving", inference_port=ports[0], management_port=ports[1],
        metrics_port=ports[2], grpc_inference_port=ports[3], grpc_management_port=ports[4],
    )  # fmt: skip
    if read_state(cfg) is not None:
        log("stopping the TorchServe left running from an earlier demo")
        stop(cfg)
    mar = build_archive(ModelRegistry(store_path / "models"), card.ref, cfg.model_store)
    log(f"archived {mar.name} (+ .sha256); starting TorchServe on 127.0.0.1:{cfg.inference_port}")
    t0 = time.perf_counter()
    start(cfg, [mar])
    log(f"  {card.ref} READY in {time.perf_counter() - t0:.1f} s (token auth on, model API off)")
    return cfg


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_demo(
    store_path: Path, *, synthetic: bool = False, log: Callable[[str], None] = print
) -> DemoResult:
    """Run the demo, writing under ``store_path``; ``log`` receives progress lines."""
    from serving.server import stop
    from workflows.backtest import MLRunConfig, clip_range, run_baseline, run_model, save_run
    from workflows.reports import tearsheet_for_run

    t0 = time.perf_counter()
    out = DemoResult(store=store_path)
    store = ParquetStore(store_path)
    feeds = _store_market(store, synthetic, out, log)
    index_cfg = IndexConfig(
        name="DEMOIDX", method="equal", constituents=tuple(feeds), rebalance="Q"
    )
    index, path = build_from_store(store, index_cfg)
    out.files.append(path)
    log(
        f"built index DEMOIDX (equal weight, quarterly) of {', '.join(feeds)}: {len(index.frame)} bars"
    )
    n_feat = compute_features(next(iter(feeds.values())), index.frame).shape[1]
    log(f"computed {n_feat} causal features per symbol (warm-up {WARMUP} bars)")
    card = _train(store_path, feeds, index.frame, log)
    costs = CostConfig()
    cfg = _serve(store_path, card, log)
    try:
        log(
            f"backtesting with commission {costs.commission:.2%}, slippage {costs.slippage:.2%}, "
            "fills at the next open, max 25 % per symbol, 3 % daily loss stop, 25 % drawdown halt"
        )
        ml, _ = run_model(
            store_path,
            card.ref,
            feeds,
            serving="torchserve",
            costs=costs,
            ml=MLRunConfig(),
            log=log,
        )
    finally:
        stop(cfg)
        log("stopped TorchServe (no Java or worker process left)")
    span = clip_range(feeds, ml.returns.index[0], ml.returns.index[-1])
    out.results = [ml, run_baseline("buyhold", span, costs), run_baseline("sma", span, costs)]
    run_dir = save_run(store_path, "demo", out.results, card)
    sheet = tearsheet_for_run(run_dir, run_dir / "tearsheet.html")
    out.files += [run_dir / "returns.parquet", run_dir / "audit.parquet", sheet]
    out.files.append(store_path / "models" / card.name / f"v{card.version}")
    out.files.append(cfg.model_store)
    out.seconds = time.perf_counter() - t0
    return out


def summary_table(result: DemoResult) -> str:
    """A plain-text table of the runs' statistics."""
    head = f"{'strategy':<18}{'final value':>14}{'CAGR':>9}{'Sharpe':>8}{'max DD':>9}{'trades':>8}"
    rows = [head, "-" * len(head)]
    for r in result.results:
        s = r.stats
        rows.append(
            f"{r.name:<18}{r.final_value:>14,.0f}{s.cagr:>9.2%}{s.sharpe:>8.2f}{s.max_drawdown:>9.2%}{s.trades:>8d}"
        )
    return "\n".join(rows)
