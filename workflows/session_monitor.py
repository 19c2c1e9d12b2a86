"""A trading session's monitor (``btml trade --metrics-port``, ``--alert-rules``).

Builds the :class:`monitoring.monitor.SessionMonitor` of a session: the rules (the shipped
defaults unless a file is named), the outputs (the log, the store's alerts file the dashboard
reads, the webhooks of the rules file), ``/metrics`` on a loopback port when asked, and a
ticker that reads the broker's position check and the bar stream's connection every few
seconds and evaluates the rules even when no bar comes.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import ConfigError
from feeds.calendars import is_open
from feeds.timeframes import get_timeframe
from mlmodels.registry import ModelCard
from monitoring.alerts import RuleSet, load_rules
from monitoring.hooks import StrategyWatch
from monitoring.monitor import MonitorConfig, Output, SessionMonitor
from monitoring.outputs import AlertFile, WebhookSender, alerts_path, log_event
from strategies.risk import RiskConfig


def check_monitoring(alert_rules: str | None, metrics_port: int | None) -> RuleSet:
    """The session's rules, refused before anything starts when the file or the port is bad."""
    rules = load_rules(alert_rules)
    WebhookSender(rules.webhooks, "check").close()  # a webhook's variable must be set
    if metrics_port is not None:
        if not 1 <= metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be in [1, 65535], got {metrics_port}")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", metrics_port))
            except OSError as err:
                raise ConfigError(
                    f"--metrics-port {metrics_port}: cannot listen on 127.0.0.1 ({err.strerror}); "
                    "give a free port"
                ) from err
    return rules


def market_open(ts: pd.Timestamp, symbol: str) -> bool:
    """Whether ``symbol``'s market is open at ``ts`` (crypto, ``BTC/USD``: always)."""
    return is_open(ts, asset_class="crypto" if "/" in symbol else "stocks")


@contextlib.contextmanager
def session_monitor(
    store_path: Path,
    card: ModelCard,
    symbols: tuple[str, ...],
    timeframe: str,
    risk: RiskConfig,
    session: str,
    alpaca_store: Any,
    *,
    alert_rules: str | None = None,
    metrics_port: int | None = None,
    clock: Callable[[], float] | str = time.time,
    tick: float = 5.0,
) -> Iterator[StrategyWatch]:
    """The session's monitor as the strategy's watch, running until the block ends;
    ``clock="bars"`` measures time by the newest bar seen (a replayed session)."""
    rules = load_rules(alert_rules)
    cfg = MonitorConfig(
        interval=get_timeframe(timeframe).delta.total_seconds(),
        market_open=market_open,
        max_daily_loss=risk.daily_loss_stop,
        max_drawdown=risk.max_drawdown,
        trained_at=pd.Timestamp(card.created_at) if card.created_at else None,
        drift=card.metrics.get("drift_reference"),
        features=tuple(card.features),
    )
    with contextlib.ExitStack() as stack:
        hooks = WebhookSender(rules.webhooks, session)
        stack.callback(hooks.close)
        outputs: list[Output] = [log_event, AlertFile(alerts_path(store_path), session), hooks]
        by_bars: list[SessionMonitor] = []
        monitor = SessionMonitor(cfg, rules, outputs, clock=_clock(clock, by_bars),
                                 webhook_failing=lambda: hooks.failing)  # fmt: skip
        by_bars.append(monitor)
        if metrics_port is not None:
            stack.callback(_stop_server, _serve(monitor, metrics_port))
        monitor.start(tick, poll=lambda: _poll(monitor, alpaca_store))
        stack.callback(monitor.evaluate)  # the last word: what is still active at the end
        stack.callback(monitor.close)
        yield StrategyWatch(monitor, card.scaler_obj().transform)


def _serve(monitor: SessionMonitor, port: int) -> Any:
    try:
        return monitor.metrics.serve(port)
    except OSError as err:
        raise ConfigError(
            f"--metrics-port {port}: cannot listen on 127.0.0.1 ({err.strerror}); give a free port"
        ) from err


def _stop_server(server: Any) -> None:
    server.shutdown()
    server.server_close()


def _poll(monitor: SessionMonitor, store: Any) -> None:
    """The broker's position check and the bar stream's connection, read (never asked)."""
    broker, hub = store.existing()
    if broker is not None:
        monitor.positions(bool(broker.position_mismatch))
    if hub is not None:
        monitor.stream(bool(hub.connected))


def _clock(clock: Callable[[], float] | str, monitor: list[SessionMonitor]) -> Callable[[], float]:
    if clock == "bars":
        return lambda: monitor[0].newest_bar()
    if not callable(clock):
        raise ConfigError(f"monitor clock must be a callable or 'bars', got {clock!r}")
    return clock
