"""Importing a CSV file into the store: all symbols or none, nothing stored silently changed.

Every symbol in the file is read and checked before anything is written: bad rows are refused
all at once (or, with ``drop_invalid``, left out and written to a file beside the store), and a
symbol whose stored series has another source, adjustment or asset class, or other prices on
the same days, or whose prices jump where the file joins the stored series, refuses the whole
import unless ``replace`` is given. A symbol stored only at other timeframes is refused too,
unless ``add_timeframe`` keeps both series or ``replace`` replaces the stored ones. A symbol
stored under another asset class at the file's timeframe is refused even with ``replace``.
These checks run for every symbol before the first write, so a refused import changes nothing.
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
    removed: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False when a stored series now has a soft finding (a split suspect, a seam jump)."""
        return all(r.ok for r in self.reports.values())

    def lines(self) -> list[str]:
        """One line per stored symbol, per file of rejected rows and per replaced series."""
        out = [f"{r.summary()} -> {self.stored[s]}" for s, r in self.reports.items()]
        for sym, paths in self.removed.items():
            tfs = ", ".join(p.parent.name for p in paths)
            out.append(
                f"{sym}: replaced the stored {tfs} series (removed {', '.join(map(str, paths))})"
            )
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
    add_timeframe: bool = False,
) -> ImportResult:
    """Import every symbol of a CSV file into ``store``; see the module docstring for the rules.

    ``allow_jump`` accepts a price jump where the file joins the stored series (a real move on
    that day) instead of refusing it as a likely change of vendor or adjustment.
    ``add_timeframe`` stores a symbol's bars beside its series at other timeframes; without
    it, ``replace`` removes those series once the new one is written (listed in
    :attr:`ImportResult.removed`).
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
    # every refusal, for every symbol, before the first write
    replaced = {
        sym: _check_frame(
            store, frame, replace=replace, add_timeframe=add_timeframe, allow_jump=allow_jump
        )
        for sym, frame in checked.items()
    }
    result = ImportResult(read=read)
    for sym, frame in checked.items():
        result.stored[sym] = store.write(frame, merge=not replace)
        _, report = validate(
            store.read(sym, read.timeframe, asset_class=frame.attrs["asset_class"]), sym
        )
        report.notes = read.notes.get(sym, [])
        result.reports[sym] = report
    for sym, paths in replaced.items():
        for old in paths:  # only once every new series is written
            store.remove(sym, old.parent.name, old.parent.parent.name)
        if paths:
            result.removed[sym] = paths
    for sym, rejected in read.rejected.items():
        result.rejected_files[sym] = store.write_rejected(sym, read.timeframe, rejected)
    return result


def _check_frame(
    store: ParquetStore,
    frame: pd.DataFrame,
    *,
    replace: bool,
    add_timeframe: bool,
    allow_jump: bool,
) -> list[Path]:
    """Raise the refusal storing ``frame`` would meet; return the stored series it replaces.

    Writes nothing. The returned files (the symbol's series at other timeframes) are only
    non-empty with ``replace`` and without ``add_timeframe``.
    """
    attrs = frame.attrs
    sym, tf = str(attrs["symbol"]), str(attrs["timeframe"])
    wanted = store.path_for(sym, tf, attrs.get("asset_class"))
    store.check_asset_class(sym, tf, wanted)
    others = [p for p in store.series_of(sym) if p.parent.name != wanted.parent.name]
    if others and not wanted.exists():
        if add_timeframe:
            _check_same_asset_class(sym, wanted, others)
        elif replace:
            return others
        else:
            raise StoreConflict(_timeframe_conflict(sym, wanted, others))
    if not replace:
        _check_merge(store, frame, allow_jump)
    return []


def _timeframe_conflict(sym: str, wanted: Path, others: list[Path]) -> str:
    ac = wanted.parent.parent.name
    stored = ", ".join(
        p.parent.name + ("" if p.parent.parent.name == ac else f" ({p.parent.parent.name})")
        for p in others
    )
    return (
        f"{sym} is stored at {stored}; these bars are {wanted.parent.name}. Nothing was written: "
        f"keep both series with --add-timeframe, replace the stored one with --replace, or "
        f"import under another symbol (--symbol {sym}_{wanted.parent.name})"
    )


def _check_same_asset_class(sym: str, wanted: Path, others: list[Path]) -> None:
    other = next((p for p in others if p.parent.parent.name != wanted.parent.parent.name), None)
    if other is not None:
        raise StoreConflict(
            f"{sym}: already stored as {other.parent.parent.name} ({other}), these bars are "
            f"{wanted.parent.parent.name}; nothing was written. Pass --asset-class "
            f"{other.parent.parent.name}, or replace the stored series with --replace"
        )


def _check_merge(store: ParquetStore, frame: pd.DataFrame, allow_jump: bool) -> None:
    """Raise the conflict a merge into the stored series would raise, before anything is written."""
    attrs = frame.attrs
    path = store.find(attrs["symbol"], attrs["timeframe"])
    if path is None:
        return
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
