"""``btml walkforward`` and ``btml stress``: out-of-sample evidence and crash behaviour.

Walk-forward: ``mlmodels.splits.WalkForward`` folds over the data's bars. Per fold a fresh
dataset is built (so the scaler is fit on that fold's training rows only), the model is trained
with early stopping on the fold's validation tail, registered as ``NAME-fN``, optionally
archived and served by TorchServe, and backtested on the fold's test segment alone. The test
segments do not overlap; their returns are stitched into one out-of-sample series, reported
with the deflated Sharpe ratio for the number of models trained.

Stress: the strategy over named crash windows the data covers (each flagged when it overlaps
the model's training range, where results are in-sample) and over synthetic shocks applied to
the model's test range (a -20 % gap in every symbol; three times the volatility for 60 bars),
with the drawdown and a check of every risk limit from the audit trail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzers.backtest import BacktestResult, CostConfig
from analyzers.performance import deflated_sharpe
from btml.backtest import MLRunConfig, run_model
from feeds.errors import DataError
from mlmodels.dataset import DatasetConfig, build_dataset
from mlmodels.pipeline import train_on_dataset
from mlmodels.registry import ModelCard, ModelRegistry
from mlmodels.splits import WalkForward
from mlmodels.trainer import TrainConfig

CRASHES = {
    "dot-com 2000-2002": ("2000-03-01", "2002-10-31"),
    "GFC 2008-2009": ("2008-09-01", "2009-03-31"),
    "COVID March 2020": ("2020-02-19", "2020-04-30"),
}


@dataclass
class WalkForwardResult:
    """Per-fold rows, the stitched out-of-sample returns, and the deflated Sharpe."""

    folds: pd.DataFrame
    returns: pd.Series
    dsr: dict[str, float]
    cards: list[ModelCard] = field(default_factory=list)
    results: list[BacktestResult] = field(default_factory=list)


def walk_forward(
    store_path: Path,
    frames: Mapping[str, pd.DataFrame],
    *,
    name: str,
    arch: str = "tiny",
    folds: WalkForward,
    train_cfg: TrainConfig,
    data_cfg: DatasetConfig,
    index: pd.DataFrame | None = None,
    index_name: str | None = None,
    serving: str = "inprocess",
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Callable[[str], None] = print,
) -> WalkForwardResult:
    """Train, (serve,) and backtest each fold; see the module docstring."""
    reg = ModelRegistry(store_path / "models")
    probe = build_dataset(frames, data_cfg, index)
    splits = list(folds.split(probe.times))
    rows, parts, cards, results = [], [], [], []
    for k, sp in enumerate(splits, 1):
        t0 = time.perf_counter()
        ds = build_dataset(frames, data_cfg, index)  # a fresh scaler per fold
        log(f"fold {k}/{len(splits)}: train to {ds.times[sp.train].max().date()}, "
            f"test {sp.test_start.date()} .. {sp.test_end.date()}")  # fmt: skip
        _, card = train_on_dataset(
            ds, sp, arch, name=f"{name}-f{k}", registry=reg, train_cfg=train_cfg,
            data_cfg=data_cfg, index_name=index_name, work_dir=store_path / "runs" / f"{name}-f{k}",
        )  # fmt: skip
        res, _ = run_model(
            store_path, card.ref, frames, serving=serving, start=None, end=sp.test_end,
            costs=costs, ml=ml, log=log,
        )  # fmt: skip
        cards.append(card)
        results.append(res)
        parts.append(res.returns)
        s = res.stats
        rows.append(
            {"fold": k, "model": card.ref, "test_start": sp.test_start, "test_end": sp.test_end,
             "return": s.total_return, "sharpe": s.sharpe, "max_drawdown": s.max_drawdown,
             "trades": s.trades, "seconds": time.perf_counter() - t0}
        )  # fmt: skip
    stitched = pd.concat(parts).sort_index()
    if stitched.index.has_duplicates:
        raise DataError("walk-forward test segments overlap; this is a bug in the splitter")
    per_period = [r.mean() / r.std(ddof=1) if r.std(ddof=1) > 0 else 0.0 for r in parts]
    dsr = deflated_sharpe(stitched, per_period, n_trials=len(splits))
    return WalkForwardResult(pd.DataFrame(rows).set_index("fold"), stitched, dsr, cards, results)


def gap_shock(frame: pd.DataFrame, at: pd.Timestamp, size: float = -0.2) -> pd.DataFrame:
    """Every price from bar ``at`` on scaled by ``1 + size``: a gap at ``at``'s open."""
    out = frame.copy()
    cols = ["open", "high", "low", "close"]
    out.loc[out.index >= at, cols] *= 1 + size
    return out


def vol_shock(
    frame: pd.DataFrame, at: pd.Timestamp, bars: int = 60, factor: float = 3.0
) -> pd.DataFrame:
    """Log returns of the ``bars`` bars from ``at`` scaled by ``factor`` around their mean; the
    bar shapes (open/high/low relative to close) are kept, later prices follow the new level."""
    out = frame.copy()
    logc = np.log(out["close"].to_numpy())
    r = np.diff(logc, prepend=logc[0])
    i = int(out.index.searchsorted(at))
    seg = slice(i, min(i + bars, len(r)))
    r[seg] = r[seg].mean() + factor * (r[seg] - r[seg].mean())
    new = np.exp(np.cumsum(r) + logc[0] - r[0])
    ratio = new / out["close"].to_numpy()
    for c in ("open", "high", "low", "close"):
        out[c] = out[c].to_numpy() * ratio
    return out


def limits_held(result: BacktestResult, ml: MLRunConfig) -> dict[str, bool]:
    """Check the risk limits against the run's audit trail: no target beyond the position cap;
    while the daily stop or the drawdown halt is in force, no target beyond (or across) the
    weight held before the decision."""
    from strategies.audit import decisions_frame

    a = decisions_frame(result.strategy.audit)
    if a.empty:
        return {"position": True, "daily_stop": True, "drawdown_halt": True}
    eps = 1e-9
    no_entry = (a["target"].abs() <= a["weight"].abs() + eps) & (a["target"] * a["weight"] >= -eps)
    stopped = a["risk_state"].str.contains("daily-stop")
    halted = a["risk_state"].str.contains("drawdown") & (ml.risk.drawdown_action == "halt")
    return {
        "position": bool((a["target"].abs() <= ml.risk.max_position + eps).all()),
        "daily_stop": bool(no_entry[stopped].all()),
        "drawdown_halt": bool(no_entry[halted].all()),
    }


def stress(
    store_path: Path,
    ref: str,
    frames: Mapping[str, pd.DataFrame],
    *,
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """One row per scenario: period, in-sample flag, return, max drawdown, trades, limits held."""
    ml = ml or MLRunConfig(serving_failure="abort")
    card = ModelRegistry(store_path / "models").card(ref)
    train_end = (
        pd.Timestamp(card.date_ranges["train"][1]) if card.date_ranges.get("train") else None
    )
    first = min(f.index[0] for f in frames.values())
    last = max(f.index[-1] for f in frames.values())
    rows: list[dict[str, Any]] = []

    def record(
        name: str, fr: Mapping[str, pd.DataFrame], start: Any, end: Any, insample: bool
    ) -> None:
        res, _ = run_model(
            store_path,
            ref,
            fr,
            start=start,
            end=end,
            costs=costs,
            ml=ml,
            log=log,
            allow_in_sample=True,
        )
        rows.append({"scenario": name, "start": str(start)[:10], "end": str(end)[:10],
                     "in_training_range": insample, "return": res.stats.total_return,
                     "max_drawdown": res.stats.max_drawdown, "trades": res.stats.trades,
                     **{f"limit_{k}": v for k, v in limits_held(res, ml).items()}})  # fmt: skip

    for name, (a, b) in CRASHES.items():
        lo, hi = pd.Timestamp(a, tz="UTC"), pd.Timestamp(b, tz="UTC")
        if lo < first or hi > last:
            log(f"  {name}: not covered by the data ({first.date()} .. {last.date()}), skipped")
            continue
        record(name, frames, lo, hi, bool(train_end is not None and lo <= train_end))
    test = card.date_ranges.get("test")
    if test:
        t0, t1 = pd.Timestamp(test[0]), pd.Timestamp(test[1])
        mid = t0 + (t1 - t0) / 2
        record(
            "gap -20 % (all symbols)",
            {s: gap_shock(f, mid) for s, f in frames.items()},
            t0,
            t1,
            False,
        )
        record(
            "volatility x3 for 60 bars",
            {s: vol_shock(f, mid) for s, f in frames.items()},
            t0,
            t1,
            False,
        )
    return pd.DataFrame(rows)
