"""``btml stress``: the strategy over crash windows and synthetic shocks.

The model's strategy over the named crash windows the data covers with signals (each flagged
when it overlaps the model's training or validation range, where results are in-sample; windows
not covered are skipped with a log line) and over synthetic shocks applied to the model's test
range (a -20 % gap in every symbol; three times the volatility for 60 bars), with the drawdown
and a check of the risk limits from the audit trail.

:func:`run_stress` records it in the run registry after checking the request (a refused one
records nothing): a trial per scenario, the training run of the model as its parent, and
``stress.csv``. :func:`stress` is the same work without a record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzers.backtest import BacktestResult, CostConfig
from core.config import DataConfig
from core.errors import ConfigError, DataError
from mlmodels.features import WARMUP
from mlmodels.registry import ModelCard, ModelRegistry
from strategies.audit import limits_held as audit_limits_held
from workflows.backtest import Log, MLRunConfig, run_model
from workflows.runs import Run, RunRegistry
from workflows.train import check_symbols, link_training_run, model_inputs, read_stored

CRASHES = {
    "dot-com 2000-2002": ("2000-03-01", "2002-10-31"),
    "GFC 2008-2009": ("2008-09-01", "2009-03-31"),
    "COVID March 2020": ("2020-02-19", "2020-04-30"),
}

# -- shocks and risk limits ----------------------------------------------------------------


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
    weight held before the decision (read from the rules' structured outcomes, judged
    against ``ml.risk``; see ``strategies.audit.limits_held``)."""
    held = audit_limits_held(result.strategy.audit, ml.risk)
    return {
        "position": held.get("position-limit", True),
        "daily_stop": held.get("daily-loss-stop", True),
        "drawdown_halt": held.get("drawdown-halt", True),
    }


# -- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One stress scenario: what it does (``shock``), the bars it trades (``frames`` from
    ``start`` to ``end``) and whether they overlap the model's training or validation."""

    name: str
    shock: dict[str, Any]
    frames: Mapping[str, pd.DataFrame]
    start: pd.Timestamp
    end: pd.Timestamp
    in_training_range: bool


def plan_stress(
    store_path: Path, ref: str, frames: Mapping[str, pd.DataFrame], log: Log = print
) -> tuple[ModelCard, list[Scenario]]:
    """Model ``ref``'s card and the scenarios the data allows (nothing is run or written)."""
    if not frames:
        raise ConfigError("stress needs at least one symbol's frame; pass --symbols A,B,...")
    card = ModelRegistry(store_path / "models").card(ref)
    out = [Scenario(name, {"kind": "crash"}, frames, lo, hi, _overlaps_fit(card, lo, hi))
           for name, lo, hi in _covered_crashes(frames, card.window, log)]  # fmt: skip
    out += _shocks(card, frames)
    if not out:
        raise DataError(
            f"no stress scenario could run: the data covers no crash window and {card.ref}'s "
            "card has no test range for the synthetic shocks"
        )
    return card, out


def _shocks(card: ModelCard, frames: Mapping[str, pd.DataFrame]) -> list[Scenario]:
    """The synthetic shocks at the middle of the model's test range (none without one)."""
    test = card.date_ranges.get("test")
    if not test:
        return []
    t0, t1 = pd.Timestamp(test[0]), pd.Timestamp(test[1])
    mid = t0 + (t1 - t0) / 2
    gap = {"kind": "gap", "at": mid, "size": -0.2}
    vol = {"kind": "volatility", "at": mid, "bars": 60, "factor": 3.0}
    return [
        Scenario("gap -20 % (all symbols)", gap, {s: gap_shock(f, mid) for s, f in frames.items()},
                 t0, t1, False),
        Scenario("volatility x3 for 60 bars", vol,
                 {s: vol_shock(f, mid) for s, f in frames.items()}, t0, t1, False),
    ]  # fmt: skip


def stress(
    store_path: Path,
    ref: str,
    frames: Mapping[str, pd.DataFrame],
    *,
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Log = print,
) -> pd.DataFrame:
    """One row per scenario: period, in-sample flag, return, max drawdown, trades, limits held
    (records no run: :func:`run_stress` does)."""
    card, scenarios = plan_stress(store_path, ref, frames, log)
    return run_scenarios(store_path, card, scenarios, costs=costs, ml=ml, log=log)


def run_scenarios(
    store_path: Path,
    card: ModelCard,
    scenarios: list[Scenario],
    *,
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Log = print,
    run: Run | None = None,
) -> pd.DataFrame:
    """The rows of :func:`stress`; each scenario is recorded as a trial of ``run``, if given."""
    ml = ml or MLRunConfig()  # serving_failure="abort": never a stress result without signals
    rows = []
    for sc in scenarios:
        rows.append(_stress_row(store_path, card, sc, costs, ml, log))
        if run is not None:
            run.record_trials([{**rows[-1], "shock": sc.shock}])
    return pd.DataFrame(rows)


def _stress_row(
    store_path: Path, card: ModelCard, sc: Scenario, costs: CostConfig | None, ml: MLRunConfig,
    log: Log,
) -> dict[str, Any]:  # fmt: skip
    res, _ = run_model(
        store_path, card.ref, sc.frames, start=sc.start, end=sc.end, costs=costs, ml=ml, log=log,
        allow_in_sample=True,
    )  # fmt: skip
    return {"scenario": sc.name, "start": str(sc.start)[:10], "end": str(sc.end)[:10],
            "in_training_range": sc.in_training_range, "return": res.stats.total_return,
            "max_drawdown": res.stats.max_drawdown, "trades": res.stats.trades,
            **{f"limit_{k}": v for k, v in limits_held(res, ml).items()}}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class StressConfig(DataConfig):
    """One stress request as plain values (``btml stress``'s options)."""

    model: str
    symbols: tuple[str, ...]
    timeframe: str = "1Day"
    costs: CostConfig = field(default_factory=CostConfig)
    ml: MLRunConfig = field(default_factory=MLRunConfig)

    def __post_init__(self) -> None:
        check_symbols(self.symbols)


@dataclass(frozen=True)
class StressRunResult:
    """A recorded stress: its run, the resolved request and one row per scenario."""

    run_id: str
    run_dir: Path
    config: StressConfig
    table: pd.DataFrame

    @property
    def limits_breached(self) -> int:
        """How many scenarios breached a risk limit (a ``limit_`` column is False)."""
        return int(self.table.filter(like="limit_").eq(False).any(axis=1).sum())


def run_stress(
    store: str | os.PathLike[str], config: StressConfig, *, log: Log = print,
    db_url: str | None = None,
) -> StressRunResult:  # fmt: skip
    """Run and record :func:`stress` (a refused request raises before anything is written)."""
    store_path = Path(store)
    frames, _, inputs = read_stored(store_path, config.symbols, config.timeframe)
    card, scenarios = plan_stress(store_path, config.model, frames, log)
    cfg = replace(config, model=card.ref)
    inputs |= model_inputs(store_path, card)
    with (
        RunRegistry(store_path, db_url) as registry,
        registry.start("stress", cfg.to_dict(), inputs=inputs) as run,
    ):
        log(f"run {run.id}")
        link_training_run(run, card, log)
        table = run_scenarios(store_path, card, scenarios, costs=cfg.costs, ml=cfg.ml, log=log,
                              run=run)  # fmt: skip
        table.to_csv(run.add_artifact("stress.csv"), index=False)
        result = StressRunResult(run.id, run.dir, cfg, table)
        run.log_metrics({"scenarios": len(table), "worst_return": table["return"].min(),
                         "worst_max_drawdown": table["max_drawdown"].min(),
                         "trades": int(table["trades"].sum()),
                         "limits_breached": result.limits_breached})  # fmt: skip
    return result


def _covered_crashes(
    frames: Mapping[str, pd.DataFrame], window: int, log: Log
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
