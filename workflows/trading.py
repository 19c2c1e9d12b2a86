"""``btml trade``'s work: the backtested ML strategy, unchanged, on Alpaca paper or live.

The same ``MLSignalStrategy`` and risk rules as ``btml backtest``; only the broker (the
journaled ``AlpacaBroker``), the feeds (live bars after a history backfill, one multiplexed
stream) and the feature windows (recomputed as bars arrive) differ. The serving-failure policy
defaults to ``hold``: when the model server fails, no new entries, exits still allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import backtrader as bt

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.reconcile import ReconcileReport, reconcile
from brokers.alpaca.rest import TradingAPI
from brokers.alpaca.store import AlpacaStore, check_mode
from feeds.errors import ConfigError
from mlmodels.registry import ModelRegistry
from strategies.ml_signal import MLSignalStrategy
from strategies.windows import LiveFeatureWindows
from workflows.backtest import MLRunConfig, signal_client


class SessionLimit(bt.Analyzer):  # type: ignore[misc]
    """Ends the run after ``bars`` live bars of the first data (a session length)."""

    params = (("bars", None),)

    def start(self) -> None:
        self.live_bars = 0

    def next(self) -> None:
        data = self.strategy.datas[0]
        if getattr(data, "_laststatus", None) == data.LIVE:
            self.live_bars += 1
        if self.p.bars is not None and self.live_bars >= self.p.bars:
            self.strategy.env.runstop()


def build_live_cerebro(
    store: AlpacaStore,
    symbols: Sequence[str],
    windows: LiveFeatureWindows,
    *,
    timeframe: str = "1m",
    feed_kwargs: dict[str, Any] | None = None,
) -> bt.Cerebro:
    """A Cerebro with the store's broker and one live feed per symbol (history first)."""
    if not symbols:
        raise ConfigError("no symbols given; pass --symbols A,B,...")
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.setbroker(store.getbroker())
    for symbol in symbols:
        cerebro.adddata(
            store.getdata(symbol, timeframe=timeframe, backfill_bars=windows.history,
                          **(feed_kwargs or {}))
        )  # fmt: skip
    return cerebro


def run_live(
    store_path: Path,
    ref: str,
    symbols: Sequence[str],
    config: AlpacaConfig,
    *,
    timeframe: str = "1m",
    serving: str = "inprocess",
    ml: MLRunConfig | None = None,
    adopt_positions: bool = False,
    feed_kwargs: dict[str, Any] | None = None,
    bars: int | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """Trade model ``ref`` on ``symbols`` for ``bars`` live bars (None: until the feeds end or
    Ctrl-C); returns the strategy (its ``audit`` holds every decision)."""
    ml = ml or MLRunConfig(serving_failure="hold")
    card = ModelRegistry(store_path / "models").card(ref)
    if card.index:
        raise ConfigError(
            f"{card.ref} was trained with index features ({card.index}); live trading needs "
            "a model trained without an index"
        )
    windows = LiveFeatureWindows(card.features, card.window)
    store = AlpacaStore(config, adopt_positions=adopt_positions)
    try:
        cerebro = build_live_cerebro(
            store, symbols, windows, timeframe=timeframe, feed_kwargs=feed_kwargs
        )
        with signal_client(store_path, card, serving, log) as client:
            cerebro.addstrategy(MLSignalStrategy, config=ml.strategy_config(client, windows))
            cerebro.addanalyzer(SessionLimit, bars=bars)
            log(f"trading {card.ref} on {', '.join(symbols)} ({config.mode}, {timeframe} bars)")
            try:
                return cerebro.run()[0]
            except KeyboardInterrupt:
                log("interrupted: open orders stay at Alpaca and in the journal")
                return None
    finally:
        store.close()


def trade_status(config: AlpacaConfig) -> ReconcileReport:
    """Compare the journal with the account without writing to either (safe beside a running
    session); raises ``PositionMismatch`` listing the differences, and a broker fault
    (``BrokerUnavailable``, or ``BrokerProtocolError`` for an answer outside the schema)
    naming the endpoint."""
    import json

    from brokers.alpaca.journal import Journal
    from brokers.alpaca.store import BASELINE_KEY

    api = TradingAPI(config)
    check_mode(api.account(), config)
    with Journal(config.journal) as journal:
        baseline = json.loads(journal.meta(BASELINE_KEY) or "{}")
        return reconcile(api, journal, tolerance=config.position_tolerance, baseline=baseline,
                         read_only=True)  # fmt: skip
