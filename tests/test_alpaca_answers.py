"""Broker answers outside the Trading API's schema, through the real alpaca-py clients.

The fake answers a request as usual and then reshapes its body (``AlpacaFake.reshape_next``):
one order object where the spec has a list (what a mock of the spec's examples sends for
``GET /v2/orders``), a position whose ``qty`` is not a number, a trade update with a fill
quantity that is not one. Each is a ``BrokerProtocolError`` naming the endpoint and the field,
handled as a broker fault: no crash, no new orders, nothing written to the journal from it,
reconciled again later. The recorded answers of the real API pass the same checks.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from backtrader.order import Order

from brokers.alpaca import answers
from brokers.alpaca.journal import Journal
from brokers.alpaca.rest import OrderSpec, TradingAPI
from brokers.alpaca.sim.trading import AlpacaFake, first_only, set_field
from brokers.alpaca.store import AlpacaStore
from core.errors import BrokerProtocolError
from tests.test_alpaca_broker import Session, _config, _data, _orders_with

pytestmark = pytest.mark.timeout(60)
RECORDED = Path(__file__).parent / "fixtures" / "alpaca"


@pytest.fixture
def fake() -> Iterator[AlpacaFake]:
    with AlpacaFake() as server:
        server.set_price("AAPL", 100.0)
        server.set_price("MSFT", 50.0)
        yield server
        assert not server.errors, server.errors


@pytest.fixture
def session(fake: AlpacaFake, tmp_path: Path) -> Iterator[Session]:
    store = AlpacaStore(_config(fake, tmp_path / "journal.sqlite"))
    s = Session(store)
    s.broker.start()
    yield s
    s.broker.stop()
    store.journal.close()


def _dump(path: Path) -> list[str]:
    """Every row of the journal database, as SQL."""
    with closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


def _resting(api: TradingAPI, coid: str, symbol: str = "AAPL") -> None:
    """A limit order below the market: it stays open at the fake."""
    api.submit_idempotent(OrderSpec(client_order_id=coid, symbol=symbol, side="buy", qty=1,
                                    order_type="limit", limit_price=1.0))  # fmt: skip


# -- every read and write checks its answer --------------------------------------------------------

Call = Callable[[TradingAPI], Any]
SUBMIT = OrderSpec(client_order_id="new-1", symbol="AAPL", side="buy", qty=1)
CASES: list[tuple[str, str, Callable[[Any], Any], Call, str, str]] = [
    ("GET", "/v2/account", set_field("cash", "lots"), lambda a: a.account(),
     "GET /v2/account", "cash"),
    ("GET", "/v2/clock", set_field("is_open", "yes"), lambda a: a.clock(),
     "GET /v2/clock", "is_open"),
    ("GET", "/v2/positions", set_field("qty", "n/a"), lambda a: a.positions(),
     "GET /v2/positions", "qty"),
    ("GET", "/v2/positions", set_field("side", "sideways"), lambda a: a.positions(),
     "GET /v2/positions", "side"),
    ("GET", "/v2/orders", first_only, lambda a: a.orders("all"),
     "GET /v2/orders (status=all)", "(body)"),
    ("GET", "/v2/orders", set_field("client_order_id", None), lambda a: a.orders("open"),
     "GET /v2/orders (status=open)", "client_order_id"),
    ("GET", "/v2/orders:by_client_order_id", set_field("filled_qty", "string"),
     lambda a: a.order_by_client_id("held-1"), "GET /v2/orders:by_client_order_id", "filled_qty"),
    ("POST", "/v2/orders", set_field("id", "not-a-uuid"), lambda a: a.submit_idempotent(SUBMIT),
     "POST /v2/orders", "id"),
    ("DELETE", "/v2/orders", set_field("status", "200"), lambda a: a.cancel_all(),
     "DELETE /v2/orders", "status"),
    ("DELETE", "/v2/positions", first_only, lambda a: a.close_all_positions(),
     "DELETE /v2/positions", "(body)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "change", "call", "endpoint", "field"),
    CASES,
    ids=[f"{c[0]} {c[1]} {c[5]}" for c in CASES],
)
def test_every_answer_is_checked_against_its_schema(
    fake: AlpacaFake, tmp_path: Path, method: str, path: str, change: Callable[[Any], Any],
    call: Call, endpoint: str, field: str,
) -> None:  # fmt: skip
    api = TradingAPI(_config(fake, tmp_path / "j.sqlite"))
    api.submit_idempotent(OrderSpec(client_order_id="held-1", symbol="MSFT", side="buy", qty=3))
    _resting(api, "open-1")
    fake.reshape_next(method, path, change)
    with pytest.raises(BrokerProtocolError) as err:
        call(api)
    assert (err.value.endpoint, err.value.field) == (endpoint, field)
    assert str(err.value).startswith(f"Alpaca {endpoint} answered ")
    assert "\n" not in str(err.value)
    if method == "GET":
        call(api)  # the next, well-formed answer is used again


def test_orders_as_one_object_are_not_taken_for_a_list_of_its_keys(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    api = TradingAPI(_config(fake, tmp_path / "j.sqlite"))
    _resting(api, "open-1")
    fake.reshape_next("GET", "/v2/orders", first_only)
    with pytest.raises(BrokerProtocolError, match="answered one object where the Trading API "
                       "has a list of Order objects"):  # fmt: skip
        api.orders("open")
    assert [o["client_order_id"] for o in api.orders("open")] == ["open-1"]


# -- the broker: a broker fault, never a crash -----------------------------------------------------


def test_start_adopting_open_orders_from_one_object_refuses_and_writes_nothing(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    """A paper session starting beside an open order it must adopt (as external)."""
    cfg = _config(fake, tmp_path / "journal.sqlite")
    _resting(TradingAPI(cfg), "by-hand-1")
    Journal(cfg.journal).close()
    before = _dump(tmp_path / "journal.sqlite")
    fake.reshape_next("GET", "/v2/orders", first_only)
    store = AlpacaStore(cfg)
    with pytest.raises(BrokerProtocolError, match=r"GET /v2/orders \(status=open\) answered one"):
        store.getbroker().start()
    assert not store.updates.connected
    store.journal.close()
    assert _dump(tmp_path / "journal.sqlite") == before


@pytest.mark.parametrize("name", ["qty", "avg_entry_price"])
def test_adopting_a_position_that_is_not_a_number_refuses_and_changes_nothing(
    fake: AlpacaFake, tmp_path: Path, name: str
) -> None:
    cfg = _config(fake, tmp_path / "journal.sqlite")
    api = TradingAPI(cfg)
    api.submit_idempotent(OrderSpec(client_order_id="by-hand-1", symbol="MSFT", side="buy", qty=7))
    _resting(api, "by-hand-2")  # open: a reconciliation that wrote first would adopt it
    with Journal(cfg.journal) as journal:
        journal.set_meta("note", "written before the session")
    before = _dump(tmp_path / "journal.sqlite")
    fake.reshape_next("GET", "/v2/positions", set_field(name, "n/a"))
    store = AlpacaStore(cfg, adopt_positions=True)
    with pytest.raises(BrokerProtocolError) as err:
        store.getbroker().start()
    store.journal.close()
    assert (err.value.endpoint, err.value.field) == ("GET /v2/positions", name)
    assert f"[0].{name}: not a decimal number (got 'n/a')" in str(err.value)
    assert _dump(tmp_path / "journal.sqlite") == before
    again = Session(AlpacaStore(cfg, adopt_positions=True))  # well-formed: adopted as usual
    again.broker.start()
    try:
        assert again.broker.getposition(_data("MSFT")).size == 7
    finally:
        again.broker.stop()
        again.store.journal.close()


def test_a_malformed_answer_mid_session_halts_new_orders_then_recovers(
    session: Session, fake: AlpacaFake
) -> None:
    data = _data("AAPL")
    first = session.broker.buy(None, data, 1)
    assert session.pump(lambda: not first.alive())
    journal = session.store.journal
    fake.reshape_next("GET", "/v2/orders", first_only, times=100)
    session.broker.check_positions()  # the periodic check meets it: no exception
    halted = session.broker.halted or ""
    assert "answer malformed" in halted and "GET /v2/orders (status=open)" in halted
    refused = session.broker.buy(None, data, 1)
    assert refused.status == Order.Rejected and "malformed" in refused.info["reject_reason"]
    assert len(_orders_with(fake)) == 1 and len(journal.orders()) == 1
    fake.clear_faults()  # the server answers by the spec again
    session.broker.p.unreachable_retry = 0.2
    assert session.pump(lambda: session.broker.halted is None)
    order = session.broker.buy(None, data, 1)
    assert session.pump(lambda: not order.alive()) and order.status == Order.Completed
    assert len(_orders_with(fake)) == 2


def test_a_malformed_submit_answer_leaves_the_order_unknown_until_looked_up(
    session: Session, fake: AlpacaFake
) -> None:
    """The order reached Alpaca; its answer cannot be used: fate unknown, looked up, never
    sent twice."""
    fake.reshape_next("POST", "/v2/orders", set_field("filled_qty", "n/a"))
    data = _data("AAPL")
    order = session.broker.buy(None, data, 2)
    coid = _orders_with(fake)[0]["client_order_id"]
    assert coid in session.broker._unknown  # blocks new orders until the lookup settles it
    assert session.pump(lambda: not order.alive())
    second = session.broker.buy(None, data, 1)  # the resync's lookup settles the first
    assert session.pump(lambda: not second.alive())
    assert order.status == Order.Completed and order.executed.size == 2
    assert second.status == Order.Completed and not session.broker._unknown
    assert len(_orders_with(fake)) == 2
    assert session.store.journal.get(coid).status == "filled"  # type: ignore[union-attr]


def test_a_malformed_trade_update_is_dropped_and_orders_are_read_again(
    session: Session, fake: AlpacaFake
) -> None:
    fake.auto_fill = False
    order = session.broker.buy(None, _data("AAPL"), 1, price=90.0, exectype=Order.Limit)
    assert session.pump(lambda: order.status == Order.Accepted)
    body = _orders_with(fake)[0]
    fake.push_update({"event": "fill", "timestamp": body["created_at"], "qty": "one",
                      "price": "90", "order": body | {"status": "filled", "filled_qty": "1"}})  # fmt: skip
    updates = session.store.updates
    assert session.pump(lambda: updates.malformed == 1)
    assert session.pump(lambda: not session.broker._resync.is_set())  # read again
    assert order.status == Order.Accepted and session.broker.halted is None
    rec = session.store.journal.get(body["client_order_id"])
    assert rec is not None and rec.status == "new" and session.store.journal.fills() == []


# -- what real answers look like passes ------------------------------------------------------------


def _recorded(name: str) -> dict[str, Any]:
    data = json.loads((RECORDED / f"trading__trading_client__test_{name}_routes.json").read_text())
    return {r["test"]: r["body"] for r in data["responses"] if "body" in r}


def test_recorded_alpaca_answers_pass_the_checks() -> None:
    """alpaca-py's recorded answers (decimals as strings, and as numbers in older ones, an
    empty ``order_class``, nanosecond timestamps) must never be refused."""
    orders, positions = _recorded("order"), _recorded("position")
    for test, body in orders.items():
        if test == "test_cancel_orders":
            answers.check_list("DELETE /v2/orders", answers.CanceledOrderAnswer, body)
        elif isinstance(body, list):
            answers.check_list("GET /v2/orders", answers.OrderAnswer, body)
        else:
            answers.check_object("GET /v2/orders/{id}", answers.OrderAnswer, body)
    answers.check_list("GET /v2/positions", answers.PositionAnswer,
                       positions["test_get_all_positions"])  # fmt: skip
    answers.check_list("DELETE /v2/positions", answers.ClosedPositionAnswer,
                       positions["test_close_all_positions"])  # fmt: skip
    answers.check_object("POST /v2/positions/{symbol}", answers.OrderAnswer,
                         positions["test_close_position_with_qty"])  # fmt: skip
    account = _recorded("account")["test_get_account"]
    answers.check_object("GET /v2/account", answers.AccountAnswer, account)
    assert len(orders) >= 6
