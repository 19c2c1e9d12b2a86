"""``btml sweep``: search model, training and strategy parameters, scored out of sample.

A sweep is an Optuna study (TPE sampler, seeded; median pruner) whose objective is a purged
walk-forward's stitched out-of-sample metric (:data:`OBJECTIVES`; default the annualised
Sharpe ratio): each trial is one walk-forward (:mod:`workflows.walkforward`) of the base
request with the trial's parameters, its folds models named ``STUDY-tN-fK``. After each fold
the trial reports the metric of its folds so far, and the pruner stops trials below the
median of the finished ones at that fold.

* **The search space** is data (:class:`SearchSpace`, see :mod:`workflows.sweep_space`):
  a range or a list of choices per parameter of :data:`PARAMS`; :data:`DEFAULT_SPACE`
  searches the learning rate, dropout, window and the entry rules.
* **The study** lives in the run registry's database (Optuna's RDB storage on the same
  SQLAlchemy URL: SQLite in the store by default, or PostgreSQL). Running a study name again
  with the same space, objective and base request resumes it; with another one it is refused
  (:class:`StudyMismatch`, nothing written) unless ``new_study`` starts a fresh study
  (``NAME-2``, ...).
* **Trials are asked ``batch`` at a time** (default the executor's workers) and their folds
  run on the executor in step, fold 1 of each, then fold 2, ...; pruning compares with
  finished trials only, so a seed and a batch size give the same study on every executor.
* **The run** (kind ``sweep``) records a trial per Optuna trial (its configuration, and under
  ``result`` its state, objective, stitched Sharpe, return, drawdown, trades, folds), links
  every fold's model, and keeps ``summary.json``, ``trials.csv`` (the study's trials,
  ranked) and ``returns.parquet`` (a column ``tN`` per finished trial). The best finished
  trial's Sharpe ratio is deflated by every configuration tried on the same data (the
  registry's, earlier sweeps', the study's), and the PBO is measured across the finished
  trials' stitched returns. A trial's configuration is recorded as a walk-forward records
  one (:func:`workflows.sweep_space.trial_config`), so the best trial rerun with ``btml
  walkforward`` counts once. An index built from today's constituents carries its
  survivorship warning into the log, the metrics (``warnings``) and ``summary.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers.metrics import performance
from core.errors import UserError
from mlmodels.dataset import DatasetConfig
from mlmodels.nets.model import get_architecture
from workflows.backtest import Log
from workflows.executors import Executor, ExecutorConfig, using
from workflows.runs import Run, RunRegistry
from workflows.runs_db import default_url
from workflows.runs_trials import (
    DataTrials,
    Selection,
    Trial,
    assess,
    trial_row,
)
from workflows.sweep_space import (
    DEFAULT_SPACE,
    OBJECTIVES,
    PARAMS,
    SearchSpace,
    StudyMismatch,
    SweepConfig,
    apply_params,
    check_study,
    existing_studies,
    load_space,
    open_storage,
    open_study,
    trial_config,
)
from workflows.train import read_stored
from workflows.walkforward import (
    FoldOutcome,
    FoldTask,
    WalkForwardConfig,
    WalkForwardPlan,
    plan_walk_forward,
    run_fold,
    train_threads,
)
from workflows.walkforward_report import index_warnings

__all__ = [
    "DEFAULT_SPACE", "OBJECTIVES", "PARAMS", "SearchSpace", "StudyMismatch", "SweepConfig",
    "SweepResult", "check_study", "existing_studies", "load_space", "run_sweep", "trials_table",
]  # fmt: skip


# -- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    """A recorded sweep: its run, the resolved request, the study's name and whether it
    resumed, its trials ranked (``table``: complete by objective, then pruned, then failed),
    the best finished trial (``best``: number, value, params, config, result; None if none
    finished) with its stitched returns, the selection statistics, and the warnings every
    report of the run carries (survivorship of its index)."""

    run_id: str
    run_dir: Path
    config: SweepConfig
    study: str
    resumed: bool
    table: pd.DataFrame
    best: dict[str, Any] | None = None
    best_returns: pd.Series | None = None
    selection: Selection | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class _Trial:
    """A trial in progress: its Optuna trial, parameters, recorded configuration, plan and
    finished folds; ``state`` running, complete, pruned or failed."""

    trial: Any
    params: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    plan: WalkForwardPlan | None = None
    folds: list[FoldOutcome] = field(default_factory=list)
    state: str = "running"
    error: str | None = None
    value: float | None = None

    @property
    def number(self) -> int:
        return int(self.trial.number)

    def returns(self) -> pd.Series:
        return pd.concat([f.result.returns for f in self.folds]).sort_index()

    def result(self) -> dict[str, Any]:
        trades = sum(int(f.row["trades"]) for f in self.folds)
        p = performance(self.returns(), trades=trades)
        folds = [{k: v for k, v in f.row.items() if k != "seconds"} for f in self.folds]
        return {"state": self.state, "trial": self.number, "objective": self.value,
                "sharpe": p.sharpe, "total_return": p.total_return,
                "max_drawdown": p.max_drawdown, "trades": trades, "folds": folds}  # fmt: skip


@dataclass
class _Sweep:
    """What the trials of one run share."""

    cfg: SweepConfig
    store_path: Path
    frames: Mapping[str, pd.DataFrame]
    index: pd.DataFrame | None
    executor: Executor
    registry: RunRegistry
    run: Run
    study: Any
    log: Log
    warnings: tuple[str, ...] = ()
    probes: dict[int, WalkForwardPlan] = field(default_factory=dict)
    returns: dict[int, pd.Series] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def plan(self, wf: WalkForwardConfig, name: str, model: Mapping[str, Any]) -> WalkForwardPlan:
        """The trial's plan (the dataset built once per window)."""
        if wf.window not in self.probes:
            self.probes[wf.window] = _probe(self.frames, self.index, wf)
        arch = replace(get_architecture(wf.arch), **model) if model else wf.arch
        return replace(self.probes[wf.window], name=name, arch=arch, train_cfg=wf.train, ml=wf.ml)


def _probe(
    frames: Mapping[str, pd.DataFrame], index: pd.DataFrame | None, wf: WalkForwardConfig
) -> WalkForwardPlan:
    """The checked walk-forward of ``wf`` (its dataset and folds)."""
    return plan_walk_forward(
        frames, name="sweep", arch=wf.arch, folds=wf.folds, train_cfg=wf.train,
        data_cfg=DatasetConfig(window=wf.window, skip_short=True), index=index,
        index_name=wf.index, timeframe=wf.timeframe, serving=wf.serving, costs=wf.costs,
        ml=wf.ml,
    )  # fmt: skip


def run_sweep(
    store: str | os.PathLike[str],
    config: SweepConfig,
    *,
    log: Log = print,
    db_url: str | None = None,
    executor: Executor | ExecutorConfig | None = None,
) -> SweepResult:
    """Run and record a sweep (see the module docstring) in the registry at ``db_url``
    (default: the store's SQLite), which also stores the study; the trials' folds run on
    ``executor`` (default: here, one after another). A refused request (a study of another
    space among them) raises before anything is written or trained."""
    store_path = Path(store)
    threads = train_threads(config.walkforward, executor)
    base = replace(config.walkforward, train=replace(config.walkforward.train, threads=threads))
    cfg = replace(config, walkforward=base)
    frames, index, inputs = read_stored(store_path, base.symbols, base.timeframe, base.index)
    url = db_url or default_url(store_path)
    name, resumed = check_study(url, cfg)
    probe = _probe(frames, index, base)
    with (
        using(executor) as ex,
        RunRegistry(store_path, db_url) as registry,
        registry.start("sweep", {**cfg.to_dict(), "study": name}, inputs=inputs) as run,
    ):
        log(f"run {run.id}: study {name} in {registry.where}" + (" (resumed)" if resumed else ""))
        warned = index_warnings(base.index, index)
        for warning in warned:
            log(f"warning: {warning}")
        storage = open_storage(url)
        try:
            study = open_study(storage, name, cfg, resumed)
            sw = _Sweep(cfg, store_path, frames, index, ex, registry, run, study, log, warned)
            sw.probes[base.window] = probe
            _run_trials(sw)
            return _finish(sw, inputs, url, resumed)
        finally:
            storage.remove_session()
            storage.engine.dispose()


def _run_trials(sw: _Sweep) -> None:
    """``cfg.trials`` trials, ``batch`` at a time; trials left unfinished by an error or an
    interruption are told failed."""
    batch = sw.cfg.batch or sw.executor.workers
    done = 0
    while done < sw.cfg.trials:
        trials = _ask(sw, min(batch, sw.cfg.trials - done))
        try:
            _run_batch(sw, trials)
        except BaseException:
            for t in trials:
                if t.state == "running":
                    t.state, t.error = "failed", "the sweep stopped"
            _tell(sw, trials)
            raise
        _tell(sw, trials)
        done += len(trials)


def _ask(sw: _Sweep, n: int) -> list[_Trial]:
    """``n`` new trials with their parameters and plans (failed when those are refused)."""
    out = []
    for _ in range(n):
        trial = sw.study.ask()
        t = _Trial(trial, sw.cfg.search_space().suggest(trial))
        try:
            wf, model = apply_params(sw.cfg.walkforward, t.params)
            t.config = trial_config(wf, model)
            t.plan = sw.plan(wf, f"{sw.study.study_name}-t{t.number}", model)
        except UserError as err:
            t.state, t.error = "failed", f"{type(err).__name__}: {err}"
        out.append(t)
    return out


def _sweep_fold(task: FoldTask) -> FoldOutcome | str:
    """:func:`run_fold`, its configuration's errors returned as text (the trial fails)."""
    try:
        return run_fold(task)
    except UserError as err:
        return f"{type(err).__name__}: {err}"


def _run_batch(sw: _Sweep, trials: Sequence[_Trial]) -> None:
    """The trials' folds in step: fold k of every running trial on the executor, then each
    reports its objective so far and the pruner may stop it."""
    n_folds = len(sw.probes[sw.cfg.walkforward.window].splits)
    for k in range(1, n_folds + 1):
        running = [t for t in trials if t.state == "running" and t.plan is not None]
        tasks = [FoldTask(sw.store_path, sw.frames, t.plan, k, t.plan.splits[k - 1], sw.run.id)
                 for t in running if t.plan is not None]  # fmt: skip
        for t, out in zip(running, sw.executor.map(_sweep_fold, tasks), strict=True):
            if isinstance(out, str):
                t.state, t.error = "failed", out
                continue
            sw.registry.link_model(out.card.ref, sw.run.id)
            t.folds.append(out)
            t.value = _objective(t.returns(), sw.cfg.objective)
            if k < n_folds:
                t.trial.report(t.value, k)
                if t.trial.should_prune():
                    t.state = "pruned"
    for t in trials:
        if t.state == "running":
            t.state = "complete"


def _objective(returns: pd.Series, objective: str) -> float:
    value = float(getattr(performance(returns), objective))
    return value if math.isfinite(value) else 0.0


def _tell(sw: _Sweep, trials: Sequence[_Trial]) -> None:
    """Record the batch: a registry trial per trial that finished a fold, the study's
    outcome of each (its configuration and result kept on it), a log line each."""
    from optuna.trial import TrialState

    rows = []
    for t in trials:
        info: dict[str, Any] = {"run": sw.run.id, "error": t.error}
        if t.folds:
            result = t.result()
            rows.append(trial_row(t.config, result))
            info |= {
                "config": t.config,
                "result": {k: v for k, v in result.items() if k != "folds"},
            }
            if t.state == "complete":
                sw.returns[t.number] = t.returns()
        t.trial.set_user_attr("btml", _jsonable(info))
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}
        values = t.value if t.state == "complete" else None
        sw.study.tell(t.trial, values, state=state.get(t.state, TrialState.FAIL))
        sw.log(_trial_line(t, sw.cfg.objective))
    if rows:
        sw.run.record_trials(rows)
        sw.rows += rows
    if sw.returns:
        frame = pd.DataFrame({f"t{n}": r for n, r in sorted(sw.returns.items())})
        frame.index.name = "timestamp"
        frame.to_parquet(sw.run.add_artifact("returns.parquet"))


def _jsonable(value: Any) -> Any:
    from workflows.runs_info import to_jsonable

    return to_jsonable(value, "trial")


def _trial_line(t: _Trial, objective: str) -> str:
    params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
    score = "" if t.value is None else f" {objective} {t.value:.4f}"
    why = f": {t.error}" if t.error else ""
    return f"trial {t.number} {t.state}{score} after {len(t.folds)} fold(s) ({params}){why}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- the study ------------------------------------------------------------------------------------


def trials_table(study: Any) -> pd.DataFrame:
    """The study's finished trials ranked: complete by objective, then pruned, then failed
    (``trial`` the index; the objective, the stitched results, the run, the parameters)."""
    rows = []
    for t in study.trials:
        if not t.state.is_finished():
            continue
        info = t.user_attrs.get("btml") or {}
        res = info.get("result") or {}
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "objective": res.get("objective", t.value), "sharpe": res.get("sharpe"),
                     "return": res.get("total_return"), "max_drawdown": res.get("max_drawdown"),
                     "trades": res.get("trades"), "run": info.get("run"), **t.params})  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=["state", "objective"]).rename_axis("trial")
    table = pd.DataFrame(rows).set_index("trial")
    rank = table["state"].map({"complete": 0, "pruned": 1}).fillna(2)
    order = pd.DataFrame({"r": rank, "v": -table["objective"].astype(float)}).sort_values(
        ["r", "v"]
    )
    return table.loc[order.index]


# -- the result -----------------------------------------------------------------------------------


def _finish(sw: _Sweep, inputs: Mapping[str, str], url: str, resumed: bool) -> SweepResult:
    """Rank the study's trials, deflate the best finished one's Sharpe ratio, measure the
    PBO across the finished ones, and save the run's files and metrics."""
    table = trials_table(sw.study)
    table.to_csv(sw.run.add_artifact("trials.csv"))
    series = {**_earlier_returns(sw), **sw.returns}
    ranked = [int(n) for n, row in table.iterrows() if row["state"] == "complete" and n in series]
    best, sel = None, None
    if ranked:
        prior = _prior_trials(sw, inputs)
        sel = assess(prior, sw.run.id, "sweep", sw.rows, [series[n] for n in ranked])
        t = sw.study.trials[ranked[0]]
        info = t.user_attrs["btml"]
        best = {"trial": t.number, "value": t.value, "params": t.params,
                "config": info["config"], "result": info["result"]}  # fmt: skip
    metrics = _metrics(sw, table, best, sel)
    summary = {"study": sw.study.study_name, "storage": sw.registry.where, "resumed": resumed,
               "objective": sw.cfg.objective, "space": sw.cfg.space, "best": best,
               "metrics": metrics, "warnings": list(sw.warnings)}  # fmt: skip
    from workflows.runs_info import write_json

    write_json(sw.run.add_artifact("summary.json"), _jsonable(summary))
    sw.run.log_metrics(metrics)
    return SweepResult(
        sw.run.id, sw.run.dir, sw.cfg, sw.study.study_name, resumed, table, best,
        series[ranked[0]] if ranked else None, sel, sw.warnings,
    )  # fmt: skip


def _metrics(
    sw: _Sweep, table: pd.DataFrame, best: Mapping[str, Any] | None, sel: Selection | None
) -> dict[str, Any]:
    """The run's metrics: the study, the trial counts, the best trial's results (named as a
    walk-forward's), the selection statistics and the ``warnings`` (survivorship)."""
    mine = table[table["run"] == sw.run.id] if "run" in table else table.iloc[:0]
    counts = mine["state"].value_counts()
    out: dict[str, Any] = {
        "study": sw.study.study_name, "objective": sw.cfg.objective, "trials": len(mine),
        "study_trials": len(table), **{s: int(counts.get(s, 0)) for s in ("complete", "pruned", "failed")},
    }  # fmt: skip
    if best is not None:
        res = best["result"]
        out |= {"best_trial": best["trial"], "best_value": best["value"],
                **{k: res[k] for k in ("sharpe", "total_return", "max_drawdown", "trades")}}  # fmt: skip
    warned = {"warnings": list(sw.warnings)} if sw.warnings else {}
    return out | (sel.metrics() if sel is not None else {}) | warned


def _earlier_returns(sw: _Sweep) -> dict[int, pd.Series]:
    """The stitched returns of the study's complete trials of earlier runs, from those
    runs' ``returns.parquet`` (a run removed since is left out)."""
    out: dict[int, pd.Series] = {}
    frames: dict[str, pd.DataFrame | None] = {}
    for t in sw.study.trials:
        run = (t.user_attrs.get("btml") or {}).get("run")
        if t.state.name != "COMPLETE" or run in (None, sw.run.id):
            continue
        if run not in frames:
            path = sw.registry.runs_dir / run / "returns.parquet"
            frames[run] = pd.read_parquet(path) if path.is_file() else None
        frame = frames[run]
        if frame is not None and f"t{t.number}" in frame:
            out[t.number] = frame[f"t{t.number}"].dropna()
    return out


def _prior_trials(sw: _Sweep, inputs: Mapping[str, str]) -> DataTrials:
    """The configurations tried on the same data before this run: the registry's (earlier
    sweeps among them: ``sweep`` is one of ``TRIAL_KINDS``) and the study's own earlier trials
    (whatever became of their runs)."""
    prior = sw.registry.data_trials(inputs, exclude=[sw.run.id])
    extra: list[Trial] = []
    for t in sw.study.trials:
        info = t.user_attrs.get("btml") or {}
        if info.get("run") not in (None, sw.run.id) and "config" in info:
            extra.append(Trial(info["config"], info["result"].get("sharpe"), (info["run"],)))
    return prior.plus(extra)
