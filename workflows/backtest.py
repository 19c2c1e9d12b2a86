"""``btml backtest``'s work: a model (served or in-process) or a baseline over stored data.

Honest by default: a model is backtested only on its card's test range (never seen in
training, model selection or scaling) unless ``start`` says otherwise, and a start inside
the training range is refused. Features are computed on the full history (they are causal),
so the first backtest bar already has its warm-up behind it.

Every backtest is a run in the run registry (:mod:`workflows.runs`): :func:`backtest` checks
the request first (a refused one records nothing and writes nothing), then records a run of
kind ``backtest`` with the resolved request as its parameters, the sha256 of every stored
file it read (and of the model's card and weights) as its inputs, the summary metrics, the
configurations it tried (the ML strategy and each baseline, with their results), the selection
statistics (:mod:`workflows.runs_trials`: deflated Sharpe, PBO), for a model the out-of-sample
report per head over its decisions against the naive baselines (:mod:`analyzers.oos_report`;
``oos_edge``, ``oos_{head}_{model}_{metric}`` with the network's ``_lo`` / ``_hi``, as
training's :func:`workflows.train.flat_report`), and its artefacts in
``{store}/runs/{id}/``: ``returns.parquet`` (one column per strategy), ``audit.parquet``
(the ML decisions), ``risk_outcomes.parquet`` (each risk rule's outcome at each decision),
``summary.json``, and on request ``tearsheet.html`` and ``plot.png``.

The request (:mod:`workflows.backtest_config`) names its symbols, a universe (today's
constituents: the run's ``warnings`` metric, its printed summary, ``summary.json`` and its
tearsheet carry a survivorship warning) or a point-in-time membership (each symbol traded only
while a member, ``analyzers.membership_broker``). With ``entry_rule="auto"`` the ML strategy's
entry rule is chosen on the model's validation split before the run
(:mod:`strategies.entry_choice`) and the choice is in the metrics (``entry_rule_chosen``, each
rule's ``entry_val_*``) and the printed summary.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers.backtest import BASELINES, BacktestResult, CostConfig, run_backtest
from analyzers.oos_report import result_report
from analyzers.performance import drawdown_days
from core.errors import ConfigError, DataError, SymbolNotFound
from feeds.membership import Membership
from feeds.store import ParquetStore
from mlmodels.registry import ModelCard, ModelRegistry
from serving.client import InProcessClient, RestClient, SignalClient
from strategies.baselines import BuyAndHold, SmaCross, SmaCrossConfig
from strategies.entry_choice import EntryChoice, choice_range, choose_entry_rule
from strategies.ml_signal import MLSignalStrategy, check_timeframe
from strategies.windows import FeatureWindows
from workflows.backtest_config import SERVING, BacktestConfig, MLRunConfig, utc
from workflows.reports import copy_out, render_plot, save_results, tearsheet_for_run
from workflows.runs import Run, RunRegistry
from workflows.runs_info import file_sha256
from workflows.runs_trials import assess, trial_row
from workflows.train import flat_report, index_warnings, link_training_run, model_inputs

__all__ = ["SERVING", "BacktestConfig", "MLRunConfig", "backtest", "run_model", "signal_client"]
Log = Callable[[str], None]


@dataclass(frozen=True)
class BacktestRunResult:
    """A finished backtest: its run, the resolved request, and each strategy's result (the
    requested one first, then the baselines beside a model), and a model's out-of-sample
    report per head (``analyzers.oos_report``)."""

    run_id: str
    run_dir: Path
    config: BacktestConfig
    results: list[BacktestResult]
    card: ModelCard | None = None
    tearsheet: Path | None = None
    plot: Path | None = None
    warnings: tuple[str, ...] = ()
    report: dict[str, Any] | None = None


def load_frames(
    store: ParquetStore,
    symbols: Sequence[str],
    timeframe: str = "1Day",
    universe: str | None = None,
) -> dict[str, pd.DataFrame]:
    """The stored frames of ``symbols``; a universe's missing ones are named all at once."""
    if not symbols:
        raise ConfigError("no symbols given; pass --symbols A,B,...")
    if universe is None:
        return {s: store.read(s, timeframe) for s in symbols}
    frames, missing = {}, []
    for s in symbols:
        try:
            frames[s] = store.read(s, timeframe)
        except SymbolNotFound:
            missing.append(s)
    if missing:
        raise SymbolNotFound(
            f"{len(missing)} of universe {universe}'s {len(symbols)} symbols are not in the store "
            f"({timeframe}): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
            f"btml data download --universe {universe}"
        )
    return frames


def clip_range(
    frames: Mapping[str, pd.DataFrame], start: Any = None, end: Any = None
) -> dict[str, pd.DataFrame]:
    """Each frame cut to ``[start, end]``; an empty result for every symbol is an error."""
    lo, hi = utc(start), utc(end)
    out = {s: f.loc[lo:hi] for s, f in frames.items()}  # type: ignore[misc]
    out = {s: f for s, f in out.items() if len(f)}
    if not out:
        raise DataError(
            f"no bars between {start or 'the start'} and {end or 'the end'} for any symbol"
        )
    return out


def oos_start(card: ModelCard, start: Any, allow_in_sample: bool = False) -> pd.Timestamp:
    """The backtest start: the card's test range by default; refuse a start inside the
    training or the validation range, both naming the ranges (unless ``allow_in_sample``,
    for stress runs that flag it)."""
    test = card.date_ranges.get("test")
    train = card.date_ranges.get("train")
    if start is None:
        if not test:
            raise DataError(f"model {card.ref} has no test range in its card; pass --start")
        return pd.Timestamp(test[0])
    ts = utc(start)
    assert ts is not None
    if allow_in_sample:
        return ts
    val = card.date_ranges.get("val")
    after = (
        f"start after {val[1][:10]} (the test range starts {test[0][:10]})" if val and test else ""
    )
    if train and ts <= pd.Timestamp(train[1]):
        raise DataError(
            f"--start {ts.date()} is inside {card.ref}'s training range (to {train[1][:10]}); "
            f"an in-sample backtest is not honest: {after or 'start after the training range'}"
        )
    if val and ts <= pd.Timestamp(val[1]):
        # early stopping and the direction head's refit chose on these bars: in-sample too
        raise DataError(
            f"--start {ts.date()} is inside {card.ref}'s validation range ({val[0][:10]} to "
            f"{val[1][:10]}), which chose the model; an in-sample backtest is not honest: {after}"
        )
    return ts


@contextmanager
def signal_client(
    store_path: Path,
    card: ModelCard,
    serving: str,
    log: Callable[[str], None],
    *,
    also: Sequence[ModelCard] = (),
    deadline_s: float | None = None,
) -> Iterator[SignalClient]:
    """In-process, or TorchServe: the running server, else one started for this run (serving
    ``card`` and the models in ``also`` beside it, e.g. a shadow challenger: each is another
    version on the same server; ``deadline_s``: each call's time budget, retries included,
    default the client's). The in-process model runs on this process's torch threads
    (``btml --threads`` sets them)."""
    if serving not in SERVING:
        raise ConfigError(f"--serving must be one of {', '.join(SERVING)}, got {serving!r}")
    if serving == "inprocess":
        yield InProcessClient.from_registry(store_path / "models", card.ref)
        return
    from serving.archive import archive_name, build_archive
    from serving.server import ServerConfig, read_state, start, stop

    cfg = ServerConfig(home=store_path / "serving")
    running = read_state(cfg)
    started = running is None
    for c in (card, *also):
        if running is not None and c.version not in running.models.get(c.name, []):
            raise ConfigError(
                f"a TorchServe is already running from {cfg.home} without {c.ref} (it serves "
                f"{_served(running.models)}); stop it (btml serve stop) or start it with this model"
            )
    if started:
        mars = []
        for c in (card, *also):
            mar = cfg.model_store / archive_name(c.name, c.version)
            if not mar.exists():
                log(f"archiving {c.ref} for TorchServe")
                build_archive(ModelRegistry(store_path / "models"), c.ref, cfg.model_store)
            mars.append(mar)
        log("starting TorchServe (127.0.0.1, token auth) and waiting for READY")
        start(cfg, mars)
    try:
        with RestClient.for_server(cfg.home, card.name, version=card.version,
                                   **_deadline(deadline_s)) as client:  # fmt: skip
            yield client
    finally:
        if started:
            stop(cfg)
            log("stopped TorchServe")


def _deadline(deadline_s: float | None) -> dict[str, float]:
    return {} if deadline_s is None else {"deadline_s": deadline_s}


def served_client(
    store_path: Path, card: ModelCard, serving: str, deadline_s: float | None = None
) -> SignalClient:
    """A client of ``card`` beside a :func:`signal_client` already open: in-process, or the
    same TorchServe (which serves it: ``also=``)."""
    if serving == "inprocess":
        return InProcessClient.from_registry(store_path / "models", card.ref)
    from serving.server import ServerConfig

    return RestClient.for_server(ServerConfig(home=store_path / "serving").home, card.name,
                                 version=card.version, **_deadline(deadline_s))  # fmt: skip


def _served(models: Mapping[str, list[int]]) -> str:
    return ", ".join(f"{m}:{v}" for m, vs in models.items() for v in vs) or "no model"


@dataclass(frozen=True)
class ModelPlan:
    """A checked model backtest: the card, the first traded bar, the feature windows over
    the full history, the bars to trade, the stored index file read (if any), the full
    frames, the validation range (when the entry rule is ``auto``) and the index's warnings."""

    card: ModelCard
    begin: pd.Timestamp
    windows: FeatureWindows
    traded: dict[str, pd.DataFrame]
    start_given: bool
    index_file: Path | None = None
    frames: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    val: tuple[pd.Timestamp, pd.Timestamp] | None = None
    warnings: tuple[str, ...] = ()
    no_choice: str = "the plan was made without ml= (plan_model)"


def plan_model(
    store_path: Path,
    ref: str,
    frames: Mapping[str, pd.DataFrame],
    *,
    start: Any = None,
    end: Any = None,
    allow_in_sample: bool = False,
    ml: MLRunConfig | None = None,
    index: pd.DataFrame | None = None,
) -> ModelPlan:
    """Check that model ``ref`` can be backtested on ``frames`` (read-only; no run yet): the
    bars are the model's size (a stored index at the card's timeframe beside finer bars would
    be read ahead), and with ``entry_rule="auto"`` the data holds its validation bars.
    ``index``: the model's index as a frame (a live session's) instead of the stored one."""
    card = ModelRegistry(store_path / "models").card(ref)
    check_timeframe(frames, card)
    index_file = None
    if card.index and index is None:
        store = ParquetStore(store_path)
        index = store.read(card.index, card.timeframe)
        index_file = store.find(card.index, card.timeframe)
    begin = oos_start(card, start, allow_in_sample)
    windows = FeatureWindows.from_card(frames, card, store_path / "models", index=index)
    traded = clip_range({s: frames[s] for s in windows.symbols}, begin, end)
    val, why = None, None
    if ml is not None and ml.entry_rule == "auto":
        val, why = choice_range(card.date_ranges, card.ref, windows)
    warned = index_warnings(card.index, index)
    return ModelPlan(card, begin, windows, traded, start is not None, index_file, dict(frames),
                     val, warned, why or ModelPlan.no_choice)  # fmt: skip


def run_plan(
    store_path: Path,
    plan: ModelPlan,
    *,
    serving: str = "inprocess",
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Log = print,
    membership: Membership | None = None,
) -> BacktestResult:
    """Backtest a checked model plan through the ``serving`` client; with ``entry_rule="auto"``
    the rule is chosen first on the validation bars (``strategies.entry_choice``, with
    in-process predictions) and the result carries the choice in ``metrics`` and ``notes``."""
    ml = ml or MLRunConfig()
    card, windows, traded = plan.card, plan.windows, plan.traded
    log(
        f"backtesting {card.ref} from {plan.begin.date()} ({'given' if plan.start_given else 'test range'})"
    )
    cfg, choice = ml.strategy_config(costs or CostConfig()), None
    with signal_client(store_path, card, serving, log) as client:
        if cfg.entry_rule == "auto" and plan.val is None:
            choice = EntryChoice.kept(plan.no_choice)
        elif cfg.entry_rule == "auto" and plan.val is not None:
            local = client if serving == "inprocess" else None
            choice = choose_entry_rule(
                local or InProcessClient.from_registry(store_path / "models", card.ref),
                windows, plan.frames, cfg, plan.val,
            )  # fmt: skip
        if choice is not None:
            log(choice.line())
            cfg = dataclasses.replace(cfg, entry_rule=choice.chosen)
        t0 = time.perf_counter()
        res = run_backtest(
            f"ml {card.ref}", traded, MLSignalStrategy, costs=costs, membership=membership,
            strategy_kwargs={"config": cfg, "client": client, "windows": windows,
                             "model": card.ref, "store": str(store_path)},
        )  # fmt: skip
        log(
            f"  {sum(len(f) for f in traded.values())} bars in {time.perf_counter() - t0:.1f} s "
            f"via {serving}, {cfg.inference}"
        )
    if choice is None:
        return res
    return dataclasses.replace(res, metrics=choice.metrics(), notes=(choice.line(),))


def run_model(
    store_path: Path,
    ref: str,
    frames: Mapping[str, pd.DataFrame],
    *,
    serving: str = "inprocess",
    start: Any = None,
    end: Any = None,
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Log = print,
    allow_in_sample: bool = False,
    index: pd.DataFrame | None = None,
) -> tuple[BacktestResult, ModelCard]:
    """Backtest model ``ref`` on ``frames`` (full history; traded from the OOS start);
    ``index``: the model's index as a frame instead of the stored one.

    Records no run: :func:`backtest` does (this is the step walk-forward and stress reuse)."""
    plan = plan_model(store_path, ref, frames, start=start, end=end,
                      allow_in_sample=allow_in_sample, ml=ml, index=index)  # fmt: skip
    return run_plan(store_path, plan, serving=serving, costs=costs, ml=ml, log=log), plan.card


def run_baseline(
    name: str,
    frames: Mapping[str, pd.DataFrame],
    costs: CostConfig | None = None,
    membership: Membership | None = None,
) -> BacktestResult:
    """Baseline ``name`` over ``frames`` (trading members only, with ``membership``)."""
    if name not in BASELINES:
        raise ConfigError(f"--baseline must be one of {', '.join(BASELINES)}, got {name!r}")
    if name == "buyhold":
        return run_backtest("buy-and-hold", frames, BuyAndHold, costs=costs, membership=membership)
    return run_backtest(
        "sma-cross 10/30", frames, SmaCross, costs=costs, membership=membership,
        strategy_kwargs={"config": SmaCrossConfig()},
    )  # fmt: skip


def baseline_trial(name: str) -> dict[str, Any]:
    """The configuration baseline ``name`` runs with, as a trial of a run."""
    if name == "sma":
        return {"strategy": "sma", **dataclasses.asdict(SmaCrossConfig())}
    return {"strategy": name}


# -- the recorded backtest ---------------------------------------------------------------


@dataclass(frozen=True)
class BacktestPlan:
    """A checked request: the resolved config, the bars to trade, the data hashes read, the
    model's plan and the warnings every report of the run carries (survivorship)."""

    config: BacktestConfig
    frames: dict[str, pd.DataFrame]
    inputs: dict[str, str]
    model: ModelPlan | None = None
    warnings: tuple[str, ...] = ()

    def trials(self, results: Sequence[BacktestResult]) -> list[dict[str, Any]]:
        """The configurations the run tried over its bars (the ML strategy, if any, and each
        baseline), each with its ``results``' statistics under ``result``."""
        cfg = self.config
        tried = [baseline_trial(cfg.baseline)] if cfg.baseline else [
            {"strategy": "ml", "model": cfg.model, **(cfg.ml or MLRunConfig()).trial_dict()},
            *map(baseline_trial, BASELINES)]  # fmt: skip
        span = {"start": cfg.start, "end": cfg.end}
        return [trial_row({**t, **span}, r.stats.as_row())
                for t, r in zip(tried, results, strict=True)]  # fmt: skip


def plan_backtest(store_path: Path, config: BacktestConfig) -> BacktestPlan:
    """Check ``config`` against the store (read-only): every refusal happens here. The
    inputs are the stored files read and, for a model, its card and weights."""
    store = ParquetStore(store_path)
    frames = load_frames(store, config.symbols, config.timeframe, config.universe)
    files = [store.find(s, config.timeframe) for s in config.symbols]
    model: ModelPlan | None = None
    models: dict[str, str] = {}
    warnings = tuple(config.warnings())
    if config.model is not None:
        model = plan_model(store_path, config.model, frames, start=config.start, end=config.end,
                           ml=config.ml or MLRunConfig())  # fmt: skip
        warnings += model.warnings
        traded, files = model.traded, [*files, model.index_file]
        models = model_inputs(store_path, model.card)
        config = dataclasses.replace(config, model=model.card.ref, ml=config.ml or MLRunConfig())
    else:
        traded = clip_range(frames, config.start, config.end)
    first = min(f.index[0] for f in traded.values())
    last = max(f.index[-1] for f in traded.values())
    config = dataclasses.replace(config, start=first.isoformat(), end=last.isoformat())
    inputs = {p.relative_to(store_path).as_posix(): file_sha256(p) for p in files if p}
    return BacktestPlan(config, frames if model else traded, {**inputs, **models}, model, warnings)


def _check_copy(path: str | os.PathLike[str] | None, suffix: str, asked: bool, what: str) -> None:
    if path is None:
        return
    if not asked:
        raise ConfigError(f"a copy of the {what} needs the {what} itself (set {what}=True)")
    if Path(path).suffix.lower() != suffix:
        raise ConfigError(f"the {what} file must end in {suffix}, got {path}")
    if Path(path).is_dir():
        raise ConfigError(f"{path} is a folder; give the {what}'s file name")


def backtest(
    store: str | os.PathLike[str],
    config: BacktestConfig,
    *,
    tearsheet_to: str | os.PathLike[str] | None = None,
    plot_to: str | os.PathLike[str] | None = None,
    log: Log = print,
    db_url: str | None = None,
) -> BacktestRunResult:
    """Run and record one backtest; ``tearsheet_to`` / ``plot_to`` also copy those artefacts
    out of the run's folder. A refused request raises before anything is written. The
    plan's warnings are logged, and kept in the metrics (``warnings``), ``summary.json`` and
    the tearsheet."""
    store_path = Path(store)
    _check_copy(tearsheet_to, ".html", config.tearsheet, "tearsheet")
    _check_copy(plot_to, ".png", config.plot, "plot")
    plan = plan_backtest(store_path, config)
    with (
        RunRegistry(store_path, db_url) as registry,
        registry.start("backtest", plan.config.to_dict(), inputs=plan.inputs) as run,
    ):
        log(f"run {run.id}")
        for warning in plan.warnings:
            log(f"warning: {warning}")
        if plan.model is not None:
            link_training_run(run, plan.model.card, log)
        results = _execute(store_path, plan, log)
        run.record_trials(rows := plan.trials(results))
        sel = assess(registry.data_trials(plan.inputs, exclude=[run.id]), run.id, "backtest",
                     rows, [r.returns for r in results])  # fmt: skip
        warned = {"warnings": list(plan.warnings)} if plan.warnings else {}
        mp = plan.model
        report = result_report(results[0], mp.frames, mp.card, log) if mp else None
        oos = flat_report(report) if report else {}
        run.log_metrics({**summary_metrics(results), **sel.metrics(), **warned, **oos})
        for line in sel.lines(results[0].name, "strategy"):
            log(line)
        card = plan.model.card if plan.model else None
        save_results(run, results, card, plan.warnings)
        sheet, plot = _extras(run, plan.config, results, tearsheet_to, plot_to)
    return BacktestRunResult(run.id, run.dir, plan.config, results, card, sheet, plot,
                             plan.warnings, report)  # fmt: skip


def _execute(store_path: Path, plan: BacktestPlan, log: Log) -> list[BacktestResult]:
    cfg = plan.config
    members = cfg.members()
    if plan.model is None:
        return [run_baseline(cfg.baseline or "", plan.frames, cfg.costs, members)]
    res = run_plan(store_path, plan.model, serving=cfg.serving, costs=cfg.costs, ml=cfg.ml,
                   log=log, membership=members)  # fmt: skip
    span = clip_range(plan.frames, res.returns.index[0], res.returns.index[-1])
    return [res, *(run_baseline(b, span, cfg.costs, members) for b in BASELINES)]


def summary_metrics(results: Sequence[BacktestResult]) -> dict[str, Any]:
    """The run's metrics: the requested strategy's unprefixed, each baseline's prefixed with
    its name (``buyhold_sharpe``) when it ran beside a model."""
    out: dict[str, Any] = {}
    for prefix, r in zip(("", *(f"{b}_" for b in BASELINES)), results, strict=False):
        row: dict[str, Any] = {"final_value": r.final_value, **r.stats.as_row(),
               "max_drawdown_days": drawdown_days(r.returns), "bars": len(r.returns)}  # fmt: skip
        if r.stats.activity:
            row["activity"] = r.stats.activity
        out.update({f"{prefix}{k}": v for k, v in {**row, **r.metrics}.items()})
    return out


def _extras(
    run: Run,
    config: BacktestConfig,
    results: Sequence[BacktestResult],
    tearsheet_to: str | os.PathLike[str] | None,
    plot_to: str | os.PathLike[str] | None,
) -> tuple[Path | None, Path | None]:
    """The tearsheet and plot asked for, in the run's folder (and copied where asked)."""
    sheet = plot = None
    if config.tearsheet:
        sheet = tearsheet_for_run(run.dir, run.add_artifact("tearsheet.html"))
        sheet = copy_out(sheet, tearsheet_to)
    if config.plot:
        plot = render_plot(results[0], run.add_artifact("plot.png"))
        plot = copy_out(plot, plot_to)
    return sheet, plot
