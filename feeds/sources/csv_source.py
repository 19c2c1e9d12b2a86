"""CSV files: wide (one symbol per file) and long (``Ticker,Date,...``) layouts.

Yahoo- and backtrader-style files work as they are: column names are matched case-insensitively
(``Date``/``Datetime``/``timestamp``, ``Open`` ... ``Volume``, ``Adj Close``). Timezones are explicit:

* timestamps that carry an offset (``2022-01-04 00:00:00-05:00``) are converted to UTC;
* naive timestamps need ``tz=`` (the zone they are in), except date-only daily rows;
* daily bars are stored at 00:00 UTC of their local session date (the store's convention).

With ``adjust=True`` and an ``Adj Close`` column, open/high/low/close are scaled by
``adj_close / close`` (dividends and splits), and the frame records ``adjustment="adjusted"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from feeds.errors import DataError, SymbolNotFound
from feeds.frame import OHLCV_COLUMNS, make_frame
from feeds.sources.base import to_utc
from feeds.timeframes import get_timeframe

_DATE_NAMES = ("date", "datetime", "timestamp", "time")
_SYMBOL_NAMES = ("ticker", "symbol")
_OFFSET_RE = r"(?:[+-]\d\d:?\d\d|Z)$"


def _columns(raw: pd.DataFrame, path: Path) -> dict[str, str]:
    lower = {str(c).strip().lower().replace("_", " "): str(c) for c in raw.columns}
    date_col = next((lower[n] for n in _DATE_NAMES if n in lower), None)
    if date_col is None:
        raise DataError(
            f"{path}: no date column (looked for {', '.join(_DATE_NAMES)}); have {list(raw.columns)}"
        )
    missing = [c for c in OHLCV_COLUMNS if c not in lower]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; have {list(raw.columns)}. "
            "A CSV needs Date, Open, High, Low, Close, Volume (any case)."
        )
    out = {"date": date_col, **{c: lower[c] for c in OHLCV_COLUMNS}}
    for extra in ("adj close", "dividends", "stock splits"):
        if extra in lower:
            out[extra] = lower[extra]
    sym = next((lower[n] for n in _SYMBOL_NAMES if n in lower), None)
    if sym:
        out["symbol"] = sym
    return out


def _parse_dates(values: pd.Series, path: Path, tz: str | None, daily: bool) -> pd.DatetimeIndex:
    text = values.astype(str)
    blank = values.isna().to_numpy() | (text.str.strip() == "").to_numpy()
    if blank.any():
        line = int(blank.argmax()) + 2  # 1-based, after the header line
        raise DataError(
            f"{path}: line {line}: empty date in {int(blank.sum())} row(s); fill or drop those rows"
        )
    has_offset = text.str.contains(_OFFSET_RE, regex=True)
    if (
        has_offset.any() and not has_offset.all()
    ):  # checked outside the try: DataError is a ValueError
        first = text[~has_offset].iloc[0]
        raise DataError(
            f"{path}: some timestamps carry a UTC offset and some do not (first without: {first!r}); make them uniform"
        )
    try:
        if has_offset.all():
            if daily:  # the local session date, at 00:00 UTC
                local = pd.to_datetime(text.str.replace(_OFFSET_RE, "", regex=True), format="mixed")
                return pd.DatetimeIndex(local).normalize().tz_localize("UTC")
            return pd.DatetimeIndex(pd.to_datetime(text, utc=True, format="mixed"))
        idx = pd.DatetimeIndex(pd.to_datetime(text, format="mixed"))
    except (ValueError, TypeError) as err:
        bad = next(
            (s for s in text if pd.isna(pd.to_datetime(s, errors="coerce", format="mixed"))), None
        )
        raise DataError(f"{path}: unparseable date {bad!r}; use ISO dates like 2020-01-31") from err
    date_only = bool((idx == idx.normalize()).all())
    if daily and date_only:
        return idx.tz_localize("UTC")
    if tz is None:
        raise DataError(
            f"{path}: timestamps have no timezone (first {text.iloc[0]!r}); "
            "say which zone they are in with tz=... / --tz (for example America/New_York or UTC)"
        )
    local = idx.tz_localize(tz)
    return (
        (local.tz_localize(None).normalize().tz_localize("UTC"))
        if daily
        else local.tz_convert("UTC")
    )


def read_csv_frames(
    path: str | os.PathLike[str],
    *,
    symbol: str | None = None,
    tz: str | None = None,
    timeframe: str = "1Day",
    adjust: bool = False,
    actions: bool = False,
) -> dict[str, pd.DataFrame]:
    """Read every symbol in a CSV file into canonical frames, keyed by symbol.

    A wide file (no ticker column) holds one symbol, named by ``symbol`` or else the file stem.
    """
    p = Path(path)
    try:
        raw = pd.read_csv(p, compression="infer")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{p}: cannot read as CSV ({err})") from err
    if raw.empty:
        raise SymbolNotFound(f"{p}: the file has no rows")
    cols = _columns(raw, p)
    tf = get_timeframe(timeframe)
    raw.index = _parse_dates(raw[cols["date"]], p, tz, daily=not tf.intraday)
    if "symbol" in cols:
        groups = {str(k): g for k, g in raw.groupby(cols["symbol"], sort=False)}
        if symbol is not None:
            if symbol not in groups:
                raise SymbolNotFound(
                    f"{p}: no rows for {symbol}; the file holds {', '.join(groups)}"
                )
            groups = {symbol: groups[symbol]}
    else:
        groups = {symbol or p.stem.split(".")[0].upper(): raw}
    return {sym: _to_frame(g, cols, sym, tf.name, adjust, actions) for sym, g in groups.items()}


def _to_frame(
    g: pd.DataFrame, cols: dict[str, str], symbol: str, timeframe: str, adjust: bool, actions: bool
) -> pd.DataFrame:
    data = pd.DataFrame({c: g[cols[c]] for c in OHLCV_COLUMNS}, index=g.index)
    adjustment = "raw"
    if adjust:
        if "adj close" not in cols:
            raise DataError(f"{symbol}: adjust=True needs an 'Adj Close' column")
        factor = pd.to_numeric(g[cols["adj close"]], errors="coerce") / pd.to_numeric(
            g[cols["close"]], errors="coerce"
        )
        for c in ("open", "high", "low", "close"):
            data[c] = pd.to_numeric(data[c], errors="coerce") * factor
        adjustment = "adjusted"
    keep: tuple[str, ...] = ()
    if actions:
        for extra, name in (("dividends", "dividends"), ("stock splits", "stock_splits")):
            if extra in cols:
                data[name] = g[cols[extra]].to_numpy(dtype=np.float64)
                keep += (name,)
    return make_frame(
        data, symbol=symbol, source="csv", timeframe=timeframe, adjustment=adjustment, keep=keep
    )


class CsvSource:
    """A CSV file as a source: ``fetch(symbol)`` returns that symbol's rows in ``[start, end)``."""

    name = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tz: str | None = None,
        adjust: bool = False,
        actions: bool = False,
    ) -> None:
        self.path = Path(path)
        self.tz = tz
        self.adjust = adjust
        self.actions = actions
        self._cache: dict[str, dict[str, pd.DataFrame]] = {}

    def symbols(self, timeframe: str = "1Day") -> list[str]:
        """The symbols the file holds."""
        return list(self._frames(timeframe))

    def _frames(self, timeframe: str) -> dict[str, pd.DataFrame]:
        if timeframe not in self._cache:
            self._cache[timeframe] = read_csv_frames(
                self.path, tz=self.tz, timeframe=timeframe, adjust=self.adjust, actions=self.actions
            )
        return self._cache[timeframe]

    def fetch(
        self,
        symbol: str,
        *,
        timeframe: str = "1Day",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Return ``symbol``'s rows in ``[start, end)``."""
        frames = self._frames(timeframe)
        if symbol not in frames:
            raise SymbolNotFound(f"{symbol} is not in {self.path}; it holds {', '.join(frames)}")
        f = frames[symbol]
        s, e = to_utc(start), to_utc(end)
        mask = np.ones(len(f), dtype=bool)
        if s is not None:
            mask &= f.index >= s
        if e is not None:
            mask &= f.index < e
        out = f[mask]
        if out.empty:
            raise SymbolNotFound(f"{symbol}: no rows in {self.path} between {s} and {e}")
        out.attrs = dict(f.attrs)
        return out
