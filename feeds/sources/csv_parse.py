"""The parts of reading a CSV file that do not depend on its layout.

Sniffing the separator and decimal mark, reading every cell as text (so that nothing is
silently coerced), naming columns, and turning text into numbers and timestamps while keeping,
for each row, whether and why it could not be read. Row numbers are file lines: the header is
line 1, the first data row line 2.
"""

from __future__ import annotations

import csv
import gzip
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError

_NULLS = frozenset({"", "na", "n/a", "#n/a", "nan", "null", "none", "-", "--"})
_DATE_TRIPLE = re.compile(r"^(\d{1,2})([./-])(\d{1,2})\2(\d{2,4})\b")
OFFSET_RE = r"(?:[+-]\d\d:?\d\d|Z)$"
_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9}
_COMMA_DECIMAL = re.compile(r"-?(?:\d{1,3}(?:\.\d{3})+|\d+),\d+")  # 1,5 and 1.234,56
_POINT_DECIMAL = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)\.\d+")  # 1.5 and 1,234.56
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+")  # 1,234 and 1,234,567
_ONE_GROUP = re.compile(r"-?\d{1,3},\d{3}")  # 1,234: 1234, or 1.234 with a decimal comma


@dataclass(frozen=True)
class Dialect:
    """How a file's cells are separated and written."""

    sep: str
    decimal: str

    def describe(self) -> str:
        names = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
        return f"separator {names.get(self.sep, repr(self.sep))}, decimal mark {self.decimal!r}"


def _sample(path: Path, size: int = 65536) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(size)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    for enc in ("utf-8-sig", "latin-1"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1", errors="replace")  # pragma: no cover - latin-1 decodes anything


def sniff_dialect(path: Path, sep: str | None, decimal: str | None) -> Dialect:
    """The separator (comma, semicolon, tab or pipe) and decimal mark, unless given."""
    text = _sample(path)
    lines = [ln for ln in text.splitlines() if ln.strip()][:50]
    if not lines:
        raise DataError(f"{path}: the file is empty")
    if "\x00" in text:
        raise DataError(f"{path}: cannot read as CSV: this is a binary file, not text")
    if sep is None:
        try:
            sep = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t|").delimiter
        except csv.Error:
            counts = {d: lines[0].count(d) for d in ",;\t|"}
            sep = max(counts, key=lambda d: counts[d])
    if decimal is None:
        decimal = _sniff_decimal(path, lines[1:], sep)
    if sep == decimal and sep != ",":  # quoted "1,5" cells can sit in a comma-separated file
        raise DataError(
            f"{path}: separator and decimal mark are both {sep!r}; set --sep or --decimal"
        )
    return Dialect(sep=sep, decimal=decimal)


def _sniff_decimal(path: Path, body: list[str], sep: str) -> str:
    """The decimal mark of the cells in ``body`` (data lines), refusing a comma file that cannot tell.

    ``1.234,56`` and, beside another separator, ``1,5`` are decimal commas. In a comma-separated
    file only a quoted cell can hold a comma: ``"1,5"`` is a decimal comma (no thousands group
    has one or two digits), ``"1,234.5"`` a thousands comma; quoted ``"1,234"`` cells alone with
    no decimal point anywhere could be either, and the file is refused until ``--decimal`` says.
    """
    cells = [c.strip() for row in csv.reader(body, delimiter=sep) for c in row]
    if sep != ",":
        return "," if any(_COMMA_DECIMAL.fullmatch(c) for c in cells) else "."
    with_comma = [c for c in cells if "," in c]
    if any(_POINT_DECIMAL.fullmatch(c.lstrip("$")) for c in cells):
        return "."
    if any(_COMMA_DECIMAL.fullmatch(c) and not _THOUSANDS.fullmatch(c) for c in with_comma):
        return ","
    ambiguous = [c for c in with_comma if _THOUSANDS.fullmatch(c)]
    if ambiguous and all(_ONE_GROUP.fullmatch(c) for c in ambiguous):
        raise DataError(
            f"{path}: cells like {ambiguous[0]!r} could have a thousands separator or a decimal "
            "comma; say which with --decimal . or --decimal ,"
        )
    return "."


def read_text_table(path: Path, dialect: Dialect) -> pd.DataFrame:
    """Every cell as stripped text; empty trailing columns (spreadsheet exports) dropped."""
    kw: dict[str, object] = {
        "sep": dialect.sep,
        "dtype": str,
        "keep_default_na": False,
        "skipinitialspace": True,
        "compression": "infer",
    }
    raw = None
    for enc in ("utf-8-sig", "latin-1"):
        try:
            raw = pd.read_csv(path, encoding=enc, **kw)  # type: ignore[call-overload]
            break
        except UnicodeDecodeError:
            continue
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise DataError(
                f"{path}: cannot read as CSV with {dialect.describe()} ({err}); "
                "set the separator with --sep"
            ) from err
    assert raw is not None
    raw = raw.apply(lambda c: c.str.strip())
    empty = [
        c
        for c in raw.columns
        if str(c).startswith("Unnamed: ") and (raw[c] == "").all() and c != raw.columns[0]
    ]
    return raw.drop(columns=empty)


def norm_name(name: object) -> str:
    """A column name as matched: lower case, ``_`` and ``.`` as spaces, single spaces."""
    text = str(name).replace("\ufeff", "").strip().lower()
    return " ".join(re.sub(r"[_.]", " ", text).split())


def to_numbers(
    cells: pd.Series, decimal: str, *, suffixes: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numbers from text: ``(values, missing, unreadable)``.

    Thousands separators, a leading ``$`` and (with ``suffixes``) ``K``/``M``/``B`` multipliers
    are understood; an empty or null-like cell is missing; anything else that is no number is
    unreadable.
    """
    text = cells.astype(str).str.strip()
    missing = text.str.lower().isin(_NULLS).to_numpy()
    t = text.str.replace(r"^\$|^\+", "", regex=True).str.replace(" ", "", regex=False)
    if decimal == ",":
        t = t.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    else:
        t = t.str.replace(",", "", regex=False)
    mult = np.ones(len(t))
    if suffixes:
        last = t.str[-1:].str.upper()
        for suffix, factor in _SUFFIX.items():
            hit = (last == suffix).to_numpy()
            mult[hit] = factor
        t = t.where(~last.isin(list(_SUFFIX)).to_numpy(), t.str[:-1])
    values = pd.to_numeric(t, errors="coerce").to_numpy(dtype=np.float64) * mult
    unreadable = np.isnan(values) & ~missing
    return values, missing, unreadable


def sniff_dayfirst(text: pd.Series, path: Path) -> bool | None:
    """Whether ``d/m/y``-style dates are day-first, from values above 12; None when no such dates.

    Raises :class:`DataError` when the file cannot tell (every part 12 or below) or mixes both.
    """
    parts = text.str.extract(_DATE_TRIPLE)
    parts = parts.dropna()
    if parts.empty:
        return None
    first, second = parts[0].astype(int), parts[2].astype(int)
    day_first, month_first = bool((first > 12).any()), bool((second > 12).any())
    if day_first and month_first:
        raise DataError(
            f"{path}: the dates mix day-first and month-first order; make them uniform, "
            "then choose with --dayfirst or --monthfirst"
        )
    if day_first or month_first:
        return day_first
    if (parts[1] == ".").all():
        return True  # 31.12.2020 is written day-first everywhere it is used
    example = text[parts.index[0]]
    raise DataError(
        f"{path}: dates like {example!r} could be day-first or month-first; "
        "say which with --dayfirst or --monthfirst"
    )


def parse_local_times(
    text: pd.Series, dayfirst: bool | None, path: Path
) -> tuple[pd.DatetimeIndex, np.ndarray, bool]:
    """Timestamps as written (offsets removed), which rows failed, and whether offsets were present.

    Failed rows (empty or unreadable dates) are NaT in the result and True in the mask.
    """
    has_offset = text.str.contains(OFFSET_RE, regex=True).to_numpy()
    if has_offset.any() and not has_offset.all():
        first = text[~has_offset].iloc[0]
        raise DataError(
            f"{path}: some timestamps carry a UTC offset and some do not "
            f"(first without: {first!r}); make them uniform"
        )
    local = text.str.replace(OFFSET_RE, "", regex=True).str.strip() if has_offset.any() else text
    if dayfirst is None:
        dayfirst = bool(sniff_dayfirst(local, path))
    blank = local.str.lower().isin(_NULLS).to_numpy()
    parsed = pd.Series(pd.NaT, index=local.index, dtype="datetime64[ns]")
    ok = ~blank
    if ok.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            first = pd.to_datetime(local[ok], dayfirst=dayfirst, errors="coerce")
            parsed[ok] = pd.Series(first).dt.tz_localize(None) if first.dt.tz else first
            retry = ok & parsed.isna().to_numpy()
            if retry.any():
                parsed[retry] = pd.to_datetime(
                    local[retry], dayfirst=dayfirst, errors="coerce", format="mixed"
                )
    return pd.DatetimeIndex(parsed), parsed.isna().to_numpy(), bool(has_offset.any())


def utc_index(
    local: pd.DatetimeIndex,
    text: pd.Series,
    *,
    offsets: bool,
    daily: bool,
    tz: str | None,
    path: Path,
) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """UTC timestamps for the parsed local ones, and which rows do not exist in ``tz``.

    Daily bars are stamped 00:00 UTC of their local session date. Intraday bars need an offset
    in the text or ``tz``.
    """
    bad = np.zeros(len(local), dtype=bool)
    date_only = bool((local.dropna() == local.dropna().normalize()).all())
    if daily and (date_only or offsets or tz is not None):
        return local.normalize().tz_localize("UTC"), bad  # the session date as written
    if offsets:
        utc = pd.DatetimeIndex(pd.to_datetime(text, utc=True, errors="coerce", format="mixed"))
        return utc, np.asarray(pd.isna(utc))
    if tz is None:  # intraday, or daily bars stamped with a time of day
        first = text.iloc[0]
        raise DataError(
            f"{path}: timestamps have no timezone (first {first!r}); say which zone they are "
            "in with --tz (for example America/New_York or UTC)"
        )
    try:
        zoned = local.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    except Exception as err:  # an unknown zone name: pytz/zoneinfo raise several types
        raise DataError(f"{path}: unknown timezone {tz!r} for --tz ({err})") from err
    bad = np.asarray(pd.isna(zoned)) & ~np.asarray(pd.isna(local))
    return zoned.tz_convert("UTC"), bad


def read_table(path: Path, sep: str | None, decimal: str | None) -> tuple[pd.DataFrame, Dialect]:
    """The file as a text table, with the dialect used (sniffed unless given)."""
    dialect = sniff_dialect(path, sep, decimal)
    return read_text_table(path, dialect), dialect
