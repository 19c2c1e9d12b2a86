"""A full paper session: the backtested strategy, unchanged, on the live Alpaca stack.

A ``tiny`` model trained on synthetic minute bars (three symbols, no index) is traded by
``workflows.trading.run_live``: ``AlpacaStore`` -> ``AlpacaBroker`` (journal, guarded REST,
``trade_updates``) and ``LiveBars`` over ``AlpacaBarHub`` (backfill over REST, then one
multiplexed stock stream), with ``MLSignalStrategy`` asking the in-process client. A replay
thread plays a day of minute bars (390) into the market-data fake and sets the trading fake's
prices to each bar's close, as the market would. Then: every live bar got a decision, no
order was placed on a backfilled bar, journal and fake agree order by order (none lost, none
twice, none of unknown fate), every journaled order carries the model version and its heads,
and the positions of the broker, the fake and the journal's fills are the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.journal import Journal
from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.dataset import DatasetConfig
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelCard, ModelRegistry
from mlmodels.trainer import TrainConfig
from strategies.audit import decisions_frame
from strategies.risk import RiskConfig
from tests.alpaca_data_fake import AlpacaDataFake
from tests.alpaca_fake import KEY_ID, SECRET, AlpacaFake, FakeConfig
from tests.loopback import LoopbackServer
from workflows.backtest import MLRunConfig
from workflows.trading import run_live

pytestmark = pytest.mark.timeout(300)

SYMBOLS = ("AAPL", "MSFT", "NVDA")
HISTORY, DAY = 1300, 390  # minute bars before the session (training + backfill), the session
SESSION = pd.Timestamp("2026-03-02 14:30", tz="UTC")  # 09:30 New York


@pytest.fixture(scope="module")
def market() -> dict[str, pd.DataFrame]:
    raw = generate_market(
        SyntheticConfig(n_symbols=3, n_bars=HISTORY + DAY, timeframe="1m", seed=11,
                        start=SESSION - pd.Timedelta(minutes=HISTORY), planted_strength=0.3,
                        annual_vol=0.2)
    )  # fmt: skip
    return {s: f for s, f in zip(SYMBOLS, raw.values(), strict=True)}


@pytest.fixture(scope="module")
def model(market: dict[str, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = tmp_path_factory.mktemp("store")
    history = {s: f.iloc[:HISTORY] for s, f in market.items()}
    _, card = train_model(
        history, "tiny", name="paper", registry=ModelRegistry(store / "models"),
        train_cfg=TrainConfig(epochs=2, batch_size=64, patience=2, seed=0, threads=1),
        data_cfg=DatasetConfig(window=16), timeframe="1m",
    )  # fmt: skip
    return store, card


@pytest.fixture
def servers() -> Iterator[tuple[AlpacaFake, AlpacaDataFake, LoopbackServer]]:
    with (
        AlpacaFake(FakeConfig(cash=100_000.0)) as trading,
        AlpacaDataFake(key_id=KEY_ID, secret_key=SECRET) as data,
        LoopbackServer() as rest,
    ):
        data.serve_history(rest)
        yield trading, data, rest
        assert not trading.errors, trading.errors


def _replay(
    market: dict[str, pd.DataFrame],
    trading: AlpacaFake,
    data: AlpacaDataFake,
    done: threading.Event,
    bars: int,
    on_bar: Callable[[int], None] = lambda i: None,
    first: int = HISTORY,
) -> None:
    """Play bars ``first ..`` once every feed listens, a bar every few ms."""
    if not data.wait_subscribed(SYMBOLS, timeout=120):
        return
    time.sleep(0.5)  # the feeds load their backfill after subscribing
    for i in range(first, first + bars):
        on_bar(i - first)
        for s, f in market.items():
            row = f.iloc[i]
            trading.set_price(s, float(row["close"]))
            data.push_bar(s, f.index[i], *(float(row[c]) for c in
                                            ("open", "high", "low", "close", "volume")))  # fmt: skip
        time.sleep(0.01)
    done.set()


def _load_history(
    market: dict[str, pd.DataFrame], trading: AlpacaFake, data: AlpacaDataFake, n: int
) -> None:
    """The history Alpaca holds before the session: the first ``n`` bars of every symbol."""
    for s, f in market.items():
        trading.set_price(s, float(f["close"].iloc[n - 1]))
        for ts, row in f.iloc[:n].iterrows():
            data.push_bar(s, ts, *(float(row[c]) for c in
                                   ("open", "high", "low", "close", "volume")), stream=False)  # fmt: skip


def _session(
    market: dict[str, pd.DataFrame],
    model: tuple[Path, ModelCard],
    servers: tuple[AlpacaFake, AlpacaDataFake, LoopbackServer],
    journal: Path,
    *,
    bars: int = DAY,
    serving: str = "inprocess",
    on_bar: Callable[[int], None] = lambda i: None,
) -> Any:
    """Load the history into the fakes, replay ``bars`` live bars, trade them with run_live."""
    store, card = model
    trading, data, rest = servers
    _load_history(market, trading, data, HISTORY)
    cfg = AlpacaConfig(
        key_id=KEY_ID, secret_key=SECRET, trading_url=trading.url,
        trading_stream_url=trading.stream_url, data_url=rest.base_url,
        stock_stream_url=data.stock_url, journal=journal, strategy="paper",
        position_check_every=5.0,
    )  # fmt: skip
    done = threading.Event()
    replay = threading.Thread(
        target=_replay, args=(market, trading, data, done, bars, on_bar), daemon=True
    )
    replay.start()
    ml = MLRunConfig(min_edge=0.0, horizon_agreement=0, allow_short=True,
                     risk=RiskConfig(max_position=0.2, max_gross=0.6), serving_failure="hold")  # fmt: skip
    strat = run_live(
        store, card.ref, SYMBOLS, cfg, timeframe="1m", serving=serving, ml=ml,
        feed_kwargs={"backfill_start": SESSION - pd.Timedelta(minutes=1000)}, bars=bars,
        log=lambda _: None,
    )  # fmt: skip
    replay.join(30)
    assert done.is_set(), "the replay did not finish"
    return strat


def _journal_agrees(journal: Path, trading: AlpacaFake, card: ModelCard, strat: Any) -> list[Any]:
    """Journal and fake agree order by order and on positions; returns the journaled orders."""
    with Journal(journal) as j:
        ours = {r.client_order_id: r for r in j.orders()}
        fills = j.fills()
        positions = {s: j.position_from_fills(s).qty for s in SYMBOLS}
    theirs = {o["client_order_id"]: o for o in trading.orders()}
    assert ours and set(ours) == set(theirs), "an order was lost or is unknown to one side"
    assert len(theirs) == len(trading.orders())  # no client_order_id twice
    assert all(r.status not in ("pending_submit", "unknown") for r in ours.values())
    assert all(r.model_name == card.name and r.model_version == card.version
               and r.signal and "direction" in r.signal for r in ours.values())  # fmt: skip
    assert all(r.bar_time >= SESSION.to_pydatetime() for r in ours.values())
    assert len({f.execution_id for f in fills}) == len(fills)
    by_name = {d._name: d for d in strat.datas}
    for s in SYMBOLS:
        assert positions[s] == pytest.approx(trading.position_qty(s), abs=1e-6)
        assert strat.broker.getposition(by_name[s]).size == pytest.approx(positions[s], abs=1e-6)
    assert strat.broker.halted is None
    return sorted(ours.values(), key=lambda r: r.created_at)


def test_a_paper_session_of_the_model_over_a_replayed_day(
    market: dict[str, pd.DataFrame],
    model: tuple[Path, ModelCard],
    servers: tuple[AlpacaFake, AlpacaDataFake, LoopbackServer],
    tmp_path: Path,
) -> None:
    strat = _session(market, model, servers, tmp_path / "journal.sqlite")
    card = model[1]
    audit = decisions_frame(strat.audit)
    live = audit[audit["timestamp"] >= SESSION]
    assert len(audit) == len(live), "a decision was taken on a backfilled bar"
    assert len(live) >= 3 * (DAY - 2) and set(live["symbol"]) == set(SYMBOLS)
    assert (live["version"] == card.version).all() and (live["model"] == card.name).all()
    orders = _journal_agrees(tmp_path / "journal.sqlite", servers[0], card, strat)
    assert len(orders) >= 10


def test_model_server_failure_mid_session_holds_without_new_entries(
    market: dict[str, pd.DataFrame],
    model: tuple[Path, ModelCard],
    servers: tuple[AlpacaFake, AlpacaDataFake, LoopbackServer],
    tmp_path: Path,
) -> None:
    """TorchServe dies at bar 60 of 120: the session goes on, no new entries, nothing lost."""
    from serving.server import ServerConfig, stop

    store, card = model
    home = ServerConfig(home=store / "serving")
    killed: list[pd.Timestamp] = []

    def kill_at_60(i: int) -> None:
        if i == 60:
            stop(home)
            killed.append(SESSION + pd.Timedelta(minutes=i))

    strat = _session(market, model, servers, tmp_path / "journal.sqlite", bars=120,
                     serving="torchserve", on_bar=kill_at_60)  # fmt: skip
    assert killed and strat.serving_failures > 0
    audit = decisions_frame(strat.audit)
    failed = audit["reason"].eq("serving-failure")
    first = audit.loc[failed, "timestamp"].min()  # the strategy lags the replay's clock
    assert first <= killed[0]
    before, after = audit[audit["timestamp"] < first], audit[audit["timestamp"] >= first]
    assert len(before) >= 3 * 5 and not failed[before.index].any()
    assert before["model"].notna().all()
    assert len(after) > 60 and failed[after.index].all()  # held to the end, no crash
    assert (after["target"].abs() <= after["weight"].abs() + 1e-9).all()  # never a new entry
    orders = _journal_agrees(tmp_path / "journal.sqlite", servers[0], card, strat)
    late = [o for o in orders if o.bar_time >= first.to_pydatetime()]
    assert late == [], "an order was placed without a model signal"


def test_btml_trade_runs_a_paper_session_from_the_command_line(
    model: tuple[Path, ModelCard],
    servers: tuple[AlpacaFake, AlpacaDataFake, LoopbackServer],
    tmp_path: Path,
) -> None:
    """``btml trade`` end to end: history up to now, then 40 live minutes; stop after 30."""
    from click.testing import CliRunner

    from btml.cli import main

    store, card = model
    trading, data, rest = servers
    now = pd.Timestamp.now(tz="UTC").floor("min")
    raw = generate_market(SyntheticConfig(n_symbols=3, n_bars=1140, timeframe="1m", seed=12,
                                          start=now - pd.Timedelta(minutes=1100)))  # fmt: skip
    market = {s: f for s, f in zip(SYMBOLS, raw.values(), strict=True)}
    _load_history(market, trading, data, 1100)
    done = threading.Event()
    replay = threading.Thread(target=_replay, args=(market, trading, data, done, 40),
                              kwargs={"first": 1100}, daemon=True)  # fmt: skip
    replay.start()
    journal = tmp_path / "journal.sqlite"
    result = CliRunner().invoke(
        main,
        ["--store", str(store), "trade", "--model", card.ref, "--symbols", ",".join(SYMBOLS),
         "--timeframe", "1m", "--serving", "inprocess", "--bars", "30", "--journal", str(journal),
         "--trading-url", trading.url, "--stream-url", trading.stream_url,
         "--data-url", rest.base_url, "--data-stream-url", data.stock_url],
        env={"APCA_API_KEY_ID": KEY_ID, "APCA_API_SECRET_KEY": SECRET},
    )  # fmt: skip
    replay.join(30)
    assert result.exit_code == 0, result.output
    assert f"trading {card.ref} on AAPL, MSFT, NVDA (paper, 1m bars)" in result.output
    decisions = int(result.output.split("session over: ")[1].split()[0])
    assert decisions >= 3 * 29
    with Journal(journal) as j:
        ours = {r.client_order_id for r in j.orders()}
        positions = {s: j.position_from_fills(s).qty for s in SYMBOLS}
    assert ours == {o["client_order_id"] for o in trading.orders()}
    for s in SYMBOLS:
        assert positions[s] == pytest.approx(trading.position_qty(s), abs=1e-6)
    assert KEY_ID not in result.output and SECRET not in result.output
