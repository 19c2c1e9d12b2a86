"""Data workflows: importing a file into the store, recorded in the run registry.

A refused import (bad rows, a conflict with the stored series) changes nothing: neither the
store nor the registry. A successful one is recorded as a run of kind ``import`` with the
options, the file's sha256, rows stored and rejected per symbol, the rejected-row files, and
the stored series that ``replace`` removed (another timeframe of an imported symbol).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from feeds.importer import ImportResult, import_csv
from feeds.sources.csv_source import CsvOptions
from feeds.store import ParquetStore
from workflows.runs import RunRegistry
from workflows.runs_info import file_sha256


def import_file(
    store: str | os.PathLike[str],
    path: str | os.PathLike[str],
    options: CsvOptions | None = None,
    *,
    drop_invalid: bool = False,
    replace: bool = False,
    allow_jump: bool = False,
    add_timeframe: bool = False,
    db_url: str | None = None,
) -> tuple[ImportResult, str]:
    """Import a CSV file (see :func:`feeds.importer.import_csv`) and record it; returns the run id."""
    opts = options or CsvOptions()
    t0 = time.perf_counter()
    result = import_csv(
        ParquetStore(store),
        path,
        opts,
        drop_invalid=drop_invalid,
        replace=replace,
        allow_jump=allow_jump,
        add_timeframe=add_timeframe,
    )
    params = {
        "file": str(Path(path).resolve()),
        "options": dataclasses.asdict(opts),
        "drop_invalid": drop_invalid,
        "replace": replace,
        "allow_jump": allow_jump,
        "add_timeframe": add_timeframe,
        "removed": {s: [str(p) for p in paths] for s, paths in result.removed.items()},
        "timeframe": result.read.timeframe,
        "layout": result.read.layout,
    }
    with (
        RunRegistry(store, db_url) as registry,
        registry.start("import", params, inputs={Path(path).name: file_sha256(path)}) as run,
    ):
        run.log_metrics(
            {
                "symbols": len(result.stored),
                "rows_read": result.read.total_rows,
                "rows_rejected": result.read.n_rejected,
                **{f"rows_{s}": r.rows for s, r in result.reports.items()},
                "seconds": time.perf_counter() - t0,
            }
        )
        for rejected in result.rejected_files.values():
            run.add_artifact(rejected)
    return result, run.id
