"""Live bars: AlpacaBarHub and LiveBars in real Cerebro runs against a loopback Alpaca stream.

The stream is ``brokers/alpaca/sim/data.py`` (Alpaca's protocol, msgpack frames, one connection
per endpoint), history is served by ``brokers/alpaca/sim/loopback.py`` from the bars the fake was given, in
the recorded bodies' shape. Bars are pushed from a driver thread while ``cerebro.run()`` blocks;
the strategy stops itself once it saw the expected bars, and a watchdog stops a run that hangs.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
import requests

from brokers.alpaca.datastream import AlpacaBarHub, HubConfig
from brokers.alpaca.sim.data import KEY_ID, SECRET, AlpacaDataFake
from brokers.alpaca.sim.loopback import LoopbackServer
from core.errors import ConfigError, SourceUnavailable
from feeds.live import LiveBars, in_regular_session

pytestmark = pytest.mark.timeout(30)

FIXTURES = Path(__file__).parent / "fixtures" / "alpaca"
STOCK_BARS, CRYPTO_BARS = "/v2/stocks/bars", "/v1beta3/crypto/us/bars"
MIN = pd.Timedelta("1min")
FRI = pd.Timestamp("2026-03-06 14:30", tz="UTC")  # 09:30 New York (EST, UTC-5)
MON = pd.Timestamp("2026-03-09 13:30", tz="UTC")  # 09:30 New York (EDT, UTC-4), after DST began
Row = tuple[pd.Timestamp, float, float, float, float, float]


# -- fixtures and helpers -------------------------------------------------------------------------


def _strays(before: set[threading.Thread]) -> list[threading.Thread]:
    # The loopback HTTP server's per-connection threads belong to the test server: they end when
    # the REST client's keep-alive socket is collected. Every other new thread is a leak.
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and "process_request_thread" not in t.name
    ]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    for thread in _strays(before):  # a thread that is ending gets a moment to end
        thread.join(3.0)
    assert not _strays(before), f"threads left running: {_strays(before)}"


@pytest.fixture
def fake() -> Iterator[AlpacaDataFake]:
    with AlpacaDataFake() as f:
        yield f
    assert not f.errors, f.errors


@pytest.fixture
def rest(fake: AlpacaDataFake) -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        fake.serve_history(srv)
        yield srv
    assert not srv.errors, srv.errors


def _config(fake: AlpacaDataFake, rest: LoopbackServer, **kw: Any) -> HubConfig:
    kw = {"timeout": 2.0, "reconnect_initial": 0.05, "reconnect_max": 0.2} | kw
    return HubConfig(
        stock_stream_url=fake.stock_url,
        crypto_stream_url=fake.crypto_url,
        data_url=rest.base_url,
        **kw,
    )


@pytest.fixture
def hub(fake: AlpacaDataFake, rest: LoopbackServer) -> Iterator[AlpacaBarHub]:
    h = AlpacaBarHub(KEY_ID, SECRET, _config(fake, rest))
    yield h
    h.stop()


def _push(fake: AlpacaDataFake, symbol: str, start: pd.Timestamp, n: int, k: int = 0) -> list[Row]:
    """Push ``n`` minute bars from ``start``; bar values are distinct per symbol and index."""
    base = 100.0 * (1 + sum(map(ord, symbol)) % 7)
    rows = []
    for i in range(n):
        o = base + k + i
        row: Row = (start + i * MIN, o, o + 1.0, o - 1.0, o + 0.5, 1000.0 + k + i)
        fake.push_bar(symbol, *row)
        rows.append(row)
    return rows


def _as_seen(rows: list[Row], stamp: pd.Timedelta = MIN) -> list[tuple[Any, ...]]:
    """What the strategy records for ``rows``: naive UTC datetime (start + stamp) and OHLCV."""
    return [((r[0] + stamp).tz_convert(None).to_pydatetime(), *r[1:]) for r in rows]


def _wait(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Seen:
    """Bars the strategy saw per data name, shared with the driver thread."""

    def __init__(self, want: dict[str, int]) -> None:
        self.want = want
        self.bars: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self._cond = threading.Condition()

    def add(self, name: str, bar: tuple[Any, ...]) -> None:
        with self._cond:
            self.bars[name].append(bar)
            self._cond.notify_all()

    def wait(self, counts: dict[str, int], timeout: float = 5.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: all(len(self.bars[k]) >= n for k, n in counts.items()), timeout
            )
        assert ok, f"strategy saw {self.counts()}, waited for {counts}"

    def done(self) -> bool:
        with self._cond:
            return all(len(self.bars[k]) >= n for k, n in self.want.items())

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.bars.items()}


class Record(bt.Strategy):  # type: ignore[misc]
    """Records every new bar of every data; stops the run once ``seen`` has what it wants."""

    params = (("seen", None),)

    def __init__(self) -> None:
        self._lens: dict[str, int] = {}

    def prenext(self) -> None:
        self.next()

    def next(self) -> None:
        seen: Seen = self.p.seen
        for d in self.datas:
            if len(d) > self._lens.get(d._name, 0):
                self._lens[d._name] = len(d)
                bar = (d.datetime.datetime(0), d.open[0], d.high[0], d.low[0], d.close[0])
                seen.add(d._name, (*bar, d.volume[0]))
        if seen.done():
            self.env.runstop()


def _cerebro(seen: Seen) -> bt.Cerebro:
    cerebro = bt.Cerebro(stdstats=False, runonce=False, preload=False)
    cerebro.addstrategy(Record, seen=seen)
    return cerebro


def _run(cerebro: bt.Cerebro, seen: Seen, drive: Callable[[], None], limit: float = 15.0) -> None:
    """``cerebro.run()`` while ``drive`` pushes bars in a thread; a watchdog ends a stuck run."""
    failures: list[BaseException] = []

    def driver() -> None:
        try:
            drive()
        except BaseException as err:
            failures.append(err)
            cerebro.runstop()

    thread = threading.Thread(target=driver, name="test-driver")
    watchdog = threading.Timer(limit, cerebro.runstop)
    thread.start()
    watchdog.start()
    try:
        cerebro.run()
    finally:
        watchdog.cancel()
        watchdog.join()
        thread.join(limit)
    if failures:
        raise failures[0]
    assert seen.done(), f"the run ended with {seen.counts()}, wanted {seen.want}"


def _feed(hub: AlpacaBarHub, symbol: str, **kw: Any) -> LiveBars:
    return LiveBars(dataname=symbol, hub=hub, name=symbol, qcheck=0.05, **kw)


def _requests(rest: LoopbackServer) -> Callable[[], int]:
    return lambda: len(rest.requests_to("GET", STOCK_BARS) + rest.requests_to("GET", CRYPTO_BARS))


# -- backfill, live, reconnect through Cerebro ----------------------------------------------------


def test_backfill_then_live_bars_for_three_stocks_and_one_crypto_over_two_connections(
    fake: AlpacaDataFake, rest: LoopbackServer, hub: AlpacaBarHub
) -> None:
    symbols = ["AAPL", "MSFT", "SPY", "BTC/USD"]
    history = {s: _push(fake, s, MON - 3 * MIN, 3) for s in symbols}  # before anyone subscribed
    live: dict[str, list[Row]] = defaultdict(list)
    seen = Seen({s: 3 + 4 for s in symbols})
    cerebro = _cerebro(seen)
    for s in symbols:
        cerebro.adddata(_feed(hub, s, backfill_bars=3, backfill_start=MON - pd.Timedelta("1h")))
    hub.start()  # nothing subscribed yet: each feed's start() opens or joins its stream

    def drive() -> None:
        assert fake.wait_subscribed(symbols)
        _wait(lambda: _requests(rest)() == 4, "the four backfill requests")
        assert hub.connected
        for i in range(4):
            for s in symbols:
                live[s] += _push(fake, s, MON + i * MIN, 1, k=10 + i)

    _run(cerebro, seen, drive)
    for s in symbols:
        assert seen.bars[s] == _as_seen(history[s] + live[s]), s
    assert (fake.connections("stocks"), fake.connections("crypto")) == (1, 1)
    (crypto_request,) = rest.requests_to("GET", CRYPTO_BARS)
    assert crypto_request.param("symbols") == "BTC/USD"
    assert crypto_request.param("timeframe") == "1Min"


def test_a_drop_mid_stream_is_backfilled_every_bar_once_in_order(
    fake: AlpacaDataFake, rest: LoopbackServer, hub: AlpacaBarHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    symbols = ["AAPL", "MSFT", "BTC/USD"]
    rows = {s: _push(fake, s, MON - 2 * MIN, 2) for s in symbols}
    seen = Seen({s: 2 + 9 for s in symbols})
    reconnected = threading.Semaphore(0)  # released once per stream that reconnected
    hub.on_reconnect.append(reconnected.release)
    cerebro = _cerebro(seen)
    for s in symbols:
        cerebro.adddata(_feed(hub, s, backfill_bars=2, backfill_start=MON - pd.Timedelta("1h")))
    hub.start()

    def drive() -> None:
        assert fake.wait_subscribed(symbols)
        _wait(lambda: _requests(rest)() == 3, "the backfill requests")
        for s in symbols:
            rows[s] += _push(fake, s, MON, 3)
        seen.wait({s: 5 for s in symbols})
        fake.drop(refuse=True)  # both streams drop; reconnects are refused for now
        _wait(lambda: not hub.connected, "the hub to notice the drop")
        for s in symbols:
            rows[s] += _push(fake, s, MON + 3 * MIN, 3, k=3)  # in the gap: history only
        assert fake.wait_refused(["stocks", "crypto"]), "no reconnect attempt was refused"
        fake.release()
        for _ in range(2):
            assert reconnected.acquire(timeout=5), "both streams to reconnect"
        assert hub.connected and not reconnected.acquire(blocking=False)  # once each
        assert fake.subscribed("stocks") == {"AAPL", "MSFT"}  # every symbol re-subscribed
        assert fake.subscribed("crypto") == {"BTC/USD"}
        for s in symbols:
            rows[s] += _push(fake, s, MON + 6 * MIN, 3, k=6)

    _run(cerebro, seen, drive)
    for s in symbols:
        assert seen.bars[s] == _as_seen(rows[s]), s
        sent = fake.sent_bars(s)
        gap = [r[0] for r in rows[s][5:8]]
        assert not set(gap) & set(sent), f"{s}: gap bars came over the stream, not the backfill"
    assert (fake.connections("stocks"), fake.connections("crypto")) == (2, 2)
    gap_starts = {
        r.param("symbols"): pd.Timestamp(str(r.param("start"))) for r in rest.requests[3:]
    }
    assert gap_starts == dict.fromkeys(symbols, MON + 3 * MIN)  # right after the last bar seen
    assert SECRET not in caplog.text and KEY_ID not in caplog.text


@pytest.mark.parametrize("stamp", ["end", "start"])
def test_dst_change_gives_utc_times_and_market_hours_on_both_sides(
    fake: AlpacaDataFake, rest: LoopbackServer, hub: AlpacaBarHub, stamp: str
) -> None:
    # Friday 2026-03-06 is EST (UTC-5), Monday 2026-03-09 EDT (UTC-4): the session 09:30-16:00
    # New York is 14:30-21:00 UTC before and 13:30-20:00 UTC after. Crypto is not filtered and
    # runs straight through 2026-03-08 07:00 UTC, when New York clocks jump from 02:00 to 03:00.
    def at(ts: pd.Timestamp, *minutes: int) -> list[Row]:
        return [r for m in minutes for r in _push(fake, "AAPL", ts + m * MIN, 1, k=m)]

    friday = at(FRI, -1, 0, 389, 390)  # 09:29, 09:30, 15:59, 16:00 EST
    crypto = _push(fake, "BTC/USD", pd.Timestamp("2026-03-08 06:58", tz="UTC"), 2)
    seen = Seen({"AAPL": 5, "BTC/USD": 4})
    cerebro = _cerebro(seen)
    start = pd.Timestamp("2026-03-06", tz="UTC")
    for s in ("AAPL", "BTC/USD"):
        cerebro.adddata(
            _feed(hub, s, backfill_bars=10, backfill_start=start, market_hours=True, stamp=stamp)
        )
    hub.start()
    monday: list[Row] = []

    def drive() -> None:
        assert fake.wait_subscribed(["AAPL", "BTC/USD"])
        _wait(lambda: _requests(rest)() == 2, "the backfill requests")
        monday.extend(at(MON, -1, 0, 389, 390, 1440))  # 09:29 .. 16:00 EDT, Tuesday 09:30
        crypto.extend(_push(fake, "BTC/USD", pd.Timestamp("2026-03-08 07:00", tz="UTC"), 2, k=2))

    _run(cerebro, seen, drive)
    offset = MIN if stamp == "end" else pd.Timedelta(0)
    kept = [friday[1], friday[2], monday[1], monday[2], monday[4]]
    assert seen.bars["AAPL"] == _as_seen(kept, offset)
    utc = [r[0] for r in kept]
    assert [t.strftime("%a %H:%M") for t in utc] == [
        "Fri 14:30", "Fri 20:59", "Mon 13:30", "Mon 19:59", "Tue 13:30"
    ]  # fmt: skip
    local = [t.tz_convert("America/New_York").strftime("%H:%M") for t in utc]
    assert local == ["09:30", "15:59", "09:30", "15:59", "09:30"]
    assert seen.bars["BTC/USD"] == _as_seen(crypto, offset)
    assert pd.DatetimeIndex([r[0] for r in crypto]).diff()[1:].tolist() == [MIN] * 3


@pytest.mark.parametrize(
    ("utc", "regular"),
    [
        ("2026-03-06 14:29", False),  # 09:29 EST
        ("2026-03-06 14:30", True),
        ("2026-03-06 20:59", True),  # 15:59 EST
        ("2026-03-06 21:00", False),  # 16:00 EST
        ("2026-03-09 13:29", False),  # 09:29 EDT
        ("2026-03-09 13:30", True),
        ("2026-03-09 19:59", True),
        ("2026-03-09 20:00", False),  # 16:00 EDT
        ("2026-11-02 14:30", True),  # after DST ended (Nov 1): EST again
        ("2026-11-02 13:30", False),
        ("2026-03-07 15:00", False),  # Saturday
    ],
)
def test_in_regular_session_follows_new_york_time(utc: str, regular: bool) -> None:
    assert in_regular_session(pd.Timestamp(utc, tz="UTC")) is regular


def test_live_resampling_from_1m_to_5m(
    fake: AlpacaDataFake, rest: LoopbackServer, hub: AlpacaBarHub
) -> None:
    rows = _push(fake, "AAPL", MON - 5 * MIN, 5)  # backfill: 13:25-13:29
    seen = Seen({"AAPL": 20, "AAPL-5m": 4})
    cerebro = _cerebro(seen)
    data = _feed(hub, "AAPL", backfill_bars=5, backfill_start=MON - pd.Timedelta("1h"))
    cerebro.adddata(data)
    cerebro.resampledata(data, name="AAPL-5m", timeframe=bt.TimeFrame.Minutes, compression=5)
    hub.start()

    def drive() -> None:
        assert fake.wait_subscribed(["AAPL"])
        _wait(lambda: _requests(rest)() == 1, "the backfill request")
        rows.extend(_push(fake, "AAPL", MON, 15, k=5))  # 13:30-13:44

    _run(cerebro, seen, drive)
    assert seen.bars["AAPL"] == _as_seen(rows)
    frame = pd.DataFrame(rows, columns=["t", "open", "high", "low", "close", "volume"])
    agg = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    five = frame.set_index("t").resample("5min", label="left", closed="left").agg(agg)
    expected = [(t, *v) for t, v in zip(five.index, five.itertuples(index=False), strict=True)]
    assert seen.bars["AAPL-5m"] == _as_seen(expected, pd.Timedelta("5min"))
    stamps = [b[0].strftime("%H:%M") for b in seen.bars["AAPL-5m"]]
    assert stamps == ["13:30", "13:35", "13:40", "13:45"]  # each bar at its end


class ListHub:
    """A hub that is only a list: LiveBars' own rules tested without any network."""

    def __init__(self, history: pd.DataFrame, streamed: list[pd.DataFrame]) -> None:
        self.frame, self.streamed = history, streamed
        self.calls: list[tuple[Any, ...]] = []

    def subscribe(self, symbol: str, timeframe: str, sink: queue.Queue[pd.DataFrame]) -> None:
        self.calls.append(("subscribe", symbol, timeframe))
        for frame in self.streamed:
            sink.put(frame)

    def history(self, symbol: str, timeframe: str, start: object, end: object) -> pd.DataFrame:
        self.calls.append(("history", symbol, timeframe, start))
        return self.frame

    def unsubscribe(self, symbol: str, timeframe: str, sink: queue.Queue[pd.DataFrame]) -> None:
        self.calls.append(("unsubscribe", symbol, timeframe))


def _frame(rows: list[Row]) -> pd.DataFrame:
    index = pd.DatetimeIndex([r[0] for r in rows], name="datetime")
    cols = ["open", "high", "low", "close", "volume"]
    return pd.DataFrame([r[1:] for r in rows], columns=cols, index=index)


def test_livebars_replays_the_last_backfill_bars_then_drops_repeats_and_older_bars() -> None:
    rows: list[Row] = [
        (MON + i * MIN, 10.0 + i, 11.0 + i, 9.0 + i, 10.5 + i, 100.0 + i) for i in range(8)
    ]
    streamed = [_frame(rows[3:5]), _frame([rows[2]]), _frame(rows[5:7]), _frame([rows[6]])]
    streamed.append(_frame([rows[7]]))
    hub = ListHub(_frame(rows[:5]), streamed)
    seen = Seen({"X": 6})
    cerebro = _cerebro(seen)
    data = LiveBars(dataname="X", hub=hub, name="X", backfill_bars=3, qcheck=0.01)
    assert data.islive()
    cerebro.adddata(data)
    _run(cerebro, seen, lambda: None, limit=5.0)
    # the last 3 of 5 history bars, then the stream without its repeats (3, 4, 6) and older (2)
    assert seen.bars["X"] == _as_seen(rows[2:8])
    assert [c[0] for c in hub.calls] == ["subscribe", "history", "unsubscribe"]
    lookback = pd.Timestamp.now(tz="UTC") - hub.calls[1][3]  # stocks: at least 4 days back
    assert pd.Timedelta(days=4) <= lookback < pd.Timedelta(days=4, minutes=1)
    assert data._load() is False  # stopped


def test_livebars_backfill_leaves_the_bar_still_forming_to_the_stream() -> None:
    now = pd.Timestamp.now(tz="UTC").floor("min")
    rows: list[Row] = [(now + i * MIN, 1.0, 2.0, 0.5, 1.5, 10.0) for i in (-2, -1, 0)]
    data = LiveBars(dataname="X", hub=ListHub(_frame(rows), []), backfill_bars=5)
    data.start()
    assert [ts for ts, _ in data._backlog] == [rows[0][0], rows[1][0]]
    data.stop()


class Waits(queue.Queue):  # type: ignore[type-arg]
    """A sink that records how long each ``get`` may block, and answers at once: a frame from
    ``arriving`` (a bar that came during the wait) or ``queue.Empty`` (the wait ran out)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []
        self.arriving: list[pd.DataFrame] = []

    def get(self, block: bool = True, timeout: float | None = None) -> pd.DataFrame:
        self.waits.append(timeout if block else 0.0)
        if self.arriving:
            return self.arriving.pop(0)
        raise queue.Empty


def test_livebars_returns_none_while_no_bar_is_ready_and_waits_qcheck() -> None:
    data = LiveBars(dataname="X", hub=ListHub(_frame([]), []), qcheck=0.2)
    data.start()
    data._sink = sink = Waits()  # the feed's own queue, observed
    data.do_qcheck(True, 0.0)  # what Cerebro calls before each _load of a live feed
    assert data._load() is None  # nothing came within qcheck: the engine gets control back
    assert sink.waits == [0.2]  # one wait, of qcheck seconds: no busy loop, no endless block
    data.do_qcheck(True, 0.05)  # the engine already spent 0.05 s of it
    row: Row = (MON, 1.0, 2.0, 0.5, 1.5, 10.0)
    sink.arriving.append(_frame([row]))
    data.forward()  # the slot the engine opens before each _load
    assert data._load() is True and data.close[0] == 1.5  # a bar that came during the wait
    assert sink.waits == [0.2, pytest.approx(0.15)]
    data.stop()
    assert data._load() is False and len(sink.waits) == 2  # stopped: no wait at all


# -- the hub on its own ---------------------------------------------------------------------------


def test_hub_aggregates_minutes_and_sends_canonical_one_row_frames(
    fake: AlpacaDataFake, hub: AlpacaBarHub
) -> None:
    minutes: queue.Queue[pd.DataFrame] = queue.Queue()
    fives: queue.Queue[pd.DataFrame] = queue.Queue()
    hub.subscribe("aapl", "1m", minutes)
    hub.subscribe("AAPL", "5m", fives)
    hub.start()
    rows = _push(fake, "AAPL", MON, 10) + _push(fake, "AAPL", MON + 11 * MIN, 3, k=11)
    rows += _push(fake, "AAPL", MON + 16 * MIN, 1, k=16)  # 13:44-13:45 had no trades
    got = [minutes.get(timeout=2) for _ in rows]
    for frame, row in zip(got, rows, strict=True):
        assert isinstance(frame.index, pd.DatetimeIndex) and len(frame) == 1
        assert str(frame.index.tz) == "UTC" and frame.index.name == "datetime"
        assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
        assert list(frame.dtypes) == [np.float64] * 5
        assert (frame.index[0], *frame.iloc[0]) == row
        assert frame.attrs == {
            "symbol": "AAPL",
            "source": "alpaca",
            "timeframe": "1m",
            "adjustment": "raw",
            "asset_class": "stocks",
            "feed": "iex",
        }
    buckets = [fives.get(timeout=2) for _ in range(3)]
    assert [f.index[0] for f in buckets] == [MON, MON + 5 * MIN, MON + 10 * MIN]
    assert all(f.attrs["timeframe"] == "5m" for f in buckets)
    first, partial = buckets[0].iloc[0], buckets[2].iloc[0]
    assert first.tolist() == [rows[0][1], rows[4][2], rows[0][3], rows[4][4], 5 * 1000.0 + 10]
    # 13:41-13:43 only, sent when the 13:46 bar showed that the bucket was over
    assert partial.tolist() == [rows[10][1], rows[12][2], rows[10][3], rows[12][4], 3036.0]
    assert fives.empty()


def test_a_coarser_subscription_starts_with_the_whole_bucket_in_progress(
    fake: AlpacaDataFake,
    rest: LoopbackServer,
    hub: AlpacaBarHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("brokers.alpaca.datastream._now", lambda: MON + pd.Timedelta("12min30s"))
    minutes: queue.Queue[pd.DataFrame] = queue.Queue()
    hub.subscribe("AAPL", "1m", minutes)
    hub.start()
    rows = _push(fake, "AAPL", MON + 10 * MIN, 2, k=10)  # 13:40, 13:41: before the 5m sink came
    assert [minutes.get(timeout=2).index[0] for _ in rows] == [r[0] for r in rows]
    fives: queue.Queue[pd.DataFrame] = queue.Queue()
    rest.fail("GET", STOCK_BARS, on=1, delay=0.3)  # bars keep coming while history is read
    subscriber = threading.Thread(target=hub.subscribe, args=("AAPL", "5m", fives))
    subscriber.start()
    _wait(lambda: len(rest.requests_to("GET", STOCK_BARS)) == 1, "the history request")
    rows += _push(fake, "AAPL", MON + 12 * MIN, 1, k=12)
    subscriber.join(5)
    rows += _push(fake, "AAPL", MON + 13 * MIN, 2, k=13)
    (request,) = rest.requests_to("GET", STOCK_BARS)
    assert request.param("timeframe") == "1Min"
    assert pd.Timestamp(str(request.param("start"))) == MON + 10 * MIN
    bar = fives.get(timeout=2)
    assert bar.index[0] == MON + 10 * MIN
    assert bar.iloc[0].tolist() == [rows[0][1], rows[4][2], rows[0][3], rows[4][4], 5 * 1000.0 + 60]
    assert fives.empty() and minutes.qsize() == 3


def test_malformed_messages_are_logged_and_skipped_and_the_stream_goes_on(
    fake: AlpacaDataFake, hub: AlpacaBarHub, caplog: pytest.LogCaptureFixture
) -> None:
    sink: queue.Queue[pd.DataFrame] = queue.Queue()
    hub.subscribe("AAPL", "1m", sink)
    hub.start()
    good = {"T": "b", "S": "AAPL", "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10, "t": MON}
    assert fake.push_raw("stocks", b"\xc1 not msgpack") == 1
    fake.push_raw("stocks", [{**good, "o": "abc"}])  # not a number
    fake.push_raw("stocks", [{k: v for k, v in good.items() if k != "c"}])  # no close
    fake.push_raw("stocks", [{**good, "t": 12345}])  # not a timestamp
    (row,) = _push(fake, "AAPL", MON, 1)
    fake.push_raw("stocks", [good, {**good, "t": MON - MIN}])  # a repeat and an older bar
    (row2,) = _push(fake, "AAPL", MON + MIN, 1, k=1)
    got = [sink.get(timeout=2) for _ in range(2)]
    assert [(f.index[0], *f.iloc[0]) for f in got] == [row, row2]
    assert sink.empty() and hub.connected and fake.connections("stocks") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("unreadable frame" in m for m in warnings) == 1
    assert sum("malformed bar" in m and "AAPL" in m for m in warnings) == 3


def test_a_failed_gap_request_is_retried(
    fake: AlpacaDataFake, rest: LoopbackServer, hub: AlpacaBarHub
) -> None:
    sink: queue.Queue[pd.DataFrame] = queue.Queue()
    hub.subscribe("AAPL", "1m", sink)
    hub.start()
    rows = _push(fake, "AAPL", MON, 1)
    sink.get(timeout=2)
    rest.fail("GET", STOCK_BARS, on=1, status=500)  # the first gap request fails
    fake.drop(refuse=True)
    rows += _push(fake, "AAPL", MON + MIN, 3, k=1)
    fake.release()
    got = [sink.get(timeout=3) for _ in range(3)]
    assert [(f.index[0], *f.iloc[0]) for f in got] == rows[1:]
    assert len(rest.requests_to("GET", STOCK_BARS)) == 2


def test_stop_during_the_reconnect_backoff_is_prompt(
    fake: AlpacaDataFake, rest: LoopbackServer
) -> None:
    # After the drop the first reconnect attempt is a minute away: stop() (which joins the reader
    # for at most 5 s) ends the reader only if it wakes it, instead of waiting the backoff out.
    config = _config(fake, rest, reconnect_initial=60.0, reconnect_max=60.0)
    hub = AlpacaBarHub(KEY_ID, SECRET, config)
    try:
        hub.subscribe("AAPL", "1m", queue.Queue())
        hub.start()
        (reader,) = [t for t in threading.enumerate() if t.name == "alpaca-stocks-bars"]
        fake.drop(refuse=True)
        _wait(lambda: not hub.connected, "the drop")  # the reader is in (or at) its backoff
    finally:
        hub.stop()
    assert not reader.is_alive()
    assert fake.connections("stocks") == 1  # stopped in the backoff: no reconnect attempted


def test_livebars_unsubscribes_when_its_backfill_fails() -> None:
    class Failing(ListHub):
        def history(self, symbol: str, timeframe: str, start: object, end: object) -> pd.DataFrame:
            raise SourceUnavailable("history is down")

    hub = Failing(_frame([]), [])
    cerebro = _cerebro(Seen({"X": 1}))
    cerebro.adddata(LiveBars(dataname="X", hub=hub, backfill_bars=5))
    with pytest.raises(SourceUnavailable, match="history is down"):
        cerebro.run()
    assert [c[0] for c in hub.calls] == ["subscribe", "unsubscribe"]


def test_history_is_canonical_daily_bars_fall_on_new_york_midnight(
    fake: AlpacaDataFake, rest: LoopbackServer, hub: AlpacaBarHub
) -> None:
    fake.page_size = 2  # several pages: AlpacaSource follows next_page_token
    _push(fake, "AAPL", FRI, 3)
    _push(fake, "AAPL", MON, 3, k=3)
    minutes = hub.history("AAPL", "1m", "2026-03-01", "2026-03-10")
    assert len(minutes) == 6 and minutes.index.is_monotonic_increasing
    assert len(rest.requests_to("GET", STOCK_BARS)) == 3
    days = hub.history("AAPL", "1Day", "2026-03-01", "2026-03-10")
    assert list(days.index) == [
        pd.Timestamp("2026-03-06 05:00", tz="UTC"),  # midnight EST
        pd.Timestamp("2026-03-09 04:00", tz="UTC"),  # midnight EDT
    ]
    assert days.attrs["timeframe"] == "1Day" and list(days.dtypes) == [np.float64] * 5
    none = hub.history("BTC/USD", "1m", "2026-03-01", "2026-03-10")
    assert none.empty and list(none.columns) == ["open", "high", "low", "close", "volume"]
    assert none.attrs["symbol"] == "BTC/USD" and none.attrs["asset_class"] == "crypto"


def test_fake_history_answers_in_the_recorded_shape(
    fake: AlpacaDataFake, rest: LoopbackServer
) -> None:
    recorded = {}
    for name in ("data__test_historical_stock_data.json", "data__test_historical_crypto_data.json"):
        for r in json.loads((FIXTURES / name).read_text())["responses"]:
            recorded[r["test"]] = r["body"]
    _push(fake, "AAPL", MON, 1)
    _push(fake, "BTC/USD", MON, 1)
    headers = {"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET}
    for path, test, symbol in [
        (STOCK_BARS, "test_get_bars", "AAPL"),
        (CRYPTO_BARS, "test_get_crypto_bars", "BTC/USD"),
    ]:
        params = {"symbols": symbol, "timeframe": "1Min"}
        with requests.get(rest.base_url + path, params=params, headers=headers, timeout=5) as r:
            body = r.json()
        want = recorded[test]
        assert set(body) == set(want)
        assert set(body["bars"][symbol][0]) == set(next(iter(want["bars"].values()))[0])
        assert body["bars"][symbol][0]["t"] == "2026-03-09T13:30:00Z"


# -- bad inputs and faults ------------------------------------------------------------------------


def test_wrong_keys_raise_a_config_error_naming_what_to_check(
    fake: AlpacaDataFake, rest: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-value-that-must-not-leak"
    hub = AlpacaBarHub(KEY_ID, wrong, _config(fake, rest))
    hub.subscribe("AAPL", "1m", queue.Queue())
    with pytest.raises(ConfigError) as err:
        hub.start()
    message = str(err.value)
    assert "402 auth failed" in message and "APCA_API_KEY_ID" in message
    assert "APCA_API_SECRET_KEY" in message
    assert not hub.connected
    # the usual path: the hub is started empty, and a feed's start() inside cerebro.run opens it
    hub2 = AlpacaBarHub(KEY_ID, wrong, _config(fake, rest))
    hub2.start()
    cerebro = _cerebro(Seen({"AAPL": 1}))
    cerebro.adddata(_feed(hub2, "AAPL"))
    with pytest.raises(ConfigError, match="auth failed"):
        cerebro.run()
    hub2.stop()
    hub.stop()
    for text in (message, caplog.text, repr(hub), repr(hub.config)):
        assert wrong not in text and KEY_ID not in text
    assert "keys=set" in repr(hub)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StreamClock:
    """The streams' clock and their websocket connects, observed (patched into ``barstream``).

    ``monotonic`` moves only by ``connect_takes`` per connect and by the timeout of each read
    that timed out, so a test checks how a stream spends its time budget, not how fast the
    machine is. ``waits`` records ``("open", open_timeout)`` per connect and ``("recv",
    timeout)`` per read; the connects and reads themselves are the real ones.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, connect_takes: float = 0.0) -> None:
        from brokers.alpaca import barstream

        self.t, self.connect_takes = 100.0, connect_takes
        self.waits: list[tuple[str, float | None]] = []
        self._connect = barstream.connect
        monkeypatch.setattr(barstream, "connect", self.connect)
        monkeypatch.setattr(barstream, "time", self)

    def monotonic(self) -> float:
        return self.t

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        self.waits.append(("open", kwargs.get("open_timeout")))
        try:
            ws = self._connect(*args, **kwargs)
        finally:
            self.t += self.connect_takes
        recv = ws.recv

        def timed_recv(timeout: float | None = None, *a: Any, **kw: Any) -> Any:
            self.waits.append(("recv", timeout))
            try:
                return recv(timeout, *a, **kw)
            except TimeoutError:
                self.t += timeout or 0.0
                raise

        ws.recv = timed_recv
        return ws


def test_a_stream_that_never_greets_is_a_typed_error_within_the_timeout(
    fake: AlpacaDataFake, rest: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.silent = True
    clock = StreamClock(monkeypatch, connect_takes=0.2)
    hub = AlpacaBarHub(KEY_ID, SECRET, _config(fake, rest, timeout=0.5))
    hub.subscribe("BTC/USD", "1m", queue.Queue())
    with pytest.raises(SourceUnavailable, match="no 'connected' message within 0.5 s"):
        hub.start()
    # one budget for the whole handshake: the greeting may take what the connect left of it
    assert clock.waits == [("open", 0.5), ("recv", pytest.approx(0.3))]
    assert not hub.connected


def test_stream_server_gone_at_start_is_a_typed_error_within_the_timeout(
    rest: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = StreamClock(monkeypatch)
    url = f"ws://127.0.0.1:{_closed_port()}/v2/iex"
    hub = AlpacaBarHub(KEY_ID, SECRET, HubConfig(stock_stream_url=url, timeout=1.0))
    hub.subscribe("AAPL", "1m", queue.Queue())
    with pytest.raises(SourceUnavailable, match="unreachable"):
        hub.start()
    assert clock.waits == [("open", 1.0)]  # one bounded attempt, no retry loop at start
    # a server that accepts the TCP connection and never answers: the timeout ends the wait
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/v2/iex"
        hub2 = AlpacaBarHub(KEY_ID, SECRET, HubConfig(stock_stream_url=url, timeout=0.5))
        hub2.start()  # nothing subscribed: nothing to connect yet
        with pytest.raises(SourceUnavailable, match="unreachable within 0.5 s"):
            hub2.subscribe("MSFT", "1m", queue.Queue())
        assert clock.waits == [("open", 1.0), ("open", 0.5)]
        assert "MSFT" not in repr(hub2)  # a failed subscription is not kept
        hub2.stop()
    assert not hub.connected and not hub2.connected


def test_a_second_connection_is_refused_with_406_and_the_first_goes_on(
    fake: AlpacaDataFake, rest: LoopbackServer, hub: AlpacaBarHub
) -> None:
    sink: queue.Queue[pd.DataFrame] = queue.Queue()
    hub.subscribe("AAPL", "1m", sink)
    hub.start()
    other = AlpacaBarHub(KEY_ID, SECRET, _config(fake, rest))
    other.subscribe("MSFT", "1m", queue.Queue())
    with pytest.raises(SourceUnavailable, match="406 connection limit exceeded") as err:
        other.start()
    assert "share one AlpacaBarHub" in str(err.value)
    other.stop()
    (row,) = _push(fake, "AAPL", MON, 1)
    frame = sink.get(timeout=2)
    assert frame.index[0] == row[0] and hub.connected
    assert fake.subscribed("stocks") == {"AAPL"}


def test_bad_symbols_and_timeframes_are_refused_and_nothing_is_kept(hub: AlpacaBarHub) -> None:
    sink: queue.Queue[pd.DataFrame] = queue.Queue()
    with pytest.raises(ConfigError, match=r"unknown timeframe '7m'.*1m, 5m"):
        hub.subscribe("AAPL", "7m", sink)
    with pytest.raises(ConfigError, match=r"cannot be streamed.*resampledata"):
        hub.subscribe("AAPL", "1Day", sink)
    with pytest.raises(ConfigError, match=r"'BTCUSD' is ambiguous.*'BTC/USD'"):
        hub.subscribe("BTCUSD", "1m", sink)
    with pytest.raises(ConfigError, match="not a crypto pair"):
        hub.subscribe("BTC/", "1m", sink)
    with pytest.raises(ConfigError, match="unknown timeframe"):
        _feed(hub, "AAPL", timeframe="7m")
    with pytest.raises(ConfigError, match="has no subscribe"):
        LiveBars(dataname="AAPL", hub=object())
    with pytest.raises(ConfigError, match="stamp="):
        _feed(hub, "AAPL", stamp="middle")
    assert "symbols=[]" in repr(hub)
    hub.subscribe("btc-usd", "1m", sink)  # unambiguous: rewritten as Alpaca's BTC/USD
    assert "symbols=['BTC/USD']" in repr(hub)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("feed", "otc", "feed='otc' has no live stream"),
        ("stock_stream_url", "http://x", "stock_stream_url='http://x' must start with ws://"),
        ("crypto_stream_url", "x", "crypto_stream_url='x' must start with ws://"),
        ("data_url", "ws://x", "data_url='ws://x' must start with http"),
        ("timeout", 0, "timeout=0 must be > 0"),
        ("reconnect_initial", 0, "0 < reconnect_initial <= reconnect_max"),
        ("reconnect_max", 0.1, "0 < reconnect_initial <= reconnect_max"),
    ],
)
def test_hub_config_is_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        HubConfig(**{field: value})  # type: ignore[arg-type]


def test_hub_needs_keys() -> None:
    with pytest.raises(ConfigError, match="needs API keys"):
        AlpacaBarHub("", SECRET)
