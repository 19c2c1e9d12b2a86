"""Live-broker benchmark against the loopback Alpaca (real alpaca-py clients), in one run.

Run: .venv/bin/python benchmarks/bench_alpaca.py [--rounds 200] [--orders 1000]

The loopback Alpaca is ``brokers.alpaca.sim.trading.AlpacaFake`` (Trading API and
``trade_updates`` on 127.0.0.1).

* Order round trip, interleaved round-robin: the bare alpaca-py ``submit_order`` (no journal,
  no limiter) against ``AlpacaBroker.buy`` (journal intent -> guarded submit -> journal answer
  -> Accepted notification) and, through the ``trade_updates`` stream, buy -> Completed.
  p50/p99 and the ratio broker / bare SDK.
* Reconciliation of N journaled orders (all settled, the steady state after a restart), and
  of 100 orders of unknown fate (each needs a lookup by ``client_order_id``; at Alpaca's 200
  requests/min this bounds a restart after a crash to about N/190 minutes, so the figure here
  is with the limiter opened to the fake's speed).

Prints a table; writes nothing. Record the figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
from alpaca.trading.client import TradingClient
from alpaca.trading.requests import MarketOrderRequest

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.journal import Journal, OrderIntent
from brokers.alpaca.reconcile import reconcile
from brokers.alpaca.rest import TradingAPI
from brokers.alpaca.sim.trading import KEY_ID, SECRET, AlpacaFake, FakeConfig
from brokers.alpaca.store import AlpacaStore
from feeds.btfeeds import StoreData


def _config(fake: AlpacaFake, journal: Path) -> AlpacaConfig:
    return AlpacaConfig(
        key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url,
        trading_stream_url=fake.stream_url, journal=journal, strategy="bench",
        max_requests_per_minute=200, rate_window=0.001, position_check_every=3600.0,
    )  # fmt: skip


def _data(i: int) -> Any:
    when = pd.Timestamp("2026-03-02 15:00", tz="UTC") + pd.Timedelta(minutes=i)
    idx = pd.DatetimeIndex([when], name="datetime")
    frame = pd.DataFrame({c: [100.0] for c in ("open", "high", "low", "close", "volume")},
                         index=idx)  # fmt: skip
    data = StoreData(dataname=frame, name="AAPL")
    bt.Cerebro().adddata(data)
    data._start()
    data.next()
    return data


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def bench_round_trip(rounds: int, tmp: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"sdk submit": [], "broker accepted": [], "broker filled": []}
    with AlpacaFake(FakeConfig(cash=1e9)) as fake:
        fake.set_price("AAPL", 100.0)
        sdk = TradingClient(KEY_ID, SECRET, paper=True, url_override=fake.url)
        store = AlpacaStore(_config(fake, tmp / "rt.sqlite"))
        broker = store.getbroker()
        broker.start()
        try:
            for i in range(rounds):
                t0 = time.perf_counter()
                sdk.submit_order(MarketOrderRequest(symbol="AAPL", qty=1, side="buy",
                                                    time_in_force="day"))  # fmt: skip
                out["sdk submit"].append(time.perf_counter() - t0)
                data = _data(i)
                t0 = time.perf_counter()
                order = broker.buy(None, data, 1)
                out["broker accepted"].append(time.perf_counter() - t0)
                while order.alive():
                    broker.next()
                    time.sleep(0.0002)
                out["broker filled"].append(time.perf_counter() - t0)
        finally:
            broker.stop()
            store.journal.close()
    return out


def bench_reconcile(n: int, tmp: Path) -> tuple[float, float, int]:
    with AlpacaFake(FakeConfig(cash=1e9)) as fake:
        fake.set_price("AAPL", 100.0)
        cfg = _config(fake, tmp / "rec.sqlite")
        api = TradingAPI(cfg)
        with Journal(cfg.journal) as journal:
            for i in range(n):
                when = pd.Timestamp("2026-03-02 15:00", tz="UTC") + pd.Timedelta(minutes=i)
                rec = journal.record_intent(OrderIntent(strategy="bench", symbol="AAPL",
                                                        bar_time=when, side="buy", qty=1))  # fmt: skip
                body, _ = api.submit_idempotent(_spec(rec.client_order_id))
                journal.mark_sent(rec.client_order_id, body)
                for e in [e for e in fake.events if e["order"]["id"] == body["id"]]:
                    journal.apply_update(e)
            t0 = time.perf_counter()
            reconcile(api, journal)
            settled = time.perf_counter() - t0
            unknown = []
            for i in range(100):
                when = pd.Timestamp("2027-01-04 15:00", tz="UTC") + pd.Timedelta(minutes=i)
                rec = journal.record_intent(OrderIntent(strategy="bench", symbol="AAPL",
                                                        bar_time=when, side="buy", qty=1))  # fmt: skip
                api.submit_idempotent(_spec(rec.client_order_id))  # sent; the answer "lost"
                unknown.append(rec.client_order_id)
            t0 = time.perf_counter()
            report = reconcile(api, journal)
            lookups = time.perf_counter() - t0
    return settled, lookups, len(report.adopted)


def _spec(coid: str) -> Any:
    from brokers.alpaca.rest import OrderSpec

    return OrderSpec(client_order_id=coid, symbol="AAPL", side="buy", qty=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--orders", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rt = bench_round_trip(args.rounds, Path(tmp))
        settled, lookups, adopted = bench_reconcile(args.orders, Path(tmp))
    base = statistics.median(rt["sdk submit"])
    print(f"order round trip, {args.rounds} rounds interleaved (ms)")
    print("| path | p50 | p99 | p50 / bare SDK |")
    print("|---|---|---|---|")
    for name, xs in rt.items():
        p50 = statistics.median(xs)
        print(f"| {name} | {p50 * 1e3:.2f} | {_pct(xs, 0.99) * 1e3:.2f} | {p50 / base:.2f}x |")
    print()
    print(f"reconcile {args.orders} journaled, settled orders: {settled * 1e3:.0f} ms")
    print(f"reconcile 100 orders of unknown fate (100 lookups, {adopted} adopted): "
          f"{lookups * 1e3:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
