"""What a walk-forward reports over all its folds at once: per head, its activity, its warnings.

* **Per head** (:func:`stitched_report`): each fold's model card has an out-of-sample report
  over its own test segment (:func:`mlmodels.evaluate.out_of_sample_report`). The walk-forward's
  is the same report over every fold's test segment at once: each fold's network predictions on
  its test samples, made by that fold's model (:func:`fold_predictions`), concatenated with the
  truth of the same samples, so every sample is scored by a model that never saw it, and the
  intervals are the same moving-block bootstrap over the stitched dates. The run's metrics hold
  it flat as training's do (``oos_edge``, ``oos_{head}_{model}_{metric}``, ...:
  :func:`workflows.train.flat_report`), with ``oos_baselines`` saying which baselines it has.
* **Its baselines are the naive ones** (:data:`BASELINES_NOTE`): the class prior and mean
  return of the folds' training splits pooled (each fold's own naive forecast, averaged
  weighted by its training samples), the trailing volatility, and for the confidence the
  network's hit rate on the folds' validation splits pooled. The trained baselines (logistic
  / ridge, LightGBM) are fit per fold and stay in each fold's card: stitching them would fit
  every one of them again.
* **Activity** (:func:`stitched_result`): round trips and positions open at each fold's end
  summed over the folds, exposure the folds' weighted by their bars, so a walk-forward that
  never trades, or buys and holds, says so as a backtest does
  (:attr:`analyzers.metrics.Performance.activity`).
* **Warnings** (:func:`index_warnings`): an index built from a universe's today's constituents
  carries a survivorship warning in every report that uses it, as backtests do.
* **Seeds** (:func:`seed_table`, :func:`seed_spread`): with several training seeds, a row per
  seed and the spread of :data:`SEED_METRICS` across them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import nn

from analyzers.backtest import BacktestResult
from analyzers.metrics import performance
from core.errors import DataError
from mlmodels.dataset import WindowDataset
from mlmodels.evaluate import out_of_sample_report, predict
from mlmodels.splits import Split
from workflows.runs import Run
from workflows.runs_info import to_jsonable, write_json
from workflows.train import flat_report

if TYPE_CHECKING:
    from workflows.walkforward import WalkForwardResult

#: The per-seed metrics whose spread across seeds a run reports.
SEED_METRICS = ("return", "sharpe", "max_drawdown", "deflated_sharpe")
#: The network outputs the report scores (the others are not carried back from the folds).
HEADS = ("direction", "price", "volatility", "confidence")
BASELINES_NOTE = (
    "naive baselines only (the folds' training priors and mean returns pooled); the trained "
    "baselines (logistic/ridge, LightGBM) are in each fold's model card"
)


@dataclass(frozen=True)
class FoldPredictions:
    """One fold's split (positions in the walk-forward's dataset) and its network's outputs
    on the split's test and validation samples, in the split's order."""

    split: Split
    test: Mapping[str, np.ndarray]
    val: Mapping[str, np.ndarray]


def fold_predictions(model: nn.Module, ds: WindowDataset, split: Split) -> FoldPredictions:
    """The fold model's outputs on its test and validation samples (``ds`` scaled as the model
    was trained), only the heads the report scores."""

    def heads(idx: np.ndarray) -> dict[str, np.ndarray]:
        out = predict(model, ds, idx)
        return {k: v for k, v in out.items() if k in HEADS}

    return FoldPredictions(split, heads(split.test), heads(split.val))


def stitched_report(
    ds: WindowDataset, folds: Sequence[FoldPredictions], *, vol_lag: int = 24, reps: int = 500
) -> dict[str, Any]:
    """The out-of-sample report of every fold's test samples together (see the module
    docstring); ``ds`` is the walk-forward's dataset (its targets; scaling does not matter)."""
    test = np.concatenate([f.split.test for f in folds])
    train = np.concatenate([f.split.train for f in folds])  # each fold's naive, pooled
    network = {k: np.concatenate([f.test[k] for f in folds]) for k in folds[0].test}
    checked = [f for f in folds if len(f.split.val)]  # a fold may have no validation tail
    val, val_pred = None, None
    if checked:
        val = np.concatenate([f.split.val for f in checked])
        val_pred = {"direction": np.concatenate([f.val["direction"] for f in checked])}
    report = out_of_sample_report(
        {"network": network}, ds, train, test, val_pred=val_pred, val=val, vol_lag=vol_lag,
        reps=reps,
    )  # fmt: skip
    return {**report, "folds": len(folds), "baselines": BASELINES_NOTE}


def record_report(run: Run, report: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keep the stitched report in the run's ``oos_report.json``; returns it as the run's
    flat metrics (``oos_*``, as training's, and ``oos_baselines``; none without a report)."""
    if report is None:
        return {}
    write_json(run.add_artifact("oos_report.json"), to_jsonable(dict(report), "report"))
    return {**flat_report(report), "oos_baselines": report["baselines"]}


def stitch(parts: Sequence[pd.Series]) -> pd.Series:
    """The folds' returns in time order; overlapping test segments are a bug."""
    stitched = pd.concat(parts).sort_index()
    if stitched.index.has_duplicates:
        raise DataError("walk-forward test segments overlap; this is a bug in the splitter")
    return stitched


def stitched_result(
    name: str, returns: pd.Series, cash: float, parts: Sequence[BacktestResult]
) -> BacktestResult:
    """The folds' results ``parts`` as one run over the stitched ``returns`` (every fold
    starts from ``cash``): trades, round trips and open positions summed, exposure weighted
    by each fold's bars (left unmeasured when a fold did not measure it)."""
    stats, bars = [p.stats for p in parts], [len(p.returns) for p in parts]
    perf = performance(returns, trades=sum(s.trades for s in stats))
    measured = [(s.round_trips, s.open_positions, s.exposure) for s in stats]
    if stats and sum(bars) and all(None not in m for m in measured):
        perf = dataclasses.replace(
            perf, round_trips=sum(s.round_trips or 0 for s in stats),
            open_positions=sum(s.open_positions or 0 for s in stats),
            exposure=float(np.average([s.exposure or 0.0 for s in stats], weights=bars)),
        )  # fmt: skip
    return BacktestResult(name, returns, cash * (1 + perf.total_return), perf)


def index_warnings(name: str | None, index: pd.DataFrame | None) -> tuple[str, ...]:
    """The survivorship warning of a stored index (its ``survivorship`` attribute: built from
    a universe's today's constituents), naming the index; none without one."""
    notes = str(index.attrs.get("survivorship", "")) if index is not None else ""
    return (f"index {name}: {notes}",) if notes else ()


def seed_table(results: Sequence[WalkForwardResult], first_seed: int = 0) -> pd.DataFrame:
    """A row per seed (``seed`` the index): the stitched return, Sharpe, drawdown, trades and
    deflated Sharpe."""
    rows = []
    for res in results:
        p = performance(res.returns, trades=int(res.folds["trades"].sum()))
        rows.append({"return": p.total_return, "sharpe": p.sharpe, "max_drawdown": p.max_drawdown,
                     "trades": p.trades, "deflated_sharpe": res.dsr["dsr"]})  # fmt: skip
    index = pd.RangeIndex(first_seed, first_seed + len(rows), name="seed")
    return pd.DataFrame(rows, index=index)


def seed_spread(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1), min and max across seeds of each of :data:`SEED_METRICS`."""
    return table[list(SEED_METRICS)].agg(["mean", "std", "min", "max"])
