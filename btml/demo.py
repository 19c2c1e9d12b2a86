"""``btml demo``: the whole system on the embedded default, offline.

Today it runs the data part end to end: load the embedded real sample (or generate a synthetic
market), validate it, write it to the store, read it back as backtrader feeds, and backtest the
SMA baseline beside buy-and-hold with costs. Later stages (index, features, model, serving,
tearsheet) plug in here as they land.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analyzers.backtest import BacktestResult, CostConfig, run_backtest
from feeds.index import IndexConfig, build_from_store
from feeds.sample import load_sample
from feeds.store import ParquetStore
from feeds.validate import ValidationReport, validate
from mlmodels.features import WARMUP, compute_features
from strategies.baselines import BuyAndHold, SmaCross, SmaCrossConfig

DEMO_SYMBOLS = ("AAPL", "IBM", "MSFT")


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


def run_demo(
    store_path: Path, *, synthetic: bool = False, log: Callable[[str], None] = print
) -> DemoResult:
    """Run the demo, writing under ``store_path``; ``log`` receives progress lines."""
    t0 = time.perf_counter()
    out = DemoResult(store=store_path)
    store = ParquetStore(store_path)
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
    feeds = {
        sym: store.read(sym, "1Day", asset_class=f.attrs.get("asset_class"))
        for sym, f in frames.items()
    }
    index_cfg = IndexConfig(
        name="DEMOIDX", method="equal", constituents=tuple(frames), rebalance="Q"
    )
    index, path = build_from_store(store, index_cfg)
    out.files.append(path)
    log(
        f"built index DEMOIDX (equal weight, quarterly) of {', '.join(frames)}: {len(index.frame)} bars"
    )
    n_feat = {sym: compute_features(f, index.frame).shape[1] for sym, f in feeds.items()}
    log(f"computed {max(n_feat.values())} causal features per symbol (warm-up {WARMUP} bars)")
    costs = CostConfig()
    log(
        f"backtesting with commission {costs.commission:.2%}, slippage {costs.slippage:.2%}, fills at next open"
    )
    out.results.append(run_backtest("buy-and-hold", feeds, BuyAndHold, costs=costs))
    out.results.append(
        run_backtest(
            "sma-cross 10/30",
            feeds,
            SmaCross,
            costs=costs,
            strategy_kwargs={"config": SmaCrossConfig()},
        )
    )
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
