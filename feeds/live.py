"""A live backtrader feed over any bar hub: history backfill first, then streamed bars.

:class:`LiveBars` knows nothing about brokers: its ``hub`` is any object with

    hub.subscribe(symbol, timeframe, sink: queue.Queue[pd.DataFrame]) -> None
    hub.history(symbol, timeframe, start, end) -> pd.DataFrame      # canonical OHLCV frame

(and optionally ``hub.unsubscribe(symbol, timeframe, sink)``, called at stop), such as
``brokers.alpaca.datastream.AlpacaBarHub``. The hub puts canonical frames (usually one row, the
bar's start time in UTC) into the sink from its own thread; the feed turns them into bars.

    data = LiveBars(dataname="AAPL", hub=hub, timeframe="1m", backfill_bars=100,
                    market_hours=True)
    cerebro.adddata(data)                       # or cerebro.resampledata(data, ...)

Backtrader's live protocol: ``islive()`` is True (Cerebro turns ``preload`` and ``runonce``
off), ``_load()`` returns True with a bar, None when none is ready yet (after waiting up to
``qcheck`` seconds, so the engine does not busy-loop), False once the feed is stopped. The feed
notifies DELAYED while it replays the backfill and LIVE afterwards.

Times: backtrader gets naive UTC (as :class:`~feeds.btfeeds.StoreData`), DST-correct because
every bar is converted from its UTC instant. ``stamp="end"`` (the default) stamps a bar with
the time it closed (start + timeframe), the convention backtrader's resampler assumes: with it
``cerebro.resampledata(data, timeframe=bt.TimeFrame.Minutes, compression=5)`` groups the minutes
that start at :30-:34 into the bar stamped :35, which is Alpaca's 5-minute bar of :30. And a bar
is never stamped before it could be known. ``stamp="start"`` gives the start time, as the stored
frames and ``StoreData`` do (then do not resample intraday: backtrader would group minutes
:31-:35). Bars are strictly increasing: a repeated or older bar is dropped with a debug log.

``market_hours=True`` keeps, for stocks, only bars starting within the regular session
09:30-16:00 America/New_York on weekdays (by the zone's rules, so both sides of a DST change are
right; early closes and holidays are not known, and send no regular-session bars anyway). Crypto
symbols (with a ``/``) trade around the clock and are never filtered.
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from core.errors import ConfigError, DataError
from feeds.btfeeds import datetimes_to_num
from feeds.calendars import is_open
from feeds.frame import OHLCV_COLUMNS
from feeds.timeframes import get_timeframe

log = logging.getLogger(__name__)

STAMPS = ("end", "start")


def in_regular_session(ts: pd.Timestamp) -> bool:
    """Whether a bar starting at ``ts`` (tz-aware) is in the NYSE regular session.

    The exchange calendar decides (:func:`feeds.calendars.is_open`): DST, holidays and early
    closes included, the same calendar the gap checks use.
    """
    return is_open(ts)


def backfill_window(n: int, delta: pd.Timedelta, crypto: bool, now: pd.Timestamp) -> pd.Timestamp:
    """Where to start asking for history so that ``n`` bars are very likely inside.

    Stocks trade about 6.5 h a day on weekdays, so a window of 6 x ``n`` bars, at least four
    days (a long weekend), is enough; crypto trades around the clock.
    """
    if crypto:
        return now - 2 * n * delta - pd.Timedelta("1h")
    return now - max(6 * n * delta, pd.Timedelta(days=4))


class LiveBars(bt.feed.DataBase):  # type: ignore[misc,name-defined]
    """Live bars of one symbol from a hub, after ``backfill_bars`` bars of history.

    Params: ``dataname`` (symbol), ``hub``, ``timeframe`` (a name from
    :mod:`feeds.timeframes`, default ``1m``), ``backfill_bars`` (history bars replayed first),
    ``backfill_start`` (where history starts; default: far enough back for ``backfill_bars``),
    ``market_hours`` (stocks: regular session only), ``stamp`` (``end`` or ``start``),
    ``qcheck`` (seconds to wait for a bar before giving the engine control back).
    """

    params = (
        ("dataname", None),
        ("hub", None),
        ("timeframe", "1m"),
        ("backfill_bars", 0),
        ("backfill_start", None),
        ("market_hours", False),
        ("stamp", "end"),
        ("qcheck", 0.5),
    )

    def __init__(self, **kwargs: Any) -> None:
        p = self.p
        if not isinstance(p.dataname, str) or not p.dataname.strip():
            raise ConfigError(f"LiveBars needs dataname=<symbol>, got {p.dataname!r}")
        for method in ("subscribe", "history"):
            if not callable(getattr(p.hub, method, None)):
                raise ConfigError(
                    f"LiveBars hub={p.hub!r} has no {method}() method: pass a bar hub such as "
                    "brokers.alpaca.datastream.AlpacaBarHub"
                )
        if not isinstance(p.timeframe, str):
            raise ConfigError(
                f"LiveBars timeframe={p.timeframe!r} must be a timeframe name such as '1m'"
            )
        self._tf = get_timeframe(p.timeframe)
        if not isinstance(p.backfill_bars, int) or p.backfill_bars < 0:
            raise ConfigError(f"LiveBars backfill_bars={p.backfill_bars!r} must be an int >= 0")
        if p.stamp not in STAMPS:
            raise ConfigError(f"LiveBars stamp={p.stamp!r} must be one of {', '.join(STAMPS)}")
        if not p.qcheck > 0:
            raise ConfigError(f"LiveBars qcheck={p.qcheck!r} must be > 0 seconds")
        p.timeframe, p.compression = self._tf.bt_timeframe, self._tf.bt_compression
        self._symbol = p.dataname.strip()
        self._crypto = "/" in self._symbol
        self._offset = self._tf.delta if p.stamp == "end" else pd.Timedelta(0)
        self._sink: queue.Queue[pd.DataFrame] = queue.Queue()
        self._backlog: deque[tuple[pd.Timestamp, np.ndarray]] = deque()
        self._last: pd.Timestamp | None = None
        self._stopped = False

    def islive(self) -> bool:
        """Always: Cerebro must fetch bar by bar."""
        return True

    def haslivedata(self) -> bool:
        """Bars are waiting (backfill or streamed)."""
        return bool(self._backlog) or not self._sink.empty()

    def start(self) -> None:
        """Subscribe first (so no bar is missed), then load the backfill."""
        super().start()
        self._sink, self._backlog, self._last, self._stopped = queue.Queue(), deque(), None, False
        self.p.hub.subscribe(self._symbol, self._tf.name, self._sink)
        try:
            self._backfill()
        except BaseException:
            self._unsubscribe()  # the run fails here; the hub must not keep feeding this sink
            raise
        self.put_notification(self.DELAYED if self._backlog else self.LIVE)

    def _backfill(self) -> None:
        n = self.p.backfill_bars
        if not n:
            return
        now = pd.Timestamp.now(tz="UTC")
        start = self.p.backfill_start
        if start is None:
            start = backfill_window(n, self._tf.delta, self._crypto, now)
        frame = self.p.hub.history(self._symbol, self._tf.name, start, now)
        delta = self._tf.delta  # a bar still forming at ``now`` comes live, whole
        rows = [r for r in _rows(frame, self._symbol) if r[0] + delta <= now and self._open(r[0])]
        self._backlog.extend(rows[-n:])
        log.info("%s: %d backfill bar(s) from %s", self._symbol, len(self._backlog), start)

    def stop(self) -> None:
        """No more bars: ``_load`` returns False; the hub stops sending to this feed."""
        self._stopped = True
        self._unsubscribe()
        super().stop()

    def _unsubscribe(self) -> None:
        unsubscribe = getattr(self.p.hub, "unsubscribe", None)
        if callable(unsubscribe):
            unsubscribe(self._symbol, self._tf.name, self._sink)

    def _load(self) -> bool | None:
        if self._stopped:
            return False
        wait = self._qcheck
        while True:
            bar = self._next(wait)
            if bar is None:
                return None
            wait = 0.0
            ts, ohlcv = bar
            if self._accept(ts):
                self._fill(ts, ohlcv)
                return True

    def _next(self, wait: float) -> tuple[pd.Timestamp, np.ndarray] | None:
        """The next bar: the backfill first, then the sink (waiting up to ``wait`` seconds)."""
        if not self._backlog:
            try:
                frame = self._sink.get(timeout=wait) if wait > 0 else self._sink.get_nowait()
            except queue.Empty:
                return None
            try:
                self._backlog.extend(_rows(frame, self._symbol))
            except DataError as err:  # a broken hub must not stop the strategy
                log.error("%s: skipped what the hub sent: %s", self._symbol, err)
            if not self._backlog:
                return None
        bar = self._backlog.popleft()
        if not self._backlog and self._laststatus != self.LIVE:
            self.put_notification(self.LIVE)
        return bar

    def _accept(self, ts: pd.Timestamp) -> bool:
        if self._last is not None and ts <= self._last:
            log.debug("%s: dropped the bar at %s: not after %s", self._symbol, ts, self._last)
            return False
        if not self._open(ts):
            log.debug("%s: dropped the bar at %s: outside market hours", self._symbol, ts)
            return False
        self._last = ts
        return True

    def _open(self, ts: pd.Timestamp) -> bool:
        """Whether the market-hours rule keeps a bar starting at ``ts``."""
        return not self.p.market_hours or self._crypto or in_regular_session(ts)

    def _fill(self, ts: pd.Timestamp, ohlcv: np.ndarray) -> None:
        lines = self.lines
        lines.datetime[0] = datetimes_to_num(pd.DatetimeIndex([ts + self._offset]))[0]
        lines.open[0], lines.high[0], lines.low[0] = ohlcv[0], ohlcv[1], ohlcv[2]
        lines.close[0], lines.volume[0] = ohlcv[3], ohlcv[4]
        lines.openinterest[0] = 0.0


def _rows(frame: pd.DataFrame, symbol: str) -> list[tuple[pd.Timestamp, np.ndarray]]:
    """``(UTC start time, ohlcv)`` per row of a canonical frame."""
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise DataError(f"{symbol}: the hub sent bars without a UTC DatetimeIndex")
    missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{symbol}: the hub sent bars without column(s) {', '.join(missing)}")
    values = frame.loc[:, list(OHLCV_COLUMNS)].to_numpy(dtype=np.float64)
    return list(zip(index.tz_convert("UTC"), values, strict=True))
