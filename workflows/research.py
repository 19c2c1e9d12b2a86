"""``btml walkforward`` and ``btml stress``: out-of-sample evidence and crash behaviour.

Walk-forward: ``mlmodels.splits.WalkForward`` folds over the bars that have features and
labels, purged by at least the labels' lookahead. Per fold the scaler is fit afresh on that
fold's training rows only, the model is trained with early stopping on the fold's validation
tail, registered as ``NAME-fN``, optionally archived and served by TorchServe, and backtested
on the fold's test segment alone. The test segments do not overlap; their returns are
stitched into one out-of-sample series, reported with the deflated Sharpe ratio for the
number of models trained (the per-fold Sharpes give the trials' variance).

Stress: the strategy over named crash windows the data covers with signals (each flagged when
it overlaps the model's training or validation range, where results are in-sample; windows not
covered are skipped with a log line) and over synthetic shocks applied to the model's test
range (a -20 % gap in every symbol; three times the volatility for 60 bars), with the drawdown
and a check of the risk limits from the audit trail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzers.backtest import BacktestResult, CostConfig
from analyzers.metrics import performance
from analyzers.performance import deflated_sharpe
from feeds.errors import ConfigError, DataError
from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.features import WARMUP
from mlmodels.pipeline import train_on_dataset
from mlmodels.registry import ModelCard, ModelRegistry
from mlmodels.splits import Split, WalkForward
from mlmodels.trainer import TrainConfig
from strategies.audit import decisions_frame
from workflows.backtest import MLRunConfig, run_model, save_run

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
    timeframe: str = "1Day",
    serving: str = "inprocess",
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Callable[[str], None] = print,
) -> WalkForwardResult:
    """Train, (serve,) and backtest each fold; see the module docstring."""
    if not name or "/" in name or ":" in name:
        raise ConfigError(f"--name must be non-empty without '/' or ':', got {name!r}")
    reg = ModelRegistry(store_path / "models")
    probe = build_dataset(frames, data_cfg, index)
    splits = _fold_splits(probe, folds, data_cfg, frames)
    rows, parts, cards, results = [], [], [], []
    for k, sp in enumerate(splits, 1):
        t0 = time.perf_counter()
        ds = replace(probe, scaler=None)  # unscaled rows: a fresh scaler per fold
        log(f"fold {k}/{len(splits)}: train to {ds.times[sp.train].max().date()}, "
            f"test {sp.test_start.date()} .. {sp.test_end.date()}")  # fmt: skip
        _, card = train_on_dataset(
            ds, sp, arch, name=f"{name}-f{k}", registry=reg, train_cfg=train_cfg,
            data_cfg=data_cfg, index_name=index_name, timeframe=timeframe,
            work_dir=store_path / "runs" / f"{name}-f{k}",
        )  # fmt: skip
        res, _ = run_model(
            store_path, card.ref, frames, serving=serving, start=None, end=sp.test_end,
            costs=costs, ml=ml, log=log,
        )  # fmt: skip
        cards.append(card)
        results.append(res)
        parts.append(res.returns)
        rows.append(_fold_row(k, card, sp, res, time.perf_counter() - t0))
    stitched = pd.concat(parts).sort_index()
    if stitched.index.has_duplicates:
        raise DataError("walk-forward test segments overlap; this is a bug in the splitter")
    dsr = deflated_sharpe(stitched, [_sharpe(r) for r in parts], n_trials=len(splits))
    return WalkForwardResult(pd.DataFrame(rows).set_index("fold"), stitched, dsr, cards, results)


def _fold_row(
    k: int, card: ModelCard, sp: Split, res: BacktestResult, seconds: float
) -> dict[str, Any]:
    """One row of the folds table (the CLI prints every column but ``seconds``)."""
    s = res.stats
    return {"fold": k, "model": card.ref, "test_start": sp.test_start, "test_end": sp.test_end,
            "return": s.total_return, "sharpe": s.sharpe, "max_drawdown": s.max_drawdown,
            "trades": s.trades, "seconds": seconds}  # fmt: skip


def save_walk_forward(
    store_path: Path, name: str, res: WalkForwardResult, cash: float = CostConfig().cash
) -> tuple[Path, BacktestResult]:
    """Save the stitched out-of-sample run as ``backtests/NAME-walkforward`` (returns, summary
    with the last fold's card, ``folds.csv``); returns the folder and the stitched result.
    Every fold starts from ``cash``, so the stitched final value compounds the fold returns."""
    trades = int(res.folds["trades"].sum())
    perf = performance(res.returns, trades=trades)
    stitched = BacktestResult(
        f"walk-forward {name}", res.returns, cash * (1 + perf.total_return), perf
    )
    run_dir = save_run(store_path, f"{name}-walkforward", [stitched], res.cards[-1])
    res.folds.to_csv(run_dir / "folds.csv")
    return run_dir, stitched


def _sharpe(r: pd.Series) -> float:
    """Per-period Sharpe of one fold's returns (0 when flat or too short)."""
    sd = float(r.std(ddof=1)) if len(r) > 1 else 0.0
    return float(r.mean() / sd) if sd > 1e-12 else 0.0


def _fold_splits(
    ds: WindowDataset, folds: WalkForward, data_cfg: DatasetConfig, frames: Mapping[str, Any]
) -> list[Split]:
    """The folds over ``ds``'s sample times, purged with at least the labels' lookahead."""
    need = data_cfg.labels.lookahead
    if folds.lookahead < need:  # a shorter purge would leak labels into the next segment
        folds = replace(folds, lookahead=need)
    try:
        return list(folds.split(ds.times))
    except DataError as err:
        bars = max(len(f) for f in frames.values())
        raise DataError(
            f"{err} (the folds count the bars that have features and labels: {bars} stored bars "
            f"less the feature warm-up and window of {WARMUP + data_cfg.window - 1} and the label "
            f"lookahead of {need}); use fewer --folds, a smaller --test-bars or more history"
        ) from err


def gap_shock(frame: pd.DataFrame, at: Any, size: float = -0.2) -> pd.DataFrame:
    """Every price from bar ``at`` on scaled by ``1 + size``: a gap at ``at``'s open."""
    if not size > -1:
        raise ConfigError(f"gap size must be > -1 (prices stay positive), got {size}")
    out = frame.copy()
    cols = ["open", "high", "low", "close"]
    out.loc[out.index >= _at(frame, at), cols] *= 1 + size
    return out


def vol_shock(frame: pd.DataFrame, at: Any, bars: int = 60, factor: float = 3.0) -> pd.DataFrame:
    """Close-to-close log returns of the ``bars`` bars from ``at`` on scaled by ``factor``
    around their mean; each bar keeps its shape (open/high/low relative to its close), bars
    before ``at`` are unchanged and later prices follow the new level."""
    if bars < 1 or factor < 0:
        raise ConfigError(f"vol_shock needs bars >= 1 and factor >= 0, got {bars} and {factor}")
    out = frame.copy()
    close = out["close"].to_numpy(dtype=np.float64)
    i = max(int(out.index.searchsorted(_at(frame, at))), 1)  # bar 0 has no return to scale
    if i >= len(close):
        return out
    r = np.diff(np.log(close[i - 1 :]))  # r[k] is bar i + k's return
    seg = r[:bars]
    r[:bars] = seg.mean() + factor * (seg - seg.mean())
    new = close.copy()
    new[i:] = close[i - 1] * np.exp(np.cumsum(r))
    ratio = new / close
    for c in ("open", "high", "low", "close"):
        out[c] = out[c].to_numpy() * ratio
    return out


def _at(frame: pd.DataFrame, at: Any) -> pd.Timestamp:
    ts = pd.Timestamp(at)
    tz = getattr(frame.index, "tz", None)
    if ts.tzinfo is None and tz is not None:
        return ts.tz_localize(tz)
    return ts


def limits_held(result: BacktestResult, ml: MLRunConfig) -> dict[str, bool]:
    """Check the risk limits against the run's audit trail: no target beyond the position cap;
    while the daily stop or the drawdown halt is in force, no target beyond (or across) the
    weight held before the decision."""
    a = decisions_frame(result.strategy.audit)
    if a.empty:
        return {"position": True, "daily_stop": True, "drawdown_halt": True}
    eps = 1e-9
    no_entry = (a["target"].abs() <= a["weight"].abs() + eps) & (a["target"] * a["weight"] >= -eps)
    state = a["risk_state"].fillna("").astype(str)
    stopped = state.str.contains("daily-stop")
    halted = state.str.contains("drawdown") & (ml.risk.drawdown_action == "halt")
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
    if not frames:
        raise ConfigError("stress needs at least one symbol's frame; pass --symbols A,B,...")
    ml = ml or MLRunConfig()  # serving_failure="abort": never a stress result without signals
    card = ModelRegistry(store_path / "models").card(ref)

    def run(name: str, fr: Mapping[str, pd.DataFrame], lo: Any, hi: Any, seen: bool) -> None:
        res, _ = run_model(
            store_path, card.ref, fr, start=lo, end=hi, costs=costs, ml=ml, log=log,
            allow_in_sample=True,
        )  # fmt: skip
        rows.append({"scenario": name, "start": str(lo)[:10], "end": str(hi)[:10],
                     "in_training_range": seen, "return": res.stats.total_return,
                     "max_drawdown": res.stats.max_drawdown, "trades": res.stats.trades,
                     **{f"limit_{k}": v for k, v in limits_held(res, ml).items()}})  # fmt: skip

    rows: list[dict[str, Any]] = []
    for name, lo, hi in _covered_crashes(frames, card.window, log):
        run(name, frames, lo, hi, _overlaps_fit(card, lo, hi))
    test = card.date_ranges.get("test")
    if test:
        t0, t1 = pd.Timestamp(test[0]), pd.Timestamp(test[1])
        mid = t0 + (t1 - t0) / 2
        run("gap -20 % (all symbols)", {s: gap_shock(f, mid) for s, f in frames.items()},
            t0, t1, False)  # fmt: skip
        run("volatility x3 for 60 bars", {s: vol_shock(f, mid) for s, f in frames.items()},
            t0, t1, False)  # fmt: skip
    if not rows:
        raise DataError(
            f"no stress scenario could run: the data covers no crash window and {card.ref}'s "
            "card has no test range for the synthetic shocks"
        )
    return pd.DataFrame(rows)


def _covered_crashes(
    frames: Mapping[str, pd.DataFrame], window: int, log: Callable[[str], None]
) -> list[tuple[str, pd.Timestamp, pd.Timestamp]]:
    """The crash windows inside the data's span with signals (after the features' warm-up
    and the model's window); the others are logged as skipped."""
    warm = WARMUP + window - 1
    starts = [f.index[warm] for f in frames.values() if len(f) > warm]
    first = min(starts) if starts else None
    last = max(f.index[-1] for f in frames.values())
    out = []
    for name, (a, b) in CRASHES.items():
        lo, hi = pd.Timestamp(a, tz="UTC"), pd.Timestamp(b, tz="UTC")
        if first is None or lo < first or hi > last:
            span = f"{first.date()} .. {last.date()}" if first is not None else "none"
            log(f"  {name}: not covered by the data (bars with signals: {span}), skipped")
            continue
        out.append((name, lo, hi))
    return out


def _overlaps_fit(card: ModelCard, lo: pd.Timestamp, hi: pd.Timestamp) -> bool:
    """Whether ``[lo, hi]`` overlaps the data the model was fit or selected on (train, val)."""
    spans = [card.date_ranges.get(k) or [] for k in ("train", "val")]
    return any(len(s) == 2 and lo <= pd.Timestamp(s[1]) and hi >= pd.Timestamp(s[0]) for s in spans)
