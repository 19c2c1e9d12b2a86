"""The stateful Alpaca fake, driven by the real alpaca-py ``TradingClient`` and ``TradingStream``.

alpaca-py's REST client retries 429 and 504 answers itself (3 times, 3 s apart, not settable
through ``TradingClient``); tests that meet those statuses set its ``_retry``/``_retry_wait``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderStatus, QueryOrderStatus
from alpaca.trading.models import Order, TradeUpdate
from alpaca.trading.requests import (
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream
from websockets.sync.client import connect

from brokers.alpaca.sim.trading import KEY_ID, SECRET, AlpacaFake, FakeConfig

pytestmark = pytest.mark.timeout(10)

# alpaca-py's methods return ``Model | RawData`` unions; the tests use the models (raw_data=False).
Client = Any
SHIPPED = Path(__file__).parent / "fixtures" / "alpaca"
SHARED = Path(__file__).resolve().parents[2] / "shared"  # CI has it at ../shared


def _reference(name: str, shared: Path) -> Path:
    """A reference file from tests/fixtures/alpaca when the project ships it, else ../shared."""
    return SHIPPED / name if (SHIPPED / name).is_file() else shared / name


SPEC = _reference("trading-api.json", SHARED / "specs" / "alpaca")
RECORDED = {
    name: _reference(
        f"trading__trading_client__test_{name}_routes.json", SHARED / "fixtures" / "alpaca"
    )
    for name in ("order", "account", "position")
}


@pytest.fixture
def fake() -> Iterator[AlpacaFake]:
    before = set(threading.enumerate())
    with AlpacaFake() as server:
        yield server
        assert not server.errors, server.errors
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


def _client(fake: AlpacaFake, *, retries: int = 0) -> Client:
    client = TradingClient(KEY_ID, SECRET, paper=True, url_override=fake.url)
    client._retry, client._retry_wait = retries, 0  # alpaca-py: 3 retries, 3 s apart, on 429/504
    return client


@pytest.fixture
def client(fake: AlpacaFake) -> Client:
    return _client(fake)


def _market(
    symbol: str = "AAPL", qty: float = 3, side: str = "buy", **kw: Any
) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force="day", **kw)


def _status(exc: pytest.ExceptionInfo[APIError]) -> int | None:
    return exc.value.status_code


# -- account, positions, clock -----------------------------------------------------------------


def test_account_clock_and_positions_start_empty(client: Client) -> None:
    account = client.get_account()
    assert (account.cash, account.equity, account.buying_power) == ("100000", "100000", "100000")
    assert account.status == "ACTIVE"
    assert client.get_clock().is_open is True
    assert client.get_all_positions() == []
    with pytest.raises(APIError) as err:
        client.get_open_position("AAPL")
    assert _status(err) == 404 and err.value.message == "position does not exist"


def test_market_order_fills_at_the_set_price_and_moves_cash_and_position(
    fake: AlpacaFake, client: Client
) -> None:
    fake.set_price("AAPL", 190.25)
    sent = client.submit_order(_market(qty=3, client_order_id="ml-AAPL-1"))
    assert sent.status == OrderStatus.ACCEPTED and sent.client_order_id == "ml-AAPL-1"

    order = client.get_order_by_id(sent.id)
    assert order.status == OrderStatus.FILLED
    assert (order.filled_qty, order.filled_avg_price) == ("3", "190.25")
    position = client.get_open_position("AAPL")
    assert (position.qty, position.avg_entry_price, position.side) == ("3", "190.25", "long")
    fake.set_price("AAPL", 200.0)
    position = client.get_all_positions()[0]
    assert (position.market_value, position.unrealized_pl) == ("600", "29.25")
    account = client.get_account()
    assert account.cash == "99429.25" and account.equity == "100029.25"

    new, fill = fake.events
    assert (new["event"], fill["event"]) == ("new", "fill")
    assert (fill["qty"], fill["price"], fill["position_qty"]) == ("3", "190.25", "3")
    assert TradeUpdate(**fill).order.status == OrderStatus.FILLED  # alpaca-py's model parses it


def test_limit_order_partial_fill_then_cancel(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("MSFT", 55.0)
    sent = client.submit_order(
        LimitOrderRequest(symbol="MSFT", qty=10, side="buy", time_in_force="gtc", limit_price=50)
    )
    assert client.get_order_by_id(sent.id).status == OrderStatus.NEW  # not marketable at 55
    open_ids = [o.id for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))]
    assert open_ids == [sent.id]

    event = fake.fill(str(sent.id), qty=4, price=49.5)
    assert event["event"] == "partial_fill" and event["order"]["status"] == "partially_filled"
    assert client.get_order_by_id(sent.id).filled_qty == "4"

    client.cancel_order_by_id(sent.id)
    order = client.get_order_by_id(sent.id)
    assert (order.status, order.filled_qty) == (OrderStatus.CANCELED, "4")
    assert order.canceled_at is not None
    assert [e["event"] for e in fake.events] == ["new", "partial_fill", "canceled"]
    assert client.get_open_position("MSFT").qty == "4"
    with pytest.raises(APIError) as err:
        client.cancel_order_by_id(sent.id)
    assert _status(err) == 422
    with pytest.raises(ValueError, match="canceled"):
        fake.fill(str(sent.id))


def test_resting_orders_fill_when_the_price_moves_through_them(
    fake: AlpacaFake, client: Client
) -> None:
    fake.set_price("AAPL", 100.0)
    limit = client.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=2, side="buy", time_in_force="day", limit_price=95)
    )
    stop = client.submit_order(
        StopOrderRequest(symbol="AAPL", qty=1, side="sell", time_in_force="day", stop_price=90)
    )
    fake.set_price("AAPL", 94.0)
    assert client.get_order_by_id(limit.id).filled_avg_price == "94"
    assert client.get_order_by_id(stop.id).status == OrderStatus.NEW
    fake.set_price("AAPL", 89.0)
    assert client.get_order_by_id(stop.id).status == OrderStatus.FILLED
    assert fake.position_qty("AAPL") == 1


def test_auto_fill_off_leaves_market_orders_open_until_filled_by_hand(
    fake: AlpacaFake, client: Client
) -> None:
    fake.auto_fill = False
    fake.set_price("AAPL", 10.0)
    sent = client.submit_order(_market(qty=5))
    assert client.get_order_by_id(sent.id).status == OrderStatus.NEW
    fake.fill(str(sent.id), qty=2)
    fake.fill(str(sent.id), price=11.0)
    order = client.get_order_by_id(sent.id)
    assert (order.status, order.filled_qty, order.filled_avg_price) == ("filled", "5", "10.6")


def test_fractional_and_notional_orders(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("AAPL", 200.0)
    notional = client.submit_order(
        MarketOrderRequest(symbol="AAPL", notional=500, side="buy", time_in_force="day")
    )
    order = client.get_order_by_id(notional.id)
    assert (order.notional, order.qty, order.filled_qty) == ("500", None, "2.5")
    client.submit_order(_market(qty=0.25))
    assert client.get_open_position("AAPL").qty == "2.75"
    with pytest.raises(APIError) as err:
        client.submit_order(
            MarketOrderRequest(symbol="AAPL", qty=0.5, side="buy", time_in_force="gtc")
        )
    assert _status(err) == 422 and "fractional" in err.value.message


def test_get_by_client_order_id(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("AAPL", 10.0)
    sent = client.submit_order(_market(client_order_id="strategy-AAPL-20240102T153000Z-entry"))
    found = client.get_order_by_client_id("strategy-AAPL-20240102T153000Z-entry")
    assert found.id == sent.id and found.status == OrderStatus.FILLED
    with pytest.raises(APIError) as err:
        client.get_order_by_client_id("never-sent")
    assert _status(err) == 404 and err.value.code == 40410000


def test_duplicate_client_order_id_is_refused_with_422(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("AAPL", 10.0)
    client.submit_order(_market(client_order_id="dup-1"))
    with pytest.raises(APIError) as err:
        client.submit_order(_market(qty=7, client_order_id="dup-1"))
    assert _status(err) == 422 and err.value.message == "client_order_id must be unique"
    assert len(fake.orders()) == 1 and fake.position_qty("AAPL") == 3


def test_bad_orders_are_refused_like_alpaca(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("AAPL", 100.0)
    with pytest.raises(APIError) as err:
        client.submit_order(_market(qty=2000))
    assert _status(err) == 403 and err.value.message == "insufficient buying power"
    with pytest.raises(APIError) as err:
        client.submit_order(_market(client_order_id="x" * 129))
    assert _status(err) == 422
    assert fake.orders() == []


def test_bracket_order_exits_go_live_after_the_entry_and_cancel_each_other(
    fake: AlpacaFake, client: Client
) -> None:
    fake.set_price("AAPL", 100.0)
    sent = client.submit_order(
        _market(
            qty=2,
            order_class=OrderClass.BRACKET,
            take_profit=TakeProfitRequest(limit_price=110),
            stop_loss=StopLossRequest(stop_price=95),
        )
    )
    assert sent.order_class == OrderClass.BRACKET and sent.legs is not None
    assert [leg.status for leg in sent.legs] == [OrderStatus.HELD, OrderStatus.HELD]
    assert client.get_order_by_id(sent.id).status == OrderStatus.FILLED
    fake.set_price("AAPL", 111.0)
    take_profit, stop_loss = (client.get_order_by_id(leg.id) for leg in sent.legs)
    assert (take_profit.status, take_profit.filled_avg_price) == (OrderStatus.FILLED, "111")
    assert stop_loss.status == OrderStatus.CANCELED
    assert fake.position_qty("AAPL") == 0 and client.get_all_positions() == []


def test_orders_query_by_status_limit_and_direction(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("AAPL", 100.0)
    filled = [client.submit_order(_market(qty=1)).id for _ in range(3)]
    resting = client.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side="buy", time_in_force="day", limit_price=50)
    ).id

    def ids(**kw: Any) -> list[Any]:
        return [o.id for o in client.get_orders(GetOrdersRequest(**kw))]

    assert ids() == [resting]  # the default is status=open
    assert ids(status=QueryOrderStatus.CLOSED) == filled[::-1]  # newest first
    assert ids(status=QueryOrderStatus.ALL, limit=2) == [resting, filled[2]]
    assert ids(status=QueryOrderStatus.ALL, direction="asc", limit=1) == [filled[0]]
    assert fake.hits("GET", "/v2/orders") == 4


def test_cancel_all_and_close_all_positions(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("AAPL", 100.0)
    fake.set_price("MSFT", 50.0)
    client.submit_order(_market("AAPL", qty=2))
    client.submit_order(_market("MSFT", qty=4, side="sell"))  # a short
    resting = client.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side="buy", time_in_force="day", limit_price=1)
    )
    canceled = client.cancel_orders()
    assert [(c.id, c.status) for c in canceled] == [(resting.id, 200)]
    closed = client.close_all_positions(cancel_orders=True)
    assert sorted(c.symbol for c in closed) == ["AAPL", "MSFT"]
    assert {c.status for c in closed} == {200}
    assert isinstance(closed[0].body, Order)
    assert client.get_all_positions() == []
    assert client.get_account().cash == "100000"


# -- faults ------------------------------------------------------------------------------------


def test_504_after_processing_leaves_exactly_one_order(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("AAPL", 10.0)
    fake.fail_next("POST", "/v2/orders", 504, after_processing=True)
    with pytest.raises(APIError) as err:
        client.submit_order(_market(client_order_id="timeout-1"))
    assert _status(err) == 504
    assert len(fake.orders()) == 1
    assert client.get_order_by_client_id("timeout-1").status == OrderStatus.FILLED


def test_sdk_retry_of_a_504_meets_the_duplicate_guard(fake: AlpacaFake) -> None:
    """alpaca-py resends the POST itself; the same client_order_id turns the resend into a 422."""
    client = _client(fake, retries=3)
    fake.set_price("AAPL", 10.0)
    fake.fail_next("POST", "/v2/orders", 504, after_processing=True)
    with pytest.raises(APIError) as err:
        client.submit_order(_market(client_order_id="timeout-2"))
    assert _status(err) == 422 and err.value.message == "client_order_id must be unique"
    assert fake.hits("POST", "/v2/orders") == 2 and len(fake.orders()) == 1


def test_sdk_retry_of_a_504_without_client_order_id_trades_twice(fake: AlpacaFake) -> None:
    """Why every order needs a client_order_id: without one the SDK's resend is a second order."""
    client = _client(fake, retries=3)
    fake.set_price("AAPL", 10.0)
    fake.fail_next("POST", "/v2/orders", 504, after_processing=True)
    client.submit_order(_market(qty=1))
    assert len(fake.orders()) == 2 and fake.position_qty("AAPL") == 2


def test_429_carries_the_rate_limit_reset_header(fake: AlpacaFake, client: Client) -> None:
    fake.fail_next("GET", "/v2/account", 429)
    with pytest.raises(APIError) as err:
        client.get_account()
    assert _status(err) == 429
    headers = err.value.response.headers
    assert (
        int(headers["X-RateLimit-Reset"]) > time.time() and headers["X-RateLimit-Remaining"] == "0"
    )
    fake.fail_next("GET", "/v2/account", 429, times=2)
    assert _client(fake, retries=3).get_account().status == "ACTIVE"  # the SDK retried past it
    assert fake.hits("GET", "/v2/account") == 4


def test_rate_limit_per_minute_and_the_request_record() -> None:
    with AlpacaFake(FakeConfig(rate_limit_per_minute=5)) as fake:
        client = _client(fake)
        for _ in range(5):
            client.get_clock()
        with pytest.raises(APIError) as err:
            client.get_clock()
        assert _status(err) == 429
        assert fake.peak_rate() == 6 and sum(fake.requests_per_minute().values()) == 6
        assert fake.hits("GET", "/v2/clock") == 6


def test_dropped_connections_before_and_after_processing(fake: AlpacaFake, client: Client) -> None:
    fake.set_price("AAPL", 10.0)
    fake.drop_connection_next("GET", "/v2/account")
    with pytest.raises(requests.ConnectionError):
        client.get_account()
    fake.drop_connection_next("POST", "/v2/orders", after_processing=True)
    with pytest.raises(requests.ConnectionError):
        client.submit_order(_market(client_order_id="dropped-1"))
    assert client.get_order_by_client_id("dropped-1").status == OrderStatus.FILLED
    assert client.get_account().status == "ACTIVE"


def test_wrong_keys_get_401(fake: AlpacaFake) -> None:
    client = TradingClient(KEY_ID, "wrong-secret", paper=True, url_override=fake.url)
    with pytest.raises(APIError) as err:
        client.get_account()
    assert _status(err) == 401


# -- trade_updates websocket -------------------------------------------------------------------


@contextmanager
def _stream(fake: AlpacaFake, handler: Callable[[Any], Any]) -> Iterator[TradingStream]:
    stream = TradingStream(KEY_ID, SECRET, paper=True, url_override=fake.stream_url)
    stream.subscribe_trade_updates(handler)
    thread = threading.Thread(target=stream.run, name="trading-stream", daemon=True)
    thread.start()
    try:
        assert fake.wait_for_listener(3.0), "TradingStream never listened to trade_updates"
        yield stream
    finally:
        stream.stop()  # then close from the server side: the SDK's recv() otherwise waits 5 s
        fake.close_streams()
        thread.join(5)
        assert not thread.is_alive()


def _wait(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_trading_stream_receives_every_trade_update(fake: AlpacaFake, client: Client) -> None:
    got: list[TradeUpdate] = []

    async def on_update(update: TradeUpdate) -> None:
        got.append(update)

    fake.set_price("AAPL", 10.0)
    with _stream(fake, on_update):
        sent = client.submit_order(_market(qty=2, client_order_id="streamed-1"))
        _wait(lambda: len(got) == 2)
    assert [u.event for u in got] == ["new", "fill"]
    assert got[1].order.id == sent.id and got[1].qty == 2 and got[1].price == 10.0
    assert str(got[1].execution_id) == fake.events[1]["execution_id"]


def test_stream_protocol_auth_listen_and_binary_frames(fake: AlpacaFake) -> None:
    with connect(fake.stream_url, open_timeout=2) as ws:
        ws.send(
            json.dumps({"action": "authenticate", "data": {"key_id": KEY_ID, "secret_key": "x"}})
        )
        frame = ws.recv(timeout=2)
        assert isinstance(frame, bytes)
        assert json.loads(frame)["data"]["status"] == "unauthorized"
    with connect(fake.stream_url, open_timeout=2) as ws:
        auth = {"action": "authenticate", "data": {"key_id": KEY_ID, "secret_key": SECRET}}
        ws.send(json.dumps(auth))
        assert json.loads(ws.recv(timeout=2)) == {
            "stream": "authorization",
            "data": {"action": "authenticate", "status": "authorized"},
        }
        ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        assert json.loads(ws.recv(timeout=2))["data"] == {"streams": ["trade_updates"]}
        fake.set_price("AAPL", 5.0)
        _client(fake).submit_order(_market(qty=1))
        pushed = [json.loads(ws.recv(timeout=2)) for _ in range(2)]
    assert [m["stream"] for m in pushed] == ["trade_updates"] * 2
    assert [m["data"] for m in pushed] == fake.events


def test_stream_reconnects_after_a_server_side_close(fake: AlpacaFake, client: Client) -> None:
    got: list[str] = []

    async def on_update(update: TradeUpdate) -> None:
        got.append(update.event)

    fake.set_price("AAPL", 1.0)
    with _stream(fake, on_update) as stream:
        stream._reconnect_min_backoff = 0.05  # alpaca-py waits 0.5-1 s before its first retry
        fake.close_streams()
        assert fake.wait_for_listener(2.0)
        client.submit_order(_market(qty=1))
        _wait(lambda: got == ["new", "fill"])


# -- bodies against the OpenAPI spec and the recorded responses ---------------------------------


def _violations(
    schema: dict[str, Any], value: Any, spec: dict[str, Any], at: str = "$"
) -> list[str]:
    """A small JSON-schema check: $ref, type, enum, required, properties, items, any/oneOf."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf"):
        if key in schema and all(_violations(s, value, spec, at) for s in schema[key]):
            return [f"{at}: matches no branch of {key}"]
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    python: dict[str, type | tuple[type, ...]] = {"string": str, "boolean": bool, "object": dict}
    python |= {"array": list, "null": type(None), "integer": int, "number": (int, float)}
    if kinds and not any(isinstance(value, python[k]) for k in kinds):
        return [f"{at}: {value!r} is not {kinds}"]
    if "enum" in schema and value is not None and value not in schema["enum"]:
        return [f"{at}: {value!r} not in {schema['enum']}"]
    out = []
    if isinstance(value, dict):
        out += [f"{at}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                out += _violations(sub, value[key], spec, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += _violations(schema["items"], item, spec, f"{at}[{i}]")
    return out


def _raw(fake: AlpacaFake, method: str, path: str, **params: Any) -> Any:
    headers = {"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET}
    return requests.request(
        method, fake.url + path, params=params, headers=headers, timeout=2
    ).json()


def _responses(fake: AlpacaFake) -> dict[str, tuple[str, str, Any]]:
    """One body of every route that answers with a body, with its OpenAPI path and method."""
    fake.set_price("AAPL", 100.0)
    _client(fake).submit_order(
        _market(
            qty=1,
            order_class=OrderClass.BRACKET,
            take_profit=TakeProfitRequest(limit_price=120),
            stop_loss=StopLossRequest(stop_price=90),
        )
    )
    order = fake.orders()[0]
    return {
        "account": ("/v2/account", "get", _raw(fake, "GET", "/v2/account")),
        "clock": ("/v2/clock", "get", _raw(fake, "GET", "/v2/clock")),
        "positions": ("/v2/positions", "get", _raw(fake, "GET", "/v2/positions")),
        "orders": (
            "/v2/orders",
            "get",
            _raw(fake, "GET", "/v2/orders", status="all", nested="true"),
        ),
        "order": ("/v2/orders/{order_id}", "get", _raw(fake, "GET", f"/v2/orders/{order['id']}")),
        "cancel_all": ("/v2/orders", "delete", _raw(fake, "DELETE", "/v2/orders")),
        "close_all": ("/v2/positions", "delete", _raw(fake, "DELETE", "/v2/positions")),
    }


def _response_schema(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    responses = spec["paths"][path][method]["responses"]
    answer = next(v for k, v in responses.items() if k.startswith("2"))
    return dict(answer["content"]["application/json"]["schema"])


@pytest.mark.skipif(not SPEC.is_file(), reason=f"Alpaca's OpenAPI spec not at {SPEC}")
def test_bodies_follow_the_openapi_schemas(fake: AlpacaFake) -> None:
    spec = json.loads(SPEC.read_text())
    for name, (path, method, body) in _responses(fake).items():
        assert body, name
        assert _violations(_response_schema(spec, path, method), body, spec) == [], name


@pytest.mark.skipif(
    not all(p.is_file() for p in RECORDED.values()), reason=f"recorded bodies missing: {RECORDED}"
)
def test_bodies_carry_the_fields_of_recorded_alpaca_responses(fake: AlpacaFake) -> None:
    def recorded(name: str, test: str) -> Any:
        data = json.loads(RECORDED[name].read_text())
        return next(r["body"] for r in data["responses"] if r["test"] == test)

    ours = _responses(fake)
    order_keys = set(recorded("order", "test_market_order")) - {"commission"}
    assert order_keys <= set(ours["order"][2])
    deprecated = {"daytrading_buying_power", "daytrade_count", "pattern_day_trader"}  # gone 2026-07
    account_keys = set(recorded("account", "test_get_account")) - deprecated
    assert account_keys <= set(ours["account"][2])
    position_keys = set(recorded("position", "test_get_all_positions")[0]) - {"usd"}
    assert position_keys <= set(ours["positions"][2][0])


def test_fake_refuses_bad_controls(fake: AlpacaFake) -> None:
    with pytest.raises(ValueError, match="price"):
        fake.set_price("AAPL", 0)
    with pytest.raises(ValueError, match="rate_limit_per_minute"):
        FakeConfig(rate_limit_per_minute=0)
    with pytest.raises(ValueError, match="no order"):
        fake.fill("00000000-0000-0000-0000-000000000000")
    fake.auto_fill = False
    sent = _client(fake).submit_order(_market(qty=1))
    with pytest.raises(ValueError, match="no price for AAPL"):
        fake.fill(str(sent.id))
    with pytest.raises(ValueError, match="outside"):
        fake.fill(str(sent.id), qty=2, price=1.0)
    assert fake.expire(str(sent.id))["order"]["status"] == "expired"
