"""The configurations tried on a data set, and the selection statistics they imply.

Selection bias grows with every configuration tried on the same data, not only with those of
one run. :meth:`~workflows.runs.RunRegistry.data_trials` gathers them from the registry and
:func:`assess` deflates a run's Sharpe ratio with them (and its own), and measures the
probability of backtest overfitting across the run's own configurations.

* **The same data**: equal data inputs (file -> sha256; model files, under ``models/``, left
  out). A file with other bytes (new bars, other adjustments) is other data.
* **Which runs**: finished (``ok``) runs of :data:`TRIAL_KINDS`, whose trials are
  configurations competing to be selected (not ``stress``, whose scenarios shock one model).
* **One trial is one distinct configuration**: a trial row without its ``result``. Repeating
  a configuration tries nothing new (it counts once, with the mean of its Sharpe ratios);
  the folds of one walk-forward are one configuration (it records a trial per seed).
* **Its Sharpe ratio**: the row's ``result["sharpe"]``. Rows recorded before results were
  kept in trials take it from their run's metrics (``sharpe``; ``{strategy}_sharpe`` for a
  backtest's baselines), and a walk-forward's old per-fold rows are one trial.

Sharpe ratios in the registry are annualised as ``analyzers.metrics.performance`` does it
(252 periods a year whatever the bar size); the statistics use per-period ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from analyzers.overfitting import PBOResult, deflated_sharpe, probability_of_backtest_overfitting
from workflows.runs_db import RunRow, TrialRow
from workflows.runs_info import to_jsonable

#: Run kinds whose trials are configurations competing to be selected.
TRIAL_KINDS = ("backtest", "walkforward", "sweep")
#: The periods a year registry Sharpe ratios are annualised with.
PERIODS_PER_YEAR = 252
RESULT = "result"


@dataclass(frozen=True)
class Trial:
    """One configuration: what it was, its annualised Sharpe ratio (None when unknown), and
    the runs that tried it."""

    config: Mapping[str, Any]
    sharpe: float | None = None
    runs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return json.dumps(to_jsonable(dict(self.config), "trial"), sort_keys=True)


@dataclass(frozen=True)
class DataTrials:
    """The distinct configurations tried on one data set (``data``: file -> sha256)."""

    data: Mapping[str, str]
    trials: tuple[Trial, ...] = ()

    @property
    def n_trials(self) -> int:
        return len(self.trials)

    @property
    def sharpes(self) -> tuple[float, ...]:
        """The annualised Sharpe ratios known, in the trials' order."""
        return tuple(t.sharpe for t in self.trials if t.sharpe is not None)

    @property
    def runs(self) -> tuple[str, ...]:
        return tuple(sorted({r for t in self.trials for r in t.runs}))

    def plus(self, trials: Iterable[Trial]) -> DataTrials:
        return DataTrials(self.data, distinct([*self.trials, *trials]))


def data_inputs(inputs: Mapping[str, Any]) -> dict[str, str]:
    """The data files among a run's inputs: all but the model files (under ``models/``)."""
    return {k: str(v) for k, v in inputs.items() if not k.startswith("models/")}


def query_data_trials(
    s: Session, inputs: Mapping[str, Any], exclude: Sequence[str] = ()
) -> DataTrials:
    """:meth:`~workflows.runs.RunRegistry.data_trials` in session ``s``."""
    data = data_inputs(inputs)
    q = sa.select(RunRow.id, RunRow.kind, RunRow.metrics, RunRow.inputs).where(
        RunRow.kind.in_(TRIAL_KINDS), RunRow.status == "ok"
    )
    runs = [r for r in s.execute(q.order_by(RunRow.id))
            if r.id not in exclude and data_inputs(r.inputs) == data]  # fmt: skip
    ids = [r.id for r in runs]
    rows: dict[str, list[dict[str, Any]]] = {}
    for i in range(0, len(ids), 500):  # under every backend's limit of bound values
        t = sa.select(TrialRow.run_id, TrialRow.config).where(TrialRow.run_id.in_(ids[i : i + 500]))
        for rid, config in s.execute(t.order_by(TrialRow.run_id, TrialRow.seq)):
            rows.setdefault(rid, []).append(dict(config))
    found = [t for r in runs for t in run_trials(r.id, r.kind, r.metrics, rows.get(r.id, []))]
    return DataTrials(data, distinct(found))


def trial_row(config: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """A trial as a run records it: its configuration, and what it scored under ``result``
    (``sharpe`` annualised, as in the run's metrics)."""
    return {**config, RESULT: dict(result)}


def run_trials(
    run_id: str, kind: str, metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> list[Trial]:
    """The trials one run recorded (``rows``, in order), with their Sharpe ratios."""
    out: list[Trial] = []
    folds = False
    for row in rows:
        if isinstance(row.get(RESULT), Mapping):
            config = {k: v for k, v in row.items() if k != RESULT}
            out.append(Trial(config, _number(row[RESULT].get("sharpe")), (run_id,)))
        elif kind == "walkforward" and "fold" in row:  # recorded before: a row per fold
            folds = True
        else:
            out.append(Trial(dict(row), _legacy_sharpe(row, metrics, len(rows)), (run_id,)))
    if folds:
        out.append(Trial({"walkforward": run_id}, _number(metrics.get("sharpe")), (run_id,)))
    return out


def _legacy_sharpe(row: Mapping[str, Any], metrics: Mapping[str, Any], n: int) -> float | None:
    strategy = row.get("strategy")
    if n == 1 or strategy == "ml":
        return _number(metrics.get("sharpe"))
    return _number(metrics.get(f"{strategy}_sharpe")) if strategy else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def distinct(trials: Iterable[Trial]) -> tuple[Trial, ...]:
    """One trial per configuration, first seen first: the mean of its known Sharpe ratios and
    every run that tried it."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(t.key, []).append(t)
    out = []
    for same in groups.values():
        known = [t.sharpe for t in same if t.sharpe is not None]
        runs = tuple(dict.fromkeys(r for t in same for r in t.runs))
        out.append(Trial(same[0].config, float(np.mean(known)) if known else None, runs))
    return tuple(out)


@dataclass(frozen=True)
class Selection:
    """A run's selection statistics: the configurations counted (``trials``: earlier runs'
    on the same data and the run's own; ``prior`` of them from earlier runs), the deflated
    Sharpe ratio of each of the run's return series, and the PBO across them (with 2+)."""

    trials: DataTrials
    prior: int
    dsr: tuple[dict[str, float], ...]
    pbo: PBOResult | None = None

    def metrics(self) -> dict[str, Any]:
        """The run's metrics: its first series' deflated Sharpe, the trials it was deflated
        by (``dsr_n_trials``, ``dsr_sharpe_variance`` per period) and the PBO if measured."""
        d = self.dsr[0]
        out = {"deflated_sharpe": d["dsr"], "sr0": d["sr0"], "dsr_n_trials": int(d["trials"]),
               "dsr_prior_trials": self.prior, "dsr_sharpe_variance": d["sharpe_variance"]}  # fmt: skip
        if self.pbo is not None:
            out |= {"pbo": self.pbo.pbo, "pbo_partitions": self.pbo.n_partitions}
        return out

    def describe(self, i: int = 0) -> str:
        """One line on series ``i``'s deflated Sharpe ratio and what it was deflated by."""
        d, n = self.dsr[i], int(self.dsr[i]["trials"])
        if n == 1:
            return f"deflated Sharpe {d['dsr']:.3f} (P[true Sharpe > 0]; the only configuration tried on this data)"
        return (
            f"deflated Sharpe {d['dsr']:.3f} (P[true Sharpe > {d['sr0']:.4f} a bar, the best of "
            f"{n} unskilled trials]; {n} configurations tried on this data, {self.prior} in "
            f"earlier runs; V[SR] {d['sharpe_variance']:.3g})"
        )

    def describe_pbo(self, what: str = "configuration") -> str:
        """One line on the PBO ("" when not measured)."""
        p = self.pbo
        if p is None:
            return ""
        return (
            f"PBO {p.pbo:.2f}: the {what} best in-sample was at or below the median out of "
            f"sample in {p.pbo:.0%} of {p.n_combinations} splits of {p.n_partitions} blocks"
        )

    def lines(self, name: str, what: str = "configuration") -> list[str]:
        """What to print: ``name``'s deflated Sharpe, then the PBO if measured."""
        return [f"{name}: {self.describe()}", *filter(None, [self.describe_pbo(what)])]


def assess(
    prior: DataTrials,
    run_id: str,
    kind: str,
    rows: Sequence[Mapping[str, Any]],
    returns: Sequence[pd.Series],
) -> Selection:
    """Deflate each of ``returns`` by the ``prior`` trials plus the run's own ``rows``, and
    measure the PBO across ``returns`` (the run's configurations, same bars) when 2 or more."""
    trials = prior.plus(run_trials(run_id, kind, {}, rows))
    dsr = tuple(deflate(r, trials) for r in returns)
    return Selection(trials, prior.n_trials, dsr, overfitting(returns))


def deflate(returns: pd.Series, trials: DataTrials) -> dict[str, float]:
    """The deflated Sharpe ratio of ``returns`` for ``trials`` (at least one: the run's). With
    fewer than two Sharpe ratios known, the trials' variance is the null one, 1 / (T - 1)."""
    n = max(1, trials.n_trials)
    per_period = [s / math.sqrt(PERIODS_PER_YEAR) for s in trials.sharpes]
    if n > 1 and len(per_period) < 2:
        t = int(returns.notna().sum())
        return deflated_sharpe(returns, n_trials=n, sharpe_variance=1 / max(1, t - 1))
    return deflated_sharpe(returns, per_period, n_trials=n)


def overfitting(returns: Sequence[pd.Series], max_partitions: int = 16) -> PBOResult | None:
    """The PBO across 2+ return series over the same bars (missing returns as 0), with as
    many blocks as fit up to ``max_partitions`` (4+ bars each); None when it cannot be
    measured (fewer than 8 bars, or identical series)."""
    if len(returns) < 2:
        return None
    m = pd.concat(list(returns), axis=1).sort_index().fillna(0.0).to_numpy()
    s = min(max_partitions, len(m) // 4 // 2 * 2)
    if s < 2 or (m == m[:, :1]).all():  # too short, or nothing to choose between
        return None
    return probability_of_backtest_overfitting(m, s)
