"""backtrader over the store: StoreData against bt.feeds.PandasData in every engine mode,
many symbols, resampling; timeframes; the backtest runner and its metrics (golden numbers)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from analyzers.backtest import CostConfig, run_backtest
from analyzers.metrics import max_drawdown, performance
from core.errors import ConfigError, DataError
from feeds.btfeeds import StoreData, datetimes_to_num
from feeds.frame import make_frame
from feeds.sample import load_sample
from feeds.store import ParquetStore
from feeds.timeframes import TIMEFRAMES, get_timeframe, resample
from strategies.baselines import BuyAndHold, SmaCross, SmaCrossConfig
from tests.conftest import FrameFactory

ENGINE_MODES = [
    pytest.param(True, True, id="runonce-preload"),
    pytest.param(False, True, id="next-preload"),
    pytest.param(True, False, id="runonce-nopreload"),
    pytest.param(False, False, id="next-nopreload"),
]


@pytest.fixture(scope="module")
def sample() -> dict[str, pd.DataFrame]:
    return load_sample()


class Recorder(bt.Strategy):  # type: ignore[misc]
    """Records every data's bar at every step."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def next(self) -> None:
        for d in self.datas:
            self.seen.append(
                (
                    d._name,
                    len(d),
                    d.datetime.datetime(0),
                    d.open[0],
                    d.high[0],
                    d.low[0],
                    d.close[0],
                    d.volume[0],
                )
            )


class RecordingSmaCross(SmaCross):
    """SmaCross that also records its executed orders."""

    def __init__(self) -> None:
        super().__init__()
        self.fills: list[tuple[str, dt.datetime, float, float]] = []

    def notify_order(self, order: bt.Order) -> None:
        if order.status == order.Completed:
            self.fills.append(
                (
                    order.data._name,
                    order.data.datetime.datetime(0),
                    order.executed.price,
                    order.executed.size,
                )
            )


def _run(
    frames: dict[str, pd.DataFrame],
    feed: Callable[[pd.DataFrame, str], bt.feed.DataBase],
    runonce: bool,
    preload: bool,
    strategy: type[bt.Strategy] = RecordingSmaCross,
) -> tuple[float, int, int, Any]:
    cerebro = bt.Cerebro(stdstats=False, runonce=runonce, preload=preload)
    cerebro.broker.setcash(100_000.0)
    cerebro.broker.setcommission(commission=0.001)
    for sym, f in frames.items():
        cerebro.adddata(feed(f, sym))
    cerebro.addstrategy(strategy)
    cerebro.addanalyzer(bt.analyzers.TradeAnalyzer, _name="trades")
    strat = cerebro.run()[0]
    ta = strat.analyzers.trades.get_analysis()
    total = ta.get("total", {})
    return (
        float(cerebro.broker.getvalue()),
        int(total.get("total", 0)),
        int(total.get("closed", 0)),
        strat,
    )


def _store_feed(f: pd.DataFrame, sym: str) -> StoreData:
    return StoreData(dataname=f, name=sym)


def _pandas_feed(f: pd.DataFrame, sym: str) -> bt.feeds.PandasData:
    return bt.feeds.PandasData(dataname=f, name=sym)


# --------------------------------------------------------------------- StoreData basics


def test_datetimes_to_num_matches_backtrader() -> None:
    idx = pd.DatetimeIndex(
        ["1970-01-01", "2000-03-01", "2013-03-01 15:59:59.5", "2024-02-29 23:00"], tz="UTC"
    )
    expected = [bt.date2num(t.to_pydatetime().replace(tzinfo=None)) for t in idx]
    np.testing.assert_allclose(datetimes_to_num(idx), expected, rtol=0, atol=1e-9)


def test_store_data_takes_name_and_timeframe_from_attrs(make_ohlcv: FrameFactory) -> None:
    hourly = StoreData(dataname=make_ohlcv(30, symbol="ETH/USD", timeframe="1h"))
    assert hourly._name == "ETH/USD"
    assert (hourly._timeframe, hourly._compression) == (bt.TimeFrame.Minutes, 60)
    daily = StoreData(dataname=make_ohlcv(30, symbol="IBM"), name="given")
    assert daily._name == "given"
    assert (daily._timeframe, daily._compression) == (bt.TimeFrame.Days, 1)


def test_store_data_refuses_what_is_not_a_frame(make_ohlcv: FrameFactory) -> None:
    with pytest.raises(ConfigError, match="StoreData needs dataname="):
        StoreData(dataname="AAPL")
    with pytest.raises(DataError, match=r"lacks column\(s\) volume"):
        StoreData(dataname=make_ohlcv(10).drop(columns=["volume"]))


def test_store_data_from_store_reads_a_range(
    store: ParquetStore, sample: dict[str, pd.DataFrame]
) -> None:
    store.write(sample["IBM"])
    feed = StoreData.from_store(store, "IBM", start="2001-01-01", end="2002-01-01")
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed)
    cerebro.addstrategy(Recorder)
    seen = cerebro.run()[0].seen
    expected = sample["IBM"].loc["2001-01-01":"2001-12-31"]
    assert len(seen) == len(expected) == 248
    assert seen[0][2] == dt.datetime(2001, 1, 2)
    assert seen[-1][2] == dt.datetime(2001, 12, 31)
    assert [s[6] for s in seen] == expected["close"].tolist()
    assert feed._name == "IBM"
    with pytest.raises(DataError, match="IBM: no stored bars"):
        StoreData.from_store(store, "IBM", start="2020-01-01")


# ---------------------------------------------------- parity with PandasData, every mode


@pytest.mark.parametrize(("runonce", "preload"), ENGINE_MODES)
def test_sma_cross_on_store_data_equals_pandas_data(
    sample: dict[str, pd.DataFrame], store: ParquetStore, runonce: bool, preload: bool
) -> None:
    frame = sample["IBM"].loc[:"2002-12-31"]
    store.write(frame)
    stored = store.read("IBM")

    def from_store(f: pd.DataFrame, sym: str) -> StoreData:
        return StoreData.from_store(store, sym)

    got = _run({"IBM": stored}, from_store, runonce, preload)
    ref = _run({"IBM": frame}, _pandas_feed, runonce, preload)
    assert got[0] == pytest.approx(ref[0], rel=1e-12)
    assert got[1:3] == ref[1:3]
    assert got[3].fills == ref[3].fills
    assert got[1] >= 5  # the comparison means something: the strategy did trade


def test_store_data_gives_the_same_result_in_every_mode(sample: dict[str, pd.DataFrame]) -> None:
    frame = {"MSFT": sample["MSFT"].loc["2003-01-01":"2005-12-31"]}
    results = [
        _run(frame, _store_feed, r, p)[:3]
        for r, p in [(True, True), (False, True), (True, False), (False, False)]
    ]
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize(("runonce", "preload"), ENGINE_MODES)
def test_many_symbols_in_one_cerebro(
    sample: dict[str, pd.DataFrame], runonce: bool, preload: bool
) -> None:
    # GOOG starts on 2004-08-19, inside the window: the feeds start on different bars
    frames = {s: sample[s].loc["2004-01-01":"2005-12-31"] for s in ("AAPL", "IBM", "MSFT", "GOOG")}
    got = _run(frames, _store_feed, runonce, preload)
    ref = _run(frames, _pandas_feed, runonce, preload)
    assert got[0] == pytest.approx(ref[0], rel=1e-12)
    assert got[1:3] == ref[1:3]
    assert got[3].fills == ref[3].fills
    assert {f[0] for f in got[3].fills} == {"AAPL", "IBM", "MSFT", "GOOG"}

    bars_store = _run(frames, _store_feed, runonce, preload, Recorder)[3].seen
    bars_pandas = _run(frames, _pandas_feed, runonce, preload, Recorder)[3].seen
    assert bars_store == bars_pandas
    last = {b[0]: b for b in bars_store[-4:]}
    assert last["GOOG"][1] == len(frames["GOOG"])
    assert last["AAPL"][2] == dt.datetime(2005, 12, 30)


# ---------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(("runonce", "preload"), ENGINE_MODES)
def test_resample_daily_to_weekly(
    sample: dict[str, pd.DataFrame], runonce: bool, preload: bool
) -> None:
    f = sample["IBM"].loc[:"2000-12-31"]
    cerebro = bt.Cerebro(stdstats=False, runonce=runonce, preload=preload)
    cerebro.resampledata(StoreData(dataname=f), timeframe=bt.TimeFrame.Weeks)
    cerebro.addstrategy(Recorder)
    seen = cerebro.run()[0].seen

    iso = f.index.isocalendar()
    keys = [iso["year"].to_numpy(), iso["week"].to_numpy()]
    weeks = f.groupby(keys).agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
    )
    last_day = f.index.to_series().groupby(keys).last()
    assert len(seen) == len(weeks) == 44
    for bar, (_, week), day in zip(seen, weeks.iterrows(), last_day, strict=True):
        assert bar[2].date() == day.date()  # labelled by the week's last trading day
        assert bar[3:] == pytest.approx(tuple(week), rel=1e-12)


# ---------------------------------------------------------------------------- timeframes


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("1Day", "1Day"), ("1d", "1Day"), ("day", "1Day"), ("60m", "1h"), ("15m", "15m")],
)
def test_get_timeframe_names_and_aliases(name: str, canonical: str) -> None:
    assert get_timeframe(name) is TIMEFRAMES[canonical]


def test_unknown_timeframe_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown timeframe '2h': known are 1m, 5m, 15m, 1h, 4h, 1Day"
    ):
        get_timeframe("2h")


def test_timeframe_properties() -> None:
    assert get_timeframe("4h").delta == pd.Timedelta(hours=4)
    assert get_timeframe("4h").intraday and not get_timeframe("1Day").intraday
    assert (get_timeframe("4h").bt_timeframe, get_timeframe("4h").bt_compression) == (
        bt.TimeFrame.Minutes,
        240,
    )


def test_resample_hourly_to_4h_golden() -> None:
    idx = pd.date_range("2024-01-02 00:00", periods=8, freq="1h", tz="UTC").delete([5, 6, 7])
    raw = pd.DataFrame(
        {
            "open": [10, 11, 12, 13, 14],
            "high": [11, 15, 13, 14, 16],
            "low": [9, 10, 8, 12, 13],
            "close": [11, 12, 13, 14, 15],
            "volume": [1, 2, 3, 4, 5],
        },
        index=idx,
    )
    f = make_frame(raw, symbol="BTC/USD", source="unit", timeframe="1h")
    f = pd.concat([f, f.iloc[[0]].set_axis([pd.Timestamp("2024-01-02 12:00", tz="UTC")])])
    f.attrs = {"symbol": "BTC/USD", "timeframe": "1h"}
    out = resample(f, "4h")
    assert list(out.index) == [
        pd.Timestamp("2024-01-02 00:00", tz="UTC"),
        pd.Timestamp("2024-01-02 04:00", tz="UTC"),
        pd.Timestamp("2024-01-02 12:00", tz="UTC"),
    ]  # the empty 08:00 bin is dropped
    assert out.iloc[0].tolist() == [10, 15, 8, 14, 10]
    assert out.iloc[1].tolist() == [14, 16, 13, 15, 5]
    assert out.attrs["timeframe"] == "4h" and out.attrs["symbol"] == "BTC/USD"


def test_resample_refuses_finer_targets(make_ohlcv: FrameFactory) -> None:
    with pytest.raises(ConfigError, match="cannot resample 1Day to finer 1h"):
        resample(make_ohlcv(10), "1h")


# --------------------------------------------------------------------------- metrics


def test_max_drawdown_golden() -> None:
    # equity 1.1, 0.88, 0.924, 1.1088: the worst fall is 1.1 -> 0.88, i.e. -20 %
    assert max_drawdown(pd.Series([0.10, -0.20, 0.05, 0.20])) == pytest.approx(-0.20)
    # a loss on the first bar counts from the starting equity of 1.0
    assert max_drawdown(pd.Series([-0.10, 0.05])) == pytest.approx(-0.10)
    # two falls: 1 -> 0.9 (-10 %), then 1.08 -> 0.864 (-20 %)
    assert max_drawdown(pd.Series([-0.1, 0.2, -0.2, 0.0])) == pytest.approx(-0.2)
    assert max_drawdown(pd.Series([0.01, 0.02])) == 0.0
    assert max_drawdown(pd.Series([], dtype=float)) == 0.0
    assert max_drawdown(pd.Series([np.nan, -0.5])) == pytest.approx(-0.5)


def test_performance_golden() -> None:
    r = pd.Series([0.01, -0.02, 0.03, 0.0])
    p = performance(r, trades=3)
    # mean 0.005; sample variance (0.005² + 0.025² + 0.025² + 0.005²) / 3 = 0.0013 / 3
    assert p.sharpe == pytest.approx(0.005 / math.sqrt(0.0013 / 3) * math.sqrt(252), rel=1e-12)
    assert p.sharpe == pytest.approx(3.8129, abs=1e-4)
    # downside deviation sqrt(0.02² / 4) = 0.01
    assert p.sortino == pytest.approx(0.005 / 0.01 * math.sqrt(252), rel=1e-12)
    growth = 1.01 * 0.98 * 1.03
    assert p.total_return == pytest.approx(growth - 1)
    assert p.cagr == pytest.approx(growth ** (252 / 4) - 1)
    assert p.max_drawdown == pytest.approx(1.01 * 0.98 / 1.01 - 1)
    assert p.trades == 3
    assert set(p.as_row()) == {
        "total_return",
        "cagr",
        "sharpe",
        "sortino",
        "max_drawdown",
        "trades",
    }


def test_performance_edge_cases() -> None:
    assert performance(pd.Series([], dtype=float)).sharpe == 0.0
    flat = performance(pd.Series([0.0, 0.0, 0.0]))
    assert (flat.sharpe, flat.sortino, flat.max_drawdown, flat.total_return) == (0.0, 0.0, 0.0, 0.0)
    up = performance(pd.Series([0.01, 0.01]))
    assert up.sortino == 0.0 and up.sharpe == 0.0  # no downside, no variance
    wiped = performance(pd.Series([-1.0, 0.1]))
    assert wiped.cagr == -1.0 and wiped.max_drawdown == pytest.approx(-1.0)


# --------------------------------------------------------------------------- backtests


def _golden_frame() -> pd.DataFrame:
    idx = pd.bdate_range("2024-01-01", periods=4, tz="UTC")
    raw = pd.DataFrame(
        {
            "open": [100.0, 100.0, 99.0, 96.0],
            "high": [101.0, 102.0, 100.0, 111.0],
            "low": [99.0, 99.0, 94.0, 95.0],
            "close": [100.0, 101.0, 95.0, 110.0],
            "volume": [1e6] * 4,
        },
        index=idx,
    )
    return make_frame(raw, symbol="GOLD", source="unit", timeframe="1Day")


def test_buy_and_hold_golden_without_costs() -> None:
    res = run_backtest(
        "bh", {"GOLD": _golden_frame()}, BuyAndHold, costs=CostConfig(commission=0.0, slippage=0.0)
    )
    # ordered on bar 0 at close 100: int(95 000 / 100) = 950 shares, filled at bar 1's open 100
    values = [100_000.0, 5_000 + 950 * 101, 5_000 + 950 * 95, 5_000 + 950 * 110]
    assert res.final_value == pytest.approx(109_500.0)
    expected = pd.Series(values).pct_change().fillna(0.0).to_numpy()
    np.testing.assert_allclose(res.returns.to_numpy(), expected, rtol=1e-12)
    assert res.stats.total_return == pytest.approx(0.095)
    assert res.stats.max_drawdown == pytest.approx(95_250 / 100_950 - 1)
    # bought on the first bar, held: one trade (open), no round trip, in the market 3 of 4 bars
    assert (res.stats.trades, res.stats.round_trips, res.stats.open_positions) == (1, 0, 1)
    assert res.stats.exposure == pytest.approx(0.75)


def test_buy_and_hold_golden_with_costs() -> None:
    res = run_backtest(
        "bh",
        {"GOLD": _golden_frame()},
        BuyAndHold,
        costs=CostConfig(commission=0.001, slippage=0.001),
    )
    fill = 100.0 * 1.001  # 10 bps slippage on the open
    cash = 100_000 - 950 * fill * 1.001  # price plus 0.1 % commission
    assert res.final_value == pytest.approx(cash + 950 * 110.0, rel=1e-12)


@pytest.mark.parametrize(("runonce", "preload"), ENGINE_MODES)
def test_run_backtest_sma_cross_matches_a_plain_cerebro(
    sample: dict[str, pd.DataFrame], runonce: bool, preload: bool
) -> None:
    frames = {"AAPL": sample["AAPL"].loc["2006-01-01":"2008-12-31"]}
    res = run_backtest(
        "sma",
        frames,
        SmaCross,
        costs=CostConfig(commission=0.001, slippage=0.0),
        strategy_kwargs={"config": SmaCrossConfig()},
        runonce=runonce,
        preload=preload,
    )
    value, _, closed, _ = _run(frames, _pandas_feed, runonce, preload, SmaCross)
    assert res.final_value == pytest.approx(value, rel=1e-12)
    assert res.stats.trades == closed > 0
    assert len(res.returns) == len(frames["AAPL"])
    assert res.stats.total_return == pytest.approx(value / 100_000 - 1, rel=1e-9)


def test_run_backtest_needs_frames() -> None:
    with pytest.raises(ConfigError, match="at least one frame"):
        run_backtest("none", {}, BuyAndHold)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fast": 0}, "fast must be >= 1"),
        ({"fast": 30, "slow": 30}, r"slow must be > fast \(30\)"),
        ({"target_percent": 1.5}, r"target_percent must be in \(0, 1\]"),
    ],
)
def test_sma_cross_config_is_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SmaCrossConfig(**kwargs)


def test_sma_cross_config_warmup() -> None:
    assert SmaCrossConfig(fast=5, slow=20).warmup == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cash": 0}, "cash must be > 0"),
        ({"commission": 0.2}, "commission"),
        ({"slippage": -0.1}, "slippage"),
    ],
)
def test_cost_config_is_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CostConfig(**kwargs)
