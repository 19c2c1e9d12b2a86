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

Both are recorded in the run registry by :func:`run_walk_forward` and :func:`run_stress`,
which check the request first (a refused one records nothing and trains nothing). A
``walkforward`` run records a trial per fold (its train, validation and test ranges, the
model's config, its results), links each fold's model to the run, and keeps the stitched
returns (``returns.parquet``), ``summary.json`` and ``folds.csv``; a ``stress`` run records a
trial per scenario and keeps ``stress.csv``. :func:`walk_forward` and :func:`stress` are the
same work without a record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from analyzers.backtest import BacktestResult, CostConfig
from analyzers.metrics import performance
from analyzers.performance import deflated_sharpe
from core.config import DataConfig
from core.errors import ConfigError, DataError
from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.features import WARMUP
from mlmodels.nets.model import get_architecture
from mlmodels.pipeline import train_on_dataset
from mlmodels.registry import ModelCard, ModelRegistry
from mlmodels.splits import Split, WalkForward
from mlmodels.trainer import TrainConfig
from strategies.audit import limits_held as audit_limits_held
from workflows.backtest import SERVING, MLRunConfig, run_model
from workflows.reports import copy_out, tearsheet_for_run, write_results
from workflows.runs import Run, RunRegistry
from workflows.train import (
    check_model_name,
    check_symbols,
    checkpoint_dir,
    link_training_run,
    model_inputs,
    read_stored,
)

Log = Callable[[str], None]

CRASHES = {
    "dot-com 2000-2002": ("2000-03-01", "2002-10-31"),
    "GFC 2008-2009": ("2008-09-01", "2009-03-31"),
    "COVID March 2020": ("2020-02-19", "2020-04-30"),
}


@dataclass(frozen=True)
class _Recorder:
    """The run a recorded walk-forward or stress writes to as it goes."""

    registry: RunRegistry
    run: Run


# -- walk-forward ---------------------------------------------------------------------------


@dataclass
class WalkForwardResult:
    """Per-fold rows, the stitched out-of-sample returns, and the deflated Sharpe."""

    folds: pd.DataFrame
    returns: pd.Series
    dsr: dict[str, float]
    cards: list[ModelCard] = field(default_factory=list)
    results: list[BacktestResult] = field(default_factory=list)


@dataclass(frozen=True)
class WalkForwardPlan:
    """A checked walk-forward: the unscaled dataset, its folds, and how to train each."""

    name: str
    arch: str
    probe: WindowDataset
    splits: list[Split]
    train_cfg: TrainConfig
    data_cfg: DatasetConfig
    index_name: str | None = None
    timeframe: str = "1Day"
    serving: str = "inprocess"
    costs: CostConfig | None = None
    ml: MLRunConfig | None = None


def plan_walk_forward(
    frames: Mapping[str, pd.DataFrame],
    *,
    name: str,
    arch: str,
    folds: WalkForward,
    train_cfg: TrainConfig,
    data_cfg: DatasetConfig,
    index: pd.DataFrame | None = None,
    **options: Any,
) -> WalkForwardPlan:
    """Check the name and preset, build the dataset and cut its folds (nothing is written);
    ``options`` are the plan's other fields (index_name, timeframe, serving, costs, ml)."""
    check_model_name(name)
    get_architecture(arch)
    probe = build_dataset(frames, data_cfg, index)
    splits = _fold_splits(probe, folds, data_cfg, frames)
    return WalkForwardPlan(name, arch, probe, splits, train_cfg, data_cfg, **options)


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
    log: Log = print,
) -> WalkForwardResult:
    """Train, (serve,) and backtest each fold; see the module docstring (records no run)."""
    plan = plan_walk_forward(
        frames, name=name, arch=arch, folds=folds, train_cfg=train_cfg, data_cfg=data_cfg,
        index=index, index_name=index_name, timeframe=timeframe, serving=serving, costs=costs,
        ml=ml,
    )  # fmt: skip
    return run_folds(store_path, frames, plan, log)


def run_folds(
    store_path: Path,
    frames: Mapping[str, pd.DataFrame],
    plan: WalkForwardPlan,
    log: Log = print,
    recorder: _Recorder | None = None,
) -> WalkForwardResult:
    """Every fold of a checked plan, then the stitched returns and their deflated Sharpe."""
    rows, cards, results = [], [], []
    for k, sp in enumerate(plan.splits, 1):
        card, res, row = _fold(store_path, frames, plan, k, sp, log, recorder)
        cards.append(card)
        results.append(res)
        rows.append(row)
    parts = [r.returns for r in results]
    stitched = pd.concat(parts).sort_index()
    if stitched.index.has_duplicates:
        raise DataError("walk-forward test segments overlap; this is a bug in the splitter")
    dsr = deflated_sharpe(stitched, [_sharpe(r) for r in parts], n_trials=len(plan.splits))
    return WalkForwardResult(pd.DataFrame(rows).set_index("fold"), stitched, dsr, cards, results)


def _fold(
    store_path: Path,
    frames: Mapping[str, pd.DataFrame],
    plan: WalkForwardPlan,
    k: int,
    sp: Split,
    log: Log,
    recorder: _Recorder | None,
) -> tuple[ModelCard, BacktestResult, dict[str, Any]]:
    """Train fold ``k`` (a fresh scaler), register and link its model, backtest its test."""
    t0 = time.perf_counter()
    ds = replace(plan.probe, scaler=None)  # unscaled rows: a fresh scaler per fold
    log(f"fold {k}/{len(plan.splits)}: train to {ds.times[sp.train].max().date()}, "
        f"test {sp.test_start.date()} .. {sp.test_end.date()}")  # fmt: skip
    name = f"{plan.name}-f{k}"
    _, card = train_on_dataset(
        ds, sp, plan.arch, name=name, registry=ModelRegistry(store_path / "models"),
        train_cfg=plan.train_cfg, data_cfg=plan.data_cfg, index_name=plan.index_name,
        timeframe=plan.timeframe, work_dir=checkpoint_dir(store_path, name),
        training_run=recorder.run.id if recorder else None,
    )  # fmt: skip
    if recorder is not None:
        recorder.registry.link_model(card.ref, recorder.run.id)
    res, _ = run_model(
        store_path, card.ref, frames, serving=plan.serving, start=None, end=sp.test_end,
        costs=plan.costs, ml=plan.ml, log=log,
    )  # fmt: skip
    row = _fold_row(k, card, sp, res, time.perf_counter() - t0)
    if recorder is not None:
        recorder.run.record_trials([_fold_trial(card, row)])
    return card, res, row


def _fold_row(
    k: int, card: ModelCard, sp: Split, res: BacktestResult, seconds: float
) -> dict[str, Any]:
    """One row of the folds table (the CLI prints every column but ``seconds``)."""
    s = res.stats
    return {"fold": k, "model": card.ref, "test_start": sp.test_start, "test_end": sp.test_end,
            "return": s.total_return, "sharpe": s.sharpe, "max_drawdown": s.max_drawdown,
            "trades": s.trades, "seconds": seconds}  # fmt: skip


def _fold_trial(card: ModelCard, row: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration fold ``row`` tried (its ranges, the model's config) and its results."""
    ranges = {f"{k}_range": card.date_ranges.get(k) for k in ("train", "val", "test")}
    return {**row, **ranges, "arch": card.arch, "model_config": card.model_config,
            "window": card.window}  # fmt: skip


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


@dataclass(frozen=True, kw_only=True)
class WalkForwardConfig(DataConfig):
    """One walk-forward request as plain values (``btml walkforward``'s options): fold models
    register as ``NAME-fK``; ``tearsheet`` asks for ``tearsheet.html`` in the run's folder."""

    symbols: tuple[str, ...]
    name: str = "wf"
    arch: str = "tiny"
    folds: WalkForward = field(default_factory=lambda: WalkForward(n_splits=3, test_size=252))
    index: str | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, patience=5))
    window: int = 30
    serving: str = "inprocess"
    timeframe: str = "1Day"
    costs: CostConfig = field(default_factory=CostConfig)
    ml: MLRunConfig = field(default_factory=MLRunConfig)
    tearsheet: bool = False

    def __post_init__(self) -> None:
        check_symbols(self.symbols)
        check_model_name(self.name)
        if self.serving not in SERVING:
            raise ConfigError(f"serving must be one of {', '.join(SERVING)}, got {self.serving!r}")
        DatasetConfig(window=self.window)


@dataclass(frozen=True)
class WalkForwardRunResult:
    """A recorded walk-forward: its run, the resolved request, the folds, the stitched run."""

    run_id: str
    run_dir: Path
    config: WalkForwardConfig
    result: WalkForwardResult
    stitched: BacktestResult
    tearsheet: Path | None = None


def run_walk_forward(
    store: str | os.PathLike[str],
    config: WalkForwardConfig,
    *,
    tearsheet_to: str | os.PathLike[str] | None = None,
    log: Log = print,
    db_url: str | None = None,
) -> WalkForwardRunResult:
    """Run and record a walk-forward (see the module docstring); ``tearsheet_to`` also copies
    the tearsheet out of the run's folder. A refused request raises before anything is
    written or trained."""
    store_path = Path(store)
    threads = config.train.threads or torch.get_num_threads()
    cfg = replace(config, train=replace(config.train, threads=threads))
    frames, index, inputs = read_stored(store_path, cfg.symbols, cfg.timeframe, cfg.index)
    plan = plan_walk_forward(
        frames, name=cfg.name, arch=cfg.arch, folds=cfg.folds, train_cfg=cfg.train,
        data_cfg=DatasetConfig(window=cfg.window, skip_short=True), index=index,
        index_name=cfg.index, timeframe=cfg.timeframe, serving=cfg.serving, costs=cfg.costs,
        ml=cfg.ml,
    )  # fmt: skip
    with (
        RunRegistry(store_path, db_url) as registry,
        registry.start("walkforward", cfg.to_dict(), inputs=inputs) as run,
    ):
        log(f"run {run.id}")
        res = run_folds(store_path, frames, plan, log, _Recorder(registry, run))
        stitched = _save_walk_forward(run, cfg, res)
        sheet = None
        if cfg.tearsheet:
            sheet = tearsheet_for_run(run.dir, run.add_artifact("tearsheet.html"))
            sheet = copy_out(sheet, tearsheet_to)
    return WalkForwardRunResult(run.id, run.dir, cfg, res, stitched, sheet)


def _save_walk_forward(run: Run, cfg: WalkForwardConfig, res: WalkForwardResult) -> BacktestResult:
    """The stitched returns, ``summary.json`` (with the last fold's card) and ``folds.csv``
    in the run's folder, and the run's metrics; returns the stitched result."""
    perf = performance(res.returns, trades=int(res.folds["trades"].sum()))
    value = cfg.costs.cash * (1 + perf.total_return)  # every fold starts from the cash
    stitched = BacktestResult(f"walk-forward {cfg.name}", res.returns, value, perf)
    for name in write_results(run.dir, [stitched], res.cards[-1]):
        run.add_artifact(name)
    res.folds.to_csv(run.add_artifact("folds.csv"))
    d = res.dsr
    run.log_metrics({"final_value": stitched.final_value, **stitched.stats.as_row(),
                     "bars": len(res.returns), "folds": len(res.folds),
                     "deflated_sharpe": d["dsr"], "sr0": d["sr0"]})  # fmt: skip
    return stitched


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


# -- stress ---------------------------------------------------------------------------------


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
