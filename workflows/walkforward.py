"""``btml walkforward``: out-of-sample evidence, one model per fold.

``mlmodels.splits.WalkForward`` folds over the bars that have features and labels, purged by
at least the labels' lookahead. Per fold the scaler is fit afresh on that fold's training rows
only, the model is trained with early stopping on the fold's validation tail, registered as
``NAME-fN``, optionally archived and served by TorchServe, and backtested on the fold's test
segment alone, beside buy-and-hold of the same symbols over the same bars at the same costs.
The test segments do not overlap; their returns are stitched into one out-of-sample series;
the buy-and-hold returns are stitched the same way and are the benchmark of the stitched run
(its tearsheet, its ``buyhold_`` metrics). Each fold's network outputs on its test samples are
stitched too, into one out-of-sample report per head against the naive baselines, and the
folds' activity into the stitched run's (:mod:`workflows.walkforward_report`). With
``ml.entry_rule="auto"`` each fold chooses its entry rule on its own validation range
(``entry_*`` in its row).

The folds of a walk-forward are one configuration tried, not several: alone,
:func:`walk_forward` reports the stitched series' deflated Sharpe ratio for one trial (the
probabilistic Sharpe ratio against 0). :func:`run_walk_forward` records the walk-forward in the
run registry, after checking the request (a refused one records nothing and trains nothing),
and deflates by every configuration tried on the same data (the registry's, see
:mod:`workflows.runs_trials`, and its own). With ``seeds`` > 1 it trains and tests the whole
walk-forward once per seed (``train.seed``, ``train.seed + 1``, ...; fold models then have a
version per seed), each seed a trial: the first seed's is the headline result, the others give
the spread of the key metrics (``seeds_{metric}_{mean,std,min,max}``) and the PBO of picking a
seed. It records a trial per seed (the configuration, and under ``result`` its stitched
Sharpe, return, drawdown, trades and each fold's ranges, model and results), each fold's model
linked to the run, and in the run's folder the stitched returns (``returns.parquet``: the
walk-forward's column, then ``buy-and-hold``), ``summary.json``, ``folds.csv``,
``oos_report.json`` and, with several seeds, ``seeds.csv``. An index built from today's
constituents carries its survivorship warning into the log, the metrics (``warnings``),
``summary.json`` and the tearsheet.

The folds are independent tasks (:class:`FoldTask`, :func:`run_fold`): ``executor`` (see
:mod:`workflows.executors`) runs them one after another here (the default), in worker
processes or on Ray, with the same results; each fold seeds its own training.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analyzers.backtest import BacktestResult, CostConfig
from analyzers.metrics import performance
from analyzers.overfitting import deflated_sharpe
from core.config import DataConfig
from core.errors import ConfigError, DataError
from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.features import WARMUP
from mlmodels.nets.model import ModelConfig, get_architecture
from mlmodels.pipeline import train_on_dataset
from mlmodels.registry import ModelCard, ModelRegistry
from mlmodels.splits import Split, WalkForward
from mlmodels.trainer import TrainConfig
from workflows.backtest import (
    SERVING,
    Log,
    MLRunConfig,
    clip_range,
    run_baseline,
    run_model,
    summary_metrics,
)
from workflows.executors import Executor, ExecutorConfig, using
from workflows.reports import BUY_AND_HOLD, copy_out, tearsheet_for_run, write_results
from workflows.runs import Run, RunRegistry
from workflows.runs_trials import Selection, assess, trial_row
from workflows.train import check_model_name, check_symbols, checkpoint_dir, read_stored
from workflows.walkforward_report import (
    SEED_METRICS,
    FoldPredictions,
    fold_predictions,
    index_warnings,
    record_report,
    seed_spread,
    seed_table,
    stitch,
    stitched_report,
    stitched_result,
)


@dataclass(frozen=True)
class _Recorder:
    """The run a recorded walk-forward writes to as it goes."""

    registry: RunRegistry
    run: Run


@dataclass
class WalkForwardResult:
    """Per-fold rows, the stitched out-of-sample returns, their deflated Sharpe (for one
    trial, unless recorded: see the module docstring), buy-and-hold over the same test bars:
    per fold (``benchmarks``) and stitched (``benchmark``), and the per-head report over every
    fold's test samples (``report``, from each fold's ``predictions``:
    :mod:`workflows.walkforward_report`)."""

    folds: pd.DataFrame
    returns: pd.Series
    dsr: dict[str, float]
    cards: list[ModelCard] = field(default_factory=list)
    results: list[BacktestResult] = field(default_factory=list)
    benchmarks: list[BacktestResult] = field(default_factory=list)
    benchmark: pd.Series = field(default_factory=lambda: pd.Series(dtype="float64"))
    report: dict[str, Any] | None = None
    predictions: list[FoldPredictions] = field(default_factory=list)


@dataclass(frozen=True)
class WalkForwardPlan:
    """A checked walk-forward: the unscaled dataset, its folds, and how to train each
    (``arch``: a preset's name, or a preset's config with changed sizes or dropout)."""

    name: str
    arch: str | ModelConfig
    probe: WindowDataset
    splits: list[Split]
    train_cfg: TrainConfig
    data_cfg: DatasetConfig
    index_name: str | None = None
    timeframe: str = "1Day"
    serving: str = "inprocess"
    costs: CostConfig | None = None
    ml: MLRunConfig | None = None


@dataclass(frozen=True)
class FoldOutcome:
    """What one fold made: its model's card, its backtest, buy-and-hold beside it, its row,
    its network's outputs on its test and validation samples."""

    card: ModelCard
    result: BacktestResult
    benchmark: BacktestResult
    row: dict[str, Any]
    predictions: FoldPredictions | None = None


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
    executor: Executor | ExecutorConfig | None = None,
) -> WalkForwardResult:
    """Train, (serve,) and backtest each fold on ``executor`` (default: here, one after
    another); see the module docstring (records no run)."""
    plan = plan_walk_forward(
        frames, name=name, arch=arch, folds=folds, train_cfg=train_cfg, data_cfg=data_cfg,
        index=index, index_name=index_name, timeframe=timeframe, serving=serving, costs=costs,
        ml=ml,
    )  # fmt: skip
    with using(executor) as ex:
        return run_folds(store_path, frames, plan, log, executor=ex)


def run_folds(
    store_path: Path,
    frames: Mapping[str, pd.DataFrame],
    plan: WalkForwardPlan,
    log: Log = print,
    recorder: _Recorder | None = None,
    executor: Executor | None = None,
) -> WalkForwardResult:
    """Every fold of a checked plan (on ``executor``, default here one after another), then
    the stitched returns (the walk-forward's and buy-and-hold's), the deflated Sharpe of
    the walk-forward's as one trial (its folds are one configuration) and the per-head report
    over every fold's test samples."""
    run_id = recorder.run.id if recorder else None
    tasks = [FoldTask(store_path, frames, plan, k, sp, run_id)
             for k, sp in enumerate(plan.splits, 1)]  # fmt: skip
    with using(executor) as ex:
        if ex.local:
            tasks = [replace(t, log=log, in_process=True) for t in tasks]
        else:
            for t in tasks:
                log(fold_line(t))
        done = ex.map(run_fold, tasks)
    if recorder is not None:
        for f in done:
            recorder.registry.link_model(f.card.ref, recorder.run.id)
    stitched = stitch([f.result.returns for f in done])
    dsr = deflated_sharpe(stitched)
    preds = [f.predictions for f in done if f.predictions is not None]
    lag = plan.data_cfg.labels.risk_horizon
    return WalkForwardResult(
        pd.DataFrame([f.row for f in done]).set_index("fold"), stitched, dsr,
        [f.card for f in done], [f.result for f in done], [f.benchmark for f in done],
        stitch([f.benchmark.returns for f in done]),
        stitched_report(plan.probe, preds, vol_lag=lag) if preds else None, preds,
    )  # fmt: skip


@dataclass(frozen=True)
class FoldTask:
    """One fold to run (:func:`run_fold`), as plain picklable values: fold ``k`` of ``plan``,
    its model made for run ``run_id`` (if recorded). Where it runs in this process, ``log``
    gets its lines (None: quiet) and ``in_process`` keeps the finished backtrader strategies
    in the results (they do not travel between processes)."""

    store_path: Path
    frames: Mapping[str, pd.DataFrame]
    plan: WalkForwardPlan
    k: int
    split: Split
    run_id: str | None = None
    log: Log | None = None
    in_process: bool = False


def fold_line(task: FoldTask) -> str:
    """The log line of a fold starting: its training end and its test segment."""
    sp, times = task.split, task.plan.probe.times
    return (f"fold {task.k}/{len(task.plan.splits)}: train to {times[sp.train].max().date()}, "
            f"test {sp.test_start.date()} .. {sp.test_end.date()}")  # fmt: skip


def run_fold(task: FoldTask) -> FoldOutcome:
    """Train fold ``task.k`` (a fresh scaler), register its model, keep its outputs on the
    fold's test and validation samples, backtest its test segment, and buy-and-hold over the
    same bars (its model is linked to the run by the caller)."""
    t0 = time.perf_counter()
    plan, sp, k, store_path = task.plan, task.split, task.k, task.store_path
    log = task.log or (lambda _: None)
    log(fold_line(task))
    ds = replace(plan.probe, scaler=None)  # unscaled rows: a fresh scaler per fold
    name = f"{plan.name}-f{k}"
    model, card = train_on_dataset(
        ds, sp, plan.arch, name=name, registry=ModelRegistry(store_path / "models"),
        train_cfg=plan.train_cfg, data_cfg=plan.data_cfg, index_name=plan.index_name,
        timeframe=plan.timeframe, work_dir=checkpoint_dir(store_path, name),
        training_run=task.run_id,
    )  # fmt: skip
    preds = fold_predictions(model, ds, sp)  # ds is scaled as the model was trained
    res, _ = run_model(
        store_path, card.ref, task.frames, serving=plan.serving, start=None, end=sp.test_end,
        costs=plan.costs, ml=plan.ml, log=log,
    )  # fmt: skip
    span = clip_range(task.frames, res.returns.index[0], res.returns.index[-1])
    bench = run_baseline("buyhold", span, plan.costs)
    if not task.in_process:
        res, bench = replace(res, strategy=None), replace(bench, strategy=None)
    row = _fold_row(k, card, sp, res, time.perf_counter() - t0)
    return FoldOutcome(card, res, bench, row, preds)


def _fold_row(
    k: int, card: ModelCard, sp: Split, res: BacktestResult, seconds: float
) -> dict[str, Any]:
    """One row of the folds table (the CLI prints every column but ``seconds``)."""
    s = res.stats
    chosen = {k: v for k, v in res.metrics.items() if k.startswith("entry_")}  # rule "auto"
    return {"fold": k, "model": card.ref, "test_start": sp.test_start, "test_end": sp.test_end,
            "return": s.total_return, "sharpe": s.sharpe, "max_drawdown": s.max_drawdown,
            "trades": s.trades, "seconds": seconds, **chosen}  # fmt: skip


def _fold_trial(card: ModelCard, row: Mapping[str, Any]) -> dict[str, Any]:
    """What fold ``row`` did: its ranges, its model and the model's config, its results."""
    ranges = {f"{k}_range": card.date_ranges.get(k) for k in ("train", "val", "test")}
    return {**row, **ranges, "arch": card.arch, "model_config": card.model_config,
            "window": card.window}  # fmt: skip


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


# -- the recorded walk-forward ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WalkForwardConfig(DataConfig):
    """One walk-forward request as plain values (``btml walkforward``'s options): fold models
    register as ``NAME-fK``; ``tearsheet`` asks for ``tearsheet.html`` in the run's folder;
    ``seeds`` > 1 repeats it with ``train.seed``, ``train.seed + 1``, ... (1 to 100)."""

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
    seeds: int = 1

    def __post_init__(self) -> None:
        check_symbols(self.symbols)
        check_model_name(self.name)
        if self.serving not in SERVING:
            raise ConfigError(f"serving must be one of {', '.join(SERVING)}, got {self.serving!r}")
        if not 1 <= self.seeds <= 100:
            raise ConfigError(f"seeds must be in [1, 100], got {self.seeds}")
        DatasetConfig(window=self.window)


@dataclass(frozen=True)
class WalkForwardRunResult:
    """A recorded walk-forward: its run, the resolved request, the folds and stitched run of
    the first seed, every seed's result (``seeds``, the first is ``result``) and, with several,
    their table (``seed_table``, a row per seed), the selection statistics (``selection``:
    the trials counted, each seed's deflated Sharpe, the PBO across seeds) and the warnings
    every report of the run carries (survivorship of its index)."""

    run_id: str
    run_dir: Path
    config: WalkForwardConfig
    result: WalkForwardResult
    stitched: BacktestResult
    tearsheet: Path | None = None
    seeds: tuple[WalkForwardResult, ...] = ()
    selection: Selection | None = None
    seed_table: pd.DataFrame | None = None
    warnings: tuple[str, ...] = ()


def run_walk_forward(
    store: str | os.PathLike[str],
    config: WalkForwardConfig,
    *,
    tearsheet_to: str | os.PathLike[str] | None = None,
    log: Log = print,
    db_url: str | None = None,
    executor: Executor | ExecutorConfig | None = None,
) -> WalkForwardRunResult:
    """Run and record a walk-forward (see the module docstring) in the registry at ``db_url``
    (default: the store's SQLite), its folds on ``executor`` (default: here, one after
    another); ``tearsheet_to`` also copies the tearsheet out of the run's folder. A refused
    request raises before anything is written or trained. The warnings (an index of today's
    constituents) are logged, and kept in the metrics (``warnings``), ``summary.json`` and
    the tearsheet."""
    store_path = Path(store)
    cfg = replace(config, train=replace(config.train, threads=train_threads(config, executor)))
    frames, index, inputs = read_stored(store_path, cfg.symbols, cfg.timeframe, cfg.index)
    plan = plan_walk_forward(
        frames, name=cfg.name, arch=cfg.arch, folds=cfg.folds, train_cfg=cfg.train,
        data_cfg=DatasetConfig(window=cfg.window, skip_short=True), index=index,
        index_name=cfg.index, timeframe=cfg.timeframe, serving=cfg.serving, costs=cfg.costs,
        ml=cfg.ml,
    )  # fmt: skip
    with (
        using(executor) as ex,
        RunRegistry(store_path, db_url) as registry,
        registry.start("walkforward", cfg.to_dict(), inputs=inputs) as run,
    ):
        log(f"run {run.id}")
        warned = index_warnings(cfg.index, index)
        for warning in warned:
            log(f"warning: {warning}")
        recorder = _Recorder(registry, run)
        results, rows = _run_seeds(store_path, frames, plan, cfg, log, recorder, ex)
        prior = registry.data_trials(inputs, exclude=[run.id])
        sel = assess(prior, run.id, "walkforward", rows, [r.returns for r in results])
        results = [replace(r, dsr=d) for r, d in zip(results, sel.dsr, strict=True)]
        stitched, table = _save_walk_forward(run, cfg, results, sel, warned)
        sheet = None
        if cfg.tearsheet:
            out = run.add_artifact("tearsheet.html")
            bench = results[0].benchmark
            sheet = copy_out(tearsheet_for_run(run.dir, out, benchmark=bench), tearsheet_to)
    return WalkForwardRunResult(
        run.id, run.dir, cfg, results[0], stitched, sheet, tuple(results), sel, table, warned
    )


def _run_seeds(
    store_path: Path,
    frames: Mapping[str, pd.DataFrame],
    plan: WalkForwardPlan,
    cfg: WalkForwardConfig,
    log: Log,
    recorder: _Recorder,
    executor: Executor,
) -> tuple[list[WalkForwardResult], list[dict[str, Any]]]:
    """The whole walk-forward once per seed, each recorded as a trial when it ends."""
    results: list[WalkForwardResult] = []
    rows: list[dict[str, Any]] = []
    first = plan.train_cfg.seed
    for i, seed in enumerate(range(first, first + cfg.seeds), 1):
        if cfg.seeds > 1:
            log(f"seed {seed} ({i}/{cfg.seeds})")
        seeded = replace(plan, train_cfg=replace(plan.train_cfg, seed=seed))
        results.append(run_folds(store_path, frames, seeded, log, recorder, executor))
        rows.append(trial_row(seed_config(cfg, seed), _seed_result(results[-1])))
        recorder.run.record_trials(rows[-1:])
    return results, rows


def train_threads(
    config: WalkForwardConfig, executor: Executor | ExecutorConfig | None = None
) -> int:
    """The torch threads each fold trains on: ``config.train.threads``, else this process's
    on the serial executor and the executor's per worker on the others. Refuses TorchServe
    serving off the serial executor (one server at a time)."""
    if executor is None or executor.kind == "serial":
        per_worker = None  # this process's
    else:
        per_worker = executor.threads
        if config.serving != "inprocess":
            raise ConfigError(
                f"--serving {config.serving} runs one server at a time: use --serving "
                "inprocess or --executor serial"
            )
    return config.train.threads or per_worker or torch.get_num_threads()


def seed_config(cfg: WalkForwardConfig, seed: int) -> dict[str, Any]:
    """The configuration one seed tried: the request less what does not change the results
    (the models' name, the serving, the tearsheet, the thread count, the inference mode and
    chunk); a sweep's trials record theirs with it (``workflows.sweep_space.trial_config``)."""
    out = cfg.to_dict()
    for key in ("name", "serving", "tearsheet", "seeds"):
        out.pop(key)
    train = {k: v for k, v in out["train"].items() if k != "threads"}
    return {**out, "train": {**train, "seed": seed}, "ml": cfg.ml.trial_dict()}


def _seed_result(res: WalkForwardResult) -> dict[str, Any]:
    """What one seed scored: the stitched Sharpe (annualised), return, drawdown and trades,
    and each fold's ranges, model and results."""
    perf = performance(res.returns, trades=int(res.folds["trades"].sum()))
    folds = [_fold_trial(card, row) for card, (_, row)
             in zip(res.cards, res.folds.reset_index().iterrows(), strict=True)]  # fmt: skip
    return {"sharpe": perf.sharpe, "total_return": perf.total_return,
            "max_drawdown": perf.max_drawdown, "trades": perf.trades, "folds": folds}  # fmt: skip


def _save_walk_forward(
    run: Run, cfg: WalkForwardConfig, results: Sequence[WalkForwardResult], sel: Selection,
    warnings: Sequence[str] = (),
) -> tuple[BacktestResult, pd.DataFrame | None]:  # fmt: skip
    """The first seed's stitched returns (and buy-and-hold's), ``summary.json`` (with the last
    fold's card and the warnings), ``folds.csv``, ``oos_report.json`` (the stitched per-head
    report), ``seeds.csv`` with several seeds, and the run's metrics (with their activity;
    buy-and-hold's prefixed ``buyhold_``; the report's ``oos_*``; the selection statistics;
    the seeds' spread; ``warnings``); returns the stitched result and the seed table."""
    res, cash = results[0], cfg.costs.cash
    stitched = stitched_result(f"walk-forward {cfg.name}", res.returns, cash, res.results)
    bench = stitched_result(BUY_AND_HOLD, res.benchmark, cash, res.benchmarks)
    for name in write_results(run.dir, [stitched, bench], res.cards[-1], warnings):
        run.add_artifact(name)
    res.folds.to_csv(run.add_artifact("folds.csv"))
    metrics = {**summary_metrics([stitched, bench]), "folds": len(res.folds),
               "seeds": len(results), **sel.metrics()}  # fmt: skip
    metrics |= record_report(run, res.report) | ({"warnings": list(warnings)} if warnings else {})
    table = None
    if len(results) > 1:
        table = seed_table(results, cfg.train.seed)
        table.to_csv(run.add_artifact("seeds.csv"))
        spread = seed_spread(table)
        metrics |= {f"seeds_{m}_{stat}": float(spread.loc[stat, m])
                    for m in SEED_METRICS for stat in spread.index}  # fmt: skip
    run.log_metrics(metrics)
    return stitched, table
