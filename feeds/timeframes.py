"""Timeframes: one registry mapping our names to pandas and backtrader, and the one resampler."""

from __future__ import annotations

from dataclasses import dataclass

import backtrader as bt
import pandas as pd

from core.errors import ConfigError, DataError, unknown_name


@dataclass(frozen=True, kw_only=True)
class Timeframe:
    """A bar size: our name, its pandas offset, and backtrader's (timeframe, compression)."""

    name: str
    offset: str
    bt_timeframe: int
    bt_compression: int

    @property
    def delta(self) -> pd.Timedelta:
        return pd.Timedelta(self.offset)

    @property
    def intraday(self) -> bool:
        return self.delta < pd.Timedelta("1D")


TIMEFRAMES: dict[str, Timeframe] = {
    t.name: t
    for t in (
        Timeframe(name="1m", offset="1min", bt_timeframe=bt.TimeFrame.Minutes, bt_compression=1),
        Timeframe(name="5m", offset="5min", bt_timeframe=bt.TimeFrame.Minutes, bt_compression=5),
        Timeframe(name="15m", offset="15min", bt_timeframe=bt.TimeFrame.Minutes, bt_compression=15),
        Timeframe(name="1h", offset="1h", bt_timeframe=bt.TimeFrame.Minutes, bt_compression=60),
        Timeframe(name="4h", offset="4h", bt_timeframe=bt.TimeFrame.Minutes, bt_compression=240),
        Timeframe(name="1Day", offset="1D", bt_timeframe=bt.TimeFrame.Days, bt_compression=1),
    )
}

_ALIASES = {"1d": "1Day", "1day": "1Day", "d": "1Day", "day": "1Day", "60m": "1h", "1hour": "1h"}


def get_timeframe(name: str) -> Timeframe:
    """Return the registered timeframe called ``name`` (a few aliases such as ``1d`` accepted)."""
    key = _ALIASES.get(name.lower(), name) if name not in TIMEFRAMES else name
    if key in TIMEFRAMES:
        return TIMEFRAMES[key]
    raise unknown_name("timeframe", name, TIMEFRAMES)


def infer_timeframe(index: pd.DatetimeIndex) -> str | None:
    """The registered timeframe the timestamps are spaced by, or None with fewer than 3 rows.

    The most common spacing decides (weekends, nights and holidays are rarer than the bar size),
    and dates whose most common spacing is one day are daily whatever their time of day. Raises
    :class:`ConfigError` for a spacing that is no registered timeframe (weekly or monthly bars,
    2-minute bars), saying what the spacing is.
    """
    if len(index) < 3:
        return None
    diffs = pd.Series(index.sort_values()).diff().dropna()
    diffs = diffs[diffs > pd.Timedelta(0)]
    if diffs.empty:
        return None
    step = diffs.mode().iloc[0]
    for tf in TIMEFRAMES.values():
        if tf.delta == step:
            return tf.name
    days = step / pd.Timedelta("1D")
    if 5 <= days <= 8:
        what = "weekly"
    elif 27 <= days <= 32:
        what = "monthly"
    elif 88 <= days <= 93:
        what = "quarterly"
    else:
        what = f"{step} apart"
    raise ConfigError(
        f"the bars are {what} (most common spacing {_human(step)}); the store holds "
        f"{', '.join(TIMEFRAMES)} bars: use daily or finer data"
    )


def _human(step: pd.Timedelta) -> str:
    days = step / pd.Timedelta("1D")
    return f"{days:g} days" if days >= 1 else str(step)


def resample(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """Resample a canonical OHLCV frame to a coarser timeframe (the one place this is done).

    Bars are labelled by their start time; open is the first open, high the max, low the min,
    close the last close, volume the sum. Empty bins (nights, weekends) are dropped.
    """
    to = get_timeframe(target)
    src = frame.attrs.get("timeframe")
    if src is not None and get_timeframe(src).delta > to.delta:
        raise ConfigError(f"cannot resample {src} to finer {to.name}; only finer -> coarser")
    agg = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    out = frame.resample(to.offset, label="left", closed="left").agg(agg)
    out = out.dropna(subset=["open", "close"])
    out.attrs = {**frame.attrs, "timeframe": to.name}
    return out


def period_ends(index: pd.DatetimeIndex, timeframe: str | None = None) -> pd.DatetimeIndex:
    """When each bar's period closes: its timeframe's length (when ``timeframe`` is a
    registered one) cut short by the next bar's start; otherwise (weekly or monthly bars) the
    next bar's start, and the last bar's start plus the most common spacing. Bars are stamped
    at the start of their period (see ``feeds.index_feed``)."""
    idx = pd.DatetimeIndex(index)
    if len(idx) < 2:
        if timeframe is None or timeframe not in TIMEFRAMES:
            raise DataError("a series of fewer than 2 bars has no known period: give its timeframe")
        return idx + get_timeframe(timeframe).delta
    gaps = pd.Series(idx[1:] - idx[:-1])
    nxt = idx[1:].append(pd.DatetimeIndex([idx[-1] + gaps.mode().iloc[0]]))
    if timeframe is None or timeframe not in TIMEFRAMES:
        return nxt
    own = idx + get_timeframe(timeframe).delta
    return own.where(own <= nxt, nxt)
