"""Importing a CSV file into the store: all symbols or none, nothing stored silently changed.

Every symbol in the file is read and checked before anything is written: bad rows are refused
all at once (or, with ``drop_invalid``, left out and written to a file beside the store), and a
symbol whose stored series has another source, adjustment or asset class, or other prices on
the same days, or whose prices jump where the file joins the stored series, refuses the whole
import unless ``replace`` is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.errors import DataError, StoreConflict
from feeds.sources.csv_source import CsvOptions, CsvRead, read_csv
from feeds.store import ParquetStore, merge_series
from feeds.validate import ValidationReport, parse_seams, seam_jumps, validate


@dataclass
class ImportResult:
    """What an import stored, per symbol, and where the rejected rows went."""

    read: CsvRead
    stored: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, ValidationReport] = field(default_factory=dict)
    rejected_files: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False when a stored series now has a soft finding (a split suspect, a seam jump)."""
        return all(r.ok for r in self.reports.values())

    def lines(self) -> list[str]:
        out = [f"{r.summary()} -> {self.stored[s]}" for s, r in self.reports.items()]
        for sym, path in self.rejected_files.items():
            n = len(self.read.rejected[sym])
            out.append(f"{sym}: {n} rejected row(s) left out -> {path}")
        return out


def import_csv(
    store: ParquetStore,
    path: str | os.PathLike[str],
    options: CsvOptions | None = None,
    *,
    drop_invalid: bool = False,
    replace: bool = False,
    allow_jump: bool = False,
) -> ImportResult:
    """Import every symbol of a CSV file into ``store``; see the module docstring for the rules.

    ``allow_jump`` accepts a price jump where the file joins the stored series (a real move on
    that day) instead of refusing it as a likely change of vendor or adjustment.
    """
    opts = options or CsvOptions()
    read = read_csv(path, opts)
    blocking = {
        s: r[r["rule"] != "duplicate"]
        for s, r in read.rejected.items()
        if (r["rule"] != "duplicate").any()
    }
    if blocking and not drop_invalid:
        raise read.error()
    if not read.frames:
        raise DataError(f"{read.path}: no valid rows to import")
    checked = {sym: validate(frame, sym)[0] for sym, frame in read.frames.items()}
    if not replace:
        for frame in checked.values():
            _check_merge(store, frame, allow_jump)
    result = ImportResult(read=read)
    for sym, frame in checked.items():
        result.stored[sym] = store.write(frame, merge=not replace)
        _, report = validate(
            store.read(sym, read.timeframe, asset_class=frame.attrs["asset_class"]), sym
        )
        report.notes = read.notes.get(sym, [])
        result.reports[sym] = report
    for sym, rejected in read.rejected.items():
        result.rejected_files[sym] = store.write_rejected(sym, read.timeframe, rejected)
    return result


def _check_merge(store: ParquetStore, frame: pd.DataFrame, allow_jump: bool) -> None:
    """Raise the conflict a merge into the stored series would raise, before anything is written."""
    attrs = frame.attrs
    path = store.find(attrs["symbol"], attrs["timeframe"])
    if path is None:
        return
    wanted = store.path_for(attrs["symbol"], attrs["timeframe"], attrs.get("asset_class"))
    store.check_asset_class(attrs["symbol"], attrs["timeframe"], wanted)
    stored = store.read(attrs["symbol"], attrs["timeframe"], asset_class=path.parent.parent.name)
    merged, merged_attrs = merge_series(stored, frame, dict(attrs))
    new_seams = set(parse_seams(merged_attrs.get("seams"))) - set(
        parse_seams(stored.attrs.get("seams"))
    )
    jumps = seam_jumps(merged, sorted(new_seams))
    if jumps and not allow_jump:
        ts, ret = jumps[0]
        raise StoreConflict(
            f"{attrs['symbol']}: the price jumps {ret:+.1%} at {ts}, where this file joins the "
            "stored series: another vendor or adjustment? Nothing was written. Replace the series "
            f"with --replace, store it under another symbol, or accept the move with --allow-jump"
        )
