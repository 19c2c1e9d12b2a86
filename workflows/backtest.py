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
statistics (:mod:`workflows.runs_trials`: deflated Sharpe, PBO), and its artefacts in
``{store}/runs/{id}/``: ``returns.parquet`` (one column per strategy), ``audit.parquet``
(the ML decisions), ``risk_outcomes.parquet`` (each risk rule's outcome at each decision),
``summary.json``, and on request ``tearsheet.html`` and ``plot.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

import pandas as pd

from analyzers.backtest import BASELINES, BacktestResult, CostConfig, run_backtest
from analyzers.performance import drawdown_days
from core.config import DataConfig
from core.errors import ConfigError, DataError
from feeds.store import ParquetStore
from mlmodels.registry import ModelCard, ModelRegistry
from serving.client import InProcessClient, RestClient, SignalClient
from strategies.baselines import BuyAndHold, SmaCross, SmaCrossConfig
from strategies.ml_signal import SERVING_POLICIES, MLSignalConfig, MLSignalStrategy
from strategies.risk import RiskConfig
from strategies.sizing import sizer_spec
from strategies.windows import FeatureWindows
from workflows.reports import copy_out, render_plot, save_results, tearsheet_for_run
from workflows.runs import Run, RunRegistry
from workflows.runs_info import file_sha256
from workflows.runs_trials import assess, trial_row
from workflows.train import link_training_run, model_inputs

SERVING = ("inprocess", "torchserve")
Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class MLRunConfig(DataConfig):
    """How the ML strategy trades in a backtest (checked here, before any run starts)."""

    entry_prob: float = 0.0
    min_edge: float = 0.01
    min_confidence: float = 0.0
    horizon_agreement: int = 2
    allow_short: bool = False
    risk: RiskConfig = field(default_factory=RiskConfig)
    serving_failure: str = "abort"
    sizer: str = "model"
    rebalance_band: float = 0.02

    def __post_init__(self) -> None:
        sizer_spec(self.sizer)  # an unknown sizer is refused by name, before any run
        if not 0 <= self.rebalance_band < 1:
            raise ConfigError(f"rebalance_band must be in [0, 1), got {self.rebalance_band}")
        for name in ("entry_prob", "min_edge", "min_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.horizon_agreement <= 3:
            raise ConfigError(f"horizon_agreement must be 0..3, got {self.horizon_agreement}")
        if self.serving_failure not in SERVING_POLICIES:
            raise ConfigError(
                f"serving_failure must be one of {', '.join(SERVING_POLICIES)}, "
                f"got {self.serving_failure!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not isinstance(self.risk, DataConfig):
            out["risk"] = dataclasses.asdict(self.risk)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str | None = None) -> Self:
        where = where or cls.__name__
        values = dict(data)
        if isinstance(values.get("risk"), Mapping):
            values["risk"] = _risk_config(values["risk"], f"{where}.risk")
        return super().from_dict(values, where=where)

    def strategy_config(self) -> MLSignalConfig:
        """The ``MLSignalConfig`` of this run (plain values; the client and the windows go to
        the strategy beside it: ``client=``, ``windows=``)."""
        return MLSignalConfig(
            entry_prob=self.entry_prob, min_edge=self.min_edge,
            min_confidence=self.min_confidence, horizon_agreement=self.horizon_agreement,
            allow_short=self.allow_short, risk=self.risk, serving_failure=self.serving_failure,
            sizer=self.sizer, rebalance_band=self.rebalance_band,
        )  # fmt: skip


def _risk_config(value: Mapping[str, Any], where: str) -> RiskConfig:
    """A ``RiskConfig`` from plain values, refusing unknown keys and wrong types by name."""
    from_dict = getattr(RiskConfig, "from_dict", None)  # once RiskConfig is a DataConfig
    if from_dict is not None:
        return cast(RiskConfig, from_dict(value, where=where))
    known = [f.name for f in dataclasses.fields(RiskConfig)]
    unknown = [k for k in value if k not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    try:
        return RiskConfig(**value)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


@dataclass(frozen=True, kw_only=True)
class BacktestConfig(DataConfig):
    """One backtest request as plain values: exactly one of ``model`` (traded beside both
    baselines at the same costs) or ``baseline``; dates as ISO strings (UTC when naive).

    ``start`` defaults to the model's test range (for a baseline: the first bar), ``end`` to
    the last bar. ``tearsheet`` and ``plot`` ask for ``tearsheet.html`` and ``plot.png``
    (backtrader's own chart) in the run's folder.
    """

    symbols: tuple[str, ...]
    model: str | None = None
    baseline: str | None = None
    serving: str = "inprocess"
    start: str | None = None
    end: str | None = None
    timeframe: str = "1Day"
    costs: CostConfig = field(default_factory=CostConfig)
    ml: MLRunConfig | None = None
    tearsheet: bool = False
    plot: bool = False

    def __post_init__(self) -> None:
        if not self.symbols or any(not s or s != s.strip() for s in self.symbols):
            raise ConfigError(f"symbols: give stored symbols (--symbols A,B), got {self.symbols}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ConfigError(f"symbols: a symbol is named twice in {', '.join(self.symbols)}")
        if (self.model is None) == (self.baseline is None):
            raise ConfigError("give exactly one of --model or --baseline")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ConfigError(
                f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}"
            )
        if self.baseline is not None and self.ml is not None:
            raise ConfigError("ml (the ML strategy's settings) applies to a --model run only")
        if self.serving not in SERVING:
            raise ConfigError(f"serving must be one of {', '.join(SERVING)}, got {self.serving!r}")
        lo, hi = (_date_field(n, getattr(self, n)) for n in ("start", "end"))
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"start {self.start} is after end {self.end}")


def _date_field(name: str, value: str | None) -> pd.Timestamp | None:
    try:
        return _utc(value)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{name}: {value!r} is not a date (use YYYY-MM-DD)") from err


@dataclass(frozen=True)
class BacktestRunResult:
    """A finished backtest: its run, the resolved request, and each strategy's result (the
    requested one first, then the baselines beside a model)."""

    run_id: str
    run_dir: Path
    config: BacktestConfig
    results: list[BacktestResult]
    card: ModelCard | None = None
    tearsheet: Path | None = None
    plot: Path | None = None


def load_frames(
    store: ParquetStore, symbols: Sequence[str], timeframe: str = "1Day"
) -> dict[str, pd.DataFrame]:
    if not symbols:
        raise ConfigError("no symbols given; pass --symbols A,B,...")
    return {s: store.read(s, timeframe) for s in symbols}


def clip_range(
    frames: Mapping[str, pd.DataFrame], start: Any = None, end: Any = None
) -> dict[str, pd.DataFrame]:
    """Each frame cut to ``[start, end]``; an empty result for every symbol is an error."""
    lo, hi = _utc(start), _utc(end)
    out = {s: f.loc[lo:hi] for s, f in frames.items()}  # type: ignore[misc]
    out = {s: f for s, f in out.items() if len(f)}
    if not out:
        raise DataError(
            f"no bars between {start or 'the start'} and {end or 'the end'} for any symbol"
        )
    return out


def _utc(t: Any) -> pd.Timestamp | None:
    if t is None:
        return None
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


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
    ts = _utc(start)
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
    store_path: Path, card: ModelCard, serving: str, log: Callable[[str], None]
) -> Iterator[SignalClient]:
    """In-process, or TorchServe: the running server, else one started for this run. The
    in-process model runs on this process's torch threads (``btml --threads`` sets them)."""
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
    if running is not None and card.version not in running.models.get(card.name, []):
        raise ConfigError(
            f"a TorchServe is already running from {cfg.home} without {card.ref} (it serves "
            f"{_served(running.models)}); stop it (btml serve stop) or start it with this model"
        )
    if started:
        mar = cfg.model_store / archive_name(card.name, card.version)
        if not mar.exists():
            log(f"archiving {card.ref} for TorchServe")
            build_archive(ModelRegistry(store_path / "models"), card.ref, cfg.model_store)
        log("starting TorchServe (127.0.0.1, token auth) and waiting for READY")
        start(cfg, [mar])
    try:
        with RestClient.for_server(cfg.home, card.name, version=card.version) as client:
            yield client
    finally:
        if started:
            stop(cfg)
            log("stopped TorchServe")


def _served(models: Mapping[str, list[int]]) -> str:
    return ", ".join(f"{m}:{v}" for m, vs in models.items() for v in vs) or "no model"


@dataclass(frozen=True)
class ModelPlan:
    """A checked model backtest: the card, the first traded bar, the feature windows over
    the full history, the bars to trade, and the stored index file read (if any)."""

    card: ModelCard
    begin: pd.Timestamp
    windows: FeatureWindows
    traded: dict[str, pd.DataFrame]
    start_given: bool
    index_file: Path | None = None


def plan_model(
    store_path: Path,
    ref: str,
    frames: Mapping[str, pd.DataFrame],
    *,
    start: Any = None,
    end: Any = None,
    allow_in_sample: bool = False,
) -> ModelPlan:
    """Check that model ``ref`` can be backtested on ``frames`` (read-only; no run yet)."""
    card = ModelRegistry(store_path / "models").card(ref)
    index = index_file = None
    if card.index:
        store = ParquetStore(store_path)
        index = store.read(card.index, card.timeframe)
        index_file = store.find(card.index, card.timeframe)
    begin = oos_start(card, start, allow_in_sample)
    windows = FeatureWindows.build(frames, card.features, card.window, index=index)
    traded = clip_range({s: frames[s] for s in windows.symbols}, begin, end)
    return ModelPlan(card, begin, windows, traded, start is not None, index_file)


def run_plan(
    store_path: Path,
    plan: ModelPlan,
    *,
    serving: str = "inprocess",
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Log = print,
) -> BacktestResult:
    """Backtest a checked model plan through the ``serving`` client."""
    ml = ml or MLRunConfig()
    card, windows, traded = plan.card, plan.windows, plan.traded
    log(
        f"backtesting {card.ref} from {plan.begin.date()} ({'given' if plan.start_given else 'test range'})"
    )
    with signal_client(store_path, card, serving, log) as client:
        cfg = ml.strategy_config()
        t0 = time.perf_counter()
        res = run_backtest(
            f"ml {card.ref}", traded, MLSignalStrategy, costs=costs,
            strategy_kwargs={"config": cfg, "client": client, "windows": windows},
        )  # fmt: skip
        log(
            f"  {sum(len(f) for f in traded.values())} bars in {time.perf_counter() - t0:.1f} s via {serving}"
        )
    return res


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
) -> tuple[BacktestResult, ModelCard]:
    """Backtest model ``ref`` on ``frames`` (full history; traded from the OOS start).

    Records no run: :func:`backtest` does (this is the step walk-forward and stress reuse)."""
    plan = plan_model(
        store_path, ref, frames, start=start, end=end, allow_in_sample=allow_in_sample
    )
    return run_plan(store_path, plan, serving=serving, costs=costs, ml=ml, log=log), plan.card


def run_baseline(
    name: str, frames: Mapping[str, pd.DataFrame], costs: CostConfig | None = None
) -> BacktestResult:
    if name not in BASELINES:
        raise ConfigError(f"--baseline must be one of {', '.join(BASELINES)}, got {name!r}")
    if name == "buyhold":
        return run_backtest("buy-and-hold", frames, BuyAndHold, costs=costs)
    return run_backtest(
        "sma-cross 10/30",
        frames,
        SmaCross,
        costs=costs,
        strategy_kwargs={"config": SmaCrossConfig()},
    )


def baseline_trial(name: str) -> dict[str, Any]:
    """The configuration baseline ``name`` runs with, as a trial of a run."""
    if name == "sma":
        return {"strategy": "sma", **dataclasses.asdict(SmaCrossConfig())}
    return {"strategy": name}


# -- the recorded backtest ---------------------------------------------------------------


@dataclass(frozen=True)
class BacktestPlan:
    """A checked request: the resolved config, the bars to trade, the data hashes read."""

    config: BacktestConfig
    frames: dict[str, pd.DataFrame]
    inputs: dict[str, str]
    model: ModelPlan | None = None

    def trials(self, results: Sequence[BacktestResult]) -> list[dict[str, Any]]:
        """The configurations the run tried over its bars (the ML strategy, if any, and each
        baseline), each with its ``results``' statistics under ``result``."""
        cfg = self.config
        tried = [baseline_trial(cfg.baseline)] if cfg.baseline else [
            {"strategy": "ml", "model": cfg.model, **(cfg.ml or MLRunConfig()).to_dict()},
            *map(baseline_trial, BASELINES)]  # fmt: skip
        span = {"start": cfg.start, "end": cfg.end}
        return [trial_row({**t, **span}, r.stats.as_row())
                for t, r in zip(tried, results, strict=True)]  # fmt: skip


def plan_backtest(store_path: Path, config: BacktestConfig) -> BacktestPlan:
    """Check ``config`` against the store (read-only): every refusal happens here. The
    inputs are the stored files read and, for a model, its card and weights."""
    store = ParquetStore(store_path)
    frames = load_frames(store, config.symbols, config.timeframe)
    files = [store.find(s, config.timeframe) for s in config.symbols]
    model: ModelPlan | None = None
    models: dict[str, str] = {}
    if config.model is not None:
        model = plan_model(store_path, config.model, frames, start=config.start, end=config.end)
        traded, files = model.traded, [*files, model.index_file]
        models = model_inputs(store_path, model.card)
        config = dataclasses.replace(config, model=model.card.ref, ml=config.ml or MLRunConfig())
    else:
        traded = clip_range(frames, config.start, config.end)
    first = min(f.index[0] for f in traded.values())
    last = max(f.index[-1] for f in traded.values())
    config = dataclasses.replace(config, start=first.isoformat(), end=last.isoformat())
    inputs = {p.relative_to(store_path).as_posix(): file_sha256(p) for p in files if p}
    return BacktestPlan(config, frames if model else traded, {**inputs, **models}, model)


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
    out of the run's folder. A refused request raises before anything is written."""
    store_path = Path(store)
    _check_copy(tearsheet_to, ".html", config.tearsheet, "tearsheet")
    _check_copy(plot_to, ".png", config.plot, "plot")
    plan = plan_backtest(store_path, config)
    with (
        RunRegistry(store_path, db_url) as registry,
        registry.start("backtest", plan.config.to_dict(), inputs=plan.inputs) as run,
    ):
        log(f"run {run.id}")
        if plan.model is not None:
            link_training_run(run, plan.model.card, log)
        results = _execute(store_path, plan, log)
        run.record_trials(rows := plan.trials(results))
        sel = assess(registry.data_trials(plan.inputs, exclude=[run.id]), run.id, "backtest",
                     rows, [r.returns for r in results])  # fmt: skip
        run.log_metrics({**summary_metrics(results), **sel.metrics()})
        for line in sel.lines(results[0].name, "strategy"):
            log(line)
        card = plan.model.card if plan.model else None
        save_results(run, results, card)
        sheet, plot = _extras(run, plan.config, results, tearsheet_to, plot_to)
    return BacktestRunResult(run.id, run.dir, plan.config, results, card, sheet, plot)


def _execute(store_path: Path, plan: BacktestPlan, log: Log) -> list[BacktestResult]:
    cfg = plan.config
    if plan.model is None:
        return [run_baseline(cfg.baseline or "", plan.frames, cfg.costs)]
    res = run_plan(store_path, plan.model, serving=cfg.serving, costs=cfg.costs, ml=cfg.ml, log=log)
    span = clip_range(plan.frames, res.returns.index[0], res.returns.index[-1])
    return [res, *(run_baseline(b, span, cfg.costs) for b in BASELINES)]


def summary_metrics(results: Sequence[BacktestResult]) -> dict[str, Any]:
    """The run's metrics: the requested strategy's unprefixed, each baseline's prefixed with
    its name (``buyhold_sharpe``) when it ran beside a model."""
    out: dict[str, Any] = {}
    for prefix, r in zip(("", *(f"{b}_" for b in BASELINES)), results, strict=False):
        row: dict[str, Any] = {"final_value": r.final_value, **r.stats.as_row(),
               "max_drawdown_days": drawdown_days(r.returns), "bars": len(r.returns)}  # fmt: skip
        if r.stats.activity:
            row["activity"] = r.stats.activity
        out.update({f"{prefix}{k}": v for k, v in row.items()})
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
