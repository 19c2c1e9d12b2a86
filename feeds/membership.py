"""Point-in-time membership: which symbols belonged to an index (a universe) on which dates.

Two CSV layouts, told apart by their header, both accepted wherever a membership file is:

* spans, ``symbol,start,end``: the symbol is a member from ``start`` up to, not including,
  ``end`` (the first date it is no longer one); an empty ``end`` means still a member::

      symbol,start,end
      AAPL,2004-01-02,
      IBM,2004-01-02,2008-01-02
      MSFT,2008-01-02,

* snapshots, ``date,symbol[,weight|shares]`` (the index builder's layout, :func:`read_membership`):
  the members listed on each date stay members until the next date in the file.

:class:`Membership` answers "was ``symbol`` a member at ``t``" for the backtests (a broker that
only trades members, ``analyzers.membership_broker``); the index builder reads spans or
snapshots (``IndexConfig(spans=...)`` or ``membership=...``). A bad file is refused with one
line naming its file line (the header is line 1) and the rule it breaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError, DataError

SPAN_COLUMNS = ("symbol", "start", "end")


@dataclass(frozen=True, kw_only=True)
class MemberRow(DataConfig):
    """One row of a point-in-time table: from ``date`` on, ``symbol`` is a member (with a
    weight or a share count when the table has them)."""

    date: str
    symbol: str
    weight: float | None = None
    shares: float | None = None


@dataclass(frozen=True, kw_only=True)
class MemberSpan(DataConfig):
    """``symbol`` is a member from ``start`` up to, not including, ``end`` (None: still one)."""

    symbol: str
    start: str
    end: str | None = None

    def __post_init__(self) -> None:
        if not self.symbol or self.symbol != self.symbol.strip():
            raise ConfigError(f"membership: a span needs a symbol, got {self.symbol!r}")
        lo, hi = _date(self.start, "start"), _date(self.end, "end")
        if hi is not None and lo is not None and hi <= lo:
            raise ConfigError(
                f"membership: {self.symbol} ends {self.end} before it starts {self.start}"
            )

    def bounds(self) -> tuple[pd.Timestamp, pd.Timestamp | None]:
        lo = _date(self.start, "start")
        assert lo is not None
        return lo, _date(self.end, "end")


def _date(value: str | None, what: str) -> pd.Timestamp | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"membership: {what} {value!r} is not a date (use YYYY-MM-DD)") from err
    if ts is pd.NaT:
        raise ConfigError(f"membership: {what} {value!r} is not a date (use YYYY-MM-DD)")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class Membership:
    """Member spans by symbol: ``is_member(symbol, t)`` and ``mask(symbol, times)``."""

    def __init__(self, spans: Sequence[MemberSpan]) -> None:
        if not spans:
            raise ConfigError("membership: no spans given; each row is symbol,start[,end]")
        self.spans = tuple(spans)
        self._by: dict[str, list[tuple[pd.Timestamp, pd.Timestamp | None]]] = {}
        for s in self.spans:
            self._by.setdefault(s.symbol, []).append(s.bounds())

    def symbols(self) -> tuple[str, ...]:
        """Every symbol that was ever a member, in order of first appearance."""
        return tuple(self._by)

    def is_member(self, symbol: str, t: object) -> bool:
        """Was ``symbol`` a member at time ``t`` (UTC, or naive UTC)?"""
        ts = pd.Timestamp(t)  # type: ignore[arg-type]
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return any(lo <= ts and (hi is None or ts < hi) for lo, hi in self._by.get(symbol, []))

    def mask(self, symbol: str, times: pd.DatetimeIndex) -> np.ndarray:
        """A boolean per time: a member then."""
        idx = pd.DatetimeIndex(times)
        idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
        out = np.zeros(len(idx), dtype=bool)
        for lo, hi in self._by.get(symbol, []):
            out |= (idx >= lo) & ((idx < hi) if hi is not None else True)
        return out


def spans_from_rows(rows: Sequence[MemberRow]) -> tuple[MemberSpan, ...]:
    """Snapshot rows as spans: a symbol is a member from a snapshot listing it until the first
    later snapshot that does not."""
    dates = sorted({pd.Timestamp(r.date) for r in rows})
    listed: dict[str, set[pd.Timestamp]] = {}
    for r in rows:
        listed.setdefault(r.symbol, set()).add(pd.Timestamp(r.date))
    spans = []
    for sym, on in listed.items():
        start = None
        for d in dates:
            if d in on and start is None:
                start = d
            elif d not in on and start is not None:
                spans.append(MemberSpan(symbol=sym, start=start.isoformat(), end=d.isoformat()))
                start = None
        if start is not None:
            spans.append(MemberSpan(symbol=sym, start=start.isoformat()))
    return tuple(spans)


def rows_from_table(
    table: pd.DataFrame | tuple[MemberRow, ...] | None,
) -> tuple[MemberRow, ...] | None:
    """A ``date,symbol[,weight][,shares]`` frame as rows (rows are returned as they are)."""
    if table is None or isinstance(table, tuple):
        return table
    cols = [c for c in ("weight", "shares") if c in table.columns]
    return tuple(
        MemberRow(
            date=pd.Timestamp(r["date"]).isoformat(),
            symbol=str(r["symbol"]),
            **{c: float(r[c]) for c in cols if pd.notna(r[c])},
        )
        for _, r in table.iterrows()
    )


def member_table(rows: tuple[MemberRow, ...]) -> pd.DataFrame:
    """Rows as a frame: UTC ``date``, ``symbol``, and ``weight``/``shares`` when any row has them."""
    out = pd.DataFrame({"date": [r.date for r in rows], "symbol": [r.symbol for r in rows]})
    out["date"] = pd.to_datetime(out["date"], utc=True)
    for c in ("weight", "shares"):
        values = [getattr(r, c) for r in rows]
        if any(v is not None for v in values):
            out[c] = [float("nan") if v is None else v for v in values]
    return out


# -- files ------------------------------------------------------------------------------------


def _read_csv(path: str | Path, what: str) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: cannot read {what} file ({err})") from err
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    return raw


def membership_layout(path: str | Path) -> str:
    """``"spans"`` (symbol,start,end) or ``"snapshots"`` (date,symbol[,...]) by the header."""
    cols = set(_read_csv(path, "membership").columns)
    if {"symbol", "start"} <= cols:
        return "spans"
    if {"date", "symbol"} <= cols:
        return "snapshots"
    raise DataError(
        f"{path}: a membership file has the columns symbol,start,end (end empty = still a "
        f"member) or date,symbol; this one has {', '.join(sorted(cols)) or 'none'}"
    )


def read_spans(path: str | Path) -> tuple[MemberSpan, ...]:
    """A ``symbol,start,end`` file as spans, each row checked (see the module docstring)."""
    raw = _read_csv(path, "membership")
    unknown = [c for c in raw.columns if c not in SPAN_COLUMNS]
    if unknown or not {"symbol", "start"} <= set(raw.columns):
        raise DataError(
            f"{path}: a spans membership file has the columns symbol,start,end, got "
            f"{', '.join(raw.columns)}"
        )
    spans: list[MemberSpan] = []
    seen: dict[str, list[tuple[int, MemberSpan]]] = {}
    for i, row in enumerate(raw.to_dict("records")):
        line = i + 2
        span = _span(path, line, row)
        for other_line, other in seen.get(span.symbol, []):
            if _overlap(span, other):
                raise DataError(
                    f"{path} line {line}: {span.symbol} from {span.start[:10]} overlaps its span "
                    f"on line {other_line} ({other.start[:10]} to {(other.end or 'now')[:10]}); "
                    "merge the two rows"
                )
        seen.setdefault(span.symbol, []).append((line, span))
        spans.append(span)
    if not spans:
        raise DataError(f"{path}: no rows; each row is symbol,start[,end]")
    return tuple(spans)


def _span(path: str | Path, line: int, row: dict[str, str]) -> MemberSpan:
    sym = str(row.get("symbol", "")).strip()
    start, end = str(row.get("start", "")).strip(), str(row.get("end", "")).strip()
    if not sym:
        raise DataError(f"{path} line {line}: no symbol")
    if not start:
        raise DataError(f"{path} line {line}: {sym} has no start date")
    try:
        lo, hi = _date(start, "start"), _date(end, "end")
    except ConfigError as err:
        raise DataError(f"{path} line {line}: {str(err).removeprefix('membership: ')}") from err
    assert lo is not None
    if hi is not None and hi <= lo:
        raise DataError(f"{path} line {line}: {sym} ends {end} on or before its start {start}")
    return MemberSpan(symbol=sym, start=lo.isoformat(), end=hi.isoformat() if hi else None)


def _overlap(a: MemberSpan, b: MemberSpan) -> bool:
    (a0, a1), (b0, b1) = a.bounds(), b.bounds()
    return (a1 is None or b0 < a1) and (b1 is None or a0 < b1)


def read_membership(path: str | Path) -> pd.DataFrame:
    """Read a snapshot membership CSV: ``date,symbol`` plus an optional ``weight`` or
    ``shares`` column (the index builder's layout; see :func:`read_spans` for the other).

    Example::

        date,symbol,weight
        2004-01-02,AAPL,0.5
        2004-01-02,IBM,0.5
        2008-01-02,AAPL,0.4
        2008-01-02,GOOG,0.6
    """
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: cannot read membership file ({err})") from err
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = {"date", "symbol"} - set(raw.columns)
    if missing:
        raise DataError(
            f"{path}: membership file needs columns date,symbol (missing {', '.join(sorted(missing))}); "
            "or give spans as symbol,start,end"
        )
    dates = pd.to_datetime(raw["date"], utc=True, errors="coerce")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        raise DataError(
            f"{path} line {bad[0] + 2}: date {raw['date'].iloc[bad[0]]!r} is not a date (use YYYY-MM-DD)"
        )
    raw["date"] = dates
    return raw


def read_member_spans(path: str | Path) -> tuple[MemberSpan, ...]:
    """Either layout of membership file as spans."""
    if membership_layout(path) == "spans":
        return read_spans(path)
    rows = rows_from_table(read_membership(path))
    assert rows is not None
    return spans_from_rows(rows)


def load_membership(path: str | Path) -> Membership:
    """Either layout of membership file as a :class:`Membership`."""
    return Membership(read_member_spans(path))


def read_weights(path: str) -> tuple[dict[str, float] | None, pd.DataFrame | None]:
    """Read a weights file: ``symbol,weight`` (fixed/starting weights) or ``date,symbol,shares``."""
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read weights file ({err})") from err
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    if {"date", "symbol", "shares"} <= set(raw.columns):
        raw["date"] = pd.to_datetime(raw["date"], utc=True)
        return None, raw
    if {"symbol", "weight"} <= set(raw.columns):
        return {str(s): float(w) for s, w in zip(raw["symbol"], raw["weight"], strict=True)}, None
    raise DataError(f"{path}: weights file needs columns symbol,weight or date,symbol,shares")
