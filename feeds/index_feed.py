"""An index (or any series) at a coarser bar size than the strategy's, never read ahead.

Stored bars are stamped at the START of their period (``feeds.timeframes.resample`` labels them
so, and daily bars are 00:00 UTC of their session). backtrader hands a data's bar to the
strategy as soon as the clock reaches its stamp, and ``compute_features`` aligns an index by
the same stamps, so a weekly index bar stamped Monday, which holds Friday's close, is seen on
Monday: four days early. The same happens to a daily index beside hourly bars (the day's close
at 00:00). Same-size bars are safe: a daily index bar and a daily stock bar close together.

:func:`closed_bars` re-stamps each bar at the close of its period less one bar of the series
it is read beside (``base``, the strategy's bar size), so the bar becomes visible on the first
strategy bar that closes with or after it: a weekly bar is seen from the next Monday, a daily
index bar beside hourly bars from the day's last hour. Without ``base`` it is stamped at the
close itself (one strategy bar later than needed, never earlier). Use it for the feed
(:func:`index_feed`) and for the features (``compute_features(frame, index=closed_bars(...))``).

The period of a bar is its timeframe (``frame.attrs["timeframe"]``) when it has a registered
one, cut short by the next bar's start; otherwise (weekly or monthly bars) it runs to the next
bar's start, and the last bar's to its start plus the most common spacing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from core.errors import ConfigError
from feeds.btfeeds import StoreData
from feeds.timeframes import get_timeframe, period_ends

__all__ = ["closed_bars", "index_feed", "period_ends"]


def closed_bars(frame: pd.DataFrame, base: str | None = None) -> pd.DataFrame:
    """``frame`` re-stamped so that no bar is visible before its period has closed.

    ``base`` is the bar size of the series it is read beside (``"1Day"`` for a daily
    strategy); each bar is stamped at its close less one ``base`` bar. ``attrs["stamp"]``
    records it (``"close-1Day"``, or ``"close"``)."""
    if frame.attrs.get("stamp", "start") != "start":
        raise ConfigError(
            f"the frame is already re-stamped ({frame.attrs['stamp']}); pass the stored one"
        )
    ends = period_ends(pd.DatetimeIndex(frame.index), frame.attrs.get("timeframe"))
    step = get_timeframe(base).delta if base is not None else pd.Timedelta(0)
    stamps = ends - step
    if (stamps < frame.index).any() or not stamps.is_monotonic_increasing or stamps.has_duplicates:
        raise ConfigError(
            f"base={base!r} is coarser than the series' own bars; give the bar size of the "
            "strategy's data (finer than or equal to the series')"
        )
    out = frame.copy()
    out.index = pd.DatetimeIndex(stamps, name=frame.index.name)
    out.attrs = {**frame.attrs, "stamp": f"close-{base}" if base else "close"}
    return out


def index_feed(frame: pd.DataFrame, *, base: str | None = None, **kwargs: Any) -> StoreData:
    """A backtrader feed of ``frame`` that shows each bar only once its period has closed
    (:func:`closed_bars`); ``kwargs`` go to ``StoreData`` (``name=...``)."""
    return StoreData(dataname=closed_bars(frame, base), **kwargs)
