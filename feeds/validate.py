"""Validation of canonical OHLCV frames.

Hard rules (an error names the symbol, the timestamp and the rule, and says how to fix it):
UTC timestamps, strictly increasing, no duplicates, no NaN, prices > 0, low <= open/close <= high,
volume >= 0. Soft findings (reported, not raised; ``report.ok`` is False for the last two): gaps
against the exchange calendar (:mod:`feeds.calendars`) as a percentage, one-bar jumps whose size
matches a split ratio, and price jumps at a seam where two imports were joined. Repairs (sort,
drop duplicate timestamps) happen only when ``repair=True`` and are listed in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import ValidationError
from feeds.calendars import sessions
from feeds.frame import OHLCV_COLUMNS
from feeds.timeframes import get_timeframe

# (new shares : old shares) ratios a one-bar jump is compared against; price moves by 1/ratio.
SPLIT_RATIOS: tuple[float, ...] = (2, 3, 4, 5, 10, 20, 1.5, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 10)
_SPLIT_TOL = 0.03


@dataclass
class ValidationReport:
    """What validation found and did; ``ok`` is False only for soft findings."""

    symbol: str
    rows: int
    repaired: list[str] = field(default_factory=list)
    gap_pct: float = 0.0
    missing_bars: int = 0
    split_suspects: list[tuple[pd.Timestamp, float]] = field(default_factory=list)
    seam_jumps: list[tuple[pd.Timestamp, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.split_suspects and not self.seam_jumps

    def summary(self) -> str:
        parts = [f"{self.symbol}: {self.rows} rows", f"gaps {self.gap_pct:.2f}%"]
        if self.repaired:
            parts.append("repaired: " + "; ".join(self.repaired))
        for ts, ratio in self.split_suspects:
            parts.append(f"possible unadjusted split {_ratio_text(ratio)} at {ts}")
        for ts, ret in self.seam_jumps:
            parts.append(
                f"price jumps {ret:+.1%} at {ts}, where two imports were joined "
                "(different source or adjustment?)"
            )
        parts.extend(self.notes)
        return ", ".join(parts)


def _ratio_text(ratio: float) -> str:
    return f"{ratio:g}:1" if ratio >= 1 else f"1:{1 / ratio:g}"


def _fail(symbol: str, rule: str, ts: object, msg: str, fix: str) -> ValidationError:
    where = f" at {ts}" if ts is not None else ""
    return ValidationError(symbol, rule, f"{symbol}{where}: {msg} [rule: {rule}]. {fix}", ts)


def _check_utc(idx: pd.Index, symbol: str) -> None:
    if not isinstance(idx, pd.DatetimeIndex):
        raise _fail(
            symbol, "timestamps", None, "index is not timestamps", "Index rows by datetime."
        )
    if idx.tz is None:
        fix = "Localise them to their zone, then convert to UTC."
        raise _fail(symbol, "utc", None, "timestamps are naive", fix)
    if str(idx.tz) != "UTC":
        fix = "Convert them with .tz_convert('UTC')."
        raise _fail(symbol, "utc", None, f"timestamps are in {idx.tz}", fix)


def _check_index(
    frame: pd.DataFrame, symbol: str, repair: bool, report: ValidationReport
) -> pd.DataFrame:
    """UTC timestamps, increasing (sorted with ``repair``), unique (the last kept with ``repair``)."""
    idx = frame.index
    _check_utc(idx, symbol)
    if not idx.is_monotonic_increasing:
        if not repair:
            pos = int(np.argmax(np.diff(idx.asi8) < 0)) + 1
            fix = "Sort them (repair=True / --repair)."
            raise _fail(symbol, "increasing", idx[pos], "timestamps go backwards", fix)
        frame = frame.sort_index(kind="stable")
        report.repaired.append("sorted")
    dup = frame.index.duplicated(keep="last")
    if not dup.any():
        return frame
    dropped = frame.index[dup]
    if not repair:
        fix = "Drop them (repair=True / --repair keeps the last row of each)."
        raise _fail(symbol, "duplicates", dropped[0], f"{len(dropped)} duplicate timestamp(s)", fix)
    shown = ", ".join(str(t) for t in dropped[:10]) + (" ..." if len(dropped) > 10 else "")
    report.repaired.append(f"dropped {len(dropped)} duplicate(s) (kept the last of each): {shown}")
    return frame[~dup]


# (rule, what it means, how to fix it); :func:`row_rules` tests every row against each in order
ROW_RULES: tuple[tuple[str, str, str], ...] = (
    ("nan", "NaN or infinite value", "Drop or fill those rows at the source."),
    ("positive", "price <= 0", "Prices must be positive; drop the row or fix the source."),
    ("high>=low", "high < low", "The bar is corrupt: fix or drop it."),
    ("low<=open,close", "low above open or close", "The bar is corrupt: fix or drop it."),
    ("open,close<=high", "open or close above high", "The bar is corrupt: fix or drop it."),
    ("volume>=0", "negative volume", "Volume must be >= 0."),
)


def row_rules(values: np.ndarray) -> np.ndarray:
    """The first rule each OHLCV row breaks (``""`` when it breaks none), as an object array.

    ``values`` is an ``(n, 5)`` float array in the order open, high, low, close, volume.
    """
    v = np.asarray(values, dtype=np.float64)
    o, h, lo, c, vol = v.T
    with np.errstate(invalid="ignore"):
        masks = (
            ~np.isfinite(v).all(axis=1),
            (v[:, :4] <= 0).any(axis=1),
            h < lo,
            (lo > o) | (lo > c),
            (o > h) | (c > h),
            vol < 0,
        )
    out = np.full(len(v), "", dtype=object)
    for (rule, _, _), bad in zip(ROW_RULES[::-1], masks[::-1], strict=True):
        out[bad] = rule  # reversed: the first rule in ROW_RULES wins
    return out


def _check_values(frame: pd.DataFrame, symbol: str) -> None:
    missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
    if missing:
        raise _fail(
            symbol,
            "columns",
            None,
            f"missing column(s) {', '.join(missing)}",
            "Provide open, high, low, close, volume.",
        )
    v = frame.loc[:, list(OHLCV_COLUMNS)].to_numpy(dtype=np.float64)
    broken = row_rules(v)
    for rule, what, fix in ROW_RULES:
        bad = broken == rule
        if bad.any():
            i = int(np.argmax(bad))
            row = dict(zip(OHLCV_COLUMNS, v[i].tolist(), strict=True))
            raise _fail(
                symbol, rule, frame.index[i], f"{what} in {int(bad.sum())} row(s), first {row}", fix
            )


def _gaps(frame: pd.DataFrame, timeframe: str | None, asset_class: str) -> tuple[int, float]:
    """Bars missing against the calendar: exchange sessions for daily stocks, 24/7 for crypto."""
    if len(frame) < 2 or timeframe is None:
        return 0, 0.0
    tf = get_timeframe(timeframe)
    start, end = frame.index[0], frame.index[-1]
    if tf.intraday:
        if asset_class != "crypto":
            return 0, 0.0  # sessions vary by venue; intraday stock gaps are not judged here
        expected = int((end - start) / tf.delta) + 1
        missing = max(expected - len(frame), 0)
    else:
        days = sessions(start, end, asset_class=asset_class)
        expected = len(days)
        missing = int((~days.isin(frame.index.normalize())).sum())
    return missing, 100.0 * missing / max(expected, 1)


def seam_jumps(frame: pd.DataFrame, seams: list[pd.Timestamp]) -> list[tuple[pd.Timestamp, float]]:
    """Seams (where two imports or downloads were joined) across which the price jumps.

    A jump is a close-to-close log return at the seam above six robust standard deviations of
    the series' returns and above 5 %: an adjusted series joined to a raw one, or two vendors'
    prices of different scale. Returns ``(first bar after the seam, return)`` pairs.
    """
    if len(frame) < 3 or not seams:
        return []
    logret = np.diff(np.log(frame["close"].to_numpy(dtype=np.float64)))
    scale = 1.4826 * float(np.median(np.abs(logret - np.median(logret))))
    limit = max(6.0 * scale, 0.05)
    out = []
    for ts in seams:
        i = int(frame.index.searchsorted(ts))
        if 0 < i < len(frame) and abs(logret[i - 1]) > limit:
            out.append((frame.index[i], float(np.expm1(logret[i - 1]))))
    return out


def parse_seams(text: object) -> list[pd.Timestamp]:
    """The seams kept in a stored frame's ``attrs["seams"]`` (a JSON list of ISO timestamps)."""
    if not isinstance(text, str) or not text:
        return []
    return [pd.Timestamp(t) for t in json.loads(text)]


def _split_suspects(frame: pd.DataFrame) -> list[tuple[pd.Timestamp, float]]:
    close = frame["close"].to_numpy()
    opens = frame["open"].to_numpy()
    if len(close) < 2:
        return []
    jump = opens[1:] / close[:-1]  # overnight move; a split shows up as the gap
    out = []
    for i in np.flatnonzero((jump > 1.4) | (jump < 0.7)):
        for r in SPLIT_RATIOS:
            if abs(jump[i] * r - 1) < _SPLIT_TOL:
                out.append((frame.index[i + 1], float(r)))
                break
    return out


def validate(
    frame: pd.DataFrame, symbol: str | None = None, *, repair: bool = False
) -> tuple[pd.DataFrame, ValidationReport]:
    """Check ``frame`` against the OHLCV contract; return it (repaired if asked) and a report.

    Raises :class:`~core.errors.ValidationError` on the first hard rule broken.
    """
    sym = symbol or str(frame.attrs.get("symbol", "?"))
    report = ValidationReport(symbol=sym, rows=len(frame))
    attrs = dict(frame.attrs)
    frame = _check_index(frame, sym, repair, report)
    _check_values(frame, sym)
    report.rows = len(frame)
    report.missing_bars, report.gap_pct = _gaps(
        frame, attrs.get("timeframe"), str(attrs.get("asset_class", "stocks"))
    )
    if attrs.get("adjustment", "raw") in ("raw", "dividend"):
        report.split_suspects = _split_suspects(frame)
    report.seam_jumps = seam_jumps(frame, parse_seams(attrs.get("seams")))
    frame.attrs = attrs
    return frame, report
