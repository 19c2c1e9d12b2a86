"""The synthetic index, live (issue "operating it"): stored bars replayed through the live path
give the stored index exactly; a late constituent is carried at its last price and flagged
by the stated rule; an index that cannot be continued is refused in one line."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from feeds.index import IndexConfig, build_from_store, build_index
from feeds.live_index import LiveIndex
from feeds.membership import MemberSpan
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore


class ReplayHub:
    """The hub protocol over recorded bars: history from them, live bars pushed by the test."""

    def __init__(self, frames: dict[str, pd.DataFrame]) -> None:
        self.frames = frames
        self.sinks: dict[str, queue.Queue[pd.DataFrame]] = {}
        self.asked: list[tuple[str, pd.Timestamp, pd.Timestamp]] = []

    def history(self, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp):
        self.asked.append((symbol, start, end))
        f = self.frames[symbol]
        return f[(f.index >= start) & (f.index < end)]

    def subscribe(self, symbol: str, timeframe: str, sink: queue.Queue[pd.DataFrame]) -> None:
        self.sinks[symbol] = sink

    def push(self, symbol: str, t: pd.Timestamp) -> None:
        self.sinks[symbol].put(self.frames[symbol].loc[[t]])


CONFIGS = {
    "equal-monthly": IndexConfig(name="IDX", method="equal", constituents=("AAA", "BBB", "CCC"),
                                 rebalance="M"),
    "price": IndexConfig(name="IDX", method="price", constituents=("AAA", "BBB", "CCC")),
    "fixed": IndexConfig(name="IDX", method="fixed", constituents=("AAA", "BBB", "CCC"),
                         weights={"AAA": 0.5, "BBB": 0.3, "CCC": 0.2}, rebalance="Q"),
    "spans": IndexConfig(name="IDX", method="equal", spans=(
        MemberSpan(symbol="AAA", start="2015-01-01"),
        MemberSpan(symbol="BBB", start="2015-01-01", end="2015-09-01"),
        MemberSpan(symbol="CCC", start="2015-06-01"),
    )),
}  # fmt: skip


def _market(timeframe: str = "1Day", bars: int = 320) -> dict[str, pd.DataFrame]:
    cfg = SyntheticConfig(n_symbols=3, n_bars=bars, seed=7, timeframe=timeframe)
    market = generate_market(cfg)
    return dict(zip(("AAA", "BBB", "CCC"), market.values(), strict=True))


def _store(root: Path, market: dict[str, pd.DataFrame], upto: int, timeframe: str) -> ParquetStore:
    """A store holding each constituent's first ``upto`` bars (renamed AAA, BBB, CCC)."""
    store = ParquetStore(root)
    for sym, frame in market.items():
        part = frame.iloc[:upto].copy()
        part.attrs = {**frame.attrs, "symbol": sym}
        store.write(part, merge=False)
    return store


def _renamed(market: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    out = {}
    for sym, frame in market.items():
        f = frame.copy()
        f.attrs = {**frame.attrs, "symbol": sym}
        out[sym] = f
    return out


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_stored_bars_replayed_live_give_the_stored_index_exactly(tmp_path: Path, kind: str) -> None:
    """The index is built and stored from the first 250 bars; the live path backfills 30 more
    from the hub and takes the last 40 one bar at a time from the stream: bar for bar the index
    built in one go over all 320."""
    cfg, market = CONFIGS[kind], _renamed(_market())
    whole = build_index(market, cfg, "1Day").frame
    store = _store(tmp_path, market, 250, "1Day")
    build_from_store(store, cfg, "1Day")
    hub = ReplayHub(market)
    live = LiveIndex.from_store(store, "IDX", "1Day", hub, deadline_s=5.0)
    times = whole.index
    live.start(now=times[280])  # the session starts: bars 250..279 come from history
    assert {s for s, *_ in hub.asked} == {"AAA", "BBB", "CCC"}
    for t in times[280:]:
        for sym in market:
            if t in market[sym].index:
                hub.push(sym, t)
        got = live.until(t)
        assert got.index[-1] == t
    pd.testing.assert_frame_equal(live.frame, whole, check_exact=True, check_freq=False,
                                  check_like=False)  # fmt: skip
    assert live.flags == {} and live.dropped == 0


def test_a_late_constituent_is_carried_at_its_last_price_and_flagged(tmp_path: Path) -> None:
    """Minute bars: CCC's bar of t never comes within the deadline. The bar closes with CCC
    flat at its last close (as the batch build carries a missing bar), flagged; CCC's late bar
    is dropped, never rewriting the bar given out; the next bar continues from there."""
    cfg = CONFIGS["equal-monthly"]
    market = _renamed(_market("1m", 400))
    store = _store(tmp_path, market, 300, "1m")
    build_from_store(store, cfg, "1m")
    hub = ReplayHub(market)
    now = [0.0]
    live = LiveIndex.from_store(store, "IDX", "1m", hub, deadline_s=2.0, clock=lambda: now[0])
    times = market["AAA"].index
    live.start(now=times[350])
    t, nxt = times[350], times[351]
    hub.push("AAA", t)
    hub.push("BBB", t)
    assert live.poll() == []  # waiting for CCC
    now[0] += 2.5  # past the deadline
    assert live.poll() == [t]
    assert live.flags == {t: ("CCC",)}
    last_close = market["CCC"]["close"].iloc[349]
    assert live.rows["CCC"].loc[t].tolist() == [last_close] * 4 + [0.0]
    given = live.frame.copy()
    hub.push("CCC", t)  # CCC's bar of t arrives late
    for sym in market:
        hub.push(sym, nxt)
    live.until(nxt)
    assert live.dropped == 1
    pd.testing.assert_frame_equal(live.frame.loc[:t], given, check_exact=True, check_freq=False)
    # the batch build of the same bars (CCC's bar of t missing, carried) gives the same index
    batch = {s: f.loc[:nxt] for s, f in market.items()}
    batch["CCC"] = batch["CCC"].drop(index=t)
    expected = build_index(batch, cfg, "1m").frame
    pd.testing.assert_frame_equal(live.frame, expected, check_exact=False, rtol=1e-12,
                                  check_freq=False)  # fmt: skip


def test_a_reader_waits_for_the_bar_then_carries_every_missing_member(tmp_path: Path) -> None:
    """No constituent bar of t arrives at all: a reader asking for t gets it after the
    deadline, every member carried and flagged (the index flat)."""
    cfg = CONFIGS["price"]
    market = _renamed(_market())
    store = _store(tmp_path, market, 300, "1Day")
    build_from_store(store, cfg, "1Day")
    live = LiveIndex.from_store(store, "IDX", "1Day", ReplayHub(market), deadline_s=0.05)
    live.start(now=market["AAA"].index[300])
    t = market["AAA"].index[300]
    frame = live.until(t)
    assert frame.index[-1] == t and live.flags[t] == ("AAA", "BBB", "CCC")
    assert frame["close"].iloc[-1] == frame["close"].iloc[-2]


def test_an_index_that_cannot_be_continued_is_refused(tmp_path: Path) -> None:
    cfg = CONFIGS["price"]
    market = _renamed(_market())
    store = _store(tmp_path, market, 300, "1Day")
    _, path = build_from_store(store, cfg, "1Day")
    hub = ReplayHub(market)
    # its constituents changed since it was built
    changed = store.read("AAA", "1Day")
    changed[["open", "high", "low", "close"]] *= 1.01
    store.write(changed, merge=False)
    with pytest.raises(DataError, match="no longer give the stored index.*btml index build IDX"):
        LiveIndex.from_store(store, "IDX", "1Day", hub)
    # built before the index kept its settings
    old = store.read("IDX", "1Day")
    old.attrs.pop("config")
    store.write(old, merge=False)
    with pytest.raises(DataError, match="stored without its build settings.*btml index build"):
        LiveIndex.from_store(store, "IDX", "1Day", hub)
    assert json.loads(store.read("IDX", "1Day").attrs.get("config", "null")) is None
    assert np.isfinite(store.read("IDX", "1Day")["close"]).all()


def test_a_session_for_a_model_whose_index_is_not_stored_at_its_bars_is_refused(
    tmp_path: Path,
) -> None:
    """``btml trade`` plans the live index before anything is sent: an index stored only at
    another bar size is refused with the command that builds it."""
    from dataclasses import replace

    from brokers.alpaca.config import AlpacaConfig
    from core.errors import ConfigError
    from mlmodels.pipeline import register_untrained
    from mlmodels.registry import CARD_FILE, ModelRegistry
    from workflows.trading import plan_session

    store = _store(tmp_path, _renamed(_market()), 300, "1Day")
    build_from_store(store, CONFIGS["price"], "1Day")
    registry = ModelRegistry(tmp_path / "models")
    card = register_untrained(registry, "tiny", "m", features=["ret_1", "ret_5"], window=16)
    indexed = replace(card, index="IDX", timeframe="1m")  # as if trained reading IDX
    (registry.path(card.ref) / CARD_FILE).write_text(indexed.to_json())
    cfg = AlpacaConfig(key_id="k" * 20, secret_key="s" * 40)
    with pytest.raises(ConfigError, match=r"reads index IDX, which is not stored at 1m .*"
                                          r"btml index build IDX --timeframe 1m"):  # fmt: skip
        plan_session(tmp_path, card.ref, ["AAA"], cfg, timeframe="1m")
    plan = plan_session(tmp_path, card.ref, ["AAA"], cfg, timeframe="1Day")
    assert plan.card.index == "IDX"
