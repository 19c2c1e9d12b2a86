"""Which CSV layout a table has, from its column names: ohlcv, long, close-only or wide."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.errors import DataError
from feeds.sources.csv_parse import norm_name, to_numbers

DATE_NAMES = ("date", "datetime", "timestamp", "time", "day", "date time", "trade date")
SYMBOL_NAMES = ("ticker", "symbol", "name")
_TICKER = r"\^?[A-Z][A-Z0-9.=/_-]{0,14}"  # AAPL, BRK.B, BTC/USDT, ^GSPC
_NOT_TICKERS = frozenset({"TRUE", "FALSE", "YES", "NO", "Y", "N", "T", "F", "NA", "N/A", "NAN"})
ALIASES: dict[str, tuple[str, ...]] = {
    "open": ("open", "open price", "opening price"),
    "high": ("high", "high price"),
    "low": ("low", "low price"),
    "close": ("close", "close price", "closing price", "close/last", "last", "price"),
    "volume": ("volume", "vol", "volume traded"),
    "adj close": ("adj close", "adjusted close", "adj close price", "adjclose"),
    "dividends": ("dividends",),
    "stock splits": ("stock splits",),
}
_HELP = (
    "a file needs a date column and Open, High, Low, Close (Volume optional), or Close alone, "
    "or one close column per symbol"
)


@dataclass(frozen=True)
class Layout:
    """Where things are in the table: the date column, the symbol column, the value columns."""

    kind: str  # "ohlcv", "long", "close" or "wide"
    file: Path
    date: str
    symbol: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> file column
    wide: tuple[str, ...] = ()  # one close column per symbol
    dropped_index: bool = False

    @property
    def close_only(self) -> bool:
        return self.kind in ("close", "wide")


def _pick(
    names: dict[str, str],
    wanted: str | None,
    candidates: tuple[str, ...],
    what: str,
    path: Path,
    option: str,
) -> str | None:
    if wanted is not None:
        key = norm_name(wanted)
        if key not in names:
            raise DataError(
                f"{path}: {option} {wanted!r} is not a column; have {list(names.values())}"
            )
        return names[key]
    return next((names[n] for n in candidates if n in names), None)


def _looks_like_dates(cells: pd.Series) -> bool:
    sample = cells[cells != ""].head(50)
    if sample.empty or sample.str.fullmatch(r"-?\d+(\.\d+)?").all():
        return False  # plain numbers (a row number, a price) are no dates
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.9)


def _is_row_number(cells: pd.Series) -> bool:
    nums = pd.to_numeric(cells, errors="coerce")
    return bool(nums.notna().all() and (nums.diff().dropna() == 1).all())


def _refuse_unnamed_symbols(raw: pd.DataFrame, path: Path, unused: list[str]) -> None:
    """Refuse a long file whose symbol column has a name we do not know, naming --symbol-col.

    Read as one symbol, its rows would collide in time. A column counts when its cells look like
    tickers (upper case, a letter first, no spaces, not a yes/no flag) and it holds at least
    two, each on many rows.
    """
    for col in unused:
        cells = raw[col][raw[col] != ""]
        values = cells.unique()
        tickers = cells.str.fullmatch(_TICKER).all() and not _NOT_TICKERS & set(values)
        if 2 <= len(values) <= len(cells) // 2 and tickers:
            shown = ", ".join(map(str, values[:3])) + (", ..." if len(values) > 3 else "")
            raise DataError(
                f"{path}: column {col!r} looks like a symbol column ({shown}); import the file as "
                f"a long file with --symbol-col {col}, or remove the column"
            )


def find_layout(
    raw: pd.DataFrame, path: Path, date_col: str | None, symbol_col: str | None
) -> Layout:
    """The layout of ``raw`` (a text table); raises :class:`DataError` naming the option to use."""
    names = {norm_name(c): str(c) for c in raw.columns}
    first = str(raw.columns[0])
    unnamed_first = first.startswith("Unnamed: 0") or first.strip() == ""
    dropped_index = False
    date = _pick(names, date_col, DATE_NAMES, "date", path, "--date-col")
    if date is None and unnamed_first and _looks_like_dates(raw[first]):
        date = first  # pandas to_csv() of a frame indexed by dates
    if date is None:
        dated = [c for c in map(str, raw.columns) if _looks_like_dates(raw[c])]
        if len(dated) > 1:
            raise DataError(
                f"{path}: no column named like a date ({', '.join(DATE_NAMES)}) and "
                f"{', '.join(map(repr, dated))} all hold dates; name the bars' date column "
                "with --date-col"
            )
        date = dated[0] if dated else None
    if date is None:
        raise DataError(
            f"{path}: no date column (looked for {', '.join(DATE_NAMES)}); have "
            f"{list(map(str, raw.columns))}; name it with --date-col"
        )
    if unnamed_first and date != first and _is_row_number(raw[first]):
        dropped_index = True
        names = {k: v for k, v in names.items() if v != first}
    symbol = _pick(names, symbol_col, SYMBOL_NAMES, "symbol", path, "--symbol-col")
    cols = {canon: names[a] for canon, aliases in ALIASES.items() for a in aliases if a in names}
    cols = {k: v for k, v in cols.items() if v not in (date, symbol)}
    has_ohlc = all(k in cols for k in ("open", "high", "low", "close"))
    base = {"file": path, "date": date, "symbol": symbol, "dropped_index": dropped_index}
    if symbol is None:
        _refuse_unnamed_symbols(
            raw, path, [c for c in names.values() if c not in (date, *cols.values())]
        )
    if has_ohlc:
        return Layout(kind="long" if symbol else "ohlcv", columns=cols, **base)  # type: ignore[arg-type]
    partial = [k for k in ("open", "high", "low") if k in cols]
    if partial:
        missing = [k for k in ("open", "high", "low", "close") if k not in cols]
        raise DataError(
            f"{path}: has {', '.join(partial)} but no {', '.join(missing)} column; have "
            f"{list(map(str, raw.columns))}; {_HELP}"
        )
    if "close" in cols or "adj close" in cols:
        if "close" not in cols:
            cols["close"] = cols["adj close"]
        return Layout(kind="close", columns=cols, **base)  # type: ignore[arg-type]
    return _wide(raw, path, names, base)


def _wide(raw: pd.DataFrame, path: Path, names: dict[str, str], base: dict[str, object]) -> Layout:
    if base["symbol"] is not None:
        raise DataError(
            f"{path}: a symbol column but no Close column; have {list(map(str, raw.columns))}; {_HELP}"
        )
    value_cols = [c for c in names.values() if c != base["date"]]
    numeric = []
    for c in value_cols:
        _, missing, unreadable = to_numbers(raw[c], ".")
        if (~missing).any() and unreadable.mean() < 0.5:
            numeric.append(c)
    if not numeric or len(numeric) < len(value_cols):
        other = [c for c in value_cols if c not in numeric]
        raise DataError(
            f"{path}: cannot tell the layout: no Open/High/Low/Close columns and "
            f"{other or value_cols} are not price columns; {_HELP} (a wide file)"
        )
    return Layout(kind="wide", wide=tuple(numeric), **base)  # type: ignore[arg-type]
