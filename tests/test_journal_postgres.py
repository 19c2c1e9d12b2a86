"""The order journal on a real PostgreSQL server (the journal takes any SQLAlchemy URL).

The fixture creates a throw-away cluster with the machine's ``initdb``/``pg_ctl`` (Debian's
``postgresql`` package; ``.ci/run`` installs it), on a free port, as the ``postgres`` user when
the tests run as root, and removes it afterwards. Without PostgreSQL on the machine the tests
are skipped with that reason; CI always runs them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from brokers.alpaca.journal import IntentConflictError, Journal, OrderIntent
from brokers.alpaca.reconcile import reconcile
from tests.postgres import new_database, pg_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pg_cluster("btml-pg-") as url:
        yield url


@pytest.fixture
def db(pg_url: str, request: pytest.FixtureRequest) -> str:
    """A new empty database on the cluster for one test."""
    return new_database(pg_url, "t_" + request.node.name)


def _intent(i: int, **kw: object) -> OrderIntent:
    values: dict[str, object] = dict(strategy="pg", symbol="AAPL", side="buy", qty=1.0,
                                     bar_time=f"2026-03-02T15:{i:02d}:00Z", leg="0")  # fmt: skip
    return OrderIntent(**(values | kw))  # type: ignore[arg-type]


def _order(coid: str, status: str = "new", filled: float = 0.0) -> dict[str, object]:
    return {"id": f"id-{coid}", "client_order_id": coid, "symbol": "AAPL", "side": "buy",
            "qty": "1", "type": "market", "time_in_force": "day", "status": status,
            "filled_qty": str(filled), "filled_avg_price": "100" if filled else None,
            "created_at": "2026-03-02T15:00:01Z", "updated_at": "2026-03-02T15:00:02Z"}  # fmt: skip


def test_the_journal_round_trip_on_postgresql(db: str) -> None:
    pg_url = db
    with Journal(pg_url) as journal:
        rec = journal.record_intent(_intent(1, signal={"model": "m", "version": 3, "p_up": 0.6}))
        assert rec.status == "pending_submit" and rec.model_version == 3
        assert journal.record_intent(_intent(1, signal={"model": "m", "version": 3})) == rec
        with pytest.raises(IntentConflictError):
            journal.record_intent(_intent(1, qty=2.0))
        journal.mark_sent(rec.client_order_id, _order(rec.client_order_id))
        fill = {"event": "fill", "execution_id": "e1", "qty": "1", "price": "100",
                "timestamp": "2026-03-02T15:00:03Z",
                "order": _order(rec.client_order_id, "filled", 1.0)}  # fmt: skip
        assert journal.apply_update(fill).fill is not None
        assert journal.apply_update(fill).changed is False  # idempotent
        assert journal.position_from_fills("AAPL").qty == 1.0
        journal.set_meta("position_baseline", '{"MSFT": 2.0}')
    with Journal(pg_url) as again:  # another process, the same database
        got = again.get(rec.client_order_id)
        assert got is not None and got.status == "filled" and got.signal == {"model": "m",
                                                                              "version": 3, "p_up": 0.6}  # fmt: skip
        assert again.meta("position_baseline") == '{"MSFT": 2.0}'
        assert again.missing_fills() == {}


def test_concurrent_writers_on_postgresql_lose_nothing(db: str) -> None:
    pg_url = db
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with Journal(pg_url) as journal:
                for i in range(20):
                    journal.record_intent(_intent(i, symbol=f"W{k}"))
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with Journal(pg_url) as journal:
        assert sum(1 for r in journal.orders() if r.symbol.startswith("W")) == 80


def test_reconciliation_reads_and_writes_postgresql(db: str) -> None:
    pg_url = db
    from brokers.alpaca.config import AlpacaConfig
    from brokers.alpaca.rest import OrderSpec, TradingAPI
    from brokers.alpaca.sim.trading import KEY_ID, SECRET, AlpacaFake

    with AlpacaFake() as fake, Journal(pg_url) as journal:
        fake.set_price("NVDA", 50.0)
        api = TradingAPI(AlpacaConfig(key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url,
                                      journal=pg_url))  # fmt: skip
        rec = journal.record_intent(_intent(30, symbol="NVDA", qty=3.0))
        api.submit_idempotent(OrderSpec(client_order_id=rec.client_order_id, symbol="NVDA",
                                        side="buy", qty=3))  # fmt: skip  # the answer "lost"
        report = reconcile(api, journal)
        assert report.adopted == [rec.client_order_id] and not report.differences
        assert journal.position_from_fills("NVDA").qty == 3.0
