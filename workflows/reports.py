"""Tearsheets of saved runs (``{store}/backtests/NAME``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analyzers.performance import run_statistics
from analyzers.signal_quality import signal_quality
from analyzers.tearsheet import write_tearsheet
from feeds.errors import DataError


def tearsheet_for_run(run_dir: str | Path, out: str | Path) -> Path:
    """QuantStats report of the run's first strategy against its buy-and-hold (if any), with
    the ML section when the run has an audit trail."""
    run_dir = Path(run_dir)
    try:
        rets = pd.read_parquet(run_dir / "returns.parquet")
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"{run_dir} is not a saved backtest run ({err}); see btml backtest"
        ) from err
    main = rets.columns[0]
    bench = "buy-and-hold" if "buy-and-hold" in rets and main != "buy-and-hold" else None
    card = summary.get("model_card")
    quality = None
    if (run_dir / "audit.parquet").exists():
        audit = pd.read_parquet(run_dir / "audit.parquet")
        horizons = tuple((card or {}).get("horizons") or (1, 4, 24))
        quality = signal_quality(audit, horizons)
    runs = pd.DataFrame({c: run_statistics(rets[c].dropna()) for c in rets.columns}).T
    return write_tearsheet(
        rets[main].dropna(),
        rets[bench].dropna() if bench else None,
        out,
        title=f"{main} vs {bench or 'no benchmark'}",
        signal_quality=quality,
        model_card=card,
        runs=runs,
    )
