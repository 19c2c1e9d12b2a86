"""What a backtest run writes and how it is read back: results, tearsheets, the plot.

A backtest's folder (``{store}/runs/{id}/``, see :func:`workflows.backtest.backtest`) holds
``returns.parquet`` (one column per strategy: the requested one first), ``audit.parquet``
(the ML decisions), ``risk_outcomes.parquet`` (what each risk rule measured and did at each
decision: ``strategies.audit.outcomes_frame``), ``summary.json`` (each strategy's statistics
and notes, the model card, the run's warnings), and on request ``tearsheet.html`` and ``plot.png``. :func:`tearsheet_of_run` reads a recorded run
by id; :func:`tearsheet_for_run` reads any such folder.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers.backtest import BacktestResult
from analyzers.performance import run_statistics
from analyzers.signal_quality import signal_quality
from analyzers.tearsheet import write_tearsheet
from core.errors import DataError, StoreError
from mlmodels.registry import ModelCard
from strategies.audit import decisions_frame, outcomes_frame
from workflows.runs import Run, RunRegistry
from workflows.runs_info import to_jsonable, write_json

BUY_AND_HOLD = "buy-and-hold"


def write_results(
    folder: Path,
    results: Sequence[BacktestResult],
    card: ModelCard | None,
    warnings: Sequence[str] = (),
) -> list[str]:
    """Write ``returns.parquet`` (a column per result), the ML audit trail (the decisions,
    and the risk rules' outcomes) and ``summary.json`` (with the run's ``warnings`` and each
    result's ``notes``) into ``folder``; returns the names written."""
    folder.mkdir(parents=True, exist_ok=True)
    rets = pd.DataFrame({r.name: r.returns for r in results})
    rets.index.name = "timestamp"
    rets.to_parquet(folder / "returns.parquet")
    names = ["returns.parquet"]
    for r in results:
        audit = getattr(r.strategy, "audit", None)
        if audit:
            decisions_frame(audit).to_parquet(folder / "audit.parquet")
            outcomes_frame(audit).to_parquet(folder / "risk_outcomes.parquet", index=False)
            names += ["audit.parquet", "risk_outcomes.parquet"]
    summary = {
        "runs": [
            {"name": r.name, "final_value": r.final_value, **r.stats.as_row(),
             **({"notes": list(r.notes)} if r.notes else {})}
            for r in results
        ],
        "model_card": None if card is None else json.loads(card.to_json()),
        "warnings": list(warnings),
    }  # fmt: skip
    write_json(folder / "summary.json", to_jsonable(summary, "summary"))
    return [*names, "summary.json"]


def save_results(
    run: Run,
    results: Sequence[BacktestResult],
    card: ModelCard | None,
    warnings: Sequence[str] = (),
) -> None:
    """Write the results into ``run``'s folder and record them as its artefacts."""
    for name in write_results(run.dir, results, card, warnings):
        run.add_artifact(name)


def tearsheet_for_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    benchmark: pd.Series | None = None,
) -> Path:
    """QuantStats report of the run's first strategy against ``benchmark`` (default: the
    run's buy-and-hold column, if any), with the ML section when the run has an audit trail.

    ``benchmark`` is a return series, e.g. buy-and-hold of the same symbols over the same
    bars for a walk-forward run; it is also listed in the runs table as ``buy-and-hold``.
    """
    run_dir = Path(run_dir)
    try:
        rets = pd.read_parquet(run_dir / "returns.parquet")
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"{run_dir} is not a saved backtest run ({err}); see btml backtest"
        ) from err
    main = str(rets.columns[0])
    if benchmark is not None:
        if len(benchmark.dropna()) < 2:
            raise DataError("the benchmark has fewer than 2 returns: nothing to compare with")
        rets = rets.drop(columns=[BUY_AND_HOLD], errors="ignore")
        rets = rets.join(benchmark.rename(BUY_AND_HOLD), how="outer")
    bench = BUY_AND_HOLD if BUY_AND_HOLD in rets and main != BUY_AND_HOLD else None
    card = summary.get("model_card")
    quality = None
    if (run_dir / "audit.parquet").exists():
        audit = pd.read_parquet(run_dir / "audit.parquet")
        horizons = tuple((card or {}).get("horizons") or (1, 4, 24))
        quality = signal_quality(audit, horizons)
    runs = pd.DataFrame({c: run_statistics(rets[c].dropna()) for c in rets.columns}).T
    notes = [*summary.get("warnings", []), *summary["runs"][0].get("notes", [])]
    flag = " (survivorship-biased universe)" if any("survivorship" in n for n in notes) else ""
    return write_tearsheet(
        rets[main].dropna(),
        rets[bench].dropna() if bench else None,
        out,
        title=f"{main} vs {bench or 'no benchmark'}{flag}",
        signal_quality=quality,
        model_card=card,
        runs=runs,
        notes=notes,
    )


def tearsheet_of_run(
    store: str | os.PathLike[str],
    run: str,
    out: str | os.PathLike[str],
    *,
    benchmark: pd.Series | None = None,
    db_url: str | None = None,
) -> Path:
    """The tearsheet of recorded run ``run`` (an id or a unique prefix of one)."""
    with RunRegistry(store, db_url) as registry:
        record = registry.get(run)
    if "returns.parquet" not in record.artifacts:
        raise DataError(
            f"run {record.id} ({record.kind}) has no returns.parquet: not a backtest run "
            "(`btml runs list --kind backtest` lists those)"
        )
    return tearsheet_for_run(record.dir, out, benchmark=benchmark)


def render_plot(result: BacktestResult, out: str | os.PathLike[str]) -> Path:
    """backtrader's own chart of a finished run (every feed and its indicators), as a PNG.

    Headless: matplotlib's Agg backend is selected here (after backtrader's plot module,
    which asks for Tk when imported)."""
    import backtrader.plot as btplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cerebro: Any = getattr(result.strategy, "cerebro", None)
    if cerebro is None:
        raise DataError(f"{result.name}: no finished backtrader run to plot")
    plotter = btplot.Plot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Agg cannot show(): the figure is saved instead
        figs = cerebro.plot(plotter=plotter, iplot=False) or []
    flat = [f for group in figs for f in group]
    if not flat:
        raise DataError(f"{result.name}: backtrader drew nothing (no bars were run)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        plotter.savefig(flat[0], str(out), width=16, height=9, dpi=100)
    finally:
        for fig in flat:
            plt.close(fig)
    return out


def copy_out(src: Path, dest: str | os.PathLike[str] | None) -> Path:
    """``src`` copied to ``dest`` (its folder made); ``src`` itself when ``dest`` is None."""
    if dest is None:
        return src
    try:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(src, dest))
    except OSError as err:
        raise StoreError(f"could not copy {src.name} to {dest}: {err}") from err
