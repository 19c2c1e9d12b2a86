"""``AlpacaStore``: the one place that owns the Alpaca clients, streams and the order journal.

The familiar backtrader surface::

    store = AlpacaStore(AlpacaConfig.from_env(paper=True))
    cerebro.setbroker(store.getbroker())
    cerebro.adddata(store.getdata("AAPL", timeframe="1m", backfill_bars=300))
    cerebro.run()                       # the broker starts and stops the store

One REST client (``TradingAPI``: timeouts, limiter, retries), one ``trade_updates`` stream,
one market-data hub (one stock and one crypto websocket for every symbol, Alpaca refuses a
second), one journal. :meth:`start` checks the mode: the account behind the keys must be the
configured one (paper account numbers start with ``PA``), and live trading needs the explicit
confirmation in the config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.journal import Journal, JournalError
from brokers.alpaca.rest import TradingAPI
from brokers.alpaca.updates import TradeUpdates
from core.errors import BtmlError, ConfigError

log = logging.getLogger(__name__)
BASELINE_KEY = "position_baseline"
KILL_KEY = "kill_switch"  # the journal's meta entry of the last kill switch


@dataclass(kw_only=True)
class KillReport:
    """What :func:`kill_switch` did: ``done`` lists the steps that went through, ``error`` is
    the one that failed (``None`` when none did), ``positions`` the holdings left (``None``
    when they could not be read)."""

    mode: str
    flatten: bool
    requested_at: str
    canceled: int = 0
    closed: int = 0
    journaled: int = 0
    positions: dict[str, float] | None = None
    done: list[str] = field(default_factory=list)
    error: BtmlError | None = None

    def to_json(self, status: str) -> str:
        """The journal's ``kill_switch`` entry at ``status`` (requested, done, failed)."""
        body = {k: getattr(self, k) for k in ("mode", "flatten", "requested_at", "canceled",
                                              "closed", "journaled", "done")}  # fmt: skip
        error = None if self.error is None else str(self.error)
        return json.dumps(body | {"status": status, "error": error}, sort_keys=True)


def check_mode(account: dict[str, Any], config: AlpacaConfig) -> None:
    """Refuse keys whose account is not the configured mode, or an account that cannot trade."""
    number = str(account.get("account_number") or "")
    is_paper = number.upper().startswith("PA")
    if is_paper != config.paper:
        raise ConfigError(
            f"the keys belong to a {'paper' if is_paper else 'live'} account but the store is "
            f"configured for {config.mode} trading; use the matching keys or mode "
            f"({'--paper' if is_paper else '--live'})"
        )
    if account.get("trading_blocked") or account.get("account_blocked"):
        raise ConfigError("the Alpaca account is blocked from trading; see the Alpaca dashboard")
    status = str(account.get("status") or "ACTIVE")
    if status != "ACTIVE":
        raise ConfigError(f"the Alpaca account status is {status}, not ACTIVE")


class AlpacaStore:
    """See the module docstring. ``adopt_positions`` takes holdings that predate the journal
    as the starting point (once, at start) instead of refusing to trade."""

    def __init__(self, config: AlpacaConfig, *, adopt_positions: bool = False) -> None:
        self.config = config
        self.api = TradingAPI(config)
        path = Path(str(config.journal))
        if "://" not in str(config.journal):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(config.journal)
        self.adopt_positions = adopt_positions
        # holdings adopted from before the journal (and crypto fees), kept with the journal
        self.baseline: dict[str, float] = json.loads(self.journal.meta(BASELINE_KEY) or "{}")
        self.account: dict[str, Any] = {}
        self.updates: TradeUpdates = TradeUpdates(config, self._on_update)
        self._hub: Any = None
        self._broker: Any = None
        self._started = False

    def __repr__(self) -> str:
        return (
            f"AlpacaStore({self.config.mode}, {self.config.base_url}, journal={self.journal.where})"
        )

    # -- backtrader surface ---------------------------------------------------------------------

    def existing(self) -> tuple[Any, Any]:
        """The broker and the market-data hub if they exist (None each if not), for
        monitoring: reading them never creates or starts either."""
        return self._broker, self._hub

    def getbroker(self, **kwargs: Any) -> Any:
        """The ``AlpacaBroker`` on this store (one per store)."""
        from brokers.alpaca.broker import AlpacaBroker

        if self._broker is None:
            self._broker = AlpacaBroker(store=self, **kwargs)
        return self._broker

    def getdata(self, symbol: str, *, timeframe: str = "1m", **kwargs: Any) -> Any:
        """A live feed of ``symbol`` over the store's one multiplexed stream (history first)."""
        from feeds.live import LiveBars

        return LiveBars(dataname=symbol, name=symbol, hub=self.hub, timeframe=timeframe, **kwargs)

    @property
    def hub(self) -> Any:
        """The market-data hub: one stock and one crypto stream for every feed of the store."""
        if self._hub is None:
            from brokers.alpaca.datastream import AlpacaBarHub, HubConfig

            c = self.config
            self._hub = AlpacaBarHub(
                c.key_id,
                c.secret_key,
                HubConfig(feed=c.feed, stock_stream_url=c.stock_stream_url,
                          crypto_stream_url=c.crypto_stream_url, data_url=c.data_url,
                          timeout=c.read_timeout),
            )  # fmt: skip
            self._hub.start()  # opens nothing yet: each feed's subscribe opens its stream
        return self._hub

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, broker: Any = None) -> None:
        """Check the account and mode, then connect the ``trade_updates`` stream (idempotent)."""
        if broker is not None:
            self._broker = broker
        if self._started:
            return
        self.account = self.api.account()
        check_mode(self.account, self.config)
        log.info("Alpaca %s account %s: equity %s", self.config.mode,
                 _masked(str(self.account.get("account_number"))), self.account.get("equity"))  # fmt: skip
        self.updates.start()
        self._started = True

    def stop(self) -> None:
        """Close the streams and the journal connections (the journal's rows are on disk)."""
        self.updates.stop()
        if self._hub is not None:
            self._hub.stop()
        self._started = False

    def close(self) -> None:
        self.stop()
        self.journal.close()

    def save_baseline(self) -> None:
        """Persist the adopted position baseline with the journal (a restart needs no
        ``--adopt-positions`` again)."""
        self.journal.set_meta(BASELINE_KEY, json.dumps(self.baseline, sort_keys=True))

    def _on_update(self, data: dict[str, Any]) -> None:
        if self._broker is not None:
            self._broker.on_update(data)
        else:
            self.journal.apply_update(data)


def _masked(number: str) -> str:
    return number[:2] + "***" + number[-2:] if len(number) > 4 else "***"


def kill_switch(
    config: AlpacaConfig, *, flatten: bool = False, clock: Callable[[], datetime] | None = None
) -> KillReport:
    """Cancel every open order (and with ``flatten`` close every position), without the model
    server or a running broker.

    Refused before anything is written or sent when the account cannot be read or is not the
    configured mode. Otherwise the intent is journaled (the ``kill_switch`` entry of the
    journal's meta) before the first request, then each step runs in turn: cancel all, close
    all (``flatten``), journal what Alpaca reports of the orders, read the positions left. A
    step that fails (a broker fault, a refusal) ends the sequence; the report and the journal's
    entry still say what went through, and ``error`` what failed.
    """
    api = TradingAPI(config)
    check_mode(api.account(), config)
    now = clock or (lambda: datetime.now(UTC))
    report = KillReport(mode=config.mode, flatten=flatten, requested_at=now().isoformat())
    with Journal(config.journal) as journal:
        journal.set_meta(KILL_KEY, report.to_json("requested"))  # before anything is sent
        try:
            _kill_steps(api, journal, report)
        except BtmlError as err:
            report.error = err
        try:
            journal.set_meta(KILL_KEY, report.to_json("failed" if report.error else "done"))
        except JournalError as err:  # the steps went through: report them all the same
            report.error = report.error or err
    log.warning("kill switch: %s%s", ", ".join(report.done) or "nothing done",
                f"; failed: {report.error}" if report.error else "")  # fmt: skip
    return report


def _kill_steps(api: TradingAPI, journal: Journal, report: KillReport) -> None:
    report.canceled = len(api.cancel_all())
    report.done.append(f"canceled {report.canceled} orders")
    if report.flatten:
        report.closed = len(api.close_all_positions())
        report.done.append(f"closed {report.closed} positions")
    orders = api.orders("all")
    for order in orders:
        coid = str(order["client_order_id"])
        if journal.get(coid) is not None:
            journal.mark_sent(coid, order)
            report.journaled += 1
    report.done.append(f"journaled the state of {report.journaled} orders")
    report.positions = {str(p["symbol"]): float(p["qty"]) for p in api.positions()}
