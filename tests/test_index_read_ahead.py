"""An index at a coarser bar size than the strategy's is never seen before its period closes.

Bars are stamped at the start of their period (the store's convention): a weekly index bar
stamped Monday holds Friday's close. A daily strategy must see it no earlier than the bar on
which its last daily bar closed (Friday's), through the feed API and through the features'
index-relative path; likewise a daily index beside hourly bars.

Two paths used to read ahead; both are fixed, and plain tests here keep them so:

* ``feeds/btfeeds.py`` ``StoreData`` handed out each bar at its start stamp, so a coarser frame
  wrapped as a plain ``StoreData`` was read ahead: it is now refused, naming ``index_feed``;
* ``mlmodels/features/_compute.py`` ``align_index`` took "the last index bar at or before" each
  symbol bar by start stamps, so ``compute_features(daily, index=weekly)`` read the running
  week: it now aligns a coarser index by period ends.

``feeds.index_feed.closed_bars`` / ``index_feed`` re-stamp the coarser series at its close (the
way to feed one to a strategy); backtrader's own ``resampledata`` is safe too.
"""

from __future__ import annotations

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from core.errors import ConfigError, DataError
from feeds.btfeeds import StoreData
from feeds.index import IndexConfig, build_index
from feeds.index_feed import closed_bars, index_feed, period_ends
from mlmodels.features import compute_features
from tests.conftest import ohlcv_frame

AGG = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
MODES = [(True, True), (False, True), (False, False)]


def weekly_of(daily: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Weekly bars stamped Monday (start of the period) and, per week, its last daily bar."""
    weekly = daily.resample("W-MON", label="left", closed="left").agg(AGG).dropna()
    weekly.attrs = {"symbol": "WIDX"}
    last = daily.index.to_series().resample("W-MON", label="left", closed="left").last()
    return weekly, last.reindex(weekly.index)


@pytest.fixture(scope="module")
def market() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.Series]:
    """A daily stock, the daily index, its weekly bars and each week's last daily bar."""
    stock = ohlcv_frame(260, symbol="AAA", start="2021-01-04", seed=1)
    daily_index = ohlcv_frame(300, symbol="IDX", start="2020-11-23", seed=7)
    weekly, last = weekly_of(daily_index)
    return stock, daily_index, weekly, last


class Recorder(bt.Strategy):  # type: ignore[misc]
    """Records, at every bar, the clock and the index close the strategy can read."""

    def __init__(self) -> None:
        self.seen: list[tuple[pd.Timestamp, float]] = []

    def next(self) -> None:
        now = pd.Timestamp(self.datetime.datetime(0), tz="UTC")
        self.seen.append((now, float(self.datas[1].close[0])))


def run(stock: pd.DataFrame, index_data: bt.feed.DataBase, resample: bool = False, **engine):  # type: ignore[name-defined]
    cerebro = bt.Cerebro(stdstats=False, **engine)
    cerebro.adddata(StoreData(dataname=stock, name="AAA"))
    if resample:
        cerebro.resampledata(index_data, timeframe=bt.TimeFrame.Weeks)
    else:
        cerebro.adddata(index_data)
    cerebro.addstrategy(Recorder)
    return cerebro.run()[0].seen


def assert_never_ahead(seen, closes: pd.Series, last_bar: pd.Series, step: pd.Timedelta) -> None:
    """At clock ``t`` (a bar stamped at its start, decided at ``t + step``) every index value
    seen belongs to a period whose last underlying bar closed by then."""
    week_of = {round(c, 10): w for w, c in closes.items()}
    assert seen, "the strategy never ran"
    for t, close in seen:
        period = week_of[round(close, 10)]
        assert last_bar[period] + step <= t + step, (
            f"at {t} the strategy reads the index bar of {period.date()}, whose last bar "
            f"{last_bar[period]} had not closed"
        )


@pytest.mark.parametrize(("runonce", "preload"), MODES)
def test_a_weekly_index_through_index_feed_is_never_read_ahead(market, runonce, preload) -> None:
    stock, _, weekly, last = market
    feed = index_feed(weekly, base="1Day", name="WIDX")
    seen = run(stock, feed, runonce=runonce, preload=preload)
    assert_never_ahead(seen, weekly["close"], last, pd.Timedelta("1D"))
    # and never staler than needed: from each Monday on, the week before is the one read
    mondays = [(t, c) for t, c in seen if t.weekday() == 0]
    assert mondays and all(c == weekly["close"].loc[t - pd.Timedelta("7D")] for t, c in mondays)


def test_a_weekly_index_as_a_plain_storedata_is_refused_not_read_ahead(market) -> None:
    """It was read ahead: the strategy saw the week's close on Monday."""
    stock, _, weekly, _ = market
    with pytest.raises(ConfigError, match=r"WIDX: its bars \(7 days apart\) are coarser than "
                       r"AAA's \(1 days\).*index_feed\(frame, base="):  # fmt: skip
        run(stock, StoreData(dataname=weekly, name="WIDX"))


def test_backtraders_weekly_resampling_is_never_read_ahead(market) -> None:
    stock, daily_index, weekly, last = market
    # backtrader's resampler fails (min() of an empty sequence) when the resampled data
    # outlasts the others: the index ends with the stock
    ending = daily_index.loc[: stock.index[-1]]
    seen = run(stock, StoreData(dataname=ending, name="IDX"), resample=True)
    seen = [(t, c) for t, c in seen if np.isfinite(c)]
    assert_never_ahead(seen, weekly["close"], last, pd.Timedelta("1D"))


def test_a_daily_index_beside_hourly_bars_is_seen_once_the_day_closed() -> None:
    hourly = ohlcv_frame(24 * 30, symbol="HRLY", timeframe="1h", start="2021-01-04")
    daily = ohlcv_frame(40, symbol="IDX", start="2020-12-28", freq="D", seed=3)
    last = pd.Series(daily.index + pd.Timedelta("23h"), index=daily.index)  # its last hour
    seen = run(hourly, index_feed(daily, base="1h", name="IDX"))
    assert_never_ahead(seen, daily["close"], last, pd.Timedelta("1h"))
    # the day's close is read at its last hour, not a day later
    at_23 = [(t, c) for t, c in seen if t.hour == 23]
    assert all(c == daily["close"].loc[t.normalize()] for t, c in at_23)


def test_a_daily_index_as_a_plain_storedata_beside_hourly_bars_is_refused() -> None:
    hourly = ohlcv_frame(24 * 30, symbol="HRLY", timeframe="1h", start="2021-01-04")
    daily = ohlcv_frame(40, symbol="IDX", start="2020-12-28", freq="D", seed=3)
    with pytest.raises(ConfigError, match="IDX: its bars .* are coarser than AAA's"):
        run(hourly, StoreData(dataname=daily, name="IDX"))


# -- the features' index-relative path ---------------------------------------------------------


def index_features(stock: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """The index-relative family (the columns that exist only with an index)."""
    feats = compute_features(stock, index)
    own = set(compute_features(stock).columns)
    cols = [c for c in feats.columns if c not in own]
    assert len(cols) >= 5, cols
    return feats[cols]


def unfinished_changed(weekly: pd.DataFrame, last: pd.Series, day: pd.Timestamp) -> pd.DataFrame:
    """The weekly bars whose last daily bar is after ``day``, with other closes."""
    out = weekly.copy()
    running = last > day
    out.loc[running, ["open", "high", "low", "close"]] *= 1.2
    return out


def assert_features_causal(market, wrap) -> None:
    """Changing the index bars that have not closed by day ``d`` changes no feature at ``d``."""
    stock, _, weekly, last = market
    base = index_features(stock, wrap(weekly))
    days = [d for d in stock.index[230:255] if d.weekday() in (0, 2, 4)]
    for d in days:
        moved = index_features(stock, wrap(unfinished_changed(weekly, last, d)))
        pd.testing.assert_series_equal(moved.loc[d], base.loc[d], obj=f"features at {d.date()}")


def test_the_features_never_read_a_running_week_of_a_weekly_index(market) -> None:
    """It did: ``align_index`` aligned by start stamps, so a daily bar read its running week."""
    assert_features_causal(market, lambda w: w)


def test_the_features_of_a_closed_bars_index_never_read_a_running_week(market) -> None:
    assert_features_causal(market, lambda w: closed_bars(w, "1Day"))


# -- building an index, and the re-stamping itself ---------------------------------------------


def test_an_index_of_constituents_of_mixed_bar_sizes_is_refused() -> None:
    """A daily member on an hourly calendar would put the day's close into the index at the
    day's first hour."""
    hourly = ohlcv_frame(24 * 10, symbol="HRLY", timeframe="1h", start="2021-01-04")
    daily = ohlcv_frame(10, symbol="DLY", start="2021-01-04")
    cfg = IndexConfig(name="MIX", method="equal", constituents=("HRLY", "DLY"))
    with pytest.raises(
        DataError,
        match="index MIX: constituent DLY has 1Day bars, the index is built at 1h; give every "
        "constituent at 1h",
    ):
        build_index({"HRLY": hourly, "DLY": daily}, cfg, timeframe="1h")


def test_closed_bars_stamps_and_refusals(market) -> None:
    stock, daily_index, weekly, _ = market
    same = closed_bars(daily_index, "1Day")  # same bar size: unchanged, Fridays included
    assert same.index.equals(daily_index.index) and same.attrs["stamp"] == "close-1Day"
    late = closed_bars(daily_index)  # no base: at the close itself
    assert (late.index == daily_index.index + pd.Timedelta("1D")).all()
    ends = period_ends(pd.DatetimeIndex(weekly.index))
    assert (ends[:-1] == weekly.index[1:]).all() and ends[-1] == weekly.index[-1] + pd.Timedelta(
        "7D"
    )
    with pytest.raises(ConfigError, match="already re-stamped"):
        closed_bars(same)
    with pytest.raises(ConfigError, match="base='1Day' is coarser than the series' own bars"):
        closed_bars(ohlcv_frame(50, timeframe="1h"), "1Day")
