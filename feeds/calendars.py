"""Trading calendars: which sessions an exchange held, and whether it is open at a moment.

Stocks and indices follow an exchange calendar from ``exchange_calendars`` (NYSE, ``XNYS``, by
default): weekends, holidays and early closes included. Crypto trades around the clock. Gap
checks in :mod:`feeds.validate` and the live feed's market-hours filter use the same functions,
so a holiday is never a "gap" in one place and a session in another.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pandas as pd

from core.errors import ConfigError

DEFAULT_EXCHANGE = "XNYS"
_CALENDAR_START = "1970-01-02"


@functools.lru_cache(maxsize=8)
def _calendar(exchange: str) -> Any:
    import exchange_calendars as xcals

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return xcals.get_calendar(exchange, start=_CALENDAR_START)
    except xcals.errors.InvalidCalendarName as err:
        raise ConfigError(
            f"unknown exchange calendar {exchange!r}; use an ISO MIC such as XNYS, XLON or XTKS"
        ) from err


def sessions(
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    asset_class: str = "stocks",
    exchange: str | None = None,
) -> pd.DatetimeIndex:
    """The trading days in ``[start, end]`` (dates at 00:00 UTC).

    Crypto has every calendar day. For stocks and indices, days outside the exchange
    calendar's range fall back to Monday-Friday.
    """
    s, e = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    s = s.tz_localize(None) if s.tzinfo else s
    e = e.tz_localize(None) if e.tzinfo else e
    if asset_class == "crypto":
        return pd.date_range(s, e, freq="D", tz="UTC")
    cal = _calendar(exchange or DEFAULT_EXCHANGE)
    first, last = cal.first_session.tz_localize(None), cal.last_session.tz_localize(None)
    parts = []
    if s < first:
        parts.append(pd.bdate_range(s, min(e, first - pd.Timedelta(days=1))))
    lo, hi = max(s, first), min(e, last)
    if lo <= hi:
        parts.append(pd.DatetimeIndex(cal.sessions_in_range(lo, hi)))
    if e > last:
        parts.append(pd.bdate_range(max(s, last + pd.Timedelta(days=1)), e))
    days = parts[0].append(parts[1:]) if parts else pd.DatetimeIndex([])
    return pd.DatetimeIndex(days).tz_localize(None).tz_localize("UTC")


def is_open(ts: pd.Timestamp, *, asset_class: str = "stocks", exchange: str | None = None) -> bool:
    """Whether the market is in its regular session at ``ts`` (tz-aware).

    Holidays and early closes count; crypto is always open.
    """
    if asset_class == "crypto":
        return True
    cal = _calendar(exchange or DEFAULT_EXCHANGE)
    minute = pd.Timestamp(ts).tz_convert("UTC").floor("min")
    with warnings.catch_warnings():  # exchange_calendars reads DatetimeIndex.values (pandas 3)
        warnings.simplefilter("ignore")
        if cal.first_minute <= minute <= cal.last_minute:
            return bool(cal.is_open_on_minute(minute, ignore_breaks=False))
    local = minute.tz_convert("America/New_York")  # beyond the calendar: weekdays 9:30-16:00
    return local.weekday() < 5 and (9, 30) <= (local.hour, local.minute) < (16, 0)
