"""A stateful loopback fake of Alpaca's Trading API v2 and its ``trade_updates`` websocket.

Real alpaca-py clients run against it offline::

    with AlpacaFake() as fake:
        fake.set_price("AAPL", 190.0)
        client = TradingClient(KEY_ID, SECRET, paper=True, url_override=fake.url)
        order = client.submit_order(MarketOrderRequest(symbol="AAPL", qty=2, side="buy",
                                                       time_in_force="day"))   # filled at 190
        stream = TradingStream(KEY_ID, SECRET, url_override=fake.stream_url)

State: cash, positions and orders (with bracket legs). Market orders fill at once at the price
from :meth:`AlpacaFake.set_price` (``auto_fill``; a marketable limit/stop order fills when the
price moves through it); :meth:`AlpacaFake.fill` fills any open order by hand, partially when
``qty`` is below what remains. Every change appends a trade update (the ``data`` of a
``trade_updates`` message, e.g. ``{"event": "fill", "execution_id", "price", "qty",
"position_qty", "timestamp", "order": {...}}``) to :attr:`AlpacaFake.events` and pushes it to
every websocket that authenticated and listens to ``trade_updates``.

Faults: :meth:`AlpacaFake.fail_next` answers the next matching request(s) with a status (a 429
carries ``X-RateLimit-*`` headers), :meth:`AlpacaFake.drop_connection_next` closes the socket
without a byte; with ``after_processing=True`` the request takes effect first (an order *is*
created and the client still sees the error). ``rate_limit_per_minute`` answers 429 past that
rate. :meth:`AlpacaFake.hits` counts requests per route and :meth:`AlpacaFake.peak_rate` gives
the most requests in any 60 s window.

Malformed answers: :meth:`AlpacaFake.reshape_next` runs the next matching request(s) as usual
and answers with its body passed through a function, e.g. :func:`first_only` (one order object
where the spec has a list, as a mock serving the spec's examples does for ``GET /v2/orders``)
or :func:`set_field` (a position whose ``qty`` is not a number); :meth:`AlpacaFake.push_update`
sends any payload on ``trade_updates``.

Bodies follow the Trading API's OpenAPI schemas (numbers as strings, as Alpaca sends them), with
the field set of the responses recorded in alpaca-py's test-suite.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server as WsServer
from websockets.sync.server import ServerConnection, serve

from brokers.alpaca.sim.loopback import Reply, Request

__all__ = ["KEY_ID", "SECRET", "AlpacaFake", "FakeConfig", "FakeOrder", "first_only", "set_field"]

KEY_ID, SECRET = "PKFAKE0000000000001", "fake-secret-key-0000000000000000000000001"
OPEN = ("accepted", "pending_new", "new", "partially_filled", "held")
FINAL = ("filled", "canceled", "expired", "rejected", "replaced")
_ACCOUNT_ID = "e6fe16f3-64a4-4921-8928-cadf02f92f98"
_EPS = 1e-9
_BUYING_POWER = "buying_power regt_buying_power non_marginable_buying_power options_buying_power"
_ZERO = "initial_margin maintenance_margin last_maintenance_margin sma accrued_fees"
_FRACTIONAL = "fractional orders must be simple orders with time_in_force day"
_BRACKET = "bracket orders need take_profit.limit_price and stop_loss.stop_price"


@dataclass(frozen=True, kw_only=True)
class FakeConfig:
    """Account and behaviour of one fake; ``rate_limit_per_minute=None`` never throttles."""

    key_id: str = KEY_ID
    secret_key: str = SECRET
    cash: float = 100_000.0
    shorting_enabled: bool = True
    auto_fill: bool = True
    market_open: bool = True
    rate_limit_per_minute: int | None = None
    binary_frames: bool = True  # Alpaca's trade_updates stream sends binary frames
    account_number: str = "PA3FAKE00001"  # paper accounts start with PA; live ones do not

    def __post_init__(self) -> None:
        if self.cash < 0:
            raise ValueError(f"FakeConfig.cash must be >= 0, got {self.cash}")
        if self.rate_limit_per_minute is not None and self.rate_limit_per_minute < 1:
            raise ValueError(
                f"FakeConfig.rate_limit_per_minute must be >= 1, got {self.rate_limit_per_minute}"
            )


@dataclass
class FakeOrder:
    """One order's state (mutable, inside the fake); :meth:`to_json` is Alpaca's Order object."""

    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: float | None
    notional: float | None
    limit_price: float | None = None
    stop_price: float | None = None
    order_class: str = "simple"
    client_order_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    extended_hours: bool = False
    position_intent: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "accepted"
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    legs: list[FakeOrder] = field(default_factory=list)
    parent: FakeOrder | None = None
    created_at: str = field(default_factory=lambda: _now())
    updated_at: str = ""
    filled_at: str | None = None
    canceled_at: str | None = None
    expired_at: str | None = None

    def remaining(self, price: float) -> float:
        """Quantity left to fill (a notional order converts its dollars left at ``price``)."""
        if self.qty is not None:
            return max(self.qty - self.filled_qty, 0.0)
        spent = self.filled_qty * (self.filled_avg_price or 0.0)
        return round(max((self.notional or 0.0) - spent, 0.0) / price, 9)

    def to_json(self, nested: bool = True) -> dict[str, Any]:
        """The order as Alpaca's REST API and ``trade_updates`` stream show it."""
        legs = [leg.to_json() for leg in self.legs] if nested and self.legs else None
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at or self.created_at,
            "submitted_at": self.created_at,
            "filled_at": self.filled_at,
            "expired_at": self.expired_at,
            "canceled_at": self.canceled_at,
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": _asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": _asset_class(self.symbol),
            "notional": _num(self.notional),
            "qty": _num(self.qty),
            "filled_qty": _num(self.filled_qty),
            "filled_avg_price": _num(self.filled_avg_price),
            "order_class": self.order_class,
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": self.position_intent
            or ("buy_to_open" if self.side == "buy" else "sell_to_close"),
            "time_in_force": self.time_in_force,
            "limit_price": _num(self.limit_price),
            "stop_price": _num(self.stop_price),
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": legs,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
        }


@dataclass
class _Position:
    qty: float = 0.0
    avg: float = 0.0


@dataclass
class _Fault:
    method: str
    prefix: str
    times: int
    status: int | None
    after_processing: bool
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # answer normally, but only after this many seconds


@dataclass
class _Reshape:
    method: str
    path: str  # the exact path (no query string)
    times: int
    change: Callable[[Any], Any]


def first_only(body: Any) -> Any:
    """A list answer as its first element alone: one object where the spec has an array. An
    empty list becomes one example order, as a mock serving the spec's examples answers."""
    if not isinstance(body, list):
        raise ValueError(f"first_only needs a list answer, got {body!r:.80}")
    if body:
        return body[0]
    example = FakeOrder("AAPL", "buy", "limit", "day", 1.0, None, limit_price=90.0)
    return example.to_json()


def set_field(name: str, value: Any) -> Callable[[Any], Any]:
    """A reshape that sets ``name`` to ``value`` in the one object, or every object of a list."""

    def change(body: Any) -> Any:
        if isinstance(body, list):
            return [{**item, name: value} for item in body]
        return {**body, name: value}

    return change


class AlpacaError(Exception):
    """An error answer: HTTP status and Alpaca's ``{"code", "message"}`` body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.reply = Reply(status, {"code": code, "message": message})


Route = tuple[str, re.Pattern[str], str, Callable[..., Any]]


class AlpacaFake:
    """The fake: HTTP on ``url``, trade_updates websocket on ``stream_url`` (both 127.0.0.1)."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.auto_fill = self.config.auto_fill
        self.market_open = self.config.market_open
        self.cash = self.config.cash
        self.errors: list[BaseException] = []  # exceptions raised inside the fake's handlers
        self._lock = threading.RLock()
        self._orders: dict[str, FakeOrder] = {}
        self._positions: dict[str, _Position] = {}
        self._prices: dict[str, float] = {}
        self._events: list[dict[str, Any]] = []
        self._faults: list[_Fault] = []
        self._reshapes: list[_Reshape] = []
        self._hits: dict[str, int] = {}
        self._times: list[float] = []
        self._requests: list[Request] = []
        self._listeners: set[ServerConnection] = set()
        self._listening = threading.Condition(self._lock)
        self._routes = self._route_table()
        self._httpd = _HttpServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._ws: WsServer = serve(self._ws_session, "127.0.0.1", 0, compression=None)
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The REST base URL for ``TradingClient(url_override=...)``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def stream_url(self) -> str:
        """The websocket URL for ``TradingStream(url_override=...)``."""
        return f"ws://127.0.0.1:{self._ws.socket.getsockname()[1]}/stream"

    def start(self) -> AlpacaFake:
        """Serve HTTP and websocket in background threads (idempotent)."""
        if not self._threads:
            for name, target, kwargs in (
                ("http", self._httpd.serve_forever, {"poll_interval": 0.02}),  # fast shutdown()
                ("ws", self._ws.serve_forever, {}),
            ):
                thread = threading.Thread(
                    target=target, kwargs=kwargs, name=f"fake-{name}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return self

    def close(self) -> None:
        """Stop both servers, close every connection and join every thread the fake started."""
        if self._threads:
            self._ws.shutdown()  # closes websocket connections and joins their handler threads
            self._httpd.shutdown()
        else:
            self._ws.socket.close()  # never served: shutdown() would wait for serve_forever()
        self._httpd.server_close()  # joins request threads (they are not daemons)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> AlpacaFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- controls -------------------------------------------------------------------------------

    def set_price(self, symbol: str, price: float) -> None:
        """Set the market price; with ``auto_fill`` open orders it makes marketable fill at it."""
        if not price > 0:
            raise ValueError(f"price must be > 0, got {price}")
        with self._lock:
            self._prices[symbol] = float(price)
            if self.auto_fill:
                for order in [o for o in self._orders.values() if o.symbol == symbol]:
                    if order.status in ("new", "partially_filled") and _marketable(order, price):
                        self._execute(order, order.remaining(price), price)

    def fill(
        self, order_id: str, qty: float | None = None, price: float | None = None
    ) -> dict[str, Any]:
        """Fill an open order now (all that remains, or ``qty`` of it); returns the trade update.

        ``price`` defaults to the symbol's set price, then the order's limit and stop price.
        """
        with self._lock:
            order = self._control(order_id)
            if order.status not in OPEN or order.status == "held":
                raise ValueError(f"order {order_id} is {order.status}, it cannot fill")
            px = price or self._prices.get(order.symbol) or order.limit_price or order.stop_price
            if px is None:
                raise ValueError(f"no price for {order.symbol}: call set_price() or pass price=")
            left = order.remaining(px)
            if qty is not None and not 0 < qty <= left + _EPS:
                raise ValueError(f"fill qty {qty} outside (0, {left}] for order {order_id}")
            return self._execute(order, left if qty is None else qty, px)

    def expire(self, order_id: str) -> dict[str, Any]:
        """End an open order as Alpaca does at the end of its time in force (``expired``)."""
        with self._lock:
            return self._finish(self._control(order_id), "expired")

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        status: int,
        times: int = 1,
        after_processing: bool = False,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests whose path starts with ``path_prefix`` with ``status``."""
        fault = _Fault(
            method.upper(), path_prefix, times, status, after_processing, body, headers or {}
        )
        with self._lock:
            self._faults.append(fault)

    def drop_connection_next(
        self, method: str, path_prefix: str, times: int = 1, after_processing: bool = False
    ) -> None:
        """Close the connection of the next ``times`` matching requests without answering."""
        with self._lock:
            self._faults.append(_Fault(method.upper(), path_prefix, times, None, after_processing))

    def delay_next(self, method: str, path_prefix: str, seconds: float, times: int = 1) -> None:
        """Process the next ``times`` matching requests, then wait ``seconds`` before answering
        (a client with a shorter read timeout gives up: the order exists, the answer is lost)."""
        fault = _Fault(method.upper(), path_prefix, times, 200, True, delay=seconds)
        with self._lock:
            self._faults.append(fault)

    def reshape_next(
        self, method: str, path: str, change: Callable[[Any], Any], times: int = 1
    ) -> None:
        """Run the next ``times`` requests to exactly ``path`` as usual (they take effect), but
        answer a success with ``change(body)``: a malformed answer (:func:`first_only`,
        :func:`set_field`). A ``change`` that raises is a bug in the test: kept in ``errors``."""
        with self._lock:
            self._reshapes.append(_Reshape(method.upper(), path, times, change))

    def push_update(self, data: Any) -> None:
        """Send ``{"stream": "trade_updates", "data": data}`` to every listener, as it is (a
        malformed update, say); not recorded in :attr:`events`."""
        text = json.dumps({"stream": "trade_updates", "data": data})
        frame: str | bytes = text.encode() if self.config.binary_frames else text
        with self._lock:
            for conn in list(self._listeners):
                try:
                    conn.send(frame)
                except ConnectionClosed:
                    self._listeners.discard(conn)

    def charge_crypto_fee(self, symbol: str, qty: float) -> None:
        """Take ``qty`` of the coin as a fee, as Alpaca does on crypto buys (no trade update)."""
        with self._lock:
            pos = self._positions[symbol]
            pos.qty = round(pos.qty - qty, 9)

    def clear_faults(self) -> None:
        """Drop every fault still waiting (an outage ends)."""
        with self._lock:
            self._faults.clear()
            self._reshapes.clear()

    def close_streams(self) -> None:
        """Close every websocket from the server side (an outage; also stops a client at once)."""
        with self._lock:
            self._listeners.clear()
        for conn in list(self._ws.connections):
            conn.close()

    def wait_for_listener(self, timeout: float = 2.0) -> bool:
        """Block until a websocket listens to ``trade_updates``; False on timeout."""
        with self._listening:
            return self._listening.wait_for(lambda: bool(self._listeners), timeout)

    # -- observation ----------------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every trade update so far, oldest first (a copy)."""
        with self._lock:
            return list(self._events)

    @property
    def requests(self) -> list[Request]:
        """Every HTTP request received, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def orders(self) -> list[dict[str, Any]]:
        """Every order (legs included, flat) as Alpaca's JSON, oldest first."""
        with self._lock:
            return [o.to_json(nested=False) for o in self._orders.values()]

    def position_qty(self, symbol: str) -> float:
        """The signed position in ``symbol`` (0 when flat)."""
        with self._lock:
            return self._positions.get(symbol, _Position()).qty

    def hits(self, method: str, route: str) -> int:
        """Requests received by a route, named by its template: ``hits("GET", "/v2/orders/{id}")``."""
        with self._lock:
            return self._hits.get(f"{method.upper()} {route}", 0)

    def requests_per_minute(self) -> dict[int, int]:
        """Requests per calendar minute: ``{unix minute: count}``."""
        out: dict[int, int] = {}
        with self._lock:
            for t in self._times:
                out[int(t // 60)] = out.get(int(t // 60), 0) + 1
        return out

    def peak_rate(self, window: float = 60.0) -> int:
        """The most requests received within any ``window`` seconds."""
        with self._lock:
            times, best, lo = sorted(self._times), 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    # -- the fill engine ------------------------------------------------------------------------

    def _order(self, order_id: str) -> FakeOrder:
        if order_id not in self._orders:
            raise AlpacaError(404, 40410000, "order not found")
        return self._orders[order_id]

    def _control(self, order_id: str) -> FakeOrder:
        if order_id not in self._orders:
            raise ValueError(f"no order {order_id} in the fake")
        return self._orders[order_id]

    def _execute(self, order: FakeOrder, qty: float, price: float) -> dict[str, Any]:
        qty = round(qty, 9)
        pos = self._positions.setdefault(order.symbol, _Position())
        signed = qty if order.side == "buy" else -qty
        new = round(pos.qty + signed, 9)
        if pos.qty == 0 or (pos.qty > 0) != (new > 0):
            pos.avg = price
        elif abs(new) > abs(pos.qty):
            pos.avg = (abs(pos.qty) * pos.avg + qty * price) / abs(new)
        pos.qty = new
        if new == 0:
            del self._positions[order.symbol]
        self.cash = round(self.cash - signed * price, 9)
        total = order.filled_qty + qty
        order.filled_avg_price = (
            (order.filled_avg_price or 0.0) * order.filled_qty + qty * price
        ) / total
        order.filled_qty = round(total, 9)
        done = order.remaining(price) <= _EPS
        order.status = "filled" if done else "partially_filled"
        order.updated_at = _now()
        if done:
            order.filled_at = order.updated_at
        extra = {
            "execution_id": str(uuid.uuid4()),
            "price": _num(price),
            "qty": _num(qty),
            "position_qty": _num(new),
        }
        event = self._emit("fill" if done else "partial_fill", order, **extra)
        if done and order.legs:  # a bracket's entry filled: its exits go live
            for leg in order.legs:
                leg.status = "new"
                self._emit("new", leg)
        if done and order.parent is not None:  # one exit filled: the other is canceled
            for sibling in order.parent.legs:
                if sibling is not order and sibling.status in OPEN:
                    self._finish(sibling, "canceled")
        return event

    def _finish(self, order: FakeOrder, status: str) -> dict[str, Any]:
        if order.status not in OPEN:
            raise AlpacaError(422, 42210000, "order is not cancelable")
        order.status, order.updated_at = status, _now()
        setattr(order, f"{status}_at", order.updated_at)
        event = self._emit(status, order)
        for leg in order.legs:
            if leg.status in OPEN:
                self._finish(leg, status)
        return event

    def _emit(self, name: str, order: FakeOrder, **extra: Any) -> dict[str, Any]:
        event = {
            "event": name,
            "timestamp": order.updated_at or _now(),
            "order": order.to_json(),
            **extra,
        }
        self._events.append(event)
        text = json.dumps({"stream": "trade_updates", "data": event})
        frame: str | bytes = text.encode() if self.config.binary_frames else text
        for conn in list(self._listeners):
            try:
                conn.send(frame)
            except ConnectionClosed:
                self._listeners.discard(conn)
        return event

    # -- REST -----------------------------------------------------------------------------------

    def _route_table(self) -> list[Route]:
        table: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "/v2/account", self._get_account),
            ("GET", "/v2/clock", self._get_clock),
            ("GET", "/v2/positions", self._get_positions),
            ("GET", "/v2/positions/{symbol}", self._get_position),
            ("DELETE", "/v2/positions", self._close_all_positions),
            ("DELETE", "/v2/positions/{symbol}", self._close_position),
            ("POST", "/v2/orders", self._post_order),
            ("GET", "/v2/orders", self._get_orders),
            ("GET", "/v2/orders:by_client_order_id", self._get_by_client_id),
            ("GET", "/v2/orders/{id}", self._get_order),
            ("DELETE", "/v2/orders", self._cancel_all),
            ("DELETE", "/v2/orders/{id}", self._cancel_order),
        ]
        compiled: list[Route] = []
        for method, template, handler in table:
            pattern = (
                re.escape(template)
                .replace(r"\{symbol\}", "(?P<symbol>.+)")
                .replace(r"\{id\}", "(?P<id>[^/]+)")
            )
            compiled.append((method, re.compile(pattern + "$"), template, handler))
        return compiled

    def _dispatch(self, request: Request) -> Reply | None:
        """The reply to one request, or ``None`` to drop the connection."""
        now = time.time()
        with self._lock:
            limit, over = self._rate_headers(now), self._over_limit(now)
            self._times.append(now)
            self._requests.append(request)
            route = next(
                (
                    (r, m)
                    for r in self._routes
                    if r[0] == request.method and (m := r[1].match(request.path))
                ),
                None,
            )
            key = f"{request.method} {route[0][2] if route else request.path}"
            self._hits[key] = self._hits.get(key, 0) + 1
            fault = self._take_fault(request)
            reshape = self._take_reshape(request)
        if (request.headers.get("APCA-API-KEY-ID"), request.headers.get("APCA-API-SECRET-KEY")) != (
            self.config.key_id,
            self.config.secret_key,
        ):
            return Reply(401, {"code": 40110000, "message": "request is not authorized"})
        if over:
            return Reply(
                429,
                {"code": 42910000, "message": "rate limit exceeded"},
                self._rate_headers(now, exceeded=True),
            )
        if fault is not None and not fault.after_processing:
            return self._fault_reply(fault, now)
        if route is None:
            return Reply(
                404, {"code": 40410000, "message": f"no route {request.method} {request.path}"}
            )
        reply = self._run(route[0][3], request, route[1].groupdict())
        if reshape is not None and 200 <= reply.status < 300:
            reply = self._reshaped(reshape, reply)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
            fault = None
        return (
            self._fault_reply(fault, now)
            if fault is not None
            else Reply(reply.status, reply.body, {**limit, **reply.headers})
        )

    def _run(self, handler: Callable[..., Any], request: Request, args: dict[str, str]) -> Reply:
        try:
            with self._lock:
                result = handler(request, **args)
        except AlpacaError as err:
            return err.reply
        except Exception as err:  # a bug in the fake: say so, and keep it for the test to assert
            self.errors.append(err)
            return Reply(500, {"code": 50010000, "message": f"fake raised {err!r}"})
        return result if isinstance(result, Reply) else Reply(200, result)

    def _take_fault(self, request: Request) -> _Fault | None:
        for fault in self._faults:
            if fault.method == request.method and request.path.startswith(fault.prefix):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _take_reshape(self, request: Request) -> _Reshape | None:
        for reshape in self._reshapes:
            if (reshape.method, reshape.path) == (request.method, request.path):
                reshape.times -= 1
                if reshape.times <= 0:
                    self._reshapes.remove(reshape)
                return reshape
        return None

    def _reshaped(self, reshape: _Reshape, reply: Reply) -> Reply:
        try:
            return Reply(reply.status, reshape.change(reply.body), reply.headers)
        except Exception as err:  # a bug in the test's reshape: say so, keep it for teardown
            self.errors.append(err)
            return Reply(500, {"code": 50010000, "message": f"reshape raised {err!r}"})

    def _fault_reply(self, fault: _Fault, now: float) -> Reply | None:
        if fault.status is None:
            return None
        headers = self._rate_headers(now, exceeded=True) if fault.status == 429 else {}
        body = (
            fault.body
            if fault.body is not None
            else {"code": fault.status * 100000, "message": f"injected {fault.status}"}
        )
        return Reply(fault.status, body, {**headers, **fault.headers})

    def _rate_headers(self, now: float, exceeded: bool = False) -> dict[str, str]:
        """Alpaca's rate-limit headers for a request at ``now``."""
        limit = self.config.rate_limit_per_minute or 200
        recent = [t for t in self._times if now - t < 60.0]
        reset = int((recent[0] if recent else now) + 60.0) + 1
        left = 0 if exceeded else max(limit - len(recent) - 1, 0)
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(left),
            "X-RateLimit-Reset": str(reset),
        }

    def _over_limit(self, now: float) -> bool:
        limit = self.config.rate_limit_per_minute
        return limit is not None and sum(1 for t in self._times if now - t < 60.0) >= limit

    # -- routes ---------------------------------------------------------------------------------

    def _get_account(self, request: Request) -> dict[str, Any]:
        long_mv = sum(p.qty * self._mark(s, p) for s, p in self._positions.items() if p.qty > 0)
        short_mv = sum(p.qty * self._mark(s, p) for s, p in self._positions.items() if p.qty < 0)
        equity = self.cash + long_mv + short_mv
        money = {
            "cash": self.cash,
            "equity": equity,
            "portfolio_value": equity,
            "last_equity": self.config.cash,
        }
        money |= {"long_market_value": long_mv, "short_market_value": short_mv}
        money |= dict.fromkeys(_BUYING_POWER.split(), max(self.cash, 0.0))
        money |= dict.fromkeys(_ZERO.split(), 0.0)
        return {
            "id": _ACCOUNT_ID,
            "account_number": self.config.account_number,
            "status": "ACTIVE",
            "currency": "USD",
            **{k: _num(v) for k, v in money.items()},
            "multiplier": "1",
            "shorting_enabled": self.config.shorting_enabled,
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "trade_suspended_by_user": False,
            "created_at": "2024-01-02T14:30:00Z",
            "options_approved_level": 0,
            "options_trading_level": 0,
        }

    def _get_clock(self, request: Request) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "timestamp": _iso(now),
            "is_open": self.market_open,
            "next_open": _iso(now + timedelta(hours=1 if not self.market_open else 18)),
            "next_close": _iso(now + timedelta(hours=6 if self.market_open else 8)),
        }

    def _get_positions(self, request: Request) -> list[dict[str, Any]]:
        return [self._position_json(s) for s in sorted(self._positions)]

    def _get_position(self, request: Request, symbol: str) -> dict[str, Any]:
        return self._position_json(self._held(symbol))

    def _close_position(self, request: Request, symbol: str) -> dict[str, Any]:
        symbol = self._held(symbol)
        held = self._positions[symbol].qty
        qty, pct = request.param("qty"), request.param("percentage")
        return self._flatten(symbol, float(qty) if qty else abs(held) * float(pct or 100) / 100)

    def _close_all_positions(self, request: Request) -> Reply:
        if request.param("cancel_orders") == "true":
            self._cancel_all(request)
        out = [
            {"symbol": s, "status": 200, "body": self._flatten(s)} for s in list(self._positions)
        ]
        return Reply(207, out)

    def _flatten(self, symbol: str, qty: float | None = None) -> dict[str, Any]:
        held = self._positions[symbol].qty
        side = "sell" if held > 0 else "buy"
        size = round(abs(held) if qty is None else qty, 9)
        return self._submit(
            {"symbol": symbol, "side": side, "type": "market", "time_in_force": "day", "qty": size}
        )

    def _post_order(self, request: Request) -> dict[str, Any]:
        try:
            body = request.json()
        except ValueError:
            raise AlpacaError(400, 40010000, "request body format is invalid") from None
        return self._submit(body)

    def _get_orders(self, request: Request) -> list[dict[str, Any]]:
        status = request.param("status", "open")
        if status not in ("open", "closed", "all"):
            raise AlpacaError(422, 40010001, f"invalid status {status}")
        nested = request.param("nested") == "true"
        symbols = set(filter(None, (request.param("symbols") or "").split(",")))
        rows = [o for o in self._orders.values() if not (nested and o.parent is not None)]
        rows = [o for o in rows if status == "all" or (o.status in FINAL) == (status == "closed")]
        rows = [o for o in rows if not symbols or o.symbol in symbols]
        rows = rows[::-1] if request.param("direction", "desc") == "desc" else rows  # by creation
        limit = min(int(request.param("limit") or 50), 500)
        return [o.to_json(nested=nested) for o in rows[:limit]]

    def _get_order(self, request: Request, id: str) -> dict[str, Any]:
        return self._order(id).to_json(nested=request.param("nested") == "true")

    def _get_by_client_id(self, request: Request) -> dict[str, Any]:
        wanted = request.param("client_order_id")
        for order in self._orders.values():
            if order.client_order_id == wanted:
                return order.to_json()
        raise AlpacaError(404, 40410000, "order not found")

    def _cancel_order(self, request: Request, id: str) -> Reply:
        self._finish(self._order(id), "canceled")
        return Reply(204, b"")

    def _cancel_all(self, request: Request) -> Reply:
        done = []
        for order in list(self._orders.values()):
            if order.status in OPEN:  # an entry's cancel takes its held exits with it
                self._finish(order, "canceled")
                done.append({"id": order.id, "status": 200})
        return Reply(207, done)

    # -- orders and positions -------------------------------------------------------------------

    def _submit(self, body: dict[str, Any]) -> dict[str, Any]:
        order = self._new_order(body)
        if order.side == "buy":
            price = order.limit_price or self._prices.get(order.symbol) or 0.0
            cost = order.notional or (order.qty or 0.0) * price
            if cost > self.cash + _EPS:
                raise AlpacaError(403, 40310000, "insufficient buying power")
        held = self._positions.get(order.symbol, _Position()).qty
        if (
            order.side == "sell"
            and not self.config.shorting_enabled
            and (order.qty or 0.0) > held + _EPS
        ):
            raise AlpacaError(
                403,
                40310000,
                f"insufficient qty available for order (requested: {_num(order.qty)}, available: {_num(held)})",
            )
        order.position_intent = (
            ("buy_to_close" if held < 0 else "buy_to_open")
            if order.side == "buy"
            else ("sell_to_close" if held > 0 else "sell_to_open")
        )
        if order.order_class == "bracket":
            take, stop = body.get("take_profit") or {}, body.get("stop_loss") or {}
            stop_limit = _float(stop.get("limit_price"))
            order.legs = [
                _exit_leg(order, "limit", _float(take.get("limit_price")), None),
                _exit_leg(
                    order,
                    "stop_limit" if stop_limit else "stop",
                    stop_limit,
                    _float(stop.get("stop_price")),
                ),
            ]
        for o in (order, *order.legs):
            self._orders[o.id] = o
        reply = order.to_json()  # what Alpaca answers: the order as accepted
        order.status = "new"
        self._emit("new", order)
        market = self._prices.get(order.symbol)
        if self.auto_fill and market is not None and _marketable(order, market):
            self._execute(order, order.remaining(market), market)
        return reply

    def _new_order(self, body: dict[str, Any]) -> FakeOrder:
        """A new order from a create-order body, or the 422 Alpaca answers to a bad one."""
        try:
            problem = _order_problem(body)
        except (TypeError, ValueError) as err:
            problem = f"invalid order: {err}"
        coid = str(body.get("client_order_id") or uuid.uuid4())
        if problem is None and len(coid) > 128:
            problem = "client_order_id must be no more than 128 characters"
        if problem is None and any(o.client_order_id == coid for o in self._orders.values()):
            problem = "client_order_id must be unique"
        if problem is not None:
            raise AlpacaError(422, 40010001, problem)
        kind, tif = str(body["type"]), str(body["time_in_force"])
        order = FakeOrder(body["symbol"], body["side"], kind, tif, None, None, client_order_id=coid)
        order.qty, order.notional = _float(body.get("qty")), _float(body.get("notional"))
        order.limit_price, order.stop_price = (
            _float(body.get("limit_price")),
            _float(body.get("stop_price")),
        )
        order.order_class = body.get("order_class") or "simple"
        order.extended_hours = bool(body.get("extended_hours"))
        return order

    def _held(self, symbol: str) -> str:
        for name in (symbol, symbol.replace("/", "")):
            for held in self._positions:
                if held == name or held.replace("/", "") == name:
                    return held
        raise AlpacaError(404, 40410000, "position does not exist")

    def _mark(self, symbol: str, pos: _Position) -> float:
        return self._prices.get(symbol, pos.avg)

    def _position_json(self, symbol: str) -> dict[str, Any]:
        pos = self._positions[symbol]
        price = self._mark(symbol, pos)
        value, basis = pos.qty * price, pos.qty * pos.avg
        pl = value - basis
        plpc = pl / abs(basis) if basis else 0.0
        money = {
            "avg_entry_price": pos.avg,
            "market_value": value,
            "cost_basis": basis,
            "unrealized_pl": pl,
            "unrealized_plpc": plpc,
        }
        money |= {
            "unrealized_intraday_pl": pl,
            "unrealized_intraday_plpc": plpc,
            "current_price": price,
            "lastday_price": pos.avg,
            "change_today": price / pos.avg - 1.0,
        }
        crypto = _asset_class(symbol) == "crypto"
        return {
            "asset_id": _asset_id(symbol),
            "symbol": symbol.replace("/", "") if crypto else symbol,
            "exchange": "CRYPTO" if crypto else "NASDAQ",
            "asset_class": _asset_class(symbol),
            "asset_marginable": not crypto,
            "qty": _num(pos.qty),
            "qty_available": _num(pos.qty),
            "side": "long" if pos.qty > 0 else "short",
            **{k: _num(v) for k, v in money.items()},
        }

    # -- websocket ------------------------------------------------------------------------------

    def _ws_session(self, conn: ServerConnection) -> None:
        """Alpaca's trade_updates protocol: authenticate, then listen; pushes come from _emit."""
        try:
            auth = json.loads(conn.recv(timeout=5))
            data = auth.get("data") or {}
            ok = auth.get("action") in ("authenticate", "auth") and (
                data.get("key_id"),
                data.get("secret_key"),
            ) == (self.config.key_id, self.config.secret_key)
            reply = {"action": "authenticate", "status": "authorized" if ok else "unauthorized"}
            if not ok:
                reply["message"] = "access key verification failed"
            self._send(conn, {"stream": "authorization", "data": reply})
            if not ok:
                return
            for raw in conn:
                message = json.loads(raw)
                if message.get("action") != "listen":
                    continue
                streams = [
                    s
                    for s in (message.get("data") or {}).get("streams", [])
                    if s == "trade_updates"
                ]
                with self._listening:
                    self._send(conn, {"stream": "listening", "data": {"streams": streams}})
                    if streams:
                        self._listeners.add(conn)
                        self._listening.notify_all()
                    else:
                        self._listeners.discard(conn)
        except (ConnectionClosed, TimeoutError):
            pass
        except Exception as err:  # a bug in the fake or a malformed client message
            self.errors.append(err)
        finally:
            with self._lock:
                self._listeners.discard(conn)

    def _send(self, conn: ServerConnection, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        conn.send(text.encode() if self.config.binary_frames else text)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins request threads: nothing leaks past close()
    block_on_close = True
    fake: AlpacaFake


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=dict(self.headers.items()),
            body=self.rfile.read(length) if length else b"",
            received_at=time.monotonic(),
        )
        reply = cast(_HttpServer, self.server).fake._dispatch(request)
        if reply is None:
            self.close_connection = True  # not a byte: the client sees the connection drop
            return
        payload = (
            b"" if reply.status == 204 or reply.body == b"" else json.dumps(reply.body).encode()
        )
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# -- values ---------------------------------------------------------------------------------------


def _order_problem(body: dict[str, Any]) -> str | None:
    """The first of Alpaca's create-order rules that ``body`` breaks, or ``None``."""
    get = body.get
    qty, notional = _float(get("qty")), _float(get("notional"))
    kind, tif, order_class = get("type"), get("time_in_force"), get("order_class") or "simple"
    size = qty if qty is not None else notional
    fractional = notional is not None or (qty is not None and qty != int(qty))
    equity = _asset_class(str(get("symbol") or "")) == "us_equity"
    bracket_ok = (get("take_profit") or {}).get("limit_price") and (get("stop_loss") or {}).get(
        "stop_price"
    )
    rules = [
        (not get("symbol"), "symbol is required"),
        (get("side") not in ("buy", "sell"), f"invalid side: {get('side')}"),
        (kind not in ("market", "limit", "stop", "stop_limit"), f"invalid order type: {kind}"),
        (tif not in ("day", "gtc", "opg", "cls", "ioc", "fok"), f"invalid time_in_force: {tif}"),
        ((qty is None) == (notional is None), "qty or notional is required, not both"),
        (size is not None and size <= 0, "qty and notional must be > 0"),
        (kind in ("limit", "stop_limit") and get("limit_price") is None, "limit_price is required"),
        (kind in ("stop", "stop_limit") and get("stop_price") is None, "stop_price is required"),
        (order_class not in ("simple", "bracket"), f"order_class {order_class} is not supported"),
        (fractional and equity and (order_class, tif) != ("simple", "day"), _FRACTIONAL),
        (notional is not None and kind != "market", "notional orders must be market orders"),
        (order_class == "bracket" and not bracket_ok, _BRACKET),
    ]
    return next((message for broken, message in rules if broken), None)


def _exit_leg(parent: FakeOrder, kind: str, limit: float | None, stop: float | None) -> FakeOrder:
    """A bracket's take-profit or stop-loss leg: held until the entry fills."""
    side, intent = ("sell", "sell_to_close") if parent.side == "buy" else ("buy", "buy_to_close")
    leg = FakeOrder(parent.symbol, side, kind, parent.time_in_force, parent.qty, None)
    leg.limit_price, leg.stop_price, leg.position_intent = limit, stop, intent
    leg.order_class, leg.status, leg.parent = "bracket", "held", parent
    return leg


def _marketable(order: FakeOrder, price: float) -> bool:
    buy = order.side == "buy"
    stop_ok = order.stop_price is None or (
        price >= order.stop_price if buy else price <= order.stop_price
    )
    limit_ok = order.limit_price is None or (
        price <= order.limit_price if buy else price >= order.limit_price
    )
    return stop_ok and limit_ok


def _num(value: float | None) -> str | None:
    """A number as Alpaca writes it: a decimal string without exponent or trailing zeros."""
    if value is None:
        return None
    text = format(Decimal(repr(round(float(value), 9))).normalize(), "f")
    return "0" if text in ("-0", "") else text


def _float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _asset_class(symbol: str) -> str:
    return "crypto" if "/" in symbol else "us_equity"


def _asset_id(symbol: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-fake/{symbol}"))


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _now() -> str:
    return _iso(datetime.now(UTC))
