"""The live Alpaca store and broker against the stateful fake, through the real alpaca-py clients.

Every scenario of the issue's fault list: a submit that times out, returns 504 or loses its
connection (exactly one order reaches the fake), a kill between submit and journal update (the
restart adopts it), partial fill then cancel, a stream drop with fills in the gap, a 429 storm,
5xx on reads, 4xx on submit, a position mismatch (refused at start, halted later), and keys
that never reach a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest
from backtrader.order import Order

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.journal import Journal, OrderIntent
from brokers.alpaca.reconcile import PositionMismatch
from brokers.alpaca.rest import BrokerUnavailable, OrderSpec, RateLimiter, TradingAPI
from brokers.alpaca.sim.trading import KEY_ID, SECRET, AlpacaFake, FakeConfig
from brokers.alpaca.store import AlpacaStore
from core.errors import ConfigError
from feeds.btfeeds import StoreData

pytestmark = pytest.mark.timeout(60)

BAR = pd.Timestamp("2026-03-02 15:00", tz="UTC")


@pytest.fixture
def fake() -> Iterator[AlpacaFake]:
    with AlpacaFake() as server:
        server.set_price("AAPL", 100.0)
        server.set_price("MSFT", 50.0)
        yield server
        assert not server.errors, server.errors


def _config(fake: AlpacaFake, journal: Path, **kw: Any) -> AlpacaConfig:
    values: dict[str, Any] = dict(
        key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url,
        trading_stream_url=fake.stream_url, journal=journal, connect_timeout=1.0,
        read_timeout=1.0, retries=3, backoff_initial=0.01, backoff_max=0.05,
        position_check_every=3600.0, strategy="test",
    )  # fmt: skip
    return AlpacaConfig(**(values | kw))


def _data(symbol: str, price: float = 100.0, when: pd.Timestamp = BAR) -> Any:
    """A real backtrader feed with one loaded bar at ``when`` (orders take their bar time)."""
    idx = pd.DatetimeIndex([when], name="datetime")
    frame = pd.DataFrame({c: [price] for c in ("open", "high", "low", "close")} | {"volume": [1.0]},
                         index=idx)  # fmt: skip
    data = StoreData(dataname=frame, name=symbol)
    bt.Cerebro().adddata(data)
    data._start()
    data.next()
    return data


class Session:
    """A started broker plus helpers to pump its notifications."""

    def __init__(self, store: AlpacaStore) -> None:
        self.store = store
        self.broker = store.getbroker()
        self.seen: list[tuple[int, str]] = []

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.broker.next()
            while self.broker.notifs:
                n = self.broker.get_notification()
                if n is not None:
                    self.seen.append((n.ref, n.getstatusname()))
            if until():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def statuses(self, order: Any) -> list[str]:
        return [s for ref, s in self.seen if ref == order.ref]


@pytest.fixture
def session(fake: AlpacaFake, tmp_path: Path) -> Iterator[Session]:
    store = AlpacaStore(_config(fake, tmp_path / "journal.sqlite"))
    s = Session(store)
    s.broker.start()
    yield s
    s.broker.stop()
    store.journal.close()


def _orders_with(fake: AlpacaFake, coid_part: str = "test-") -> list[dict[str, Any]]:
    return [o for o in fake.orders() if str(o["client_order_id"]).startswith(coid_part)]


class FakeTime:
    """``time`` as ``brokers.alpaca.rest`` sees it: a clock that moves only when the code
    sleeps, and sleeps that return at once. ``sleeps`` records ``(seconds, mark())`` per sleep
    (``mark`` says what had happened by then). ``install`` also gives ``api`` a rate limiter
    on this clock (the limiter's default clock is bound at import)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, mark: Callable[[], Any] = lambda: None):
        from brokers.alpaca import rest

        self.now, self.epoch = 1_000.0, 1_780_000_000.0  # monotonic, and wall time at start
        self.mark = mark
        self.sleeps: list[tuple[float, Any]] = []
        self._lock = threading.Lock()
        monkeypatch.setattr(rest, "time", self)

    def install(self, api: TradingAPI) -> TradingAPI:
        cfg = api.config
        api.limiter = RateLimiter(cfg.max_requests_per_minute, cfg.rate_window, self.monotonic)
        return api

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def time(self) -> float:
        with self._lock:
            return self.epoch + self.now - 1_000.0

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append((seconds, self.mark()))
            self.now += seconds


# -- round trip ----------------------------------------------------------------------------------


def test_market_order_round_trip_notifies_and_journals(session: Session, fake: AlpacaFake) -> None:
    data = _data("AAPL")
    order = session.broker.buy(None, data, 3, signal={"model": "m", "version": 2, "p_up": 0.7})
    assert session.pump(lambda: not order.alive())
    assert session.statuses(order) == ["Submitted", "Accepted", "Completed"]
    assert order.executed.size == 3 and order.executed.price == pytest.approx(100.0)
    assert session.broker.getposition(data).size == 3 == fake.position_qty("AAPL")
    rec = session.store.journal.get(_orders_with(fake)[0]["client_order_id"])
    assert rec is not None and rec.status == "filled" and rec.model_version == 2
    assert rec.signal == {"model": "m", "version": 2, "p_up": 0.7}
    assert session.broker.getvalue() == pytest.approx(100_000.0)
    assert session.broker.getvalue([data]) == pytest.approx(300.0)


def test_fractional_limit_stop_and_stop_limit_orders(session: Session, fake: AlpacaFake) -> None:
    fake.auto_fill = False
    data = _data("AAPL")
    b = session.broker
    orders = [
        b.buy(None, data, 0.5),
        b.buy(None, data, 1, price=90.0, exectype=Order.Limit),
        b.sell(None, data, 1, price=80.0, exectype=Order.Stop),
        b.sell(None, data, 1, price=80.0, plimit=79.0, exectype=Order.StopLimit),
    ]
    assert session.pump(lambda: all(o.status == Order.Accepted for o in orders))
    sent = {o["type"]: o for o in _orders_with(fake)}
    assert float(sent["market"]["qty"]) == 0.5
    assert float(sent["limit"]["limit_price"]) == 90.0
    assert float(sent["stop"]["stop_price"]) == 80.0
    assert float(sent["stop_limit"]["limit_price"]) == 79.0


def test_bracket_becomes_one_alpaca_bracket_and_exits_notify(
    session: Session, fake: AlpacaFake
) -> None:
    data = _data("AAPL")
    b = session.broker
    parent = b.buy(None, data, 2, transmit=False)
    stop = b.sell(None, data, 2, price=90.0, exectype=Order.Stop, parent=parent, transmit=False)
    take = b.sell(None, data, 2, price=110.0, exectype=Order.Limit, parent=parent, transmit=True)
    assert session.pump(lambda: parent.status == Order.Completed)
    top = [o for o in fake.orders() if o["order_class"] == "bracket" and o["side"] == "buy"]
    assert len(top) == 1 and float(top[0]["qty"]) == 2
    fake.set_price("AAPL", 111.0)
    assert session.pump(lambda: not take.alive() and not stop.alive())
    assert take.status == Order.Completed and stop.status == Order.Canceled
    assert fake.position_qty("AAPL") == 0 == session.broker.getposition(data).size


# -- submit faults: never a duplicate ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    ["504 after processing", "504 before processing", "reset after processing", "timeout"],
)
def test_ambiguous_submit_reaches_the_fake_exactly_once(
    session: Session, fake: AlpacaFake, fault: str
) -> None:
    if fault == "504 after processing":
        fake.fail_next("POST", "/v2/orders", 504, after_processing=True)
    elif fault == "504 before processing":
        fake.fail_next("POST", "/v2/orders", 504)
    elif fault == "reset after processing":
        fake.drop_connection_next("POST", "/v2/orders", after_processing=True)
    else:
        fake.delay_next("POST", "/v2/orders", 1.5)  # read timeout is 1 s
    order = session.broker.buy(None, _data("AAPL"), 2)
    assert session.pump(lambda: not order.alive())
    assert len(_orders_with(fake)) == 1, fake.orders()
    assert order.status == Order.Completed and fake.position_qty("AAPL") == 2
    assert fake.hits("GET", "/v2/orders:by_client_order_id") >= 1


def test_kill_after_submit_before_journal_update_is_adopted_on_restart(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    path = tmp_path / "journal.sqlite"
    cfg = _config(fake, path)
    intent = OrderIntent(strategy="test", symbol="AAPL", bar_time=BAR, side="buy", qty=4, leg="0")
    with Journal(path) as journal:  # the first process: journaled, sent, then killed
        rec = journal.record_intent(intent)
        TradingAPI(cfg).submit_idempotent(OrderSpec(client_order_id=rec.client_order_id,
                                                    symbol="AAPL", side="buy", qty=4))  # fmt: skip
        assert journal.get(rec.client_order_id).status == "pending_submit"  # type: ignore[union-attr]
    store = AlpacaStore(cfg)
    s = Session(store)
    s.broker.start()  # the restart: the lookup adopts the order, positions agree
    try:
        again = s.broker.buy(None, _data("AAPL"), 4)  # the strategy replays the same bar
        assert s.pump(lambda: not again.alive())
        assert len(_orders_with(fake)) == 1
        assert again.status == Order.Completed and s.broker.getposition(_data("AAPL")).size == 4
        assert store.journal.get(rec.client_order_id).status == "filled"  # type: ignore[union-attr]
    finally:
        s.broker.stop()
        store.journal.close()


def test_rejected_submit_carries_alpacas_message(session: Session, fake: AlpacaFake) -> None:
    order = session.broker.buy(None, _data("AAPL"), 10_000)  # $1M > $100k buying power
    assert order.status == Order.Rejected
    assert "insufficient buying power" in order.info["reject_reason"]
    rows = session.store.journal.unknown_orders()
    assert rows == [] and fake.orders() == []
    session.pump(lambda: True)
    assert session.statuses(order) == ["Submitted", "Rejected"]


# -- partial fills, stream gaps ---------------------------------------------------------------------


def test_partial_fill_then_cancel_positions_match(session: Session, fake: AlpacaFake) -> None:
    fake.auto_fill = False
    data = _data("AAPL")
    order = session.broker.buy(None, data, 5, price=99.0, exectype=Order.Limit)
    assert session.pump(lambda: order.status == Order.Accepted)
    alpaca_id = _orders_with(fake)[0]["id"]
    fake.fill(alpaca_id, qty=2, price=99.0)
    assert session.pump(lambda: order.status == Order.Partial)
    session.broker.cancel(order)
    assert session.pump(lambda: order.status == Order.Canceled)
    assert order.executed.size == 2
    assert session.broker.getposition(data).size == 2 == fake.position_qty("AAPL")
    assert session.store.journal.position_from_fills("AAPL").qty == 2


def test_stream_drop_with_fills_in_the_gap_is_reconciled(
    session: Session, fake: AlpacaFake
) -> None:
    fake.auto_fill = False
    data = _data("AAPL")
    order = session.broker.buy(None, data, 3, price=99.0, exectype=Order.Limit)
    assert session.pump(lambda: order.status == Order.Accepted)
    before = session.store.updates.connections
    fake.close_streams()
    fake.fill(_orders_with(fake)[0]["id"], qty=3, price=98.5)  # nobody listens: lost event
    assert session.pump(lambda: session.store.updates.connections > before, timeout=10)
    assert session.pump(lambda: not order.alive())
    assert order.status == Order.Completed and order.executed.price == pytest.approx(98.5)
    assert session.broker.getposition(data).size == 3 == fake.position_qty("AAPL")
    fills = session.store.journal.fills(symbol="AAPL")
    assert [f.qty for f in fills] == [3] and fills[0].price == pytest.approx(98.5)
    session.broker.resync()  # a second reconciliation adds nothing
    assert len(session.store.journal.fills(symbol="AAPL")) == 1


# -- rate limits and read faults ---------------------------------------------------------------------


def test_429_storm_waits_for_the_reset_and_loses_nothing(
    session: Session, fake: AlpacaFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime(monkeypatch, mark=lambda: len(fake.requests))
    clock.install(session.store.api)
    reset = str(int(clock.time()) + 3)  # the reset is 3 s away on the client's clock
    fake.fail_next("POST", "/v2/orders", 429, times=2, headers={"X-RateLimit-Reset": reset})
    fake.fail_next("GET", "/v2/orders", 429, times=2, headers={"X-RateLimit-Reset": reset})
    data = _data("AAPL")
    orders = [session.broker.buy(None, data, 1) for _ in range(3)]
    assert session.pump(lambda: all(not o.alive() for o in orders))
    assert all(o.status == Order.Completed for o in orders)
    assert len(_orders_with(fake)) == 3 and fake.position_qty("AAPL") == 3
    # it waited for the reset instead of hammering: the first 429 held every call for the 3 s
    # to the reset, with no request in between; the later ones found the reset already past
    # and still waited the 0.5 s minimum
    first, *later = [(s, n) for s, n in clock.sleeps if s >= 0.5]
    posts = [i for i, r in enumerate(fake.requests) if r.method == "POST"]
    assert first == (pytest.approx(3.0), posts[0] + 1)  # right after the first (429) POST
    assert all(s == pytest.approx(0.5) for s, _ in later)
    assert clock.now - 1_000.0 >= 3.0


def test_client_side_limiter_keeps_under_the_rate(
    fake: AlpacaFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime(monkeypatch)
    api = clock.install(TradingAPI(_config(fake, tmp_path / "j.sqlite",
                                           max_requests_per_minute=10, rate_window=0.5)))  # fmt: skip
    times: list[float] = []  # the client's clock at each request it sends (a spy)
    send = api.client._session.request
    monkeypatch.setattr(api.client._session, "request",
                        lambda *a, **kw: times.append(clock.now) or send(*a, **kw))  # fmt: skip
    start = len(fake.requests)
    for _ in range(25):
        api.clock()
    assert len(times) == 25 and len(fake.requests) - start == 25
    in_window = max(sum(1 for u in times if 0 <= u - t < 0.5) for t in times)
    assert in_window == 10  # never more than 10 in any 0.5 s, and the limit is used
    assert times[-1] - times[0] == pytest.approx(1.0, abs=0.01)  # 25 calls: two full windows


def test_5xx_on_reads_backs_off_then_gives_a_typed_error(
    fake: AlpacaFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = lambda: len([r for r in fake.requests if r.path == "/v2/positions"])  # noqa: E731
    clock = FakeTime(monkeypatch, mark=reads)
    api = clock.install(TradingAPI(_config(fake, tmp_path / "j.sqlite")))  # 3 retries
    fake.fail_next("GET", "/v2/positions", 503, times=2)
    assert api.positions() == []
    assert [n for _, n in clock.sleeps] == [1, 2]  # a backoff after each failed attempt
    fake.fail_next("GET", "/v2/positions", 500, times=10)
    with pytest.raises(BrokerUnavailable, match="no answer after 4 attempts"):
        api.positions()
    assert reads() == 3 + 4
    backoffs = clock.sleeps[2:]
    assert [n for _, n in backoffs] == [4, 5, 6]  # between the 4 attempts, none after the last
    # jittered under caps that double from backoff_initial (0.01) up to backoff_max (0.05)
    assert all(0 <= s <= cap for (s, _), cap in zip(backoffs, (0.01, 0.02, 0.04), strict=True))


def test_every_call_has_timeouts(fake: AlpacaFake, tmp_path: Path) -> None:
    api = TradingAPI(_config(fake, tmp_path / "j.sqlite", retries=0))
    adapter = api.client._session.get_adapter(fake.url)
    assert adapter._timeout == (1.0, 1.0)  # type: ignore[attr-defined]


# -- positions and mode ------------------------------------------------------------------------------


def test_position_mismatch_refuses_to_start_and_adopt_starts(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    cfg = _config(fake, tmp_path / "journal.sqlite")
    TradingAPI(cfg).submit_idempotent(OrderSpec(client_order_id="by-hand-1", symbol="MSFT",
                                                side="buy", qty=7))  # fmt: skip
    store = AlpacaStore(cfg)
    with pytest.raises(PositionMismatch, match="MSFT: Alpaca 7, journal 0"):
        store.getbroker().start()
    assert not store.updates.connected
    store.journal.close()
    adopted = AlpacaStore(cfg, adopt_positions=True)
    s = Session(adopted)
    s.broker.start()
    try:
        assert s.broker.getposition(_data("MSFT")).size == 7
        assert s.broker.halted is None
    finally:
        s.broker.stop()
        adopted.journal.close()


def test_periodic_position_check_halts_on_a_mismatch(session: Session, fake: AlpacaFake) -> None:
    session.store.updates.stop()  # an outage: an order placed elsewhere fills unseen
    TradingAPI(session.store.config).submit_idempotent(
        OrderSpec(client_order_id="elsewhere-1", symbol="MSFT", side="buy", qty=1)
    )
    session.broker.check_positions()
    assert session.broker.halted and "MSFT" in session.broker.halted
    order = session.broker.buy(None, _data("AAPL"), 1)
    assert order.status == Order.Rejected and "halted" in order.info["reject_reason"]
    assert _orders_with(fake) == []


def test_mode_checks(fake: AlpacaFake, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="explicit confirmation"):
        _config(fake, tmp_path / "j.sqlite", paper=False)
    live = AlpacaStore(_config(fake, tmp_path / "j.sqlite", paper=False, live_confirmed=True))
    with pytest.raises(ConfigError, match="paper account but the store is configured for live"):
        live.start()
    live.journal.close()
    with AlpacaFake(FakeConfig(account_number="3FAKE00001")) as real:
        paper = AlpacaStore(_config(real, tmp_path / "k.sqlite"))
        with pytest.raises(ConfigError, match="live account but the store is configured for paper"):
            paper.start()
        paper.journal.close()
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID"):
        AlpacaConfig.from_env({})


def test_bad_keys_are_refused_clearly(fake: AlpacaFake, tmp_path: Path) -> None:
    store = AlpacaStore(_config(fake, tmp_path / "j.sqlite", secret_key="wrong-secret-123"))
    with pytest.raises(ConfigError, match="refused the keys") as err:
        store.start()
    assert "wrong-secret-123" not in str(err.value)
    store.journal.close()


def test_keys_are_never_logged(
    fake: AlpacaFake, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = _config(fake, tmp_path / "journal.sqlite")
    store = AlpacaStore(cfg)
    s = Session(store)
    s.broker.start()
    fake.fail_next("POST", "/v2/orders", 504, after_processing=True)
    order = s.broker.buy(None, _data("AAPL"), 1)
    s.pump(lambda: not order.alive())
    text = caplog.text + repr(cfg) + repr(store) + str(cfg)
    s.broker.stop()
    store.journal.close()
    assert KEY_ID not in text and SECRET not in text
    assert "***" in repr(cfg)


class _EndlessReceive:
    """``asyncio`` for alpaca-py's trading stream, whose receive waits no longer time out."""

    def __getattr__(self, name: str) -> Any:
        import asyncio

        return getattr(asyncio, name)

    @staticmethod
    def wait_for(awaitable: Any, timeout: float | None) -> Any:
        import asyncio

        if "recv" in getattr(awaitable, "__qualname__", ""):
            timeout = None
        return asyncio.wait_for(awaitable, timeout)


def test_stop_leaves_no_thread(
    fake: AlpacaFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alpaca-py's stream looks at its stop flag only between 5 s receive timeouts. With those
    # receives endless, only a stop that closes the socket itself ends the stream's thread
    # (stop joins it for at most 5 s), whatever the speed of the machine.
    import alpaca.trading.stream

    monkeypatch.setattr(alpaca.trading.stream, "asyncio", _EndlessReceive())
    before = set(threading.enumerate())
    store = AlpacaStore(_config(fake, tmp_path / "journal.sqlite"))
    store.getbroker().start()
    (stream,) = [t for t in threading.enumerate() if t.name == "alpaca-trade-updates"]
    store.getbroker().stop()
    store.journal.close()
    assert not stream.is_alive()
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, leaked


def test_expiry_and_an_external_cancel_notify_the_strategy(
    session: Session, fake: AlpacaFake
) -> None:
    fake.auto_fill = False
    data = _data("AAPL")
    day = session.broker.buy(None, data, 1, price=90.0, exectype=Order.Limit)
    other = session.broker.buy(None, data, 1, price=91.0, exectype=Order.Limit)
    assert session.pump(lambda: other.status == Order.Accepted)
    ids = {o["limit_price"]: o["id"] for o in _orders_with(fake)}
    fake.expire(ids["90"])  # the end of its time in force
    TradingAPI(session.store.config).cancel(ids["91"])  # canceled from the dashboard, say
    assert session.pump(lambda: not day.alive() and not other.alive())
    assert day.status == Order.Expired and other.status == Order.Canceled
    assert session.statuses(day) == ["Submitted", "Accepted", "Expired"]
    journal = session.store.journal
    assert sorted(r.status for r in journal.orders()) == ["canceled", "expired"]


def test_crypto_fractional_order_and_its_position(session: Session, fake: AlpacaFake) -> None:
    fake.set_price("BTC/USD", 60_000.0)
    data = _data("BTC/USD", price=60_000.0)
    order = session.broker.buy(None, data, 0.015)
    assert session.pump(lambda: not order.alive())
    sent = _orders_with(fake)[0]
    assert sent["symbol"] == "BTC/USD" and sent["time_in_force"] == "gtc"
    assert float(sent["qty"]) == 0.015 and order.status == Order.Completed
    session.broker.check_positions()  # Alpaca reports BTCUSD: the same position
    assert session.broker.halted is None
    assert session.broker.getposition(data).size == pytest.approx(0.015)


def test_alpaca_unreachable_halts_new_orders_then_recovers(
    session: Session, fake: AlpacaFake
) -> None:
    """A network outage during reconciliation never crashes the strategy's next(): orders are
    refused with the reason until Alpaca answers again."""
    data = _data("AAPL")
    fake.fail_next("GET", "/v2/orders", 503, times=100)  # every read of the orders fails
    session.broker.check_positions()  # the periodic check meets the outage: no exception
    assert session.broker.halted and "unreachable" in session.broker.halted
    refused = session.broker.buy(None, data, 1)
    assert refused.status == Order.Rejected and "unreachable" in refused.info["reject_reason"]
    assert session.broker.getvalue() == pytest.approx(100_000.0)  # the last account read
    fake.clear_faults()  # the outage ends
    session.broker.p.unreachable_retry = 0.2  # reconciliation is retried this often (5 s)
    assert session.pump(lambda: session.broker.halted is None)
    order = session.broker.buy(None, data, 1)
    assert session.pump(lambda: not order.alive()) and order.status == Order.Completed
    assert len(_orders_with(fake)) == 1


def test_unsupported_or_empty_orders_are_rejected_not_raised(session: Session) -> None:
    data = _data("AAPL")
    trail = session.broker.sell(None, data, 1, exectype=Order.StopTrail, trailpercent=0.02)
    empty = session.broker.buy(None, data, 0)
    assert trail.status == Order.Rejected and "not supported" in trail.info["reject_reason"]
    assert empty.status == Order.Rejected and "not > 0" in empty.info["reject_reason"]


def test_a_stream_fill_after_reconciliation_filled_its_gap_is_not_counted_twice(
    session: Session, fake: AlpacaFake
) -> None:
    """The REST read sees a fill before the stream delivers it (a stall, not a drop): the gap
    row reconciliation wrote gives way to the real execution when it arrives."""
    fake.auto_fill = False
    data = _data("AAPL")
    order = session.broker.buy(None, data, 10, price=99.0, exectype=Order.Limit)
    assert session.pump(lambda: order.status == Order.Accepted)
    session.store.updates.stop()  # the stream stalls
    fake.fill(_orders_with(fake)[0]["id"], qty=4, price=98.0)
    fake.fill(_orders_with(fake)[0]["id"], qty=6, price=97.0)
    session.broker.check_positions()  # REST: filled 10; the journal fills the gap
    journal = session.store.journal
    assert [f.execution_id.startswith("gap-") for f in journal.fills()] == [True]
    late = [e for e in fake.events if e["event"] in ("partial_fill", "fill")]
    journal.apply_update(late[0])  # the stalled stream delivers the first execution
    fills = journal.fills()
    assert sorted(f.qty for f in fills) == [4, 6] and journal.position_from_fills("AAPL").qty == 10
    gap = next(f for f in fills if f.execution_id.startswith("gap-"))
    assert gap.price == pytest.approx(97.0)  # what the real fills leave: 6 at 97
    journal.apply_update(late[1])
    assert [f.execution_id.startswith("gap-") for f in journal.fills()] == [False, False]
    session.broker.check_positions()
    assert session.broker.halted is None and journal.position_from_fills("AAPL").qty == 10
    assert order.status == Order.Completed and order.executed.size == 10


def test_updates_drained_in_a_bar_reach_the_strategy_in_that_bar(
    session: Session, fake: AlpacaFake
) -> None:
    """Cerebro reads notifications up to the broker's boundary after ``broker.next()``: a fill
    that arrived before this bar must be before the boundary, not a bar late."""
    b = session.broker
    b.next()
    while b.notifs:
        b.get_notification()
    order = b.buy(None, _data("AAPL"), 3)
    deadline = time.monotonic() + 5
    while b.updates.qsize() < 2 and time.monotonic() < deadline:  # new + fill from the stream
        time.sleep(0.01)
    b.next()
    seen = []
    while (n := b.get_notification()) is not None:  # what Cerebro delivers this bar
        seen.append(n.getstatusname())
    assert seen == ["Submitted", "Accepted", "Completed"] and not order.alive()


def test_crypto_fees_taken_in_the_coin_do_not_halt_and_are_kept(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    cfg = _config(fake, tmp_path / "journal.sqlite")
    fake.set_price("BTC/USD", 60_000.0)
    s = Session(AlpacaStore(cfg))
    s.broker.start()
    order = s.broker.buy(None, _data("BTC/USD", 60_000.0), 1.0)
    assert s.pump(lambda: not order.alive())
    fake.charge_crypto_fee("BTC/USD", 0.0025)  # Alpaca's 25 bps, out of the coin received
    s.broker.check_positions()
    assert s.broker.halted is None
    assert s.broker.getposition(_data("BTC/USD")).size == pytest.approx(0.9975)
    s.broker.stop()
    s.store.journal.close()
    fake.charge_crypto_fee("BTC/USD", 0.5)  # not a fee: half the coin gone
    again = AlpacaStore(cfg)  # the fee baseline was kept with the journal
    assert again.baseline == {"BTCUSD": pytest.approx(-0.0025)}
    with pytest.raises(PositionMismatch, match="BTCUSD: Alpaca 0.4975, journal 0.9975"):
        again.getbroker().start()
    again.journal.close()


def test_an_adopted_baseline_survives_a_restart(fake: AlpacaFake, tmp_path: Path) -> None:
    cfg = _config(fake, tmp_path / "journal.sqlite")
    TradingAPI(cfg).submit_idempotent(OrderSpec(client_order_id="by-hand-2", symbol="MSFT",
                                                side="buy", qty=5))  # fmt: skip
    first = AlpacaStore(cfg, adopt_positions=True)
    first.getbroker().start()
    first.getbroker().stop()
    first.journal.close()
    second = AlpacaStore(cfg)  # no --adopt-positions this time
    s = Session(second)
    s.broker.start()
    try:
        assert s.broker.halted is None and s.broker.getposition(_data("MSFT")).size == 5
    finally:
        s.broker.stop()
        second.journal.close()


def test_canceling_a_bracket_exit_reaches_alpaca(session: Session, fake: AlpacaFake) -> None:
    data = _data("AAPL")
    b = session.broker
    parent = b.buy(None, data, 2, transmit=False)
    stop = b.sell(None, data, 2, price=90.0, exectype=Order.Stop, parent=parent, transmit=False)
    b.sell(None, data, 2, price=110.0, exectype=Order.Limit, parent=parent, transmit=True)
    assert session.pump(lambda: parent.status == Order.Completed)
    b.cancel(stop)  # the exit leg's own id, from the bracket's answer
    assert session.pump(lambda: not stop.alive())
    assert stop.status == Order.Canceled
    legs = {o["type"]: o["status"] for o in fake.orders() if o["side"] == "sell"}
    assert legs["stop"] == "canceled"


def test_a_bad_order_field_is_an_error_not_a_lost_answer(fake: AlpacaFake, tmp_path: Path) -> None:
    api = TradingAPI(_config(fake, tmp_path / "j.sqlite"))
    spec = OrderSpec(client_order_id="bad-1", symbol="AAPL", side="buy", qty=float("nan"))
    with pytest.raises(ConfigError, match="finite number"):
        api.submit_idempotent(spec)
    assert fake.orders() == [] and fake.hits("GET", "/v2/orders:by_client_order_id") == 0
