"""A loopback fake of Alpaca's market-data websocket streams, with their history for backfill.

Follows the protocol alpaca-py's ``DataStream`` speaks (``alpaca/data/live/websocket.py``) and
Alpaca documents: on connect ``[{"T": "success", "msg": "connected"}]``; ``{"action": "auth",
"key", "secret"}`` -> ``[{"T": "success", "msg": "authenticated"}]`` or ``[{"T": "error",
"code": 402, "msg": "auth failed"}]``; a second authenticated connection to the same endpoint
with the same key -> ``[{"T": "error", "code": 406, "msg": "connection limit exceeded"}]`` and
the socket closes; ``{"action": "subscribe", "bars": [...]}`` -> a ``"subscription"`` message
listing every channel. Frames are msgpack (binary, ``t`` a msgpack timestamp) when the client
sent ``Content-Type: application/msgpack`` as alpaca-py does, JSON text (``t`` RFC-3339)
otherwise. Stock streams live at ``/v2/{feed}``, the crypto stream at ``/v1beta3/crypto/us``::

    with AlpacaDataFake() as fake, LoopbackServer() as rest:
        fake.serve_history(rest)                 # GET /v2/stocks/bars, /v1beta3/crypto/us/bars
        fake.push_bar("AAPL", "2026-03-09 13:30Z", 10, 11, 9, 10.5, 100)   # history + stream
        fake.drop(refuse=True)                   # close every socket, refuse new ones
        fake.wait_refused(["stocks"])            # a reconnect attempt was refused
        fake.release()

Every pushed bar is kept as history, whether or not a client was subscribed; REST answers use
the recorded bodies' shape (``{"bars": {symbol: [{"t", "o", "h", "l", "c", "v", "n", "vw"}]},
"next_page_token"}``), aggregated to ``NMin`` / ``NHour`` / ``1Day`` (New York days for stocks)
and paged by ``limit`` with ``next_page_token``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pandas as pd
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse
from websockets.sync.server import Server as WsServer
from websockets.sync.server import ServerConnection, serve

from brokers.alpaca.sim.loopback import LoopbackServer, Reply, Request

__all__ = ["KEY_ID", "SECRET", "AlpacaDataFake"]

KEY_ID, SECRET = "PKDATAFAKE000000001", "data-fake-secret-0000000000000000000000001"
STOCK_CHANNELS = "trades quotes bars updatedBars dailyBars statuses lulds corrections cancelErrors"
CRYPTO_CHANNELS = "trades quotes orderbooks bars updatedBars dailyBars"
_TIMEFRAME = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D)$")


class _Quiet(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The server's websockets logger without DEBUG frame dumps (they would print the keys)."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Dropped."""


@dataclass(eq=False)
class _Session:
    conn: ServerConnection
    endpoint: str  # "stocks" or "crypto"
    binary: bool
    key: str | None = None
    bars: set[str] = field(default_factory=set)
    sent: list[dict[str, Any]] = field(default_factory=list)


class AlpacaDataFake:
    """The fake stream server on ``127.0.0.1``; see the module docstring."""

    def __init__(self, key_id: str = KEY_ID, secret_key: str = SECRET, feed: str = "iex") -> None:
        self.key_id, self.secret_key, self.feed = key_id, secret_key, feed
        self.errors: list[BaseException] = []
        self.page_size = 10_000  # the most bars one REST page holds (also capped by ``limit``)
        self.silent = False  # accept websockets but never greet nor answer (a hung server)
        self._lock = threading.Condition()
        self._sessions: set[_Session] = set()
        self._closed: list[_Session] = []
        self._opened: dict[str, int] = defaultdict(int)
        self._refused: dict[str, int] = defaultdict(int)
        self._bars: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._refusing = False
        self._ws: WsServer = serve(
            self._session,
            "127.0.0.1",
            0,
            compression=None,
            process_request=self._gate,
            logger=_Quiet(logging.getLogger("websockets.server"), {}),
        )
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def stock_url(self) -> str:
        """``ws://127.0.0.1:<port>/v2/<feed>`` (HubConfig.stock_stream_url)."""
        return f"ws://127.0.0.1:{self._ws.socket.getsockname()[1]}/v2/{self.feed}"

    @property
    def crypto_url(self) -> str:
        """``ws://127.0.0.1:<port>/v1beta3/crypto/us`` (HubConfig.crypto_stream_url)."""
        return f"ws://127.0.0.1:{self._ws.socket.getsockname()[1]}/v1beta3/crypto/us"

    def start(self) -> AlpacaDataFake:
        """Serve in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._ws.serve_forever, name="fake-data-ws", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Close every connection and join every thread the fake started."""
        if self._thread is not None:
            self._ws.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        else:
            self._ws.socket.close()

    def __enter__(self) -> AlpacaDataFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- controls -------------------------------------------------------------------------------

    def push_bar(
        self,
        symbol: str,
        ts: object,
        o: float,
        h: float,
        l: float,  # noqa: E741 - Alpaca's own field names
        c: float,
        v: float,
        *,
        n: int = 1,
        vw: float | None = None,
        stream: bool = True,
    ) -> dict[str, Any]:
        """Record a minute bar (``ts``: its start, tz-aware or UTC) and send it to subscribers."""
        t = pd.Timestamp(ts)  # type: ignore[arg-type]
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        bar = {"T": "b", "S": symbol, "o": o, "h": h, "l": l, "c": c, "v": v, "t": t}
        bar |= {"n": n, "vw": (o + h + l + c) / 4 if vw is None else vw}
        with self._lock:
            rows = self._bars[symbol]
            if rows and rows[-1]["t"] >= t:
                raise ValueError(f"push {symbol} bars in time order: {t} after {rows[-1]['t']}")
            rows.append(bar)
            targets = [s for s in self._sessions if symbol in s.bars] if stream else []
        for session in targets:
            self._send(session, [bar])
        return bar

    def push_raw(self, endpoint: str, payload: bytes | str | list[dict[str, Any]]) -> int:
        """Send ``payload`` as it is (bytes, text) or encoded (messages) to every authenticated
        session of ``endpoint``; returns how many got it."""
        with self._lock:
            targets = [s for s in self._sessions if s.endpoint == endpoint and s.key]
        for session in targets:
            if isinstance(payload, list):
                self._send(session, payload)
            else:
                session.conn.send(payload)
        return len(targets)

    def drop(self, refuse: bool = False) -> None:
        """Close every connection from the server side; with ``refuse`` refuse new ones (503)."""
        with self._lock:
            self._refusing = refuse
            sessions = list(self._sessions)
            self._sessions.clear()
            self._closed.extend(sessions)
            self._lock.notify_all()
        for session in sessions:
            session.conn.close()

    def release(self) -> None:
        """Accept connections again after ``drop(refuse=True)``."""
        with self._lock:
            self._refusing = False

    # -- observation ----------------------------------------------------------------------------

    def connections(self, endpoint: str) -> int:
        """How many websocket sessions were opened to ``endpoint`` (``stocks`` / ``crypto``)."""
        with self._lock:
            return self._opened[endpoint]

    def wait_refused(self, endpoints: Iterable[str], timeout: float = 5.0) -> bool:
        """Block until a connection to each endpoint was refused (after ``drop(refuse=True)``)
        since this fake started; False on timeout."""
        wanted = set(endpoints)
        with self._lock:
            return self._lock.wait_for(lambda: all(self._refused[e] for e in wanted), timeout)

    def subscribed(self, endpoint: str) -> set[str]:
        """The bar symbols the live session(s) of ``endpoint`` subscribe to."""
        with self._lock:
            return {b for s in self._sessions if s.endpoint == endpoint for b in s.bars}

    def wait_subscribed(self, symbols: Iterable[str], timeout: float = 5.0) -> bool:
        """Block until every symbol is subscribed on a live session; False on timeout."""
        wanted = set(symbols)
        with self._lock:
            return self._lock.wait_for(
                lambda: wanted <= {b for s in self._sessions for b in s.bars}, timeout
            )

    def sent_bars(self, symbol: str) -> list[pd.Timestamp]:
        """The start times of every ``symbol`` bar sent over any session, in order."""
        with self._lock:
            sessions = [*self._closed, *self._sessions]
        return [m["t"] for s in sessions for m in s.sent if m.get("T") == "b" and m["S"] == symbol]

    # -- REST history ---------------------------------------------------------------------------

    def serve_history(self, server: LoopbackServer) -> None:
        """Answer ``GET /v2/stocks/bars`` and ``/v1beta3/crypto/us/bars`` from the pushed bars."""
        server.route("GET", "/v2/stocks/bars", lambda r: self._history(r, crypto=False))
        server.route("GET", "/v1beta3/crypto/us/bars", lambda r: self._history(r, crypto=True))

    def _history(self, request: Request, *, crypto: bool) -> Reply | dict[str, Any]:
        keys = (request.headers.get("APCA-API-KEY-ID"), request.headers.get("APCA-API-SECRET-KEY"))
        if keys != (self.key_id, self.secret_key) and (not crypto or any(keys)):
            return Reply(401, {"message": "unauthorized"})
        match = _TIMEFRAME.match(request.param("timeframe") or "")
        if match is None:
            return Reply(400, {"code": 40010001, "message": "invalid timeframe"})
        offset = {"Min": "min", "T": "min", "Hour": "h", "H": "h", "Day": "D", "D": "D"}
        rule = f"{match[1]}{offset[match[2]]}"
        start, end = (_when(request.param(k)) for k in ("start", "end"))
        rows: list[tuple[str, dict[str, Any]]] = []
        for symbol in (request.param("symbols") or "").split(","):
            with self._lock:
                bars = list(self._bars.get(symbol, []))
            for row in _aggregate(bars, rule, new_york_days=not crypto and rule.endswith("D")):
                if (start is None or row["t"] >= start) and (end is None or row["t"] <= end):
                    rows.append((symbol, row))
        first = int(request.param("page_token") or 0)
        size = min(int(request.param("limit") or 1000), self.page_size)
        page: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for symbol, row in rows[first : first + size]:
            page[symbol].append({**row, "t": row["t"].strftime("%Y-%m-%dT%H:%M:%SZ")})
        more = first + size < len(rows)
        return {"bars": dict(page), "next_page_token": str(first + size) if more else None}

    # -- websocket ------------------------------------------------------------------------------

    def _gate(self, conn: ServerConnection, request: WsRequest) -> WsResponse | None:
        endpoint = _endpoint(request.path)
        if endpoint is None:
            return conn.respond(404, f"no stream at {request.path}\n")
        with self._lock:
            if not self._refusing:
                return None
            self._refused[endpoint] += 1
            self._lock.notify_all()
        return conn.respond(503, "stream unavailable\n")

    def _session(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        endpoint = _endpoint(conn.request.path) or "stocks"
        binary = conn.request.headers.get("Content-Type") == "application/msgpack"
        session = _Session(conn, endpoint, binary)
        with self._lock:
            self._opened[endpoint] += 1
            self._sessions.add(session)
        try:
            if self.silent:
                for _ in conn:
                    pass
                return
            self._send(session, [{"T": "success", "msg": "connected"}])
            for raw in conn:
                for message in self._decode(session, raw):
                    self._handle(session, message)
        except ConnectionClosed:
            pass
        except Exception as err:  # a bug in the fake: make the test fail
            self.errors.append(err)
        finally:
            with self._lock:
                if session in self._sessions:
                    self._sessions.discard(session)
                    self._closed.append(session)
                self._lock.notify_all()

    def _decode(self, session: _Session, raw: bytes | str) -> list[dict[str, Any]]:
        try:
            data = json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return [data]
        self._send(session, [{"T": "error", "code": 400, "msg": "invalid syntax"}])
        return []

    def _handle(self, session: _Session, message: dict[str, Any]) -> None:
        action = message.get("action")
        if action == "auth":
            self._auth(session, message)
        elif session.key is None:
            self._send(session, [{"T": "error", "code": 401, "msg": "not authenticated"}])
        elif action in ("subscribe", "unsubscribe"):
            bars = {str(b) for b in message.get("bars") or []}
            with self._lock:
                session.bars = session.bars | bars if action == "subscribe" else session.bars - bars
                self._lock.notify_all()
            channels = STOCK_CHANNELS if session.endpoint == "stocks" else CRYPTO_CHANNELS
            reply: dict[str, Any] = {"T": "subscription"} | {k: [] for k in channels.split()}
            reply["bars"] = sorted(session.bars)
            self._send(session, [reply])
        else:
            self._send(session, [{"T": "error", "code": 400, "msg": "invalid syntax"}])

    def _auth(self, session: _Session, message: dict[str, Any]) -> None:
        if session.key is not None:
            self._send(session, [{"T": "error", "code": 403, "msg": "already authenticated"}])
            return
        if (message.get("key"), message.get("secret")) != (self.key_id, self.secret_key):
            self._send(session, [{"T": "error", "code": 402, "msg": "auth failed"}])
            return
        with self._lock:
            busy = any(
                s.key == self.key_id and s.endpoint == session.endpoint for s in self._sessions
            )
            if not busy:
                session.key = self.key_id
        if busy:
            self._send(session, [{"T": "error", "code": 406, "msg": "connection limit exceeded"}])
            session.conn.close()
            return
        self._send(session, [{"T": "success", "msg": "authenticated"}])

    def _send(self, session: _Session, messages: list[dict[str, Any]]) -> None:
        session.sent.extend(messages)
        try:
            if session.binary:
                session.conn.send(msgpack.packb([_wire(m, binary=True) for m in messages]))
            else:
                session.conn.send(json.dumps([_wire(m, binary=False) for m in messages]))
        except ConnectionClosed:
            pass


def _endpoint(path: str) -> str | None:
    if path.startswith("/v1beta3/crypto/"):
        return "crypto"
    return "stocks" if re.fullmatch(r"/v2/\w+", path) else None


def _wire(message: dict[str, Any], *, binary: bool) -> dict[str, Any]:
    """A message as sent: ``t`` a msgpack timestamp (binary) or an RFC-3339 string (JSON)."""
    t = message.get("t")
    if not isinstance(t, pd.Timestamp):
        return message
    stamp: Any = msgpack.Timestamp.from_unix_nano(t.value) if binary else t.isoformat()
    return {**message, "t": stamp.replace("+00:00", "Z") if isinstance(stamp, str) else stamp}


def _when(value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _aggregate(bars: list[dict[str, Any]], rule: str, *, new_york_days: bool) -> list[dict]:
    """Minute bars aggregated to ``rule`` (``5min``, ``1h``, ``1D``), labelled by their start."""
    rows = [{k: b[k] for k in ("t", "o", "h", "l", "c", "v", "n", "vw")} for b in bars]
    if rule in ("1min", "") or not rows:
        return rows
    frame = pd.DataFrame(rows).set_index("t")
    if new_york_days:
        frame.index = frame.index.tz_convert("America/New_York")
    agg = {"o": "first", "h": "max", "l": "min", "c": "last", "v": "sum", "n": "sum", "vw": "mean"}
    out = frame.resample(rule, label="left", closed="left").agg(agg).dropna(subset=["o"])
    out.index = out.index.tz_convert("UTC")
    records = out.to_dict("records")
    return [{"t": t, **r, "n": int(r["n"])} for t, r in zip(out.index, records, strict=True)]
