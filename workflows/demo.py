"""``btml demo``: the whole system on the embedded default, offline.

Load the embedded real sample (or generate a synthetic market), validate and store it, build a
synthetic index of its constituents, compute the causal features, train the ``tiny`` model
(chronological 70/15/15 split), archive it, start TorchServe, backtest the ML strategy through
the REST client on the model's test range (never seen in training) with costs and risk limits,
beside buy-and-hold and the SMA baseline at the same costs, write the QuantStats tearsheet, stop
the server, and report where everything is. The import of the data, the training and the
backtest are recorded in the run registry (``btml runs list``), each with its folder under
``{store}/runs``; the backtest's run depends on the training's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from analyzers.backtest import BacktestResult, CostConfig, activity_lines
from feeds.index import IndexConfig, build_from_store
from feeds.sample import SAMPLE_FILE, load_sample
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from feeds.validate import ValidationReport, validate
from mlmodels.features import WARMUP, compute_features
from workflows.runs import RunRegistry
from workflows.runs_info import file_sha256

if TYPE_CHECKING:
    from mlmodels.registry import ModelCard
    from serving.server import ServerConfig

Log = Callable[[str], None]

DEMO_SYMBOLS = ("AAPL", "IBM", "MSFT")
DEMO_EPOCHS = 12


@dataclass
class DemoResult:
    """What the demo made and measured, and the runs it recorded (kind, id, folder) in the
    registry at ``db_url`` (None: the store's SQLite file)."""

    store: Path
    db_url: str | None = None
    files: list[Path] = field(default_factory=list)
    reports: list[ValidationReport] = field(default_factory=list)
    results: list[BacktestResult] = field(default_factory=list)
    runs: list[tuple[str, str, Path]] = field(default_factory=list)
    seconds: float = 0.0


SYNTHETIC = SyntheticConfig(n_symbols=3, n_bars=2520, seed=7)


def _market(
    synthetic: bool, log: Log
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], dict[str, str]]:
    """The demo's frames, and the import run's parameters and inputs (name -> sha256)."""
    if synthetic:
        log("generating a synthetic market (3 symbols, 10 years daily)")
        return generate_market(SYNTHETIC), {"source": "synthetic", **SYNTHETIC.to_dict()}, {}
    log("loading the embedded real sample (split/dividend-adjusted): " + ", ".join(DEMO_SYMBOLS))
    sample = load_sample(adjusted=True)
    with resources.as_file(resources.files("feeds") / "data" / SAMPLE_FILE) as path:
        digest = file_sha256(path)
    params = {"source": "sample", "symbols": list(DEMO_SYMBOLS), "adjusted": True}
    return {s: sample[s] for s in DEMO_SYMBOLS}, params, {SAMPLE_FILE: digest}


def _store_market(
    store: ParquetStore, synthetic: bool, out: DemoResult, log: Log
) -> dict[str, pd.DataFrame]:
    """Validate every frame, then store them in one recorded ``import`` run."""
    frames, params, inputs = _market(synthetic, log)
    checked = {sym: validate(frame, sym) for sym, frame in frames.items()}
    with (
        RunRegistry(store.root, out.db_url) as registry,
        registry.start("import", params, inputs=inputs) as run,
    ):
        for frame, report in checked.values():
            out.reports.append(report)
            out.files.append(store.write(frame, merge=False))
            log(f"  validated and stored {report.summary()}")
        run.log_metrics({f"rows_{sym}": len(frame) for sym, (frame, _) in checked.items()})
    out.runs.append(("import", run.id, run.dir))
    return {
        sym: store.read(sym, "1Day", asset_class=f.attrs.get("asset_class"))
        for sym, f in frames.items()
    }


def _train(store_path: Path, symbols: tuple[str, ...], out: DemoResult, log: Log) -> ModelCard:
    """Train the tiny model on the stored data as a recorded ``train`` run (its card names
    the run, so the backtest's run depends on it)."""
    from workflows.train import TrainRunConfig, train

    # threads: unset, so the process's torch threads (btml --threads) train it
    request = TrainRunConfig(
        arch="tiny", symbols=symbols, index="DEMOIDX", name="demo", epochs=DEMO_EPOCHS,
        batch_size=128, patience=4, window=30, seed=0,
    )  # fmt: skip
    log(f"training the tiny model ({DEMO_EPOCHS} epochs at most, early stopping on validation)")

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        log(f"  epoch {epoch}: train {row['train_loss']:.4f}  val {row['val_loss']:.4f}")

    res = train(store_path, request, on_epoch=on_epoch, log=log, db_url=out.db_url)
    out.runs.append(("train", res.run_id, res.run_dir))
    card = res.card
    t = card.metrics["test"]
    edge = card.edge or f"test IC 1-bar {t['price_1_ic']:+.3f}"
    log(f"registered {card.ref}: {edge} (out of sample, against the naive and trained baselines)")
    return card


def _serve(store_path: Path, card: ModelCard, log: Log) -> ServerConfig:
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
    log(
        f"archived {mar.name} (its sha256 pinned in the model card); "
        f"starting TorchServe on 127.0.0.1:{cfg.inference_port}"
    )
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
    store_path: Path, *, synthetic: bool = False, log: Log = print, db_url: str | None = None
) -> DemoResult:
    """Run the demo, writing under ``store_path``; ``log`` receives progress lines. The
    import of the data, the training and the backtest are recorded as runs (``out.runs``) in
    the registry at ``db_url`` (default: the store's SQLite file)."""
    t0 = time.perf_counter()
    out = DemoResult(store=store_path, db_url=db_url)
    store = ParquetStore(store_path)
    feeds = _store_market(store, synthetic, out, log)
    index = _build_index(store, feeds, out, log)
    n_feat = compute_features(next(iter(feeds.values())), index).shape[1]
    log(f"computed {n_feat} causal features per symbol (warm-up {WARMUP} bars)")
    card = _train(store_path, tuple(feeds), out, log)
    served = _backtest(store_path, card, tuple(feeds), out, log)
    out.files.append(store_path / "models" / card.name / f"v{card.version}")
    out.files.append(served.model_store)
    out.seconds = time.perf_counter() - t0
    return out


def _build_index(
    store: ParquetStore, feeds: dict[str, pd.DataFrame], out: DemoResult, log: Log
) -> pd.DataFrame:
    cfg = IndexConfig(name="DEMOIDX", method="equal", constituents=tuple(feeds), rebalance="Q")
    index, path = build_from_store(store, cfg)
    out.files.append(path)
    log(
        f"built index DEMOIDX (equal weight, quarterly) of {', '.join(feeds)}: {len(index.frame)} bars"
    )
    return index.frame


def _backtest(
    store_path: Path, card: ModelCard, symbols: tuple[str, ...], out: DemoResult, log: Log
) -> ServerConfig:
    """Serve the model and backtest it through TorchServe as a recorded run, with the
    baselines and the tearsheet; the server is stopped whatever happens."""
    from serving.server import stop
    from workflows.backtest import BacktestConfig, MLRunConfig, backtest

    costs = CostConfig()
    request = BacktestConfig(
        symbols=symbols, model=card.ref, serving="torchserve", costs=costs, ml=MLRunConfig(),
        tearsheet=True,
    )  # fmt: skip
    cfg = _serve(store_path, card, log)
    try:
        log(
            f"backtesting with commission {costs.commission:.2%}, slippage {costs.slippage:.2%}, "
            "fills at the next open, max 25 % per symbol, 3 % daily loss stop, 25 % drawdown halt"
        )
        res = backtest(store_path, request, log=log, db_url=out.db_url)
    finally:
        stop(cfg)
        log("stopped TorchServe (no Java or worker process left)")
    out.results = res.results
    out.runs.append(("backtest", res.run_id, res.run_dir))
    out.files += [res.run_dir / "returns.parquet", res.run_dir / "audit.parquet"]
    out.files += [res.tearsheet] if res.tearsheet else []
    return cfg


def summary_table(result: DemoResult) -> str:
    """A plain-text table of the runs' statistics."""
    head = f"{'strategy':<18}{'final value':>14}{'CAGR':>9}{'Sharpe':>8}{'max DD':>9}{'trades':>8}"
    rows = [head, "-" * len(head)]
    for r in result.results:
        s = r.stats
        rows.append(
            f"{r.name:<18}{r.final_value:>14,.0f}{s.cagr:>9.2%}{s.sharpe:>8.2f}{s.max_drawdown:>9.2%}{s.trades:>8d}"
        )
    rows += activity_lines(result.results)
    return "\n".join(rows)
