"""One Alpaca market-data websocket (stocks or crypto): handshake, bar subscription, reconnect.

The wire protocol is alpaca-py's (``alpaca/data/live/websocket.py``) and Alpaca's documented
one: the client connects with ``Content-Type: application/msgpack`` and receives msgpack frames,
each an array of messages; the server greets with ``[{"T": "success", "msg": "connected"}]``;
the client sends ``{"action": "auth", "key", "secret"}`` and gets ``{"T": "success", "msg":
"authenticated"}`` or ``{"T": "error", "code": 402, "msg": "auth failed"}``; ``{"action":
"subscribe", "bars": [...]}`` is answered by a ``{"T": "subscription", "bars": [...], ...}``
message listing every current subscription; minute bars arrive as ``{"T": "b", "S", "o", "h",
"l", "c", "v", "t", ...}`` with ``t`` a msgpack timestamp (an RFC-3339 string on JSON streams).
A second connection with the same keys is refused with error 406 ``connection limit exceeded``.

Why our own client on ``websockets.sync`` instead of alpaca-py's ``StockDataStream`` /
``CryptoDataStream``: the hub needs four things alpaca-py's ``DataStream`` does not give.
(1) A typed error at start: on refused keys or an unreachable server ``DataStream._run_forever``
logs and retries forever, so a wrong key would hang the caller. (2) Reconnect detection: it
re-subscribes silently after a drop and has no hook, so the gap cannot be backfilled before newer
bars are delivered. (3) Clean, prompt shutdown: its consumer polls a stop queue every 5 s, it
spins on ``asyncio.sleep(0)`` until the first subscription, and ``stop()`` fails before ``run()``
started. (4) It is built on the deprecated ``websockets.legacy`` client. The protocol itself is
small, so :class:`BarStream` speaks it directly; a fake server that follows it tests both.

Threads: :meth:`BarStream.open` does the handshake in the caller's thread (so its errors reach
the caller, bounded by ``timeout``), then one reader thread per stream reads frames, and
reconnects with exponential backoff (with jitter) after a drop. :meth:`BarStream.close` closes
the socket and joins the reader. The keys never appear in a log line, a message or a ``repr``;
websockets' own frame logging (which would print the auth frame) is switched off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from inspect import signature
from typing import Any

import msgpack
import pandas as pd
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from core.config import DataConfig
from core.credentials import KEY_ENV, SECRET_ENV
from core.errors import ConfigError, DataError, SourceUnavailable
from core.utc import to_utc

log = logging.getLogger(__name__)

Message = dict[str, Any]
Bar = tuple[str, pd.Timestamp, tuple[float, float, float, float, float]]

_KEYS_HINT = (
    f"check {KEY_ENV} / {SECRET_ENV} (key_id= / secret_key=): they must be a valid pair, "
    "and paper and live accounts have different keys"
)
#: Alpaca's stream error codes and what a user should do about each.
_ERRORS: dict[int, tuple[type[Exception], str]] = {
    402: (ConfigError, _KEYS_HINT),
    405: (ConfigError, "subscribe to fewer symbols (symbol limit exceeded)"),
    406: (
        SourceUnavailable,
        "another client is connected with these keys (Alpaca allows one connection per stream): "
        "stop it, or share one AlpacaBarHub between all feeds",
    ),
    409: (
        ConfigError,
        "the keys have no subscription for this feed: use feed='iex' or subscribe to 'sip'",
    ),
}


class _QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger without its DEBUG frame dumps (they would show the auth frame)."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Frame-level debug output is dropped."""


_WS_LOG = _QuietLog(logging.getLogger("websockets.client"), {})
#: Recent websockets (17 here) warn unless ``connect`` is told we close the connection ourselves.
_LEGACY: dict[str, Any] = {"legacy": True} if "legacy" in signature(connect).parameters else {}


@dataclass(frozen=True, kw_only=True)
class StreamSettings(DataConfig):
    """Where one stream connects and how patiently (validated by the hub's ``HubConfig``)."""

    name: str  # "stocks" or "crypto", for messages
    url: str
    timeout: float
    reconnect_initial: float
    reconnect_max: float


def decode_frame(raw: bytes | str) -> list[Message]:
    """The messages of one frame: msgpack (binary) or JSON (text); DataError if unreadable."""
    try:
        data = json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise DataError(f"unreadable frame of {len(raw)} bytes: {err}") from err
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise DataError(f"expected an array of messages, got {type(data).__name__}")
    return data


def parse_bar(msg: Message) -> Bar:
    """``(symbol, start time in UTC, (o, h, l, c, v))`` of a ``"b"`` message; DataError if malformed."""
    symbol = msg.get("S")
    if not isinstance(symbol, str) or not symbol:
        raise DataError(f"bar without a symbol: {_short(msg)}")
    try:
        stamp = msg["t"]
        if isinstance(stamp, msgpack.Timestamp):
            ts = pd.Timestamp(stamp.to_unix_nano(), unit="ns", tz="UTC")
        elif isinstance(stamp, str):
            ts = to_utc(stamp)
        else:
            raise TypeError(f"t is a {type(stamp).__name__}")
        o, h, low, c, v = (float(msg[k]) for k in "ohlcv")
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{symbol}: malformed bar ({err!r}): {_short(msg)}") from err
    if any(math.isnan(x) for x in (o, h, low, c, v)):
        raise DataError(f"{symbol}: malformed bar with NaN values: {_short(msg)}")
    return symbol, ts, (o, h, low, c, v)


def _short(msg: object) -> str:
    return repr(msg)[:200]


class BarStream:
    """One authenticated, bar-subscribed websocket that reconnects itself.

    ``symbols()`` returns what to subscribe to at every handshake; ``on_bar`` gets each parsed
    bar (in the reader thread); ``on_reconnect`` runs after each successful reconnect and before
    any bar received on the new connection is handed to ``on_bar`` (so a gap can be backfilled
    in order).
    """

    def __init__(
        self,
        settings: StreamSettings,
        keys: tuple[str, str],
        *,
        symbols: Callable[[], list[str]],
        on_bar: Callable[[Bar], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.__keys = keys
        self._symbols, self._on_bar, self._on_reconnect = symbols, on_bar, on_reconnect
        self._lock = threading.Lock()  # one handshake or subscribe at a time
        self._acks = threading.Condition()
        self._acked: set[str] = set()
        self._stash: list[Message] = []  # messages met during a handshake, handled after it
        self._ws: ClientConnection | None = None
        self._connected = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        s = self.settings
        return f"BarStream({s.name}, {s.url}, connected={self._connected})"

    @property
    def connected(self) -> bool:
        """Authenticated and subscribed right now."""
        return self._connected

    @property
    def running(self) -> bool:
        """Opened and not closed (possibly reconnecting)."""
        return self._thread is not None and self._thread.is_alive()

    def open(self) -> bool:
        """Connect, authenticate and subscribe in this thread, then read in a background thread.

        Returns False (and does nothing) when the stream is already open. Raises
        :class:`ConfigError` for refused keys or feed and :class:`SourceUnavailable` when the
        server cannot be reached in ``timeout`` seconds or refuses the connection.
        """
        with self._lock:
            if self.running:
                return False
            self._stopping.clear()
            self._stash = []
            self._ws = self._handshake()
            self._connected = True
            self._thread = threading.Thread(
                target=self._run, name=f"alpaca-{self.settings.name}-bars", daemon=True
            )
            self._thread.start()
        return True

    def add(self, symbols: Iterable[str]) -> None:
        """Subscribe to more symbols; waits for the server's confirmation while connected.

        While disconnected it returns at once: the next handshake subscribes ``symbols()``.
        """
        wanted = set(symbols)
        with self._lock:
            ws = self._ws
            if ws is None or not self._connected:
                return
            self._send(ws, {"action": "subscribe", "bars": sorted(wanted)})
            with self._acks:
                ok = self._acks.wait_for(
                    lambda: wanted <= self._acked or not self._connected, self.settings.timeout
                )
        if not ok:
            raise SourceUnavailable(
                f"alpaca {self.settings.name} stream did not confirm the subscription to "
                f"{', '.join(sorted(wanted))} within {self.settings.timeout} s; retry later"
            )

    def remove(self, symbols: Iterable[str]) -> None:
        """Unsubscribe (best effort: a closed connection simply forgets them)."""
        ws = self._ws
        if ws is not None and self._connected:
            with contextlib.suppress(ConnectionClosed):
                self._send(ws, {"action": "unsubscribe", "bars": sorted(symbols)})

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading and reconnecting, close the socket and join every thread of this stream."""
        self._stopping.set()
        ws, thread = self._ws, self._thread
        if ws is not None:
            ws.close()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "alpaca %s stream: reader still running after %.1f s", self.name, timeout
                )
        last = self._ws  # a reconnect may have replaced ``ws`` meanwhile
        if last is not None and last is not ws:
            last.close()
        for conn in {id(c): c for c in (ws, last) if c is not None}.values():
            for ws_thread in _ws_threads(conn):
                ws_thread.join(timeout)
        self._thread, self._ws, self._connected = None, None, False

    @property
    def name(self) -> str:
        return self.settings.name

    # -- handshake ----------------------------------------------------------------------------

    def _handshake(self) -> ClientConnection:
        """Connect, authenticate and subscribe to ``symbols()``, all within ``timeout``."""
        s = self.settings
        deadline = time.monotonic() + s.timeout
        try:
            ws = connect(
                s.url,
                open_timeout=s.timeout,
                close_timeout=min(s.timeout, 2.0),
                additional_headers={"Content-Type": "application/msgpack"},
                compression=None,
                logger=_WS_LOG,
                **_LEGACY,
            )
        except (OSError, TimeoutError, WebSocketException) as err:
            raise SourceUnavailable(
                f"alpaca {s.name} stream at {s.url} unreachable within {s.timeout} s "
                f"({self._redact(f'{type(err).__name__}: {err}')}); check the URL and the "
                "network, or retry later"
            ) from err
        try:
            self._expect(ws, "connected", deadline)
            key_id, secret_key = self.__keys
            self._send(ws, {"action": "auth", "key": key_id, "secret": secret_key})
            self._expect(ws, "authenticated", deadline)
            symbols = sorted(self._symbols())
            with self._acks:
                self._acked = set()
            if symbols:
                self._send(ws, {"action": "subscribe", "bars": symbols})
                self._expect(ws, "subscription", deadline)
        except BaseException:
            ws.close()
            for thread in _ws_threads(ws):
                thread.join(s.timeout)
            raise
        return ws

    def _expect(self, ws: ClientConnection, what: str, deadline: float) -> None:
        """Read until the ``what`` control message; raise the typed error for an error message."""
        s = self.settings
        while True:
            try:
                messages = decode_frame(ws.recv(timeout=max(deadline - time.monotonic(), 0.0)))
            except TimeoutError as err:
                raise SourceUnavailable(
                    f"alpaca {s.name} stream at {s.url}: no {what!r} message within "
                    f"{s.timeout} s; retry later"
                ) from err
            except ConnectionClosed as err:
                raise SourceUnavailable(
                    f"alpaca {s.name} stream at {s.url} closed the connection while waiting for "
                    f"{what!r} ({err.rcvd.code if err.rcvd else 'no close frame'}); retry later"
                ) from err
            except DataError as err:
                raise SourceUnavailable(f"alpaca {s.name} stream: {err}") from err
            for i, msg in enumerate(messages):
                kind = msg.get("T")
                if kind == "error":
                    raise self._error(msg)
                if kind == "subscription":
                    self._on_subscription(msg)
                if kind == what or (kind == "success" and msg.get("msg") == what):
                    self._stash.extend(messages[i + 1 :])
                    return
                if kind not in ("success", "subscription"):
                    self._stash.append(msg)

    def _error(self, msg: Message) -> Exception:
        """The project's exception for one of Alpaca's stream error messages."""
        code, text = msg.get("code"), self._redact(str(msg.get("msg", "")))
        kind, hint = _ERRORS.get(code, (SourceUnavailable, "retry later"))  # type: ignore[arg-type]
        return kind(f"alpaca {self.name} stream refused: {code} {text}; {hint}")

    def _send(self, ws: ClientConnection, message: Message) -> None:
        ws.send(msgpack.packb(message))

    def _redact(self, text: str) -> str:
        for secret in self.__keys:
            if secret:
                text = text.replace(secret, "***")
        return text

    # -- the reader thread --------------------------------------------------------------------

    def _run(self) -> None:
        ws = self._ws
        while ws is not None:
            self._drain_stash()
            self._read(ws)
            self._connected = False
            with self._acks:
                self._acks.notify_all()
            if self._stopping.is_set():
                return
            ws = self._reconnect()
            if ws is not None:
                self._callback(self._on_reconnect, "reconnect handler")

    def _read(self, ws: ClientConnection) -> None:
        """Handle frames until the connection closes."""
        try:
            for raw in ws:
                self._handle(raw)
        except ConnectionClosed as err:
            if not self._stopping.is_set():
                code = err.rcvd.code if err.rcvd else "no close frame"
                log.warning("alpaca %s stream dropped (%s); reconnecting", self.name, code)
            return
        if not self._stopping.is_set():
            log.warning("alpaca %s stream closed by the server; reconnecting", self.name)

    def _handle(self, raw: bytes | str) -> None:
        try:
            messages = decode_frame(raw)
        except DataError as err:
            log.warning("alpaca %s stream: skipped an unreadable frame: %s", self.name, err)
            return
        for msg in messages:
            kind = msg.get("T")
            if kind == "b":
                self._bar(msg)
            elif kind == "subscription":
                self._on_subscription(msg)
            elif kind == "error":
                log.error("alpaca %s stream: %s", self.name, self._error(msg))

    def _bar(self, msg: Message) -> None:
        try:
            bar = parse_bar(msg)
        except DataError as err:
            log.warning("alpaca %s stream: skipped a malformed bar: %s", self.name, err)
            return
        self._callback(lambda: self._on_bar(bar), f"bar handler for {bar[0]}")

    def _on_subscription(self, msg: Message) -> None:
        bars = msg.get("bars") or []
        with self._acks:
            self._acked = {str(b) for b in bars}
            self._acks.notify_all()
        log.info("alpaca %s stream: subscribed to bars of %s", self.name, ", ".join(sorted(bars)))

    def _drain_stash(self) -> None:
        stash, self._stash = self._stash, []
        for msg in stash:
            if msg.get("T") == "b":
                self._bar(msg)

    def _callback(self, fn: Callable[[], None], what: str) -> None:
        """Run a hub callback; a failure is logged, never kills the reader thread."""
        try:
            fn()
        except Exception:
            log.exception("alpaca %s stream: %s failed", self.name, what)

    def _reconnect(self) -> ClientConnection | None:
        """Handshake again with exponential backoff until it works or the stream is closed."""
        s, delay, attempt = self.settings, self.settings.reconnect_initial, 0
        while not self._stopping.wait(delay * random.uniform(0.8, 1.2)):
            attempt += 1
            try:
                with self._lock:
                    ws = self._handshake()
                    if self._stopping.is_set():
                        ws.close()
                        return None
                    self._ws, self._connected = ws, True
            except (SourceUnavailable, ConfigError) as err:
                delay = min(delay * 2, s.reconnect_max)
                log.warning(
                    "alpaca %s stream: reconnect attempt %d failed: %s; next in %.1f s",
                    s.name,
                    attempt,
                    err,
                    delay,
                )
                continue
            log.info("alpaca %s stream reconnected (attempt %d)", s.name, attempt)
            return ws
        return None


def _ws_threads(ws: ClientConnection | None) -> list[threading.Thread]:
    """The threads websockets runs for one connection (reader and keepalive)."""
    if ws is None:
        return []
    threads = [ws.recv_events_thread, getattr(ws, "keepalive_thread", None)]
    return [t for t in threads if t is not None and t is not threading.current_thread()]


__all__ = ["Bar", "BarStream", "StreamSettings", "decode_frame", "parse_bar"]
