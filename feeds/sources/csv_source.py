"""CSV files in the shapes people have: one symbol, long, wide, close-only, pandas and spreadsheet exports.

Layouts (told apart by their columns):

* **ohlcv**: ``Date, Open, High, Low, Close[, Volume][, Adj Close]`` for one symbol (named by
  ``symbol`` or the file name); yfinance, backtrader, Nasdaq (``Close/Last``, ``$`` prices) and
  Investing.com (``Price``, ``Vol.`` with ``K``/``M``) files included;
* **long**: the same plus a symbol column (``Ticker``, ``Symbol`` or ``Name`` as in Kaggle's
  DJIA/S&P files, or ``symbol_col``), many symbols in one file;
* **close**: a date and one ``Close`` (or ``Adj Close``/``Price``) column: open, high and low are
  set to the close and volume to 0;
* **wide**: a date and one close column per symbol (``Date, AAPL, IBM, MSFT``).

A ``pandas.DataFrame.to_csv()`` file (an unnamed index column) is read as written. The
separator and decimal mark (``;`` with ``1.234,56``) are sniffed, as is day-first order when a
day above 12 shows it; the timeframe is inferred from the spacing of the timestamps and must
agree with a stated one. Timezones are explicit: offsets in the text are honoured, naive
intraday timestamps need ``tz``, and daily bars are stamped 00:00 UTC of their session date.

Rows that break a rule are collected, not raised one at a time: :func:`read_csv` returns the
good rows and the rejected ones with their file line and rule; :func:`read_csv_frames` refuses
the file if any row is bad.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError, DataError, SymbolNotFound
from core.utc import to_utc
from feeds.frame import ASSET_CLASSES, OHLCV_COLUMNS, make_frame
from feeds.sources.csv_layout import Layout, find_layout
from feeds.sources.csv_parse import parse_local_times, read_table, to_numbers, utc_index
from feeds.timeframes import Timeframe, get_timeframe, infer_timeframe
from feeds.validate import ROW_RULES, row_rules

_WHAT = {rule: what for rule, what, _ in ROW_RULES}
MAX_SHOWN = 10


@dataclass(frozen=True, kw_only=True)
class CsvOptions(DataConfig):
    """How to read a CSV file; every field left at None is sniffed or inferred."""

    symbol: str | None = None
    sep: str | None = None
    decimal: str | None = None
    date_col: str | None = None
    symbol_col: str | None = None
    dayfirst: bool | None = None
    tz: str | None = None
    timeframe: str | None = None
    asset_class: str | None = None
    adjust: bool = False
    actions: bool = False
    repair: bool = False

    def __post_init__(self) -> None:
        if self.asset_class is not None and self.asset_class not in ASSET_CLASSES:
            raise ConfigError(
                f"asset_class must be one of {', '.join(ASSET_CLASSES)}, got {self.asset_class!r}"
            )
        if self.timeframe is not None:
            get_timeframe(self.timeframe)
        for name in ("sep", "decimal"):
            value = getattr(self, name)
            if value is not None and len(value) != 1:
                raise ConfigError(f"--{name} must be one character, got {value!r}")


@dataclass
class CsvRead:
    """What a CSV file held: good rows per symbol, rejected rows, and what was sniffed."""

    path: Path
    timeframe: str
    layout: str
    total_rows: int
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    rejected: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        return sum(len(r) for r in self.rejected.values())

    def rejected_lines(self) -> list[str]:
        """One line per rejected row, in file order: line number, symbol, date, what, rule."""
        if not self.rejected:
            return []
        rows = pd.concat(list(self.rejected.values())).sort_values("line", kind="stable")
        return [
            f"line {r.line}: {r.symbol} {r.date_text!r}: {r.what} [rule: {r.rule}]"
            for r in rows.itertuples()
        ]

    def error(self) -> DataError:
        """The refusal when rows were rejected: count, the first ten, and the option that helps."""
        lines = self.rejected_lines()
        shown = "\n".join(f"  {ln}" for ln in lines[:MAX_SHOWN])
        more = f"\n  ... and {len(lines) - MAX_SHOWN} more" if len(lines) > MAX_SHOWN else ""
        return DataError(
            f"{self.path}: {len(lines)} of {self.total_rows} rows break a rule; nothing was "
            f"imported. Fix them, or import the rest with --drop-invalid (the rejected rows are "
            f"kept in a file beside the store):\n{shown}{more}"
        )


def read_csv(path: str | os.PathLike[str], options: CsvOptions | None = None) -> CsvRead:
    """Read every symbol in a CSV file, keeping the good rows and collecting the bad ones."""
    opts = options or CsvOptions()
    p = Path(path)
    raw, dialect = read_table(p, opts.sep, opts.decimal)
    if raw.empty:
        raise SymbolNotFound(f"{p}: the file has no rows")
    layout = find_layout(raw, p, opts.date_col, opts.symbol_col)
    date_text = raw[layout.date]
    local, bad_date, offsets = parse_local_times(date_text, opts.dayfirst, p)
    tf = _timeframe(local[~bad_date], opts.timeframe, p)
    idx, bad_tz = utc_index(
        local, date_text, offsets=offsets, daily=not tf.intraday, tz=opts.tz, path=p
    )
    out = CsvRead(path=p, timeframe=tf.name, layout=layout.kind, total_rows=len(raw))
    sniffed = [dialect.describe()] if dialect.sep != "," or dialect.decimal != "." else []
    if layout.dropped_index:
        sniffed.append("a pandas row-number column was ignored")
    date_bad = np.where(bad_date, "date", np.where(bad_tz, "timezone", ""))
    ctx = _Ctx(raw=raw, layout=layout, opts=opts, timeframe=tf.name, decimal=dialect.decimal)
    for sym, rows, values, num_bad in _symbol_rows(raw, layout, opts, p, dialect.decimal):
        rules = _rules(values, date_bad[rows], num_bad)
        frame, rejected, notes = _split(ctx, rows, idx[rows], values, rules, sym)
        out.notes[sym] = sniffed + notes
        if len(frame):
            out.frames[sym] = frame
        if len(rejected):
            out.rejected[sym] = rejected
    return out


def _timeframe(local: pd.DatetimeIndex, stated: str | None, path: Path) -> Timeframe:
    try:
        inferred = infer_timeframe(pd.DatetimeIndex(local.unique()))
    except ConfigError as err:
        raise DataError(f"{path}: {err}") from err
    if stated is not None and inferred is not None and get_timeframe(stated).name != inferred:
        raise DataError(
            f"{path}: the timestamps are spaced as {inferred} bars but --timeframe says "
            f"{get_timeframe(stated).name}; pass --timeframe {inferred} (or leave it out: it is "
            "inferred), or resample the file first"
        )
    return get_timeframe(inferred or stated or "1Day")


def _symbol_rows(
    raw: pd.DataFrame, layout: Layout, opts: CsvOptions, path: Path, decimal: str
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per symbol: row positions, an (n, 5) OHLCV array and each row's number-parsing failure."""
    out = []
    if layout.kind == "wide":
        cols = [c for c in layout.wide if opts.symbol in (None, c)]
        if not cols:
            raise SymbolNotFound(
                f"{path}: no column {opts.symbol}; it holds {', '.join(layout.wide)}"
            )
        for col in cols:
            close, missing, unreadable = to_numbers(raw[col], decimal)
            rows = np.flatnonzero(~missing)  # a symbol not yet listed is no bad row
            values = np.column_stack([close, close, close, close, np.zeros(len(close))])[rows]
            num_bad = np.where(unreadable, f"number:{col}", "")[rows]
            out.append((col.strip().upper(), rows, values, num_bad))
        return out
    values, num_bad = _ohlcv_numbers(raw, layout, opts, decimal)
    if layout.symbol is None:
        name = opts.symbol or path.name.split(".")[0].upper()
        return [(name, np.arange(len(raw)), values, num_bad)]
    groups = raw.groupby(layout.symbol, sort=False).indices
    if opts.symbol is not None:
        if opts.symbol not in groups:
            raise SymbolNotFound(
                f"{path}: no rows for {opts.symbol}; the file holds {', '.join(map(str, groups))}"
            )
        groups = {opts.symbol: groups[opts.symbol]}
    return [(str(sym), rows, values[rows], num_bad[rows]) for sym, rows in groups.items()]


def _ohlcv_numbers(
    raw: pd.DataFrame, layout: Layout, opts: CsvOptions, decimal: str
) -> tuple[np.ndarray, np.ndarray]:
    cols = layout.columns
    num_bad = np.full(len(raw), "", dtype=object)
    arrays: dict[str, np.ndarray] = {}
    for name in ("open", "high", "low", "close", "volume", "adj close"):
        if name not in cols:
            continue
        v, missing, unreadable = to_numbers(raw[cols[name]], decimal, suffixes=name == "volume")
        if name == "volume":
            v = np.where(missing, 0.0, v)  # an empty volume (an index, a holiday row) is no volume
            missing = np.zeros(len(v), dtype=bool)
        arrays[name] = v
        if name == "adj close" and not opts.adjust:
            continue  # not used: its gaps do not matter
        num_bad[(num_bad == "") & unreadable] = f"number:{cols[name]}"
        num_bad[(num_bad == "") & missing] = f"missing:{cols[name]}"
    close = arrays["close"]
    if opts.adjust:
        if "adj close" not in arrays:
            raise DataError(f"{layout.file}: --adjust needs an 'Adj Close' column")
        factor = arrays["adj close"] / close
        arrays = {
            k: (v * factor if k in ("open", "high", "low", "close") else v)
            for k, v in arrays.items()
        }
        close = arrays["close"] if "close" in cols else arrays["adj close"]
    o = arrays.get("open", close)
    h = arrays.get("high", close)
    lo = arrays.get("low", close)
    vol = arrays.get("volume", np.zeros(len(raw)))
    return np.column_stack([o, h, lo, close, vol]), num_bad


def _rules(values: np.ndarray, date_bad: np.ndarray, num_bad: np.ndarray) -> np.ndarray:
    rules = row_rules(values)
    rules = np.where(num_bad != "", num_bad, rules)
    return np.where(date_bad != "", date_bad, rules)


@dataclass(frozen=True)
class _Ctx:
    raw: pd.DataFrame
    layout: Layout
    opts: CsvOptions
    timeframe: str
    decimal: str


def _actions(ctx: _Ctx, pos: np.ndarray, data: pd.DataFrame) -> tuple[str, ...]:
    """Add the dividends and stock-split columns (yfinance files) when asked to keep them."""
    keep: tuple[str, ...] = ()
    if not ctx.opts.actions:
        return keep
    for extra, name in (("dividends", "dividends"), ("stock splits", "stock_splits")):
        if extra in ctx.layout.columns:
            v, _, _ = to_numbers(ctx.raw[ctx.layout.columns[extra]].iloc[pos], ctx.decimal)
            data[name] = np.nan_to_num(v)
            keep += (name,)
    return keep


def _split(
    ctx: _Ctx,
    rows: np.ndarray,
    idx: pd.DatetimeIndex,
    values: np.ndarray,
    rules: np.ndarray,
    symbol: str,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The good rows as a canonical frame, the rejected ones, and what was done to the order."""
    raw, layout, opts = ctx.raw, ctx.layout, ctx.opts
    good = rules == ""
    data = pd.DataFrame(values[good], index=idx[good], columns=list(OHLCV_COLUMNS))
    keep = _actions(ctx, rows[good], data)
    lines = rows[good] + 2
    data, lines, dup_rows, notes = _order(data, lines, opts.repair, symbol, layout.file)
    frame = make_frame(
        data,
        symbol=symbol,
        source="csv",
        timeframe=ctx.timeframe,
        adjustment="adjusted" if opts.adjust else "raw",
        asset_class=opts.asset_class,
        extra_attrs={"file": layout.file.name}
        | ({"bars": "close-only"} if layout.close_only else {}),
        keep=keep,
    )
    if layout.close_only:
        notes.append("close only: open, high and low set to the close, volume to 0")
    elif "volume" not in layout.columns:
        notes.append("no volume column: volume set to 0")
    bad_pos = rows[~good]
    rejected = _rejected(raw, bad_pos, rules[~good], symbol, layout)
    if len(dup_rows):
        dups = _rejected(
            raw, dup_rows - 2, np.full(len(dup_rows), "duplicate", dtype=object), symbol, layout
        )
        rejected = pd.concat([rejected, dups]) if len(rejected) else dups
    return frame, rejected, notes


def _order(
    data: pd.DataFrame, lines: np.ndarray, repair: bool, symbol: str, path: Path
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]:
    """Oldest first; identical duplicates dropped; differing duplicates refused or (repair) listed."""
    notes: list[str] = []
    idx = data.index
    if len(idx) > 1 and not idx.is_monotonic_increasing:
        if idx.is_monotonic_decreasing:
            notes.append("newest-first file: rows reversed")
        elif not repair:
            pos = int(np.argmax(np.diff(idx.asi8) < 0)) + 1
            raise DataError(
                f"{path}: {symbol}: line {lines[pos]} ({idx[pos]}) goes back in time; "
                "sort the rows with --repair (nothing is dropped)"
            )
        else:
            notes.append("rows sorted by time")
        order = np.argsort(idx.asi8, kind="stable")
        data, lines = data.iloc[order], lines[order]
    same = data.reset_index().duplicated(keep="last").to_numpy()
    if same.any():
        notes.append(f"dropped {int(same.sum())} identical duplicate row(s)")
        data, lines = data[~same], lines[~same]
    dup = data.index.duplicated(keep="last")
    if dup.any() and not repair:
        raise DataError(
            f"{path}: {symbol}: {int(dup.sum())} timestamp(s) appear twice with different values, "
            f"first {data.index[dup][0]} at line {lines[dup][0]}; keep the last of each with --repair "
            "(the dropped rows are listed and kept beside the store)"
        )
    dropped = lines[dup]
    if dup.any():
        notes.append(
            f"dropped {len(dropped)} earlier row(s) of duplicated timestamps: lines {_some(dropped)}"
        )
    return data[~dup], lines[~dup], dropped, notes


def _some(lines: np.ndarray) -> str:
    shown = ", ".join(str(x) for x in lines[:MAX_SHOWN])
    return shown + (" ..." if len(lines) > MAX_SHOWN else "")


def _rejected(
    raw: pd.DataFrame, pos: np.ndarray, rules: np.ndarray, symbol: str, layout: Layout
) -> pd.DataFrame:
    if not len(pos):
        return pd.DataFrame()
    out = raw.iloc[pos].copy()
    out.insert(0, "line", pos + 2)
    out.insert(1, "symbol", symbol)
    out.insert(2, "rule", [r.split(":")[0] for r in rules])
    out.insert(3, "what", [_what(r) for r in rules])
    out.insert(4, "date_text", raw[layout.date].iloc[pos].to_numpy())
    return out.reset_index(drop=True)


def _what(rule: str) -> str:
    if rule.startswith("number:"):
        return f"{rule.split(':', 1)[1]} is no number"
    if rule.startswith("missing:"):
        return f"{rule.split(':', 1)[1]} is empty"
    return {
        "date": "unreadable date",
        "timezone": "time does not exist in --tz (DST)",
        "duplicate": "timestamp repeated (an earlier row was kept out)",
    }.get(rule, _WHAT.get(rule, rule))


def read_csv_frames(
    path: str | os.PathLike[str],
    *,
    symbol: str | None = None,
    tz: str | None = None,
    timeframe: str | None = None,
    adjust: bool = False,
    actions: bool = False,
    options: CsvOptions | None = None,
) -> dict[str, pd.DataFrame]:
    """Every symbol in a CSV file as canonical frames, keyed by symbol; any bad row refuses the file."""
    opts = options or CsvOptions(
        symbol=symbol, tz=tz, timeframe=timeframe, adjust=adjust, actions=actions
    )
    result = read_csv(path, opts)
    if result.rejected:
        raise result.error()
    return result.frames


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
