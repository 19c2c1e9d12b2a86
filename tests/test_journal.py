"""The order journal: ids, write-before-send, idempotent updates, restarts and bad files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.models import Order, TradeUpdate
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.alpaca.journal import (
    FillRecord,
    IntentConflictError,
    Journal,
    JournalConfig,
    JournalError,
    OrderIntent,
    OrderRecord,
    make_client_order_id,
    net_position,
)
from brokers.alpaca.sim.trading import KEY_ID, SECRET, AlpacaFake, FakeOrder
from core.errors import CorruptFileError, StoreError
from serving.signal import Signal

pytestmark = pytest.mark.timeout(20)

ROOT = Path(__file__).resolve().parents[1]
BAR = datetime(2024, 1, 2, 15, 30, tzinfo=UTC)
SIGNAL = Signal(
    model="xlstm-small",
    version=7,
    returns=(0.01, float("nan")),
    horizons=(1, 5),
    direction=(0.2, 0.3, 0.5),
    action=(0.1, 0.2, 0.7),
    size=0.4,
    volatility=0.02,
    risk=0.03,
    confidence=0.8,
    symbol="AAPL",
)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


def _intent(**kw: Any) -> OrderIntent:
    values: dict[str, Any] = {"strategy": "ml", "symbol": "AAPL", "bar_time": BAR, "side": "buy"}
    values |= {"qty": 10.0, "signal": SIGNAL}
    return OrderIntent(**(values | kw))


def _order(
    coid: str, status: str = "new", filled: str = "0", avg: str | None = None
) -> dict[str, Any]:
    body = FakeOrder("AAPL", "buy", "market", "day", 10.0, None, client_order_id=coid).to_json()
    body.update(id=str(uuid.uuid5(uuid.NAMESPACE_OID, coid)), status=status, filled_qty=filled)
    return body | {"filled_avg_price": avg, "updated_at": "2024-01-02T15:30:05.123456789Z"}


def _get(journal: Journal, coid: str) -> OrderRecord:
    record = journal.get(coid)
    assert record is not None, coid
    return record


def _event(coid: str, name: str, **kw: Any) -> dict[str, Any]:
    status = {"fill": "filled", "partial_fill": "partially_filled"}.get(name, name)
    order = _order(coid, status, kw.pop("filled", "0"), kw.pop("avg", None))
    return {"event": name, "timestamp": "2024-01-02T15:30:05Z", "order": order, **kw}


# -- client_order_id ---------------------------------------------------------------------------


def test_client_order_id_is_readable_stable_and_pinned() -> None:
    coid = make_client_order_id("ml", "AAPL", BAR, "entry")
    assert coid == "ml-AAPL-20240102T153000Z-entry-4e27fae640"  # pinned: ids must survive upgrades
    naive = datetime(2024, 1, 2, 15, 30)
    ny = BAR.astimezone(timezone(timedelta(hours=-5)))
    same = [make_client_order_id("ml", "AAPL", t, "entry") for t in (naive, ny, pd.Timestamp(BAR))]
    assert same == [coid] * 3
    assert make_client_order_id("ml", "AAPL", "2024-01-02T15:30:00Z", "entry") == coid
    others = {
        make_client_order_id("ml", "AAPL", BAR, "exit"),
        make_client_order_id("ml", "MSFT", BAR, "entry"),
        make_client_order_id("ml", "AAPL", BAR + timedelta(minutes=1), "entry"),
        make_client_order_id("ml2", "AAPL", BAR, "entry"),
    }
    assert len(others) == 4 and coid not in others


def test_client_order_id_hashes_what_it_cannot_show() -> None:
    slash, underscore = (make_client_order_id("ml", s, BAR, 0) for s in ("BTC/USD", "BTC_USD"))
    assert slash.startswith("ml-BTC_USD-") and underscore.startswith("ml-BTC_USD-")
    assert slash != underscore
    long_id = make_client_order_id("s" * 300, "AAPL", BAR, "entry")
    assert len(long_id) == 128 and long_id.startswith("sss")
    assert long_id != make_client_order_id("s" * 301, "AAPL", BAR, "entry")
    with pytest.raises(ValueError, match="strategy"):
        make_client_order_id(" ", "AAPL", BAR, "entry")


@settings(max_examples=50, deadline=None)
@given(
    st.text(min_size=1, max_size=200).filter(str.strip),
    st.text(min_size=1, max_size=30).filter(str.strip),
    st.datetimes(timezones=st.just(UTC)),
    st.text(min_size=1, max_size=20).filter(str.strip) | st.integers(0, 9),
)
def test_client_order_id_fits_alpaca_for_any_input(
    strategy: str, symbol: str, when: datetime, leg: Any
) -> None:
    coid = make_client_order_id(strategy, symbol, when, leg)
    assert len(coid) <= 128 and coid.isascii()
    assert set(coid) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert coid == make_client_order_id(strategy, symbol, when, leg)


# -- intents and answers -----------------------------------------------------------------------


def test_intent_is_on_disk_before_sending_with_model_and_heads(
    tmp_path: Path, journal: Journal
) -> None:
    rec = journal.record_intent(_intent())
    assert rec.status == "pending_submit" and rec.sent_at is None and not rec.external
    with Journal(tmp_path / "journal.sqlite") as other:  # what a restarted process would see
        seen = other.get(rec.client_order_id)
    assert seen == rec
    assert (seen.model_name, seen.model_version, seen.strategy, seen.leg) == (
        "xlstm-small",
        7,
        "ml",
        "entry",
    )
    assert seen.signal is not None and seen.signal["action"] == [0.1, 0.2, 0.7]
    assert seen.signal["returns"] == [0.01, None]  # NaN is not JSON: stored as null
    assert seen.bar_time == BAR
    assert journal.unknown_orders() == [rec] and journal.open_orders() == []


def test_recording_the_same_intent_twice_is_a_replay_not_a_second_order(journal: Journal) -> None:
    first = journal.record_intent(_intent())
    assert journal.record_intent(_intent()) == first
    with pytest.raises(IntentConflictError, match="leg"):
        journal.record_intent(_intent(qty=11.0))
    journal.record_intent(_intent(qty=11.0, leg="add"))
    assert len(journal.unknown_orders()) == 2


def test_intent_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="exactly one of qty and notional"):
        _intent(notional=100.0)
    with pytest.raises(ValueError, match="limit_price"):
        _intent(order_type="limit")
    with pytest.raises(ValueError, match="side"):
        _intent(side="long")
    with pytest.raises(ValueError, match="busy_timeout_s"):
        JournalConfig(url="x.sqlite", busy_timeout_s=0)


def test_mark_sent_takes_the_json_or_an_alpaca_py_order(journal: Journal) -> None:
    a = journal.record_intent(_intent()).client_order_id
    b = journal.record_intent(_intent(leg="exit", side="sell")).client_order_id
    sent = journal.mark_sent(a, _order(a, "accepted"))
    assert (sent.status, sent.alpaca_id) == ("accepted", str(uuid.uuid5(uuid.NAMESPACE_OID, a)))
    assert sent.sent_at is not None
    assert journal.mark_sent(a, _order(a, "accepted")) == sent  # a repeated answer changes nothing
    model = Order(**(_order(b) | {"side": "sell"}))
    assert journal.mark_sent(b, model).status == "new"
    assert [r.client_order_id for r in journal.open_orders()] == sorted([a, b])
    with pytest.raises(JournalError, match="record_intent"):
        journal.mark_sent("never-recorded", _order("never-recorded"))


def test_unknown_then_reconciled(journal: Journal) -> None:
    coid = journal.record_intent(_intent()).client_order_id
    assert journal.mark_unknown(coid, "submit timed out").status == "unknown"
    assert [r.error for r in journal.unknown_orders()] == ["submit timed out"]
    assert journal.mark_sent(coid, _order(coid, "partially_filled", filled="4")).filled_qty == 4.0
    assert journal.mark_unknown(coid, "late").status == "partially_filled"  # answers stay
    assert journal.unknown_orders() == []
    assert journal.missing_fills() == {coid: 4.0}  # filled while nobody listened: backfill
    journal.apply_update(
        _event(coid, "partial_fill", execution_id="e1", price="9", qty="4", filled="4")
    )
    assert journal.missing_fills() == {}

    lost = journal.record_intent(_intent(leg="exit", side="sell")).client_order_id
    journal.mark_unknown(lost, "no answer")
    assert journal.mark_rejected(lost, "not found at Alpaca").status == "rejected"


# -- trade updates -----------------------------------------------------------------------------


def test_applying_the_same_update_twice_changes_nothing(journal: Journal) -> None:
    coid = journal.record_intent(_intent()).client_order_id
    journal.mark_sent(coid, _order(coid, "accepted"))
    event = _event(
        coid,
        "partial_fill",
        execution_id="0d8a5c1e-3c55-4a0e-9f59-1b5f0d3c1a11",
        price="100.5",
        qty="4",
        filled="4",
        avg="100.5",
    )
    first = journal.apply_update(event)
    assert first.changed and first.fill is not None and first.fill.qty == 4.0
    assert (first.record.status, first.record.filled_qty) == ("partially_filled", 4.0)
    again = journal.apply_update(event)
    assert not again.changed and again.fill is None and again.record == first.record
    assert journal.apply_update({"stream": "trade_updates", "data": event}).changed is False
    assert (
        journal.apply_update(TradeUpdate(**event)).changed is False
    )  # what TradingStream hands over
    assert len(journal.fills(coid)) == 1


def test_fills_are_unique_by_execution_id(journal: Journal) -> None:
    coid = journal.record_intent(_intent()).client_order_id
    one = _event(
        coid, "partial_fill", execution_id="ex-1", price="100", qty="4", filled="4", avg="100"
    )
    two = _event(coid, "fill", execution_id="ex-2", price="101", qty="6", filled="10", avg="100.6")
    for event in (one, two, one, two, {**one, "timestamp": "2024-01-02T15:31:00Z"}):
        journal.apply_update(event)
    assert [f.execution_id for f in journal.fills(coid)] == ["ex-1", "ex-2"]
    record = _get(journal, coid)
    assert (record.status, record.filled_qty, record.filled_avg_price) == (
        "filled",
        10.0,
        100.6,
    )
    assert journal.position_from_fills("AAPL").qty == 10.0


def test_a_status_never_moves_back(journal: Journal) -> None:
    coid = journal.record_intent(_intent()).client_order_id
    journal.apply_update(
        _event(coid, "partial_fill", execution_id="e1", price="1", qty="4", filled="4")
    )
    journal.apply_update(_event(coid, "new"))  # late and out of order
    assert _get(journal, coid).status == "partially_filled"
    journal.apply_update(_event(coid, "canceled", filled="4"))
    for late in ("new", "partial_fill", "pending_cancel"):
        journal.apply_update(
            _event(coid, late, execution_id=f"x-{late}", price="1", qty="1", filled="4")
        )
        assert _get(journal, coid).status == "canceled"
    assert len(journal.fills(coid)) == 2  # a late execution is still money that moved
    late_fill = _event(coid, "fill", execution_id="e9", price="1", qty="5", filled="10")
    assert journal.apply_update(late_fill).record.status == "filled"  # the one exception
    journal.apply_update(_event(coid, "canceled"))
    assert _get(journal, coid).status == "filled"


def test_a_rejected_cancel_request_returns_the_order_to_its_state(journal: Journal) -> None:
    coid = journal.record_intent(_intent()).client_order_id
    journal.apply_update(_event(coid, "pending_cancel"))
    rejected = _event(coid, "order_cancel_rejected")
    rejected["order"]["status"] = "new"
    assert journal.apply_update(rejected).record.status == "new"


def test_updates_for_unknown_orders_are_kept_as_external(journal: Journal) -> None:
    event = _event(
        "placed-by-hand", "fill", execution_id="e1", price="99", qty="10", filled="10", avg="99"
    )
    applied = journal.apply_update(event)
    assert applied.changed and applied.record.external and applied.record.strategy is None
    assert (applied.record.symbol, applied.record.status, applied.record.qty) == (
        "AAPL",
        "filled",
        10.0,
    )
    assert journal.position_from_fills("AAPL").qty == 10.0
    assert journal.position_from_fills("AAPL").qty == 10.0

    found = journal.adopt_external(_order("seen-at-reconcile", "new"))
    assert found.external and found.status == "new"
    ours = journal.record_intent(_intent()).client_order_id
    assert not journal.adopt_external(_order(ours, "accepted")).external  # ours stays ours
    with pytest.raises(JournalError, match="client_order_id"):
        journal.apply_update({"event": "fill", "order": {"id": "x"}})


def test_net_position_averages_entries_and_restarts_across_zero() -> None:
    def fill(side: str, qty: float, price: float) -> FillRecord:
        return FillRecord(
            execution_id="e",
            client_order_id="c",
            symbol="X",
            side=side,
            qty=qty,
            price=price,
            timestamp=BAR,
        )

    steps = [
        ("buy", 10, 100.0),
        ("buy", 10, 110.0),
        ("sell", 5, 130.0),
        ("sell", 20, 120.0),
        ("buy", 5, 90.0),
    ]
    seen = [net_position("X", [fill(*s) for s in steps[:n]]) for n in range(1, len(steps) + 1)]
    assert [(p.qty, p.avg_entry_price) for p in seen] == [
        (10.0, 100.0),
        (20.0, 105.0),
        (15.0, 105.0),  # reducing keeps the average
        (-5.0, 120.0),  # crossing zero starts a new one
        (0.0, None),
    ]


# -- storage -----------------------------------------------------------------------------------

_CRASH = """
import os, sys
from datetime import UTC, datetime
from brokers.alpaca.journal import Journal, OrderIntent
calls = 0
def clock():
    global calls
    calls += 1
    if calls > int(sys.argv[2]):
        os._exit(3)  # die inside an open write transaction: no commit, no close, no cleanup
    return datetime(2024, 1, 2, 16, 0, calls, tzinfo=UTC)
j = Journal(sys.argv[1], clock=clock)
for leg in range(5):
    rec = j.record_intent(OrderIntent(strategy="ml", symbol="AAPL", side="buy", qty=1.0,
                                      bar_time=datetime(2024, 1, 2, tzinfo=UTC), leg=str(leg)))
    j.mark_sent(rec.client_order_id, {"client_order_id": rec.client_order_id,
                                      "id": f"id-{leg}", "status": "new"})
"""


def test_every_committed_row_survives_a_crash_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, str(path), "5"], env=env, cwd=ROOT, timeout=15
    )
    assert done.returncode == 3
    assert (tmp_path / "journal.sqlite-wal").exists()  # the crash left the WAL unmerged
    with Journal(path) as j:
        rows = j.unknown_orders() + j.open_orders()
    # clock calls: intent 0, sent 0, intent 1, sent 1, intent 2 -> then mark_sent 2 dies mid-way
    assert sorted((r.leg, r.status) for r in rows) == [
        ("0", "new"),
        ("1", "new"),
        ("2", "pending_submit"),
    ]


def test_two_instances_share_one_file(tmp_path: Path) -> None:
    with (
        Journal(tmp_path / "j.sqlite") as a,
        Journal(JournalConfig(url=f"sqlite:///{tmp_path / 'j.sqlite'}")) as b,
    ):
        coid = a.record_intent(_intent()).client_order_id
        b.apply_update(_event(coid, "fill", execution_id="e1", price="5", qty="10", filled="10"))
        assert _get(a, coid).status == "filled"
    mode = sqlite3.connect(tmp_path / "j.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_concurrent_updates_from_threads(journal: Journal) -> None:
    coid = journal.record_intent(_intent(qty=40.0)).client_order_id
    events = [
        _event(coid, "partial_fill", execution_id=f"e{i}", price="1", qty="1") for i in range(40)
    ]

    def apply(chunk: list[dict[str, Any]]) -> None:
        for event in chunk + chunk:
            journal.apply_update(event)

    threads = [threading.Thread(target=apply, args=(events[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(journal.fills(coid)) == 40 and journal.position_from_fills("AAPL").qty == 40.0


@pytest.mark.parametrize(
    "content",
    [b"this is a CSV, not a journal\n1,2,3\n", b"SQLite format 3\x00" + b"\xff" * 300],
    ids=["not-sqlite", "damaged-sqlite"],
)
def test_a_corrupt_file_is_refused_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError) as err:
        Journal(path)
    assert isinstance(err.value, StoreError) and isinstance(err.value, JournalError)
    assert str(path) in str(err.value) and "untouched" in str(err.value)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.sqlite"]


def test_a_database_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE journal_orders (id INTEGER)")
    with pytest.raises(JournalError, match="no order journal wrote"):
        Journal(path)
    with pytest.raises(JournalError, match="directory"):
        Journal(tmp_path)


def test_in_memory_journal_for_tests() -> None:
    with Journal("sqlite://") as j:
        coid = j.record_intent(_intent()).client_order_id
        assert j.get(coid) is not None and j.get("nope") is None


# -- with the fake broker and the real alpaca-py client ----------------------------------------


def test_journal_follows_a_broker_through_a_timeout(tmp_path: Path) -> None:
    """Write, send, time out, reconcile by client_order_id, then replay the stream twice."""
    with AlpacaFake() as fake, Journal(tmp_path / "j.sqlite") as journal:
        client: Any = TradingClient(KEY_ID, SECRET, paper=True, url_override=fake.url)
        client._retry = 0
        fake.set_price("AAPL", 100.0)
        entry = journal.record_intent(_intent(qty=5.0))
        fake.fail_next("POST", "/v2/orders", 504, after_processing=True)
        with pytest.raises(APIError):
            client.submit_order(
                MarketOrderRequest(
                    symbol="AAPL",
                    qty=5,
                    side="buy",
                    time_in_force="day",
                    client_order_id=entry.client_order_id,
                )
            )
        journal.mark_unknown(entry.client_order_id, "504 from POST /v2/orders")
        for rec in journal.unknown_orders():
            journal.mark_sent(
                rec.client_order_id, client.get_order_by_client_id(rec.client_order_id)
            )

        exit_ = journal.record_intent(
            _intent(leg="take-profit", side="sell", qty=5.0, order_type="limit", limit_price=120.0)
        )
        sent = client.submit_order(
            LimitOrderRequest(
                symbol="AAPL",
                qty=5,
                side="sell",
                time_in_force="day",
                limit_price=120,
                client_order_id=exit_.client_order_id,
            )
        )
        journal.mark_sent(exit_.client_order_id, sent)
        fake.fill(str(sent.id), qty=2, price=121.0)
        for event in fake.events + fake.events:
            journal.apply_update(event)

        assert _get(journal, entry.client_order_id).status == "filled"
        assert _get(journal, exit_.client_order_id).status == "partially_filled"
        assert journal.position_from_fills("AAPL").qty == fake.position_qty("AAPL") == 3.0
        assert [r.client_order_id for r in journal.open_orders()] == [exit_.client_order_id]
