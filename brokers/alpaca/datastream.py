"""Live Alpaca bars for every feed of a process: one stock stream, one crypto stream, backfill.

:class:`AlpacaBarHub` owns ONE multiplexed stock data stream and ONE crypto data stream for all
symbols (Alpaca refuses a second connection with the same keys: error 406), and the historical
:class:`~feeds.sources.alpaca.AlpacaSource` (timeouts, key redaction) for :meth:`history` and gap
backfill. Feeds (:class:`feeds.live.LiveBars`) call :meth:`~AlpacaBarHub.subscribe` with a queue
and receive one-row canonical OHLCV frames (:mod:`feeds.frame`): UTC ``datetime`` index (the
bar's start, as in every frame of the project), float64 ``open high low close volume``, attrs
``symbol source timeframe adjustment asset_class feed``.

    hub = AlpacaBarHub(key_id, secret_key, HubConfig(feed="iex"))
    hub.start()                                   # opens streams for symbols subscribed so far
    cerebro.adddata(LiveBars(dataname="AAPL", hub=hub, backfill_bars=200))
    cerebro.adddata(LiveBars(dataname="BTC/USD", hub=hub))
    cerebro.run()
    hub.stop()

Timeframes: the stream sends 1-minute bars (``"1m"``); ``5m``, ``15m``, ``1h`` and ``4h`` are
aggregated here from them, in buckets aligned on UTC multiples of the timeframe (as Alpaca's own
historical bars are). A bucket is sent when its last minute arrives, or, when that minute had no
trades, when the first bar of a later bucket arrives. Daily bars come from :meth:`history`;
live, resample a 1m feed (``cerebro.resampledata``). Symbols: stocks as ``AAPL``; crypto
always with a slash, ``BTC/USD`` (``BTC-USD`` is accepted and rewritten; ``BTCUSD`` is refused as
ambiguous).

Reconnect: after a drop the stream reconnects with exponential backoff (``reconnect_initial``
doubling up to ``reconnect_max``, with jitter), authenticates, re-subscribes every symbol and
then, before any bar of the new connection, backfills each symbol's gap (1-minute bars after the
last one delivered, up to the last closed minute) through :meth:`history`. Bars are delivered in
order, each once: older or repeated minutes are dropped. If the gap cannot be fetched after
three tries, an error names the symbol and the missing interval. Then every ``on_reconnect``
callback runs (in the stream's thread; exceptions are logged). Keys refused during a reconnect
(revoked, say) are logged and retried every ``reconnect_max`` seconds. :meth:`stop` keeps the
subscriptions, and a later :meth:`start` opens the streams again without backfilling the pause.

Errors at :meth:`start` (or at :meth:`subscribe` after it): refused keys or feed raise
:class:`~core.errors.ConfigError` saying what to check; an unreachable server, a timeout or a
second connection raise :class:`~core.errors.SourceUnavailable` within ``timeout`` seconds, and
no thread is left running. A malformed bar is logged and skipped. The keys never appear in a log
line, a message or a ``repr``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from alpaca.common.exceptions import APIError

from brokers.alpaca.barstream import Bar, BarStream, StreamSettings
from core.config import DataConfig
from core.errors import ConfigError, SymbolNotFound
from core.utc import to_utc
from feeds.frame import OHLCV_COLUMNS, empty_frame, guess_asset_class, make_frame
from feeds.sources.alpaca import AlpacaSource
from feeds.timeframes import Timeframe, get_timeframe

log = logging.getLogger(__name__)

STREAM_URL = "wss://stream.data.alpaca.markets"
STOCK_FEEDS: tuple[str, ...] = ("iex", "sip", "delayed_sip")
#: What the hub can deliver live: the stream's minutes, and buckets of them.
LIVE_TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "1h", "4h")
_MINUTE = pd.Timedelta("1min")
_GAP_TRIES = 3
#: Bases of Alpaca's crypto pairs: ``BTCUSD`` is ambiguous (``BTC/USD`` or a ticker?).
_CRYPTO_BASES = frozenset(
    ("AAVE", "AVAX", "BAT", "BCH", "BTC", "CRV", "DOGE", "DOT", "ETH", "GRT", "LINK", "LTC")
    + ("MKR", "PEPE", "SHIB", "SOL", "SUSHI", "TRUMP", "UNI", "USDC", "USDT", "XRP", "XTZ", "YFI")
)
_CRYPTO_QUOTES = ("USDT", "USDC", "USD", "BTC")


@dataclass(frozen=True, kw_only=True)
class HubConfig(DataConfig):
    """Everything about an :class:`AlpacaBarHub` except the keys.

    ``feed``: stock stream and history feed (``iex`` free, ``sip`` with a subscription,
    ``delayed_sip``). ``stock_stream_url`` / ``crypto_stream_url``: full websocket URLs replacing
    ``wss://stream.data.alpaca.markets/v2/{feed}`` and ``.../v1beta3/crypto/us`` (tests,
    sandbox). ``data_url``: historical REST base (``AlpacaSource``'s ``url``). ``timeout``:
    seconds for a connect, a handshake step or a request. ``reconnect_initial`` /
    ``reconnect_max``: the first and the longest wait between reconnect attempts.
    """

    feed: str = "iex"
    stock_stream_url: str | None = None
    crypto_stream_url: str | None = None
    data_url: str | None = None
    timeout: float = 10.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0

    def __post_init__(self) -> None:
        if self.feed not in STOCK_FEEDS:
            raise ConfigError(
                f"HubConfig.feed={self.feed!r} has no live stream: use one of {', '.join(STOCK_FEEDS)}"
            )
        for name in ("stock_stream_url", "crypto_stream_url"):
            url = getattr(self, name)
            if url is not None and not str(url).startswith(("ws://", "wss://")):
                raise ConfigError(f"HubConfig.{name}={url!r} must start with ws:// or wss://")
        if self.data_url is not None and not str(self.data_url).startswith(("http://", "https://")):
            raise ConfigError(f"HubConfig.data_url={self.data_url!r} must start with http(s)://")
        if not self.timeout > 0:
            raise ConfigError(f"HubConfig.timeout={self.timeout!r} must be > 0 seconds")
        if not 0 < self.reconnect_initial <= self.reconnect_max:
            raise ConfigError(
                f"HubConfig.reconnect_initial={self.reconnect_initial!r} and reconnect_max="
                f"{self.reconnect_max!r} must satisfy 0 < reconnect_initial <= reconnect_max"
            )

    def stream_url(self, asset_class: str) -> str:
        """The websocket URL of the ``stocks`` or ``crypto`` stream."""
        if asset_class == "crypto":
            return self.crypto_stream_url or f"{STREAM_URL}/v1beta3/crypto/us"
        return self.stock_stream_url or f"{STREAM_URL}/v2/{self.feed}"


def normalize_symbol(symbol: str) -> tuple[str, str]:
    """``(SYMBOL, asset class)``: ``aapl`` -> ``AAPL`` stocks, ``btc-usd`` -> ``BTC/USD`` crypto."""
    if not isinstance(symbol, str) or not symbol.strip():
        raise ConfigError(f"symbol={symbol!r}: give a ticker such as 'AAPL' or a pair 'BTC/USD'")
    s = symbol.strip().upper()
    if "/" not in s and guess_asset_class(s) == "crypto":
        s = s.replace("-", "/")
    if "/" in s:
        base, _, quote = s.partition("/")
        if not base or not quote or "/" in quote:
            raise ConfigError(f"symbol={symbol!r} is not a crypto pair such as 'BTC/USD'")
        return s, "crypto"
    for quote in _CRYPTO_QUOTES:
        if s.endswith(quote) and s[: -len(quote)] in _CRYPTO_BASES:
            raise ConfigError(
                f"symbol={symbol!r} is ambiguous: for the crypto pair write "
                f"'{s[: -len(quote)]}/{quote}' (Alpaca's crypto symbols have a slash)"
            )
    return s, "stocks"


def live_timeframe(name: str) -> Timeframe:
    """The registered timeframe ``name`` if the hub can stream it, else a ConfigError."""
    tf = get_timeframe(name)
    if tf.name not in LIVE_TIMEFRAMES:
        raise ConfigError(
            f"timeframe {tf.name!r} cannot be streamed: live bars are {', '.join(LIVE_TIMEFRAMES)}; "
            "for daily bars stream '1m' and resample it (cerebro.resampledata(data, "
            "timeframe=bt.TimeFrame.Days)), or call history()"
        )
    return tf


@dataclass(eq=False)
class _Subscription:
    """One sink and the bucket it is filling (for timeframes coarser than a minute).

    A coarser subscription starts ``pending``: minutes that arrive are held until :meth:`seed`
    has aggregated the earlier minutes of the bucket in progress (from history), so its first
    bar is whole.
    """

    timeframe: Timeframe
    sink: queue.Queue[pd.DataFrame]
    attrs: dict[str, str]
    start: pd.Timestamp | None = None
    values: np.ndarray | None = None
    pending: list[tuple[pd.Timestamp, np.ndarray]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, ts: pd.Timestamp, ohlcv: np.ndarray) -> None:
        """Take one minute bar; put every completed bar in the sink."""
        with self.lock:
            if self.pending is not None:
                self.pending.append((ts, ohlcv))
            else:
                self._add(ts, ohlcv)

    def seed(self, minutes: list[tuple[pd.Timestamp, np.ndarray]]) -> None:
        """Aggregate the bucket's earlier ``minutes``, then those held meanwhile, each once."""
        with self.lock:
            held, self.pending = self.pending or [], None
            last: pd.Timestamp | None = None
            for ts, ohlcv in [*minutes, *held]:
                if last is None or ts > last:
                    self._add(ts, ohlcv)
                    last = ts

    def _add(self, ts: pd.Timestamp, ohlcv: np.ndarray) -> None:
        delta = self.timeframe.delta
        if delta == _MINUTE:
            self._emit(ts, ohlcv)
            return
        bucket = ts.floor(delta)
        if self.start is not None and bucket != self.start:
            self._flush()  # the previous bucket's last minutes had no trades
        v = self.values
        if v is None:
            self.start, self.values = bucket, ohlcv.copy()
        else:
            hl = (max(v[1], ohlcv[1]), min(v[2], ohlcv[2]))
            self.values = np.array([v[0], *hl, ohlcv[3], v[4] + ohlcv[4]], dtype=np.float64)
        if ts + _MINUTE >= bucket + delta:
            self._flush()

    def _flush(self) -> None:
        if self.start is not None and self.values is not None:
            self._emit(self.start, self.values)
        self.start, self.values = None, None

    def _emit(self, ts: pd.Timestamp, ohlcv: np.ndarray) -> None:
        row = pd.DataFrame([ohlcv], columns=list(OHLCV_COLUMNS), index=pd.DatetimeIndex([ts]))
        self.sink.put(
            make_frame(
                row,
                symbol=self.attrs["symbol"],
                source="alpaca",
                timeframe=self.timeframe.name,
                asset_class=self.attrs["asset_class"],
                extra_attrs={"feed": self.attrs["feed"]},
            )
        )


@dataclass(eq=False)
class _Symbol:
    """A subscribed symbol: its sinks, and the last minute delivered (gap backfill starts after)."""

    symbol: str
    asset_class: str
    since: pd.Timestamp
    subs: list[_Subscription] = field(default_factory=list)
    last: pd.Timestamp | None = None


class AlpacaBarHub:
    """Live bars from one stock and one crypto stream for every subscriber, with backfill.

    ``on_reconnect``: callables run after every reconnect (after re-subscribing and backfill).
    """

    def __init__(self, key_id: str, secret_key: str, config: HubConfig = HubConfig()) -> None:
        if not isinstance(config, HubConfig):
            raise ConfigError(f"config must be a HubConfig, got {type(config).__name__}")
        if not (isinstance(key_id, str) and key_id and isinstance(secret_key, str) and secret_key):
            raise ConfigError(
                "AlpacaBarHub needs API keys: pass key_id and secret_key (for example from "
                "APCA_API_KEY_ID / APCA_API_SECRET_KEY)"
            )
        self.config = config
        self.on_reconnect: list[Callable[[], None]] = []
        self.__keys = (key_id, secret_key)
        self._source = AlpacaSource(
            key_id, secret_key, feed=config.feed, url=config.data_url, timeout=config.timeout
        )
        self._lock = threading.RLock()
        self._symbols: dict[str, _Symbol] = {}
        self._started = False
        self._stopping = threading.Event()
        self._streams = {a: self._make_stream(a) for a in ("stocks", "crypto")}

    def __repr__(self) -> str:
        return f"AlpacaBarHub({self.config!r}, keys=set, symbols={sorted(self._symbols)})"

    @property
    def connected(self) -> bool:
        """Started, and every stream with subscribed symbols is authenticated and subscribed."""
        with self._lock:
            needed = {s.asset_class for s in self._symbols.values()}
            return self._started and all(self._streams[a].connected for a in needed)

    def start(self) -> None:
        """Open the streams that have subscribed symbols (later subscriptions open theirs).

        Raises ConfigError (keys, feed) or SourceUnavailable (network, second connection);
        on error nothing is left running.
        """
        with self._lock:
            if self._started:
                return
            self._started = True
            self._stopping.clear()
            needed = {s.asset_class for s in self._symbols.values()}
        try:
            for asset_class in sorted(needed):
                self._streams[asset_class].open()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Close both streams and join their threads (subscriptions are kept for a restart)."""
        with self._lock:
            self._started = False
        self._stopping.set()
        for stream in self._streams.values():
            stream.close(timeout)

    def subscribe(self, symbol: str, timeframe: str, sink: queue.Queue[pd.DataFrame]) -> None:
        """Send ``symbol``'s ``timeframe`` bars to ``sink`` as one-row canonical frames.

        After :meth:`start` this opens the symbol's stream if needed and returns once the
        server confirmed the subscription. For timeframes above 1m the bucket in progress is
        first filled with its earlier minutes from history, so the first bar is whole. On error
        the subscription is not kept.
        """
        sym, asset_class = normalize_symbol(symbol)
        tf = live_timeframe(timeframe)
        attrs = {"symbol": sym, "asset_class": asset_class, "feed": self._feed(asset_class)}
        sub = _Subscription(tf, sink, attrs, pending=None if tf.delta == _MINUTE else [])
        with self._lock:
            state = self._symbols.setdefault(sym, _Symbol(sym, asset_class, _now()))
            new = len(state.subs) == 0
            state.subs.append(sub)
            started = self._started
        try:
            stream = self._streams[asset_class]
            if new and started and not stream.open():  # a new stream subscribes to it
                stream.add([sym])
            if sub.pending is not None:
                now = _now()
                frame = self.history(sym, "1m", now.floor(tf.delta), now.floor(_MINUTE))
                sub.seed(list(zip(frame.index, frame.to_numpy(dtype=np.float64), strict=True)))
        except BaseException:
            self._drop(sym, lambda s: s is sub)
            raise

    def unsubscribe(self, symbol: str, timeframe: str, sink: queue.Queue[pd.DataFrame]) -> None:
        """Stop sending to ``sink``; the symbol is unsubscribed when its last sink goes."""
        sym, _ = normalize_symbol(symbol)
        tf = get_timeframe(timeframe)
        self._drop(sym, lambda s: s.sink is sink and s.timeframe is tf)

    def _drop(self, sym: str, which: Callable[[_Subscription], bool]) -> None:
        """Remove the subscriptions ``which`` picks; unsubscribe the symbol when none is left."""
        with self._lock:
            state = self._symbols.get(sym)
            if state is None:
                return
            state.subs = [s for s in state.subs if not which(s)]
            if state.subs:
                return
            del self._symbols[sym]
        self._streams[state.asset_class].remove([sym])

    def history(self, symbol: str, timeframe: str, start: object, end: object) -> pd.DataFrame:
        """``symbol``'s bars in ``[start, end)`` as a canonical frame (empty when there are none).

        Through :class:`~feeds.sources.alpaca.AlpacaSource`: SymbolNotFound for a symbol Alpaca
        rejects, ConfigError for refused keys, SourceUnavailable for network and server faults.
        """
        sym, asset_class = normalize_symbol(symbol)
        tf = get_timeframe(timeframe)
        try:
            return self._source.fetch(sym, timeframe=tf.name, start=to_utc(start), end=to_utc(end))
        except SymbolNotFound as err:
            if isinstance(err.__cause__, APIError):  # Alpaca rejected the symbol itself
                raise
            return empty_frame(
                symbol=sym,
                source="alpaca",
                timeframe=tf.name,
                adjustment="raw",
                asset_class=asset_class,
                feed=self._feed(asset_class),
            )

    # -- inside the stream threads ------------------------------------------------------------

    def _make_stream(self, asset_class: str) -> BarStream:
        c = self.config
        settings = StreamSettings(
            name=asset_class,
            url=c.stream_url(asset_class),
            timeout=c.timeout,
            reconnect_initial=c.reconnect_initial,
            reconnect_max=c.reconnect_max,
        )
        return BarStream(
            settings,
            self.__keys,
            symbols=lambda: self._symbols_of(asset_class),
            on_bar=self._on_bar,
            on_reconnect=lambda: self._reconnected(asset_class),
        )

    def _feed(self, asset_class: str) -> str:
        return "us" if asset_class == "crypto" else self.config.feed

    def _symbols_of(self, asset_class: str) -> list[str]:
        with self._lock:
            return [s for s, st in self._symbols.items() if st.asset_class == asset_class]

    def _on_bar(self, bar: Bar) -> None:
        symbol, ts, values = bar
        with self._lock:
            state = self._symbols.get(symbol)
        if state is None:
            log.debug("alpaca: bar for %s, which nobody subscribes to; ignored", symbol)
            return
        self._deliver(state, ts, np.asarray(values, dtype=np.float64))

    def _deliver(self, state: _Symbol, ts: pd.Timestamp, ohlcv: np.ndarray) -> None:
        """Hand one minute bar to every sink of the symbol, unless it is not after the last one."""
        if state.last is not None and ts <= state.last:
            log.debug("alpaca: %s bar at %s is not after %s; dropped", state.symbol, ts, state.last)
            return
        state.last = ts
        with self._lock:
            subs = list(state.subs)
        for sub in subs:
            sub.push(ts, ohlcv)

    def _reconnected(self, asset_class: str) -> None:
        """Backfill every symbol of the stream that reconnected, then run ``on_reconnect``."""
        end = _now().floor(_MINUTE)  # bars of closed minutes only
        with self._lock:
            states = [s for s in self._symbols.values() if s.asset_class == asset_class]
        for state in states:
            start = state.last + _MINUTE if state.last is not None else state.since.floor(_MINUTE)
            if start < end:
                frame = self._gap(state.symbol, start, end)
                for ts, row in zip(frame.index, frame.to_numpy(dtype=np.float64), strict=True):
                    self._deliver(state, ts, row)
        for callback in list(self.on_reconnect):
            try:
                callback()
            except Exception:
                log.exception("alpaca: an on_reconnect callback failed")

    def _gap(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """The 1-minute bars of ``[start, end)``, with a few tries; empty (and an error) if lost."""
        wait = self.config.reconnect_initial
        for attempt in range(1, _GAP_TRIES + 1):
            try:
                frame = self.history(symbol, "1m", start, end)
                log.info("alpaca: backfilled %d bar(s) of %s from %s", len(frame), symbol, start)
                return frame.loc[:, list(OHLCV_COLUMNS)]
            except Exception as err:
                log.warning("alpaca: backfill of %s, try %d failed: %s", symbol, attempt, err)
                if self._stopping.wait(wait):
                    break
                wait = min(wait * 2, self.config.reconnect_max)
        log.error(
            "alpaca: %s bars from %s to %s are missing: the backfill failed", symbol, start, end
        )
        return empty_frame()


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")
